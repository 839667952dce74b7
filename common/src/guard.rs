//! The anti-spoofing guard for packets a pod sends.
//!
//! Runs at tc ingress of the pod's host-side veth: everything the pod
//! transmits passes here before the node routes it. A pod may only send ARP
//! (to resolve its gateway) and IPv4 from the address Weft gave it; anything
//! else is dropped with a reason, and a veth without an endpoint entry sends
//! nothing at all (fail closed).

use crate::maps::EndpointInfo;
use crate::packet::{PacketReader, ethernet, ipv4_source};
use crate::verdict::{DropReason, PassReason, Verdict};

/// The verdict for `frame`, sent by the pod whose endpoint entry is
/// `endpoint` (`None` when the interface has no entry).
#[inline(always)]
pub fn pod_egress_verdict<R: PacketReader + ?Sized>(
    frame: &R,
    endpoint: Option<&EndpointInfo>,
) -> Verdict {
    let Some(endpoint) = endpoint else {
        return Verdict::Drop(DropReason::UnknownEndpoint);
    };
    let Some(ethertype) = crate::packet::ethertype(frame) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    match ethertype {
        ethernet::ETHERTYPE_ARP => Verdict::Pass(PassReason::Arp),
        ethernet::ETHERTYPE_IPV4 => match ipv4_source(frame) {
            None => Verdict::Drop(DropReason::Malformed),
            Some(source) if source == endpoint.ipv4 => Verdict::Pass(PassReason::OwnSource),
            Some(_) => Verdict::Drop(DropReason::SpoofedSource),
        },
        _ => Verdict::Drop(DropReason::UnsupportedProtocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Counter;

    const POD: EndpointInfo = EndpointInfo::new([10, 244, 1, 5]);

    /// Ethernet header from the pod's MAC to the host veth's, then `ethertype`.
    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![
            0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // dst: host veth
            0x02, 0x42, 0x0a, 0xf4, 0x01, 0x05, // src: pod eth0
        ];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// UDP 10.244.1.5:4000 -> 10.244.2.7:53, 4 bytes of payload; the source
    /// address is bytes 12..16.
    const IPV4_UDP_FROM_POD: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, // version 4, IHL 5, total length 32
        0x12, 0x34, 0x40, 0x00, // id, DF
        0x40, 0x11, 0x00, 0x00, // TTL 64, UDP, checksum (unchecked here)
        10, 244, 1, 5, // source
        10, 244, 2, 7, // destination
        0x0f, 0xa0, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, // UDP header
        b'w', b'e', b'f', b't',
    ];

    /// ARP request: who has 169.254.1.1, tell 10.244.1.5.
    const ARP_REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0x02, 0x42, 0x0a, 0xf4, 0x01, 0x05, 10, 244, 1, 5, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 169, 254, 1, 1, // target
    ];

    /// IPv6 header start (version 6), enough for the ethertype to decide.
    const IPV6_START: [u8; 8] = [0x60, 0, 0, 0, 0, 0, 0x3a, 0xff];

    fn verdict(frame: &[u8], endpoint: Option<&EndpointInfo>) -> Verdict {
        pod_egress_verdict(frame, endpoint)
    }

    #[test]
    fn own_source_ipv4_passes() {
        let frame = ethernet(0x0800, &IPV4_UDP_FROM_POD);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Pass(PassReason::OwnSource)
        );
        assert_eq!(verdict(&frame, Some(&POD)).counter(), Counter::Pass);
    }

    #[test]
    fn other_source_ipv4_is_spoofed() {
        let mut packet = IPV4_UDP_FROM_POD;
        packet[12..16].copy_from_slice(&[10, 244, 1, 6]);
        let frame = ethernet(0x0800, &packet);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::SpoofedSource)
        );
    }

    #[test]
    fn arp_passes() {
        let frame = ethernet(0x0806, &ARP_REQUEST);
        assert_eq!(verdict(&frame, Some(&POD)), Verdict::Pass(PassReason::Arp));
        assert_eq!(verdict(&frame, Some(&POD)).counter(), Counter::ArpPass);
    }

    #[test]
    fn no_endpoint_fails_closed_whatever_the_frame() {
        for frame in [
            ethernet(0x0800, &IPV4_UDP_FROM_POD),
            ethernet(0x0806, &ARP_REQUEST),
            vec![],
        ] {
            assert_eq!(
                verdict(&frame, None),
                Verdict::Drop(DropReason::UnknownEndpoint)
            );
        }
    }

    #[test]
    fn ipv6_and_other_ethertypes_are_unsupported() {
        for ethertype in [0x86dd, 0x8100, 0x88cc] {
            let frame = ethernet(ethertype, &IPV6_START);
            assert_eq!(
                verdict(&frame, Some(&POD)),
                Verdict::Drop(DropReason::UnsupportedProtocol)
            );
        }
    }

    #[test]
    fn frame_shorter_than_ethernet_is_malformed() {
        let frame = ethernet(0x0800, &[]);
        assert_eq!(
            verdict(&frame[..13], Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn truncated_ipv4_header_is_malformed() {
        let frame = ethernet(0x0800, &IPV4_UDP_FROM_POD[..19]);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
        let frame = ethernet(0x0800, &[]);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn ihl_below_five_is_malformed() {
        let mut packet = IPV4_UDP_FROM_POD;
        packet[0] = 0x44;
        let frame = ethernet(0x0800, &packet);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn options_beyond_the_frame_are_malformed() {
        // IHL 15 = 60 bytes of header, but only 32 bytes of packet.
        let mut packet = IPV4_UDP_FROM_POD;
        packet[0] = 0x4f;
        let frame = ethernet(0x0800, &packet);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn ipv4_ethertype_with_another_version_is_malformed() {
        let mut packet = IPV4_UDP_FROM_POD;
        packet[0] = 0x65;
        let frame = ethernet(0x0800, &packet);
        assert_eq!(
            verdict(&frame, Some(&POD)),
            Verdict::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn reader_refuses_reads_past_the_end() {
        let bytes: &[u8] = &[1, 2, 3];
        assert_eq!(bytes.read::<2>(1), Some([2, 3]));
        assert_eq!(bytes.read::<2>(2), None);
        assert_eq!(bytes.read::<1>(usize::MAX), None);
    }
}
