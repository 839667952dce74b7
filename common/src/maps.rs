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

// ---------------------------------------------------------------------------
// The uplink: routes to other nodes' pod CIDRs, the set of cluster nodes, and
// this node's own configuration (issue #4).

/// Name of the tc classifier on the uplink's egress (IP-in-IP encapsulation).
pub const UPLINK_EGRESS_PROGRAM: &str = "weft_uplink_egress";
/// Name of the tc classifier on the uplink's ingress (IP-in-IP decapsulation).
pub const UPLINK_INGRESS_PROGRAM: &str = "weft_uplink_ingress";
/// Name of the tc classifier on the vxlan device's egress (mode `vxlan`):
/// the node's way out there, where a pod's egress policy deferred for a
/// Service address is judged (see [`crate::policy`]).
pub const TUNNEL_EGRESS_PROGRAM: &str = "weft_tunnel_egress";

/// Name (and pin file name) of the LPM trie from a remote node's pod CIDR
/// ([`PodCidrKey`]) to that node ([`RemoteNode`]). Map names stay within the
/// kernel's 15 characters.
pub const POD_ROUTES_MAP: &str = "WEFT_POD_ROUTES";
/// Capacity of [`POD_ROUTES_MAP`]: pod CIDRs in the cluster (a node may have
/// several).
pub const POD_ROUTES_MAX_ENTRIES: u32 = 16384;

/// Name (and pin file name) of the hash set of cluster nodes' underlay
/// addresses ([`NodeKey`] → [`NodeEntry`]): the only sources IP-in-IP is
/// accepted from.
pub const NODES_MAP: &str = "WEFT_NODES";
/// Capacity of [`NODES_MAP`].
pub const NODES_MAX_ENTRIES: u32 = 16384;

/// Name (and pin file name) of the one-entry array holding this node's
/// [`NodeConfig`] (key `0u32`).
pub const CONFIG_MAP: &str = "WEFT_CONFIG";

/// Key of [`POD_ROUTES_MAP`], laid out as aya's `lpm_trie::Key<[u8; 4]>` and
/// the kernel's `struct bpf_lpm_trie_key`: the prefix length in bits (host
/// order, 0..=32), then the address in wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodCidrKey {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

impl PodCidrKey {
    pub const fn new(addr: [u8; 4], prefix_len: u32) -> Self {
        Self { prefix_len, addr }
    }

    /// The key to look a single address up with (a /32).
    pub const fn host(addr: [u8; 4]) -> Self {
        Self::new(addr, 32)
    }

    /// `addr` lies in this prefix. A prefix length above 32 matches nothing.
    pub const fn contains(&self, addr: [u8; 4]) -> bool {
        prefix_contains(self.addr, self.prefix_len, addr)
    }
}

/// `addr` lies in `network/prefix_len`; a prefix length above 32 matches nothing.
pub const fn prefix_contains(network: [u8; 4], prefix_len: u32, addr: [u8; 4]) -> bool {
    if prefix_len > 32 {
        return false;
    }
    if prefix_len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - prefix_len);
    (u32::from_be_bytes(network) ^ u32::from_be_bytes(addr)) & mask == 0
}

/// Value of [`POD_ROUTES_MAP`]: the node that owns a pod CIDR.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address (wire-order octets): the outer destination.
    pub underlay_ip: [u8; 4],
    /// Reserved (per-node encapsulation overrides, say); writers set 0.
    pub flags: u32,
}

impl RemoteNode {
    pub const fn new(underlay_ip: [u8; 4]) -> Self {
        Self {
            underlay_ip,
            flags: 0,
        }
    }
}

/// Key of [`NODES_MAP`]: a node's underlay address, wire-order octets.
pub type NodeKey = [u8; 4];

/// Value of [`NODES_MAP`]; presence is what counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeEntry {
    /// Reserved; writers set 0.
    pub flags: u32,
}

