//! Best-path selection: RFC 4271 section 9.1.2.2 with the route reflection
//! tie-breaks of RFC 4456 section 9.
//!
//! [`compare`] is the pairwise preference, step by step. It is a total
//! order except for one step: MULTI_EXIT_DISC is only comparable between
//! routes from the same neighbouring AS, so pairwise comparison is not
//! transitive there. [`select_best`] therefore follows the RFC literally:
//! it eliminates candidates step by step up to and including MED, and only
//! then picks the minimum of the survivors with [`compare`] (on which the
//! remaining steps are a total order).
//!
//! Not implemented: the IGP cost to the NEXT_HOP (RFC 4271 9.1.2.2 e). A
//! pod network has no IGP; every next hop is treated as resolvable at equal
//! cost. The final tie-break on [`PeerId`] only makes the choice
//! deterministic when two sessions share a peer address.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use crate::wire::{Origin, PathAttributes};

use super::PeerId;

/// One route to a prefix as the decision process sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// `None`: locally originated.
    pub from: Option<PeerId>,
    /// As stored in the Adj-RIB-In (eBGP-learned routes already carry the
    /// configured default LOCAL_PREF).
    pub attributes: &'a PathAttributes,
    /// Learned from a peer in our own AS.
    pub ibgp: bool,
    /// The peer's BGP identifier (our own for originated routes).
    pub peer_router_id: Ipv4Addr,
    pub peer_address: IpAddr,
}

/// The steps of the decision process, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Our own routes win over learned ones.
    LocallyOriginated,
    /// 9.1.2.1: highest degree of preference (LOCAL_PREF).
    LocalPref,
    /// 9.1.2.2 a: shortest AS_PATH (a SET counts as one).
    AsPathLength,
    /// 9.1.2.2 b: lowest ORIGIN.
    Origin,
    /// 9.1.2.2 c: lowest MULTI_EXIT_DISC among routes from the same
    /// neighbouring AS (missing MED = 0).
    MultiExitDisc,
    /// 9.1.2.2 d: eBGP-learned over iBGP-learned.
    EbgpOverIbgp,
    /// 9.1.2.2 f with RFC 4456 section 9: lowest BGP identifier, the
    /// ORIGINATOR_ID standing in for it on reflected routes.
    BgpIdentifier,
    /// RFC 4456 section 9: shortest CLUSTER_LIST.
    ClusterListLength,
    /// 9.1.2.2 g: lowest peer address.
    PeerAddress,
    /// Determinism only.
    PeerId,
}

type StepFn = fn(&Candidate, &Candidate, u32) -> Ordering;

const STEPS: [(Step, StepFn); 10] = [
    (Step::LocallyOriginated, |a, b, _| {
        b.from.is_none().cmp(&a.from.is_none())
    }),
    (Step::LocalPref, |a, b, d| {
        local_pref(b, d).cmp(&local_pref(a, d))
    }),
    (Step::AsPathLength, |a, b, _| {
        as_path_length(a).cmp(&as_path_length(b))
    }),
    (Step::Origin, |a, b, _| origin(a).cmp(&origin(b))),
    (Step::MultiExitDisc, |a, b, _| {
        if neighbor_as(a) == neighbor_as(b) {
            med(a).cmp(&med(b))
        } else {
            Ordering::Equal
        }
    }),
    (Step::EbgpOverIbgp, |a, b, _| a.ibgp.cmp(&b.ibgp)),
    (Step::BgpIdentifier, |a, b, _| {
        bgp_identifier(a).cmp(&bgp_identifier(b))
    }),
    (Step::ClusterListLength, |a, b, _| {
        a.attributes
            .cluster_list
            .len()
            .cmp(&b.attributes.cluster_list.len())
    }),
    (Step::PeerAddress, |a, b, _| {
        a.peer_address.cmp(&b.peer_address)
    }),
    (Step::PeerId, |a, b, _| a.from.cmp(&b.from)),
];

/// Index of the MED step in [`STEPS`].
const MED_STEP: usize = 4;

/// Which of two routes is preferred (`Less`: `a`) and the step that decided
/// it (`None`: they are equal on every step).
pub fn compare_explained(
    a: &Candidate,
    b: &Candidate,
    default_local_pref: u32,
) -> (Ordering, Option<Step>) {
    for (step, f) in STEPS {
        let o = f(a, b, default_local_pref);
        if o != Ordering::Equal {
            return (o, Some(step));
        }
    }
    (Ordering::Equal, None)
}

/// Which of two routes is preferred: `Less` means `a`.
pub fn compare(a: &Candidate, b: &Candidate, default_local_pref: u32) -> Ordering {
    compare_explained(a, b, default_local_pref).0
}

