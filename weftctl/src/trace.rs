//! `weftctl lab trace`: where would a packet from a pod go, hook by hook,
//! given what the lab's nodes hold right now? Like Antrea's Traceflow, but
//! no packet is injected: the nodes' pinned eBPF maps, kernel routes, links,
//! addresses and vxlan FDB/neighbour entries are read, turned into the
//! twin's [`NodeTables`], and one synthetic packet is walked through them by
//! [`weft_twin::trace`], which runs the very decisions the tc programs are
//! built from around a model of the nodes' kernels.
//!
//! The shell is thin: [`read_node`] and [`read_pod_mtu`] read a live node
//! into plain data ([`NodeFacts`]); everything after that is pure and tested
//! here: [`node_tables`] (what the twin walks), [`verdict`] (what the steps
//! amount to) and the renderings.
//!
//! What the twin does not model, and so the trace cannot show: netfilter,
//! rp_filter, routing rules and tables other than main, ARP towards hosts
//! that are no lab node (such a next hop never answers), the pod's own
//! stack (the packet starts at the pod's host veth), and whether the uplink
//! programs are actually attached (the config map's mode decides).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteType};
use serde::Serialize;
use weft_common::maps::NodeConfig;
use weft_dataplane::bpf::{PinnedMaps, read_pinned_maps};
use weft_dataplane::names::is_host_ifname;
use weft_dataplane::route::RouteAttributes;
use weft_twin::hooks::{TC_ACT_SHOT, action_name};
use weft_twin::wire::{Mac, PacketSummary, Probe, VXLAN_PORT};
use weft_twin::{
    Encap, KernelRoute, NodeTables, RouteDecision, Step, Via, VxlanDecision, VxlanDevice, VxlanPeer,
};

use weft_lab::state::{self, LabState};
use weft_lab::topology::netns_path;

// ---------------------------------------------------------------------------
// The request.

/// What `--to` names: an address, and a port and protocol or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub kind: TargetKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// ICMP echo request (no port given).
    Ping,
    Tcp(u16),
    Udp(u16),
}

impl FromStr for Target {
    type Err = String;

    /// `IP` (ICMP echo), `IP/icmp`, `IP:PORT/tcp` or `IP:PORT/udp`.
    fn from_str(s: &str) -> Result<Target, String> {
        let usage = "expected IP, IP:PORT/tcp or IP:PORT/udp (e.g. 10.244.2.3:80/tcp)";
        let (addr, proto) = match s.split_once('/') {
            Some((addr, proto)) => (addr, Some(proto.to_ascii_lowercase())),
            None => (s, None),
        };
        let (ip, port) = match addr.split_once(':') {
            Some((ip, port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{port:?} is not a port (0-65535); {usage}"))?;
                (ip, Some(port))
            }
            None => (addr, None),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address; {usage}"))?;
        let kind = match (port, proto.as_deref()) {
            (None, None | Some("icmp")) => TargetKind::Ping,
            (Some(port), Some("tcp")) => TargetKind::Tcp(port),
            (Some(port), Some("udp")) => TargetKind::Udp(port),
            (Some(_), None) => return Err(format!("{s:?} names a port but no protocol; {usage}")),
            (None, Some("tcp" | "udp")) => {
                return Err(format!("{s:?} names a protocol but no port; {usage}"));
            }
            (Some(_), Some("icmp")) => return Err(format!("ICMP has no port: {s:?}; {usage}")),
            (_, Some(other)) => {
                return Err(format!(
                    "unknown protocol {other:?} (tcp, udp or icmp); {usage}"
                ));
            }
        };
        Ok(Target { ip, kind })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TargetKind::Ping => write!(f, "{} (icmp echo)", self.ip),
            TargetKind::Tcp(port) => write!(f, "{}:{port}/tcp", self.ip),
            TargetKind::Udp(port) => write!(f, "{}:{port}/udp", self.ip),
        }
    }
}

/// The synthetic packet from `src` to `target`: IPv4 total length `size`
/// (raised to the smallest packet of its kind), DF as asked.
pub fn probe(src: Ipv4Addr, target: Target, size: Option<u16>, df: bool) -> Probe {
    let (src, dst) = (src.octets(), target.ip.octets());
    let probe = match target.kind {
        TargetKind::Ping => Probe::ping(src, dst),
        TargetKind::Tcp(port) => Probe::tcp(src, dst, port),
        TargetKind::Udp(port) => Probe::udp(src, dst, port),
    };
    probe.with_len(size.unwrap_or(0)).with_df(df)
}

// ---------------------------------------------------------------------------
// What a live node holds, as plain data.

/// A link of the node's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFact {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
}

/// A route of the node's main table, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFact {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// `unicast`, `blackhole`, `unreachable`, ... (the kernel's type).
    pub kind: String,
    pub mtu: Option<u32>,
}

impl RouteFact {
    /// A unicast route, for tests and callers building facts by hand.
    pub fn unicast(dst: &str, gateway: Option<&str>, oif: u32) -> RouteFact {
        RouteFact {
            dst: dst.parse().expect("a CIDR"),
            gateway: gateway.map(|g| g.parse().expect("an address")),
            oif: Some(oif),
            kind: "unicast".into(),
            mtu: None,
        }
    }

    pub fn with_mtu(self, mtu: u32) -> RouteFact {
        RouteFact {
            mtu: Some(mtu),
            ..self
        }
    }
}

/// The node's vxlan device and its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanFacts {
    pub ifindex: u32,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Permanent neighbour entries: VTEP address → MAC.
    pub neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    /// FDB entries: MAC → underlay address.
    pub fdb: Vec<([u8; 6], Ipv4Addr)>,
}

/// Everything read from one live node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// The lab's record of the node's underlay address (used when the
    /// config map is not pinned).
    pub underlay_ip: Ipv4Addr,
    /// The lab's encapsulation mode (likewise).
    pub encap: Encap,
    /// The uplink's name (`eth0`).
    pub uplink: String,
    pub maps: PinnedMaps,
    pub links: Vec<LinkFact>,
    /// Every IPv4 address of the namespace.
    pub addresses: Vec<Ipv4Addr>,
    /// The main table.
    pub routes: Vec<RouteFact>,
    pub vxlan: Option<VxlanFacts>,
}

impl NodeFacts {
    fn link(&self, name: &str) -> Option<&LinkFact> {
        self.links.iter().find(|l| l.name == name)
    }

    fn link_by_index(&self, ifindex: u32) -> Option<&LinkFact> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    fn is_pod_veth(&self, ifindex: u32) -> bool {
        self.maps.endpoints.iter().any(|(i, _)| *i == ifindex)
            || self
                .link_by_index(ifindex)
                .is_some_and(|l| is_host_ifname(&l.name))
    }

