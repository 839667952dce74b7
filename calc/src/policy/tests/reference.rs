//! The indexed peer resolution and block prefixes against their plain
//! definitions (every member tested against every peer, every block
//! against every prefix), on random clusters: the indexes may only make
//! them faster, never change what they give.

use std::collections::{BTreeMap, BTreeSet};

use weft_model::namespace::labels_of;
use weft_model::policy::Peer;
use weft_model::selector::Labels;
use weft_model::{NetworkPolicy, PolicyPod};

use super::super::identity::{Block, block_contains, block_prefixes};
use super::super::index::MemberIndex;
use super::super::{Member, ipv4_block, peers_of};
use super::random;

const SEEDS: u64 = 400;

/// A selector peer holds `pod`, by the definition: a namespace selector
/// picks namespaces (without one, the policy's own), a pod selector pods
/// in them (without one, all); both present must both hold.
fn selects(
    namespaces: &BTreeMap<&str, Labels>,
    policy: &NetworkPolicy,
    peer: &Peer,
    pod: &PolicyPod,
) -> bool {
    let namespace_ok = match &peer.namespace_selector {
        Some(sel) => (namespaces.get(pod.namespace.as_str())).is_some_and(|l| sel.matches(l)),
        None => pod.namespace == policy.namespace(),
    };
    namespace_ok && (peer.pod_selector.as_ref()).is_none_or(|sel| sel.matches(&pod.labels))
}

/// Every prefix's membership, by the definition: the blocks whose CIDR
/// covers the prefix and none of whose excepts does.
fn block_prefixes_by_definition(
    blocks: &BTreeSet<Block>,
) -> BTreeMap<ipnetwork::Ipv4Network, BTreeSet<Block>> {
    let covers = |outer: &ipnetwork::Ipv4Network, inner: &ipnetwork::Ipv4Network| {
        outer.prefix() <= inner.prefix() && outer.contains(inner.network())
    };
    let mut prefixes = BTreeSet::from(["0.0.0.0/0".parse().unwrap()]);
    for (cidr, except) in blocks {
        prefixes.insert(*cidr);
        prefixes.extend(except.iter().copied());
    }
    prefixes
        .into_iter()
        .map(|p| {
            let members = (blocks.iter())
                .filter(|(cidr, except)| covers(cidr, &p) && !except.iter().any(|e| covers(e, &p)))
                .cloned()
                .collect();
            (p, members)
        })
        .collect()
}

#[test]
fn indexed_peers_are_the_members_the_definition_selects() {
    let (mut selector_peers, mut block_peers, mut selected) = (0, 0, 0);
    for seed in 0..SEEDS {
        let c = random::cluster(seed);
        let mut namespaces: BTreeMap<&str, Labels> = (c.namespaces.iter())
            .map(|n| (n.name(), n.labels()))
            .collect();
        for pod in &c.pods {
            (namespaces.entry(&pod.namespace)).or_insert_with(|| labels_of(&pod.namespace, None));
        }
        let mut seen = BTreeSet::new();
        let members: Vec<Member> = (c.pods.iter())
            .filter_map(|pod| Some((pod, pod.address?)))
            .filter(|(_, address)| seen.insert(*address))
            .enumerate()
            .map(|(i, (pod, address))| Member {
                pod,
                address,
                identity: i as u32,
            })
            .collect();
        let index = MemberIndex::new(&namespaces, &members);
        for policy in &c.policies {
            for peer in peers_of(policy) {
                let (got, want): (Vec<usize>, Vec<usize>) = match &peer.ip_block {
                    Some(block) => {
                        let Some(block) = ipv4_block(block) else {
                            continue;
                        };
                        block_peers += 1;
                        let want = (0..members.len())
                            .filter(|&i| block_contains(&block, members[i].address))
                            .collect();
                        (index.in_block(&block), want)
                    }
                    None => {
                        selector_peers += 1;
                        let want = (0..members.len())
                            .filter(|&i| selects(&namespaces, policy, peer, members[i].pod))
                            .collect();
                        (index.selected(policy.namespace(), peer), want)
                    }
                };
                assert_eq!(got, want, "seed {seed}, {}: {peer:?}", policy.name());
                selected += want.len();
            }
        }
    }
    // The random clusters do exercise both kinds, and select pods.
    assert!(selector_peers > 1_000 && block_peers > 500 && selected > 10_000);
}

#[test]
fn indexed_block_prefixes_are_the_definitions() {
    let mut prefixes = 0;
    for seed in 0..SEEDS {
        let c = random::cluster(seed);
        let blocks: BTreeSet<Block> = (c.policies.iter())
            .flat_map(peers_of)
            .filter_map(|peer| ipv4_block(peer.ip_block.as_ref()?))
            .collect();
        let want = block_prefixes_by_definition(&blocks);
        assert_eq!(block_prefixes(&blocks), want, "seed {seed}: {blocks:?}");
        prefixes += want.len();
    }
    assert!(prefixes > 1_000);
}
