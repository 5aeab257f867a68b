//! Client authentication: who may use a scheduler, and as whom.
//!
//! A cluster's credentials are API tokens, each held by a named user. Schedulers keep only
//! their SHA-256 hashes, as `NAME:sha256:HEX` lines (`ember auth token NAME` makes a token and
//! its line), read from `--auth-file` (again whenever it changes) or `EMBER_AUTH_TOKENS`.
//!
//! A client presents its token as `authorization: Bearer TOKEN`, or as the password of
//! `authorization: Basic` (what Flight SQL's handshake sends; the handshake answers with a
//! session token). A session token names its user and its expiry and is signed with a key
//! derived from the cluster's key and the hash of the token it was issued for: every scheduler
//! of the cluster accepts it, and revoking that token (removing its line) ends its sessions.
//!
//! Everything here is pure: the servers hand in the header and the time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{EmberError, Result};

/// How long a session token from a handshake is good for.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What marks a session token (API tokens start with [`TOKEN_PREFIX`]).
const SESSION_PREFIX: &str = "ember-session.";

/// What every API token starts with (so that a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "ember_";

/// Longest user name.
const MAX_USER: usize = 64;

/// Users whose names start with this are executors: without mutual TLS, their tokens (and only
/// theirs) may register executors and report tasks.
pub const EXECUTOR_USER: &str = "ember-executor";

/// Whether `user` names an executor.
pub fn is_executor(user: &str) -> bool {
    user.starts_with(EXECUTOR_USER)
}

/// Who may call a scheduler: the options of `ember scheduler` and `ember standalone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AuthOptions {
    /// Clients' credentials: a file of `NAME:sha256:HEX` lines, one per API token (`ember auth
    /// token NAME --file FILE` adds one). Read again when it changes.
    #[arg(long, env = "EMBER_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// The same lines, inline (newline- or comma-separated), e.g. from a Kubernetes Secret.
    #[arg(long, env = "EMBER_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// Let clients in without credentials (a warning is logged at start). Without credentials
    /// and without this, a scheduler refuses to start.
    #[arg(long, env = "EMBER_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Set for a cluster embedded in the user's own program (`ember sql --local`): its
    /// anonymous access is no news, and not warned about.
    #[arg(skip)]
    pub embedded: bool,
}

impl AuthOptions {
    /// Anyone may call: for a cluster embedded in the user's own process.
    pub fn open() -> Self {
        Self {
            allow_anonymous: true,
            embedded: true,
            ..Self::default()
        }
    }
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user, by an API token or a session token.
    User(String),
    /// A process of the cluster, by its mutual-TLS certificate.
    Cluster(crate::tls::Role),
    /// Nobody in particular (only where anonymous access is allowed).
    Anonymous,
}

impl Principal {
    /// The name a job's owner is recorded under and per-client limits count by.
    pub fn name(&self) -> &str {
        match self {
            Principal::User(user) => user,
            Principal::Cluster(role) => role.common_name(),
            Principal::Anonymous => "anonymous",
        }
    }
}

/// Why a request was refused. The messages never repeat what was presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this cluster requires credentials: give a token (--token or EMBER_TOKEN; Flight SQL: \
         a username and token as password, or `authorization: Bearer TOKEN`)"
    )]
    Missing,
    #[error("the authorization header is malformed (expected `Bearer TOKEN` or `Basic ...`)")]
    Malformed,
    #[error("the credentials are not valid for this cluster")]
    Invalid,
    #[error("the session token has expired: sign in again")]
    Expired,
    #[error("session tokens cannot be checked yet (the cluster key is loading); retry")]
    NotReady,
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NotReady => tonic::Status::unavailable(e.to_string()),
            e => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// One user's token, as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    user: String,
    hash: [u8; 32],
}

/// The set of valid API tokens, by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    entries: Vec<Entry>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 has 32 bytes")
}

