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
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::{EmberError, Result};

mod server;
pub use server::{Accepted, Alpn, ServerTls, accept, incoming, serve};

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

    /// The name every peer's certificate must hold, instead of the host dialed: for clusters
    /// whose processes are dialed by addresses no certificate can name in advance (pods by
    /// IP). `ember certs` puts `ember.cluster` in the schedulers' and executors' certificates.
    #[arg(long, env = "EMBER_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

pub(crate) fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| EmberError::User(format!("reading the TLS {what} {}: {e}", path.display())))
}

impl TlsOptions {
    /// What the ports this process serves use, when a certificate is given (reloaded when
    /// its files change). With a CA too, peers may present a certificate it signed (mutual
    /// TLS), whose role cluster calls require ([`require_role`]); clients without one still
    /// reach what grants or tokens guard.
    pub fn server(&self, alpn: Alpn) -> Result<Option<std::sync::Arc<ServerTls>>> {
        ServerTls::new(self, alpn)
    }

    fn identity(&self) -> Result<Option<Identity>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        )))
    }

    /// Makes every connection this process dials use TLS, trusting `--tls-ca` (nothing
    /// changes without it). Call once, at start; a second, different call is an error. The
    /// files are read again when they change (connections dialed later use the new ones).
    pub fn install(&self) -> Result<()> {
        if self.tls_ca.is_none() {
            return Ok(());
        }
        let config = self.client_config()?;
        let chosen = self.clone();
        let installed = CLIENT.get_or_init(|| Dialing {
            options: chosen,
            state: Mutex::new((config, stamps(self), Instant::now())),
        });
        if installed.options != *self {
            return Err(EmberError::Internal(
                "this process already dials with other TLS settings".into(),
            ));
        }
        Ok(())
    }

    fn client_config(&self) -> Result<ClientTlsConfig> {
        let Some(ca_path) = &self.tls_ca else {
            return Err(EmberError::Internal("no TLS CA to dial with".into()));
        };
        let ca = read(ca_path, "CA")?;
        if ca_pem_is_empty(&ca) {
            return Err(EmberError::User(format!(
                "the TLS CA {} holds no certificate",
                ca_path.display()
            )));
        }
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        // Servers of the cluster learn this process's role from its certificate.
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(config)
    }
}

/// A file's modification time and length, to notice that it changed (`None`: unreadable).
pub(crate) type Stamp = Option<(SystemTime, u64)>;

pub(crate) fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The TLS files' stamps.
fn stamps(options: &TlsOptions) -> Vec<Stamp> {
    [&options.tls_cert, &options.tls_key, &options.tls_ca]
        .into_iter()
        .map(|path| stamp(path.as_ref()?))
        .collect()
}

type ClientState = (ClientTlsConfig, Vec<Stamp>, Instant);

/// What this process dials with, and its files as last read.
struct Dialing {
    options: TlsOptions,
    state: Mutex<ClientState>,
}

