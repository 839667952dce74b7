//! Loading, pinning and attaching the eBPF programs and their maps.
//!
//! The decisions live in `weft-common` (compiled into the eBPF object that
//! `build.rs` embeds); this module is the thin shell that puts them in the
//! kernel and keeps them there across agent restarts. Two handles load the
//! same object for one node and share its maps:
//!
//! - [`PodGuard`]: the anti-spoofing guard at tc ingress of every pod's
//!   host veth (`weft_pod_ingress`, endpoint map), which goes on to the
//!   pod's egress policy, and the policy program at tc egress of the same
//!   veth (`weft_pod_egress`: the pod's ingress policy, after routing and
//!   kube-proxy's DNAT); see `weft_common::policy`.
//! - [`PolicyMaps`]: the ipcache, the policy map and the policy revision
//!   that the agent writes, and the connection tracker they fill.
//! - [`UplinkPrograms`]: IP-in-IP at tc egress and ingress of the node's
//!   uplink (`weft_uplink_egress`, `weft_uplink_ingress`; pod route, node and
//!   config maps), and with the config's direct redirect, decapsulated
//!   packets handed straight to local pods (the endpoint map says which
//!   interfaces are pod veths).
//!
//! How state survives:
//!
//! - **Maps** are pinned by name under a per-node pin directory
//!   (`<pin_dir>/WEFT_ENDPOINTS`, `WEFT_COUNTERS`, `WEFT_POD_ROUTES`,
//!   `WEFT_NODES`, `WEFT_CONFIG`, `WEFT_IPCACHE`, `WEFT_POLICY`,
//!   `WEFT_CONNTRACK`, `WEFT_POLICY_REV`). The connection tracker is per
//!   node: every pod veth of the node shares it, which is what lets a
//!   flow between two of its pods be checked once. Loading reuses maps already pinned there,
//!   so the entries a previous agent wrote stay in force while the new one
//!   starts, and counters keep counting. A pinned map whose layout differs
//!   from this build's is refused ([`BpfError::IncompatiblePinnedMap`])
//!   rather than misread, with one exception: a counter map with fewer
//!   entries than this build counts (a node upgraded from before the uplink
//!   counters) is replaced, since counters are statistics.
//! - **Programs** are loaded anew by every agent and pinned at
//!   `<pin_dir>/<program name>`, replacing the previous agent's pins.
//! - **Attachments** use netlink tc (`clsact` + `cls_bpf`, direct action),
//!   not tcx/bpf_link: a netlink filter belongs to the interface, not to the
//!   agent's file descriptors, so it survives the agent being killed.
//!   Attaching adopts a Weft filter that is already there (found by program
//!   name): if it runs another program (the previous agent's), that program
//!   is replaced in place, at the same priority and handle, which cls_bpf
//!   does atomically, so traffic never has a gap and no second filter
//!   appears; the old program is freed with its last reference.
//!
//! Everything here acts in the calling thread's network namespace (netlink
//! sockets and ifindexes are per namespace); bpffs pins are machine-wide,
//! hence one pin directory per node.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{
    Array as BpfArray, HashMap as BpfHashMap, Map, MapData, MapError, MapInfo, MapType,
    PerCpuArray, PerCpuHashMap,
};
use aya::programs::ProgramError;
use aya::programs::links::Link as _;
use aya::programs::tc::{
    NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError,
    TcHandle,
};
use aya::{Ebpf, EbpfLoader};
use ipnetwork::Ipv4Network;
use weft_common::conntrack::{CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, ConntrackEntry, FlowKey};
use weft_common::maps::{
    CONFIG_MAP, COUNTERS_MAP, ENDPOINT_COUNTERS_MAP, ENDPOINT_COUNTERS_MAX_ENTRIES, ENDPOINTS_MAP,
    ENDPOINTS_MAX_ENTRIES, EndpointCounterKey, EndpointInfo, EndpointKey, IPCACHE_MAP,
    IPCACHE_MAX_ENTRIES, IdentityEntry, IpcacheKey, NODES_MAP, NODES_MAX_ENTRIES, NodeConfig,
    NodeEntry, NodeKey, POD_EGRESS_PROGRAM, POD_INGRESS_PROGRAM, POD_ROUTES_MAP,
    POD_ROUTES_MAX_ENTRIES, POLICY_MAP, POLICY_MAX_ENTRIES, POLICY_REVISION_MAP, PodCidrKey,
    PolicyEntry, PolicyKey, PolicyRevision, RemoteNode, TUNNEL_EGRESS_PROGRAM,
    UPLINK_EGRESS_PROGRAM, UPLINK_INGRESS_PROGRAM,
};
use weft_common::verdict::{COUNTER_COUNT, Counter};

/// The eBPF object embedded at compile time, if `build.rs` found it.
#[cfg(weft_ebpf_object)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(env!("WEFT_EBPF_OBJECT_PATH")));
#[cfg(not(weft_ebpf_object))]
static OBJECT: Option<&[u8]> = None;

/// `statfs` magic of the BPF filesystem (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Priority of Weft's guard filter among the tc ingress filters of a pod
/// veth: first, since nothing a pod sends should be looked at before its
/// source is checked. Fixed so that operators (`tc filter show`) and a
/// restarted agent find it in one known place.
pub const GUARD_FILTER_PRIORITY: u16 = 1;

/// Priority of Weft's IP-in-IP filters at tc egress and ingress of the
/// uplink: first, so that on ingress every later filter (and the stack) sees
/// the decapsulated packet, and on egress nothing runs after the outer
/// header is in place but the kernel's own queueing.
pub const UPLINK_FILTER_PRIORITY: u16 = 1;

/// A precise reason why the eBPF dataplane could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BpfError {
    #[error(
        "weft-dataplane was built without the eBPF object; run `make build` (scripts/build-ebpf.sh)"
    )]
    ObjectNotEmbedded,
    #[error("{path} is not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    #[error("cannot mount the BPF filesystem at {path}: {source}")]
    MountBpffs { path: PathBuf, source: io::Error },
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "pinned map {path} does not have this build's layout (found {found}, expected {expected}); \
         remove the node's pin directory (weftctl/uninstall) to recreate it"
    )]
    IncompatiblePinnedMap {
        path: PathBuf,
        found: MapLayout,
        expected: MapLayout,
    },
    #[error("cannot read pinned map {path}: {source}")]
    PinnedMap { path: PathBuf, source: MapError },
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the embedded eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("cannot pin eBPF program at {path}: {source}")]
    PinProgram {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("interface {ifname} not found in this network namespace: {source}")]
    NoSuchInterface { ifname: String, source: nix::Error },
    #[error("cannot add the clsact qdisc to {ifname}: {source}")]
    Clsact { ifname: String, source: TcError },
    #[error("cannot attach {name} to tc on {ifname}: {source}")]
    Attach {
        ifname: String,
        name: &'static str,
        source: ProgramError,
    },
    #[error("cannot remove the {name} filter from {ifname}: {source}")]
    Detach {
        ifname: String,
        name: &'static str,
        /// Boxed: this error type stays small enough to return by value.
        source: Box<ProgramError>,
    },
    #[error("cannot list the tc filters of {ifname}: {source}")]
    ListFilters { ifname: String, source: io::Error },
}

