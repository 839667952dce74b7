//! Decoding: bytes to [`Message`], or to the NOTIFICATION RFC 4271 section 6
//! prescribes.
//!
//! Every read is checked (smoltcp style): [`decode`] is total, it returns a
//! value or an error for any input and never panics.
//!
//! Where the RFCs leave room:
//! - The BGP Identifier must be a valid unicast host address (RFC 4271):
//!   0.0.0.0, multicast (224/4) and 255.255.255.255 are refused.
//! - Malformed optional parameters or capabilities (lengths that overrun,
//!   a known capability with the wrong length, bytes past the parameters)
//!   give OPEN Message Error with subcode 0, Unspecific (RFC 4271 section
//!   6.2 for a recognized but malformed parameter). RFC 9072's extended
//!   optional parameters are not supported (type 255 is unsupported).
//! - An attribute whose header or length overruns the path attribute field
//!   gives Malformed Attribute List (the list, not one attribute, is broken).
//! - AS_PATH segments must be AS_SET or AS_SEQUENCE with at least one AS:
//!   Weft is not a confederation member (RFC 5065), so AS_CONFED_* segments
//!   and empty segments are a Malformed AS_PATH.
//! - MP_REACH_NLRI/MP_UNREACH_NLRI of families other than IPv4 and IPv6
//!   unicast are kept as [`RawAttribute`]s in `unknown` (the session ignores
//!   families it did not negotiate). Bad lengths, next hop lengths or
//!   prefixes inside them give Optional Attribute Error with the attribute.
//!   UPDATEs with MP_REACH_NLRI must carry ORIGIN and AS_PATH (RFC 4760).
//! - NEXT_HOP must be a unicast host address (not 0.0.0.0, multicast or
//!   255.255.255.255) when the UPDATE has IPv4 NLRI; without, an invalid
//!   one is dropped (it is not used, RFC 4760 section 3).
//! - AS4_PATH and AS4_AGGREGATOR are merged only on sessions without the
//!   4-octet AS capability (RFC 6793 section 4.2.3) and otherwise dropped;
//!   malformed ones (flags, length, segments) are dropped too, never a
//!   session reset (RFC 6793 section 6).
//! - Unknown optional attributes are kept with their Optional, Transitive
//!   and Partial flags; the Extended Length bit and the four unused bits are
//!   cleared (the encoder picks the length's size).
//! - The Partial bit of recognized optional transitive attributes
//!   (AGGREGATOR, COMMUNITIES) is not kept.
//! - Prefixes are normalized to their network address (bits past the
//!   prefix length are irrelevant, RFC 4271 section 4.3).
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::notification::{
    code, header as header_error, open as open_error, update as update_error,
};
use super::*;

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub length: u16,
    pub message_type: u8,
}

impl Header {
    /// The length of the message's body (after the header).
    pub fn body_len(&self) -> usize {
        usize::from(self.length).saturating_sub(HEADER_LEN)
    }
}

/// Why bytes are not a message: the NOTIFICATION to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed BGP message: NOTIFICATION {}/{}", .0.code, .0.subcode)]
pub struct DecodeError(pub Notification);

impl DecodeError {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> DecodeError {
        DecodeError(Notification::new(code, subcode, data))
    }
}

fn header_err(subcode: u8, data: impl Into<Vec<u8>>) -> DecodeError {
    DecodeError::new(code::MESSAGE_HEADER, subcode, data)
}

fn open_err(subcode: u8, data: impl Into<Vec<u8>>) -> DecodeError {
    DecodeError::new(code::OPEN_MESSAGE, subcode, data)
}

fn update_err(subcode: u8, data: impl Into<Vec<u8>>) -> DecodeError {
    DecodeError::new(code::UPDATE_MESSAGE, subcode, data)
}

/// Checked big-endian reads from a slice: `None` when the bytes run out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    fn ipv4(&mut self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(self.array::<4>()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    /// The bytes read since `start`.
    fn since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or_default()
    }
}

/// The smallest (or, for fixed-size messages, only) length of each type.
fn length_ok(message_type: u8, length: u16) -> Option<bool> {
    Some(match message_type {
        message_type::OPEN => length >= 29,
        message_type::UPDATE => length >= 23,
        message_type::NOTIFICATION => length >= 21,
        message_type::KEEPALIVE => length == 19,
        message_type::ROUTE_REFRESH => length == 23,
        _ => return None,
    })
}

