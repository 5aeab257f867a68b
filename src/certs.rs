//! `ember certs` and `ember auth`: a cluster CA and a certificate per role, and client tokens, for
//! development and for the compose stack (production clusters may bring their own certificates,
//! e.g. from cert-manager).

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

use crate::cli::CertsArgs;

/// The roles that get a certificate, each valid for every host given.
pub const ROLES: [&str; 3] = ["scheduler", "executor", "client"];

pub fn run(args: &CertsArgs) -> Result<()> {
    let hosts: Vec<String> = args
        .hosts
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    anyhow::ensure!(!hosts.is_empty(), "--hosts names no host");
    write_all(&args.out, &hosts)?;
    println!(
        "wrote ca.pem and {{{}}}.pem/.key to {} (valid for {})",
        ROLES.join(","),
        args.out.display(),
        hosts.join(", ")
    );
    Ok(())
}

/// The name every scheduler's and executor's certificate holds besides its hosts: a cluster
/// whose processes are dialed by addresses unknown in advance (pods) checks this one
/// (`--tls-server-name`).
pub const CLUSTER_NAME: &str = "ember.cluster";

fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = name("Ember cluster CA");
    Ok(ca_params)
}

/// Writes `ca.pem`, `ca.key` and `{role}.pem`, `{role}.key` for every role into `dir`. A CA
/// already there (its `ca.pem` and `ca.key`) is kept and signs the new certificates: running
/// it again renews them, and processes pick them up without a restart.
pub fn write_all(dir: &Path, hosts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if ca_pem.exists() && ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key)
            .with_context(|| format!("reading {}", ca_key.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a private key", ca_key.display()))?;
        Issuer::new(ca_params()?, key)
    } else {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params()?, key)?;
        write(dir, "ca.pem", &ca.pem())?;
        write(dir, "ca.key", &key_pem)?;
        let key = KeyPair::from_pem(&key_pem)?;
        Issuer::new(ca_params()?, key)
    };
    for role in ROLES {
        let mut names = hosts.to_vec();
        if role != "client" {
            names.push(CLUSTER_NAME.to_string());
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name(&format!("ember-{role}"));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(dir, &format!("{role}.pem"), &cert.pem())?;
        write(dir, &format!("{role}.key"), &key.serialize_pem())?;
    }
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name.push(DnType::OrganizationName, "Ember");
    name
}

fn write(dir: &Path, file: &str, text: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if file.ends_with(".key") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// `ember auth token NAME [--file FILE]`: a new API token on stdout, its hash in the file.
pub fn auth(args: crate::cli::AuthArgs) -> Result<()> {
    let crate::cli::AuthAction::Token { name, file } = args.action;
    let token = ember_core::auth::new_token()?;
    let line = ember_core::auth::Credentials::line(&name, &token)?;
    match &file {
        Some(path) => {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options
                .open(path)
                .with_context(|| format!("opening the credentials file {}", path.display()))?;
            writeln!(out, "{line}").with_context(|| format!("writing to {}", path.display()))?;
            eprintln!(
                "added a token for {name} to {} (schedulers read it with --auth-file); the \
                 token, on stdout, is shown only now",
                path.display()
            );
        }
        None => eprintln!("add this line to the schedulers' credentials file:\n{line}"),
    }
    println!("{token}");
    Ok(())
}
