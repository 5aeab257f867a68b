//! The known traps of cutting DataFusion plans into per-partition tasks, each with a test.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use ember_client::{EmbeddedCluster, EmberClient};

use crate::support::{assert_same_rows, datafusion_reference, register_tpch, rows};

async fn explain(client: &EmberClient, sql: &str) -> String {
    let result = client.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    rows(&result.batches)
        .into_iter()
        .find(|r| r[0] == "distributed_plan")
        .expect("EXPLAIN shows the distributed plan")[1]
        .clone()
}

fn max_tasks(distributed_plan: &str) -> usize {
    distributed_plan
        .lines()
        .filter_map(|l| l.split("tasks=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_shows_stages_and_joins_are_cut_safely() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    let client = cluster.client().await.unwrap();
    register_tpch(&client).await;
    let reference = datafusion_reference().await;

    let plan = explain(&client, ember::tpch::query(3).unwrap()).await;
    assert!(plan.contains("Stage 1"), "{plan}");
    assert!(plan.contains("ShuffleWriterExec"), "{plan}");
    assert!(plan.contains("ShuffleReaderExec"), "{plan}");

    // Q17 and Q18 wait on join builds: with dynamic filters left on, a task would wait for
    // build sides of partitions it never runs. They must finish, with several tasks per stage.
    for q in [17, 18] {
        let sql = ember::tpch::query(q).unwrap();
        let plan = explain(&client, sql).await;
        assert!(
            max_tasks(&plan) >= 2,
            "q{q} has no stage with 2+ tasks:\n{plan}"
        );
        let expected = reference.sql(sql).await.unwrap().collect().await.unwrap();
        let actual = tokio::time::timeout(Duration::from_secs(60), client.sql(sql))
            .await
            .unwrap_or_else(|_| panic!("q{q} hung"))
            .unwrap();
        assert_same_rows(&format!("q{q}"), &expected, &actual.batches);
    }

    // Joins whose small build side emits unmatched rows at the end (left, full, anti, NOT IN),
    // probed by a table with several partitions: broadcast, every task would emit its own copy
    // of the unmatched build rows.
    let joins = [
        "select n_name, count(c_custkey) as c from nation left join customer \
         on n_nationkey = c_nationkey and c_acctbal > 9990 group by n_name order by n_name",
        "select r_name, count(c_custkey) as c from region full join customer \
         on r_regionkey = c_nationkey and c_acctbal > 9990 group by r_name order by r_name",
        "select n_name from nation where not exists \
         (select 1 from customer where c_nationkey = n_nationkey and c_acctbal > 9995) order by n_name",
        "select n_name from nation where n_nationkey not in \
         (select c_nationkey from customer where c_acctbal > 9995) order by n_name",
        "select count(*) from nation left semi join customer on n_nationkey = c_nationkey",
    ];
    let mut unsafe_broadcasts = 0;
    for sql in joins {
        let expected = reference.sql(sql).await.unwrap().collect().await.unwrap();
        let actual = client.sql(sql).await.unwrap();
        assert_same_rows(sql, &expected, &actual.batches);
        let physical = reference
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let physical = rows(&physical)
            .into_iter()
            .map(|r| r[1].clone())
            .collect::<String>();
        unsafe_broadcasts += physical
            .lines()
            .filter(|l| l.contains("mode=CollectLeft"))
            .filter(|l| {
                !["join_type=Inner", "join_type=Right"]
                    .iter()
                    .any(|t| l.contains(t))
            })
            .count();
    }
    assert!(
        unsafe_broadcasts >= 2,
        "the queries no longer exercise the trap: DataFusion broadcasts no unsafe join"
    );
    cluster.shutdown().await;
}

/// A plan listing many files (with their statistics) is larger than gRPC's default 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_larger_than_four_mib_reach_the_executors() {
    let dir = tempfile::tempdir().unwrap();
    let columns = 80;
    let files = 2000;
    let schema = Arc::new(Schema::new(
        (0..columns)
            .map(|c| {
                Field::new(
                    format!("column_with_a_long_name_{c}"),
                    DataType::Int64,
                    false,
                )
            })
            .collect::<Vec<_>>(),
    ));
    for f in 0..files {
        let arrays: Vec<ArrayRef> = (0..columns)
            .map(|c| Arc::new(Int64Array::from(vec![f as i64, (f * c) as i64])) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).unwrap();
        let path = dir.path().join(format!(
            "a-file-with-a-rather-long-name-number-{f:05}.parquet"
        ));
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None)
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let ddl = format!(
        "create external table wide stored as parquet location '{}/'",
        dir.path().display()
    );
    let sql = "select sum(column_with_a_long_name_0) as s, count(*) as n from wide";

    // The same plan, encoded as the scheduler sends it, really is over the default limit.
    let ctx = SessionContext::new();
    ctx.sql(&ddl).await.unwrap();
    let expected = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let physical = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let encoded = ember_proto::encode_plan(physical).unwrap();
    assert!(
        encoded.len() > 4 * 1024 * 1024,
        "plan is only {} bytes",
        encoded.len()
    );

    let cluster = EmbeddedCluster::start(2, 1).await.unwrap();
    let client = cluster.client().await.unwrap();
    client.sql(&ddl).await.unwrap();
    let actual = client.sql(sql).await.unwrap();
    assert_same_rows("wide", &expected, &actual.batches);
    cluster.shutdown().await;
}