/// The kernel-visible shape of a map, compared when adopting a pinned map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapLayout {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The layout this build's programs expect of the map `name`.
fn expected_layout(name: &str) -> Option<MapLayout> {
    let layout = |map_type, key_size: usize, value_size: usize, max_entries| MapLayout {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
    };
    Some(match name {
        ENDPOINTS_MAP => layout(
            MapType::Hash,
            size_of::<EndpointKey>(),
            size_of::<EndpointInfo>(),
            ENDPOINTS_MAX_ENTRIES,
        ),
        COUNTERS_MAP => layout(
            MapType::PerCpuArray,
            size_of::<u32>(),
            size_of::<u64>(),
            COUNTER_COUNT as u32,
        ),
        POD_ROUTES_MAP => layout(
            MapType::LpmTrie,
            size_of::<PodCidrKey>(),
            size_of::<RemoteNode>(),
            POD_ROUTES_MAX_ENTRIES,
        ),
        NODES_MAP => layout(
            MapType::Hash,
            size_of::<NodeKey>(),
            size_of::<NodeEntry>(),
            NODES_MAX_ENTRIES,
        ),
        CONFIG_MAP => layout(MapType::Array, size_of::<u32>(), size_of::<NodeConfig>(), 1),
        IPCACHE_MAP => layout(
            MapType::LpmTrie,
            size_of::<IpcacheKey>(),
            size_of::<IdentityEntry>(),
            IPCACHE_MAX_ENTRIES,
        ),
        POLICY_MAP => layout(
            MapType::LpmTrie,
            size_of::<PolicyKey>(),
            size_of::<PolicyEntry>(),
            POLICY_MAX_ENTRIES,
        ),
        CONNTRACK_MAP => layout(
            MapType::LruHash,
            size_of::<FlowKey>(),
            size_of::<ConntrackEntry>(),
            CONNTRACK_MAX_ENTRIES,
        ),
        POLICY_REVISION_MAP => layout(
            MapType::Array,
            size_of::<u32>(),
            size_of::<PolicyRevision>(),
            1,
        ),
        ENDPOINT_COUNTERS_MAP => layout(
            MapType::PerCpuHash,
            size_of::<EndpointCounterKey>(),
            size_of::<u64>(),
            ENDPOINT_COUNTERS_MAX_ENTRIES,
        ),
        _ => return None,
    })
}

/// Every map of the object, by pin name.
const MAP_NAMES: [&str; 10] = [
    ENDPOINTS_MAP,
    COUNTERS_MAP,
    POD_ROUTES_MAP,
    NODES_MAP,
    CONFIG_MAP,
    IPCACHE_MAP,
    POLICY_MAP,
    CONNTRACK_MAP,
    POLICY_REVISION_MAP,
    ENDPOINT_COUNTERS_MAP,
];

// aya's LPM key and Weft's are the same bytes: the key written by
// `set_pod_route` is read back as a `PodCidrKey` by `read_pinned_maps`.
const _: () = assert!(size_of::<LpmKey<[u8; 4]>>() == size_of::<PodCidrKey>());
// ... and the policy map's: a prefix length, then `PolicyKey::data()`.
const _: () = assert!(size_of::<LpmKey<[u8; 12]>>() == size_of::<PolicyKey>());

