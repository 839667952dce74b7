//! Deterministic generation of Ethernet frames, valid and broken, for the
//! differential tests of the packet path (`tests/tests/differential.rs`):
//! the same frames go through the loaded eBPF programs and through
//! `weft-twin`, which must agree byte for byte.
//!
//! Everything derives from one seed (a xorshift64* generator, no
//! dependency), so a failing frame is reproduced by rerunning with the same
//! seed. Frames are built from an [`Addresses`] plan so that they hit the
//! interesting map entries (pod CIDRs, nodes, the endpoint's own address)
//! often, and from a mix of kinds:
//!
//! - pod traffic: IPv4 with TCP, UDP, ICMP or SCTP, sizes from tiny to
//!   jumbo and around the tunnel MTU, DF or not, sometimes with options or
//!   as a fragment;
//! - IP-in-IP: from nodes and from strangers, to this node and elsewhere,
//!   with a valid or broken inner packet, outer options, fragments, bad
//!   checksums and Ethernet padding;
//! - other protocols: ARP, VLAN-tagged IPv4, IPv6, LLDP, 802.3 lengths;
//! - malformed IPv4: truncated headers, wrong version, IHL below 5 or past
//!   the frame, total lengths shorter than the header or longer than the
//!   frame, bad checksums, and truncated Ethernet headers;
//! - mutations of the above: random bytes flipped in the headers, random
//!   truncation.
//!
//! Frames stay within [`MAX_FRAME_LEN`], what `BPF_PROG_TEST_RUN` accepts
//! for an skb.
//!
//! Every header is built valid by a library (etherparse, the twin's `wire`
//! builders for SCTP), checksums included; broken frames are valid ones
//! changed afterwards by a named mutation ([`mutate`], truncation, flipped
//! bytes), never headers assembled byte by byte.

use etherparse::icmpv4::{DestUnreachableHeader, TimeExceededCode};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IcmpEchoHeader,
    Icmpv4Header, Icmpv4Type, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
    Ipv6FlowLabel, Ipv6Header, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};
use weft_twin::wire::{PROTOCOL_SCTP, SctpInit, TcpControl, TcpSegment, udp_datagram};

/// The largest frame generated: `BPF_PROG_TEST_RUN` copies an skb's data
/// into one page with room for headroom and `skb_shared_info` (about 3.7 KB
/// on 4 KiB pages).
pub const MAX_FRAME_LEN: usize = 3600;

const ETHERTYPE_IPV4: u16 = EtherType::IPV4.0;
/// LLDP (IEEE 802.1AB), which etherparse does not name.
const ETHERTYPE_LLDP: u16 = 0x88cc;

const PROTOCOL_ICMP: u8 = IpNumber::ICMP.0;
const PROTOCOL_IPIP: u8 = IpNumber::IPV4.0;
const PROTOCOL_TCP: u8 = IpNumber::TCP.0;
const PROTOCOL_UDP: u8 = IpNumber::UDP.0;

/// A xorshift64* generator: deterministic, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Scrambled so that nearby seeds do not start alike; never zero.
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 24) as u8
    }

    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 24) as u16
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    pub fn addr(&mut self) -> [u8; 4] {
        let [a, b, c, d, ..] = self.next_u64().to_be_bytes();
        [a, b, c, d]
    }
}

/// The addresses frames are drawn from, so that they exercise the maps.
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    /// Underlay addresses of cluster nodes (the node set). The first is
    /// "this node", the usual outer destination of IP-in-IP.
    pub nodes: Vec<[u8; 4]>,
    /// Underlay addresses that are no node.
    pub strangers: Vec<[u8; 4]>,
    /// Pod addresses, in this node's and other nodes' pod CIDRs; the first
    /// is the endpoint a pod-side test watches (its own source).
    pub pods: Vec<[u8; 4]>,
    /// Addresses outside the pod network (the outside world, the underlay).
    pub others: Vec<[u8; 4]>,
}

