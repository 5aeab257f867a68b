//! A real etcd process and a cluster of `ember` processes coordinated through it, for the
//! failover tests. Every process is killed when its guard drops, also when a test fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_core::meta::{EtcdStore, Keys, MetaStore};

use crate::support::{
    ChildGuard, TestCluster, ember_bin, eventually, free_port, spawn_guarded, wait_for_port,
};

/// Short leases so the tests see losses within seconds.
pub const TTL_SECS: &str = "2";

/// One etcd member on loopback ports, with its data in a temporary directory: it can be
/// killed and started again on the same ports and data.
pub struct Etcd {
    pub url: String,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
}

impl Etcd {
    /// Starts etcd and waits until it answers. Fails (never skips) when etcd cannot run:
    /// `scripts/test.sh` installs it.
    pub async fn start() -> Etcd {
        let client_port = free_port();
        let peer_port = free_port();
        let mut etcd = Etcd {
            url: format!("http://127.0.0.1:{client_port}"),
            peer_port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        etcd.run().await;
        etcd
    }

    async fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut guard = spawn_guarded(
            Command::new("etcd")
                .args(["--name", "ember-test", "--data-dir"])
                .arg(self.dir.path().join("data"))
                .args(["--listen-client-urls", &self.url])
                .args(["--advertise-client-urls", &self.url])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("ember-test={peer}")])
                .stdout(Stdio::null())
                .stderr(log),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = guard.0.try_wait() {
                panic!("etcd exited at start ({status}); its log:\n{}", self.log());
            }
            if let Ok(store) = EtcdStore::connect(&self.url).await
                && store.get("/ready").await.is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(guard);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        self.child = None;
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        self.run().await;
    }

    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.url).await.unwrap()
    }
}

/// One `ember` process of the cluster, with its port.
pub struct Member {
    pub port: u16,
    /// Its HTTP port (health, metrics; a scheduler's REST API and web UI).
    pub http_port: u16,
    /// A scheduler's Spark Connect port.
    pub spark_connect_port: Option<u16>,
    pub id: String,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").0.id()
    }

    pub fn kill(&mut self) {
        self.child = None;
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the process is still running (it did not exit on its own).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.0.try_wait().unwrap().is_none())
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = &mut self.child.as_mut().expect("running").0;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; its log ends:\n{}",
                self.id,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// etcd, schedulers and executors as separate processes. A test that fails prints the end of
/// each process's log.
pub struct EtcdCluster {
    // Executors first: they are killed before the schedulers, then etcd.
    pub executors: Vec<Member>,
    pub schedulers: Vec<Member>,
    pub etcd: Etcd,
    dir: tempfile::TempDir,
    /// Variables every process gets.
    env: Vec<(String, String)>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
    }
}

impl EtcdCluster {
    pub async fn start(schedulers: usize, executors: usize, slots: usize) -> EtcdCluster {
        Self::start_with_env(schedulers, executors, slots, &[]).await
    }

    /// A cluster whose processes all get the variables `env`.
    pub async fn start_with_env(
        schedulers: usize,
        executors: usize,
        slots: usize,
        env: &[(&str, &str)],
    ) -> EtcdCluster {
        let etcd = Etcd::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = EtcdCluster {
            executors: Vec::new(),
            schedulers: Vec::new(),
            etcd,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..schedulers {
            let m = cluster.spawn(
                &format!("scheduler-{i}"),
                &["scheduler", "--leader-ttl-secs", TTL_SECS],
            );
            cluster.schedulers.push(m);
        }
        for i in 0..executors {
            let id = format!("exec-{i}");
            let m = cluster.spawn(
                &id,
                &[
                    "executor",
                    "--executor-id",
                    &id,
                    "--slots",
                    &slots.to_string(),
                    "--lease-ttl-secs",
                    TTL_SECS,
                    "--heartbeat-interval-ms",
                    "200",
                    "--drain-timeout-secs",
                    "20",
                ],
            );
            cluster.executors.push(m);
        }
        cluster.wait_executors(executors).await;
        cluster
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Member {
        let port_file = self.dir.path().join(format!("{name}.port"));
        let http_port_file = self.dir.path().join(format!("{name}.http-port"));
        let spark_port_file = self.dir.path().join(format!("{name}.spark-connect-port"));
        let scheduler = args[0] == "scheduler";
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let mut guard = spawn_guarded(
            Command::new(ember_bin())
                .args(args)
                .args(["--etcd", &self.etcd.url, "--bind", "127.0.0.1:0"])
                .arg("--port-file")
                .arg(&port_file)
                .arg("--http-port-file")
                .arg(&http_port_file)
                .args(if args[0] == "executor" {
                    vec![
                        "--work-dir".to_string(),
                        self.dir.path().display().to_string(),
                    ]
                } else {
                    vec![
                        "--spark-connect-bind".to_string(),
                        "127.0.0.1:0".to_string(),
                        "--spark-connect-port-file".to_string(),
                        spark_port_file.display().to_string(),
                    ]
                })
                .env("EMBER_LOG", "info")
                .env(
                    "EMBER_ALLOWED_LOCATIONS",
                    crate::support::allowed_locations(),
                )
                .env("EMBER_ALLOW_ANONYMOUS", "true")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log),
        );
        let port = wait_for_port(&port_file, &mut guard.0);
        let http_port = wait_for_port(&http_port_file, &mut guard.0);
        let spark_connect_port = scheduler.then(|| wait_for_port(&spark_port_file, &mut guard.0));
        Member {
            port,
            http_port,
            spark_connect_port,
            id: name.to_string(),
            log: self.log_path(name),
            child: Some(guard),
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The end of every member's log, for a test that failed.
    fn print_log_tails(&self) {
        for m in self.schedulers.iter().chain(&self.executors) {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- last lines of {} ---\n{}", m.id, tail.join("\n"));
        }
    }

    /// Waits until the leader lists exactly `n` executors.
    pub async fn wait_executors(&self, n: usize) -> Vec<String> {
        let client = self.client().await;
        eventually(
            "the leader lists the executors",
            Duration::from_secs(30),
            || async {
                let ids: Vec<String> = client
                    .executors()
                    .await
                    .unwrap()
                    .0
                    .iter()
                    .map(|e| e.spec.id.to_string())
                    .collect();
                match ids.len() == n {
                    true => Ok(ids),
                    false => Err(format!("expected {n} executors, have {ids:?}")),
                }
            },
        )
        .await
    }

    /// Index in `schedulers` of the one etcd names leader, once it is not `old` (waiting for
    /// an election).
    pub async fn leader_other_than(&self, old: usize) -> usize {
        eventually(
            "another scheduler leads",
            Duration::from_secs(60),
            || async {
                match self.leader().await {
                    now if now != old => Ok(now),
                    _ => Err(format!("scheduler {old} still leads")),
                }
            },
        )
        .await
    }

    /// Index in `schedulers` of the one etcd names leader (waiting for an election).
    pub async fn leader(&self) -> usize {
        let store = self.etcd.store().await;
        let key = Keys::new("default").leader();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(kv) = store.get(&key).await.unwrap() {
                let record = ember_proto::records::decode_leader(&kv.value).unwrap();
                let port: u16 = record.address.rsplit(':').next().unwrap().parse().unwrap();
                if let Some(i) = self.schedulers.iter().position(|s| s.port == port) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestCluster for EtcdCluster {
    /// Every scheduler: the client follows the leader among them.
    fn scheduler_urls(&self) -> String {
        let urls: Vec<String> = self
            .schedulers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.port))
            .collect();
        urls.join(",")
    }
}
