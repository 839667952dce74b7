//! The frames `wire` builds, byte for byte as the hand-written builders
//! before etherparse wrote them: the differential and lab tests compare
//! the twin's bytes with the kernel's, so moving to a library must not
//! move a byte.

use weft_common::ipv4::Ipv4Repr;
use weft_twin::wire::{self, Arp, IcmpErrorKind, Mac, Probe};

const POD: [u8; 4] = [10, 244, 1, 5];
const FAR: [u8; 4] = [10, 244, 2, 7];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every builder the twin's nodes and the tests use, on fixed inputs.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let request = Arp {
        operation: Arp::REQUEST,
        sender_mac: Mac::pod(POD),
        sender_ip: POD,
        target_mac: Mac([0; 6]),
        target_ip: [169, 254, 1, 1],
    };
    let repr = Ipv4Repr {
        tos: 0xc0,
        ..wire::host_repr([198, 18, 0, 1], POD, 1, 0x1234, false)
    };
    vec![
        ("udp probe", Probe::udp(POD, FAR, 53).packet()),
        (
            "udp probe 100",
            Probe::udp(POD, FAR, 53).with_len(100).packet(),
        ),
        ("tcp probe", Probe::tcp(POD, FAR, 80).packet()),
        (
            "tcp probe 90 no DF",
            Probe::tcp(POD, FAR, 80)
                .with_len(90)
                .with_df(false)
                .packet(),
        ),
        ("ping", Probe::ping(POD, FAR).packet()),
        ("ping 99", Probe::ping(POD, FAR).with_len(99).packet()),
        ("arp request", request.frame()),
        ("arp reply", request.reply(Mac::HOST_VETH).frame()),
        (
            "udp no checksum",
            wire::udp_datagram(POD, FAR, 4000, 4789, b"weft vxlan", false),
        ),
        (
            "udp checksum",
            wire::udp_datagram(POD, FAR, 4000, 53, b"weft", true),
        ),
        ("ipv4 tos", wire::ipv4_packet(repr, b"0123456789")),
        (
            "ethernet",
            wire::ethernet_frame(Mac::HOST_VETH, Mac::pod(POD), 0x0800, b"x"),
        ),
    ]
}

/// The bytes the hand-written builders produced (recorded from them
/// before they were replaced).
const HAND_BUILT: &[(&str, &str)] = &[
    (
        "udp probe",
        "4500001c575740004011ca860af401050af402079c40003500084a75",
    ),
    (
        "udp probe 100",
        "45000064575740004011ca3e0af401050af402079c400035005058d0000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f4041424344454647",
    ),
    (
        "tcp probe",
        "45000028575740004006ca850af401050af402079c40005000000001000000005002faf0ff6c0000",
    ),
    (
        "tcp probe 90 no DF",
        "4500005a5757000040060a540af401050af402079c40005000000001000000005002faf0a4c70000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031",
    ),
    (
        "ping",
        "4500001c575740004001ca960af401050af402070800a0a757570001",
    ),
    (
        "ping 99",
        "45000063575740004001ca4f0af401050af402070800afd957570001000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40414243444546",
    ),
    (
        "arp request",
        "ffffffffffff02420af401050806000108000604000102420af401050af40105000000000000a9fe0101",
    ),
    (
        "arp reply",
        "02420af40105eeeeeeeeeeee08060001080006040002eeeeeeeeeeeea9fe010102420af401050af40105",
    ),
    ("udp no checksum", "0fa012b500120000776566742076786c616e"),
    ("udp checksum", "0fa00035000cf93377656674"),
    (
        "ipv4 tos",
        "45c0001e12340000400195dfc61200010af4010530313233343536373839",
    ),
    ("ethernet", "eeeeeeeeeeee02420af40105080078"),
];

/// The ICMP errors about a 1481-byte UDP probe, from the hand-written
/// `icmp_error`.
const HAND_BUILT_ICMP: &[(&str, &str)] = &[
    (
        "frag needed",
        "0304a19e000005c8450005c9575740004011c4d90af401050af402079c40003505b526db000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0001020304050607",
    ),
    (
        "ttl",
        "0b009f6a00000000450005c9575740004011c4d90af401050af402079c40003505b526db000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0001020304050607",
    ),
    (
        "net",
        "0300a76a00000000450005c9575740004011c4d90af401050af402079c40003505b526db000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0001020304050607",
    ),
];

#[test]
fn library_built_frames_are_the_hand_built_bytes() {
    let frames = frames();
    assert_eq!(frames.len(), HAND_BUILT.len());
    for ((name, bytes), (old_name, old)) in frames.iter().zip(HAND_BUILT) {
        assert_eq!(name, old_name);
        assert_eq!(hex(bytes), *old, "{name}");
    }
}

#[test]
fn icmp_errors_are_the_hand_built_bytes() {
    let offending = Probe::udp(POD, FAR, 53).with_len(1481).packet();
    for (kind, (name, old)) in [
        IcmpErrorKind::FragmentationNeeded { mtu: 1480 },
        IcmpErrorKind::TtlExceeded,
        IcmpErrorKind::NetUnreachable,
    ]
    .into_iter()
    .zip(HAND_BUILT_ICMP)
    {
        assert_eq!(hex(&wire::icmp_error(kind, &offending)), *old, "{name}");
    }
}
