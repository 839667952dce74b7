//! What happens to a packet, and the counter that records it.

/// Why a packet was allowed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// IPv4 from the endpoint's own address.
    OwnSource,
    /// ARP, which the pod needs to reach its gateway (169.254.1.1).
    Arp,
}

/// Why a packet was dropped. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The interface has no endpoint entry: fail closed (a veth whose pod is
    /// not (yet, or any more) registered sends nothing).
    UnknownEndpoint,
    /// IPv4 whose source is not the endpoint's address.
    SpoofedSource,
    /// A frame too short for its headers, or an IPv4 header that is not one
    /// (wrong version, IHL below 5, longer than the frame).
    Malformed,
    /// IPv6 or another ethertype: pods here have IPv4 only.
    UnsupportedProtocol,
    /// IP-in-IP (or, in mode `vxlan`, VXLAN) from an address that is not a
    /// cluster node: nobody outside the cluster may inject packets into the
    /// pod network.
    NotFromNode,
    /// A fragment of an IP-in-IP packet. Weft never fragments what it
    /// encapsulates (too big is refused at the sender), tc runs before the
    /// kernel reassembles, and a fragment cannot be decapsulated alone.
    Fragment,
    /// An IP-in-IP header whose checksum is wrong (tc runs before the
    /// kernel's own check, and decapsulating would skip it).
    BadChecksum,
    /// The node config map holds an encapsulation mode this build does not
    /// know: pod traffic is refused rather than leaked unencapsulated.
    BadConfig,
}

impl DropReason {
    /// The counter of this drop reason.
    pub const fn counter(self) -> Counter {
        match self {
            DropReason::UnknownEndpoint => Counter::DropUnknownEndpoint,
            DropReason::SpoofedSource => Counter::DropSpoofedSource,
            DropReason::Malformed => Counter::DropMalformed,
            DropReason::UnsupportedProtocol => Counter::DropUnsupportedProtocol,
            DropReason::NotFromNode => Counter::DropNotFromNode,
            DropReason::Fragment => Counter::DropFragment,
            DropReason::BadChecksum => Counter::DropBadChecksum,
            DropReason::BadConfig => Counter::DropBadConfig,
        }
    }
}

/// The decision for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(PassReason),
    Drop(DropReason),
}

impl Verdict {
    /// The counter this verdict bumps.
    pub const fn counter(self) -> Counter {
        match self {
            Verdict::Pass(PassReason::OwnSource) => Counter::Pass,
            Verdict::Pass(PassReason::Arp) => Counter::ArpPass,
            Verdict::Drop(reason) => reason.counter(),
        }
    }

    pub const fn is_pass(self) -> bool {
        matches!(self, Verdict::Pass(_))
    }
}

/// Why the uplink programs leave a packet to the kernel untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkPassReason {
    /// Not IPv4 (ARP, IPv6, VLAN...): the node's own business.
    NotIpv4,
    /// Egress: the destination is in no remote node's pod CIDR (the node's
    /// own traffic, the underlay, the outside world).
    NotPodDestination,
    /// Egress: the route points at this node itself (its own pod CIDR).
    LocalNode,
    /// Egress: the node encapsulates nothing here (`none`: native routing;
    /// `vxlan`: the kernel vxlan device did it already).
    NoEncapsulation,
    /// Egress with `crossSubnet`: the remote node shares the underlay
    /// subnet, so the packet is routed natively.
    SameSubnet,
    /// Ingress: not IP-in-IP (nor, in mode `vxlan`, UDP to the VXLAN port).
    NotIpip,
    /// Ingress, mode `vxlan`: VXLAN from a cluster node, for the kernel's
    /// vxlan device.
    VxlanFromNode,
    /// Ingress: IP-in-IP addressed to another host (seen in promiscuous
    /// mode); the kernel drops it as not ours.
    NotForThisNode,
}

