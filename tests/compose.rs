//! The container image and the compose cluster, on this machine's Docker Engine: the images
//! build from the binary this test run built (on the local debootstrap base), the cluster
//! comes up speaking mutual TLS and asking clients for a token, answers TPC-H through Flight
//! SQL over TLS (one session, signed in once, taken by every scheduler), and keeps answering
//! correctly while an executor
//! is killed, the leading scheduler is killed, and an executor is cut off its network, each in
//! the middle of a query.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::support::{assert_same_rows, datafusion_reference_at, free_port, tpch_dir_large};

/// A compose project, taken down (volumes too) when dropped.
struct Compose {
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    fn command(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn run(&self, args: &[&str]) {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// `docker inspect --format FORMAT container`, trimmed.
    fn inspect(&self, container: &str, format: &str) -> String {
        let out = Command::new("docker")
            .args(["inspect", "--format", format, container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn docker(&self, args: &[&str]) {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "-v", "--remove-orphans", "-t", "1"])
            .output();
    }
}

/// A metric's value, `None` while the process does not answer (starting, killed).
fn metric(port: u16, name: &str) -> Option<f64> {
    // Over HTTPS (the processes have certificates), with the test's token.
    let token = TOKEN.get().map(String::as_str);
    let ca = CA.get().map(Vec::as_slice);
    let (status, body) = ember::http_get_with(port, "/metrics", token, ca).ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster's CA, which Flight SQL clients trust.
static CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The test's API token (its hash is in the schedulers' credentials file).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The session one sign-in (at the first scheduler) gave: every scheduler takes it, also
/// after the one that issued it is killed.
static SESSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn flight(port: u16) -> FlightSqlServiceClient<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(CA.get().unwrap()));
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let mut client = FlightSqlServiceClient::new(channel);
    match SESSION.get() {
        Some(session) => client.set_token(session.clone()),
        None => {
            let refused = client.execute("SELECT 1".into(), None).await.unwrap_err();
            assert!(refused.to_string().contains("credentials"), "{refused}");
            let session = client
                .handshake("compose", TOKEN.get().unwrap())
                .await
                .unwrap();
            SESSION
                .set(String::from_utf8(session.to_vec()).unwrap())
                .unwrap();
        }
    }
    client
}

/// Reads every endpoint of `info`, retrying while no scheduler leads (a failover).
async fn read(
    client: &mut FlightSqlServiceClient<Channel>,
    info: &arrow_flight::FlightInfo,
) -> Vec<RecordBatch> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut batches = Vec::new();
        let mut failed = None;
        for endpoint in &info.endpoint {
            let ticket = endpoint.ticket.clone().unwrap();
            let result = async { client.do_get(ticket).await?.try_collect::<Vec<_>>().await };
            match result.await {
                Ok(b) => batches.extend(b),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return batches,
            Some(FlightError::Tonic(s))
                if s.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(e) => panic!("reading the result: {e}"),
        }
    }
}

