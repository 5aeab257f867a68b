//! Dialing Ember peers over gRPC: one check of what a URL may be, one set of channel settings,
//! and a cache of channels by address.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::error::{EmberError, Result};

mod idle;
pub use idle::{IdleBody, IdleTimeout};

/// Refuses `url` unless it is `http://HOST:PORT` (or `https://`).
pub fn check_url(url: &str) -> Result<Uri> {
    let bad = || EmberError::User(format!("{url:?} is not a URL of the form http://HOST:PORT"));
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    let has_port = uri
        .authority()
        .is_some_and(|a| a.port_u16().is_some() && !a.host().is_empty());
    if !scheme_ok || !has_port || !matches!(uri.path(), "" | "/") {
        return Err(bad());
    }
    Ok(uri)
}

/// An endpoint for `url`, which must be `http://HOST:PORT` (or `https://`). When this process
/// dials over TLS (`tls::TlsOptions::install`), every endpoint does, whatever its scheme.
pub fn endpoint(url: &str) -> Result<Endpoint> {
    let bad = || EmberError::User(format!("{url:?} is not a URL of the form http://HOST:PORT"));
    let uri = check_url(url)?;
    let endpoint = match crate::tls::client() {
        Some(tls) => {
            let https: Uri = format!("https://{}", uri.authority().expect("checked above"))
                .parse()
                .map_err(|_| bad())?;
            Endpoint::from(https)
                .tls_config(tls)
                .map_err(|e| EmberError::User(format!("TLS for {url}: {e}")))?
        }
        None if uri.scheme_str() == Some("https") => {
            return Err(EmberError::User(format!(
                "{url}: dialing https needs the CA to trust (--tls-ca or EMBER_TLS_CA)"
            )));
        }
        None => Endpoint::from(uri),
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// An error with its causes (`transport error: …: invalid peer certificate: UnknownIssuer`):
/// a transport error's own text says little.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Channels to peers by `host:port`, connected lazily (a dead peer shows up as an error on the
/// first request) and reused — until this process's TLS files change: a channel keeps the TLS
/// it was made with, so new ones are made then.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
}

impl Channels {
    pub fn get(&self, address: &str) -> Result<Channel> {
        let generation = crate::tls::generation();
        let mut channels = self.channels.lock();
        if let Some((made, channel)) = channels.get(address)
            && *made == generation
        {
            return Ok(channel.clone());
        }
        let channel = endpoint(&format!("http://{address}"))?.connect_lazy();
        channels.insert(address.to_string(), (generation, channel.clone()));
        Ok(channel)
    }
}

/// What peers dial: `--advertise-addr`, or the bound address unless it is a wildcard.
pub fn advertised_address(advertise: Option<&str>, bound: std::net::SocketAddr) -> Result<String> {
    match advertise {
        Some(a) if a.ends_with(":0") || !a.contains(':') => {
            Ok(format!("{}:{}", a.trim_end_matches(":0"), bound.port()))
        }
        Some(a) => Ok(a.to_string()),
        None if bound.ip().is_unspecified() => Err(EmberError::User(format!(
            "bound to {bound}: give --advertise-addr with the address peers should dial"
        ))),
        None => Ok(bound.to_string()),
    }
}

/// Connections accepted on `listener`, with Nagle's algorithm off. (`tonic`'s `tcp_nodelay`
/// applies only to listeners it binds itself; without this, small request/response pairs wait
/// for the peer's delayed ACK, about 40 ms each.)
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_host_port_urls_are_accepted() {
        for good in ["http://127.0.0.1:50050", "http://sched:1/"] {
            assert!(endpoint(good).is_ok(), "{good}");
        }
        // https needs a CA to trust (this test process installs none).
        let err = endpoint("https://a.b:443").unwrap_err().to_string();
        assert!(err.contains("--tls-ca"), "{err}");
        for bad in [
            "not-a-url",
            "127.0.0.1:50050",
            "http://host",
            "ftp://h:1",
            "http://h:1/x",
            "",
        ] {
            let err = endpoint(bad).expect_err(bad).to_string();
            assert!(err.contains("http://HOST:PORT"), "{bad}: {err}");
        }
    }
}