/// How a frame was made, for the distribution and for failure reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    PodIpv4,
    Ipip,
    Arp,
    Vlan,
    Ipv6,
    OtherEthertype,
    TruncatedEthernet,
    MalformedIpv4,
    Vxlan,
    Mutated,
}

/// One generated frame: the bytes from the Ethernet header on.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: Kind,
    /// A short description of how it was built (`"ipip stranger, outer
    /// options"`), shown when the two sides disagree on it.
    pub what: String,
    pub bytes: Vec<u8>,
}

/// An IPv4 packet to build. [`Ipv4Spec::build`] writes a correct header
/// (checksum included) unless told otherwise.
#[derive(Clone, Debug)]
pub struct Ipv4Spec {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    /// Option bytes, a multiple of 4, at most 40.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Ipv4Spec {
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: Vec<u8>) -> Ipv4Spec {
        Ipv4Spec {
            src,
            dst,
            protocol,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
            payload,
        }
    }

    pub fn header_len(&self) -> usize {
        20 + self.options.len()
    }

    /// The header etherparse writes for this spec, checksum included.
    pub fn header(&self) -> Ipv4Header {
        let mut header = Ipv4Header::new(0, self.ttl, IpNumber(self.protocol), self.src, self.dst)
            .expect("an empty payload fits");
        header.dscp = IpDscp::try_new(self.tos >> 2).expect("six bits");
        header.ecn = IpEcn::try_new(self.tos & 0b11).expect("two bits");
        header.identification = self.ident;
        header.dont_fragment = self.dont_fragment;
        header.more_fragments = self.more_fragments;
        header.fragment_offset =
            IpFragOffset::try_new(self.fragment_offset).expect("a fragment offset fits 13 bits");
        header.options = Ipv4Options::try_from(&self.options[..])
            .expect("options are a multiple of 4 bytes, at most 40");
        header
            .set_payload_len(self.payload.len())
            .expect("a packet fits 65535 bytes");
        header.header_checksum = header.calc_header_checksum();
        header
    }

    /// The packet: [`Ipv4Spec::header`], then the payload.
    pub fn build(&self) -> Vec<u8> {
        let mut packet = self.header().to_bytes().to_vec();
        packet.extend_from_slice(&self.payload);
        packet
    }
}

/// An Ethernet II frame with fixed, locally administered MACs.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let header = Ethernet2Header {
        source: SOURCE_MAC,
        destination: [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02],
        ether_type: EtherType(ethertype),
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// The source MAC of every generated frame (and of its ARP sender).
const SOURCE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// Named ways to break a valid IPv4 packet (its header at offset 0): one
/// field set to a value no sender should write, through smoltcp's field
/// setters. The header checksum is left as it was; [`fix_checksum`]
/// makes it right again when only the field should be wrong.
pub mod mutate {
    use smoltcp::wire::{IpProtocol, Ipv4Packet};

    pub use weft_twin::wire::fix_ipv4_checksum as fix_checksum;

    /// The version nibble.
    pub fn set_version(packet: &mut [u8], version: u8) {
        Ipv4Packet::new_unchecked(packet).set_version(version);
    }

    /// IHL, in 32-bit words (0..=15).
    pub fn set_ihl(packet: &mut [u8], ihl: u8) {
        Ipv4Packet::new_unchecked(packet).set_header_len(ihl * 4);
    }

    pub fn set_total_len(packet: &mut [u8], total_len: u16) {
        Ipv4Packet::new_unchecked(packet).set_total_len(total_len);
    }

    pub fn set_protocol(packet: &mut [u8], protocol: u8) {
        Ipv4Packet::new_unchecked(packet).set_next_header(IpProtocol::from(protocol));
    }

    /// Flips the `mask` bits of the header checksum's high byte.
    pub fn corrupt_checksum(packet: &mut [u8], mask: u8) {
        let mut ip = Ipv4Packet::new_unchecked(packet);
        let sum = ip.checksum() ^ (u16::from(mask) << 8);
        ip.set_checksum(sum);
    }
}

