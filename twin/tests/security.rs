//! Who may put packets into the pod network: a pod only with its own
//! source address, the underlay only as IP-in-IP from a cluster node.

mod common;

use common::{MODES, cluster, udp_recv, udp_socket};
use weft_common::uplink::encapsulate;
use weft_common::verdict::Counter;
use weft_twin::wire::{self, Mac, Probe};
use weft_twin::{Cluster, Encap, PodId};

/// An underlay host that is no node.
const OUTSIDER: [u8; 4] = [198, 18, 0, 66];
const OUTSIDER_MAC: Mac = Mac([0x02, 0x00, 198, 18, 0, 66]);

fn udp_frames_from(c: &Cluster, pod: PodId, src: [u8; 4]) -> usize {
    c.pod(pod)
        .received()
        .iter()
        .filter_map(|f| wire::PacketSummary::of_frame(f))
        .filter(|p| p.src == src && p.protocol == 17)
        .count()
}

#[test]
fn a_pod_cannot_send_from_another_address() {
    for encap in MODES {
        let mut c = cluster(encap);
        let a = c.add_pod(0);
        let neighbour = c.add_pod(0);
        let b = c.add_pod(1);
        let hb = udp_socket(&mut c, b, 53);
        let hn = udp_socket(&mut c, neighbour, 53);
        let (ip_a, ip_b, ip_n) = (
            c.pod_ip(a).octets(),
            c.pod_ip(b).octets(),
            c.pod_ip(neighbour).octets(),
        );
        c.clear_capture();
        let forged = [[10, 244, 1, 99], ip_n, ip_b, [8, 8, 8, 8]];
        for src in forged {
            c.send_raw_from_pod(a, &Probe::udp(src, ip_b, 53).packet());
            c.send_raw_from_pod(a, &Probe::udp(src, ip_n, 53).packet());
        }
        assert!(udp_recv(&mut c, b, hb, 20).is_none(), "{encap:?}");
        assert!(udp_recv(&mut c, neighbour, hn, 20).is_none(), "{encap:?}");
        assert_eq!(
            c.counters(0).get(Counter::DropSpoofedSource),
            2 * forged.len() as u64,
            "{encap:?}: {}",
            c.counters(0)
        );
        assert!(
            c.capture().is_empty(),
            "{encap:?}: nothing reached the underlay"
        );
        for src in forged {
            assert_eq!(udp_frames_from(&c, b, src), 0);
            assert_eq!(udp_frames_from(&c, neighbour, src), 0);
        }

        // The same packet from the pod's own address goes through.
        c.send_raw_from_pod(a, &Probe::udp(ip_a, ip_b, 53).packet());
        let (_, from) = udp_recv(&mut c, b, hb, 20).expect("the genuine packet arrives");
        assert_eq!(from.port, 40000);
        assert_eq!(c.counters(0).get(Counter::Pass), 1, "{encap:?}");
    }
}

/// IP-in-IP from `outer_src` to `node`, carrying `inner`, as a frame put
/// on the wire by the outsider's NIC.
fn ipip_frame(c: &Cluster, outer_src: [u8; 4], node: usize, inner: &[u8]) -> Vec<u8> {
    let outer = encapsulate(inner, outer_src, c.node_ip(node).octets(), 64).unwrap();
    let mut packet = outer.to_vec();
    packet.extend_from_slice(inner);
    wire::ethernet_frame(
        c.node_mac(node),
        OUTSIDER_MAC,
        wire::ETHERTYPE_IPV4,
        &packet,
    )
}

#[test]
fn ip_in_ip_from_a_non_node_never_reaches_a_pod() {
    for encap in MODES {
        let mut c = cluster(encap);
        let a = c.add_pod(0);
        let b = c.add_pod(1);
        let hb = udp_socket(&mut c, b, 53);
        // Looks like pod a talking to pod b.
        let inner = Probe::udp(c.pod_ip(a).octets(), c.pod_ip(b).octets(), 53).packet();
        c.inject_underlay(ipip_frame(&c, OUTSIDER, 1, &inner));
        assert!(udp_recv(&mut c, b, hb, 20).is_none(), "{encap:?}: injected");
        assert_eq!(c.counters(1).get(Counter::DropNotFromNode), 1, "{encap:?}");
        assert_eq!(udp_frames_from(&c, b, c.pod_ip(a).octets()), 0);
        assert_eq!(c.kernel_stats(1).forwarded, 0);
    }
}

