//! TLS (rustls, ring provider) on every listener, and `tollgate certs`, which
//! makes a development CA with a node certificate and a proxy client
//! certificate.
//!
//! With `--tls-cert` and `--tls-key` all three listeners speak TLS only: HTTP
//! (admin API, checks, forward-auth), peer and wire. `--tls-client-ca` names
//! the cluster's CA, and with it:
//! - on the peer port, mutual TLS: a peer must show a certificate that CA
//!   signed, and each node shows its own certificate when it calls a peer;
//! - on the wire port, a proxy may show a client certificate that CA signed;
//!   a verified certificate authenticates the proxy, and its hello needs no
//!   token. A proxy without one still authenticates with a token, so both
//!   kinds of proxy can share a cluster.
//!
//! Peers verify each other's certificates against that CA, the public web
//! roots and `--outbound-ca`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// The CA certificates in `path`, for outbound HTTPS calls (see
/// `config::TlsConfig::outbound_ca`).
pub fn outbound_roots(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    read_certs(path)?
        .iter()
        .map(|c| {
            reqwest::Certificate::from_der(c)
                .with_context(|| format!("{}: not a usable CA certificate", path.display()))
        })
        .collect()
}

/// An HTTP client builder that trusts `roots` besides the public web roots:
/// every HTTPS client of the node and its CLI starts here.
pub fn http_trusting(roots: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    roots.iter().fold(reqwest::Client::builder(), |b, root| b.add_root_certificate(root.clone()))
}

/// Who must show a client certificate, signed by which CA.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    None,
    /// Verified if shown (the wire port: proxies may present a token instead).
    Optional(&'a Path),
    /// No connection without one (the peer port).
    Required(&'a Path),
}

/// A listener's TLS configuration.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_auth: ClientAuth<'_>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_auth {
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match client_auth {
                ClientAuth::Optional(_) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .with_context(|| format!("{} and {} do not make a certificate and its key", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; past this, connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 512;
/// Handshakes under way at once from one address; past this, a new
/// connection from it is closed as soon as it is accepted, so one client's
/// idle sockets cannot hold every handshake slot (520 did: new TLS
/// connections then waited for the 10 s timeouts, over and over).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// Handshakes under way, by the client's address.
type InHandshake = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One handshake's place among its address's; freed when dropped.
struct HandshakePlace {
    by_address: InHandshake,
    address: std::net::IpAddr,
}

impl HandshakePlace {
    /// A place for a handshake from `address`, if it has fewer than
    /// [`MAX_HANDSHAKES_PER_ADDRESS`] under way.
    fn take(by_address: &InHandshake, address: std::net::IpAddr) -> Option<Self> {
        let mut counts = by_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(HandshakePlace { by_address: by_address.clone(), address })
    }
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        let mut counts = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// A TLS listener for `axum::serve`. Handshakes run in tasks of their own,
/// so a slow or silent client holds up no other; one that does not finish
/// within [`HANDSHAKE_TIMEOUT`] is dropped, and at most [`MAX_HANDSHAKES`]
/// run at once, [`MAX_HANDSHAKES_PER_ADDRESS`] from one address. Dropping
/// the listener stops them all.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::AbortHandle,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            let by_address = InHandshake::default();
            // Owned here: aborted with this task.
            let mut handshakes = tokio::task::JoinSet::new();
            loop {
                while handshakes.try_join_next().is_some() {}
                let Ok(permit) = limit.clone().acquire_owned().await else { return };
                let (stream, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: let some close.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(place) = HandshakePlace::take(&by_address, addr.ip().to_canonical()) else {
                    tracing::debug!(%addr, "connection closed: {MAX_HANDSHAKES_PER_ADDRESS} TLS handshakes from it under way");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                handshakes.spawn(async move {
                    let _permit = permit;
                    let _place = place;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local, accepting: accepting.abort_handle() })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// How this node calls its peers when TLS is on: the CAs it trusts for
/// their certificates, and its own certificate when the cluster has a CA.
#[derive(Clone)]
pub struct PeerTls {
    pub roots: Vec<reqwest::Certificate>,
    pub identity: Option<reqwest::Identity>,
}

impl PeerTls {
    pub fn new(
        cert: &Path,
        key: &Path,
        cluster_ca: Option<&Path>,
        outbound: &[reqwest::Certificate],
    ) -> anyhow::Result<Self> {
        let mut roots = outbound.to_vec();
        let mut identity = None;
        if let Some(ca) = cluster_ca {
            roots.extend(outbound_roots(ca)?);
            let mut pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?);
            identity = Some(
                reqwest::Identity::from_pem(&pem)
                    .with_context(|| format!("{} and {}: not a certificate and key", cert.display(), key.display()))?,
            );
        }
        Ok(PeerTls { roots, identity })
    }
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
        server_config(&p("node.pem"), &p("node-key.pem"), ClientAuth::Optional(&p("ca.pem"))).expect("server config");
        server_config(&p("node.pem"), &p("node-key.pem"), ClientAuth::Required(&p("ca.pem"))).expect("server config");
        PeerTls::new(&p("node.pem"), &p("node-key.pem"), Some(&p("ca.pem")), &[]).expect("peer TLS");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("node-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are readable by their owner only");
        // A key that does not belong to the certificate is refused, naming both files.
        let err = server_config(&p("node.pem"), &p("client-key.pem"), ClientAuth::None).expect_err("mismatched key");
        assert!(err.to_string().contains("node.pem"), "{err:#}");
        assert!(read_certs(&p("node-key.pem")).is_err(), "a key file is not a certificate file");
    }
}
