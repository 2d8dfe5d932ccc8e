//! TLS (rustls, ring provider) for the wire listener, and `tollgate certs`,
//! which makes a development CA with a node certificate and a proxy client
//! certificate.
//!
//! With `--tls-cert` and `--tls-key` the wire listener speaks TLS only. With
//! `--tls-client-ca` too, a proxy may present a client certificate signed by
//! that CA; a verified certificate authenticates the proxy, and its hello
//! needs no token. A proxy without a certificate still authenticates with a
//! token, so both kinds of proxy can share a cluster.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read certificates", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("{}: not a PEM private key file", path.display()))
}

/// The wire listener's TLS configuration.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
            // Proxies without a certificate are let in to present a token.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .with_context(|| format!("{} and {} do not make a certificate and its key", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// Writes a development CA, a node certificate for `hosts` (plus localhost
/// and 127.0.0.1) and a proxy client certificate into `out`. Private keys
/// are written with mode 0600.
pub fn generate(out: &Path, hosts: &[String]) -> anyhow::Result<Vec<String>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Tollgate development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let mut node_params = CertificateParams::new(names)?;
    node_params.distinguished_name.push(DnType::CommonName, "tollgate node");
    node_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let node_key = KeyPair::generate()?;
    let node = node_params.signed_by(&node_key, &ca, &ca_key)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params.distinguished_name.push(DnType::CommonName, "tollgate edge proxy");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca, &ca_key)?;

    let files = [
        ("ca.pem", ca.pem(), false),
        ("ca-key.pem", ca_key.serialize_pem(), true),
        ("node.pem", node.pem(), false),
        ("node-key.pem", node_key.serialize_pem(), true),
        ("client.pem", client.pem(), false),
        ("client-key.pem", client_key.serialize_pem(), true),
    ];
    let mut written = Vec::new();
    for (name, text, private) in files {
        let path = out.join(name);
        write_file(&path, text.as_bytes(), private)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_as_a_server_config_with_client_auth() {
        let dir = tempfile::tempdir().expect("dir");
        let files = generate(dir.path(), &["node1.example".into()]).expect("generate");
        assert_eq!(files.len(), 6);
        let p = |name: &str| dir.path().join(name);
        server_config(&p("node.pem"), &p("node-key.pem"), Some(&p("ca.pem"))).expect("server config");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("node-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are readable by their owner only");
        // A key that does not belong to the certificate is refused, naming both files.
        let err = server_config(&p("node.pem"), &p("client-key.pem"), None).expect_err("mismatched key");
        assert!(err.to_string().contains("node.pem"), "{err:#}");
        assert!(read_certs(&p("node-key.pem")).is_err(), "a key file is not a certificate file");
    }
}
