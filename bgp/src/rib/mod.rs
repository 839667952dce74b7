//! The RIBs of one BGP speaker (RFC 4271 sections 3.2 and 9): every peer's
//! Adj-RIB-In, the Loc-RIB chosen from them and our own routes, and every
//! peer's Adj-RIB-Out, with iBGP, eBGP and route reflection (RFC 4456)
//! export rules and graceful restart's stale routes (RFC 4724).
//!
//! Sans-I/O: every operation takes values and returns a [`RibChanges`], the
//! Loc-RIB changes (for the owner to program the kernel with) and the
//! UPDATEs to send, in a deterministic order. Nothing here fails: routes
//! refused on import (loops) are counted, not errors, and do not reset the
//! session.
//!
//! Storage is indexed by prefix (each prefix's routes from every peer sit
//! together), so an UPDATE for a few prefixes costs the decision for those
//! prefixes plus one export check per peer per changed best route.

mod decision;
mod export;
#[cfg(test)]
mod propagation_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::wire::{AsPath, Origin, PathAttributes, Update};

pub use decision::{Candidate, Step, compare, compare_explained, select_best};
pub use export::{NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED};

use export::Source;

/// A peer, numbered by the RIB's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// What the RIB needs to know about an established session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    /// The peer's address: the last tie-break of the decision process.
    pub address: IpAddr,
    /// Our address on this session: the NEXT_HOP of next hop self.
    pub local_address: Ipv4Addr,
    /// The peer's AS; iBGP iff it is our own.
    pub asn: u32,
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer is a route reflection client of ours (only meaningful when
    /// we are a reflector, [`RibConfig::cluster_id`]).
    pub rr_client: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RibConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// `Some`: we are a route reflector of this cluster (usually our router
    /// id, see [`RibConfig::route_reflector`]).
    pub cluster_id: Option<Ipv4Addr>,
    /// LOCAL_PREF of eBGP-learned routes and of iBGP routes without one.
    pub default_local_pref: u32,
    /// Advertise eBGP-learned routes to iBGP peers with ourselves as the
    /// next hop. On by default: a pod network has no IGP carrying the
    /// addresses of the eBGP peers (top-of-rack routers) to the other
    /// nodes, so an unchanged eBGP next hop would often be unresolvable
    /// there, while this node is always reachable. Routes reflected
    /// between iBGP peers always keep their next hop (RFC 4456 section 10).
    pub next_hop_self_ibgp: bool,
}

impl RibConfig {
    /// Not a route reflector, default LOCAL_PREF 100, next hop self towards
    /// iBGP peers for eBGP-learned routes.
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> RibConfig {
        RibConfig {
            local_as,
            router_id,
            cluster_id: None,
            default_local_pref: 100,
            next_hop_self_ibgp: true,
        }
    }

    /// Makes us a route reflector; the cluster id defaults to the router id.
    pub fn route_reflector(mut self) -> RibConfig {
        self.cluster_id.get_or_insert(self.router_id);
        self
    }
}

/// A route in an Adj-RIB-In, as accepted. The NEXT_HOP (or MP_REACH_NLRI's
/// first next hop) is lifted into `next_hop`; `attributes` has no
/// `next_hop`, `mp_reach` or `mp_unreach` (those belong to the message, not
/// to the route). eBGP-learned routes carry the default LOCAL_PREF and no
/// ORIGINATOR_ID or CLUSTER_LIST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRoute {
    pub next_hop: IpAddr,
    /// Shared by the prefixes of one UPDATE and with the Loc-RIB.
    pub attributes: Arc<PathAttributes>,
    /// Kept over a graceful restart of the peer and not re-announced yet.
    pub stale: bool,
}

/// The Loc-RIB's route to a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BestRoute {
    pub prefix: IpNetwork,
    /// For originated routes: the next hop given to `originate`, else our
    /// router id (the owner programs only learned routes).
    pub next_hop: IpAddr,
    /// `None`: originated by us.
    pub from: Option<PeerId>,
    /// As in [`ReceivedRoute::attributes`] (the same allocation); for
    /// originated routes ORIGIN IGP and an empty AS_PATH.
    pub attributes: Arc<PathAttributes>,
    pub ibgp: bool,
    pub stale: bool,
}