/// The generator: [`FrameGen::frame`] draws one frame of a random kind.
#[derive(Clone, Debug)]
pub struct FrameGen {
    rng: Rng,
    addrs: Addresses,
}

impl FrameGen {
    /// `addrs` must name at least one address of each group.
    pub fn new(seed: u64, addrs: Addresses) -> FrameGen {
        assert!(
            !addrs.nodes.is_empty()
                && !addrs.strangers.is_empty()
                && !addrs.pods.is_empty()
                && !addrs.others.is_empty(),
            "every address group needs an address"
        );
        FrameGen {
            rng: Rng::new(seed),
            addrs,
        }
    }

    pub fn frames(&mut self, n: usize) -> Vec<Frame> {
        (0..n).map(|_| self.frame()).collect()
    }

    pub fn frame(&mut self) -> Frame {
        let roll = self.rng.below(100);
        let frame = match roll {
            0..=24 => self.pod_ipv4(),
            25..=49 => self.ipip(),
            50..=52 => self.arp(),
            53..=55 => self.vlan(),
            56..=58 => self.ipv6(),
            59..=60 => self.other_ethertype(),
            61 => self.truncated_ethernet(),
            62..=76 => self.malformed_ipv4(),
            77..=84 => self.vxlan(),
            _ => self.mutated(),
        };
        debug_assert!(frame.bytes.len() <= MAX_FRAME_LEN);
        frame
    }

    // --- addresses -----------------------------------------------------------

    /// A pod address, the watched endpoint's own one a third of the time.
    fn pod(&mut self) -> [u8; 4] {
        if self.rng.percent(33) {
            self.addrs.pods[0]
        } else {
            let pods = self.addrs.pods.clone();
            self.rng.pick(&pods)
        }
    }

    /// A destination: mostly pods, else the world, a node, or anything.
    fn destination(&mut self) -> [u8; 4] {
        match self.rng.below(10) {
            0..=5 => self.pod(),
            6 | 7 => {
                let others = self.addrs.others.clone();
                self.rng.pick(&others)
            }
            8 => {
                let nodes = self.addrs.nodes.clone();
                self.rng.pick(&nodes)
            }
            _ => self.rng.addr(),
        }
    }

    // --- payloads --------------------------------------------------------------

    /// An L4 payload (header and data) of `len` bytes for `protocol`
    /// between `src` and `dst`: a valid header, checksum included, then
    /// random data; cut to `len` where `len` is shorter than the header
    /// (an SCTP INIT is never longer than its 32 bytes).
    fn l4(&mut self, src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> Vec<u8> {
        let header_len = match protocol {
            PROTOCOL_TCP => TcpHeader::MIN_LEN,
            PROTOCOL_UDP => UdpHeader::LEN,
            PROTOCOL_ICMP => Icmpv4Header::MIN_LEN,
            _ => 0,
        };
        let data = self.rng.bytes(len.saturating_sub(header_len));
        let mut l4 = match protocol {
            PROTOCOL_TCP => TcpSegment {
                src_port: self.rng.u16(),
                dst_port: self.rng.u16(),
                control: self.rng.pick(&[
                    TcpControl::Syn,
                    TcpControl::Ack,
                    TcpControl::PshAck,
                    TcpControl::FinAck,
                    TcpControl::Rst,
                ]),
                seq: self.next_u32(),
                ack: self.next_u32(),
                window: self.rng.u16(),
            }
            .bytes(src, dst, &data),
            PROTOCOL_UDP => {
                let (src_port, dst_port) = (self.rng.u16(), self.rng.u16());
                let with_checksum = self.rng.percent(80);
                udp_datagram(src, dst, src_port, dst_port, &data, with_checksum)
            }
            PROTOCOL_ICMP => {
                let echo = IcmpEchoHeader {
                    id: self.rng.u16(),
                    seq: self.rng.u16(),
                };
                let kind = match self.rng.below(4) {
                    0 => Icmpv4Type::EchoRequest(echo),
                    1 => Icmpv4Type::EchoReply(echo),
                    2 => Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Network),
                    _ => Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
                };
                let mut icmp = Icmpv4Header::with_checksum(kind, &data).to_bytes().to_vec();
                icmp.extend_from_slice(&data);
                icmp
            }
            PROTOCOL_SCTP => SctpInit {
                src_port: self.rng.u16(),
                dst_port: self.rng.u16(),
                initiate_tag: self.next_u32().max(1),
            }
            .bytes(),
            _ => data,
        };
        l4.truncate(len);
        l4
    }

