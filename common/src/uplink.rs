//! The uplink's decisions: IP-in-IP encapsulation of pod traffic leaving
//! for another node, and decapsulation of what other nodes send.
//!
//! Written once for the tc programs on the uplink and for the userspace
//! twin: each function reads the frame through a [`PacketReader`], asks
//! the maps through [`RouteLookup`] / [`NodeSet`], and returns one
//! [`UplinkVerdict`]. Frames start with an Ethernet header, as tc sees them.
//! No allocation, no panics, one bounded loop (IPv4 options in the checksum).

use crate::ipv4::{self, Ipv4Header, Ipv4Repr};
use crate::lookup::{NodeSet, RouteLookup};
use crate::maps::{Encap, NodeConfig};
use crate::packet::{PacketReader, ethernet};
use crate::verdict::{DropReason, UplinkPassReason, UplinkVerdict};

/// Bytes IP-in-IP adds to a packet: the outer header, without options.
pub const IPIP_OVERHEAD: u16 = ipv4::MIN_HEADER_LEN as u16;

/// The UDP port of VXLAN (IANA's 4789), where mode `vxlan`'s device listens.
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN adds: outer IPv4, UDP, the VXLAN header, inner Ethernet.
pub const VXLAN_OVERHEAD: u16 = 20 + 8 + 8 + 14;

/// Offset of the IPv4 header in a frame.
const L3: usize = ethernet::HEADER_LEN;

/// The decision for `frame` leaving through the uplink (tc egress).
///
/// IPv4 bound for a remote node's pod CIDR is encapsulated towards that node
/// when the node's mode is `ipip` (and, with `crossSubnet`, only when the
/// node is outside the underlay subnet); everything else passes untouched.
///
/// `mtu` is the uplink's MTU: the largest IPv4 packet it sends. An
/// encapsulated packet (`20 +` the inner total length) above it is
/// [`UplinkVerdict::TooBig`]. A GSO packet is segmented after tc, each
/// segment carrying the outer header: the shell passes `u16::MAX` for those
/// (the kernel checks `gso_size` itself).
#[inline(always)]
pub fn uplink_egress<R, T>(frame: &R, routes: &T, config: &NodeConfig, mtu: u16) -> UplinkVerdict
where
    R: PacketReader + ?Sized,
    T: RouteLookup + ?Sized,
{
    let Some(ethertype) = crate::packet::ethertype(frame) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    if ethertype != ethernet::ETHERTYPE_IPV4 {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpv4);
    }
    // In `none` and `vxlan` mode the uplink program has nothing to do: it
    // does not even parse, so it cannot get in the kernel's way.
    let encap = config.encap();
    if matches!(encap, Some(Encap::None) | Some(Encap::Vxlan)) {
        return UplinkVerdict::Pass(UplinkPassReason::NoEncapsulation);
    }
    let Ok(inner) = Ipv4Header::new_checked(frame, L3) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    let Some(node) = routes.remote_node_for(inner.dst()) else {
        return UplinkVerdict::Pass(UplinkPassReason::NotPodDestination);
    };
    // Pod traffic from here on: refuse it rather than leak it unencapsulated
    // if the config is not one this build understands.
    if encap.is_none() || config.underlay_ip == [0; 4] {
        return UplinkVerdict::Drop(DropReason::BadConfig);
    }
    if node.underlay_ip == config.underlay_ip {
        return UplinkVerdict::Pass(UplinkPassReason::LocalNode);
    }
    if config.cross_subnet() && config.same_subnet(node.underlay_ip) {
        return UplinkVerdict::Pass(UplinkPassReason::SameSubnet);
    }
    let too_big = UplinkVerdict::TooBig {
        mtu: mtu.saturating_sub(IPIP_OVERHEAD),
        dont_fragment: inner.dont_fragment(),
    };
    if u32::from(inner.total_len()) + u32::from(IPIP_OVERHEAD) > u32::from(mtu) {
        return too_big;
    }
    let outer = outer_repr(
        &inner,
        config.underlay_ip,
        node.underlay_ip,
        config.outer_ttl(),
    );
    match outer.emit() {
        Some(header) => UplinkVerdict::Encapsulate {
            outer_src: config.underlay_ip,
            outer_dst: node.underlay_ip,
            header,
        },
        // Unreachable once the MTU check passed (mtu ≤ 65535), kept total.
        None => too_big,
    }
}

