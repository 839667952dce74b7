//! The cluster as indexes the calculation reads, updated one change at a
//! time, and which dataplane slices each change touches: an event costs
//! what it changes, not the cluster's size.

use std::collections::BTreeMap;

use weft_model::{
    BgpPeer, Change, EndpointRecord, Namespace, NetworkPolicy, NodeRecord, Object, ObjectId,
    Snapshot,
};

use crate::slice::{Slice, Slices};

/// What a change to the cluster touches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// The dataplane slices whose desired state may differ.
    pub slices: Slices,
    /// The set of BGP peers this node wants may differ.
    pub bgp_peers: bool,
}

impl Touched {
    pub const NOTHING: Touched = Touched {
        slices: Slices::NONE,
        bgp_peers: false,
    };
    /// Everything: a node appeared, went or moved.
    const NODES: Touched = Touched {
        slices: Slices::NONE
            .with(Slice::Tunnel)
            .with(Slice::Vxlan)
            .with(Slice::Routes),
        bgp_peers: true,
    };
    /// A pod, namespace or policy changed: the compiled policy may differ.
    const POLICY: Touched = Touched {
        slices: Slices::of(Slice::Policy),
        bgp_peers: false,
    };

    pub fn union(self, other: Touched) -> Touched {
        Touched {
            slices: self.slices.union(other.slices),
            bgp_peers: self.bgp_peers || other.bgp_peers,
        }
    }

    pub fn is_nothing(self) -> bool {
        self.slices.is_empty() && !self.bgp_peers
    }
}

/// The cluster's objects, by identity.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    nodes: BTreeMap<String, NodeRecord>,
    /// Every node's published endpoints, by (node, key): what policy will
    /// select from. This node's own come from its agent's records.
    endpoints: BTreeMap<(String, String), EndpointRecord>,
    bgp_peers: BTreeMap<String, BgpPeer>,
    /// NetworkPolicies by (namespace, name).
    policies: BTreeMap<(String, String), NetworkPolicy>,
    namespaces: BTreeMap<String, Namespace>,
}

impl Cluster {
    /// Replaces everything with `snapshot` (at start, and whenever the
    /// source may have missed changes), as the changes that take the old
    /// state to the new one: a resync costs what actually differs.
    pub fn reset(&mut self, snapshot: Snapshot) -> Touched {
        let mut wanted: BTreeMap<ObjectId, Object> = BTreeMap::new();
        let objects = (snapshot.nodes.into_iter().map(Object::Node))
            .chain(snapshot.endpoints.into_iter().map(Object::Endpoint))
            .chain(snapshot.bgp_peers.into_iter().map(Object::BgpPeer))
            .chain(
                snapshot
                    .network_policies
                    .into_iter()
                    .map(|p| Object::NetworkPolicy(Box::new(p))),
            )
            .chain(snapshot.namespaces.into_iter().map(Object::Namespace));
        for object in objects {
            wanted.insert(object.id(), object);
        }
        let gone: Vec<ObjectId> = self.ids().filter(|id| !wanted.contains_key(id)).collect();
        let mut touched = Touched::NOTHING;
        for id in gone {
            touched = touched.union(self.apply(Change::Delete(id)));
        }
        for object in wanted.into_values() {
            touched = touched.union(self.apply(Change::Upsert(object)));
        }
        touched
    }

    /// Applies one change; what it touches (nothing when the object was
    /// already so, or already gone).
    pub fn apply(&mut self, change: Change) -> Touched {
        match change {
            Change::Upsert(Object::Node(node)) => {
                if self.nodes.get(&node.name) == Some(&node) {
                    return Touched::NOTHING;
                }
                self.nodes.insert(node.name.clone(), node);
                Touched::NODES
            }
            Change::Delete(ObjectId::Node(name)) => match self.nodes.remove(&name) {
                Some(_) => Touched::NODES,
                None => Touched::NOTHING,
            },
            // Any pod anywhere may be a policy peer (or change one's named ports).
            Change::Upsert(Object::Endpoint(ep)) => {
                let id = (ep.node.clone(), ep.key());
                upsert(&mut self.endpoints, id, ep, Touched::POLICY)
            }
            Change::Delete(ObjectId::Endpoint { node, key }) => {
                delete(&mut self.endpoints, &(node, key), Touched::POLICY)
            }
            Change::Upsert(Object::NetworkPolicy(p)) => {
                let id = (p.namespace().to_string(), p.name().to_string());
                upsert(&mut self.policies, id, *p, Touched::POLICY)
            }
            Change::Delete(ObjectId::NetworkPolicy { namespace, name }) => {
                delete(&mut self.policies, &(namespace, name), Touched::POLICY)
            }
            Change::Upsert(Object::Namespace(ns)) => upsert(
                &mut self.namespaces,
                ns.name().to_string(),
                ns,
                Touched::POLICY,
            ),
            Change::Delete(ObjectId::Namespace(name)) => {
                delete(&mut self.namespaces, &name, Touched::POLICY)
            }
            Change::Upsert(Object::BgpPeer(peer)) => {
                let name = peer.metadata.name.clone();
                if self.bgp_peers.get(&name) == Some(&peer) {
                    return Touched::NOTHING;
                }
                self.bgp_peers.insert(name, peer);
                Touched {
                    bgp_peers: true,
                    ..Touched::NOTHING
                }
            }
            Change::Delete(ObjectId::BgpPeer(name)) => Touched {
                bgp_peers: self.bgp_peers.remove(&name).is_some(),
                ..Touched::NOTHING
            },
        }
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.nodes.values().cloned().collect()
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    pub fn bgp_peers(&self) -> Vec<BgpPeer> {
        self.bgp_peers.values().cloned().collect()
    }

    /// The endpoints `node` has published.
    pub fn endpoints_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a EndpointRecord> {
        self.endpoints
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, ep)| ep)
    }

    /// Every endpoint of the cluster: the pods policy selects from.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.values()
    }

    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values()
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    fn ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        let nodes = self.nodes.keys().map(|n| ObjectId::Node(n.clone()));
        let endpoints = self.endpoints.keys().map(|(node, key)| ObjectId::Endpoint {
            node: node.clone(),
            key: key.clone(),
        });
        let peers = self.bgp_peers.keys().map(|p| ObjectId::BgpPeer(p.clone()));
        let policies = self
            .policies
            .keys()
            .map(|(namespace, name)| ObjectId::NetworkPolicy {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        let namespaces = self
            .namespaces
            .keys()
            .map(|n| ObjectId::Namespace(n.clone()));
        nodes
            .chain(endpoints)
            .chain(peers)
            .chain(policies)
            .chain(namespaces)
    }
}

