//! Scenario tests of import, decision and export, one rule at a time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::*;
use crate::wire::{AfiSafi, AsSegment, MpReach, MpUnreach, RawAttribute, attribute_flags};

const LOCAL_AS: u32 = 65000;
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// Our address on every session (distinct from the router id, to tell them apart).
const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 100);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn rib() -> Rib {
    Rib::new(RibConfig::new(LOCAL_AS, ME))
}

fn rr() -> Rib {
    Rib::new(RibConfig::new(LOCAL_AS, ME).route_reflector())
}

fn peer(n: u8, asn: u32) -> PeerInfo {
    PeerInfo {
        id: PeerId(u32::from(n)),
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, n)),
        local_address: LOCAL_ADDR,
        asn,
        router_id: Ipv4Addr::new(1, 1, 1, n),
        rr_client: false,
    }
}

fn ibgp(n: u8) -> PeerInfo {
    peer(n, LOCAL_AS)
}

fn client(n: u8) -> PeerInfo {
    PeerInfo {
        rr_client: true,
        ..ibgp(n)
    }
}

fn ebgp(n: u8) -> PeerInfo {
    peer(n, 65000 + u32::from(n))
}

fn path(asns: &[u32]) -> Option<AsPath> {
    Some(AsPath {
        segments: vec![AsSegment::Sequence(asns.to_vec())],
    })
}

/// What `from` would send: its own AS first for eBGP, next hop its address.
fn attrs(from: &PeerInfo) -> PathAttributes {
    let ebgp = from.asn != LOCAL_AS;
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: if ebgp { path(&[from.asn]) } else { path(&[]) },
        next_hop: match from.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        },
        local_pref: if ebgp { None } else { Some(100) },
        ..PathAttributes::default()
    }
}

fn announce(prefixes: &[&str], attributes: PathAttributes) -> Update {
    Update {
        nlri: prefixes.iter().map(|p| net(p)).collect(),
        attributes,
        ..Update::default()
    }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update {
        withdrawn: prefixes.iter().map(|p| net(p)).collect(),
        ..Update::default()
    }
}

fn to(changes: &RibChanges, peer: &PeerInfo) -> Vec<Update> {
    changes
        .outgoing
        .iter()
        .filter(|(p, _)| *p == peer.id)
        .map(|(_, u)| u.clone())
        .collect()
}

/// The single UPDATE sent to `peer`.
fn one_to(changes: &RibChanges, peer: &PeerInfo) -> Update {
    let sent = to(changes, peer);
    assert_eq!(
        sent.len(),
        1,
        "expected one UPDATE to {}: {:#?}",
        peer.id,
        changes.outgoing
    );
    sent.into_iter().next().unwrap()
}

fn up(rib: &mut Rib, peers: &[&PeerInfo]) {
    for p in peers {
        rib.peer_up((*p).clone());
    }
}

#[test]
fn ebgp_export_prepends_our_as_sets_next_hop_self_strips_local_pref_and_med() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    let mut attributes = attrs(&a);
    attributes.local_pref = Some(300); // from another AS: ignored
    attributes.multi_exit_disc = Some(50);
    attributes.originator_id = Some(Ipv4Addr::new(9, 9, 9, 9)); // not meaningful over eBGP
    let ch = rib.update(a.id, &announce(&["10.2.0.0/24"], attributes));

    assert_eq!(ch.loc_rib.len(), 1);
    let best = ch.loc_rib[0].best.as_ref().unwrap();
    assert_eq!(best.from, Some(a.id));
    assert_eq!(best.next_hop, a.address);
    assert_eq!(best.attributes.local_pref, Some(100));
    assert_eq!(best.attributes.originator_id, None);
    assert!(!best.ibgp && !best.stale);

    let u = one_to(&ch, &b);
    assert_eq!(u.nlri, vec![net("10.2.0.0/24")]);
    assert_eq!(u.attributes.as_path, path(&[LOCAL_AS, 65002]));
    assert_eq!(u.attributes.next_hop, Some(LOCAL_ADDR));
    assert_eq!(u.attributes.local_pref, None);
    assert_eq!(u.attributes.multi_exit_disc, None);
    assert_eq!(u.attributes.originator_id, None);
    assert!(u.attributes.cluster_list.is_empty());
    assert!(to(&ch, &a).is_empty(), "split horizon");
}