/// The control: the very same packet with a node's address as outer
/// source is decapsulated and delivered.
#[test]
fn the_same_ip_in_ip_from_a_node_address_is_delivered() {
    let mut c = cluster(Encap::Ipip);
    let a = c.add_pod(0);
    let b = c.add_pod(1);
    let hb = udp_socket(&mut c, b, 53);
    let inner = Probe::udp(c.pod_ip(a).octets(), c.pod_ip(b).octets(), 53).packet();
    c.inject_underlay(ipip_frame(&c, c.node_ip(0).octets(), 1, &inner));
    let (got, _) = udp_recv(&mut c, b, hb, 20).expect("decapsulated and delivered");
    assert_eq!(got, inner[28..]);
    assert_eq!(c.counters(1).get(Counter::Decapsulate), 1);
    assert_eq!(c.counters(1).get(Counter::DropNotFromNode), 0);

    // In every mode: a node part-way through a rolling mode switch still
    // takes what the others send.
    for encap in [Encap::Vxlan, Encap::None] {
        let mut c = cluster(encap);
        let a = c.add_pod(0);
        let b = c.add_pod(1);
        let inner = Probe::udp(c.pod_ip(a).octets(), c.pod_ip(b).octets(), 53).packet();
        let hb = udp_socket(&mut c, b, 53);
        c.inject_underlay(ipip_frame(&c, c.node_ip(0).octets(), 1, &inner));
        assert!(udp_recv(&mut c, b, hb, 20).is_some(), "{encap:?}");
        assert_eq!(c.counters(1).get(Counter::Decapsulate), 1, "{encap:?}");
    }
}

/// VXLAN to `node` from the outsider, VNI `vni`, carrying `inner` to the
/// node's VTEP MAC.
fn vxlan_frame(c: &Cluster, node: usize, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame_with(c, OUTSIDER, OUTSIDER_MAC, node, vni, inner)
}

/// [`vxlan_frame`] from any source.
fn vxlan_frame_with(
    c: &Cluster,
    src: [u8; 4],
    src_mac: Mac,
    node: usize,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let node_ip = c.node_ip(node).octets();
    let inner_frame = wire::ethernet_frame(
        Mac::vtep(node_ip),
        Mac([0x02, 0x57, 1, 2, 3, 4]),
        wire::ETHERTYPE_IPV4,
        inner,
    );
    let mut payload = wire::vxlan_header(vni).to_vec();
    payload.extend_from_slice(&inner_frame);
    let udp = wire::udp_datagram(src, node_ip, 40000, wire::VXLAN_PORT, &payload, false);
    let packet = wire::ipv4_packet(wire::host_repr(src, node_ip, 17, 1, false), &udp);
    wire::ethernet_frame(c.node_mac(node), src_mac, wire::ETHERTYPE_IPV4, &packet)
}

/// Linux's vxlan device (without `learning`) takes VXLAN with the right
/// VNI from any source; in mode `vxlan` the uplink program lets VXLAN in
/// only from cluster nodes, so a non-node cannot inject through the device.
#[test]
fn vxlan_from_a_non_node_never_reaches_the_pod_and_is_counted() {
    let mut c = cluster(Encap::Vxlan);
    let a = c.add_pod(0);
    let b = c.add_pod(1);
    let hb = udp_socket(&mut c, b, 53);
    let inner = Probe::udp(c.pod_ip(a).octets(), c.pod_ip(b).octets(), 53).packet();

    c.inject_underlay(vxlan_frame(&c, 1, wire::VXLAN_VNI, &inner));
    assert!(
        udp_recv(&mut c, b, hb, 20).is_none(),
        "VXLAN from a non-node reached the pod"
    );
    assert_eq!(c.counters(1).get(Counter::DropNotFromNode), 1);
    assert_eq!(c.kernel_stats(1).vxlan_decapsulated, 0);

    // From a node, a wrong VNI is the device's to drop...
    let (node1, node1_mac) = (c.node_ip(0).octets(), c.node_mac(0));
    c.inject_underlay(vxlan_frame_with(&c, node1, node1_mac, 1, 4097, &inner));
    assert!(
        udp_recv(&mut c, b, hb, 20).is_none(),
        "a wrong VNI is dropped"
    );
    assert_eq!(c.kernel_stats(1).vxlan_dropped, 1);
    // ...and the right one is delivered, so the check above can fail.
    let from_node = vxlan_frame_with(&c, node1, node1_mac, 1, wire::VXLAN_VNI, &inner);
    c.inject_underlay(from_node);
    assert!(
        udp_recv(&mut c, b, hb, 20).is_some(),
        "VXLAN from a node must be delivered"
    );
}
