//! What a platform team asks of a cluster: which nodes are alive, which node owns each
//! operator, which one it prefers, and how far this node's view of each operator has come.
//!
//! Why: without it the answer is in NATS (`nats kv get ch_owners <operator>`), and a
//! misplaced operator (set up on too few nodes, or an owner that did not hand it over) shows
//! only as load on one machine. `GET /v1/cluster` answers it from any node.

use serde::Serialize;

use super::Cluster;
use super::ownership::Holder;

/// The cluster as one node sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// The live nodes (each renews its entry every third of the lease), by name.
    pub nodes: Vec<LiveNode>,
    /// The operators set up on the node that answered, by id.
    pub operators: Vec<Placement>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LiveNode {
    pub node: String,
    /// How many operators are set up on it (`null`: it did not say).
    pub operators_set_up: Option<usize>,
}

/// Where an operator is served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Placement {
    pub operator: String,
    /// The node holding its lease (`null` during a failover).
    pub owner: Option<String>,
    /// Where rendezvous hashing puts it among the live nodes that have it set up; an owner
    /// hands it over to this node once the node has been alive for two leases.
    pub preferred: Option<String>,
    /// The last ledger entry the answering node's view applied (0: none).
    pub view_position: u64,
}

impl Cluster {
    /// The cluster as this node sees it now.
    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let live = self.read_live_nodes().await;
        let mut nodes: Vec<LiveNode> = live
            .0
            .iter()
            .map(|node| LiveNode {
                node: node.name.clone(),
                operators_set_up: node.operators.as_ref().map(|set| set.len()),
            })
            .collect();
        nodes.sort_by(|one, other| one.node.cmp(&other.node));
        let mut operators = Vec::new();
        for record in self.pipeline.store().operators()? {
            let owner = match self.log.owners.get(&record.id).await {
                Ok(Some(value)) => serde_json::from_slice::<Holder>(&value).ok().map(|holder| holder.node),
                Ok(None) => None,
                Err(error) => anyhow::bail!("reading the lease of {}: {error}", record.id),
            };
            operators.push(Placement {
                preferred: live.preferred(&record.id).map(str::to_owned),
                view_position: self.position(&record.id),
                owner,
                operator: record.id,
            });
        }
        Ok(ClusterStatus { node: self.node.clone(), nodes, operators })
    }
}
