//! The transport header after an IPv4 header: what connection tracking and
//! policy need from TCP, UDP, SCTP and ICMP.
//!
//! [`Transport::read`] takes a checked [`Ipv4Header`] and makes a few
//! fixed-size reads inside its payload (never in Ethernet padding after
//! the datagram): 20 bytes of TCP, 8 of UDP, 16 of SCTP (the common header
//! and the first chunk's header), 8 of ICMP, and for an ICMP error 20 + 8
//! bytes of the packet it quotes. Every read is a constant size at an
//! offset the header lengths give, so the eBPF reader turns each into one
//! `bpf_skb_load_bytes`; there is no loop. Anything shorter or inconsistent
//! is an [`L4Error`], never a panic.
//!
//! Only the first fragment of a datagram carries the transport header: a
//! later one is [`Transport::Fragment`], with no ports to track it by.

use crate::ipv4::{self, Ipv4Header, PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
use crate::packet::PacketReader;

/// Protocol number of SCTP (RFC 9260).
pub const PROTOCOL_SCTP: u8 = 132;

/// TCP: the fixed header, without options.
pub const TCP_HEADER_LEN: usize = 20;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// SCTP common header (ports, verification tag, checksum).
pub const SCTP_COMMON_HEADER_LEN: usize = 12;
/// SCTP chunk header (type, flags, length).
pub const SCTP_CHUNK_HEADER_LEN: usize = 4;
/// ICMP header: type, code, checksum and the 4 type-specific bytes.
pub const ICMP_HEADER_LEN: usize = 8;
/// Bytes of the offending datagram's payload an ICMP error must quote
/// after its IPv4 header (RFC 792: "64 bits"), enough for ports or an
/// echo identifier.
pub const ICMP_QUOTE_PAYLOAD_LEN: usize = 8;

/// SCTP chunk types the tracker looks at (RFC 9260, section 3.2).
pub mod sctp_chunk {
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// ICMP types (RFC 792) the tracker looks at.
pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Code of "fragmentation needed and DF set" under destination unreachable.
    pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;
}

/// Why the bytes after an IPv4 header are not a transport header Weft acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum L4Error {
    /// The datagram ends before the fixed part of the transport header
    /// (for a first fragment too: RFC 1858's tiny fragments).
    Truncated,
    /// TCP data offset below 5 words, or past the end of the datagram.
    TcpDataOffset,
    /// A TCP fragment at offset 8: it would overwrite the first
    /// fragment's flags (RFC 1858), so it is never legitimate.
    TcpFragmentOverlap,
    /// UDP length below its own 8-byte header, or past the end of the datagram.
    UdpLength,
    /// The first SCTP chunk's length is below its own 4-byte header.
    SctpChunkLength,
    /// An ICMP error quotes fewer than an IPv4 header and 8 bytes.
    QuoteTruncated,
    /// An ICMP error quotes something that is not an IPv4 header
    /// (version, IHL below 5).
    QuoteNotIpv4,
}

/// TCP flags (the header's 13th byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// Every bit of `flag` (one of the constants above, or several) is set.
    #[inline(always)]
    pub const fn has(self, flag: u8) -> bool {
        self.0 & flag == flag
    }

    /// A SYN without ACK: someone opening a connection.
    #[inline(always)]
    pub const fn is_opening(self) -> bool {
        self.has(Self::SYN) && !self.has(Self::ACK)
    }

    /// A combination a TCP stack sends: the table of Linux's conntrack
    /// (`tcp_valid_flags`, with PSH, ECE and CWR ignored): SYN, SYN+ACK,
    /// RST, RST+ACK, FIN+ACK, ACK, and SYN, FIN+ACK or ACK with URG.
    /// Everything else (no flags, SYN+FIN, FIN without ACK, ...) is a scan
    /// or garbage.
    #[inline(always)]
    pub const fn is_valid(self) -> bool {
        const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
        const SYN_URG: u8 = TcpFlags::SYN | TcpFlags::URG;
        const RST_ACK: u8 = TcpFlags::RST | TcpFlags::ACK;
        const FIN_ACK: u8 = TcpFlags::FIN | TcpFlags::ACK;
        const FIN_ACK_URG: u8 = FIN_ACK | TcpFlags::URG;
        const ACK_URG: u8 = TcpFlags::ACK | TcpFlags::URG;
        matches!(
            self.0 & !(Self::PSH | Self::ECE | Self::CWR),
            Self::SYN
                | SYN_URG
                | SYN_ACK
                | Self::RST
                | RST_ACK
                | FIN_ACK
                | FIN_ACK_URG
                | Self::ACK
                | ACK_URG
        )
    }
}

