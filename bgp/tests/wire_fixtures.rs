//! Byte fixtures for the BGP codec (smoltcp style): well-formed messages in
//! the shapes BIRD and GoBGP send, decoded to the expected value and encoded
//! back to the same bytes; then one fixture per malformed case of RFC 4271
//! section 6, with the exact NOTIFICATION (code, subcode, data) it calls for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use weft_bgp::wire::notification::{code, header, open, update};
use weft_bgp::wire::*;

const TWO: CodecContext = CodecContext {
    four_octet_as: false,
};
const FOUR: CodecContext = CodecContext {
    four_octet_as: true,
};

/// Bytes from whitespace-separated hex octets.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("fixture hex"))
        .collect()
}

/// A message: marker, computed length, type, then the body's hex octets.
fn message(message_type: u8, body: &str) -> Vec<u8> {
    let body = hex(body);
    let mut out = MARKER.to_vec();
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(message_type);
    out.extend(body);
    out
}

/// An UPDATE with no withdrawn routes, these attributes and this NLRI.
fn update_with(attributes: &str, nlri: &str) -> Vec<u8> {
    let len = hex(attributes).len();
    message(
        2,
        &format!(
            "00 00 {:02x} {:02x} {attributes} {nlri}",
            len >> 8,
            len & 0xff
        ),
    )
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("fixture prefix")
}

/// `bytes` decode to `expected`, which encodes back to `bytes`.
fn round_trip(bytes: &[u8], ctx: CodecContext, expected: Message) {
    assert_eq!(decode(bytes, ctx), Ok(expected.clone()));
    assert_eq!(encode(&expected, ctx), bytes, "encoding {expected:?}");
}

fn fails(bytes: &[u8], ctx: CodecContext, code: u8, subcode: u8, data: &[u8]) {
    assert_eq!(
        decode(bytes, ctx),
        Err(DecodeError(Notification::new(code, subcode, data.to_vec()))),
        "decoding {bytes:02x?}"
    );
}

fn decoded_update(bytes: &[u8], ctx: CodecContext) -> Update {
    match decode(bytes, ctx) {
        Ok(Message::Update(u)) => u,
        other => panic!("not an UPDATE: {other:?}"),
    }
}

// Well-formed messages.

/// BIRD's shape: all capabilities in one optional parameter; 4-octet AS
/// 4200000001 (AS_TRANS in My AS), hold time 90, graceful restart for IPv4
/// unicast with 120 s restart time and forwarding preserved.
const OPEN_BIRD: &str = "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 3b 01
    04 5b a0 00 5a c0 00 02 01 1e
    02 1c
    01 04 00 01 00 01
    01 04 00 02 00 01
    02 00
    40 06 00 78 00 01 01 80
    41 04 fa 56 ea 01";

#[test]
fn open_with_capabilities() {
    let expected = Open {
        version: 4,
        my_as: AS_TRANS,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    family: AfiSafi::IPV4_UNICAST,
                    forwarding_preserved: true,
                }],
            }),
            Capability::FourOctetAs(4_200_000_001),
        ],
    };
    assert_eq!(expected.asn(), 4_200_000_001);
    round_trip(&hex(OPEN_BIRD), TWO, Message::Open(expected.clone()));
    round_trip(&hex(OPEN_BIRD), FOUR, Message::Open(expected));
}

/// GoBGP's shape: one capability per optional parameter.
#[test]
fn open_one_capability_per_parameter() {
    let bytes = hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 31 01
        04 fd e9 00 b4 0a 00 00 01 14
        02 06 01 04 00 01 00 01
        02 02 02 00
        02 06 41 04 00 00 fd e9");
    let expected = Message::Open(Open {
        version: 4,
        my_as: 65001,
        hold_time: 180,
        bgp_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
        ],
    });
    assert_eq!(decode(&bytes, FOUR), Ok(expected.clone()));
    // Re-encoded with all capabilities in one parameter.
    let again = encode(&expected, FOUR);
    assert_eq!(again.len(), bytes.len() - 4);
    assert_eq!(decode(&again, FOUR), Ok(expected));
}