/// One Loc-RIB change, for the owner to program the kernel with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocRibChange {
    pub prefix: IpNetwork,
    /// `None`: no route any more.
    pub best: Option<BestRoute>,
}

/// What an operation changed: Loc-RIB changes sorted by prefix, and UPDATEs
/// to send sorted by peer (for each peer, withdrawals first, then
/// announcements ordered by their first prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RibChanges {
    pub loc_rib: Vec<LocRibChange>,
    pub outgoing: Vec<(PeerId, Update)>,
}

impl RibChanges {
    pub fn is_empty(&self) -> bool {
        self.loc_rib.is_empty() && self.outgoing.is_empty()
    }
}

#[derive(Clone, Debug)]
struct Peer {
    info: PeerInfo,
    /// Down peers keep their (stale) routes during a graceful restart but
    /// get nothing.
    up: bool,
    /// The prefixes of its Adj-RIB-In (the routes live in `Rib::adj_in`).
    received: BTreeSet<IpNetwork>,
    /// Adj-RIB-Out: exactly what it was last told.
    advertised: BTreeMap<IpNetwork, Arc<PathAttributes>>,
    rejected: u64,
}

/// The RIBs of one speaker.
#[derive(Clone, Debug)]
pub struct Rib {
    config: RibConfig,
    peers: BTreeMap<PeerId, Peer>,
    /// The Adj-RIBs-In, by prefix then peer.
    adj_in: HashMap<IpNetwork, BTreeMap<PeerId, ReceivedRoute>>,
    /// Our own routes, with the next hop to advertise to iBGP peers
    /// (`None`: next hop self).
    originated: BTreeMap<IpNetwork, Option<Ipv4Addr>>,
    loc_rib: BTreeMap<IpNetwork, BestRoute>,
    /// The last exported attributes per prefix, whichever peer they were
    /// for: peers that get the same attributes share one allocation (a
    /// reflector's Adj-RIBs-Out would otherwise hold peers × prefixes
    /// copies).
    last_export: HashMap<IpNetwork, Arc<PathAttributes>>,
    /// ORIGIN IGP, empty AS_PATH.
    originated_attributes: Arc<PathAttributes>,
}

impl Rib {
    pub fn new(config: RibConfig) -> Rib {
        Rib {
            config,
            peers: BTreeMap::new(),
            adj_in: HashMap::new(),
            originated: BTreeMap::new(),
            loc_rib: BTreeMap::new(),
            last_export: HashMap::new(),
            originated_attributes: Arc::new(PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::default()),
                ..PathAttributes::default()
            }),
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    /// A session reached Established: returns the whole export to it (the
    /// owner sends End-of-RIB after it). A peer that comes back after
    /// [`Rib::peer_stale`] keeps its stale routes until it re-announces
    /// them or [`Rib::sweep_stale`].
    pub fn peer_up(&mut self, info: PeerInfo) -> RibChanges {
        let id = info.id;
        let peer = self.peers.entry(id).or_insert_with(|| Peer {
            info: info.clone(),
            up: true,
            received: BTreeSet::new(),
            advertised: BTreeMap::new(),
            rejected: 0,
        });
        peer.info = info;
        peer.up = true;
        peer.advertised.clear();
        // Its identifier and address take part in the decision for the
        // routes it kept over a restart.
        let touched = peer.received.clone();
        self.run(touched, Some(id))
    }

    /// The session went down for good: its routes go now.
    pub fn peer_down(&mut self, peer: PeerId) -> RibChanges {
        let Some(p) = self.peers.remove(&peer) else {
            return RibChanges::default();
        };
        for prefix in &p.received {
            self.remove_received(*prefix, peer);
        }
        self.run(p.received, None)
    }

    /// The session went down and the peer is restarting gracefully (RFC
    /// 4724 section 4.2): its routes stay usable, marked stale; nothing is
    /// sent to it until [`Rib::peer_up`].
    pub fn peer_stale(&mut self, peer: PeerId) -> RibChanges {
        let Some(p) = self.peers.get_mut(&peer) else {
            return RibChanges::default();
        };
        p.up = false;
        p.advertised.clear();
        for prefix in &p.received {
            if let Some(route) = self.adj_in.get_mut(prefix).and_then(|m| m.get_mut(&peer)) {
                route.stale = true;
            }
        }
        let touched = p.received.clone();
        self.run(touched, None)
    }

