//! The few wire formats the twin's "kernel" writes and reads around the
//! shared decisions: Ethernet, ARP, IPv4 (through `weft-common`'s checked
//! view and emitter), ICMP errors, UDP and VXLAN. Plain functions over
//! byte slices, so tests and `weftctl trace` can build the same packets.

use std::fmt;
use std::net::Ipv4Addr;

use weft_common::ipv4::{self, Ipv4Header, Ipv4Repr, checksum};
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
/// Linux quotes at most this much of the offending packet in an ICMP
/// error (576 minus the error's own IPv4 and ICMP headers).
pub const ICMP_QUOTE_MAX: usize = 576 - 20 - 8;

/// `dst`, `src`, `ethertype`, then `payload`.
pub fn ethernet_frame(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn eth_dst(frame: &[u8]) -> Option<Mac> {
    Some(Mac(frame.get(0..6)?.try_into().ok()?))
}

pub fn eth_src(frame: &[u8]) -> Option<Mac> {
    Some(Mac(frame.get(6..12)?.try_into().ok()?))
}

pub fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?))
}

pub fn set_eth_dst(frame: &mut [u8], mac: Mac) {
    frame[0..6].copy_from_slice(&mac.0);
}

pub fn set_eth_src(frame: &mut [u8], mac: Mac) {
    frame[6..12].copy_from_slice(&mac.0);
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
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    pub fn parse(frame: &[u8]) -> Option<Arp> {
        let p = frame.get(14..42)?;
        if p[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        Some(Arp {
            operation: u16::from_be_bytes([p[6], p[7]]),
            sender_mac: Mac(p[8..14].try_into().ok()?),
            sender_ip: p[14..18].try_into().ok()?,
            target_mac: Mac(p[18..24].try_into().ok()?),
            target_ip: p[24..28].try_into().ok()?,
        })
    }

    /// The whole frame: broadcast for a request, to the target for a reply.
    pub fn frame(&self) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4];
        p.extend_from_slice(&self.operation.to_be_bytes());
        p.extend_from_slice(&self.sender_mac.0);
        p.extend_from_slice(&self.sender_ip);
        p.extend_from_slice(&self.target_mac.0);
        p.extend_from_slice(&self.target_ip);
        let dst = if self.operation == Arp::REQUEST {
            Mac::BROADCAST
        } else {
            self.target_mac
        };
        ethernet_frame(dst, self.sender_mac, ETHERTYPE_ARP, &p)
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

/// The IPv4 packet of an Ethernet frame, cut to its total length (Ethernet
/// padding removed), if its header is valid and its checksum right.
pub fn ipv4_payload(frame: &[u8]) -> Option<&[u8]> {
    if ethertype(frame)? != ETHERTYPE_IPV4 {
        return None;
    }
    let header = Ipv4Header::new_checked(frame, 14).ok()?;
    if !header.verify_checksum() {
        return None;
    }
    frame.get(14..14 + usize::from(header.total_len()))
}

/// Rewrites the header checksum of the IPv4 packet at the start of
/// `packet`, over as much of the header as is there (the frame generator
/// hands it truncated and malformed headers too).
pub fn fix_ipv4_checksum(packet: &mut [u8]) {
    let Some(&first) = packet.first() else {
        return;
    };
    let len = (usize::from(first & 0x0f) * 4).min(packet.len());
    if len < 12 {
        return;
    }
    packet[10..12].fill(0);
    let sum = checksum(&packet[..len]).to_be_bytes();
    packet[10..12].copy_from_slice(&sum);
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
    pub fragment_offset: u16,
}

impl Ipv4Fields {
    /// The fields of a structurally valid header (no checksum check).
    pub fn parse(packet: &[u8]) -> Option<Ipv4Fields> {
        let h = Ipv4Header::new_checked(packet, 0).ok()?;
        Some(Ipv4Fields {
            src: h.src(),
            dst: h.dst(),
            protocol: h.protocol(),
            ttl: h.ttl(),
            total_len: h.total_len(),
            header_len: h.header_len(),
            dont_fragment: h.dont_fragment(),
            more_fragments: h.more_fragments(),
            fragment_offset: h.fragment_offset(),
        })
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
    /// Source and destination port (TCP, UDP) or ICMP type and code.
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

fn l4_ports(packet: &[u8], f: &Ipv4Fields) -> Option<(u16, u16)> {
    if f.fragment_offset != 0 {
        return None;
    }
    let l4 = packet.get(f.header_len..)?;
    match f.protocol {
        ipv4::PROTOCOL_TCP | ipv4::PROTOCOL_UDP => Some((
            u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?),
            u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?),
        )),
        ipv4::PROTOCOL_ICMP => Some((u16::from(*l4.first()?), u16::from(*l4.get(1)?))),
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
                .get(8 + 8..)
                .filter(|inner| ethertype(inner) == Some(ETHERTYPE_IPV4))
                .and_then(|inner| inner_summary(&inner[14..])),
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
        if ethertype(frame)? != ETHERTYPE_IPV4 {
            return None;
        }
        PacketSummary::of_packet(frame.get(14..)?)
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        ipv4::PROTOCOL_ICMP => "icmp".into(),
        ipv4::PROTOCOL_IPIP => "ipip".into(),
        ipv4::PROTOCOL_TCP => "tcp".into(),
        ipv4::PROTOCOL_UDP => "udp".into(),
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

/// An IPv4 packet: a 20-byte header from `repr` (its `payload_len` is
/// taken from `payload`), then `payload`.
pub fn ipv4_packet(repr: Ipv4Repr, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        payload_len: payload.len() as u16,
        ..repr
    };
    let header = repr.emit().expect("an IPv4 packet fits 65535 bytes");
    let mut packet = header.to_vec();
    packet.extend_from_slice(payload);
    packet
}

/// The RFC 768 checksum of a UDP datagram (`udp`, checksum field zero)
/// between `src` and `dst`; 0 is sent as 0xffff.
pub fn udp_checksum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    l4_checksum(src, dst, ipv4::PROTOCOL_UDP, udp)
}

/// The checksum of a TCP or UDP segment with the IPv4 pseudo-header.
fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(12 + segment.len());
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes.push(0);
    bytes.push(protocol);
    bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    bytes.extend_from_slice(segment);
    match checksum(&bytes) {
        0 => 0xffff,
        sum => sum,
    }
}