/// The direction of a tc attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// The pod anti-spoofing guard: its program and maps, loaded and pinned for
/// one node.
pub struct PodGuard {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for PodGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodGuard")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl PodGuard {
    /// Loads the embedded programs, reusing maps already pinned under
    /// `pin_dir` (an agent restart adopts them: entries survive) and creating
    /// and pinning them otherwise; pins the program too (replacing a previous
    /// agent's program pin; filters already attached keep running that
    /// program until [`PodGuard::attach`] swaps it for this one).
    ///
    /// `pin_dir` is per node (several lab nodes share one /sys/fs/bpf), e.g.
    /// `/sys/fs/bpf/weft-lab/weft/node1`. It is created if missing. Under
    /// /sys/fs/bpf, bpffs is mounted first if nothing is mounted there
    /// ([`ensure_bpffs_mounted`]); anywhere else it must already be bpffs
    /// ([`BpfError::NotBpffs`]).
    pub fn load(pin_dir: &Path) -> Result<PodGuard, BpfError> {
        let ebpf = load_object(pin_dir, &[POD_INGRESS_PROGRAM, POD_EGRESS_PROGRAM])?;
        Ok(PodGuard {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    /// The node's pin directory this guard was loaded from.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Allows `ip` as the only IPv4 source on the host veth with this
    /// ifindex. Idempotent (upsert); the running programs see it at once.
    pub fn set_endpoint(&mut self, host_ifindex: u32, ip: Ipv4Addr) -> Result<(), BpfError> {
        let mut map = self.endpoints_map_mut()?;
        map.insert(host_ifindex, EndpointInfo::new(ip.octets()), 0)
            .map_err(|source| BpfError::Map {
                name: ENDPOINTS_MAP,
                source,
            })
    }

    /// Forgets the endpoint on this host veth: the veth then sends nothing.
    /// Idempotent: removing an absent entry succeeds.
    pub fn remove_endpoint(&mut self, host_ifindex: u32) -> Result<(), BpfError> {
        let mut map = self.endpoints_map_mut()?;
        absent_is_ok(map.remove(&host_ifindex), ENDPOINTS_MAP)
    }

    /// Current map contents, sorted by ifindex (for the reconciler to remove
    /// stale entries).
    pub fn endpoints(&self) -> Result<Vec<(u32, Ipv4Addr)>, BpfError> {
        let map = typed_map::<BpfHashMap<_, EndpointKey, EndpointInfo>>(&self.ebpf, ENDPOINTS_MAP)?;
        let mut endpoints = map
            .iter()
            .map(|entry| entry.map(|(ifindex, info)| (ifindex, Ipv4Addr::from(info.ipv4))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BpfError::Map {
                name: ENDPOINTS_MAP,
                source,
            })?;
        endpoints.sort_unstable();
        Ok(endpoints)
    }

    /// Ensures `clsact` and the guard at tc ingress of `ifname` in the
    /// calling thread's network namespace. Idempotent: a guard filter already
    /// there (e.g. from a previous agent run) is adopted, its program
    /// replaced in place by this guard's if it runs another, so traffic has
    /// no gap and there is never a second filter; otherwise a netlink
    /// (cls_bpf) filter is added at [`GUARD_FILTER_PRIORITY`], which
    /// outlives this process.
    ///
    /// The policy program goes beside it at tc egress, the same way: the
    /// pod's ingress policy is checked on what the node sends to it
    /// (`weft_common::policy`). Egress first, so the pod is never guarded
    /// on the way out and open on the way in.
    pub fn attach(&mut self, ifname: &str) -> Result<(), BpfError> {
        ensure_filter(
            &mut self.ebpf,
            POD_EGRESS_PROGRAM,
            ifname,
            Direction::Egress,
            GUARD_FILTER_PRIORITY,
        )?;
        ensure_filter(
            &mut self.ebpf,
            POD_INGRESS_PROGRAM,
            ifname,
            Direction::Ingress,
            GUARD_FILTER_PRIORITY,
        )
    }

    /// Whether Weft's policy filter is at tc egress of `ifname`.
    pub fn is_policy_attached(&self, ifname: &str) -> Result<bool, BpfError> {
        Ok(!weft_filters(ifname, Direction::Egress, POD_EGRESS_PROGRAM)?.is_empty())
    }

    /// Whether a Weft guard filter is at tc ingress of `ifname` (in the
    /// calling thread's network namespace), whichever agent attached it.
    pub fn is_attached(&self, ifname: &str) -> Result<bool, BpfError> {
        Ok(!weft_filters(ifname, Direction::Ingress, POD_INGRESS_PROGRAM)?.is_empty())
    }

    /// Packets per verdict, totalled over CPUs, by counter name, in counter
    /// index order. The counter map is shared by every Weft program of the
    /// node (guard and uplink).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        read_counters(&self.ebpf)
    }

    fn endpoints_map_mut(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, EndpointKey, EndpointInfo>, BpfError> {
        typed_map_mut(&mut self.ebpf, ENDPOINTS_MAP)
    }
}

/// The node's IP-in-IP programs on its uplink, and the maps they decide
/// with: remote pod CIDRs ([`POD_ROUTES_MAP`]), the cluster's nodes
/// ([`NODES_MAP`]) and this node's [`NodeConfig`] ([`CONFIG_MAP`]).
///
/// Loaded from the same object and pin directory as [`PodGuard`], so both
/// share the pinned maps (and the counters).
pub struct UplinkPrograms {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for UplinkPrograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkPrograms")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl UplinkPrograms {
    /// Loads `weft_uplink_egress` and `weft_uplink_ingress`, adopting the
    /// maps pinned under `pin_dir` (creating and pinning missing ones) and
    /// pinning both programs there. `pin_dir` as for [`PodGuard::load`].
    pub fn load(pin_dir: &Path) -> Result<UplinkPrograms, BpfError> {
        let ebpf = load_object(
            pin_dir,
            &[
                UPLINK_EGRESS_PROGRAM,
                UPLINK_INGRESS_PROGRAM,
                TUNNEL_EGRESS_PROGRAM,
            ],
        )?;
        Ok(UplinkPrograms {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    /// The node's pin directory these programs were loaded from.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Writes this node's configuration; the programs use it from the next
    /// packet on. Until it is first written the map reads as all zeroes:
    /// mode `none`, everything passes.
    pub fn set_config(&mut self, config: &NodeConfig) -> Result<(), BpfError> {
        let mut map = typed_map_mut::<BpfArray<_, NodeConfig>>(&mut self.ebpf, CONFIG_MAP)?;
        map.set(0, config, 0).map_err(|source| BpfError::Map {
            name: CONFIG_MAP,
            source,
        })
    }

    /// This node's configuration as the programs see it.
    pub fn config(&self) -> Result<NodeConfig, BpfError> {
        let map = typed_map::<BpfArray<_, NodeConfig>>(&self.ebpf, CONFIG_MAP)?;
        map.get(&0, 0).map_err(|source| BpfError::Map {
            name: CONFIG_MAP,
            source,
        })
    }

    /// Routes the pod CIDR `cidr` (host bits ignored) to the node whose
    /// underlay address is `node`. Idempotent (upsert).
    pub fn set_pod_route(&mut self, cidr: Ipv4Network, node: Ipv4Addr) -> Result<(), BpfError> {
        let mut map = self.pod_routes_map_mut()?;
        map.insert(&pod_cidr_key(cidr), RemoteNode::new(node.octets()), 0)
            .map_err(|source| BpfError::Map {
                name: POD_ROUTES_MAP,
                source,
            })
    }

    /// Forgets the route of `cidr` (host bits ignored). Idempotent.
    pub fn remove_pod_route(&mut self, cidr: Ipv4Network) -> Result<(), BpfError> {
        let mut map = self.pod_routes_map_mut()?;
        absent_is_ok(map.remove(&pod_cidr_key(cidr)), POD_ROUTES_MAP)
    }

    /// Every pod route, sorted by CIDR.
    pub fn pod_routes(&self) -> Result<Vec<(Ipv4Network, Ipv4Addr)>, BpfError> {
        let map = typed_map::<LpmTrie<_, [u8; 4], RemoteNode>>(&self.ebpf, POD_ROUTES_MAP)?;
        let mut routes = collect_pod_routes(&map)?
            .into_iter()
            .map(|(key, node)| {
                let cidr = Ipv4Network::new(Ipv4Addr::from(key.addr), key.prefix_len as u8)
                    .expect("the kernel keeps LPM prefixes of a 4-byte key within 32 bits");
                (cidr, Ipv4Addr::from(node.underlay_ip))
            })
            .collect::<Vec<_>>();
        routes.sort_unstable();
        Ok(routes)
    }

    /// Accepts IP-in-IP from the node whose underlay address is `underlay`.
    /// Idempotent.
    pub fn set_node(&mut self, underlay: Ipv4Addr) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<BpfHashMap<_, NodeKey, NodeEntry>>(&mut self.ebpf, NODES_MAP)?;
        map.insert(underlay.octets(), NodeEntry::default(), 0)
            .map_err(|source| BpfError::Map {
                name: NODES_MAP,
                source,
            })
    }

    /// Stops accepting IP-in-IP from `underlay`. Idempotent.
    pub fn remove_node(&mut self, underlay: Ipv4Addr) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<BpfHashMap<_, NodeKey, NodeEntry>>(&mut self.ebpf, NODES_MAP)?;
        absent_is_ok(map.remove(&underlay.octets()), NODES_MAP)
    }

    /// Every node's underlay address, sorted.
    pub fn nodes(&self) -> Result<Vec<Ipv4Addr>, BpfError> {
        let map = typed_map::<BpfHashMap<_, NodeKey, NodeEntry>>(&self.ebpf, NODES_MAP)?;
        let mut nodes = collect_nodes(&map)?
            .into_iter()
            .map(Ipv4Addr::from)
            .collect::<Vec<_>>();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// Ensures `clsact` and both IP-in-IP filters on `uplink` (in the calling
    /// thread's network namespace): `weft_uplink_egress` at tc egress,
    /// `weft_uplink_ingress` at tc ingress, each at
    /// [`UPLINK_FILTER_PRIORITY`]. Idempotent, and adopting: filters a
    /// previous agent attached stay where they are and get this load's
    /// programs in place (atomically, no gap, no duplicate).
    ///
    /// Ingress is attached first: from the moment this node encapsulates, it
    /// can decapsulate the answers.
    pub fn attach(&mut self, uplink: &str) -> Result<(), BpfError> {
        ensure_filter(
            &mut self.ebpf,
            UPLINK_INGRESS_PROGRAM,
            uplink,
            Direction::Ingress,
            UPLINK_FILTER_PRIORITY,
        )?;
        ensure_filter(
            &mut self.ebpf,
            UPLINK_EGRESS_PROGRAM,
            uplink,
            Direction::Egress,
            UPLINK_FILTER_PRIORITY,
        )
    }

    /// Ensures `clsact` and `weft_tunnel_egress` at tc egress of the vxlan
    /// device `device` (mode `vxlan`), at [`UPLINK_FILTER_PRIORITY`]: the
    /// node's way out to other nodes there, where a pod's egress policy
    /// deferred for a Service address is judged. Idempotent and adopting,
    /// as [`UplinkPrograms::attach`].
    pub fn attach_tunnel(&mut self, device: &str) -> Result<(), BpfError> {
        ensure_filter(
            &mut self.ebpf,
            TUNNEL_EGRESS_PROGRAM,
            device,
            Direction::Egress,
            UPLINK_FILTER_PRIORITY,
        )
    }

    /// Whether both Weft uplink filters are on `uplink` (whichever agent
    /// attached them).
    pub fn is_attached(&self, uplink: &str) -> Result<bool, BpfError> {
        Ok(
            !weft_filters(uplink, Direction::Egress, UPLINK_EGRESS_PROGRAM)?.is_empty()
                && !weft_filters(uplink, Direction::Ingress, UPLINK_INGRESS_PROGRAM)?.is_empty(),
        )
    }

    /// The node's counters, as [`PodGuard::counters`] (the same map).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        read_counters(&self.ebpf)
    }

    /// What a reconciler owns in these maps (config, nodes, pod routes),
    /// read once per pass as the `actual` side of [`plan_uplink`].
    pub fn state(&self) -> Result<UplinkState, BpfError> {
        Ok(UplinkState {
            config: self.config()?,
            nodes: self.nodes()?.into_iter().collect(),
            pod_routes: self.pod_routes()?.into_iter().collect(),
        })
    }

    /// The writes of `plan`: the config, then nodes, then pod routes. Each
    /// is an in-place upsert, so a pod CIDR whose node changed is never
    /// missing from the map. A reconciler applies them before the routes
    /// that lead into the tunnel.
    pub fn apply_writes(&mut self, plan: &UplinkPlan) -> Result<(), BpfError> {
        if let Some(config) = &plan.config {
            self.set_config(config)?;
        }
        for node in &plan.add_nodes {
            self.set_node(*node)?;
        }
        for (cidr, node) in &plan.set_pod_routes {
            self.set_pod_route(*cidr, *node)?;
        }
        Ok(())
    }

    /// The removals of `plan`, in the reverse order of the writes: pod
    /// routes, then nodes. A reconciler applies them after the routes into
    /// the tunnel are gone.
    pub fn apply_removals(&mut self, plan: &UplinkPlan) -> Result<(), BpfError> {
        for cidr in &plan.remove_pod_routes {
            self.remove_pod_route(*cidr)?;
        }
        for node in &plan.remove_nodes {
            self.remove_node(*node)?;
        }
        Ok(())
    }

    fn pod_routes_map_mut(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, [u8; 4], RemoteNode>, BpfError> {
        typed_map_mut(&mut self.ebpf, POD_ROUTES_MAP)
    }
}

/// The contents of the uplink programs' maps that a reconciler owns, as it
/// wants them or as [`UplinkPrograms::state`] reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkState {
    /// This node's config ([`CONFIG_MAP`]; all zeroes until first written).
    pub config: NodeConfig,
    /// Underlay addresses tunnels are accepted from ([`NODES_MAP`]).
    pub nodes: BTreeSet<Ipv4Addr>,
    /// Remote pod CIDR → its node's underlay address ([`POD_ROUTES_MAP`]).
    pub pod_routes: BTreeMap<Ipv4Network, Ipv4Addr>,
}

/// What must change in the uplink maps to turn the actual state into the
/// desired one; see [`plan_uplink`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UplinkPlan {
    /// The config to write, if it differs from the map's.
    pub config: Option<NodeConfig>,
    /// Nodes missing from the map.
    pub add_nodes: Vec<Ipv4Addr>,
    /// Pod routes missing from the map or pointing at another node
    /// (overwritten in place).
    pub set_pod_routes: Vec<(Ipv4Network, Ipv4Addr)>,
    /// Pod CIDRs in the map that are no longer wanted.
    pub remove_pod_routes: Vec<Ipv4Network>,
    /// Nodes in the map that are no longer wanted.
    pub remove_nodes: Vec<Ipv4Addr>,
}

impl UplinkPlan {
    pub fn is_empty(&self) -> bool {
        self.writes() == 0 && self.removals() == 0
    }

    /// Map entries the plan writes (the config counts as one).
    pub fn writes(&self) -> usize {
        usize::from(self.config.is_some()) + self.add_nodes.len() + self.set_pod_routes.len()
    }

    /// Map entries the plan removes.
    pub fn removals(&self) -> usize {
        self.remove_pod_routes.len() + self.remove_nodes.len()
    }
}

/// Compares the uplink maps as wanted with what they hold, so that a pass
/// touches only what differs: the reconciler runs on every CNI call, and on
/// a steady node the plan is empty and no entry is rewritten. Pure, like
/// [`crate::route::plan`].
///
/// Desired pod CIDRs are compared by network address, as the map keys them
/// (host bits ignored): a record written as `10.244.2.5/24` matches the
/// entry `10.244.2.0/24` instead of being written and then removed as stale.
pub fn plan_uplink(desired: &UplinkState, actual: &UplinkState) -> UplinkPlan {
    let want_routes: BTreeMap<Ipv4Network, Ipv4Addr> = desired
        .pod_routes
        .iter()
        .map(|(cidr, node)| (network_of(*cidr), *node))
        .collect();
    UplinkPlan {
        config: (desired.config != actual.config).then_some(desired.config),
        add_nodes: desired.nodes.difference(&actual.nodes).copied().collect(),
        set_pod_routes: want_routes
            .iter()
            .filter(|(cidr, node)| actual.pod_routes.get(cidr) != Some(node))
            .map(|(cidr, node)| (*cidr, *node))
            .collect(),
        remove_pod_routes: actual
            .pod_routes
            .keys()
            .filter(|cidr| !want_routes.contains_key(cidr))
            .copied()
            .collect(),
        remove_nodes: actual.nodes.difference(&desired.nodes).copied().collect(),
    }
}

/// What must change in the pod guard map (host veth ifindex → the pod's
/// only source address); see [`plan_guard`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuardPlan {
    /// Entries missing or holding another address (overwritten in place).
    pub set: Vec<(u32, Ipv4Addr)>,
    /// Entries of veths no endpoint has any more.
    pub remove: Vec<u32>,
}

/// Compares the guard entries as wanted with what the map holds, in the
/// style of [`plan_uplink`] and [`crate::route::plan`].
pub fn plan_guard(
    desired: &BTreeMap<u32, Ipv4Addr>,
    actual: &BTreeMap<u32, Ipv4Addr>,
) -> GuardPlan {
    GuardPlan {
        set: desired
            .iter()
            .filter(|(ifindex, ip)| actual.get(ifindex) != Some(ip))
            .map(|(ifindex, ip)| (*ifindex, *ip))
            .collect(),
        remove: actual
            .keys()
            .filter(|ifindex| !desired.contains_key(ifindex))
            .copied()
            .collect(),
    }
}

/// `cidr` with its host bits cleared, as the LPM map keys it.
fn network_of(cidr: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(cidr.network(), cidr.prefix()).expect("the prefix length is already valid")
}

/// Removes Weft's uplink filters from both directions of `uplink` (a switch
/// away from `ipip`, or uninstall), in the calling thread's network
/// namespace; `Ok(false)` if there were none. Other filters are left alone.
/// Egress goes first, so the node stops encapsulating before it stops
/// decapsulating.
pub fn detach_uplink(uplink: &str) -> Result<bool, BpfError> {
    let mut removed = false;
    for (direction, name) in [
        (Direction::Egress, UPLINK_EGRESS_PROGRAM),
        (Direction::Ingress, UPLINK_INGRESS_PROGRAM),
    ] {
        for filter in weft_filters(uplink, direction, name)? {
            detach_filter(uplink, direction, name, &filter)?;
            removed = true;
        }
    }
    Ok(removed)
}

/// The node's policy maps, for the agent to write what the policy
/// compiler computes: the ipcache ([`IPCACHE_MAP`]), the policy map
/// ([`POLICY_MAP`]) and the policy revision ([`POLICY_REVISION_MAP`]),
/// which tells tracked connections to be checked again; the connection
/// tracker ([`CONNTRACK_MAP`]) is readable for operators.
///
/// Loaded from the same object and pin directory as [`PodGuard`], so all
/// share the pinned maps. The order of a change is the caller's: new
/// entries first, then removals, then [`PolicyMaps::set_revision`] with a
/// higher revision (see `weft_calc::policy::plan`).
pub struct PolicyMaps {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl PolicyMaps {
    /// Opens (creating and pinning if missing) the maps under `pin_dir`;
    /// loads no program.
    pub fn load(pin_dir: &Path) -> Result<PolicyMaps, BpfError> {
        let ebpf = load_object(pin_dir, &[])?;
        Ok(PolicyMaps {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Gives the prefix `key` the identity `entry` (upsert).
    pub fn set_ipcache(&mut self, key: IpcacheKey, entry: IdentityEntry) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<LpmTrie<_, [u8; 4], IdentityEntry>>(&mut self.ebpf, IPCACHE_MAP)?;
        map.insert(&LpmKey::new(key.prefix_len, key.addr), entry, 0)
            .map_err(|source| BpfError::Map {
                name: IPCACHE_MAP,
                source,
            })
    }

    /// Idempotent: removing an absent prefix succeeds.
    pub fn remove_ipcache(&mut self, key: IpcacheKey) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<LpmTrie<_, [u8; 4], IdentityEntry>>(&mut self.ebpf, IPCACHE_MAP)?;
        absent_is_ok(
            map.remove(&LpmKey::new(key.prefix_len, key.addr)),
            IPCACHE_MAP,
        )
    }

    /// The ipcache, sorted by key.
    pub fn ipcache(&self) -> Result<Vec<(IpcacheKey, IdentityEntry)>, BpfError> {
        let map = typed_map::<LpmTrie<_, [u8; 4], IdentityEntry>>(&self.ebpf, IPCACHE_MAP)?;
        collect_ipcache(&map)
    }

    /// Stores a policy entry (upsert).
    pub fn set_policy(&mut self, key: PolicyKey, entry: PolicyEntry) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<LpmTrie<_, [u8; 12], PolicyEntry>>(&mut self.ebpf, POLICY_MAP)?;
        map.insert(&LpmKey::new(key.prefix_len, key.data()), entry, 0)
            .map_err(|source| BpfError::Map {
                name: POLICY_MAP,
                source,
            })
    }

    /// Idempotent: removing an absent entry succeeds.
    pub fn remove_policy(&mut self, key: PolicyKey) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<LpmTrie<_, [u8; 12], PolicyEntry>>(&mut self.ebpf, POLICY_MAP)?;
        absent_is_ok(
            map.remove(&LpmKey::new(key.prefix_len, key.data())),
            POLICY_MAP,
        )
    }

    /// The policy map, sorted by key.
    pub fn policy(&self) -> Result<Vec<(PolicyKey, PolicyEntry)>, BpfError> {
        let map = typed_map::<LpmTrie<_, [u8; 12], PolicyEntry>>(&self.ebpf, POLICY_MAP)?;
        collect_policy(&map)
    }

    /// The node's policy revision (0 until first set).
    pub fn revision(&self) -> Result<PolicyRevision, BpfError> {
        let map = typed_map::<BpfArray<_, PolicyRevision>>(&self.ebpf, POLICY_REVISION_MAP)?;
        map.get(&0, 0).map_err(|source| BpfError::Map {
            name: POLICY_REVISION_MAP,
            source,
        })
    }

    /// Sets the policy revision: every tracked connection is checked
    /// against the maps as they are now at its next packet.
    pub fn set_revision(&mut self, revision: PolicyRevision) -> Result<(), BpfError> {
        let mut map =
            typed_map_mut::<BpfArray<_, PolicyRevision>>(&mut self.ebpf, POLICY_REVISION_MAP)?;
        map.set(0, revision, 0).map_err(|source| BpfError::Map {
            name: POLICY_REVISION_MAP,
            source,
        })
    }

    /// The tracked connections (unordered: an LRU map's iteration races
    /// with the programs).
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, ConntrackEntry)>, BpfError> {
        let map = typed_map::<BpfHashMap<_, FlowKey, ConntrackEntry>>(&self.ebpf, CONNTRACK_MAP)?;
        collect_conntrack(&map)
    }

    /// Packets per verdict, totalled over CPUs (the node's one counter map).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        read_counters(&self.ebpf)
    }

    /// Packets policy allowed and denied per endpoint and direction,
    /// totalled over CPUs, sorted by key; only what was counted since the
    /// entries were last removed.
    pub fn endpoint_counters(&self) -> Result<Vec<(EndpointCounterKey, u64)>, BpfError> {
        let map = typed_map::<PerCpuHashMap<_, EndpointCounterKey, u64>>(
            &self.ebpf,
            ENDPOINT_COUNTERS_MAP,
        )?;
        let mut counts = map
            .iter()
            .map(|entry| entry.map(|(key, per_cpu)| (key, per_cpu.iter().sum())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BpfError::Map {
                name: ENDPOINT_COUNTERS_MAP,
                source,
            })?;
        counts.sort_unstable_by_key(|(key, _)| *key);
        Ok(counts)
    }

    /// Forgets an endpoint counter (an endpoint gone, so that a pod given
    /// its address later starts from zero). Idempotent.
    pub fn remove_endpoint_counter(&mut self, key: &EndpointCounterKey) -> Result<(), BpfError> {
        let mut map = typed_map_mut::<PerCpuHashMap<_, EndpointCounterKey, u64>>(
            &mut self.ebpf,
            ENDPOINT_COUNTERS_MAP,
        )?;
        absent_is_ok(map.remove(key), ENDPOINT_COUNTERS_MAP)
    }
}

/// A read-only view of a node's pinned maps, read without loading any
/// program (for `weftctl trace`, which replays packets through the twin).
/// A map that is not pinned reads as empty (or `None` for the config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedMaps {
    /// Host veth ifindex → endpoint, sorted by ifindex.
    pub endpoints: Vec<(u32, EndpointInfo)>,
    /// Pod CIDR → owning node, sorted by address then prefix length.
    pub pod_routes: Vec<(PodCidrKey, RemoteNode)>,
    /// Cluster nodes' underlay addresses, sorted.
    pub nodes: Vec<[u8; 4]>,
    /// This node's config, `None` when the config map is not pinned.
    pub config: Option<NodeConfig>,
    /// Address prefix → identity, sorted by key.
    pub ipcache: Vec<(IpcacheKey, IdentityEntry)>,
    /// Policy entries, sorted by key.
    pub policy: Vec<(PolicyKey, PolicyEntry)>,
    /// The policy revision (0 when not pinned or never written).
    pub revision: PolicyRevision,
    /// Tracked connections, sorted by key bytes.
    pub conntrack: Vec<(FlowKey, ConntrackEntry)>,
}

/// Reads the maps pinned under `pin_dir` (see [`PinnedMaps`]). Fails if the
/// directory is missing, or a pinned map has another layout than this
/// build's (it would be misread).
pub fn read_pinned_maps(pin_dir: &Path) -> Result<PinnedMaps, BpfError> {
    if !pin_dir.is_dir() {
        return Err(BpfError::PinDir {
            path: pin_dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such pin directory"),
        });
    }
    let mut maps = PinnedMaps::default();
    if let Some(map) = open_pinned(pin_dir, ENDPOINTS_MAP)? {
        let map = typed_owned::<BpfHashMap<_, EndpointKey, EndpointInfo>>(map, ENDPOINTS_MAP)?;
        maps.endpoints = map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BpfError::Map {
                name: ENDPOINTS_MAP,
                source,
            })?;
        maps.endpoints.sort_unstable_by_key(|(ifindex, _)| *ifindex);
    }
    if let Some(map) = open_pinned(pin_dir, POD_ROUTES_MAP)? {
        let map = typed_owned::<LpmTrie<_, [u8; 4], RemoteNode>>(map, POD_ROUTES_MAP)?;
        maps.pod_routes = collect_pod_routes(&map)?;
        maps.pod_routes
            .sort_unstable_by_key(|(key, _)| (key.addr, key.prefix_len));
    }
    if let Some(map) = open_pinned(pin_dir, NODES_MAP)? {
        let map = typed_owned::<BpfHashMap<_, NodeKey, NodeEntry>>(map, NODES_MAP)?;
        maps.nodes = collect_nodes(&map)?;
        maps.nodes.sort_unstable();
    }
    if let Some(map) = open_pinned(pin_dir, CONFIG_MAP)? {
        let map = typed_owned::<BpfArray<_, NodeConfig>>(map, CONFIG_MAP)?;
        maps.config = Some(map.get(&0, 0).map_err(|source| BpfError::Map {
            name: CONFIG_MAP,
            source,
        })?);
    }
    if let Some(map) = open_pinned(pin_dir, IPCACHE_MAP)? {
        let map = typed_owned::<LpmTrie<_, [u8; 4], IdentityEntry>>(map, IPCACHE_MAP)?;
        maps.ipcache = collect_ipcache(&map)?;
    }
    if let Some(map) = open_pinned(pin_dir, POLICY_MAP)? {
        let map = typed_owned::<LpmTrie<_, [u8; 12], PolicyEntry>>(map, POLICY_MAP)?;
        maps.policy = collect_policy(&map)?;
    }
    if let Some(map) = open_pinned(pin_dir, POLICY_REVISION_MAP)? {
        let map = typed_owned::<BpfArray<_, PolicyRevision>>(map, POLICY_REVISION_MAP)?;
        maps.revision = map.get(&0, 0).map_err(|source| BpfError::Map {
            name: POLICY_REVISION_MAP,
            source,
        })?;
    }
    if let Some(map) = open_pinned(pin_dir, CONNTRACK_MAP)? {
        let map = typed_owned::<BpfHashMap<_, FlowKey, ConntrackEntry>>(map, CONNTRACK_MAP)?;
        maps.conntrack = collect_conntrack(&map)?;
        maps.conntrack
            .sort_unstable_by_key(|(k, _)| (k.a_addr, k.b_addr, k.a_port, k.b_port, k.protocol));
    }
    Ok(maps)
}

