//! Starting and stopping a scheduler process's gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ember_core::meta::{EtcdStore, MemoryStore, MetaStore};
use ember_core::net::IdleTimeout;
use ember_core::{EmberError, Result};
use ember_proto::pb::scheduler_service_server::SchedulerServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::api::flight_sql::FlightSqlFront;
use crate::api::grpc::SchedulerGrpc;
use crate::api::spark_connect::SparkConnect;
use crate::config::SchedulerConfig;
use crate::runtime::{Role, Scheduler};
use arrow_flight::flight_service_server::FlightServiceServer;
use ember_proto::spark::spark_connect_service_server::SparkConnectServiceServer;

/// A running scheduler; dropping it does not stop it, `shutdown` does.
pub struct SchedulerHandle {
    pub scheduler: Arc<Scheduler>,
    /// The address the server listens on.
    pub local_addr: SocketAddr,
    /// The HTTP endpoint (/healthz, /readyz, /metrics), unless disabled.
    pub http: Option<ember_ops::OpsServer>,
    /// The Spark Connect endpoint's address, unless disabled.
    pub spark_connect_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    server: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl SchedulerHandle {
    /// Resigns leadership (a standby takes over at once) and stops background work, then
    /// stops taking requests, waiting a few seconds for those in flight.
    pub async fn shutdown(self) -> Result<()> {
        self.scheduler.shutdown().await;
        self.shutdown.cancel();
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        let mut server = self.server;
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(joined) => joined
                .map_err(|e| EmberError::Internal(format!("scheduler server task: {e}")))?
                .map_err(|e| EmberError::Internal(format!("scheduler server: {e}"))),
            Err(_) => {
                tracing::warn!("connections still open after 5 s; closing them");
                server.abort();
                Ok(())
            }
        }
    }
}

