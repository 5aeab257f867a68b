//! SQL behaviour as sqllogictest files (`tests/slt/*.slt`), run unchanged against single-node
//! DataFusion — whose answers the files hold — and against Ember, embedded and as processes.
//! The TPC-H tables are registered first. `EMBER_BLESS=1` rewrites the expected results from
//! DataFusion (review the diff, then commit it).

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::prelude::SessionContext;
use ember_client::{EmbeddedCluster, EmberClient};
use sqllogictest::{DBOutput, DefaultColumnType, Runner};

use crate::support::{ProcessCluster, TestCluster, datafusion_reference, register_tpch, rows};

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "sqllogictest files missing in {}",
        dir.display()
    );
    files
}

/// A result as sqllogictest compares it: column kinds, and each value as text (NULL, floats to
/// 4 decimals so that summation order does not matter, an empty string as `(empty)`).
fn output(schema: &Schema, batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    if schema.fields().is_empty() {
        return DBOutput::StatementComplete(0);
    }
    let types = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
                DefaultColumnType::FloatingPoint
            }
            _ => DefaultColumnType::Text,
        })
        .collect();
    let rows = rows(batches)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .zip(schema.fields())
                .map(|(text, field)| match field.data_type() {
                    _ if text == "NULL" => text,
                    t if t.is_floating() => {
                        format!("{:.4}", text.parse::<f64>().unwrap_or(f64::NAN))
                    }
                    _ if text.is_empty() => "(empty)".to_string(),
                    _ => text,
                })
                .collect()
        })
        .collect();
    DBOutput::Rows { types, rows }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

/// Single-node DataFusion: the reference.
struct DataFusion(SessionContext);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for DataFusion {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let df = self.0.sql(sql).await.map_err(|e| Failed(e.to_string()))?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await.map_err(|e| Failed(e.to_string()))?;
        Ok(output(&schema, &batches))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Ember, through its client.
struct Ember(EmberClient);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Ember {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let result = self.0.sql(sql).await.map_err(|e| Failed(e.to_string()))?;
        Ok(output(&result.schema, &result.batches))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ember"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

async fn run_all<D, F, Fut>(engine: &str, connect: F)
where
    D: sqllogictest::AsyncDB<ColumnType = DefaultColumnType> + Send,
    F: Fn() -> Fut + Clone + Send,
    Fut: std::future::Future<Output = D> + Send,
{
    let mut failures = Vec::new();
    for file in files() {
        let connect = connect.clone();
        let mut runner = Runner::new(move || {
            let connect = connect.clone();
            async move { Ok::<D, D::Error>(connect().await) }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{engine}: {}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_files_hold_datafusions_answers() {
    let reference = datafusion_reference().await;
    if std::env::var_os("EMBER_BLESS").is_some() {
        for file in files() {
            let ctx = reference.clone();
            let mut runner = Runner::new(move || {
                let ctx = ctx.clone();
                async move { Ok::<_, Failed>(DataFusion(ctx)) }
            });
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap();
        }
    }
    run_all("datafusion", move || {
        let ctx = reference.clone();
        async move { DataFusion(ctx) }
    })
    .await;
}

/// Every file on `cluster`, with the TPC-H tables registered.
async fn run_on(engine: &str, cluster: &impl TestCluster) {
    let client = cluster.client().await;
    register_tpch(&client).await;
    run_all(engine, move || {
        let client = client.clone();
        async move { Ember(client) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_files_give_the_same_answers_on_an_embedded_cluster() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    run_on("ember embedded", &cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_files_give_the_same_answers_on_a_cluster_of_processes() {
    run_on("ember processes", &ProcessCluster::start(2, 2).await).await;
}
