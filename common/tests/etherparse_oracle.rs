//! etherparse as an independent oracle for the core's own header reads.
//!
//! The core reads headers with fixed-size, bounded reads so that the eBPF
//! verifier accepts them; its unit tests check those reads against fixtures
//! written by the same hands. Here a second implementation decides: frames
//! are built valid by etherparse, some are then broken by one or two named
//! mutations, and the core must read the same fields as etherparse where
//! etherparse accepts the header, refuse where it refuses, and reach the
//! verdict the oracle derives from etherparse's reading.
//!
//! Every case derives from its own seed (`SEED + case`), printed with any
//! failure, so a failing frame replays alone.

#[path = "../src/testgen.rs"]
mod testgen;

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    EtherType, Ethernet2Header, Ethernet2HeaderSlice, IpDscp, IpEcn, IpFragOffset, IpNumber,
    Ipv4Header, Ipv4HeaderSlice, Ipv4Options,
};
use testgen::Gen;
use weft_common::guard::pod_egress_verdict;
use weft_common::ipv4::{self, Ipv4Header as CoreHeader, Ipv4Repr};
use weft_common::maps::{Encap, EndpointInfo, NodeConfig};
use weft_common::packet;
use weft_common::uplink::{uplink_ingress, write_decapsulated};
use weft_common::verdict::{DropReason, PassReason, UplinkPassReason, UplinkVerdict, Verdict};

const SEED: u64 = 0x0e7e_4a25;
const CASES: u64 = 20_000;

const THIS_NODE: [u8; 4] = [198, 18, 0, 1];
const OTHER_NODE: [u8; 4] = [198, 18, 0, 2];
const STRANGER: [u8; 4] = [198, 18, 0, 66];
const NODES: [[u8; 4]; 2] = [THIS_NODE, OTHER_NODE];
const POD: [u8; 4] = [10, 244, 1, 5];
const L3: usize = Ethernet2Header::LEN;

// --- building valid frames with etherparse ------------------------------------

/// A random valid IPv4 header around `payload_len` bytes: any TOS, ident,
/// TTL and protocol, DF or not, sometimes options, sometimes a fragment.
fn random_header(g: &mut Gen, src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, g.u8(), IpNumber(g.u8()), src, dst).unwrap();
    h.dscp = IpDscp::try_new(g.u8() >> 2).unwrap();
    h.ecn = IpEcn::try_new(g.u8() & 3).unwrap();
    h.identification = g.u16();
    h.dont_fragment = g.below(2) == 0;
    if g.below(8) == 0 {
        h.dont_fragment = false;
        h.more_fragments = g.below(2) == 0;
        h.fragment_offset = IpFragOffset::try_new(g.u16() & 0x1fff).unwrap();
    }
    if g.below(6) == 0 {
        let words = 1 + g.below(10);
        h.options = Ipv4Options::try_from(&g.bytes(words * 4)[..]).unwrap();
    }
    h.set_payload_len(payload_len).unwrap();
    h.header_checksum = h.calc_header_checksum();
    h
}

fn ethernet(ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: [0x02, 0x42, 10, 244, 1, 5],
        destination: [0xee; 6],
        ether_type,
    };
    let mut frame = eth.to_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

fn packet(header: &Ipv4Header, payload: &[u8]) -> Vec<u8> {
    let mut p = header.to_bytes().to_vec();
    p.extend_from_slice(payload);
    p
}

/// A frame the uplink may see: mostly IP-in-IP between nodes and from
/// strangers, sometimes other IPv4 or another ethertype.
fn uplink_frame(g: &mut Gen) -> Vec<u8> {
    let inner_len = g.below(300);
    let inner_payload = g.bytes(inner_len);
    let inner_dst = g.addr();
    let inner = packet(&random_header(g, POD, inner_dst, inner_len), &inner_payload);
    let src = [THIS_NODE, OTHER_NODE, STRANGER][g.below(3)];
    let dst = [THIS_NODE, THIS_NODE, OTHER_NODE][g.below(3)];
    let mut outer = random_header(g, src, dst, inner.len());
    if g.below(5) != 0 {
        outer.protocol = IpNumber::IPV4;
        outer.header_checksum = outer.calc_header_checksum();
    }
    match g.below(20) {
        0 => ethernet(EtherType::ARP, &g.bytes(28)),
        1 => ethernet(EtherType(g.u16()), &packet(&outer, &inner)),
        _ => ethernet(EtherType::IPV4, &packet(&outer, &inner)),
    }
}

// --- named mutations -----------------------------------------------------------

