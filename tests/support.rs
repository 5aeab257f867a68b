//! Shared test fixtures: cached TPC-H data, a single-node DataFusion reference, result
//! comparison, and a cluster of real `ember` processes that is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use ember_client::EmberClient;

pub const SCALE_FACTOR: f64 = 0.1;

/// TPC-H SF 0.1, generated once and kept outside the clone (`EMBER_TEST_DATA_DIR`, or the
/// system temp dir) so later runs reuse it.
pub fn tpch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generated(SCALE_FACTOR))
}

/// TPC-H at a larger scale factor (0.5), for queries that must run long enough to be hit by a
/// failure while they run.
pub fn tpch_dir_large() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generated(0.5))
}

fn test_data_base() -> PathBuf {
    std::env::var_os("EMBER_TEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ember-test-data"))
}

/// What the schedulers tests start may read and write (`EMBER_ALLOWED_LOCATIONS`): the
/// generated test data and the temporary folders tests make.
pub fn allowed_locations() -> String {
    format!(
        "{},{}",
        test_data_base().display(),
        std::env::temp_dir().display()
    )
}

fn generated(scale_factor: f64) -> PathBuf {
    let base = test_data_base();
    let dir = base.join(format!("tpch-sf{scale_factor}-v1"));
    ember::tpch::ensure_generated(scale_factor, &dir).expect("generating TPC-H test data");
    dir
}

/// Single-node DataFusion with the TPC-H tables registered.
pub async fn datafusion_reference() -> SessionContext {
    datafusion_reference_at(tpch_dir()).await
}

pub async fn datafusion_reference_at(dir: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for ddl in ember::sql::table_ddl(dir).unwrap() {
        ctx.sql(&ddl).await.unwrap().collect().await.unwrap();
    }
    ctx
}

pub async fn register_tpch(client: &EmberClient) {
    register_tpch_at(client, tpch_dir()).await
}

pub async fn register_tpch_at(client: &EmberClient, dir: &Path) {
    for ddl in ember::sql::table_ddl(dir).unwrap() {
        client.sql(&ddl).await.unwrap();
    }
}

/// Rows as strings, one `Vec<String>` per row.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    out
}

fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// Asserts two results hold the same rows in the same order (numbers within a tolerance).
pub fn assert_same_rows(what: &str, expected: &[RecordBatch], actual: &[RecordBatch]) {
    let (e, a) = (rows(expected), rows(actual));
    assert_eq!(e.len(), a.len(), "{what}: row count differs");
    for (i, (er, ar)) in e.iter().zip(&a).enumerate() {
        let same = er.len() == ar.len() && er.iter().zip(ar).all(|(x, y)| same_value(x, y));
        assert!(
            same,
            "{what}: row {i} differs\n expected {er:?}\n actual   {ar:?}"
        );
    }
}

/// Runs each TPC-H query on Ember and on DataFusion and compares the results.
pub async fn check_tpch_queries(client: &EmberClient, queries: impl IntoIterator<Item = usize>) {
    let reference = datafusion_reference().await;
    for q in queries {
        let sql = ember::tpch::query(q).unwrap();
        let expected = reference.sql(sql).await.unwrap().collect().await.unwrap();
        let actual = tokio::time::timeout(Duration::from_secs(120), client.sql(sql))
            .await
            .unwrap_or_else(|_| panic!("q{q} did not finish within 120 s"))
            .unwrap_or_else(|e| panic!("q{q} failed on Ember: {e}"));
        assert!(
            actual.status.stages_total >= 1,
            "q{q} did not run as stages"
        );
        assert_same_rows(&format!("q{q}"), &expected, &actual.batches);
    }
}

/// The `ember` binary built for these tests.
pub fn ember_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ember")
}

/// A child process killed (and reaped) when dropped, even when the test fails.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` guarded: killed when the guard drops, and — on Linux — also when the test
/// process itself dies (killed by a timeout, say), so no test leaves a process behind.
pub fn spawn_guarded(command: &mut Command) -> ChildGuard {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    // Ember servers started by tests serve their HTTP endpoint on a free port, unless the
    // test chose one.
    for var in [
        "EMBER_SCHEDULER_HTTP_BIND",
        "EMBER_EXECUTOR_HTTP_BIND",
        "EMBER_STANDALONE_HTTP_BIND",
    ] {
        if !command.get_envs().any(|(k, _)| k == var) {
            command.env(var, "127.0.0.1:0");
        }
    }
    let program = command.get_program().to_string_lossy().into_owned();
    ChildGuard(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}")),
    )
}

