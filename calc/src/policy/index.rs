//! Indexes over the cluster's members, so that resolving a rule's peers
//! costs about the pods it selects rather than every pod of the cluster
//! for every peer of every policy.
//!
//! Each lookup returns exactly the members the plain definition would
//! (see [`MemberIndex::selected`], [`MemberIndex::in_block`]); the indexes
//! only narrow the candidates, the definition still decides each one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use weft_model::policy::Peer;
use weft_model::selector::{LabelSelector, Labels, Operator};

use super::Member;
use super::identity::{Block, block_contains};

/// Members by namespace, label and address; positions are into the
/// `members` slice the index was built from.
pub(super) struct MemberIndex<'a> {
    /// Every namespace (name order), its labels and its members.
    namespaces: Vec<NamespaceMembers<'a>>,
    /// The position in `namespaces` of each member's namespace.
    namespace_of: Vec<usize>,
    /// Members by one label: key → value → members, ascending.
    by_label: HashMap<&'a str, HashMap<&'a str, Vec<usize>>>,
    /// (address, member), ascending by address.
    by_address: Vec<(u32, usize)>,
    members: &'a [Member<'a>],
}

struct NamespaceMembers<'a> {
    name: &'a str,
    labels: &'a Labels,
    members: Vec<usize>,
}

impl<'a> MemberIndex<'a> {
    /// `namespaces` holds every member's namespace (compile adds those
    /// only pods name).
    pub(super) fn new(
        namespaces: &'a BTreeMap<&'a str, Labels>,
        members: &'a [Member<'a>],
    ) -> MemberIndex<'a> {
        let mut index = MemberIndex {
            namespaces: namespaces
                .iter()
                .map(|(name, labels)| NamespaceMembers {
                    name,
                    labels,
                    members: Vec::new(),
                })
                .collect(),
            namespace_of: Vec::with_capacity(members.len()),
            by_label: HashMap::new(),
            by_address: Vec::with_capacity(members.len()),
            members,
        };
        let position: HashMap<&str, usize> = (index.namespaces.iter().enumerate())
            .map(|(i, n)| (n.name, i))
            .collect();
        for (i, m) in members.iter().enumerate() {
            let ns = position[m.pod.namespace.as_str()];
            index.namespaces[ns].members.push(i);
            index.namespace_of.push(ns);
            for (key, value) in &m.pod.labels {
                let values = index.by_label.entry(key).or_default();
                values.entry(value).or_default().push(i);
            }
            index.by_address.push((u32::from(m.address), i));
        }
        index.by_address.sort_unstable();
        index
    }

    /// The members a selector peer holds (`peer` without an ipBlock), for
    /// a policy of namespace `policy_namespace`: a namespace selector picks
    /// namespaces (without one, the policy's own), a pod selector pods in
    /// them (without one, all); both present must both hold.
    pub(super) fn selected(&self, policy_namespace: &str, peer: &Peer) -> Vec<usize> {
        // Each namespace decided once, not once per pod.
        let namespace_ok: Vec<bool> = match &peer.namespace_selector {
            Some(sel) => (self.namespaces.iter())
                .map(|n| sel.matches(n.labels))
                .collect(),
            None => (self.namespaces.iter())
                .map(|n| n.name == policy_namespace)
                .collect(),
        };
        let pod_ok = |i: usize| {
            (peer.pod_selector.as_ref()).is_none_or(|sel| sel.matches(&self.members[i].pod.labels))
        };
        // With matchLabels or an `In`, only the pods with the rarest of
        // the labels they require can match.
        if let Some(candidates) = peer.pod_selector.as_ref().and_then(|s| self.candidates(s)) {
            return (candidates.iter().copied())
                .filter(|&i| namespace_ok[self.namespace_of[i]] && pod_ok(i))
                .collect();
        }
        let mut out: Vec<usize> = (self.namespaces.iter().zip(&namespace_ok))
            .filter(|(_, ok)| **ok)
            .flat_map(|(n, _)| n.members.iter().copied())
            .filter(|&i| pod_ok(i))
            .collect();
        out.sort_unstable();
        out
    }

    /// The members whose address is in `block`: those in the CIDR's
    /// address range, less the excepts.
    pub(super) fn in_block(&self, block: &Block) -> Vec<usize> {
        let (cidr, _) = block;
        let first = u32::from(cidr.network());
        let last = u32::from(cidr.broadcast());
        let from = self.by_address.partition_point(|&(a, _)| a < first);
        let to = self.by_address.partition_point(|&(a, _)| a <= last);
        let mut out: Vec<usize> = (self.by_address[from..to].iter())
            .filter(|&&(_, i)| block_contains(block, self.members[i].address))
            .map(|&(_, i)| i)
            .collect();
        out.sort_unstable();
        out
    }

    /// The fewest members (ascending) among which all those `selector`
    /// matches are: the members with one of its `matchLabels`, or with
    /// one of the values of one of its `In` requirements; `None` when it
    /// requires neither (every member is a candidate).
    fn candidates(&self, selector: &LabelSelector) -> Option<Cow<'_, [usize]>> {
        let labels =
            (selector.match_labels.iter()).map(|(k, v)| Cow::Borrowed(self.with_label(k, v)));
        let ins = (selector.match_expressions.iter())
            .filter(|r| r.operator == Operator::In)
            .map(|r| {
                let mut any: Vec<usize> = (r.values.iter())
                    .flat_map(|v| self.with_label(&r.key, v))
                    .copied()
                    .collect();
                any.sort_unstable();
                any.dedup();
                Cow::Owned(any)
            });
        labels.chain(ins).min_by_key(|c| c.len())
    }

    fn with_label(&self, key: &str, value: &str) -> &[usize] {
        (self.by_label.get(key))
            .and_then(|values| values.get(value))
            .map_or(&[], Vec::as_slice)
    }
}
