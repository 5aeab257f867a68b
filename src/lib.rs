//! The `ember` command: subcommands over the Ember libraries, plus TPC-H data and queries.

pub mod bench;
pub mod certs;
pub mod cli;
pub mod config_file;
pub mod jobs;
pub mod serve;
pub mod sql;
pub mod telemetry;
pub mod tpch;

use std::process::ExitCode;

use cli::{Cli, Command, Dataset};

/// Runs a parsed command line; errors are printed once, as one clear message.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's connection lives on this runtime.
    let telemetry = {
        let _inside = runtime.enter();
        telemetry::init(
            &cli.log,
            cli.log_format,
            telemetry::endpoint(cli.otlp_endpoint.as_deref()),
            service_name(&cli.command),
        )
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Datagen(args) => match args.dataset {
                Dataset::Tpch {
                    scale_factor,
                    output,
                } => datagen(scale_factor, &output),
            },
            Command::Sql(args) => sql::run(args).await,
            Command::Scheduler(config) => serve::scheduler(config, cli.log_format).await,
            Command::Executor(config) => serve::executor(config, cli.log_format).await,
            Command::Standalone(args) => serve::standalone(args, cli.log_format).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Submit(args) => jobs::submit(args).await,
            Command::Jobs(args) => jobs::jobs(args).await,
            Command::Probe(args) => probe(&args),
            Command::Certs(args) => certs::run(&args),
            Command::Auth(args) => certs::auth(args),
        }
    });
    {
        let _inside = runtime.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status of a failed command, by the kind of its error, so that a scheduler of
/// nightly jobs can tell "fix the query" from "try again later": 3 user error, 4 resources
/// exhausted, 5 unavailable (retry), 6 internal error, 7 cancelled; 1 for anything else (a
/// local problem: bad arguments, files).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use ember_core::error::ErrorKind;
    let kind = e
        .chain()
        .find_map(|cause| cause.downcast_ref::<ember_core::EmberError>())
        .map(|e| e.kind());
    match kind {
        None => 1,
        Some(ErrorKind::User) => 3,
        Some(ErrorKind::ResourcesExhausted) => 4,
        Some(ErrorKind::Unavailable) => 5,
        Some(ErrorKind::Internal) => 6,
        Some(ErrorKind::Cancelled) => 7,
    }
}

fn datagen(scale_factor: f64, output: &std::path::Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let tables = tpch::generate(scale_factor, output)?;
    tpch::mark_generated(output, scale_factor)?;
    for (table, rows) in tables {
        println!("{table:>10}: {rows} rows");
    }
    eprintln!(
        "TPC-H SF {scale_factor} written to {} in {:.1}s",
        output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `GET path` on an HTTP endpoint at `port` on loopback: the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(port, path, None)
}

/// `GET path` with `authorization: Bearer TOKEN` when a token is given.
pub fn http_get_as(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http_get_with(port, path, token, None)
}

/// `GET path` on 127.0.0.1, with `authorization: Bearer TOKEN` when a token is given, over
/// TLS trusting the CA `ca` (PEM) when given (the certificate must name 127.0.0.1).
pub fn http_get_with(
    port: u16,
    path: &str,
    token: Option<&str>,
    ca: Option<&[u8]>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n"
    );
    let mut response = String::new();
    match ca {
        None => {
            stream.write_all(request.as_bytes())?;
            stream.read_to_string(&mut response)?;
        }
        Some(ca) => {
            let mut tls = rustls::StreamOwned::new(tls_client(ca)?, stream);
            tls.write_all(request.as_bytes())?;
            match tls.read_to_string(&mut response) {
                // A server may close without TLS's goodbye once the response is complete.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
                }
                other => {
                    other?;
                }
            }
        }
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TLS client connection to 127.0.0.1 that trusts the CA `ca` (PEM).
fn tls_client(ca: &[u8]) -> std::io::Result<rustls::ClientConnection> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(std::io::Error::other)
}

/// `GET path` on each port in turn; succeeds on the first 200.
fn probe(args: &cli::ProbeArgs) -> anyhow::Result<()> {
    // A process given a certificate serves HTTPS: ask it so, trusting the cluster's CA.
    let ca = match (&args.tls.tls_cert, &args.tls.tls_ca) {
        (Some(_), Some(ca)) => {
            Some(std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?)
        }
        (Some(_), None) => anyhow::bail!("probing an HTTPS endpoint needs the CA (--tls-ca)"),
        _ => None,
    };
    let mut last = String::from("no port given");
    for port in &args.ports {
        match http_get_with(*port, &args.path, None, ca.as_deref()) {
            Ok((200, _)) => return Ok(()),
            Ok((status, _)) => last = format!("port {port}: HTTP {status}"),
            Err(e) => last = format!("port {port}: {e}"),
        }
    }
    anyhow::bail!("not healthy: {last}")
}

/// The name a process's traces are exported under.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Scheduler(_) => "ember-scheduler",
        Command::Executor(_) => "ember-executor",
        Command::Standalone(_) => "ember-standalone",
        _ => "ember",
    }
}

/// Parses the command line, the config file (if any) filling in what flags and environment
/// leave unset.
pub fn parse_command_line() -> std::result::Result<Cli, String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    config_file::parse(args).map_err(|e| format!("error: {e:#}"))
}

#[cfg(test)]
mod tests {
    use ember_core::EmberError;
    use ember_core::error::ErrorKind;

    use super::exit_code;

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let cases = [
            (EmberError::User("no such table".into()), 3),
            (EmberError::ResourcesExhausted("pool".into()), 4),
            (EmberError::Unavailable("down".into()), 5),
            (EmberError::Internal("bug".into()), 6),
            (EmberError::Cancelled, 7),
            (
                EmberError::TaskFailed {
                    message: "oom".into(),
                    kind: ErrorKind::ResourcesExhausted,
                },
                4,
            ),
        ];
        for (e, code) in cases {
            let wrapped = anyhow::Error::from(e).context("running the job");
            assert_eq!(exit_code(&wrapped), code, "{wrapped:#}");
        }
        assert_eq!(exit_code(&anyhow::anyhow!("bad flag")), 1);
    }
}
