//! Veth pairs and the pod side of an attachment, over rtnetlink.
//!
//! A [`Netlink`] is a route-netlink connection bound to one network
//! namespace: [`Netlink::current`] for the namespace of the caller (the
//! node), [`Netlink::in_netns`] for a pod. The socket keeps its namespace for
//! its whole life, so no thread ever has to stay inside a pod namespace.
//!
//! The wiring of a pod ([`wire_pod`]) is: a veth pair created in one request
//! with the peer born inside the pod namespace under its final name (no
//! temporary name, nothing to rename, nothing left in the node namespace if
//! the pod namespace is gone), the MTU on both ends, the host end up with
//! proxy ARP, then in the pod the /32, a link route to the gateway, a default
//! route via it (onlink) and a permanent neighbour entry for it, so the pod
//! never needs ARP to leave.

use crate::kernel::{KernelError, errno};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{self, NetnsError};

/// `ENODEV`/`ENOENT` as netlink reports them: the object is not there.
const NOT_THERE: [i32; 2] = [libc::ENODEV, libc::ENOENT];

/// Everything that can go wrong while programming links, in the terms of the
/// object being programmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The network namespace could not be opened or entered (usually: it is
    /// gone, or the path is not a network namespace).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The route-netlink socket could not be created.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// An interface Weft is about to create already exists.
    #[error("interface {name} already exists{}", in_netns(.netns))]
    AlreadyExists {
        name: String,
        netns: Option<PathBuf>,
    },
    /// An interface Weft expected is missing.
    #[error("interface {name} does not exist{}", in_netns(.netns))]
    NotFound {
        name: String,
        netns: Option<PathBuf>,
    },
    /// The kernel refused a request.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A link the kernel reported has no usable Ethernet address.
    #[error("interface {name} has no Ethernet address")]
    NoMacAddress { name: String },
    /// A per-interface sysctl could not be written.
    #[error("cannot write {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn in_netns(netns: &Option<PathBuf>) -> String {
    match netns {
        Some(path) => format!(" in network namespace {}", path.display()),
        None => String::new(),
    }
}

/// A 48-bit Ethernet address, printed the way CNI results and `ip` print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the kernel says about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

impl LinkState {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut state = LinkState {
            name: String::new(),
            index: msg.header.index,
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => state.name = name.clone(),
                LinkAttribute::Address(bytes) => {
                    state.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                }
                LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
                _ => {}
            }
        }
        state
    }
}

/// One IPv4 route as CHECK needs to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteState {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub output_index: Option<u32>,
}

/// The IPv4 state of the pod's interface, read back for CHECK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSideState {
    pub link: LinkState,
    /// Addresses on the interface, with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Routes in the main table that leave through the interface.
    pub routes: Vec<RouteState>,
}

impl PodSideState {
    /// Whether the interface holds exactly `address/prefix_len`.
    pub fn has_address(&self, address: Ipv4Addr, prefix_len: u8) -> bool {
        self.addresses.contains(&(address, prefix_len))
    }

    /// Whether a default route via `gateway` leaves through the interface.
    pub fn has_default_route_via(&self, gateway: Ipv4Addr) -> bool {
        self.routes
            .iter()
            .any(|r| r.prefix_len == 0 && r.gateway == Some(gateway))
    }
}

/// What the pod's side of an attachment should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// Path of the pod's network namespace (CNI_NETNS).
    pub netns: PathBuf,
    /// Name of the host end (see [`crate::names::host_ifname`]).
    pub host_ifname: String,
    /// Name of the pod end inside the pod (CNI_IFNAME).
    pub pod_ifname: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// The two ends of a wired attachment, for the CNI result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WiredPod {
    pub host: LinkState,
    pub pod: LinkState,
}

/// A route-netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// None: the namespace of the process that opened it.
    netns: Option<PathBuf>,
}

