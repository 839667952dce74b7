//! The few wire formats the twin's "kernel" writes and reads around the
//! shared decisions: Ethernet, ARP, IPv4, TCP, UDP, SCTP, ICMP and VXLAN.
//! Plain functions over byte slices, so tests and `weftctl trace` can build
//! the same packets.
//!
//! Headers are built and read with `etherparse` (checksums included), so
//! the twin's own frames are not a second hand-written reading of the RFCs
//! that the core's checked views could share mistakes with. What no library
//! here covers is written out once: the VXLAN header (RFC 7348), SCTP's
//! common header, INIT chunk and CRC32c (RFC 9260), and the checksum repair
//! of headers a library refuses to read (the frame generator's broken ones).

use std::fmt;
use std::net::Ipv4Addr;

use etherparse::checksum::Sum16BitWords;
use etherparse::icmpv4::{DestUnreachableHeader, TimeExceededCode};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, EtherType, Ethernet2Header, Ethernet2HeaderSlice,
    Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpDscp, IpEcn, IpNumber, Ipv4HeaderSlice, PacketBuilder,
    TcpHeader, TcpHeaderSlice, UdpHeader, UdpHeaderSlice,
};
use smoltcp::wire::{EthernetAddress, EthernetFrame, Ipv4Packet};
use weft_common::ipv4::{self, Ipv4Repr};
use weft_common::packet::ethernet;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// The host side of every pod veth (Calico uses the same fixed address):
    /// a pod only ever talks to its gateway, so one MAC serves all veths.
    pub const HOST_VETH: Mac = Mac([0xee; 6]);

    /// A node's uplink: `02:00` then its underlay address.
    pub const fn uplink(underlay: [u8; 4]) -> Mac {
        let [a, b, c, d] = underlay;
        Mac([0x02, 0x00, a, b, c, d])
    }

    /// A node's VTEP (its vxlan device): `02:57` then its underlay address,
    /// deterministic so every node can program every other's FDB.
    pub const fn vtep(underlay: [u8; 4]) -> Mac {
        let [a, b, c, d] = underlay;
        Mac([0x02, 0x57, a, b, c, d])
    }

    /// A pod's eth0: `02:42` then its address.
    pub const fn pod(ip: [u8; 4]) -> Mac {
        let [a, b, c, d] = ip;
        Mac([0x02, 0x42, a, b, c, d])
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Mac::BROADCAST
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

pub const ETHERTYPE_IPV4: u16 = ethernet::ETHERTYPE_IPV4;
pub const ETHERTYPE_ARP: u16 = ethernet::ETHERTYPE_ARP;
pub use weft_common::uplink::{VXLAN_OVERHEAD, VXLAN_PORT};
/// The VNI Weft's vxlan device uses (Calico's too).
pub const VXLAN_VNI: u32 = 4096;
/// Length of the VXLAN header between the UDP header and the inner frame.
pub const VXLAN_HEADER_LEN: usize = 8;
/// Linux quotes at most this much of the offending packet in an ICMP
/// error (576 minus the error's own IPv4 and ICMP headers).
pub const ICMP_QUOTE_MAX: usize = 576 - 20 - 8;
/// IPv4 protocol number of SCTP, which the core's policy must tell from TCP.
pub const PROTOCOL_SCTP: u8 = 132;

/// `dst`, `src`, `ethertype`, then `payload`.
pub fn ethernet_frame(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let header = Ethernet2Header {
        source: src.0,
        destination: dst.0,
        ether_type: EtherType(ethertype),
    };
    let mut frame = Vec::with_capacity(Ethernet2Header::LEN + payload.len());
    frame.extend_from_slice(&header.to_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn eth_dst(frame: &[u8]) -> Option<Mac> {
    Some(Mac(Ethernet2HeaderSlice::from_slice(frame)
        .ok()?
        .destination()))
}

pub fn eth_src(frame: &[u8]) -> Option<Mac> {
    Some(Mac(Ethernet2HeaderSlice::from_slice(frame).ok()?.source()))
}

pub fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(Ethernet2HeaderSlice::from_slice(frame).ok()?.ether_type().0)
}

/// Panics if `frame` is shorter than an Ethernet header.
pub fn set_eth_dst(frame: &mut [u8], mac: Mac) {
    EthernetFrame::new_unchecked(frame).set_dst_addr(EthernetAddress(mac.0));
}

/// Panics if `frame` is shorter than an Ethernet header.
pub fn set_eth_src(frame: &mut [u8], mac: Mac) {
    EthernetFrame::new_unchecked(frame).set_src_addr(EthernetAddress(mac.0));
}

/// An ARP packet for Ethernet and IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub operation: u16,
    pub sender_mac: Mac,
    pub sender_ip: [u8; 4],
    pub target_mac: Mac,
    pub target_ip: [u8; 4],
}

impl Arp {
    pub const REQUEST: u16 = ArpOperation::REQUEST.0;
    pub const REPLY: u16 = ArpOperation::REPLY.0;

    /// The ARP packet (Ethernet hardware, IPv4 protocol) after the
    /// frame's Ethernet header; the ethertype is the caller's to check.
    pub fn parse(frame: &[u8]) -> Option<Arp> {
        let (_, payload) = Ethernet2Header::from_slice(frame).ok()?;
        let arp = ArpPacket::from_slice(payload).ok()?.try_eth_ipv4().ok()?;
        Some(Arp {
            operation: arp.operation.0,
            sender_mac: Mac(arp.sender_mac),
            sender_ip: arp.sender_ipv4,
            target_mac: Mac(arp.target_mac),
            target_ip: arp.target_ipv4,
        })
    }

    /// The whole frame: broadcast for a request, to the target for a reply.
    pub fn frame(&self) -> Vec<u8> {
        let dst = if self.operation == Arp::REQUEST {
            Mac::BROADCAST
        } else {
            self.target_mac
        };
        let arp = ArpPacket::from(ArpEthIpv4Packet {
            operation: ArpOperation(self.operation),
            sender_mac: self.sender_mac.0,
            sender_ipv4: self.sender_ip,
            target_mac: self.target_mac.0,
            target_ipv4: self.target_ip,
        });
        let builder = PacketBuilder::ethernet2(self.sender_mac.0, dst.0).arp(arp);
        let mut frame = Vec::with_capacity(builder.size());
        builder
            .write(&mut frame)
            .expect("an ARP frame is written to a Vec");
        frame
    }

    /// The reply to this request from `mac`, which owns (or proxies) the target.
    pub fn reply(&self, mac: Mac) -> Arp {
        Arp {
            operation: Arp::REPLY,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }
}

/// The one's-complement sum of `bytes` folded and inverted (RFC 1071): 0
/// over an IPv4 header or ICMP message whose checksum is right, as Linux
/// checks them (`ip_fast_csum`, `csum_fold`).
fn checksum_residue(bytes: &[u8]) -> u16 {
    // etherparse sums in native byte order; `to_be` turns the result back.
    Sum16BitWords::new()
        .add_slice(bytes)
        .ones_complement()
        .to_be()
}

/// The IPv4 packet of an Ethernet frame, cut to its total length (Ethernet
/// padding removed), if its header is valid and its checksum right: what
/// Linux's `ip_rcv` lets through.
pub fn ipv4_payload(frame: &[u8]) -> Option<&[u8]> {
    if ethertype(frame)? != ETHERTYPE_IPV4 {
        return None;
    }
    let packet = frame.get(Ethernet2Header::LEN..)?;
    let header = Ipv4HeaderSlice::from_slice(packet).ok()?;
    let total_len = usize::from(header.total_len());
    if total_len < header.slice().len() || checksum_residue(header.slice()) != 0 {
        return None;
    }
    packet.get(..total_len)
}

/// Rewrites the header checksum of the IPv4 packet at the start of
/// `packet`, over as much of the header as is there: the frame generator
/// hands it truncated and malformed headers too, which no parser accepts.
pub fn fix_ipv4_checksum(packet: &mut [u8]) {
    let Some(&first) = packet.first() else {
        return;
    };
    let len = (usize::from(first & 0x0f) * 4).min(packet.len());
    if len < 12 {
        return;
    }
    packet[10..12].fill(0);
    let sum = checksum_residue(&packet[..len]).to_be_bytes();
    packet[10..12].copy_from_slice(&sum);
}

/// `ip_decrease_ttl`: one hop less, the header checksum rewritten, every
/// other byte kept. False, and `packet` untouched, if it holds no valid
/// IPv4 packet or its TTL is already 0.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else {
        return false;
    };
    let Some(ttl) = ip.hop_limit().checked_sub(1) else {
        return false;
    };
    ip.set_hop_limit(ttl);
    ip.fill_checksum();
    true
}

