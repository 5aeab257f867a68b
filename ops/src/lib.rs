//! The operations endpoint of every long-running process, over HTTP:
//!
//! - `/healthz`: 200 while the process runs and answers. Never tied to other processes (a
//!   scheduler that is unreachable must not get every executor restarted).
//! - `/readyz`: 200 when the process can do its work now (a scheduler leads or knows the
//!   leader; an executor is registered and not draining), 503 with the reason otherwise.
//! - `/metrics`: the process's counters and gauges in Prometheus' text format; where the
//!   process checks credentials, only for a caller that presents them (`authorization: Bearer
//!   TOKEN`, as Prometheus' scrape configs send it). Probes need none.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ember_core::auth::Authenticator;
use ember_core::metrics::HistogramSnapshot;
use ember_core::tls::ServerTls;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ember_core::{EmberError, Result};

/// Whether a sample only ever grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample of a metric, read when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// A histogram's buckets, sum and count.
    pub histogram: Option<HistogramSnapshot>,
}

impl Metric {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Counter,
            labels: Vec::new(),
            value: value as f64,
            histogram: None,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Gauge,
            labels: Vec::new(),
            value,
            histogram: None,
        }
    }

    pub fn histogram(name: &'static str, help: &'static str, value: HistogramSnapshot) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Histogram,
            labels: Vec::new(),
            value: value.count as f64,
            histogram: Some(value),
        }
    }

    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }
}

/// What a process tells its operations endpoint.
pub trait Ops: Send + Sync + 'static {
    /// `Err(reason)` while the process cannot do its work.
    fn ready(&self) -> std::result::Result<(), String>;
    /// The samples to expose now.
    fn metrics(&self) -> Vec<Metric>;
}

/// Renders samples in Prometheus' text exposition format.
pub fn render(samples: &[Metric]) -> Result<String> {
    let registry = Registry::new();
    let mut counters: Vec<(&str, IntCounterVec)> = Vec::new();
    let mut gauges: Vec<(&str, GaugeVec)> = Vec::new();
    let err = |e: prometheus::Error| EmberError::Internal(format!("metrics: {e}"));
    for m in samples {
        let names: Vec<&str> = m.labels.iter().map(|(k, _)| *k).collect();
        let values: Vec<&str> = m.labels.iter().map(|(_, v)| v.as_str()).collect();
        match m.kind {
            MetricKind::Counter => {
                let vec = match counters.iter().find(|(n, _)| *n == m.name) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let v =
                            IntCounterVec::new(Opts::new(m.name, m.help), &names).map_err(err)?;
                        registry.register(Box::new(v.clone())).map_err(err)?;
                        counters.push((m.name, v.clone()));
                        v
                    }
                };
                vec.get_metric_with_label_values(&values)
                    .map_err(err)?
                    .inc_by(m.value as u64);
            }
            MetricKind::Gauge => {
                let vec = match gauges.iter().find(|(n, _)| *n == m.name) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let v = GaugeVec::new(Opts::new(m.name, m.help), &names).map_err(err)?;
                        registry.register(Box::new(v.clone())).map_err(err)?;
                        gauges.push((m.name, v.clone()));
                        v
                    }
                };
                vec.get_metric_with_label_values(&values)
                    .map_err(err)?
                    .set(m.value);
            }
            // Kept by the process itself (bucket counts, not single values): written below.
            MetricKind::Histogram => {}
        }
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(err)?;
    let mut text =
        String::from_utf8(out).map_err(|e| EmberError::Internal(format!("metrics: {e}")))?;
    render_histograms(samples, &mut text);
    Ok(text)
}

/// Histograms in the text format: per name a HELP and TYPE line, then per label set the
/// cumulative buckets (`le`), the sum and the count.
fn render_histograms(samples: &[Metric], text: &mut String) {
    use std::fmt::Write;
    let mut named: Vec<&'static str> = Vec::new();
    for m in samples {
        if m.kind == MetricKind::Histogram && !named.contains(&m.name) {
            named.push(m.name);
        }
    }
    for name in named {
        let mut series = samples.iter().filter(|m| m.name == name);
        let help = series.clone().next().map_or("", |m| m.help);
        let _ = writeln!(text, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(text, "# TYPE {name} histogram");
        for m in series.by_ref() {
            let Some(h) = &m.histogram else { continue };
            let labels: Vec<String> = m
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v, true)))
                .collect();
            let with = |extra: Option<String>| {
                let all: Vec<String> = labels.iter().cloned().chain(extra).collect();
                if all.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", all.join(","))
                }
            };
            for (bound, count) in &h.buckets {
                let le = if bound.is_infinite() {
                    "+Inf".to_string()
                } else {
                    bound.to_string()
                };
                let _ = writeln!(
                    text,
                    "{name}_bucket{} {count}",
                    with(Some(format!("le=\"{le}\"")))
                );
            }
            let _ = writeln!(text, "{name}_sum{} {}", with(None), h.sum_seconds);
            let _ = writeln!(text, "{name}_count{} {}", with(None), h.count);
        }
    }
}