impl Netlink {
    /// A connection in the caller's own network namespace. Needs a tokio
    /// runtime (the connection task is spawned on it).
    pub fn current() -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: None,
        })
    }

    /// A connection whose socket lives in the network namespace at `netns`.
    /// The socket is opened on a short-lived thread inside the namespace and
    /// driven by the caller's tokio runtime afterwards (so this, too, must be
    /// called from within a tokio runtime).
    pub fn in_netns(netns: &Path) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = netns::run_in(netns, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: Some(netns.to_path_buf()),
        })
    }

    /// The rtnetlink handle, for the other shells of this crate that work
    /// on the same namespace (the vxlan device, [`crate::vxlan`]).
    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    fn not_found(&self, name: &str) -> LinkError {
        LinkError::NotFound {
            name: name.to_string(),
            netns: self.netns.clone(),
        }
    }

    /// The link called `name`, or None if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, LinkError> {
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkState::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e).is_some_and(|n| NOT_THERE.contains(&n)) => Ok(None),
            Err(e) => Err(KernelError::new("look up link", name, e).into()),
        }
    }

    /// The link called `name`; missing is an error.
    pub async fn require_link(&self, name: &str) -> Result<LinkState, LinkError> {
        self.link(name).await?.ok_or_else(|| self.not_found(name))
    }

    /// Whether a link called `name` exists.
    pub async fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
        Ok(self.link(name).await?.is_some())
    }

    /// All links whose name starts with `prefix`, as (name, ifindex).
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u32)>, LinkError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .filter(|link| link.name.starts_with(prefix))
            .map(|link| (link.name, link.index))
            .collect())
    }

    /// Every link of the namespace, by ifindex (`ip link`).
    pub async fn links(&self) -> Result<Vec<LinkState>, LinkError> {
        let mut replies = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list links", "*", e))?
        {
            links.push(LinkState::from_message(&msg));
        }
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Every IPv4 address of the namespace, sorted (`ip -4 addr`).
    pub async fn addresses(&self) -> Result<Vec<Ipv4Addr>, LinkError> {
        let mut replies = self.handle.address().get().execute();
        let mut addresses = Vec::new();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list addresses", "*", e))?
        {
            addresses.extend(ipv4_address(&msg));
        }
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// Every IPv4 address with its prefix and the name of the link holding
    /// it, in the kernel's order (by link, then as added): what node-address
    /// detection chooses from.
    pub async fn interface_addresses(&self) -> Result<Vec<(String, Ipv4Network)>, LinkError> {
        let names: BTreeMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        let mut replies = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list addresses", "*", e))?
        {
            let (Some(ip), Some(name)) = (ipv4_address(&msg), names.get(&msg.header.index)) else {
                continue;
            };
            if let Ok(net) = Ipv4Network::new(ip, msg.header.prefix_len) {
                out.push((msg.header.index, name.clone(), net));
            }
        }
        out.sort_by_key(|(index, _, _)| *index);
        Ok(out.into_iter().map(|(_, name, net)| (name, net)).collect())
    }

    /// Deletes the link called `name`. Returns false if it was not there, so
    /// callers can be idempotent. Deleting either end of a veth removes both.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete: someone else won.
            Err(e) if errno(&e).is_some_and(|n| NOT_THERE.contains(&n)) => Ok(false),
            Err(e) => Err(KernelError::new("delete link", name, e).into()),
        }
    }

    /// Sets the link `name` administratively up.
    pub async fn set_up(&self, name: &str) -> Result<LinkState, LinkError> {
        let link = self.require_link(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|e| KernelError::new("set link up", name, e))?;
        self.require_link(name).await
    }

    /// Creates a veth pair: `host_ifname` here, `pod_ifname` born directly in
    /// the namespace at `pod_netns`, both with `mtu`.
    pub async fn create_veth(
        &self,
        host_ifname: &str,
        pod_ifname: &str,
        pod_netns: &Path,
        mtu: u32,
    ) -> Result<(), LinkError> {
        let ns = File::open(pod_netns).map_err(|source| NetnsError::Open {
            path: pod_netns.display().to_string(),
            source,
        })?;
        let peer = LinkUnspec::new_with_name(pod_ifname)
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let message = LinkVeth::new(host_ifname, pod_ifname)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let result = self.handle.link().add(message).execute().await;
        drop(ns);
        match result {
            Ok(()) => Ok(()),
            // EEXIST names no side; the caller checked the pod side first,
            // so it is the host end (or a race on the pod side).
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(LinkError::AlreadyExists {
                name: format!("{host_ifname} (or {pod_ifname} in {})", pod_netns.display()),
                netns: self.netns.clone(),
            }),
            Err(e) => {
                Err(
                    KernelError::new("create veth", format!("{host_ifname}/{pod_ifname}"), e)
                        .into(),
                )
            }
        }
    }

    /// Gives the pod interface its address, its routes and a permanent
    /// neighbour entry for the gateway; sets it up. `self` must be a
    /// connection in the pod's namespace.
    pub async fn configure_pod_side(
        &self,
        pod_ifname: &str,
        address: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        gateway_mac: MacAddr,
    ) -> Result<LinkState, LinkError> {
        let link = self.set_up(pod_ifname).await?;
        let index = link.index;
        let object = |what: &str| format!("{what} on {pod_ifname}");
        self.handle
            .address()
            .add(index, IpAddr::V4(address), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::new("add address", object(&format!("{address}/{prefix_len}")), e)
            })?;
        // The gateway is on no subnet of the pod: reach it through the link.
        // Protocol "boot", as `ip route add` and other CNI plugins use: these
        // are the pod's static configuration, not routes the agent manages.
        let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gateway, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(gateway_route)
            .replace()
            .execute()
            .await
            .map_err(|e| KernelError::new("add route", object(&format!("{gateway}/32")), e))?;
        let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(default_route)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::new("add route", object(&format!("default via {gateway}")), e)
            })?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(gateway))
            .link_layer_address(&gateway_mac.0)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::new(
                    "add neighbour",
                    object(&format!("{gateway} lladdr {gateway_mac}")),
                    e,
                )
            })?;
        Ok(link)
    }

    /// Reads the IPv4 addresses and main-table routes of `ifname`, or None
    /// if there is no such interface.
    pub async fn pod_side_state(&self, ifname: &str) -> Result<Option<PodSideState>, LinkError> {
        let Some(link) = self.link(ifname).await? else {
            return Ok(None);
        };
        let mut addresses = Vec::new();
        let mut replies = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list addresses", ifname, e))?
        {
            if msg.header.family != AddressFamily::Inet || msg.header.index != link.index {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    addresses.push((*ip, msg.header.prefix_len));
                }
            }
        }
        let mut routes = Vec::new();
        let mut replies = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = replies
            .try_next()
            .await
            .map_err(|e| KernelError::new("list routes", ifname, e))?
        {
            if let Some(route) = route_state(&msg).filter(|r| r.output_index == Some(link.index)) {
                routes.push(route);
            }
        }
        Ok(Some(PodSideState {
            link,
            addresses,
            routes,
        }))
    }
}