    fn next_u32(&mut self) -> u32 {
        (self.rng.next_u64() >> 32) as u32
    }

    /// The size of a pod packet (IPv4 total length): tiny to jumbo, and
    /// often within a few bytes of the sizes a 1500-byte uplink allows once
    /// 20 bytes of outer header are added (1480) or a jumbo one (8980 is
    /// beyond the test's reach, so "jumbo" means larger than 1500 here).
    fn packet_size(&mut self, room: usize) -> usize {
        let size = match self.rng.below(10) {
            0..=3 => self.rng.range(20, 200),
            4 | 5 => self.rng.range(1478, 1482),
            6 => self.rng.pick(&[1480, 1481]),
            7 => self.rng.range(200, 1500),
            8 => self.rng.range(1500, 3000),
            _ => self.rng.range(3000, MAX_FRAME_LEN),
        };
        size.min(room)
    }

    /// A well-formed pod packet of about `total_len` bytes (IPv4 header
    /// included), from `src` to `dst`.
    fn pod_packet(&mut self, src: [u8; 4], dst: [u8; 4], total_len: usize) -> (Ipv4Spec, String) {
        let protocol = self.rng.pick(&[
            PROTOCOL_TCP,
            PROTOCOL_TCP,
            PROTOCOL_UDP,
            PROTOCOL_ICMP,
            PROTOCOL_SCTP,
        ]);
        let mut spec = Ipv4Spec::new(src, dst, protocol, Vec::new());
        spec.dont_fragment = self.rng.percent(70);
        spec.tos = if self.rng.percent(20) {
            self.rng.u8()
        } else {
            0
        };
        spec.ttl = self.rng.pick(&[64, 63, 1, 255]);
        spec.ident = self.rng.u16();
        let mut what = format!("proto {protocol}");
        if self.rng.percent(8) {
            let words = self.rng.range(1, 10);
            spec.options = vec![0x01; words * 4]; // NOPs
            spec.options[words * 4 - 1] = 0x00; // end of options
            what += ", options";
        }
        if self.rng.percent(6) {
            spec.dont_fragment = false;
            spec.more_fragments = self.rng.percent(60);
            spec.fragment_offset = if spec.more_fragments && self.rng.percent(50) {
                0
            } else {
                self.rng.range(1, 400) as u16
            };
            what += ", fragment";
        }
        let payload_len = total_len.saturating_sub(spec.header_len());
        spec.payload = self.l4(src, dst, protocol, payload_len);
        (spec, what)
    }

    // --- kinds -----------------------------------------------------------------

    fn pod_ipv4(&mut self) -> Frame {
        let src = self.pod();
        let dst = self.destination();
        let size = self.packet_size(MAX_FRAME_LEN - 14);
        let (spec, what) = self.pod_packet(src, dst, size);
        let mut bytes = ethernet(ETHERTYPE_IPV4, &spec.build());
        if self.rng.percent(5) {
            // Ethernet padding after the datagram.
            let pad = self.rng.range(1, 30);
            bytes.extend(std::iter::repeat_n(0, pad));
        }
        bytes.truncate(MAX_FRAME_LEN);
        Frame {
            kind: Kind::PodIpv4,
            what: format!("pod ipv4 {size} B, {what}"),
            bytes,
        }
    }