/// Rewrites the checksum of the header at `at` over what of it is there,
/// so that a mutation breaks one field only.
fn fix_checksum(frame: &mut [u8], at: usize) {
    let Some(&first) = frame.get(at) else { return };
    let end = (at + usize::from(first & 0x0f) * 4).min(frame.len());
    if end < at + 12 {
        return;
    }
    frame[at + 10..at + 12].fill(0);
    let sum = Sum16BitWords::new()
        .add_slice(&frame[at..end])
        .ones_complement()
        .to_be();
    frame[at + 10..at + 12].copy_from_slice(&sum.to_be_bytes());
}

/// One named way to break a frame, applied to the outer header (at 14) or
/// to the header after it (the inner one of IP-in-IP); returns its name.
fn mutate(g: &mut Gen, frame: &mut Vec<u8>) -> String {
    let at = if g.below(3) == 0 {
        L3 + usize::from(frame.get(L3).map_or(5, |b| b & 0x0f)) * 4
    } else {
        L3
    };
    if frame.len() < at + 20 {
        frame.truncate(g.below(frame.len() + 1));
        return "truncated".into();
    }
    match g.below(9) {
        0 => {
            let keep = g.below(frame.len());
            frame.truncate(keep);
            format!("truncated to {keep}")
        }
        1 => {
            let version = [0u8, 5, 6, 15][g.below(4)];
            frame[at] = version << 4 | (frame[at] & 0x0f);
            fix_checksum(frame, at);
            format!("version {version} at {at}")
        }
        2 => {
            let ihl = g.below(16) as u8;
            frame[at] = 0x40 | ihl;
            fix_checksum(frame, at);
            format!("IHL {ihl} at {at}")
        }
        3 => {
            let total = [g.below(24) as u16, g.u16()][g.below(2)];
            frame[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
            fix_checksum(frame, at);
            format!("total length {total} at {at}")
        }
        4 => {
            frame[at + 10] ^= 1 << g.below(8);
            format!("checksum flipped at {at}")
        }
        5 => {
            let protocol = g.u8();
            frame[at + 9] = protocol;
            fix_checksum(frame, at);
            format!("protocol {protocol} at {at}")
        }
        6 => {
            let pad = 1 + g.below(30);
            frame.extend(std::iter::repeat_n(0, pad));
            format!("{pad} bytes of padding")
        }
        7 => {
            frame[at + 6] |= 0x20;
            fix_checksum(frame, at);
            format!("MF set at {at}")
        }
        _ => {
            let i = g.below(frame.len().min(L3 + 60 + 60));
            frame[i] ^= 1 + g.below(255) as u8;
            format!("byte {i} changed")
        }
    }
}

/// A frame for case `case`: valid, or broken by one or two mutations.
fn case_frame(case: u64) -> (Vec<u8>, String) {
    let mut g = Gen::new(SEED + case);
    let mut frame = uplink_frame(&mut g);
    let mut what = vec![];
    for _ in 0..g.below(3) {
        what.push(mutate(&mut g, &mut frame));
    }
    let what = format!(
        "case {case} (seed {:#x}): [{}]",
        SEED + case,
        what.join(", ")
    );
    (frame, what)
}

// --- the oracle ------------------------------------------------------------------

/// A header the oracle accepts: etherparse reads it (version 4, IHL ≥ 5,
/// IHL words present) and its total length covers the header and fits the
/// bytes after it, as Linux's `ip_rcv` requires.
fn oracle_header(bytes: &[u8]) -> Option<Ipv4HeaderSlice<'_>> {
    let h = Ipv4HeaderSlice::from_slice(bytes).ok()?;
    let total = usize::from(h.total_len());
    (h.slice().len() <= total && total <= bytes.len()).then_some(h)
}

/// The RFC 1071 check over the whole header, as the kernel does it.
fn oracle_checksum_ok(h: &Ipv4HeaderSlice<'_>) -> bool {
    Sum16BitWords::new().add_slice(h.slice()).ones_complement() == 0
}

