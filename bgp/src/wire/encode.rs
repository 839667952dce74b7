//! Encoding: [`Message`] to bytes.
//!
//! The encoder writes what it is given; it does not split messages. Callers
//! keep UPDATEs under [`MAX_MESSAGE_LEN`] ([`encoded_len`] tells). Values
//! the decoder never produces and the wire cannot carry are cut to fit:
//! capabilities past 255 bytes of optional parameters, a capability value
//! past 253 bytes, NOTIFICATION data past [`MAX_MESSAGE_LEN`]. AS_PATH
//! segments of more than 255 ASes are split into several segments.
//!
//! Choices:
//! - Capabilities are packed into as few optional parameters as fit.
//! - Recognized attributes are written in type code order (RFC 4271
//!   section 5 asks for that) with the flags their RFCs give (no Partial);
//!   unknown ones are merged in by type code, keeping their relative order,
//!   with their flags exactly as stored: setting Partial on transitive ones
//!   passed on is the RIB's job. Extended Length is used only for values
//!   longer than 255 bytes.
//! - Without the 4-octet AS capability, ASes past 65535 become AS_TRANS and
//!   AS4_PATH, only when the path has such an AS, carries the path from the
//!   first one on (RFC 6793 section 4.2.2; the receiver takes the leading
//!   ASes from AS_PATH). When AS4_PATH is sent, AGGREGATOR carries AS_TRANS
//!   and AS4_AGGREGATOR the real AS even for a 2-octet one, since a
//!   receiver ignores AS4_PATH next to a non-AS_TRANS AGGREGATOR (RFC 6793
//!   section 4.2.3). Re-encoding a decoded UPDATE for a 2-octet session can
//!   therefore grow it a little (AS4_AGGREGATOR added, AS_SETs AS4_PATH
//!   widened) and, for a message near the limit, pass [`MAX_MESSAGE_LEN`].
//! - IPv6 prefixes in the IPv4-only `withdrawn` and `nlri` fields are
//!   skipped (they belong in the MP attributes).
use super::decode::{GR_FORWARDING_PRESERVED, GR_RESTART_TIME_MASK, GR_RESTARTING};
use super::*;

/// Encodes one message, header included.
pub fn encode(message: &Message, ctx: CodecContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&[0, 0]);
    match message {
        Message::Open(open) => {
            out.push(message_type::OPEN);
            encode_open(&mut out, open);
        }
        Message::Update(update) => {
            out.push(message_type::UPDATE);
            encode_update(&mut out, update, ctx);
        }
        Message::Notification(notification) => {
            out.push(message_type::NOTIFICATION);
            out.push(notification.code);
            out.push(notification.subcode);
            let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
            out.extend(notification.data.iter().take(room));
        }
        Message::Keepalive => out.push(message_type::KEEPALIVE),
        Message::RouteRefresh(refresh) => {
            out.push(message_type::ROUTE_REFRESH);
            out.extend_from_slice(&refresh.family.afi.to_be_bytes());
            out.push(0);
            out.push(refresh.family.safi);
        }
    }
    let length = u16::try_from(out.len()).unwrap_or(u16::MAX);
    if let Some(field) = out.get_mut(16..18) {
        field.copy_from_slice(&length.to_be_bytes());
    }
    out
}

/// The length [`encode`] gives the message (to split UPDATEs that would
/// pass [`MAX_MESSAGE_LEN`]).
pub fn encoded_len(message: &Message, ctx: CodecContext) -> usize {
    encode(message, ctx).len()
}

fn encode_capability(capability: &Capability) -> Vec<u8> {
    let (code, mut value) = match capability {
        Capability::Multiprotocol(family) => {
            let mut v = family.afi.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, family.safi]);
            (capability_code::MULTIPROTOCOL, v)
        }
        Capability::RouteRefresh => (capability_code::ROUTE_REFRESH, Vec::new()),
        Capability::GracefulRestart(gr) => {
            let mut flags_and_time = gr.restart_time & GR_RESTART_TIME_MASK;
            if gr.restarting {
                flags_and_time |= GR_RESTARTING;
            }
            let mut v = flags_and_time.to_be_bytes().to_vec();
            for family in &gr.families {
                v.extend_from_slice(&family.family.afi.to_be_bytes());
                v.push(family.family.safi);
                v.push(if family.forwarding_preserved {
                    GR_FORWARDING_PRESERVED
                } else {
                    0
                });
            }
            (capability_code::GRACEFUL_RESTART, v)
        }
        Capability::FourOctetAs(asn) => {
            (capability_code::FOUR_OCTET_AS, asn.to_be_bytes().to_vec())
        }
        Capability::Unknown { code, value } => (*code, value.clone()),
    };
    // A capability must fit in one optional parameter (255 bytes).
    value.truncate(253);
    let mut out = vec![code, value.len() as u8];
    out.extend(value);
    out
}

