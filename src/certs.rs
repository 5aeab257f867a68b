//! `ember certs`: a cluster CA and a certificate per role, for development and for the compose
//! stack (production clusters bring their own, e.g. from cert-manager).

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
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

/// Writes `ca.pem`, `ca.key` and `{role}.pem`, `{role}.key` for every role into `dir`.
pub fn write_all(dir: &Path, hosts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = name("Ember cluster CA");
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(dir, "ca.pem", &ca.pem())?;
    write(dir, "ca.key", &ca_key_pem)?;
    for role in ROLES {
        let mut params = CertificateParams::new(hosts.to_vec())?;
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