fn assert_same_fields(core: &CoreHeader<'_, [u8]>, h: &Ipv4HeaderSlice<'_>, what: &str) {
    assert_eq!(core.version(), h.version(), "{what}");
    assert_eq!(core.header_len(), h.slice().len(), "{what}");
    assert_eq!(core.tos(), h.slice()[1], "{what}");
    assert_eq!(core.tos() >> 2, h.dcp().value(), "{what}");
    assert_eq!(core.tos() & 3, h.ecn().value(), "{what}");
    assert_eq!(core.total_len(), h.total_len(), "{what}");
    assert_eq!(
        core.payload_len(),
        usize::from(h.payload_len().unwrap()),
        "{what}"
    );
    assert_eq!(core.ident(), h.identification(), "{what}");
    assert_eq!(core.dont_fragment(), h.dont_fragment(), "{what}");
    assert_eq!(core.more_fragments(), h.more_fragments(), "{what}");
    assert_eq!(
        core.fragment_offset(),
        h.fragments_offset().byte_offset(),
        "{what}"
    );
    assert_eq!(core.is_fragment(), h.is_fragmenting_payload(), "{what}");
    assert_eq!(core.ttl(), h.ttl(), "{what}");
    assert_eq!(core.protocol(), h.protocol().0, "{what}");
    assert_eq!(core.checksum(), h.header_checksum(), "{what}");
    assert_eq!(core.src(), h.source(), "{what}");
    assert_eq!(core.dst(), h.destination(), "{what}");
    assert_eq!(core.verify_checksum(), oracle_checksum_ok(h), "{what}");
    // Over the bytes as they are: etherparse's parsed header drops the
    // reserved flag bit, which the checksum covers.
    let raw = h.slice();
    let expected = Sum16BitWords::new()
        .add_slice(&raw[..10])
        .add_slice(&raw[12..])
        .ones_complement()
        .to_be();
    assert_eq!(core.compute_checksum(), Some(expected), "{what}");
    if raw[6] & 0x80 == 0 {
        assert_eq!(expected, h.to_header().calc_header_checksum(), "{what}");
    }
}

/// The uplink's ingress verdict in mode ipip, derived from etherparse's
/// reading of the frame and the rules `uplink_ingress` documents.
fn oracle_uplink_ingress(frame: &[u8]) -> UplinkVerdict {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    if eth.ether_type() != EtherType::IPV4 {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpv4);
    }
    let Some(outer) = oracle_header(&frame[L3..]) else {
        return UplinkVerdict::Drop(DropReason::Malformed);
    };
    if outer.protocol() != IpNumber::IPV4 {
        return UplinkVerdict::Pass(UplinkPassReason::NotIpip);
    }
    if !oracle_checksum_ok(&outer) {
        return UplinkVerdict::Drop(DropReason::BadChecksum);
    }
    if !NODES.contains(&outer.source()) {
        return UplinkVerdict::Drop(DropReason::NotFromNode);
    }
    if outer.destination() != THIS_NODE {
        return UplinkVerdict::Pass(UplinkPassReason::NotForThisNode);
    }
    if outer.is_fragmenting_payload() {
        return UplinkVerdict::Drop(DropReason::Fragment);
    }
    let payload = &frame[L3 + outer.slice().len()..L3 + usize::from(outer.total_len())];
    match Ipv4HeaderSlice::from_slice(payload) {
        // Exactly one packet fills the tunnel: its total length is the
        // outer payload's.
        Ok(inner) if usize::from(inner.total_len()) == payload.len() => {
            UplinkVerdict::Decapsulate {
                outer_header_len: outer.slice().len() as u8,
                from_node: outer.source(),
            }
        }
        _ => UplinkVerdict::Drop(DropReason::Malformed),
    }
}

/// The pod guard's verdict for the endpoint [`POD`], from etherparse.
fn oracle_pod_egress(frame: &[u8]) -> Verdict {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    match eth.ether_type() {
        EtherType::ARP => Verdict::Pass(PassReason::Arp),
        EtherType::IPV4 => match Ipv4HeaderSlice::from_slice(&frame[L3..]) {
            Err(_) => Verdict::Drop(DropReason::Malformed),
            Ok(h) if h.source() == POD => Verdict::Pass(PassReason::OwnSource),
            Ok(_) => Verdict::Drop(DropReason::SpoofedSource),
        },
        _ => Verdict::Drop(DropReason::UnsupportedProtocol),
    }
}

// --- the properties -------------------------------------------------------------

#[test]
fn ipv4_view_reads_what_etherparse_reads_and_refuses_what_it_refuses() {
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let (frame, what) = case_frame(case);
        let oracle = frame.get(L3..).and_then(oracle_header);
        match (CoreHeader::new_checked(&frame[..], L3), oracle) {
            (Ok(core), Some(h)) => {
                assert_same_fields(&core, &h, &what);
                accepted += 1;
            }
            (Err(_), None) => refused += 1,
            (core, oracle) => panic!(
                "{what}: core {:?}, etherparse {:?}",
                core.map(|h| h.fixed_bytes()),
                oracle.map(|h| h.slice().to_vec())
            ),
        }
    }
    eprintln!("ipv4 view: {accepted} headers read alike, {refused} refused by both");
    // Both sides of the property were exercised.
    assert!(
        accepted > CASES / 2 && refused > CASES / 20,
        "{accepted} {refused}"
    );
}

