//! A cluster of real processes speaking TLS only: certificates from `ember certs`, TPC-H
//! queries through the CLI over TLS (answers identical to an embedded cluster's, which the TPC-H
//! suite checks against DataFusion), and refusals for a client without TLS and a client
//! trusting another CA.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use ember_proto::pb;
use ember_proto::pb::executor_service_client::ExecutorServiceClient;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{
    ChildGuard, allowed_locations, dial, ember_bin, executor_args, free_port, spawn_guarded,
    tpch_dir, wait_for_port,
};

fn ember(args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(ember_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("EMBER_ALLOWED_LOCATIONS", allowed_locations())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn certs(dir: &Path) {
    let out = ember(&["certs", "--out", &dir.display().to_string()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process of the cluster, serving TLS with `role`'s certificate.
fn serve(role: &str, args: &[&str], certs: &Path, work: &Path) -> (ChildGuard, u16) {
    let port_file = work.join(format!("{role}.port"));
    let mut guard = spawn_guarded(
        Command::new(ember_bin())
            .arg(role)
            .args(args)
            .args(["--bind", "127.0.0.1:0", "--http-bind", "off", "--port-file"])
            .arg(&port_file)
            .env("EMBER_TLS_CERT", certs.join(format!("{role}.pem")))
            .env("EMBER_TLS_KEY", certs.join(format!("{role}.key")))
            .env("EMBER_TLS_CA", certs.join("ca.pem"))
            .env("EMBER_ALLOWED_LOCATIONS", allowed_locations())
            .env("EMBER_ALLOW_ANONYMOUS", "true")
            .stdout(Stdio::null()),
    );
    let port = wait_for_port(&port_file, &mut guard.0);
    (guard, port)
}

#[test]
fn a_tls_cluster_answers_tpch_and_refuses_plaintext_and_strangers() {
    let work = tempfile::tempdir().unwrap();
    let (ours, theirs) = (work.path().join("certs"), work.path().join("other"));
    certs(&ours);
    certs(&theirs);
    let (_scheduler, port) = serve("scheduler", &[], &ours, work.path());
    let url = format!("https://127.0.0.1:{port}");
    let mut executors = Vec::new();
    let mut executor_ports = Vec::new();
    for _ in 0..2 {
        let (guard, port) = serve("executor", &executor_args(&url), &ours, work.path());
        executors.push(guard);
        executor_ports.push(port);
    }
    let ca = ours.join("ca.pem");
    let tables = tpch_dir().display().to_string();
    for q in [1, 3, 5] {
        let sql = ember::tpch::query(q).unwrap();
        let run = |target: &[&str], env: &[(&str, &Path)]| {
            let mut args = vec![
                "sql", "--format", "csv", "--timing", "false", "--tables", &tables,
            ];
            args.extend_from_slice(target);
            args.extend_from_slice(&["-c", sql]);
            // Executors register within a few heartbeats; the CLI retries while none is there.
            ember(&args, env)
        };
        let over_tls = run(&["--scheduler", &url], &[("EMBER_TLS_CA", &ca)]);
        let stderr = String::from_utf8_lossy(&over_tls.stderr);
        assert!(over_tls.status.success(), "q{q} over TLS: {stderr}");
        let local = run(&["--local"], &[]);
        assert!(
            local.status.success(),
            "{}",
            String::from_utf8_lossy(&local.stderr)
        );
        assert!(over_tls.stdout.len() > 20, "q{q} answered nothing");
        assert_eq!(
            String::from_utf8_lossy(&over_tls.stdout),
            String::from_utf8_lossy(&local.stdout),
            "q{q}: the TLS cluster's answer differs from an embedded cluster's"
        );
    }

    // No TLS, or trust in another CA: refused, with a message that says why.
    let plain_url = format!("http://127.0.0.1:{port}");
    let plain = ember(&["sql", "--scheduler", &plain_url, "-c", "SELECT 1"], &[]);
    assert!(!plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("TLS"), "{stderr}");
    let stranger = ember(
        &["sql", "--scheduler", &url, "-c", "SELECT 1"],
        &[("EMBER_TLS_CA", &theirs.join("ca.pem"))],
    );
    assert!(!stranger.status.success());
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // Mutual TLS: cluster calls need the right role's certificate. A client certificate, or
    // none, cannot launch or free work on an executor, nor register as an executor.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for identity in [None, Some("client")] {
            let expected = if identity.is_some() {
                Code::PermissionDenied
            } else {
                Code::Unauthenticated
            };
            let executor = channel(executor_ports[0], &ours, identity).await;
            let status = ExecutorServiceClient::new(executor)
                .remove_job_data(pb::RemoveJobDataRequest::default())
                .await
                .expect_err("not the scheduler");
            assert_eq!(status.code(), expected, "{identity:?}: {status}");
            let scheduler = channel(port, &ours, identity).await;
            let status = SchedulerServiceClient::new(scheduler)
                .register_executor(pb::RegisterExecutorRequest::default())
                .await
                .expect_err("not an executor");
            assert_eq!(status.code(), expected, "{identity:?}: {status}");
        }
    });

    // Every process is still up.
    for guard in executors.iter_mut() {
        assert!(matches!(guard.0.try_wait(), Ok(None)), "an executor died");
    }
}

/// A TLS channel to a port on loopback, trusting `certs`' CA, presenting `role`'s certificate.
async fn channel(port: u16, certs: &Path, role: Option<&str>) -> Channel {
    dial(port, Some(certs), role).await.unwrap()
}

/// etcd itself over mutual TLS: schedulers and executors reach it with their certificates, a
/// client without one is refused by etcd.
#[test]
fn a_cluster_keeps_its_state_in_etcd_over_mutual_tls() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    self::certs(&certs);
    let (client_port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let _etcd = spawn_guarded(
        Command::new("etcd")
            .args(["--name", "ember-tls", "--data-dir"])
            .arg(work.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("ember-tls={peer}")])
            .arg("--cert-file")
            .arg(certs.join("scheduler.pem"))
            .arg("--key-file")
            .arg(certs.join("scheduler.key"))
            .arg("--trusted-ca-file")
            .arg(certs.join("ca.pem"))
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("etcd.log")).unwrap()),
    );
    let (_scheduler, _) = serve("scheduler", &["--etcd", &url], &certs, work.path());
    let (_executor, _) = serve(
        "executor",
        &["--etcd", &url, "--slots", "2"],
        &certs,
        work.path(),
    );

    let ca = certs.join("ca.pem");
    let (cert, key) = (certs.join("client.pem"), certs.join("client.key"));
    let with_cert = [
        ("EMBER_TLS_CA", ca.as_path()),
        ("EMBER_TLS_CERT", &cert),
        ("EMBER_TLS_KEY", &key),
    ];
    let tables = tpch_dir().display().to_string();
    let sql = ember::tpch::query(1).unwrap();
    let args = [
        "sql", "--etcd", &url, "--format", "csv", "--tables", &tables, "-c", sql,
    ];
    // The leader is elected and the executor registered within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        let out = ember(&args, &with_cert);
        if out.status.success() {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer through etcd over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let local = ember(
        &[
            "sql", "--local", "--format", "csv", "--tables", &tables, "-c", sql,
        ],
        &[],
    );
    assert_eq!(answer.stdout, local.stdout, "q1 through etcd over TLS");

    // etcd asks for a client certificate: a client trusting the CA but without one gets none
    // of the cluster's state.
    let list = ["jobs", "--etcd", &url, "list"];
    let with = ember(&list, &with_cert);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let without = ember(&list, &[("EMBER_TLS_CA", &ca)]);
    assert!(
        !without.status.success(),
        "etcd answered a client without a certificate"
    );
}

