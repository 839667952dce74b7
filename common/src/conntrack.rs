//! The connection tracker: which packets belong to a connection that
//! policy allowed, so that its replies pass without a rule of their own,
//! and so that a policy change reaches connections already open.
//!
//! Pure decisions over one map: the eBPF programs (through
//! [`crate::policy::enforce`], at both pod veth hooks) look the
//! packet's [`FlowKey`] up in an LRU hash map of [`ConntrackEntry`], call
//! [`track`] with the entry, the time (`bpf_ktime_get_ns`) and the current
//! policy revision, ask the policy maps when the verdict says so, and
//! apply the [`EntryUpdate`] that [`Tracked::after_policy`] returns. The
//! twin does the same over an in-memory table.
//!
//! # The key
//!
//! A [`FlowKey`] is the same for both directions of a flow: of its two
//! endpoints (address, port), the lower one (address first, as a
//! big-endian number, then port) is `a`, the other `b`, and the packet's
//! [`Direction`] (`a` to `b` or back) is returned beside the key. ICMP
//! echo is the exception: `a` is the requester and the identifier stands in
//! both ports, so an echo request is always `AToB` and its reply `BToA`,
//! and a request *from* the responder (with the same identifier) is another
//! flow rather than a "reply" that policy never checked. Other IP protocols
//! are tracked by their address pair (ports 0). The entry records which
//! side opened the flow; a packet from that side is [`TrackedPass::Original`],
//! from the other [`TrackedPass::Reply`].
//!
//! An ICMP error (destination unreachable, fragmentation needed, time
//! exceeded, parameter problem) is looked up under the key of the datagram
//! it quotes, in whichever direction that datagram went, and passes as
//! [`TrackedPass::Related`]: a "port unreachable" for an allowed UDP flow
//! reaches its sender, and path MTU discovery works. Only if it is sent to
//! the quoted datagram's source, though: anything else is judged by policy
//! on its own, as any untracked packet is.
//!
//! # States and timeouts
//!
//! The state machine is only as fine as the timeouts need ([`ConnState`]).
//! An entry whose `last_seen_ns` is `timeout` or more before `now` has
//! expired and counts as absent (alive strictly before the timeout).
//!
//! | flow | state | timeout | anchors (Linux nf_conntrack / Calico / Cilium) |
//! |------|-------|---------|---------|
//! | TCP | SYN seen, SYN-ACK seen | 60 s | SYN_SENT 120 s, SYN_RECV 60 s / 20 s / 60 s |
//! | TCP | established | 6 h | 5 days / 1 h / 6 h |
//! | TCP | FIN one way | 6 h | FIN_WAIT 120 s, CLOSE_WAIT 60 s / 1 h / 6 h |
//! | TCP | FINs both ways | 30 s | LAST_ACK 30 s, TIME_WAIT 120 s / 30 s / 10 s |
//! | TCP | RST | 10 s | CLOSE 10 s / 40 s / 10 s |
//! | UDP | any | 60 s | 30 s unreplied, 120 s replied / 60 s / 60 s |
//! | ICMP echo | any | 30 s | 30 s / 5 s / 60 s |
//! | SCTP | INIT seen | 60 s | COOKIE_WAIT 3 s / 600 s (generic) / 60 s |
//! | SCTP | established | 210 s | heartbeat-acked 210 s / 600 s / 60 s |
//! | SCTP | ABORT, SHUTDOWN COMPLETE | 10 s | CLOSED 10 s / 600 s / 60 s |
//! | other IP | any | 60 s | 600 s / 600 s / 60 s |
//!
//! Why: the handshake's 60 s outlasts the gaps between a client's SYN
//! retransmissions (Linux doubles them up to 32 s). Established TCP gets
//! Cilium's 6 h rather than Calico's 1 h because it must outlast Linux's
//! default keepalive (`tcp_keepalive_time`, 2 h), or idle connections that
//! rely on it would die; a half-closed connection still carries data one
//! way, so it keeps that timeout too. After both FINs, 30 s lets the last
//! ACK and retransmitted FINs through. UDP takes the 60 s both anchors
//! agree on, unknown protocols the same as UDP (Cilium's non-TCP). An
//! SCTP association is kept up by heartbeats: 210 s is RFC 9260's
//! HB.interval × Path.Max.Retrans + RTO.Max (30 × 5 + 60), which Linux
//! uses for a path whose heartbeats are answered. All of them matter less
//! than they seem: an entry that goes early is re-checked (below), not
//! trusted.
//!
//! # What "allowed" must mean
//!
//! A node has one map and a flow one entry, whichever hook made it, so
//! the answer a caller feeds [`Tracked::after_policy`] must be the whole
//! policy for the [`PolicyQuery`]: the egress policy of the source's
//! endpoint and the ingress policy of the destination's, for each of them
//! that lives on this node (a remote end's policy is its own node's
//! business, with its own map). An entry made after asking only one of
//! them would let the other hook's packets of the flow pass unasked.
//! A port-less query (ICMP, other protocols, later fragments) matches only
//! rules without ports.
//!
//! # Policy changes
//!
//! Each entry holds the policy revision it was last allowed under. The
//! agent keeps one node-wide revision number in a map and increments it
//! after every change to the policy maps is complete (new entries first).
//! While an entry's revision is the current one its packets pass without a
//! policy lookup; the first packet after a change, in either direction,
//! makes [`track`] ask for a [`CheckReason::Recheck`] of the connection in
//! the direction it was opened. Allowed, the entry takes the new revision
//! and the connection goes on; denied, the packet is dropped and the entry
//! becomes a tombstone ([`FLAG_DENIED`]) at the new revision, so every later
//! packet of the connection, either way, is dropped without a lookup,
//! and no packet of it can pick it up again as a new flow in the other
//! direction. A connection policy no longer allows therefore stops at its
//! next packet after the revision changes (well within the one second
//! issue #10 asks for); unchanged policy costs nothing per packet, and a
//! change costs one lookup per active flow. Callers read the revision
//! before the policy lookup, so a change racing with it leaves the old
//! revision in the entry and forces one more re-check.
//!
//! # New flows, and eviction
//!
//! A packet with no live entry is a [`CheckReason::New`] flow, checked
//! against policy in its own direction. Packets that open something (TCP
//! SYN, SCTP INIT, ICMP echo request, any UDP or other IP protocol)
//! create an entry when allowed; so do other TCP and SCTP packets, picked
//! up mid-stream ([`FLAG_PICKED_UP`]) with their sender as the opener, as
//! Linux's `nf_conntrack_tcp_loose` does. Packets that close or answer (RST,
//! ABORT, SHUTDOWN COMPLETE, echo reply) and ICMP messages that are not
//! echo create nothing: policy decides them one by one.
//!
//! The map is an LRU hash: when it is full the kernel evicts the least
//! recently used entries, and an entry may also go early when one CPU's
//! share of free entries runs out. An evicted connection is not trusted
//! any more: its next packet is a new flow, checked against policy in that
//! packet's own direction. If it is the opener's, the connection is picked
//! up again; if it is the other side's and policy allows only the opener,
//! it is dropped until the opener sends again (TCP retransmits; a UDP
//! server that speaks first may lose datagrams). Eviction can cost packets
//! and lookups, never let through a packet policy denies: fail safe, not
//! fail open. An evicted tombstone only loses its shortcut: the
//! connection's packets are judged as new flows in their own direction
//! again. Expired entries are not deleted eagerly: a packet that finds
//! one overwrites it if allowed and deletes it if denied, and the LRU
//! reclaims the rest.
//!
//! # What the key sees behind kube-proxy
//!
//! The key is made of the addresses the hook sees. kube-proxy (iptables)
//! rewrites a Service address to a backend in the node's PREROUTING and
//! rewrites the backend's replies back in POSTROUTING, so a flow has one
//! tuple (client to backend pod) only between those hooks: requests after
//! the DNAT (tc egress of the backend's veth, or of the uplink), replies
//! before the reverse rewrite (tc ingress of the backend's veth, or of the
//! uplink). The policy programs must track a Service flow there, where
//! its destination is the backend (so named ports and ipBlocks apply to
//! it); a hook on the other side of netfilter sees the Service address
//! and would make a second entry: the client's veth does (client ·
//! ClusterIP), with the client's egress deferred to the post-DNAT hook
//! (see `crate::policy`, "Services"), and that entry is what lets the
//! reverse-NATed replies (from the ClusterIP) back in to a client isolated
//! for ingress. ICMP errors are rewritten together with the datagram they
//! quote, so they stay consistent in either view.
//!
//! # Fragments
//!
//! A fragment after the first has no ports: it is not tracked
//! ([`CheckReason::Untracked`], with no destination port), so policy
//! allows it only where it allows the peer on every port of the protocol
//! (or isolates neither end). So a fragmented UDP datagram of a flow that
//! policy allows only on its port loses its later fragments, and the
//! receiver's reassembly drops the whole datagram; an unfragmented flow,
//! and TCP (whose segments fit the path MTU), are not affected. Tracking
//! the first fragment's ports by IP identifier is not done yet.

