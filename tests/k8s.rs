//! The Kubernetes manifests: every overlay renders with the kustomize this machine has, the
//! output validates against the Kubernetes API schemas (offline), and it keeps the contract
//! with the binary (probes on the real endpoints, the binary's ports, resources, security).

use std::path::Path;
use std::process::Command;

use clap::Parser;
use ember_executor::ExecutorConfig;
use ember_scheduler::SchedulerConfig;

const OVERLAYS: [&str; 3] = ["dev", "prod", "external-etcd"];

fn port(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        command,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn overlays_render_validate_and_keep_their_contract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The ports the config file gives the processes are the binary's own defaults.
    let scheduler = SchedulerConfig::parse_from(["scheduler"]);
    let executor = ExecutorConfig::parse_from(["executor"]);
    let file: toml::Table = std::fs::read_to_string(root.join("k8s/base/ember.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let setting = |role: &str, key: &str| file[role][key].as_str().unwrap().to_string();
    assert_eq!(port(&setting("scheduler", "bind")), port(&scheduler.bind));
    assert_eq!(
        port(&setting("scheduler", "http-bind")),
        port(&scheduler.http_bind)
    );
    assert_eq!(
        port(&setting("scheduler", "spark-connect-bind")),
        port(&scheduler.spark_connect_bind)
    );
    assert_eq!(port(&setting("executor", "bind")), port(&executor.bind));
    assert_eq!(
        port(&setting("executor", "http-bind")),
        port(&executor.http_bind)
    );
    let drain = file["executor"]["drain-timeout-secs"].as_integer().unwrap();
    // Every role accepts the file (a key it did not know would crash-loop its pods).
    for role in ["scheduler", "executor"] {
        run(Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("--config")
            .arg(root.join("k8s/base/ember.toml"))
            .args([role, "--help"]));
    }

    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let rendered = run(Command::new("kubectl")
            .arg("kustomize")
            .arg(root.join("k8s/overlays").join(overlay)));
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, &rendered).unwrap();
        run(Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", "1.30.0"])
            .arg(&path));
        let report = run(Command::new("python3")
            .arg(root.join("tests/k8s/check_manifests.py"))
            .arg(&path)
            .args(["--scheduler-grpc", &port(&scheduler.bind).to_string()])
            .args(["--scheduler-http", &port(&scheduler.http_bind).to_string()])
            .args(["--executor-grpc", &port(&executor.bind).to_string()])
            .args(["--executor-http", &port(&executor.http_bind).to_string()])
            .args(["--drain-timeout", &drain.to_string()]));
        assert!(report.contains(", 0 problems"), "{overlay}: {report}");
    }
}

#[test]
fn the_contract_check_catches_a_broken_manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rendered = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("k8s/overlays/dev")));
    let broken = rendered.replace("path: /readyz", "path: /ready");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/k8s/check_manifests.py"))
        .arg(&path)
        .args(["--scheduler-grpc", "50050", "--scheduler-http", "9090"])
        .args([
            "--executor-grpc",
            "50051",
            "--executor-http",
            "9091",
            "--drain-timeout",
            "60",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("readiness must GET /readyz"));
}