#[test]
fn ebgp_learned_to_ibgp_keeps_as_path_and_med_sets_local_pref_and_next_hop_self() {
    let (e, i) = (ebgp(2), ibgp(3));
    for next_hop_self in [true, false] {
        let mut rib = Rib::new(RibConfig {
            next_hop_self_ibgp: next_hop_self,
            ..RibConfig::new(LOCAL_AS, ME)
        });
        up(&mut rib, &[&e, &i]);
        let mut attributes = attrs(&e);
        attributes.multi_exit_disc = Some(7);
        let u = one_to(
            &rib.update(e.id, &announce(&["10.2.0.0/24"], attributes)),
            &i,
        );
        assert_eq!(u.attributes.as_path, path(&[65002]));
        assert_eq!(u.attributes.local_pref, Some(100));
        assert_eq!(u.attributes.multi_exit_disc, Some(7));
        let want = if next_hop_self {
            LOCAL_ADDR
        } else {
            Ipv4Addr::new(192, 168, 0, 2)
        };
        assert_eq!(
            u.attributes.next_hop,
            Some(want),
            "next_hop_self_ibgp = {next_hop_self}"
        );
    }
}

#[test]
fn ibgp_learned_routes_go_to_ebgp_but_not_to_other_ibgp_peers() {
    let (i1, i2, e) = (ibgp(1), ibgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&i1, &i2, &e]);
    let mut attributes = attrs(&i1);
    attributes.local_pref = Some(250);
    let ch = rib.update(i1.id, &announce(&["10.1.0.0/24"], attributes));
    assert_eq!(
        ch.loc_rib[0].best.as_ref().unwrap().attributes.local_pref,
        Some(250)
    );
    assert!(ch.loc_rib[0].best.as_ref().unwrap().ibgp);
    assert!(to(&ch, &i2).is_empty());
    assert!(to(&ch, &i1).is_empty());
    let u = one_to(&ch, &e);
    assert_eq!(u.attributes.as_path, path(&[LOCAL_AS]));
    assert_eq!(u.attributes.next_hop, Some(LOCAL_ADDR));
    assert_eq!(u.attributes.local_pref, None);
}

#[test]
fn originated_routes_next_hop_self_or_the_given_one() {
    let (i, e) = (ibgp(1), ebgp(2));
    let mut rib = rib();
    up(&mut rib, &[&i, &e]);
    let ch = rib.originate(net("10.100.0.0/24"), None);
    let best = ch.loc_rib[0].best.as_ref().unwrap();
    assert_eq!((best.from, best.next_hop), (None, IpAddr::V4(ME)));
    let u = one_to(&ch, &i);
    assert_eq!(u.attributes.origin, Some(Origin::Igp));
    assert_eq!(u.attributes.as_path, Some(AsPath::default()));
    assert_eq!(u.attributes.next_hop, Some(LOCAL_ADDR));
    assert_eq!(u.attributes.local_pref, Some(100));
    let u = one_to(&ch, &e);
    assert_eq!(u.attributes.as_path, path(&[LOCAL_AS]));
    assert_eq!(u.attributes.next_hop, Some(LOCAL_ADDR));

    // A named next hop goes to iBGP peers; eBGP peers still get next hop self.
    let given = Ipv4Addr::new(10, 9, 9, 9);
    let ch = rib.originate(net("10.100.0.0/24"), Some(given));
    assert_eq!(one_to(&ch, &i).attributes.next_hop, Some(given));
    assert!(
        to(&ch, &e).is_empty(),
        "unchanged export to the eBGP peer: no UPDATE"
    );

    let ch = rib.withdraw_originated(net("10.100.0.0/24"));
    assert_eq!(
        ch.loc_rib,
        vec![LocRibChange {
            prefix: net("10.100.0.0/24"),
            best: None
        }]
    );
    assert_eq!(one_to(&ch, &i).withdrawn, vec![net("10.100.0.0/24")]);
    assert_eq!(one_to(&ch, &e).withdrawn, vec![net("10.100.0.0/24")]);
}