/// Submits `sql`, retrying while no scheduler leads.
async fn execute(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> arrow_flight::FlightInfo {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match client.execute(sql.to_string(), None).await {
            Ok(info) => return info,
            Err(FlightError::Tonic(s))
                if s.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_answers_through_kills_and_a_network_cut() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = Command::new(root.join("scripts/docker-images.sh"))
        .arg(env!("CARGO_BIN_EXE_ember"))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "building the images: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let data = tpch_dir_large();
    // The cluster speaks mutual TLS, with certificates from `ember certs`, readable by the
    // containers' user.
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = certs_dir.path();
    let hosts = "localhost,127.0.0.1,scheduler-1,scheduler-2,executor-1,executor-2,executor-3";
    let made = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["certs", "--hosts", hosts, "--out"])
        .arg(certs)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["auth", "token", "compose", "--file"])
        .arg(certs.join("tokens"))
        .output()
        .unwrap();
    assert!(token.status.success());
    TOKEN
        .set(String::from_utf8(token.stdout).unwrap().trim().to_string())
        .unwrap();
    for entry in std::fs::read_dir(certs).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(10001), Some(10001)).unwrap();
    }
    std::os::unix::fs::chown(certs, Some(10001), Some(10001)).unwrap();
    CA.set(std::fs::read(certs.join("ca.pem")).unwrap())
        .unwrap();
    let (grpc, http) = ([free_port(), free_port()], [free_port(), free_port()]);
    let compose = Compose {
        project: format!("embertest{}", std::process::id()),
        file: root.join("docker/compose.yaml"),
        env: vec![
            ("EMBER_DATA".into(), data.display().to_string()),
            ("EMBER_CERTS".into(), certs.display().to_string()),
            ("EMBER_TTL_SECS".into(), "3".into()),
            ("EMBER_PORT_1".into(), grpc[0].to_string()),
            ("EMBER_PORT_2".into(), grpc[1].to_string()),
            ("EMBER_HTTP_1".into(), http[0].to_string()),
            ("EMBER_HTTP_2".into(), http[1].to_string()),
        ],
    };
    compose.run(&["up", "-d"]);
    let leader = || (0..2).find(|&i| metric(http[i], "ember_scheduler_leader") == Some(1.0));
    wait_until("a leader with three executors", || {
        leader().is_some_and(|i| metric(http[i], "ember_executors") == Some(3.0))
    });
    // The image's healthcheck (`ember probe`) passes for both roles, which run unprivileged.
    for service in ["scheduler-1", "executor-1"] {
        let container = compose.container(service);
        wait_until(&format!("{service} healthy"), || {
            compose.inspect(&container, "{{.State.Health.Status}}") == "healthy"
        });
        assert_eq!(
            compose.inspect(&container, "{{.Config.User}}"),
            "10001:10001"
        );
    }

    let mut client = flight(grpc[0]).await;
    for table in ember::tpch::TABLES {
        client
            .execute_update(
                format!(
                    "CREATE EXTERNAL TABLE IF NOT EXISTS {table} STORED AS PARQUET LOCATION '/data/{table}/'"
                ),
                None,
            )
            .await
            .unwrap();
    }
    let reference = datafusion_reference_at(data).await;
    let check =
        |q: usize, batches: Vec<RecordBatch>, reference: &datafusion::prelude::SessionContext| {
            let sql = ember::tpch::query(q).unwrap().to_string();
            let reference = reference.clone();
            async move {
                let expected = reference.sql(&sql).await.unwrap().collect().await.unwrap();
                assert_same_rows(&format!("q{q}"), &expected, &batches);
            }
        };
    for q in [1, 3, 6] {
        let info = execute(&mut client, ember::tpch::query(q).unwrap()).await;
        let batches = read(&mut client, &info).await;
        check(q, batches, &reference).await;
    }

    // Each failure strikes while a query runs (the leader reports a running job).
    let running = |i: usize| metric(http[i], "ember_jobs{state=\"running\"}").unwrap_or(0.0) >= 1.0;
    // The leader last: the scheduler each query enters through is the one that survives.
    let failures: [(&str, usize); 3] = [
        ("kill executor", 18),
        ("cut executor", 21),
        ("kill leader", 9),
    ];
    for (failure, q) in failures {
        let now = leader().expect("a leader");
        // Talk to the scheduler that will survive: a standby forwards to the leader.
        let entry = 1 - now;
        let mut client = flight(grpc[entry]).await;
        let info = execute(&mut client, ember::tpch::query(q).unwrap()).await;
        wait_until("the query running", || running(now));
        match failure {
            "kill executor" => compose.docker(&["kill", &compose.container("executor-1")]),
            "kill leader" => {
                let service = format!("scheduler-{}", now + 1);
                compose.docker(&["kill", &compose.container(&service)]);
            }
            _ => compose.docker(&[
                "network",
                "disconnect",
                &format!("{}_default", compose.project),
                &compose.container("executor-2"),
            ]),
        }
        let batches = read(&mut client, &info).await;
        check(q, batches, &reference).await;
    }
}
