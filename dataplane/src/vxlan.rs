//! Encapsulation mode `vxlan`: the kernel VXLAN device, programmed entirely
//! by Weft (as Flannel's and Calico's vxlan modes do it).
//!
//! Every node has one VXLAN device ([`DEVICE_NAME`]) whose MAC address is
//! derived from the node's underlay address ([`vtep_mac`]) and which holds a
//! /32 "VTEP address", the network address of the node's pod CIDR
//! ([`vtep_ip`], Flannel's convention). Both are pure functions of data every
//! node already has, so no datastore field is needed. To reach another
//! node's pod CIDR a node has, all permanent and all on its device:
//!
//! - a route `POD_CIDR via VTEP_IP dev weft.vxlan onlink`
//!   ([`crate::route::Route::via_vxlan`]);
//! - a neighbour entry `VTEP_IP lladdr VTEP_MAC` (no ARP over the overlay);
//! - an FDB entry `VTEP_MAC dst UNDERLAY_IP self` (where to send the
//!   encapsulated frame; the device does no learning and floods nothing).
//!
//! The pure parts ([`VxlanSpec`], [`plan_device`], [`plan_peers`]) decide;
//! [`Vxlan`] is the netlink shell that reads the kernel and applies them.
//! The device belongs to Weft, so every FDB entry and every permanent
//! neighbour entry on it is Weft's: the shell lists and removes exactly those.

use crate::kernel::{KernelError, errno};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, LinkVxlan};

use crate::link::{MacAddr, Netlink, ipv4_address};
use crate::netns::{self, NetnsError};

/// The name of Weft's VXLAN device. Not of the shape of a host veth name
/// ([`crate::names::is_host_ifname`]), so veth GC never takes it for one.
pub const DEVICE_NAME: &str = "weft.vxlan";
/// The VXLAN network identifier (Flannel's 1, Calico's 4096).
pub const DEFAULT_VNI: u32 = 4096;
/// The IANA VXLAN port (the kernel's own default is the pre-IANA 8472).
pub const DEFAULT_PORT: u16 = 4789;

/// The MAC address of the VTEP of the node whose underlay address is
/// `underlay`: `02:57:a:b:c:d` (locally administered, unicast, 0x57 = 'W',
/// then the address's four octets). Deterministic, so every node computes
/// every other node's VTEP MAC from its underlay address alone.
pub fn vtep_mac(underlay: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = underlay.octets();
    MacAddr([0x02, 0x57, a, b, c, d])
}

pub use crate::names::vtep_ip;

/// The VXLAN device of this node, as Weft wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Interface name ([`DEVICE_NAME`]).
    pub name: String,
    /// VXLAN network identifier ([`DEFAULT_VNI`]).
    pub vni: u32,
    /// UDP destination port ([`DEFAULT_PORT`]).
    pub port: u16,
    /// This node's underlay address: the source of encapsulated packets.
    pub local: Ipv4Addr,
    /// The uplink's ifindex (`dev` of `ip link add ... type vxlan`).
    pub uplink_ifindex: u32,
    /// Device MTU: uplink MTU − VXLAN's overhead ([`weft_common::maps::Encap::overhead`]).
    pub mtu: u32,
    /// Device MAC: [`vtep_mac`] of `local`.
    pub mac: MacAddr,
    /// This node's VTEP address ([`vtep_ip`] of its pod CIDR), a /32 on the device.
    pub vtep_ip: Ipv4Addr,
}

impl VxlanSpec {
    /// The default device of a node with underlay address `local` on the
    /// uplink `uplink_ifindex` (MTU `uplink_mtu`) and pod CIDR `pod_cidr`.
    pub fn new(
        local: Ipv4Addr,
        uplink_ifindex: u32,
        uplink_mtu: u32,
        pod_cidr: Ipv4Network,
    ) -> VxlanSpec {
        VxlanSpec {
            name: DEVICE_NAME.to_string(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            local,
            uplink_ifindex,
            mtu: uplink_mtu.saturating_sub(weft_common::maps::Encap::Vxlan.overhead().into()),
            mac: vtep_mac(local),
            vtep_ip: vtep_ip(pod_cidr),
        }
    }
}

/// What the kernel says about the link carrying a VXLAN device's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanState {
    pub ifindex: u32,
    /// Whether the link is a VXLAN device at all.
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub uplink_ifindex: Option<u32>,
    /// Source-MAC learning (`learning`/`nolearning`).
    pub learning: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// IPv4 addresses on the device.
    pub addresses: Vec<Ipv4Network>,
}