#[test]
fn originated_beats_learned() {
    let e = ebgp(2);
    let mut rib = rib();
    up(&mut rib, &[&e]);
    rib.update(e.id, &announce(&["10.100.0.0/24"], attrs(&e)));
    let ch = rib.originate(net("10.100.0.0/24"), None);
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, None);
    // It now goes to the peer it was learned from, too.
    assert_eq!(one_to(&ch, &e).attributes.as_path, path(&[LOCAL_AS]));
    let ch = rib.withdraw_originated(net("10.100.0.0/24"));
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, Some(e.id));
    assert_eq!(one_to(&ch, &e).withdrawn, vec![net("10.100.0.0/24")]);
}

#[test]
fn route_reflector_export_table() {
    // (source, target, reflected?)
    let (c1, c2, n3, n4, e5) = (client(1), client(2), ibgp(3), ibgp(4), ebgp(5));
    let cases: &[(&PeerInfo, &PeerInfo, bool)] = &[
        (&c1, &c2, true),  // client -> other client
        (&c1, &n3, true),  // client -> non-client
        (&c1, &c1, false), // split horizon
        (&n3, &c1, true),  // non-client -> client
        (&n3, &n4, false), // non-client -> non-client: never
        (&e5, &c1, false), // eBGP-learned: plain iBGP advertisement, not reflection
        (&e5, &n3, false),
    ];
    for &(source, target, reflected) in cases {
        let mut rib = rr();
        up(&mut rib, &[&c1, &c2, &n3, &n4, &e5]);
        let ch = rib.update(source.id, &announce(&["10.1.0.0/24"], attrs(source)));
        let sent = to(&ch, target);
        let name = format!("{} -> {}", source.id, target.id);
        if source.id == target.id || (!reflected && source.asn == LOCAL_AS) {
            assert!(sent.is_empty(), "{name}: must not be sent");
            continue;
        }
        assert_eq!(sent.len(), 1, "{name}");
        let a = &sent[0].attributes;
        if reflected {
            assert_eq!(a.originator_id, Some(source.router_id), "{name}");
            assert_eq!(a.cluster_list, vec![ME], "{name}");
            assert_eq!(
                a.next_hop,
                Some(Ipv4Addr::new(192, 168, 0, source.id.0 as u8)),
                "{name}: next hop unchanged"
            );
            assert_eq!(a.as_path, path(&[]), "{name}");
        } else {
            assert_eq!(a.originator_id, None, "{name}");
            assert!(a.cluster_list.is_empty(), "{name}");
        }
    }
}

#[test]
fn reflection_keeps_originator_id_and_prepends_cluster_id() {
    let (c1, c2) = (client(1), client(2));
    let mut rib = Rib::new(RibConfig {
        cluster_id: Some(Ipv4Addr::new(7, 7, 7, 7)),
        ..RibConfig::new(LOCAL_AS, ME)
    });
    up(&mut rib, &[&c1, &c2]);
    let mut a = attrs(&c1);
    a.originator_id = Some(Ipv4Addr::new(5, 5, 5, 5));
    a.cluster_list = vec![Ipv4Addr::new(8, 8, 8, 8)];
    let u = one_to(&rib.update(c1.id, &announce(&["10.1.0.0/24"], a)), &c2);
    assert_eq!(u.attributes.originator_id, Some(Ipv4Addr::new(5, 5, 5, 5)));
    assert_eq!(
        u.attributes.cluster_list,
        vec![Ipv4Addr::new(7, 7, 7, 7), Ipv4Addr::new(8, 8, 8, 8)]
    );
}

#[test]
fn reflector_does_not_send_a_route_back_to_its_originator() {
    let (c1, n3) = (client(1), ibgp(3));
    let mut rib = rr();
    up(&mut rib, &[&c1, &n3]);
    let mut a = attrs(&n3);
    a.originator_id = Some(c1.router_id);
    a.cluster_list = vec![Ipv4Addr::new(8, 8, 8, 8)];
    let ch = rib.update(n3.id, &announce(&["10.1.0.0/24"], a));
    assert_eq!(ch.loc_rib.len(), 1);
    assert!(to(&ch, &c1).is_empty());
}

