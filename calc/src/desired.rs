//! From the cluster and what the node holds to the desired state of each
//! dataplane slice. Pure: no I/O, no clock; the agent feeds it what its
//! indexes hold and its drivers apply what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_dataplane::names::vtep_ip;
use weft_dataplane::route::Route;
use weft_model::{Encap, EndpointRecord, NodeRecord};

use crate::problem::Problem;

/// What the calculation reads.
pub struct ClusterView<'a> {
    /// This node's own record.
    pub me: &'a NodeRecord,
    /// The uplink's index and subnet (static routing needs next hops on it).
    pub uplink_ifindex: u32,
    pub uplink_subnet: Option<Ipv4Network>,
    /// For other nodes off the uplink's subnet: the next hop on the uplink
    /// the kernel routes their underlay address via (a router), looked up
    /// by the shell ([`off_subnet_nodes`] says which). IP-in-IP to such a
    /// node routes the inner packet there: the uplink program puts the
    /// node's address in the outer header, and the link-layer destination
    /// the kernel resolved for the route (the router's) is right for it.
    pub underlay_next_hops: &'a BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Every node record in the datastore, this node's included.
    pub nodes: &'a [NodeRecord],
    /// Where routes to other nodes' pod CIDRs come from.
    pub remote: Remote<'a>,
    /// This node's endpoints (the agent's local records).
    pub endpoints: &'a [EndpointRecord],
    /// Weft's host-side interfaces present in the kernel, name → ifindex.
    pub links: &'a BTreeMap<String, u32>,
    /// The host veths of attachments holding an address (ADDs in flight
    /// and registered endpoints): never leftovers.
    pub claimed_links: &'a BTreeSet<String>,
    /// How pod traffic crosses the underlay, and whether only across subnets.
    pub encap: Encap,
    pub cross_subnet: bool,
    /// The pod MTU: the MTU of routes into an IP-in-IP tunnel.
    pub pod_mtu: u32,
    /// The vxlan device's index (mode `vxlan`, once the device exists).
    pub vxlan_ifindex: Option<u32>,
    /// BGP routes a previous run left, kept until BGP is synchronized
    /// again: wanted as they are wherever nothing learned replaces them.
    pub kept: &'a [Route],
}

/// The source of the routes beyond this node.
#[derive(Clone, Copy, Debug)]
pub enum Remote<'a> {
    /// Every other node's pod CIDR via its underlay address (static routing).
    NodeRecords,
    /// What BGP learned and [`crate::routing::installable`] let through.
    Learned(&'a [(Ipv4Network, Ipv4Addr)]),
}

/// The node's desired dataplane.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// The node's policy maps ([`crate::policy::compile`]); filled by the
    /// caller when the policy slice is flushed (it reads the whole
    /// cluster, not what `desired_state` sees).
    pub policy: crate::policy::CompiledPolicy,
    pub routes: Vec<Route>,
    /// Anti-spoofing entries: host veth ifindex → the pod's only source address.
    pub guard: BTreeMap<u32, Ipv4Addr>,
    /// Host veths (name, ifindex) that must carry the guard.
    pub guarded_links: Vec<(String, u32)>,
    /// Weft interfaces that belong to no claimed attachment (leftovers of
    /// a failed ADD or a lost DEL).
    pub stale_links: Vec<String>,
    /// IP-in-IP: other nodes' pod CIDRs → their underlay address (the
    /// uplink programs' LPM map). Empty in the other modes.
    pub pod_routes: BTreeMap<Ipv4Network, Ipv4Addr>,
    /// The other nodes' underlay addresses: the only sources the uplink
    /// program decapsulates IP-in-IP from (in every mode) and, in `vxlan`,
    /// lets VXLAN in from.
    pub tunnel_peers: BTreeSet<Ipv4Addr>,
    /// VXLAN: each other node as (underlay address, VTEP address), for the
    /// device's FDB and neighbour entries. Empty in the other modes.
    pub vxlan_peers: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// A graceful restart is in progress (kept routes in force): the
    /// uplink programs' pod-route entries a previous run wrote stay until
    /// BGP has relearned them, as the kept routes into them do; only
    /// additions are applied.
    pub keep_pod_routes: bool,
    /// Why some wanted state cannot be built, for the log and operators.
    pub problems: Vec<Problem>,
}