/// Binds `config.bind` and serves the scheduler until `shutdown`.
pub async fn start(config: SchedulerConfig) -> Result<SchedulerHandle> {
    if config
        .confinement
        .allowed_locations
        .allows_the_whole_filesystem()
    {
        tracing::warn!(
            "SQL may read and write every file this process can (--allowed-locations covers /); \
             name the data folders instead"
        );
    }
    // TLS first: everything this process dials from here on uses it.
    config.cluster.tls.install()?;
    let server_tls = config.cluster.tls.server(ember_core::tls::Alpn::Http2)?;
    let http_tls = config.cluster.tls.server(ember_core::tls::Alpn::Http1)?;
    let spark_tls = config.cluster.tls.server(ember_core::tls::Alpn::Http2)?;
    let listener = TcpListener::bind(&config.bind)
        .await
        .map_err(|e| EmberError::User(format!("cannot listen on {}: {e}", config.bind)))?;
    let local_addr = listener.local_addr()?;
    if let Some(path) = &config.port_file {
        std::fs::write(path, local_addr.port().to_string())?;
    }
    let address =
        ember_core::net::advertised_address(config.advertise_addr.as_deref(), local_addr)?;
    let store: Arc<dyn MetaStore> = match &config.cluster.etcd {
        Some(urls) => Arc::new(EtcdStore::connect(urls).await?),
        None => Arc::new(MemoryStore::new()),
    };
    let auth = Arc::new(ember_core::auth::Authenticator::new(&config.auth)?);
    if auth.anonymous() && !config.auth.embedded {
        tracing::warn!(
            "anyone who reaches this scheduler may run queries (--allow-anonymous); give \
             clients tokens with --auth-file instead"
        );
    } else {
        tracing::info!(tokens = auth.tokens(), "clients must present a token");
    }
    let scheduler = Scheduler::new(config, store, Arc::clone(&auth));
    scheduler.start_background(address);
    // Serve once this scheduler knows its role: at once in memory, within a few seconds with
    // etcd (if etcd does not answer, requests get "unavailable, retry" until it does).
    let mut role = scheduler.role_changes();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        role.wait_for(|r| *r != Role::Starting),
    )
    .await;
    // Clients' requests are bounded; answers (inline results) may be large.
    let max_request = scheduler.config.max_request_bytes();
    // Every call names its caller first (a token, a cluster certificate, or anonymous where
    // allowed), or is refused.
    let guard = crate::api::auth::interceptor(Arc::clone(&auth));
    // A client that stalls while sending its request is cut off.
    let idle = Duration::from_secs(scheduler.config.client_idle_timeout_secs.max(1));
    let service = IdleTimeout::new(
        InterceptedService::new(
            SchedulerServiceServer::new(SchedulerGrpc::new(Arc::clone(&scheduler)))
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES),
            guard.clone(),
        ),
        idle,
    );
    let flight = IdleTimeout::new(
        InterceptedService::new(
            FlightServiceServer::new(FlightSqlFront::new(
                Arc::clone(&scheduler),
                scheduler.config.flight_results,
            ))
            .max_decoding_message_size(max_request)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES),
            guard,
        ),
        idle,
    );
    // Spark Connect, also on this port: standbys forward their clients' calls here.
    let spark = |scheduler: &Arc<Scheduler>| {
        IdleTimeout::new(
            InterceptedService::new(
                SparkConnectServiceServer::new(SparkConnect::new(Arc::clone(scheduler)))
                    .max_decoding_message_size(max_request)
                    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES),
                crate::api::auth::interceptor(Arc::clone(&auth)),
            ),
            idle,
        )
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let spark_connect_addr = match config_bind(&scheduler.config.spark_connect_bind) {
        Some(bind) => {
            let listener = match TcpListener::bind(&bind).await {
                Ok(listener) => listener,
                // Another scheduler on this host has the usual port: take a free one.
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && bind == crate::config::DEFAULT_SPARK_CONNECT_BIND =>
                {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    tracing::warn!(
                        port = listener.local_addr()?.port(),
                        "Spark Connect's usual port {bind} is taken; listening on a free one"
                    );
                    listener
                }
                Err(e) => {
                    return Err(EmberError::User(format!(
                        "cannot listen for Spark Connect on {bind}: {e} (--spark-connect-bind \
                         picks another address, `off` disables it)"
                    )));
                }
            };
            let addr = listener.local_addr()?;
            if let Some(path) = &scheduler.config.spark_connect_port_file {
                std::fs::write(path, addr.port().to_string())?;
            }
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .tcp_keepalive(Some(Duration::from_secs(60)))
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .add_service(spark(&scheduler));
            tokio::spawn(ember_core::tls::serve(
                router,
                listener,
                spark_tls,
                token.clone().cancelled_owned(),
            ));
            tracing::info!(%addr, "Spark Connect listening");
            Some(addr)
        }
        None => None,
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A client that vanished without closing its connection is noticed and dropped.
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service)
        .add_service(flight)
        .add_service(spark(&scheduler));
    let server = tokio::spawn(ember_core::tls::serve(
        router,
        listener,
        server_tls,
        token.cancelled_owned(),
    ));
    tracing::info!(%local_addr, "scheduler listening");
    let http = match config_http(&scheduler) {
        Some(bind) => {
            let ops: Arc<dyn ember_ops::Ops> = Arc::new(SchedulerOps(Arc::clone(&scheduler)));
            let auth = Some(Arc::clone(&scheduler.auth));
            let access = ember_ops::Access {
                auth,
                tls: http_tls,
                routes: Some(crate::api::http::router(Arc::clone(&scheduler))),
            };
            let server =
                ember_ops::serve(&bind, crate::config::DEFAULT_HTTP_BIND, ops, access).await?;
            if let Some(path) = &scheduler.config.http_port_file {
                std::fs::write(path, server.local_addr.port().to_string())?;
            }
            Some(server)
        }
        None => None,
    };
    Ok(SchedulerHandle {
        scheduler,
        local_addr,
        http,
        spark_connect_addr,
        shutdown,
        server,
    })
}

fn config_http(scheduler: &Scheduler) -> Option<String> {
    config_bind(&scheduler.config.http_bind)
}

/// An address to listen on, or `None` for `off` (or nothing).
fn config_bind(bind: &str) -> Option<String> {
    let bind = bind.trim();
    (!bind.is_empty() && bind != "off").then(|| bind.to_string())
}

/// What the scheduler's HTTP endpoint reports.
struct SchedulerOps(Arc<Scheduler>);

impl ember_ops::Ops for SchedulerOps {
    fn ready(&self) -> std::result::Result<(), String> {
        match self.0.role() {
            Role::Leader { .. } | Role::Standby { leader: Some(_) } => Ok(()),
            Role::Standby { leader: None } => Err("no leader is known yet".into()),
            Role::Starting => Err("electing a leader or taking over".into()),
        }
    }

    fn metrics(&self) -> Vec<ember_ops::Metric> {
        self.0.metrics()
    }
}