/// Removes a node's whole pin directory (lab teardown / uninstall). Maps and
/// programs stay alive while filters still use them; they go with the veths.
/// Succeeds if the directory is already gone.
pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Prepares `pin_dir` and its pinned maps, loads the embedded object with
/// its maps pinned there, and loads and pins `programs`.
fn load_object(pin_dir: &Path, programs: &[&'static str]) -> Result<Ebpf, BpfError> {
    let object = OBJECT.ok_or(BpfError::ObjectNotEmbedded)?;
    prepare_pin_dir(pin_dir)?;
    prepare_pinned_maps(pin_dir)?;

    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(object)
        .map_err(BpfError::Object)?;

    for &name in programs {
        let program = classifier_mut(&mut ebpf, name)?;
        program
            .load()
            .map_err(|source| BpfError::Program { name, source })?;
        let program_pin = pin_dir.join(name);
        match fs::remove_file(&program_pin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BpfError::PinDir {
                    path: program_pin,
                    source,
                });
            }
        }
        program
            .pin(&program_pin)
            .map_err(|source| BpfError::PinProgram {
                path: program_pin.clone(),
                source,
            })?;
    }
    Ok(ebpf)
}

fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    let program = ebpf.program_mut(name).ok_or(BpfError::Missing {
        kind: "program",
        name,
    })?;
    program
        .try_into()
        .map_err(|source| BpfError::Program { name, source })
}