pub fn desired_state(view: &ClusterView<'_>) -> DesiredState {
    let mut out = DesiredState::default();

    for ep in view.endpoints {
        match view.links.get(&ep.host_ifname) {
            Some(&ifindex) => {
                out.guard.insert(ifindex, ep.address);
                out.guarded_links.push((ep.host_ifname.clone(), ifindex));
                out.routes.push(Route::to_local_pod(ep.address, ifindex));
            }
            None => out.problems.push(Problem::EndpointLinkMissing {
                namespace: ep.pod_namespace.clone(),
                pod: ep.pod_name.clone(),
                address: ep.address,
                host_ifname: ep.host_ifname.clone(),
            }),
        }
    }

    let remote: Vec<Route> = match view.remote {
        Remote::NodeRecords => static_routes(view, &mut out),
        Remote::Learned(learned) => learned
            .iter()
            .map(|(prefix, next_hop)| Route::learned(*prefix, *next_hop, view.uplink_ifindex))
            .collect(),
    };
    for route in remote {
        if let Some(route) = encapsulated(view, route, &mut out) {
            out.routes.push(route);
        }
    }
    out.keep_pod_routes = !view.kept.is_empty();
    for kept in view.kept {
        if !out.routes.iter().any(|r| r.dst == kept.dst) {
            out.routes.push(*kept);
        }
    }
    let others = view.nodes.iter().filter(|n| n.name != view.me.name);
    // In every mode: IP-in-IP is decapsulated from nodes whatever this
    // node's mode (a rolling mode switch), and in `vxlan` VXLAN too.
    out.tunnel_peers = others.clone().map(|n| n.underlay_ip).collect();
    if view.encap == Encap::Vxlan {
        out.vxlan_peers = others
            .map(|n| (n.underlay_ip, vtep_ip(n.pod_cidr)))
            .collect();
        out.vxlan_peers.sort();
    }

    let registered: BTreeSet<&str> = view
        .endpoints
        .iter()
        .map(|e| e.host_ifname.as_str())
        .collect();
    out.stale_links = view
        .links
        .keys()
        .filter(|name| !view.claimed_links.contains(*name) && !registered.contains(name.as_str()))
        .cloned()
        .collect();

    out.routes.sort();
    out
}

/// Whether `addr` is off the uplink's subnet (an unknown subnet counts as
/// one segment, as before the uplink had an address).
fn off_subnet(view: &ClusterView<'_>, addr: Ipv4Addr) -> bool {
    view.uplink_subnet
        .is_some_and(|subnet| !subnet.contains(addr))
}

/// The other nodes whose underlay address is off the uplink's subnet
/// (`uplink_subnet`): the addresses the shell looks up next hops for.
pub fn off_subnet_nodes(
    me: &NodeRecord,
    nodes: &[NodeRecord],
    uplink_subnet: Option<Ipv4Network>,
) -> BTreeSet<Ipv4Addr> {
    nodes
        .iter()
        .filter(|n| n.name != me.name)
        .map(|n| n.underlay_ip)
        .filter(|ip| uplink_subnet.is_some_and(|subnet| !subnet.contains(*ip)))
        .collect()
}

/// The underlay next hop towards another node at `node`, given the
/// kernel's route to it (output interface, gateway): on the uplink only
/// (the node itself when it is on a link after all); a route through
/// another interface or none leaves the node unreachable by IP-in-IP,
/// which [`desired_state`] reports.
pub fn underlay_next_hop(
    node: Ipv4Addr,
    route: Option<(u32, Option<Ipv4Addr>)>,
    uplink_ifindex: u32,
) -> Option<Ipv4Addr> {
    match route {
        Some((oif, gateway)) if oif == uplink_ifindex => Some(gateway.unwrap_or(node)),
        _ => None,
    }
}