/// A vxlan device as read off a node, with its entries ([`Vxlan::read`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanReading {
    pub device: VxlanState,
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<NeighbourEntry>,
}

/// What [`Vxlan::ensure_device`] has to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevicePlan {
    /// No device of that name: create it.
    Create,
    /// A device whose identity (kind, VNI, port, local address, uplink,
    /// learning) differs: only a new device can change that.
    Recreate { reason: String },
    /// The right device; fix what can be fixed in place (nothing if empty).
    Update(DeviceUpdate),
}

/// In-place changes to an existing VXLAN device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Set the device administratively up.
    pub up: bool,
    /// Add the VTEP address (/32).
    pub add_address: Option<Ipv4Addr>,
    /// IPv4 addresses on the device that are not the VTEP address.
    pub remove_addresses: Vec<Ipv4Network>,
}

impl DeviceUpdate {
    pub fn is_empty(&self) -> bool {
        *self == DeviceUpdate::default()
    }
}

/// Compares the wanted device with what the kernel has under its name.
pub fn plan_device(spec: &VxlanSpec, state: Option<&VxlanState>) -> DevicePlan {
    let Some(state) = state else {
        return DevicePlan::Create;
    };
    let mismatch = if !state.is_vxlan {
        Some("not a vxlan device".to_string())
    } else if state.vni != Some(spec.vni) {
        Some(format!("VNI {:?}, want {}", state.vni, spec.vni))
    } else if state.port != Some(spec.port) {
        Some(format!("port {:?}, want {}", state.port, spec.port))
    } else if state.local != Some(spec.local) {
        Some(format!("local {:?}, want {}", state.local, spec.local))
    } else if state.uplink_ifindex != Some(spec.uplink_ifindex) {
        Some(format!(
            "uplink ifindex {:?}, want {}",
            state.uplink_ifindex, spec.uplink_ifindex
        ))
    } else if state.learning {
        Some("learning is on".to_string())
    } else {
        None
    };
    if let Some(reason) = mismatch {
        return DevicePlan::Recreate { reason };
    }
    let vtep = Ipv4Network::from(spec.vtep_ip);
    DevicePlan::Update(DeviceUpdate {
        mtu: (state.mtu != Some(spec.mtu)).then_some(spec.mtu),
        mac: (state.mac != Some(spec.mac)).then_some(spec.mac),
        up: !state.up,
        add_address: (!state.addresses.contains(&vtep)).then_some(spec.vtep_ip),
        remove_addresses: state
            .addresses
            .iter()
            .filter(|a| **a != vtep)
            .copied()
            .collect(),
    })
}

/// Another node reached through the VXLAN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VxlanPeer {
    /// The node's underlay address (where encapsulated frames go).
    pub underlay: Ipv4Addr,
    /// The node's VTEP address ([`vtep_ip`] of its pod CIDR).
    pub vtep_ip: Ipv4Addr,
}

impl VxlanPeer {
    /// The peer of a node with underlay address `underlay` and pod CIDR `pod_cidr`.
    pub fn new(underlay: Ipv4Addr, pod_cidr: Ipv4Network) -> VxlanPeer {
        VxlanPeer {
            underlay,
            vtep_ip: vtep_ip(pod_cidr),
        }
    }

    /// The MAC address of the peer's VTEP ([`vtep_mac`] of its underlay address).
    pub fn vtep_mac(&self) -> MacAddr {
        vtep_mac(self.underlay)
    }

    /// The FDB entry that sends frames for the peer's VTEP to its underlay address.
    pub fn fdb_entry(&self) -> FdbEntry {
        FdbEntry {
            mac: self.vtep_mac(),
            remote: self.underlay,
        }
    }

    /// The neighbour entry that resolves the peer's VTEP address to its MAC.
    pub fn neighbour_entry(&self) -> NeighbourEntry {
        NeighbourEntry {
            ip: self.vtep_ip,
            mac: self.vtep_mac(),
        }
    }
}

impl From<(Ipv4Addr, Ipv4Addr)> for VxlanPeer {
    /// `(remote underlay address, remote VTEP address)`.
    fn from((underlay, vtep_ip): (Ipv4Addr, Ipv4Addr)) -> VxlanPeer {
        VxlanPeer { underlay, vtep_ip }
    }
}

/// A forwarding-database entry of the VXLAN device:
/// `bridge fdb ... MAC dev DEV dst REMOTE self permanent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub mac: MacAddr,
    /// The underlay address the encapsulated frame goes to.
    pub remote: Ipv4Addr,
}

