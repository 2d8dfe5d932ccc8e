//! TLS to the nodes' wire listeners (feature `tls`; rustls with ring).
//!
//! ```no_run
//! # fn run() -> Result<(), tollgate_client::Error> {
//! use tollgate_client::{tls::ClientTls, Client, ClientConfig};
//! let read = |p: &str| std::fs::read(p).unwrap_or_default();
//! let tls = ClientTls::new(&read("ca.pem"), Some((&read("client.pem"), &read("client-key.pem"))))?;
//! // With a client certificate the token may be left empty.
//! let mut config = ClientConfig::new(["10.0.0.1:10081"], "");
//! config.tls = Some(tls);
//! let client = Client::new(config);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::Error;

/// How the client speaks TLS: the CA it trusts for node certificates and,
/// optionally, its own certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// The name checked against node certificates; by default the host part
    /// of each node's address.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Refused { field: what.into(), message: e.to_string() }
}

impl ClientTls {
    /// `ca_pem`: CA certificates (PEM) that sign the nodes' certificates.
    /// `identity`: this proxy's certificate chain and private key (PEM).
    pub fn new(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.map_err(|e| bad("tls.ca", e))?).map_err(|e| bad("tls.ca", e))?;
        }
        if roots.is_empty() {
            return Err(bad("tls.ca", "no CA certificate in the PEM"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", e))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("tls.cert", e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("tls.key", e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| bad("tls.cert", e))?
            }
        };
        Ok(ClientTls { connector: TlsConnector::from(Arc::new(config)), server_name: None })
    }

    pub(crate) async fn connect(&self, addr: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_matches(['[', ']']).to_string(),
        };
        let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
        self.connector.connect(name, stream).await.map_err(|e| e.to_string())
    }
}