    fn uplink_mtu(&self) -> Option<u32> {
        self.link(&self.uplink).map(|l| l.mtu)
    }

    /// The config the uplink programs read, or the lab's view of it.
    fn config(&self) -> NodeConfig {
        self.maps.config.unwrap_or_else(|| {
            NodeConfig::new(self.underlay_ip.octets(), self.encap)
                .with_uplink_mtu(clamp_mtu(self.uplink_mtu().unwrap_or(1500)))
        })
    }
}

fn clamp_mtu(mtu: u32) -> u16 {
    u16::try_from(mtu).unwrap_or(u16::MAX)
}

/// How a route of the node maps onto the twin, or why it cannot.
fn classify(node: &NodeFacts, route: &RouteFact) -> Result<KernelRoute, String> {
    let shown = || {
        let via = route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        let dev = route
            .oif
            .map(|i| {
                let name = node.link_by_index(i).map_or("?", |l| l.name.as_str());
                format!(" dev {name}")
            })
            .unwrap_or_default();
        format!("{} {}{via}{dev}", route.kind, route.dst)
    };
    if route.kind != "unicast" {
        return Err(format!(
            "route {} is not modelled (the trace ignores it)",
            shown()
        ));
    }
    let Some(oif) = route.oif else {
        return Err(format!(
            "route {} has no output device (multipath?): ignored",
            shown()
        ));
    };
    let gateway = route.gateway.map(|g| g.octets());
    let uplink = node.link(&node.uplink).map(|l| l.ifindex);
    let via = if Some(oif) == uplink {
        Via::Uplink { gateway }
    } else if node.vxlan.as_ref().is_some_and(|v| v.ifindex == oif) {
        match gateway {
            Some(gateway) => Via::Vxlan { gateway },
            None => {
                return Err(format!(
                    "route {} into the vxlan device has no VTEP next hop: ignored",
                    shown()
                ));
            }
        }
    } else if node.is_pod_veth(oif) {
        Via::Pod { ifindex: oif }
    } else {
        return Err(format!(
            "route {} leaves by a device the trace does not model: ignored",
            shown()
        ));
    };
    Ok(
        KernelRoute::new(route.dst.network().octets(), route.dst.prefix(), via)
            .with_mtu(route.mtu.map(clamp_mtu)),
    )
}

/// The twin's tables of a node, from what was read off it.
///
/// - maps: the pinned maps as they are; the config map falls back to the
///   lab's mode and the uplink's MTU when it is not pinned;
/// - routes: the main table's unicast routes out of the uplink, the vxlan
///   device and pod veths (the others are listed by [`notes`]);
/// - the pod MTU: the smallest MTU of the node's pod veths (the uplink's
///   minus the mode's overhead when it has none);
/// - the vxlan device: its VNI, MTU and MAC, and one peer per permanent
///   neighbour entry whose MAC has an FDB entry.
pub fn node_tables(node: &NodeFacts) -> NodeTables {
    let config = node.config();
    let routes = node
        .routes
        .iter()
        .filter_map(|r| classify(node, r).ok())
        .collect();
    let veth_mtu = node
        .links
        .iter()
        .filter(|l| node.is_pod_veth(l.ifindex))
        .map(|l| l.mtu)
        .min();
    let uplink_mtu = node
        .uplink_mtu()
        .map_or(config.uplink_mtu, clamp_mtu)
        .max(1);
    let encap = config.encap().unwrap_or(node.encap);
    let pod_mtu = veth_mtu.map_or(uplink_mtu.saturating_sub(encap.overhead()), clamp_mtu);
    let vxlan = node.vxlan.as_ref().map(|v| VxlanDevice {
        vni: v.vni.unwrap_or(weft_twin::wire::VXLAN_VNI),
        mtu: v.mtu.map_or(uplink_mtu.saturating_sub(50), clamp_mtu),
        mac: Mac(v.mac.unwrap_or([0; 6])),
        peers: v
            .neighbours
            .iter()
            .filter_map(|(vtep_ip, mac)| {
                let (_, underlay) = v.fdb.iter().find(|(m, _)| m == mac)?;
                Some(VxlanPeer {
                    vtep_ip: vtep_ip.octets(),
                    mac: Mac(*mac),
                    underlay_ip: underlay.octets(),
                })
            })
            .collect(),
    });
    let mut local_addrs: Vec<[u8; 4]> = node.addresses.iter().map(|a| a.octets()).collect();
    if !local_addrs.contains(&config.underlay_ip) {
        local_addrs.push(config.underlay_ip);
    }
    NodeTables {
        name: node.name.clone(),
        config,
        endpoints: node.maps.endpoints.clone(),
        pod_routes: node.maps.pod_routes.clone(),
        nodes: node.maps.nodes.clone(),
        routes,
        local_addrs,
        pod_mtu,
        vxlan,
    }
}

/// What [`node_tables`] left out or had to guess, for the operator.
pub fn notes(node: &NodeFacts) -> Vec<String> {
    let mut notes: Vec<String> = node
        .routes
        .iter()
        .filter_map(|r| classify(node, r).err())
        .map(|n| format!("{}: {n}", node.name))
        .collect();
    if node.maps.config.is_none() {
        notes.push(format!(
            "{}: no config map pinned: the uplink programs are taken as in mode {:?}",
            node.name, node.encap
        ));
    }
    if node.link(&node.uplink).is_none() {
        notes.push(format!("{}: no uplink {}", node.name, node.uplink));
    }
    if let Some(v) = &node.vxlan {
        for (vtep, mac) in &v.neighbours {
            if !v.fdb.iter().any(|(m, _)| m == mac) {
                notes.push(format!(
                    "{}: vxlan neighbour {vtep} ({}) has no FDB entry: packets to it are lost",
                    node.name,
                    Mac(*mac)
                ));
            }
        }
        if v.port.is_some_and(|p| p != VXLAN_PORT) {
            notes.push(format!(
                "{}: the vxlan device uses port {}; the trace assumes {VXLAN_PORT}",
                node.name,
                v.port.unwrap_or_default()
            ));
        }
    }
    notes
}

// ---------------------------------------------------------------------------
// Reading a live node (the I/O shell).

