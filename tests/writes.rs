//! Writes: COPY and INSERT run as parallel staged writes and appear whole when the job
//! succeeds, and not at all when it fails or is cancelled.

use std::path::Path;
use std::time::{Duration, Instant};

use ember_core::job::JobState;

use crate::etcd_support::EtcdCluster;
use crate::support::TestCluster;
use crate::support::{
    ProcessCluster, assert_same_rows, datafusion_reference, datafusion_reference_at, register_tpch,
    register_tpch_at, tpch_dir_large,
};

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

const QUERY: &str =
    "SELECT o_orderpriority, o_orderkey, o_totalprice FROM orders WHERE o_orderkey % 3 = 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_insert_write_whole_results_in_parallel() {
    let cluster = ProcessCluster::start(2, 1).await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    let reference = datafusion_reference().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("by_priority");

    // COPY, partitioned: one folder per value, the rows all there, nothing staged left.
    let copy = format!(
        "COPY ({QUERY}) TO '{}/' STORED AS PARQUET PARTITIONED BY (o_orderpriority)",
        out.display()
    );
    let explain = client.sql(&format!("EXPLAIN {copy}")).await.unwrap();
    let plan = format!("{:?}", crate::support::rows(&explain.batches));
    assert!(plan.contains("StagedWriteExec"), "{plan}");
    let result = client.sql(&copy).await.unwrap();
    let expected_count = reference
        .sql(&format!("SELECT count(*) AS count FROM ({QUERY})"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("COPY count", &expected_count, &result.batches);
    let files = files_under(&out);
    assert!(
        files.iter().all(|f| !f.contains("_ember_staging")),
        "staging left behind: {files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.starts_with("_ember_commits/"))
            .count(),
        1,
        "one commit marker: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("o_orderpriority=1-URGENT/")),
        "{files:?}"
    );
    client
        .sql(&format!(
            "CREATE EXTERNAL TABLE written STORED AS PARQUET LOCATION '{}/'",
            out.display()
        ))
        .await
        .unwrap();
    let check =
        "SELECT o_orderpriority, count(*), sum(o_totalprice) FROM {t} GROUP BY 1 ORDER BY 1";
    let actual = client.sql(&check.replace("{t}", "written")).await.unwrap();
    let expected = reference
        .sql(&check.replace("{t}", &format!("({QUERY})")))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("COPY rows", &expected, &actual.batches);

    // INSERT INTO an external table appends, each time whole.
    let table = dir.path().join("appended");
    std::fs::create_dir(&table).unwrap();
    client
        .sql(&format!(
            "CREATE EXTERNAL TABLE appended (k BIGINT, price DECIMAL(15,2)) STORED AS PARQUET LOCATION '{}/'",
            table.display()
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        client
            .sql("INSERT INTO appended SELECT o_orderkey, o_totalprice FROM orders WHERE o_orderkey < 1000")
            .await
            .unwrap();
    }
    let actual = client
        .sql("SELECT count(*), sum(k) FROM appended")
        .await
        .unwrap();
    let expected = reference
        .sql("SELECT 2 * count(*), 2 * sum(o_orderkey) FROM orders WHERE o_orderkey < 1000")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("INSERT twice", &expected, &actual.batches);
    let e = client
        .sql("INSERT OVERWRITE appended SELECT o_orderkey, o_totalprice FROM orders")
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("overwrite"), "{e}");
    let unchanged = client
        .sql("SELECT count(*), sum(k) FROM appended")
        .await
        .unwrap();
    assert_same_rows("after a refused overwrite", &expected, &unchanged.batches);

    // Written in parallel: each task writes its own files (lineitem's row groups give both
    // of its scan tasks rows; the small orders files have one row group each).
    let lines = dir.path().join("lines");
    let copied = client
        .sql(&format!(
            "COPY (SELECT l_orderkey, l_quantity FROM lineitem) TO '{}/' STORED AS PARQUET",
            lines.display()
        ))
        .await
        .unwrap();
    let expected = reference
        .sql("SELECT count(*) AS count FROM lineitem")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("COPY lineitem", &expected, &copied.batches);
    let data_files: Vec<String> = files_under(&lines)
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .collect();
    assert!(
        data_files.len() >= 2,
        "one file per writing task: {data_files:?}"
    );

    // One file, written whole at its exact path.
    let single = dir.path().join("single.csv");
    client
        .sql(&format!(
            "COPY (SELECT n_nationkey, n_name FROM nation) TO '{}' STORED AS CSV",
            single.display()
        ))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&single).unwrap();
    assert_eq!(text.lines().count(), 26, "a header and 25 nations: {text}");
    assert!(
        files_under(dir.path())
            .iter()
            .all(|f| !f.contains("_ember_staging"))
    );
}