/// Fields of an IPv4 packet (header at offset 0) the path looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Fields {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    pub total_len: u16,
    pub header_len: usize,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In bytes.
    pub fragment_offset: u16,
}

impl Ipv4Fields {
    /// The fields of a structurally valid header (no checksum check):
    /// version 4, IHL ≥ 5, and header ≤ total length ≤ bytes in `packet`.
    pub fn parse(packet: &[u8]) -> Option<Ipv4Fields> {
        let header = Ipv4HeaderSlice::from_slice(packet).ok()?;
        let total_len = usize::from(header.total_len());
        (header.slice().len() <= total_len && total_len <= packet.len())
            .then(|| Ipv4Fields::of(&header))
    }

    /// The fields of a header whose total length is not checked: the quote
    /// of an ICMP error, cut short of the length it names.
    fn of(header: &Ipv4HeaderSlice<'_>) -> Ipv4Fields {
        Ipv4Fields {
            src: header.source(),
            dst: header.destination(),
            protocol: header.protocol().0,
            ttl: header.ttl(),
            total_len: header.total_len(),
            header_len: header.slice().len(),
            dont_fragment: header.dont_fragment(),
            more_fragments: header.more_fragments(),
            fragment_offset: header.fragments_offset().byte_offset(),
        }
    }

    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.fragment_offset != 0
    }
}