#[test]
fn import_loop_checks() {
    type Case = (&'static str, fn(&mut PathAttributes));
    let cases: &[Case] = &[
        ("our AS in AS_PATH", |a| {
            a.as_path = path(&[65009, LOCAL_AS, 65010])
        }),
        ("our AS in an AS_SET", |a| {
            a.as_path = Some(AsPath {
                segments: vec![
                    AsSegment::Sequence(vec![65009]),
                    AsSegment::Set(vec![LOCAL_AS]),
                ],
            })
        }),
        ("ORIGINATOR_ID is our router id", |a| {
            a.originator_id = Some(ME)
        }),
        ("CLUSTER_LIST has our cluster id", |a| {
            a.cluster_list = vec![Ipv4Addr::new(3, 3, 3, 3), ME]
        }),
        ("no next hop", |a| a.next_hop = None),
    ];
    for (name, spoil) in cases {
        // iBGP from a client, so that ORIGINATOR_ID and CLUSTER_LIST count.
        let (c, e) = (client(1), ebgp(2));
        let mut rib = rr();
        up(&mut rib, &[&c, &e]);
        let mut a = attrs(&c);
        a.as_path = path(&[65009]);
        rib.update(c.id, &announce(&["10.1.0.0/24"], a.clone()));
        assert_eq!(rib.received_count(c.id), 1);
        spoil(&mut a);
        let ch = rib.update(c.id, &announce(&["10.1.0.0/24"], a));
        // The refused route replaces the previous one: it is gone.
        assert_eq!(
            ch.loc_rib,
            vec![LocRibChange {
                prefix: net("10.1.0.0/24"),
                best: None
            }],
            "{name}"
        );
        assert_eq!(
            one_to(&ch, &e).withdrawn,
            vec![net("10.1.0.0/24")],
            "{name}"
        );
        assert_eq!(
            (rib.received_count(c.id), rib.rejected_count(c.id)),
            (0, 1),
            "{name}"
        );
    }
}

#[test]
fn cluster_list_is_only_checked_by_a_reflector() {
    let c = ibgp(1);
    let mut rib = rib();
    up(&mut rib, &[&c]);
    let mut a = attrs(&c);
    a.cluster_list = vec![ME];
    rib.update(c.id, &announce(&["10.1.0.0/24"], a));
    assert_eq!((rib.received_count(c.id), rib.rejected_count(c.id)), (1, 0));
}

#[test]
fn not_sent_to_an_ebgp_peer_whose_as_is_in_the_path() {
    let (a, b, c) = (ebgp(2), ebgp(3), ebgp(4));
    let mut rib = rib();
    up(&mut rib, &[&a, &b, &c]);
    let mut attributes = attrs(&a);
    attributes.as_path = path(&[65002, 65003]);
    let ch = rib.update(a.id, &announce(&["10.2.0.0/24"], attributes));
    assert!(to(&ch, &b).is_empty());
    assert_eq!(
        one_to(&ch, &c).attributes.as_path,
        path(&[LOCAL_AS, 65002, 65003])
    );
}

#[test]
fn split_horizon_withdraws_when_the_best_route_comes_from_the_peer() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    let mut long = attrs(&a);
    long.as_path = path(&[65002, 65010, 65011]);
    let ch = rib.update(a.id, &announce(&["10.9.0.0/24"], long));
    assert_eq!(one_to(&ch, &b).nlri, vec![net("10.9.0.0/24")]);
    // b's shorter route wins: b must not hear it back, so what it was told goes.
    let ch = rib.update(b.id, &announce(&["10.9.0.0/24"], attrs(&b)));
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, Some(b.id));
    assert_eq!(one_to(&ch, &b).withdrawn, vec![net("10.9.0.0/24")]);
    assert_eq!(one_to(&ch, &a).attributes.as_path, path(&[LOCAL_AS, 65003]));
    assert_eq!(rib.advertised_count(b.id), 0);
    assert_eq!(rib.advertised_count(a.id), 1);
}