fn valid_user(user: &str) -> bool {
    // `anonymous` is what callers without credentials are called.
    user != "anonymous"
        && !user.is_empty()
        && user.len() <= MAX_USER
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

impl Credentials {
    /// Reads `NAME:sha256:HEX` lines (blank lines and `#` comments skipped; commas separate
    /// entries too, for a variable); `source` names where they came from, for errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            for item in line.split(',') {
                let item = item.trim();
                if item.is_empty() || item.starts_with('#') {
                    continue;
                }
                let entry = Self::parse_entry(item).ok_or_else(|| {
                    EmberError::User(format!(
                        "{source}, line {}: expected NAME:sha256:HEX (a user name of letters, \
                         digits and ._@-, and 64 lowercase hex digits; `ember auth token NAME` \
                         makes one)",
                        n + 1
                    ))
                })?;
                entries.push(entry);
            }
        }
        Ok(Self { entries })
    }

    fn parse_entry(item: &str) -> Option<Entry> {
        let mut parts = item.splitn(3, ':');
        let (user, scheme, hash) = (parts.next()?, parts.next()?, parts.next()?);
        if scheme != "sha256" || !valid_user(user) || hash.len() != 64 {
            return None;
        }
        if !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        Some(Entry {
            user: user.to_string(),
            hash: hex::decode(hash).ok()?.try_into().ok()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The line that lets `user` in with `token`.
    pub fn line(user: &str, token: &str) -> Result<String> {
        if !valid_user(user) {
            return Err(EmberError::User(format!(
                "a user name is 1 to {MAX_USER} letters, digits and ._@- (got {user:?})"
            )));
        }
        Ok(format!(
            "{user}:sha256:{}",
            hex::encode(sha256(token.as_bytes()))
        ))
    }

    /// The user holding `token`, and its hash.
    fn holder(&self, token: &str) -> Option<&Entry> {
        let hash = sha256(token.as_bytes());
        // Hashes are compared whole; what is compared is a hash, not the secret.
        self.entries.iter().find(|e| e.hash == hash)
    }
}

/// A fresh API token: `ember_` and 64 hex digits of randomness.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| EmberError::Internal("no randomness for a token".into()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// What an `authorization` header presents.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Bearer(String),
    Basic { user: String, password: String },
}

fn presented(header: &[u8]) -> Result<Presented, AuthError> {
    let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
    let (scheme, value) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !value.is_empty() {
        return Ok(Presented::Bearer(value.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| AuthError::Malformed)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
        return Ok(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Err(AuthError::Malformed)
}

/// The key session tokens are signed with, derived from the cluster's key.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    pub fn from_cluster_key(key: &crate::shuffle::grant::TicketKey) -> Self {
        let derived = key.derive("ember-session/v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, &derived))
    }

    fn signed_text(user: &str, expires_ms: u64, token_hash: &[u8; 32]) -> String {
        format!(
            "{}:{user}/{expires_ms}/{}",
            user.len(),
            hex::encode(token_hash)
        )
    }

    fn sign(&self, user: &str, expires_ms: u64, token_hash: &[u8; 32]) -> String {
        let text = Self::signed_text(user, expires_ms, token_hash);
        hex::encode(hmac::sign(&self.0, text.as_bytes()).as_ref())
    }

    /// Whether `signature` (lowercase hex) signs these, checked in constant time.
    fn verify(&self, user: &str, expires_ms: u64, token_hash: &[u8; 32], signature: &str) -> bool {
        let canonical = signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let Some(tag) = canonical.then(|| hex::decode(signature).ok()).flatten() else {
            return false;
        };
        let text = Self::signed_text(user, expires_ms, token_hash);
        hmac::verify(&self.0, text.as_bytes(), &tag).is_ok()
    }
}

/// Checks credentials: the pure core of authentication.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    pub credentials: Credentials,
    pub anonymous: bool,
    pub session_key: Option<SessionKey>,
}

impl Verifier {
    /// Who presents `header` (`None`: no header) at `now_ms`.
    pub fn authenticate(&self, header: Option<&[u8]>, now_ms: u64) -> Result<Principal, AuthError> {
        let Some(header) = header else {
            return if self.anonymous {
                Ok(Principal::Anonymous)
            } else {
                Err(AuthError::Missing)
            };
        };
        match presented(header)? {
            Presented::Bearer(token) if token.starts_with(SESSION_PREFIX) => {
                self.session_user(&token, now_ms)
            }
            Presented::Bearer(token) => self
                .credentials
                .holder(&token)
                .map(|e| Principal::User(e.user.clone()))
                .ok_or(AuthError::Invalid),
            Presented::Basic { user, password } => match self.credentials.holder(&password) {
                Some(e) if e.user == user => Ok(Principal::User(user)),
                _ => Err(AuthError::Invalid),
            },
        }
    }

    /// A session token for whoever presents `header`, valid until `now_ms` + [`SESSION_TTL`].
    pub fn issue_session(&self, header: &[u8], now_ms: u64) -> Result<String, AuthError> {
        let entry = match presented(header)? {
            // Signing in again with a session: it stays the session.
            Presented::Bearer(token) if token.starts_with(SESSION_PREFIX) => {
                self.session_user(&token, now_ms)?;
                return Ok(token);
            }
            Presented::Basic { user, password } => self
                .credentials
                .holder(&password)
                .filter(|e| e.user == user),
            Presented::Bearer(token) => self.credentials.holder(&token),
        }
        .ok_or(AuthError::Invalid)?;
        let key = self.session_key.as_ref().ok_or(AuthError::NotReady)?;
        let expires_ms = now_ms + SESSION_TTL.as_millis() as u64;
        let signature = key.sign(&entry.user, expires_ms, &entry.hash);
        Ok(format!(
            "{SESSION_PREFIX}{}.{expires_ms}.{signature}",
            hex::encode(&entry.user)
        ))
    }

    fn session_user(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        let rest = &token[SESSION_PREFIX.len()..];
        let mut parts = rest.split('.');
        let (Some(user), Some(expires), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid);
        };
        let user = hex::decode(user)
            .ok()
            .and_then(|u| String::from_utf8(u).ok())
            .ok_or(AuthError::Invalid)?;
        let expires_ms: u64 = expires.parse().map_err(|_| AuthError::Invalid)?;
        let key = self.session_key.as_ref().ok_or(AuthError::NotReady)?;
        // Signed for one of the user's current tokens: a revoked token's sessions end with it.
        let signed = self
            .credentials
            .entries
            .iter()
            .filter(|e| e.user == user)
            .any(|e| key.verify(&user, expires_ms, &e.hash, signature));
        if !signed {
            return Err(AuthError::Invalid);
        }
        if now_ms > expires_ms {
            return Err(AuthError::Expired);
        }
        Ok(Principal::User(user))
    }
}

/// Where a scheduler's credentials come from, read again when the file changes.
#[derive(Debug)]
pub struct Authenticator {
    options: AuthOptions,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// Shared with requests in flight; replaced (not cloned per request) when it changes.
    verifier: std::sync::Arc<Verifier>,
    /// The file's modification time and length when last read.
    seen: crate::tls::Stamp,
    checked: Instant,
}

/// How often the credentials file is looked at.
const RECHECK: Duration = Duration::from_secs(1);

impl Authenticator {
    /// Reads the credentials `options` name. Without any, anonymous access must be allowed.
    pub fn new(options: &AuthOptions) -> Result<Self> {
        let (credentials, seen) = load(options)?;
        if credentials.is_empty() && !options.allow_anonymous {
            return Err(EmberError::User(
                "no client credentials: make a token with `ember auth token NAME --file \
                 tokens`, then start with --auth-file tokens (or EMBER_AUTH_TOKENS); or let \
                 anyone in with --allow-anonymous"
                    .into(),
            ));
        }
        Ok(Self {
            options: options.clone(),
            state: Mutex::new(Loaded {
                verifier: std::sync::Arc::new(Verifier {
                    credentials,
                    anonymous: options.allow_anonymous,
                    session_key: None,
                }),
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// Whether requests without credentials are let in.
    pub fn anonymous(&self) -> bool {
        self.options.allow_anonymous
    }

    /// How many tokens are accepted now.
    pub fn tokens(&self) -> usize {
        self.current().credentials.len()
    }

    /// Session tokens can be issued and checked once the cluster's key is known.
    pub fn set_cluster_key(&self, key: &crate::shuffle::grant::TicketKey) {
        std::sync::Arc::make_mut(&mut self.state.lock().verifier).session_key =
            Some(SessionKey::from_cluster_key(key));
    }

    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        self.current().authenticate(header, crate::unix_ms())
    }

    pub fn issue_session(&self, header: &[u8]) -> Result<String, AuthError> {
        self.current().issue_session(header, crate::unix_ms())
    }

    /// The verifier, with the credentials file read again if it changed (a file that cannot
    /// be read or parsed now keeps the last good credentials, and says so in the log).
    fn current(&self) -> std::sync::Arc<Verifier> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            if let Some(path) = &self.options.auth_file {
                let seen = crate::tls::stamp(path);
                if seen != state.seen {
                    match load(&self.options) {
                        Ok((credentials, seen)) => {
                            tracing::info!(
                                file = %path.display(),
                                tokens = credentials.len(),
                                "client credentials reloaded"
                            );
                            std::sync::Arc::make_mut(&mut state.verifier).credentials = credentials;
                            state.seen = seen;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "client credentials not reloaded");
                            state.seen = seen;
                        }
                    }
                }
            }
        }
        std::sync::Arc::clone(&state.verifier)
    }
}

fn load(options: &AuthOptions) -> Result<(Credentials, crate::tls::Stamp)> {
    let mut credentials = Credentials::default();
    let mut seen = None;
    if let Some(path) = &options.auth_file {
        seen = crate::tls::stamp(path);
        let text = std::fs::read_to_string(path).map_err(|e| {
            EmberError::User(format!(
                "reading the credentials file {}: {e}",
                path.display()
            ))
        })?;
        credentials = Credentials::parse(&text, &path.display().to_string())?;
    }
    if let Some(inline) = &options.auth_tokens {
        let more = Credentials::parse(inline, "EMBER_AUTH_TOKENS")?;
        credentials.entries.extend(more.entries);
    }
    Ok((credentials, seen))
}

/// `authorization: Bearer TOKEN` for a client's calls.
pub fn bearer(token: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| EmberError::User("the token holds characters a header cannot".into()))
}

/// What a client adds to each of its calls: its `authorization` header, if it has a token.
#[derive(Debug, Clone, Default)]
pub struct CallCredentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl CallCredentials {
    pub fn token(token: &str) -> Result<Self> {
        Ok(Self(Some(bearer(token)?)))
    }
}

impl tonic::service::Interceptor for CallCredentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a client's credentials.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallCredentials>;

/// How a client proves who it is: the options of the commands that call a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TokenOptions {
    /// The API token to call the cluster with (`ember auth token` makes one).
    #[arg(
        long,
        env = "EMBER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// A file holding the API token (its first line).
    #[arg(long, env = "EMBER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenOptions {
    /// What the client's calls carry.
    pub fn credentials(&self) -> Result<CallCredentials> {
        match self.resolve()? {
            Some(token) => CallCredentials::token(&token),
            None => Ok(CallCredentials::default()),
        }
    }

    /// The token, if one is given.
    pub fn resolve(&self) -> Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            EmberError::User(format!("reading the token file {}: {e}", path.display()))
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(EmberError::User(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