/// A packet in one line, for steps and test messages: addresses, protocol,
/// ports, and for IP-in-IP and VXLAN the packet inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Source and destination port (TCP, UDP, SCTP) or ICMP type and code,
    /// when the packet holds the whole L4 header.
    pub ports: Option<(u16, u16)>,
    pub total_len: u16,
    pub dont_fragment: bool,
    pub fragment: bool,
    /// For IP-in-IP and VXLAN: the inner packet's addresses, protocol, ports.
    pub inner: Option<InnerSummary>,
}

/// The packet inside a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerSummary {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
    pub fragment: bool,
}

/// Ports (or ICMP type and code) of the L4 header after the IPv4 header,
/// if it is all there; none for later fragments.
fn l4_ports(packet: &[u8], f: &Ipv4Fields) -> Option<(u16, u16)> {
    if f.fragment_offset != 0 {
        return None;
    }
    let l4 = packet.get(f.header_len..)?;
    match f.protocol {
        ipv4::PROTOCOL_TCP => TcpHeaderSlice::from_slice(l4)
            .ok()
            .map(|tcp| (tcp.source_port(), tcp.destination_port())),
        ipv4::PROTOCOL_UDP => UdpHeaderSlice::from_slice(l4)
            .ok()
            .map(|udp| (udp.source_port(), udp.destination_port())),
        ipv4::PROTOCOL_ICMP => Icmpv4Slice::from_slice(l4)
            .ok()
            .map(|icmp| (icmp.type_u8().into(), icmp.code_u8().into())),
        PROTOCOL_SCTP => SctpCommonHeader::parse(l4).map(|h| (h.src_port, h.dst_port)),
        _ => None,
    }
}

fn inner_summary(packet: &[u8]) -> Option<InnerSummary> {
    let f = Ipv4Fields::parse(packet)?;
    Some(InnerSummary {
        src: f.src,
        dst: f.dst,
        protocol: f.protocol,
        ports: l4_ports(packet, &f),
        fragment: f.is_fragment(),
    })
}

impl PacketSummary {
    /// The summary of the IPv4 packet at the start of `packet`.
    pub fn of_packet(packet: &[u8]) -> Option<PacketSummary> {
        let f = Ipv4Fields::parse(packet)?;
        let ports = l4_ports(packet, &f);
        let payload = packet.get(f.header_len..usize::from(f.total_len))?;
        let inner = match (f.protocol, ports) {
            (ipv4::PROTOCOL_IPIP, _) if !f.is_fragment() => inner_summary(payload),
            (ipv4::PROTOCOL_UDP, Some((_, VXLAN_PORT))) => payload
                .get(UdpHeader::LEN + VXLAN_HEADER_LEN..)
                .and_then(|inner| Ethernet2Header::from_slice(inner).ok())
                .filter(|(eth, _)| eth.ether_type == EtherType::IPV4)
                .and_then(|(_, packet)| inner_summary(packet)),
            _ => None,
        };
        Some(PacketSummary {
            src: f.src,
            dst: f.dst,
            protocol: f.protocol,
            ports,
            total_len: f.total_len,
            dont_fragment: f.dont_fragment,
            fragment: f.is_fragment(),
            inner,
        })
    }

    /// The summary of an Ethernet frame's IPv4 packet.
    pub fn of_frame(frame: &[u8]) -> Option<PacketSummary> {
        let (eth, packet) = Ethernet2Header::from_slice(frame).ok()?;
        if eth.ether_type != EtherType::IPV4 {
            return None;
        }
        PacketSummary::of_packet(packet)
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        ipv4::PROTOCOL_ICMP => "icmp".into(),
        ipv4::PROTOCOL_IPIP => "ipip".into(),
        ipv4::PROTOCOL_TCP => "tcp".into(),
        ipv4::PROTOCOL_UDP => "udp".into(),
        PROTOCOL_SCTP => "sctp".into(),
        other => format!("proto {other}"),
    }
}

fn write_flow(
    f: &mut fmt::Formatter<'_>,
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    ports: Option<(u16, u16)>,
) -> fmt::Result {
    let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
    match (protocol, ports) {
        (ipv4::PROTOCOL_ICMP, Some((t, c))) => {
            write!(f, "{src} > {dst} icmp type {t} code {c}")
        }
        (_, Some((sp, dp))) => write!(f, "{src}:{sp} > {dst}:{dp} {}", protocol_name(protocol)),
        _ => write!(f, "{src} > {dst} {}", protocol_name(protocol)),
    }
}

