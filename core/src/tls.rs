//! TLS for Ember's gRPC and Flight ports: one block of options for every command, the
//! server's identity, and the roots a process trusts when it dials a peer.
//!
//! With `--tls-cert` and `--tls-key` a scheduler or executor serves TLS only. With `--tls-ca`
//! a process dials its peers (schedulers, executors, the CLI and clients) over TLS, trusting
//! that CA, whatever scheme their URLs say: a cluster is TLS throughout or not at all. The
//! dialing side is process-wide (installed once at start by [`TlsOptions::install`]) because
//! every connection a process makes goes through `net::endpoint`.

use std::path::PathBuf;
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::{EmberError, Result};

/// TLS settings shared by every command.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsOptions {
    /// This process's certificate (PEM), for the ports it serves; with --tls-key.
    #[arg(long, env = "EMBER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "EMBER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA (PEM) that signed the cluster's certificates: peers are dialed over TLS and
    /// must present a certificate it signed.
    #[arg(long, env = "EMBER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| EmberError::User(format!("reading the TLS {what} {}: {e}", path.display())))
}

impl TlsOptions {
    /// What the ports this process serves use, when a certificate is given.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read(cert, "certificate")?, read(key, "key")?);
        Ok(Some(ServerTlsConfig::new().identity(identity)))
    }

    /// Makes every connection this process dials use TLS, trusting `--tls-ca` (nothing
    /// changes without it). Call once, at start; a second, different call is an error.
    pub fn install(&self) -> Result<()> {
        let Some(ca) = &self.tls_ca else {
            return Ok(());
        };
        let ca = read(ca, "CA")?;
        if ca_pem_is_empty(&ca) {
            return Err(EmberError::User(format!(
                "the TLS CA {} holds no certificate",
                self.tls_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        let installed = CLIENT.get_or_init(|| (ca.clone(), config));
        if installed.0 != ca {
            return Err(EmberError::Internal(
                "this process already dials with another TLS CA".into(),
            ));
        }
        Ok(())
    }
}

fn ca_pem_is_empty(pem: &[u8]) -> bool {
    !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

static CLIENT: OnceLock<(Vec<u8>, ClientTlsConfig)> = OnceLock::new();

/// The TLS this process dials with, if installed.
pub fn client() -> Option<ClientTlsConfig> {
    CLIENT.get().map(|(_, config)| config.clone())
}

/// Whether this process dials over TLS.
pub fn dials_tls() -> bool {
    CLIENT.get().is_some()
}
