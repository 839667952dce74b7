//! The route distributor's decisions, pure: which BGP peers this node has,
//! and which learned routes become kernel routes.
//!
//! Between nodes: iBGP in the cluster's AS, a full mesh unless route
//! reflectors are named (then reflectors peer with everyone, treating the
//! other nodes as clients, and the other nodes peer with the reflectors
//! only). Beyond: the BGPPeer objects that apply to this node; an iBGP one
//! (in the cluster's AS) is a reflection client of a reflector node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_model::{BgpPeer, NodeRecord};

use crate::problem::Problem;

/// A peer this node wants, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPeer {
    pub address: IpAddr,
    pub asn: u32,
    /// The peer is a reflection client of ours (we are a reflector).
    pub rr_client: bool,
    /// Wait for the peer to connect. Between two nodes only the one with
    /// the higher underlay address connects (as Calico's mesh does): with
    /// both connecting, simultaneous opens collide, and RFC 4271's
    /// collision rule leaves a race that takes the session down again.
    pub passive: bool,
    pub password: Option<String>,
    /// `node/<name>` or `bgppeer/<name>`, for logs and operators.
    pub source: String,
}

/// The cluster-wide BGP settings every agent shares.
pub struct Topology<'a> {
    pub as_number: u32,
    pub route_reflectors: &'a [String],
}

impl Topology<'_> {
    pub fn is_reflector(&self, node: &str) -> bool {
        self.route_reflectors.iter().any(|r| r == node)
    }
}

/// The peers of node `me`, one per address (a node wins over a BGPPeer
/// with the same address; of two BGPPeers, the first by name).
pub fn wanted_peers(
    me: &NodeRecord,
    topology: &Topology<'_>,
    nodes: &[NodeRecord],
    peers: &[BgpPeer],
) -> Vec<WantedPeer> {
    let mut out: BTreeMap<IpAddr, WantedPeer> = BTreeMap::new();
    let i_reflect = topology.is_reflector(&me.name);
    let mesh = topology.route_reflectors.is_empty();
    for node in nodes.iter().filter(|n| n.name != me.name) {
        let other_reflects = topology.is_reflector(&node.name);
        if !(mesh || i_reflect || other_reflects) {
            continue;
        }
        out.insert(
            IpAddr::V4(node.underlay_ip),
            WantedPeer {
                address: IpAddr::V4(node.underlay_ip),
                asn: topology.as_number,
                rr_client: i_reflect && !other_reflects,
                passive: node.underlay_ip > me.underlay_ip,
                password: None,
                source: format!("node/{}", node.name),
            },
        );
    }
    let mut external: Vec<&BgpPeer> = peers.iter().filter(|p| p.applies_to(&me.name)).collect();
    external.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for peer in external {
        let address = peer.spec.peer_ip;
        if address == IpAddr::V4(me.underlay_ip) {
            continue;
        }
        out.entry(address).or_insert_with(|| WantedPeer {
            address,
            asn: peer.spec.as_number,
            // A router in the cluster's own AS peering with a reflector is
            // one of its clients: it gets every node's routes and its own
            // are reflected to every node.
            rr_client: i_reflect && peer.spec.as_number == topology.as_number,
            // Routers may be passive themselves: always connect.
            passive: false,
            password: peer.spec.password.clone(),
            source: format!("bgppeer/{}", peer.metadata.name),
        });
    }
    out.into_values().collect()
}

/// A route the Loc-RIB learned: its prefix and next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub prefix: IpNetwork,
    pub next_hop: IpAddr,
}

/// Which learned routes the kernel gets: IPv4 ones (the pod network is
/// IPv4 for now), never one covering this node's own pod CIDR, with a next
/// hop on the uplink's subnet (nodes and routers share an L2 segment; a
/// next hop elsewhere would need recursive routing) or one of `tunnelled`:
/// cluster nodes off the subnet that the encapsulation reaches
/// ([`crate::desired::tunnel_reachable`]; the calculation routes the tunnel
/// to them). The rest come back as problems.
pub fn installable(
    learned: &[Learned],
    own_pod_cidr: Ipv4Network,
    uplink_subnet: Option<Ipv4Network>,
    tunnelled: &BTreeSet<Ipv4Addr>,
) -> (Vec<(Ipv4Network, Ipv4Addr)>, Vec<Problem>) {
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for l in learned {
        let (IpNetwork::V4(prefix), IpAddr::V4(next_hop)) = (l.prefix, l.next_hop) else {
            continue;
        };
        if prefix.overlaps(own_pod_cidr) {
            problems.push(Problem::LearnedOverlapsOwn {
                prefix,
                own: own_pod_cidr,
            });
            continue;
        }
        if uplink_subnet.is_some_and(|s| !s.contains(next_hop)) && !tunnelled.contains(&next_hop) {
            problems.push(Problem::LearnedNextHopUnreachable {
                prefix: prefix.into(),
                next_hop: next_hop.into(),
            });
            continue;
        }
        routes.push((prefix, next_hop));
    }
    (routes, problems)
}