fn encode_open(out: &mut Vec<u8>, open: &Open) {
    out.push(open.version);
    out.extend_from_slice(&open.my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.bgp_id.octets());
    let mut params: Vec<u8> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let flush = |params: &mut Vec<u8>, current: &mut Vec<u8>| {
        if !current.is_empty() && params.len() + 2 + current.len() <= 255 {
            params.push(PARAMETER_CAPABILITIES);
            params.push(current.len() as u8);
            params.append(current);
        }
        current.clear();
    };
    for capability in &open.capabilities {
        let bytes = encode_capability(capability);
        if current.len() + bytes.len() > 255 {
            flush(&mut params, &mut current);
        }
        current.extend(bytes);
    }
    flush(&mut params, &mut current);
    out.push(params.len() as u8);
    out.extend(params);
}

/// Length in bits, then the fewest octets holding the prefix.
fn encode_prefix(out: &mut Vec<u8>, prefix: &IpNetwork) {
    let len = prefix.prefix();
    let octets = usize::from(len).div_ceil(8);
    out.push(len);
    match prefix {
        IpNetwork::V4(p) => out.extend(p.network().octets().iter().take(octets)),
        IpNetwork::V6(p) => out.extend(p.network().octets().iter().take(octets)),
    }
}

fn encode_ipv4_prefixes(out: &mut Vec<u8>, prefixes: &[IpNetwork]) {
    for prefix in prefixes.iter().filter(|p| p.is_ipv4()) {
        encode_prefix(out, prefix);
    }
}

fn encode_as_path(path: &AsPath, four_octet_as: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for segment in &path.segments {
        let (kind, asns) = match segment {
            AsSegment::Set(v) => (segment_type::AS_SET, v),
            AsSegment::Sequence(v) => (segment_type::AS_SEQUENCE, v),
        };
        for chunk in asns.chunks(255) {
            out.push(kind);
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if four_octet_as {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    out.extend_from_slice(&as2(asn).to_be_bytes());
                }
            }
        }
    }
    out
}

/// The AS4_PATH a 2-octet session needs (RFC 6793 section 4.2.2): `None`
/// if every AS fits in 2 octets, else the path from its first larger AS on
/// (the receiver takes the ASes before it from AS_PATH).
fn as4_path(path: &AsPath) -> Option<AsPath> {
    let large = |asn: &u32| *asn > u32::from(u16::MAX);
    let (i, j) = path
        .segments
        .iter()
        .enumerate()
        .find_map(|(i, segment)| match segment {
            AsSegment::Sequence(v) => v.iter().position(large).map(|j| (i, j)),
            AsSegment::Set(v) => v.iter().any(large).then_some((i, 0)),
        })?;
    // The decoder joins a sequence AS_PATH ends with to a sequence AS4_PATH
    // starts with when they fit in one segment. Where that would join two
    // segments that were apart, send the whole path instead.
    let would_join = j == 0
        && i > 0
        && matches!(
            (path.segments.get(i - 1), path.segments.get(i)),
            (Some(AsSegment::Sequence(a)), Some(AsSegment::Sequence(b))) if a.len() + b.len() <= 255
        );
    if would_join {
        return Some(path.clone());
    }
    let mut segments = match path.segments.get(i)? {
        AsSegment::Sequence(v) => vec![AsSegment::Sequence(v.get(j..)?.to_vec())],
        set => vec![set.clone()],
    };
    segments.extend(path.segments.iter().skip(i + 1).cloned());
    Some(AsPath { segments })
}

/// An AS number as a 2-octet field: itself or AS_TRANS.
fn as2(asn: u32) -> u16 {
    u16::try_from(asn).unwrap_or(AS_TRANS)
}

