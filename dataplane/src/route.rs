//! Weft-owned routes: the desired set, the pure diff against the kernel, and
//! the netlink shell that applies it.
//!
//! Weft marks every route it installs with its own route protocol number
//! ([`RTPROT_WEFT`]), so a reconciler can list exactly what it owns, adopt it
//! after a restart, and never touch routes that belong to anyone else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

// The netlink shell, apart so that the pure half builds without it
// (the agent's calculation uses `Route` and `plan` only).
#[cfg(feature = "kernel")]
mod table;
#[cfg(feature = "kernel")]
pub use table::*;

/// The route protocol number of routes Weft programs from its own state
/// (local pods and statically routed pod CIDRs). 0x57 is 'W'; it is not one
/// of the numbers in iproute2's rt_protos.
pub const RTPROT_WEFT: u8 = 0x57;

/// The route protocol number of routes Weft learned over BGP, so operators
/// can tell them apart (`ip route show proto 0x58`) and a restarted agent
/// knows which routes graceful restart kept.
pub const RTPROT_WEFT_BGP: u8 = 0x58;

/// One IPv4 route in the main table, as Weft wants it.
///
/// Every field is part of the route's identity: [`plan`] replaces a route
/// whose next hop, protocol, `onlink` flag or MTU differs, and
/// `RouteTable::owned` reads all of them back, so a restarted agent adopts
/// exactly what it installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Network,
    /// The next hop, or `None` for a route straight onto a link (a local pod).
    pub gateway: Option<Ipv4Addr>,
    /// The output interface's index.
    pub oif: u32,
    /// [`RTPROT_WEFT`] or [`RTPROT_WEFT_BGP`].
    pub protocol: u8,
    /// The next hop is on the link even though it is on none of the link's
    /// subnets (`RTNH_F_ONLINK` in the route header's flags, `ip route ...
    /// onlink`): routes via a VXLAN VTEP address.
    pub onlink: bool,
    /// The route's MTU metric (`RTA_METRICS`/`RTAX_MTU`, `ip route ... mtu
    /// N`), or `None` for the output device's MTU. Routes into an IP-in-IP
    /// tunnel carry the pod MTU, so a forwarded DF packet too big for the
    /// tunnel gets ICMP "fragmentation needed" and local sockets pick the
    /// right MSS.
    pub mtu: Option<u32>,
}

impl Route {
    /// A route to a pod on this node: its /32 straight onto the host veth.
    pub fn to_local_pod(ip: Ipv4Addr, host_ifindex: u32) -> Route {
        Route {
            dst: Ipv4Network::from(ip),
            gateway: None,
            oif: host_ifindex,
            protocol: RTPROT_WEFT,
            onlink: false,
            mtu: None,
        }
    }

    /// A route to another node's pod CIDR via that node's underlay address.
    pub fn to_pod_cidr(cidr: Ipv4Network, node_ip: Ipv4Addr, uplink_ifindex: u32) -> Route {
        Route {
            dst: cidr,
            gateway: Some(node_ip),
            oif: uplink_ifindex,
            protocol: RTPROT_WEFT,
            onlink: false,
            mtu: None,
        }
    }

    /// A route to another node's pod CIDR through the VXLAN device: via that
    /// node's VTEP address (see [`crate::names::vtep_ip`]), which is on no
    /// subnet of the device, hence onlink. The permanent neighbour entry for
    /// the VTEP address and the FDB entry for its MAC come from
    /// `vxlan::Vxlan::sync_peers`.
    pub fn via_vxlan(cidr: Ipv4Network, vtep_ip: Ipv4Addr, vxlan_ifindex: u32) -> Route {
        Route {
            dst: cidr,
            gateway: Some(vtep_ip),
            oif: vxlan_ifindex,
            protocol: RTPROT_WEFT,
            onlink: true,
            mtu: None,
        }
    }

    /// A route learned over BGP: its prefix via the advertised next hop.
    pub fn learned(dst: Ipv4Network, next_hop: Ipv4Addr, uplink_ifindex: u32) -> Route {
        Route {
            dst,
            gateway: Some(next_hop),
            oif: uplink_ifindex,
            protocol: RTPROT_WEFT_BGP,
            onlink: false,
            mtu: None,
        }
    }