    /// End-of-RIB came from the restarted peer or its restart timer fired:
    /// the routes it has not re-announced go.
    pub fn sweep_stale(&mut self, peer: PeerId) -> RibChanges {
        let Some(p) = self.peers.get_mut(&peer) else {
            return RibChanges::default();
        };
        let stale: BTreeSet<IpNetwork> = p
            .received
            .iter()
            .copied()
            .filter(|prefix| {
                self.adj_in
                    .get(prefix)
                    .and_then(|m| m.get(&peer))
                    .is_some_and(|r| r.stale)
            })
            .collect();
        for prefix in &stale {
            p.received.remove(prefix);
        }
        for prefix in &stale {
            self.remove_received(*prefix, peer);
        }
        self.run(stale, None)
    }

    /// An UPDATE from `peer`: withdrawals (IPv4 `withdrawn`, MP_UNREACH) and
    /// announcements (IPv4 `nlri` with NEXT_HOP, MP_REACH with its first
    /// next hop) into its Adj-RIB-In, then the decision for those prefixes.
    ///
    /// Refused on import, counted in [`Rib::rejected_count`], and removing
    /// the peer's previous route to the prefix like a withdrawal: a path
    /// with our AS (any peer: a path through us is a loop even over iBGP),
    /// our router id as ORIGINATOR_ID, our cluster id in CLUSTER_LIST (RFC
    /// 4456 section 8), or no next hop. Ignored: UPDATEs from unknown or
    /// down peers.
    pub fn update(&mut self, peer: PeerId, update: &Update) -> RibChanges {
        let Some(p) = self.peers.get(&peer).filter(|p| p.up) else {
            return RibChanges::default();
        };
        let ibgp = p.info.asn == self.config.local_as;
        let mut touched = BTreeSet::new();
        let a = &update.attributes;
        let mp_withdrawn = a.mp_unreach.iter().flat_map(|u| &u.withdrawn);
        for prefix in update.withdrawn.iter().chain(mp_withdrawn) {
            self.withdraw_received(*prefix, peer);
            touched.insert(*prefix);
        }
        let announced =
            !update.nlri.is_empty() || a.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        if !announced {
            return self.run(touched, None);
        }
        let accepted = !self.loops(a);
        // The route's attributes: the next hop is kept apart, and the MP
        // attributes (with their NLRI) belong to the message.
        let PathAttributes {
            origin,
            as_path,
            next_hop: _,
            multi_exit_disc,
            local_pref,
            atomic_aggregate,
            aggregator,
            communities,
            originator_id,
            cluster_list,
            mp_reach: _,
            mp_unreach: _,
            unknown,
        } = a;
        let mut attributes = PathAttributes {
            origin: *origin,
            as_path: as_path.clone(),
            multi_exit_disc: *multi_exit_disc,
            local_pref: *local_pref,
            atomic_aggregate: *atomic_aggregate,
            aggregator: *aggregator,
            communities: communities.clone(),
            originator_id: *originator_id,
            cluster_list: cluster_list.clone(),
            unknown: unknown.clone(),
            ..PathAttributes::default()
        };
        if !ibgp {
            // RFC 4271 5.1.5: LOCAL_PREF from another AS is ignored; RFC
            // 4456 attributes have no meaning across ASes.
            attributes.local_pref = Some(self.config.default_local_pref);
            attributes.originator_id = None;
            attributes.cluster_list.clear();
        }
        let attributes = Arc::new(attributes);
        let ipv4 = update.nlri.iter().map(|p| (*p, a.next_hop.map(IpAddr::V4)));
        let mp = a
            .mp_reach
            .iter()
            .flat_map(|m| m.nlri.iter().map(|p| (*p, m.next_hops.first().copied())));
        for (prefix, next_hop) in ipv4.chain(mp) {
            touched.insert(prefix);
            match next_hop.filter(|_| accepted) {
                Some(next_hop) => {
                    let route = ReceivedRoute {
                        next_hop,
                        attributes: Arc::clone(&attributes),
                        stale: false,
                    };
                    self.adj_in.entry(prefix).or_default().insert(peer, route);
                    self.peers
                        .get_mut(&peer)
                        .expect("checked")
                        .received
                        .insert(prefix);
                }
                None => {
                    self.withdraw_received(prefix, peer);
                    self.peers.get_mut(&peer).expect("checked").rejected += 1;
                }
            }
        }
        self.run(touched, None)
    }

