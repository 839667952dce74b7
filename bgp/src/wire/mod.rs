//! BGP-4 messages (RFC 4271) with the extensions Weft speaks: 4-octet AS
//! numbers (RFC 6793), multiprotocol NLRI (RFC 4760), route refresh
//! (RFC 2918), graceful restart (RFC 4724) and route reflection (RFC 4456).
//!
//! Messages are plain values ([`Message`]); [`decode`] turns bytes into one
//! or into the [`Notification`] RFC 4271 section 6 prescribes, and
//! [`encode`] turns one back into bytes. Both depend on what the session
//! negotiated ([`CodecContext`]). AS numbers are always 4 octets in memory.
//!
//! The types in this file are the contract between the codec, the session
//! state machine and the RIBs.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

mod decode;
mod encode;
pub mod notification;

pub use decode::{DecodeError, Header, decode, decode_header};
pub use encode::{encode, encoded_len};
pub use notification::Notification;

/// Every message starts with 16 bytes of ones.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271's largest message (no extended messages, RFC 8654, yet).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The 2-octet stand-in for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// The only BGP version there is.
pub const BGP_VERSION: u8 = 4;

/// Message type codes.
pub mod message_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// Optional parameter type of capabilities (RFC 5492); the only one there is.
pub const PARAMETER_CAPABILITIES: u8 = 2;

/// Capability codes (RFC 5492 and the capabilities' RFCs).
pub mod capability_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// AS_PATH segment types (RFC 4271 section 4.3).
pub mod segment_type {
    pub const AS_SET: u8 = 1;
    pub const AS_SEQUENCE: u8 = 2;
}

/// What a session negotiated that changes how bytes are read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodecContext {
    /// Both sides sent the 4-octet AS capability: AS_PATH and AGGREGATOR
    /// carry 4-octet AS numbers. Otherwise they carry 2-octet ones, with
    /// AS_TRANS and AS4_PATH/AS4_AGGREGATOR for larger numbers.
    pub four_octet_as: bool,
}

/// Messages live briefly (decoded, handled, dropped), so an UPDATE's size
/// in the enum costs nothing worth an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// An OPEN message. `my_as` is the 2-octet field as sent (AS_TRANS for a
/// 4-octet AS); [`Open::asn`] gives the speaker's real AS number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The speaker's AS: from the 4-octet AS capability if present, else `my_as`.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    pub fn has(&self, wanted: impl Fn(&Capability) -> bool) -> bool {
        self.capabilities.iter().any(wanted)
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }
}

/// Address family and subsequent address family (RFC 4760).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AfiSafi {
    pub afi: u16,
    pub safi: u8,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi { afi: 2, safi: 1 };
}

/// Capabilities (RFC 5492) carried in OPEN's optional parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Code 1 (RFC 4760).
    Multiprotocol(AfiSafi),
    /// Code 2 (RFC 2918).
    RouteRefresh,
    /// Code 64 (RFC 4724).
    GracefulRestart(GracefulRestart),
    /// Code 65 (RFC 6793): the speaker's 4-octet AS number.
    FourOctetAs(u32),
    /// Any other capability, kept as received (ignored, never refused).
    Unknown { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted (its peers should not wait for its
    /// End-of-RIB before sending theirs).
    pub restarting: bool,
    /// Seconds the sender asks its peers to keep its routes while it
    /// restarts (12 bits: at most 4095).
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestartFamily {
    pub family: AfiSafi,
    /// F bit: forwarding state for this family was preserved.
    pub forwarding_preserved: bool,
}

/// An UPDATE message. IPv4 unicast routes travel in `withdrawn` and `nlri`
/// (the RFC 4271 fields) or in the MP attributes; other families only in
/// the MP attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<IpNetwork>,
    pub attributes: PathAttributes,
    pub nlri: Vec<IpNetwork>,
}

impl Update {
    /// The IPv4 unicast End-of-RIB marker (RFC 4724 section 2): an UPDATE
    /// with nothing in it. Other families' marker is an MP_UNREACH_NLRI with
    /// no prefixes and no other attribute.
    pub fn end_of_rib(family: AfiSafi) -> Update {
        if family == AfiSafi::IPV4_UNICAST {
            Update::default()
        } else {
            Update {
                attributes: PathAttributes {
                    mp_unreach: Some(MpUnreach {
                        family,
                        withdrawn: Vec::new(),
                    }),
                    ..PathAttributes::default()
                },
                ..Update::default()
            }
        }
    }

    /// The family this UPDATE marks the End-of-RIB of, if it is such a marker.
    pub fn end_of_rib_family(&self) -> Option<AfiSafi> {
        if *self == Update::default() {
            return Some(AfiSafi::IPV4_UNICAST);
        }
        let only_mp_unreach = PathAttributes {
            mp_unreach: self.attributes.mp_unreach.clone(),
            ..PathAttributes::default()
        };
        match &self.attributes.mp_unreach {
            Some(u)
                if u.withdrawn.is_empty()
                    && self.withdrawn.is_empty()
                    && self.nlri.is_empty()
                    && self.attributes == only_mp_unreach =>
            {
                Some(u.family)
            }
            _ => None,
        }
    }
}

/// Path attribute type codes.
pub mod attribute_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// Path attribute flag bits.
pub mod attribute_flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// The path attributes of an UPDATE, typed. AS4_PATH and AS4_AGGREGATOR
/// never appear here: the decoder merges them into `as_path` and
/// `aggregator` (RFC 6793 section 4.2.3) and the encoder writes them when
/// the session has no 4-octet AS support.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub multi_exit_disc: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<u32>,
    /// RFC 4456.
    pub originator_id: Option<Ipv4Addr>,
    /// RFC 4456; the first entry is the most recent reflector's cluster.
    pub cluster_list: Vec<Ipv4Addr>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Unrecognized optional attributes, as received. Transitive ones are
    /// passed on with the Partial bit set; non-transitive ones are dropped
    /// on export (RFC 4271 section 5).
    pub unknown: Vec<RawAttribute>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// The path length used by best-path selection: a SET counts as one
    /// (RFC 4271 section 9.1.2.2 a).
    pub fn length(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
            })
            .sum()
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&asn),
        })
    }

    /// The AS this path was learned from (its first AS), if any.
    pub fn first(&self) -> Option<u32> {
        match self.segments.first()? {
            AsSegment::Sequence(v) => v.first().copied(),
            AsSegment::Set(_) => None,
        }
    }

    /// The path with `asn` prepended, as an eBGP speaker sends it.
    pub fn prepended(&self, asn: u32) -> AsPath {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
        AsPath { segments }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// Type 1.
    Set(Vec<u32>),
    /// Type 2.
    Sequence(Vec<u32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// MP_REACH_NLRI (RFC 4760 section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub family: AfiSafi,
    /// One next hop, or for IPv6 a global and a link-local one.
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNetwork>,
}

/// MP_UNREACH_NLRI (RFC 4760 section 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: AfiSafi,
    pub withdrawn: Vec<IpNetwork>,
}

/// An attribute the codec does not interpret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// ROUTE-REFRESH (RFC 2918): asks the peer to send its Adj-RIB-Out again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: AfiSafi,
}
