//! Identities: what the ipcache maps addresses to, and what policy keys
//! name peers by.
//!
//! - every pod address is a /32 with an identity of its own, so a named
//!   port can resolve on each destination pod;
//! - the local node's underlay address is [`IDENTITY_HOST`];
//! - every ipBlock `cidr` and `except` prefix is an entry whose identity
//!   stands for its membership: the set of ipBlocks its addresses are in.
//!   Prefixes nest or are disjoint, so all the addresses whose longest
//!   match is a given prefix are in the same blocks (a block holds them iff
//!   its cidr covers the prefix and none of its excepts does); prefixes
//!   with the same membership share an identity, and an empty membership
//!   is [`IDENTITY_WORLD`], as is any address no entry covers.
//!
//! Numbers are kept from the previous compilation for the same pod or
//! membership, and new ones are never reused, so a change rewrites only
//! what it changes and no stale reference can ever name a new peer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_common::maps::{IDENTITY_ANY, IDENTITY_FIRST_ALLOCATED, IDENTITY_WORLD};

/// An IPv4 ipBlock, canonical: its CIDR and sorted excepts (networks, host
/// bits cleared). Two peers with the same block have the same members.
pub type Block = (Ipv4Network, Vec<Ipv4Network>);

/// Which pod an identity was given to: namespace, name and address (a
/// pod recreated under its name, with another address, is another peer).
pub type PodKey = (String, String, Ipv4Addr);

/// The identities handed out so far; pass the last compilation's back in
/// to keep them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    pods: BTreeMap<PodKey, u32>,
    memberships: BTreeMap<BTreeSet<Block>, u32>,
    next: u32,
}

impl Identities {
    /// Starts a compilation: nothing assigned yet, numbers continuing
    /// after `previous`'s.
    pub(crate) fn continuing(previous: Option<&Identities>) -> Identities {
        Identities {
            next: previous.map_or(IDENTITY_FIRST_ALLOCATED, |p| p.next),
            ..Identities::default()
        }
    }

    pub(crate) fn pod(&mut self, previous: Option<&Identities>, key: PodKey) -> u32 {
        let kept = previous.and_then(|p| p.pods.get(&key).copied());
        let id = kept.unwrap_or_else(|| self.allocate());
        *self.pods.entry(key).or_insert(id)
    }

    pub(crate) fn membership(
        &mut self,
        previous: Option<&Identities>,
        members: BTreeSet<Block>,
    ) -> u32 {
        if members.is_empty() {
            return IDENTITY_WORLD;
        }
        if let Some(id) = self.memberships.get(&members) {
            return *id;
        }
        let kept = previous.and_then(|p| p.memberships.get(&members).copied());
        let id = kept.unwrap_or_else(|| self.allocate());
        self.memberships.insert(members, id);
        id
    }

    fn allocate(&mut self) -> u32 {
        let id = self.next.max(IDENTITY_FIRST_ALLOCATED);
        assert!(id < IDENTITY_ANY, "identity space exhausted");
        self.next = id + 1;
        id
    }

    /// What each allocated identity stands for, for operators: the pod it
    /// was given to, or the ipBlocks its addresses are in.
    pub fn peers(&self) -> BTreeMap<u32, IdentityPeer> {
        let pods = self.pods.iter().map(|((namespace, name, address), id)| {
            let peer = IdentityPeer::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
                address: *address,
            };
            (*id, peer)
        });
        let blocks = self.memberships.iter().map(|(members, id)| {
            let blocks = members.iter().map(describe_block).collect();
            (*id, IdentityPeer::Blocks(blocks))
        });
        pods.chain(blocks).collect()
    }

    /// The identity of the pod `(namespace, name, address)`, if it has one.
    pub fn of_pod(&self, namespace: &str, name: &str, address: Ipv4Addr) -> Option<u32> {
        self.pods
            .get(&(namespace.to_string(), name.to_string(), address))
            .copied()
    }
}

/// Every prefix of the blocks (plus 0.0.0.0/0) with its membership.
///
/// A block can hold a prefix only if its CIDR is one of the prefix's at
/// most 33 ancestors (itself included), so each prefix looks those up
/// instead of testing every block.
pub(crate) fn block_prefixes(blocks: &BTreeSet<Block>) -> BTreeMap<Ipv4Network, BTreeSet<Block>> {
    let mut prefixes: BTreeSet<Ipv4Network> = BTreeSet::new();
    prefixes.insert(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"));
    let mut by_cidr: HashMap<Ipv4Network, Vec<&Block>> = HashMap::new();
    for block in blocks {
        let (cidr, except) = block;
        prefixes.insert(*cidr);
        prefixes.extend(except.iter().copied());
        by_cidr.entry(*cidr).or_default().push(block);
    }
    prefixes
        .into_iter()
        .map(|p| {
            let members = (0..=p.prefix())
                .filter_map(|len| by_cidr.get(&ancestor(&p, len)))
                .flatten()
                .filter(|(_, except)| !except.iter().any(|e| covers(e, &p)))
                .map(|&block| block.clone())
                .collect();
            (p, members)
        })
        .collect()
}

/// The network of length `len` (at most `net`'s) that holds `net`.
fn ancestor(net: &Ipv4Network, len: u8) -> Ipv4Network {
    let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
    let ip = Ipv4Addr::from(u32::from(net.network()) & mask);
    Ipv4Network::new(ip, len).expect("a length of at most 32")
}

/// `outer` holds all of `inner`.
fn covers(outer: &Ipv4Network, inner: &Ipv4Network) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// `address` is in the block: in its CIDR and in none of its excepts.
pub(crate) fn block_contains((cidr, except): &Block, address: Ipv4Addr) -> bool {
    cidr.contains(address) && !except.iter().any(|e| e.contains(address))
}

/// What an allocated identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPeer {
    Pod {
        namespace: String,
        name: String,
        address: Ipv4Addr,
    },
    /// Addresses in exactly these ipBlocks (each `CIDR` or `CIDR except
    /// A, B`), and in no other.
    Blocks(Vec<String>),
}

/// An ipBlock as operators write it.
fn describe_block((cidr, except): &Block) -> String {
    if except.is_empty() {
        return cidr.to_string();
    }
    let except: Vec<String> = except.iter().map(ToString::to_string).collect();
    format!("{cidr} except {}", except.join(", "))
}