/// The flow an ICMP error is about, from the datagram it quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotedFlow {
    /// TCP, UDP or SCTP: the quoted datagram's ports.
    Ports { src_port: u16, dst_port: u16 },
    /// An ICMP echo request (`request`) or reply, by identifier.
    Echo { request: bool, id: u16 },
    /// A later fragment: no ports in the quote.
    Fragment,
    /// Another protocol, or an ICMP message that is not an echo (an error
    /// about an error is never sent, RFC 1122 3.2.2).
    Other,
}

/// The datagram an ICMP error quotes: its IPv4 header's addresses and
/// protocol, and its first 8 payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Source of the quoted datagram: whoever the error is sent back to.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// The first 8 bytes after the quoted header, as they were.
    pub leading: [u8; ICMP_QUOTE_PAYLOAD_LEN],
    pub flow: QuotedFlow,
}

/// The ICMP messages the tracker tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// Type 3; `next_hop_mtu` is set for code 4 (fragmentation needed),
    /// where RFC 1191 puts it (0 from routers that predate it).
    DestinationUnreachable {
        code: u8,
        next_hop_mtu: Option<u16>,
        quote: Quote,
    },
    /// Type 11 (TTL exceeded in transit, reassembly time exceeded).
    TimeExceeded {
        code: u8,
        quote: Quote,
    },
    /// Type 12; `pointer` is the offending octet in the quoted header.
    ParameterProblem {
        code: u8,
        pointer: u8,
        quote: Quote,
    },
    /// Any other type (timestamp, redirect, router advertisement, ...).
    Other {
        icmp_type: u8,
        code: u8,
    },
}

impl Icmp {
    /// The datagram an error quotes; `None` for other messages.
    #[inline(always)]
    pub const fn quote(&self) -> Option<&Quote> {
        match self {
            Icmp::DestinationUnreachable { quote, .. }
            | Icmp::TimeExceeded { quote, .. }
            | Icmp::ParameterProblem { quote, .. } => Some(quote),
            _ => None,
        }
    }
}

/// What the transport header of one IPv4 datagram says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// SCTP with the type of its first chunk (an INIT opens an
    /// association, and RFC 9260 bundles nothing with it).
    Sctp {
        src_port: u16,
        dst_port: u16,
        first_chunk: u8,
    },
    Icmp(Icmp),
    /// Another IP protocol: Weft reads no header of it.
    Other {
        protocol: u8,
    },
    /// A fragment after the first: its bytes are payload, not a header.
    Fragment {
        protocol: u8,
    },
}

impl Transport {
    /// Reads the transport header of the datagram `ip` (a header checked
    /// in `frame`).
    #[inline(always)]
    pub fn read<R: PacketReader + ?Sized>(
        frame: &R,
        ip: &Ipv4Header<'_, R>,
    ) -> Result<Transport, L4Error> {
        let protocol = ip.protocol();
        let payload = Payload::of(ip);
        let fragment_offset = ip.fragment_offset();
        if fragment_offset != 0 {
            // RFC 1858: an offset of one 8-byte unit can only serve to
            // rewrite the flags of the first fragment's TCP header.
            if protocol == PROTOCOL_TCP && fragment_offset == 8 {
                return Err(L4Error::TcpFragmentOverlap);
            }
            return Ok(Transport::Fragment { protocol });
        }
        match protocol {
            PROTOCOL_TCP => read_tcp(frame, payload),
            PROTOCOL_UDP => read_udp(frame, payload),
            PROTOCOL_SCTP => read_sctp(frame, payload),
            PROTOCOL_ICMP => read_icmp(frame, payload).map(Transport::Icmp),
            _ => Ok(Transport::Other { protocol }),
        }
    }

    /// The IP protocol number this header belongs to.
    #[inline(always)]
    pub const fn protocol(&self) -> u8 {
        match self {
            Transport::Tcp { .. } => PROTOCOL_TCP,
            Transport::Udp { .. } => PROTOCOL_UDP,
            Transport::Sctp { .. } => PROTOCOL_SCTP,
            Transport::Icmp(_) => PROTOCOL_ICMP,
            Transport::Other { protocol } | Transport::Fragment { protocol } => *protocol,
        }
    }
}

/// The bytes of a datagram after its IPv4 header: `start..end` in the
/// frame, `end` from the total length (so Ethernet padding is excluded).
#[derive(Clone, Copy, Debug)]
struct Payload {
    start: usize,
    end: usize,
}

impl Payload {
    #[inline(always)]
    fn of<R: PacketReader + ?Sized>(ip: &Ipv4Header<'_, R>) -> Payload {
        let start = ip.offset().saturating_add(ip.header_len());
        Payload {
            start,
            end: start.saturating_add(ip.payload_len()),
        }
    }