/// Whether a client trusting `certs`' CA gets an answer on the gRPC port and on the HTTPS one.
async fn trusted(port: u16, http: u16, certs: &Path) -> (bool, bool) {
    let grpc = match dial(port, Some(certs), None).await {
        Ok(channel) => SchedulerServiceClient::new(channel)
            .list_executors(pb::ListExecutorsRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    };
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let https = matches!(
        ember::http_get_with(http, "/healthz", None, Some(&ca)),
        Ok((200, _))
    );
    (grpc, https)
}

/// Certificates are read again when their files change: a scheduler whose files are replaced
/// (by another CA's, each file renamed into place) serves the new ones on its gRPC and HTTPS
/// ports without a restart. The HTTP port speaks TLS only, and `ember probe` asks it so.
#[test]
fn certificates_reload_without_a_restart_on_every_port() {
    let work = tempfile::tempdir().unwrap();
    let (first, second, live) = (
        work.path().join("first"),
        work.path().join("second"),
        work.path().join("live"),
    );
    certs(&first);
    certs(&second);
    std::fs::create_dir(&live).unwrap();
    let files = ["ca.pem", "scheduler.pem", "scheduler.key"];
    let install = |from: &Path| {
        for file in files {
            let staged = live.join(format!("{file}.new"));
            std::fs::copy(from.join(file), &staged).unwrap();
            std::fs::rename(&staged, live.join(file)).unwrap();
        }
    };
    install(&first);
    let (mut scheduler, port, http) = tls_scheduler(&live, work.path(), true);
    let http = http.unwrap();

    // The HTTP port speaks TLS only; the image's healthcheck asks it over TLS.
    assert!(
        !matches!(ember::http_get(http, "/healthz"), Ok((200, _))),
        "plaintext HTTP answered"
    );
    let env: Vec<(&str, std::path::PathBuf)> = vec![
        ("EMBER_TLS_CERT", live.join("scheduler.pem")),
        ("EMBER_TLS_KEY", live.join("scheduler.key")),
        ("EMBER_TLS_CA", live.join("ca.pem")),
    ];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let probe = ember(&["probe", "--ports", &http.to_string()], &env);
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert_eq!(trusted(port, http, &first).await, (true, true));
        assert_eq!(trusted(port, http, &second).await, (false, false));
        install(&second);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while trusted(port, http, &second).await != (true, true) {
            assert!(
                std::time::Instant::now() < deadline,
                "the new certificates were not served within 15 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(trusted(port, http, &first).await, (false, false));
    });
    assert!(
        matches!(scheduler.0.try_wait(), Ok(None)),
        "the scheduler restarted or died"
    );
}

/// Processes dialed by addresses their certificates do not name (pods by IP) are checked for
/// the cluster's name instead: refused without `--tls-server-name`, answered with it.
#[test]
fn peers_dialed_by_unnamed_addresses_are_checked_for_the_cluster_name() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    // Valid for `localhost` and the cluster's name only, not for 127.0.0.1.
    let out = ember(
        &[
            "certs",
            "--hosts",
            "localhost",
            "--out",
            &certs.display().to_string(),
        ],
        &[],
    );
    assert!(out.status.success());
    let (_scheduler, port, _) = tls_scheduler(&certs, work.path(), false);
    let url = format!("https://127.0.0.1:{port}");
    let ca = certs.join("ca.pem");
    let sql = |env: &[(&str, &Path)]| ember(&["sql", "--scheduler", &url, "-c", "SELECT 1"], env);
    let by_address = sql(&[("EMBER_TLS_CA", &ca)]);
    assert!(!by_address.status.success());
    let stderr = String::from_utf8_lossy(&by_address.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let by_name = sql(&[
        ("EMBER_TLS_CA", &ca),
        ("EMBER_TLS_SERVER_NAME", Path::new("ember.cluster")),
    ]);
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
}

/// A scheduler serving TLS with the scheduler's certificate in `certs` (anyone may query): its
/// guard, gRPC port and, with `http`, its HTTPS port.
fn tls_scheduler(certs: &Path, work: &Path, http: bool) -> (ChildGuard, u16, Option<u16>) {
    let (port_file, http_file) = (work.join("scheduler.port"), work.join("scheduler.http"));
    let mut command = Command::new(ember_bin());
    command
        .args(["scheduler", "--bind", "127.0.0.1:0", "--port-file"])
        .arg(&port_file)
        .env("EMBER_TLS_CERT", certs.join("scheduler.pem"))
        .env("EMBER_TLS_KEY", certs.join("scheduler.key"))
        .env("EMBER_TLS_CA", certs.join("ca.pem"))
        .env("EMBER_ALLOW_ANONYMOUS", "true")
        .stdout(Stdio::null());
    if http {
        command
            .args(["--http-bind", "127.0.0.1:0", "--http-port-file"])
            .arg(&http_file);
    } else {
        command.args(["--http-bind", "off"]);
    }
    let mut guard = spawn_guarded(&mut command);
    let port = wait_for_port(&port_file, &mut guard.0);
    let http = http.then(|| wait_for_port(&http_file, &mut guard.0));
    (guard, port, http)
}