    fn ipip(&mut self) -> Frame {
        let mut what = String::from("ipip");
        let outer_src = if self.rng.percent(70) {
            what += " from node";
            let nodes = self.addrs.nodes.clone();
            self.rng.pick(&nodes)
        } else {
            what += " from stranger";
            let strangers = self.addrs.strangers.clone();
            self.rng.pick(&strangers)
        };
        let outer_dst = if self.rng.percent(60) {
            what += " to self";
            self.addrs.nodes[0]
        } else {
            what += " elsewhere";
            self.destination()
        };
        let outer_options = if self.rng.percent(8) {
            what += ", outer options";
            vec![0x01; self.rng.range(1, 10) * 4]
        } else {
            Vec::new()
        };
        let room = MAX_FRAME_LEN - 14 - 20 - outer_options.len();
        let src = self.pod();
        let dst = self.pod();
        let size = self.packet_size(room);
        let (inner_spec, inner_what) = self.pod_packet(src, dst, size);
        let mut inner = inner_spec.build();
        match self.rng.below(12) {
            0 => {
                what += ", inner version 6";
                mutate::set_version(&mut inner, 6);
            }
            1 => {
                what += ", inner IHL < 5";
                mutate::set_ihl(&mut inner, self.rng.below(5) as u8);
            }
            2 => {
                what += ", inner total length off";
                let total = inner_spec.header().total_len;
                let off = self.rng.pick(&[-20i32, -1, 1, 7, 300]);
                let total = (i32::from(total) + off).clamp(0, 65535) as u16;
                mutate::set_total_len(&mut inner, total);
                mutate::fix_checksum(&mut inner);
            }
            3 => {
                what += ", inner truncated";
                let keep = self.rng.below(inner.len().min(40));
                inner.truncate(keep);
            }
            _ => what += &format!(", inner {inner_what}"),
        }
        let mut outer = Ipv4Spec::new(outer_src, outer_dst, PROTOCOL_IPIP, inner);
        outer.options = outer_options;
        outer.tos = inner_spec.tos;
        outer.ident = inner_spec.ident;
        outer.dont_fragment = inner_spec.dont_fragment;
        if self.rng.percent(8) {
            what += ", outer fragment";
            outer.dont_fragment = false;
            outer.more_fragments = self.rng.percent(50);
            outer.fragment_offset = if outer.more_fragments {
                self.rng.below(3) as u16
            } else {
                self.rng.range(1, 300) as u16
            };
        }
        let mut packet = outer.build();
        if self.rng.percent(8) {
            what += ", bad outer checksum";
            mutate::corrupt_checksum(&mut packet, 1 << self.rng.below(8));
        }
        if self.rng.percent(4) {
            what += ", not ipip";
            let protocol = self.rng.pick(&[PROTOCOL_TCP, PROTOCOL_UDP, 41, 47]);
            mutate::set_protocol(&mut packet, protocol);
            mutate::fix_checksum(&mut packet);
        }
        let mut bytes = ethernet(ETHERTYPE_IPV4, &packet);
        if self.rng.percent(5) {
            what += ", padded";
            let pad = self.rng.range(1, 30);
            bytes.extend(std::iter::repeat_n(0, pad));
        }
        bytes.truncate(MAX_FRAME_LEN);
        Frame {
            kind: Kind::Ipip,
            what,
            bytes,
        }
    }

