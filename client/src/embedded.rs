//! An embedded cluster: a scheduler and N executors in this process, each on its own loopback
//! port, talking over real gRPC and Flight as separate processes would.

use std::time::Duration;

use ember_core::{EmberError, Result};
use ember_executor::{ExecutorConfig, ExecutorHandle};
use ember_scheduler::{SchedulerConfig, SchedulerHandle};

use crate::client::EmberClient;

pub struct EmbeddedCluster {
    scheduler: SchedulerHandle,
    executors: Vec<ExecutorHandle>,
}

impl EmbeddedCluster {
    /// Starts a scheduler and `executors` executors with `slots` task slots each (0: the CPU
    /// cores shared out among the executors), and waits until all executors have registered.
    pub async fn start(executors: usize, slots: usize) -> Result<Self> {
        Self::start_with(SchedulerConfig::default(), executors, slots, "127.0.0.1:0").await
    }

    /// Like [`start`](Self::start), with scheduler options and the scheduler's bind address.
    pub async fn start_with(
        scheduler_config: SchedulerConfig,
        executors: usize,
        slots: usize,
        bind: &str,
    ) -> Result<Self> {
        let executor = ExecutorConfig {
            slots,
            ..ExecutorConfig::default()
        };
        Self::start_configured(scheduler_config, executor, executors, bind).await
    }

    /// Starts a scheduler and `executors` executors configured like `executor` (its slots of 0
    /// share the CPU cores out among them, its memory limit of 0 shares out the default).
    pub async fn start_configured(
        mut scheduler_config: SchedulerConfig,
        executor: ExecutorConfig,
        executors: usize,
        bind: &str,
    ) -> Result<Self> {
        if executors == 0 {
            return Err(EmberError::User(
                "an embedded cluster needs at least one executor".into(),
            ));
        }
        let slots = if executor.slots > 0 {
            executor.slots
        } else {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / executors).max(1)
        };
        let memory_limit_mb = if executor.memory_limit_mb > 0 {
            executor.memory_limit_mb
        } else {
            ((ember_executor::config::default_memory_limit() / executors) >> 20).max(1) as u64
        };
        scheduler_config.bind = bind.to_string();
        scheduler_config.port_file = None;
        // The user's own settings first: without credentials, anonymous access must be asked for.
        ember_core::auth::Authenticator::new(&scheduler_config.auth)?;
        // The executors in this process sign in with a token of their own, made here.
        let internal = ember_core::auth::new_token()?;
        let line = ember_core::auth::Credentials::line("ember-executor", &internal)?;
        scheduler_config.auth.auth_tokens = Some(match scheduler_config.auth.auth_tokens.take() {
            Some(tokens) => format!("{tokens}\n{line}"),
            None => line,
        });
        let scheduler = ember_scheduler::start(scheduler_config).await?;
        let url = scheduler_url(scheduler.local_addr);
        let mut handles = Vec::with_capacity(executors);
        for i in 0..executors {
            let config = ExecutorConfig {
                cluster: ember_core::options::ClusterAddress {
                    scheduler: Some(url.clone()),
                    connection: ember_core::options::ClusterConnection {
                        etcd: None,
                        cluster_name: "default".into(),
                        tls: Default::default(),
                    },
                    token: ember_core::auth::TokenOptions {
                        token: Some(internal.clone()),
                        token_file: None,
                    },
                },
                bind: "127.0.0.1:0".into(),
                advertise_addr: None,
                port_file: None,
                // Several executors share this process: none serves the HTTP endpoint.
                http_bind: "off".into(),
                http_port_file: None,
                slots,
                memory_limit_mb,
                executor_id: Some(format!("embedded-{i}")),
                heartbeat_interval_ms: 1000,
                ..executor.clone()
            };
            handles.push(ember_executor::start(config).await?);
        }
        let cluster = Self {
            scheduler,
            executors: handles,
        };
        cluster.wait_for_executors(executors).await?;
        Ok(cluster)
    }

    async fn wait_for_executors(&self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.scheduler.scheduler.executors().len() < n {
            if tokio::time::Instant::now() > deadline {
                return Err(EmberError::Unavailable(
                    "embedded executors did not register within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// `http://HOST:PORT` of the scheduler.
    pub fn scheduler_url(&self) -> String {
        scheduler_url(self.scheduler.local_addr)
    }

    pub fn scheduler_port(&self) -> u16 {
        self.scheduler.local_addr.port()
    }

    pub fn executors(&self) -> &[ExecutorHandle] {
        &self.executors
    }

    pub async fn client(&self) -> Result<EmberClient> {
        EmberClient::connect(&self.scheduler_url()).await
    }

    /// Stops the executors, then the scheduler.
    pub async fn shutdown(self) {
        for e in self.executors {
            e.shutdown().await;
        }
        let _ = self.scheduler.shutdown().await;
    }
}

/// The URL that reaches a scheduler bound to `addr` from this host (loopback for a wildcard).
fn scheduler_url(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}
