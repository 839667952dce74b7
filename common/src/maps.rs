//! Map layouts shared by the eBPF programs and userspace.
//!
//! These types are the ABI of maps pinned on bpffs, which outlive the agent
//! and the programs that created them: changing a size or a field's meaning
//! requires a migration (or removing the pins), so fields are explicit and
//! reserved room is documented.

/// Name of the tc classifier attached at the ingress of each pod's host-side
/// veth (so it sees the packets the pod sends).
pub const POD_INGRESS_PROGRAM: &str = "weft_pod_ingress";

/// Name (and pin file name) of the endpoint map: host veth ifindex → [`EndpointInfo`].
pub const ENDPOINTS_MAP: &str = "WEFT_ENDPOINTS";
/// Capacity of [`ENDPOINTS_MAP`]: pods on one node, with room to spare.
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;

/// Name (and pin file name) of the per-CPU counter array, indexed by
/// [`crate::verdict::Counter`], values `u64`.
pub const COUNTERS_MAP: &str = "WEFT_COUNTERS";

/// Key of [`ENDPOINTS_MAP`]: the ifindex of the pod's host-side veth, the
/// interface the packets from the pod arrive on (`skb->ifindex` at tc ingress).
pub type EndpointKey = u32;

/// What the dataplane knows about one pod endpoint, keyed by its host veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The pod's IPv4 address as the four octets on the wire
    /// (`Ipv4Addr::octets()`), i.e. network byte order; compared byte for
    /// byte with the packet's source address, so no byte-order conversion
    /// happens anywhere.
    pub ipv4: [u8; 4],
    /// Reserved for per-endpoint behaviour (policy, encapsulation) so the
    /// value size of the pinned map does not change when it arrives. No flag
    /// is defined yet: writers set 0, readers ignore it.
    pub flags: u32,
}

impl EndpointInfo {
    /// An endpoint whose only allowed source is `ipv4` (octets in wire order).
    pub const fn new(ipv4: [u8; 4]) -> Self {
        Self { ipv4, flags: 0 }
    }
}

// SAFETY: `#[repr(C)]`, only integer fields, no padding (4 + 4 bytes), so
// every bit pattern is valid and aya may copy it to and from the kernel.
#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointInfo {}

// The layout is an ABI: fail the build, not the map adoption, if it drifts.
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 8);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);