/// A permanent neighbour entry on the VXLAN device:
/// `ip neigh ... IP lladdr MAC dev DEV nud permanent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighbourEntry {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// What must change on the device to reach exactly the wanted peers.
/// Applied in field order: sets before removals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// FDB entries to add or to point at another remote (replace).
    pub fdb_set: Vec<FdbEntry>,
    /// Neighbour entries to add or to give another MAC (replace).
    pub neighbour_set: Vec<NeighbourEntry>,
    /// Neighbour entries of VTEP addresses no peer has.
    pub neighbour_remove: Vec<NeighbourEntry>,
    /// FDB entries (MAC and remote) no peer wants. A replace may already
    /// have rewritten one of them in place.
    pub fdb_remove: Vec<FdbEntry>,
}

impl PeerPlan {
    pub fn is_empty(&self) -> bool {
        self.fdb_set.is_empty()
            && self.neighbour_set.is_empty()
            && self.neighbour_remove.is_empty()
            && self.fdb_remove.is_empty()
    }
}

/// Compares the entries `peers` need with the device's actual FDB and
/// neighbour entries. Level-triggered: the result depends on the states
/// only, and an empty plan means the kernel matches.
///
/// FDB entries are compared as (MAC, remote) pairs, since a VXLAN FDB entry
/// may hold several remotes and a delete names one. Neighbour entries are
/// keyed by address: one with a stale MAC is replaced, never deleted (a
/// delete names only the address and would remove the replacement).
/// Should two peers claim one VTEP address, the later one in `peers` wins.
pub fn plan_peers(
    peers: &[VxlanPeer],
    fdb: &[FdbEntry],
    neighbours: &[NeighbourEntry],
) -> PeerPlan {
    let want_fdb: BTreeSet<([u8; 6], Ipv4Addr)> =
        peers.iter().map(|p| (p.vtep_mac().0, p.underlay)).collect();
    let want_neigh: BTreeMap<Ipv4Addr, [u8; 6]> =
        peers.iter().map(|p| (p.vtep_ip, p.vtep_mac().0)).collect();
    let have_fdb: BTreeSet<([u8; 6], Ipv4Addr)> = fdb.iter().map(|e| (e.mac.0, e.remote)).collect();
    let have_neigh: BTreeSet<(Ipv4Addr, [u8; 6])> =
        neighbours.iter().map(|e| (e.ip, e.mac.0)).collect();

    let fdb_entry = |(mac, remote): &([u8; 6], Ipv4Addr)| FdbEntry {
        mac: MacAddr(*mac),
        remote: *remote,
    };
    let neighbour_entry = |ip: Ipv4Addr, mac: [u8; 6]| NeighbourEntry {
        ip,
        mac: MacAddr(mac),
    };
    PeerPlan {
        fdb_set: want_fdb.difference(&have_fdb).map(fdb_entry).collect(),
        neighbour_set: want_neigh
            .iter()
            .filter(|(ip, mac)| !have_neigh.contains(&(**ip, **mac)))
            .map(|(ip, mac)| neighbour_entry(*ip, *mac))
            .collect(),
        neighbour_remove: have_neigh
            .iter()
            .filter(|(ip, _)| !want_neigh.contains_key(ip))
            .map(|(ip, mac)| neighbour_entry(*ip, *mac))
            .collect(),
        fdb_remove: have_fdb.difference(&want_fdb).map(fdb_entry).collect(),
    }
}

/// Errors of the VXLAN shell, in the terms of the object being programmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VxlanError {
    /// The route-netlink socket could not be created.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The network namespace given to [`Vxlan::in_netns`] cannot be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused a request.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The device was created but cannot be found afterwards.
    #[error("vxlan device {name} vanished right after it was created")]
    Vanished { name: String },
}

/// The object of a delete is already gone (or its device is).
fn already_gone(err: &rtnetlink::Error) -> bool {
    errno(err).is_some_and(|n| [libc::ENOENT, libc::ESRCH, libc::ENODEV].contains(&n))
}

/// The netlink shell over the VXLAN device and its FDB and neighbour
/// entries, in the network namespace fixed when it is opened.
#[derive(Clone)]
pub struct Vxlan {
    handle: rtnetlink::Handle,
}