/// Reads a header from at least `HEADER_LEN` bytes (later bytes are not
/// looked at), checking it as RFC 4271 section 6.1 says.
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(bytes);
    let (Some(marker), Some(length_field), Some(message_type)) =
        (r.array::<16>(), r.array::<2>(), r.u8())
    else {
        // Not even a header: report what length field there is.
        let data: Vec<u8> = bytes.iter().skip(16).take(2).copied().collect();
        return Err(header_err(header_error::BAD_MESSAGE_LENGTH, data));
    };
    if marker != MARKER {
        return Err(header_err(
            header_error::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let length = u16::from_be_bytes(length_field);
    if usize::from(length) < HEADER_LEN || usize::from(length) > MAX_MESSAGE_LEN {
        return Err(header_err(header_error::BAD_MESSAGE_LENGTH, length_field));
    }
    match length_ok(message_type, length) {
        None => Err(header_err(header_error::BAD_MESSAGE_TYPE, [message_type])),
        Some(false) => Err(header_err(header_error::BAD_MESSAGE_LENGTH, length_field)),
        Some(true) => Ok(Header {
            length,
            message_type,
        }),
    }
}

/// Decodes one whole message (header included): `bytes` must be exactly
/// the header's length long.
pub fn decode(bytes: &[u8], ctx: CodecContext) -> Result<Message, DecodeError> {
    let header = decode_header(bytes)?;
    if bytes.len() != usize::from(header.length) {
        return Err(header_err(
            header_error::BAD_MESSAGE_LENGTH,
            header.length.to_be_bytes(),
        ));
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    match header.message_type {
        message_type::OPEN => decode_open(body).map(Message::Open),
        message_type::UPDATE => decode_update(body, ctx).map(Message::Update),
        message_type::NOTIFICATION => Ok(Message::Notification(decode_notification(body))),
        message_type::KEEPALIVE => Ok(Message::Keepalive),
        message_type::ROUTE_REFRESH => Ok(Message::RouteRefresh(decode_route_refresh(body))),
        // decode_header refuses every other type.
        other => Err(header_err(header_error::BAD_MESSAGE_TYPE, [other])),
    }
}

/// Is this a valid unicast host address (for BGP Identifiers and NEXT_HOP)?
pub(crate) fn is_unicast_host(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast())
}

fn decode_notification(body: &[u8]) -> Notification {
    let mut r = Reader::new(body);
    // The header check guarantees two bytes.
    let code = r.u8().unwrap_or_default();
    let subcode = r.u8().unwrap_or_default();
    Notification::new(code, subcode, r.rest())
}

fn decode_route_refresh(body: &[u8]) -> RouteRefresh {
    let mut r = Reader::new(body);
    // The header check guarantees four bytes. The reserved octet (RFC 7313's
    // subtype) is ignored: Weft does not negotiate enhanced route refresh.
    let afi = r.u16().unwrap_or_default();
    let _reserved = r.u8();
    let safi = r.u8().unwrap_or_default();
    RouteRefresh {
        family: AfiSafi { afi, safi },
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let malformed = || open_err(open_error::UNSPECIFIC, Vec::new());
    let mut r = Reader::new(body);
    // The header check guarantees the ten fixed bytes; stay checked anyway.
    let version = r.u8().ok_or_else(malformed)?;
    if version != BGP_VERSION {
        return Err(open_err(
            open_error::UNSUPPORTED_VERSION_NUMBER,
            u16::from(BGP_VERSION).to_be_bytes(),
        ));
    }
    let my_as = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    if hold_time == 1 || hold_time == 2 {
        return Err(open_err(open_error::UNACCEPTABLE_HOLD_TIME, Vec::new()));
    }
    let bgp_id = r.ipv4().ok_or_else(malformed)?;
    if !is_unicast_host(bgp_id) {
        return Err(open_err(open_error::BAD_BGP_IDENTIFIER, Vec::new()));
    }
    let params_len = r.u8().ok_or_else(malformed)?;
    let params = r.take(usize::from(params_len)).ok_or_else(malformed)?;
    if !r.is_empty() {
        return Err(malformed());
    }
    let mut capabilities = Vec::new();
    let mut r = Reader::new(params);
    while !r.is_empty() {
        let param_type = r.u8().ok_or_else(malformed)?;
        let len = r.u8().ok_or_else(malformed)?;
        let value = r.take(usize::from(len)).ok_or_else(malformed)?;
        if param_type != PARAMETER_CAPABILITIES {
            return Err(open_err(
                open_error::UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
            ));
        }
        // A parameter may hold several capabilities (RFC 5492 section 4).
        let mut caps = Reader::new(value);
        while !caps.is_empty() {
            let code = caps.u8().ok_or_else(malformed)?;
            let len = caps.u8().ok_or_else(malformed)?;
            let value = caps.take(usize::from(len)).ok_or_else(malformed)?;
            capabilities.push(decode_capability(code, value).ok_or_else(malformed)?);
        }
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        bgp_id,
        capabilities,
    })
}

/// One capability, `None` if a known one is malformed.
fn decode_capability(code: u8, value: &[u8]) -> Option<Capability> {
    let mut r = Reader::new(value);
    let capability = match code {
        capability_code::MULTIPROTOCOL => {
            let afi = r.u16()?;
            let _reserved = r.u8()?;
            let safi = r.u8()?;
            Capability::Multiprotocol(AfiSafi { afi, safi })
        }
        capability_code::ROUTE_REFRESH => Capability::RouteRefresh,
        capability_code::GRACEFUL_RESTART => {
            let flags_and_time = r.u16()?;
            let mut families = Vec::new();
            while !r.is_empty() {
                let afi = r.u16()?;
                let safi = r.u8()?;
                let flags = r.u8()?;
                families.push(GracefulRestartFamily {
                    family: AfiSafi { afi, safi },
                    forwarding_preserved: flags & GR_FORWARDING_PRESERVED != 0,
                });
            }
            Capability::GracefulRestart(GracefulRestart {
                restarting: flags_and_time & GR_RESTARTING != 0,
                restart_time: flags_and_time & GR_RESTART_TIME_MASK,
                families,
            })
        }
        capability_code::FOUR_OCTET_AS => Capability::FourOctetAs(r.u32()?),
        _ => {
            return Some(Capability::Unknown {
                code,
                value: value.to_vec(),
            });
        }
    };
    // A known capability with trailing bytes is malformed too.
    r.is_empty().then_some(capability)
}

/// Graceful restart: the R bit of the Restart Flags (RFC 4724 section 3).
pub(crate) const GR_RESTARTING: u16 = 0x8000;
pub(crate) const GR_RESTART_TIME_MASK: u16 = 0x0fff;
/// Graceful restart: the F bit of a family's flags.
pub(crate) const GR_FORWARDING_PRESERVED: u8 = 0x80;

/// An AS_PATH or AS4_PATH value with `asn_len`-octet AS numbers; `None` if
/// syntactically wrong.
fn decode_as_path(value: &[u8], asn_len: usize) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(if asn_len == 4 {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
        segments.push(match kind {
            segment_type::AS_SET => AsSegment::Set(asns),
            segment_type::AS_SEQUENCE => AsSegment::Sequence(asns),
            _ => return None,
        });
    }
    Some(AsPath { segments })
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// One prefix (length in bits, then the fewest octets holding it),
/// normalized to its network address.
fn decode_prefix(r: &mut Reader<'_>, v6: bool) -> Option<IpNetwork> {
    let len = r.u8()?;
    if len > if v6 { 128 } else { 32 } {
        return None;
    }
    let bytes = r.take(usize::from(len).div_ceil(8))?;
    if v6 {
        let mut octets = [0u8; 16];
        octets.get_mut(..bytes.len())?.copy_from_slice(bytes);
        let addr = Ipv6Addr::from(u128::from_be_bytes(octets) & mask_v6(len));
        Ipv6Network::new(addr, len).ok().map(IpNetwork::V6)
    } else {
        let mut octets = [0u8; 4];
        octets.get_mut(..bytes.len())?.copy_from_slice(bytes);
        let addr = Ipv4Addr::from(u32::from_be_bytes(octets) & mask_v4(len));
        Ipv4Network::new(addr, len).ok().map(IpNetwork::V4)
    }
}

fn decode_prefixes(bytes: &[u8], v6: bool) -> Option<Vec<IpNetwork>> {
    let mut r = Reader::new(bytes);
    let mut prefixes = Vec::new();
    while !r.is_empty() {
        prefixes.push(decode_prefix(&mut r, v6)?);
    }
    Some(prefixes)
}

/// The Optional and Transitive bits RFC 4271 (and the attributes' RFCs)
/// require of each recognized attribute.
fn expected_flags(type_code: u8) -> Option<u8> {
    use attribute_flags::*;
    use attribute_type::*;
    Some(match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => TRANSITIVE,
        MULTI_EXIT_DISC | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            OPTIONAL
        }
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => OPTIONAL | TRANSITIVE,
        _ => return None,
    })
}

/// The flags are consistent with the type: the right Optional and Transitive
/// bits, and Partial only on optional transitive attributes.
fn flags_ok(flags: u8, expected: u8) -> bool {
    use attribute_flags::*;
    flags & (OPTIONAL | TRANSITIVE) == expected
        && (flags & PARTIAL == 0 || expected == OPTIONAL | TRANSITIVE)
}

/// The flags an unrecognized attribute is kept with.
pub(crate) const KEPT_FLAGS: u8 =
    attribute_flags::OPTIONAL | attribute_flags::TRANSITIVE | attribute_flags::PARTIAL;

/// What is decided once all attributes are read: AS4_PATH and
/// AS4_AGGREGATOR to merge, and a NEXT_HOP that is invalid if there is
/// IPv4 NLRI to use it for.
#[derive(Default)]
struct Deferred {
    path: Option<AsPath>,
    aggregator: Option<Aggregator>,
    /// The whole NEXT_HOP attribute, when its address is no unicast host.
    invalid_next_hop: Option<Vec<u8>>,
}

fn decode_update(body: &[u8], ctx: CodecContext) -> Result<Update, DecodeError> {
    let malformed_list = || update_err(update_error::MALFORMED_ATTRIBUTE_LIST, Vec::new());
    let invalid_network = || update_err(update_error::INVALID_NETWORK_FIELD, Vec::new());
    let mut r = Reader::new(body);
    let withdrawn_len = r.u16().ok_or_else(malformed_list)?;
    let withdrawn = r
        .take(usize::from(withdrawn_len))
        .ok_or_else(malformed_list)?;
    let attributes_len = r.u16().ok_or_else(malformed_list)?;
    let attributes = r
        .take(usize::from(attributes_len))
        .ok_or_else(malformed_list)?;
    let nlri = r.rest();

    let withdrawn = decode_prefixes(withdrawn, false).ok_or_else(invalid_network)?;

    let mut attrs = PathAttributes::default();
    let mut deferred = Deferred::default();
    let mut seen = [false; 256];
    let mut r = Reader::new(attributes);
    while !r.is_empty() {
        let start = r.pos;
        let flags = r.u8().ok_or_else(malformed_list)?;
        let type_code = r.u8().ok_or_else(malformed_list)?;
        let len = if flags & attribute_flags::EXTENDED_LENGTH != 0 {
            r.u16().map(usize::from)
        } else {
            r.u8().map(usize::from)
        }
        .ok_or_else(malformed_list)?;
        let value = r.take(len).ok_or_else(malformed_list)?;
        let whole = r.since(start);
        let slot = seen
            .get_mut(usize::from(type_code))
            .ok_or_else(malformed_list)?;
        if std::mem::replace(slot, true) {
            return Err(malformed_list());
        }
        decode_attribute(
            flags,
            type_code,
            value,
            whole,
            ctx,
            &mut attrs,
            &mut deferred,
        )?;
    }

    let nlri = decode_prefixes(nlri, false).ok_or_else(invalid_network)?;

    // RFC 4271 section 5.1 and RFC 4760 section 3.
    let missing = |type_code| update_err(update_error::MISSING_WELL_KNOWN_ATTRIBUTE, [type_code]);
    if !nlri.is_empty() || attrs.mp_reach.is_some() {
        if attrs.origin.is_none() {
            return Err(missing(attribute_type::ORIGIN));
        }
        if attrs.as_path.is_none() {
            return Err(missing(attribute_type::AS_PATH));
        }
    }
    if !nlri.is_empty() {
        if let Some(attribute) = deferred.invalid_next_hop.take() {
            return Err(update_err(
                update_error::INVALID_NEXT_HOP_ATTRIBUTE,
                attribute,
            ));
        }
        if attrs.next_hop.is_none() {
            return Err(missing(attribute_type::NEXT_HOP));
        }
    }

    if !ctx.four_octet_as {
        merge_as4(&mut attrs, deferred);
    }
    Ok(Update {
        withdrawn,
        attributes: attrs,
        nlri,
    })
}

/// RFC 6793 section 4.2.3: rebuilds the 4-octet AS_PATH and AGGREGATOR a
/// 2-octet session carried in AS4_PATH and AS4_AGGREGATOR.
fn merge_as4(attrs: &mut PathAttributes, as4: Deferred) {
    if let Some(aggregator) = &mut attrs.aggregator {
        if aggregator.asn != u32::from(AS_TRANS) {
            // Aggregated by a 2-octet speaker: whatever AS4_* say is stale.
            return;
        }
        if let Some(as4_aggregator) = as4.aggregator {
            *aggregator = as4_aggregator;
        }
    }
    let (Some(as_path), Some(as4_path)) = (&mut attrs.as_path, as4.path) else {
        return;
    };
    let (len, len4) = (as_path.length(), as4_path.length());
    if len < len4 {
        return;
    }
    // Keep the leading `len - len4` ASes of AS_PATH (an AS_SET counts as
    // one), then AS4_PATH.
    let mut keep = len - len4;
    let mut segments = Vec::new();
    for segment in as_path.segments.drain(..) {
        if keep == 0 {
            break;
        }
        match segment {
            AsSegment::Set(v) => {
                keep -= 1;
                segments.push(AsSegment::Set(v));
            }
            AsSegment::Sequence(mut v) => {
                v.truncate(keep);
                keep -= v.len();
                segments.push(AsSegment::Sequence(v));
            }
        }
    }
    let mut as4_segments = as4_path.segments.into_iter();
    // Join the last sequence kept to AS4_PATH's leading one (mostly one
    // sequence cut in two) when they fit in one segment. The encoder sends
    // the whole path where this would join segments that were apart.
    if let (Some(AsSegment::Sequence(last)), Some(AsSegment::Sequence(first))) =
        (segments.last_mut(), as4_segments.as_slice().first())
        && last.len() + first.len() <= 255
    {
        last.extend_from_slice(first);
        as4_segments.next();
    }
    segments.extend(as4_segments);
    as_path.segments = segments;
}

fn decode_attribute(
    flags: u8,
    type_code: u8,
    value: &[u8],
    whole: &[u8],
    ctx: CodecContext,
    attrs: &mut PathAttributes,
    as4: &mut Deferred,
) -> Result<(), DecodeError> {
    use attribute_type::*;
    let error = |subcode| update_err(subcode, whole);
    let length_error = || error(update_error::ATTRIBUTE_LENGTH_ERROR);
    let optional_error = || error(update_error::OPTIONAL_ATTRIBUTE_ERROR);

    let Some(expected) = expected_flags(type_code) else {
        if flags & attribute_flags::OPTIONAL == 0 {
            return Err(error(update_error::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE));
        }
        attrs.unknown.push(RawAttribute {
            flags: flags & KEPT_FLAGS,
            type_code,
            value: value.to_vec(),
        });
        return Ok(());
    };
    let flags_ok = flags_ok(flags, expected);
    let mut r = Reader::new(value);
    // Fixed-size values: exactly `n` bytes.
    let exact = |n: usize| {
        if value.len() == n {
            Ok(())
        } else {
            Err(length_error())
        }
    };

    // RFC 6793 section 6: a bad AS4_* is discarded, and a 4-octet session
    // ignores them altogether.
    if type_code == AS4_PATH || type_code == AS4_AGGREGATOR {
        if !flags_ok || ctx.four_octet_as {
            return Ok(());
        }
        if type_code == AS4_PATH {
            as4.path = decode_as_path(value, 4);
        } else if value.len() == 8 {
            as4.aggregator = r
                .u32()
                .zip(r.ipv4())
                .map(|(asn, address)| Aggregator { asn, address });
        }
        return Ok(());
    }
    if !flags_ok {
        return Err(error(update_error::ATTRIBUTE_FLAGS_ERROR));
    }

    match type_code {
        ORIGIN => {
            exact(1)?;
            attrs.origin = Some(match r.u8() {
                Some(0) => Origin::Igp,
                Some(1) => Origin::Egp,
                Some(2) => Origin::Incomplete,
                _ => return Err(error(update_error::INVALID_ORIGIN_ATTRIBUTE)),
            });
        }
        AS_PATH => {
            let asn_len = if ctx.four_octet_as { 4 } else { 2 };
            attrs.as_path = Some(
                decode_as_path(value, asn_len)
                    .ok_or_else(|| update_err(update_error::MALFORMED_AS_PATH, Vec::new()))?,
            );
        }
        NEXT_HOP => {
            exact(4)?;
            let next_hop = r.ipv4().ok_or_else(length_error)?;
            if is_unicast_host(next_hop) {
                attrs.next_hop = Some(next_hop);
            } else {
                // Only an error if there is IPv4 NLRI (RFC 4760 section 3:
                // NEXT_HOP next to MP_REACH_NLRI alone is ignored).
                as4.invalid_next_hop = Some(whole.to_vec());
            }
        }
        MULTI_EXIT_DISC => {
            exact(4)?;
            attrs.multi_exit_disc = Some(r.u32().ok_or_else(length_error)?);
        }
        LOCAL_PREF => {
            exact(4)?;
            attrs.local_pref = Some(r.u32().ok_or_else(length_error)?);
        }
        ATOMIC_AGGREGATE => {
            exact(0)?;
            attrs.atomic_aggregate = true;
        }
        AGGREGATOR => {
            let asn = if ctx.four_octet_as {
                exact(8)?;
                r.u32()
            } else {
                exact(6)?;
                r.u16().map(u32::from)
            };
            let (asn, address) = asn.zip(r.ipv4()).ok_or_else(length_error)?;
            attrs.aggregator = Some(Aggregator { asn, address });
        }
        COMMUNITIES => {
            if !value.len().is_multiple_of(4) {
                return Err(length_error());
            }
            while let Some(community) = r.u32() {
                attrs.communities.push(community);
            }
        }
        ORIGINATOR_ID => {
            exact(4)?;
            attrs.originator_id = Some(r.ipv4().ok_or_else(length_error)?);
        }
        CLUSTER_LIST => {
            if !value.len().is_multiple_of(4) {
                return Err(length_error());
            }
            while let Some(cluster) = r.ipv4() {
                attrs.cluster_list.push(cluster);
            }
        }
        MP_REACH_NLRI | MP_UNREACH_NLRI => {
            let afi = r.u16().ok_or_else(optional_error)?;
            let safi = r.u8().ok_or_else(optional_error)?;
            let family = AfiSafi { afi, safi };
            let v6 = match family {
                AfiSafi::IPV4_UNICAST => false,
                AfiSafi::IPV6_UNICAST => true,
                // A family Weft does not speak: kept as received.
                _ => {
                    attrs.unknown.push(RawAttribute {
                        flags: flags & KEPT_FLAGS,
                        type_code,
                        value: value.to_vec(),
                    });
                    return Ok(());
                }
            };
            if type_code == MP_UNREACH_NLRI {
                let withdrawn = decode_prefixes(r.rest(), v6).ok_or_else(optional_error)?;
                attrs.mp_unreach = Some(MpUnreach { family, withdrawn });
                return Ok(());
            }
            let next_hop_len = r.u8().ok_or_else(optional_error)?;
            let next_hop = r
                .take(usize::from(next_hop_len))
                .ok_or_else(optional_error)?;
            let next_hops = match (v6, next_hop.len()) {
                (false, 4) => vec![IpAddr::V4(
                    Reader::new(next_hop).ipv4().ok_or_else(optional_error)?,
                )],
                (true, 16 | 32) => next_hop
                    .chunks_exact(16)
                    .map(|c| <[u8; 16]>::try_from(c).map(|o| IpAddr::V6(Ipv6Addr::from(o))))
                    .collect::<Result<_, _>>()
                    .map_err(|_| optional_error())?,
                _ => return Err(optional_error()),
            };
            let _reserved = r.u8().ok_or_else(optional_error)?;
            let nlri = decode_prefixes(r.rest(), v6).ok_or_else(optional_error)?;
            attrs.mp_reach = Some(MpReach {
                family,
                next_hops,
                nlri,
            });
        }
        // expected_flags knows no other type.
        _ => attrs.unknown.push(RawAttribute {
            flags: flags & KEPT_FLAGS,
            type_code,
            value: value.to_vec(),
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(v: &[u32]) -> AsSegment {
        AsSegment::Sequence(v.to_vec())
    }

    fn merged(
        as_path: Vec<AsSegment>,
        as4_path: Vec<AsSegment>,
        aggregator: Option<u32>,
    ) -> Vec<AsSegment> {
        let address = Ipv4Addr::new(192, 0, 2, 9);
        let mut attrs = PathAttributes {
            as_path: Some(AsPath { segments: as_path }),
            aggregator: aggregator.map(|asn| Aggregator { asn, address }),
            ..PathAttributes::default()
        };
        let as4 = Deferred {
            path: Some(AsPath { segments: as4_path }),
            ..Deferred::default()
        };
        merge_as4(&mut attrs, as4);
        attrs.as_path.unwrap_or_default().segments
    }

    const T: u32 = AS_TRANS as u32;

    #[test]
    fn as4_path_replaces_the_tail() {
        // RFC 6793 section 4.2.3: keep the leading ASes AS4_PATH lacks.
        assert_eq!(
            merged(vec![seq(&[1, 2, T, T])], vec![seq(&[70000, 80000])], None),
            vec![seq(&[1, 2, 70000, 80000])]
        );
        // A set counts as one AS and is kept whole.
        assert_eq!(
            merged(
                vec![AsSegment::Set(vec![5, 6]), seq(&[T])],
                vec![seq(&[70000])],
                None
            ),
            vec![AsSegment::Set(vec![5, 6]), seq(&[70000])]
        );
        // Sequences are not joined past 255 ASes.
        let long: Vec<u32> = (1..=255).collect();
        let mut with_trans = long.clone();
        with_trans.push(T);
        assert_eq!(
            merged(vec![seq(&with_trans)], vec![seq(&[70000])], None),
            vec![seq(&long), seq(&[70000])]
        );
    }

    #[test]
    fn as4_path_ignored_when_longer_or_aggregated_by_an_old_speaker() {
        assert_eq!(
            merged(vec![seq(&[T])], vec![seq(&[70000, 80000])], None),
            vec![seq(&[T])]
        );
        assert_eq!(
            merged(vec![seq(&[1, T])], vec![seq(&[70000])], Some(100)),
            vec![seq(&[1, T])]
        );
        assert_eq!(
            merged(vec![seq(&[1, T])], vec![seq(&[70000])], Some(T)),
            vec![seq(&[1, 70000])]
        );
    }

    #[test]
    fn reader_is_checked() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.take(usize::MAX), None);
        assert_eq!(r.u8(), Some(3));
        assert!(r.is_empty());
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn prefixes() {
        let mut r = Reader::new(&[0, 8, 10, 33, 1, 2, 3, 4, 5]);
        assert_eq!(
            decode_prefix(&mut r, false),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(
            decode_prefix(&mut r, false),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(decode_prefix(&mut r, false), None);
        assert_eq!(decode_prefixes(&[128, 0xfe, 0x80], true), None);
        assert_eq!(decode_prefixes(&[129], true), None);
        assert_eq!(
            decode_prefixes(&[10, 0xfe, 0xbf], true),
            Some(vec!["fe80::/10".parse().unwrap()])
        );
    }

    #[test]
    fn short_headers() {
        assert_eq!(
            decode_header(&[0xff; 18]),
            Err(header_err(
                header_error::BAD_MESSAGE_LENGTH,
                vec![0xff, 0xff]
            ))
        );
        assert_eq!(
            decode_header(&[]),
            Err(header_err(header_error::BAD_MESSAGE_LENGTH, vec![]))
        );
    }
}