    /// UDP to a node, mostly to the VXLAN port: from nodes and strangers,
    /// whole, first and later fragments, UDP headers cut short.
    fn vxlan(&mut self) -> Frame {
        let mut what = String::from("udp");
        let src = if self.rng.percent(50) {
            what += " from node";
            let nodes = self.addrs.nodes.clone();
            self.rng.pick(&nodes)
        } else {
            what += " from stranger";
            let strangers = self.addrs.strangers.clone();
            self.rng.pick(&strangers)
        };
        let dst = if self.rng.percent(80) {
            self.addrs.nodes[0]
        } else {
            self.destination()
        };
        let port: u16 = if self.rng.percent(80) {
            4789
        } else {
            self.rng.pick(&[53, 4790, 8472])
        };
        what += &format!(" to port {port}");
        let len = self.rng.range(0, 192);
        let data = self.rng.bytes(len);
        let src_port = self.rng.u16();
        let with_checksum = self.rng.percent(20);
        let udp = udp_datagram(src, dst, src_port, port, &data, with_checksum);
        let mut spec = Ipv4Spec::new(src, dst, PROTOCOL_UDP, udp);
        match self.rng.below(8) {
            0 => {
                what += ", first fragment";
                spec.dont_fragment = false;
                spec.more_fragments = true;
            }
            1 => {
                what += ", later fragment";
                spec.dont_fragment = false;
                spec.fragment_offset = self.rng.range(1, 100) as u16;
            }
            2 => {
                what += ", UDP header cut short";
                let keep = self.rng.below(8);
                spec.payload.truncate(keep);
            }
            _ => {}
        }
        Frame {
            kind: Kind::Vxlan,
            what,
            bytes: ethernet(ETHERTYPE_IPV4, &spec.build()),
        }
    }

    fn arp(&mut self) -> Frame {
        let op = self.rng.pick(&[ArpOperation::REQUEST, ArpOperation::REPLY]);
        let sender = self.destination();
        let target = self.destination();
        let mut arp = ArpPacket::from(ArpEthIpv4Packet {
            operation: op,
            sender_mac: SOURCE_MAC,
            sender_ipv4: sender,
            target_mac: [0; 6],
            target_ipv4: target,
        })
        .to_bytes()
        .to_vec();
        if self.rng.percent(30) {
            arp.extend(std::iter::repeat_n(0, 18)); // padded to 60 bytes
        }
        Frame {
            kind: Kind::Arp,
            what: format!("arp op {}", op.0),
            bytes: ethernet(EtherType::ARP.0, &arp),
        }
    }