/// The router id of a node: its underlay address.
pub fn router_id(me: &NodeRecord) -> Ipv4Addr {
    me.underlay_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeRecord {
        NodeRecord {
            name: format!("node{i}"),
            underlay_ip: Ipv4Addr::new(198, 18, 0, 10 + i),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
        }
    }

    fn peer(name: &str, ip: &str, asn: u32, node: Option<&str>) -> BgpPeer {
        let yaml = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {{peerIP: {ip}, asNumber: {asn}{}}}\n",
            node.map(|n| format!(", node: {n}")).unwrap_or_default()
        );
        weft_model::bgp_peer::parse_manifests(&yaml)
            .unwrap()
            .remove(0)
    }

    fn addresses(peers: &[WantedPeer]) -> Vec<String> {
        peers
            .iter()
            .map(|p| format!("{}{}", p.address, if p.rr_client { "(client)" } else { "" }))
            .collect()
    }

    #[test]
    fn full_mesh_peers_with_every_other_node() {
        let nodes: Vec<_> = (1..=3).map(node).collect();
        let t = Topology {
            as_number: 64512,
            route_reflectors: &[],
        };
        let peers = wanted_peers(&nodes[0], &t, &nodes, &[]);
        assert_eq!(addresses(&peers), ["198.18.0.12", "198.18.0.13"]);
        assert!(
            peers
                .iter()
                .all(|p| p.asn == 64512 && p.source.starts_with("node/"))
        );
    }

    #[test]
    fn reflectors_peer_with_all_clients_with_reflectors_only() {
        let nodes: Vec<_> = (1..=4).map(node).collect();
        let rrs = ["node1".to_string(), "node2".to_string()];
        let t = Topology {
            as_number: 64512,
            route_reflectors: &rrs,
        };
        assert_eq!(
            addresses(&wanted_peers(&nodes[0], &t, &nodes, &[])),
            ["198.18.0.12", "198.18.0.13(client)", "198.18.0.14(client)"]
        );
        assert_eq!(
            addresses(&wanted_peers(&nodes[2], &t, &nodes, &[])),
            ["198.18.0.11", "198.18.0.12"]
        );
    }

    #[test]
    fn bgp_peers_apply_per_node_and_never_shadow_a_node() {
        let nodes: Vec<_> = (1..=2).map(node).collect();
        let t = Topology {
            as_number: 64512,
            route_reflectors: &[],
        };
        let external = [
            peer("tor", "198.18.0.200", 64600, None),
            peer("only2", "198.18.0.201", 64601, Some("node2")),
            peer("clash", "198.18.0.12", 65000, None),
        ];
        let peers = wanted_peers(&nodes[0], &t, &nodes, &external);
        assert_eq!(addresses(&peers), ["198.18.0.12", "198.18.0.200"]);
        // node1 waits for node2, which has the higher address; a router is
        // always connected to.
        assert!(peers[0].passive && !peers[1].passive);
        let from_node2 = wanted_peers(&nodes[1], &t, &nodes, &external);
        assert!(!from_node2[0].passive, "node2 connects to node1");
        assert_eq!(
            peers[0].asn, 64512,
            "the node wins over a BGPPeer with its address"
        );
        assert_eq!(peers[1].asn, 64600);
        assert_eq!(
            addresses(&wanted_peers(&nodes[1], &t, &nodes, &external)),
            ["198.18.0.11", "198.18.0.200", "198.18.0.201"]
        );
    }

    #[test]
    fn an_ibgp_bgp_peer_of_a_reflector_is_its_client() {
        let nodes: Vec<_> = (1..=2).map(node).collect();
        let rrs = ["node1".to_string()];
        let t = Topology {
            as_number: 64512,
            route_reflectors: &rrs,
        };
        let external = [
            peer("bird", "198.18.0.200", 64512, None),
            peer("tor", "198.18.0.201", 64600, None),
        ];
        let peers = wanted_peers(&nodes[0], &t, &nodes, &external);
        assert_eq!(
            addresses(&peers),
            [
                "198.18.0.12(client)",
                "198.18.0.200(client)",
                "198.18.0.201"
            ]
        );
        let peers = wanted_peers(&nodes[1], &t, &nodes, &external);
        assert_eq!(
            addresses(&peers),
            ["198.18.0.11", "198.18.0.200", "198.18.0.201"]
        );
    }

    #[test]
    fn only_installable_learned_routes_reach_the_kernel() {
        let learned = [
            Learned {
                prefix: "10.244.2.0/24".parse().unwrap(),
                next_hop: "198.18.0.12".parse().unwrap(),
            },
            Learned {
                prefix: "203.0.113.0/24".parse().unwrap(),
                next_hop: "198.18.0.200".parse().unwrap(),
            },
            Learned {
                prefix: "10.244.1.0/25".parse().unwrap(),
                next_hop: "198.18.0.13".parse().unwrap(),
            },
            Learned {
                prefix: "10.244.9.0/24".parse().unwrap(),
                next_hop: "192.0.2.1".parse().unwrap(),
            },
            Learned {
                prefix: "2001:db8::/64".parse().unwrap(),
                next_hop: "2001:db8::1".parse().unwrap(),
            },
        ];
        let (routes, problems) = installable(
            &learned,
            "10.244.1.0/24".parse().unwrap(),
            Some("198.18.0.0/24".parse().unwrap()),
            &BTreeSet::new(),
        );
        assert_eq!(
            routes,
            vec![
                (
                    "10.244.2.0/24".parse().unwrap(),
                    "198.18.0.12".parse().unwrap()
                ),
                (
                    "203.0.113.0/24".parse().unwrap(),
                    "198.18.0.200".parse().unwrap()
                )
            ]
        );
        assert_eq!(problems.len(), 2);
        // A node across a router that the tunnel reaches is installable.
        let (routes, problems) = installable(
            &learned,
            "10.244.1.0/24".parse().unwrap(),
            Some("198.18.0.0/24".parse().unwrap()),
            &["192.0.2.1".parse().unwrap()].into(),
        );
        assert_eq!(routes.len(), 3);
        assert!(routes.contains(&(
            "10.244.9.0/24".parse().unwrap(),
            "192.0.2.1".parse().unwrap()
        )));
        assert_eq!(problems.len(), 1);
    }
}