    /// The same route with an MTU metric (`None`: the device's MTU).
    pub fn with_mtu(self, mtu: Option<u32>) -> Route {
        Route { mtu, ..self }
    }

    /// The same route with the next hop marked on-link, or not.
    pub fn with_onlink(self, onlink: bool) -> Route {
        Route { onlink, ..self }
    }

    /// Whether `self` and `other` may be one kernel route before and after an
    /// in-place replace: the kernel matches a delete on destination, protocol
    /// and next hop (and only on the metrics the request names), never on
    /// the onlink flag, so deleting the old one could remove the new one.
    fn same_next_hop(&self, other: &Route) -> bool {
        self.dst == other.dst
            && self.gateway == other.gateway
            && self.oif == other.oif
            && self.protocol == other.protocol
    }
}

/// What must change in the kernel to turn `actual` into `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to install or to replace in place (same destination, another
    /// next hop, protocol, onlink flag or MTU).
    pub upsert: Vec<Route>,
    /// Owned routes whose destination is no longer wanted.
    pub remove: Vec<Route>,
}

impl RoutePlan {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// Compares by destination: one owned route per destination. A destination
/// whose route changed in any field is replaced in place (no window without
/// a route); extra owned routes to a wanted destination are removed.
///
/// A route the upsert replaces in place is not listed for removal when it
/// differs from the new one only in its onlink flag or MTU: the kernel
/// cannot tell the two apart in a delete request, which would then remove
/// the route just installed.
pub fn plan(desired: &[Route], actual: &[Route]) -> RoutePlan {
    let want: BTreeMap<Ipv4Network, Route> = desired.iter().map(|r| (r.dst, *r)).collect();
    let mut have: BTreeMap<Ipv4Network, Vec<Route>> = BTreeMap::new();
    for r in actual {
        have.entry(r.dst).or_default().push(*r);
    }
    let mut out = RoutePlan::default();
    for (dst, route) in &want {
        let existing = have.get(dst).map(Vec::as_slice).unwrap_or(&[]);
        if !existing.contains(route) {
            out.upsert.push(*route);
        }
        // Anything else at this destination is a leftover. A replace rewrites
        // one entry in place, so removing the old one may find it gone already.
        out.remove.extend(
            existing
                .iter()
                .filter(|r| *r != route && !r.same_next_hop(route)),
        );
    }
    for (dst, routes) in &have {
        if !want.contains_key(dst) {
            out.remove.extend(routes.iter().copied());
        }
    }
    out.remove.sort();
    out.remove.dedup();
    out
}

/// Any IPv4 route of the main table, whoever owns it, as the kernel
/// reports it: what `weftctl lab trace` reads of a node's routing
/// ([`RouteTable::main_table`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// `unicast`, `blackhole`, `unreachable`, ... (the kernel's type).
    pub kind: String,
    pub mtu: Option<u32>,
}

impl TableRoute {
    /// A unicast route, for callers building routes by hand (tests).
    pub fn unicast(dst: &str, gateway: Option<&str>, oif: u32) -> TableRoute {
        TableRoute {
            dst: dst.parse().expect("a CIDR"),
            gateway: gateway.map(|g| g.parse().expect("an address")),
            oif: Some(oif),
            kind: "unicast".into(),
            mtu: None,
        }
    }

    pub fn with_mtu(self, mtu: u32) -> TableRoute {
        TableRoute {
            mtu: Some(mtu),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: &str, ifindex: u32) -> Route {
        Route::to_local_pod(ip.parse().unwrap(), ifindex)
    }
    fn cidr(c: &str, via: &str) -> Route {
        Route::to_pod_cidr(c.parse().unwrap(), via.parse().unwrap(), 2)
    }

    #[test]
    fn nothing_to_do_when_kernel_matches() {
        let want = vec![pod("10.244.1.2", 7), cidr("10.244.2.0/24", "198.18.0.12")];
        assert!(plan(&want, &want).is_empty());
    }

    #[test]
    fn adds_missing_and_removes_stale() {
        let want = vec![pod("10.244.1.2", 7), cidr("10.244.2.0/24", "198.18.0.12")];
        let have = vec![pod("10.244.1.2", 7), pod("10.244.1.9", 8)];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, vec![cidr("10.244.2.0/24", "198.18.0.12")]);
        assert_eq!(p.remove, vec![pod("10.244.1.9", 8)]);
    }