/// The decision of an uplink program for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkVerdict {
    /// Leave the packet to the kernel as it is.
    Pass(UplinkPassReason),
    /// Insert `header` (IP-in-IP, from `outer_src` to `outer_dst`) between
    /// the Ethernet header and the IPv4 packet.
    Encapsulate {
        outer_src: [u8; 4],
        outer_dst: [u8; 4],
        header: [u8; 20],
    },
    /// Remove the `outer_header_len` bytes of the outer IPv4 header after the
    /// Ethernet header; the packet came from the node `from_node`.
    Decapsulate {
        outer_header_len: u8,
        from_node: [u8; 4],
    },
    /// Egress: encapsulated, the packet would exceed the uplink MTU. Nothing
    /// is sent; when `dont_fragment` is set the sender gets ICMP
    /// "fragmentation needed" with next-hop MTU `mtu` (what fits inside the
    /// tunnel), as the kernel's own tunnels do; without DF it is dropped
    /// (tc cannot fragment, and Weft never sends fragments through a tunnel).
    TooBig {
        mtu: u16,
        dont_fragment: bool,
    },
    Drop(DropReason),
}

impl UplinkVerdict {
    /// The counter this verdict bumps.
    pub const fn counter(self) -> Counter {
        match self {
            UplinkVerdict::Pass(_) => Counter::UplinkPass,
            UplinkVerdict::Encapsulate { .. } => Counter::Encapsulate,
            UplinkVerdict::Decapsulate { .. } => Counter::Decapsulate,
            UplinkVerdict::TooBig { .. } => Counter::DropTooBig,
            UplinkVerdict::Drop(reason) => reason.counter(),
        }
    }
}

/// Index into the per-CPU counter map. The discriminants are the map's ABI
/// (stable across releases: append, never renumber).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Pass = 0,
    ArpPass = 1,
    DropUnknownEndpoint = 2,
    DropSpoofedSource = 3,
    DropMalformed = 4,
    DropUnsupportedProtocol = 5,
    // Issue #4, the uplink. Growing the list changes the pinned counter
    // map's max_entries: a node upgrading must drop the old pin.
    Encapsulate = 6,
    Decapsulate = 7,
    UplinkPass = 8,
    DropTooBig = 9,
    DropNotFromNode = 10,
    DropFragment = 11,
    DropBadChecksum = 12,
    DropBadConfig = 13,
    /// Decapsulated and handed straight to a local pod's veth
    /// (`bpf_redirect_peer`), bypassing the node's IP forwarding. It
    /// replaces [`Counter::Decapsulate`] for that packet: every packet
    /// bumps exactly one counter, so IP-in-IP decapsulated in total is
    /// `decapsulate + redirect`, and `decapsulate` alone is what the stack
    /// forwarded.
    Redirect = 14,
    // Issue #10, policy. Per IPv4 packet the policy hooks bump one
    // conntrack counter, and one policy counter per direction they asked
    // (a packet passing on a tracked connection asks none).
    /// A packet with no live connection entry, checked by policy.
    ConntrackNew = 15,
    /// A packet of a tracked connection (either way), including its first
    /// packet after a policy change, which is checked again.
    ConntrackEstablished = 16,
    /// An ICMP error about a tracked connection.
    ConntrackRelated = 17,
    /// Dropped by the tracker (TCP flags no stack sends), or a header the
    /// tracker cannot read (judged by policy without ports).
    ConntrackInvalid = 18,
    /// Nothing to track it by (a later fragment, ICMP other than echo and
    /// errors): policy decides it alone.
    ConntrackUntracked = 19,
    /// A packet of a connection the current policy denied: dropped without
    /// a policy lookup.
    ConntrackDenied = 20,
    PolicyEgressAllowed = 21,
    PolicyEgressDenied = 22,
    PolicyIngressAllowed = 23,
    PolicyIngressDenied = 24,
    /// Not IPv4 (ARP to the pod, say) at a policy hook: nothing to check.
    PolicyNotIpv4 = 25,
}

