//! Executor memory limits: operators past the limit spill to disk and still give the right
//! answer; where spilling cannot help, the query fails naming the limit.

use std::time::{Duration, Instant};

use ember_client::EmbeddedCluster;
use ember_executor::ExecutorConfig;
use ember_scheduler::SchedulerConfig;

use crate::support::{assert_same_rows, datafusion_reference_at, register_tpch_at, tpch_dir_large};

async fn cluster(memory_limit_mb: u64) -> EmbeddedCluster {
    let executor = ExecutorConfig {
        memory_limit_mb,
        slots: 1,
        ..ExecutorConfig::default()
    };
    EmbeddedCluster::start_configured(SchedulerConfig::default(), executor, 2, "127.0.0.1:0")
        .await
        .unwrap()
}

/// Every order's quantity and line count: one group per order (750,000 at SF 0.5).
const GROUP_BY: &str = "select count(*) as orders, sum(q) as quantity, max(n) as most_lines \
    from (select l_orderkey, sum(l_quantity) as q, count(*) as n from lineitem group by l_orderkey)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_by_past_the_memory_limit_spills_and_stays_correct() {
    let dir = tpch_dir_large();
    let cluster = cluster(16).await;
    let client = cluster.client().await.unwrap();
    register_tpch_at(&client, dir).await;
    let result = client.sql(GROUP_BY).await.unwrap();
    let reference = datafusion_reference_at(dir).await;
    let expected = reference
        .sql(GROUP_BY)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("group by", &expected, &result.batches);
    // Counters reach the scheduler with the executors' heartbeats.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (executors, _) = client.executors().await.unwrap();
        let spills: u64 = executors.iter().map(|e| e.metrics.spill_count).sum();
        let spilled: u64 = executors.iter().map(|e| e.metrics.spilled_bytes).sum();
        if spills > 0 && spilled > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no spill reported under a 16 MiB limit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_cannot_fit_fails_naming_the_limit() {
    let dir = tpch_dir_large();
    let cluster = cluster(1).await;
    let client = cluster.client().await.unwrap();
    register_tpch_at(&client, dir).await;
    // A hash join's build side does not spill: 750,000 orders cannot be held in 1 MiB.
    let join = "select count(*) from orders join lineitem on o_orderkey = l_orderkey";
    let err = client.sql(join).await.unwrap_err().to_string();
    assert!(err.contains("memory limit is 1 MiB"), "{err}");
    // The cluster itself is fine.
    let ok = client.sql("select count(*) from region").await.unwrap();
    assert_eq!(ok.num_rows(), 1);
}