fn ca_pem_is_empty(pem: &[u8]) -> bool {
    !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

static CLIENT: OnceLock<Dialing> = OnceLock::new();

/// The TLS this process dials the cluster's processes with, if installed (read again when its
/// files changed); with `--tls-server-name`, peers' certificates are checked for that name.
pub fn client() -> Option<ClientTlsConfig> {
    let (config, options) = current()?;
    Some(match &options.tls_server_name {
        Some(name) => config.domain_name(name.clone()),
        None => config,
    })
}

/// The same for a service outside the cluster (etcd): checked for the host dialed.
pub fn client_outside() -> Option<ClientTlsConfig> {
    current().map(|(config, _)| config)
}

/// How many times the files this process dials with were read again (0 without TLS).
pub fn generation() -> u64 {
    let _ = current();
    GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn current() -> Option<(ClientTlsConfig, &'static TlsOptions)> {
    let dialing = CLIENT.get()?;
    let mut state = dialing.state.lock();
    if state.2.elapsed() >= Duration::from_secs(1) {
        state.2 = Instant::now();
        let now = stamps(&dialing.options);
        if now != state.1 {
            match dialing.options.client_config() {
                Ok(config) => {
                    tracing::info!("TLS certificates for dialing reloaded");
                    state.0 = config;
                    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Logged once per change: a file half-written is tried again when it changes.
                Err(e) => tracing::warn!(error = %e, "TLS certificates for dialing not reloaded"),
            }
            state.1 = now;
        }
    }
    Some((state.0.clone(), &dialing.options))
}

/// Whether this process dials over TLS.
pub fn dials_tls() -> bool {
    CLIENT.get().is_some()
}

static MUTUAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a certificate of the cluster's CA says its holder is: its subject's common name is
/// `ember-scheduler`, `ember-executor` or `ember-client` (as `ember certs` makes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Scheduler,
    Executor,
    Client,
}

impl Role {
    pub fn common_name(self) -> &'static str {
        match self {
            Role::Scheduler => "ember-scheduler",
            Role::Executor => "ember-executor",
            Role::Client => "ember-client",
        }
    }
}

/// The role in the certificate a peer presented (already verified against the CA by TLS):
/// its subject must hold exactly one common name, equal to a role's.
pub fn peer_role<T>(request: &tonic::Request<T>) -> Option<Role> {
    let certs = request.peer_certs()?;
    let cert = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    role_of_subject(cert.subject())
}

fn role_of_subject(subject: &[u8]) -> Option<Role> {
    let names = common_names(subject)?;
    let [name] = names.as_slice() else {
        return None;
    };
    [Role::Scheduler, Role::Executor, Role::Client]
        .into_iter()
        .find(|role| role.common_name().as_bytes() == *name)
}

/// The common names in a DER `Name` (a SEQUENCE, or its contents, of SETs of
/// SEQUENCE { type OID, value }); `None` when it does not parse.
fn common_names(subject: &[u8]) -> Option<Vec<&[u8]>> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03]; // 2.5.4.3
    let mut rdns = match der(subject) {
        Some((0x30, content, [])) => content,
        _ => subject,
    };
    let mut names = Vec::new();
    while !rdns.is_empty() {
        let (tag, mut set, rest) = der(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, pair, rest) = der(set)?;
            set = rest;
            let (oid_tag, oid, value) = der(pair)?;
            if tag != 0x30 || oid_tag != 0x06 {
                return None;
            }
            if oid == COMMON_NAME {
                let (_, text, []) = der(value)? else {
                    return None;
                };
                names.push(text);
            }
        }
    }
    Some(names)
}

/// One DER TLV: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let octets = (first & 0x7f) as usize;
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let len = rest[..octets]
            .iter()
            .fold(0usize, |n, &b| n << 8 | b as usize);
        rest = &rest[octets..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Whether this process serves mutual TLS (asks peers for certificates of its CA).
pub fn mutual() -> bool {
    MUTUAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Refuses a cluster call unless its peer proved one of `roles` with a certificate — when this
/// process serves mutual TLS (without it, every peer is let through, as before).
pub fn require_role<T>(request: &tonic::Request<T>, roles: &[Role]) -> Result<(), tonic::Status> {
    if !MUTUAL.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    match peer_role(request) {
        Some(role) if roles.contains(&role) => Ok(()),
        Some(role) => Err(tonic::Status::permission_denied(format!(
            "this call is for {}; the caller's certificate is {}'s",
            names(roles),
            role.common_name()
        ))),
        None => Err(tonic::Status::unauthenticated(format!(
            "this call is for {}: present its certificate (--tls-cert, --tls-key)",
            names(roles)
        ))),
    }
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.common_name())
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER `Name` with these (OID, UTF8String) attributes, one per SET.
    fn name(attributes: &[(&[u8], &str)]) -> Vec<u8> {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag, content.len() as u8];
            out.extend_from_slice(content);
            out
        }
        let sets: Vec<u8> = attributes
            .iter()
            .flat_map(|(oid, value)| {
                let pair = [tlv(0x06, oid), tlv(0x0c, value.as_bytes())].concat();
                tlv(0x31, &tlv(0x30, &pair))
            })
            .collect();
        tlv(0x30, &sets)
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const OU: &[u8] = &[0x55, 0x04, 0x0b];

    #[test]
    fn the_role_is_exactly_the_one_common_name() {
        type Attributes<'a> = &'a [(&'a [u8], &'a str)];
        let cases: [(Attributes, Option<Role>); 6] = [
            (&[(CN, "ember-scheduler")], Some(Role::Scheduler)),
            (&[(OU, "x"), (CN, "ember-executor")], Some(Role::Executor)),
            // Lookalikes and extra names prove nothing.
            (&[(CN, "ember-scheduler-ui")], None),
            (
                &[(OU, "ember-scheduler"), (CN, "ember-client")],
                Some(Role::Client),
            ),
            (&[(CN, "ember-client"), (CN, "ember-scheduler")], None),
            (&[(OU, "ember-scheduler")], None),
        ];
        for (attributes, role) in cases {
            assert_eq!(role_of_subject(&name(attributes)), role, "{attributes:?}");
        }
        assert_eq!(role_of_subject(&[0x30, 0x05, 0x31]), None);
    }
}
