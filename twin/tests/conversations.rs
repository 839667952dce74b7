//! Real TCP and UDP conversations between smoltcp pods, across nodes and
//! on one node, in each encapsulation mode, with what the underlay carried
//! checked against the mode.

mod common;

use common::{MODES, cluster, tcp_both_ways, udp_request_reply};
use weft_common::ipv4::{PROTOCOL_IPIP, PROTOCOL_UDP};
use weft_common::verdict::Counter;
use weft_twin::wire::{PacketSummary, VXLAN_PORT};
use weft_twin::{Cluster, ClusterConfig, Encap};

const KIB_200: usize = 200 * 1024;

fn is_node(c: &Cluster, ip: [u8; 4]) -> bool {
    (0..c.node_count()).any(|n| c.node_ip(n).octets() == ip)
}

fn is_pod(ip: [u8; 4]) -> bool {
    ip[..2] == [10, 244]
}

/// The IPv4 packets the underlay carried.
fn underlay_packets(c: &Cluster) -> Vec<PacketSummary> {
    c.capture().iter().filter_map(|f| f.summary()).collect()
}

/// Every IPv4 frame on the underlay has the shape `encap` gives pod
/// traffic, and there were some.
fn assert_underlay_shape(c: &Cluster, encap: Encap) {
    let packets = underlay_packets(c);
    assert!(!packets.is_empty(), "{encap:?}: nothing on the underlay");
    for p in &packets {
        let ok = match encap {
            Encap::Ipip => {
                p.protocol == PROTOCOL_IPIP
                    && is_node(c, p.src)
                    && is_node(c, p.dst)
                    && p.inner.is_some_and(|i| is_pod(i.src) && is_pod(i.dst))
            }
            Encap::Vxlan => {
                p.protocol == PROTOCOL_UDP
                    && p.ports.is_some_and(|(_, dst)| dst == VXLAN_PORT)
                    && is_node(c, p.src)
                    && is_node(c, p.dst)
                    && !p.dont_fragment
                    && p.inner.is_some_and(|i| is_pod(i.src) && is_pod(i.dst))
            }
            Encap::None => is_pod(p.src) && is_pod(p.dst) && p.inner.is_none(),
        };
        assert!(ok, "{encap:?}: unexpected on the underlay: {p}");
    }
}

#[test]
fn pods_on_different_nodes_talk_tcp_and_udp_in_every_mode() {
    for encap in MODES {
        let mut c = cluster(encap);
        let a = c.add_pod(0);
        let b = c.add_pod(1);
        let d = c.add_pod(2);
        tcp_both_ways(&mut c, a, b, 5000, KIB_200);
        udp_request_reply(&mut c, a, b, 7000);
        udp_request_reply(&mut c, d, a, 7100);
        assert_underlay_shape(&c, encap);

        // The uplink programs did the mode's work, and only that.
        let (encapsulated, decapsulated) = (
            c.counters(0).get(Counter::Encapsulate),
            c.counters(1).get(Counter::Decapsulate),
        );
        match encap {
            Encap::Ipip => assert!(encapsulated > 100 && decapsulated > 100, "{encap:?}"),
            _ => assert_eq!((encapsulated, decapsulated), (0, 0), "{encap:?}"),
        }
        if encap == Encap::Vxlan {
            assert!(c.kernel_stats(0).vxlan_encapsulated > 100);
            assert!(c.kernel_stats(1).vxlan_decapsulated > 100);
        }
        // Every frame from a pod passed the guard; nothing was dropped.
        for node in 0..3 {
            let counters = c.counters(node);
            assert!(counters.get(Counter::Pass) > 0, "node {node}: {counters}");
            assert!(
                counters.get(Counter::ArpPass) > 0,
                "pods ARP for 169.254.1.1"
            );
            for (counter, value) in counters.iter() {
                if counter.name().starts_with("drop") {
                    assert_eq!(value, 0, "{encap:?} node {node}: {counters}");
                }
            }
        }
    }
}