impl fmt::Display for PacketSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_flow(f, self.src, self.dst, self.protocol, self.ports)?;
        write!(f, " len {}", self.total_len)?;
        if self.dont_fragment {
            write!(f, " DF")?;
        }
        if self.fragment {
            write!(f, " fragment")?;
        }
        if let Some(inner) = self.inner {
            write!(f, " [")?;
            write_flow(f, inner.src, inner.dst, inner.protocol, inner.ports)?;
            if inner.fragment {
                write!(f, " fragment")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// The etherparse header for `repr` with `payload_len` bytes after it,
/// checksum included.
fn ipv4_header(repr: Ipv4Repr, payload_len: usize) -> etherparse::Ipv4Header {
    let payload_len = u16::try_from(payload_len).expect("an IPv4 packet fits 65535 bytes");
    let mut header = etherparse::Ipv4Header::new(
        payload_len,
        repr.ttl,
        IpNumber(repr.protocol),
        repr.src,
        repr.dst,
    )
    .expect("an IPv4 packet fits 65535 bytes");
    header.dscp = IpDscp::try_new(repr.tos >> 2).expect("six bits");
    header.ecn = IpEcn::try_new(repr.tos & 0b11).expect("two bits");
    header.identification = repr.ident;
    header.dont_fragment = repr.dont_fragment;
    header.header_checksum = header.calc_header_checksum();
    header
}

/// An IPv4 packet: a 20-byte header from `repr` (its `payload_len` is
/// taken from `payload`), then `payload`.
pub fn ipv4_packet(repr: Ipv4Repr, payload: &[u8]) -> Vec<u8> {
    let header = ipv4_header(repr, payload.len());
    let mut packet = Vec::with_capacity(header.header_len() + payload.len());
    packet.extend_from_slice(&header.to_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The repr of a packet a host sends: TTL 64, no TOS.
pub fn host_repr(src: [u8; 4], dst: [u8; 4], protocol: u8, ident: u16, df: bool) -> Ipv4Repr {
    Ipv4Repr {
        src,
        dst,
        protocol,
        ttl: 64,
        tos: 0,
        ident,
        dont_fragment: df,
        payload_len: 0,
    }
}

/// The RFC 768 checksum of a UDP datagram (`udp`, header included, its
/// checksum field ignored) between `src` and `dst`; 0 is sent as 0xffff.
/// None if `udp` is shorter than a UDP header.
pub fn udp_checksum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> Option<u16> {
    let (header, payload) = UdpHeader::from_slice(udp).ok()?;
    header.calc_checksum_ipv4_raw(src, dst, payload).ok()
}

/// A UDP header and `payload`, with its checksum (`with_checksum`) or 0
/// (as Linux's vxlan device sends by default).
pub fn udp_datagram(
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut header = UdpHeader::without_ipv4_checksum(src_port, dst_port, payload.len())
        .expect("a UDP datagram fits 65535 bytes");
    if with_checksum {
        header.checksum = header
            .calc_checksum_ipv4_raw(src, dst, payload)
            .expect("a UDP datagram fits 65535 bytes");
    }
    let mut udp = Vec::with_capacity(UdpHeader::LEN + payload.len());
    udp.extend_from_slice(&header.to_bytes());
    udp.extend_from_slice(payload);
    udp
}

/// The control flags of the TCP segments policy and connection-tracking
/// tests send: the opening handshake, data, the close, the reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpControl {
    Syn,
    SynAck,
    Ack,
    PshAck,
    FinAck,
    Rst,
    RstAck,
}

/// A TCP segment without options, for [`TcpSegment::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub src_port: u16,
    pub dst_port: u16,
    pub control: TcpControl,
    pub seq: u32,
    /// Sent only with the ACK flag (zero otherwise).
    pub ack: u32,
    pub window: u16,
}

impl TcpSegment {
    /// A connection's first segment: SYN, sequence number 1, Linux's
    /// default window.
    pub fn syn(src_port: u16, dst_port: u16) -> TcpSegment {
        TcpSegment {
            src_port,
            dst_port,
            control: TcpControl::Syn,
            seq: 1,
            ack: 0,
            window: 64240,
        }
    }

    /// The segment that answers this one with `control`: ports swapped, it
    /// acknowledges this one's sequence number plus one.
    pub fn answer(&self, control: TcpControl) -> TcpSegment {
        TcpSegment {
            src_port: self.dst_port,
            dst_port: self.src_port,
            control,
            seq: self.ack,
            ack: self.seq.wrapping_add(1),
            window: self.window,
        }
    }

    /// The segment with `payload`, its checksum over `src` and `dst`.
    pub fn bytes(&self, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        use TcpControl::*;
        let mut tcp = TcpHeader::new(self.src_port, self.dst_port, self.seq, self.window);
        tcp.syn = matches!(self.control, Syn | SynAck);
        tcp.fin = self.control == FinAck;
        tcp.rst = matches!(self.control, Rst | RstAck);
        tcp.psh = self.control == PshAck;
        tcp.ack = !matches!(self.control, Syn | Rst);
        if tcp.ack {
            tcp.acknowledgment_number = self.ack;
        }
        tcp.checksum = tcp
            .calc_checksum_ipv4_raw(src, dst, payload)
            .expect("a TCP segment fits 65535 bytes");
        let mut bytes = tcp.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }
}

/// An ICMP echo request (or reply) with `payload`, checksum included.
pub fn icmp_echo(request: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let echo = etherparse::IcmpEchoHeader { id, seq };
    let kind = if request {
        Icmpv4Type::EchoRequest(echo)
    } else {
        Icmpv4Type::EchoReply(echo)
    };
    icmp_message(kind, payload)
}

fn icmp_message(kind: Icmpv4Type, payload: &[u8]) -> Vec<u8> {
    let mut icmp = Icmpv4Header::with_checksum(kind, payload)
        .to_bytes()
        .to_vec();
    icmp.extend_from_slice(payload);
    icmp
}

/// The ICMP errors the twin's nodes send, as Linux's `icmp_send` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpErrorKind {
    /// Type 3 code 0: no route to the destination's network.
    NetUnreachable,
    /// Type 3 code 3: nothing listens on the port (UDP, SCTP).
    PortUnreachable,
    /// Type 3 code 4: fragmentation needed and DF set, with the next-hop MTU.
    FragmentationNeeded { mtu: u16 },
    /// Type 11 code 0: the TTL ran out in transit.
    TtlExceeded,
}

impl IcmpErrorKind {
    fn icmp_type(self) -> Icmpv4Type {
        match self {
            IcmpErrorKind::NetUnreachable => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Network)
            }
            IcmpErrorKind::PortUnreachable => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
            }
            IcmpErrorKind::FragmentationNeeded { mtu } => {
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                })
            }
            IcmpErrorKind::TtlExceeded => {
                Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
            }
        }
    }
}

