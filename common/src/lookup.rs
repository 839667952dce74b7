//! Map access as traits, so the decisions are written once over any maps:
//! the eBPF programs implement them with aya's `LpmTrie` and `HashMap`, the
//! userspace twin with in-memory tables (the slice implementations here).

use crate::conntrack::{ConntrackEntry, FlowKey};
use crate::maps::{
    EndpointInfo, EndpointKey, FoundAction, IDENTITY_WORLD, IdentityEntry, IpcacheKey, PodCidrKey,
    PolicyEntry, PolicyKey, RemoteNode, found_action,
};
use crate::redirect::{FibQuery, FibResult};

/// Routes to other nodes' pod CIDRs (the [`crate::maps::POD_ROUTES_MAP`] LPM trie).
pub trait RouteLookup {
    /// The node owning the longest pod CIDR that holds `dst`, if any.
    fn remote_node_for(&self, dst: [u8; 4]) -> Option<RemoteNode>;
}

/// The cluster's nodes (the [`crate::maps::NODES_MAP`] set).
pub trait NodeSet {
    /// `addr` is the underlay address of a cluster node.
    fn is_node(&self, addr: [u8; 4]) -> bool;
}

/// The node's own routing table and neighbours, as `bpf_fib_lookup` sees
/// them from the uplink (the eBPF programs call the helper; the twin and
/// tests answer from their tables).
pub trait Fib {
    /// Where the node would forward the packet `query` describes.
    fn lookup(&self, query: &FibQuery) -> FibResult;
}

/// The pod endpoints (the [`crate::maps::ENDPOINTS_MAP`] hash), by the
/// ifindex of the pod's host veth.
pub trait Endpoints {
    fn endpoint(&self, ifindex: EndpointKey) -> Option<EndpointInfo>;
}

impl<T: Fib + ?Sized> Fib for &T {
    fn lookup(&self, query: &FibQuery) -> FibResult {
        (**self).lookup(query)
    }
}

impl<T: Endpoints + ?Sized> Endpoints for &T {
    fn endpoint(&self, ifindex: EndpointKey) -> Option<EndpointInfo> {
        (**self).endpoint(ifindex)
    }
}

/// An endpoint table as a list (userspace and tests); the first entry of
/// an ifindex wins (a hash map holds one).
impl Endpoints for [(EndpointKey, EndpointInfo)] {
    fn endpoint(&self, ifindex: EndpointKey) -> Option<EndpointInfo> {
        self.iter().find(|(i, _)| *i == ifindex).map(|(_, e)| *e)
    }
}

impl<T: RouteLookup + ?Sized> RouteLookup for &T {
    fn remote_node_for(&self, dst: [u8; 4]) -> Option<RemoteNode> {
        (**self).remote_node_for(dst)
    }
}

impl<T: NodeSet + ?Sized> NodeSet for &T {
    fn is_node(&self, addr: [u8; 4]) -> bool {
        (**self).is_node(addr)
    }
}

/// A route table as a list: longest prefix wins, as in the LPM trie; among
/// equal prefixes (which a trie cannot hold) the first. Linear, so for
/// userspace and tests, not for eBPF.
impl RouteLookup for [(PodCidrKey, RemoteNode)] {
    fn remote_node_for(&self, dst: [u8; 4]) -> Option<RemoteNode> {
        let mut best: Option<&(PodCidrKey, RemoteNode)> = None;
        for entry in self {
            if !entry.0.contains(dst) {
                continue;
            }
            match best {
                Some(b) if b.0.prefix_len >= entry.0.prefix_len => {}
                _ => best = Some(entry),
            }
        }
        best.map(|(_, node)| *node)
    }
}

impl<const N: usize> RouteLookup for [(PodCidrKey, RemoteNode); N] {
    fn remote_node_for(&self, dst: [u8; 4]) -> Option<RemoteNode> {
        self.as_slice().remote_node_for(dst)
    }
}

/// A node set as a list of underlay addresses (userspace and tests).
impl NodeSet for [[u8; 4]] {
    fn is_node(&self, addr: [u8; 4]) -> bool {
        self.contains(&addr)
    }
}