impl Vxlan {
    /// A connection in the caller's network namespace; must be called inside
    /// a tokio runtime.
    pub fn open() -> Result<Vxlan, VxlanError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(VxlanError::Socket)?;
        tokio::spawn(conn);
        Ok(Vxlan { handle })
    }

    /// A connection whose socket lives in the network namespace at `netns`;
    /// must be called inside a tokio runtime.
    pub fn in_netns(netns: &Path) -> Result<Vxlan, VxlanError> {
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle, _) = netns::run_in(netns, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(VxlanError::Socket)?;
        tokio::spawn(conn);
        Ok(Vxlan { handle })
    }

    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, VxlanError> {
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if errno(&e).is_some_and(|n| n == libc::ENODEV || n == libc::ENOENT) => Ok(None),
            Err(e) => Err(KernelError::new("look up link", name, e).into()),
        }
    }

    /// The device called `name` as the kernel has it, or None.
    pub async fn device(&self, name: &str) -> Result<Option<VxlanState>, VxlanError> {
        let Some(msg) = self.link_message(name).await? else {
            return Ok(None);
        };
        let mut state = device_state(&msg);
        let mut replies = self
            .handle
            .address()
            .get()
            .set_link_index_filter(state.ifindex)
            .execute();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list addresses", name, e))?
        {
            if msg.header.index != state.ifindex {
                continue;
            }
            if let Some(ip) = ipv4_address(&msg)
                && let Ok(net) = Ipv4Network::new(ip, msg.header.prefix_len)
            {
                state.addresses.push(net);
            }
        }
        state.addresses.sort();
        Ok(Some(state))
    }

    /// The vxlan device called `name` with its FDB and neighbour entries,
    /// as `weftctl lab trace` reads a node; None if there is no vxlan
    /// device of that name.
    pub async fn read(&self, name: &str) -> Result<Option<VxlanReading>, VxlanError> {
        let Some(device) = self.device(name).await? else {
            return Ok(None);
        };
        if !device.is_vxlan {
            return Ok(None);
        }
        let fdb = self.fdb(device.ifindex).await?;
        let neighbours = self.neighbours(device.ifindex).await?;
        Ok(Some(VxlanReading {
            device,
            fdb,
            neighbours,
        }))
    }

    /// Makes the device exactly `spec` and returns its ifindex. Idempotent:
    /// creates it if absent (up, no learning, with its MTU, MAC and VTEP
    /// address); leaves an equal device alone; fixes MTU, MAC, up and the
    /// addresses in place; deletes and recreates a device whose VNI, port,
    /// local address or uplink differ (which drops its FDB and neighbour
    /// entries and the routes through it: sync and route again after).
    pub async fn ensure_device(&self, spec: &VxlanSpec) -> Result<u32, VxlanError> {
        let mut state = self.device(&spec.name).await?;
        // At most: recreate, then update the fresh device (its address).
        for _ in 0..3 {
            match plan_device(spec, state.as_ref()) {
                DevicePlan::Create => {
                    self.create(spec).await?;
                    tracing::info!(name = %spec.name, vni = spec.vni, local = %spec.local, "created vxlan device");
                }
                DevicePlan::Recreate { reason } => {
                    let ifindex = state.as_ref().map_or(0, |s| s.ifindex);
                    tracing::info!(name = %spec.name, %reason, "recreating vxlan device");
                    match self.handle.link().del(ifindex).execute().await {
                        Ok(()) => {}
                        Err(e) if already_gone(&e) => {}
                        Err(e) => return Err(KernelError::new("delete link", &spec.name, e).into()),
                    }
                    self.create(spec).await?;
                }
                DevicePlan::Update(update) => {
                    let ifindex = state.as_ref().map_or(0, |s| s.ifindex);
                    if !update.is_empty() {
                        tracing::info!(name = %spec.name, ?update, "fixing vxlan device in place");
                        self.update(spec, ifindex, &update).await?;
                    }
                    return Ok(ifindex);
                }
            }
            state = self.device(&spec.name).await?;
            if state.is_none() {
                return Err(VxlanError::Vanished {
                    name: spec.name.clone(),
                });
            }
        }
        Err(VxlanError::Vanished {
            name: spec.name.clone(),
        })
    }

    async fn create(&self, spec: &VxlanSpec) -> Result<(), VxlanError> {
        let message = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.uplink_ifindex)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| KernelError::new("create vxlan device", &spec.name, e).into())
    }

    async fn update(
        &self,
        spec: &VxlanSpec,
        ifindex: u32,
        update: &DeviceUpdate,
    ) -> Result<(), VxlanError> {
        if update.mtu.is_some() || update.mac.is_some() || update.up {
            let mut builder = LinkUnspec::new_with_index(ifindex);
            if let Some(mtu) = update.mtu {
                builder = builder.mtu(mtu);
            }
            if let Some(mac) = update.mac {
                builder = builder.address(mac.0.to_vec());
            }
            if update.up {
                builder = builder.up();
            }
            self.handle
                .link()
                .set(builder.build())
                .execute()
                .await
                .map_err(|e| KernelError::new("set link", &spec.name, e))?;
        }
        if let Some(ip) = update.add_address {
            self.handle
                .address()
                .add(ifindex, IpAddr::V4(ip), 32)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    KernelError::new("add address", format!("{ip}/32 on {}", spec.name), e)
                })?;
        }
        for net in &update.remove_addresses {
            let message = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(ifindex)
                .address(net.ip(), net.prefix())
                .build();
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) || already_gone(&e) => {}
                Err(e) => {
                    return Err(KernelError::new(
                        "remove address",
                        format!("{net} on {}", spec.name),
                        e,
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Deletes the device called `name` (and with it its FDB and neighbour
    /// entries and the routes through it). Ok(false) if it was not there.
    pub async fn delete_device(&self, name: &str) -> Result<bool, VxlanError> {
        let Some(msg) = self.link_message(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(msg.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if already_gone(&e) => Ok(false),
            Err(e) => Err(KernelError::new("delete link", name, e).into()),
        }
    }

    /// The FDB entries of the device `ifindex` that name a unicast IPv4
    /// remote (`bridge fdb show dev DEV`).
    pub async fn fdb(&self, ifindex: u32) -> Result<Vec<FdbEntry>, VxlanError> {
        let mut replies = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut entries = Vec::new();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list fdb entries", format!("ifindex {ifindex}"), e))?
        {
            if msg.header.family != AddressFamily::Bridge || msg.header.ifindex != ifindex {
                continue;
            }
            let (mac, dst) = lladdr_and_dst(&msg);
            if let (Some(mac), Some(remote)) = (mac, dst) {
                entries.push(FdbEntry { mac, remote });
            }
        }
        entries.sort_by_key(|e| (e.mac.0, e.remote));
        Ok(entries)
    }

    /// Adds the FDB entry, or points the entry for its MAC at its remote
    /// (`bridge fdb replace MAC dev DEV dst REMOTE self permanent`).
    pub async fn set_fdb(&self, ifindex: u32, entry: &FdbEntry) -> Result<(), VxlanError> {
        self.handle
            .neighbours()
            .add_bridge(ifindex, &entry.mac.0)
            .destination(IpAddr::V4(entry.remote))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::new(
                    "set fdb entry",
                    format!("{} dst {} (ifindex {ifindex})", entry.mac, entry.remote),
                    e,
                )
                .into()
            })
    }

    /// Removes the FDB entry's remote from the entry for its MAC
    /// (`bridge fdb del MAC dev DEV dst REMOTE self`). Ok(false) if absent.
    pub async fn remove_fdb(&self, ifindex: u32, entry: &FdbEntry) -> Result<bool, VxlanError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = ifindex;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(entry.remote)),
        ];
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if already_gone(&e) => Ok(false),
            Err(e) => Err(KernelError::new(
                "remove fdb entry",
                format!("{} dst {} (ifindex {ifindex})", entry.mac, entry.remote),
                e,
            )
            .into()),
        }
    }

    /// The permanent IPv4 neighbour entries of the device `ifindex`
    /// (entries the kernel made itself, e.g. failed resolutions, are not
    /// Weft's and are left out).
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<NeighbourEntry>, VxlanError> {
        let mut replies = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut entries = Vec::new();
        while let Some(msg) = replies.try_next().await.map_err(|e| {
            KernelError::new("list neighbour entries", format!("ifindex {ifindex}"), e)
        })? {
            if msg.header.family != AddressFamily::Inet
                || msg.header.ifindex != ifindex
                || msg.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let (mac, dst) = lladdr_and_dst(&msg);
            if let (Some(mac), Some(ip)) = (mac, dst) {
                entries.push(NeighbourEntry { ip, mac });
            }
        }
        entries.sort_by_key(|e| (e.ip, e.mac.0));
        Ok(entries)
    }

    /// Adds or replaces the permanent neighbour entry
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    pub async fn set_neighbour(
        &self,
        ifindex: u32,
        entry: &NeighbourEntry,
    ) -> Result<(), VxlanError> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(entry.ip))
            .link_layer_address(&entry.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::new(
                    "set neighbour entry",
                    format!("{} lladdr {} (ifindex {ifindex})", entry.ip, entry.mac),
                    e,
                )
                .into()
            })
    }

    /// Removes the neighbour entry of `ip` on the device. Ok(false) if absent.
    pub async fn remove_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<bool, VxlanError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if already_gone(&e) => Ok(false),
            Err(e) => Err(KernelError::new(
                "remove neighbour entry",
                format!("{ip} (ifindex {ifindex})"),
                e,
            )
            .into()),
        }
    }

    /// Makes the FDB and neighbour entries of the device `ifindex` exactly
    /// those `peers` need (every other node; not this one). Level-triggered
    /// and idempotent; returns the plan it applied (empty: nothing changed).
    /// Sets come before removals. Call it after [`Vxlan::ensure_device`] and
    /// before installing routes via the peers' VTEP addresses. Gives up at the
    /// first error; the next pass starts again from the kernel's state.
    pub async fn sync_peers(
        &self,
        ifindex: u32,
        peers: &[VxlanPeer],
    ) -> Result<PeerPlan, VxlanError> {
        let fdb = self.fdb(ifindex).await?;
        let neighbours = self.neighbours(ifindex).await?;
        let plan = plan_peers(peers, &fdb, &neighbours);
        for entry in &plan.fdb_set {
            self.set_fdb(ifindex, entry).await?;
        }
        for entry in &plan.neighbour_set {
            self.set_neighbour(ifindex, entry).await?;
        }
        for entry in &plan.neighbour_remove {
            self.remove_neighbour(ifindex, entry.ip).await?;
        }
        for entry in &plan.fdb_remove {
            self.remove_fdb(ifindex, entry).await?;
        }
        Ok(plan)
    }
}