/// An ICMP error message as Linux's `icmp_send` writes it: the error's
/// type and code, its 32-bit field (the next-hop MTU for "fragmentation
/// needed"), then the offending packet's start, at most
/// [`ICMP_QUOTE_MAX`] bytes of it.
pub fn icmp_error(kind: IcmpErrorKind, offending: &[u8]) -> Vec<u8> {
    let quote = &offending[..offending.len().min(ICMP_QUOTE_MAX)];
    icmp_message(kind.icmp_type(), quote)
}

/// SCTP's common header (RFC 9260 §3.1): ports, verification tag, CRC32c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SctpCommonHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    pub checksum: u32,
}

impl SctpCommonHeader {
    pub const LEN: usize = 12;

    /// The common header at the start of `sctp`, if it is all there.
    pub fn parse(sctp: &[u8]) -> Option<SctpCommonHeader> {
        let word = |at: usize| -> Option<[u8; 4]> { sctp.get(at..at + 4)?.try_into().ok() };
        let [a, b, c, d] = word(0)?;
        Some(SctpCommonHeader {
            src_port: u16::from_be_bytes([a, b]),
            dst_port: u16::from_be_bytes([c, d]),
            verification_tag: u32::from_be_bytes(word(4)?),
            checksum: u32::from_le_bytes(word(8)?),
        })
    }
}

/// An SCTP packet holding one INIT chunk (RFC 9260 §3.3.2), what a client
/// sends first: verification tag 0, no optional parameters. The only SCTP
/// the twin and the lab send (this kernel has no SCTP sockets), so that
/// policy sees SCTP as SCTP and never as TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SctpInit {
    pub src_port: u16,
    pub dst_port: u16,
    /// The tag the peer must put in its packets; never 0.
    pub initiate_tag: u32,
}

impl SctpInit {
    const CHUNK_INIT: u8 = 1;
    const CHUNK_LEN: u16 = 20;

    /// The packet: common header, then the INIT chunk, CRC32c over both.
    pub fn bytes(&self) -> Vec<u8> {
        let mut sctp = Vec::with_capacity(SctpCommonHeader::LEN + usize::from(Self::CHUNK_LEN));
        sctp.extend_from_slice(&self.src_port.to_be_bytes());
        sctp.extend_from_slice(&self.dst_port.to_be_bytes());
        sctp.extend_from_slice(&0u32.to_be_bytes()); // verification tag
        sctp.extend_from_slice(&0u32.to_be_bytes()); // checksum, below
        sctp.extend_from_slice(&[Self::CHUNK_INIT, 0]);
        sctp.extend_from_slice(&Self::CHUNK_LEN.to_be_bytes());
        sctp.extend_from_slice(&self.initiate_tag.to_be_bytes());
        sctp.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
        sctp.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
        sctp.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
        sctp.extend_from_slice(&self.initiate_tag.to_be_bytes()); // initial TSN
        // RFC 9260 appendix A: the CRC goes out least significant byte first.
        let crc = crc32c(&sctp);
        sctp[8..12].copy_from_slice(&crc.to_le_bytes());
        sctp
    }
}

/// The CRC32c (Castagnoli, reflected polynomial 0x82F63B78) of `bytes`,
/// SCTP's checksum (RFC 9260 appendix A). Bitwise: test packets are small.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// True if an SCTP packet's CRC32c is right.
pub fn sctp_checksum_ok(sctp: &[u8]) -> bool {
    let Some(header) = SctpCommonHeader::parse(sctp) else {
        return false;
    };
    let mut zeroed = sctp.to_vec();
    zeroed[8..12].fill(0);
    crc32c(&zeroed) == header.checksum
}

/// What a synthetic packet carries, for [`Probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP SYN to `dst_port`.
    Tcp { src_port: u16, dst_port: u16 },
    /// A UDP datagram to `dst_port`.
    Udp { src_port: u16, dst_port: u16 },
    /// An ICMP echo request.
    Ping,
    /// An SCTP INIT to `dst_port` (52 bytes whatever the probe's length:
    /// policy decides on the INIT, so nothing pads it).
    Sctp { src_port: u16, dst_port: u16 },
}

/// A synthetic packet, as `weftctl trace` would describe one: who sends it,
/// to whom, what, how big (IPv4 total length) and whether DF is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub kind: ProbeKind,
    /// IPv4 total length; raised to the smallest packet of the kind.
    pub total_len: u16,
    pub dont_fragment: bool,
}