/// The decision for `frame` arriving on the uplink (tc ingress).
///
/// IP-in-IP (protocol 4) is decapsulated (in every mode, so a node part-way
/// through a rolling mode switch still takes what the others send) when it
/// comes from a cluster node, is addressed to this node, is whole (not a
/// fragment), has a correct outer checksum and holds one well-formed IPv4
/// packet. IP-in-IP from anyone else is dropped whatever its destination,
/// so that no other decapsulator on the host (a `tunl0`, say) can be used
/// to inject packets. In mode `vxlan` the same holds for VXLAN (UDP to
/// [`VXLAN_PORT`]), which the kernel's device would take from anyone.
/// Everything else passes to the kernel.
#[inline(always)]
pub fn uplink_ingress<R, N>(frame: &R, nodes: &N, config: &NodeConfig) -> UplinkVerdict
where
    R: PacketReader + ?Sized,
    N: NodeSet + ?Sized,
{
    let Some(ethertype) = crate::packet::ethertype(frame) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    if ethertype != ethernet::ETHERTYPE_IPV4 {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpv4);
    }
    let Ok(outer) = Ipv4Header::new_checked(frame, L3) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    match outer.protocol() {
        ipv4::PROTOCOL_IPIP => {}
        ipv4::PROTOCOL_UDP if config.encap() == Some(Encap::Vxlan) => {
            return vxlan_ingress(frame, &outer, nodes);
        }
        _ => return UplinkVerdict::Pass(UplinkPassReason::NotIpip),
    }
    if !outer.verify_checksum() {
        return UplinkVerdict::Drop(DropReason::BadChecksum);
    }
    let from = outer.src();
    if !nodes.is_node(from) {
        return UplinkVerdict::Drop(DropReason::NotFromNode);
    }

    if outer.dst() != config.underlay_ip {
        return UplinkVerdict::Pass(UplinkPassReason::NotForThisNode);
    }
    if outer.is_fragment() {
        return UplinkVerdict::Drop(DropReason::Fragment);
    }
    let header_len = outer.header_len();
    match Ipv4Header::new_checked(frame, L3 + header_len) {
        Ok(inner) if usize::from(inner.total_len()) == outer.payload_len() => {
            UplinkVerdict::Decapsulate {
                // 20..=60, checked by the view.
                outer_header_len: header_len as u8,
                from_node: from,
            }
        }
        _ => UplinkVerdict::Drop(DropReason::Malformed),
    }
}

/// In mode `vxlan`: UDP to the VXLAN port is for the kernel's vxlan
/// device, which takes any sender (Linux checks only the VNI), so only
/// cluster nodes may reach it; a non-node's is dropped. A later fragment
/// has no UDP header to read and passes: without its first fragment,
/// which is checked, the datagram never reassembles.
#[inline(always)]
fn vxlan_ingress<R, N>(frame: &R, outer: &Ipv4Header<'_, R>, nodes: &N) -> UplinkVerdict
where
    R: PacketReader + ?Sized,
    N: NodeSet + ?Sized,
{
    if outer.fragment_offset() != 0 {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpip);
    }
    // The UDP destination port, 2 bytes into the UDP header.
    let Some(port) = frame.read::<2>(L3 + outer.header_len() + 2) else {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpip);
    };
    if u16::from_be_bytes(port) != VXLAN_PORT {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpip);
    }
    if !nodes.is_node(outer.src()) {
        return UplinkVerdict::Drop(DropReason::NotFromNode);
    }
    UplinkVerdict::Pass(UplinkPassReason::VxlanFromNode)
}

/// The outer header for `inner`: protocol 4, `ttl`, and from the inner
/// header its DF bit (so path MTU discovery works through the tunnel), its
/// TOS byte (DSCP and ECN survive the underlay, RFC 6040's normal mode) and
/// its identification (deterministic, and distinct per packet wherever the
/// inner one is).
#[inline(always)]
pub fn outer_repr<R: PacketReader + ?Sized>(
    inner: &Ipv4Header<'_, R>,
    outer_src: [u8; 4],
    outer_dst: [u8; 4],
    ttl: u8,
) -> Ipv4Repr {
    Ipv4Repr {
        src: outer_src,
        dst: outer_dst,
        protocol: ipv4::PROTOCOL_IPIP,
        ttl,
        tos: inner.tos(),
        ident: inner.ident(),
        dont_fragment: inner.dont_fragment(),
        payload_len: inner.total_len(),
    }
}

/// The 20-byte outer header that encapsulates `inner` (an IPv4 packet
/// without L2 header; bytes after its total length are ignored), checksum
/// included; `None` if `inner` is not a well-formed IPv4 packet or the
/// result would exceed 65535 bytes.
pub fn encapsulate(
    inner: &[u8],
    outer_src: [u8; 4],
    outer_dst: [u8; 4],
    ttl: u8,
) -> Option<[u8; 20]> {
    let inner = Ipv4Header::new_checked(inner, 0).ok()?;
    outer_repr(&inner, outer_src, outer_dst, ttl).emit()
}

/// Userspace's way of carrying out [`UplinkVerdict::Encapsulate`]: writes
/// `frame` with `header` inserted after its Ethernet header into `out`, and
/// returns the new length (`None` if `frame` has no Ethernet header or `out`
/// is too small). The eBPF shells use `bpf_skb_adjust_room` instead.
pub fn write_encapsulated(frame: &[u8], header: &[u8; 20], out: &mut [u8]) -> Option<usize> {
    let (l2, rest) = frame.split_at_checked(L3)?;
    let len = frame.len().checked_add(header.len())?;
    let out = out.get_mut(..len)?;
    let (out_l2, out_rest) = out.split_at_mut(L3);
    let (out_header, out_inner) = out_rest.split_at_mut(header.len());
    out_l2.copy_from_slice(l2);
    out_header.copy_from_slice(header);
    out_inner.copy_from_slice(rest);
    Some(len)
}