fn ifindex(ifname: &str) -> Result<u32, BpfError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|source| BpfError::NoSuchInterface {
        ifname: ifname.to_owned(),
        source,
    })
}

/// The conventional bpffs mount point, which [`PodGuard::load`] mounts when
/// a pin directory under it is requested and nothing is mounted there yet.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Serializes the check-and-mount of [`BPFFS_ROOT`] between Weft processes
/// (several lab agents start at once): a second bpffs mounted over the first
/// would hide every pin made in the first.
const BPFFS_MOUNT_LOCK: &str = "/run/weft-bpffs.lock";

fn is_bpffs(path: &Path) -> Result<bool, BpfError> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| BpfError::PinDir {
        path: path.to_owned(),
        source: io::Error::from(e),
    })?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless one is mounted there already, as
/// Cilium's agent does: a fresh machine often has none, and pins need one.
/// Returns whether it mounted. The mount is made in the caller's mount
/// namespace; in a container, /sys/fs/bpf must be the host's (a hostPath
/// with bidirectional propagation), or pins would not outlive the container.
pub fn ensure_bpffs_mounted() -> Result<bool, BpfError> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root)? {
        return Ok(false);
    }
    let lock_path = Path::new(BPFFS_MOUNT_LOCK);
    let lock_error = |source| BpfError::PinDir {
        path: lock_path.to_owned(),
        source,
    };
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(lock_error)?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| lock_error(io::Error::from(errno)))?;
    if is_bpffs(root)? {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| BpfError::MountBpffs {
        path: root.to_owned(),
        source: io::Error::from(e),
    })?;
    tracing::info!(path = BPFFS_ROOT, "mounted the BPF filesystem");
    Ok(true)
}