/// How pod traffic crosses the underlay. Stored in [`NodeConfig::encap`] as
/// its `u8` value: a map value must stay valid for any bytes, so the field
/// is a plain byte and [`NodeConfig::encap`] decodes it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// Native routing: pod addresses on the underlay. Also what an all-zero
    /// (never written) config means, so an unconfigured node behaves as the
    /// kernel alone would.
    None = 0,
    /// IP-in-IP (protocol 4), done by the uplink programs.
    Ipip = 1,
    /// VXLAN, done by a kernel vxlan device; the uplink programs stay out of it.
    Vxlan = 2,
}

impl Encap {
    /// Every mode, in the order operators see them listed.
    pub const ALL: [Encap; 3] = [Encap::Ipip, Encap::Vxlan, Encap::None];

    pub const fn from_u8(value: u8) -> Option<Encap> {
        match value {
            0 => Some(Encap::None),
            1 => Some(Encap::Ipip),
            2 => Some(Encap::Vxlan),
            _ => None,
        }
    }

    /// Bytes the mode adds to every packet between nodes, which the pod MTU
    /// gives up: the one place this is computed.
    pub const fn overhead(self) -> u16 {
        match self {
            Encap::None => 0,
            Encap::Ipip => crate::uplink::IPIP_OVERHEAD,
            Encap::Vxlan => crate::uplink::VXLAN_OVERHEAD,
        }
    }

    /// The mode's name in flags (`--encap`), manifests and status JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Vxlan => "vxlan",
            Encap::None => "none",
        }
    }
}

impl core::fmt::Display for Encap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mode a node runs when none is asked for: IP-in-IP. (An all-zero
/// config map entry still decodes as [`Encap::None`]: that is about
/// unwritten bytes, this about operators.)
impl Default for Encap {
    fn default() -> Encap {
        Encap::Ipip
    }
}

/// A mode name that is none of [`Encap::ALL`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownEncap;

impl core::fmt::Display for UnknownEncap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("encapsulation must be one of ipip, vxlan, none")
    }
}

impl core::error::Error for UnknownEncap {}

