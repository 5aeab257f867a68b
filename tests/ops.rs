//! Every long-running process serves /healthz, /readyz and /metrics over HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{ember_bin, http_get, spawn_guarded, wait_for_port};

/// Polls `/readyz` until it answers `want`.
fn wait_ready(port: u16, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(port, "/readyz");
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_readiness_and_metrics_of_a_scheduler_and_an_executor() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    // An executor whose scheduler is not there yet: alive, not ready.
    let mut executor = spawn_guarded(
        Command::new(ember_bin())
            .args(["executor", "--bind", "127.0.0.1:0", "--scheduler"])
            .arg("http://127.0.0.1:1")
            .arg("--work-dir")
            .arg(file("executor1"))
            .args([
                "--http-bind",
                "127.0.0.1:0",
                "--heartbeat-interval-ms",
                "100",
            ])
            .arg("--http-port-file")
            .arg(file("executor.http"))
            .stderr(Stdio::null()),
    );
    let executor_http = wait_for_port(&file("executor.http"), &mut executor.0);
    assert_eq!(http_get(executor_http, "/healthz").0, 200);
    let body = wait_ready(executor_http, 503);
    assert!(body.contains("not registered"), "{body}");
    drop(executor);

    let mut scheduler = spawn_guarded(
        Command::new(ember_bin())
            .args([
                "scheduler",
                "--bind",
                "127.0.0.1:0",
                "--http-bind",
                "127.0.0.1:0",
            ])
            .env(
                "EMBER_ALLOWED_LOCATIONS",
                crate::support::allowed_locations(),
            )
            .arg("--port-file")
            .arg(file("scheduler.port"))
            .arg("--http-port-file")
            .arg(file("scheduler.http"))
            .env("EMBER_ALLOW_ANONYMOUS", "true")
            .stderr(Stdio::null()),
    );
    let port = wait_for_port(&file("scheduler.port"), &mut scheduler.0);
    let scheduler_http = wait_for_port(&file("scheduler.http"), &mut scheduler.0);
    assert_eq!(
        http_get(scheduler_http, "/healthz"),
        (200, "ok\n".to_string())
    );
    wait_ready(scheduler_http, 200);

    let mut executor = spawn_guarded(
        Command::new(ember_bin())
            .args(["executor", "--bind", "127.0.0.1:0", "--scheduler"])
            .arg(format!("http://127.0.0.1:{port}"))
            .args(["--http-bind", "127.0.0.1:0", "--slots", "3"])
            .arg("--work-dir")
            .arg(file("executor2"))
            .arg("--http-port-file")
            .arg(file("executor2.http"))
            .stderr(Stdio::null()),
    );
    let executor_http = wait_for_port(&file("executor2.http"), &mut executor.0);
    wait_ready(executor_http, 200);
    let (status, metrics) = http_get(executor_http, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("ember_executor_task_slots 3"), "{metrics}");
    assert!(
        metrics.contains("# TYPE ember_executor_tasks_completed_total counter"),
        "{metrics}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, metrics) = http_get(scheduler_http, "/metrics");
        assert_eq!(status, 200);
        assert!(metrics.contains("ember_scheduler_leader 1"), "{metrics}");
        if metrics.contains("ember_executors 1") {
            assert!(metrics.contains("ember_task_slots 3"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the executor never showed: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(scheduler_http, "/nope").0, 404);

    // After a query that runs tasks, both endpoints parse as Prometheus' text format, with
    // histograms of job and task durations that counted it.
    let nation = crate::support::tpch_dir().join("nation");
    let sql = format!(
        "CREATE EXTERNAL TABLE nation STORED AS PARQUET LOCATION '{}'; \
         SELECT n_regionkey, count(*) FROM nation GROUP BY n_regionkey",
        nation.display()
    );
    let out = Command::new(ember_bin())
        .args([
            "sql",
            "--scheduler",
            &format!("http://127.0.0.1:{port}"),
            "-c",
            &sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scheduler = scrape(scheduler_http);
    let jobs = histogram(
        &scheduler,
        "ember_job_duration_seconds",
        ("outcome", "succeeded"),
    );
    assert!(jobs >= 1.0, "no succeeded job counted");
    // Nothing runs now: every slot is free.
    assert!(
        scheduler
            .samples
            .iter()
            .any(|s| s.metric == "ember_free_task_slots"
                && matches!(s.value, prometheus_parse::Value::Gauge(n) if n == 3.0))
    );
    let executor = scrape(executor_http);
    let tasks = histogram(&executor, "ember_executor_task_duration_seconds", ("", ""));
    assert!(tasks >= 1.0, "no task counted");
    histogram(&executor, "ember_executor_fetch_duration_seconds", ("", ""));
    assert!(
        executor
            .samples
            .iter()
            .any(|s| s.metric == "ember_executor_tasks_completed_total"
                && matches!(s.value, prometheus_parse::Value::Counter(n) if n >= 1.0))
    );
}

/// `/metrics` of a process, parsed.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

/// The count of the histogram `name` (with the label `key`=`value`, unless `key` is empty),
/// checking its buckets: cumulative, ending at +Inf with the count.
fn histogram(scrape: &prometheus_parse::Scrape, name: &str, (key, value): (&str, &str)) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && (key.is_empty() || s.labels.get(key) == Some(value)))
        .unwrap_or_else(|| panic!("no histogram {name} {key}={value}"));
    let prometheus_parse::Value::Histogram(buckets) = &sample.value else {
        panic!("{name} is not a histogram: {:?}", sample.value);
    };
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count)
    );
    let last = buckets.last().unwrap();
    assert!(last.less_than.is_infinite());
    last.count
}

/// Log lines (JSON) carry the job they are about: the scheduler's while it plans a job, the
/// executors' while they run its tasks (with stage, partition and attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_their_job_and_task() {
    use crate::support::TestCluster;
    let logs = tempfile::tempdir().unwrap();
    let cluster = crate::support::ProcessCluster::start_with_env_logged(
        1,
        2,
        &[
            ("EMBER_LOG_FORMAT", "json"),
            ("EMBER_LOG", "info,ember_executor=debug"),
        ],
        logs.path(),
    )
    .await;
    let client = cluster.client().await;
    crate::support::register_tpch(&client).await;
    let job = crate::support::run_distributed_query(&client)
        .await
        .to_string();
    // Lines whose innermost span names the job.
    let about_job = |file: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(logs.path().join(file))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["span"]["job_id"] == job.as_str())
            .collect()
    };
    let planned = about_job("scheduler.log");
    assert!(
        planned
            .iter()
            .any(|l| l["fields"]["message"] == "job submitted"),
        "{planned:?}"
    );
    let ran = about_job("executor-0.log");
    assert!(!ran.is_empty(), "no executor line names job {job}");
    assert!(ran.iter().all(|l| l["span"]["name"] == "task"
        && l["span"]["stage"].is_string()
        && l["span"]["partition"].is_number()));
}
