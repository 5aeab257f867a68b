//! Object stores: a real S3-compatible server (moto, started here), read and written by a
//! process cluster whose processes get the credentials from their environment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use ember_core::object_stores::{EmberObjectStores, ObjectStoreConfig};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::cli::ember;
use crate::support::TestCluster;
use crate::support::{
    ChildGuard, ProcessCluster, assert_same_rows, datafusion_reference, spawn_guarded, tpch_dir,
};

const BUCKET: &str = "ember-test";
const SECRET: &str = "s3cr3t-never-logged";

/// moto's S3 server on a free port, killed on drop.
struct Moto {
    endpoint: String,
    _child: ChildGuard,
}

impl Moto {
    fn start() -> Moto {
        let mut child = spawn_guarded(
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = child.0.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("moto_server exited before listening")
                .unwrap();
            if let Some(url) = line.split("Running on ").nth(1) {
                break url.trim().to_string();
            }
        };
        // moto logs every request: keep draining its output so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        let status = Command::new("python3")
            .args([
                "-c",
                "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
                 aws_access_key_id='x', aws_secret_access_key='x').create_bucket(Bucket=sys.argv[2])",
                &endpoint,
                BUCKET,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cannot create the bucket");
        Moto {
            endpoint,
            _child: child,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EMBER_S3_ENDPOINT", self.endpoint.clone()),
            ("EMBER_S3_ACCESS_KEY_ID", "ember-key".to_string()),
            ("EMBER_S3_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("EMBER_S3_ALLOW_HTTP", "true".to_string()),
            ("EMBER_LOG", "debug".to_string()),
        ]
    }

    fn config(&self) -> ObjectStoreConfig {
        ObjectStoreConfig {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_access_key_id: Some("ember-key".into()),
            s3_secret_access_key: Some(SECRET.into()),
            s3_path_style: true,
            s3_allow_http: true,
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        use datafusion::execution::object_store::ObjectStoreRegistry;
        EmberObjectStores::new(self.config())
            .get_store(&url::Url::parse(&format!("s3://{BUCKET}/")).unwrap())
            .unwrap()
    }

    /// A DataFusion session (this process) reading the bucket.
    fn session(&self) -> SessionContext {
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(EmberObjectStores::new(self.config()))
            .build_arc()
            .unwrap();
        SessionContext::new_with_config_rt(SessionConfig::new(), runtime)
    }
}

async fn upload_table(store: &dyn ObjectStore, table: &str) {
    let dir = tpch_dir().join(table);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let key = StorePath::from(format!("tpch/{table}/{name}"));
        store
            .put(&key, std::fs::read(&path).unwrap().into())
            .await
            .unwrap();
    }
}

async fn keys_under(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let prefix = StorePath::from(prefix);
    let mut keys: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Polls until no key is left under `prefix` (staging is deleted at once, and again once
/// cancelled tasks have stopped).
async fn wait_no_keys(store: &dyn ObjectStore, prefix: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = keys_under(store, prefix).await;
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "files left on S3 under {prefix}: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etl_job_reads_and_writes_partitioned_parquet_on_s3() {
    let moto = Moto::start();
    let store = moto.store();
    for table in ["orders", "customer"] {
        upload_table(store.as_ref(), table).await;
    }
    let mut env = moto.env();
    let allowed = format!("s3://{BUCKET}/,{}", crate::support::allowed_locations());
    env.push(("EMBER_ALLOWED_LOCATIONS", allowed));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log_dir = tempfile::tempdir().unwrap();
    let cluster = ProcessCluster::start_with_env_logged(2, 1, &env, log_dir.path()).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("etl.sql");
    let query = "SELECT c_mktsegment, o_orderpriority, count(*) AS orders, sum(o_totalprice) AS revenue \
                 FROM {orders} JOIN {customer} ON o_custkey = c_custkey \
                 GROUP BY c_mktsegment, o_orderpriority";
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE s3_orders STORED AS PARQUET LOCATION 's3://{BUCKET}/tpch/orders/';\n\
             CREATE EXTERNAL TABLE s3_customer STORED AS PARQUET LOCATION 's3://{BUCKET}/tpch/customer/';\n\
             COPY ({}) TO 's3://{BUCKET}/out/segments/' STORED AS PARQUET PARTITIONED BY (c_mktsegment);\n",
            query
                .replace("{orders}", "s3_orders")
                .replace("{customer}", "s3_customer")
        ),
    )
    .unwrap();
    let url = cluster.scheduler_url.clone();
    let script_path = script.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ember(&[
            "submit",
            "--scheduler",
            &url,
            "-f",
            &script_path,
            "--wait",
            "--name",
            "s3-etl",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "the ETL job failed:\n{stdout}\n{stderr}");

    // One folder per segment, Parquet files in each.
    let keys = keys_under(store.as_ref(), "out/segments").await;
    let reference = datafusion_reference().await;
    let segments = reference
        .sql("SELECT DISTINCT c_mktsegment FROM customer ORDER BY 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let segments = crate::support::rows(&segments);
    for segment in &segments {
        let folder = format!("out/segments/c_mktsegment={}/", segment[0]);
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&folder) && k.ends_with(".parquet")),
            "no Parquet file under {folder}: {keys:?}"
        );
    }
    // The rows written are the query's, read back from S3 by another engine.
    let ctx = moto.session();
    ctx.register_parquet(
        "written",
        format!("s3://{BUCKET}/out/segments/"),
        ParquetReadOptions::default()
            .table_partition_cols(vec![("c_mktsegment".to_string(), DataType::Utf8)]),
    )
    .await
    .unwrap();
    let actual = ctx
        .sql("SELECT c_mktsegment, o_orderpriority, orders, revenue FROM written ORDER BY 1, 2")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let expected = reference
        .sql(&format!(
            "SELECT * FROM ({}) ORDER BY 1, 2",
            query
                .replace("{orders}", "orders")
                .replace("{customer}", "customer")
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("written segments", &expected, &actual);

    // A write that fails mid-way (some tasks staged their files) leaves nothing on S3.
    let client = cluster.client().await;
    let e = client
        .sql(&format!(
            "COPY (SELECT o_orderkey AS k FROM s3_orders UNION ALL \
                   SELECT CAST(c_name AS BIGINT) AS k FROM s3_customer) \
             TO 's3://{BUCKET}/out/failed/' STORED AS PARQUET"
        ))
        .await
        .expect_err("names are not numbers");
    assert!(e.to_string().contains("Cast"), "{e}");
    wait_no_keys(store.as_ref(), "out/failed").await;

    // A write cancelled mid-way (quick tasks staged their files, slow ones still run) leaves
    // nothing on S3 either.
    let job = client
        .submit(&format!(
            "COPY (SELECT c_comment AS h FROM s3_customer UNION ALL \
                   SELECT sha256(repeat(o_comment, 200)) AS h FROM s3_orders) \
             TO 's3://{BUCKET}/out/cancelled/' STORED AS PARQUET"
        ))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = client
            .status(&job, std::time::Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(
            status.state,
            ember_core::job::JobState::Running,
            "{status:?}"
        );
        let staged = keys_under(store.as_ref(), "out/cancelled")
            .await
            .iter()
            .any(|k| k.contains("_ember_staging") && k.ends_with(".parquet"));
        if staged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no task staged its files within 60 s"
        );
    }
    assert!(client.cancel(&job).await.unwrap());
    wait_no_keys(store.as_ref(), "out/cancelled").await;

    // The credentials stay in the processes: not in EXPLAIN, the catalog, errors, job status
    // and listings, executors' metrics, or any log line.
    let error = client
        .sql(&format!(
            "CREATE EXTERNAL TABLE gone STORED AS PARQUET LOCATION 's3://{BUCKET}/missing.parquet'"
        ))
        .await
        .expect_err("a missing object");
    assert!(
        !error.to_string().contains(SECRET),
        "an error shows the secret"
    );
    let status = client
        .status(&job, std::time::Duration::ZERO)
        .await
        .unwrap();
    let scripts = client.scripts(None).await.unwrap();
    let (executors, _) = client.executors().await.unwrap();
    let listed = format!("{status:?} {scripts:?} {executors:?}");
    assert!(listed.contains("cancel"), "{listed}");
    assert!(
        !listed.contains(SECRET),
        "a status, listing or metric shows the secret"
    );
    let explain = client
        .sql("EXPLAIN SELECT sum(o_totalprice) FROM s3_orders")
        .await
        .unwrap();
    let shown = format!("{:?}", crate::support::rows(&explain.batches));
    assert!(shown.contains("tpch/orders/part-"), "{shown}");
    assert!(!shown.contains(SECRET), "EXPLAIN shows the secret");
    let definition = client.sql("SHOW CREATE TABLE s3_orders").await.unwrap();
    assert!(!format!("{:?}", crate::support::rows(&definition.batches)).contains(SECRET));
    for entry in std::fs::read_dir(log_dir.path()).unwrap() {
        let log = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!log.is_empty(), "debug logs were written");
        assert!(!log.contains(SECRET), "a log line holds the secret");
    }
}