/// The cluster nodes off the uplink's subnet that `encap` can carry pod
/// traffic to, hence whose pod routes (static or learned over BGP) this
/// node can install: in `vxlan` all of them (the device reaches any
/// address the node routes), in `ipip` those with an underlay next hop
/// (`next_hops`), in `none` none (a router between the subnets does not
/// know the pod routes).
pub fn tunnel_reachable(
    encap: Encap,
    off_subnet: &BTreeSet<Ipv4Addr>,
    next_hops: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) -> BTreeSet<Ipv4Addr> {
    match encap {
        Encap::Vxlan => off_subnet.clone(),
        Encap::Ipip => off_subnet
            .iter()
            .filter(|ip| next_hops.contains_key(ip))
            .copied()
            .collect(),
        Encap::None => BTreeSet::new(),
    }
}

/// The route to another node's pod CIDR as the encapsulation mode wants
/// it, given the plain route via the node's underlay address (`route`):
/// `ipip` keeps it (the uplink programs encapsulate what leaves through
/// it), adds it to the programs' map and caps its MTU at the pod MTU, so
/// the kernel answers an oversized DF packet with ICMP "fragmentation
/// needed" rather than the tunnel dropping it; towards a node off the
/// uplink's subnet it goes via the underlay next hop to that node
/// instead (the map still names the node). `vxlan` sends it into the
/// vxlan device towards the node's VTEP. A next hop that is no cluster
/// node (a router's route learned over BGP) stays native, as does, with
/// `crossSubnet`, a node on this node's underlay subnet. `None` (with a
/// problem) when the node cannot be reached.
fn encapsulated(view: &ClusterView<'_>, route: Route, out: &mut DesiredState) -> Option<Route> {
    let Some(gateway) = route.gateway else {
        return Some(route);
    };
    let Some(node) = view
        .nodes
        .iter()
        .find(|n| n.underlay_ip == gateway && n.name != view.me.name)
    else {
        return Some(route);
    };
    let off_subnet = off_subnet(view, node.underlay_ip);
    if view.encap == Encap::Ipip {
        let via = if off_subnet {
            let Some(&next_hop) = view.underlay_next_hops.get(&node.underlay_ip) else {
                out.problems.push(Problem::NoUnderlayRoute {
                    node: node.name.clone(),
                    underlay: node.underlay_ip,
                    cidr: route.dst,
                });
                return None;
            };
            next_hop
        } else {
            gateway
        };
        // The map holds every node's routes; the programs apply crossSubnet.
        out.pod_routes.insert(route.dst, gateway);
        if view.cross_subnet && !off_subnet {
            return Some(route);
        }
        return Some(
            Route {
                gateway: Some(via),
                ..route
            }
            .with_mtu(Some(view.pod_mtu)),
        );
    }
    if view.cross_subnet && !off_subnet {
        return Some(route);
    }
    match view.encap {
        Encap::None | Encap::Ipip => Some(route),
        Encap::Vxlan => match view.vxlan_ifindex {
            Some(ifindex) => Some(Route {
                protocol: route.protocol,
                ..Route::via_vxlan(route.dst, vtep_ip(node.pod_cidr), ifindex)
            }),
            None if off_subnet => {
                out.problems.push(Problem::NoVxlanDevice {
                    node: node.name.clone(),
                    cidr: route.dst,
                    routed_natively: false,
                });
                None
            }
            None => {
                out.problems.push(Problem::NoVxlanDevice {
                    node: node.name.clone(),
                    cidr: route.dst,
                    routed_natively: true,
                });
                Some(route)
            }
        },
    }
}