#[test]
fn ethertype_and_source_reads_agree_with_etherparse() {
    for case in 0..CASES {
        let (frame, what) = case_frame(case);
        let eth = Ethernet2HeaderSlice::from_slice(&frame).ok();
        assert_eq!(
            packet::ethertype(&frame[..]),
            eth.map(|e| e.ether_type().0),
            "{what}"
        );
        // The guard's source read needs the header, not the total length.
        let source = frame
            .get(L3..)
            .and_then(|l3| Ipv4HeaderSlice::from_slice(l3).ok())
            .map(|h| h.source());
        assert_eq!(packet::ipv4_source(&frame[..]), source, "{what}");
    }
}

#[test]
fn uplink_ingress_verdicts_match_the_oracle_and_decapsulate_to_the_inner_packet() {
    let config = NodeConfig::new(THIS_NODE, Encap::Ipip);
    let mut decapsulated = 0;
    let mut verdicts = std::collections::BTreeMap::new();
    for case in 0..CASES {
        let (frame, what) = case_frame(case);
        let verdict = uplink_ingress(&frame[..], &NODES, &config);
        assert_eq!(verdict, oracle_uplink_ingress(&frame), "{what}");
        let name = format!("{verdict:?}");
        let name = name.split(" {").next().unwrap_or_default().to_owned();
        *verdicts.entry(name).or_insert(0) += 1;
        if let UplinkVerdict::Decapsulate {
            outer_header_len, ..
        } = verdict
        {
            let mut out = vec![0; frame.len()];
            let len = write_decapsulated(&frame, outer_header_len, &mut out).unwrap();
            let (eth, inner) = Ethernet2Header::from_slice(&out[..len]).unwrap();
            assert_eq!(eth.to_bytes()[..], frame[..L3], "{what}");
            let outer = Ipv4HeaderSlice::from_slice(&frame[L3..]).unwrap();
            let expected = Ipv4HeaderSlice::from_slice(&frame[L3 + outer.slice().len()..]);
            assert_eq!(
                Ipv4HeaderSlice::from_slice(inner).unwrap(),
                expected.unwrap(),
                "{what}"
            );
            decapsulated += 1;
        }
    }
    eprintln!("uplink ingress verdicts: {verdicts:?}");
    assert!(decapsulated > CASES / 20, "{decapsulated}");
}

#[test]
fn pod_guard_verdicts_match_the_oracle() {
    let endpoint = EndpointInfo::new(POD);
    for case in 0..CASES {
        let (mut frame, what) = case_frame(case);
        // Half the frames from the pod's own address.
        if case % 2 == 0 && frame.len() >= L3 + 20 {
            frame[L3 + 12..L3 + 16].copy_from_slice(&POD);
        }
        assert_eq!(
            pod_egress_verdict(&frame[..], Some(&endpoint)),
            oracle_pod_egress(&frame),
            "{what}"
        );
    }
}

#[test]
fn emitted_headers_are_etherparse_headers() {
    let mut g = Gen::new(SEED);
    for case in 0..CASES {
        // What the core emits: no options, never a fragment.
        let payload_len = g.below(1500);
        let src = g.addr();
        let mut h = random_header(&mut g, src, [10, 244, 2, 7], payload_len);
        h.options = Ipv4Options::default();
        h.more_fragments = false;
        h.fragment_offset = IpFragOffset::ZERO;
        h.set_payload_len(payload_len).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let repr = Ipv4Repr {
            src: h.source,
            dst: h.destination,
            protocol: h.protocol.0,
            ttl: h.time_to_live,
            tos: h.dscp.value() << 2 | h.ecn.value(),
            ident: h.identification,
            dont_fragment: h.dont_fragment,
            payload_len: payload_len as u16,
        };
        let what = format!("case {case}: {repr:?}");
        assert_eq!(
            repr.emit().map(|b| b.to_vec()),
            Some(h.to_bytes().to_vec()),
            "{what}"
        );
        // A total length past 16 bits is refused, as etherparse refuses it.
        let too_long = Ipv4Repr {
            payload_len: u16::MAX - 19 + g.below(20) as u16,
            ..repr
        };
        assert!(Ipv4Header::new(too_long.payload_len, 64, IpNumber::UDP, [0; 4], [0; 4]).is_err());
        assert_eq!(too_long.emit(), None, "{what}");
    }
}

#[test]
fn internet_checksum_is_etherparse_s() {
    let mut g = Gen::new(SEED);
    for case in 0..CASES {
        let len = g.below(100);
        let bytes = g.bytes(len);
        let expected = Sum16BitWords::new()
            .add_slice(&bytes)
            .ones_complement()
            .to_be();
        assert_eq!(
            ipv4::checksum(&bytes),
            expected,
            "case {case}: {bytes:02x?}"
        );
    }
}