impl core::str::FromStr for Encap {
    type Err = UnknownEncap;
    fn from_str(s: &str) -> Result<Encap, UnknownEncap> {
        Encap::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or(UnknownEncap)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Encap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Encap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Encap, D::Error> {
        let name = <std::string::String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Bit of [`NodeConfig::flags`]: encapsulate only towards nodes outside
/// this node's underlay subnet (`crossSubnet`).
pub const NODE_CONFIG_CROSS_SUBNET: u8 = 1;

/// Bit of [`NodeConfig::flags`]: hand IP-in-IP decapsulated for a local
/// pod straight to the pod (`bpf_fib_lookup`, then `bpf_redirect_peer`)
/// instead of letting the node's stack forward it; see
/// [`crate::redirect`].
pub const NODE_CONFIG_DIRECT_REDIRECT: u8 = 2;

/// Value of [`CONFIG_MAP`]: what the uplink programs need to know about
/// their own node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's underlay address: the outer source, and the only outer
    /// destination decapsulated.
    pub underlay_ip: [u8; 4],
    /// The underlay subnet's network address, for `crossSubnet`.
    pub underlay_subnet: [u8; 4],
    /// The underlay subnet's prefix length (0..=32).
    pub underlay_prefix_len: u8,
    /// An [`Encap`] as `u8`; see [`NodeConfig::encap`].
    pub encap: u8,
    /// [`NODE_CONFIG_CROSS_SUBNET`], [`NODE_CONFIG_DIRECT_REDIRECT`]; other
    /// bits reserved (0).
    pub flags: u8,
    /// TTL of the outer header; 0 means [`NodeConfig::DEFAULT_OUTER_TTL`].
    pub outer_ttl: u8,
    /// The uplink's MTU, the largest packet it sends once encapsulated; 0
    /// means unknown (no check: the kernel's own MTU check still applies).
    pub uplink_mtu: u16,
    /// Reserved; writers set 0.
    pub reserved: u16,
    /// The cluster's Service range (kube-apiserver's
    /// `--service-cluster-ip-range`): where kube-proxy DNATs, so the pod
    /// veth hooks defer a sender's egress policy to after the DNAT (see
    /// [`crate::policy`]). Its network address, with
    /// [`NodeConfig::service_prefix_len`].
    pub service_network: [u8; 4],
    /// The Service range's prefix length; 0: no Service range known (no
    /// address is a Service, egress is judged where the pod sends).
    pub service_prefix_len: u8,
    /// Reserved; writers set 0.
    pub reserved2: [u8; 3],
}

impl NodeConfig {
    /// Outer TTL when the config leaves it 0 (Linux's `ip_default_ttl`).
    pub const DEFAULT_OUTER_TTL: u8 = 64;

    pub const fn new(underlay_ip: [u8; 4], encap: Encap) -> Self {
        Self {
            underlay_ip,
            underlay_subnet: [0; 4],
            underlay_prefix_len: 0,
            encap: encap as u8,
            flags: 0,
            outer_ttl: 0,
            uplink_mtu: 0,
            reserved: 0,
            service_network: [0; 4],
            service_prefix_len: 0,
            reserved2: [0; 3],
        }
    }

    /// The same config with the cluster's Service range `network/prefix_len`
    /// (prefix length 1..=32; 0 means none).
    pub const fn with_service_range(mut self, network: [u8; 4], prefix_len: u8) -> Self {
        self.service_network = network;
        self.service_prefix_len = prefix_len;
        self
    }

    /// `addr` is in the Service range (never, when none is configured).
    #[inline(always)]
    pub const fn is_service(&self, addr: [u8; 4]) -> bool {
        self.service_prefix_len != 0
            && prefix_contains(self.service_network, self.service_prefix_len as u32, addr)
    }

    /// The same config with the uplink's MTU.
    pub const fn with_uplink_mtu(mut self, mtu: u16) -> Self {
        self.uplink_mtu = mtu;
        self
    }

    /// The MTU the egress decision checks a non-GSO packet against:
    /// `u16::MAX` (no check) when unknown.
    pub const fn egress_mtu(&self) -> u16 {
        if self.uplink_mtu == 0 {
            u16::MAX
        } else {
            self.uplink_mtu
        }
    }

    /// The same config with `crossSubnet` on, for the subnet `network/prefix_len`.
    pub const fn with_cross_subnet(mut self, network: [u8; 4], prefix_len: u8) -> Self {
        self.underlay_subnet = network;
        self.underlay_prefix_len = prefix_len;
        self.flags |= NODE_CONFIG_CROSS_SUBNET;
        self
    }

    /// The encapsulation mode; `None` for a value this build does not know
    /// (a config written by a newer agent).
    pub const fn encap(&self) -> Option<Encap> {
        Encap::from_u8(self.encap)
    }

    pub const fn cross_subnet(&self) -> bool {
        self.flags & NODE_CONFIG_CROSS_SUBNET != 0
    }

    /// The same config with the direct redirect to local pods on.
    pub const fn with_direct_redirect(mut self) -> Self {
        self.flags |= NODE_CONFIG_DIRECT_REDIRECT;
        self
    }

    /// Decapsulated packets for local pods go straight to the pod's veth.
    pub const fn direct_redirect(&self) -> bool {
        self.flags & NODE_CONFIG_DIRECT_REDIRECT != 0
    }

    /// `addr` is on this node's underlay subnet (only meaningful with `crossSubnet`).
    pub const fn same_subnet(&self, addr: [u8; 4]) -> bool {
        prefix_contains(self.underlay_subnet, self.underlay_prefix_len as u32, addr)
    }

    pub const fn outer_ttl(&self) -> u8 {
        if self.outer_ttl == 0 {
            Self::DEFAULT_OUTER_TTL
        } else {
            self.outer_ttl
        }
    }
}

// SAFETY (all four): `#[repr(C)]`, only integer and byte-array fields, no
// padding (sizes asserted below), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodCidrKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RemoteNode {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeEntry {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}

const _: () = assert!(core::mem::size_of::<PodCidrKey>() == 8);
const _: () = assert!(core::mem::size_of::<RemoteNode>() == 8);
const _: () = assert!(core::mem::size_of::<NodeEntry>() == 4);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 24);
const _: () = assert!(core::mem::align_of::<NodeConfig>() == 2);

// ---------------------------------------------------------------------------
// Policy (issue #10): selectors are resolved in userspace into numeric
// identities, so a packet costs the same few lookups whatever the number of
// policies, pods or ipBlocks:
//
// 1. the ipcache ([`IPCACHE_MAP`], LPM): the peer's address → its identity
//    (every pod address a /32 of its own; ipBlock prefixes share an
//    identity per membership; no entry means [`IDENTITY_WORLD`]);
// 2. the policy map ([`POLICY_MAP`], LPM) with the exact identity, then, if
//    that allowed nothing, with [`IDENTITY_ANY`] (rules that allow every
//    peer on some ports); see [`policy_decision`].
//
// A key holds endpoint, direction and identity first, then protocol, then
// port, all big-endian, so "every protocol" and "every port" are shorter
// prefixes and a port range a few prefixes.

/// Name (and pin file name) of the LPM trie from an address prefix
/// ([`IpcacheKey`]) to its [`IdentityEntry`].
pub const IPCACHE_MAP: &str = "WEFT_IPCACHE";
/// Capacity of [`IPCACHE_MAP`]: pods in the cluster plus ipBlock prefixes.
pub const IPCACHE_MAX_ENTRIES: u32 = 65536;
/// Name (and pin file name) of the LPM trie from a [`PolicyKey`] to a
/// [`PolicyEntry`].
pub const POLICY_MAP: &str = "WEFT_POLICY";
/// Capacity of [`POLICY_MAP`].
pub const POLICY_MAX_ENTRIES: u32 = 1 << 20;

/// Key of [`IPCACHE_MAP`]: a prefix, laid out as the pod CIDR routes' key.
pub type IpcacheKey = PodCidrKey;

/// Addresses no entry covers: outside the cluster and every ipBlock.
pub const IDENTITY_WORLD: u32 = 0;
/// The local node (its underlay address): kubelet's probes come from it.
pub const IDENTITY_HOST: u32 = 1;
/// In a [`PolicyKey`] only: every peer.
pub const IDENTITY_ANY: u32 = u32::MAX;
/// The first identity allocated to pods and prefix sets; those below are
/// reserved.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;

/// Value of [`IPCACHE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityEntry {
    /// Host order (it is never compared as bytes).
    pub identity: u32,
}

