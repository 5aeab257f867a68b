//! The Rust DataFrame client: DataFusion's DataFrame API executed on a process cluster,
//! checked against the same DataFrame on single-node DataFusion.

use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use ember_client::EmberSession;

use crate::support::{ProcessCluster, assert_same_rows, register_tpch, tpch_dir};

#[allow(dead_code)]
#[path = "../examples/dataframe.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataframe_example_runs_distributed_and_writes_parquet() {
    let cluster = ProcessCluster::start(2, 2).await;
    let session = EmberSession::connect(&cluster.scheduler_url).await.unwrap();
    let data = tpch_dir().to_str().unwrap();

    let expected = example::top_segments(&SessionContext::new(), data)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let df = example::top_segments(&session, data).await.unwrap();
    let actual = df.clone().collect().await.unwrap();
    assert_same_rows("top segments", &expected, &actual);
    assert_eq!(actual.iter().map(|b| b.num_rows()).sum::<usize>(), 5);

    // It ran as a job on the executors (their counters arrive with heartbeats), not here
    // and not on the scheduler.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (executors, on_scheduler) = session.client().executors().await.unwrap();
        let scanned: u64 = executors.iter().map(|e| e.metrics.rows_scanned).sum();
        assert_eq!(on_scheduler, 0, "the scheduler scanned the tables itself");
        if scanned > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the executors scanned nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // write_parquet runs on the cluster too; the files hold the result.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("segments");
    df.write_parquet(
        target.to_str().unwrap(),
        datafusion::dataframe::DataFrameWriteOptions::new(),
        None,
    )
    .await
    .unwrap();
    let written = SessionContext::new()
        .read_parquet(target.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .sort(vec![col("revenue").sort(false, true)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("written segments", &expected, &written);

    // A table of the cluster's catalog, as a DataFrame.
    register_tpch(session.client()).await;
    let nations = session
        .cluster_table("nation")
        .await
        .unwrap()
        .filter(col("n_regionkey").eq(lit(1)))
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(nations, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataframe_over_missing_files_fails_clearly() {
    let cluster = ProcessCluster::start(1, 1).await;
    let session = EmberSession::connect(&cluster.scheduler_url).await.unwrap();
    let e = session
        .read_parquet("/nonexistent/ember/table/", ParquetReadOptions::default())
        .await
        .expect_err("no such files");
    assert!(e.to_string().contains("nonexistent"), "{e}");
}