/// Text-format escaping: backslashes and newlines, and quotes in label values.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = text.replace('\\', "\\\\").replace('\n', "\\n");
    if quotes {
        out = out.replace('"', "\\\"");
    }
    out
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// What the endpoint serves, and to whom.
#[derive(Clone)]
struct Served {
    ops: Arc<dyn Ops>,
    auth: Option<Arc<Authenticator>>,
}

async fn readyz(State(served): State<Served>) -> Response {
    match served.ops.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(served): State<Served>, headers: HeaderMap) -> Response {
    if let Some(auth) = &served.auth {
        let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if let Err(e) = auth.authenticate(presented) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("{e}\n"),
            )
                .into_response();
        }
    }
    match render(&served.ops.metrics()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A running operations endpoint; dropping it does not stop it, `shutdown` does.
#[derive(Debug)]
pub struct OpsServer {
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl OpsServer {
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `bind` (port 0 picks one). When `bind` is
/// the process's `default` and that port is taken (another Ember process on the same host),
/// a free port is taken instead, and logged; an address someone chose must be free.
/// Who may read what the endpoint serves, and how it is reached.
#[derive(Debug, Default)]
pub struct Access {
    /// `/metrics` asks it for credentials, when given.
    pub auth: Option<Arc<Authenticator>>,
    /// HTTPS, when given (the process's certificate).
    pub tls: Option<Arc<ServerTls>>,
    /// More routes the process serves on the same port (a scheduler's REST API and web UI),
    /// which check their callers themselves.
    pub routes: Option<Router>,
}

/// TLS connections, as axum takes them.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<ember_core::tls::Accepted>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor ends only with this listener: wait for the shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

pub async fn serve(
    bind: &str,
    default: &str,
    ops: Arc<dyn Ops>,
    access: Access,
) -> Result<OpsServer> {
    let Access { auth, tls, routes } = access;
    let listener = match TcpListener::bind(bind).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && bind == default => {
            let host = bind.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
            let listener = TcpListener::bind((host, 0))
                .await
                .map_err(|e| EmberError::User(format!("cannot listen for HTTP on {host}: {e}")))?;
            tracing::warn!(
                taken = bind,
                chosen = %listener.local_addr()?,
                "the default HTTP port is taken (another Ember process on this host?); \
                 serving on a free one (choose one with --http-bind)"
            );
            listener
        }
        Err(e) => {
            return Err(EmberError::User(format!(
                "cannot listen for HTTP on {bind}: {e}"
            )));
        }
    };
    let local_addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Served { ops, auth });
    let app = match routes {
        Some(routes) => app.merge(routes),
        None => app,
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = match tls {
            Some(tls) => {
                let listener = TlsListener {
                    accepted: ember_core::tls::accept(listener, tls),
                    local_addr,
                };
                axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            }
        };
        if let Err(e) = served {
            tracing::warn!(error = %e, "the HTTP endpoint stopped");
        }
    });
    tracing::info!(%local_addr, "HTTP endpoint (/healthz, /readyz, /metrics) listening");
    Ok(OpsServer {
        local_addr,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Up;

    impl Ops for Up {
        fn ready(&self) -> std::result::Result<(), String> {
            Ok(())
        }
        fn metrics(&self) -> Vec<Metric> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_taken_default_port_falls_back_to_a_free_one_and_a_chosen_one_does_not() {
        let first = serve(
            "127.0.0.1:0",
            "127.0.0.1:0",
            Arc::new(Up),
            Access::default(),
        )
        .await
        .unwrap();
        let taken = first.local_addr.to_string();
        let second = serve(&taken, &taken, Arc::new(Up), Access::default())
            .await
            .unwrap();
        assert_ne!(second.local_addr, first.local_addr);
        let chosen = serve(&taken, "127.0.0.1:9090", Arc::new(Up), Access::default()).await;
        assert!(
            matches!(&chosen, Err(EmberError::User(m)) if m.contains(&taken)),
            "{chosen:?}"
        );
        second.shutdown().await;
        first.shutdown().await;
    }

    #[test]
    fn samples_render_as_prometheus_text() {
        let text = render(&[
            Metric::counter("ember_tasks_completed_total", "Tasks completed.", 7),
            Metric::gauge("ember_jobs", "Jobs by state.", 2.0).with_label("state", "running"),
            Metric::gauge("ember_jobs", "Jobs by state.", 1.0).with_label("state", "failed"),
        ])
        .unwrap();
        assert!(
            text.contains("# TYPE ember_tasks_completed_total counter"),
            "{text}"
        );
        assert!(text.contains("ember_tasks_completed_total 7"), "{text}");
        assert!(text.contains("ember_jobs{state=\"running\"} 2"), "{text}");
        assert!(text.contains("ember_jobs{state=\"failed\"} 1"), "{text}");
    }
}
