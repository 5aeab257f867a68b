//! Starting and stopping an executor: its store, task runner, gRPC + Flight server and its
//! link to the scheduler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use ember_core::job::ExecutorSpec;
use ember_core::meta::{EtcdStore, Keys, MetaStore};
use ember_core::metrics::ExecutorCounters;
use ember_core::shuffle::grant::SharedTicketKey;
use ember_core::shuffle::{FlightFetcher, ShuffleConfig, ShuffleEnv, ShuffleStore};
use ember_core::{EmberError, ExecutorId, Result};
use ember_proto::pb::executor_service_server::ExecutorServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ExecutorConfig, ShuffleCompression};
use crate::runner::TaskRunner;
use crate::scheduler_link::{
    Leader, Member, SchedulerLink, lease_loop, membership_loop, report_loop,
};
use crate::service::{ExecutorGrpc, ShuffleFlight};

/// The executor's work directory, for as long as it runs: a temporary one (removed on drop)
/// or its claimed folder under --work-dir (unlocked on drop).
#[derive(Debug)]
struct WorkDirGuard {
    _temporary: Option<tempfile::TempDir>,
    _claimed: Option<crate::workdir::WorkDir>,
}

/// A running executor.
pub struct ExecutorHandle {
    pub executor_id: ExecutorId,
    pub local_addr: SocketAddr,
    pub counters: Arc<ExecutorCounters>,
    pub store: Arc<ShuffleStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    runner: Arc<TaskRunner>,
    draining: watch::Sender<bool>,
    drain_timeout: Duration,
    http: Option<ember_ops::OpsServer>,
    _work_dir: WorkDirGuard,
}

