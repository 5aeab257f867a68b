//! Spark Connect: the real PySpark client (`pyspark-client`, no JVM) against a cluster of
//! `ember` processes — the 22 TPC-H queries through `spark.sql`, eleven of them written with
//! the DataFrame API, DataFrame operations with expected results, sessions that do not see
//! each other's views, an interrupted job and a write read back — and a standby that forwards.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::etcd_support::EtcdCluster;
use crate::support::{
    ProcessCluster, TestCluster, datafusion_reference, output_within, register_tpch, spawn_guarded,
    tpch_dir, write_ipc,
};

/// Runs `python3 args...` with `env`, within `timeout`; its exit status and output.
async fn python(
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> (bool, String) {
    let child = spawn_guarded(
        Command::new("python3")
            .args(&args)
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (status, stdout, stderr) = output_within(child, timeout).await;
    (
        status.success(),
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyspark_runs_unchanged_on_ember() {
    let cluster = ProcessCluster::start(2, 2).await;
    register_tpch(&cluster.client().await).await;
    // What single-node DataFusion answers, for the suite to compare with.
    let expected = tempfile::tempdir().unwrap();
    let reference = datafusion_reference().await;
    for q in 1..=22 {
        let sql = ember::tpch::query(q).unwrap();
        let batches = reference.sql(sql).await.unwrap().collect().await.unwrap();
        write_ipc(&expected.path().join(format!("q{q}.arrow")), &batches);
    }
    let scratch = tempfile::tempdir().unwrap();
    let suite = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/spark_connect_test.py"
    );
    let env = vec![
        (
            "EMBER_SPARK_URL".to_string(),
            format!("sc://127.0.0.1:{}", cluster.spark_connect_port),
        ),
        (
            "EMBER_EXPECTED".into(),
            expected.path().display().to_string(),
        ),
        (
            "EMBER_QUERIES".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tpch").to_string(),
        ),
        ("EMBER_TPCH_DATA".into(), tpch_dir().display().to_string()),
        ("EMBER_SCRATCH".into(), scratch.path().display().to_string()),
        // The suite's own progress, and no stray warnings of the client's about pandas.
        ("PYTHONWARNINGS".into(), "ignore".into()),
    ];
    let args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", suite]
        .map(String::from)
        .to_vec();
    let (ok, output) = python(args, env, Duration::from_secs(900)).await;
    assert!(ok, "the PySpark suite failed\n{output}");
    // Every test ran and passed: 22 + 11 TPC-H queries and the operations.
    assert!(output.contains(" passed"), "{output}");
    assert!(!output.contains("skipped"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forwards_spark_connect_to_the_leader() {
    let cluster = EtcdCluster::start(2, 1, 2).await;
    let leader = cluster.leader().await;
    let port = cluster.schedulers[1 - leader]
        .spark_connect_port
        .expect("schedulers serve Spark Connect");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/spark_connect_standby.py"
    );
    let args = vec![script.to_string(), format!("sc://127.0.0.1:{port}")];
    let env = vec![("PYTHONWARNINGS".to_string(), "ignore".to_string())];
    let (ok, output) = python(args, env, Duration::from_secs(120)).await;
    assert!(ok, "{output}");
    assert!(output.contains("rows 3"), "{output}");
}

mod wire {
    //! Spark Connect spoken directly, for what PySpark does only when a network breaks.
    pub use ember_proto::spark::execute_plan_request::RequestOption;
    pub use ember_proto::spark::execute_plan_request::request_option::RequestOption as Option_;
    pub use ember_proto::spark::execute_plan_response::ResponseType;
    pub use ember_proto::spark::plan::OpType;
    pub use ember_proto::spark::relation::RelType;
    pub use ember_proto::spark::release_execute_request::{Release, ReleaseAll};
    pub use ember_proto::spark::spark_connect_service_client::SparkConnectServiceClient;
    pub use ember_proto::spark::*;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_result_stream_is_reattached_where_it_broke() {
    use wire::*;
    let cluster = ProcessCluster::start(2, 2).await;
    register_tpch(&cluster.client().await).await;
    let url = format!("http://127.0.0.1:{}", cluster.spark_connect_port);
    let mut client = SparkConnectServiceClient::connect(url).await.unwrap();
    let session = "11111111-2222-3333-4444-555555555555".to_string();
    let operation = "66666666-7777-8888-9999-000000000000".to_string();
    let plan = Plan {
        op_type: Some(OpType::Root(Relation {
            common: None,
            rel_type: Some(RelType::Sql(Sql {
                query: "SELECT l_orderkey, l_comment FROM lineitem".into(),
                ..Default::default()
            })),
        })),
    };
    let request = ExecutePlanRequest {
        session_id: session.clone(),
        operation_id: Some(operation.clone()),
        plan: Some(plan),
        request_options: vec![RequestOption {
            request_option: Some(Option_::ReattachOptions(ReattachOptions {
                reattachable: true,
            })),
        }],
        ..Default::default()
    };
    let mut stream = client.execute_plan(request).await.unwrap().into_inner();
    // The schema and two batches; then the connection "breaks".
    let mut rows = 0i64;
    let mut last = None;
    for _ in 0..3 {
        let response = stream.message().await.unwrap().expect("more responses");
        if let Some(ResponseType::ArrowBatch(batch)) = &response.response_type {
            assert_eq!(batch.start_offset, Some(rows));
            rows += batch.row_count;
        }
        last = Some(response.response_id);
    }
    assert!(rows > 0);
    drop(stream);
    let reattach = ReattachExecuteRequest {
        session_id: session.clone(),
        operation_id: operation.clone(),
        last_response_id: last,
        ..Default::default()
    };
    let mut rest = client
        .reattach_execute(reattach.clone())
        .await
        .unwrap()
        .into_inner();
    let mut complete = false;
    while let Some(response) = rest.message().await.unwrap() {
        match response.response_type {
            Some(ResponseType::ArrowBatch(batch)) => {
                // Exactly where the first stream stopped: nothing repeated, nothing skipped.
                assert_eq!(batch.start_offset, Some(rows));
                rows += batch.row_count;
            }
            Some(ResponseType::ResultComplete(_)) => complete = true,
            _ => {}
        }
    }
    assert!(complete, "the reattached stream did not complete");
    let reference = datafusion_reference().await;
    let expected = reference
        .table("lineitem")
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(rows, expected as i64);
    // Once released, the operation is gone.
    client
        .release_execute(ReleaseExecuteRequest {
            session_id: session.clone(),
            operation_id: operation.clone(),
            release: Some(Release::ReleaseAll(ReleaseAll {})),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client.reattach_execute(reattach).await.unwrap_err();
    assert!(err.message().contains("OPERATION_NOT_FOUND"), "{err}");
}