use crate::ipv4::{PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
use crate::l4::{Icmp, PROTOCOL_SCTP, QuotedFlow, TcpFlags, Transport, sctp_chunk};

/// Name (and pin file name) of the connection tracking map, an LRU hash
/// from [`FlowKey`] to [`ConntrackEntry`].
pub const CONNTRACK_MAP: &str = "WEFT_CONNTRACK";
/// Capacity of [`CONNTRACK_MAP`]: flows through one node's pods. About
/// 32 bytes of key and value per entry, plus the kernel's own per-entry
/// overhead.
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;

pub const NS_PER_SECOND: u64 = 1_000_000_000;

/// Which way a packet goes between the two endpoints of its [`FlowKey`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From `a` to `b`.
    AToB = 0,
    /// From `b` to `a`.
    BToA = 1,
}

impl Direction {
    /// Decodes a stored byte; `None` for anything but 0 and 1.
    #[inline(always)]
    pub const fn from_u8(value: u8) -> Option<Direction> {
        match value {
            0 => Some(Direction::AToB),
            1 => Some(Direction::BToA),
            _ => None,
        }
    }

    #[inline(always)]
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::AToB => Direction::BToA,
            Direction::BToA => Direction::AToB,
        }
    }
}

/// Key of [`CONNTRACK_MAP`]: one flow, the same for both its directions.
/// Addresses are wire-order octets, ports host-order numbers (the map is
/// only read on the node that wrote it). `reserved` is part of the hashed
/// key: always zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub a_addr: [u8; 4],
    pub b_addr: [u8; 4],
    /// `a`'s port; the identifier for ICMP echo; 0 for other protocols.
    pub a_port: u16,
    pub b_port: u16,
    pub protocol: u8,
    pub reserved: [u8; 3],
}

impl FlowKey {
    /// The key of a packet from `src:src_port` to `dst:dst_port`, and the
    /// packet's direction in it: the lower endpoint is `a`.
    #[inline(always)]
    pub const fn between(
        src: [u8; 4],
        src_port: u16,
        dst: [u8; 4],
        dst_port: u16,
        protocol: u8,
    ) -> (FlowKey, Direction) {
        let s = u32::from_be_bytes(src);
        let d = u32::from_be_bytes(dst);
        if s < d || (s == d && src_port <= dst_port) {
            (
                FlowKey::new(src, src_port, dst, dst_port, protocol),
                Direction::AToB,
            )
        } else {
            (
                FlowKey::new(dst, dst_port, src, src_port, protocol),
                Direction::BToA,
            )
        }
    }

    /// The key of an ICMP echo exchange: `a` is the requester.
    #[inline(always)]
    pub const fn echo(requester: [u8; 4], responder: [u8; 4], id: u16) -> FlowKey {
        FlowKey::new(requester, id, responder, id, PROTOCOL_ICMP)
    }

    #[inline(always)]
    const fn new(a_addr: [u8; 4], a_port: u16, b_addr: [u8; 4], b_port: u16, protocol: u8) -> Self {
        FlowKey {
            a_addr,
            b_addr,
            a_port,
            b_port,
            protocol,
            reserved: [0; 3],
        }
    }

    /// The policy question for a packet of this flow sent in `direction`.
    #[inline(always)]
    pub const fn query(&self, direction: Direction) -> PolicyQuery {
        let (src, dst, dst_port) = match direction {
            Direction::AToB => (self.a_addr, self.b_addr, self.b_port),
            Direction::BToA => (self.b_addr, self.a_addr, self.a_port),
        };
        PolicyQuery {
            src,
            dst,
            protocol: self.protocol,
            dst_port: if has_ports(self.protocol) {
                Some(dst_port)
            } else {
                None
            },
        }
    }
}

/// TCP, UDP and SCTP: the protocols NetworkPolicy names ports of.
#[inline(always)]
const fn has_ports(protocol: u8) -> bool {
    matches!(protocol, PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_SCTP)
}

/// Where a tracked flow stands, as far as its timeout goes. Stored as a
/// byte in [`ConntrackEntry::state`]; 0 (a zeroed value) is no state, and
/// so no entry.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// TCP SYN or SCTP INIT from the opener, no answer yet.
    Opening = 1,
    /// TCP: the SYN-ACK came back, the handshake's last ACK has not.
    Answered = 2,
    /// Open: TCP after the handshake (or picked up), SCTP after INIT was
    /// answered, UDP, ICMP echo and other protocols from their first packet.
    Established = 3,
    /// TCP: a FIN from one side.
    HalfClosed = 4,
    /// TCP: FINs from both sides.
    Closing = 5,
    /// TCP RST, SCTP ABORT or SHUTDOWN COMPLETE.
    Closed = 6,
}

impl ConnState {
    #[inline(always)]
    pub const fn from_u8(value: u8) -> Option<ConnState> {
        match value {
            1 => Some(ConnState::Opening),
            2 => Some(ConnState::Answered),
            3 => Some(ConnState::Established),
            4 => Some(ConnState::HalfClosed),
            5 => Some(ConnState::Closing),
            6 => Some(ConnState::Closed),
            _ => None,
        }
    }
}

/// How long a flow of `protocol` in `state` lives without a packet, in
/// nanoseconds. The table and its reasons are in the module doc.
#[inline(always)]
pub const fn timeout_ns(protocol: u8, state: ConnState) -> u64 {
    let seconds = match (protocol, state) {
        (PROTOCOL_TCP, ConnState::Opening | ConnState::Answered) => 60,
        (PROTOCOL_TCP, ConnState::Established | ConnState::HalfClosed) => 6 * 3600,
        (PROTOCOL_TCP, ConnState::Closing) => 30,
        (PROTOCOL_TCP, ConnState::Closed) => 10,
        (PROTOCOL_UDP, _) => 60,
        (PROTOCOL_ICMP, _) => 30,
        (PROTOCOL_SCTP, ConnState::Closed) => 10,
        (PROTOCOL_SCTP, ConnState::Opening) => 60,
        (PROTOCOL_SCTP, _) => 210,
        _ => 60,
    };
    seconds * NS_PER_SECOND
}

/// Bit of [`ConntrackEntry::flags`]: a packet from the side that did not
/// open the flow has passed.
pub const FLAG_SEEN_REPLY: u8 = 1;
/// Bit of [`ConntrackEntry::flags`]: the opener sent a FIN.
pub const FLAG_OPENER_FIN: u8 = 2;
/// Bit of [`ConntrackEntry::flags`]: the other side sent a FIN.
pub const FLAG_RESPONDER_FIN: u8 = 4;
/// Bit of [`ConntrackEntry::flags`]: policy denied the connection at
/// `policy_revision`; its packets are dropped until the revision changes.
pub const FLAG_DENIED: u8 = 8;
/// Bit of [`ConntrackEntry::flags`]: created by a packet that opens
/// nothing (the entry was lost, or the flow predates the tracker).
pub const FLAG_PICKED_UP: u8 = 16;

/// Value of [`CONNTRACK_MAP`]: what is known about one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// When the last packet that passed was seen (or the packet that made
    /// the entry a tombstone), in the caller's clock: `bpf_ktime_get_ns`.
    pub last_seen_ns: u64,
    /// The policy revision the flow was last allowed (or denied) under.
    pub policy_revision: u32,
    /// A [`ConnState`] as `u8`; see [`ConntrackEntry::state`].
    pub state: u8,
    /// The [`Direction`] of the packet that opened the flow, as `u8`.
    pub opener: u8,
    /// `FLAG_*` bits; others reserved (0).
    pub flags: u8,
    /// Reserved; writers set 0.
    pub reserved: u8,
}

impl ConntrackEntry {
    /// A flow opened now by a packet going `opener`, allowed at `revision`.
    #[inline(always)]
    pub const fn new(state: ConnState, opener: Direction, now_ns: u64, revision: u32) -> Self {
        ConntrackEntry {
            last_seen_ns: now_ns,
            policy_revision: revision,
            state: state as u8,
            opener: opener as u8,
            flags: 0,
            reserved: 0,
        }
    }

    /// The state; `None` for bytes this build does not know.
    #[inline(always)]
    pub const fn state(&self) -> Option<ConnState> {
        ConnState::from_u8(self.state)
    }

    /// The direction the flow was opened in; `None` for bytes this build
    /// does not know.
    #[inline(always)]
    pub const fn opener(&self) -> Option<Direction> {
        Direction::from_u8(self.opener)
    }

    #[inline(always)]
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The entry is readable and has not expired at `now_ns`. A clock
    /// behind `last_seen_ns` (another CPU's) counts as no time passed.
    #[inline(always)]
    pub const fn is_live(&self, protocol: u8, now_ns: u64) -> bool {
        match (self.state(), self.opener()) {
            (Some(state), Some(_)) => {
                now_ns.saturating_sub(self.last_seen_ns) < timeout_ns(protocol, state)
            }
            _ => false,
        }
    }
}

// SAFETY (both): `#[repr(C)]`, only integer and byte-array fields, no
// padding (sizes asserted below), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConntrackEntry {}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 2);
const _: () = assert!(core::mem::size_of::<ConntrackEntry>() == 16);

/// What the tracker needs of a packet: its addresses and transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowPacket {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub transport: Transport,
}

/// The flow a packet belongs to, or for an ICMP error, is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    /// The packet's direction; for an ICMP error, the quoted datagram's.
    pub direction: Direction,
    /// An ICMP error about the flow rather than a packet of it.
    pub related: bool,
}

