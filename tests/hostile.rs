//! Hostile and careless input against a cluster of real processes: statements too deep or
//! too large for any stack, sent to every entry point, and shuffle tickets without a valid
//! grant. Each gets a clear refusal; every process stays up and keeps serving.

use std::process::Command;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};
use ember_core::shuffle::ShuffleTicket;
use tonic::Code;

use crate::support::{ProcessCluster, TestCluster, ember_bin};

/// `SELECT 1 + 1 + ... + 1` with `terms` terms: a left-deep tree `terms - 1` levels deep.
fn sum_of_ones(terms: usize) -> String {
    format!("SELECT {} AS s", vec!["1"; terms].join(" + "))
}

fn assert_refused(what: &str, error: &str) {
    assert!(
        error.contains("--max-expression-depth") || error.contains("recursion limit"),
        "{what}: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_statements_are_refused_at_every_entry_point_and_no_process_dies() {
    let mut cluster = ProcessCluster::start_with_env(2, 2, &[("EMBER_MAX_REQUEST_MB", "1")]).await;
    let client = cluster.client().await;
    let deep = sum_of_ones(20_000);

    // A request over the size limit is refused before it is read.
    let huge = format!("SELECT 1 -- {}", "x".repeat(2 << 20));
    let error = client.sql(&huge).await.expect_err("huge").to_string();
    assert!(error.contains("too large"), "{error}");

    // gRPC, as the Rust client and the CLI speak it.
    let error = client.sql(&deep).await.expect_err("grpc").to_string();
    assert_refused("gRPC", &error);

    // The CLI against the cluster: a clear message and the exit code of a user error.
    let out = Command::new(ember_bin())
        .args(["sql", "--scheduler", &cluster.scheduler_url, "-c", &deep])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_refused("CLI", &stderr);

    // Flight SQL (every JDBC/ADBC client): a statement and a prepared statement.
    let channel = tonic::transport::Channel::from_shared(cluster.scheduler_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    let error = flight
        .execute(deep.clone(), None)
        .await
        .expect_err("flight sql");
    assert_refused("Flight SQL", &error.to_string());
    let error = flight
        .prepare(deep.clone(), None)
        .await
        .expect_err("flight sql prepare");
    assert_refused("Flight SQL prepare", &error.to_string());

    // The DataFrame client: a plan with a 2,000-term expression (DataFusion's own plan
    // building grows with the square of an expression's depth: 20,000 terms take it ~40 s on
    // either side), and one with 500 nested operators (built and encoded on a thread with room
    // for them).
    let (deep_expression, deep_plan) = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(|| {
            let expression = (1..2_000).fold(lit(1), |acc, _| acc + lit(1));
            let wide = LogicalPlanBuilder::empty(true)
                .project(vec![expression.alias("s")])
                .unwrap()
                .build()
                .unwrap();
            let mut nested = LogicalPlanBuilder::empty(true)
                .project(vec![lit(1).alias("a")])
                .unwrap();
            for _ in 0..500 {
                nested = nested.filter(col("a").gt(lit(0))).unwrap();
            }
            let nested = nested.build().unwrap();
            let encode = |plan| {
                datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(
                    &plan,
                    &datafusion_proto::logical_plan::DefaultLogicalExtensionCodec {},
                )
                .unwrap()
                .to_vec()
            };
            (encode(wide), encode(nested))
        })
        .unwrap()
        .join()
        .unwrap();
    for (what, bytes) in [
        ("a deep DataFrame expression", deep_expression),
        ("deeply nested DataFrame operators", deep_plan),
    ] {
        let error = client.submit_plan_bytes(bytes).await.expect_err(what);
        assert_refused(what, &error.to_string());
    }

    // A panic or overflow would have killed a process: all are up, and the cluster serves.
    assert!(cluster.all_running(), "a process died");
    let ok = client.sql(&sum_of_ones(100)).await.unwrap();
    assert_eq!(
        crate::support::rows(&ok.batches),
        vec![vec!["100".to_string()]]
    );
    let (executors, _) = client.executors().await.unwrap();
    assert_eq!(executors.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_serve_shuffle_data_only_for_a_granted_ticket() {
    let cluster = ProcessCluster::start(2, 2).await;
    let client = cluster.client().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("nums.csv");
    let rows: Vec<String> = (0..100).map(|i| format!("{i},{}", i % 7)).collect();
    std::fs::write(&csv, format!("a,b\n{}\n", rows.join("\n"))).unwrap();
    client
        .sql(&format!(
            "CREATE EXTERNAL TABLE nums (a INT, b INT) STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .unwrap();
    // The first result location of a query, as the scheduler hands it out (with its grant).
    let located = |sql: &'static str| {
        let client = &client;
        async move {
            let job = client.submit(sql).await.unwrap();
            let status = client.wait(&job, |_| {}).await.unwrap();
            status
                .result_partitions
                .into_iter()
                .flatten()
                .next()
                .expect("a result partition")
        }
    };
    let granted = located("SELECT b, count(*) AS n FROM nums GROUP BY b").await;
    let other = located("SELECT b, sum(a) AS s FROM nums GROUP BY b").await;
    let mut executor = flight_client(&granted.address).await;
    let mut get = async |ticket: ShuffleTicket| -> Result<usize, tonic::Status> {
        let mut stream = executor
            .do_get(Ticket::new(ticket.to_bytes()))
            .await?
            .into_inner();
        let mut messages = 0;
        while let Some(message) = stream.message().await? {
            let _ = message;
            messages += 1;
        }
        Ok(messages)
    };

    // The grant the scheduler handed out opens its own partition.
    assert!(get(granted.ticket()).await.unwrap() > 0);

    let refused = [
        (
            "no grant",
            ShuffleTicket {
                grant: String::new(),
                ..granted.ticket()
            },
        ),
        (
            "a forged grant",
            ShuffleTicket {
                grant: format!("{}.{}", u64::MAX, "ab".repeat(32)),
                ..granted.ticket()
            },
        ),
        (
            // Pushing the expiry out breaks the signature.
            "a grant with its expiry changed",
            ShuffleTicket {
                grant: {
                    let (expires, mac) = granted.grant.split_once('.').unwrap();
                    format!("{}.{mac}", expires.parse::<u64>().unwrap() + 1)
                },
                ..granted.ticket()
            },
        ),
        (
            "another job's grant",
            ShuffleTicket {
                job_id: other.job_id.clone(),
                stage_id: other.stage_id,
                ..granted.ticket()
            },
        ),
        (
            "another stage of the same job",
            ShuffleTicket {
                stage_id: granted.stage_id + 1,
                ..granted.ticket()
            },
        ),
    ];
    for (what, ticket) in refused {
        let status = get(ticket).await.expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status}");
    }
    // A ticket is a name, never a path.
    let status = executor
        .do_get(Ticket::new(b"../../etc/passwd/1/0/0/1.00".to_vec()))
        .await
        .expect_err("a path as a ticket");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    // The other job's own grant still opens its data: the cluster goes on.
    let mut executor = flight_client(&other.address).await;
    let stream = executor
        .do_get(Ticket::new(other.ticket().to_bytes()))
        .await;
    assert!(stream.is_ok(), "{stream:?}");
}

async fn flight_client(address: &str) -> FlightServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_reads_and_writes_only_under_the_allowed_locations() {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let cluster = ProcessCluster::start_with_env(
        1,
        2,
        &[(
            "EMBER_ALLOWED_LOCATIONS",
            &allowed.path().display().to_string(),
        )],
    )
    .await;
    let client = cluster.client().await;
    for dir in [allowed.path(), outside.path()] {
        std::fs::write(dir.join("t.csv"), "a\n1\n2\n").unwrap();
    }
    let create = |name: &str, location: String| {
        format!(
            "CREATE EXTERNAL TABLE {name} (a INT) STORED AS CSV LOCATION '{location}' \
             OPTIONS ('format.has_header' 'true')"
        )
    };
    let inside = allowed.path().display().to_string();
    let escape = format!(
        "{inside}/../{}/t.csv",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    let refused = [
        create("passwd", "/etc/passwd".into()),
        create("escape", escape),
        create("other", format!("{}/t.csv", outside.path().display())),
        format!(
            "COPY (SELECT 1 AS a) TO '{}/out.csv'",
            outside.path().display()
        ),
    ];
    for sql in &refused {
        let error = client.sql(sql).await.expect_err(sql).to_string();
        assert!(error.contains("--allowed-locations"), "{sql}: {error}");
    }
    assert!(
        !outside.path().join("out.csv").exists(),
        "nothing was written"
    );

    // A DataFrame plan scanning a file outside is refused the same way.
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_csv(
        "t",
        &outside.path().join("t.csv").display().to_string(),
        Default::default(),
    )
    .await
    .unwrap();
    let plan = ctx.table("t").await.unwrap().into_unoptimized_plan();
    let bytes = datafusion_proto::bytes::logical_plan_to_bytes(&plan).unwrap();
    let error = client
        .submit_plan_bytes(bytes.to_vec())
        .await
        .expect_err("a scan outside");
    assert!(error.to_string().contains("--allowed-locations"), "{error}");

    // Inside, tables, queries and writes work.
    client
        .sql(&create("t", format!("{inside}/t.csv")))
        .await
        .unwrap();
    let sum = client.sql("SELECT sum(a) AS s FROM t").await.unwrap();
    assert_eq!(
        crate::support::rows(&sum.batches),
        vec![vec!["3".to_string()]]
    );
    client
        .sql(&format!("COPY (SELECT a FROM t) TO '{inside}/copy.csv'"))
        .await
        .unwrap();
    assert!(allowed.path().join("copy.csv").exists());

    // Neither a stream table (its file is not a listed location) nor a runtime folder.
    client
        .sql(&create("s", format!("{inside}/t.csv")).replace("EXTERNAL", "UNBOUNDED EXTERNAL"))
        .await
        .unwrap();
    let error = client.sql("SELECT * FROM s").await.expect_err("a stream");
    assert!(error.to_string().contains("stream"), "{error}");
    let set = format!(
        "SET datafusion.runtime.temp_directory = '{}'",
        outside.path().display()
    );
    let error = client.sql(&set).await.expect_err("a runtime folder");
    assert!(error.to_string().contains("confines locations"), "{error}");
}