/// The IPv4 address of an address message: its local address (the one
/// of a point-to-point peer pair that is ours), else its address.
pub(crate) fn ipv4_address(msg: &AddressMessage) -> Option<Ipv4Addr> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    local.or(address)
}

/// The IPv4 main-table route in `msg`, if it is one.
fn route_state(msg: &RouteMessage) -> Option<RouteState> {
    if msg.header.address_family != AddressFamily::Inet
        || msg.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut route = RouteState {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: msg.header.destination_prefix_length,
        gateway: None,
        output_index: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.destination = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(index) => route.output_index = Some(*index),
            _ => {}
        }
    }
    Some(route)
}

/// Turns on proxy ARP on a host interface, so the host end answers ARP for
/// the gateway should the pod ever ask (its neighbour entry makes that rare).
/// Writes the sysctl of the caller's network namespace.
pub fn enable_proxy_arp(ifname: &str) -> Result<(), LinkError> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/proxy_arp");
    std::fs::write(&path, b"1").map_err(|source| LinkError::Sysctl { path, source })
}

/// Wires one attachment end to end, from the node's namespace: veth pair,
/// host end with proxy ARP, pod side configured. The host end stays down:
/// the agent brings it up once its tc programs are attached and the pod's
/// guard entry and policy are in their maps, so that not even the pod's
/// first packet crosses the veth unguarded (issue #10: no gap at pod
/// start). On failure the veth is deleted again, so nothing is left
/// behind.
///
/// Fails with [`LinkError::AlreadyExists`] if `pod_ifname` already exists in
/// the pod. A host end left over from an earlier failed attempt for the same
/// attachment (same deterministic name) is replaced.
pub async fn wire_pod(node: &Netlink, spec: &PodNetwork) -> Result<WiredPod, LinkError> {
    let pod = Netlink::in_netns(&spec.netns)?;
    if pod.link_exists(&spec.pod_ifname).await? {
        return Err(LinkError::AlreadyExists {
            name: spec.pod_ifname.clone(),
            netns: Some(spec.netns.clone()),
        });
    }
    if node.delete_link(&spec.host_ifname).await? {
        tracing::info!(host_ifname = %spec.host_ifname, "removed stale host end of an earlier attempt");
    }
    node.create_veth(&spec.host_ifname, &spec.pod_ifname, &spec.netns, spec.mtu)
        .await?;
    match finish_wiring(node, &pod, spec).await {
        Ok(wired) => Ok(wired),
        Err(e) => {
            if let Err(cleanup) = node.delete_link(&spec.host_ifname).await {
                tracing::warn!(error = %cleanup, host_ifname = %spec.host_ifname, "cannot undo veth");
            }
            Err(e)
        }
    }
}