/// A route-netlink handle whose socket lives in the namespace at `netns`.
fn netlink_in(netns: &Path) -> Result<rtnetlink::Handle> {
    let runtime = tokio::runtime::Handle::current();
    let (conn, handle, _) = weft_dataplane::netns::run_in(netns, move || {
        let _entered = runtime.enter();
        rtnetlink::new_connection()
    })?
    .context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn read_links(handle: &rtnetlink::Handle) -> Result<Vec<LinkFact>> {
    let mut replies = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = replies.try_next().await.context("listing links")? {
        let mut link = LinkFact {
            name: String::new(),
            ifindex: msg.header.index,
            mtu: 0,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                _ => {}
            }
        }
        links.push(link);
    }
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

async fn read_addresses(handle: &rtnetlink::Handle) -> Result<Vec<Ipv4Addr>> {
    let mut replies = handle.address().get().execute();
    let mut addresses = Vec::new();
    while let Some(msg) = replies.try_next().await.context("listing addresses")? {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            addresses.push(ip);
        }
    }
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

fn route_fact(msg: &RouteMessage) -> Option<RouteFact> {
    let RouteAttributes {
        table,
        dst,
        gateway,
        oif,
        mtu,
    } = RouteAttributes::of(msg);
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let kind = match msg.header.kind {
        RouteType::Unicast => "unicast".to_string(),
        other => format!("{other:?}").to_ascii_lowercase(),
    };
    Some(RouteFact {
        dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        kind,
        mtu,
    })
}

async fn read_routes(handle: &rtnetlink::Handle) -> Result<Vec<RouteFact>> {
    let query = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut replies = handle.route().get(query).execute();
    let mut routes = Vec::new();
    while let Some(msg) = replies.try_next().await.context("listing routes")? {
        routes.extend(route_fact(&msg));
    }
    Ok(routes)
}

async fn read_vxlan(netns: &Path) -> Result<Option<VxlanFacts>> {
    use weft_dataplane::vxlan::{DEVICE_NAME, Vxlan};
    let vxlan = Vxlan::in_netns(netns)?;
    let Some(device) = vxlan.device(DEVICE_NAME).await? else {
        return Ok(None);
    };
    if !device.is_vxlan {
        return Ok(None);
    }
    let fdb = vxlan.fdb(device.ifindex).await?;
    let neighbours = vxlan.neighbours(device.ifindex).await?;
    Ok(Some(VxlanFacts {
        ifindex: device.ifindex,
        vni: device.vni,
        port: device.port,
        mtu: device.mtu,
        mac: device.mac.map(|m| m.0),
        neighbours: neighbours.iter().map(|n| (n.ip, n.mac.0)).collect(),
        fdb: fdb.iter().map(|e| (e.mac.0, e.remote)).collect(),
    }))
}

/// Reads a lab node: its pinned maps (which must exist), and its links,
/// addresses, main table and vxlan device from its namespace. Must run
/// inside a tokio runtime.
pub async fn read_node(lab: &LabState, node: &state::Node) -> Result<NodeFacts> {
    let netns = netns_path(&node.netns);
    if !netns.exists() {
        bail!(
            "node {}: its namespace {} does not exist",
            node.name,
            netns.display()
        );
    }
    let maps = read_pinned_maps(&node.bpffs_dir).with_context(|| {
        format!(
            "node {}: reading the pinned maps under {} (has its agent ever run?)",
            node.name,
            node.bpffs_dir.display()
        )
    })?;
    let read = async {
        let handle = netlink_in(&netns)?;
        let links = read_links(&handle).await?;
        let addresses = read_addresses(&handle).await?;
        let routes = read_routes(&handle).await?;
        let vxlan = read_vxlan(&netns).await?;
        anyhow::Ok((links, addresses, routes, vxlan))
    };
    let (links, addresses, routes, vxlan) = read
        .await
        .with_context(|| format!("node {}: reading namespace {}", node.name, node.netns))?;
    Ok(NodeFacts {
        name: node.name.clone(),
        underlay_ip: node.underlay_ip,
        encap: lab.encap,
        uplink: node.uplink.clone(),
        maps,
        links,
        addresses,
        routes,
        vxlan,
    })
}

/// The MTU of a pod's own interface, read in its namespace.
pub async fn read_pod_mtu(pod: &state::Pod) -> Result<Option<u32>> {
    let netns = netns_path(&pod.netns);
    let netlink = weft_dataplane::link::Netlink::in_netns(&netns)?;
    Ok(netlink.link(&pod.ifname).await?.and_then(|l| l.mtu))
}

// ---------------------------------------------------------------------------
// The verdict: what the steps amount to.

/// A pod veth of the lab: where a delivered packet ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAt {
    pub node: String,
    pub ifindex: u32,
    pub pod: String,
    pub ip: Option<Ipv4Addr>,
}

/// The lab's pods by (node, host veth ifindex), from the nodes' links.
pub fn pods_at(lab: &LabState, nodes: &[NodeFacts]) -> Vec<PodAt> {
    lab.pods
        .iter()
        .filter_map(|pod| {
            let node = nodes.iter().find(|n| n.name == pod.node)?;
            let link = node.link(pod.host_ifname.as_deref()?)?;
            Some(PodAt {
                node: node.name.clone(),
                ifindex: link.ifindex,
                pod: pod.name.clone(),
                ip: pod.ip,
            })
        })
        .collect()
}

fn pod_name<'a>(pods: &'a [PodAt], node: &str, ifindex: u32) -> Option<&'a PodAt> {
    pods.iter().find(|p| p.node == node && p.ifindex == ifindex)
}

/// An ICMP error a node sent about the probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IcmpAnswer {
    /// The node that sent it, and from which address.
    pub node: String,
    pub from: Ipv4Addr,
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
    /// Next-hop MTU, for "fragmentation needed".
    pub mtu: Option<u16>,
    pub description: String,
    /// The pod it reached, if it reached one.
    pub delivered_to: Option<String>,
    /// Where it was dropped, if it was.
    pub dropped: Option<String>,
}

/// What happened to the probe, in the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Handed to a pod's veth (`packets`: more than 1 when fragmented).
    Delivered {
        node: String,
        ifindex: u32,
        pod: Option<String>,
        packets: usize,
    },
    /// Addressed to a node itself: its own stack took it.
    Local { node: String },
    /// Dropped by a hook or the node's routing.
    Dropped {
        node: Option<String>,
        hook: String,
        reason: String,
    },
    /// Nothing dropped it, yet it went nowhere.
    Lost {
        node: Option<String>,
        hook: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// ICMP errors the probe caused.
    pub icmp: Vec<IcmpAnswer>,
}

fn same_flow(src: [u8; 4], dst: [u8; 4], protocol: u8, p: &Probe) -> bool {
    src == p.src && dst == p.dst && protocol == probe_protocol(p)
}

fn probe_protocol(p: &Probe) -> u8 {
    use weft_twin::wire::ProbeKind;
    match p.kind {
        ProbeKind::Tcp { .. } => 6,
        ProbeKind::Udp { .. } => 17,
        ProbeKind::Ping => 1,
    }
}

