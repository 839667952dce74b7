//! Adj-RIB-Out: what we tell each peer about a Loc-RIB route (RFC 4271
//! section 9.1.3, RFC 4456 sections 6 and 8, RFC 1997's well-known
//! communities), and how the changes for one peer are packed into UPDATEs.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::wire::{
    AfiSafi, AsSegment, HEADER_LEN, MAX_MESSAGE_LEN, MpReach, MpUnreach, PathAttributes, Update,
    attribute_flags,
};

use super::{BestRoute, PeerInfo, RibConfig};

/// RFC 1997 well-known communities.
pub const NO_EXPORT: u32 = 0xFFFF_FF01;
pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;

/// The attributes `target` gets for `best`, with the next hop in NEXT_HOP
/// (IPv4 prefix, IPv4 next hop) or in an MP_REACH_NLRI with no NLRI yet;
/// `None` if `best` is not to be advertised to it.
///
/// Where a Loc-RIB route came from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source<'a> {
    /// Ours, with the next hop `originate` was given, if any.
    Originated(Option<Ipv4Addr>),
    Peer(&'a PeerInfo),
}

pub(super) fn export(
    config: &RibConfig,
    target: &PeerInfo,
    source: Source,
    best: &BestRoute,
) -> Option<PathAttributes> {
    // Split horizon.
    if best.from == Some(target.id) {
        return None;
    }
    let communities = &best.attributes.communities;
    if communities.contains(&NO_ADVERTISE) {
        return None;
    }
    let target_ibgp = target.asn == config.local_as;
    if !target_ibgp
        && (communities.contains(&NO_EXPORT) || communities.contains(&NO_EXPORT_SUBCONFED))
    {
        return None;
    }
    let mut a = PathAttributes::clone(&best.attributes);
    let next_hop: IpAddr;
    if target_ibgp {
        match source {
            // Originated: next hop self unless the originator named one.
            Source::Originated(nh) => next_hop = IpAddr::V4(nh.unwrap_or(target.local_address)),
            Source::Peer(_) if !best.ibgp => {
                next_hop = if config.next_hop_self_ibgp {
                    IpAddr::V4(target.local_address)
                } else {
                    best.next_hop
                }
            }
            Source::Peer(source) => {
                // iBGP-learned: only a route reflector passes it on.
                let cluster_id = config.cluster_id?;
                if !source.rr_client && !target.rr_client {
                    return None;
                }
                let originator = a.originator_id.unwrap_or(source.router_id);
                // It would drop the route anyway (RFC 4456 section 8).
                if originator == target.router_id {
                    return None;
                }
                a.originator_id = Some(originator);
                a.cluster_list.insert(0, cluster_id);
                next_hop = best.next_hop;
            }
        }
        a.local_pref = Some(a.local_pref.unwrap_or(config.default_local_pref));
        a.as_path.get_or_insert_default();
    } else {
        let path = a.as_path.take().unwrap_or_default();
        // Sender-side loop avoidance: the peer would drop it.
        if path.contains(target.asn) {
            return None;
        }
        // A MED received from a neighbouring AS is not passed on to another
        // (RFC 4271 5.1.4); one set inside our AS (empty path) may be.
        if matches!(source, Source::Peer(_)) && (!best.ibgp || path.length() > 0) {
            a.multi_exit_disc = None;
        }
        a.as_path = Some(path.prepended(config.local_as));
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
        next_hop = IpAddr::V4(target.local_address);
    }
    // RFC 4271 section 5: unrecognized optional transitive attributes go on
    // with the Partial bit set; non-transitive ones stop here.
    a.unknown
        .retain(|u| u.flags & attribute_flags::TRANSITIVE != 0);
    for u in &mut a.unknown {
        u.flags |= attribute_flags::PARTIAL;
    }
    set_next_hop(&mut a, best.prefix, next_hop);
    Some(a)
}

/// IPv4 routes with an IPv4 next hop use the RFC 4271 NEXT_HOP; anything
/// else goes in MP_REACH_NLRI. An IPv6 route with an IPv4 next hop (next
/// hop self on an IPv4 session) gets the IPv4-mapped IPv6 address.
fn set_next_hop(a: &mut PathAttributes, prefix: IpNetwork, next_hop: IpAddr) {
    a.next_hop = None;
    a.mp_reach = None;
    a.mp_unreach = None;
    match (prefix, next_hop) {
        (IpNetwork::V4(_), IpAddr::V4(nh)) => a.next_hop = Some(nh),
        (IpNetwork::V4(_), nh) => {
            a.mp_reach = Some(MpReach {
                family: AfiSafi::IPV4_UNICAST,
                next_hops: vec![nh],
                nlri: Vec::new(),
            })
        }
        (IpNetwork::V6(_), nh) => {
            let nh = match nh {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            };
            a.mp_reach = Some(MpReach {
                family: AfiSafi::IPV6_UNICAST,
                next_hops: vec![nh],
                nlri: Vec::new(),
            })
        }
    }
}