/// Appends one attribute: flags, type, one or two length octets, value.
fn push_attribute(out: &mut Vec<u8>, flags: u8, type_code: u8, value: &[u8]) {
    let value = value.get(..usize::from(u16::MAX)).unwrap_or(value);
    if let Ok(len) = u8::try_from(value.len()) {
        out.push(flags & !attribute_flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.push(len);
    } else {
        out.push(flags | attribute_flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(value);
}

fn encode_update(out: &mut Vec<u8>, update: &Update, ctx: CodecContext) {
    let mut withdrawn = Vec::new();
    encode_ipv4_prefixes(&mut withdrawn, &update.withdrawn);
    out.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    out.extend(withdrawn);

    let attributes = encode_attributes(&update.attributes, ctx);
    out.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    out.extend(attributes);

    encode_ipv4_prefixes(out, &update.nlri);
}

fn encode_attributes(attrs: &PathAttributes, ctx: CodecContext) -> Vec<u8> {
    use attribute_flags::{OPTIONAL, TRANSITIVE};
    use attribute_type::*;
    const WELL_KNOWN: u8 = TRANSITIVE;
    const OPTIONAL_TRANSITIVE: u8 = OPTIONAL | TRANSITIVE;

    // (type code, flags, value) of the recognized attributes, in type order.
    let mut known: Vec<(u8, u8, Vec<u8>)> = Vec::new();
    let as4_path = match &attrs.as_path {
        Some(path) if !ctx.four_octet_as => as4_path(path),
        _ => None,
    };
    let as4_path_needed = as4_path.is_some();

    if let Some(origin) = attrs.origin {
        known.push((ORIGIN, WELL_KNOWN, vec![origin as u8]));
    }
    if let Some(path) = &attrs.as_path {
        known.push((AS_PATH, WELL_KNOWN, encode_as_path(path, ctx.four_octet_as)));
    }
    if let Some(next_hop) = attrs.next_hop {
        known.push((NEXT_HOP, WELL_KNOWN, next_hop.octets().to_vec()));
    }
    if let Some(med) = attrs.multi_exit_disc {
        known.push((MULTI_EXIT_DISC, OPTIONAL, med.to_be_bytes().to_vec()));
    }
    if let Some(local_pref) = attrs.local_pref {
        known.push((LOCAL_PREF, WELL_KNOWN, local_pref.to_be_bytes().to_vec()));
    }
    if attrs.atomic_aggregate {
        known.push((ATOMIC_AGGREGATE, WELL_KNOWN, Vec::new()));
    }
    let mut as4_aggregator = None;
    if let Some(aggregator) = attrs.aggregator {
        let mut v = Vec::new();
        if ctx.four_octet_as {
            v.extend_from_slice(&aggregator.asn.to_be_bytes());
        } else if as4_path_needed || aggregator.asn > u32::from(u16::MAX) {
            v.extend_from_slice(&AS_TRANS.to_be_bytes());
            let mut v4 = aggregator.asn.to_be_bytes().to_vec();
            v4.extend_from_slice(&aggregator.address.octets());
            as4_aggregator = Some(v4);
        } else {
            v.extend_from_slice(&as2(aggregator.asn).to_be_bytes());
        }
        v.extend_from_slice(&aggregator.address.octets());
        known.push((AGGREGATOR, OPTIONAL_TRANSITIVE, v));
    }
    if !attrs.communities.is_empty() {
        let v = attrs
            .communities
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        known.push((COMMUNITIES, OPTIONAL_TRANSITIVE, v));
    }
    if let Some(originator_id) = attrs.originator_id {
        known.push((ORIGINATOR_ID, OPTIONAL, originator_id.octets().to_vec()));
    }
    if !attrs.cluster_list.is_empty() {
        let v = attrs.cluster_list.iter().flat_map(|c| c.octets()).collect();
        known.push((CLUSTER_LIST, OPTIONAL, v));
    }
    if let Some(reach) = &attrs.mp_reach {
        let mut v = reach.family.afi.to_be_bytes().to_vec();
        v.push(reach.family.safi);
        let mut next_hops = Vec::new();
        for next_hop in &reach.next_hops {
            match next_hop {
                IpAddr::V4(a) => next_hops.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => next_hops.extend_from_slice(&a.octets()),
            }
        }
        v.push(next_hops.len() as u8);
        v.extend(next_hops);
        v.push(0); // Reserved.
        for prefix in &reach.nlri {
            encode_prefix(&mut v, prefix);
        }
        known.push((MP_REACH_NLRI, OPTIONAL, v));
    }
    if let Some(unreach) = &attrs.mp_unreach {
        let mut v = unreach.family.afi.to_be_bytes().to_vec();
        v.push(unreach.family.safi);
        for prefix in &unreach.withdrawn {
            encode_prefix(&mut v, prefix);
        }
        known.push((MP_UNREACH_NLRI, OPTIONAL, v));
    }
    if let Some(path) = &as4_path {
        known.push((AS4_PATH, OPTIONAL_TRANSITIVE, encode_as_path(path, true)));
    }
    if let Some(v) = as4_aggregator {
        known.push((AS4_AGGREGATOR, OPTIONAL_TRANSITIVE, v));
    }

    // Merge the unknown attributes in by type code, keeping their order.
    let mut out = Vec::new();
    let mut unknown = attrs.unknown.iter().peekable();
    for (type_code, flags, value) in &known {
        while let Some(raw) = unknown.next_if(|raw| raw.type_code < *type_code) {
            push_attribute(&mut out, raw.flags, raw.type_code, &raw.value);
        }
        push_attribute(&mut out, *flags, *type_code, value);
    }
    for raw in unknown {
        push_attribute(&mut out, raw.flags, raw.type_code, &raw.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnetwork::{Ipv4Network, Ipv6Network};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::*;
    use crate::wire::decode;

    fn ipv4_prefix() -> impl Strategy<Value = IpNetwork> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(a & mask), len).unwrap())
        })
    }

    fn ipv6_prefix() -> impl Strategy<Value = IpNetwork> {
        (any::<u128>(), 0u8..=128).prop_map(|(a, len)| {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(a & mask), len).unwrap())
        })
    }

    fn unicast() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>()
            .prop_map(Ipv4Addr::from)
            .prop_filter("unicast host", |a| decode::is_unicast_host(*a))
    }

    fn family() -> impl Strategy<Value = AfiSafi> {
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| AfiSafi { afi, safi })
    }

    fn capability() -> impl Strategy<Value = Capability> {
        prop_oneof![
            family().prop_map(Capability::Multiprotocol),
            Just(Capability::RouteRefresh),
            (
                any::<bool>(),
                0u16..4096,
                vec((family(), any::<bool>()), 0..4)
            )
                .prop_map(|(restarting, restart_time, families)| {
                    Capability::GracefulRestart(GracefulRestart {
                        restarting,
                        restart_time,
                        families: families
                            .into_iter()
                            .map(|(family, forwarding_preserved)| GracefulRestartFamily {
                                family,
                                forwarding_preserved,
                            })
                            .collect(),
                    })
                }),
            any::<u32>().prop_map(Capability::FourOctetAs),
            (
                any::<u8>().prop_filter("unknown code", |c| ![1, 2, 64, 65].contains(c)),
                vec(any::<u8>(), 0..16)
            )
                .prop_map(|(code, value)| Capability::Unknown { code, value }),
        ]
    }

    fn open() -> impl Strategy<Value = Open> {
        (
            any::<u16>(),
            any::<u16>().prop_filter("acceptable hold time", |h| *h != 1 && *h != 2),
            unicast(),
            vec(capability(), 0..8),
        )
            .prop_map(|(my_as, hold_time, bgp_id, capabilities)| Open {
                version: BGP_VERSION,
                my_as,
                hold_time,
                bgp_id,
                capabilities,
            })
    }

    fn as_path() -> impl Strategy<Value = AsPath> {
        let asn = prop_oneof![0u32..70000, any::<u32>()];
        let segment = (any::<bool>(), vec(asn, 1..12)).prop_map(|(set, asns)| {
            if set {
                AsSegment::Set(asns)
            } else {
                AsSegment::Sequence(asns)
            }
        });
        vec(segment, 0..4).prop_map(|segments| AsPath { segments })
    }

    fn mp_reach() -> impl Strategy<Value = MpReach> {
        prop_oneof![
            (unicast(), vec(ipv4_prefix(), 0..6)).prop_map(|(nh, nlri)| MpReach {
                family: AfiSafi::IPV4_UNICAST,
                next_hops: vec![IpAddr::V4(nh)],
                nlri,
            }),
            (vec(any::<u128>(), 1..=2), vec(ipv6_prefix(), 0..6)).prop_map(|(nhs, nlri)| MpReach {
                family: AfiSafi::IPV6_UNICAST,
                next_hops: nhs
                    .into_iter()
                    .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                    .collect(),
                nlri,
            }),
        ]
    }

    fn mp_unreach() -> impl Strategy<Value = MpUnreach> {
        prop_oneof![
            vec(ipv4_prefix(), 0..6).prop_map(|withdrawn| MpUnreach {
                family: AfiSafi::IPV4_UNICAST,
                withdrawn
            }),
            vec(ipv6_prefix(), 0..6).prop_map(|withdrawn| MpUnreach {
                family: AfiSafi::IPV6_UNICAST,
                withdrawn
            }),
        ]
    }

    fn unknown() -> impl Strategy<Value = Vec<RawAttribute>> {
        let type_code = prop_oneof![
            Just(16u8),
            Just(32u8),
            12u8..=13,
            19u8..=255,
            Just(0u8),
            Just(11u8)
        ];
        let flags = prop_oneof![Just(0x80u8), Just(0xc0), Just(0xe0), Just(0xa0)];
        vec((flags, type_code, vec(any::<u8>(), 0..300)), 0..3).prop_map(|attrs| {
            let mut seen = std::collections::HashSet::new();
            attrs
                .into_iter()
                .filter(|(_, t, _)| seen.insert(*t))
                .map(|(flags, type_code, value)| RawAttribute {
                    flags,
                    type_code,
                    value,
                })
                .collect()
        })
    }

    fn update() -> impl Strategy<Value = Update> {
        let attributes = (
            (
                option::of(prop_oneof![
                    Just(Origin::Igp),
                    Just(Origin::Egp),
                    Just(Origin::Incomplete)
                ]),
                option::of(as_path()),
                option::of(unicast()),
                option::of(any::<u32>()),
                option::of(any::<u32>()),
                any::<bool>(),
                option::of(
                    (any::<u32>(), any::<u32>()).prop_map(|(asn, a)| Aggregator {
                        asn,
                        address: a.into(),
                    }),
                ),
            ),
            (
                vec(any::<u32>(), 0..5),
                option::of(any::<u32>().prop_map(Ipv4Addr::from)),
                vec(any::<u32>().prop_map(Ipv4Addr::from), 0..4),
                option::of(mp_reach()),
                option::of(mp_unreach()),
                unknown(),
            ),
        )
            .prop_map(
                |(
                    (
                        origin,
                        as_path,
                        next_hop,
                        multi_exit_disc,
                        local_pref,
                        atomic_aggregate,
                        aggregator,
                    ),
                    (communities, originator_id, cluster_list, mp_reach, mp_unreach, unknown),
                )| PathAttributes {
                    origin,
                    as_path,
                    next_hop,
                    multi_exit_disc,
                    local_pref,
                    atomic_aggregate,
                    aggregator,
                    communities,
                    originator_id,
                    cluster_list,
                    mp_reach,
                    mp_unreach,
                    unknown,
                },
            );
        (
            vec(ipv4_prefix(), 0..8),
            attributes,
            vec(ipv4_prefix(), 0..8),
        )
            .prop_map(|(withdrawn, mut attributes, nlri)| {
                // Routes need their mandatory attributes (RFC 4271 section 5.1).
                if !nlri.is_empty() || attributes.mp_reach.is_some() {
                    attributes.origin.get_or_insert(Origin::Igp);
                    attributes.as_path.get_or_insert_with(AsPath::default);
                }
                if !nlri.is_empty() {
                    attributes
                        .next_hop
                        .get_or_insert(Ipv4Addr::new(192, 0, 2, 1));
                }
                Update {
                    withdrawn,
                    attributes,
                    nlri,
                }
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            open().prop_map(Message::Open),
            update().prop_map(Message::Update),
            (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(
                |(code, subcode, data)| Message::Notification(Notification {
                    code,
                    subcode,
                    data
                })
            ),
            Just(Message::Keepalive),
            family().prop_map(|family| Message::RouteRefresh(RouteRefresh { family })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encoded_messages_decode_to_themselves(message in message(), four_octet_as in any::<bool>()) {
            let ctx = CodecContext { four_octet_as };
            let bytes = encode(&message, ctx);
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            prop_assert_eq!(decode::decode(&bytes, ctx), Ok(message));
        }

        #[test]
        fn decoding_is_total(bytes in vec(any::<u8>(), 0..200), four_octet_as in any::<bool>()) {
            // Mostly bad markers; the fuzz target covers the rest.
            let _ = decode::decode(&bytes, CodecContext { four_octet_as });
        }

        #[test]
        fn truncated_and_mutated_messages_do_not_panic(
            message in message(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let ctx = CodecContext { four_octet_as: true };
            let mut bytes = encode(&message, ctx);
            let at = flip.index(bytes.len());
            bytes[at] ^= 1 << bit;
            let _ = decode::decode(&bytes, ctx);
            let len = cut.index(bytes.len());
            bytes.truncate(len);
            // Keep the length field consistent so the body is what is cut.
            if let Some(field) = bytes.get_mut(16..18) {
                field.copy_from_slice(&(len as u16).to_be_bytes());
            }
            let _ = decode::decode(&bytes, ctx);
        }
    }

    fn two_octet_path() -> impl Strategy<Value = AsPath> {
        let asn = prop_oneof![Just(u32::from(AS_TRANS)), 1u32..5];
        let segment = (any::<bool>(), vec(asn, 1..6)).prop_map(|(set, asns)| {
            if set {
                AsSegment::Set(asns)
            } else {
                AsSegment::Sequence(asns)
            }
        });
        vec(segment, 0..5).prop_map(|segments| AsPath { segments })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// The fuzz target's property for AS4_PATH/AS4_AGGREGATOR, which
        /// random bytes rarely reach: whatever a 2-octet session decodes
        /// encodes to bytes that decode the same.
        #[test]
        fn as4_merges_round_trip(
            as_path in two_octet_path(),
            as4_path in option::of(as_path()),
            aggregator in option::of(prop_oneof![Just(u32::from(AS_TRANS)), 1u32..5]),
            as4_aggregator in option::of(any::<u32>()),
        ) {
            let ctx = CodecContext { four_octet_as: false };
            let address = [192, 0, 2, 9];
            let mut attributes = Vec::new();
            push_attribute(&mut attributes, 0x40, attribute_type::ORIGIN, &[0]);
            push_attribute(&mut attributes, 0x40, attribute_type::AS_PATH, &encode_as_path(&as_path, false));
            if let Some(asn) = aggregator {
                let mut v = (asn as u16).to_be_bytes().to_vec();
                v.extend_from_slice(&address);
                push_attribute(&mut attributes, 0xc0, attribute_type::AGGREGATOR, &v);
            }
            if let Some(path) = &as4_path {
                push_attribute(&mut attributes, 0xc0, attribute_type::AS4_PATH, &encode_as_path(path, true));
            }
            if let Some(asn) = as4_aggregator {
                let mut v = asn.to_be_bytes().to_vec();
                v.extend_from_slice(&address);
                push_attribute(&mut attributes, 0xc0, attribute_type::AS4_AGGREGATOR, &v);
            }
            let mut bytes = MARKER.to_vec();
            let len = (HEADER_LEN + 4 + attributes.len()) as u16;
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&[message_type::UPDATE, 0, 0]);
            bytes.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
            bytes.extend(attributes);
            let message = decode::decode(&bytes, ctx);
            prop_assert!(message.is_ok(), "{:?}", message);
            let message = message.unwrap();
            let again = encode(&message, ctx);
            prop_assert_eq!(decode::decode(&again, ctx), Ok(message));
        }
    }

    #[test]
    fn long_as_sequences_are_split() {
        let update = Update {
            attributes: PathAttributes {
                as_path: Some(AsPath {
                    segments: vec![AsSegment::Sequence((1..=300).collect())],
                }),
                ..PathAttributes::default()
            },
            ..Update::default()
        };
        let bytes = encode(
            &Message::Update(update),
            CodecContext {
                four_octet_as: true,
            },
        );
        let Ok(Message::Update(again)) = decode::decode(
            &bytes,
            CodecContext {
                four_octet_as: true,
            },
        ) else {
            panic!("does not decode")
        };
        let segments = again.attributes.as_path.unwrap().segments;
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[0], AsSegment::Sequence((1..=255).collect()));
    }

    #[test]
    fn notification_data_is_cut_to_fit() {
        let n = Message::Notification(Notification::new(3, 1, vec![0; 5000]));
        assert_eq!(encode(&n, CodecContext::default()).len(), MAX_MESSAGE_LEN);
    }
}