/// Static routing: every other node's pod CIDR via its underlay address,
/// refusing overlaps and, in mode `none`, nodes off the uplink's segment
/// (a router between the subnets does not know the pod routes). With
/// encapsulation such nodes are reached through the tunnel:
/// [`encapsulated`] routes IP-in-IP via the underlay next hop, VXLAN into
/// the device.
fn static_routes(view: &ClusterView<'_>, out: &mut DesiredState) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut taken: Vec<Ipv4Network> = vec![view.me.pod_cidr];
    let mut others: Vec<&NodeRecord> = view
        .nodes
        .iter()
        .filter(|n| n.name != view.me.name)
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    for node in others {
        if let Some(clash) = taken.iter().find(|c| c.overlaps(node.pod_cidr)) {
            out.problems.push(Problem::PodCidrOverlap {
                node: node.name.clone(),
                cidr: node.pod_cidr,
                clash: *clash,
            });
            continue;
        }
        if let Some(subnet) = view.uplink_subnet
            && !subnet.contains(node.underlay_ip)
            && view.encap == Encap::None
        {
            out.problems.push(Problem::NativeAcrossSubnets {
                node: node.name.clone(),
                underlay: node.underlay_ip,
                subnet,
            });
            continue;
        }
        taken.push(node.pod_cidr);
        routes.push(Route::to_pod_cidr(
            node.pod_cidr,
            node.underlay_ip,
            view.uplink_ifindex,
        ));
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataplane::names::host_ifname;

    fn node(name: &str, ip: &str, cidr: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            underlay_ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    fn endpoint(cid: &str, ip: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: cid.into(),
            ifname: "eth0".into(),
            node: "node1".into(),
            pod_name: format!("pod-{cid}"),
            pod_namespace: "default".into(),
            labels: Default::default(),
            address: ip.parse().unwrap(),
            host_ifname: host_ifname(cid, "eth0"),
            netns: String::new(),
            ports: Vec::new(),
        }
    }

    struct Fixture {
        me: NodeRecord,
        nodes: Vec<NodeRecord>,
        endpoints: Vec<EndpointRecord>,
        links: BTreeMap<String, u32>,
        claimed_links: BTreeSet<String>,
        remote: Remote<'static>,
        encap: Encap,
        cross_subnet: bool,
        kept: Vec<Route>,
        next_hops: BTreeMap<Ipv4Addr, Ipv4Addr>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let me = node("node1", "198.18.0.11", "10.244.1.0/24");
            Fixture {
                nodes: vec![me.clone(), node("node2", "198.18.0.12", "10.244.2.0/24")],
                me,
                endpoints: vec![],
                links: BTreeMap::new(),
                claimed_links: BTreeSet::new(),
                remote: Remote::NodeRecords,
                encap: Encap::None,
                cross_subnet: false,
                kept: vec![],
                next_hops: BTreeMap::new(),
            }
        }
        fn with_encap(encap: Encap) -> Fixture {
            Fixture {
                encap,
                ..Fixture::new()
            }
        }
        fn calc(&self) -> DesiredState {
            desired_state(&ClusterView {
                me: &self.me,
                uplink_ifindex: 2,
                uplink_subnet: Some("198.18.0.0/24".parse().unwrap()),
                underlay_next_hops: &self.next_hops,
                nodes: &self.nodes,
                remote: self.remote,
                endpoints: &self.endpoints,
                links: &self.links,
                claimed_links: &self.claimed_links,
                encap: self.encap,
                cross_subnet: self.cross_subnet,
                pod_mtu: 1480,
                vxlan_ifindex: Some(40),
                kept: &self.kept,
            })
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn ipip_routes_via_the_node_with_the_pod_mtu_and_fills_the_maps() {
        let mut f = Fixture::with_encap(Encap::Ipip);
        f.nodes.push(node("node3", "198.18.0.13", "10.244.3.0/24"));
        let d = f.calc();
        assert_eq!(
            d.routes,
            vec![
                Route::to_pod_cidr(net("10.244.2.0/24"), ip("198.18.0.12"), 2).with_mtu(Some(1480)),
                Route::to_pod_cidr(net("10.244.3.0/24"), ip("198.18.0.13"), 2).with_mtu(Some(1480)),
            ]
        );
        assert_eq!(
            d.pod_routes,
            [
                (net("10.244.2.0/24"), ip("198.18.0.12")),
                (net("10.244.3.0/24"), ip("198.18.0.13"))
            ]
            .into()
        );
        assert_eq!(
            d.tunnel_peers,
            [ip("198.18.0.12"), ip("198.18.0.13")].into()
        );
        assert!(d.vxlan_peers.is_empty());
    }

    #[test]
    fn vxlan_routes_into_the_device_towards_each_nodes_vtep() {
        let d = Fixture::with_encap(Encap::Vxlan).calc();
        assert_eq!(
            d.routes,
            vec![Route::via_vxlan(net("10.244.2.0/24"), ip("10.244.2.0"), 40)]
        );
        assert_eq!(d.vxlan_peers, vec![(ip("198.18.0.12"), ip("10.244.2.0"))]);
        assert!(d.pod_routes.is_empty());
        assert_eq!(d.tunnel_peers, [ip("198.18.0.12")].into());
    }

    #[test]
    fn vxlan_reaches_nodes_off_the_uplink_subnet() {
        let mut f = Fixture::with_encap(Encap::Vxlan);
        f.nodes.push(node("node4", "192.0.2.4", "10.244.4.0/24"));
        let d = f.calc();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert!(d.routes.contains(&Route::via_vxlan(
            net("10.244.4.0/24"),
            ip("10.244.4.0"),
            40
        )));
    }

    #[test]
    fn cross_subnet_keeps_same_subnet_nodes_native() {
        for encap in [Encap::Ipip, Encap::Vxlan] {
            let mut f = Fixture::with_encap(encap);
            f.cross_subnet = true;
            let d = f.calc();
            assert_eq!(
                d.routes,
                vec![Route::to_pod_cidr(
                    net("10.244.2.0/24"),
                    ip("198.18.0.12"),
                    2
                )],
                "{encap:?}"
            );
        }
    }

    /// node3 on 198.18.1.0/24, reached through the router 198.18.0.1.
    fn with_node_across_a_router(encap: Encap, cross_subnet: bool) -> Fixture {
        let mut f = Fixture::with_encap(encap);
        f.cross_subnet = cross_subnet;
        f.nodes.push(node("node3", "198.18.1.13", "10.244.3.0/24"));
        f.next_hops.insert(ip("198.18.1.13"), ip("198.18.0.1"));
        f
    }

    #[test]
    fn ipip_reaches_a_node_off_the_subnet_via_the_underlay_next_hop() {
        for cross_subnet in [false, true] {
            let d = with_node_across_a_router(Encap::Ipip, cross_subnet).calc();
            assert!(d.problems.is_empty(), "{:?}", d.problems);
            let to_node2 = Route::to_pod_cidr(net("10.244.2.0/24"), ip("198.18.0.12"), 2);
            assert_eq!(
                d.routes,
                vec![
                    if cross_subnet {
                        to_node2
                    } else {
                        to_node2.with_mtu(Some(1480))
                    },
                    // Via the router, with the pod MTU; the map names the node.
                    Route::to_pod_cidr(net("10.244.3.0/24"), ip("198.18.0.1"), 2)
                        .with_mtu(Some(1480)),
                ],
                "cross_subnet {cross_subnet}"
            );
            assert_eq!(
                d.pod_routes,
                [
                    (net("10.244.2.0/24"), ip("198.18.0.12")),
                    (net("10.244.3.0/24"), ip("198.18.1.13"))
                ]
                .into()
            );
            assert!(d.tunnel_peers.contains(&ip("198.18.1.13")));
        }
    }

    #[test]
    fn ipip_without_an_underlay_route_to_the_node_is_a_problem_not_a_route() {
        let mut f = with_node_across_a_router(Encap::Ipip, true);
        f.next_hops.clear();
        let d = f.calc();
        assert_eq!(d.routes.len(), 1);
        assert!(!d.pod_routes.contains_key(&net("10.244.3.0/24")));
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0].to_string().contains("node3")
                && d.problems[0].to_string().contains("no route"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn vxlan_cross_subnet_tunnels_only_to_the_other_subnet() {
        let d = with_node_across_a_router(Encap::Vxlan, true).calc();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(
            d.routes,
            vec![
                Route::to_pod_cidr(net("10.244.2.0/24"), ip("198.18.0.12"), 2),
                Route::via_vxlan(net("10.244.3.0/24"), ip("10.244.3.0"), 40),
            ]
        );
        assert!(
            d.vxlan_peers
                .contains(&(ip("198.18.1.13"), ip("10.244.3.0")))
        );
    }

    #[test]
    fn native_routing_across_subnets_is_refused_with_a_reason() {
        let d = with_node_across_a_router(Encap::None, true).calc();
        assert_eq!(
            d.routes,
            vec![Route::to_pod_cidr(
                net("10.244.2.0/24"),
                ip("198.18.0.12"),
                2
            )]
        );
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0].to_string().contains("node3")
                && d.problems[0].to_string().contains("--encap none"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn learned_routes_via_nodes_across_a_router_are_tunnelled() {
        static LEARNED: [(Ipv4Network, Ipv4Addr); 1] = [(
            Ipv4Network::new_checked(Ipv4Addr::new(10, 244, 3, 0), 24).unwrap(),
            Ipv4Addr::new(198, 18, 1, 13),
        )];
        let mut f = with_node_across_a_router(Encap::Ipip, true);
        f.remote = Remote::Learned(&LEARNED);
        let d = f.calc();
        assert_eq!(
            d.routes,
            vec![Route::learned(LEARNED[0].0, ip("198.18.0.1"), 2).with_mtu(Some(1480))]
        );
        assert_eq!(d.pod_routes, [(LEARNED[0].0, LEARNED[0].1)].into());
        let mut f = with_node_across_a_router(Encap::Vxlan, true);
        f.remote = Remote::Learned(&LEARNED);
        let d = f.calc();
        assert_eq!(
            d.routes,
            vec![Route {
                protocol: weft_dataplane::route::RTPROT_WEFT_BGP,
                ..Route::via_vxlan(LEARNED[0].0, ip("10.244.3.0"), 40)
            }]
        );
    }

    #[test]
    fn underlay_next_hops_only_through_the_uplink() {
        let node = ip("198.18.1.13");
        assert_eq!(
            underlay_next_hop(node, Some((2, Some(ip("198.18.0.1")))), 2),
            Some(ip("198.18.0.1"))
        );
        assert_eq!(underlay_next_hop(node, Some((2, None)), 2), Some(node));
        assert_eq!(
            underlay_next_hop(node, Some((5, Some(ip("192.0.2.1")))), 2),
            None
        );
        assert_eq!(underlay_next_hop(node, None, 2), None);
    }

    #[test]
    fn off_subnet_nodes_and_what_each_mode_reaches() {
        let f = with_node_across_a_router(Encap::Ipip, true);
        let mut nodes = f.nodes.clone();
        nodes.push(node("node4", "198.18.1.14", "10.244.4.0/24"));
        let off = off_subnet_nodes(&f.me, &nodes, Some(net("198.18.0.0/24")));
        assert_eq!(off, [ip("198.18.1.13"), ip("198.18.1.14")].into());
        assert!(off_subnet_nodes(&f.me, &nodes, None).is_empty());
        assert_eq!(
            tunnel_reachable(Encap::Ipip, &off, &f.next_hops),
            [ip("198.18.1.13")].into()
        );
        assert_eq!(tunnel_reachable(Encap::Vxlan, &off, &f.next_hops), off);
        assert!(tunnel_reachable(Encap::None, &off, &f.next_hops).is_empty());
    }

    #[test]
    fn routes_learned_from_routers_stay_native_and_outside_the_maps() {
        static LEARNED: [(Ipv4Network, Ipv4Addr); 2] = [
            (
                Ipv4Network::new_checked(Ipv4Addr::new(203, 0, 113, 0), 24).unwrap(),
                Ipv4Addr::new(198, 18, 0, 200),
            ),
            (
                Ipv4Network::new_checked(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap(),
                Ipv4Addr::new(198, 18, 0, 12),
            ),
        ];
        let mut f = Fixture::with_encap(Encap::Ipip);
        f.remote = Remote::Learned(&LEARNED);
        let d = f.calc();
        assert_eq!(
            d.routes,
            vec![
                Route::learned(LEARNED[1].0, LEARNED[1].1, 2).with_mtu(Some(1480)),
                Route::learned(LEARNED[0].0, LEARNED[0].1, 2),
            ]
        );
        assert_eq!(d.pod_routes, [(LEARNED[1].0, LEARNED[1].1)].into());
    }

    #[test]
    fn kept_routes_stay_until_something_learned_replaces_them() {
        static LEARNED: [(Ipv4Network, Ipv4Addr); 1] = [(
            Ipv4Network::new_checked(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap(),
            Ipv4Addr::new(198, 18, 0, 12),
        )];
        let mut f = Fixture::with_encap(Encap::Vxlan);
        f.remote = Remote::Learned(&LEARNED);
        let old = Route::via_vxlan(net("10.244.2.0/24"), ip("10.244.2.0"), 40);
        let other = Route::via_vxlan(net("10.244.3.0/24"), ip("10.244.3.0"), 40);
        f.kept = vec![old, other];
        let d = f.calc();
        assert!(d.keep_pod_routes);
        assert!(d.routes.contains(&other));
        assert_eq!(d.routes.iter().filter(|r| r.dst == old.dst).count(), 1);
    }

    #[test]
    fn local_pods_get_host_routes_and_guard_entries() {
        let mut f = Fixture::new();
        f.endpoints.push(endpoint("a", "10.244.1.2"));
        f.links.insert(host_ifname("a", "eth0"), 7);
        f.claimed_links.insert(host_ifname("a", "eth0"));
        let d = f.calc();
        assert!(
            d.routes
                .contains(&Route::to_local_pod("10.244.1.2".parse().unwrap(), 7))
        );
        assert_eq!(d.guard, [(7, "10.244.1.2".parse().unwrap())].into());
        assert_eq!(d.guarded_links, vec![(host_ifname("a", "eth0"), 7)]);
        assert!(d.stale_links.is_empty());
        assert!(d.problems.is_empty());
    }

    #[test]
    fn other_nodes_pod_cidrs_route_via_their_underlay_address() {
        let d = Fixture::new().calc();
        assert_eq!(
            d.routes,
            vec![Route::to_pod_cidr(
                "10.244.2.0/24".parse().unwrap(),
                "198.18.0.12".parse().unwrap(),
                2
            )]
        );
    }

    #[test]
    fn overlapping_and_off_subnet_nodes_are_refused_with_a_reason() {
        let mut f = Fixture::new();
        f.nodes
            .push(node("node3", "198.18.0.13", "10.244.1.128/25"));
        f.nodes.push(node("node4", "192.0.2.4", "10.244.4.0/24"));
        let d = f.calc();
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.problems.len(), 2);
        assert!(
            d.problems[0].to_string().contains("node3")
                && d.problems[0].to_string().contains("overlaps")
        );
        assert!(
            d.problems[1].to_string().contains("node4")
                && d.problems[1].to_string().contains("outside")
        );
    }

    #[test]
    fn in_bgp_mode_remote_routes_are_the_learned_ones() {
        static LEARNED: [(Ipv4Network, Ipv4Addr); 1] = [(
            Ipv4Network::new_checked(Ipv4Addr::new(203, 0, 113, 0), 24).unwrap(),
            Ipv4Addr::new(198, 18, 0, 200),
        )];
        let mut f = Fixture::new();
        f.remote = Remote::Learned(&LEARNED);
        let d = f.calc();
        assert_eq!(
            d.routes,
            vec![Route::learned(LEARNED[0].0, LEARNED[0].1, 2)]
        );
    }

    #[test]
    fn endpoint_without_its_veth_is_a_problem_not_a_route() {
        let mut f = Fixture::new();
        f.endpoints.push(endpoint("a", "10.244.1.2"));
        let d = f.calc();
        assert!(d.guard.is_empty());
        assert_eq!(d.routes.len(), 1);
        assert!(d.problems[0].to_string().contains("missing"));
    }

    #[test]
    fn links_of_unclaimed_attachments_are_stale_but_in_flight_adds_are_not() {
        let mut f = Fixture::new();
        // An ADD in flight: address claimed, veth made, not registered yet.
        f.claimed_links.insert(host_ifname("inflight", "eth0"));
        f.links.insert(host_ifname("inflight", "eth0"), 8);
        // A leftover of a failed ADD whose address was released.
        f.links.insert(host_ifname("gone", "eth0"), 9);
        let d = f.calc();
        assert_eq!(d.stale_links, vec![host_ifname("gone", "eth0")]);
    }
}