impl Probe {
    /// A small DF UDP datagram from port 40000 to `dst_port`.
    pub fn udp(src: [u8; 4], dst: [u8; 4], dst_port: u16) -> Probe {
        Probe {
            src,
            dst,
            kind: ProbeKind::Udp {
                src_port: 40000,
                dst_port,
            },
            total_len: 0,
            dont_fragment: true,
        }
    }

    /// A DF TCP SYN from port 40000 to `dst_port`.
    pub fn tcp(src: [u8; 4], dst: [u8; 4], dst_port: u16) -> Probe {
        Probe {
            kind: ProbeKind::Tcp {
                src_port: 40000,
                dst_port,
            },
            ..Probe::udp(src, dst, dst_port)
        }
    }

    /// A DF ICMP echo request.
    pub fn ping(src: [u8; 4], dst: [u8; 4]) -> Probe {
        Probe {
            kind: ProbeKind::Ping,
            ..Probe::udp(src, dst, 0)
        }
    }

    /// A DF SCTP INIT from port 40000 to `dst_port`.
    pub fn sctp(src: [u8; 4], dst: [u8; 4], dst_port: u16) -> Probe {
        Probe {
            kind: ProbeKind::Sctp {
                src_port: 40000,
                dst_port,
            },
            ..Probe::udp(src, dst, dst_port)
        }
    }

    /// The same probe `total_len` bytes long (IPv4 total length).
    pub fn with_len(self, total_len: u16) -> Probe {
        Probe { total_len, ..self }
    }

    /// The same probe with DF set or not.
    pub fn with_df(self, dont_fragment: bool) -> Probe {
        Probe {
            dont_fragment,
            ..self
        }
    }

    /// The IPv4 packet, checksums included.
    pub fn packet(&self) -> Vec<u8> {
        let (protocol, header_len) = match self.kind {
            ProbeKind::Tcp { .. } => (ipv4::PROTOCOL_TCP, TcpHeader::MIN_LEN),
            ProbeKind::Udp { .. } => (ipv4::PROTOCOL_UDP, UdpHeader::LEN),
            ProbeKind::Ping => (ipv4::PROTOCOL_ICMP, Icmpv4Header::MIN_LEN),
            ProbeKind::Sctp { .. } => (PROTOCOL_SCTP, 0),
        };
        let payload_len = usize::from(self.total_len).saturating_sub(20 + header_len);
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let l4 = match self.kind {
            ProbeKind::Udp { src_port, dst_port } => {
                udp_datagram(self.src, self.dst, src_port, dst_port, &payload, true)
            }
            ProbeKind::Tcp { src_port, dst_port } => {
                TcpSegment::syn(src_port, dst_port).bytes(self.src, self.dst, &payload)
            }
            ProbeKind::Ping => icmp_echo(true, 0x5757, 1, &payload),
            ProbeKind::Sctp { src_port, dst_port } => SctpInit {
                src_port,
                dst_port,
                initiate_tag: 0x5757_0001,
            }
            .bytes(),
        };
        ipv4_packet(
            host_repr(self.src, self.dst, protocol, 0x5757, self.dont_fragment),
            &l4,
        )
    }
}

/// An ICMP error as the twin's pods and tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpError {
    /// Who sent the error (the IPv4 source).
    pub from: [u8; 4],
    pub kind: u8,
    pub code: u8,
    /// Next-hop MTU for type 3 code 4, else 0.
    pub mtu: u16,
    /// The quoted (offending) packet's header fields; its total length is
    /// the quoted packet's, longer than the quote.
    pub quoted: Ipv4Fields,
}

impl IcmpError {
    /// Type 3 code 4: fragmentation needed and DF set.
    pub fn is_frag_needed(&self) -> bool {
        self.kind == 3 && self.code == 4
    }

    /// The ICMP error (destination unreachable or time exceeded) an
    /// Ethernet frame carries, if it carries one with a right checksum and
    /// a whole quoted IPv4 header.
    pub fn parse_frame(frame: &[u8]) -> Option<IcmpError> {
        let packet = ipv4_payload(frame)?;
        let f = Ipv4Fields::parse(packet)?;
        if f.protocol != ipv4::PROTOCOL_ICMP || f.is_fragment() {
            return None;
        }
        let icmp = Icmpv4Slice::from_slice(&packet[f.header_len..]).ok()?;
        if checksum_residue(icmp.slice()) != 0 {
            return None;
        }
        let mtu = match icmp.icmp_type() {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu,
            }) => next_hop_mtu,
            Icmpv4Type::DestinationUnreachable(_) | Icmpv4Type::TimeExceeded(_) => 0,
            _ => return None,
        };
        let quoted = Ipv4HeaderSlice::from_slice(icmp.payload()).ok()?;
        Some(IcmpError {
            from: f.src,
            kind: icmp.type_u8(),
            code: icmp.code_u8(),
            mtu,
            quoted: Ipv4Fields::of(&quoted),
        })
    }
}