/// A UDP header and `payload`, with its checksum (`checksum: true`) or 0.
pub fn udp_datagram(
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src_port.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    if with_checksum {
        let sum = udp_checksum(src, dst, &udp);
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
    }
    udp
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

/// What a synthetic packet carries, for [`Probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP SYN to `dst_port`.
    Tcp { src_port: u16, dst_port: u16 },
    /// A UDP datagram to `dst_port`.
    Udp { src_port: u16, dst_port: u16 },
    /// An ICMP echo request.
    Ping,
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
            ProbeKind::Tcp { .. } => (ipv4::PROTOCOL_TCP, 20),
            ProbeKind::Udp { .. } => (ipv4::PROTOCOL_UDP, 8),
            ProbeKind::Ping => (ipv4::PROTOCOL_ICMP, 8),
        };
        let payload_len = usize::from(self.total_len).saturating_sub(20 + header_len);
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let l4 = match self.kind {
            ProbeKind::Udp { src_port, dst_port } => {
                udp_datagram(self.src, self.dst, src_port, dst_port, &payload, true)
            }
            ProbeKind::Tcp { src_port, dst_port } => {
                let mut tcp = Vec::with_capacity(20 + payload.len());
                tcp.extend_from_slice(&src_port.to_be_bytes());
                tcp.extend_from_slice(&dst_port.to_be_bytes());
                tcp.extend_from_slice(&1u32.to_be_bytes()); // sequence
                tcp.extend_from_slice(&0u32.to_be_bytes()); // ack
                tcp.extend_from_slice(&[0x50, 0x02]); // 5 words, SYN
                tcp.extend_from_slice(&64240u16.to_be_bytes());
                tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                tcp.extend_from_slice(&payload);
                let sum = l4_checksum(self.src, self.dst, ipv4::PROTOCOL_TCP, &tcp);
                tcp[16..18].copy_from_slice(&sum.to_be_bytes());
                tcp
            }
            ProbeKind::Ping => {
                let mut icmp = vec![8, 0, 0, 0, 0x57, 0x57, 0, 1];
                icmp.extend_from_slice(&payload);
                let sum = checksum(&icmp);
                icmp[2..4].copy_from_slice(&sum.to_be_bytes());
                icmp
            }
        };
        ipv4_packet(
            host_repr(self.src, self.dst, protocol, 0x5757, self.dont_fragment),
            &l4,
        )
    }
}

/// An ICMP error message as Linux's `icmp_send` writes it: `kind`/`code`,
/// the 32-bit field after the checksum (next-hop MTU in its low 16 bits
/// for "fragmentation needed"), then the offending packet's start.
pub fn icmp_error(kind: u8, code: u8, rest: u32, offending: &[u8]) -> Vec<u8> {
    let quote = &offending[..offending.len().min(ICMP_QUOTE_MAX)];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
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
    /// The quoted (offending) packet's header fields.
    pub quoted: Ipv4Fields,
}

impl IcmpError {
    /// Type 3 code 4: fragmentation needed and DF set.
    pub fn is_frag_needed(&self) -> bool {
        self.kind == 3 && self.code == 4
    }

    /// The ICMP error an Ethernet frame carries, if it carries one with a
    /// right checksum.
    pub fn parse_frame(frame: &[u8]) -> Option<IcmpError> {
        let packet = ipv4_payload(frame)?;
        let f = Ipv4Fields::parse(packet)?;
        if f.protocol != ipv4::PROTOCOL_ICMP || f.is_fragment() {
            return None;
        }
        let icmp = &packet[f.header_len..];
        if icmp.len() < 8 + 20 || checksum(icmp) != 0 || !matches!(icmp[0], 3 | 11) {
            return None;
        }
        // The quote is cut, so its total length runs past it: read the
        // header fields alone.
        let quote = &icmp[8..];
        let quoted_len = usize::from(quote[0] & 0x0f) * 4;
        let mut header = quote.get(..quoted_len)?.to_vec();
        header[2..4].copy_from_slice(&(quoted_len as u16).to_be_bytes());
        let mut quoted = Ipv4Fields::parse(&header)?;
        quoted.total_len = u16::from_be_bytes([quote[2], quote[3]]);
        Some(IcmpError {
            from: f.src,
            kind: icmp[0],
            code: icmp[1],
            mtu: if icmp[0] == 3 && icmp[1] == 4 {
                u16::from_be_bytes([icmp[6], icmp[7]])
            } else {
                0
            },
            quoted,
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
pub fn vxlan_header(vni: u32) -> [u8; 8] {
    let [_, a, b, c] = vni.to_be_bytes();
    [0x08, 0, 0, 0, a, b, c, 0]
}

/// The VNI of a VXLAN header, if its I flag is set.
pub fn vxlan_vni(header: &[u8]) -> Option<u32> {
    let h = header.get(0..8)?;
    if h[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut zero = udp.clone();
        zero[6..8].fill(0);
        assert_eq!(
            udp_checksum([10, 244, 1, 5], [10, 244, 2, 7], &zero),
            u16::from_be_bytes([udp[6], udp[7]])
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
        let icmp = icmp_error(3, 4, 1480, &offending);
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
}