/// Whether a packet is the probe, or carries it in a tunnel.
fn carries(packet: &PacketSummary, p: &Probe) -> bool {
    same_flow(packet.src, packet.dst, packet.protocol, p)
        || packet
            .inner
            .is_some_and(|i| same_flow(i.src, i.dst, i.protocol, p))
}

/// The packet a step is about.
fn packet_of(step: &Step) -> Option<&PacketSummary> {
    match step {
        Step::PodVeth { packet, .. } => packet.as_ref(),
        Step::VethTooBig { .. } => None,
        Step::Routing { packet, .. }
        | Step::VxlanEncap { packet, .. }
        | Step::VxlanDecap { packet, .. }
        | Step::UplinkEgress { packet, .. }
        | Step::UplinkIngress { packet, .. }
        | Step::Underlay { packet }
        | Step::Router { packet, .. }
        | Step::Delivered { packet, .. } => Some(packet),
    }
}

/// The hook a step happened at, in a word or two.
pub fn hook_name(step: &Step) -> &'static str {
    match step {
        Step::PodVeth { .. } => "pod veth",
        Step::VethTooBig { .. } => "pod veth",
        Step::Routing { .. } => "routing",
        Step::VxlanEncap { .. } | Step::VxlanDecap { .. } => "vxlan device",
        Step::UplinkEgress { .. } => "uplink egress",
        Step::UplinkIngress { .. } => "uplink ingress",
        Step::Underlay { .. } => "underlay",
        Step::Router { .. } => "underlay router",
        Step::Delivered { .. } => "pod",
    }
}

/// Why a step dropped its packet, if it did.
pub fn drop_reason(step: &Step) -> Option<String> {
    match step {
        Step::PodVeth {
            action, counter, ..
        }
        | Step::UplinkEgress {
            action, counter, ..
        }
        | Step::UplinkIngress {
            action, counter, ..
        } if *action == TC_ACT_SHOT => Some(format!("TC_ACT_SHOT ({})", counter.name())),
        Step::VethTooBig { frame_len, mtu, .. } => {
            Some(format!("{frame_len}-byte frame above the veth MTU {mtu}"))
        }
        Step::Routing { decision, .. } => match decision {
            RouteDecision::FragmentationNeeded { mtu } => {
                Some(format!("too big for route MTU {mtu} with DF set"))
            }
            RouteDecision::TtlExceeded => Some("TTL exceeded".into()),
            RouteDecision::NoRoute => Some("no route".into()),
            RouteDecision::Malformed => Some("malformed IPv4".into()),
            RouteDecision::NeighborUnresolved { next_hop } => Some(format!(
                "next hop {} never answered ARP (no lab node has that address)",
                Ipv4Addr::from(*next_hop)
            )),
            _ => None,
        },
        Step::VxlanDecap { decision, .. } => match decision {
            VxlanDecision::Decapsulated { .. } => None,
            VxlanDecision::UnknownVni => Some("unknown VNI".into()),
            VxlanDecision::NotForThisVtep => Some("inner frame not for this VTEP".into()),
        },
        Step::Router {
            forwarded: false, ..
        } => Some("the underlay router has no route".into()),
        _ => None,
    }
}

/// The ICMP error a routing decision sends: (type, code, mtu, words).
fn icmp_of(decision: &RouteDecision) -> Option<(u8, u8, Option<u16>, &'static str)> {
    match *decision {
        RouteDecision::FragmentationNeeded { mtu } => {
            Some((3, 4, Some(mtu), "fragmentation needed"))
        }
        RouteDecision::NoRoute => Some((3, 0, None, "network unreachable")),
        RouteDecision::TtlExceeded => Some((11, 0, None, "time exceeded")),
        _ => None,
    }
}