/// The UDP source port Linux's vxlan device picks for a flow
/// (`udp_flow_src_port`): a hash of the inner flow scaled into the local
/// port range 32768..=60999, so one flow keeps one port and flows spread
/// over the underlay's ECMP paths. The hash is FNV-1a, not the kernel's
/// jhash: the port differs from Linux's, its properties do not.
pub fn flow_src_port(inner: &[u8]) -> u16 {
    let mut key = Vec::with_capacity(13);
    if let Some(f) = Ipv4Fields::parse(inner) {
        key.extend_from_slice(&f.src);
        key.extend_from_slice(&f.dst);
        key.push(f.protocol);
        if let Some((sp, dp)) = l4_ports(inner, &f).filter(|_| f.protocol != ipv4::PROTOCOL_ICMP) {
            key.extend_from_slice(&sp.to_be_bytes());
            key.extend_from_slice(&dp.to_be_bytes());
        }
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let (min, max) = (32768u64, 60999u64);
    (((u64::from(hash) * (max - min)) >> 32) + min) as u16
}

/// The 8-byte VXLAN header for `vni` (the I flag set).
pub fn vxlan_header(vni: u32) -> [u8; VXLAN_HEADER_LEN] {
    let [_, a, b, c] = vni.to_be_bytes();
    [0x08, 0, 0, 0, a, b, c, 0]
}

/// The VNI of a VXLAN header, if its I flag is set.
pub fn vxlan_vni(header: &[u8]) -> Option<u32> {
    let h = header.get(..VXLAN_HEADER_LEN)?;
    if h[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::ipv4::checksum;

    #[test]
    fn probe_packets_are_valid_and_sized() {
        for probe in [
            Probe::udp([10, 244, 1, 5], [10, 244, 2, 7], 53),
            Probe::tcp([10, 244, 1, 5], [10, 244, 2, 7], 80).with_len(1400),
            Probe::ping([10, 244, 1, 5], [10, 244, 2, 7]).with_len(100),
        ] {
            let p = probe.packet();
            let f = Ipv4Fields::parse(&p).unwrap();
            assert_eq!(usize::from(f.total_len), p.len());
            assert_eq!(checksum(&p[..20]), 0);
            assert!(f.dont_fragment);
        }
        let p = Probe::tcp([1, 1, 1, 1], [2, 2, 2, 2], 80)
            .with_len(1400)
            .packet();
        assert_eq!(p.len(), 1400);
        let s = PacketSummary::of_packet(&p).unwrap();
        assert_eq!(s.to_string(), "1.1.1.1:40000 > 2.2.2.2:80 tcp len 1400 DF");
    }

    #[test]
    fn udp_checksum_matches_a_known_datagram() {
        // 10.244.1.5:4000 -> 10.244.2.7:53 "weft"; common's fixture.
        let udp = udp_datagram([10, 244, 1, 5], [10, 244, 2, 7], 4000, 53, b"weft", true);
        assert_eq!(
            udp_checksum([10, 244, 1, 5], [10, 244, 2, 7], &udp),
            Some(u16::from_be_bytes([udp[6], udp[7]]))
        );
        // Verifying over the datagram with its checksum gives all ones.
        let mut pseudo = vec![10, 244, 1, 5, 10, 244, 2, 7, 0, 17, 0, 12];
        pseudo.extend_from_slice(&udp);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn icmp_errors_quote_at_most_548_bytes_and_parse_back() {
        let offending = Probe::udp([10, 244, 1, 5], [10, 244, 2, 7], 53)
            .with_len(1481)
            .packet();
        let icmp = icmp_error(IcmpErrorKind::FragmentationNeeded { mtu: 1480 }, &offending);
        assert_eq!(icmp.len(), 8 + ICMP_QUOTE_MAX);
        let packet = ipv4_packet(
            host_repr([198, 18, 0, 1], [10, 244, 1, 5], 1, 7, false),
            &icmp,
        );
        let frame = ethernet_frame(Mac::pod([10, 244, 1, 5]), Mac::HOST_VETH, 0x0800, &packet);
        let error = IcmpError::parse_frame(&frame).unwrap();
        assert!(error.is_frag_needed());
        assert_eq!(error.mtu, 1480);
        assert_eq!(error.from, [198, 18, 0, 1]);
        assert_eq!(error.quoted.total_len, 1481);
        assert_eq!(error.quoted.dst, [10, 244, 2, 7]);
    }

    #[test]
    fn vxlan_header_round_trips_and_ports_stay_in_range() {
        assert_eq!(vxlan_header(4096), [0x08, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(vxlan_vni(&vxlan_header(4096)), Some(4096));
        assert_eq!(vxlan_vni(&[0, 0, 0, 0, 0, 0x10, 0, 0]), None);
        let a = Probe::udp([10, 244, 1, 5], [10, 244, 2, 7], 53).packet();
        let b = Probe::udp([10, 244, 1, 5], [10, 244, 2, 8], 53).packet();
        let (pa, pb) = (flow_src_port(&a), flow_src_port(&b));
        assert!((32768..=60999).contains(&pa) && (32768..=60999).contains(&pb));
        assert_eq!(pa, flow_src_port(&a));
        assert_ne!(pa, pb);
    }

    #[test]
    fn arp_round_trips() {
        let request = Arp {
            operation: Arp::REQUEST,
            sender_mac: Mac::pod([10, 244, 1, 5]),
            sender_ip: [10, 244, 1, 5],
            target_mac: Mac([0; 6]),
            target_ip: [169, 254, 1, 1],
        };
        let frame = request.frame();
        assert_eq!(eth_dst(&frame), Some(Mac::BROADCAST));
        assert_eq!(Arp::parse(&frame), Some(request));
        let reply = request.reply(Mac::HOST_VETH);
        assert_eq!(reply.sender_ip, [169, 254, 1, 1]);
        assert_eq!(eth_dst(&reply.frame()), Some(Mac::pod([10, 244, 1, 5])));
    }

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // The CRC catalogue's check value, and RFC 3720 B.4's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xff; 32]), 0x62a8_ab43);
    }

    #[test]
    fn sctp_init_carries_its_ports_and_a_right_crc() {
        let init = SctpInit {
            src_port: 40000,
            dst_port: 9999,
            initiate_tag: 0x5757_0001,
        };
        let sctp = init.bytes();
        assert_eq!(sctp.len(), 32);
        assert!(sctp_checksum_ok(&sctp));
        let header = SctpCommonHeader::parse(&sctp).unwrap();
        assert_eq!((header.src_port, header.dst_port), (40000, 9999));
        assert_eq!(header.verification_tag, 0);
        // Chunk type INIT, length 20, then the initiate tag.
        assert_eq!(sctp[12..16], [1, 0, 0, 20]);
        assert_eq!(sctp[16..20], 0x5757_0001u32.to_be_bytes());
        for at in 0..sctp.len() {
            let mut broken = sctp.clone();
            broken[at] ^= 0x20;
            assert!(!sctp_checksum_ok(&broken), "byte {at}");
        }
        let packet = ipv4_packet(
            host_repr(
                [10, 244, 1, 5],
                [10, 244, 2, 7],
                PROTOCOL_SCTP,
                0x5757,
                true,
            ),
            &sctp,
        );
        let summary = PacketSummary::of_packet(&packet).unwrap();
        assert_eq!(
            summary.to_string(),
            "10.244.1.5:40000 > 10.244.2.7:9999 sctp len 52 DF"
        );
        assert_eq!(
            Probe::sctp([10, 244, 1, 5], [10, 244, 2, 7], 9999).packet(),
            packet
        );
    }

    #[test]
    fn tcp_segments_carry_their_flags_and_verify() {
        let (src, dst) = ([10, 244, 1, 5], [10, 244, 2, 7]);
        let syn = TcpSegment::syn(40000, 80);
        for (control, flags) in [
            (TcpControl::Syn, 0x02),
            (TcpControl::SynAck, 0x12),
            (TcpControl::Ack, 0x10),
            (TcpControl::PshAck, 0x18),
            (TcpControl::FinAck, 0x11),
            (TcpControl::Rst, 0x04),
            (TcpControl::RstAck, 0x14),
        ] {
            let bytes = syn.answer(control).bytes(dst, src, b"data");
            let (tcp, payload) = TcpHeader::from_slice(&bytes).unwrap();
            assert_eq!(bytes[13], flags, "{control:?}");
            assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
            assert_eq!(payload, b"data");
            assert_eq!(
                tcp.calc_checksum_ipv4_raw(dst, src, payload).unwrap(),
                tcp.checksum
            );
            let expected_ack = if tcp.ack { 2 } else { 0 };
            assert_eq!(tcp.acknowledgment_number, expected_ack, "{control:?}");
        }
    }

    #[test]
    fn icmp_echo_parses_back() {
        let request = icmp_echo(true, 7, 3, b"ping");
        let icmp = Icmpv4Slice::from_slice(&request).unwrap();
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 7, seq: 3 })
        );
        assert_eq!(checksum(&request), 0);
        assert_eq!(icmp_echo(false, 7, 3, b"ping")[0], 0);
    }

    #[test]
    fn fragments_and_ttl_keep_the_header_valid() {
        let mut p = Probe::udp([10, 244, 1, 5], [10, 244, 2, 7], 53)
            .with_len(100)
            .packet();
        assert!(decrement_ttl(&mut p));
        let f = Ipv4Fields::parse(&p).unwrap();
        assert_eq!(f.ttl, 63);
        assert_eq!(checksum(&p[..20]), 0);
        let mut dead = ipv4_packet(
            Ipv4Repr {
                ttl: 0,
                ..host_repr([10, 244, 1, 5], [10, 244, 2, 7], 17, 1, true)
            },
            &[],
        );
        assert!(!decrement_ttl(&mut dead));
    }

    #[test]
    fn fix_ipv4_checksum_repairs_whole_and_cut_headers() {
        let mut p = Probe::ping([10, 244, 1, 5], [10, 244, 2, 7]).packet();
        p[1] = 0x2e;
        fix_ipv4_checksum(&mut p);
        assert_eq!(checksum(&p[..20]), 0);
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
        // IHL 15 over 24 bytes: the checksum covers what is there.
        p[0] = 0x4f;
        p.truncate(24);
        fix_ipv4_checksum(&mut p);
        assert_eq!(checksum(&p), 0);
    }
}
