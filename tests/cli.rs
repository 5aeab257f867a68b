//! The `ember` command as a user runs it.

use std::process::Command;

use crate::support::TestCluster;
use crate::support::{ProcessCluster, ember_bin, spawn_guarded, tpch_dir, wait_for_port};

pub fn ember(args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = ember_exit(args);
    (code == Some(0), stdout, stderr)
}

/// Runs `ember` with `args`: its exit code, stdout and stderr.
pub fn ember_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ember_bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn datagen_writes_one_folder_per_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tpch");
    let (ok, stdout, stderr) = ember(&[
        "datagen",
        "tpch",
        "--scale-factor",
        "0.01",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for table in ember::tpch::TABLES {
        let files = std::fs::read_dir(out.join(table)).unwrap().count();
        assert!(files >= 1, "{table} has no files");
        assert!(stdout.contains(table), "{stdout}");
    }
    assert!(stdout.contains("nation: 25 rows"), "{stdout}");

    let (ok, _, stderr) = ember(&["datagen", "tpch", "--scale-factor=-1", "--output", "x"]);
    assert!(!ok);
    assert!(stderr.contains("scale-factor"), "{stderr}");
}

/// `--progress plain` writes the running job's stages and tasks to stderr as they advance,
/// ending with every stage and task done; `--progress off` writes none.
#[test]
fn the_progress_of_a_running_query_shows_its_stages_and_tasks() {
    let tables = tpch_dir().to_str().unwrap();
    let sql = "select o_orderpriority, count(*) from orders join lineitem on o_orderkey = \
               l_orderkey group by o_orderpriority";
    let run = |progress: &str| {
        ember(&[
            "sql",
            "--local",
            "--tables",
            tables,
            "--progress",
            progress,
            "--timing",
            "false",
            "-c",
            sql,
        ])
    };
    let (ok, stdout, stderr) = run("plain");
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 5 + 4, "{stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stages "))
        .collect();
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no progress: {stderr}"));
    // `stages D/T, tasks d/t`: the last line shows all done, of a query cut into stages.
    let numbers: Vec<u32> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().unwrap())
        .collect();
    let [stages_done, stages, tasks_done, tasks] = numbers[..] else {
        panic!("{last}");
    };
    assert!(stages >= 2 && stages_done == stages, "{last}");
    assert!(tasks >= stages && tasks_done == tasks, "{last}");
    let (ok, _, stderr) = run("off");
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("stages "), "{stderr}");
}