/// The index of the best candidate, by the RFC's elimination process.
pub fn select_best(candidates: &[Candidate], default_local_pref: u32) -> Option<usize> {
    let before_med = |a: &Candidate, b: &Candidate| {
        STEPS[..MED_STEP]
            .iter()
            .map(|(_, f)| f(a, b, default_local_pref))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    };
    let top = candidates.iter().min_by(|a, b| before_med(a, b))?;
    let survivors: Vec<usize> = (0..candidates.len())
        .filter(|&i| before_med(&candidates[i], top) == Ordering::Equal)
        .collect();
    // 9.1.2.2 c: drop every route some other survivor from the same
    // neighbouring AS beats on MED.
    let survivors: Vec<usize> = survivors
        .iter()
        .copied()
        .filter(|&i| {
            let c = &candidates[i];
            !survivors.iter().any(|&j| {
                let o = &candidates[j];
                neighbor_as(o) == neighbor_as(c) && med(o) < med(c)
            })
        })
        .collect();
    survivors
        .into_iter()
        .min_by(|&i, &j| compare(&candidates[i], &candidates[j], default_local_pref))
}

fn local_pref(c: &Candidate, default: u32) -> u32 {
    c.attributes.local_pref.unwrap_or(default)
}

fn as_path_length(c: &Candidate) -> usize {
    c.attributes.as_path.as_ref().map_or(0, |p| p.length())
}

/// A missing ORIGIN (a malformed route the codec let through) ranks last.
fn origin(c: &Candidate) -> Origin {
    c.attributes.origin.unwrap_or(Origin::Incomplete)
}

fn med(c: &Candidate) -> u32 {
    c.attributes.multi_exit_disc.unwrap_or(0)
}

/// The neighbouring AS the route came from; `None` is our own AS (an empty
/// path, or one starting with an AS_SET), as 9.1.2.2 c defines it.
fn neighbor_as(c: &Candidate) -> Option<u32> {
    c.attributes.as_path.as_ref().and_then(|p| p.first())
}