    fn vlan(&mut self) -> Frame {
        let src = self.pod();
        let dst = self.destination();
        let (spec, _) = self.pod_packet(src, dst, 80);
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(self.rng.range(1, 255) as u16).expect("12 bits"),
            ether_type: EtherType::IPV4,
        };
        let mut tagged = tag.to_bytes().to_vec();
        tagged.extend(spec.build());
        Frame {
            kind: Kind::Vlan,
            what: "vlan-tagged ipv4".into(),
            bytes: ethernet(EtherType::VLAN_TAGGED_FRAME.0, &tagged),
        }
    }

    fn ipv6(&mut self) -> Frame {
        let payload_len = self.rng.range(0, 200);
        let header = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: payload_len as u16,
            next_header: IpNumber(self.rng.pick(&[6u8, 17, 58, 4])),
            hop_limit: 64,
            source: self.ipv6_addr(),
            destination: self.ipv6_addr(),
        };
        let mut p = header.to_bytes().to_vec();
        p.extend(self.rng.bytes(payload_len));
        if self.rng.percent(20) {
            p.truncate(self.rng.below(40));
        }
        Frame {
            kind: Kind::Ipv6,
            what: format!("ipv6, {} B", p.len()),
            bytes: ethernet(EtherType::IPV6.0, &p),
        }
    }

    fn ipv6_addr(&mut self) -> [u8; 16] {
        self.rng.bytes(16).try_into().expect("16 bytes")
    }

    fn other_ethertype(&mut self) -> Frame {
        let ethertype = match self.rng.below(3) {
            0 => ETHERTYPE_LLDP,
            1 => self.rng.below(0x600) as u16, // an 802.3 length
            _ => self.rng.u16(),
        };
        let len = self.rng.range(0, 100);
        let payload = self.rng.bytes(len);
        Frame {
            kind: Kind::OtherEthertype,
            what: format!("ethertype {ethertype:#06x}"),
            bytes: ethernet(ethertype, &payload),
        }
    }

    fn truncated_ethernet(&mut self) -> Frame {
        let len = self.rng.below(14);
        let mut bytes = ethernet(ETHERTYPE_IPV4, &[]);
        bytes.truncate(len);
        Frame {
            kind: Kind::TruncatedEthernet,
            what: format!("{len} bytes of Ethernet header"),
            bytes,
        }
    }

    fn malformed_ipv4(&mut self) -> Frame {
        // A valid packet or IP-in-IP, then one thing broken.
        let base = if self.rng.percent(50) {
            self.pod_ipv4()
        } else {
            self.ipip()
        };
        let mut bytes = base.bytes;
        let l3 = 14;
        let ip_len = bytes.len() - l3;
        let what = match self.rng.below(8) {
            0 => {
                let keep = self.rng.below(20.min(ip_len));
                bytes.truncate(l3 + keep);
                format!("ipv4 header truncated to {keep} B")
            }
            1 => {
                let version = self.rng.pick(&[0u8, 5, 6, 15]);
                mutate::set_version(&mut bytes[l3..], version);
                mutate::fix_checksum(&mut bytes[l3..]);
                format!("version {version}")
            }
            2 => {
                let ihl = self.rng.below(5) as u8;
                mutate::set_ihl(&mut bytes[l3..], ihl);
                format!("IHL {ihl}")
            }
            3 => {
                // IHL 15 in a frame too short for 60 bytes of header.
                mutate::set_ihl(&mut bytes[l3..], 15);
                let keep = self.rng.range(20, 59).min(ip_len);
                bytes.truncate(l3 + keep);
                format!("IHL 15 in {keep} B")
            }
            4 => {
                let total = self.rng.below(20) as u16;
                mutate::set_total_len(&mut bytes[l3..], total);
                mutate::fix_checksum(&mut bytes[l3..]);
                format!("total length {total} < header")
            }
            5 => {
                let total = (ip_len + self.rng.range(1, 100)).min(65535) as u16;
                mutate::set_total_len(&mut bytes[l3..], total);
                mutate::fix_checksum(&mut bytes[l3..]);
                format!("total length {total} > {ip_len} B in the frame")
            }
            6 => {
                mutate::corrupt_checksum(&mut bytes[l3..], 0xff);
                "bad header checksum".to_owned()
            }
            _ => {
                let keep = self.rng.below(ip_len);
                bytes.truncate(l3 + keep);
                format!("cut to {keep} B of IP")
            }
        };
        Frame {
            kind: Kind::MalformedIpv4,
            what: format!("malformed ({}): {what}", base.what),
            bytes,
        }
    }

    fn mutated(&mut self) -> Frame {
        let base = if self.rng.percent(50) {
            self.pod_ipv4()
        } else {
            self.ipip()
        };
        let mut bytes = base.bytes;
        let flips = self.rng.range(1, 3);
        let mut at = Vec::new();
        for _ in 0..flips {
            // Mostly in the headers (Ethernet, outer and inner IPv4).
            let i = self.rng.below(bytes.len().min(14 + 60 + 40));
            bytes[i] ^= self.rng.range(1, 255) as u8;
            at.push(i);
        }
        if self.rng.percent(10) {
            let keep = self.rng.range(14, bytes.len());
            bytes.truncate(keep);
        }
        Frame {
            kind: Kind::Mutated,
            what: format!("{} with bytes {at:?} changed", base.what),
            bytes,
        }
    }
}

