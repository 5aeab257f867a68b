//! All 22 TPC-H queries give single-node DataFusion's results, embedded and as processes.

use ember_client::EmbeddedCluster;

use crate::support::{ProcessCluster, check_tpch_queries, register_tpch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_embedded_two_executors_matches_datafusion() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    let client = cluster.client().await.unwrap();
    register_tpch(&client).await;
    check_tpch_queries(&client, 1..=22).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_scheduler_and_two_executor_processes_matches_datafusion() {
    let cluster = ProcessCluster::start(2, 2).await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    check_tpch_queries(&client, 1..=22).await;
}
