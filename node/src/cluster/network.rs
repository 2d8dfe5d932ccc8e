//! The peer network, client side: Raft RPCs and forwarded requests to other
//! members.
//!
//! Transport choice: HTTP/1.1 with bincode bodies, on a port of its own. HTTP
//! brings connection pooling, time-outs and (with rustls) mutual TLS from
//! well-kept crates; bincode keeps entries compact and is the same codec the log
//! uses. A peer we cannot connect to is reported to openraft as
//! `Unreachable` (it then backs off); any other transport failure as a
//! network error.
//!
//! Members are named by their advertised peer address (it is part of the
//! replicated membership); `--peer-via` lets this node dial some of them
//! elsewhere (NAT, or the test harness's partition proxies). Every call to a
//! peer goes through [`PeerClient::call`], so the mapping holds for Raft RPCs
//! and forwarded writes alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::codec;

use super::typ::{InstallSnapshotError, RPCError, RaftError};
use super::{NodeAddr, NodeId, TypeConfig};

/// Why a call to a peer failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr}: {reason}")]
    Network { addr: String, reason: String },
}

/// A pooled HTTP client for peer calls; cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Sent as a bearer token on every call when the cluster has one.
    cluster_token: Option<String>,
    /// Advertised peer address -> the address actually dialled (`--peer-via`).
    via: Arc<HashMap<String, String>>,
    /// `https` when the cluster runs TLS (see `crate::tls`), else `http`.
    scheme: &'static str,
}

impl PeerClient {
    pub fn new(
        cluster_token: Option<String>,
        via: HashMap<String, String>,
        tls: Option<crate::tls::PeerTls>,
    ) -> Result<Self, reqwest::Error> {
        let roots = tls.as_ref().map_or(&[][..], |t| &t.roots[..]);
        let mut builder = crate::tls::http_trusting(roots)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        let scheme = match tls {
            Some(tls) => {
                if let Some(identity) = tls.identity {
                    builder = builder.identity(identity);
                }
                "https"
            }
            None => "http",
        };
        Ok(PeerClient { http: builder.build()?, cluster_token, via: Arc::new(via), scheme })
    }

    /// POSTs `request` (bincode) to `http(s)://{addr}{path}` and decodes the
    /// answer; `addr` is the peer's advertised address, dialled through its
    /// `--peer-via` mapping when it has one. Errors name the peer (and the
    /// address dialled, when it differs).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let dial = self.via.get(addr).map_or(addr, String::as_str);
        let named = || if dial == addr { addr.to_string() } else { format!("{addr} (via {dial})") };
        let network = |reason: String| CallError::Network { addr: named(), reason };
        let body = codec::encode(request).map_err(|e| network(e.to_string()))?;
        let mut builder = self.http.post(format!("{}://{dial}{path}", self.scheme)).timeout(timeout).body(body);
        if let Some(token) = &self.cluster_token {
            builder = builder.bearer_auth(token);
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Unreachable { addr: named(), reason: e.to_string() }
            } else {
                network(e.to_string())
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| network(e.to_string()))?;
        if !status.is_success() {
            return Err(network(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))));
        }
        codec::decode(&bytes).map_err(|e| network(e.to_string()))
    }
}

/// Makes a [`PeerConnection`] per target for openraft.
pub struct PeerNetwork {
    pub client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerConnection { client: self.client.clone(), target, addr: node.peer.clone() }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> Result<Resp, RPCError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<E>> =
            self.client.call(&self.addr, path, req, option.hard_ttl()).await.map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Network { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError> {
        self.rpc(super::peer::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<InstallSnapshotError>> {
        self.rpc(super::peer::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RPCError> {
        self.rpc(super::peer::VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer advertised at an address nobody listens on is reached at the
    /// address `--peer-via` maps it to.
    #[tokio::test]
    async fn a_mapped_peer_is_dialled_at_its_mapped_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = listener.local_addr().unwrap().to_string();
        let echo = axum::Router::new().route("/echo", axum::routing::post(|body: axum::body::Bytes| async { body }));
        let server = tokio::spawn(async move { axum::serve(listener, echo).await });

        let advertised = "127.0.0.1:1";
        let client = PeerClient::new(None, HashMap::from([(advertised.to_string(), dial.clone())]), None).unwrap();
        let answer: u64 = client.call(advertised, "/echo", &42u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, 42);

        let direct = PeerClient::new(None, HashMap::new(), None).unwrap();
        let err = direct.call::<u64, u64>(advertised, "/echo", &42, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, CallError::Unreachable { .. }), "{err}");
        server.abort();
    }
}