#[test]
fn open_unknown_capability_and_no_parameters() {
    let bytes = message(1, "04 fd e9 00 00 0a 00 00 01 08 02 06 46 00 80 02 ab cd");
    let Ok(Message::Open(open)) = decode(&bytes, FOUR) else {
        panic!()
    };
    assert_eq!(
        open.capabilities,
        vec![
            Capability::Unknown {
                code: 70,
                value: vec![]
            },
            Capability::Unknown {
                code: 128,
                value: vec![0xab, 0xcd]
            },
        ]
    );
    assert_eq!(open.hold_time, 0);
    assert_eq!(encode(&Message::Open(open), FOUR), bytes);

    let bare = message(1, "04 fd e9 00 03 0a 00 00 01 00");
    let Ok(Message::Open(open)) = decode(&bare, TWO) else {
        panic!()
    };
    assert!(open.capabilities.is_empty());
    assert_eq!(open.asn(), 65001);
}

/// ORIGIN, AS_PATH, NEXT_HOP, LOCAL_PREF and COMMUNITIES (65001:100 and
/// NO_EXPORT) for two IPv4 prefixes, on a 4-octet AS session.
const UPDATE_IPV4: &str = "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 48 02
    00 00
    00 2a
    40 01 01 00
    40 02 0a 02 02 00 00 fd e9 fa 56 ea 01
    40 03 04 c0 00 02 01
    40 05 04 00 00 00 64
    c0 08 08 fd e9 00 64 ff ff ff 01
    18 c6 33 64
    10 0a 01";

#[test]
fn update_ipv4() {
    let expected = Update {
        withdrawn: vec![],
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Sequence(vec![65001, 4_200_000_001])],
            }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            local_pref: Some(100),
            communities: vec![(65001 << 16) | 100, 0xffff_ff01],
            ..PathAttributes::default()
        },
        nlri: vec![net("198.51.100.0/24"), net("10.1.0.0/16")],
    };
    round_trip(&hex(UPDATE_IPV4), FOUR, Message::Update(expected));
}

/// MP_REACH_NLRI for IPv6 unicast with a global and a link-local next hop.
const UPDATE_IPV6: &str = "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 5c 02
    00 00
    00 45
    40 01 01 00
    40 02 06 02 01 00 00 fd e9
    80 0e 35 00 02 01 20
        20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01
        fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 01
        00
        30 20 01 0d b8 00 0a
        40 20 01 0d b8 00 0b 00 01";

#[test]
fn update_mp_reach_ipv6() {
    let expected = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Sequence(vec![65001])],
            }),
            mp_reach: Some(MpReach {
                family: AfiSafi::IPV6_UNICAST,
                next_hops: vec![
                    IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()),
                    IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap()),
                ],
                nlri: vec![net("2001:db8:a::/48"), net("2001:db8:b:1::/64")],
            }),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    round_trip(&hex(UPDATE_IPV6), FOUR, Message::Update(expected));
}

#[test]
fn update_withdrawals() {
    let bytes = hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 20 02
        00 09 18 c6 33 64 20 c0 00 02 07
        00 00");
    let expected = Update {
        withdrawn: vec![net("198.51.100.0/24"), net("192.0.2.7/32")],
        ..Update::default()
    };
    round_trip(&bytes, TWO, Message::Update(expected));

    let bytes = update_with("80 0f 0c 00 02 01 40 20 01 0d b8 00 0b 00 01", "");
    let expected = Update {
        attributes: PathAttributes {
            mp_unreach: Some(MpUnreach {
                family: AfiSafi::IPV6_UNICAST,
                withdrawn: vec![net("2001:db8:b:1::/64")],
            }),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    round_trip(&bytes, FOUR, Message::Update(expected));
}

#[test]
fn end_of_rib_both_kinds() {
    let ipv4 = hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 17 02 00 00 00 00");
    let marker = Update::end_of_rib(AfiSafi::IPV4_UNICAST);
    round_trip(&ipv4, FOUR, Message::Update(marker.clone()));
    assert_eq!(marker.end_of_rib_family(), Some(AfiSafi::IPV4_UNICAST));

    let ipv6 = hex(
        "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 1d 02 00 00 00 06 80 0f 03 00 02 01",
    );
    let marker = Update::end_of_rib(AfiSafi::IPV6_UNICAST);
    round_trip(&ipv6, FOUR, Message::Update(marker.clone()));
    assert_eq!(
        decoded_update(&ipv6, TWO).end_of_rib_family(),
        Some(AfiSafi::IPV6_UNICAST)
    );
}

#[test]
fn keepalive_notification_route_refresh() {
    round_trip(
        &hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 13 04"),
        TWO,
        Message::Keepalive,
    );
    round_trip(
        &hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 15 03 06 02"),
        TWO,
        Message::Notification(Notification::cease(
            notification::cease::ADMINISTRATIVE_SHUTDOWN,
        )),
    );
    round_trip(
        &hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 1a 03 03 05 40 01 02 00 00"),
        TWO,
        Message::Notification(Notification::new(3, 5, vec![0x40, 0x01, 0x02, 0x00, 0x00])),
    );
    round_trip(
        &hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 17 05 00 02 00 01"),
        FOUR,
        Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV6_UNICAST,
        }),
    );
}

