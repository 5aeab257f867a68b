//! Client authentication on a cluster of real processes: every entry point (the gRPC client
//! API, the CLI, Flight SQL's handshake and bearer tokens, the DataFrame client, HTTP
//! /metrics) lets in the holders of a token and nobody else; jobs belong to who submitted
//! them, and one client cannot hold more than its share of jobs.

use std::process::Command;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use ember_client::EmberClient;
use ember_core::EmberError;
use ember_core::auth::{Credentials, new_token};
use futures::TryStreamExt;

use crate::support::{ProcessCluster, ember_bin, eventually, register_tpch};

struct Tokens {
    alice: String,
    bob: String,
    executor: String,
}

fn tokens(dir: &std::path::Path) -> (Tokens, std::path::PathBuf) {
    let tokens = Tokens {
        alice: new_token().unwrap(),
        bob: new_token().unwrap(),
        executor: new_token().unwrap(),
    };
    let file = dir.join("tokens");
    let lines = [
        Credentials::line("alice", &tokens.alice).unwrap(),
        Credentials::line("bob", &tokens.bob).unwrap(),
        Credentials::line("ember-executor", &tokens.executor).unwrap(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    (tokens, file)
}

fn is_unauthenticated(e: &EmberError) -> bool {
    matches!(e, EmberError::User(m) if m.contains("credentials"))
}

async fn flight(url: &str) -> FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

async fn flight_count(client: &mut FlightSqlServiceClient<tonic::transport::Channel>) -> usize {
    let info = client
        .execute("SELECT * FROM (VALUES (1), (2), (3)) t(x)".into(), None)
        .await
        .unwrap();
    let mut rows = 0;
    for endpoint in info.endpoint {
        let batches: Vec<_> = client
            .do_get(endpoint.ticket.unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_token_holders_get_in_at_every_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    let (t, file) = tokens(dir.path());
    let cluster = ProcessCluster::start_with_env(
        1,
        2,
        &[
            ("EMBER_ALLOW_ANONYMOUS", "false"),
            ("EMBER_AUTH_FILE", &file.display().to_string()),
            ("EMBER_TOKEN", &t.executor),
        ],
    )
    .await;
    let url = &cluster.scheduler_url;

    // The gRPC client API: no token, a made-up token, then Alice's.
    let anonymous = EmberClient::connect(url).await.unwrap();
    let refused = anonymous.sql("SELECT 1").await.unwrap_err();
    assert!(is_unauthenticated(&refused), "{refused}");
    let forged = EmberClient::connect(url)
        .await
        .unwrap()
        .with_token("ember_0000")
        .unwrap();
    let refused = forged.sql("SELECT 1").await.unwrap_err();
    assert!(refused.to_string().contains("not valid"), "{refused}");
    let alice = anonymous.clone().with_token(&t.alice).unwrap();
    assert_eq!(alice.sql("SELECT 1").await.unwrap().num_rows(), 1);

    // The DataFrame client sends plans under the same rule.
    let plan = datafusion::prelude::SessionContext::new()
        .sql("SELECT 41 + 1 AS answer")
        .await
        .unwrap()
        .logical_plan()
        .clone();
    assert!(is_unauthenticated(
        &anonymous.submit_plan(&plan).await.unwrap_err()
    ));
    let job = alice.submit_plan(&plan).await.unwrap();
    alice.wait(&job, |_| {}).await.unwrap();

    // The CLI: refused with the exit code of a user error and a hint; let in with a token
    // from the environment or a file.
    let sql = |envs: &[(&str, &str)], args: &[&str]| {
        Command::new(ember_bin())
            .args(["sql", "--scheduler", url, "-c", "SELECT 7 AS seven"])
            .args(args)
            .env_remove("EMBER_TOKEN")
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let out = sql(&[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    let out = sql(&[("EMBER_TOKEN", &t.bob)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('7'));
    let token_file = dir.path().join("alice.token");
    std::fs::write(&token_file, format!("{}\n", t.alice)).unwrap();
    let out = sql(&[], &["--token-file", &token_file.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Flight SQL: nothing without credentials; the handshake turns a user name and token
    // into a session; a wrong password gets none; a token works as a bearer token directly.
    let mut client = flight(url).await;
    let refused = client.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(refused.to_string().contains("credentials"), "{refused}");
    assert!(client.handshake("alice", &t.bob).await.is_err());
    let session = client.handshake("alice", &t.alice).await.unwrap();
    let session = String::from_utf8(session.to_vec()).unwrap();
    assert!(session.starts_with("ember-session."), "{session}");
    assert!(!session.contains(&t.alice));
    assert_eq!(flight_count(&mut client).await, 3);
    let mut direct = flight(url).await;
    direct.set_token(t.bob.clone());
    assert_eq!(flight_count(&mut direct).await, 3);

    // HTTP: probes need nothing, metrics a token.
    let http = cluster.http_port;
    assert_eq!(ember::http_get(http, "/healthz").unwrap().0, 200);
    let (status, body) = ember::http_get(http, "/metrics").unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        ember::http_get_as(http, "/metrics", Some("ember_0000"))
            .unwrap()
            .0,
        401
    );
    let (status, body) = ember::http_get_as(http, "/metrics", Some(&t.alice)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("ember_jobs"), "{body}");
    // The REST API and the web UI: a token, and each user sees their own jobs only.
    for path in ["/api/v1/jobs", "/ui", "/api/v1/cluster"] {
        assert_eq!(ember::http_get(http, path).unwrap().0, 401, "{path}");
    }
    let jobs_of = |token: &str| -> Vec<serde_json::Value> {
        let (status, body) = ember::http_get_as(http, "/api/v1/jobs", Some(token)).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (alices, bobs) = (jobs_of(&t.alice), jobs_of(&t.bob));
    assert!(!alices.is_empty() && !bobs.is_empty());
    assert!(alices.iter().all(|j| j["owner"] == "alice"), "{alices:?}");
    assert!(bobs.iter().all(|j| j["owner"] == "bob"), "{bobs:?}");
    let bobs_job = format!("/api/v1/jobs/{}", bobs[0]["id"].as_str().unwrap());
    assert_eq!(
        ember::http_get_as(http, &bobs_job, Some(&t.alice))
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        ember::http_get_as(http, &bobs_job, Some(&t.bob)).unwrap().0,
        200
    );
    let (status, page) = ember::http_get_as(http, "/ui", Some(&t.alice)).unwrap();
    assert!(status == 200 && page.contains("id=\"jobs\""), "{page}");

    // Revoking Bob's token (his line removed) locks him out without a restart.
    std::fs::write(&file, Credentials::line("alice", &t.alice).unwrap() + "\n").unwrap();
    let bob = anonymous.clone().with_token(&t.bob).unwrap();
    eventually(
        "Bob's revoked token is refused",
        Duration::from_secs(10),
        || {
            let bob = bob.clone();
            async move {
                match bob.sql("SELECT 1").await {
                    Err(e) if is_unauthenticated(&e) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert_eq!(alice.sql("SELECT 1").await.unwrap().num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_belong_to_their_client_and_one_client_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (t, file) = tokens(dir.path());
    let cluster = ProcessCluster::start_with_env(
        1,
        2,
        &[
            ("EMBER_ALLOW_ANONYMOUS", "false"),
            ("EMBER_AUTH_FILE", &file.display().to_string()),
            ("EMBER_TOKEN", &t.executor),
            ("EMBER_MAX_JOBS_PER_CLIENT", "1"),
        ],
    )
    .await;
    let connect = |token: &str| {
        let url = cluster.scheduler_url.clone();
        let token = token.to_string();
        async move {
            EmberClient::connect(&url)
                .await
                .unwrap()
                .with_token(&token)
                .unwrap()
        }
    };
    let (alice, bob) = (connect(&t.alice).await, connect(&t.bob).await);
    register_tpch(&alice).await;
    // With the only executor frozen, a job that scans a table stays running.
    cluster.signal_executors("STOP");
    // (a count would come from the files' statistics, without a task)
    let query = "SELECT max(length(n_name)) FROM nation";
    let first = alice.submit(query).await.unwrap();
    let refused = alice.submit(query).await.unwrap_err();
    assert!(
        matches!(&refused, EmberError::ResourcesExhausted(m) if m.contains("--max-jobs-per-client 1")),
        "{refused:?}"
    );
    // A batch job counts too.
    let refused = alice
        .submit_script("nightly", vec![query.to_string()], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EmberError::ResourcesExhausted(_)),
        "{refused:?}"
    );
    // Others are not held back by Alice's jobs, and may not touch them, see how they do or
    // find them listed.
    let second = bob.submit(query).await.unwrap();
    let refused = bob.cancel(&first).await.unwrap_err();
    assert!(
        refused.to_string().contains("belongs to alice"),
        "{refused}"
    );
    let refused = bob.status(&first, Duration::ZERO).await.unwrap_err();
    assert!(
        refused.to_string().contains("belongs to alice"),
        "{refused}"
    );
    let listed: Vec<String> = bob
        .scripts(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.script_id)
        .collect();
    assert!(listed.contains(&second.to_string()), "{listed:?}");
    assert!(!listed.contains(&first.to_string()), "{listed:?}");
    assert!(bob.scripts(Some(first.as_str())).await.is_err());
    // A client's token is not an executor's: it cannot join the cluster.
    let channel = tonic::transport::Channel::from_shared(cluster.scheduler_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut register = tonic::Request::new(ember_proto::pb::RegisterExecutorRequest::default());
    register.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", t.bob).parse().unwrap(),
    );
    let refused = ember_proto::pb::scheduler_service_client::SchedulerServiceClient::new(channel)
        .register_executor(register)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    // Alice's own cancel frees her share.
    assert!(alice.cancel(&first).await.unwrap());
    let third = alice.submit(query).await.unwrap();
    cluster.signal_executors("CONT");
    for (client, job) in [(&bob, &second), (&alice, &third)] {
        let status = client.wait(job, |_| {}).await.unwrap();
        let result = client.collect(status).await.unwrap();
        assert_eq!(result.num_rows(), 1);
    }
}