#[test]
fn pods_on_one_node_talk_without_touching_the_underlay() {
    for encap in MODES {
        let mut c = cluster(encap);
        let a = c.add_pod(1);
        let b = c.add_pod(1);
        tcp_both_ways(&mut c, a, b, 5000, KIB_200);
        udp_request_reply(&mut c, b, a, 7000);
        assert!(
            underlay_packets(&c).is_empty(),
            "{encap:?}: same-node traffic left the node"
        );
        assert_eq!(
            c.kernel_stats(1).forwarded,
            c.counters(1).get(Counter::Pass)
        );
    }
}

#[test]
fn pods_on_all_nodes_talk_at_once() {
    let mut c = cluster(Encap::Ipip);
    let pods: Vec<_> = (0..3).flat_map(|n| [c.add_pod(n), c.add_pod(n)]).collect();
    for (i, &a) in pods.iter().enumerate() {
        let b = pods[(i + 3) % pods.len()];
        udp_request_reply(&mut c, a, b, 7000 + 10 * i as u16);
    }
    assert_underlay_shape(&c, Encap::Ipip);
}

/// Three IP-in-IP nodes, with the direct redirect on or off.
fn ipip(direct_redirect: bool) -> Cluster {
    Cluster::new(ClusterConfig {
        direct_redirect,
        ..ClusterConfig::default()
    })
}

#[test]
fn direct_redirect_hands_decapsulated_packets_to_the_pod_past_the_stack() {
    let mut on = ipip(true);
    let a = on.add_pod(0);
    let b = on.add_pod(1);
    tcp_both_ways(&mut on, a, b, 5000, KIB_200);
    udp_request_reply(&mut on, a, b, 7000);
    assert_underlay_shape(&on, Encap::Ipip);
    for node in [0, 1] {
        let counters = on.counters(node);
        // Every IP-in-IP packet went straight to the pod: the stack only
        // forwarded what the node's own pod sent.
        assert!(counters.get(Counter::Redirect) > 100, "{counters}");
        assert_eq!(counters.get(Counter::Decapsulate), 0, "{counters}");
        assert_eq!(
            on.kernel_stats(node).forwarded,
            counters.get(Counter::Pass),
            "node {node}"
        );
        for (counter, value) in counters.iter() {
            if counter.name().starts_with("drop") {
                assert_eq!(value, 0, "node {node}: {counters}");
            }
        }
    }

    // Off, the stack forwards both ways; the redirect counts nothing.
    let mut off = ipip(false);
    let (a2, b2) = (off.add_pod(0), off.add_pod(1));
    tcp_both_ways(&mut off, a2, b2, 5000, KIB_200);
    udp_request_reply(&mut off, a2, b2, 7000);
    let counters = off.counters(1);
    assert_eq!(counters.get(Counter::Redirect), 0);
    assert_eq!(
        off.kernel_stats(1).forwarded,
        counters.get(Counter::Pass) + counters.get(Counter::Decapsulate)
    );
}

#[test]
fn a_redirected_packet_reaches_the_pod_as_the_stack_would_have_forwarded_it() {
    // The same exchange in two clusters: the pods receive the same bytes
    // (MACs, TTL, header checksum) whether the stack forwarded them or the
    // uplink redirected them.
    let received = |direct_redirect: bool| {
        let mut c = ipip(direct_redirect);
        let a = c.add_pod(0);
        let b = c.add_pod(2);
        udp_request_reply(&mut c, a, b, 7000);
        udp_request_reply(&mut c, b, a, 7100);
        assert_eq!(
            c.counters(2).get(Counter::Redirect) > 0,
            direct_redirect,
            "{}",
            c.counters(2)
        );
        [c.pod(a).received().to_vec(), c.pod(b).received().to_vec()]
    };
    let (on, off) = (received(true), received(false));
    assert!(on[1].len() >= 2);
    assert_eq!(on, off);
}