/// Creates `pin_dir` after making sure it is on bpffs: under [`BPFFS_ROOT`]
/// bpffs is mounted if missing; elsewhere the nearest existing ancestor must
/// already be bpffs (so nothing is created on another filesystem by mistake).
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), BpfError> {
    if pin_dir.starts_with(BPFFS_ROOT) {
        ensure_bpffs_mounted()?;
    }
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| BpfError::NotBpffs {
            path: pin_dir.to_owned(),
        })?;
    if !is_bpffs(existing)? {
        return Err(BpfError::NotBpffs {
            path: existing.to_owned(),
        });
    }
    fs::create_dir_all(pin_dir).map_err(|source| BpfError::PinDir {
        path: pin_dir.to_owned(),
        source,
    })
}

/// The layout of the map pinned at `path`, `None` if nothing is pinned there.
fn pinned_layout(path: &Path) -> Result<Option<MapLayout>, BpfError> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned_error = |source| BpfError::PinnedMap {
        path: path.to_owned(),
        source,
    };
    let info = MapInfo::from_pin(path).map_err(pinned_error)?;
    let map_type = info.map_type().map_err(pinned_error)?;
    Ok(Some(MapLayout {
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}

/// Refuses pinned maps whose kernel layout differs from what this build's
/// programs expect (aya would adopt them unchecked), before changing
/// anything; then replaces a counter map that only lacks the counters this
/// build added (see [`counters_upgradable`]) and a config map of an older,
/// shorter config (see [`config_upgradable`]).
fn prepare_pinned_maps(pin_dir: &Path) -> Result<(), BpfError> {
    let mut replace = Vec::new();
    for name in MAP_NAMES {
        let expected = expected_layout(name).expect("every map has a layout");
        let path = pin_dir.join(name);
        let Some(found) = pinned_layout(&path)? else {
            continue;
        };
        if found == expected {
            continue;
        }
        if (name == COUNTERS_MAP && counters_upgradable(&found, &expected))
            || (name == CONFIG_MAP && config_upgradable(&found, &expected))
        {
            replace.push((path, found));
            continue;
        }
        return Err(BpfError::IncompatiblePinnedMap {
            path,
            found,
            expected,
        });
    }
    for (path, found) in replace {
        tracing::warn!(
            path = %path.display(),
            found = %found,
            "replacing a pinned map of an older build (counters restart from zero; \
             the config is written again before the programs are attached)"
        );
        fs::remove_file(&path).map_err(|source| BpfError::PinDir { path, source })?;
    }
    Ok(())
}

/// A config map of an older build: the same one-entry array with a
/// shorter [`NodeConfig`] (fields are only appended; the Service range came
/// with issue #10). The agent writes the whole config on its first pass,
/// before it attaches this build's uplink programs, so it is replaced
/// rather than refused (pod programs attached before that read no Service
/// range, and judge egress at the veth until it is written).
fn config_upgradable(found: &MapLayout, expected: &MapLayout) -> bool {
    found.map_type == expected.map_type
        && found.key_size == expected.key_size
        && found.value_size < expected.value_size
        && found.max_entries == expected.max_entries
}

/// A counter map of an older build: the same kind of map with fewer
/// counters (the list only grows). Counters are statistics, so it is
/// replaced rather than refused; programs still attached to it are swapped
/// for this build's on their next attach.
fn counters_upgradable(found: &MapLayout, expected: &MapLayout) -> bool {
    found.map_type == expected.map_type
        && found.key_size == expected.key_size
        && found.value_size == expected.value_size
        && found.max_entries < expected.max_entries
}

// ---------------------------------------------------------------------------
// Map access.

fn missing_map(name: &'static str) -> BpfError {
    BpfError::Missing { kind: "map", name }
}

/// The loaded map `name` as the typed view `M`.
fn typed_map<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| missing_map(name))?;
    M::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// The loaded map `name` as the typed, writable view `M`.
fn typed_map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| missing_map(name))?;
    M::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// The map pinned as `name` under `pin_dir`, checked against this build's