impl From<&Netlink> for Vxlan {
    /// The VXLAN shell over the same connection (and namespace) as `netlink`.
    fn from(netlink: &Netlink) -> Vxlan {
        Vxlan {
            handle: netlink.handle().clone(),
        }
    }
}

/// The VXLAN shell's operations on a [`Netlink`] connection, in its namespace.
impl Netlink {
    /// The VXLAN shell over this connection.
    pub fn vxlan(&self) -> Vxlan {
        Vxlan::from(self)
    }

    /// [`Vxlan::ensure_device`]: makes the device exactly `spec`; its ifindex.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<u32, VxlanError> {
        self.vxlan().ensure_device(spec).await
    }

    /// [`Vxlan::sync_peers`] with each other node as `(underlay address,
    /// VTEP address)`.
    pub async fn sync_vxlan_peers(
        &self,
        ifindex: u32,
        peers: &[(Ipv4Addr, Ipv4Addr)],
    ) -> Result<PeerPlan, VxlanError> {
        let peers: Vec<VxlanPeer> = peers.iter().copied().map(VxlanPeer::from).collect();
        self.vxlan().sync_peers(ifindex, &peers).await
    }

    /// [`Vxlan::delete_device`]: Ok(false) if there was none.
    pub async fn delete_vxlan(&self, name: &str) -> Result<bool, VxlanError> {
        self.vxlan().delete_device(name).await
    }
}

