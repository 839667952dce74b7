//! Kernel facts into the twin's tables: what was read off a live node
//! (its pinned maps, links, addresses, main table and vxlan entries, as the
//! dataplane's readers return them) becomes the [`NodeTables`] the trace
//! walks, and notes on what the tables cannot model.

use std::net::Ipv4Addr;

use weft_common::maps::NodeConfig;
use weft_dataplane::bpf::PinnedMaps;
use weft_dataplane::link::LinkState;
use weft_dataplane::names::is_host_ifname;
use weft_dataplane::route::TableRoute;
use weft_dataplane::vxlan::VxlanReading;

use crate::Encap;
use crate::node::{KernelRoute, NodeTables, Via, VxlanDevice, VxlanPeer};
use crate::wire::{self, Mac, VXLAN_PORT};

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
    pub links: Vec<LinkState>,
    /// Every IPv4 address of the namespace.
    pub addresses: Vec<Ipv4Addr>,
    /// The main table.
    pub routes: Vec<TableRoute>,
    /// The vxlan device, if the node has one.
    pub vxlan: Option<VxlanReading>,
}

impl NodeFacts {
    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }

    fn link_by_index(&self, ifindex: u32) -> Option<&LinkState> {
        self.links.iter().find(|l| l.index == ifindex)
    }

    fn is_pod_veth(&self, ifindex: u32) -> bool {
        self.maps.endpoints.iter().any(|(i, _)| *i == ifindex)
            || self
                .link_by_index(ifindex)
                .is_some_and(|l| is_host_ifname(&l.name))
    }

    fn uplink_mtu(&self) -> Option<u32> {
        self.link(&self.uplink).and_then(|l| l.mtu)
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
fn classify(node: &NodeFacts, route: &TableRoute) -> Result<KernelRoute, String> {
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
    let uplink = node.link(&node.uplink).map(|l| l.index);
    let via = if Some(oif) == uplink {
        Via::Uplink { gateway }
    } else if node.vxlan.as_ref().is_some_and(|v| v.device.ifindex == oif) {
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
        .filter(|l| node.is_pod_veth(l.index))
        .filter_map(|l| l.mtu)
        .min();
    let uplink_mtu = node
        .uplink_mtu()
        .map_or(config.uplink_mtu, clamp_mtu)
        .max(1);
    let encap = config.encap().unwrap_or(node.encap);
    let pod_mtu = veth_mtu.map_or(uplink_mtu.saturating_sub(encap.overhead()), clamp_mtu);
    let vxlan = node.vxlan.as_ref().map(|v| VxlanDevice {
        vni: v.device.vni.unwrap_or(wire::VXLAN_VNI),
        mtu: v
            .device
            .mtu
            .map_or(uplink_mtu.saturating_sub(50), clamp_mtu),
        mac: Mac(v.device.mac.map_or([0; 6], |m| m.0)),
        peers: v
            .neighbours
            .iter()
            .filter_map(|neighbour| {
                let fdb = v.fdb.iter().find(|f| f.mac == neighbour.mac)?;
                Some(VxlanPeer {
                    vtep_ip: neighbour.ip.octets(),
                    mac: Mac(neighbour.mac.0),
                    underlay_ip: fdb.remote.octets(),
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
        policy: crate::policy::PolicyTables {
            ipcache: node.maps.ipcache.clone(),
            policy: node.maps.policy.clone(),
            revision: node.maps.revision,
        },
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
        for neighbour in &v.neighbours {
            if !v.fdb.iter().any(|f| f.mac == neighbour.mac) {
                notes.push(format!(
                    "{}: vxlan neighbour {} ({}) has no FDB entry: packets to it are lost",
                    node.name,
                    neighbour.ip,
                    Mac(neighbour.mac.0)
                ));
            }
        }
        if v.device.port.is_some_and(|p| p != VXLAN_PORT) {
            notes.push(format!(
                "{}: the vxlan device uses port {}; the trace assumes {VXLAN_PORT}",
                node.name,
                v.device.port.unwrap_or_default()
            ));
        }
    }
    notes
}