/// A 2-octet AS session: AS_PATH has AS_TRANS, AS4_PATH the real tail and
/// AS4_AGGREGATOR the real aggregator (RFC 6793 section 4.2.3).
#[test]
fn as4_path_and_as4_aggregator_are_merged() {
    let bytes = update_with(
        "40 01 01 02
         40 02 08 02 03 fd e9 5b a0 fc 00
         40 03 04 c0 00 02 01
         c0 07 06 5b a0 c0 00 02 09
         c0 11 0a 02 02 fa 56 ea 01 00 00 fc 00
         c0 12 08 fa 56 ea 02 c0 00 02 09",
        "18 cb 00 71",
    );
    let expected = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Sequence(vec![65001, 4_200_000_001, 64512])],
            }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            aggregator: Some(Aggregator {
                asn: 4_200_000_002,
                address: Ipv4Addr::new(192, 0, 2, 9),
            }),
            ..PathAttributes::default()
        },
        nlri: vec![net("203.0.113.0/24")],
        ..Update::default()
    };
    // Written back as received: AS_TRANS in AS_PATH and AGGREGATOR, AS4_PATH
    // from the first 4-octet AS on.
    round_trip(&bytes, TWO, Message::Update(expected.clone()));
    let again = bytes;
    // On a 4-octet session the same route needs no AS4_* attributes.
    let four = encode(&Message::Update(expected.clone()), FOUR);
    assert_eq!(decoded_update(&four, FOUR), expected);
    assert!(four.len() < again.len());
}

/// A 4-octet session ignores AS4_PATH and AS4_AGGREGATOR (RFC 6793 section
/// 4.1); a 2-octet one discards malformed ones instead of resetting (section 6).
#[test]
fn as4_attributes_ignored_or_discarded() {
    let bytes = update_with(
        "40 01 01 00
         40 02 06 02 01 00 00 fd e9
         40 03 04 c0 00 02 01
         c0 11 06 02 01 fa 56 ea 01",
        "18 cb 00 71",
    );
    let u = decoded_update(&bytes, FOUR);
    assert_eq!(
        u.attributes.as_path,
        Some(AsPath {
            segments: vec![AsSegment::Sequence(vec![65001])]
        })
    );
    assert!(u.attributes.unknown.is_empty());

    // 2-octet: AS4_PATH with a zero-length segment, AS4_AGGREGATOR too short.
    let bytes = update_with(
        "40 01 01 00
         40 02 04 02 01 5b a0
         40 03 04 c0 00 02 01
         c0 07 06 5b a0 c0 00 02 09
         c0 11 02 02 00
         c0 12 04 fa 56 ea 02",
        "18 cb 00 71",
    );
    let u = decoded_update(&bytes, TWO);
    assert_eq!(
        u.attributes.as_path,
        Some(AsPath {
            segments: vec![AsSegment::Sequence(vec![u32::from(AS_TRANS)])]
        })
    );
    assert_eq!(
        u.attributes.aggregator.map(|a| a.asn),
        Some(u32::from(AS_TRANS))
    );
    // AS4_PATH with wrong flags (well-known): discarded as well.
    let bytes = update_with(
        "40 01 01 00
         40 02 04 02 01 5b a0
         40 03 04 c0 00 02 01
         40 11 06 02 01 fa 56 ea 01",
        "",
    );
    assert_eq!(
        decoded_update(&bytes, TWO)
            .attributes
            .as_path
            .map(|p| p.length()),
        Some(1)
    );
}