/// layout; `None` if it is not pinned.
fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Option<Map>, BpfError> {
    let path = pin_dir.join(name);
    let Some(found) = pinned_layout(&path)? else {
        return Ok(None);
    };
    let expected = expected_layout(name).expect("every map has a layout");
    if found != expected {
        return Err(BpfError::IncompatiblePinnedMap {
            path,
            found,
            expected,
        });
    }
    let pinned_error = |source| BpfError::PinnedMap {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(pinned_error)?;
    Map::from_map_data(data).map(Some).map_err(pinned_error)
}

fn typed_owned<M>(map: Map, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<Map, Error = MapError>,
{
    M::try_from(map).map_err(|source| BpfError::Map { name, source })
}

fn collect_pod_routes<T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, [u8; 4], RemoteNode>,
) -> Result<Vec<(PodCidrKey, RemoteNode)>, BpfError> {
    map.iter()
        .map(|entry| entry.map(|(key, node)| (PodCidrKey::new(key.data(), key.prefix_len()), node)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BpfError::Map {
            name: POD_ROUTES_MAP,
            source,
        })
}

fn collect_ipcache<T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, [u8; 4], IdentityEntry>,
) -> Result<Vec<(IpcacheKey, IdentityEntry)>, BpfError> {
    let mut entries = map
        .iter()
        .map(|entry| entry.map(|(key, id)| (IpcacheKey::new(key.data(), key.prefix_len()), id)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BpfError::Map {
            name: IPCACHE_MAP,
            source,
        })?;
    entries.sort_unstable();
    Ok(entries)
}

fn collect_policy<T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, [u8; 12], PolicyEntry>,
) -> Result<Vec<(PolicyKey, PolicyEntry)>, BpfError> {
    let mut entries = map
        .iter()
        .map(|entry| {
            entry.map(|(key, value)| (PolicyKey::from_lpm(key.prefix_len(), key.data()), value))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BpfError::Map {
            name: POLICY_MAP,
            source,
        })?;
    entries.sort_unstable();
    Ok(entries)
}

fn collect_conntrack<T: std::borrow::Borrow<MapData>>(
    map: &BpfHashMap<T, FlowKey, ConntrackEntry>,
) -> Result<Vec<(FlowKey, ConntrackEntry)>, BpfError> {
    map.iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BpfError::Map {
            name: CONNTRACK_MAP,
            source,
        })
}

fn collect_nodes<T: std::borrow::Borrow<MapData>>(
    map: &BpfHashMap<T, NodeKey, NodeEntry>,
) -> Result<Vec<NodeKey>, BpfError> {
    map.keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BpfError::Map {
            name: NODES_MAP,
            source,
        })
}

/// The LPM key of `cidr`: its network address (host bits cleared) and
/// prefix length.
fn pod_cidr_key(cidr: Ipv4Network) -> LpmKey<[u8; 4]> {
    LpmKey::new(u32::from(cidr.prefix()), cidr.network().octets())
}

/// A removal that found nothing to remove succeeded.
fn absent_is_ok(result: Result<(), MapError>, name: &'static str) -> Result<(), BpfError> {
    match result {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(BpfError::Map { name, source }),
    }
}

