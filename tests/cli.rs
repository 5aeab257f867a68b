//! The `ember` command as a user runs it.

use std::process::Command;

use crate::support::{ProcessCluster, ember_bin, spawn_guarded, tpch_dir, wait_for_port};

pub fn ember(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ember_bin()).args(args).output().unwrap();
    (
        out.status.success(),
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
            .arg(&port_file),
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
