//! The peer network, client side: Raft RPCs and forwarded requests to other
//! members.
//!
//! Transport choice: HTTP/1.1 with bincode bodies, on a port of its own. HTTP
//! brings connection pooling, time-outs and (with rustls) mutual TLS from
//! well-kept crates; bincode keeps entries compact and is the same codec the log
//! uses. A peer we cannot connect to is reported to openraft as
//! `Unreachable` (it then backs off); any other transport failure as a
//! network error.

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
}

impl PeerClient {
    pub fn new(cluster_token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        PeerClient { http, cluster_token }
    }

    /// POSTs `request` (bincode) to `http://{addr}{path}` and decodes the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let network = |reason: String| CallError::Network { addr: addr.to_string(), reason };
        let body = codec::encode(request).map_err(|e| network(e.to_string()))?;
        let mut builder = self.http.post(format!("http://{addr}{path}")).timeout(timeout).body(body);
        if let Some(token) = &self.cluster_token {
            builder = builder.bearer_auth(token);
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Unreachable { addr: addr.to_string(), reason: e.to_string() }
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