fn device_state(msg: &LinkMessage) -> VxlanState {
    let mut state = VxlanState {
        ifindex: msg.header.index,
        is_vxlan: false,
        vni: None,
        port: None,
        local: None,
        uplink_ifindex: None,
        learning: false,
        mtu: None,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
            LinkAttribute::Address(bytes) => {
                state.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => state.is_vxlan = *kind == InfoKind::Vxlan,
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            for item in data {
                                match item {
                                    InfoVxlan::Id(vni) => state.vni = Some(*vni),
                                    InfoVxlan::Port(port) => state.port = Some(*port),
                                    InfoVxlan::Local(ip) => state.local = Some(*ip),
                                    InfoVxlan::Link(index) => state.uplink_ifindex = Some(*index),
                                    InfoVxlan::Learning(on) => state.learning = *on,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    state
}

/// The Ethernet address (`NDA_LLADDR`) and IPv4 address (`NDA_DST`) of a
/// neighbour or FDB message. In an `AF_BRIDGE` (FDB) message the parser
/// leaves `NDA_DST` as raw bytes: 4 of them are the IPv4 remote.
fn lladdr_and_dst(msg: &NeighbourMessage) -> (Option<MacAddr>, Option<Ipv4Addr>) {
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                dst = <[u8; 4]>::try_from(bytes.as_slice())
                    .ok()
                    .map(Ipv4Addr::from)
            }
            _ => {}
        }
    }
    (mac, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn peer(underlay: &str, cidr: &str) -> VxlanPeer {
        VxlanPeer::new(ip(underlay), net(cidr))
    }

    #[test]
    fn vtep_mac_is_02_57_and_the_underlay_octets() {
        assert_eq!(vtep_mac(ip("198.18.0.12")).to_string(), "02:57:c6:12:00:0c");
        assert_eq!(vtep_mac(ip("10.0.0.1")).0, [0x02, 0x57, 10, 0, 0, 1]);
        // Locally administered unicast.
        let first = vtep_mac(ip("255.255.255.255")).0[0];
        assert_eq!(first & 0x01, 0);
        assert_eq!(first & 0x02, 0x02);
    }

    #[test]
    fn vtep_ip_is_the_pod_cidr_network_address() {
        assert_eq!(vtep_ip(net("10.244.2.0/24")), ip("10.244.2.0"));
        assert_eq!(vtep_ip(net("10.244.2.77/24")), ip("10.244.2.0"));
        assert_eq!(vtep_ip(net("10.244.8.0/22")), ip("10.244.8.0"));
    }

    #[test]
    fn spec_defaults() {
        let spec = VxlanSpec::new(ip("198.18.0.11"), 3, 1500, net("10.244.1.0/24"));
        assert_eq!(spec.name, "weft.vxlan");
        assert_eq!(spec.vni, 4096);
        assert_eq!(spec.port, 4789);
        assert_eq!(spec.mtu, 1450);
        assert_eq!(spec.mac, vtep_mac(ip("198.18.0.11")));
        assert_eq!(spec.vtep_ip, ip("10.244.1.0"));
        assert_eq!(spec.uplink_ifindex, 3);
        assert!(!crate::names::is_host_ifname(&spec.name));
        assert!(spec.name.len() <= 15);
    }

    fn matching_state(spec: &VxlanSpec) -> VxlanState {
        VxlanState {
            ifindex: 9,
            is_vxlan: true,
            vni: Some(spec.vni),
            port: Some(spec.port),
            local: Some(spec.local),
            uplink_ifindex: Some(spec.uplink_ifindex),
            learning: false,
            mtu: Some(spec.mtu),
            mac: Some(spec.mac),
            up: true,
            addresses: vec![Ipv4Network::from(spec.vtep_ip)],
        }
    }

    #[test]
    fn device_plan_create_nothing_and_in_place_fixes() {
        let spec = VxlanSpec::new(ip("198.18.0.11"), 3, 1500, net("10.244.1.0/24"));
        assert_eq!(plan_device(&spec, None), DevicePlan::Create);
        let same = matching_state(&spec);
        assert_eq!(
            plan_device(&spec, Some(&same)),
            DevicePlan::Update(DeviceUpdate::default())
        );

        let drifted = VxlanState {
            mtu: Some(1400),
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            up: false,
            addresses: vec![net("10.244.9.0/32"), net("192.0.2.1/24")],
            ..same.clone()
        };
        assert_eq!(
            plan_device(&spec, Some(&drifted)),
            DevicePlan::Update(DeviceUpdate {
                mtu: Some(1450),
                mac: Some(spec.mac),
                up: true,
                add_address: Some(ip("10.244.1.0")),
                remove_addresses: vec![net("10.244.9.0/32"), net("192.0.2.1/24")],
            })
        );
    }

    #[test]
    fn device_plan_recreates_on_identity_changes() {
        let spec = VxlanSpec::new(ip("198.18.0.11"), 3, 1500, net("10.244.1.0/24"));
        let same = matching_state(&spec);
        let cases = [
            VxlanState {
                is_vxlan: false,
                ..same.clone()
            },
            VxlanState {
                vni: Some(1),
                ..same.clone()
            },
            VxlanState {
                port: Some(8472),
                ..same.clone()
            },
            VxlanState {
                local: Some(ip("198.18.0.99")),
                ..same.clone()
            },
            VxlanState {
                local: None,
                ..same.clone()
            },
            VxlanState {
                uplink_ifindex: Some(4),
                ..same.clone()
            },
            VxlanState {
                learning: true,
                ..same.clone()
            },
        ];
        for state in cases {
            assert!(
                matches!(
                    plan_device(&spec, Some(&state)),
                    DevicePlan::Recreate { .. }
                ),
                "{state:?}"
            );
        }
    }

    #[test]
    fn peer_entries() {
        let p = peer("198.18.0.12", "10.244.2.0/24");
        assert_eq!(p.vtep_ip, ip("10.244.2.0"));
        assert_eq!(
            p.fdb_entry(),
            FdbEntry {
                mac: vtep_mac(ip("198.18.0.12")),
                remote: ip("198.18.0.12")
            }
        );
        assert_eq!(
            p.neighbour_entry(),
            NeighbourEntry {
                ip: ip("10.244.2.0"),
                mac: vtep_mac(ip("198.18.0.12"))
            }
        );
        assert_eq!(VxlanPeer::from((ip("198.18.0.12"), ip("10.244.2.0"))), p);
    }

    #[test]
    fn peers_from_nothing_add_everything() {
        let peers = [
            peer("198.18.0.12", "10.244.2.0/24"),
            peer("198.18.0.13", "10.244.3.0/24"),
        ];
        let plan = plan_peers(&peers, &[], &[]);
        assert_eq!(
            plan.fdb_set,
            peers.iter().map(VxlanPeer::fdb_entry).collect::<Vec<_>>()
        );
        assert_eq!(
            plan.neighbour_set,
            peers
                .iter()
                .map(VxlanPeer::neighbour_entry)
                .collect::<Vec<_>>()
        );
        assert!(plan.fdb_remove.is_empty() && plan.neighbour_remove.is_empty());
    }

    #[test]
    fn peers_matching_the_kernel_need_nothing() {
        let peers = [
            peer("198.18.0.12", "10.244.2.0/24"),
            peer("198.18.0.13", "10.244.3.0/24"),
        ];
        let fdb: Vec<_> = peers.iter().map(VxlanPeer::fdb_entry).collect();
        let neigh: Vec<_> = peers.iter().map(VxlanPeer::neighbour_entry).collect();
        assert!(plan_peers(&peers, &fdb, &neigh).is_empty());
        // Order does not matter.
        let mut rev = peers;
        rev.reverse();
        assert!(plan_peers(&rev, &fdb, &neigh).is_empty());
    }

    #[test]
    fn a_gone_peer_is_removed() {
        let a = peer("198.18.0.12", "10.244.2.0/24");
        let b = peer("198.18.0.13", "10.244.3.0/24");
        let plan = plan_peers(
            &[a],
            &[a.fdb_entry(), b.fdb_entry()],
            &[a.neighbour_entry(), b.neighbour_entry()],
        );
        assert!(plan.fdb_set.is_empty() && plan.neighbour_set.is_empty());
        assert_eq!(plan.fdb_remove, vec![b.fdb_entry()]);
        assert_eq!(plan.neighbour_remove, vec![b.neighbour_entry()]);
        let plan = plan_peers(&[], &[a.fdb_entry()], &[a.neighbour_entry()]);
        assert_eq!(plan.fdb_remove, vec![a.fdb_entry()]);
        assert_eq!(plan.neighbour_remove, vec![a.neighbour_entry()]);
    }

    #[test]
    fn a_pod_cidr_moving_to_another_node_replaces_the_neighbour_in_place() {
        let old = peer("198.18.0.12", "10.244.2.0/24");
        let new = peer("198.18.0.14", "10.244.2.0/24");
        let plan = plan_peers(&[new], &[old.fdb_entry()], &[old.neighbour_entry()]);
        assert_eq!(plan.fdb_set, vec![new.fdb_entry()]);
        assert_eq!(plan.fdb_remove, vec![old.fdb_entry()]);
        // Replaced, not deleted: a delete names only the address.
        assert_eq!(plan.neighbour_set, vec![new.neighbour_entry()]);
        assert!(plan.neighbour_remove.is_empty());
    }

    #[test]
    fn stray_remotes_and_foreign_entries_are_removed() {
        let a = peer("198.18.0.12", "10.244.2.0/24");
        // An extra remote on a's MAC (the kernel keeps one remote per
        // unicast MAC, but the plan does not rely on it), and an all-zeros
        // flood entry.
        let stray = FdbEntry {
            mac: a.vtep_mac(),
            remote: ip("198.18.0.99"),
        };
        let flood = FdbEntry {
            mac: MacAddr([0; 6]),
            remote: ip("198.18.0.12"),
        };
        let plan = plan_peers(&[a], &[a.fdb_entry(), stray, flood], &[a.neighbour_entry()]);
        assert!(plan.fdb_set.is_empty() && plan.neighbour_set.is_empty());
        assert_eq!(plan.fdb_remove, vec![flood, stray]);
    }

    #[test]
    fn two_cidrs_behind_one_node_share_one_fdb_entry() {
        let a = peer("198.18.0.12", "10.244.2.0/24");
        let a2 = peer("198.18.0.12", "10.244.7.0/24");
        let plan = plan_peers(&[a, a2], &[], &[]);
        assert_eq!(plan.fdb_set, vec![a.fdb_entry()]);
        assert_eq!(
            plan.neighbour_set,
            vec![a.neighbour_entry(), a2.neighbour_entry()]
        );
    }
}