/// Packs one peer's changes (sorted by prefix; `None` = withdraw) into
/// UPDATEs: withdrawals first (IPv4 in `withdrawn`, IPv6 in MP_UNREACH),
/// then one UPDATE per distinct attribute set, ordered by its first prefix,
/// each split so that it fits in a 4096-byte message.
pub(super) fn pack(changes: Vec<(IpNetwork, Option<Arc<PathAttributes>>)>) -> Vec<Update> {
    let mut out = Vec::new();
    let mut withdrawn_v4 = Vec::new();
    let mut withdrawn_v6 = Vec::new();
    let mut groups: Vec<(Arc<PathAttributes>, Vec<IpNetwork>)> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for (prefix, attrs) in changes {
        match attrs {
            None if prefix.is_ipv4() => withdrawn_v4.push(prefix),
            None => withdrawn_v6.push(prefix),
            Some(attrs) => {
                let slot = by_hash.entry(attributes_hash(&attrs)).or_default();
                match slot.iter().find(|&&g| groups[g].0 == attrs) {
                    Some(&g) => groups[g].1.push(prefix),
                    None => {
                        slot.push(groups.len());
                        groups.push((attrs, vec![prefix]));
                    }
                }
            }
        }
    }
    // Withdrawn routes length and total path attribute length fields.
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 4;
    for chunk in chunks(&withdrawn_v4, room) {
        out.push(Update {
            withdrawn: chunk.to_vec(),
            ..Update::default()
        });
    }
    // Flags, type, extended length, AFI, SAFI.
    for chunk in chunks(&withdrawn_v6, room - 7) {
        out.push(Update {
            attributes: PathAttributes {
                mp_unreach: Some(MpUnreach {
                    family: AfiSafi::IPV6_UNICAST,
                    withdrawn: chunk.to_vec(),
                }),
                ..PathAttributes::default()
            },
            ..Update::default()
        });
    }
    for (attrs, prefixes) in groups {
        for chunk in chunks(&prefixes, room.saturating_sub(attributes_len(&attrs))) {
            let mut attributes = PathAttributes::clone(&attrs);
            let update = match &mut attributes.mp_reach {
                Some(mp) => {
                    mp.nlri = chunk.to_vec();
                    Update {
                        attributes,
                        ..Update::default()
                    }
                }
                None => Update {
                    attributes,
                    nlri: chunk.to_vec(),
                    ..Update::default()
                },
            };
            out.push(update);
        }
    }
    out
}

/// Splits prefixes into runs whose encoding fits in `room` bytes (at least
/// one prefix per run).
fn chunks(prefixes: &[IpNetwork], room: usize) -> Vec<&[IpNetwork]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let len = 1 + usize::from(p.prefix()).div_ceil(8);
        if i > start && used + len > room {
            out.push(&prefixes[start..i]);
            (start, used) = (i, 0);
        }
        used += len;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// An upper bound on the encoded size of the attributes (the encoder may
/// add AS4_PATH and AS4_AGGREGATOR on a 2-octet-AS session; counted too).
fn attributes_len(a: &PathAttributes) -> usize {
    const HDR: usize = 4; // flags, type, extended length
    let mut n = 0;
    n += a.origin.map_or(0, |_| HDR + 1);
    if let Some(p) = &a.as_path {
        let body: usize = p
            .segments
            .iter()
            .map(|s| match s {
                AsSegment::Set(v) | AsSegment::Sequence(v) => 2 + 4 * v.len(),
            })
            .sum();
        n += 2 * (HDR + body);
    }
    n += a.next_hop.map_or(0, |_| HDR + 4);
    n += a.multi_exit_disc.map_or(0, |_| HDR + 4);
    n += a.local_pref.map_or(0, |_| HDR + 4);
    n += if a.atomic_aggregate { HDR } else { 0 };
    n += a.aggregator.map_or(0, |_| 2 * (HDR + 8));
    n += if a.communities.is_empty() {
        0
    } else {
        HDR + 4 * a.communities.len()
    };
    n += a.originator_id.map_or(0, |_| HDR + 4);
    n += if a.cluster_list.is_empty() {
        0
    } else {
        HDR + 4 * a.cluster_list.len()
    };
    n += a.unknown.iter().map(|u| HDR + u.value.len()).sum::<usize>();
    // AFI, SAFI, next hop length, next hops, reserved.
    n += a
        .mp_reach
        .as_ref()
        .map_or(0, |mp| HDR + 5 + 16 * mp.next_hops.len());
    n
}

/// Groups identical attribute sets; `PathAttributes` is not `Hash`, so the
/// hashable parts are hashed and equality settles collisions.
fn attributes_hash(a: &PathAttributes) -> u64 {
    let mut h = DefaultHasher::new();
    a.origin.hash(&mut h);
    a.as_path.hash(&mut h);
    a.next_hop.hash(&mut h);
    a.multi_exit_disc.hash(&mut h);
    a.local_pref.hash(&mut h);
    a.communities.hash(&mut h);
    a.originator_id.hash(&mut h);
    a.cluster_list.hash(&mut h);
    if let Some(mp) = &a.mp_reach {
        mp.family.hash(&mut h);
        mp.next_hops.hash(&mut h);
    }
    h.finish()
}