impl FlowPacket {
    /// The flow to look up for this packet; `None` when there is nothing
    /// to track it by (a later fragment, ICMP other than echo and errors,
    /// an error not sent to the quoted datagram's source).
    #[inline(always)]
    pub const fn flow(&self) -> Option<Flow> {
        let (key, direction) = match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port }
            | Transport::Sctp {
                src_port, dst_port, ..
            } => FlowKey::between(
                self.src,
                src_port,
                self.dst,
                dst_port,
                self.transport.protocol(),
            ),
            Transport::Other { protocol } => FlowKey::between(self.src, 0, self.dst, 0, protocol),
            Transport::Icmp(Icmp::EchoRequest { id, .. }) => {
                (FlowKey::echo(self.src, self.dst, id), Direction::AToB)
            }
            Transport::Icmp(Icmp::EchoReply { id, .. }) => {
                (FlowKey::echo(self.dst, self.src, id), Direction::BToA)
            }
            Transport::Icmp(icmp) => return self.error_flow(icmp),
            Transport::Fragment { .. } => return None,
        };
        Some(Flow {
            key,
            direction,
            related: false,
        })
    }

    #[inline(always)]
    const fn error_flow(&self, icmp: Icmp) -> Option<Flow> {
        let Some(quote) = icmp.quote() else {
            return None;
        };
        // An error goes back to whoever sent the datagram it quotes.
        if u32::from_be_bytes(quote.src) != u32::from_be_bytes(self.dst) {
            return None;
        }
        let (key, direction) = match quote.flow {
            QuotedFlow::Ports { src_port, dst_port } => {
                FlowKey::between(quote.src, src_port, quote.dst, dst_port, quote.protocol)
            }
            QuotedFlow::Echo { request: true, id } => {
                (FlowKey::echo(quote.src, quote.dst, id), Direction::AToB)
            }
            QuotedFlow::Echo { request: false, id } => {
                (FlowKey::echo(quote.dst, quote.src, id), Direction::BToA)
            }
            QuotedFlow::Other if quote.protocol != PROTOCOL_ICMP => {
                FlowKey::between(quote.src, 0, quote.dst, 0, quote.protocol)
            }
            QuotedFlow::Other | QuotedFlow::Fragment => return None,
        };
        Some(Flow {
            key,
            direction,
            related: true,
        })
    }

    /// The policy question for this packet on its own.
    #[inline(always)]
    pub const fn query(&self) -> PolicyQuery {
        let dst_port = match self.transport {
            Transport::Tcp { dst_port, .. }
            | Transport::Udp { dst_port, .. }
            | Transport::Sctp { dst_port, .. } => Some(dst_port),
            _ => None,
        };
        PolicyQuery {
            src: self.src,
            dst: self.dst,
            protocol: self.transport.protocol(),
            dst_port,
        }
    }
}

/// What policy is asked: may `src` send `protocol` to `dst` (at
/// `dst_port`, for TCP, UDP and SCTP; `None` for other protocols and for
/// fragments without ports)?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyQuery {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub dst_port: Option<u16>,
}

/// How a packet of a live, allowed flow passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackedPass {
    /// From the side that opened the flow.
    Original,
    /// From the other side.
    Reply,
    /// An ICMP error about the flow.
    Related,
}

/// Why policy must be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckReason {
    /// No live entry: a flow starts (or is picked up) with this packet.
    New,
    /// The flow was allowed under an older policy revision.
    Recheck,
    /// Nothing to track the packet by: policy decides it alone.
    Untracked,
}

/// A policy lookup the caller must make before the packet may pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyCheck {
    pub reason: CheckReason,
    /// The question: the packet's own direction for a new or untracked
    /// packet, the direction the flow was opened in for a re-check.
    pub query: PolicyQuery,
    /// What to write under the key when policy denies.
    pub if_denied: EntryUpdate,
}

/// Why the tracker drops a packet without asking policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConntrackDrop {
    /// TCP flags no stack sends together ([`crate::l4::TcpFlags::is_valid`]).
    InvalidTcpFlags,
    /// The connection was denied by the current policy revision.
    DeniedConnection,
}

/// The tracker's answer for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConntrackVerdict {
    /// Pass without a policy lookup.
    Pass(TrackedPass),
    /// Ask policy first; see [`Tracked::after_policy`].
    CheckPolicy(PolicyCheck),
    Drop(ConntrackDrop),
}

/// A change to the packet's [`FlowKey`] in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryUpdate {
    Keep,
    Write(ConntrackEntry),
    Delete,
}

/// The result of [`track`]: the verdict, and the change to the map if the
/// packet passes (after policy allowed it, for [`ConntrackVerdict::CheckPolicy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub verdict: ConntrackVerdict,
    pub update: EntryUpdate,
}

impl Tracked {
    /// Whether the packet passes and what to do to the map, once policy
    /// has answered `allowed` (ignored unless the verdict asked it).
    #[inline(always)]
    pub const fn after_policy(&self, allowed: bool) -> (bool, EntryUpdate) {
        match self.verdict {
            ConntrackVerdict::Pass(_) => (true, self.update),
            ConntrackVerdict::Drop(_) => (false, self.update),
            ConntrackVerdict::CheckPolicy(check) => {
                if allowed {
                    (true, self.update)
                } else {
                    (false, check.if_denied)
                }
            }
        }
    }

    #[inline(always)]
    const fn pass(how: TrackedPass, update: EntryUpdate) -> Tracked {
        Tracked {
            verdict: ConntrackVerdict::Pass(how),
            update,
        }
    }

    #[inline(always)]
    const fn drop(why: ConntrackDrop) -> Tracked {
        Tracked {
            verdict: ConntrackVerdict::Drop(why),
            update: EntryUpdate::Keep,
        }
    }

    #[inline(always)]
    const fn check(
        reason: CheckReason,
        query: PolicyQuery,
        if_allowed: EntryUpdate,
        if_denied: EntryUpdate,
    ) -> Tracked {
        Tracked {
            verdict: ConntrackVerdict::CheckPolicy(PolicyCheck {
                reason,
                query,
                if_denied,
            }),
            update: if_allowed,
        }
    }
}

/// The tracker's decision for `packet`, given the entry stored under its
/// flow's key (`None` if there is none), the time and the current policy
/// revision.
#[inline(always)]
pub fn track(
    packet: &FlowPacket,
    existing: Option<&ConntrackEntry>,
    now_ns: u64,
    revision: u32,
) -> Tracked {
    let Some(flow) = packet.flow() else {
        return untracked(packet);
    };
    if let Transport::Tcp { flags, .. } = packet.transport
        && !flags.is_valid()
    {
        return Tracked::drop(ConntrackDrop::InvalidTcpFlags);
    }
    let live = match existing {
        Some(entry) if entry.is_live(flow.key.protocol, now_ns) => Some(*entry),
        _ => None,
    };
    if flow.related {
        return match live {
            Some(entry) => related(&flow, entry, revision),
            None => untracked(packet),
        };
    }
    let Some(entry) = live else {
        // An expired or unreadable entry is a slot to free if policy says no.
        let if_denied = if existing.is_some() {
            EntryUpdate::Delete
        } else {
            EntryUpdate::Keep
        };
        return new_flow(packet, &flow, now_ns, revision, if_denied);
    };
    let from_opener = entry.opener == flow.direction as u8;
    if opens(&packet.transport) && !(from_opener && entry.state == ConnState::Opening as u8) {
        // A new connection on the tuple (or from the other side); the old
        // entry stays unless policy allows the new one.
        return new_flow(packet, &flow, now_ns, revision, EntryUpdate::Keep);
    }
    let how = if from_opener {
        TrackedPass::Original
    } else {
        TrackedPass::Reply
    };
    if entry.policy_revision != revision {
        let mut allowed = entry;
        allowed.policy_revision = revision;
        allowed.flags &= !FLAG_DENIED;
        return Tracked::check(
            CheckReason::Recheck,
            opened_query(&flow.key, &entry),
            EntryUpdate::Write(advance(allowed, &packet.transport, from_opener, now_ns)),
            EntryUpdate::Write(tombstone(entry, revision)),
        );
    }
    if entry.has(FLAG_DENIED) {
        return Tracked::drop(ConntrackDrop::DeniedConnection);
    }
    Tracked::pass(
        how,
        EntryUpdate::Write(advance(entry, &packet.transport, from_opener, now_ns)),
    )
}

/// An ICMP error about the live flow `entry`: related while the flow is
/// allowed; it refreshes nothing.
#[inline(always)]
fn related(flow: &Flow, entry: ConntrackEntry, revision: u32) -> Tracked {
    if entry.policy_revision != revision {
        let mut allowed = entry;
        allowed.policy_revision = revision;
        allowed.flags &= !FLAG_DENIED;
        return Tracked::check(
            CheckReason::Recheck,
            opened_query(&flow.key, &entry),
            EntryUpdate::Write(allowed),
            EntryUpdate::Write(tombstone(entry, revision)),
        );
    }
    if entry.has(FLAG_DENIED) {
        return Tracked::drop(ConntrackDrop::DeniedConnection);
    }
    Tracked::pass(TrackedPass::Related, EntryUpdate::Keep)
}

/// The connection as its opener sent it: what a re-check asks.
#[inline(always)]
fn opened_query(key: &FlowKey, entry: &ConntrackEntry) -> PolicyQuery {
    let opener = match entry.opener() {
        Some(direction) => direction,
        // `is_live` refuses unreadable openers; this is never reached.
        None => Direction::AToB,
    };
    key.query(opener)
}

/// The entry of a connection policy has just denied at `revision`.
#[inline(always)]
const fn tombstone(entry: ConntrackEntry, revision: u32) -> ConntrackEntry {
    let mut denied = entry;
    denied.policy_revision = revision;
    denied.flags |= FLAG_DENIED;
    denied
}

