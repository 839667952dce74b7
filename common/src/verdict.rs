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
            Verdict::Drop(DropReason::UnknownEndpoint) => Counter::DropUnknownEndpoint,
            Verdict::Drop(DropReason::SpoofedSource) => Counter::DropSpoofedSource,
            Verdict::Drop(DropReason::Malformed) => Counter::DropMalformed,
            Verdict::Drop(DropReason::UnsupportedProtocol) => Counter::DropUnsupportedProtocol,
        }
    }

    pub const fn is_pass(self) -> bool {
        matches!(self, Verdict::Pass(_))
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
}

/// Number of counters, i.e. entries of the counter map.
pub const COUNTER_COUNT: usize = 6;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT] = [
        Counter::Pass,
        Counter::ArpPass,
        Counter::DropUnknownEndpoint,
        Counter::DropSpoofedSource,
        Counter::DropMalformed,
        Counter::DropUnsupportedProtocol,
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
}