async fn finish_wiring(
    node: &Netlink,
    pod: &Netlink,
    spec: &PodNetwork,
) -> Result<WiredPod, LinkError> {
    let host = node.require_link(&spec.host_ifname).await?;
    let host_mac = host.mac.ok_or_else(|| LinkError::NoMacAddress {
        name: spec.host_ifname.clone(),
    })?;
    enable_proxy_arp(&spec.host_ifname)?;
    let pod_link = pod
        .configure_pod_side(
            &spec.pod_ifname,
            spec.address,
            spec.prefix_len,
            spec.gateway,
            host_mac,
        )
        .await?;
    if pod_link.mac.is_none() {
        return Err(LinkError::NoMacAddress {
            name: spec.pod_ifname.clone(),
        });
    }
    Ok(WiredPod {
        host,
        pod: pod_link,
    })
}

/// All links of the caller's namespace whose name starts with `prefix`, as
/// (name, ifindex). For the agent's garbage collection of `weft*` host ends.
pub async fn list_links_with_prefix(prefix: &str) -> Result<Vec<(String, u32)>, LinkError> {
    Netlink::current()?.links_with_prefix(prefix).await
}

/// Deletes the link `name` of the caller's namespace; Ok(false) if absent.
pub async fn delete_link(name: &str) -> Result<bool, LinkError> {
    Netlink::current()?.delete_link(name).await
}

/// Whether the caller's namespace has a link called `name`.
pub async fn link_exists(name: &str) -> Result<bool, LinkError> {
    Netlink::current()?.link_exists(name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_prints_like_ip_link() {
        assert_eq!(
            MacAddr([0x02, 0, 0xab, 0x1, 0xff, 0x10]).to_string(),
            "02:00:ab:01:ff:10"
        );
    }

    #[test]
    fn pod_side_state_predicates() {
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let state = PodSideState {
            link: LinkState {
                name: "eth0".into(),
                index: 2,
                mac: None,
                mtu: Some(1480),
                up: true,
            },
            addresses: vec![(Ipv4Addr::new(10, 244, 1, 5), 32)],
            routes: vec![
                RouteState {
                    destination: gw,
                    prefix_len: 32,
                    gateway: None,
                    output_index: Some(2),
                },
                RouteState {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(gw),
                    output_index: Some(2),
                },
            ],
        };
        assert!(state.has_address(Ipv4Addr::new(10, 244, 1, 5), 32));
        assert!(!state.has_address(Ipv4Addr::new(10, 244, 1, 5), 24));
        assert!(state.has_default_route_via(gw));
        assert!(!state.has_default_route_via(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