#[test]
fn withdrawals_propagate() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    rib.update(
        a.id,
        &announce(&["10.2.0.0/24", "10.2.1.0/24", "10.2.2.0/24"], attrs(&a)),
    );
    let ch = rib.update(
        a.id,
        &withdraw(&["10.2.0.0/24", "10.2.2.0/24", "10.77.0.0/16"]),
    );
    assert_eq!(
        ch.loc_rib,
        vec![
            LocRibChange {
                prefix: net("10.2.0.0/24"),
                best: None
            },
            LocRibChange {
                prefix: net("10.2.2.0/24"),
                best: None
            },
        ]
    );
    assert_eq!(
        one_to(&ch, &b).withdrawn,
        vec![net("10.2.0.0/24"), net("10.2.2.0/24")]
    );
    assert_eq!(rib.received_count(a.id), 1);
    assert_eq!(rib.advertised_count(b.id), 1);
}

#[test]
fn a_worse_route_takes_over_when_the_best_is_withdrawn() {
    let (a, b, c) = (ebgp(2), ebgp(3), ibgp(4));
    let mut rib = rib();
    up(&mut rib, &[&a, &b, &c]);
    rib.update(a.id, &announce(&["10.9.0.0/24"], attrs(&a)));
    let mut long = attrs(&b);
    long.as_path = path(&[65003, 65010]);
    let ch = rib.update(b.id, &announce(&["10.9.0.0/24"], long));
    assert!(ch.is_empty(), "a worse route changes nothing: {ch:#?}");
    let ch = rib.update(a.id, &withdraw(&["10.9.0.0/24"]));
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, Some(b.id));
    assert_eq!(one_to(&ch, &c).attributes.as_path, path(&[65003, 65010]));
    assert_eq!(
        one_to(&ch, &a).attributes.as_path,
        path(&[LOCAL_AS, 65003, 65010])
    );
    assert_eq!(one_to(&ch, &b).withdrawn, vec![net("10.9.0.0/24")]);
}

#[test]
fn no_duplicate_updates() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    let first = attrs(&a);
    assert_eq!(
        rib.update(a.id, &announce(&["10.2.0.0/24"], first.clone()))
            .outgoing
            .len(),
        1
    );
    // The very same announcement again.
    assert!(
        rib.update(a.id, &announce(&["10.2.0.0/24"], first.clone()))
            .is_empty()
    );
    // A change the export hides (LOCAL_PREF from eBGP is replaced, MED is
    // dropped towards eBGP): a Loc-RIB change, no UPDATE.
    let mut hidden = first.clone();
    hidden.local_pref = Some(999);
    assert!(
        rib.update(a.id, &announce(&["10.2.0.0/24"], hidden))
            .is_empty()
    );
    let mut med = first.clone();
    med.multi_exit_disc = Some(5);
    let ch = rib.update(a.id, &announce(&["10.2.0.0/24"], med));
    assert_eq!(ch.loc_rib.len(), 1);
    assert!(ch.outgoing.is_empty());
    // Withdrawing twice sends one withdrawal.
    assert_eq!(
        rib.update(a.id, &withdraw(&["10.2.0.0/24"])).outgoing.len(),
        1
    );
    assert!(rib.update(a.id, &withdraw(&["10.2.0.0/24"])).is_empty());
}