/// Userspace's way of carrying out [`UplinkVerdict::Decapsulate`]: writes
/// `frame` without the `outer_header_len` bytes after its Ethernet header
/// into `out`, and returns the new length.
pub fn write_decapsulated(frame: &[u8], outer_header_len: u8, out: &mut [u8]) -> Option<usize> {
    let (l2, rest) = frame.split_at_checked(L3)?;
    let inner = rest.get(usize::from(outer_header_len)..)?;
    let len = L3 + inner.len();
    let out = out.get_mut(..len)?;
    let (out_l2, out_inner) = out.split_at_mut(L3);
    out_l2.copy_from_slice(l2);
    out_inner.copy_from_slice(inner);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::checksum;
    use crate::maps::{PodCidrKey, RemoteNode};
    use crate::testgen::Gen;

    // The lab's addressing: nodes on 198.18.0.0/24 (node 3 on another
    // subnet), pod CIDRs 10.244.<node>.0/24.
    const NODE1: [u8; 4] = [198, 18, 0, 1];
    const NODE2: [u8; 4] = [198, 18, 0, 2];
    const NODE3: [u8; 4] = [198, 18, 1, 3];
    const OUTSIDER: [u8; 4] = [198, 18, 0, 66];
    const NODES: [[u8; 4]; 3] = [NODE1, NODE2, NODE3];

    const ROUTES: [(PodCidrKey, RemoteNode); 3] = [
        (PodCidrKey::new([10, 244, 1, 0], 24), RemoteNode::new(NODE1)),
        (PodCidrKey::new([10, 244, 2, 0], 24), RemoteNode::new(NODE2)),
        (PodCidrKey::new([10, 244, 3, 0], 24), RemoteNode::new(NODE3)),
    ];

    /// Node 1 in `ipip` mode, MTU 1500.
    const IPIP: NodeConfig = NodeConfig::new(NODE1, Encap::Ipip);
    const MTU: u16 = 1500;

    /// UDP 10.244.1.5:4000 → 10.244.2.7:53, DF, TTL 64, id 0x1234, 4 bytes
    /// of payload, checksum 0x0fa6.
    const POD_UDP: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x0f, 0xa6, //
        10, 244, 1, 5, 10, 244, 2, 7, //
        0x0f, 0xa0, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'w', b'e', b'f', b't',
    ];

    /// The outer header node 1 puts on [`POD_UDP`] towards node 2: total
    /// length 52, id and DF copied, TTL 64, protocol 4, checksum 0x9c6a.
    const POD_UDP_OUTER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x34, 0x12, 0x34, 0x40, 0x00, 0x40, 0x04, 0x9c, 0x6a, //
        198, 18, 0, 1, 198, 18, 0, 2,
    ];

    /// ARP request: who has 198.18.0.2, tell 198.18.0.1.
    const ARP_REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        0x02, 0, 0, 0, 0, 1, 198, 18, 0, 1, //
        0, 0, 0, 0, 0, 0, 198, 18, 0, 2,
    ];

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![
            0x02, 0, 0, 0, 0, 2, // dst: next hop
            0x02, 0, 0, 0, 0, 1, // src: the uplink
        ];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4_frame(packet: &[u8]) -> Vec<u8> {
        ethernet(0x0800, packet)
    }

    /// Recomputes the checksum of the IPv4 header at the start of `packet`.
    fn fix_checksum(packet: &mut [u8]) {
        let len = usize::from(packet[0] & 0x0f) * 4;
        packet[10..12].fill(0);
        let c = checksum(&packet[..len]).to_be_bytes();
        packet[10..12].copy_from_slice(&c);
    }

    /// An IPv4 packet `src → dst` with `payload_len` bytes of UDP-ish payload.
    fn packet(src: [u8; 4], dst: [u8; 4], payload_len: usize, df: bool) -> Vec<u8> {
        let total = (20 + payload_len) as u16;
        let mut p = vec![
            0x45,
            0,
            0,
            0,
            0xab,
            0xcd,
            if df { 0x40 } else { 0 },
            0,
            64,
            17,
            0,
            0,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.resize(usize::from(total), 0x5a);
        fix_checksum(&mut p);
        p
    }

    fn egress(frame: &[u8], config: &NodeConfig) -> UplinkVerdict {
        uplink_egress(frame, &ROUTES, config, MTU)
    }

    /// Node 2 receiving (its own config), knowing all three nodes.
    fn ingress_at_node2(frame: &[u8]) -> UplinkVerdict {
        uplink_ingress(frame, &NODES, &NodeConfig::new(NODE2, Encap::Ipip))
    }

    /// `inner` as node 1 sends it to node 2: Ethernet, outer header, inner.
    fn ipip_frame(outer: &[u8], inner: &[u8]) -> Vec<u8> {
        let mut p = outer.to_vec();
        p.extend_from_slice(inner);
        ipv4_frame(&p)
    }

    fn outer_header(src: [u8; 4], dst: [u8; 4], inner: &[u8]) -> [u8; 20] {
        encapsulate(inner, src, dst, 64).unwrap()
    }

    fn pass(reason: UplinkPassReason) -> UplinkVerdict {
        UplinkVerdict::Pass(reason)
    }

    fn drop(reason: DropReason) -> UplinkVerdict {
        UplinkVerdict::Drop(reason)
    }

    // --- egress -------------------------------------------------------------

    #[test]
    fn pod_to_remote_pod_is_encapsulated_with_the_exact_outer_header() {
        assert_eq!(checksum(&POD_UDP[..20]), 0);
        let verdict = egress(&ipv4_frame(&POD_UDP), &IPIP);
        assert_eq!(
            verdict,
            UplinkVerdict::Encapsulate {
                outer_src: NODE1,
                outer_dst: NODE2,
                header: POD_UDP_OUTER,
            }
        );
        assert_eq!(verdict.counter().name(), "encapsulate");
        assert_eq!(encapsulate(&POD_UDP, NODE1, NODE2, 64), Some(POD_UDP_OUTER));
    }

    #[test]
    fn outer_header_copies_df_tos_and_id_and_uses_the_configured_ttl() {
        let mut inner = packet([10, 244, 1, 5], [10, 244, 3, 9], 100, false);
        inner[1] = 0xb9; // DSCP EF, ECN ECT(1)
        fix_checksum(&mut inner);
        let config = NodeConfig {
            outer_ttl: 17,
            ..IPIP
        };
        let UplinkVerdict::Encapsulate {
            header, outer_dst, ..
        } = egress(&ipv4_frame(&inner), &config)
        else {
            panic!("not encapsulated");
        };
        assert_eq!(outer_dst, NODE3);
        assert_eq!(header[1], 0xb9);
        assert_eq!(&header[2..4], &140u16.to_be_bytes());
        assert_eq!(&header[4..6], &[0xab, 0xcd]);
        assert_eq!(&header[6..8], &[0, 0], "no DF inside, none outside");
        assert_eq!(header[8], 17);
        assert_eq!(header[9], 4);
        assert_eq!(checksum(&header), 0);
    }

    #[test]
    fn inner_options_and_fragments_are_encapsulated_whole() {
        // IHL 7 with 8 bytes of NOP options.
        let mut inner = packet([10, 244, 1, 5], [10, 244, 2, 7], 30, false);
        inner[0] = 0x47;
        for _ in 0..8 {
            inner.insert(20, 0x01);
        }
        inner[2..4].copy_from_slice(&58u16.to_be_bytes());
        // A middle fragment: MF, offset 1480.
        inner[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        fix_checksum(&mut inner);
        let UplinkVerdict::Encapsulate { header, .. } = egress(&ipv4_frame(&inner), &IPIP) else {
            panic!("not encapsulated");
        };
        assert_eq!(&header[2..4], &78u16.to_be_bytes());
        assert_eq!(&header[6..8], &[0, 0], "the outer header is not a fragment");
    }

    #[test]
    fn modes_without_ebpf_encapsulation_pass_everything() {
        for encap in [Encap::None, Encap::Vxlan] {
            let config = NodeConfig::new(NODE1, encap);
            for frame in [
                ipv4_frame(&POD_UDP),
                ipv4_frame(&POD_UDP[..7]), // not even parsed
                ethernet(0x0806, &ARP_REQUEST),
            ] {
                let expected = if frame[12..14] == [0x08, 0x06] {
                    pass(UplinkPassReason::NotIpv4)
                } else {
                    pass(UplinkPassReason::NoEncapsulation)
                };
                assert_eq!(egress(&frame, &config), expected, "{encap:?}");
            }
        }
        // A config never written (all zero) is `none`.
        assert_eq!(
            egress(&ipv4_frame(&POD_UDP), &NodeConfig::default()),
            pass(UplinkPassReason::NoEncapsulation)
        );
    }

    #[test]
    fn destinations_outside_remote_pod_cidrs_pass() {
        for dst in [[8, 8, 8, 8], NODE2, [10, 245, 2, 7], [10, 244, 4, 1]] {
            let frame = ipv4_frame(&packet(NODE1, dst, 10, true));
            assert_eq!(
                egress(&frame, &IPIP),
                pass(UplinkPassReason::NotPodDestination)
            );
        }
    }

    #[test]
    fn own_pod_cidr_is_local() {
        let frame = ipv4_frame(&packet(NODE1, [10, 244, 1, 9], 10, true));
        assert_eq!(egress(&frame, &IPIP), pass(UplinkPassReason::LocalNode));
    }

    #[test]
    fn cross_subnet_encapsulates_only_across_subnets() {
        let config = IPIP.with_cross_subnet([198, 18, 0, 0], 24);
        let to_node2 = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 2, 7], 10, true));
        assert_eq!(
            egress(&to_node2, &config),
            pass(UplinkPassReason::SameSubnet)
        );
        let to_node3 = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 3, 7], 10, true));
        assert!(matches!(
            egress(&to_node3, &config),
            UplinkVerdict::Encapsulate {
                outer_dst: NODE3,
                ..
            }
        ));
        // Without the flag the subnet is ignored.
        assert!(matches!(
            egress(&to_node2, &IPIP),
            UplinkVerdict::Encapsulate { .. }
        ));
    }

    #[test]
    fn non_ipv4_passes_on_egress() {
        assert_eq!(
            egress(&ethernet(0x0806, &ARP_REQUEST), &IPIP),
            pass(UplinkPassReason::NotIpv4)
        );
        assert_eq!(
            egress(&ethernet(0x86dd, &[0x60, 0, 0, 0]), &IPIP),
            pass(UplinkPassReason::NotIpv4)
        );
    }

    #[test]
    fn malformed_ipv4_is_dropped_on_egress() {
        let frame = ipv4_frame(&POD_UDP);
        assert_eq!(egress(&frame[..13], &IPIP), drop(DropReason::Malformed));
        assert_eq!(
            egress(&frame[..14 + 19], &IPIP),
            drop(DropReason::Malformed)
        );
        assert_eq!(
            egress(&frame[..frame.len() - 1], &IPIP),
            drop(DropReason::Malformed)
        );
        let mut bad_ihl = POD_UDP;
        bad_ihl[0] = 0x44;
        assert_eq!(
            egress(&ipv4_frame(&bad_ihl), &IPIP),
            drop(DropReason::Malformed)
        );
        let mut version = POD_UDP;
        version[0] = 0x65;
        assert_eq!(
            egress(&ipv4_frame(&version), &IPIP),
            drop(DropReason::Malformed)
        );
    }

    #[test]
    fn unknown_config_refuses_pod_traffic_only() {
        let future = NodeConfig { encap: 9, ..IPIP };
        assert_eq!(
            egress(&ipv4_frame(&POD_UDP), &future),
            drop(DropReason::BadConfig)
        );
        let internet = ipv4_frame(&packet(NODE1, [8, 8, 8, 8], 10, true));
        assert_eq!(
            egress(&internet, &future),
            pass(UplinkPassReason::NotPodDestination)
        );
        let no_address = NodeConfig::new([0; 4], Encap::Ipip);
        assert_eq!(
            egress(&ipv4_frame(&POD_UDP), &no_address),
            drop(DropReason::BadConfig)
        );
    }

    #[test]
    fn mtu_is_checked_on_the_encapsulated_size() {
        let fits = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 2, 7], 1460, true));
        assert!(matches!(
            egress(&fits, &IPIP),
            UplinkVerdict::Encapsulate { .. }
        ));
        for df in [true, false] {
            let big = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 2, 7], 1461, df));
            let verdict = egress(&big, &IPIP);
            assert_eq!(
                verdict,
                UplinkVerdict::TooBig {
                    mtu: 1480,
                    dont_fragment: df
                }
            );
            assert_eq!(verdict.counter().name(), "drop_too_big");
        }
        // GSO: the shell passes u16::MAX; a 64 KiB packet still cannot get
        // a 20-byte header without overflowing the total length.
        let gso = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 2, 7], 64000, true));
        assert!(matches!(
            uplink_egress(&gso[..], &ROUTES, &IPIP, u16::MAX),
            UplinkVerdict::Encapsulate { .. }
        ));
        let huge = ipv4_frame(&packet([10, 244, 1, 5], [10, 244, 2, 7], 65515, true));
        assert_eq!(
            uplink_egress(&huge[..], &ROUTES, &IPIP, u16::MAX),
            UplinkVerdict::TooBig {
                mtu: 65515,
                dont_fragment: true
            }
        );
        // A silly MTU does not underflow.
        assert_eq!(
            uplink_egress(&fits[..], &ROUTES, &IPIP, 10),
            UplinkVerdict::TooBig {
                mtu: 0,
                dont_fragment: true
            }
        );
    }

    // --- ingress ------------------------------------------------------------

    #[test]
    fn ipip_from_a_node_is_decapsulated() {
        let frame = ipip_frame(&POD_UDP_OUTER, &POD_UDP);
        let verdict = ingress_at_node2(&frame);
        assert_eq!(
            verdict,
            UplinkVerdict::Decapsulate {
                outer_header_len: 20,
                from_node: NODE1
            }
        );
        assert_eq!(verdict.counter().name(), "decapsulate");
        let mut out = [0u8; 128];
        let len = write_decapsulated(&frame, 20, &mut out).unwrap();
        assert_eq!(&out[..len], &ipv4_frame(&POD_UDP)[..]);
    }

    #[test]
    fn ipip_from_a_non_node_is_dropped_whatever_its_destination() {
        for dst in [NODE2, [198, 18, 0, 200]] {
            let outer = outer_header(OUTSIDER, dst, &POD_UDP);
            let verdict = ingress_at_node2(&ipip_frame(&outer, &POD_UDP));
            assert_eq!(verdict, drop(DropReason::NotFromNode));
            assert_eq!(verdict.counter().name(), "drop_not_from_node");
        }
        // A node set that is empty (agent not up yet) trusts nobody.
        let empty: [[u8; 4]; 0] = [];
        let frame = ipip_frame(&POD_UDP_OUTER, &POD_UDP);
        assert_eq!(
            uplink_ingress(&frame[..], &empty, &NodeConfig::new(NODE2, Encap::Ipip)),
            drop(DropReason::NotFromNode)
        );
    }

    #[test]
    fn ipip_from_a_node_to_another_host_passes() {
        let outer = outer_header(NODE1, [198, 18, 0, 200], &POD_UDP);
        assert_eq!(
            ingress_at_node2(&ipip_frame(&outer, &POD_UDP)),
            pass(UplinkPassReason::NotForThisNode)
        );
    }

    #[test]
    fn ipip_is_decapsulated_in_every_mode() {
        // A node switching mode still accepts what others send meanwhile.
        let frame = ipip_frame(&POD_UDP_OUTER, &POD_UDP);
        for encap in [Encap::None, Encap::Vxlan, Encap::Ipip] {
            assert!(matches!(
                uplink_ingress(&frame[..], &NODES, &NodeConfig::new(NODE2, encap)),
                UplinkVerdict::Decapsulate { .. }
            ));
        }
    }

    /// UDP `src → NODE2:port` carrying a VXLAN header, as Ethernet, with
    /// the IPv4 fields given (flags/fragment offset word).
    fn udp_to_node2(src: [u8; 4], port: u16, frag_word: u16) -> Vec<u8> {
        let mut p = packet(src, NODE2, 8 + 8 + 14, false);
        p[6..8].copy_from_slice(&frag_word.to_be_bytes());
        p[9] = 17;
        fix_checksum(&mut p);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&port.to_be_bytes());
        ipv4_frame(&p)
    }

    fn vxlan_node2(frame: &[u8]) -> UplinkVerdict {
        uplink_ingress(frame, &NODES, &NodeConfig::new(NODE2, Encap::Vxlan))
    }

    #[test]
    fn in_vxlan_mode_vxlan_only_from_nodes_reaches_the_device() {
        let from_node = udp_to_node2(NODE1, VXLAN_PORT, 0);
        assert_eq!(
            vxlan_node2(&from_node),
            pass(UplinkPassReason::VxlanFromNode)
        );
        let from_outsider = udp_to_node2(OUTSIDER, VXLAN_PORT, 0);
        assert_eq!(vxlan_node2(&from_outsider), drop(DropReason::NotFromNode));
        // A first fragment carries the port and is checked; later ones
        // cannot reassemble without it.
        let first = udp_to_node2(OUTSIDER, VXLAN_PORT, 0x2000);
        assert_eq!(vxlan_node2(&first), drop(DropReason::NotFromNode));
        let later = udp_to_node2(OUTSIDER, VXLAN_PORT, 0x2000 | 10);
        assert_eq!(vxlan_node2(&later), pass(UplinkPassReason::NotIpip));
        // Other UDP, and VXLAN in the other modes, is the kernel's business.
        let dns = udp_to_node2(OUTSIDER, 53, 0);
        assert_eq!(vxlan_node2(&dns), pass(UplinkPassReason::NotIpip));
        for encap in [Encap::Ipip, Encap::None] {
            let config = NodeConfig::new(NODE2, encap);
            assert_eq!(
                uplink_ingress(&from_outsider[..], &NODES, &config),
                pass(UplinkPassReason::NotIpip)
            );
        }
        // A UDP header cut short is left to the kernel to refuse.
        let mut short = udp_to_node2(OUTSIDER, VXLAN_PORT, 0);
        short.truncate(14 + 20 + 3);
        short[16..18].copy_from_slice(&23u16.to_be_bytes());
        let mut ip = short[14..].to_vec();
        fix_checksum(&mut ip);
        short[14..].copy_from_slice(&ip);
        assert_eq!(vxlan_node2(&short), pass(UplinkPassReason::NotIpip));
    }

    #[test]
    fn everything_else_passes_on_ingress() {
        assert_eq!(
            ingress_at_node2(&ipv4_frame(&POD_UDP)),
            pass(UplinkPassReason::NotIpip)
        );
        let from_outsider = packet(OUTSIDER, NODE2, 40, true);
        assert_eq!(
            ingress_at_node2(&ipv4_frame(&from_outsider)),
            pass(UplinkPassReason::NotIpip)
        );
        assert_eq!(
            ingress_at_node2(&ethernet(0x0806, &ARP_REQUEST)),
            pass(UplinkPassReason::NotIpv4)
        );
        assert_eq!(
            ingress_at_node2(&ethernet(0x86dd, &[0x60, 0, 0, 0])),
            pass(UplinkPassReason::NotIpv4)
        );
    }

    #[test]
    fn bad_outer_checksum_is_dropped() {
        let mut outer = POD_UDP_OUTER;
        outer[11] ^= 0x10;
        assert_eq!(
            ingress_at_node2(&ipip_frame(&outer, &POD_UDP)),
            drop(DropReason::BadChecksum)
        );
    }

    #[test]
    fn outer_fragments_are_dropped() {
        for flags in [0x2000u16, 0x2000 | 185, 185] {
            for src in [NODE1, OUTSIDER] {
                let mut outer = outer_header(src, NODE2, &POD_UDP);
                outer[6..8].copy_from_slice(&flags.to_be_bytes());
                fix_checksum(&mut outer);
                let expected = if src == NODE1 {
                    drop(DropReason::Fragment)
                } else {
                    drop(DropReason::NotFromNode)
                };
                assert_eq!(ingress_at_node2(&ipip_frame(&outer, &POD_UDP)), expected);
            }
        }
    }

    #[test]
    fn outer_options_are_stripped_with_the_header() {
        for ihl in 6u8..=15 {
            let options = usize::from(ihl - 5) * 4;
            let mut outer = POD_UDP_OUTER.to_vec();
            outer[0] = 0x40 | ihl;
            outer.extend(std::iter::repeat_n(0x01, options));
            let total = (outer.len() + POD_UDP.len()) as u16;
            outer[2..4].copy_from_slice(&total.to_be_bytes());
            fix_checksum(&mut outer);
            let frame = ipip_frame(&outer, &POD_UDP);
            let verdict = ingress_at_node2(&frame);
            assert_eq!(
                verdict,
                UplinkVerdict::Decapsulate {
                    outer_header_len: ihl * 4,
                    from_node: NODE1
                }
            );
            let mut out = [0u8; 160];
            let len = write_decapsulated(&frame, ihl * 4, &mut out).unwrap();
            assert_eq!(&out[..len], &ipv4_frame(&POD_UDP)[..]);
        }
    }

    #[test]
    fn malformed_outer_or_inner_is_dropped() {
        let frame = ipip_frame(&POD_UDP_OUTER, &POD_UDP);
        // Truncated anywhere: in Ethernet, in the outer header, in the inner packet.
        for len in [0, 13, 14 + 10, 14 + 20 + 10, frame.len() - 1] {
            assert_eq!(
                ingress_at_node2(&frame[..len]),
                drop(DropReason::Malformed),
                "len {len}"
            );
        }
        // The inner packet is not IPv4 (IPv6 belongs in protocol 41).
        let mut inner = POD_UDP;
        inner[0] = 0x60;
        assert_eq!(
            ingress_at_node2(&ipip_frame(&POD_UDP_OUTER, &inner)),
            drop(DropReason::Malformed)
        );
        // The inner total length disagrees with the outer payload.
        let mut inner = POD_UDP;
        inner[3] = 28;
        fix_checksum(&mut inner);
        assert_eq!(
            ingress_at_node2(&ipip_frame(&POD_UDP_OUTER, &inner)),
            drop(DropReason::Malformed)
        );
        // Nothing inside at all.
        let mut empty = POD_UDP_OUTER;
        empty[3] = 20;
        fix_checksum(&mut empty);
        assert_eq!(
            ingress_at_node2(&ipip_frame(&empty, &[])),
            drop(DropReason::Malformed)
        );
    }

    #[test]
    fn ethernet_padding_after_the_outer_packet_is_allowed() {
        let mut frame = ipip_frame(&POD_UDP_OUTER, &POD_UDP);
        frame.extend([0; 8]);
        assert!(matches!(
            ingress_at_node2(&frame),
            UplinkVerdict::Decapsulate { .. }
        ));
    }

    // --- helpers ----------------------------------------------------------

    #[test]
    fn encapsulate_rejects_what_is_not_ipv4() {
        assert_eq!(encapsulate(&POD_UDP[..19], NODE1, NODE2, 64), None);
        assert_eq!(encapsulate(&[0x60; 40], NODE1, NODE2, 64), None);
        let big = packet([10, 244, 1, 5], [10, 244, 2, 7], 65515, true);
        assert_eq!(encapsulate(&big, NODE1, NODE2, 64), None);
    }

    #[test]
    fn write_helpers_refuse_short_buffers() {
        let frame = ipv4_frame(&POD_UDP);
        let mut small = [0u8; 40];
        assert_eq!(write_encapsulated(&frame, &POD_UDP_OUTER, &mut small), None);
        assert_eq!(
            write_encapsulated(&frame[..10], &POD_UDP_OUTER, &mut [0; 100]),
            None
        );
        assert_eq!(write_decapsulated(&frame, 60, &mut [0; 100]), None);
        assert_eq!(write_decapsulated(&frame, 20, &mut small[..10]), None);
    }

    // --- properties -------------------------------------------------------

    const CONFIGS: [NodeConfig; 3] = [
        NodeConfig::new(NODE1, Encap::Ipip),
        NodeConfig::new(NODE2, Encap::Ipip),
        NodeConfig::new(NODE3, Encap::Ipip),
    ];

    /// A random pod-to-pod packet between two different nodes: (sender, receiver, frame).
    fn random_pod_frame(g: &mut Gen) -> (usize, usize, Vec<u8>) {
        let from = g.below(3);
        let to = (from + 1 + g.below(2)) % 3;
        let src = [10, 244, from as u8 + 1, g.u8()];
        let dst = [10, 244, to as u8 + 1, g.u8()];
        // Up to the pod MTU (1480): the largest that fits the uplink encapsulated.
        let mut inner = packet(src, dst, g.below(1461), g.u8() & 1 == 1);
        inner[1] = g.u8();
        inner[4..6].copy_from_slice(&g.u16().to_be_bytes());
        inner[8] = g.u8();
        inner[9] = g.u8();
        fix_checksum(&mut inner);
        (from, to, ipv4_frame(&inner))
    }

    #[test]
    fn property_encapsulation_round_trips_between_nodes() {
        let mut g = Gen::new(0xc0ffee);
        let mut wire = vec![0u8; 1600];
        let mut back = vec![0u8; 1600];
        for _ in 0..3000 {
            let (from, to, frame) = random_pod_frame(&mut g);
            let verdict = uplink_egress(&frame[..], &ROUTES, &CONFIGS[from], MTU);
            let UplinkVerdict::Encapsulate {
                outer_src,
                outer_dst,
                header,
            } = verdict
            else {
                panic!("pod traffic to another node was not encapsulated: {verdict:?}");
            };
            assert_eq!((outer_src, outer_dst), (NODES[from], NODES[to]));
            assert_eq!(
                encapsulate(&frame[14..], outer_src, outer_dst, 64),
                Some(header)
            );
            let len = write_encapsulated(&frame, &header, &mut wire).unwrap();
            let on_wire = &wire[..len];
            assert_eq!(
                usize::from(u16::from_be_bytes([header[2], header[3]])),
                len - 14
            );
            assert_eq!(
                uplink_ingress(on_wire, &NODES, &CONFIGS[to]),
                UplinkVerdict::Decapsulate {
                    outer_header_len: 20,
                    from_node: NODES[from]
                }
            );
            let len = write_decapsulated(on_wire, 20, &mut back).unwrap();
            assert_eq!(&back[..len], &frame[..]);
            // The same packet from outside the cluster never gets in.
            let nodes_without_sender: Vec<[u8; 4]> = NODES
                .iter()
                .copied()
                .filter(|n| *n != NODES[from])
                .collect();
            assert_eq!(
                uplink_ingress(on_wire, &nodes_without_sender[..], &CONFIGS[to]),
                drop(DropReason::NotFromNode)
            );
        }
    }

    /// Overwrites a few bytes, mostly in the headers; sometimes truncates.
    fn mangle(g: &mut Gen, frame: &mut Vec<u8>) {
        let len = frame.len();
        for _ in 0..g.below(4) {
            let at = if g.below(4) == 0 || len < 54 {
                g.below(len)
            } else {
                14 + g.below(40)
            };
            frame[at] = g.u8();
        }
        if g.below(5) == 0 {
            frame.truncate(g.below(len + 1));
        }
    }

    #[test]
    fn property_mangled_frames_never_panic_and_never_sneak_in() {
        let mut g = Gen::new(42);
        let mut wire = vec![0u8; 1600];
        let (mut decapsulated, mut encapsulated) = (0, 0);
        for _ in 0..20000 {
            let (from, to, frame) = random_pod_frame(&mut g);
            let header = encapsulate(&frame[14..], NODES[from], NODES[to], 64).unwrap();
            let len = write_encapsulated(&frame, &header, &mut wire).unwrap();
            let mut mangled = wire[..len].to_vec();
            mangle(&mut g, &mut mangled);
            let mut plain = frame.clone();
            mangle(&mut g, &mut plain);
            let config = &CONFIGS[to];
            match uplink_ingress(&mangled[..], &NODES, config) {
                UplinkVerdict::Decapsulate {
                    outer_header_len,
                    from_node,
                } => {
                    decapsulated += 1;
                    let outer = Ipv4Header::new_checked(&mangled[..], 14).unwrap();
                    assert!(NODES.contains(&from_node));
                    assert_eq!(outer.src(), from_node);
                    assert_eq!(outer.dst(), config.underlay_ip);
                    assert_eq!(outer.protocol(), 4);
                    assert!(outer.verify_checksum() && !outer.is_fragment());
                    let inner =
                        Ipv4Header::new_checked(&mangled[..], 14 + usize::from(outer_header_len))
                            .unwrap();
                    assert_eq!(usize::from(inner.total_len()), outer.payload_len());
                }
                UplinkVerdict::Encapsulate { .. } | UplinkVerdict::TooBig { .. } => {
                    panic!("ingress never encapsulates")
                }
                UplinkVerdict::Pass(_) | UplinkVerdict::Drop(_) => {}
            }
            // Both as the sending node's egress sees them.
            for frame in [&mangled, &plain] {
                match uplink_egress(&frame[..], &ROUTES, &CONFIGS[from], MTU) {
                    UplinkVerdict::Encapsulate {
                        outer_dst, header, ..
                    } => {
                        encapsulated += 1;
                        let inner = Ipv4Header::new_checked(&frame[..], 14).unwrap();
                        let node = ROUTES.remote_node_for(inner.dst()).unwrap();
                        assert_eq!(node.underlay_ip, outer_dst);
                        assert_ne!(outer_dst, CONFIGS[from].underlay_ip);
                        assert_eq!(checksum(&header), 0);
                        assert!(usize::from(inner.total_len()) + 20 <= usize::from(MTU));
                    }
                    UplinkVerdict::Decapsulate { .. } => panic!("egress never decapsulates"),
                    _ => {}
                }
            }
        }
        // The generator reaches both interesting outcomes, not just drops.
        assert!(decapsulated > 1000, "{decapsulated}");
        assert!(encapsulated > 100, "{encapsulated}");
    }
}
