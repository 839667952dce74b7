//! MTU: full-size segments at the pod MTU cross in every mode and fill the
//! uplink exactly; what is larger gets the kernel's answer (ICMP
//! "fragmentation needed" for DF, fragments otherwise), or is refused by
//! the veth or the uplink program where the kernel path would refuse it.

mod common;

use common::{MODES, cluster, tcp_both_ways, udp_recv, udp_socket};
use weft_common::verdict::Counter;
use weft_twin::smoltcp::socket::udp;
use weft_twin::smoltcp::wire::{IpAddress, IpEndpoint};
use weft_twin::wire::{IcmpError, PacketSummary, Probe};
use weft_twin::{Cluster, ClusterConfig, Encap, PodId, RouteDecision, Step};

fn pod_mtu(encap: Encap, uplink: u16) -> u16 {
    uplink - encap.overhead()
}

/// The ICMP errors the pod received.
fn icmp_errors(c: &Cluster, pod: PodId) -> Vec<IcmpError> {
    c.pod(pod)
        .received()
        .iter()
        .filter_map(|f| IcmpError::parse_frame(f))
        .collect()
}

fn largest_on_underlay(c: &Cluster) -> usize {
    c.capture().iter().map(|f| f.frame.len()).max().unwrap_or(0)
}

#[test]
fn full_size_segments_cross_and_fill_the_uplink_exactly() {
    for (encap, uplink) in MODES
        .into_iter()
        .map(|e| (e, 1500))
        .chain([(Encap::Ipip, 9000), (Encap::Vxlan, 9000)])
    {
        let mut c = Cluster::new(ClusterConfig {
            encap,
            uplink_mtu: uplink,
            ..ClusterConfig::default()
        });
        let a = c.add_pod(0);
        let b = c.add_pod(2);
        tcp_both_ways(&mut c, a, b, 5000, 300 * 1024);
        assert_eq!(
            largest_on_underlay(&c),
            usize::from(uplink) + 14,
            "{encap:?} MTU {uplink}: the largest frame is the uplink MTU plus Ethernet"
        );
        let largest_inner = c
            .capture()
            .iter()
            .filter_map(|f| f.summary())
            .map(|p| match p.inner {
                Some(_) => p.total_len - encap.overhead(),
                None => p.total_len,
            })
            .max();
        assert_eq!(largest_inner, Some(pod_mtu(encap, uplink)), "{encap:?}");
        assert_eq!(c.kernel_stats(0).frag_needed_sent, 0);
        assert_eq!(c.kernel_stats(0).fragments_created, 0);
    }
}

/// A pod that raised its own MTU above the pod MTU sends a DF datagram of
/// pod MTU + 1 (which the veth still takes: it allows 4 bytes for a VLAN
/// tag). The node's route MTU stops it: ICMP "fragmentation needed" from
/// the node's underlay address with next-hop MTU = the pod MTU, as
/// Linux's `ip_forward` answers; the destination sees nothing of it.
#[test]
fn df_above_the_pod_mtu_gets_fragmentation_needed_from_the_node() {
    for encap in MODES {
        let mut c = cluster(encap);
        let mtu = pod_mtu(encap, 1500);
        let big = c.add_pod_with_mtu(0, 9000);
        let b = c.add_pod(1);
        let hb = udp_socket(&mut c, b, 6001);
        let ha = udp_socket(&mut c, big, 6000);
        let to_b = IpEndpoint::new(IpAddress::Ipv4(c.pod_ip(b)), 6001);
        c.clear_capture();

        // IPv4 20 + UDP 8 + payload = pod MTU + 1; smoltcp always sets DF.
        let payload = vec![0xab; usize::from(mtu) + 1 - 28];
        c.pod_mut(big)
            .sockets()
            .get_mut::<udp::Socket>(ha)
            .send_slice(&payload, to_b)
            .unwrap();
        assert!(
            udp_recv(&mut c, b, hb, 50).is_none(),
            "{encap:?}: too big crossed"
        );

        let errors = icmp_errors(&c, big);
        assert_eq!(errors.len(), 1, "{encap:?}: one ICMP error, got {errors:?}");
        let e = &errors[0];
        assert!(e.is_frag_needed(), "{encap:?}: {e:?}");
        assert_eq!(e.mtu, mtu, "{encap:?}: next-hop MTU is the route's");
        assert_eq!(
            e.from,
            c.node_ip(0).octets(),
            "from the node's underlay address"
        );
        assert_eq!(e.quoted.dst, c.pod_ip(b).octets());
        assert_eq!(e.quoted.total_len, mtu + 1);
        assert_eq!(c.kernel_stats(0).frag_needed_sent, 1);
        assert!(
            c.capture().iter().all(|f| f.frame.len() <= 1514),
            "{encap:?}: nothing oversized on the wire"
        );
        // Nothing the eBPF side had to refuse.
        assert_eq!(c.counters(0).get(Counter::DropTooBig), 0);

        // Exactly the pod MTU from the same pod crosses.
        let payload = vec![0xcd; usize::from(mtu) - 28];
        c.pod_mut(big)
            .sockets()
            .get_mut::<udp::Socket>(ha)
            .send_slice(&payload, to_b)
            .unwrap();
        let (got, _) = udp_recv(&mut c, b, hb, 50).expect("a pod-MTU datagram crosses");
        assert_eq!(got, payload);
    }
}