/// Unknown optional attributes are kept with their flags (Extended Length
/// cleared); MP attributes of other families are kept raw.
#[test]
fn unknown_attributes_are_kept() {
    let bytes = update_with(
        "40 01 01 00
         40 02 00
         40 03 04 c0 00 02 01
         e0 20 0c 00 00 fd e9 00 00 00 01 00 00 00 02
         90 0e 00 05 00 01 80 00 00",
        "18 cb 00 71",
    );
    let u = decoded_update(&bytes, FOUR);
    assert_eq!(u.attributes.as_path, Some(AsPath::default()));
    assert_eq!(
        u.attributes.unknown,
        vec![
            RawAttribute {
                flags: 0xe0,
                type_code: 32,
                value: hex("00 00 fd e9 00 00 00 01 00 00 00 02"),
            },
            RawAttribute {
                flags: 0x80,
                type_code: 14,
                value: hex("00 01 80 00 00")
            },
        ]
    );
    assert_eq!(u.attributes.mp_reach, None);
    // Written back in the order received (extended length only when needed).
    let again = encode(&Message::Update(u.clone()), FOUR);
    assert_eq!(decoded_update(&again, FOUR), u);
}

#[test]
fn extended_length_only_past_255_bytes() {
    let communities: Vec<u32> = (0..64).collect(); // 256 bytes
    let u = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            communities,
            ..PathAttributes::default()
        },
        nlri: vec![net("10.0.0.0/8")],
        ..Update::default()
    };
    let bytes = encode(&Message::Update(u.clone()), FOUR);
    let at = bytes
        .windows(2)
        .position(|w| w == [0xd0, 0x08])
        .expect("COMMUNITIES with extended length");
    assert_eq!(&bytes[at + 2..at + 4], &[0x01, 0x00]);
    assert_eq!(decoded_update(&bytes, FOUR), u);
    // Read with the Extended Length bit even when short.
    let bytes = update_with("50 01 00 01 00 40 02 00 40 03 04 c0 00 02 01", "08 0a");
    assert_eq!(
        decoded_update(&bytes, FOUR).attributes.origin,
        Some(Origin::Igp)
    );
}

#[test]
fn prefixes_are_normalized() {
    // A /17 with stray host bits reads as its network; /0 has no octets.
    let bytes = update_with(
        "40 01 01 00 40 02 00 40 03 04 c0 00 02 01",
        "11 0a 01 ff 00",
    );
    let u = decoded_update(&bytes, FOUR);
    assert_eq!(u.nlri, vec![net("10.1.128.0/17"), net("0.0.0.0/0")]);
    // Encoded with the fewest octets, host bits cleared.
    let mut sloppy = u.clone();
    sloppy.nlri = vec![IpNetwork::V4("10.1.255.1/17".parse().unwrap())];
    assert!(encode(&Message::Update(sloppy), FOUR).ends_with(&hex("11 0a 01 80")));
}

// Malformed messages: RFC 4271 section 6.1, Message Header errors.

#[test]
fn header_errors() {
    let mut bad_marker = hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 13 04");
    bad_marker[3] = 0xfe;
    fails(
        &bad_marker,
        TWO,
        code::MESSAGE_HEADER,
        header::CONNECTION_NOT_SYNCHRONIZED,
        &[],
    );

    let with_length = |len: u16, message_type: u8| {
        let mut b = MARKER.to_vec();
        b.extend_from_slice(&len.to_be_bytes());
        b.push(message_type);
        b.resize(usize::from(len).max(HEADER_LEN), 0);
        b
    };
    for (len, message_type) in [
        (18, 4),
        (4097, 2),
        (28, 1), // OPEN < 29
        (22, 2), // UPDATE < 23
        (20, 3), // NOTIFICATION < 21
        (20, 4), // KEEPALIVE != 19
        (22, 5), // ROUTE-REFRESH != 23
        (24, 5),
    ] {
        fails(
            &with_length(len, message_type),
            TWO,
            code::MESSAGE_HEADER,
            header::BAD_MESSAGE_LENGTH,
            &len.to_be_bytes(),
        );
        assert!(decode_header(&with_length(len, message_type)).is_err());
    }
    fails(
        &with_length(19, 6),
        TWO,
        code::MESSAGE_HEADER,
        header::BAD_MESSAGE_TYPE,
        &[6],
    );
    fails(
        &with_length(19, 0),
        TWO,
        code::MESSAGE_HEADER,
        header::BAD_MESSAGE_TYPE,
        &[0],
    );

    // The buffer disagrees with the length field.
    let mut long = hex("ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 13 04");
    long.push(0);
    fails(
        &long,
        TWO,
        code::MESSAGE_HEADER,
        header::BAD_MESSAGE_LENGTH,
        &[0, 19],
    );
    // Fewer bytes than a header.
    assert!(decode(&[0xff; 10], TWO).is_err());
    assert_eq!(
        decode_header(&hex(
            "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 00 1d 02 00 00"
        )),
        Ok(Header {
            length: 29,
            message_type: 2
        })
    );
}