#[inline(always)]
fn untracked(packet: &FlowPacket) -> Tracked {
    Tracked::check(
        CheckReason::Untracked,
        packet.query(),
        EntryUpdate::Keep,
        EntryUpdate::Keep,
    )
}

/// A packet with no live entry (or opening anew): policy decides in the
/// packet's own direction, and an allowed packet that can start a flow
/// writes its first entry.
#[inline(always)]
fn new_flow(
    packet: &FlowPacket,
    flow: &Flow,
    now_ns: u64,
    revision: u32,
    if_denied: EntryUpdate,
) -> Tracked {
    let if_allowed = match first_entry(&packet.transport, flow.direction, now_ns, revision) {
        Some(entry) => EntryUpdate::Write(entry),
        None => EntryUpdate::Keep,
    };
    Tracked::check(CheckReason::New, packet.query(), if_allowed, if_denied)
}

/// A TCP SYN (without ACK) or an SCTP INIT: the start of a connection.
#[inline(always)]
const fn opens(transport: &Transport) -> bool {
    match transport {
        Transport::Tcp { flags, .. } => flags.is_opening(),
        Transport::Sctp { first_chunk, .. } => *first_chunk == sctp_chunk::INIT,
        _ => false,
    }
}

/// The entry a packet with no live entry starts, if any.
#[inline(always)]
fn first_entry(
    transport: &Transport,
    direction: Direction,
    now_ns: u64,
    revision: u32,
) -> Option<ConntrackEntry> {
    let fresh = |state| ConntrackEntry::new(state, direction, now_ns, revision);
    let picked_up = || {
        let mut entry = fresh(ConnState::Established);
        entry.flags = FLAG_PICKED_UP;
        advance(entry, transport, true, now_ns)
    };
    match *transport {
        Transport::Tcp { flags, .. } if flags.has(TcpFlags::RST) => None,
        Transport::Tcp { flags, .. } if flags.is_opening() => Some(fresh(ConnState::Opening)),
        Transport::Tcp { .. } => Some(picked_up()),
        Transport::Sctp { first_chunk, .. } => match first_chunk {
            sctp_chunk::INIT => Some(fresh(ConnState::Opening)),
            sctp_chunk::ABORT | sctp_chunk::SHUTDOWN_COMPLETE => None,
            _ => Some(picked_up()),
        },
        Transport::Udp { .. } | Transport::Other { .. } => Some(fresh(ConnState::Established)),
        Transport::Icmp(Icmp::EchoRequest { .. }) => Some(fresh(ConnState::Established)),
        Transport::Icmp(_) | Transport::Fragment { .. } => None,
    }
}