fn read_counters(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>, BpfError> {
    let map = typed_map::<PerCpuArray<_, u64>>(ebpf, COUNTERS_MAP)?;
    Counter::ALL
        .iter()
        .map(|counter| {
            let per_cpu = map
                .get(&counter.index(), 0)
                .map_err(|source| BpfError::Map {
                    name: COUNTERS_MAP,
                    source,
                })?;
            Ok((counter.name(), per_cpu.iter().sum()))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// tc attachments.

/// The Weft filters named `name` in `direction` of `ifname`.
fn weft_filters(
    ifname: &str,
    direction: Direction,
    name: &str,
) -> Result<Vec<tc_filter::BpfFilter>, BpfError> {
    let ifindex = ifindex(ifname)?;
    let filters =
        tc_filter::bpf_filters(ifindex, direction).map_err(|source| BpfError::ListFilters {
            ifname: ifname.to_owned(),
            source,
        })?;
    Ok(filters.into_iter().filter(|f| f.name == name).collect())
}

/// Ensures exactly one filter named `name` in `direction` of `ifname`,
/// running `ebpf`'s program of that name (see the module documentation).
fn ensure_filter(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    direction: Direction,
    priority: u16,
) -> Result<(), BpfError> {
    ifindex(ifname)?;
    match aya::programs::tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(BpfError::Clsact {
                ifname: ifname.to_owned(),
                source,
            });
        }
    }
    let existing = weft_filters(ifname, direction, name)?;
    let program = classifier_mut(ebpf, name)?;
    let attach_error = |source| BpfError::Attach {
        ifname: ifname.to_owned(),
        name,
        source,
    };
    let ours = program.info().map_err(attach_error)?;
    let our_id = ours.id();
    // The program must be loaded before a link is handed to it: a link
    // dropped unused would detach the filter it describes.
    program.fd().map_err(attach_error)?;

    let link_id = match existing.split_first() {
        None => {
            let options = NlOptions {
                priority,
                handle: TcHandle::AUTO_ASSIGN,
                classid: None,
            };
            program
                .attach_with_options(
                    ifname,
                    direction.attach_type(),
                    TcAttachOptions::Netlink(options),
                )
                .map_err(attach_error)?
        }
        Some((adopted, duplicates)) => {
            for duplicate in duplicates {
                detach_filter(ifname, direction, name, duplicate)?;
            }
            if adopted.program_id == Some(our_id)
                || adopted.program_id.is_some_and(|id| same_program(id, &ours))
            {
                return Ok(());
            }
            // Without NLM_F_CREATE, cls_bpf changes the filter at this
            // priority and handle in place: the packet path switches from
            // the old program to this one between two packets.
            let link = SchedClassifierLink::attached(
                ifname,
                direction.attach_type(),
                adopted.priority,
                TcHandle::from(adopted.handle),
                None,
            )
            .map_err(|e| attach_error(ProgramError::from(TcError::IoError(e))))?;
            program.attach_to_link(link).map_err(attach_error)?
        }
    };
    // aya detaches the links a program owns when it is dropped; the filter
    // must outlive the agent, so take the link out and forget it (a netlink
    // link is plain data: nothing leaks).
    let link = program.take_link(link_id).map_err(attach_error)?;
    std::mem::forget(link);
    Ok(())
}

/// Whether the loaded program `id` is the same code over the same maps
/// as `ours` (a restarted agent of the same build): then the filter is
/// adopted as it is, with no swap and no churn of program ids. The tag
/// (the kernel's hash of the instructions, map references blanked) says
/// "same code"; the map ids say "same maps" (an upgrade may have replaced
/// the counter map, and then the swap moves the filter onto the new one).
fn same_program(id: u32, ours: &aya::programs::ProgramInfo) -> bool {
    let Some(Ok(theirs)) =
        aya::programs::loaded_programs().find(|p| p.as_ref().is_ok_and(|p| p.id() == id))
    else {
        return false;
    };
    let maps = |info: &aya::programs::ProgramInfo| {
        info.map_ids().ok().flatten().map(|mut ids| {
            ids.sort_unstable();
            ids
        })
    };
    theirs.tag() == ours.tag() && maps(&theirs).is_some() && maps(&theirs) == maps(ours)
}

/// Removes one filter (by priority and handle).
fn detach_filter(
    ifname: &str,
    direction: Direction,
    name: &'static str,
    filter: &tc_filter::BpfFilter,
) -> Result<(), BpfError> {
    let detach_error = |source| BpfError::Detach {
        ifname: ifname.to_owned(),
        name,
        source: Box::new(source),
    };
    let link = SchedClassifierLink::attached(
        ifname,
        direction.attach_type(),
        filter.priority,
        TcHandle::from(filter.handle),
        None,
    )
    .map_err(|e| detach_error(ProgramError::from(TcError::IoError(e))))?;
    link.detach().map_err(detach_error)
}

/// The one netlink query aya does not expose: listing the bpf filters at tc
/// ingress or egress of an interface (`tc filter show dev X ingress`), with
/// the program each runs, synchronously, in the calling thread's network
/// namespace.
mod tc_filter {
    use std::io;

    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
    use netlink_sys::{Socket, SocketAddr, constants::NETLINK_ROUTE};

    use super::Direction;

    /// A `cls_bpf` filter as the kernel reports it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BpfFilter {
        /// The program name given at attach time (`TCA_BPF_NAME`).
        pub name: String,
        /// The filter's priority (`tc filter ... pref`).
        pub priority: u16,
        /// The filter's handle, as `tcm_handle`.
        pub handle: u32,
        /// The id of the program it runs (`TCA_BPF_ID`).
        pub program_id: Option<u32>,
    }

    pub fn bpf_filters(ifindex: u32, direction: Direction) -> io::Result<Vec<BpfFilter>> {
        let socket = Socket::new(NETLINK_ROUTE)?;
        socket.connect(&SocketAddr::new(0, 0))?;

        let mut request = TcMessage::with_index(ifindex as i32);
        request.header.parent = TcHandle {
            major: 0xffff,
            minor: match direction {
                Direction::Ingress => TcHandle::MIN_INGRESS,
                Direction::Egress => TcHandle::MIN_EGRESS,
            },
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = 1;
        let mut message = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetTrafficFilter(request)),
        );
        message.finalize();
        let mut buffer = vec![0; message.buffer_len()];
        message.serialize(&mut buffer);
        socket.send(&buffer, 0)?;

        let mut filters = Vec::new();
        loop {
            let (data, _) = socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                offset += (length + 3) & !3;
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(filters),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(filter)) => {
                        filters.extend(bpf_filter(&filter));
                    }
                    _ => {}
                }
            }
        }
    }

    fn bpf_filter(message: &TcMessage) -> Option<BpfFilter> {
        let is_bpf = message
            .attributes
            .iter()
            .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
        if !is_bpf {
            return None;
        }
        let options = message.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(options) => Some(options),
            _ => None,
        })?;
        let name = options.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
            _ => None,
        })?;
        let program_id = options.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
            _ => None,
        });
        Some(BpfFilter {
            name,
            priority: (message.header.info >> 16) as u16,
            handle: u32::from(message.header.handle),
            program_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_plan_overwrites_in_place_and_removes_only_gone_veths() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let desired = [(7, ip("10.244.1.2")), (8, ip("10.244.1.3"))].into();
        let actual = [(7, ip("10.244.1.9")), (9, ip("10.244.1.4"))].into();
        assert_eq!(
            plan_guard(&desired, &actual),
            GuardPlan {
                set: vec![(7, ip("10.244.1.2")), (8, ip("10.244.1.3"))],
                remove: vec![9],
            }
        );
        assert_eq!(plan_guard(&desired, &desired), GuardPlan::default());
    }
    use weft_common::maps::Encap;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_shorter_config_of_the_same_array_is_upgraded() {
        let expected = expected_layout(CONFIG_MAP).unwrap();
        assert_eq!(expected.value_size as usize, size_of::<NodeConfig>());
        let older = MapLayout {
            value_size: 16,
            ..expected
        };
        assert!(config_upgradable(&older, &expected));
        assert!(!config_upgradable(&expected, &expected), "nothing to do");
        for bad in [
            MapLayout {
                value_size: 32,
                ..expected
            },
            MapLayout {
                max_entries: 2,
                ..older
            },
            MapLayout {
                key_size: 8,
                ..older
            },
        ] {
            assert!(!config_upgradable(&bad, &expected), "{bad}");
        }
    }

    /// A node with two peers, each owning one pod CIDR, in mode `ipip`.
    fn steady() -> UplinkState {
        UplinkState {
            config: NodeConfig::new([198, 18, 0, 11], Encap::Ipip).with_uplink_mtu(1500),
            nodes: [ip("198.18.0.12"), ip("198.18.0.13")].into(),
            pod_routes: [
                (net("10.244.2.0/24"), ip("198.18.0.12")),
                (net("10.244.3.0/24"), ip("198.18.0.13")),
            ]
            .into(),
        }
    }

    #[test]
    fn a_steady_node_writes_and_removes_nothing() {
        let plan = plan_uplink(&steady(), &steady());
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!((plan.writes(), plan.removals()), (0, 0));
    }

    #[test]
    fn an_empty_map_gets_everything() {
        // A fresh node: the config map reads as zeroes, the others are empty.
        let plan = plan_uplink(&steady(), &UplinkState::default());
        assert_eq!(
            plan,
            UplinkPlan {
                config: Some(steady().config),
                add_nodes: vec![ip("198.18.0.12"), ip("198.18.0.13")],
                set_pod_routes: steady().pod_routes.into_iter().collect(),
                ..UplinkPlan::default()
            }
        );
        assert_eq!((plan.writes(), plan.removals()), (5, 0));
    }

    #[test]
    fn a_new_node_is_the_only_write() {
        let mut desired = steady();
        desired.nodes.insert(ip("198.18.0.14"));
        desired
            .pod_routes
            .insert(net("10.244.4.0/24"), ip("198.18.0.14"));
        let plan = plan_uplink(&desired, &steady());
        assert_eq!(
            plan,
            UplinkPlan {
                add_nodes: vec![ip("198.18.0.14")],
                set_pod_routes: vec![(net("10.244.4.0/24"), ip("198.18.0.14"))],
                ..UplinkPlan::default()
            }
        );
    }

    #[test]
    fn a_cidr_that_moves_is_overwritten_not_removed() {
        let mut desired = steady();
        desired
            .pod_routes
            .insert(net("10.244.2.0/24"), ip("198.18.0.13"));
        let plan = plan_uplink(&desired, &steady());
        assert_eq!(
            plan,
            UplinkPlan {
                set_pod_routes: vec![(net("10.244.2.0/24"), ip("198.18.0.13"))],
                ..UplinkPlan::default()
            }
        );
    }

    #[test]
    fn stale_entries_are_removed() {
        let mut desired = steady();
        desired.nodes.remove(&ip("198.18.0.13"));
        desired.pod_routes.remove(&net("10.244.3.0/24"));
        let plan = plan_uplink(&desired, &steady());
        assert_eq!(
            plan,
            UplinkPlan {
                remove_pod_routes: vec![net("10.244.3.0/24")],
                remove_nodes: vec![ip("198.18.0.13")],
                ..UplinkPlan::default()
            }
        );
        assert_eq!((plan.writes(), plan.removals()), (0, 2));
    }

    #[test]
    fn a_changed_config_is_written_alone() {
        let mut desired = steady();
        desired.config = desired.config.with_direct_redirect();
        let plan = plan_uplink(&desired, &steady());
        assert_eq!(
            plan,
            UplinkPlan {
                config: Some(desired.config),
                ..UplinkPlan::default()
            }
        );
        assert_eq!(plan.writes(), 1);
    }

    #[test]
    fn desired_cidrs_with_host_bits_match_the_maps_key() {
        let mut desired = steady();
        desired.pod_routes = [
            (net("10.244.2.5/24"), ip("198.18.0.12")),
            (net("10.244.3.0/24"), ip("198.18.0.13")),
        ]
        .into();
        assert!(plan_uplink(&desired, &steady()).is_empty());
    }
}