#[test]
fn stale_routes_stay_until_swept_unless_re_announced() {
    let (a, b) = (ibgp(1), ebgp(2));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    rib.update(a.id, &announce(&["10.1.0.0/24", "10.1.1.0/24"], attrs(&a)));
    rib.update(b.id, &announce(&["10.2.0.0/24"], attrs(&b)));

    let ch = rib.peer_stale(a.id);
    assert!(
        ch.outgoing.is_empty(),
        "stale routes are still advertised as they were"
    );
    assert_eq!(ch.loc_rib.len(), 2);
    assert!(ch.loc_rib.iter().all(|c| c.best.as_ref().unwrap().stale));
    assert_eq!(rib.received_count(a.id), 2);
    assert_eq!(rib.advertised_count(a.id), 0);
    // Nothing is sent to a restarting peer, and it cannot send.
    assert!(rib.update(a.id, &withdraw(&["10.1.0.0/24"])).is_empty());

    // It comes back: the full export, its stale routes still there.
    let ch = rib.peer_up(a.clone());
    assert_eq!(one_to(&ch, &a).nlri, vec![net("10.2.0.0/24")]);
    assert!(ch.loc_rib.is_empty());
    // Re-announced: no longer stale.
    let ch = rib.update(a.id, &announce(&["10.1.1.0/24"], attrs(&a)));
    assert_eq!(ch.loc_rib.len(), 1);
    assert!(!ch.loc_rib[0].best.as_ref().unwrap().stale);
    assert!(ch.outgoing.is_empty());

    let ch = rib.sweep_stale(a.id);
    assert_eq!(
        ch.loc_rib,
        vec![LocRibChange {
            prefix: net("10.1.0.0/24"),
            best: None
        }]
    );
    assert_eq!(one_to(&ch, &b).withdrawn, vec![net("10.1.0.0/24")]);
    let kept: Vec<_> = rib.adj_rib_in(a.id).map(|(p, r)| (p, r.stale)).collect();
    assert_eq!(kept, vec![(net("10.1.1.0/24"), false)]);
    assert!(rib.sweep_stale(a.id).is_empty());
}

#[test]
fn peer_down_removes_its_routes() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    rib.update(a.id, &announce(&["10.2.0.0/24", "10.2.1.0/24"], attrs(&a)));
    let ch = rib.peer_down(a.id);
    assert_eq!(ch.loc_rib.len(), 2);
    assert!(ch.loc_rib.iter().all(|c| c.best.is_none()));
    assert_eq!(
        one_to(&ch, &b).withdrawn,
        vec![net("10.2.0.0/24"), net("10.2.1.0/24")]
    );
    assert_eq!(rib.loc_rib().count(), 0);
    assert_eq!(rib.received_count(a.id), 0);
    assert!(rib.peer_down(a.id).is_empty());
}

#[test]
fn route_refresh_resends_the_adj_rib_out() {
    let (a, b, i) = (ebgp(2), ebgp(3), ibgp(4));
    let mut rib = rib();
    up(&mut rib, &[&a, &b, &i]);
    rib.originate(net("10.100.0.0/24"), None);
    rib.update(a.id, &announce(&["10.2.0.0/24", "10.2.1.0/24"], attrs(&a)));
    let ch = rib.route_refresh(b.id);
    assert!(ch.loc_rib.is_empty());
    assert!(ch.outgoing.iter().all(|(p, _)| *p == b.id));
    let mut resent: Vec<(IpNetwork, PathAttributes)> = Vec::new();
    for (_, u) in &ch.outgoing {
        for p in &u.nlri {
            resent.push((*p, u.attributes.clone()));
        }
    }
    let out: Vec<_> = rib.adj_rib_out(b.id).map(|(p, a)| (p, a.clone())).collect();
    assert_eq!(resent, out);
    assert_eq!(rib.advertised_count(b.id), 3);
    // Two attribute sets: ours and a's two prefixes together.
    assert_eq!(ch.outgoing.len(), 2);
    assert!(rib.route_refresh(PeerId(99)).is_empty());
}

#[test]
fn peer_up_sends_the_whole_loc_rib_packed() {
    let (a, b) = (ebgp(2), ibgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a]);
    for p in ["10.100.0.0/24", "10.100.1.0/24", "10.100.2.0/24"] {
        rib.originate(net(p), None);
    }
    rib.update(a.id, &announce(&["10.2.0.0/24"], attrs(&a)));
    let ch = rib.peer_up(b.clone());
    assert!(ch.loc_rib.is_empty());
    let sent = to(&ch, &b);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].nlri, vec![net("10.2.0.0/24")]);
    assert_eq!(
        sent[1].nlri,
        vec![
            net("10.100.0.0/24"),
            net("10.100.1.0/24"),
            net("10.100.2.0/24")
        ]
    );
    assert_eq!(rib.advertised_count(b.id), 4);
    // Deterministic: the same again after a flap.
    rib.peer_down(b.id);
    assert_eq!(rib.peer_up(b.clone()), ch);
}