/// `entry` after a packet of its flow passed (sent by the opener or not):
/// seen now, and the TCP or SCTP state moved on.
#[inline(always)]
fn advance(
    entry: ConntrackEntry,
    transport: &Transport,
    from_opener: bool,
    now_ns: u64,
) -> ConntrackEntry {
    let mut next = entry;
    next.last_seen_ns = now_ns;
    if !from_opener {
        next.flags |= FLAG_SEEN_REPLY;
    }
    let state = ConnState::from_u8(entry.state);
    match *transport {
        Transport::Tcp { flags, .. } => {
            let mut state = match state {
                Some(state) => state,
                None => return next,
            };
            if flags.has(TcpFlags::RST) {
                next.state = ConnState::Closed as u8;
                return next;
            }
            state = match state {
                ConnState::Opening
                    if !from_opener && flags.has(TcpFlags::SYN) && flags.has(TcpFlags::ACK) =>
                {
                    ConnState::Answered
                }
                ConnState::Answered
                    if from_opener && flags.has(TcpFlags::ACK) && !flags.has(TcpFlags::SYN) =>
                {
                    ConnState::Established
                }
                other => other,
            };
            if flags.has(TcpFlags::FIN) && !matches!(state, ConnState::Closed) {
                next.flags |= if from_opener {
                    FLAG_OPENER_FIN
                } else {
                    FLAG_RESPONDER_FIN
                };
                let both = FLAG_OPENER_FIN | FLAG_RESPONDER_FIN;
                state = if next.flags & both == both {
                    ConnState::Closing
                } else {
                    ConnState::HalfClosed
                };
            }
            next.state = state as u8;
        }
        Transport::Sctp { first_chunk, .. } => {
            if first_chunk == sctp_chunk::ABORT || first_chunk == sctp_chunk::SHUTDOWN_COMPLETE {
                next.state = ConnState::Closed as u8;
            } else if !from_opener && matches!(state, Some(ConnState::Opening)) {
                next.state = ConnState::Established as u8;
            }
        }
        _ => {}
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::Ipv4Header;
    use crate::l4::tests::{
        A, B, ICMP_ECHO_REQUEST, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACHABLE, SCTP_INIT, TCP_SYN,
        UDP_DNS, fix_ipv4, frame,
    };
    use crate::testgen::Gen;
    use std::collections::HashMap;

    const S: u64 = NS_PER_SECOND;
    const ROUTER: [u8; 4] = [10, 244, 2, 1];
    const SYN: u8 = TcpFlags::SYN;
    const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;
    const PSH_ACK: u8 = TcpFlags::PSH | TcpFlags::ACK;
    const FIN_ACK: u8 = TcpFlags::FIN | TcpFlags::ACK;
    const RST: u8 = TcpFlags::RST;

    // --- frames -----------------------------------------------------------

    fn addressed(template: &[u8], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut d = template.to_vec();
        d[12..16].copy_from_slice(&src);
        d[16..20].copy_from_slice(&dst);
        d
    }

    fn ported(template: &[u8], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut d = addressed(template, src, dst);
        d[20..22].copy_from_slice(&sport.to_be_bytes());
        d[22..24].copy_from_slice(&dport.to_be_bytes());
        d
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let mut d = ported(&TCP_SYN, src, sport, dst, dport);
        d[33] = flags;
        fix_ipv4(&mut d);
        d
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut d = ported(&UDP_DNS, src, sport, dst, dport);
        fix_ipv4(&mut d);
        d
    }

    fn sctp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, chunk: u8) -> Vec<u8> {
        let mut d = ported(&SCTP_INIT, src, sport, dst, dport);
        d[32] = chunk;
        fix_ipv4(&mut d);
        d
    }

    fn echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
        let mut d = addressed(&ICMP_ECHO_REQUEST, src, dst);
        d[20] = if request { 8 } else { 0 };
        d[24..26].copy_from_slice(&id.to_be_bytes());
        fix_ipv4(&mut d);
        d
    }

    /// An ICMP error from `from` to `to` quoting the first 28 bytes of `about`.
    fn icmp_error(from: [u8; 4], to: [u8; 4], icmp_type: u8, code: u8, about: &[u8]) -> Vec<u8> {
        let mut d = addressed(&ICMP_PORT_UNREACHABLE[..20], from, to);
        d.extend([icmp_type, code, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&about[..28]);
        fix_ipv4(&mut d);
        d
    }

    fn packet(datagram: &[u8]) -> FlowPacket {
        let f = frame(datagram);
        let ip = Ipv4Header::new_checked(&f[..], 14).unwrap();
        FlowPacket {
            src: ip.src(),
            dst: ip.dst(),
            transport: Transport::read(&f[..], &ip).unwrap(),
        }
    }

    fn flow(datagram: &[u8]) -> Flow {
        packet(datagram).flow().unwrap()
    }

    // --- a node: one table, one policy, a revision --------------------------

    /// What one packet did at the node.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        passed: bool,
        verdict: ConntrackVerdict,
    }

    struct Node {
        table: HashMap<FlowKey, ConntrackEntry>,
        revision: u32,
        policy: Box<dyn Fn(&PolicyQuery) -> bool>,
        lookups: usize,
    }

    impl Node {
        fn new(policy: impl Fn(&PolicyQuery) -> bool + 'static) -> Node {
            Node {
                table: HashMap::new(),
                revision: 1,
                policy: Box::new(policy),
                lookups: 0,
            }
        }

        /// A new policy, published as the agent does: maps, then revision.
        fn change_policy(&mut self, policy: impl Fn(&PolicyQuery) -> bool + 'static) {
            self.policy = Box::new(policy);
            self.revision += 1;
        }

        fn send(&mut self, datagram: &[u8], now: u64) -> Seen {
            let packet = packet(datagram);
            let key = packet.flow().map(|f| f.key);
            let existing = key.and_then(|k| self.table.get(&k).copied());
            let tracked = track(&packet, existing.as_ref(), now, self.revision);
            let allowed = match tracked.verdict {
                ConntrackVerdict::CheckPolicy(check) => {
                    self.lookups += 1;
                    (self.policy)(&check.query)
                }
                _ => false,
            };
            let (passed, update) = tracked.after_policy(allowed);
            match (key, update) {
                (Some(k), EntryUpdate::Write(entry)) => {
                    self.table.insert(k, entry);
                }
                (Some(k), EntryUpdate::Delete) => {
                    self.table.remove(&k);
                }
                (None, EntryUpdate::Write(_) | EntryUpdate::Delete) => {
                    panic!("an update without a key: {tracked:?}")
                }
                (_, EntryUpdate::Keep) => {}
            }
            Seen {
                passed,
                verdict: tracked.verdict,
            }
        }

        fn entry(&self, datagram: &[u8]) -> Option<ConntrackEntry> {
            self.table.get(&flow(datagram).key).copied()
        }

        fn state(&self, datagram: &[u8]) -> Option<ConnState> {
            self.entry(datagram).and_then(|e| e.state())
        }
    }

    /// Policy: A may open to B at `port` (any protocol with ports), or
    /// with anything when `port` is `None`; nothing else.
    fn a_to_b(port: Option<u16>) -> impl Fn(&PolicyQuery) -> bool {
        move |q| q.src == A && q.dst == B && (port.is_none() || q.dst_port == port)
    }

    fn is_check(seen: &Seen, reason: CheckReason) -> bool {
        matches!(seen.verdict, ConntrackVerdict::CheckPolicy(c) if c.reason == reason)
    }

    fn passed_as(how: TrackedPass) -> Seen {
        Seen {
            passed: true,
            verdict: ConntrackVerdict::Pass(how),
        }
    }

    // --- keys ---------------------------------------------------------------

    #[test]
    fn both_directions_share_a_key_with_opposite_directions() {
        let pairs = [
            (tcp(A, 40000, B, 80, SYN), tcp(B, 80, A, 40000, SYN_ACK)),
            (udp(A, 5353, B, 53), udp(B, 53, A, 5353)),
            (sctp(A, 5000, B, 38412, 1), sctp(B, 38412, A, 5000, 2)),
            (echo(A, B, 7, true), echo(B, A, 7, false)),
        ];
        for (there, back) in pairs {
            let (there, back) = (flow(&there), flow(&back));
            assert_eq!(there.key, back.key);
            assert_eq!(there.direction.reverse(), back.direction);
            assert!(!there.related && !back.related);
        }
        let k = flow(&tcp(A, 40000, B, 80, SYN)).key;
        assert_eq!((k.a_addr, k.a_port, k.b_addr, k.b_port), (A, 40000, B, 80));
        assert_eq!((k.protocol, k.reserved), (6, [0; 3]));
        // The lower endpoint is `a` whoever sends.
        assert_eq!(flow(&udp(B, 53, A, 5353)).direction, Direction::BToA);
        // Protocols never share keys.
        assert_ne!(
            flow(&udp(A, 5000, B, 38412)).key,
            flow(&sctp(A, 5000, B, 38412, 1)).key
        );
    }

    #[test]
    fn addresses_order_before_ports() {
        // A < B as numbers, whatever the ports.
        assert_eq!(flow(&udp(A, 65535, B, 1)).direction, Direction::AToB);
        assert_eq!(flow(&udp(B, 1, A, 65535)).direction, Direction::BToA);
        // 10.244.1.5 vs 10.244.1.40: numeric order, not the last octet's digits.
        let c = [10, 244, 1, 40];
        assert_eq!(flow(&udp(c, 1, A, 2)).direction, Direction::BToA);
        // One address (a pod talking to itself): the ports decide.
        let (low, high) = (flow(&udp(A, 1000, A, 2000)), flow(&udp(A, 2000, A, 1000)));
        assert_eq!(low.key, high.key);
        assert_eq!(
            (low.direction, high.direction),
            (Direction::AToB, Direction::BToA)
        );
        // Both endpoints equal: one direction only.
        assert_eq!(flow(&udp(A, 7, A, 7)).direction, Direction::AToB);
    }

    #[test]
    fn echo_keys_belong_to_the_requester() {
        let request = flow(&echo(A, B, 0x1234, true));
        assert_eq!(request.key, FlowKey::echo(A, B, 0x1234));
        assert_eq!(request.direction, Direction::AToB);
        assert_eq!(flow(&echo(B, A, 0x1234, false)).direction, Direction::BToA);
        // B pinging A with the same identifier is another flow.
        assert_ne!(flow(&echo(B, A, 0x1234, true)).key, request.key);
        assert_ne!(flow(&echo(A, B, 0x1235, true)).key, request.key);
    }

    #[test]
    fn other_protocols_are_keyed_by_address_pair() {
        let mut gre = udp(A, 1, B, 2);
        gre[9] = 47;
        fix_ipv4(&mut gre);
        let mut back = udp(B, 3, A, 4);
        back[9] = 47;
        fix_ipv4(&mut back);
        let (there, back) = (flow(&gre), flow(&back));
        assert_eq!(there.key, back.key);
        assert_eq!(
            (there.key.a_port, there.key.b_port, there.key.protocol),
            (0, 0, 47)
        );
        assert_eq!(there.direction, Direction::AToB);
    }

    #[test]
    fn queries_name_ports_only_for_tcp_udp_sctp() {
        let (key, _) = FlowKey::between(A, 40000, B, 80, PROTOCOL_TCP);
        let to_b = PolicyQuery {
            src: A,
            dst: B,
            protocol: PROTOCOL_TCP,
            dst_port: Some(80),
        };
        assert_eq!(key.query(Direction::AToB), to_b);
        assert_eq!(
            key.query(Direction::BToA),
            PolicyQuery {
                src: B,
                dst: A,
                protocol: PROTOCOL_TCP,
                dst_port: Some(40000)
            }
        );
        assert_eq!(packet(&tcp(A, 40000, B, 80, SYN)).query(), to_b);
        assert_eq!(FlowKey::echo(A, B, 9).query(Direction::AToB).dst_port, None);
        assert_eq!(packet(&echo(A, B, 9, true)).query().dst_port, None);
    }

    #[test]
    fn map_layout() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<ConntrackEntry>(), 16);
        let e = ConntrackEntry::new(ConnState::Established, Direction::BToA, 5, 9);
        assert_eq!(
            (e.state(), e.opener(), e.flags, e.reserved),
            (Some(ConnState::Established), Some(Direction::BToA), 0, 0)
        );
        assert_eq!(ConnState::from_u8(0), None);
        assert_eq!(ConnState::from_u8(7), None);
        assert_eq!(Direction::from_u8(2), None);
        for s in 1..=6 {
            assert_eq!(ConnState::from_u8(s).map(|s| s as u8), Some(s));
        }
    }

    // --- TCP ----------------------------------------------------------------

    #[test]
    fn tcp_lifecycle_needs_one_lookup() {
        let mut node = Node::new(a_to_b(Some(80)));
        let syn = tcp(A, 40000, B, 80, SYN);
        let seen = node.send(&syn, 0);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.state(&syn), Some(ConnState::Opening));
        // (from A, flags, how it passes, the state after it)
        let steps = [
            (false, SYN_ACK, TrackedPass::Reply, ConnState::Answered),
            (true, ACK, TrackedPass::Original, ConnState::Established),
            (true, PSH_ACK, TrackedPass::Original, ConnState::Established),
            (false, PSH_ACK, TrackedPass::Reply, ConnState::Established),
            (true, FIN_ACK, TrackedPass::Original, ConnState::HalfClosed),
            // Half closed: B still sends data, A still acknowledges.
            (false, PSH_ACK, TrackedPass::Reply, ConnState::HalfClosed),
            (true, ACK, TrackedPass::Original, ConnState::HalfClosed),
            (false, FIN_ACK, TrackedPass::Reply, ConnState::Closing),
            (true, ACK, TrackedPass::Original, ConnState::Closing),
        ];
        for (i, (from_a, flags, how, state)) in steps.into_iter().enumerate() {
            let datagram = if from_a {
                tcp(A, 40000, B, 80, flags)
            } else {
                tcp(B, 80, A, 40000, flags)
            };
            let now = (i as u64 + 1) * S;
            assert_eq!(node.send(&datagram, now), passed_as(how), "step {i}");
            assert_eq!(node.state(&datagram), Some(state), "step {i}");
            assert_eq!(node.entry(&datagram).unwrap().last_seen_ns, now);
        }
        assert_eq!(node.lookups, 1);
        let entry = node.entry(&syn).unwrap();
        assert!(entry.has(FLAG_SEEN_REPLY) && !entry.has(FLAG_PICKED_UP));
        assert!(entry.has(FLAG_OPENER_FIN) && entry.has(FLAG_RESPONDER_FIN));
        // 30 s after the last packet, the closed connection is gone: a late
        // segment from B is a new flow B may not open.
        let late = tcp(B, 80, A, 40000, ACK);
        let seen = node.send(&late, (steps.len() as u64 + 30) * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        // ... and the expired entry is freed.
        assert_eq!(node.entry(&late), None);
    }

    #[test]
    fn rst_closes_for_ten_seconds() {
        let mut node = Node::new(a_to_b(Some(80)));
        node.send(&tcp(A, 40000, B, 80, SYN), 0);
        node.send(&tcp(B, 80, A, 40000, SYN_ACK), S);
        node.send(&tcp(A, 40000, B, 80, ACK), 2 * S);
        let rst = tcp(B, 80, A, 40000, RST | ACK);
        assert_eq!(node.send(&rst, 3 * S), passed_as(TrackedPass::Reply));
        assert_eq!(node.state(&rst), Some(ConnState::Closed));
        // Stragglers pass until the timeout, and keep it closed.
        let straggler = tcp(A, 40000, B, 80, ACK);
        assert_eq!(
            node.send(&straggler, 4 * S),
            passed_as(TrackedPass::Original)
        );
        assert_eq!(node.state(&rst), Some(ConnState::Closed));
        assert!(node.entry(&rst).unwrap().is_live(PROTOCOL_TCP, 14 * S - 1));
        assert!(!node.entry(&rst).unwrap().is_live(PROTOCOL_TCP, 14 * S));
        // A RST with nothing tracked creates nothing.
        let mut fresh = Node::new(|_| true);
        let seen = fresh.send(&rst, 0);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert!(fresh.table.is_empty());
    }

    #[test]
    fn syn_retransmissions_need_no_lookup() {
        let mut node = Node::new(a_to_b(Some(80)));
        let syn = tcp(A, 40000, B, 80, SYN);
        node.send(&syn, 0);
        for t in [1, 3, 7, 15, 31, 63] {
            assert_eq!(node.send(&syn, t * S), passed_as(TrackedPass::Original));
        }
        assert_eq!(node.lookups, 1);
        assert_eq!(node.state(&syn), Some(ConnState::Opening));
    }

    #[test]
    fn a_new_syn_on_a_tracked_tuple_is_a_new_flow() {
        let mut node = Node::new(a_to_b(Some(80)));
        node.send(&tcp(A, 40000, B, 80, SYN), 0);
        node.send(&tcp(B, 80, A, 40000, SYN_ACK), S);
        node.send(&tcp(A, 40000, B, 80, ACK), 2 * S);
        // B opening towards A's port: asked as B → A, denied, and the
        // established connection is left alone.
        let reverse = tcp(B, 80, A, 40000, SYN);
        let seen = node.send(&reverse, 3 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        let ConntrackVerdict::CheckPolicy(check) = seen.verdict else {
            unreachable!()
        };
        assert_eq!((check.query.src, check.query.dst_port), (B, Some(40000)));
        assert_eq!(node.state(&reverse), Some(ConnState::Established));
        assert_eq!(
            node.send(&tcp(B, 80, A, 40000, ACK), 4 * S),
            passed_as(TrackedPass::Reply)
        );
        // After a close, A reusing the port opens anew.
        node.send(&tcp(A, 40000, B, 80, RST), 5 * S);
        let again = tcp(A, 40000, B, 80, SYN);
        let seen = node.send(&again, 6 * S);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.state(&again), Some(ConnState::Opening));
        assert_eq!(node.entry(&again).unwrap().flags, 0);
    }

    #[test]
    fn invalid_tcp_flags_are_dropped_unasked() {
        let mut node = Node::new(|_| true);
        node.send(&tcp(A, 40000, B, 80, SYN), 0);
        for flags in [0x00, 0x01, 0x03, 0x06, 0x29, 0x3f] {
            let seen = node.send(&tcp(A, 40000, B, 80, flags), S);
            assert_eq!(
                seen,
                Seen {
                    passed: false,
                    verdict: ConntrackVerdict::Drop(ConntrackDrop::InvalidTcpFlags)
                },
                "{flags:#04x}"
            );
        }
        assert_eq!(node.lookups, 1);
        assert_eq!(
            node.entry(&tcp(A, 40000, B, 80, SYN)).unwrap().last_seen_ns,
            0
        );
    }

    #[test]
    fn mid_stream_packets_are_picked_up_in_their_own_direction() {
        let mut node = Node::new(a_to_b(Some(80)));
        // The entry was lost: B's segment is asked as B → A and dropped.
        let from_b = tcp(B, 80, A, 40000, PSH_ACK);
        assert!(!node.send(&from_b, 0).passed);
        assert!(node.table.is_empty());
        // A's next segment is allowed and picks the connection up.
        let from_a = tcp(A, 40000, B, 80, ACK);
        let seen = node.send(&from_a, S);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        let entry = node.entry(&from_a).unwrap();
        assert_eq!(entry.state(), Some(ConnState::Established));
        assert!(entry.has(FLAG_PICKED_UP));
        assert_eq!(entry.opener(), Some(flow(&from_a).direction));
        assert_eq!(node.send(&from_b, 2 * S), passed_as(TrackedPass::Reply));
        // A FIN picked up is a half-closed connection.
        let mut other = Node::new(|_| true);
        let fin = tcp(A, 40001, B, 80, FIN_ACK);
        other.send(&fin, 0);
        assert_eq!(other.state(&fin), Some(ConnState::HalfClosed));
    }

    // --- UDP ----------------------------------------------------------------

    #[test]
    fn udp_replies_pass_and_expire_after_60_seconds() {
        let mut node = Node::new(a_to_b(Some(53)));
        let query = udp(A, 5353, B, 53);
        let answer = udp(B, 53, A, 5353);
        // Unasked, B's datagram is a new flow B may not open.
        assert!(!node.send(&answer, 0).passed);
        assert!(node.send(&query, S).passed);
        assert_eq!(node.send(&answer, 2 * S), passed_as(TrackedPass::Reply));
        assert!(node.entry(&query).unwrap().has(FLAG_SEEN_REPLY));
        assert_eq!(node.send(&answer, 61 * S), passed_as(TrackedPass::Reply));
        assert_eq!(node.lookups, 2);
        // 60 s after the last datagram: expired, exactly at the timeout.
        let seen = node.send(&answer, 121 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        // Another port of B is another flow.
        assert!(!node.send(&udp(B, 54, A, 5353), 122 * S).passed);
    }

    // --- ICMP ---------------------------------------------------------------

    #[test]
    fn icmp_echo_by_identifier() {
        let mut node = Node::new(a_to_b(None));
        let request = echo(A, B, 0x1234, true);
        let reply = echo(B, A, 0x1234, false);
        let seen = node.send(&request, 0);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.send(&reply, S), passed_as(TrackedPass::Reply));
        assert_eq!(node.send(&request, 2 * S), passed_as(TrackedPass::Original));
        assert_eq!(node.lookups, 1);
        // Another identifier's reply is not part of it, and creates nothing.
        let stray = echo(B, A, 0x4321, false);
        let seen = node.send(&stray, 3 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.entry(&stray), None);
        // B's request with A's identifier does not ride on A's flow.
        assert!(!node.send(&echo(B, A, 0x1234, true), 4 * S).passed);
        // 30 s after the last packet the flow has expired.
        assert!(
            node.entry(&reply)
                .unwrap()
                .is_live(PROTOCOL_ICMP, 32 * S - 1)
        );
        assert!(!node.send(&reply, 32 * S).passed);
    }

    #[test]
    fn port_unreachable_reaches_the_sender_of_an_allowed_flow() {
        let mut node = Node::new(a_to_b(Some(53)));
        node.send(&UDP_DNS, 0);
        assert_eq!(
            node.send(&ICMP_PORT_UNREACHABLE, S),
            passed_as(TrackedPass::Related)
        );
        assert_eq!(node.lookups, 1);
        // Related packets refresh nothing.
        assert_eq!(node.entry(&UDP_DNS).unwrap().last_seen_ns, 0);
        let f = flow(&ICMP_PORT_UNREACHABLE);
        assert!(f.related);
        assert_eq!((f.key, f.direction), (flow(&UDP_DNS).key, Direction::AToB));
    }

    #[test]
    fn fragmentation_needed_from_a_router_is_related() {
        let mut node = Node::new(a_to_b(None));
        node.send(&TCP_SYN, 0);
        assert_eq!(
            node.send(&ICMP_FRAG_NEEDED, S),
            passed_as(TrackedPass::Related)
        );
        let mut ttl = icmp_error(ROUTER, A, 11, 0, &echo(A, B, 3, true));
        assert!(!node.send(&ttl, S).passed, "no echo flow yet");
        node.send(&echo(A, B, 3, true), 2 * S);
        assert_eq!(node.send(&ttl, 3 * S), passed_as(TrackedPass::Related));
        // The same error sent elsewhere than the quoted sender is on its own.
        ttl[16..20].copy_from_slice(&B);
        fix_ipv4(&mut ttl);
        assert_eq!(packet(&ttl).flow(), None);
        let seen = node.send(&ttl, 4 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::Untracked));
    }

    #[test]
    fn errors_about_the_reverse_direction_are_related() {
        let mut node = Node::new(a_to_b(None));
        node.send(&udp(A, 5353, B, 53), 0);
        // B's answer bounces at A: A's unreachable goes back to B.
        let answer = udp(B, 53, A, 5353);
        let error = icmp_error(A, B, 3, 3, &answer);
        let f = flow(&error);
        assert_eq!(f.direction, Direction::BToA);
        assert_eq!(node.send(&error, S), passed_as(TrackedPass::Related));
        // The same for an echo reply that cannot be delivered.
        node.send(&echo(A, B, 9, true), S);
        let error = icmp_error(ROUTER, B, 3, 1, &echo(B, A, 9, false));
        assert_eq!(node.send(&error, 2 * S), passed_as(TrackedPass::Related));
    }

    #[test]
    fn errors_about_unknown_flows_are_judged_alone() {
        // No flow: the error is an ICMP packet from B to A, which policy
        // (here: only A may talk to B) does not allow.
        let mut node = Node::new(a_to_b(None));
        let seen = node.send(&ICMP_PORT_UNREACHABLE, 0);
        assert!(!seen.passed && is_check(&seen, CheckReason::Untracked));
        let ConntrackVerdict::CheckPolicy(check) = seen.verdict else {
            unreachable!()
        };
        assert_eq!(
            check.query,
            PolicyQuery {
                src: B,
                dst: A,
                protocol: PROTOCOL_ICMP,
                dst_port: None
            }
        );
        assert!(node.table.is_empty());
        // Where policy lets ICMP in, it passes, and still creates nothing.
        let mut open = Node::new(|_| true);
        assert!(open.send(&ICMP_PORT_UNREACHABLE, 0).passed);
        assert!(open.table.is_empty());
        // Other ICMP (a timestamp request) is never tracked.
        let mut timestamp = echo(A, B, 1, true);
        timestamp[20] = 13;
        assert_eq!(packet(&timestamp).flow(), None);
    }

    // --- SCTP ---------------------------------------------------------------

    #[test]
    fn sctp_init_opens_and_the_tuple_follows() {
        let mut node = Node::new(a_to_b(Some(38412)));
        let init = sctp(A, 5000, B, 38412, sctp_chunk::INIT);
        let seen = node.send(&init, 0);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.state(&init), Some(ConnState::Opening));
        // INIT retransmitted: no lookup.
        assert_eq!(node.send(&init, 3 * S), passed_as(TrackedPass::Original));
        let init_ack = sctp(B, 38412, A, 5000, sctp_chunk::INIT_ACK);
        assert_eq!(node.send(&init_ack, 4 * S), passed_as(TrackedPass::Reply));
        assert_eq!(node.state(&init), Some(ConnState::Established));
        for (t, chunk) in [(5, 10u8), (6, 11), (7, 0), (8, 3)] {
            // COOKIE ECHO, COOKIE ACK, DATA, SACK
            assert!(node.send(&sctp(A, 5000, B, 38412, chunk), t * S).passed);
            assert!(node.send(&sctp(B, 38412, A, 5000, chunk), t * S).passed);
        }
        assert_eq!(node.lookups, 1);
        // Idle for less than 210 s: alive; at 210 s: gone.
        assert!(
            node.entry(&init)
                .unwrap()
                .is_live(PROTOCOL_SCTP, 218 * S - 1)
        );
        assert!(!node.entry(&init).unwrap().is_live(PROTOCOL_SCTP, 218 * S));
        // ABORT closes.
        let abort = sctp(B, 38412, A, 5000, sctp_chunk::ABORT);
        assert_eq!(node.send(&abort, 9 * S), passed_as(TrackedPass::Reply));
        assert_eq!(node.state(&init), Some(ConnState::Closed));
        // SCTP is not TCP: a policy for TCP 38412 allows none of it.
        let mut tcp_only = Node::new(|q| q.protocol == PROTOCOL_TCP);
        assert!(!tcp_only.send(&init, 0).passed);
    }

    #[test]
    fn sctp_without_init_is_picked_up_or_ignored() {
        let mut node = Node::new(a_to_b(Some(38412)));
        let data = sctp(A, 5000, B, 38412, 0);
        assert!(node.send(&data, 0).passed);
        let entry = node.entry(&data).unwrap();
        assert_eq!(entry.state(), Some(ConnState::Established));
        assert!(entry.has(FLAG_PICKED_UP));
        let mut other = Node::new(|_| true);
        for chunk in [sctp_chunk::ABORT, sctp_chunk::SHUTDOWN_COMPLETE] {
            assert!(other.send(&sctp(A, 5000, B, 38412, chunk), 0).passed);
        }
        assert!(other.table.is_empty());
        // An INIT from the other side of a live association: asked anew.
        let restart = sctp(B, 38412, A, 5000, sctp_chunk::INIT);
        let seen = node.send(&restart, S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        assert_eq!(node.state(&data), Some(ConnState::Established));
    }

    // --- policy revisions ---------------------------------------------------

    /// An established TCP connection A:40000 → B:80 at `node`, from 0 to 2 s.
    fn established(node: &mut Node) {
        node.send(&tcp(A, 40000, B, 80, SYN), 0);
        node.send(&tcp(B, 80, A, 40000, SYN_ACK), S);
        node.send(&tcp(A, 40000, B, 80, ACK), 2 * S);
    }

    #[test]
    fn an_unchanged_policy_is_asked_once_per_flow_per_revision() {
        let mut node = Node::new(a_to_b(Some(80)));
        established(&mut node);
        let from_b = tcp(B, 80, A, 40000, PSH_ACK);
        for t in 3..100 {
            assert_eq!(node.send(&from_b, t * S), passed_as(TrackedPass::Reply));
        }
        assert_eq!(node.lookups, 1);
        // A new revision that still allows the flow: the first packet, a
        // reply, asks in the direction the connection was opened.
        node.change_policy(a_to_b(Some(80)));
        let seen = node.send(&from_b, 100 * S);
        assert!(seen.passed && is_check(&seen, CheckReason::Recheck));
        let ConntrackVerdict::CheckPolicy(check) = seen.verdict else {
            unreachable!()
        };
        assert_eq!(check.query, packet(&TCP_SYN).query());
        assert_eq!(node.entry(&from_b).unwrap().policy_revision, 2);
        assert_eq!(node.entry(&from_b).unwrap().last_seen_ns, 100 * S);
        for t in 101..110 {
            assert_eq!(node.send(&from_b, t * S), passed_as(TrackedPass::Reply));
        }
        assert_eq!(node.lookups, 2);
    }

    #[test]
    fn a_connection_policy_no_longer_allows_stops_at_its_next_packet() {
        let mut node = Node::new(a_to_b(Some(80)));
        established(&mut node);
        // Now B may open to A, A may not open to B.
        node.change_policy(|q| q.src == B && q.dst == A);
        let from_a = tcp(A, 40000, B, 80, PSH_ACK);
        let seen = node.send(&from_a, 3 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::Recheck));
        let entry = node.entry(&from_a).unwrap();
        assert!(entry.has(FLAG_DENIED));
        assert_eq!((entry.policy_revision, entry.last_seen_ns), (2, 2 * S));
        // Every later packet, either way, is dropped unasked: B's packets
        // do not pick the connection up although B may open to A.
        let denied = Seen {
            passed: false,
            verdict: ConntrackVerdict::Drop(ConntrackDrop::DeniedConnection),
        };
        for t in 4..10 {
            assert_eq!(node.send(&from_a, t * S), denied);
            assert_eq!(node.send(&tcp(B, 80, A, 40000, PSH_ACK), t * S), denied);
        }
        let error = icmp_error(B, A, 3, 3, &from_a);
        assert_eq!(node.send(&error, 10 * S), denied);
        assert_eq!(node.lookups, 2);
        // Allowed again at a later revision: the connection goes on.
        node.change_policy(a_to_b(Some(80)));
        let seen = node.send(&tcp(B, 80, A, 40000, ACK), 11 * S);
        assert!(seen.passed && is_check(&seen, CheckReason::Recheck));
        assert!(!node.entry(&from_a).unwrap().has(FLAG_DENIED));
        assert_eq!(node.send(&from_a, 12 * S), passed_as(TrackedPass::Original));
        assert_eq!(node.lookups, 3);
    }

    #[test]
    fn a_denied_flow_stops_whichever_side_speaks_first() {
        for first in [udp(A, 5353, B, 53), udp(B, 53, A, 5353)] {
            let mut node = Node::new(a_to_b(Some(53)));
            node.send(&udp(A, 5353, B, 53), 0);
            node.change_policy(|_| false);
            let seen = node.send(&first, S);
            assert!(!seen.passed && is_check(&seen, CheckReason::Recheck));
            assert!(!node.send(&udp(A, 5353, B, 53), 2 * S).passed);
            assert!(!node.send(&udp(B, 53, A, 5353), 2 * S).passed);
            assert_eq!(node.lookups, 2);
        }
    }

    #[test]
    fn related_errors_follow_their_flow_across_revisions() {
        let mut node = Node::new(a_to_b(Some(53)));
        node.send(&UDP_DNS, 0);
        node.change_policy(a_to_b(Some(53)));
        let seen = node.send(&ICMP_PORT_UNREACHABLE, S);
        assert!(seen.passed && is_check(&seen, CheckReason::Recheck));
        let entry = node.entry(&UDP_DNS).unwrap();
        assert_eq!((entry.policy_revision, entry.last_seen_ns), (2, 0));
        assert_eq!(
            node.send(&ICMP_PORT_UNREACHABLE, 2 * S),
            passed_as(TrackedPass::Related)
        );
        node.change_policy(|_| false);
        let seen = node.send(&ICMP_PORT_UNREACHABLE, 3 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::Recheck));
        assert!(node.entry(&UDP_DNS).unwrap().has(FLAG_DENIED));
    }

    #[test]
    fn an_evicted_connection_is_checked_again_not_trusted() {
        let mut node = Node::new(a_to_b(Some(80)));
        established(&mut node);
        // The LRU map evicts the entry under pressure.
        node.table.clear();
        // B speaks first: a new flow B → A, which policy denies.
        let from_b = tcp(B, 80, A, 40000, PSH_ACK);
        let seen = node.send(&from_b, 3 * S);
        assert!(!seen.passed && is_check(&seen, CheckReason::New));
        assert!(node.table.is_empty());
        // A's next segment is allowed and picks the connection up; B's
        // retransmission then passes as its reply.
        let seen = node.send(&tcp(A, 40000, B, 80, ACK), 4 * S);
        assert!(seen.passed && is_check(&seen, CheckReason::New));
        assert!(node.entry(&from_b).unwrap().has(FLAG_PICKED_UP));
        assert_eq!(node.send(&from_b, 5 * S), passed_as(TrackedPass::Reply));
        assert_eq!(node.lookups, 3);
    }

    // --- time -----------------------------------------------------------------

    #[test]
    fn entries_expire_exactly_at_their_timeout() {
        let table = [
            (PROTOCOL_TCP, ConnState::Opening, 60),
            (PROTOCOL_TCP, ConnState::Answered, 60),
            (PROTOCOL_TCP, ConnState::Established, 21_600),
            (PROTOCOL_TCP, ConnState::HalfClosed, 21_600),
            (PROTOCOL_TCP, ConnState::Closing, 30),
            (PROTOCOL_TCP, ConnState::Closed, 10),
            (PROTOCOL_UDP, ConnState::Established, 60),
            (PROTOCOL_ICMP, ConnState::Established, 30),
            (PROTOCOL_SCTP, ConnState::Opening, 60),
            (PROTOCOL_SCTP, ConnState::Established, 210),
            (PROTOCOL_SCTP, ConnState::Closed, 10),
            (47, ConnState::Established, 60),
        ];
        let seen_at = 1_000 * S;
        for (protocol, state, seconds) in table {
            assert_eq!(timeout_ns(protocol, state), seconds * S);
            let entry = ConntrackEntry::new(state, Direction::AToB, seen_at, 1);
            let deadline = seen_at + seconds * S;
            assert!(
                entry.is_live(protocol, deadline - 1),
                "{protocol} {state:?}"
            );
            assert!(!entry.is_live(protocol, deadline), "{protocol} {state:?}");
        }
        // Through `track`: one nanosecond before, the reply passes; at the
        // timeout, it is a new flow and the stale slot goes if denied.
        let answer = packet(&udp(B, 53, A, 5353));
        let entry = ConntrackEntry::new(ConnState::Established, Direction::AToB, seen_at, 1);
        let before = track(&answer, Some(&entry), seen_at + 60 * S - 1, 1);
        assert_eq!(before.verdict, ConntrackVerdict::Pass(TrackedPass::Reply));
        let at = track(&answer, Some(&entry), seen_at + 60 * S, 1);
        assert!(matches!(
            at.verdict,
            ConntrackVerdict::CheckPolicy(PolicyCheck {
                reason: CheckReason::New,
                if_denied: EntryUpdate::Delete,
                ..
            })
        ));
        // An allowed packet overwrites the expired entry with a fresh one.
        let (passed, update) = at.after_policy(true);
        let EntryUpdate::Write(fresh) = update else {
            panic!("{update:?}")
        };
        assert!(passed);
        assert_eq!(fresh.opener(), Some(Direction::BToA));
        assert_eq!(fresh.last_seen_ns, seen_at + 60 * S);
    }

    #[test]
    fn a_clock_behind_the_entry_counts_as_no_time() {
        let entry = ConntrackEntry::new(ConnState::Closed, Direction::AToB, 50 * S, 1);
        assert!(entry.is_live(PROTOCOL_TCP, 0));
        let ack = packet(&tcp(A, 40000, B, 80, ACK));
        assert_eq!(
            track(&ack, Some(&entry), 0, 1).verdict,
            ConntrackVerdict::Pass(TrackedPass::Original)
        );
    }

    #[test]
    fn unreadable_entries_count_as_absent() {
        let query = packet(&udp(A, 5353, B, 53));
        let good = ConntrackEntry::new(ConnState::Established, Direction::AToB, 0, 1);
        for corrupt in [
            ConntrackEntry { state: 0, ..good },
            ConntrackEntry { state: 7, ..good },
            ConntrackEntry { opener: 2, ..good },
        ] {
            let tracked = track(&query, Some(&corrupt), S, 1);
            assert!(matches!(
                tracked.verdict,
                ConntrackVerdict::CheckPolicy(PolicyCheck {
                    reason: CheckReason::New,
                    if_denied: EntryUpdate::Delete,
                    ..
                })
            ));
            assert_eq!(
                tracked.after_policy(true).1,
                EntryUpdate::Write(ConntrackEntry {
                    last_seen_ns: S,
                    ..good
                })
            );
        }
    }

    // --- what is not tracked ----------------------------------------------------

    #[test]
    fn later_fragments_are_judged_alone_without_ports() {
        // Policy allows the flow A → B:53, and anything without ports.
        let mut node = Node::new(|q| q.dst_port.is_none() || q.dst_port == Some(53));
        assert!(node.send(&udp(A, 5353, B, 53), 0).passed);
        let mut fragment = udp(B, 53, A, 5353);
        fragment[6..8].copy_from_slice(&185u16.to_be_bytes());
        fix_ipv4(&mut fragment);
        assert_eq!(packet(&fragment).flow(), None);
        let seen = node.send(&fragment, S);
        let ConntrackVerdict::CheckPolicy(check) = seen.verdict else {
            panic!("{seen:?}")
        };
        assert_eq!(check.reason, CheckReason::Untracked);
        assert_eq!(
            check.query,
            PolicyQuery {
                src: B,
                dst: A,
                protocol: PROTOCOL_UDP,
                dst_port: None
            }
        );
        assert!(seen.passed);
        assert_eq!(node.table.len(), 1);
    }

    #[test]
    fn other_protocols_pass_replies_by_address_pair() {
        let mut node = Node::new(a_to_b(None));
        let mut there = udp(A, 1, B, 2);
        there[9] = 47;
        fix_ipv4(&mut there);
        let mut back = udp(B, 1, A, 2);
        back[9] = 47;
        fix_ipv4(&mut back);
        assert!(!node.send(&back, 0).passed);
        assert!(node.send(&there, S).passed);
        assert_eq!(node.send(&back, 2 * S), passed_as(TrackedPass::Reply));
    }

    // --- properties -------------------------------------------------------------

    /// A random packet between A, B and C on a few ports, of any protocol
    /// the tracker knows, sometimes an ICMP error about another one.
    fn random_datagram(g: &mut Gen) -> Vec<u8> {
        const HOSTS: [[u8; 4]; 3] = [A, B, [10, 244, 3, 9]];
        let src = HOSTS[g.below(3)];
        let dst = HOSTS[g.below(3)];
        let (sport, dport) = ([80, 5353, 40000][g.below(3)], [80, 53, 40000][g.below(3)]);
        match g.below(7) {
            0 | 1 => {
                let flags = [SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST, RST | ACK, 0x03][g.below(8)];
                tcp(src, sport, dst, dport, flags)
            }
            2 => udp(src, sport, dst, dport),
            3 => sctp(src, sport, dst, dport, [0, 1, 2, 6, 14][g.below(5)]),
            4 => echo(src, dst, g.below(2) as u16, g.below(2) == 0),
            _ => {
                let about = random_datagram(g);
                let to = if g.below(4) == 0 {
                    src
                } else {
                    about[12..16].try_into().unwrap()
                };
                icmp_error(dst, to, [3, 11, 12][g.below(3)], g.u8() % 16, &about)
            }
        }
    }

    #[test]
    fn property_nothing_passes_that_current_policy_would_not_open() {
        let mut g = Gen::new(0xc0ffee);
        let (mut unasked, mut related, mut denied) = (0, 0, 0);
        for round in 0..200 {
            // A random policy over (source, destination) pairs, changed now and then.
            let mut allowed: Vec<bool> = (0..9).map(|_| g.below(2) == 0).collect();
            let host = |a: [u8; 4]| usize::from(a[2]) - 1;
            let policy =
                |allowed: Vec<bool>| move |q: &PolicyQuery| allowed[host(q.src) * 3 + host(q.dst)];
            let mut node = Node::new(policy(allowed.clone()));
            let mut now = 0;
            for _ in 0..300 {
                now += g.below(20) as u64 * S / 4;
                if g.below(40) == 0 {
                    allowed = (0..9).map(|_| g.below(2) == 0).collect();
                    node.change_policy(policy(allowed.clone()));
                }
                let datagram = random_datagram(&mut g);
                let p = packet(&datagram);
                let lookups = node.lookups;
                let seen = node.send(&datagram, now);
                if seen.verdict == ConntrackVerdict::Drop(ConntrackDrop::DeniedConnection) {
                    denied += 1;
                }
                if !seen.passed {
                    continue;
                }
                let allows = |q: &PolicyQuery| allowed[host(q.src) * 3 + host(q.dst)];
                if node.lookups > lookups {
                    // Asked: allowed by today's policy, by construction.
                    continue;
                }
                // Passed unasked: the flow it belongs to (or is about) was
                // allowed, by the current policy, in its opening direction.
                let f = p.flow().expect("untracked packets are always asked");
                let entry = node.table[&f.key];
                unasked += 1;
                related += usize::from(f.related);
                assert_eq!(entry.policy_revision, node.revision, "round {round}");
                assert!(!entry.has(FLAG_DENIED));
                assert!(
                    allows(&f.key.query(entry.opener().unwrap())),
                    "round {round}: {p:?} passed as part of {entry:?}"
                );
            }
        }
        // The generator reaches the interesting cases, not only drops.
        assert!(
            unasked > 1_000 && related > 100 && denied > 50,
            "{unasked} {related} {denied}"
        );
    }

    #[test]
    fn property_random_entries_and_packets_never_panic() {
        let mut g = Gen::new(99);
        for _ in 0..20_000 {
            let datagram = random_datagram(&mut g);
            let p = packet(&datagram);
            let entry = ConntrackEntry {
                last_seen_ns: g.next_u64(),
                policy_revision: g.below(3) as u32,
                state: g.u8() % 8,
                opener: g.u8() % 3,
                flags: g.u8(),
                reserved: g.u8(),
            };
            let tracked = track(&p, Some(&entry), g.next_u64(), g.below(3) as u32);
            for allowed in [false, true] {
                if let (_, EntryUpdate::Write(written)) = tracked.after_policy(allowed) {
                    // Whatever is written is readable.
                    assert!(written.state().is_some() && written.opener().is_some());
                }
            }
        }
    }
}