impl ExecutorHandle {
    /// Stops: no new work, running tasks are cancelled, servers and loops end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.runner.wait().await;
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(http) = self.http {
            http.shutdown().await;
        }
    }

    /// Drains, then stops (SIGTERM): takes no new tasks (the scheduler is told, and launches
    /// are refused), lets running tasks finish, and keeps serving the shuffle output it holds
    /// until every job using it has finished (the scheduler frees it) or the drain timeout.
    pub async fn drain(self) {
        tracing::info!(executor = %self.executor_id, "draining");
        self.runner.start_draining();
        self.draining.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        running = self.runner.running(),
                        jobs = self.store.jobs_held(),
                        "drain timeout: stopping with work left"
                    );
                    break;
                }
                _ = tick.tick() => {
                    if self.runner.running() == 0 && self.store.jobs_held() == 0 {
                        tracing::info!(executor = %self.executor_id, "drained");
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// Resolves when the executor stopped on its own (for example the scheduler refused it).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }
}

/// Binds `config.bind`, serves tasks and shuffle data, and joins the scheduler.
pub async fn start(config: ExecutorConfig) -> Result<ExecutorHandle> {
    // TLS first: everything this process dials from here on uses it.
    config.cluster.connection.tls.install()?;
    let server_tls = config
        .cluster
        .connection
        .tls
        .server(ember_core::tls::Alpn::Http2)?;
    let listener = TcpListener::bind(&config.bind)
        .await
        .map_err(|e| EmberError::User(format!("cannot listen on {}: {e}", config.bind)))?;
    let local_addr = listener.local_addr()?;
    let advertise =
        ember_core::net::advertised_address(config.advertise_addr.as_deref(), local_addr)?;
    let keys = Keys::new(&config.cluster.connection.cluster_name);
    let meta: Option<Arc<dyn MetaStore>> = match &config.cluster.connection.etcd {
        Some(urls) => Some(Arc::new(EtcdStore::connect(urls).await?)),
        None => None,
    };
    let link = SchedulerLink::new(
        match &meta {
            Some(meta) => Leader::Etcd {
                store: Arc::clone(meta),
                keys: keys.clone(),
            },
            None => SchedulerLink::urls(config.scheduler_urls()),
        },
        config.cluster.token.credentials()?,
    )?;
    let executor_id = config
        .executor_id
        .clone()
        .map(ExecutorId::from)
        .unwrap_or_else(ExecutorId::new_random);
    // A folder of its own, kept (and locked) while it runs; leftovers of executors killed
    // before they could clean up are removed here.
    let (work_dir, temp) = match &config.work_dir {
        Some(root) => {
            let claimed = crate::workdir::claim(root, &executor_id)?;
            let guard = WorkDirGuard {
                _temporary: None,
                _claimed: Some(claimed),
            };
            (guard._claimed.as_ref().expect("set").path.clone(), guard)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("ember-executor-")
                .tempdir()?;
            let path = temp.path().to_path_buf();
            let guard = WorkDirGuard {
                _temporary: Some(temp),
                _claimed: None,
            };
            (path, guard)
        }
    };
    let counters = Arc::new(ExecutorCounters::default());
    let store_dir = work_dir.clone();
    let store = Arc::new(ShuffleStore::new(work_dir)?);
    let env = Arc::new(ShuffleEnv {
        executor_id: executor_id.clone(),
        store: Arc::clone(&store),
        fetcher: Arc::new(FlightFetcher::new()),
        counters: Arc::clone(&counters),
        config: ShuffleConfig {
            memory_budget: match config.shuffle_memory_mb {
                0 => usize::MAX,
                mb => mb.saturating_mul(1024 * 1024),
            },
            compression: config.shuffle_compression == ShuffleCompression::Lz4,
            ..ShuffleConfig::default()
        },
    });
    let shutdown = CancellationToken::new();
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let slots = config.effective_slots();
    let memory_limit = config.effective_memory_limit();
    let spill_dir = config
        .spill_dir
        .clone()
        .unwrap_or_else(|| store_dir.join("spill"));
    std::fs::create_dir_all(&spill_dir)?;
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(ember_core::object_stores::EmberObjectStores::new(
            config.object_store.clone(),
        ))
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir])),
        )
        .build_arc()?;
    tracing::info!(memory_limit_mb = memory_limit >> 20, "executor memory pool");
    let _ = counters.memory.set(Arc::clone(&runtime.memory_pool));
    let runner = Arc::new(TaskRunner::new(
        env,
        slots,
        reports_tx,
        shutdown.clone(),
        runtime,
    ));
    let tasks = TaskTracker::new();

    let grpc =
        ExecutorServiceServer::new(ExecutorGrpc::new(Arc::clone(&runner), Arc::clone(&store)))
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
    let ticket_key = SharedTicketKey::default();
    let flight = FlightServiceServer::new(ShuffleFlight::new(
        Arc::clone(&store),
        Arc::clone(&counters),
        ticket_key.clone(),
    ))
    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
    let token = shutdown.clone();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(grpc)
        .add_service(flight);
    tasks.spawn(async move {
        let served =
            ember_core::tls::serve(router, listener, server_tls, token.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "executor server stopped");
        }
    });

    let spec = ExecutorSpec {
        id: executor_id.clone(),
        address: advertise,
        slots: slots as u32,
    };
    let interval = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    let metrics_counters = Arc::clone(&counters);
    let forgetful_runner = Arc::clone(&runner);
    let (draining, draining_rx) = watch::channel(false);
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http_bind = config.http_bind.trim();
    let http = if http_bind.is_empty() || http_bind == "off" {
        None
    } else {
        let ops: Arc<dyn ember_ops::Ops> = Arc::new(ExecutorOps {
            counters: Arc::clone(&counters),
            store: Arc::clone(&store),
            registered: Arc::clone(&registered),
            draining: draining_rx.clone(),
            slots,
            memory_limit,
        });
        let server = ember_ops::serve(
            http_bind,
            crate::config::DEFAULT_HTTP_BIND,
            ops,
            ember_ops::Access {
                auth: None,
                tls: config
                    .cluster
                    .connection
                    .tls
                    .server(ember_core::tls::Alpn::Http1)?,
                routes: None,
            },
        )
        .await?;
        if let Some(path) = &config.http_port_file {
            std::fs::write(path, server.local_addr.port().to_string())?;
        }
        Some(server)
    };
    let member = Member {
        spec,
        metrics: move || metrics_counters.snapshot(),
        forgotten: move || forgetful_runner.cancel_all(),
        draining: draining_rx,
        shutdown: shutdown.clone(),
        registered,
        ticket_key,
    };
    match meta {
        Some(meta) => {
            let ttl = config.lease_ttl_secs;
            tasks.spawn(lease_loop(link.clone(), meta, keys, member, ttl, interval));
        }
        None => {
            tasks.spawn(membership_loop(link.clone(), member, interval));
        }
    }
    tasks.spawn(report_loop(link, reports_rx, shutdown.clone()));
    if let Some(path) = &config.port_file {
        std::fs::write(path, local_addr.port().to_string())?;
    }
    tracing::info!(executor = %executor_id, %local_addr, slots, "executor listening");
    Ok(ExecutorHandle {
        executor_id,
        local_addr,
        counters,
        store,
        shutdown,
        tasks,
        runner,
        draining,
        drain_timeout: Duration::from_secs(config.drain_timeout_secs),
        http,
        _work_dir: temp,
    })
}