/// What the steps of a trace of `probe` amount to. `nodes` gives each
/// node's ICMP source address (its underlay address), `pods` the names.
pub fn verdict(steps: &[Step], probe: &Probe, nodes: &[NodeTables], pods: &[PodAt]) -> Verdict {
    let about_probe = |s: &&Step| match s {
        Step::VethTooBig { .. } => true,
        _ => packet_of(s).is_some_and(|p| carries(p, probe)),
    };
    let delivered: Vec<(&str, u32)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Delivered {
                node,
                ifindex,
                packet,
            } if carries(packet, probe) => Some((node.as_str(), *ifindex)),
            _ => None,
        })
        .collect();
    let outcome = if let Some(&(node, ifindex)) = delivered.first() {
        Outcome::Delivered {
            node: node.to_string(),
            ifindex,
            pod: pod_name(pods, node, ifindex).map(|p| p.pod.clone()),
            packets: delivered.len(),
        }
    } else if let Some(step) = steps
        .iter()
        .filter(about_probe)
        .find(|s| drop_reason(s).is_some())
    {
        Outcome::Dropped {
            node: step.node().map(str::to_string),
            hook: hook_name(step).to_string(),
            reason: drop_reason(step).unwrap_or_default(),
        }
    } else if let Some(node) = steps.iter().filter(about_probe).find_map(|s| match s {
        Step::Routing {
            node,
            decision: RouteDecision::Local,
            ..
        } => Some(node.clone()),
        _ => None,
    }) {
        Outcome::Local { node }
    } else {
        let last = steps.iter().rev().find(about_probe);
        let reason = match last {
            None => "no step".to_string(),
            Some(Step::Routing {
                decision: RouteDecision::ViaVxlan { vtep, .. },
                ..
            }) => format!(
                "the vxlan device has no neighbour and FDB entry for VTEP {}",
                Ipv4Addr::from(*vtep)
            ),
            Some(Step::Underlay { packet }) => format!(
                "no node on the underlay took the frame for {}",
                Ipv4Addr::from(packet.dst)
            ),
            Some(step) => format!("nothing happened after {}", hook_name(step)),
        };
        Outcome::Lost {
            node: last.and_then(Step::node).map(str::to_string),
            hook: last.map_or("-", hook_name).to_string(),
            reason,
        }
    };

    let mut icmp = Vec::new();
    for step in steps.iter().filter(about_probe) {
        let Step::Routing { node, decision, .. } = step else {
            continue;
        };
        let Some((kind, code, mtu, words)) = icmp_of(decision) else {
            continue;
        };
        let from = nodes
            .iter()
            .find(|t| &t.name == node)
            .map_or(Ipv4Addr::UNSPECIFIED, |t| {
                Ipv4Addr::from(t.config.underlay_ip)
            });
        let is_answer = |p: &PacketSummary| {
            p.protocol == 1
                && p.src == from.octets()
                && p.dst == probe.src
                && p.ports == Some((u16::from(kind), u16::from(code)))
        };
        let delivered_to = steps.iter().find_map(|s| match s {
            Step::Delivered {
                node,
                ifindex,
                packet,
            } if is_answer(packet) => Some(
                pod_name(pods, node, *ifindex)
                    .map_or_else(|| format!("if{ifindex} on {node}"), |p| p.pod.clone()),
            ),
            _ => None,
        });
        let dropped = steps
            .iter()
            .filter(|s| packet_of(s).is_some_and(is_answer))
            .find_map(|s| {
                let reason = drop_reason(s)?;
                Some(format!(
                    "{} {}: {reason}",
                    s.node().unwrap_or("underlay"),
                    hook_name(s)
                ))
            });
        icmp.push(IcmpAnswer {
            node: node.clone(),
            from,
            kind,
            code,
            mtu,
            description: words.to_string(),
            delivered_to,
            dropped,
        });
    }
    Verdict { outcome, icmp }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Delivered {
                node,
                ifindex,
                pod,
                packets,
            } => {
                match pod {
                    Some(pod) => write!(f, "delivered to pod {pod} on {node}")?,
                    None => write!(
                        f,
                        "delivered to host veth if{ifindex} on {node}, which is no lab pod's"
                    )?,
                }
                if *packets > 1 {
                    write!(f, " in {packets} fragments")?;
                }
            }
            Outcome::Local { node } => write!(f, "delivered to {node} itself (its own address)")?,
            Outcome::Dropped { node, hook, reason } => write!(
                f,
                "dropped on {} at {hook}: {reason}",
                node.as_deref().unwrap_or("the underlay")
            )?,
            Outcome::Lost { node, hook, reason } => write!(
                f,
                "lost on {} after {hook}: {reason}",
                node.as_deref().unwrap_or("the underlay")
            )?,
        }
        for answer in &self.icmp {
            write!(
                f,
                "; answered with ICMP {} (type {} code {}",
                answer.description, answer.kind, answer.code
            )?;
            if let Some(mtu) = answer.mtu {
                write!(f, ", mtu {mtu}")?;
            }
            write!(f, ") from {} ({})", answer.node, answer.from)?;
            match (&answer.delivered_to, &answer.dropped) {
                (Some(pod), _) => write!(f, ", delivered to pod {pod}")?,
                (None, Some(dropped)) => write!(f, ", itself dropped on {dropped}")?,
                (None, None) => write!(f, ", which reached no pod")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Rendering.

/// One step as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepView {
    /// `null` for the underlay.
    pub node: Option<String>,
    pub hook: &'static str,
    /// The interface, where the step has one (pod veth, delivery).
    pub ifindex: Option<u32>,
    pub packet: Option<String>,
    /// The tc action of the three tc hooks (`TC_ACT_OK`, `TC_ACT_SHOT`,
    /// `TC_ACT_REDIRECT`).
    pub action: Option<&'static str>,
    /// The eBPF counter the tc hook bumped.
    pub counter: Option<&'static str>,
    /// What was decided, in words.
    pub decision: String,
    /// Whether the step dropped the packet.
    pub dropped: bool,
    /// The pod behind the veth of a pod veth step or a delivery.
    pub pod: Option<String>,
    /// The step as the text output prints it.
    pub text: String,
}

pub fn step_view(step: &Step, pods: &[PodAt]) -> StepView {
    let action = action_name;
    let (ifindex, tc, decision) = match step {
        Step::PodVeth {
            ifindex,
            action: a,
            counter,
            ..
        } => (
            Some(*ifindex),
            Some((action(*a), counter.name())),
            counter.name().to_string(),
        ),
        Step::VethTooBig { ifindex, .. } => (Some(*ifindex), None, String::new()),
        Step::Routing { decision, .. } => (None, None, decision.to_string()),
        Step::VxlanEncap {
            remote,
            vni,
            src_port,
            ..
        } => (
            None,
            None,
            format!(
                "encapsulated to {} vni {vni} udp src port {src_port}",
                Ipv4Addr::from(*remote)
            ),
        ),
        Step::VxlanDecap { decision, .. } => (None, None, decision.to_string()),
        Step::UplinkEgress {
            action: a, counter, ..
        }
        | Step::UplinkIngress {
            action: a, counter, ..
        } => (
            None,
            Some((action(*a), counter.name())),
            counter.name().to_string(),
        ),
        Step::Underlay { .. } => (None, None, "on the wire".to_string()),
        Step::Router { forwarded, .. } => (
            None,
            None,
            if *forwarded { "forwarded" } else { "no route" }.to_string(),
        ),
        Step::Delivered { ifindex, .. } => (Some(*ifindex), None, "delivered".to_string()),
    };
    let reason = drop_reason(step);
    StepView {
        node: step.node().map(str::to_string),
        hook: hook_name(step),
        ifindex,
        packet: packet_of(step).map(|p| p.to_string()),
        action: tc.map(|(a, _)| a),
        counter: tc.map(|(_, c)| c),
        decision: reason.clone().unwrap_or(decision),
        dropped: reason.is_some(),
        pod: match step {
            Step::PodVeth { node, ifindex, .. }
            | Step::VethTooBig { node, ifindex, .. }
            | Step::Delivered { node, ifindex, .. } => {
                pod_name(pods, node, *ifindex).map(|p| p.pod.clone())
            }
            _ => None,
        },
        text: step.to_string(),
    }
}

/// A whole trace: the request, the steps and the verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    pub lab: String,
    pub encap: &'static str,
    pub from: TraceFrom,
    pub to: String,
    pub packet: String,
    /// What the tables could not model, or had to guess.
    pub notes: Vec<String>,
    pub steps: Vec<StepView>,
    pub verdict: Verdict,
    /// The verdict in one line.
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceFrom {
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The MTU of the pod's own interface, when it could be read.
    pub mtu: Option<u32>,
}

impl TraceReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "trace in lab {} (encap {}): from pod {} ({}, {}) to {}\npacket: {}\n",
            self.lab, self.encap, self.from.pod, self.from.ip, self.from.node, self.to, self.packet
        );
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("{:>3}  {}\n", i + 1, step.text));
        }
        out.push_str(&format!("verdict: {}\n", self.summary));
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a trace report serializes")
    }
}

/// What `weftctl lab trace` was asked.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub from: String,
    pub to: Target,
    pub size: Option<u16>,
    pub df: bool,
}

