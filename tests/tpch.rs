//! All 22 TPC-H queries give single-node DataFusion's results, embedded and as processes.

use ember_client::EmbeddedCluster;

use crate::support::{
    ProcessCluster, TestCluster, assert_same_rows, check_tpch_queries, datafusion_reference,
    register_tpch,
};

/// The 22 queries on `cluster`, against DataFusion's answers.
async fn check_tpch_on(cluster: &impl TestCluster) {
    let client = cluster.client().await;
    register_tpch(&client).await;
    check_tpch_queries(&client, 1..=22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_embedded_two_executors_matches_datafusion() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    check_tpch_on(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_scheduler_and_two_executor_processes_matches_datafusion() {
    check_tpch_on(&ProcessCluster::start(2, 2).await).await;
}

/// A DataFusion logical plan (a DataFrame built by the client) runs like its SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logical_plans_from_dataframes_run_on_the_cluster() {
    let cluster = EmbeddedCluster::start(2, 1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let reference = datafusion_reference().await;
    for q in [3, 10] {
        let df = reference.sql(ember::tpch::query(q).unwrap()).await.unwrap();
        let job = client.submit_plan(df.logical_plan()).await.unwrap();
        let status = client.wait(&job, |_| {}).await.unwrap();
        assert!(
            status.stages_total >= 2,
            "q{q} ran as {} stages",
            status.stages_total
        );
        let actual = client.collect(status).await.unwrap();
        let expected = df.collect().await.unwrap();
        assert_same_rows(&format!("plan q{q}"), &expected, &actual.batches);
    }
    cluster.shutdown().await;
}