// RFC 4271 section 6.2, OPEN message errors.

#[test]
fn open_errors() {
    let open = |body: &str| message(1, body);
    fails(
        &open("03 fd e9 00 5a 0a 00 00 01 00"),
        TWO,
        code::OPEN_MESSAGE,
        open::UNSUPPORTED_VERSION_NUMBER,
        &[0, 4],
    );
    fails(
        &open("04 fd e9 00 01 0a 00 00 01 00"),
        TWO,
        code::OPEN_MESSAGE,
        open::UNACCEPTABLE_HOLD_TIME,
        &[],
    );
    fails(
        &open("04 fd e9 00 02 0a 00 00 01 00"),
        TWO,
        code::OPEN_MESSAGE,
        open::UNACCEPTABLE_HOLD_TIME,
        &[],
    );
    for id in ["00 00 00 00", "e0 00 00 05", "ff ff ff ff"] {
        fails(
            &open(&format!("04 fd e9 00 5a {id} 00")),
            TWO,
            code::OPEN_MESSAGE,
            open::BAD_BGP_IDENTIFIER,
            &[],
        );
    }
    // Optional parameter type 1 (authentication, deprecated).
    fails(
        &open("04 fd e9 00 5a 0a 00 00 01 04 01 02 00 00"),
        TWO,
        code::OPEN_MESSAGE,
        open::UNSUPPORTED_OPTIONAL_PARAMETER,
        &[],
    );
    for malformed in [
        "04 fd e9 00 5a 0a 00 00 01 05 02 06 01 04 00", // parameter overruns the parameters
        "04 fd e9 00 5a 0a 00 00 01 04 02 03 01 04 00", // capability overruns its parameter
        "04 fd e9 00 5a 0a 00 00 01 03 02 01 01",       // capability header cut short
        "04 fd e9 00 5a 0a 00 00 01 05 02 03 01 01 00", // MP capability of length 1
        "04 fd e9 00 5a 0a 00 00 01 05 02 03 02 01 00", // route refresh with a value
        "04 fd e9 00 5a 0a 00 00 01 07 02 05 40 03 00 78 00", // GR family cut short
        "04 fd e9 00 5a 0a 00 00 01 06 02 04 41 02 00 01", // 4-octet AS of 2 bytes
        "04 fd e9 00 5a 0a 00 00 01 02 02 00 00",       // bytes past the parameters
        "04 fd e9 00 5a 0a 00 00 01 05 02 00",          // parameters length past the message
    ] {
        fails(
            &open(malformed),
            TWO,
            code::OPEN_MESSAGE,
            open::UNSPECIFIC,
            &[],
        );
    }
}

// RFC 4271 section 6.3, UPDATE message errors.

const ORIGIN_IGP: &str = "40 01 01 00";
const AS_PATH_4: &str = "40 02 06 02 01 00 00 fd e9";
const NEXT_HOP: &str = "40 03 04 c0 00 02 01";

#[test]
fn update_length_errors_are_malformed_attribute_lists() {
    // Withdrawn Routes Length past the message.
    fails(
        &message(2, "00 05 18 0a 00 00"),
        FOUR,
        code::UPDATE_MESSAGE,
        update::MALFORMED_ATTRIBUTE_LIST,
        &[],
    );
    // Total Path Attribute Length past the message.
    fails(
        &message(2, "00 00 00 08 40 01 01 00"),
        FOUR,
        code::UPDATE_MESSAGE,
        update::MALFORMED_ATTRIBUTE_LIST,
        &[],
    );
    // An attribute's length past the attributes.
    fails(
        &update_with("40 01 05 00", ""),
        FOUR,
        code::UPDATE_MESSAGE,
        update::MALFORMED_ATTRIBUTE_LIST,
        &[],
    );
    // The same attribute twice.
    fails(
        &update_with(&format!("{ORIGIN_IGP} {ORIGIN_IGP}"), ""),
        FOUR,
        code::UPDATE_MESSAGE,
        update::MALFORMED_ATTRIBUTE_LIST,
        &[],
    );
}