#[test]
fn sql_local_runs_commands_and_files_in_every_format() {
    let tables = tpch_dir().to_str().unwrap();
    let (ok, stdout, stderr) = ember(&[
        "sql",
        "--local",
        "--executors",
        "2",
        "--tables",
        tables,
        "--format",
        "csv",
        "-c",
        "select n_name from nation where n_nationkey < 2 order by n_nationkey; select count(*) as n from region",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "n_name\nALGERIA\nARGENTINA\nn\n5\n");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        "-- two statements\nselect r_name from region where r_regionkey = 0;\nshow tables;\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = ember(&[
        "sql",
        "--local",
        "--tables",
        tables,
        "--format",
        "json",
        "-f",
        script.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("[{\"r_name\":\"AFRICA\"}]"), "{stdout}");
    assert!(
        stdout.contains("lineitem"),
        "SHOW TABLES lists the tables: {stdout}"
    );

    let (ok, stdout, stderr) = ember(&["sql", "--local", "-c", "select 1 + 1 as two"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| two |") && stdout.contains("| 2   |"),
        "{stdout}"
    );

    let (ok, _, stderr) = ember(&["sql", "--local", "-c", "select * from nope"]);
    assert!(!ok, "an unknown table must fail the command");
    assert!(stderr.contains("nope"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_against_a_remote_scheduler() {
    let cluster = ProcessCluster::start(2, 1).await;
    let url = cluster.scheduler_url.clone();
    let tables = tpch_dir().to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ember(&[
            "sql",
            "--scheduler",
            &url,
            "--tables",
            &tables,
            "--format",
            "csv",
            "-c",
            "describe region; select count(*) as n from lineitem where l_quantity > 49",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("r_regionkey"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.parse::<u64>().unwrap() > 0, "{stdout}");

    let (ok, _, stderr) = ember(&["sql", "--scheduler", "http://127.0.0.1:1", "-c", "select 1"]);
    assert!(!ok);
    assert!(stderr.contains("cannot reach the scheduler"), "{stderr}");
}

#[test]
fn standalone_serves_a_cluster_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let mut guard = spawn_guarded(
        Command::new(ember_bin())
            .args([
                "standalone",
                "--bind",
                "127.0.0.1:0",
                "--executors",
                "2",
                "--port-file",
            ])
            .arg(&port_file)
            .env(
                "EMBER_ALLOWED_LOCATIONS",
                crate::support::allowed_locations(),
            )
            .env("EMBER_ALLOW_ANONYMOUS", "true")
            // The embedded executors' folders go into the test's folder: killed, the process
            // cannot remove them.
            .env("TMPDIR", dir.path()),
    );
    let port = wait_for_port(&port_file, &mut guard.0);
    let url = format!("http://127.0.0.1:{port}");
    let tables = tpch_dir().to_str().unwrap();
    let (ok, stdout, stderr) = ember(&[
        "sql",
        "--scheduler",
        &url,
        "--tables",
        tables,
        "--format",
        "csv",
        "-c",
        "select count(*) as n from orders o join customer c on o.o_custkey = c.c_custkey where c.c_nationkey = 3",
    ]);
    assert!(ok, "{stderr}");
    let n: u64 = stdout.lines().nth(1).unwrap().parse().unwrap();
    assert!(n > 0, "{stdout}");
}

#[test]
fn a_malformed_scheduler_url_is_refused_at_once() {
    for cmd in [
        &[
            "executor",
            "--bind",
            "127.0.0.1:0",
            "--scheduler",
            "not-a-url",
        ][..],
        &["sql", "--scheduler", "not-a-url", "-c", "select 1"][..],
    ] {
        let (ok, _, stderr) = ember(cmd);
        assert!(!ok, "{cmd:?} must fail");
        assert!(stderr.contains("http://HOST:PORT"), "{cmd:?}: {stderr}");
    }
}

/// `ember submit` and `ember jobs`, as an orchestrator drives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jobs_are_submitted_followed_and_cancelled() {
    let cluster = ProcessCluster::start(2, 1).await;
    let url = cluster.scheduler_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let lineitem = tpch_dir().join("lineitem");
    let orders = tpch_dir().join("orders");
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS li STORED AS PARQUET LOCATION '{}/';\n\
             CREATE EXTERNAL TABLE IF NOT EXISTS ord STORED AS PARQUET LOCATION '{}/';\n\
             SELECT o_orderpriority, count(*) FROM ord JOIN li ON o_orderkey = l_orderkey GROUP BY o_orderpriority;\n",
            lineitem.display(),
            orders.display()
        ),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ember(&args)
        })
    };
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Submitted and waited for: the id on stdout, success, the statements' progress.
    let (ok, stdout, stderr) = run(args(&[
        "submit",
        "--scheduler",
        &url,
        "-f",
        script.to_str().unwrap(),
        "--wait",
        "--name",
        "etl",
    ]))
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let id = stdout.trim().to_string();
    assert!(!id.is_empty() && !id.contains(' '), "{stdout}");
    assert!(stderr.contains("state:      succeeded"), "{stderr}");
    assert!(stderr.contains("statements: 3/3 done"), "{stderr}");
    assert!(stderr.contains("rows:       0, 0, 5"), "{stderr}");

    let (ok, stdout, stderr) = run(args(&["jobs", "--scheduler", &url, "status", &id]))
        .await
        .unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    let stages: Vec<u32> = stdout
        .lines()
        .find(|l| l.starts_with("stages:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('/')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(stages[0] == stages[1] && stages[1] >= 2, "{stdout}");
    // What the batch job used, summed over its statements.
    let used = stdout
        .lines()
        .find(|l| l.starts_with("used:"))
        .expect(&stdout);
    assert!(
        used.contains("cpu ") && !used.contains("cpu 0 ns"),
        "{used}"
    );

    // A failing statement fails the job, names the statement, and stops the script; the exit
    // code says it was the user's error (3), not one to retry.
    let failing = args(&[
        "submit",
        "--scheduler",
        &url,
        "--wait",
        "-c",
        "SELECT count(*) FROM li; SELECT * FROM no_such_table; SELECT 1",
    ]);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
        ember_exit(&failing)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("(user)"), "{stderr}");
    assert!(stderr.contains("statement 2 failed"), "{stderr}");
    assert!(stderr.contains("no_such_table"), "{stderr}");
    assert!(stderr.contains("statements: 1/3 done"), "{stderr}");

    // Submitted without waiting, then cancelled while it runs.
    let (ok, stdout, stderr) = run(args(&[
        "submit", "--scheduler", &url, "--name", "forever", "-c",
        "SELECT sum(a.k + b.k) FROM (SELECT l_orderkey AS k FROM li) a CROSS JOIN (SELECT l_orderkey AS k FROM li) b; SELECT 1",
    ]))
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let long = stdout.trim().to_string();
    let (ok, stdout, _) = run(args(&["jobs", "--scheduler", &url, "list"]))
        .await
        .unwrap();
    assert!(ok);
    assert!(
        stdout.contains("forever") && stdout.contains("etl"),
        "{stdout}"
    );
    // Ad-hoc queries are listed too, by their SQL; a script's statements are not listed apart.
    let client = cluster.client().await;
    let adhoc = client
        .submit("SELECT count(*) AS adhoc_count FROM li")
        .await
        .unwrap();
    client.wait(&adhoc, |_| {}).await.unwrap();
    let (ok, stdout, _) = run(args(&["jobs", "--scheduler", &url, "list"]))
        .await
        .unwrap();
    assert!(ok);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(adhoc.as_str()))
        .unwrap_or_else(|| panic!("the ad-hoc query is not listed:\n{stdout}"));
    assert!(
        line.contains("SELECT count(*) AS adhoc") && line.contains("succeeded"),
        "{line}"
    );
    assert!(!stdout.contains("CREATE EXTERNAL TABLE"), "{stdout}");
    let (ok, stdout, _) = run(args(&[
        "jobs",
        "--scheduler",
        &url,
        "status",
        adhoc.as_str(),
    ]))
    .await
    .unwrap();
    assert!(ok && stdout.contains("statements: 1/1 done"), "{stdout}");
    let (ok, stdout, stderr) = run(args(&["jobs", "--scheduler", &url, "cancel", &long]))
        .await
        .unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("cancelled"), "{stdout}");
    let status = client.scripts(Some(&long)).await.unwrap().pop().unwrap();
    assert_eq!(status.state, ember_core::job::JobState::Cancelled);
    assert_eq!(status.statements_done, 0);
    // The statement that was running (or being planned) is cancelled too: the cross join
    // would otherwise run for hours.
    if !status.current_job_id.is_empty() {
        let job = ember_core::JobId::from(status.current_job_id.clone());
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            client.wait(&job, |_| {}),
        )
        .await
        .expect("the cancelled script's job ends");
        assert!(
            matches!(ended, Err(ember_core::EmberError::Cancelled)),
            "{ended:?}"
        );
    }

    // Bad input: an unknown job, an empty script.
    let (ok, _, stderr) = run(args(&["jobs", "--scheduler", &url, "status", "nope"]))
        .await
        .unwrap();
    assert!(!ok);
    assert!(stderr.contains("nope"), "{stderr}");
    let (ok, _, stderr) = run(args(&["submit", "--scheduler", &url, "-c", " ; "]))
        .await
        .unwrap();
    assert!(!ok);
    assert!(stderr.contains("no SQL statement"), "{stderr}");
}