/// Stores `value` under `id`: `touched` if it differs from what was there.
fn upsert<K: Ord, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    id: K,
    value: V,
    touched: Touched,
) -> Touched {
    if map.get(&id) == Some(&value) {
        return Touched::NOTHING;
    }
    map.insert(id, value);
    touched
}

/// Removes `id`: `touched` if it was there.
fn delete<K: Ord, V>(map: &mut BTreeMap<K, V>, id: &K, touched: Touched) -> Touched {
    match map.remove(id) {
        Some(_) => touched,
        None => Touched::NOTHING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeRecord {
        NodeRecord {
            name: format!("node{i}"),
            underlay_ip: format!("198.18.0.{}", 10 + i).parse().unwrap(),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
        }
    }

    fn endpoint(node: &str, cid: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: cid.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod_name: cid.into(),
            pod_namespace: "default".into(),
            labels: Default::default(),
            address: "10.244.1.2".parse().unwrap(),
            host_ifname: "weft0".into(),
            netns: String::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn a_node_touches_routes_and_tunnels_and_peers_once() {
        let mut c = Cluster::default();
        let t = c.apply(Change::Upsert(Object::Node(node(2))));
        assert!(
            t.bgp_peers && t.slices.contains(Slice::Routes) && t.slices.contains(Slice::Tunnel)
        );
        assert!(!t.slices.contains(Slice::Endpoints));
        // The same again is nothing: level-triggered sources repeat themselves.
        assert!(c.apply(Change::Upsert(Object::Node(node(2)))).is_nothing());
        assert_eq!(c.apply(Change::Delete(ObjectId::Node("node2".into()))), t);
        assert!(
            c.apply(Change::Delete(ObjectId::Node("node2".into())))
                .is_nothing()
        );
    }

    #[test]
    fn remote_endpoints_are_indexed_by_node_and_touch_only_policy() {
        let mut c = Cluster::default();
        for (n, cid) in [
            ("node1", "a"),
            ("node2", "b"),
            ("node2", "c"),
            ("node3", "d"),
        ] {
            let ep = Object::Endpoint(endpoint(n, cid));
            assert_eq!(c.apply(Change::Upsert(ep.clone())), Touched::POLICY);
            assert!(c.apply(Change::Upsert(ep)).is_nothing(), "the same again");
        }
        let of2: Vec<_> = c
            .endpoints_of("node2")
            .map(|e| e.container_id.as_str())
            .collect();
        assert_eq!(of2, ["b", "c"]);
        c.apply(Change::Delete(ObjectId::Endpoint {
            node: "node2".into(),
            key: "b_eth0".into(),
        }));
        assert_eq!(c.endpoints_of("node2").count(), 1);
    }

    #[test]
    fn a_reset_touches_only_what_differs() {
        let mut c = Cluster::default();
        let snap = Snapshot {
            nodes: vec![node(1), node(2)],
            ..Snapshot::default()
        };
        assert!(!c.reset(snap.clone()).is_nothing());
        assert!(
            c.reset(snap.clone()).is_nothing(),
            "the same snapshot again"
        );
        // A node missing from the next snapshot was deleted meanwhile.
        let t = c.reset(Snapshot {
            nodes: vec![node(1)],
            ..snap
        });
        assert!(t.slices.contains(Slice::Routes));
        assert_eq!(c.nodes(), vec![node(1)]);
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use weft_model::manifest::{PolicyManifest, parse_policy_manifests};

    #[test]
    fn policies_and_namespaces_touch_the_policy_slice_once() {
        let objects = parse_policy_manifests(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n",
        )
        .unwrap();
        let mut c = Cluster::default();
        for object in objects {
            let object = match object {
                PolicyManifest::Namespace(n) => Object::Namespace(n),
                PolicyManifest::NetworkPolicy(p) => Object::NetworkPolicy(Box::new(p)),
            };
            let id = object.id();
            assert_eq!(c.apply(Change::Upsert(object.clone())), Touched::POLICY);
            assert!(c.apply(Change::Upsert(object)).is_nothing());
            assert_eq!(c.apply(Change::Delete(id.clone())), Touched::POLICY);
            assert!(c.apply(Change::Delete(id)).is_nothing());
        }
        assert_eq!(c.network_policies().count() + c.namespaces().count(), 0);
    }
}