    #[test]
    fn changed_next_hop_is_replaced_in_place() {
        let want = vec![cidr("10.244.2.0/24", "198.18.0.13")];
        let have = vec![cidr("10.244.2.0/24", "198.18.0.12")];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, want);
        assert_eq!(p.remove, have);
    }

    #[test]
    fn duplicate_owned_routes_to_one_destination_are_trimmed() {
        let want = vec![pod("10.244.1.2", 7)];
        let have = vec![pod("10.244.1.2", 7), pod("10.244.1.2", 9)];
        let p = plan(&want, &have);
        assert!(p.upsert.is_empty());
        assert_eq!(p.remove, vec![pod("10.244.1.2", 9)]);
    }

    #[test]
    fn a_static_route_that_becomes_learned_is_replaced() {
        let have = vec![cidr("10.244.2.0/24", "198.18.0.12")];
        let want = vec![Route::learned(
            "10.244.2.0/24".parse().unwrap(),
            "198.18.0.12".parse().unwrap(),
            2,
        )];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, want);
        assert_eq!(p.remove, have);
    }

    #[test]
    fn empty_desired_state_removes_everything_owned() {
        let have = vec![pod("10.244.1.2", 7), cidr("10.244.2.0/24", "198.18.0.12")];
        let p = plan(&[], &have);
        assert!(p.upsert.is_empty());
        assert_eq!(p.remove.len(), 2);
    }

    fn vxlan(c: &str, vtep: &str) -> Route {
        Route::via_vxlan(c.parse().unwrap(), vtep.parse().unwrap(), 9)
    }

    #[test]
    fn via_vxlan_is_onlink_weft_route_without_mtu() {
        let r = vxlan("10.244.2.0/24", "10.244.2.0");
        assert!(r.onlink);
        assert_eq!(r.mtu, None);
        assert_eq!(r.protocol, RTPROT_WEFT);
        assert_eq!(r.gateway, Some("10.244.2.0".parse().unwrap()));
        assert_eq!(r.oif, 9);
        let plain = cidr("10.244.2.0/24", "198.18.0.12");
        assert!(!plain.onlink);
        assert_eq!(plain.mtu, None);
        assert_eq!(plain.with_mtu(Some(1480)).mtu, Some(1480));
        assert!(plain.with_onlink(true).onlink);
    }

    #[test]
    fn equal_mtu_and_onlink_need_nothing() {
        let want = vec![
            cidr("10.244.2.0/24", "198.18.0.12").with_mtu(Some(1480)),
            vxlan("10.244.3.0/24", "10.244.3.0"),
        ];
        assert!(plan(&want, &want.clone()).is_empty());
    }

    #[test]
    fn changed_mtu_is_replaced_in_place_without_a_removal() {
        let have = vec![cidr("10.244.2.0/24", "198.18.0.12").with_mtu(Some(1480))];
        for mtu in [Some(1450), None] {
            let want = vec![cidr("10.244.2.0/24", "198.18.0.12").with_mtu(mtu)];
            let p = plan(&want, &have);
            assert_eq!(p.upsert, want);
            // A delete of the old route could hit the new one: the replace
            // already rewrote it.
            assert!(p.remove.is_empty(), "{p:?}");
        }
        let have = vec![cidr("10.244.2.0/24", "198.18.0.12")];
        let want = vec![cidr("10.244.2.0/24", "198.18.0.12").with_mtu(Some(1480))];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, want);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn changed_onlink_is_replaced_in_place_without_a_removal() {
        let want = vec![vxlan("10.244.2.0/24", "10.244.2.0")];
        let have = vec![vxlan("10.244.2.0/24", "10.244.2.0").with_onlink(false)];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, want);
        assert!(p.remove.is_empty());
        let p = plan(&have, &want);
        assert_eq!(p.upsert, have);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn switching_from_uplink_to_vxlan_replaces_and_removes_the_old_next_hop() {
        let have = vec![cidr("10.244.2.0/24", "198.18.0.12").with_mtu(Some(1480))];
        let want = vec![vxlan("10.244.2.0/24", "10.244.2.0")];
        let p = plan(&want, &have);
        assert_eq!(p.upsert, want);
        assert_eq!(p.remove, have);
    }
}
