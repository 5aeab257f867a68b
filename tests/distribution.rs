//! The work is really distributed: executor counters (reported with heartbeats, not scraped from
//! logs) show both executors scanned, both fetched from the other over Flight, and the
//! scheduler scanned nothing.

use std::time::{Duration, Instant};

use crate::support::TestCluster;
use crate::support::{ProcessCluster, datafusion_reference, register_tpch, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_scan_and_shuffle_and_the_scheduler_scans_nothing() {
    let cluster = ProcessCluster::start(2, 2).await;
    let client = cluster.client().await;
    register_tpch(&client).await;

    let reference = datafusion_reference().await;
    let count = |table: &str| {
        let sql = format!("select count(*) from {table}");
        let reference = &reference;
        async move {
            let batches = reference.sql(&sql).await.unwrap().collect().await.unwrap();
            rows(&batches)[0][0].parse::<u64>().unwrap()
        }
    };
    let expected = count("lineitem").await + count("orders").await;

    // Full scans (no prunable predicate), each cut at a hash repartition.
    for sql in [
        "select l_returnflag, sum(l_quantity) from lineitem group by l_returnflag",
        "select o_orderpriority, count(o_totalprice) from orders group by o_orderpriority",
    ] {
        let result = client.sql(sql).await.unwrap();
        assert!(result.status.stages_total >= 2, "{sql} ran as one stage");
        assert!(result.num_rows() > 0);
    }

    // Counters arrive with heartbeats: poll until they add up, or fail with what they say.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (executors, scheduler_rows) = loop {
        let (executors, scheduler_rows) = client.executors().await.unwrap();
        let scanned: u64 = executors.iter().map(|e| e.metrics.rows_scanned).sum();
        let settled = executors
            .iter()
            .all(|e| e.metrics.bytes_fetched_remote > 0 && e.metrics.rows_scanned > 0);
        if (scanned == expected && settled) || Instant::now() > deadline {
            break (executors, scheduler_rows);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(executors.len(), 2);
    let scanned: u64 = executors.iter().map(|e| e.metrics.rows_scanned).sum();
    assert_eq!(
        scanned, expected,
        "rows scanned by executors: {executors:?}"
    );
    for e in &executors {
        assert!(e.metrics.rows_scanned > 0, "{} scanned nothing", e.spec.id);
        assert!(
            e.metrics.bytes_fetched_remote > 0,
            "{} fetched nothing from the other executor: {:?}",
            e.spec.id,
            e.metrics
        );
        assert!(e.metrics.bytes_served > 0, "{} served nothing", e.spec.id);
    }
    assert_eq!(scheduler_rows, 0, "the scheduler scanned table rows itself");
}

/// Fair sharing between jobs, with real processes: on one executor slot, a short query submitted
/// while a long job holds the slot gets it as soon as one of the long job's tasks ends, and
/// finishes while the long job still runs; under FIFO it waits for every task of the long job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_query_overtakes_a_long_job_under_fair_sharing_and_waits_under_fifo() {
    for (policy, overtakes) in [("fair", true), ("fifo", false)] {
        let env = [("EMBER_SCHEDULING_POLICY", policy)];
        let cluster = ProcessCluster::start_with_env(1, 1, &env).await;
        let client = cluster.client().await;
        register_tpch(&client).await;
        // Many small tasks: 64 partitions per shuffle, one slot to run them.
        let long = client
            .submit_with_settings(
                "SELECT l_suppkey, count(*), sum(l_quantity) FROM lineitem GROUP BY l_suppkey",
                &[("datafusion.execution.target_partitions", "64")],
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = loop {
            let status = client.status(&long, Duration::ZERO).await.unwrap();
            if status.tasks_completed >= 1 {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{policy}: the long job never ran"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(
            started.tasks_total - started.tasks_completed >= 20,
            "{policy}: the long job is nearly done before the short one comes: {started:?}"
        );
        let short = client
            .submit("SELECT count(*) FROM orders WHERE o_orderkey < 100")
            .await
            .unwrap();
        let done = client.wait(&short, |_| {}).await.unwrap();
        assert_eq!(done.state, ember_core::job::JobState::Succeeded);
        let long_now = client.status(&long, Duration::ZERO).await.unwrap();
        if overtakes {
            assert!(
                long_now.tasks_completed < long_now.tasks_total,
                "{policy}: the short query waited for the whole long job: {long_now:?}"
            );
        } else {
            assert_eq!(
                long_now.state,
                ember_core::job::JobState::Succeeded,
                "{policy}: the short query ran before the long job's tasks"
            );
        }
        client.wait(&long, |_| {}).await.unwrap();
    }
}