/// Reads every node of the lab and traces the request through them.
/// Must run inside a tokio runtime.
pub async fn run(lab: &LabState, request: &TraceRequest) -> Result<TraceReport> {
    let Some(pod) = lab.pods.iter().find(|p| p.name == request.from) else {
        let known: Vec<&str> = lab.pods.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "lab {} has no pod {:?} (pods: {})",
            lab.lab,
            request.from,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let Some(src) = pod.ip else {
        bail!(
            "pod {} has no address (its CNI ADD did not succeed)",
            pod.name
        );
    };
    let mut facts = Vec::new();
    for node in &lab.nodes {
        facts.push(read_node(lab, node).await?);
    }
    let pod_mtu = read_pod_mtu(pod).await.ok().flatten();
    let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
    let mut notes: Vec<String> = facts.iter().flat_map(notes).collect();
    let probe = probe(src, request.to, request.size, request.df);
    let packet = probe.packet();
    if let Some(mtu) = pod_mtu
        && packet.len() > mtu as usize
    {
        notes.push(format!(
            "the packet ({} bytes) is above the MTU of {}'s {} ({mtu}): the pod's own stack \
             would refuse it{} before it reaches the veth; the trace starts at the veth",
            packet.len(),
            pod.name,
            pod.ifname,
            if request.df { "" } else { " or fragment it" },
        ));
    }
    let steps = weft_twin::trace(&tables, src, &packet).map_err(|e| {
        anyhow::anyhow!(
            "pod {} ({src}): {e} (the agent of {} has not routed it yet?)",
            pod.name,
            pod.node
        )
    })?;
    let pods = pods_at(lab, &facts);
    let verdict = verdict(&steps, &probe, &tables, &pods);
    Ok(TraceReport {
        lab: lab.lab.clone(),
        encap: lab.encap.name(),
        from: TraceFrom {
            pod: pod.name.clone(),
            node: pod.node.clone(),
            ip: src,
            mtu: pod_mtu,
        },
        to: request.to.to_string(),
        packet: PacketSummary::of_packet(&packet).map_or_else(String::new, |p| p.to_string()),
        notes,
        steps: steps.iter().map(|s| step_view(s, &pods)).collect(),
        summary: verdict.to_string(),
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::maps::{EndpointInfo, PodCidrKey, RemoteNode};
    use weft_common::verdict::Counter;

    const UPLINK: u32 = 2;
    const VXLAN: u32 = 3;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Node `i` of a lab in `encap` as read off the kernel: eth0 with
    /// 198.18.0.(10+i)/24, one pod 10.244.i.2 behind veth ifindex 10,
    /// routes to the other nodes' pod CIDRs as the agent programs them.
    fn facts(i: u8, of: u8, encap: Encap) -> NodeFacts {
        let me = Ipv4Addr::new(198, 18, 0, 10 + i);
        let pod = Ipv4Addr::new(10, 244, i, 2);
        let pod_mtu = 1500 - u32::from(encap.overhead());
        let mut links = vec![
            LinkFact {
                name: "lo".into(),
                ifindex: 1,
                mtu: 65536,
            },
            LinkFact {
                name: "eth0".into(),
                ifindex: UPLINK,
                mtu: 1500,
            },
            LinkFact {
                name: format!("weft0000000000{i}"),
                ifindex: 10,
                mtu: pod_mtu,
            },
        ];
        let mut routes = vec![
            RouteFact::unicast("198.18.0.0/24", None, UPLINK),
            RouteFact::unicast(&format!("{pod}/32"), None, 10),
        ];
        let mut maps = PinnedMaps {
            endpoints: vec![(10, EndpointInfo::new(pod.octets()))],
            config: Some(NodeConfig::new(me.octets(), encap).with_uplink_mtu(1500)),
            ..PinnedMaps::default()
        };
        let mut vxlan = (encap == Encap::Vxlan).then(|| VxlanFacts {
            ifindex: VXLAN,
            vni: Some(4096),
            port: Some(4789),
            mtu: Some(1450),
            mac: Some(Mac::vtep(me.octets()).0),
            neighbours: Vec::new(),
            fdb: Vec::new(),
        });
        if vxlan.is_some() {
            links.push(LinkFact {
                name: "weft.vxlan".into(),
                ifindex: VXLAN,
                mtu: 1450,
            });
        }
        let mut addresses = vec![ip("127.0.0.1"), me];
        if encap == Encap::Vxlan {
            addresses.push(Ipv4Addr::new(10, 244, i, 0));
        }
        for j in (1..=of).filter(|&j| j != i) {
            let other = Ipv4Addr::new(198, 18, 0, 10 + j);
            let cidr = format!("10.244.{j}.0/24");
            // The agent fills the node set in every mode.
            maps.nodes.push(other.octets());
            match encap {
                Encap::Ipip => {
                    routes.push(
                        RouteFact::unicast(&cidr, Some(&other.to_string()), UPLINK).with_mtu(1480),
                    );
                    maps.pod_routes.push((
                        PodCidrKey::new([10, 244, j, 0], 24),
                        RemoteNode::new(other.octets()),
                    ));
                }
                Encap::Vxlan => {
                    let vtep = Ipv4Addr::new(10, 244, j, 0);
                    routes.push(RouteFact::unicast(&cidr, Some(&vtep.to_string()), VXLAN));
                    let v = vxlan.as_mut().unwrap();
                    let mac = Mac::vtep(other.octets()).0;
                    v.neighbours.push((vtep, mac));
                    v.fdb.push((mac, other));
                }
                Encap::None => {
                    routes.push(RouteFact::unicast(&cidr, Some(&other.to_string()), UPLINK))
                }
            }
        }
        NodeFacts {
            name: format!("node{i}"),
            underlay_ip: me,
            encap,
            uplink: "eth0".into(),
            maps,
            links,
            addresses,
            routes,
            vxlan,
        }
    }

    fn cluster(encap: Encap) -> Vec<NodeFacts> {
        (1..=3).map(|i| facts(i, 3, encap)).collect()
    }

    fn pods() -> Vec<PodAt> {
        (1..=3)
            .map(|i| PodAt {
                node: format!("node{i}"),
                ifindex: 10,
                pod: format!("node{i}-a"),
                ip: Some(Ipv4Addr::new(10, 244, i, 2)),
            })
            .collect()
    }

    fn run_trace(encap: Encap, probe: Probe) -> (Vec<Step>, Verdict) {
        let tables: Vec<NodeTables> = cluster(encap).iter().map(node_tables).collect();
        let steps = weft_twin::trace(&tables, Ipv4Addr::from(probe.src), &probe.packet()).unwrap();
        let verdict = verdict(&steps, &probe, &tables, &pods());
        (steps, verdict)
    }

    fn show(steps: &[Step]) -> String {
        steps.iter().map(|s| format!("{s}\n")).collect()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "10.244.2.1".parse(),
            Ok(Target {
                ip: ip("10.244.2.1"),
                kind: TargetKind::Ping
            })
        );
        assert_eq!(
            "10.244.2.1/icmp".parse::<Target>().unwrap().kind,
            TargetKind::Ping
        );
        assert_eq!(
            "10.244.2.1:80/tcp".parse::<Target>().unwrap().kind,
            TargetKind::Tcp(80)
        );
        assert_eq!(
            "10.244.2.1:53/UDP".parse::<Target>().unwrap().kind,
            TargetKind::Udp(53)
        );
        for bad in [
            "",
            "pod-a",
            "10.244.2",
            "10.244.2.1:80",
            "10.244.2.1/tcp",
            "10.244.2.1:99999/tcp",
            "10.244.2.1:80/sctp",
            "10.244.2.1:7/icmp",
        ] {
            let err = bad.parse::<Target>().unwrap_err();
            assert!(err.contains("expected IP"), "{bad}: {err}");
        }
        assert_eq!(
            "10.244.2.1:80/tcp".parse::<Target>().unwrap().to_string(),
            "10.244.2.1:80/tcp"
        );
    }

    #[test]
    fn probes_have_the_size_and_df_asked() {
        let t: Target = "10.244.2.1:53/udp".parse().unwrap();
        let p = probe(ip("10.244.1.2"), t, Some(1000), true);
        assert_eq!(p.packet().len(), 1000);
        assert!(p.dont_fragment);
        let p = probe(ip("10.244.1.2"), t, None, false);
        assert_eq!(p.packet().len(), 28);
        assert!(!p.dont_fragment);
    }

    #[test]
    fn ipip_tables_are_the_maps_and_the_routes() {
        let node = &cluster(Encap::Ipip)[0];
        let t = node_tables(node);
        assert_eq!(t.name, "node1");
        assert_eq!(t.pod_mtu, 1480);
        assert_eq!(t.pod_ifindex([10, 244, 1, 2]), Some(10));
        assert_eq!(t.nodes, node.maps.nodes);
        assert_eq!(t.pod_routes.len(), 2);
        let r = *t.lookup([10, 244, 2, 9]).unwrap();
        assert_eq!(
            r.via,
            Via::Uplink {
                gateway: Some([198, 18, 0, 12])
            }
        );
        assert_eq!(t.route_mtu(&r), 1480);
        assert_eq!(
            t.lookup([198, 18, 0, 13]).unwrap().via,
            Via::Uplink { gateway: None }
        );
        assert!(t.local_addrs.contains(&[198, 18, 0, 11]));
        assert!(t.vxlan.is_none());
        assert!(notes(node).is_empty(), "{:?}", notes(node));
    }

    #[test]
    fn vxlan_tables_join_neighbours_and_fdb() {
        let mut node = cluster(Encap::Vxlan).remove(1);
        let t = node_tables(&node);
        let v = t.vxlan.as_ref().unwrap();
        assert_eq!((v.vni, v.mtu), (4096, 1450));
        assert_eq!(v.mac, Mac::vtep([198, 18, 0, 12]));
        assert_eq!(v.peers.len(), 2);
        assert_eq!(
            v.peers[0],
            VxlanPeer {
                vtep_ip: [10, 244, 1, 0],
                mac: Mac::vtep([198, 18, 0, 11]),
                underlay_ip: [198, 18, 0, 11],
            }
        );
        assert_eq!(
            t.lookup([10, 244, 3, 7]).unwrap().via,
            Via::Vxlan {
                gateway: [10, 244, 3, 0]
            }
        );
        assert!(t.local_addrs.contains(&[10, 244, 2, 0]), "the VTEP address");
        // A neighbour without its FDB entry is no peer, and said so.
        node.vxlan.as_mut().unwrap().fdb.remove(0);
        assert_eq!(node_tables(&node).vxlan.unwrap().peers.len(), 1);
        let notes = notes(&node);
        assert!(
            notes.iter().any(|n| n.contains("no FDB entry")),
            "{notes:?}"
        );
    }

    #[test]
    fn unmodelled_routes_are_left_out_and_noted() {
        let mut node = facts(1, 2, Encap::Ipip);
        node.routes.push(RouteFact {
            kind: "blackhole".into(),
            oif: None,
            ..RouteFact::unicast("10.244.1.0/24", None, 0)
        });
        node.links.push(LinkFact {
            name: "dummy0".into(),
            ifindex: 40,
            mtu: 1500,
        });
        node.routes
            .push(RouteFact::unicast("192.0.2.0/24", None, 40));
        let t = node_tables(&node);
        assert_eq!(t.routes.len(), 3, "{:?}", t.routes);
        let notes = notes(&node);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("blackhole 10.244.1.0/24"), "{notes:?}");
        assert!(notes[1].contains("dev dummy0"), "{notes:?}");
    }

    #[test]
    fn without_a_config_map_the_lab_mode_and_uplink_mtu_stand_in() {
        let mut node = facts(1, 2, Encap::Vxlan);
        node.maps.config = None;
        let t = node_tables(&node);
        assert_eq!(t.config.encap(), Some(Encap::Vxlan));
        assert_eq!(t.config.uplink_mtu, 1500);
        assert_eq!(t.config.underlay_ip, [198, 18, 0, 11]);
        assert!(notes(&node).iter().any(|n| n.contains("no config map")));
    }

    #[test]
    fn ipip_pod_to_pod_is_encapsulated_and_delivered() {
        let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
        let (steps, verdict) = run_trace(Encap::Ipip, probe);
        let text = show(&steps);
        let counters: Vec<Counter> = steps.iter().filter_map(Step::counter).collect();
        assert_eq!(
            counters,
            [Counter::Pass, Counter::Encapsulate, Counter::Decapsulate],
            "{text}"
        );
        assert_eq!(
            verdict.outcome,
            Outcome::Delivered {
                node: "node2".into(),
                ifindex: 10,
                pod: Some("node2-a".into()),
                packets: 1
            }
        );
        assert!(verdict.icmp.is_empty());
        assert_eq!(verdict.to_string(), "delivered to pod node2-a on node2");
    }

    #[test]
    fn vxlan_pod_to_pod_goes_through_the_device() {
        let probe = Probe::tcp([10, 244, 1, 2], [10, 244, 3, 2], 80);
        let (steps, verdict) = run_trace(Encap::Vxlan, probe);
        let text = show(&steps);
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::VxlanEncap { node, .. } if node == "node1")),
            "{text}"
        );
        assert!(
            steps.iter().any(|s| matches!(
                s,
                Step::VxlanDecap {
                    node,
                    decision: VxlanDecision::Decapsulated { vni: 4096 },
                    ..
                } if node == "node3"
            )),
            "{text}"
        );
        assert_eq!(verdict.to_string(), "delivered to pod node3-a on node3");
    }

    #[test]
    fn a_missing_fdb_entry_loses_the_packet_in_the_device() {
        let mut facts = cluster(Encap::Vxlan);
        facts[0].vxlan.as_mut().unwrap().fdb.clear();
        let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
        let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
        let steps = weft_twin::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
        let v = verdict(&steps, &probe, &tables, &pods());
        assert!(
            matches!(&v.outcome, Outcome::Lost { hook, reason, .. }
                if hook == "routing" && reason.contains("VTEP 10.244.2.0")),
            "{v}\n{}",
            show(&steps)
        );
    }

    #[test]
    fn an_oversized_df_probe_is_answered_with_frag_needed() {
        let probe = Probe::udp([10, 244, 1, 2], [10, 244, 2, 2], 53)
            .with_len(1481)
            .with_df(true);
        let (steps, verdict) = run_trace(Encap::Ipip, probe);
        assert!(
            matches!(&verdict.outcome, Outcome::Dropped { node: Some(n), hook, .. }
                if n == "node1" && hook == "routing"),
            "{verdict}\n{}",
            show(&steps)
        );
        assert_eq!(verdict.icmp.len(), 1);
        let answer = &verdict.icmp[0];
        assert_eq!((answer.kind, answer.code, answer.mtu), (3, 4, Some(1480)));
        assert_eq!(answer.from, ip("198.18.0.11"));
        assert_eq!(answer.delivered_to.as_deref(), Some("node1-a"));
        assert_eq!(
            verdict.to_string(),
            "dropped on node1 at routing: too big for route MTU 1480 with DF set; answered \
             with ICMP fragmentation needed (type 3 code 4, mtu 1480) from node1 \
             (198.18.0.11), delivered to pod node1-a"
        );
        // Above the veth's MTU, the veth itself refuses the frame.
        let probe = probe.with_len(1500);
        let (_, verdict) = run_trace(Encap::Ipip, probe);
        assert!(
            matches!(&verdict.outcome, Outcome::Dropped { hook, reason, .. }
                if hook == "pod veth" && reason.contains("above the veth MTU 1480")),
            "{verdict}"
        );
    }

    #[test]
    fn without_df_a_big_probe_arrives_in_fragments() {
        let probe = Probe::udp([10, 244, 1, 2], [10, 244, 2, 2], 53)
            .with_len(1400)
            .with_df(false);
        let mut facts = cluster(Encap::Ipip);
        // A route MTU below the packet: the kernel fragments.
        facts[0].routes[2].mtu = Some(1000);
        let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
        let steps = weft_twin::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
        let v = verdict(&steps, &probe, &tables, &pods());
        assert_eq!(
            v.to_string(),
            "delivered to pod node2-a on node2 in 2 fragments",
            "{}",
            show(&steps)
        );
    }

    #[test]
    fn an_address_nobody_has_gets_an_honest_answer() {
        // Inside a remote pod CIDR: node2 has no route for it.
        let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 200]);
        let (steps, verdict) = run_trace(Encap::Ipip, probe);
        assert!(
            matches!(&verdict.outcome, Outcome::Dropped { node: Some(n), reason, .. }
                if n == "node2" && reason == "no route"),
            "{verdict}\n{}",
            show(&steps)
        );
        assert_eq!(verdict.icmp[0].kind, 3);
        assert_eq!(verdict.icmp[0].code, 0);
        assert_eq!(verdict.icmp[0].from, ip("198.18.0.12"));
        assert_eq!(verdict.icmp[0].delivered_to.as_deref(), Some("node1-a"));
        // Outside the cluster: no route on the first node.
        let probe = Probe::udp([10, 244, 1, 2], [203, 0, 113, 9], 53);
        let (_, verdict) = run_trace(Encap::None, probe);
        assert!(
            verdict.to_string().starts_with(
                "dropped on node1 at routing: no route; answered with ICMP network unreachable"
            ),
            "{verdict}"
        );
    }

    #[test]
    fn a_node_address_is_local() {
        let probe = Probe::ping([10, 244, 1, 2], [198, 18, 0, 12]);
        let (_, verdict) = run_trace(Encap::Ipip, probe);
        assert_eq!(
            verdict.outcome,
            Outcome::Local {
                node: "node2".into()
            }
        );
    }

    #[test]
    fn a_next_hop_that_is_no_node_never_answers() {
        let mut facts = cluster(Encap::None);
        facts[0]
            .routes
            .push(RouteFact::unicast("0.0.0.0/0", Some("198.18.0.1"), UPLINK));
        let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
        let probe = Probe::ping([10, 244, 1, 2], [203, 0, 113, 9]);
        let steps = weft_twin::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
        let v = verdict(&steps, &probe, &tables, &pods());
        assert!(
            matches!(&v.outcome, Outcome::Dropped { reason, .. } if reason.contains("198.18.0.1 never answered ARP")),
            "{v}\n{}",
            show(&steps)
        );
    }

    #[test]
    fn a_veth_without_endpoint_entry_drops_at_the_guard() {
        let mut facts = cluster(Encap::Ipip);
        facts[0].maps.endpoints.clear();
        let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
        let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
        let steps = weft_twin::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
        let v = verdict(&steps, &probe, &tables, &pods());
        assert_eq!(
            v.to_string(),
            "dropped on node1 at pod veth: TC_ACT_SHOT (drop_unknown_endpoint)"
        );
    }

    #[test]
    fn json_steps_name_hook_counter_and_pod() {
        let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
        let (steps, _) = run_trace(Encap::Ipip, probe);
        let views: Vec<StepView> = steps.iter().map(|s| step_view(s, &pods())).collect();
        assert_eq!(views[0].hook, "pod veth");
        assert_eq!(views[0].action, Some("TC_ACT_OK"));
        assert_eq!(views[0].counter, Some("pass"));
        assert_eq!(views[0].pod.as_deref(), Some("node1-a"));
        assert!(!views[0].dropped);
        let egress = views.iter().find(|v| v.hook == "uplink egress").unwrap();
        assert_eq!(egress.counter, Some("encapsulate"));
        let last = views.last().unwrap();
        assert_eq!(
            (last.hook, last.pod.as_deref(), last.node.as_deref()),
            ("pod", Some("node2-a"), Some("node2"))
        );
        let json = serde_json::to_value(&views).unwrap();
        assert_eq!(json[0]["counter"], "pass");
        assert!(
            json[0]["text"]
                .as_str()
                .unwrap()
                .contains("TC_ACT_OK (pass)")
        );
    }
}