/// [`PolicyKey::direction`]: traffic to the endpoint; the peer is the source.
pub const POLICY_INGRESS: u8 = 0;
/// [`PolicyKey::direction`]: traffic from the endpoint; the peer is the
/// destination.
pub const POLICY_EGRESS: u8 = 1;

/// Bits of a [`PolicyKey`] that cover endpoint and direction: the
/// isolation marker's prefix.
pub const POLICY_PREFIX_DIRECTION: u32 = 40;
/// ... and the peer identity: an entry for every protocol and port.
pub const POLICY_PREFIX_IDENTITY: u32 = 72;
/// ... and the protocol: an entry for every port of it.
pub const POLICY_PREFIX_PROTOCOL: u32 = 80;
/// Every field: one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Key of [`POLICY_MAP`], laid out as the kernel's `bpf_lpm_trie_key`: the
/// prefix length in bits (host order), then 12 bytes of data matched from
/// the first bit. Bits past the prefix are zero in stored keys, so equal
/// rules make equal keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub prefix_len: u32,
    /// The local endpoint's (pod's) address, wire order.
    pub endpoint: [u8; 4],
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`].
    pub direction: u8,
    /// The peer's identity, big-endian.
    pub identity: [u8; 4],
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// The endpoint's port for ingress, the peer's for egress, big-endian;
    /// 0 for protocols without ports.
    pub port: [u8; 2],
}

impl PolicyKey {
    /// The key of `prefix_len` bits over these fields, the rest zeroed.
    pub const fn new(
        prefix_len: u32,
        endpoint: [u8; 4],
        direction: u8,
        identity: u32,
        protocol: u8,
        port: u16,
    ) -> Self {
        let full = Self {
            prefix_len: POLICY_PREFIX_FULL,
            endpoint,
            direction,
            identity: identity.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
        };
        Self::from_data(prefix_len, mask(full.data(), prefix_len))
    }

    /// The key a packet is looked up with: every bit.
    pub const fn lookup(
        endpoint: [u8; 4],
        direction: u8,
        identity: u32,
        protocol: u8,
        port: u16,
    ) -> Self {
        Self::new(
            POLICY_PREFIX_FULL,
            endpoint,
            direction,
            identity,
            protocol,
            port,
        )
    }

    /// The isolation marker of an endpoint's direction: present iff some
    /// policy isolates it, and then the answer when no rule matches.
    pub const fn isolation(endpoint: [u8; 4], direction: u8) -> Self {
        Self::new(POLICY_PREFIX_DIRECTION, endpoint, direction, 0, 0, 0)
    }

    /// The 12 data bytes, in the order the trie matches them.
    pub const fn data(&self) -> [u8; 12] {
        let [e0, e1, e2, e3] = self.endpoint;
        let [i0, i1, i2, i3] = self.identity;
        let [p0, p1] = self.port;
        [
            e0,
            e1,
            e2,
            e3,
            self.direction,
            i0,
            i1,
            i2,
            i3,
            self.protocol,
            p0,
            p1,
        ]
    }

    /// The key stored in the trie as `prefix_len` and `data` (what
    /// [`PolicyKey::data`] gives), as read back from the kernel.
    pub const fn from_lpm(prefix_len: u32, data: [u8; 12]) -> Self {
        Self::from_data(prefix_len, data)
    }

    const fn from_data(prefix_len: u32, d: [u8; 12]) -> Self {
        Self {
            prefix_len,
            endpoint: [d[0], d[1], d[2], d[3]],
            direction: d[4],
            identity: [d[5], d[6], d[7], d[8]],
            protocol: d[9],
            port: [d[10], d[11]],
        }
    }

    /// `key` (a full lookup key) falls under this prefix, as the trie
    /// decides it.
    pub const fn covers(&self, key: &PolicyKey) -> bool {
        if self.prefix_len > POLICY_PREFIX_FULL {
            return false;
        }
        let a = mask(self.data(), self.prefix_len);
        let b = mask(key.data(), self.prefix_len);
        let mut i = 0;
        while i < 12 {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    pub const fn identity(&self) -> u32 {
        u32::from_be_bytes(self.identity)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// `data` with the bits past `prefix_len` cleared.
const fn mask(mut data: [u8; 12], prefix_len: u32) -> [u8; 12] {
    let mut i = 0;
    while i < 12 {
        let bit = i as u32 * 8;
        if bit >= prefix_len {
            data[i] = 0;
        } else if prefix_len - bit < 8 {
            data[i] &= 0xffu8 << (8 - (prefix_len - bit));
        }
        i += 1;
    }
    data
}

/// [`PolicyEntry::action`]: the traffic is allowed.
pub const POLICY_ALLOW: u8 = 1;
/// [`PolicyEntry::action`] of an isolation marker: no rule allowed it.
pub const POLICY_DENY: u8 = 2;

/// Value of [`POLICY_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// [`POLICY_ALLOW`] or [`POLICY_DENY`]; anything else denies.
    pub action: u8,
    /// Reserved (rule references for tracing, say); writers set 0.
    pub reserved: [u8; 3],
}

