//! `tollgate cluster`: status and membership (`/v1/admin/cluster`), the
//! answering node's check decisions by reason (`/v1/admin/decisions`), and
//! `tollgate identity-key`: the key version that signs identity tokens
//! (`/v1/admin/identity-key`), both cluster-wide settings.

use clap::Subcommand;
use serde_json::{json, Value};
use tollgate_client::admin::Method;

use super::api::Api;
use super::output::{self, View};
use super::views;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The answering node's view: its role, the leader, term, log indexes
    /// and the members.
    Status,
    /// Add a running node that is in no cluster yet: it joins as a learner,
    /// catches up, then becomes a voter (unless --learner).
    #[command(alias = "add-node")]
    Add {
        /// The new node's id (above 0, unique in the cluster).
        #[arg(long)]
        id: u64,
        /// Its HTTP listener, host:port, as the other nodes reach it.
        #[arg(long)]
        http: String,
        /// Its peer (Raft) listener, host:port, as the other nodes reach it.
        #[arg(long)]
        peer: String,
        /// Its binary check listener, host:port, for client discovery.
        #[arg(long, default_value = "")]
        wire: String,
        /// Keep it a learner: it serves checks, but does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node id.
        id: u64,
    },
    /// Take a node out of the cluster; it is told, and stops serving.
    Remove {
        /// The node's id.
        id: u64,
    },
    /// The answering node's check decisions by reason since it started
    /// (cumulative: run it twice for a rate).
    Decisions,
}

#[derive(Subcommand)]
pub enum IdentityKeyCmd {
    /// The key version that signs `X-Tollgate-Identity` now, and when it was rotated.
    Get {
        /// Read the node's local copy instead of a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Sign with the next key version from now on. The JWKS publishes the
    /// previous, current and next keys, so tokens verify across a rotation.
    Rotate,
}

pub async fn run(api: &Api, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => api.show(Method::GET, "/v1/admin/cluster", None, View::Cluster).await,
        ClusterCmd::Decisions => api.show(Method::GET, "/v1/admin/decisions", None, View::One(views::DECISIONS)).await,
        ClusterCmd::Add { id, http, peer, wire, learner } => {
            let body = json!({"id": id, "http_addr": http, "peer_addr": peer, "wire_addr": wire, "voter": !learner});
            api.show(Method::POST, "/v1/admin/cluster/nodes", Some(body), View::One(views::MEMBER_CHANGE)).await
        }
        ClusterCmd::Promote { id } => {
            let path = format!("/v1/admin/cluster/nodes/{id}/promote");
            api.show(Method::POST, &path, None, View::One(views::MEMBER_CHANGE)).await
        }
        ClusterCmd::Remove { id } => {
            api.call(Method::DELETE, &format!("/v1/admin/cluster/nodes/{id}"), None).await?;
            output::print(api.format, &Value::Null, View::Done(format!("removed node {id}")))
        }
    }
}

pub async fn identity_key(api: &Api, cmd: IdentityKeyCmd) -> anyhow::Result<()> {
    let view = View::One(views::IDENTITY_KEY);
    match cmd {
        IdentityKeyCmd::Get { stale } => {
            let path = if stale { "/v1/admin/identity-key?stale=true" } else { "/v1/admin/identity-key" };
            api.show(Method::GET, path, None, view).await
        }
        IdentityKeyCmd::Rotate => api.show(Method::POST, "/v1/admin/identity-key/rotate", None, view).await,
    }
}