/// Settings from a config file, JSON log lines, and a clear error for a key that is unknown.
#[test]
fn a_config_file_configures_a_process_and_logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("scheduler.port");
    let config = dir.path().join("ember.toml");
    std::fs::write(
        &config,
        format!(
            "log = \"info\"\nlog-format = \"json\"\nslots = 3\n\n[scheduler]\nbind = \"127.0.0.1:0\"\nport-file = \"{}\"\nallow-anonymous = true\n",
            port_file.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("scheduler.log");
    let mut scheduler = spawn_guarded(
        Command::new(ember_bin())
            .args(["scheduler", "--config"])
            .arg(&config)
            .env(
                "EMBER_ALLOWED_LOCATIONS",
                crate::support::allowed_locations(),
            )
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let port = wait_for_port(&port_file, &mut scheduler.0);
    assert!(port > 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("scheduler listening")) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no log line: {text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        line.starts_with('{') && line.contains("\"level\":\"INFO\""),
        "not a JSON log line: {line}"
    );

    std::fs::write(&config, "bnid = \"127.0.0.1:0\"\n").unwrap();
    let (ok, _, stderr) = ember(&[
        "sql",
        "--config",
        config.to_str().unwrap(),
        "-c",
        "select 1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown setting \"bnid\""), "{stderr}");
}

/// The number after `"key":` in `text`, from `from` on.
fn json_number(text: &str, from: usize, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let start = from
        + text[from..]
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {key}: {text}"));
    let value = &text[start + pattern.len()..];
    let end = value.find([',', '}']).unwrap();
    value[..end].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_commands_run_both_engines_and_report_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let data = tpch_dir().to_str().unwrap();
    let (ok, stdout, stderr) = ember(&[
        "bench",
        "tpch",
        "--data",
        data,
        "--queries",
        "1,3",
        "--iterations",
        "1",
        "--output",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("total") && stdout.contains("q3"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(&json).unwrap();
    let reference = crate::support::datafusion_reference().await;
    for q in [1, 3] {
        let at = json
            .find(&format!("{{\"query\":{q},"))
            .unwrap_or_else(|| panic!("q{q} missing: {json}"));
        let expected: usize = reference
            .sql(ember::tpch::query(q).unwrap())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(json_number(&json, at, "rows"), expected as f64, "{json}");
        assert!(json_number(&json, at, "ratio") > 0.0, "{json}");
        assert!(json_number(&json, at, "tasks") >= 2.0, "{json}");
    }
    assert!(json_number(&json, 0, "ratio") > 0.0, "{json}");
    // The scale factor is the data's (recorded when it was generated), not a default.
    assert!(json.contains("\"scale_factor\":0.1,"), "{json}");
    let (ok, _, stderr) = ember(&["bench", "tpch", "--data", data, "--scale-factor", "1"]);
    assert!(!ok);
    assert!(
        stderr.contains("holds TPC-H at scale factor 0.1, not 1"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = ember(&["bench", "latency", "--iterations", "5"]);
    assert!(ok, "{stderr}");
    for engine in ["ember", "datafusion"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(engine)),
            "no {engine} line: {stdout}"
        );
    }
    assert!(stdout.contains("p50"), "{stdout}");

    let (ok, _, stderr) = ember(&["bench", "tpch", "--data", data, "--queries", "23"]);
    assert!(!ok);
    assert!(stderr.contains("there is no TPC-H query 23"), "{stderr}");
}