impl PolicyEntry {
    pub const ALLOW: PolicyEntry = PolicyEntry {
        action: POLICY_ALLOW,
        reserved: [0; 3],
    };
    pub const DENY: PolicyEntry = PolicyEntry {
        action: POLICY_DENY,
        reserved: [0; 3],
    };

    pub const fn allows(&self) -> bool {
        self.action == POLICY_ALLOW
    }
}

/// What policy says about a packet in one direction of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyDecision {
    /// No policy isolates the endpoint in this direction.
    NotIsolated,
    Allowed,
    /// Isolated, and no rule allows it.
    Denied,
}

/// The policy decision for traffic of `direction` at `endpoint` with a
/// peer of `identity` (from the ipcache), `protocol` and `port`: at most
/// two lookups of the policy map, whatever it holds. `lookup` is the LPM
/// trie's lookup (longest stored prefix covering the key).
#[inline(always)]
pub fn policy_decision<F: Fn(&PolicyKey) -> Option<PolicyEntry>>(
    lookup: F,
    endpoint: [u8; 4],
    direction: u8,
    identity: u32,
    protocol: u8,
    port: u16,
) -> PolicyDecision {
    policy_decision_found(
        |key| found_action(lookup(key)),
        endpoint,
        direction,
        identity,
        protocol,
        port,
    )
}

