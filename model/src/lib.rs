//! The cluster as Weft sees it, in plain types: what a cluster source
//! (the local directory store, the Kubernetes API) hands the agent, what
//! the calculation reads, and what weftctl and the lab show.
//!
//! Nothing here does I/O or knows where objects are stored: backends turn
//! their own representation into these types, and a change to the cluster
//! is a [`Change`] whatever the backend. Policy reads NetworkPolicies,
//! namespaces and pods (endpoints, with their labels and container ports).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub mod bgp_peer;
pub mod manifest;
pub mod namespace;
pub mod policy;
pub mod policy_case;
pub mod selector;

pub use bgp_peer::BgpPeer;
pub use namespace::Namespace;
pub use policy::{ContainerPort, NetworkPolicy, PolicyPod};
/// How pod traffic crosses the underlay between nodes: the datapath's own
/// type (it is what the uplink programs' config map stores), with its
/// overhead, names and parsing, so there is one `Encap` everywhere.
pub use weft_common::maps::Encap;

/// `--encap`'s values for a clap command line: the names of
/// [`Encap::ALL`], listed in `--help`, parsed into the one [`Encap`].
#[cfg(feature = "cli")]
pub fn encap_value_parser() -> impl clap::builder::TypedValueParser<Value = Encap> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Encap::ALL.map(Encap::name))
        .map(|name| name.parse::<Encap>().expect("a listed name"))
}

/// A node as the other nodes see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Network,
}

/// A pod's network endpoint on some node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    pub pod_name: String,
    pub pod_namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub address: Ipv4Addr,
    pub host_ifname: String,
    #[serde(default)]
    pub netns: String,
    /// The pod's container ports: what named ports in policies resolve to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

impl EndpointRecord {
    /// The endpoint's key: unique per attachment on a node.
    pub fn key(&self) -> String {
        endpoint_key(&self.container_id, &self.ifname)
    }
}

/// The key of the endpoint of attachment (`container_id`, `ifname`).
pub fn endpoint_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}_{ifname}")
}

/// Who holds a pod address: one CNI attachment (container and interface).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// An IPAM claim on an address. A claim whose record is empty or
/// unreadable (a crash between create and write) has no owner: it stays
/// reserved until CNI GC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Owned(Attachment),
    Orphaned,
}

/// One object of the cluster, whole.
/// Not `#[non_exhaustive]`: a new kind must be handled wherever objects are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Node(NodeRecord),
    /// An endpoint of any node (a node's own come from its agent).
    Endpoint(EndpointRecord),
    BgpPeer(BgpPeer),
    /// Boxed: a policy is many times the size of the other kinds.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A namespace's labels; a namespace without one still exists through
    /// its pods.
    Namespace(Namespace),
}

impl Object {
    pub fn id(&self) -> ObjectId {
        match self {
            Object::Node(n) => ObjectId::Node(n.name.clone()),
            Object::Endpoint(e) => ObjectId::Endpoint {
                node: e.node.clone(),
                key: e.key(),
            },
            Object::BgpPeer(p) => ObjectId::BgpPeer(p.metadata.name.clone()),
            Object::NetworkPolicy(p) => ObjectId::NetworkPolicy {
                namespace: p.namespace().to_string(),
                name: p.name().to_string(),
            },
            Object::Namespace(n) => ObjectId::Namespace(n.name().to_string()),
        }
    }
}

/// What names an [`Object`] in its kind: what a deletion carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectId {
    Node(String),
    Endpoint { node: String, key: String },
    BgpPeer(String),
    NetworkPolicy { namespace: String, name: String },
    Namespace(String),
}

/// A change a cluster source reports: an object created or replaced, or
/// gone. Level-triggered: an `Upsert` carries the whole object, so
/// applying the same change twice, or a stale one followed by the current
/// one, ends in the same state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Upsert(Object),
    Delete(ObjectId),
}

/// The whole cluster at one moment: what a source hands over first, and
/// again whenever it may have missed changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: Vec<NodeRecord>,
    pub endpoints: Vec<EndpointRecord>,
    pub bgp_peers: Vec<BgpPeer>,
    pub network_policies: Vec<NetworkPolicy>,
    pub namespaces: Vec<Namespace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_has_one_overhead_and_round_trips_its_name() {
        assert_eq!(Encap::Ipip.overhead(), 20);
        assert_eq!(Encap::Vxlan.overhead(), 50);
        assert_eq!(Encap::None.overhead(), 0);
        for e in Encap::ALL {
            assert_eq!(e.name().parse::<Encap>(), Ok(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.name()));
            assert_eq!(serde_json::from_str::<Encap>(&json).unwrap(), e);
        }
        assert!("gre".parse::<Encap>().is_err());
        assert!(serde_json::from_str::<Encap>("\"IPIP\"").is_err());
    }
}