fn bgp_identifier(c: &Candidate) -> u32 {
    u32::from(c.attributes.originator_id.unwrap_or(c.peer_router_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsPath, AsSegment};

    fn path(asns: &[u32]) -> Option<AsPath> {
        Some(AsPath {
            segments: vec![AsSegment::Sequence(asns.to_vec())],
        })
    }

    fn base() -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: path(&[65001]),
            ..PathAttributes::default()
        }
    }

    struct Side {
        from: Option<u32>,
        attrs: PathAttributes,
        ibgp: bool,
        router_id: [u8; 4],
        address: [u8; 4],
    }

    fn side(from: u32) -> Side {
        Side {
            from: Some(from),
            attrs: base(),
            ibgp: false,
            router_id: [9, 9, 9, 9],
            address: [10, 0, 0, 9],
        }
    }

    fn cand(s: &Side) -> Candidate<'_> {
        Candidate {
            from: s.from.map(PeerId),
            attributes: &s.attrs,
            ibgp: s.ibgp,
            peer_router_id: s.router_id.into(),
            peer_address: IpAddr::from(s.address),
        }
    }

    /// One case per step: `a` must win over `b` at exactly that step.
    #[test]
    fn each_step_decides() {
        type Case = (&'static str, Step, fn(&mut Side, &mut Side));
        let cases: Vec<Case> = vec![
            (
                "originated beats a better-looking learned route",
                Step::LocallyOriginated,
                |a, b| {
                    a.from = None;
                    a.attrs.as_path = path(&[]);
                    a.attrs.origin = Some(Origin::Incomplete);
                    b.attrs.local_pref = Some(1000);
                },
            ),
            ("higher LOCAL_PREF", Step::LocalPref, |a, b| {
                a.attrs.local_pref = Some(200);
                a.attrs.as_path = path(&[1, 2, 3, 4]);
                b.attrs.local_pref = Some(150);
            }),
            (
                "absent LOCAL_PREF is the default (100) and loses to 101",
                Step::LocalPref,
                |a, b| {
                    a.attrs.local_pref = Some(101);
                    b.attrs.local_pref = None;
                },
            ),
            ("shorter AS_PATH", Step::AsPathLength, |a, b| {
                a.attrs.origin = Some(Origin::Incomplete);
                b.attrs.as_path = path(&[65001, 65002]);
            }),
            ("an AS_SET counts as one", Step::AsPathLength, |a, b| {
                a.attrs.as_path = Some(AsPath {
                    segments: vec![AsSegment::Sequence(vec![1]), AsSegment::Set(vec![2, 3, 4])],
                });
                b.attrs.as_path = path(&[1, 2, 3]);
            }),
            ("lower ORIGIN", Step::Origin, |a, b| {
                a.attrs.origin = Some(Origin::Egp);
                a.attrs.multi_exit_disc = Some(500);
                b.attrs.origin = Some(Origin::Incomplete);
            }),
            (
                "lower MED from the same neighbour AS",
                Step::MultiExitDisc,
                |a, b| {
                    a.attrs.multi_exit_disc = Some(5);
                    a.ibgp = true;
                    b.attrs.multi_exit_disc = Some(10);
                },
            ),
            ("missing MED is 0", Step::MultiExitDisc, |a, b| {
                a.attrs.multi_exit_disc = None;
                a.ibgp = true;
                b.attrs.multi_exit_disc = Some(1);
            }),
            (
                "eBGP over iBGP (MED not comparable across ASes)",
                Step::EbgpOverIbgp,
                |a, b| {
                    a.attrs.as_path = path(&[65002]);
                    a.attrs.multi_exit_disc = Some(100);
                    a.router_id = [200, 0, 0, 1];
                    b.ibgp = true;
                },
            ),
            ("lowest BGP identifier", Step::BgpIdentifier, |a, b| {
                a.router_id = [1, 1, 1, 1];
                a.attrs.cluster_list = vec![[1, 0, 0, 1].into(), [1, 0, 0, 2].into()];
                b.router_id = [2, 2, 2, 2];
            }),
            (
                "ORIGINATOR_ID stands in for the identifier",
                Step::BgpIdentifier,
                |a, b| {
                    a.ibgp = true;
                    b.ibgp = true;
                    a.router_id = [9, 0, 0, 0];
                    a.attrs.originator_id = Some([1, 1, 1, 1].into());
                    b.router_id = [2, 2, 2, 2];
                },
            ),
            ("shorter CLUSTER_LIST", Step::ClusterListLength, |a, b| {
                a.ibgp = true;
                b.ibgp = true;
                a.attrs.originator_id = Some([3, 3, 3, 3].into());
                b.attrs.originator_id = Some([3, 3, 3, 3].into());
                a.attrs.cluster_list = vec![[1, 0, 0, 1].into()];
                b.attrs.cluster_list = vec![[1, 0, 0, 1].into(), [1, 0, 0, 2].into()];
                a.address = [10, 0, 0, 200];
            }),
            ("lowest peer address", Step::PeerAddress, |a, _| {
                a.address = [10, 0, 0, 1];
                a.from = Some(7);
            }),
            ("lowest peer id, for determinism", Step::PeerId, |a, _| {
                a.from = Some(0);
            }),
        ];
        for (name, step, setup) in cases {
            let (mut a, mut b) = (side(5), side(6));
            setup(&mut a, &mut b);
            let (ca, cb) = (cand(&a), cand(&b));
            assert_eq!(
                compare_explained(&ca, &cb, 100),
                (Ordering::Less, Some(step)),
                "{name}"
            );
            assert_eq!(
                compare_explained(&cb, &ca, 100),
                (Ordering::Greater, Some(step)),
                "{name} (reversed)"
            );
            assert_eq!(select_best(&[cb, ca], 100), Some(1), "{name} (select_best)");
        }
    }

    #[test]
    fn med_only_between_routes_from_the_same_neighbour_as() {
        let (mut a, mut b) = (side(5), side(6));
        a.attrs.as_path = path(&[65002]);
        a.attrs.multi_exit_disc = Some(100);
        a.router_id = [1, 1, 1, 1];
        b.attrs.multi_exit_disc = Some(0);
        // Different neighbour ASes: MED is skipped, the identifier decides.
        assert_eq!(
            compare_explained(&cand(&a), &cand(&b), 100),
            (Ordering::Less, Some(Step::BgpIdentifier))
        );
    }

    /// The classic MED intransitivity: A (AS 1, MED 10, id 1), B (AS 2, id
    /// 2), C (AS 1, MED 5, id 3). Pairwise A beats B (identifier), B beats C
    /// (identifier), C beats A (MED): a cycle, so a pairwise fold depends on
    /// the order. The RFC's elimination removes A first (C beats it on MED),
    /// then B wins on identifier, whatever the order of the candidates.
    #[test]
    fn med_elimination_is_order_independent() {
        let mk = |from, asn, med_v, id: u8| {
            let mut s = side(from);
            s.attrs.as_path = path(&[asn]);
            s.attrs.multi_exit_disc = Some(med_v);
            s.router_id = [id, 0, 0, 0];
            s
        };
        let (a, b, c) = (mk(1, 1, 10, 1), mk(2, 2, 0, 2), mk(3, 1, 5, 3));
        assert_eq!(compare(&cand(&a), &cand(&b), 100), Ordering::Less);
        assert_eq!(compare(&cand(&b), &cand(&c), 100), Ordering::Less);
        assert_eq!(compare(&cand(&c), &cand(&a), 100), Ordering::Less);
        let sides = [&a, &b, &c];
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let cands: Vec<Candidate> = order.iter().map(|&i| cand(sides[i])).collect();
            let best = select_best(&cands, 100).unwrap();
            assert_eq!(cands[best].from, Some(PeerId(2)), "order {order:?}");
        }
    }

    #[test]
    fn no_candidates_no_best() {
        assert_eq!(select_best(&[], 100), None);
    }
}