// SAFETY (all three): `#[repr(C)]`, only integer and byte-array fields, no
// padding (sizes asserted below), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IdentityEntry {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyEntry {}

const _: () = assert!(core::mem::size_of::<IdentityEntry>() == 4);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 4 + 12);
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 4);

/// A policy map lookup's result as one number defined on every path: 0
/// ([`POLICY_NOT_FOUND`]) for no entry, else `0x100 | action`. eBPF
/// lookups return this rather than an `Option<PolicyEntry>`: LLVM carries
/// a `None`'s payload (undefined) in a register, and the kernel's verifier
/// refuses a program that reads it.
pub type FoundAction = u16;
/// [`FoundAction`] of no entry.
pub const POLICY_NOT_FOUND: FoundAction = 0;
/// [`FoundAction`] of an entry that allows.
const FOUND_ALLOW: FoundAction = 0x100 | POLICY_ALLOW as u16;

/// The [`FoundAction`] of a lookup's result.
#[inline(always)]
pub const fn found_action(entry: Option<PolicyEntry>) -> FoundAction {
    match entry {
        Some(entry) => 0x100 | entry.action as u16,
        None => POLICY_NOT_FOUND,
    }
}

/// [`policy_decision`] over a lookup that answers a [`FoundAction`].
#[inline(always)]
pub fn policy_decision_found<F: Fn(&PolicyKey) -> FoundAction>(
    lookup: F,
    endpoint: [u8; 4],
    direction: u8,
    identity: u32,
    protocol: u8,
    port: u16,
) -> PolicyDecision {
    // An isolated direction always has its marker, so no match at all
    // means not isolated.
    match lookup(&PolicyKey::lookup(
        endpoint, direction, identity, protocol, port,
    )) {
        POLICY_NOT_FOUND => return PolicyDecision::NotIsolated,
        FOUND_ALLOW => return PolicyDecision::Allowed,
        _ => {}
    }
    match lookup(&PolicyKey::lookup(
        endpoint,
        direction,
        IDENTITY_ANY,
        protocol,
        port,
    )) {
        FOUND_ALLOW => PolicyDecision::Allowed,
        _ => PolicyDecision::Denied,
    }
}

// ---------------------------------------------------------------------------
// Enforcement (issue #10): the policy revision and the pod veth's egress hook.

/// Name of the tc classifier at egress of each pod's host-side veth: sees
/// the packets the node sends to the pod, after its routing and after
/// kube-proxy's DNAT, where the pod's ingress policy is checked.
pub const POD_EGRESS_PROGRAM: &str = "weft_pod_egress";

/// Name (and pin file name) of the one-entry array (key `0u32`) holding the
/// node-wide [`PolicyRevision`]. The agent increments it once a change to
/// [`IPCACHE_MAP`] or [`POLICY_MAP`] is complete, so that every tracked
/// connection is checked again under the new policy at its next packet
/// (see `crate::conntrack`). Never written, it reads 0, as does every
/// entry made before it was.
pub const POLICY_REVISION_MAP: &str = "WEFT_POLICY_REV";

/// Value of [`POLICY_REVISION_MAP`]: the node's policy revision, host order.
pub type PolicyRevision = u32;