    /// Originates a route (the node's pod CIDR): ORIGIN IGP, empty AS_PATH,
    /// next hop self towards eBGP peers, and towards iBGP peers `next_hop`
    /// or next hop self.
    pub fn originate(&mut self, prefix: IpNetwork, next_hop: Option<Ipv4Addr>) -> RibChanges {
        let prefix = canonical(prefix);
        self.originated.insert(prefix, next_hop);
        self.run(BTreeSet::from([prefix]), None)
    }

    pub fn withdraw_originated(&mut self, prefix: IpNetwork) -> RibChanges {
        let prefix = canonical(prefix);
        self.originated.remove(&prefix);
        self.run(BTreeSet::from([prefix]), None)
    }

    /// ROUTE-REFRESH from `peer`: its whole Adj-RIB-Out again.
    pub fn route_refresh(&mut self, peer: PeerId) -> RibChanges {
        let Some(p) = self.peers.get(&peer).filter(|p| p.up) else {
            return RibChanges::default();
        };
        let changes = p
            .advertised
            .iter()
            .map(|(prefix, a)| (*prefix, Some(Arc::clone(a))))
            .collect();
        RibChanges {
            loc_rib: Vec::new(),
            outgoing: export::pack(changes)
                .into_iter()
                .map(|u| (peer, u))
                .collect(),
        }
    }

    /// The Loc-RIB, by prefix.
    pub fn loc_rib(&self) -> impl Iterator<Item = (IpNetwork, &BestRoute)> {
        self.loc_rib.iter().map(|(p, b)| (*p, b))
    }

    pub fn best(&self, prefix: IpNetwork) -> Option<&BestRoute> {
        self.loc_rib.get(&prefix)
    }

    /// A peer's Adj-RIB-In, by prefix.
    pub fn adj_rib_in(&self, peer: PeerId) -> impl Iterator<Item = (IpNetwork, &ReceivedRoute)> {
        let prefixes = self
            .peers
            .get(&peer)
            .map(|p| &p.received)
            .into_iter()
            .flatten();
        prefixes.filter_map(move |prefix| Some((*prefix, self.adj_in.get(prefix)?.get(&peer)?)))
    }

    /// A peer's Adj-RIB-Out, by prefix: the attributes last sent (next hop
    /// in NEXT_HOP or in an MP_REACH_NLRI without NLRI).
    pub fn adj_rib_out(&self, peer: PeerId) -> impl Iterator<Item = (IpNetwork, &PathAttributes)> {
        self.peers
            .get(&peer)
            .map(|p| &p.advertised)
            .into_iter()
            .flatten()
            .map(|(p, a)| (*p, &**a))
    }