/// Polls `path` until it holds a port number.
pub fn wait_for_port(path: &Path, child: &mut Child) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(port) = text.trim().parse()
        {
            return port;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no port in {} after 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scheduler and executors as separate `ember` processes on loopback ports.
pub struct ProcessCluster {
    pub scheduler_url: String,
    /// The token its clients sign in with (`EMBER_TOKEN` of the environment it was given).
    pub token: Option<String>,
    /// The scheduler's HTTP port (health, metrics, REST API, web UI).
    pub http_port: u16,
    /// The scheduler's Spark Connect port.
    pub spark_connect_port: u16,
    _dir: tempfile::TempDir,
    // Executors first: they are killed before the scheduler.
    _executors: Vec<ChildGuard>,
    _scheduler: ChildGuard,
}

impl ProcessCluster {
    pub async fn start(executors: usize, slots: usize) -> ProcessCluster {
        Self::start_with_env(executors, slots, &[]).await
    }

    /// A cluster whose processes all get the environment variables `env`.
    pub async fn start_with_env(
        executors: usize,
        slots: usize,
        env: &[(&str, &str)],
    ) -> ProcessCluster {
        Self::start_inner(executors, slots, env, None).await
    }

    /// Like [`start_with_env`](Self::start_with_env), each process's log (stderr) going to a
    /// file in `logs`.
    pub async fn start_with_env_logged(
        executors: usize,
        slots: usize,
        env: &[(&str, &str)],
        logs: &Path,
    ) -> ProcessCluster {
        Self::start_inner(executors, slots, env, Some(logs)).await
    }

    async fn start_inner(
        executors: usize,
        slots: usize,
        env: &[(&str, &str)],
        logs: Option<&Path>,
    ) -> ProcessCluster {
        let log = |name: &str| match logs {
            Some(dir) => Stdio::from(std::fs::File::create(dir.join(name)).unwrap()),
            None => Stdio::inherit(),
        };
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("scheduler.port");
        let http_port_file = dir.path().join("scheduler.http-port");
        let spark_port_file = dir.path().join("scheduler.spark-connect-port");
        let mut scheduler = spawn_guarded(
            Command::new(ember_bin())
                .args(["scheduler", "--bind", "127.0.0.1:0", "--port-file"])
                .arg(&port_file)
                .arg("--http-port-file")
                .arg(&http_port_file)
                .args(["--spark-connect-bind", "127.0.0.1:0"])
                .arg("--spark-connect-port-file")
                .arg(&spark_port_file)
                .env("EMBER_ALLOWED_LOCATIONS", allowed_locations())
                .env("EMBER_ALLOW_ANONYMOUS", "true")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log("scheduler.log")),
        );
        let port = wait_for_port(&port_file, &mut scheduler.0);
        let http_port = wait_for_port(&http_port_file, &mut scheduler.0);
        let spark_connect_port = wait_for_port(&spark_port_file, &mut scheduler.0);
        let scheduler_url = format!("http://127.0.0.1:{port}");
        let mut guards = Vec::new();
        for i in 0..executors {
            let port_file = dir.path().join(format!("executor-{i}.port"));
            let mut guard = spawn_guarded(
                Command::new(ember_bin())
                    .args([
                        "executor",
                        "--scheduler",
                        &scheduler_url,
                        "--bind",
                        "127.0.0.1:0",
                    ])
                    .args([
                        "--slots",
                        &slots.to_string(),
                        "--heartbeat-interval-ms",
                        "200",
                    ])
                    .arg("--work-dir")
                    .arg(dir.path())
                    .arg("--port-file")
                    .arg(&port_file)
                    .envs(env.iter().copied())
                    .stdout(Stdio::null())
                    .stderr(log(&format!("executor-{i}.log"))),
            );
            wait_for_port(&port_file, &mut guard.0);
            guards.push(guard);
        }
        let token = env
            .iter()
            .find(|(k, _)| *k == "EMBER_TOKEN")
            .map(|(_, v)| v.to_string());
        let cluster = ProcessCluster {
            scheduler_url,
            token,
            http_port,
            spark_connect_port,
            _dir: dir,
            _executors: guards,
            _scheduler: scheduler,
        };
        let client = cluster.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.executors().await.unwrap().0.len() < executors {
            assert!(Instant::now() < deadline, "executors did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster
    }
}

impl ProcessCluster {
    /// Whether every process of the cluster is still running.
    pub fn all_running(&mut self) -> bool {
        std::iter::once(&mut self._scheduler)
            .chain(self._executors.iter_mut())
            .all(|guard| matches!(guard.0.try_wait(), Ok(None)))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to every executor.
    pub fn signal_executors(&self, signal: &str) {
        for guard in &self._executors {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(guard.0.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal}");
        }
    }
}

/// A loopback port free right now (for servers that must be told theirs, like etcd).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on an HTTP endpoint at `port` on loopback: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    ember::http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// Polls `check` until it gives a value (readiness is polled, never slept for), for at most
/// `timeout`; past it the test fails naming `what` and the last state `check` reported.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} (last: {state})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every test cluster offers, whether it runs in this process ([`EmbeddedCluster`]) or as
/// `ember` processes ([`ProcessCluster`], [`crate::etcd_support::EtcdCluster`]): tests written
/// against it run on each.
pub trait TestCluster {
    /// The scheduler URL(s) a client connects to.
    fn scheduler_urls(&self) -> String;

    async fn client(&self) -> EmberClient {
        EmberClient::connect(&self.scheduler_urls()).await.unwrap()
    }
}

impl TestCluster for ember_client::EmbeddedCluster {
    fn scheduler_urls(&self) -> String {
        self.scheduler_url()
    }
}

impl TestCluster for ProcessCluster {
    fn scheduler_urls(&self) -> String {
        self.scheduler_url.clone()
    }

    async fn client(&self) -> EmberClient {
        let client = EmberClient::connect(&self.scheduler_urls()).await.unwrap();
        match &self.token {
            Some(token) => client.with_token(token).unwrap(),
            None => client,
        }
    }
}

/// A channel to a loopback port: over TLS trusting the CA in `certs` (`ca.pem`, as `ember
/// certs` writes it), presenting `role`'s certificate from there when given; or in plaintext
/// without `certs`. `Err` says why it could not be opened.
pub async fn dial(
    port: u16,
    certs: Option<&Path>,
    role: Option<&str>,
) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let Some(certs) = certs else {
        return Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"));
    };
    let pem = std::fs::read(certs.join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    if let Some(role) = role {
        let cert = std::fs::read(certs.join(format!("{role}.pem"))).unwrap();
        let key = std::fs::read(certs.join(format!("{role}.key"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Runs a query that needs the executors (a shuffle and an aggregate over `nation`, which
/// [`register_tpch`] made) to its end; its job's id.
pub async fn run_distributed_query(client: &EmberClient) -> ember_core::JobId {
    client
        .sql("SELECT n_regionkey, count(*) FROM nation GROUP BY n_regionkey")
        .await
        .unwrap()
        .status
        .job_id
}

/// The arguments of an executor that joins the scheduler at `url` with 2 slots and
/// heartbeats every 200 ms.
pub fn executor_args(url: &str) -> [&str; 6] {
    [
        "--scheduler",
        url,
        "--slots",
        "2",
        "--heartbeat-interval-ms",
        "200",
    ]
}

/// Writes batches as an Arrow IPC file (answers for client scripts to compare with).
pub fn write_ipc(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let schema = batches[0].schema();
    let mut writer = datafusion::arrow::ipc::writer::FileWriter::try_new(file, &schema).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

/// Waits for a child started with piped stdout and stderr, within `timeout`: its exit
/// status, stdout and stderr.
pub async fn output_within(
    mut child: ChildGuard,
    timeout: Duration,
) -> (std::process::ExitStatus, String, String) {
    let output = tokio::task::spawn_blocking(move || {
        let stdout = std::io::read_to_string(child.0.stdout.take().unwrap()).unwrap();
        let stderr = std::io::read_to_string(child.0.stderr.take().unwrap()).unwrap();
        let status = child.0.wait().unwrap();
        (status, stdout, stderr)
    });
    tokio::time::timeout(timeout, output)
        .await
        .unwrap_or_else(|_| panic!("the child did not finish within {timeout:?}"))
        .unwrap()
}
