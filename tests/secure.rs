//! A cluster of real processes with every safeguard on — TLS on every port (HTTP included),
//! mutual TLS between schedulers and executors, client tokens — that answers TPC-H, and, port
//! by port, refuses every kind of stranger with the status that says why: plaintext, a
//! certificate of another CA, no certificate or the wrong role's for a cluster call, no token or
//! a forged one, and shuffle tickets without a grant, with a forged, expired or other job's one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use ember_client::EmberClient;
use ember_core::auth::{Credentials, new_token};
use ember_core::shuffle::grant::{Scope, TicketKey};
use ember_core::shuffle::{PartitionLocation, ShuffleTicket};
use ember_proto::pb;
use ember_proto::pb::executor_service_client::ExecutorServiceClient;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use tonic::Code;

use crate::support::{
    ChildGuard, allowed_locations, check_tpch_queries, dial, ember_bin, executor_args,
    register_tpch, spawn_guarded, wait_for_port,
};

/// A process serving TLS with `role`'s certificate: its gRPC and HTTP ports.
fn serve(role: &str, args: &[&str], certs: &Path, work: &Path, tokens: &Path) -> Served {
    let n = std::fs::read_dir(work).unwrap().count();
    let (port_file, http_file) = (
        work.join(format!("{n}.port")),
        work.join(format!("{n}.http")),
    );
    let mut guard = spawn_guarded(
        Command::new(ember_bin())
            .arg(role)
            .args(args)
            .args(["--bind", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .args(["--http-bind", "127.0.0.1:0", "--http-port-file"])
            .arg(&http_file)
            .env("EMBER_TLS_CERT", certs.join(format!("{role}.pem")))
            .env("EMBER_TLS_KEY", certs.join(format!("{role}.key")))
            .env("EMBER_TLS_CA", certs.join("ca.pem"))
            .env("EMBER_AUTH_FILE", tokens)
            .env("EMBER_ALLOWED_LOCATIONS", allowed_locations())
            .env_remove("EMBER_ALLOW_ANONYMOUS")
            .stdout(Stdio::null()),
    );
    let grpc = wait_for_port(&port_file, &mut guard.0);
    let http = wait_for_port(&http_file, &mut guard.0);
    Served {
        _guard: guard,
        grpc,
        http,
    }
}

struct Served {
    _guard: ChildGuard,
    grpc: u16,
    http: u16,
}

fn certs(dir: &Path) {
    let out = Command::new(ember_bin())
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A call with `authorization: Bearer token`.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Plaintext and another CA's trust get no answer on a TLS port (gRPC and HTTP).
async fn strangers_cannot_connect(port: u16, http: u16, theirs: &Path, what: &str) {
    // Plaintext: the TLS server never answers it as HTTP/2.
    let plain = match dial(port, None, None).await {
        Err(_) => true,
        Ok(channel) => SchedulerServiceClient::new(channel)
            .list_executors(pb::ListExecutorsRequest::default())
            .await
            .is_err(),
    };
    assert!(plain, "{what}: a plaintext call was answered");
    let foreign = dial(port, Some(theirs), None).await.unwrap_err();
    assert!(
        foreign.to_lowercase().contains("certificate"),
        "{what}: {foreign}"
    );
    assert!(
        !matches!(ember::http_get(http, "/healthz"), Ok((200, _))),
        "{what}: plaintext HTTP answered"
    );
    let their_ca = std::fs::read(theirs.join("ca.pem")).unwrap();
    assert!(
        ember::http_get_with(http, "/healthz", None, Some(&their_ca)).is_err(),
        "{what}: HTTPS answered a client trusting another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secure_cluster_answers_tpch_and_refuses_strangers_on_every_port() {
    let work = tempfile::tempdir().unwrap();
    let (ours, theirs) = (work.path().join("ours"), work.path().join("theirs"));
    certs(&ours);
    certs(&theirs);
    let (alice, bob) = (new_token().unwrap(), new_token().unwrap());
    let tokens: PathBuf = work.path().join("tokens");
    let lines = [
        Credentials::line("alice", &alice).unwrap(),
        Credentials::line("bob", &bob).unwrap(),
    ];
    std::fs::write(&tokens, lines.join("\n")).unwrap();
    let run = work.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let scheduler = serve("scheduler", &[], &ours, &run, &tokens);
    let url = format!("https://127.0.0.1:{}", scheduler.grpc);
    // Executors prove themselves with their certificates: no token.
    let executors: Vec<Served> = (0..2)
        .map(|_| serve("executor", &executor_args(&url), &ours, &run, &tokens))
        .collect();

    // This process dials the cluster over TLS; Alice's client answers TPC-H.
    ember_core::tls::TlsOptions {
        tls_ca: Some(ours.join("ca.pem")),
        ..Default::default()
    }
    .install()
    .unwrap();
    let client = EmberClient::connect(&url)
        .await
        .unwrap()
        .with_token(&alice)
        .unwrap();
    crate::support::eventually("two executors", std::time::Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            match client.executors().await {
                Ok((executors, _)) if executors.len() == 2 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    register_tpch(&client).await;
    check_tpch_queries(&client, [1, 3, 6]).await;

    // The scheduler's port: TLS only, then a token, then (for cluster calls) a role.
    strangers_cannot_connect(scheduler.grpc, scheduler.http, &theirs, "scheduler").await;
    let channel = dial(scheduler.grpc, Some(&ours), None).await.unwrap();
    let mut api = SchedulerServiceClient::new(channel.clone());
    let status = api
        .list_executors(pb::ListExecutorsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no token: {status}");
    let status = api
        .list_executors(with_token(
            pb::ListExecutorsRequest::default(),
            "ember_forged",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "forged token: {status}"
    );
    assert!(
        api.list_executors(with_token(pb::ListExecutorsRequest::default(), &bob))
            .await
            .is_ok()
    );
    for (role, expected) in [
        (None, Code::Unauthenticated),
        (Some("client"), Code::PermissionDenied),
    ] {
        let channel = dial(scheduler.grpc, Some(&ours), role).await.unwrap();
        let status = SchedulerServiceClient::new(channel)
            .register_executor(with_token(pb::RegisterExecutorRequest::default(), &bob))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            expected,
            "registering with {role:?}: {status}"
        );
    }
    // Flight SQL on the same port: nothing without a token; a sign-in with a wrong one fails.
    let mut flight = FlightSqlServiceClient::new(channel);
    let refused = flight.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(refused.to_string().contains("credentials"), "{refused}");
    assert!(flight.handshake("alice", &bob).await.is_err());
    flight.handshake("alice", &alice).await.unwrap();
    assert!(flight.execute("SELECT 1".into(), None).await.is_ok());

    // The HTTP ports: HTTPS only; the scheduler's metrics need a token, probes never do.
    let ca = std::fs::read(ours.join("ca.pem")).unwrap();
    for served in std::iter::once(&scheduler).chain(&executors) {
        let (status, _) = ember::http_get_with(served.http, "/healthz", None, Some(&ca)).unwrap();
        assert_eq!(status, 200);
    }
    let metrics = |token: Option<&str>| {
        ember::http_get_with(scheduler.http, "/metrics", token, Some(&ca))
            .unwrap()
            .0
    };
    assert_eq!(metrics(None), 401);
    assert_eq!(metrics(Some("ember_forged")), 401);
    assert_eq!(metrics(Some(&alice)), 200);

    // An executor's port: TLS only; launches and releases only from a scheduler's certificate.
    for executor in &executors {
        strangers_cannot_connect(executor.grpc, executor.http, &theirs, "executor").await;
        for (role, expected) in [
            (None, Code::Unauthenticated),
            (Some("client"), Code::PermissionDenied),
        ] {
            let channel = dial(executor.grpc, Some(&ours), role).await.unwrap();
            let status = ExecutorServiceClient::new(channel)
                .remove_job_data(pb::RemoveJobDataRequest::default())
                .await
                .unwrap_err();
            assert_eq!(status.code(), expected, "releasing with {role:?}: {status}");
        }
    }

    // Its shuffle data: only for a ticket with the grant the scheduler signed for that job and
    // stage, before it expires.
    let located = |sql: &'static str| {
        let client = &client;
        async move {
            let job = client.submit(sql).await.unwrap();
            let status = client.wait(&job, |_| {}).await.unwrap();
            let location: PartitionLocation = status
                .result_partitions
                .into_iter()
                .flatten()
                .next()
                .unwrap();
            location
        }
    };
    let granted = located("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1").await;
    let other = located("SELECT l_linestatus, count(*) FROM lineitem GROUP BY 1").await;
    let port: u16 = granted.address.rsplit(':').next().unwrap().parse().unwrap();
    let mut shuffle = FlightServiceClient::new(dial(port, Some(&ours), None).await.unwrap());
    let mut get = async |ticket: ShuffleTicket| -> Result<(), tonic::Status> {
        let mut stream = shuffle
            .do_get(Ticket::new(ticket.to_bytes()))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    };
    get(granted.ticket()).await.unwrap();
    // A key as an executor gets it (registering with an executor's certificate), to sign a
    // grant that has already expired.
    let executor_channel = dial(scheduler.grpc, Some(&ours), Some("executor"))
        .await
        .unwrap();
    let reply = SchedulerServiceClient::new(executor_channel)
        .register_executor(pb::RegisterExecutorRequest {
            executor: Some(pb::ExecutorSpec {
                executor_id: "observer".into(),
                address: "127.0.0.1:9".into(),
                slots: 1,
            }),
            protocol_version: ember_core::PROTOCOL_VERSION,
        })
        .await
        .unwrap()
        .into_inner();
    let key = TicketKey::from_bytes(&reply.ticket_key).unwrap();
    let scope = Scope {
        job_id: &granted.job_id,
        stage_id: granted.stage_id,
    };
    let refused = [
        ("no grant", String::new(), &granted),
        (
            "a forged grant",
            format!("{}.{}", u64::MAX, "ab".repeat(32)),
            &granted,
        ),
        (
            "an expired grant",
            key.grant(scope, ember_core::unix_ms() - 1000),
            &granted,
        ),
        ("another job's grant", granted.grant.clone(), &other),
    ];
    for (what, grant, location) in refused {
        let ticket = ShuffleTicket {
            grant,
            ..location.ticket()
        };
        let status = get(ticket).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status}");
    }
}