#[test]
fn ipv6_over_mp_reach_and_mp_unreach() {
    let (a, b, i) = (ebgp(2), ebgp(3), ibgp(4));
    let mut rib = rib();
    up(&mut rib, &[&a, &b, &i]);
    let nh: IpAddr = "2001:db8::2".parse().unwrap();
    let prefixes = vec![net("2001:db8:1::/64"), net("2001:db8:2::/64")];
    let u = Update {
        attributes: PathAttributes {
            next_hop: None,
            mp_reach: Some(MpReach {
                family: AfiSafi::IPV6_UNICAST,
                next_hops: vec![nh, "fe80::2".parse().unwrap()],
                nlri: prefixes.clone(),
            }),
            ..attrs(&a)
        },
        ..Update::default()
    };
    let ch = rib.update(a.id, &u);
    assert_eq!(ch.loc_rib.len(), 2);
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().next_hop, nh);
    let out = one_to(&ch, &b);
    assert!(out.nlri.is_empty() && out.attributes.next_hop.is_none());
    let mp = out.attributes.mp_reach.unwrap();
    assert_eq!(mp.family, AfiSafi::IPV6_UNICAST);
    assert_eq!(mp.next_hops, vec![IpAddr::V6(LOCAL_ADDR.to_ipv6_mapped())]);
    assert_eq!(mp.nlri, prefixes);
    // To iBGP, with next hop self (the default) as well.
    assert_eq!(
        one_to(&ch, &i).attributes.mp_reach.unwrap().next_hops,
        vec![IpAddr::V6(LOCAL_ADDR.to_ipv6_mapped())]
    );

    let w = Update {
        attributes: PathAttributes {
            mp_unreach: Some(MpUnreach {
                family: AfiSafi::IPV6_UNICAST,
                withdrawn: vec![prefixes[0]],
            }),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    let ch = rib.update(a.id, &w);
    assert_eq!(
        ch.loc_rib,
        vec![LocRibChange {
            prefix: prefixes[0],
            best: None
        }]
    );
    let out = one_to(&ch, &b);
    assert_eq!(
        out.attributes.mp_unreach,
        Some(MpUnreach {
            family: AfiSafi::IPV6_UNICAST,
            withdrawn: vec![prefixes[0]]
        })
    );
    assert_eq!(out.end_of_rib_family(), None);
}

#[test]
fn unknown_attributes_transitive_pass_with_partial_non_transitive_dropped() {
    let (a, b) = (ebgp(2), ebgp(3));
    let mut rib = rib();
    up(&mut rib, &[&a, &b]);
    let transitive = RawAttribute {
        flags: attribute_flags::OPTIONAL | attribute_flags::TRANSITIVE,
        type_code: 99,
        value: vec![1, 2, 3],
    };
    let non_transitive = RawAttribute {
        flags: attribute_flags::OPTIONAL,
        type_code: 98,
        value: vec![4],
    };
    let mut attributes = attrs(&a);
    attributes.unknown = vec![transitive.clone(), non_transitive];
    let u = one_to(
        &rib.update(a.id, &announce(&["10.2.0.0/24"], attributes)),
        &b,
    );
    assert_eq!(
        u.attributes.unknown,
        vec![RawAttribute {
            flags: transitive.flags | attribute_flags::PARTIAL,
            ..transitive
        }]
    );
}

#[test]
fn well_known_communities() {
    let (a, b, i) = (ebgp(2), ebgp(3), ibgp(4));
    for (community, to_ebgp, to_ibgp) in [
        (NO_EXPORT, false, true),
        (NO_EXPORT_SUBCONFED, false, true),
        (NO_ADVERTISE, false, false),
        (0x0001_0002, true, true),
    ] {
        let mut rib = rib();
        up(&mut rib, &[&a, &b, &i]);
        let mut attributes = attrs(&a);
        attributes.communities = vec![community];
        let ch = rib.update(a.id, &announce(&["10.2.0.0/24"], attributes));
        assert_eq!(ch.loc_rib.len(), 1);
        assert_eq!(
            to(&ch, &b).len(),
            usize::from(to_ebgp),
            "{community:#x} to eBGP"
        );
        assert_eq!(
            to(&ch, &i).len(),
            usize::from(to_ibgp),
            "{community:#x} to iBGP"
        );
    }
}

#[test]
fn decision_prefers_ebgp_over_ibgp_and_honours_local_pref() {
    let (e, i) = (ebgp(2), ibgp(1));
    let mut rib = rib();
    up(&mut rib, &[&e, &i]);
    let mut from_i = attrs(&i);
    from_i.as_path = path(&[65002]);
    rib.update(i.id, &announce(&["10.9.0.0/24"], from_i.clone()));
    let ch = rib.update(e.id, &announce(&["10.9.0.0/24"], attrs(&e)));
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, Some(e.id));
    // The iBGP peer now hears our (eBGP-learned) route.
    assert_eq!(one_to(&ch, &i).attributes.next_hop, Some(LOCAL_ADDR));
    from_i.local_pref = Some(200);
    let ch = rib.update(i.id, &announce(&["10.9.0.0/24"], from_i));
    assert_eq!(ch.loc_rib[0].best.as_ref().unwrap().from, Some(i.id));
    assert_eq!(one_to(&ch, &i).withdrawn, vec![net("10.9.0.0/24")]);
    // i's path goes through e's AS, and e was never told (split horizon).
    assert!(to(&ch, &e).is_empty());
}