const _: () = assert!(POLICY_REVISION_MAP.len() <= 15);

// ---------------------------------------------------------------------------
// Per-endpoint policy counters (issue #10, item 8).

/// Name (and pin file name) of the per-CPU hash from an
/// [`EndpointCounterKey`] to a packet count (`u64`): what policy decided
/// for each local endpoint, by direction. Bumped once per direction policy
/// was asked about and isolates, never on a tracked connection's packets.
pub const ENDPOINT_COUNTERS_MAP: &str = "WEFT_EP_COUNTS";
/// Capacity of [`ENDPOINT_COUNTERS_MAP`]: every endpoint of the node, both
/// directions, allowed and denied.
pub const ENDPOINT_COUNTERS_MAX_ENTRIES: u32 = 4 * ENDPOINTS_MAX_ENTRIES;

/// [`EndpointCounterKey::verdict`]: policy allowed the packet.
pub const ENDPOINT_COUNTER_ALLOWED: u8 = 1;
/// [`EndpointCounterKey::verdict`]: policy denied the packet.
pub const ENDPOINT_COUNTER_DENIED: u8 = 2;

/// Key of [`ENDPOINT_COUNTERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointCounterKey {
    /// The local endpoint's (pod's) address, wire order.
    pub endpoint: [u8; 4],
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`].
    pub direction: u8,
    /// [`ENDPOINT_COUNTER_ALLOWED`] or [`ENDPOINT_COUNTER_DENIED`].
    pub verdict: u8,
    /// Writers set 0.
    pub reserved: [u8; 2],
}

impl EndpointCounterKey {
    pub const fn new(endpoint: [u8; 4], direction: u8, allowed: bool) -> Self {
        Self {
            endpoint,
            direction,
            verdict: if allowed {
                ENDPOINT_COUNTER_ALLOWED
            } else {
                ENDPOINT_COUNTER_DENIED
            },
            reserved: [0; 2],
        }
    }

    pub const fn allowed(&self) -> bool {
        self.verdict == ENDPOINT_COUNTER_ALLOWED
    }
}

// SAFETY: `#[repr(C)]`, byte fields only, no padding (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointCounterKey {}