    pub fn advertised_count(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.advertised.len())
    }

    pub fn received_count(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.received.len())
    }

    /// Routes refused on import since the peer was first up.
    pub fn rejected_count(&self, peer: PeerId) -> u64 {
        self.peers.get(&peer).map_or(0, |p| p.rejected)
    }

    pub fn peer(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&peer).map(|p| &p.info)
    }

    /// RFC 4271 9.1.2 / RFC 4456 section 8 import checks: would accepting
    /// these attributes close a loop?
    fn loops(&self, a: &PathAttributes) -> bool {
        a.as_path
            .as_ref()
            .is_some_and(|p| p.contains(self.config.local_as))
            || a.originator_id == Some(self.config.router_id)
            || self
                .config
                .cluster_id
                .is_some_and(|c| a.cluster_list.contains(&c))
    }

    fn withdraw_received(&mut self, prefix: IpNetwork, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.received.remove(&prefix);
        }
        self.remove_received(prefix, peer);
    }

    /// Removes from `adj_in` only (the caller keeps `Peer::received` right).
    fn remove_received(&mut self, prefix: IpNetwork, peer: PeerId) {
        if let Some(m) = self.adj_in.get_mut(&prefix) {
            m.remove(&peer);
            if m.is_empty() {
                self.adj_in.remove(&prefix);
            }
        }
    }

    /// The decision process for one prefix.
    fn decide(&self, prefix: IpNetwork) -> Option<BestRoute> {
        if let Some(next_hop) = self.originated.get(&prefix) {
            return Some(BestRoute {
                prefix,
                next_hop: IpAddr::V4(next_hop.unwrap_or(self.config.router_id)),
                from: None,
                attributes: Arc::clone(&self.originated_attributes),
                ibgp: false,
                stale: false,
            });
        }
        let routes = self.adj_in.get(&prefix)?;
        let mut candidates = Vec::with_capacity(routes.len());
        let mut from = Vec::with_capacity(routes.len());
        for (id, route) in routes {
            let Some(peer) = self.peers.get(id) else {
                continue;
            };
            candidates.push(Candidate {
                from: Some(*id),
                attributes: &route.attributes,
                ibgp: peer.info.asn == self.config.local_as,
                peer_router_id: peer.info.router_id,
                peer_address: peer.info.address,
            });
            from.push(route);
        }
        let i = select_best(&candidates, self.config.default_local_pref)?;
        let (c, route) = (&candidates[i], from[i]);
        Some(BestRoute {
            prefix,
            next_hop: route.next_hop,
            from: c.from,
            attributes: Arc::clone(&route.attributes),
            ibgp: c.ibgp,
            stale: route.stale,
        })
    }

    /// Re-runs the decision for `touched`, then brings every up peer's
    /// Adj-RIB-Out up to date for the prefixes whose best route changed,
    /// and `full_export`'s for the whole Loc-RIB.
    fn run(&mut self, touched: BTreeSet<IpNetwork>, full_export: Option<PeerId>) -> RibChanges {
        let mut changes = RibChanges::default();
        let mut changed = Vec::new();
        for prefix in touched {
            let best = self.decide(prefix);
            if self.loc_rib.get(&prefix) == best.as_ref() {
                continue;
            }
            match &best {
                Some(b) => self.loc_rib.insert(prefix, b.clone()),
                None => self.loc_rib.remove(&prefix),
            };
            changed.push(prefix);
            changes.loc_rib.push(LocRibChange { prefix, best });
        }
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let mut advertised =
                std::mem::take(&mut self.peers.get_mut(&id).expect("listed").advertised);
            let mut last_export = std::mem::take(&mut self.last_export);
            let mut diff = Vec::new();
            let info = &self.peers[&id].info;
            let mut sync = |prefix: IpNetwork| {
                let new = self
                    .loc_rib
                    .get(&prefix)
                    .and_then(|best| self.export_to(info, best));
                if advertised.get(&prefix).map(|a| &**a) == new.as_ref() {
                    return;
                }
                let new = new.map(|a| match last_export.get(&prefix) {
                    Some(last) if **last == a => Arc::clone(last),
                    _ => {
                        let a = Arc::new(a);
                        last_export.insert(prefix, Arc::clone(&a));
                        a
                    }
                });
                match &new {
                    Some(a) => advertised.insert(prefix, Arc::clone(a)),
                    None => advertised.remove(&prefix),
                };
                diff.push((prefix, new));
            };
            if full_export == Some(id) {
                // `changed` prefixes no longer in the Loc-RIB were never
                // advertised on this fresh session: nothing to withdraw.
                self.loc_rib.keys().copied().for_each(&mut sync);
            } else {
                changed.iter().copied().for_each(&mut sync);
            }
            self.last_export = last_export;
            self.peers.get_mut(&id).expect("listed").advertised = advertised;
            diff.sort_by_key(|(prefix, _)| *prefix);
            changes
                .outgoing
                .extend(export::pack(diff).into_iter().map(|u| (id, u)));
        }
        for prefix in &changed {
            if !self.loc_rib.contains_key(prefix) {
                self.last_export.remove(prefix);
            }
        }
        changes
    }

    fn export_to(&self, target: &PeerInfo, best: &BestRoute) -> Option<PathAttributes> {
        let source = match best.from {
            None => Source::Originated(self.originated.get(&best.prefix).copied().flatten()),
            Some(id) => Source::Peer(&self.peers.get(&id)?.info),
        };
        export::export(&self.config, target, source, best)
    }
}

/// Host bits cleared, so that 10.1.2.3/24 and 10.1.2.0/24 are one prefix.
fn canonical(prefix: IpNetwork) -> IpNetwork {
    IpNetwork::new(prefix.network(), prefix.prefix()).expect("same prefix length")
}