/// Lowercase hex, 16 bytes a line (for failure reports).
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::ipv4::checksum;

    fn addrs() -> Addresses {
        Addresses {
            nodes: vec![[198, 18, 0, 1], [198, 18, 0, 2]],
            strangers: vec![[198, 18, 0, 66]],
            pods: vec![[10, 244, 1, 5], [10, 244, 2, 7]],
            others: vec![[8, 8, 8, 8]],
        }
    }

    #[test]
    fn same_seed_same_frames() {
        let a = FrameGen::new(7, addrs()).frames(300);
        let b = FrameGen::new(7, addrs()).frames(300);
        assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
        let c = FrameGen::new(8, addrs()).frames(300);
        assert!(a.iter().zip(&c).any(|(x, y)| x.bytes != y.bytes));
    }

    #[test]
    fn every_kind_appears_and_frames_fit_a_test_run() {
        let frames = FrameGen::new(1, addrs()).frames(3000);
        for kind in [
            Kind::PodIpv4,
            Kind::Ipip,
            Kind::Arp,
            Kind::Vlan,
            Kind::Ipv6,
            Kind::OtherEthertype,
            Kind::TruncatedEthernet,
            Kind::MalformedIpv4,
            Kind::Vxlan,
            Kind::Mutated,
        ] {
            assert!(
                frames.iter().filter(|f| f.kind == kind).count() >= 10,
                "{kind:?}"
            );
        }
        assert!(frames.iter().all(|f| f.bytes.len() <= MAX_FRAME_LEN));
    }

    #[test]
    fn built_headers_verify() {
        let spec = Ipv4Spec {
            options: vec![1, 1, 1, 0],
            ..Ipv4Spec::new([10, 0, 0, 1], [10, 0, 0, 2], PROTOCOL_UDP, vec![0; 12])
        };
        let p = spec.build();
        assert_eq!(p[0], 0x46);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 36);
        assert_eq!(checksum(&p[..24]), 0);
        let mut q = p.clone();
        q[8] = 1;
        mutate::fix_checksum(&mut q);
        assert_eq!(checksum(&q[..24]), 0);
    }

    /// Unbroken pod frames are valid to an independent parser, L4
    /// checksums included: only the named mutations break frames.
    #[test]
    fn pod_frames_verify_with_etherparse() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        use weft_twin::wire::sctp_checksum_ok;

        let mut checked = std::collections::BTreeMap::new();
        for frame in FrameGen::new(3, addrs()).frames(4000) {
            if frame.kind != Kind::PodIpv4 || frame.what.contains("fragment") {
                continue;
            }
            let Ok(packet) = SlicedPacket::from_ethernet(&frame.bytes) else {
                // Only an L4 header cut by a small packet size is refused.
                let ip = etherparse::Ipv4Slice::from_slice(&frame.bytes[14..]);
                assert!(ip.unwrap().payload().payload.len() < 20, "{}", frame.what);
                continue;
            };
            let Some(NetSlice::Ipv4(ip)) = &packet.net else {
                panic!("{}: no IPv4", frame.what);
            };
            let header = ip.header();
            assert_eq!(
                header.to_header().calc_header_checksum(),
                header.header_checksum(),
                "{}",
                frame.what
            );
            let (src, dst) = (header.source(), header.destination());
            let ok = match &packet.transport {
                Some(TransportSlice::Tcp(tcp)) => {
                    tcp.calc_checksum_ipv4(src, dst).unwrap() == tcp.checksum()
                }
                Some(TransportSlice::Udp(udp)) => {
                    let sum = udp
                        .to_header()
                        .calc_checksum_ipv4_raw(src, dst, udp.payload());
                    udp.checksum() == 0 || sum.unwrap() == udp.checksum()
                }
                Some(TransportSlice::Icmpv4(icmp)) => checksum(icmp.slice()) == 0,
                _ if header.protocol().0 == PROTOCOL_SCTP && ip.payload().payload.len() >= 32 => {
                    sctp_checksum_ok(ip.payload().payload)
                }
                // An L4 header cut by a small packet size.
                _ => continue,
            };
            assert!(ok, "{}: L4 checksum", frame.what);
            *checked.entry(header.protocol().0).or_insert(0) += 1;
        }
        for protocol in [PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_ICMP, PROTOCOL_SCTP] {
            assert!(
                checked.get(&protocol) > Some(&20),
                "{protocol}: {checked:?}"
            );
        }
    }
}