/// What the executor's HTTP endpoint reports.
struct ExecutorOps {
    counters: Arc<ExecutorCounters>,
    store: Arc<ShuffleStore>,
    registered: Arc<std::sync::atomic::AtomicBool>,
    draining: watch::Receiver<bool>,
    slots: usize,
    memory_limit: usize,
}

impl ember_ops::Ops for ExecutorOps {
    fn ready(&self) -> std::result::Result<(), String> {
        if *self.draining.borrow() {
            return Err("draining".into());
        }
        if !self.registered.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("not registered with the cluster yet".into());
        }
        Ok(())
    }

    fn metrics(&self) -> Vec<ember_ops::Metric> {
        use ember_ops::Metric;
        let m = self.counters.snapshot();
        vec![
            Metric::histogram(
                "ember_executor_task_duration_seconds",
                "How long tasks ran, from getting a slot to their end.",
                self.counters.task_seconds.snapshot(),
            ),
            Metric::histogram(
                "ember_executor_fetch_duration_seconds",
                "How long a shuffle partition took to start arriving from another executor.",
                self.counters.fetch_seconds.snapshot(),
            ),
            Metric::counter(
                "ember_executor_rows_scanned_total",
                "Rows read from table files.",
                m.rows_scanned,
            ),
            Metric::counter(
                "ember_executor_tasks_completed_total",
                "Tasks that succeeded.",
                m.tasks_completed,
            ),
            Metric::counter(
                "ember_executor_tasks_failed_total",
                "Tasks that failed.",
                m.tasks_failed,
            ),
            Metric::counter(
                "ember_executor_shuffle_bytes_written_total",
                "Shuffle bytes written.",
                m.shuffle_bytes_written,
            ),
            Metric::counter(
                "ember_executor_bytes_served_total",
                "Shuffle bytes served to others over Flight.",
                m.bytes_served,
            ),
            Metric::counter(
                "ember_executor_bytes_fetched_remote_total",
                "Shuffle bytes fetched from other executors.",
                m.bytes_fetched_remote,
            ),
            Metric::counter(
                "ember_executor_bytes_read_local_total",
                "Shuffle bytes read from this executor's own store.",
                m.bytes_read_local,
            ),
            Metric::counter(
                "ember_executor_spills_total",
                "Times operators spilled to disk.",
                m.spill_count,
            ),
            Metric::counter(
                "ember_executor_spilled_bytes_total",
                "Bytes spilled to disk.",
                m.spilled_bytes,
            ),
            Metric::gauge(
                "ember_executor_task_slots",
                "Tasks this executor runs at once.",
                self.slots as f64,
            ),
            Metric::gauge(
                "ember_executor_memory_limit_bytes",
                "The memory pool shared by its tasks.",
                self.memory_limit as f64,
            ),
            Metric::gauge(
                "ember_executor_memory_reserved_bytes",
                "Memory its tasks and held shuffle output reserve from the pool now.",
                m.memory_reserved_bytes as f64,
            ),
            Metric::gauge(
                "ember_executor_jobs_held",
                "Jobs whose shuffle output this executor holds.",
                self.store.jobs_held() as f64,
            ),
        ]
    }
}
