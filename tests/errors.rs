//! Bad input reaches the client as one clear error; the job is failed; the cluster goes on.

use std::time::Duration;

use ember_client::EmbeddedCluster;
use ember_core::job::JobState;

async fn expect_error(client: &ember_client::EmberClient, sql: &str, needle: &str) {
    let result = tokio::time::timeout(Duration::from_secs(60), client.sql(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: hung"));
    let err = result.expect_err(sql).to_string();
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{sql}: error {err:?} does not mention {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sql_missing_tables_and_files_and_failing_tasks_are_clear_errors() {
    let cluster = EmbeddedCluster::start(2, 1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    expect_error(&client, "SELEC 1", "SELEC").await;
    expect_error(&client, "select * from no_such_table", "no_such_table").await;
    expect_error(
        &client,
        &format!(
            "create external table gone stored as parquet location '{}/missing.parquet'",
            dir.path().display()
        ),
        "missing.parquet",
    )
    .await;

    // A table whose file turns corrupt after it was registered: the task fails at run time.
    let csv = dir.path().join("nums.csv");
    std::fs::write(&csv, "a,b\n1,2\n3,4\n").unwrap();
    client
        .sql(&format!(
            "create external table nums (a int, b int) stored as csv location '{}' options ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .unwrap();
    let ok = client.sql("select sum(a) as s from nums").await.unwrap();
    assert_eq!(
        crate::support::rows(&ok.batches),
        vec![vec!["4".to_string()]]
    );
    std::fs::write(&csv, "a,b\n1,2\nnot-a-number,4\n").unwrap();
    let job = client.submit("select sum(a) from nums").await.unwrap();
    let err = client
        .wait(&job, |_| {})
        .await
        .expect_err("corrupt data must fail the job");
    assert!(err.to_string().contains("not-a-number"), "{err}");
    let status = client.status(&job, Duration::ZERO).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("not-a-number"));

    // Corrupt Parquet: garbage bytes in a .parquet file.
    let bad = dir.path().join("bad.parquet");
    std::fs::write(&bad, b"this is not parquet at all").unwrap();
    expect_error(
        &client,
        &format!(
            "create external table bad stored as parquet location '{}'",
            bad.display()
        ),
        "parquet",
    )
    .await;

    // Unknown jobs are a clear error too.
    let missing = client
        .status(&"no-such-job".into(), Duration::ZERO)
        .await
        .expect_err("unknown job");
    assert!(missing.to_string().contains("no-such-job"), "{missing}");

    // And the cluster still serves.
    std::fs::write(&csv, "a,b\n5,6\n").unwrap();
    let after = client.sql("select sum(a) from nums").await.unwrap();
    assert_eq!(
        crate::support::rows(&after.batches),
        vec![vec!["5".to_string()]]
    );
    cluster.shutdown().await;
}

/// A job on a cluster without executors fails with the reason, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_without_executors_fail_with_the_reason() {
    let config = ember_scheduler::SchedulerConfig {
        bind: "127.0.0.1:0".into(),
        executor_timeout_secs: 1,
        ..Default::default()
    };
    let scheduler = ember_scheduler::start(config).await.unwrap();
    let url = format!("http://{}", scheduler.local_addr);
    let client = ember_client::EmberClient::connect(&url).await.unwrap();
    crate::support::register_tpch(&client).await;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        client.sql("select count(l_orderkey) from lineitem where l_quantity > 1"),
    )
    .await
    .expect("the job must not wait forever");
    let err = result.expect_err("no executor can run it").to_string();
    assert!(err.contains("no executor"), "{err}");
    scheduler.shutdown().await.unwrap();
}