    #[inline(always)]
    fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// The `N` bytes `at` bytes into the payload, if they are all in it.
    #[inline(always)]
    fn read<R: PacketReader + ?Sized, const N: usize>(
        self,
        frame: &R,
        at: usize,
    ) -> Option<[u8; N]> {
        let offset = self.start.checked_add(at)?;
        if offset.checked_add(N)? > self.end {
            return None;
        }
        frame.read::<N>(offset)
    }
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

#[inline(always)]
fn read_tcp<R: PacketReader + ?Sized>(frame: &R, payload: Payload) -> Result<Transport, L4Error> {
    let header: [u8; TCP_HEADER_LEN] = payload.read(frame, 0).ok_or(L4Error::Truncated)?;
    let [
        sp0,
        sp1,
        dp0,
        dp1,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        data_offset,
        flags,
        ..,
    ] = header;
    let header_len = usize::from(data_offset >> 4) * 4;
    if header_len < TCP_HEADER_LEN || header_len > payload.len() {
        return Err(L4Error::TcpDataOffset);
    }
    Ok(Transport::Tcp {
        src_port: be16(sp0, sp1),
        dst_port: be16(dp0, dp1),
        flags: TcpFlags(flags),
    })
}

#[inline(always)]
fn read_udp<R: PacketReader + ?Sized>(frame: &R, payload: Payload) -> Result<Transport, L4Error> {
    let [sp0, sp1, dp0, dp1, l0, l1, _, _]: [u8; UDP_HEADER_LEN] =
        payload.read(frame, 0).ok_or(L4Error::Truncated)?;
    let length = usize::from(be16(l0, l1));
    if length < UDP_HEADER_LEN || length > payload.len() {
        return Err(L4Error::UdpLength);
    }
    Ok(Transport::Udp {
        src_port: be16(sp0, sp1),
        dst_port: be16(dp0, dp1),
    })
}

#[inline(always)]
fn read_sctp<R: PacketReader + ?Sized>(frame: &R, payload: Payload) -> Result<Transport, L4Error> {
    // Every SCTP packet holds at least one chunk after the common header.
    let header: [u8; SCTP_COMMON_HEADER_LEN + SCTP_CHUNK_HEADER_LEN] =
        payload.read(frame, 0).ok_or(L4Error::Truncated)?;
    let [
        sp0,
        sp1,
        dp0,
        dp1,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        _,
        chunk,
        _,
        cl0,
        cl1,
    ] = header;
    if usize::from(be16(cl0, cl1)) < SCTP_CHUNK_HEADER_LEN {
        return Err(L4Error::SctpChunkLength);
    }
    Ok(Transport::Sctp {
        src_port: be16(sp0, sp1),
        dst_port: be16(dp0, dp1),
        first_chunk: chunk,
    })
}

#[inline(always)]
fn read_icmp<R: PacketReader + ?Sized>(frame: &R, payload: Payload) -> Result<Icmp, L4Error> {
    let [icmp_type, code, _, _, r0, r1, r2, r3]: [u8; ICMP_HEADER_LEN] =
        payload.read(frame, 0).ok_or(L4Error::Truncated)?;
    let id = be16(r0, r1);
    let seq = be16(r2, r3);
    Ok(match icmp_type {
        icmp_type::ECHO_REQUEST => Icmp::EchoRequest { id, seq },
        icmp_type::ECHO_REPLY => Icmp::EchoReply { id, seq },
        icmp_type::DESTINATION_UNREACHABLE => Icmp::DestinationUnreachable {
            code,
            next_hop_mtu: (code == icmp_type::CODE_FRAGMENTATION_NEEDED).then_some(seq),
            quote: read_quote(frame, payload)?,
        },
        icmp_type::TIME_EXCEEDED => Icmp::TimeExceeded {
            code,
            quote: read_quote(frame, payload)?,
        },
        icmp_type::PARAMETER_PROBLEM => Icmp::ParameterProblem {
            code,
            pointer: r0,
            quote: read_quote(frame, payload)?,
        },
        _ => Icmp::Other { icmp_type, code },
    })
}

/// The datagram quoted after an ICMP error's 8-byte header. Its total
/// length is not checked: the quote is cut short by definition.
#[inline(always)]
fn read_quote<R: PacketReader + ?Sized>(frame: &R, payload: Payload) -> Result<Quote, L4Error> {
    let inner: [u8; ipv4::MIN_HEADER_LEN] = payload
        .read(frame, ICMP_HEADER_LEN)
        .ok_or(L4Error::QuoteTruncated)?;
    let [
        version_ihl,
        _,
        _,
        _,
        _,
        _,
        fo0,
        fo1,
        _,
        protocol,
        _,
        _,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ] = inner;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < ipv4::MIN_HEADER_LEN {
        return Err(L4Error::QuoteNotIpv4);
    }
    let leading: [u8; ICMP_QUOTE_PAYLOAD_LEN] = payload
        .read(frame, ICMP_HEADER_LEN + header_len)
        .ok_or(L4Error::QuoteTruncated)?;
    let [l0, l1, l2, l3, l4, l5, _, _] = leading;
    let later_fragment = be16(fo0, fo1) & 0x1fff != 0;
    let flow = match protocol {
        _ if later_fragment => QuotedFlow::Fragment,
        PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_SCTP => QuotedFlow::Ports {
            src_port: be16(l0, l1),
            dst_port: be16(l2, l3),
        },
        PROTOCOL_ICMP if l0 == icmp_type::ECHO_REQUEST || l0 == icmp_type::ECHO_REPLY => {
            QuotedFlow::Echo {
                request: l0 == icmp_type::ECHO_REQUEST,
                id: be16(l4, l5),
            }
        }
        _ => QuotedFlow::Other,
    };
    Ok(Quote {
        src: [s0, s1, s2, s3],
        dst: [d0, d1, d2, d3],
        protocol,
        leading,
        flow,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ipv4::checksum;
    use crate::testgen::Gen;

    // Fixtures: IPv4 datagrams between pod A (10.244.1.5) and pod B
    // (10.244.2.7), with correct IPv4 and transport checksums (checked by
    // `fixtures_are_consistent`, independently of the reader).

    /// TCP SYN A:40000 → B:80, seq 0x01020304, window 64240, MSS 1460 option.
    pub(crate) const TCP_SYN: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, // IHL 5, length 44, DF
        0x40, 0x06, 0x05, 0x93, // TTL 64, TCP, checksum
        10, 244, 1, 5, 10, 244, 2, 7, // A → B
        0x9c, 0x40, 0x00, 0x50, // ports 40000 → 80
        0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, // seq, ack
        0x60, 0x02, 0xfa, 0xf0, // data offset 6 words, SYN, window
        0xe3, 0xab, 0x00, 0x00, // checksum, urgent pointer
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
    ];

    /// UDP A:5353 → B:53 carrying "weft".
    pub(crate) const UDP_DNS: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, // length 32, id 0x1234, DF
        0x40, 0x11, 0x0f, 0xa6, // TTL 64, UDP, checksum
        10, 244, 1, 5, 10, 244, 2, 7, // A → B
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0xf3, 0xea, // 5353 → 53, length 12, checksum
        b'w', b'e', b'f', b't',
    ];

    /// SCTP INIT A:5000 → B:38412, verification tag 0, one INIT chunk.
    pub(crate) const SCTP_INIT: [u8; 52] = [
        0x45, 0x00, 0x00, 0x34, 0x00, 0x42, 0x40, 0x00, // length 52
        0x40, 0x84, 0x21, 0x11, // TTL 64, SCTP (132), checksum
        10, 244, 1, 5, 10, 244, 2, 7, // A → B
        0x13, 0x88, 0x96, 0x0c, // ports 5000 → 38412
        0x00, 0x00, 0x00, 0x00, // verification tag 0 (as INIT requires)
        0x3d, 0x8b, 0xd0, 0xd7, // CRC32c, little-endian on the wire
        0x01, 0x00, 0x00, 0x14, // chunk INIT, flags 0, length 20
        0xde, 0xad, 0xbe, 0xef, // initiate tag
        0x00, 0x01, 0xa0, 0x00, // a_rwnd 106496
        0x00, 0x0a, 0x00, 0x0a, // 10 outbound, 10 inbound streams
        0x0b, 0xad, 0xca, 0xfe, // initial TSN
    ];

    /// ICMP echo request A → B, id 0x1234, seq 1, "pingpong".
    pub(crate) const ICMP_ECHO_REQUEST: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24, 0x00, 0x01, 0x40, 0x00, // length 36
        0x40, 0x01, 0x21, 0xe5, // TTL 64, ICMP, checksum
        10, 244, 1, 5, 10, 244, 2, 7, // A → B
        0x08, 0x00, 0x28, 0x23, // echo request, code 0, checksum
        0x12, 0x34, 0x00, 0x01, // id, seq
        b'p', b'i', b'n', b'g', b'p', b'o', b'n', b'g',
    ];