/// Polls until `dir` holds no file (staging is deleted right away, and again once cancelled
/// tasks have stopped).
async fn wait_empty(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = files_under(dir);
        if files.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "files left in the target: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_cancelled_write_leaves_nothing_in_the_target() {
    let cluster = ProcessCluster::start(2, 1).await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    let dir = tempfile::tempdir().unwrap();

    // Some tasks write their share, one fails (every attempt): the job fails, nothing stays.
    let failed = dir.path().join("failed");
    let e = client
        .sql(&format!(
            "COPY (SELECT o_orderkey AS k FROM orders UNION ALL SELECT CAST(n_name AS BIGINT) AS k FROM nation) \
             TO '{}/' STORED AS PARQUET",
            failed.display()
        ))
        .await
        .expect_err("casting names to numbers fails");
    assert!(e.to_string().contains("Cast"), "{e}");
    wait_empty(&failed).await;

    // Cancelled while slow tasks still run, after quick ones of the same stage have staged
    // their files.
    let cancelled = dir.path().join("cancelled");
    let job = client
        .submit(&format!(
            "COPY (SELECT o_comment AS h FROM orders UNION ALL \
                   SELECT sha256(repeat(l_comment, 200)) AS h FROM lineitem) \
             TO '{}/' STORED AS PARQUET",
            cancelled.display()
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client.status(&job, Duration::from_secs(1)).await.unwrap();
        assert_eq!(status.state, JobState::Running, "{status:?}");
        let staged = files_under(&cancelled)
            .iter()
            .any(|f| f.contains("_ember_staging") && f.ends_with(".parquet"));
        if staged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no task staged its files within 60 s"
        );
    }
    assert!(client.cancel(&job).await.unwrap());
    wait_empty(&cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_committed_once_when_the_leader_dies_mid_job() {
    let mut cluster = EtcdCluster::start(2, 2, 1).await;
    let client = cluster.client().await;
    register_tpch_at(&client, tpch_dir_large()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flags");
    let query = "SELECT l_returnflag, l_orderkey, l_quantity FROM lineitem WHERE l_quantity > 10";
    let job = client
        .submit(&format!(
            "COPY ({query}) TO '{}/' STORED AS PARQUET PARTITIONED BY (l_returnflag)",
            out.display()
        ))
        .await
        .unwrap();
    let first = cluster.leader().await;
    cluster.schedulers[first].kill();
    let status = tokio::time::timeout(Duration::from_secs(120), client.wait(&job, |_| {}))
        .await
        .expect("the write did not finish within 120 s of the failover")
        .unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    // Exactly the query's rows: none lost, none committed twice.
    let reference = datafusion_reference_at(tpch_dir_large()).await;
    let check = "SELECT l_returnflag, count(*), sum(l_orderkey), sum(l_quantity) FROM {t} GROUP BY 1 ORDER BY 1";
    let expected = reference
        .sql(&check.replace("{t}", &format!("({query})")))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE written STORED AS PARQUET LOCATION '{}/'",
        out.display()
    ))
    .await
    .unwrap();
    let actual = ctx
        .sql(&check.replace("{t}", "written"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("written through a failover", &expected, &actual);
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_under(&out)
        .iter()
        .any(|f| f.contains("_ember_staging"))
    {
        assert!(
            Instant::now() < deadline,
            "staging left: {:?}",
            files_under(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
