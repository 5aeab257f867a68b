//! Arrow Flight SQL: the ADBC driver from Python against a process cluster, Rust's Flight SQL
//! client for the error paths, and the shared catalog through a standby and a failover.

use std::process::{Command, Stdio};
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::etcd_support::EtcdCluster;
use crate::support::TestCluster;
use crate::support::{
    ProcessCluster, assert_same_rows, datafusion_reference, output_within, register_tpch,
    spawn_guarded, tpch_dir, write_ipc,
};

const PYTHON_QUERIES: [usize; 7] = [1, 3, 5, 6, 10, 13, 18];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_python_client() {
    // Clients sign in: the driver's own handshake (user name and token) is part of the test.
    let analyst = ember_core::auth::new_token().unwrap();
    let executor = ember_core::auth::new_token().unwrap();
    let lines = [
        ember_core::auth::Credentials::line("analyst", &analyst).unwrap(),
        ember_core::auth::Credentials::line("ember-executor", &executor).unwrap(),
    ]
    .join("\n");
    let cluster = ProcessCluster::start_with_env(
        2,
        2,
        &[
            ("EMBER_ALLOW_ANONYMOUS", "false"),
            ("EMBER_AUTH_TOKENS", &lines),
            ("EMBER_TOKEN", &executor),
        ],
    )
    .await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    // What single-node DataFusion answers, for the script to compare with.
    let expected = tempfile::tempdir().unwrap();
    let reference = datafusion_reference().await;
    for q in PYTHON_QUERIES {
        let sql = ember::tpch::query(q).unwrap();
        let batches = reference.sql(sql).await.unwrap().collect().await.unwrap();
        write_ipc(&expected.path().join(format!("q{q}.arrow")), &batches);
    }
    for bound in [1000, 50000] {
        let sql = format!(
            "SELECT count(*) AS n, sum(o_totalprice) AS total FROM orders WHERE o_orderkey < {bound}"
        );
        let batches = reference.sql(&sql).await.unwrap().collect().await.unwrap();
        write_ipc(
            &expected.path().join(format!("param_{bound}.arrow")),
            &batches,
        );
    }
    let sql = "SELECT count(*) AS n FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey \
               WHERE c.c_mktsegment = 'BUILDING' AND o.o_orderdate < DATE '1995-03-15'";
    let batches = reference.sql(sql).await.unwrap().collect().await.unwrap();
    write_ipc(&expected.path().join("param_building.arrow"), &batches);
    let uri = cluster.scheduler_url.replace("http://", "grpc://");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/flight_sql_adbc.py"
    );
    let queries: Vec<String> = PYTHON_QUERIES.iter().map(|q| q.to_string()).collect();
    let child = spawn_guarded(
        Command::new("python3")
            .arg(script)
            .args(["--uri", &uri, "--tpch", &queries.join(",")])
            .args(["--user", "analyst", "--password", &analyst])
            .arg("--expected")
            .arg(expected.path())
            .arg("--queries")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tpch"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (status, stdout, stderr) = output_within(child, Duration::from_secs(300)).await;
    assert!(
        status.success(),
        "the ADBC script failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("without credentials: refused"), "{stdout}");
    for q in PYTHON_QUERIES {
        assert!(stdout.contains(&format!("q{q}: ")), "{stdout}");
    }
}

async fn flight_sql_client(url: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

/// Runs a query through Flight SQL and collects its result from every endpoint.
async fn flight_query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, FlightError> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("endpoint has a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_errors_are_clear_and_the_server_keeps_serving() {
    let cluster = ProcessCluster::start(1, 2).await;
    register_tpch(&cluster.client().await).await;
    let mut client = flight_sql_client(&cluster.scheduler_url).await;
    let cases = [
        ("SELEC 1", "SQL error"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT no_such_column FROM nation", "no_such_column"),
    ];
    for (sql, fragment) in cases {
        let e = flight_query(&mut client, sql)
            .await
            .expect_err("bad SQL must fail");
        assert!(e.to_string().contains(fragment), "{sql}: {e}");
        match &e {
            FlightError::Tonic(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{sql}: {e}")
            }
            other => panic!("{sql}: not a gRPC error: {other}"),
        }
    }
    // A wrong parameter type on a prepared statement.
    let mut prepared = client
        .prepare(
            "SELECT count(*) FROM orders WHERE o_orderkey < ?".into(),
            None,
        )
        .await
        .unwrap();
    let params = RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["x"])) as _,
    )])
    .unwrap();
    prepared.set_parameters(params).unwrap();
    let e = prepared
        .execute()
        .await
        .expect_err("a string for an integer");
    assert!(
        e.to_string().contains("parameter $1 must be of type Int64"),
        "{e}"
    );
    // A running query cancelled through its FlightInfo (CancelFlightInfo, as JDBC sends).
    let info = client
        .execute(
            "SELECT sha256(repeat(l_comment, 200)) FROM lineitem".to_string(),
            None,
        )
        .await
        .unwrap();
    let action = arrow_flight::Action::new(
        "CancelFlightInfo",
        prost::Message::encode_to_vec(&arrow_flight::CancelFlightInfoRequest::new(info.clone())),
    );
    let answers: Vec<arrow_flight::Result> = client
        .do_action(action)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let answer: arrow_flight::CancelFlightInfoResult =
        prost::Message::decode(&answers[0].body[..]).unwrap();
    assert_eq!(answer.status, arrow_flight::CancelStatus::Cancelled as i32);
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let read = async { client.do_get(ticket).await?.try_collect::<Vec<_>>().await };
    let e = read.await.expect_err("a cancelled query has no result");
    assert!(e.to_string().contains("cancelled"), "{e}");

    // Still serving, and right.
    let batches = flight_query(&mut client, "SELECT count(*) AS n FROM nation")
        .await
        .unwrap();
    let reference = datafusion_reference().await;
    let expected = reference
        .sql("SELECT count(*) AS n FROM nation")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("count after errors", &expected, &batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_shared_through_the_catalog_and_survive_a_failover() {
    let mut cluster = EtcdCluster::start(2, 1, 2).await;
    let leader = cluster.leader().await;
    let standby = 1 - leader;
    let lineitem = tpch_dir().join("lineitem");
    let ddl = format!(
        "CREATE EXTERNAL TABLE shared_lineitem STORED AS PARQUET LOCATION '{}/'",
        lineitem.display()
    );
    // One session creates the table through the standby (which forwards to the leader)...
    let standby_url = format!("http://127.0.0.1:{}", cluster.schedulers[standby].port);
    let mut first = flight_sql_client(&standby_url).await;
    first.execute_update(ddl, None).await.unwrap();
    let sql = "SELECT l_returnflag, count(*) AS n FROM shared_lineitem GROUP BY l_returnflag ORDER BY l_returnflag";
    let reference = datafusion_reference().await;
    let expected = reference
        .sql(&sql.replace("shared_lineitem", "lineitem"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // ...another sees it,
    let other = cluster.client().await;
    let result = other.sql(sql).await.unwrap();
    assert_same_rows("another session", &expected, &result.batches);
    // and after the leader dies the new leader serves it too.
    cluster.schedulers[leader].kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut now = cluster.leader().await;
    while now == leader {
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = cluster.leader().await;
    }
    assert_eq!(now, standby);
    let new_leader_url = format!("http://127.0.0.1:{}", cluster.schedulers[now].port);
    let mut after = flight_sql_client(&new_leader_url).await;
    // While it takes over (restoring jobs and the catalog) it answers "unavailable, retry".
    let batches = loop {
        match flight_query(&mut after, sql).await {
            Ok(batches) => break batches,
            Err(FlightError::Tonic(status))
                if status.code() == tonic::Code::Unavailable
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after failover: {e}"),
        }
    };
    assert_same_rows("after failover", &expected, &batches);
    // Dropping it removes it for everyone.
    after
        .execute_update("DROP TABLE shared_lineitem".into(), None)
        .await
        .unwrap();
    let e = other.sql(sql).await.expect_err("the table is gone");
    assert!(e.to_string().contains("shared_lineitem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_results_are_read_from_the_executors() {
    let cluster = ProcessCluster::start_with_env(2, 1, &[("EMBER_FLIGHT_RESULTS", "direct")]).await;
    register_tpch(&cluster.client().await).await;
    let mut client = flight_sql_client(&cluster.scheduler_url).await;
    let sql = "SELECT l_returnflag, count(*) AS n FROM lineitem GROUP BY l_returnflag ORDER BY l_returnflag";
    let info = client.execute(sql.to_string(), None).await.unwrap();
    assert!(!info.endpoint.is_empty());
    let scheduler = cluster.scheduler_url.replace("http://", "");
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let uri = &endpoint.location.first().expect("a location").uri;
        assert!(uri.starts_with("grpc+tcp://"), "{uri}");
        assert!(!uri.ends_with(&scheduler), "points at an executor: {uri}");
        let channel = Channel::from_shared(uri.replace("grpc+tcp://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut flight = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
        let data = flight
            .do_get(endpoint.ticket.expect("a ticket"))
            .await
            .unwrap()
            .into_inner()
            .map_err(FlightError::from);
        let decoded: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .try_collect()
                .await
                .unwrap();
        batches.extend(decoded);
    }
    let expected = datafusion_reference()
        .await
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same_rows("direct endpoints", &expected, &batches);
}