/// Without DF the node fragments to the route MTU (as `ip_forward` does);
/// the fragments cross (encapsulated one by one) and the receiving pod's
/// stack reassembles the datagram.
#[test]
fn no_df_above_the_pod_mtu_is_fragmented_and_reassembled() {
    for encap in MODES {
        let mut c = cluster(encap);
        let mtu = pod_mtu(encap, 1500);
        let big = c.add_pod_with_mtu(0, 9000);
        let b = c.add_pod(1);
        let hb = udp_socket(&mut c, b, 53);
        let probe = Probe::udp(c.pod_ip(big).octets(), c.pod_ip(b).octets(), 53)
            .with_len(mtu + 2)
            .with_df(false);
        c.send_raw_from_pod(big, &probe.packet());
        let (got, from) = udp_recv(&mut c, b, hb, 50).expect("the datagram is reassembled");
        assert_eq!(got.len(), usize::from(mtu) + 2 - 28);
        assert_eq!(got, probe.packet()[28..]);
        assert_eq!(from.port, 40000);
        assert_eq!(c.kernel_stats(0).fragments_created, 2, "{encap:?}");
        let fragments = c
            .capture()
            .iter()
            .filter_map(|f| f.summary())
            .filter(|p| p.inner.map_or(p.fragment, |inner| inner.fragment))
            .count();
        assert_eq!(
            fragments, 2,
            "{encap:?}: the two fragments cross the underlay"
        );
        assert!(c.capture().iter().all(|f| f.frame.len() <= 1514));
    }
}

/// Beyond the VLAN allowance the veth itself refuses the frame (Linux's
/// `is_skb_forwardable`): no hook runs, no ICMP comes back.
#[test]
fn frames_beyond_the_veth_mtu_never_reach_the_host() {
    let mut c = cluster(Encap::Ipip);
    let big = c.add_pod_with_mtu(0, 9000);
    let b = c.add_pod(1);
    let probe = Probe::udp(c.pod_ip(big).octets(), c.pod_ip(b).octets(), 53).with_len(1480 + 5);
    c.send_raw_from_pod(big, &probe.packet());
    c.step();
    assert_eq!(c.kernel_stats(0).veth_too_big, 1);
    assert_eq!(
        c.counters(0).get(Counter::Pass),
        0,
        "the guard never saw it"
    );
    assert!(icmp_errors(&c, big).is_empty());
    assert!(c.capture().is_empty());
}

/// Without the route MTU the agent sets, a DF packet of pod MTU + 1 gets
/// past the kernel (1481 fits the uplink's 1500) and reaches the uplink
/// program, which cannot fit it with its outer header: dropped and counted
/// `drop_too_big`, and no ICMP (tc does not send one). This is why the
/// agent puts the pod MTU on IP-in-IP routes.
#[test]
fn without_the_route_mtu_the_uplink_program_drops_too_big() {
    let mut c = cluster(Encap::Ipip);
    for route in &mut c.tables_mut(0).routes {
        route.mtu = None;
    }
    let big = c.add_pod_with_mtu(0, 9000);
    let b = c.add_pod(1);
    c.set_recording(true);
    let probe = Probe::udp(c.pod_ip(big).octets(), c.pod_ip(b).octets(), 53).with_len(1481);
    c.send_raw_from_pod(big, &probe.packet());
    for _ in 0..5 {
        c.step();
    }
    assert_eq!(c.counters(0).get(Counter::DropTooBig), 1);
    assert!(icmp_errors(&c, big).is_empty());
    assert!(c.pod(b).received().is_empty());
    let steps = c.take_steps();
    let last = steps
        .iter()
        .rev()
        .find(|s| matches!(s, Step::UplinkEgress { .. }))
        .expect("the uplink program ran");
    assert_eq!(last.counter(), Some(Counter::DropTooBig), "{last}");
    assert!(
        steps
            .iter()
            .any(|s| matches!(s.route(), Some(RouteDecision::ViaUplink { mtu: 1500, .. })))
    );
    let packet = PacketSummary::of_packet(&probe.packet()).unwrap();
    assert!(last.to_string().contains(&packet.to_string()), "{last}");
}