impl<const N: usize> NodeSet for [[u8; 4]; N] {
    fn is_node(&self, addr: [u8; 4]) -> bool {
        self.as_slice().is_node(addr)
    }
}

/// The ipcache (the [`crate::maps::IPCACHE_MAP`] LPM trie): whose an
/// address is, for policy.
pub trait Ipcache {
    /// The identity of the longest prefix holding `addr`;
    /// [`IDENTITY_WORLD`] when none does.
    fn identity_of(&self, addr: [u8; 4]) -> u32;
}

/// The policy map (the [`crate::maps::POLICY_MAP`] LPM trie).
pub trait PolicyLookup {
    /// The action of the longest stored prefix covering `key` (a full
    /// key), as a [`FoundAction`] (see there why not an `Option`).
    fn policy_action(&self, key: &PolicyKey) -> FoundAction;
}

/// The connection tracking map ([`crate::conntrack::CONNTRACK_MAP`], an
/// LRU hash): read a flow's entry, apply the tracker's update.
pub trait ConntrackTable {
    fn entry(&self, key: &FlowKey) -> Option<ConntrackEntry>;
    fn write(&mut self, key: &FlowKey, entry: &ConntrackEntry);
    /// Removing an absent entry is no error.
    fn remove(&mut self, key: &FlowKey);
}

impl<T: Ipcache + ?Sized> Ipcache for &T {
    fn identity_of(&self, addr: [u8; 4]) -> u32 {
        (**self).identity_of(addr)
    }
}

impl<T: PolicyLookup + ?Sized> PolicyLookup for &T {
    fn policy_action(&self, key: &PolicyKey) -> FoundAction {
        (**self).policy_action(key)
    }
}

/// An ipcache as a list: longest prefix wins, as in the trie. Linear, for
/// userspace and tests.
impl Ipcache for [(IpcacheKey, IdentityEntry)] {
    fn identity_of(&self, addr: [u8; 4]) -> u32 {
        self.iter()
            .filter(|(k, _)| k.contains(addr))
            .max_by_key(|(k, _)| k.prefix_len)
            .map_or(IDENTITY_WORLD, |(_, e)| e.identity)
    }
}

/// A policy map as a list: the longest covering prefix, as in the trie.
/// Linear, for userspace and tests.
impl PolicyLookup for [(PolicyKey, PolicyEntry)] {
    fn policy_action(&self, key: &PolicyKey) -> FoundAction {
        found_action(
            self.iter()
                .filter(|(k, _)| k.covers(key))
                .max_by_key(|(k, _)| k.prefix_len)
                .map(|(_, e)| *e),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let wide = (
            PodCidrKey::new([10, 244, 0, 0], 16),
            RemoteNode::new([198, 18, 0, 9]),
        );
        let narrow = (
            PodCidrKey::new([10, 244, 2, 0], 24),
            RemoteNode::new([198, 18, 0, 2]),
        );
        for table in [[wide, narrow], [narrow, wide]] {
            assert_eq!(
                table.remote_node_for([10, 244, 2, 7]),
                Some(RemoteNode::new([198, 18, 0, 2]))
            );
            assert_eq!(
                table.remote_node_for([10, 244, 3, 7]),
                Some(RemoteNode::new([198, 18, 0, 9]))
            );
            assert_eq!(table.remote_node_for([10, 245, 0, 1]), None);
        }
        let empty: [(PodCidrKey, RemoteNode); 0] = [];
        assert_eq!(empty.remote_node_for([10, 244, 2, 7]), None);
    }

    #[test]
    fn endpoint_table_is_by_ifindex() {
        let table = [
            (7, EndpointInfo::new([10, 244, 1, 5])),
            (9, EndpointInfo::new([10, 244, 1, 6])),
        ];
        assert_eq!(
            table[..].endpoint(9),
            Some(EndpointInfo::new([10, 244, 1, 6]))
        );
        assert_eq!(table[..].endpoint(8), None);
    }

    #[test]
    fn node_set_is_membership() {
        let nodes = [[198, 18, 0, 1], [198, 18, 0, 2]];
        assert!(nodes.is_node([198, 18, 0, 2]));
        assert!(!nodes.is_node([198, 18, 0, 3]));
        assert!(nodes[..].is_node([198, 18, 0, 1]));
    }
}