#[test]
fn update_attribute_flags_error() {
    for attribute in [
        "c0 01 01 00",          // ORIGIN marked optional
        "00 01 01 00",          // ORIGIN marked non-transitive
        "60 01 01 00",          // ORIGIN marked partial
        "c0 04 04 00 00 00 01", // MED marked transitive
        "a0 09 04 0a 00 00 01", // ORIGINATOR_ID marked partial
        "40 08 04 00 00 00 01", // COMMUNITIES marked well-known
        "c0 0e 03 00 02 01",    // MP_REACH_NLRI marked transitive
    ] {
        fails(
            &update_with(attribute, ""),
            FOUR,
            code::UPDATE_MESSAGE,
            update::ATTRIBUTE_FLAGS_ERROR,
            &hex(attribute),
        );
    }
}

#[test]
fn update_attribute_length_error() {
    for (ctx, attribute) in [
        (FOUR, "40 01 02 00 00"),                  // ORIGIN
        (FOUR, "40 03 03 c0 00 02"),               // NEXT_HOP
        (FOUR, "80 04 05 00 00 00 00 01"),         // MULTI_EXIT_DISC
        (FOUR, "40 05 02 00 64"),                  // LOCAL_PREF
        (FOUR, "40 06 01 00"),                     // ATOMIC_AGGREGATE
        (TWO, "c0 07 08 00 00 fd e9 c0 00 02 09"), // AGGREGATOR, 2-octet session
        (FOUR, "c0 07 06 fd e9 c0 00 02 09"),      // AGGREGATOR, 4-octet session
        (FOUR, "c0 08 05 00 00 00 01 02"),         // COMMUNITIES
        (FOUR, "80 09 05 0a 00 00 01 00"),         // ORIGINATOR_ID
        (FOUR, "80 0a 06 0a 00 00 01 0a 00"),      // CLUSTER_LIST
        (FOUR, "50 01 00 02 00 00"),               // ORIGIN, extended length
    ] {
        fails(
            &update_with(attribute, ""),
            ctx,
            code::UPDATE_MESSAGE,
            update::ATTRIBUTE_LENGTH_ERROR,
            &hex(attribute),
        );
    }
}

#[test]
fn update_unrecognized_well_known_attribute() {
    let attribute = "40 63 02 ab cd";
    fails(
        &update_with(attribute, ""),
        FOUR,
        code::UPDATE_MESSAGE,
        update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
        &hex(attribute),
    );
}

#[test]
fn update_missing_well_known_attribute() {
    let cases = [
        (format!("{AS_PATH_4} {NEXT_HOP}"), attribute_type::ORIGIN),
        (format!("{ORIGIN_IGP} {NEXT_HOP}"), attribute_type::AS_PATH),
        (
            format!("{ORIGIN_IGP} {AS_PATH_4}"),
            attribute_type::NEXT_HOP,
        ),
    ];
    for (attributes, missing) in cases {
        fails(
            &update_with(&attributes, "18 cb 00 71"),
            FOUR,
            code::UPDATE_MESSAGE,
            update::MISSING_WELL_KNOWN_ATTRIBUTE,
            &[missing],
        );
        // Without NLRI nothing is mandatory.
        assert!(decode(&update_with(&attributes, ""), FOUR).is_ok());
    }
    // MP_REACH_NLRI needs ORIGIN and AS_PATH but not NEXT_HOP (RFC 4760).
    let mp_reach = "80 0e 0d 00 01 01 04 c0 00 02 01 00 18 cb 00 71";
    fails(
        &update_with(&format!("{ORIGIN_IGP} {mp_reach}"), ""),
        FOUR,
        code::UPDATE_MESSAGE,
        update::MISSING_WELL_KNOWN_ATTRIBUTE,
        &[attribute_type::AS_PATH],
    );
    let u = decoded_update(
        &update_with(&format!("{ORIGIN_IGP} {AS_PATH_4} {mp_reach}"), ""),
        FOUR,
    );
    let reach = u.attributes.mp_reach.expect("MP_REACH_NLRI");
    assert_eq!(reach.family, AfiSafi::IPV4_UNICAST);
    assert_eq!(
        reach.next_hops,
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]
    );
    assert_eq!(reach.nlri, vec![net("203.0.113.0/24")]);
}

