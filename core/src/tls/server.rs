//! The TLS a process serves with: its certificate and key, and the CA its peers' certificates
//! must chain to, read again whenever one of the files changes (certificates are rotated
//! without a restart; connections already open keep the TLS they began with). Handshakes run
//! each in its own task, with a deadline, so that a client that stalls holds nothing up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::{Stamp, TlsOptions, read, stamps};
use crate::error::{EmberError, Result};

/// How often the files are looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Longest a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The protocols a server offers: gRPC needs HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http2,
    Http1,
}

/// A server's TLS, as its files say now.
#[derive(Debug)]
pub struct ServerTls {
    options: TlsOptions,
    alpn: Alpn,
    state: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    config: Arc<rustls::ServerConfig>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

impl ServerTls {
    /// `None` without a certificate (the server speaks plaintext).
    pub fn new(options: &TlsOptions, alpn: Alpn) -> Result<Option<Arc<Self>>> {
        if options.tls_cert.is_none() {
            return Ok(None);
        }
        let config = build(options, alpn)?;
        if options.tls_ca.is_some() {
            super::MUTUAL.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(Arc::new(Self {
            options: options.clone(),
            alpn,
            state: Mutex::new(Current {
                config: Arc::new(config),
                stamps: stamps(options),
                checked: Instant::now(),
            }),
        })))
    }

    /// The configuration for a connection accepted now: rebuilt when a file changed (a change
    /// that does not load — a key half-written, a certificate without its key — keeps the one
    /// before, and says so in the log, until the files are whole again).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = stamps(&self.options);
            if now != state.stamps {
                match build(&self.options, self.alpn) {
                    Ok(config) => {
                        tracing::info!("TLS certificates reloaded");
                        state.config = Arc::new(config);
                    }
                    // Logged once per change: a file half-written is tried again when the
                    // rest of it (or its partner) lands.
                    Err(e) => tracing::warn!(error = %e, "TLS certificates not reloaded"),
                }
                state.stamps = now;
            }
        }
        Arc::clone(&state.config)
    }
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> EmberError + '_ {
    move |e| EmberError::User(format!("TLS {what}: {e}"))
}

pub(super) fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| EmberError::User(format!("the TLS {what} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(EmberError::User(format!(
            "the TLS {what} holds no certificate"
        )));
    }
    Ok(certs)
}

fn build(options: &TlsOptions, alpn: Alpn) -> Result<rustls::ServerConfig> {
    let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) else {
        return Err(EmberError::User(
            "--tls-cert and --tls-key go together".into(),
        ));
    };
    let chain = certificates(&read(cert, "certificate")?, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read(key, "key")?)
        .map_err(|e| EmberError::User(format!("the TLS key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_error("protocols"))?;
    let builder = match &options.tls_ca {
        // Peers may present a certificate of the CA (mutual TLS); clients need none.
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&read(ca, "CA")?, "CA")? {
                roots.add(cert).map_err(tls_error("CA"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| EmberError::User(format!("TLS CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(tls_error("certificate and key"))?;
    config.alpn_protocols = match alpn {
        Alpn::Http2 => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// A TLS connection, and its peer's address.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts connections on `listener` and completes their TLS handshakes, each in its own
/// task within [`HANDSHAKE`]; connections whose handshake fails are dropped (and logged).
/// Stops when the receiver is dropped.
pub fn accept(listener: TcpListener, tls: Arc<ServerTls>) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (conn, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = conn.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// [`accept`] as the stream of connections a tonic server takes.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    use futures::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(accept(listener, tls)).map(|(s, _)| Ok(s))
}

/// Serves `router` on `listener` until `signal`: over TLS with `tls`, else in plaintext.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    signal: impl std::future::Future<Output = ()>,
) -> std::result::Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(incoming(listener, tls), signal)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(crate::net::incoming(listener), signal)
                .await
        }
    }
}