    /// B's port unreachable back to A about `UDP_DNS`: its header and
    /// first 8 bytes (the UDP header).
    pub(crate) const ICMP_PORT_UNREACHABLE: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x07, 0x77, 0x00, 0x00, // length 56
        0x40, 0x01, 0x5a, 0x5b, // TTL 64, ICMP, checksum
        10, 244, 2, 7, 10, 244, 1, 5, // B → A
        0x03, 0x03, 0xf3, 0xe7, 0x00, 0x00, 0x00, 0x00, // unreachable, port, checksum, unused
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, // quoted: UDP_DNS's header
        0x40, 0x11, 0x0f, 0xa6, 10, 244, 1, 5, 10, 244, 2, 7, //
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0xf3, 0xea, // quoted: its UDP header
    ];

    /// Router 10.244.2.1 to A: fragmentation needed, next-hop MTU 1400,
    /// about `TCP_SYN`.
    pub(crate) const ICMP_FRAG_NEEDED: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x08, 0x88, 0x00, 0x00, // length 56
        0xff, 0x01, 0x9a, 0x4f, // TTL 255, ICMP, checksum
        10, 244, 2, 1, 10, 244, 1, 5, // router → A
        0x03, 0x04, 0x56, 0xed, 0x00, 0x00, 0x05, 0x78, // unreachable, frag needed, MTU 1400
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, // quoted: TCP_SYN's header
        0x40, 0x06, 0x05, 0x93, 10, 244, 1, 5, 10, 244, 2, 7, //
        0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, // quoted: ports and seq
    ];

    const FIXTURES: [&[u8]; 6] = [
        &TCP_SYN,
        &UDP_DNS,
        &SCTP_INIT,
        &ICMP_ECHO_REQUEST,
        &ICMP_PORT_UNREACHABLE,
        &ICMP_FRAG_NEEDED,
    ];

    pub(crate) const A: [u8; 4] = [10, 244, 1, 5];
    pub(crate) const B: [u8; 4] = [10, 244, 2, 7];

    /// `datagram` behind an Ethernet header, as tc sees it.
    pub(crate) fn frame(datagram: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(datagram);
        f
    }

    /// Rewrites the IPv4 total length (to the datagram's length) and header checksum.
    pub(crate) fn fix_ipv4(datagram: &mut [u8]) {
        let len = datagram.len() as u16;
        datagram[2..4].copy_from_slice(&len.to_be_bytes());
        datagram[10..12].copy_from_slice(&[0, 0]);
        let ihl = usize::from(datagram[0] & 0x0f) * 4;
        let c = checksum(&datagram[..ihl]);
        datagram[10..12].copy_from_slice(&c.to_be_bytes());
    }

    pub(crate) fn read(datagram: &[u8]) -> Result<Transport, L4Error> {
        let f = frame(datagram);
        let ip = Ipv4Header::new_checked(&f[..], 14).expect("fixture IPv4 header");
        Transport::read(&f[..], &ip)
    }

    /// The flow an ICMP error in `datagram` quotes.
    fn quoted_flow(datagram: &[u8]) -> Option<QuotedFlow> {
        match read(datagram) {
            Ok(Transport::Icmp(icmp)) => icmp.quote().map(|q| q.flow),
            _ => None,
        }
    }

    fn pseudo_header_sum_ok(datagram: &[u8]) -> bool {
        let segment = &datagram[20..];
        let mut bytes = datagram[12..20].to_vec();
        bytes.extend([0, datagram[9]]);
        bytes.extend((segment.len() as u16).to_be_bytes());
        bytes.extend_from_slice(segment);
        checksum(&bytes) == 0
    }

    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ if crc & 1 == 1 { 0x82f6_3b78 } else { 0 };
            }
        }
        !crc
    }

    #[test]
    fn fixtures_are_consistent() {
        for d in FIXTURES {
            assert_eq!(checksum(&d[..20]), 0, "IPv4 header checksum of {d:02x?}");
            assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len());
        }
        assert!(pseudo_header_sum_ok(&TCP_SYN));
        assert!(pseudo_header_sum_ok(&UDP_DNS));
        for icmp in [
            &ICMP_ECHO_REQUEST[..],
            &ICMP_PORT_UNREACHABLE,
            &ICMP_FRAG_NEEDED,
        ] {
            assert_eq!(checksum(&icmp[20..]), 0);
        }
        let mut sctp = SCTP_INIT[20..].to_vec();
        let stored = u32::from_le_bytes(sctp[8..12].try_into().unwrap());
        sctp[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&sctp), stored);
        // The errors quote the fixtures they are about.
        assert_eq!(ICMP_PORT_UNREACHABLE[28..], UDP_DNS[..28]);
        assert_eq!(ICMP_FRAG_NEEDED[28..], TCP_SYN[..28]);
    }

    #[test]
    fn tcp_ports_and_flags() {
        assert_eq!(
            read(&TCP_SYN),
            Ok(Transport::Tcp {
                src_port: 40000,
                dst_port: 80,
                flags: TcpFlags(TcpFlags::SYN),
            })
        );
        let flags = TcpFlags(0x12);
        assert!(flags.has(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!flags.has(TcpFlags::FIN) && !flags.has(TcpFlags::RST));
        assert!(!flags.is_opening() && TcpFlags(TcpFlags::SYN).is_opening());
    }

    #[test]
    fn tcp_flag_combinations_follow_linux() {
        let valid = [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30];
        for byte in 0..=255u8 {
            let core = byte & !(TcpFlags::PSH | TcpFlags::ECE | TcpFlags::CWR);
            assert_eq!(
                TcpFlags(byte).is_valid(),
                valid.contains(&core),
                "flags {byte:#04x}"
            );
        }
        // Scans: null, FIN alone, SYN+FIN, Xmas.
        for scan in [0x00, 0x01, 0x03, 0x29, 0x3f] {
            assert!(!TcpFlags(scan).is_valid(), "{scan:#04x}");
        }
        // PSH+ACK data, ECN-setup SYN.
        assert!(TcpFlags(0x18).is_valid() && TcpFlags(0xc2).is_valid());
    }

    #[test]
    fn tcp_data_offset_must_fit() {
        for (offset_words, expected) in [
            (4, Err(L4Error::TcpDataOffset)),
            (0, Err(L4Error::TcpDataOffset)),
            (5, Ok(())),
            (6, Ok(())),
            (7, Err(L4Error::TcpDataOffset)), // 28 bytes in a 24-byte segment
            (15, Err(L4Error::TcpDataOffset)),
        ] {
            let mut d = TCP_SYN;
            d[32] = offset_words << 4;
            assert_eq!(read(&d).map(|_| ()), expected, "data offset {offset_words}");
        }
    }

    #[test]
    fn truncated_headers_are_errors() {
        // Cut the datagram (total length and all) inside each transport header.
        for (datagram, fixed) in [
            (&TCP_SYN[..], TCP_HEADER_LEN),
            (&UDP_DNS, UDP_HEADER_LEN),
            (&SCTP_INIT, SCTP_COMMON_HEADER_LEN + SCTP_CHUNK_HEADER_LEN),
            (&ICMP_ECHO_REQUEST, ICMP_HEADER_LEN),
        ] {
            for keep in 0..fixed {
                let mut d = datagram[..20 + keep].to_vec();
                fix_ipv4(&mut d);
                assert_eq!(read(&d), Err(L4Error::Truncated), "{} bytes", keep);
            }
        }
    }

    #[test]
    fn ethernet_padding_is_not_a_header() {
        // A datagram that ends after its IPv4 header, padded to 60 bytes
        // with what looks like a UDP header: there is no UDP header.
        let mut d = UDP_DNS[..20].to_vec();
        fix_ipv4(&mut d);
        let mut f = frame(&d);
        f.extend_from_slice(&UDP_DNS[20..]);
        f.resize(60, 0);
        let ip = Ipv4Header::new_checked(&f[..], 14).unwrap();
        assert_eq!(Transport::read(&f[..], &ip), Err(L4Error::Truncated));
    }

    #[test]
    fn ip_options_move_the_transport_header() {
        let mut d = TCP_SYN[..20].to_vec();
        d[0] = 0x47; // two option words (NOPs and an end)
        d.extend([1, 1, 1, 1, 1, 1, 1, 0]);
        d.extend_from_slice(&TCP_SYN[20..]);
        fix_ipv4(&mut d);
        assert_eq!(read(&d), read(&TCP_SYN));
    }

    #[test]
    fn udp_ports_and_length() {
        assert_eq!(
            read(&UDP_DNS),
            Ok(Transport::Udp {
                src_port: 5353,
                dst_port: 53
            })
        );
        for (length, ok) in [
            (0u16, false),
            (7, false),
            (8, true),
            (12, true),
            (13, false),
        ] {
            let mut d = UDP_DNS;
            d[24..26].copy_from_slice(&length.to_be_bytes());
            assert_eq!(read(&d).is_ok(), ok, "UDP length {length}");
            if !ok {
                assert_eq!(read(&d), Err(L4Error::UdpLength));
            }
        }
    }

    #[test]
    fn sctp_ports_and_first_chunk() {
        assert_eq!(
            read(&SCTP_INIT),
            Ok(Transport::Sctp {
                src_port: 5000,
                dst_port: 38412,
                first_chunk: sctp_chunk::INIT
            })
        );
        let mut data = SCTP_INIT;
        data[32] = 0; // DATA
        assert!(matches!(
            read(&data),
            Ok(Transport::Sctp { first_chunk: 0, .. })
        ));
        let mut short_chunk = SCTP_INIT;
        short_chunk[34..36].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(read(&short_chunk), Err(L4Error::SctpChunkLength));
        // A common header with no chunk at all.
        let mut bare = SCTP_INIT[..32].to_vec();
        fix_ipv4(&mut bare);
        assert_eq!(read(&bare), Err(L4Error::Truncated));
    }

    #[test]
    fn icmp_echo_request_and_reply() {
        assert_eq!(
            read(&ICMP_ECHO_REQUEST),
            Ok(Transport::Icmp(Icmp::EchoRequest { id: 0x1234, seq: 1 }))
        );
        let mut reply = ICMP_ECHO_REQUEST;
        reply[20] = icmp_type::ECHO_REPLY;
        assert_eq!(
            read(&reply),
            Ok(Transport::Icmp(Icmp::EchoReply { id: 0x1234, seq: 1 }))
        );
        let mut timestamp = ICMP_ECHO_REQUEST;
        timestamp[20] = 13;
        assert_eq!(
            read(&timestamp),
            Ok(Transport::Icmp(Icmp::Other {
                icmp_type: 13,
                code: 0
            }))
        );
    }

    #[test]
    fn port_unreachable_quotes_the_udp_flow() {
        let Ok(Transport::Icmp(icmp)) = read(&ICMP_PORT_UNREACHABLE) else {
            panic!("not ICMP");
        };
        let Icmp::DestinationUnreachable {
            code,
            next_hop_mtu,
            quote,
        } = icmp
        else {
            panic!("{icmp:?}");
        };
        assert_eq!((code, next_hop_mtu), (3, None));
        assert_eq!(
            quote,
            Quote {
                src: A,
                dst: B,
                protocol: PROTOCOL_UDP,
                leading: UDP_DNS[20..28].try_into().unwrap(),
                flow: QuotedFlow::Ports {
                    src_port: 5353,
                    dst_port: 53
                },
            }
        );
        assert_eq!(icmp.quote(), Some(&quote));
    }

    #[test]
    fn fragmentation_needed_carries_the_mtu_and_the_tcp_flow() {
        let Ok(Transport::Icmp(Icmp::DestinationUnreachable {
            code: icmp_type::CODE_FRAGMENTATION_NEEDED,
            next_hop_mtu: Some(1400),
            quote,
        })) = read(&ICMP_FRAG_NEEDED)
        else {
            panic!("{:?}", read(&ICMP_FRAG_NEEDED));
        };
        assert_eq!((quote.src, quote.dst, quote.protocol), (A, B, PROTOCOL_TCP));
        assert_eq!(
            quote.flow,
            QuotedFlow::Ports {
                src_port: 40000,
                dst_port: 80
            }
        );
    }

    #[test]
    fn time_exceeded_and_parameter_problem_quote_too() {
        let mut ttl = ICMP_PORT_UNREACHABLE;
        ttl[20..22].copy_from_slice(&[icmp_type::TIME_EXCEEDED, 0]);
        assert!(matches!(
            read(&ttl),
            Ok(Transport::Icmp(Icmp::TimeExceeded { code: 0, quote })) if quote.src == A
        ));
        let mut param = ICMP_PORT_UNREACHABLE;
        param[20..22].copy_from_slice(&[icmp_type::PARAMETER_PROBLEM, 0]);
        param[24] = 9; // the protocol octet
        assert!(matches!(
            read(&param),
            Ok(Transport::Icmp(Icmp::ParameterProblem { pointer: 9, quote, .. }))
                if quote.flow == QuotedFlow::Ports { src_port: 5353, dst_port: 53 }
        ));
    }

    #[test]
    fn quoted_echo_and_quoted_header_with_options() {
        // Time exceeded about the echo request: the quote is its header and ICMP header.
        let mut d = ICMP_PORT_UNREACHABLE[..28].to_vec();
        d[20..22].copy_from_slice(&[icmp_type::TIME_EXCEEDED, 0]);
        d.extend_from_slice(&ICMP_ECHO_REQUEST[..28]);
        fix_ipv4(&mut d);
        assert_eq!(
            quoted_flow(&d),
            Some(QuotedFlow::Echo {
                request: true,
                id: 0x1234
            })
        );
        // A quoted header with one option word: ports come after it.
        let mut d = ICMP_PORT_UNREACHABLE[..28].to_vec();
        let mut inner = UDP_DNS[..20].to_vec();
        inner[0] = 0x46;
        inner.extend([1, 1, 1, 0]);
        inner.extend_from_slice(&UDP_DNS[20..28]);
        d.extend(inner);
        fix_ipv4(&mut d);
        assert_eq!(
            quoted_flow(&d),
            Some(QuotedFlow::Ports {
                src_port: 5353,
                dst_port: 53
            })
        );
        // An error quoting an error maps to nothing.
        let mut d = ICMP_PORT_UNREACHABLE[..28].to_vec();
        d.extend_from_slice(&ICMP_PORT_UNREACHABLE[..28]);
        fix_ipv4(&mut d);
        assert_eq!(quoted_flow(&d), Some(QuotedFlow::Other));
    }

    #[test]
    fn malformed_quotes_are_errors() {
        // Fewer than 8 bytes after the quoted header, or not even a header.
        for keep in [0, 10, 20, 27] {
            let mut d = ICMP_PORT_UNREACHABLE[..28 + keep].to_vec();
            fix_ipv4(&mut d);
            assert_eq!(
                read(&d),
                Err(L4Error::QuoteTruncated),
                "{keep} bytes quoted"
            );
        }
        for bad in [0x65, 0x44, 0x40] {
            let mut d = ICMP_PORT_UNREACHABLE;
            d[28] = bad;
            assert_eq!(read(&d), Err(L4Error::QuoteNotIpv4), "{bad:#04x}");
        }
        // A quoted IHL whose options swallow the 8 bytes.
        let mut d = ICMP_PORT_UNREACHABLE;
        d[28] = 0x47;
        assert_eq!(read(&d), Err(L4Error::QuoteTruncated));
    }

    #[test]
    fn quote_of_a_later_fragment_has_no_ports() {
        let mut d = ICMP_PORT_UNREACHABLE;
        d[34..36].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(quoted_flow(&d), Some(QuotedFlow::Fragment));
    }

    #[test]
    fn fragments() {
        // The first fragment (MF, offset 0) has the header.
        let mut first = UDP_DNS;
        first[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ipv4(&mut first);
        assert!(matches!(
            read(&first),
            Ok(Transport::Udp { dst_port: 53, .. })
        ));
        // Later ones, with or without MF, have none, whatever their bytes.
        for flags in [0x2000u16 | 185, 185, 0x2000 | 1] {
            for d in [&UDP_DNS[..], &SCTP_INIT, &ICMP_ECHO_REQUEST] {
                let mut d = d.to_vec();
                d[6..8].copy_from_slice(&flags.to_be_bytes());
                fix_ipv4(&mut d);
                assert_eq!(read(&d), Ok(Transport::Fragment { protocol: d[9] }));
            }
        }
        let mut later_tcp = TCP_SYN;
        later_tcp[6..8].copy_from_slice(&2u16.to_be_bytes());
        fix_ipv4(&mut later_tcp);
        assert_eq!(read(&later_tcp), Ok(Transport::Fragment { protocol: 6 }));
        // TCP at offset 8 bytes would rewrite the flags: RFC 1858.
        let mut overlap = TCP_SYN;
        overlap[6..8].copy_from_slice(&1u16.to_be_bytes());
        fix_ipv4(&mut overlap);
        assert_eq!(read(&overlap), Err(L4Error::TcpFragmentOverlap));
        // A first fragment too short for its TCP header: a tiny fragment.
        let mut tiny = TCP_SYN[..28].to_vec();
        tiny[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ipv4(&mut tiny);
        assert_eq!(read(&tiny), Err(L4Error::Truncated));
    }

    #[test]
    fn other_protocols_have_no_header_read() {
        let mut gre = UDP_DNS;
        gre[9] = 47;
        assert_eq!(read(&gre), Ok(Transport::Other { protocol: 47 }));
        assert_eq!(Transport::Other { protocol: 47 }.protocol(), 47);
        assert_eq!(read(&SCTP_INIT).unwrap().protocol(), PROTOCOL_SCTP);
    }

    #[test]
    fn property_mangled_datagrams_never_panic() {
        let mut g = Gen::new(0x14);
        let mut parsed = 0;
        for _ in 0..50_000 {
            let mut d = FIXTURES[g.below(FIXTURES.len())].to_vec();
            for _ in 0..g.below(4) {
                let at = 20 + g.below(d.len() - 20);
                d[at] = g.u8();
            }
            if g.below(3) == 0 {
                d[6..8].copy_from_slice(&(g.u16() & 0x3fff).to_be_bytes());
            }
            if g.below(3) == 0 {
                d.truncate(20 + g.below(d.len() - 19));
            }
            fix_ipv4(&mut d);
            let mut f = frame(&d);
            let padding = g.below(8);
            f.extend(g.bytes(padding)); // padding the reader must ignore
            let ip = Ipv4Header::new_checked(&f[..], 14).unwrap();
            if let Ok(t) = Transport::read(&f[..], &ip) {
                parsed += 1;
                assert_eq!(t.protocol(), d[9]);
                // The same datagram without padding reads the same.
                assert_eq!(read(&d), Ok(t));
            }
        }
        assert!(parsed > 10_000, "{parsed}");
    }
}
