//! The web UI in a real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), and the REST API checked against its OpenAPI schema
//! (`docs/openapi.json`) — on a cluster of real processes running TPC-H queries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{
    ChildGuard, ProcessCluster, TestCluster, assert_same_rows, datafusion_reference, eventually,
    http_get, register_tpch, spawn_guarded,
};

/// `chromedriver` on a port it chose (it prints it), killed with the guard.
fn start_chromedriver() -> (ChildGuard, u16) {
    let mut guard = spawn_guarded(
        Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = guard.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("chromedriver exited before it listened")
            .unwrap();
        if let Some(port) = line
            .split("started successfully on port ")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
        {
            break port;
        }
    };
    // Keep reading its output, so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (guard, port)
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A screenshot's pixels, saved as `name.png`.
async fn screenshot(browser: &Client, name: &str) -> Pixels {
    let png = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), &png).unwrap();
    Pixels::decode(&png)
}

/// A decoded screenshot: RGB(A) pixels.
struct Pixels {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Pixels {
    fn decode(png_bytes: &[u8]) -> Pixels {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Pixels {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    /// How many pixels are within a small distance of `color` (`#rrggbb`).
    fn count(&self, color: &str) -> usize {
        let c = u32::from_str_radix(color.trim_start_matches('#'), 16).unwrap();
        let want = [
            (c >> 16) as i32,
            ((c >> 8) & 0xff) as i32,
            (c & 0xff) as i32,
        ];
        self.rgb
            .iter()
            .filter(|p| (0..3).all(|i| (p[i] as i32 - want[i]).abs() <= 12))
            .count()
    }

    fn distinct_colors(&self) -> usize {
        let mut seen: Vec<[u8; 3]> = self.rgb.clone();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

/// Asserts a screenshot shows a rendered page (not blank) with `color` (a state's badge, an
/// error box) on it.
fn assert_shows(p: &Pixels, what: &str, color: &str) {
    assert!(
        p.width >= 600 && p.height >= 400,
        "{what}: {}x{}",
        p.width,
        p.height
    );
    assert!(
        p.distinct_colors() > 20,
        "{what}: the screenshot is nearly blank"
    );
    assert!(
        p.count(color) > 30,
        "{what}: no {color} on the screenshot (saved in {})",
        screenshots().display()
    );
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

/// Follows the link at `css` (by its address: the page may reload itself meanwhile).
async fn follow(browser: &Client, css: &str) {
    let href = browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no link {css}: {e}"))
        .attr("href")
        .await
        .unwrap()
        .expect("a link");
    let url = browser.current_url().await.unwrap().join(&href).unwrap();
    browser.goto(url.as_str()).await.unwrap();
}

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http_get(port, path);
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_ui_follows_a_tpch_run_to_a_task_and_shows_a_failed_jobs_error() {
    let mut cluster = ProcessCluster::start(2, 2).await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    let (_chromedriver, driver_port) = start_chromedriver();
    let browser = browser(driver_port).await;
    let ui = format!("http://127.0.0.1:{}", cluster.http_port);

    // A TPC-H query runs to its end: the jobs page lists it as succeeded.
    let q1 = client.sql(ember::tpch::query(1).unwrap()).await.unwrap();
    browser.goto(&format!("{ui}/ui")).await.unwrap();
    let jobs = text(&browser, "#jobs").await;
    assert!(jobs.contains("succeeded"), "{jobs}");
    assert!(jobs.contains(&q1.status.job_id.to_string()), "{jobs}");
    let listed = screenshot(&browser, "1-jobs").await;
    assert_shows(&listed, "the jobs page", "#2e9d57");

    // A query held running (its executors frozen): the job, a stage, a task.
    cluster.signal_executors("STOP");
    let q9 = ember::tpch::query(9).unwrap();
    let running = client.submit(q9).await.unwrap();
    let id = running.to_string();
    eventually("a running task of q9", Duration::from_secs(20), || async {
        let (_, job) = get_json(cluster.http_port, &format!("/api/v1/jobs/{id}"));
        let tasks = job["running_job"]["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["tasks"].as_array().cloned().unwrap_or_default())
            .filter(|t| t["state"] == "running")
            .count();
        if tasks > 0 {
            Ok(())
        } else {
            Err(job.to_string())
        }
    })
    .await;
    browser.goto(&format!("{ui}/ui")).await.unwrap();
    follow(&browser, &format!("a[href='/ui/jobs/{id}']")).await;
    assert!(text(&browser, "#state").await.contains("running"));
    assert!(
        browser
            .find(Locator::Css("#stage-graph rect"))
            .await
            .is_ok(),
        "no stage graph"
    );
    let job_page = screenshot(&browser, "2-running-job").await;
    assert_shows(&job_page, "the running job's page", "#1f77d0");
    let stages = text(&browser, "#stages").await;
    assert!(stages.contains("running"), "{stages}");
    // The first stage with a running task.
    let (_, job) = get_json(cluster.http_port, &format!("/api/v1/jobs/{id}"));
    let stage = job["running_job"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["state"] == "running")
        })
        .expect("a stage with a running task")["id"]
        .clone();
    follow(&browser, &format!("a[href='/ui/jobs/{id}/stages/{stage}']")).await;
    let tasks = text(&browser, "#tasks").await;
    assert!(tasks.contains("running"), "{tasks}");
    screenshot(&browser, "3-stage").await;
    follow(&browser, "#tasks tr:has(.running) a.task").await;
    let executor = text(&browser, "#executor").await;
    let (_, known) = get_json(cluster.http_port, "/api/v1/executors");
    assert!(
        known["executors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == executor.as_str()),
        "the task page names executor {executor:?}, not one of {known}"
    );
    let task_page = screenshot(&browser, "4-task").await;
    assert_shows(&task_page, "the task's page", "#1f77d0");
    cluster.signal_executors("CONT");

    // The job finishes with DataFusion's answer, and its stages show what they measured.
    let status = client.wait(&running, |_| {}).await.unwrap();
    let result = client.collect(status).await.unwrap();
    let expected = datafusion_reference()
        .await
        .sql(q9)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("q9", &expected, &result.batches);
    browser.goto(&format!("{ui}/ui/jobs/{id}")).await.unwrap();
    assert!(text(&browser, "#state").await.contains("succeeded"));
    let plan = text(&browser, "#plan").await;
    assert!(
        plan.contains("output_rows=") && plan.contains("HashJoinExec"),
        "{plan}"
    );

    // A job that fails on the executors: its page shows the error.
    let failing = client
        .submit("SELECT CAST(n_name AS INT) FROM nation")
        .await
        .unwrap();
    let failed = client.wait(&failing, |_| {}).await;
    assert!(failed.is_err(), "{failed:?}");
    browser
        .goto(&format!("{ui}/ui?state=failed"))
        .await
        .unwrap();
    follow(&browser, &format!("a[href='/ui/jobs/{failing}']")).await;
    let error = text(&browser, "#error").await;
    assert!(error.to_lowercase().contains("cast"), "{error}");
    let failed_page = screenshot(&browser, "5-failed-job").await;
    assert_shows(&failed_page, "the failed job's page", "#d9534f");

    // The executors page, on a phone's screen.
    browser.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("{ui}/ui/executors")).await.unwrap();
    let executors = text(&browser, "#executors").await;
    assert_eq!(executors.matches("127.0.0.1:").count(), 2, "{executors}");
    let width: u64 = browser
        .execute("return document.documentElement.scrollWidth", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(
        width <= 420,
        "the page is {width} px wide on a 390 px screen"
    );
    browser.close().await.unwrap();
    assert!(cluster.all_running());
}

/// Checks `value` against an OpenAPI schema (the subset `docs/openapi.json` uses); returns
/// what does not match. Objects may not carry fields the schema does not name.
fn check(schema: &Value, value: &Value, root: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return check(&root["components"]["schemas"][name], value, root, at, out);
    }
    if value.is_null() {
        if schema["nullable"] != true && schema["allOf"].is_null() {
            out.push(format!("{at}: null, not allowed"));
        }
        return;
    }
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    let parts: Vec<&Value> = match schema["allOf"].as_array() {
        Some(all) => all
            .iter()
            .map(|s| match s["$ref"].as_str() {
                Some(r) => {
                    &root["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]
                }
                None => s,
            })
            .collect(),
        None => vec![schema],
    };
    for part in &parts {
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        required.extend(part["required"].as_array().cloned().unwrap_or_default());
        if let Some(allowed) = part["enum"].as_array()
            && !allowed.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let kind = parts
        .iter()
        .find_map(|p| p["type"].as_str())
        .unwrap_or("object");
    let ok = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => panic!("schema type {other}"),
    };
    if !ok {
        out.push(format!("{at}: {value} is not {kind}"));
        return;
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check(&schema["items"], item, root, &format!("{at}[{i}]"), out);
        }
    }
    if let Some(object) = value.as_object() {
        for key in &required {
            if !object.contains_key(key.as_str().unwrap()) {
                out.push(format!("{at}: {key} missing"));
            }
        }
        let extra = parts.iter().find_map(|p| p.get("additionalProperties"));
        for (key, field) in object {
            match (properties.get(key), extra) {
                (Some(s), _) | (None, Some(s)) => {
                    check(s, field, root, &format!("{at}.{key}"), out)
                }
                (None, None) => out.push(format!("{at}.{key}: not in the schema")),
            }
        }
    }
}

/// The schema of `path`'s 200 answer.
fn response_schema<'a>(api: &'a Value, path: &str) -> &'a Value {
    &api["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rest_api_answers_as_its_openapi_schema_says() {
    let api: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let cluster = ProcessCluster::start(2, 2).await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    let q3 = client.sql(ember::tpch::query(3).unwrap()).await.unwrap();
    let id = q3.status.job_id.to_string();
    let failing = client
        .submit("SELECT CAST(n_name AS INT) FROM nation")
        .await
        .unwrap();
    assert!(client.wait(&failing, |_| {}).await.is_err());
    let port = cluster.http_port;
    let mut problems = Vec::new();
    for (path, schema_path) in [
        ("/api/v1/cluster".to_string(), "/api/v1/cluster"),
        ("/api/v1/executors".to_string(), "/api/v1/executors"),
        ("/api/v1/jobs".to_string(), "/api/v1/jobs"),
        (format!("/api/v1/jobs/{id}"), "/api/v1/jobs/{id}"),
        (format!("/api/v1/jobs/{failing}"), "/api/v1/jobs/{id}"),
    ] {
        let (status, value) = get_json(port, &path);
        assert_eq!(status, 200, "{path}: {value}");
        check(
            response_schema(&api, schema_path),
            &value,
            &api,
            &path,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "answers that differ from docs/openapi.json:\n{}",
        problems.join("\n")
    );

    // What the answers say, not only their shape.
    // Executors report their memory with their heartbeats.
    eventually(
        "executors report their memory",
        Duration::from_secs(10),
        || async {
            let (_, executors) = get_json(port, "/api/v1/executors");
            let all = executors["executors"].as_array().unwrap().iter().all(|e| {
                e["metrics"]["memory_limit_bytes"].as_u64() > Some(0)
                    && e["metrics"]["tasks_completed"].as_u64() > Some(0)
            });
            if all {
                Ok(())
            } else {
                Err(executors.to_string())
            }
        },
    )
    .await;
    // A batch job lists its statements.
    let script = client
        .submit_script(
            "nightly",
            vec!["SELECT 1".into(), "SELECT count(*) FROM nation".into()],
            &[],
        )
        .await
        .unwrap();
    client.wait_script(&script, |_| {}).await.unwrap();
    let (_, batch) = get_json(port, &format!("/api/v1/jobs/{script}"));
    assert_eq!(
        batch["statements"],
        json!(["SELECT 1", "SELECT count(*) FROM nation"]),
        "{batch}"
    );
    assert_eq!(batch["statements_done"], 2);
    check(
        response_schema(&api, "/api/v1/jobs/{id}"),
        &batch,
        &api,
        "batch",
        &mut problems,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let (_, cluster_view) = get_json(port, "/api/v1/cluster");
    assert_eq!(
        (
            cluster_view["role"].as_str(),
            cluster_view["executors"].as_u64()
        ),
        (Some("leader"), Some(2))
    );
    let members = cluster_view["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{cluster_view}");
    assert!(members.iter().all(
        |m| m["role"] == "executor" && m["address"].as_str().unwrap().starts_with("127.0.0.1:")
    ));
    let (_, job) = get_json(port, &format!("/api/v1/jobs/{id}"));
    assert_eq!(job["state"], "succeeded");
    let stages = job["running_job"]["stages"].as_array().unwrap();
    assert_eq!(stages.len() as u32, q3.status.stages_total);
    let rows: u64 = stages
        .iter()
        .filter(|s| s["final"] == true)
        .map(|s| s["output_rows"].as_u64().unwrap())
        .sum();
    assert_eq!(
        rows,
        q3.batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
    );
    let resources = &job["resources"];
    assert!(resources["cpu_ns"].as_u64().unwrap() > 0, "{resources}");
    assert!(
        resources["peak_task_memory_bytes"].as_u64().unwrap() > 0,
        "{resources}"
    );
    assert!(
        resources["bytes_scanned"].as_u64().unwrap() > 0,
        "{resources}"
    );
    assert!(stages.iter().all(|s| {
        s["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["elapsed_ms"].is_u64() && t["executor"].is_string())
    }));
    let (_, failed) = get_json(port, "/api/v1/jobs?state=failed");
    let failed = failed["jobs"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], failing.to_string());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("cast")
    );
    let (_, named) = get_json(port, "/api/v1/jobs?name=nation&limit=5");
    assert!(named["jobs"].as_array().unwrap().iter().all(|j| {
        j["name"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("nation")
    }));
    // Bad requests get a clear error.
    let (status, bad) = get_json(port, "/api/v1/jobs?state=sleeping");
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("sleeping"), "{bad}");
    let (status, missing) = get_json(port, "/api/v1/jobs/nosuchjob");
    assert_eq!(status, 404, "{missing}");
}