/// Number of counters, i.e. entries of the counter map.
pub const COUNTER_COUNT: usize = 26;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT] = [
        Counter::Pass,
        Counter::ArpPass,
        Counter::DropUnknownEndpoint,
        Counter::DropSpoofedSource,
        Counter::DropMalformed,
        Counter::DropUnsupportedProtocol,
        Counter::Encapsulate,
        Counter::Decapsulate,
        Counter::UplinkPass,
        Counter::DropTooBig,
        Counter::DropNotFromNode,
        Counter::DropFragment,
        Counter::DropBadChecksum,
        Counter::DropBadConfig,
        Counter::Redirect,
        Counter::ConntrackNew,
        Counter::ConntrackEstablished,
        Counter::ConntrackRelated,
        Counter::ConntrackInvalid,
        Counter::ConntrackUntracked,
        Counter::ConntrackDenied,
        Counter::PolicyEgressAllowed,
        Counter::PolicyEgressDenied,
        Counter::PolicyIngressAllowed,
        Counter::PolicyIngressDenied,
        Counter::PolicyNotIpv4,
    ];

    /// The counter's index in the counter map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The stable name operators see (weftctl, /metrics labels).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Pass => "pass",
            Counter::ArpPass => "pass_arp",
            Counter::DropUnknownEndpoint => "drop_unknown_endpoint",
            Counter::DropSpoofedSource => "drop_spoofed_source",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropUnsupportedProtocol => "drop_unsupported_protocol",
            Counter::Encapsulate => "encapsulate",
            Counter::Decapsulate => "decapsulate",
            Counter::UplinkPass => "pass_uplink",
            Counter::DropTooBig => "drop_too_big",
            Counter::DropNotFromNode => "drop_not_from_node",
            Counter::DropFragment => "drop_fragment",
            Counter::DropBadChecksum => "drop_bad_checksum",
            Counter::DropBadConfig => "drop_bad_config",
            Counter::Redirect => "redirect",
            Counter::ConntrackNew => "conntrack_new",
            Counter::ConntrackEstablished => "conntrack_established",
            Counter::ConntrackRelated => "conntrack_related",
            Counter::ConntrackInvalid => "conntrack_invalid",
            Counter::ConntrackUntracked => "conntrack_untracked",
            Counter::ConntrackDenied => "conntrack_denied",
            Counter::PolicyEgressAllowed => "policy_egress_allowed",
            Counter::PolicyEgressDenied => "policy_egress_denied",
            Counter::PolicyIngressAllowed => "policy_ingress_allowed",
            Counter::PolicyIngressDenied => "policy_ingress_denied",
            Counter::PolicyNotIpv4 => "policy_not_ipv4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
    }

    #[test]
    fn existing_counters_keep_their_indices_and_names() {
        let abi = [
            (Counter::Pass, 0, "pass"),
            (Counter::ArpPass, 1, "pass_arp"),
            (Counter::DropUnknownEndpoint, 2, "drop_unknown_endpoint"),
            (Counter::DropSpoofedSource, 3, "drop_spoofed_source"),
            (Counter::DropMalformed, 4, "drop_malformed"),
            (
                Counter::DropUnsupportedProtocol,
                5,
                "drop_unsupported_protocol",
            ),
            (Counter::Encapsulate, 6, "encapsulate"),
            (Counter::Decapsulate, 7, "decapsulate"),
            (Counter::UplinkPass, 8, "pass_uplink"),
            (Counter::DropTooBig, 9, "drop_too_big"),
            (Counter::DropNotFromNode, 10, "drop_not_from_node"),
            (Counter::DropFragment, 11, "drop_fragment"),
            (Counter::DropBadChecksum, 12, "drop_bad_checksum"),
            (Counter::DropBadConfig, 13, "drop_bad_config"),
            (Counter::Redirect, 14, "redirect"),
        ];
        for (counter, index, name) in abi {
            assert_eq!((counter.index(), counter.name()), (index, name));
        }
    }

    #[test]
    fn every_drop_reason_has_its_own_counter() {
        let reasons = [
            DropReason::UnknownEndpoint,
            DropReason::SpoofedSource,
            DropReason::Malformed,
            DropReason::UnsupportedProtocol,
            DropReason::NotFromNode,
            DropReason::Fragment,
            DropReason::BadChecksum,
            DropReason::BadConfig,
        ];
        for (i, r) in reasons.iter().enumerate() {
            assert_eq!(Verdict::Drop(*r).counter(), r.counter());
            assert_eq!(UplinkVerdict::Drop(*r).counter(), r.counter());
            for other in &reasons[i + 1..] {
                assert_ne!(r.counter(), other.counter());
            }
        }
        let too_big = UplinkVerdict::TooBig {
            mtu: 1480,
            dont_fragment: true,
        };
        assert_eq!(too_big.counter().name(), "drop_too_big");
    }
}