const _: () = assert!(core::mem::size_of::<EndpointCounterKey>() == 8);
const _: () = assert!(ENDPOINT_COUNTERS_MAP.len() <= 15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let cidr = PodCidrKey::new([10, 244, 2, 0], 24);
        assert!(cidr.contains([10, 244, 2, 0]));
        assert!(cidr.contains([10, 244, 2, 255]));
        assert!(!cidr.contains([10, 244, 3, 0]));
        assert!(!cidr.contains([10, 244, 1, 255]));
        assert!(PodCidrKey::new([0; 4], 0).contains([255; 4]));
        assert!(PodCidrKey::host([1, 2, 3, 4]).contains([1, 2, 3, 4]));
        assert!(!PodCidrKey::host([1, 2, 3, 4]).contains([1, 2, 3, 5]));
        assert!(!PodCidrKey::new([1, 2, 3, 4], 33).contains([1, 2, 3, 4]));
        // Host bits in the key do not matter.
        assert!(PodCidrKey::new([10, 244, 2, 77], 24).contains([10, 244, 2, 1]));
        assert!(prefix_contains([198, 18, 0, 0], 15, [198, 19, 255, 1]));
        assert!(!prefix_contains([198, 18, 0, 0], 15, [198, 20, 0, 1]));
    }

    #[test]
    fn node_config_decodes_its_bytes() {
        let zeroed = NodeConfig::default();
        assert_eq!(zeroed.encap(), Some(Encap::None));
        assert!(!zeroed.cross_subnet());
        assert!(!zeroed.direct_redirect());
        assert_eq!(zeroed.outer_ttl(), 64);
        let config =
            NodeConfig::new([198, 18, 0, 1], Encap::Ipip).with_cross_subnet([198, 18, 0, 0], 24);
        assert_eq!(config.encap(), Some(Encap::Ipip));
        assert!(config.cross_subnet());
        assert!(!config.direct_redirect());
        let both = config.with_direct_redirect();
        assert_eq!(
            both.flags,
            NODE_CONFIG_CROSS_SUBNET | NODE_CONFIG_DIRECT_REDIRECT
        );
        assert!(both.cross_subnet() && both.direct_redirect());
        assert!(config.same_subnet([198, 18, 0, 9]));
        assert!(!config.same_subnet([198, 18, 1, 9]));
        assert_eq!(NodeConfig { encap: 7, ..config }.encap(), None);
        assert_eq!(
            NodeConfig {
                outer_ttl: 9,
                ..config
            }
            .outer_ttl(),
            9
        );
        for (value, encap) in [(0, Encap::None), (1, Encap::Ipip), (2, Encap::Vxlan)] {
            assert_eq!(Encap::from_u8(value), Some(encap));
            assert_eq!(encap as u8, value);
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    const POD: [u8; 4] = [10, 244, 1, 5];

    /// The LPM trie's lookup over a list: the longest covering prefix.
    fn lpm(
        entries: &[(PolicyKey, PolicyEntry)],
    ) -> impl Fn(&PolicyKey) -> Option<PolicyEntry> + '_ {
        move |key| {
            entries
                .iter()
                .filter(|(k, _)| k.covers(key))
                .max_by_key(|(k, _)| k.prefix_len)
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn keys_zero_the_bits_past_their_prefix() {
        let k = PolicyKey::new(POLICY_PREFIX_IDENTITY, POD, POLICY_EGRESS, 300, 6, 80);
        assert_eq!((k.protocol, k.port()), (0, 0));
        assert_eq!(k.identity(), 300);
        // Port 8080 = 0x1f90; a /92 keeps its top 12 bits.
        let k = PolicyKey::new(92, POD, POLICY_INGRESS, 300, 6, 0x1f9f);
        assert_eq!(k.port(), 0x1f90);
        assert!(k.covers(&PolicyKey::lookup(POD, POLICY_INGRESS, 300, 6, 0x1f95)));
        assert!(!k.covers(&PolicyKey::lookup(POD, POLICY_INGRESS, 300, 6, 0x1fa0)));
        assert!(!k.covers(&PolicyKey::lookup(POD, POLICY_INGRESS, 301, 6, 0x1f95)));
        assert!(!k.covers(&PolicyKey::lookup(POD, POLICY_EGRESS, 300, 6, 0x1f95)));
        assert!(
            PolicyKey::isolation(POD, POLICY_INGRESS).covers(&PolicyKey::lookup(
                POD,
                POLICY_INGRESS,
                7,
                17,
                53
            ))
        );
    }

    #[test]
    fn decisions_take_the_marker_and_two_lookups_at_most() {
        let marker = (PolicyKey::isolation(POD, POLICY_INGRESS), PolicyEntry::DENY);
        let web = (
            PolicyKey::new(POLICY_PREFIX_FULL, POD, POLICY_INGRESS, 300, 6, 80),
            PolicyEntry::ALLOW,
        );
        let any_dns = (
            PolicyKey::new(
                POLICY_PREFIX_FULL,
                POD,
                POLICY_INGRESS,
                IDENTITY_ANY,
                17,
                53,
            ),
            PolicyEntry::ALLOW,
        );
        let map = [marker, web, any_dns];
        let decide = |dir, id, proto, port| policy_decision(lpm(&map), POD, dir, id, proto, port);
        assert_eq!(decide(POLICY_INGRESS, 300, 6, 80), PolicyDecision::Allowed);
        assert_eq!(decide(POLICY_INGRESS, 301, 6, 80), PolicyDecision::Denied);
        assert_eq!(decide(POLICY_INGRESS, 301, 17, 53), PolicyDecision::Allowed);
        assert_eq!(decide(POLICY_INGRESS, 300, 132, 80), PolicyDecision::Denied);
        assert_eq!(
            decide(POLICY_EGRESS, 300, 6, 80),
            PolicyDecision::NotIsolated
        );
    }
}
