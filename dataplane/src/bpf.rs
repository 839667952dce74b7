//! Loading, pinning and attaching the eBPF programs and their maps.
//!
//! The decisions live in `weft-common` (compiled into the eBPF object that
//! `build.rs` embeds); this module is the thin shell that puts them in the
//! kernel and keeps them there across agent restarts:
//!
//! - **Maps** are pinned by name under a per-node pin directory
//!   (`<pin_dir>/WEFT_ENDPOINTS`, `<pin_dir>/WEFT_COUNTERS`). [`PodGuard::load`]
//!   reuses maps already pinned there, so the endpoints a previous agent
//!   registered stay in force while the new one starts, and counters keep
//!   counting. A pinned map whose layout differs from this build's is refused
//!   ([`BpfError::IncompatiblePinnedMap`]) rather than misread.
//! - **The program** is loaded anew by every agent and pinned at
//!   `<pin_dir>/weft_pod_ingress`, replacing the previous agent's pin.
//! - **Attachments** use netlink tc (`clsact` + `cls_bpf`, direct action),
//!   not tcx/bpf_link: a netlink filter belongs to the interface, not to the
//!   agent's file descriptors, so it survives the agent being killed.
//!   [`PodGuard::attach`] leaves a filter that is already there in place: after
//!   a restart the old filter keeps running the *previous* agent's program,
//!   which uses the same pinned maps, so traffic never has a gap; the kernel
//!   frees that program when the last filter using it goes away with its veth.
//!
//! Everything here acts in the calling thread's network namespace (netlink
//! sockets and ifindexes are per namespace); bpffs pins are machine-wide,
//! hence one pin directory per node.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapError, MapInfo, MapType, PerCpuArray};
use aya::programs::ProgramError;
use aya::programs::tc::{
    NlOptions, SchedClassifier, TcAttachOptions, TcAttachType, TcError, TcHandle,
};
use aya::{Ebpf, EbpfLoader};
use weft_common::maps::{
    COUNTERS_MAP, ENDPOINTS_MAP, ENDPOINTS_MAX_ENTRIES, EndpointInfo, EndpointKey,
    POD_INGRESS_PROGRAM,
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
    #[error("cannot attach {name} at tc ingress of {ifname}: {source}")]
    Attach {
        ifname: String,
        name: &'static str,
        source: ProgramError,
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

/// The layouts this build's programs expect, by map name.
fn expected_layouts() -> [(&'static str, MapLayout); 2] {
    [
        (
            ENDPOINTS_MAP,
            MapLayout {
                map_type: MapType::Hash,
                key_size: size_of::<EndpointKey>() as u32,
                value_size: size_of::<EndpointInfo>() as u32,
                max_entries: ENDPOINTS_MAX_ENTRIES,
            },
        ),
        (
            COUNTERS_MAP,
            MapLayout {
                map_type: MapType::PerCpuArray,
                key_size: size_of::<u32>() as u32,
                value_size: size_of::<u64>() as u32,
                max_entries: COUNTER_COUNT as u32,
            },
        ),
    ]
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
    /// agent's program pin, which filters already attached keep using).
    ///
    /// `pin_dir` is per node (several lab nodes share one /sys/fs/bpf), e.g.
    /// `/sys/fs/bpf/weft-lab/weft/node1`. It is created if missing. Under
    /// /sys/fs/bpf, bpffs is mounted first if nothing is mounted there
    /// ([`ensure_bpffs_mounted`]); anywhere else it must already be bpffs
    /// ([`BpfError::NotBpffs`]).
    pub fn load(pin_dir: &Path) -> Result<PodGuard, BpfError> {
        let object = OBJECT.ok_or(BpfError::ObjectNotEmbedded)?;
        prepare_pin_dir(pin_dir)?;
        check_pinned_layouts(pin_dir)?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(object)
            .map_err(BpfError::Object)?;

        let program = classifier_mut(&mut ebpf)?;
        program.load().map_err(|source| BpfError::Program {
            name: POD_INGRESS_PROGRAM,
            source,
        })?;
        let program_pin = pin_dir.join(POD_INGRESS_PROGRAM);
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
        match map.remove(&host_ifindex) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(BpfError::Map {
                name: ENDPOINTS_MAP,
                source,
            }),
        }
    }

    /// Current map contents, sorted by ifindex (for the reconciler to remove
    /// stale entries).
    pub fn endpoints(&self) -> Result<Vec<(u32, Ipv4Addr)>, BpfError> {
        let map = self.ebpf.map(ENDPOINTS_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: ENDPOINTS_MAP,
        })?;
        let map = BpfHashMap::<_, EndpointKey, EndpointInfo>::try_from(map).map_err(|source| {
            BpfError::Map {
                name: ENDPOINTS_MAP,
                source,
            }
        })?;
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
    /// there (e.g. from a previous agent run) is left in place, so traffic
    /// has no gap; otherwise a netlink (cls_bpf) filter is added at
    /// [`GUARD_FILTER_PRIORITY`], which outlives this process.
    pub fn attach(&mut self, ifname: &str) -> Result<(), BpfError> {
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
        if self.is_attached(ifname)? {
            return Ok(());
        }
        let program = classifier_mut(&mut self.ebpf)?;
        let attach_error = |source| BpfError::Attach {
            ifname: ifname.to_owned(),
            name: POD_INGRESS_PROGRAM,
            source,
        };
        let options = NlOptions {
            priority: GUARD_FILTER_PRIORITY,
            handle: TcHandle::AUTO_ASSIGN,
            classid: None,
        };
        let link_id = program
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(options),
            )
            .map_err(attach_error)?;
        // aya detaches the links a program owns when it is dropped; the
        // filter must outlive the agent, so take the link out and forget it
        // (a netlink link is plain data: nothing leaks).
        let link = program.take_link(link_id).map_err(attach_error)?;
        std::mem::forget(link);
        Ok(())
    }

    /// Whether a Weft guard filter is at tc ingress of `ifname` (in the
    /// calling thread's network namespace), whichever agent attached it.
    pub fn is_attached(&self, ifname: &str) -> Result<bool, BpfError> {
        let ifindex = ifindex(ifname)?;
        let filters =
            tc_filter::ingress_bpf_filters(ifindex).map_err(|source| BpfError::ListFilters {
                ifname: ifname.to_owned(),
                source,
            })?;
        Ok(filters.iter().any(|f| f.name == POD_INGRESS_PROGRAM))
    }

    /// Packets per verdict, totalled over CPUs, by counter name, in counter
    /// index order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: COUNTERS_MAP,
        })?;
        let map = PerCpuArray::<_, u64>::try_from(map).map_err(|source| BpfError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
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

    fn endpoints_map_mut(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, EndpointKey, EndpointInfo>, BpfError> {
        let map = self.ebpf.map_mut(ENDPOINTS_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: ENDPOINTS_MAP,
        })?;
        BpfHashMap::try_from(map).map_err(|source| BpfError::Map {
            name: ENDPOINTS_MAP,
            source,
        })
    }
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

fn classifier_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    let program = ebpf
        .program_mut(POD_INGRESS_PROGRAM)
        .ok_or(BpfError::Missing {
            kind: "program",
            name: POD_INGRESS_PROGRAM,
        })?;
    program.try_into().map_err(|source| BpfError::Program {
        name: POD_INGRESS_PROGRAM,
        source,
    })
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

/// Refuses pinned maps whose kernel layout differs from what this build's
/// programs expect (aya would adopt them unchecked).
fn check_pinned_layouts(pin_dir: &Path) -> Result<(), BpfError> {
    for (name, expected) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| BpfError::PinnedMap {
            path: path.clone(),
            source,
        })?;
        let map_type = info.map_type().map_err(|source| BpfError::PinnedMap {
            path: path.clone(),
            source,
        })?;
        let found = MapLayout {
            map_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if found != expected {
            return Err(BpfError::IncompatiblePinnedMap {
                path,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// The one netlink query aya does not expose: listing the bpf filters at tc
/// ingress of an interface (`tc filter show dev X ingress`), synchronously,
/// in the calling thread's network namespace.
mod tc_filter {
    use std::io;

    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
    use netlink_sys::{Socket, SocketAddr, constants::NETLINK_ROUTE};

    /// A `cls_bpf` filter as the kernel reports it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BpfFilter {
        /// The program name given at attach time (`TCA_BPF_NAME`).
        pub name: String,
    }

    pub fn ingress_bpf_filters(ifindex: u32) -> io::Result<Vec<BpfFilter>> {
        let socket = Socket::new(NETLINK_ROUTE)?;
        socket.connect(&SocketAddr::new(0, 0))?;

        let mut request = TcMessage::with_index(ifindex as i32);
        request.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
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
        let name = message.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                _ => None,
            }),
            _ => None,
        })?;
        Some(BpfFilter { name })
    }
}