#[test]
fn update_invalid_origin() {
    let attribute = "40 01 01 03";
    fails(
        &update_with(attribute, ""),
        FOUR,
        code::UPDATE_MESSAGE,
        update::INVALID_ORIGIN_ATTRIBUTE,
        &hex(attribute),
    );
}

#[test]
fn update_invalid_next_hop() {
    for attribute in [
        "40 03 04 00 00 00 00",
        "40 03 04 e0 00 00 05",
        "40 03 04 ff ff ff ff",
    ] {
        fails(
            &update_with(
                &format!("{ORIGIN_IGP} {AS_PATH_4} {attribute}"),
                "18 cb 00 71",
            ),
            FOUR,
            code::UPDATE_MESSAGE,
            update::INVALID_NEXT_HOP_ATTRIBUTE,
            &hex(attribute),
        );
    }
}

/// An invalid NEXT_HOP is only an error when there is IPv4 NLRI to use it.
#[test]
fn update_unused_invalid_next_hop_is_dropped() {
    let mp_reach = "80 0e 1c 00 02 01 10 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 00 30 20 01 0d b8 00 0a";
    let bytes = update_with(
        &format!("{ORIGIN_IGP} {AS_PATH_4} 40 03 04 00 00 00 00 {mp_reach}"),
        "",
    );
    let u = decoded_update(&bytes, FOUR);
    assert_eq!(u.attributes.next_hop, None);
    assert_eq!(
        u.attributes.mp_reach.map(|r| r.nlri),
        Some(vec![net("2001:db8:a::/48")])
    );
}

#[test]
fn update_malformed_as_path() {
    for (ctx, attribute) in [
        (FOUR, "40 02 06 03 01 00 00 fd e9"), // AS_CONFED_SEQUENCE
        (FOUR, "40 02 06 05 01 00 00 fd e9"), // no such segment type
        (FOUR, "40 02 06 02 02 00 00 fd e9"), // segment overruns the attribute
        (FOUR, "40 02 02 02 00"),             // empty segment
        (FOUR, "40 02 01 02"),                // segment header cut short
        (TWO, "40 02 05 02 02 fd e9 00"),     // odd 2-octet ASes
    ] {
        fails(
            &update_with(attribute, ""),
            ctx,
            code::UPDATE_MESSAGE,
            update::MALFORMED_AS_PATH,
            &[],
        );
    }
}

#[test]
fn update_optional_attribute_error() {
    for attribute in [
        "80 0e 02 00 02",                            // MP_REACH_NLRI cut short
        "80 0e 0a 00 02 01 05 20 01 0d b8 00 00",    // IPv6 next hop of 5 bytes
        "80 0e 05 00 02 01 10 20",                   // next hop past the attribute
        "80 0e 0b 00 01 01 04 c0 00 02 01 00 21 0a", // /33 in IPv4 NLRI
        "80 0e 05 00 01 01 04 c0",                   // IPv4 next hop cut short
        "80 0f 02 00 02",                            // MP_UNREACH_NLRI cut short
        "80 0f 04 00 02 01 81",                      // IPv6 prefix of 129 bits
    ] {
        fails(
            &update_with(&format!("{ORIGIN_IGP} {AS_PATH_4} {attribute}"), ""),
            FOUR,
            code::UPDATE_MESSAGE,
            update::OPTIONAL_ATTRIBUTE_ERROR,
            &hex(attribute),
        );
    }
}

#[test]
fn update_invalid_network_field() {
    let attributes = format!("{ORIGIN_IGP} {AS_PATH_4} {NEXT_HOP}");
    for nlri in ["21 0a 00 00 00 00", "18 0a 00", "20"] {
        fails(
            &update_with(&attributes, nlri),
            FOUR,
            code::UPDATE_MESSAGE,
            update::INVALID_NETWORK_FIELD,
            &[],
        );
    }
    // In the withdrawn routes too.
    fails(
        &message(2, "00 02 21 0a 00 00"),
        FOUR,
        code::UPDATE_MESSAGE,
        update::INVALID_NETWORK_FIELD,
        &[],
    );
}