#[test]
fn updates_from_unknown_or_down_peers_are_ignored() {
    let a = ebgp(2);
    let mut rib = rib();
    assert!(
        rib.update(a.id, &announce(&["10.2.0.0/24"], attrs(&a)))
            .is_empty()
    );
    assert!(rib.peer_stale(a.id).is_empty());
    assert!(rib.sweep_stale(a.id).is_empty());
    assert_eq!(rib.loc_rib().count(), 0);
}

#[test]
fn big_exports_are_split_to_fit_a_message() {
    let prefixes: Vec<(IpNetwork, Option<Arc<PathAttributes>>)> = (0..3000u32)
        .map(|i| {
            let p = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (i << 8))), 24).unwrap();
            (
                p,
                Some(Arc::new(PathAttributes {
                    origin: Some(Origin::Igp),
                    next_hop: Some(ME),
                    as_path: path(&[1]),
                    ..PathAttributes::default()
                })),
            )
        })
        .collect();
    let updates = export::pack(prefixes);
    assert_eq!(updates.iter().map(|u| u.nlri.len()).sum::<usize>(), 3000);
    assert!(
        updates.len() >= 3 && updates.len() <= 4,
        "{}",
        updates.len()
    );
    // Attributes: ORIGIN 4, AS_PATH 9, NEXT_HOP 7 bytes.
    assert!(updates.iter().all(|u| u.nlri.len() * 4 + 20 <= 4096 - 23));
    let v6: Vec<_> = (0..1000u16)
        .map(|i| {
            (
                IpNetwork::new(
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0)),
                    48,
                )
                .unwrap(),
                None,
            )
        })
        .collect();
    let updates = export::pack(v6);
    assert!(updates.len() >= 2);
    assert!(
        updates
            .iter()
            .all(|u| u.attributes.mp_unreach.as_ref().unwrap().withdrawn.len() * 7 < 4096)
    );
}

#[test]
fn host_bits_are_cleared_on_originate() {
    let mut rib = rib();
    rib.originate(net("10.100.0.1/24"), None);
    assert_eq!(
        rib.loc_rib().map(|(p, _)| p).collect::<Vec<_>>(),
        vec![net("10.100.0.0/24")]
    );
    rib.withdraw_originated(net("10.100.0.0/24"));
    assert_eq!(rib.loc_rib().count(), 0);
}

#[test]
fn a_rib_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Rib>();
    send_sync::<RibChanges>();
}
