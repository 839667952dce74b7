//! crossSubnet: native on the node's own underlay subnet, encapsulated
//! towards nodes on another subnet (reached through a router).

mod common;

use common::{tcp_both_ways, udp_request_reply};
use weft_common::ipv4::{PROTOCOL_IPIP, PROTOCOL_UDP};
use weft_common::verdict::Counter;
use weft_twin::wire::{IcmpError, PacketSummary, VXLAN_PORT};
use weft_twin::{Cluster, ClusterConfig, Encap};

fn cross_subnet(encap: Encap, far_nodes: usize) -> Cluster {
    Cluster::new(ClusterConfig {
        encap,
        cross_subnet: true,
        far_nodes,
        ..ClusterConfig::default()
    })
}

fn underlay(c: &Cluster) -> Vec<PacketSummary> {
    c.capture().iter().filter_map(|f| f.summary()).collect()
}

fn is_pod(ip: [u8; 4]) -> bool {
    ip[..2] == [10, 244]
}

#[test]
fn one_subnet_with_cross_subnet_is_native_on_the_underlay() {
    for encap in [Encap::Ipip, Encap::Vxlan] {
        let mut c = cross_subnet(encap, 0);
        let a = c.add_pod(0);
        let b = c.add_pod(1);
        tcp_both_ways(&mut c, a, b, 5000, 100 * 1024);
        udp_request_reply(&mut c, b, a, 7000);
        let packets = underlay(&c);
        assert!(!packets.is_empty());
        for p in &packets {
            assert!(
                is_pod(p.src) && is_pod(p.dst) && p.inner.is_none(),
                "{encap:?}: {p}"
            );
        }
        assert_eq!(c.counters(0).get(Counter::Encapsulate), 0);
        assert_eq!(c.kernel_stats(0).vxlan_encapsulated, 0);
        // Native routes carry no tunnel MTU: the pod MTU still leaves room.
        assert!(c.capture().iter().all(|f| f.frame.len() <= 1514 - 20));
    }
}

#[test]
fn across_subnets_traffic_is_encapsulated_through_the_router() {
    for encap in [Encap::Ipip, Encap::Vxlan] {
        let mut c = cross_subnet(encap, 1);
        assert_eq!(c.node_ip(2).octets(), [198, 18, 1, 3], "node3 is far");
        let a = c.add_pod(0);
        let near = c.add_pod(1);
        let far = c.add_pod(2);

        udp_request_reply(&mut c, a, near, 7000);
        for p in underlay(&c) {
            assert!(p.inner.is_none() && is_pod(p.dst), "{encap:?} near: {p}");
        }
        c.clear_capture();

        tcp_both_ways(&mut c, a, far, 5000, 100 * 1024);
        udp_request_reply(&mut c, far, a, 7100);
        let packets = underlay(&c);
        assert!(!packets.is_empty());
        let nodes = [c.node_ip(0).octets(), c.node_ip(2).octets()];
        for p in &packets {
            let shape = match encap {
                Encap::Ipip => p.protocol == PROTOCOL_IPIP,
                _ => p.protocol == PROTOCOL_UDP && p.ports.is_some_and(|(_, d)| d == VXLAN_PORT),
            };
            assert!(shape, "{encap:?} far: {p}");
            assert!(nodes.contains(&p.src) && nodes.contains(&p.dst), "{p}");
            assert!(p.inner.is_some_and(|i| is_pod(i.src) && is_pod(i.dst)));
        }
        // Each packet crossed the wire twice: to the router, from it.
        let ttls: Vec<u8> = c
            .capture()
            .iter()
            .filter(|f| f.summary().is_some())
            .map(|f| f.frame[14 + 8])
            .collect();
        assert!(ttls.contains(&64) && ttls.contains(&63), "{ttls:?}");
        // And the largest is still the uplink MTU.
        assert_eq!(c.capture().iter().map(|f| f.frame.len()).max(), Some(1514));
    }
}

/// `none` cannot reach a node on another subnet: the agent installs no
/// route for it (static routing needs one segment), so the pod gets ICMP
/// "network unreachable" from its node.
#[test]
fn none_has_no_route_across_subnets() {
    let mut c = Cluster::new(ClusterConfig {
        encap: Encap::None,
        far_nodes: 1,
        ..ClusterConfig::default()
    });
    let a = c.add_pod(0);
    let far = c.add_pod(2);
    let probe = weft_twin::wire::Probe::udp(c.pod_ip(a).octets(), c.pod_ip(far).octets(), 53);
    c.send_raw_from_pod(a, &probe.packet());
    let errors: Vec<IcmpError> = c
        .pod(a)
        .received()
        .iter()
        .filter_map(|f| IcmpError::parse_frame(f))
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].kind, errors[0].code), (3, 0));
    assert_eq!(errors[0].from, c.node_ip(0).octets());
    assert_eq!(c.kernel_stats(0).no_route, 1);
    assert!(c.pod(far).received().is_empty());
}
