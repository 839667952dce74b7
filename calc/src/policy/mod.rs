//! The NetworkPolicy compiler: namespaces, every pod of the cluster and
//! every policy in, the state of one node's policy maps out.
//!
//! # Design
//!
//! Selectors are resolved here, in userspace, never per packet. A packet
//! then costs a constant number of map lookups whatever the number of
//! policies, rules, pods or ipBlocks (the layouts and the lookup order are
//! in `weft_common::maps`):
//!
//! 1. **ipcache** (LPM, prefix → identity): the peer's address gives a
//!    numeric identity ([`identity`]): each pod address its own (so a
//!    named port resolves per destination pod, and ipBlocks match pod
//!    addresses like any other), the local node [`IDENTITY_HOST`], every
//!    ipBlock prefix one shared by the prefixes in the same set of blocks,
//!    everything else [`IDENTITY_WORLD`].
//! 2. **policy** (LPM, endpoint · direction · identity · protocol · port →
//!    allow): rules become entries per local endpoint; a port range is its
//!    few aligned prefixes ([`ports`]), "all ports" and "all protocols"
//!    shorter prefixes. A rule allowing every peer uses [`IDENTITY_ANY`]
//!    instead of one entry per identity (one more lookup at most); an
//!    isolated direction carries a deny marker at the endpoint · direction
//!    prefix, so one lookup tells "not isolated" (no match: allow) from
//!    "isolated, no rule" (the marker).
//!
//! Cilium's design, chosen over Calico's IP sets as LPM entries carrying
//! port and protocol because identities keep the policy map's size
//! proportional to rules × peers instead of rules × prefixes × ports, and
//! because per-pod identities make named ports on egress exact (the port
//! number is looked up on each destination pod).
//!
//! [`compile`] is a pure function of its input; [`plan()`] orders the
//! change between two compilations so that no packet that both allow is
//! ever dropped in between.
//!
//! # Failing closed
//!
//! An endpoint whose policy cannot be programmed gets no open window: it
//! is denied everything both ways (an isolation marker per direction, no
//! allow entry, so not even the node's probes pass) and the compilation
//! says so in [`CompiledPolicy::failed_closed`] and its problems. That
//! happens when a policy selecting it is malformed (an ipBlock, protocol
//! or port the API server would refuse), or when its entries do not fit
//! the maps' capacities ([`MapCapacity`]), checked here before anything is
//! written: endpoints keep their rules in namespace/name order while the
//! rest still fit with two markers each; when the ipcache, shared by all,
//! does not fit, every isolated endpoint fails closed.

pub mod digest;
pub mod identity;
mod index;
pub mod plan;
pub mod ports;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_common::maps::{
    IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IPCACHE_MAX_ENTRIES, IdentityEntry, IpcacheKey,
    POLICY_EGRESS, POLICY_INGRESS, POLICY_MAX_ENTRIES, POLICY_PREFIX_FULL, POLICY_PREFIX_IDENTITY,
    POLICY_PREFIX_PROTOCOL, PolicyEntry, PolicyKey,
};
use weft_model::namespace::labels_of;
use weft_model::policy::{NetworkPolicyPort, Peer, PortRef, Protocol, resolve_named_port};
use weft_model::selector::Labels;
use weft_model::{Namespace, NetworkPolicy, PolicyPod};

pub use identity::{Identities, IdentityPeer};
pub use plan::{PolicyPlan, plan};

use crate::problem::Problem;
use identity::{Block, block_contains, block_prefixes};
use index::MemberIndex;

/// What one node's policy maps are computed from.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// The node whose endpoints get policy entries.
    pub node: &'a str,
    /// Its underlay address: kubelet's probes come from it, always allowed.
    pub node_address: Ipv4Addr,
    /// Namespace objects (labels); a namespace only pods name still exists.
    pub namespaces: &'a [Namespace],
    /// Every pod of the cluster: local ones are protected, all are peers.
    pub pods: &'a [PolicyPod],
    pub policies: &'a [NetworkPolicy],
    /// The last compilation's identities, kept for the same peers.
    pub previous: Option<&'a Identities>,
}

/// A node's policy maps as they should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub ipcache: BTreeMap<IpcacheKey, IdentityEntry>,
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// What the next compilation passes back as `previous`.
    pub identities: Identities,
    /// What could not be compiled.
    pub problems: Vec<Problem>,
    /// Local endpoints denied everything both ways because their policy
    /// could not be programmed, with why.
    pub failed_closed: BTreeMap<Ipv4Addr, FailClosed>,
}

/// How many entries the maps hold: what a compilation must fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    pub policy: usize,
    pub ipcache: usize,
}

impl MapCapacity {
    /// The capacities the eBPF object declares (`weft_common::maps`).
    pub const KERNEL: MapCapacity = MapCapacity {
        policy: POLICY_MAX_ENTRIES as usize,
        ipcache: IPCACHE_MAX_ENTRIES as usize,
    };
}

impl Default for MapCapacity {
    fn default() -> MapCapacity {
        MapCapacity::KERNEL
    }
}

/// Why an endpoint's policy could not be programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailClosed {
    #[error("policy {policy} is malformed: {reason}")]
    Malformed { policy: String, reason: String },
    #[error(
        "its {needed} policy map entries do not fit: {free} of the policy map's {capacity} are left"
    )]
    PolicyMapFull {
        needed: usize,
        free: usize,
        capacity: usize,
    },
    #[error("the ipcache needs {needed} entries, above its capacity of {capacity}")]
    IpcacheFull { needed: usize, capacity: usize },
}

impl CompiledPolicy {
    /// Whether some policy isolates the endpoint at `address` in `direction`.
    pub fn isolated(&self, address: Ipv4Addr, direction: u8) -> bool {
        self.policy
            .contains_key(&PolicyKey::isolation(address.octets(), direction))
    }
}

/// A pod that can take part in policy: it has an address, and the first
/// pod to claim an address keeps it.
struct Member<'a> {
    pod: &'a PolicyPod,
    address: Ipv4Addr,
    identity: u32,
}

/// The peers of a rule: everyone, or a set of identities (each pod's with
/// the pod, for named ports on egress).
enum Peers<'a> {
    Any,
    Some(BTreeMap<u32, Option<&'a PolicyPod>>),
}

/// Compiles the policy maps of `input.node`, within the kernel maps'
/// capacities.
pub fn compile(input: &PolicyInput) -> CompiledPolicy {
    compile_within(input, MapCapacity::KERNEL)
}

/// Compiles the policy maps of `input.node` to fit `capacity` (see the
/// module doc, "Failing closed").
pub fn compile_within(input: &PolicyInput, capacity: MapCapacity) -> CompiledPolicy {
    let mut problems = Vec::new();
    let mut identities = Identities::continuing(input.previous);

    // Namespaces' labels: objects first, then those only pods name.
    let mut namespaces: BTreeMap<&str, Labels> = input
        .namespaces
        .iter()
        .map(|n| (n.name(), n.labels()))
        .collect();
    for pod in input.pods {
        namespaces
            .entry(&pod.namespace)
            .or_insert_with(|| labels_of(&pod.namespace, None));
    }

    // Pods with addresses, in a stable order, each with its identity.
    let mut pods: Vec<&PolicyPod> = input.pods.iter().collect();
    pods.sort_by(|a, b| {
        (&a.namespace, &a.name, a.address).cmp(&(&b.namespace, &b.name, b.address))
    });
    let mut members: Vec<Member> = Vec::new();
    let mut by_address: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for pod in pods {
        let Some(address) = pod.address else {
            if pod.node == input.node {
                problems.push(Problem::PolicyPodWithoutAddress {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                });
            }
            continue;
        };
        if let Some(&first) = by_address.get(&address) {
            let holder = members[first].pod;
            problems.push(Problem::PolicyAddressClash {
                address,
                pod: format!("{}/{}", pod.namespace, pod.name),
                holder: format!("{}/{}", holder.namespace, holder.name),
            });
            continue;
        }
        let key = (pod.namespace.clone(), pod.name.clone(), address);
        let identity = identities.pod(input.previous, key);
        by_address.insert(address, members.len());
        members.push(Member {
            pod,
            address,
            identity,
        });
    }

    // The ipcache: block prefixes, then pods' and the node's /32s over them.
    let blocks: BTreeSet<Block> = input
        .policies
        .iter()
        .flat_map(peers_of)
        .filter_map(|peer| ipv4_block(peer.ip_block.as_ref()?))
        .collect();
    let mut ipcache = BTreeMap::new();
    let mut block_identities: BTreeMap<Block, BTreeSet<u32>> = BTreeMap::new();
    for (prefix, membership) in block_prefixes(&blocks) {
        let id = identities.membership(input.previous, membership.clone());
        for block in membership {
            block_identities.entry(block).or_default().insert(id);
        }
        if prefix.prefix() == 0 && id == IDENTITY_WORLD {
            continue; // a miss is the world already
        }
        ipcache.insert(ipcache_key(prefix.ip(), prefix.prefix()), entry(id));
    }
    for m in &members {
        ipcache.insert(ipcache_key(m.address, 32), entry(m.identity));
    }
    ipcache.insert(ipcache_key(input.node_address, 32), entry(IDENTITY_HOST));

    let ctx = Context {
        input,
        members: &members,
        index: MemberIndex::new(&namespaces, &members),
        block_identities: &block_identities,
    };
    // Each policy's peers once, not once per endpoint it selects.
    let local: Vec<&Member> = members
        .iter()
        .filter(|m| m.pod.node == input.node)
        .collect();
    let resolved: Vec<ResolvedPolicy> = input
        .policies
        .iter()
        .filter(|p| local.iter().any(|ep| selects_endpoint(p, ep.pod)))
        .map(|policy| ResolvedPolicy {
            policy,
            malformed: malformed(policy),
            ingress: (policy.spec.ingress.iter())
                .map(|r| ctx.peers(policy, &r.from))
                .collect(),
            egress: (policy.spec.egress.iter())
                .map(|r| ctx.peers(policy, &r.to))
                .collect(),
        })
        .collect();
    // Each endpoint's entries apart, to fail closed one by one.
    let endpoints: Vec<Endpoint> = local
        .iter()
        .map(|ep| {
            let mut entries = BTreeMap::new();
            ctx.endpoint_entries(ep, &resolved, &mut entries);
            let malformed = resolved
                .iter()
                .filter(|r| selects_endpoint(r.policy, ep.pod))
                .find_map(|r| {
                    r.malformed.clone().map(|reason| FailClosed::Malformed {
                        policy: format!("{}/{}", r.policy.namespace(), r.policy.name()),
                        reason,
                    })
                });
            Endpoint {
                member: ep,
                entries,
                failed: malformed,
            }
        })
        .collect();
    let (ipcache, policy, failed_closed) = fit(ipcache, endpoints, capacity);
    for (address, why) in &failed_closed {
        let pod = members[by_address[address]].pod;
        problems.push(Problem::PolicyFailedClosed {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            address: *address,
            reason: why.to_string(),
        });
    }
    CompiledPolicy {
        ipcache,
        policy,
        identities,
        problems,
        failed_closed,
    }
}

/// One local endpoint's compiled entries, and why it already fails
/// closed, if it does.
struct Endpoint<'a> {
    member: &'a Member<'a>,
    entries: BTreeMap<PolicyKey, PolicyEntry>,
    failed: Option<FailClosed>,
}

/// The two maps as written, within `capacity`: endpoints that cannot be
/// programmed get deny-all (see the module doc).
#[allow(clippy::type_complexity)]
fn fit(
    mut ipcache: BTreeMap<IpcacheKey, IdentityEntry>,
    mut endpoints: Vec<Endpoint>,
    capacity: MapCapacity,
) -> (
    BTreeMap<IpcacheKey, IdentityEntry>,
    BTreeMap<PolicyKey, PolicyEntry>,
    BTreeMap<Ipv4Addr, FailClosed>,
) {
    // Endpoints no policy selects have no entries, and stay open.
    endpoints.retain(|ep| !ep.entries.is_empty() || ep.failed.is_some());
    if ipcache.len() > capacity.ipcache {
        let why = FailClosed::IpcacheFull {
            needed: ipcache.len(),
            capacity: capacity.ipcache,
        };
        for ep in endpoints.iter_mut().filter(|ep| ep.failed.is_none()) {
            ep.failed = Some(why.clone());
        }
        // Nothing consults identities once every isolated endpoint
        // denies all.
        ipcache.clear();
    }
    // In namespace/name order (`members` is sorted so), each endpoint
    // keeps its entries if the rest still get their two markers.
    let mut policy = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let deny_all = |at: [u8; 4]| {
        [POLICY_INGRESS, POLICY_EGRESS].map(|d| (PolicyKey::isolation(at, d), PolicyEntry::DENY))
    };
    let count = endpoints.len();
    for (i, ep) in endpoints.into_iter().enumerate() {
        let reserved = DENY_ALL_ENTRIES * (count - i - 1);
        let free = capacity.policy.saturating_sub(policy.len() + reserved);
        let why = ep.failed.or_else(|| {
            (ep.entries.len() > free).then_some(FailClosed::PolicyMapFull {
                needed: ep.entries.len(),
                free,
                capacity: capacity.policy,
            })
        });
        match why {
            None => policy.extend(ep.entries),
            Some(why) => {
                policy.extend(deny_all(ep.member.address.octets()));
                failed.insert(ep.member.address, why);
            }
        }
    }
    (ipcache, policy, failed)
}

/// Entries of an endpoint that fails closed: a marker per direction.
const DENY_ALL_ENTRIES: usize = 2;

/// What makes a policy impossible to program as written: anything the
/// API server's validation refuses that the compiler would otherwise have
/// to skip (an ipBlock that does not parse, an unknown protocol, a port
/// outside 1-65535 or a range ending before it starts). IPv6 blocks are
/// well formed (they hold no IPv4 peer). `None`: well formed.
fn malformed(policy: &NetworkPolicy) -> Option<String> {
    for peer in peers_of(policy) {
        if let Some(block) = &peer.ip_block
            && block.parsed().is_none()
        {
            return Some(format!(
                "ipBlock {} except {:?} does not parse",
                block.cidr, block.except
            ));
        }
    }
    let ingress = policy.spec.ingress.iter().flat_map(|r| &r.ports);
    let egress = policy.spec.egress.iter().flat_map(|r| &r.ports);
    for port in ingress.chain(egress) {
        if let Some(Protocol::Unknown(name)) = &port.protocol {
            return Some(format!("unknown protocol {name:?}"));
        }
        if let Some(PortRef::Number(first)) = &port.port {
            let last = port.end_port.unwrap_or(*first);
            if !(1..=65535).contains(first) || !(1..=65535).contains(&last) || last < *first {
                return Some(format!("port {first} to {last} is not a range of 1-65535"));
            }
        }
    }
    None
}

/// Compiles `node`'s policy maps from the cluster's indexes: the seam
/// the agent's policy driver reads through.
pub fn compile_cluster(
    cluster: &crate::Cluster,
    node: &weft_model::NodeRecord,
    previous: Option<&Identities>,
) -> CompiledPolicy {
    let pods: Vec<PolicyPod> = cluster.endpoints().map(PolicyPod::from).collect();
    let namespaces: Vec<Namespace> = cluster.namespaces().cloned().collect();
    let policies: Vec<NetworkPolicy> = cluster.network_policies().cloned().collect();
    compile(&PolicyInput {
        node: &node.name,
        node_address: node.underlay_ip,
        namespaces: &namespaces,
        pods: &pods,
        policies: &policies,
        previous,
    })
}

/// A policy with every rule's peers resolved.
struct ResolvedPolicy<'a> {
    policy: &'a NetworkPolicy,
    /// Why it cannot be programmed: its endpoints fail closed.
    malformed: Option<String>,
    ingress: Vec<Peers<'a>>,
    egress: Vec<Peers<'a>>,
}

/// The policy applies to `pod`: its namespace, its pod selector.
fn selects_endpoint(policy: &NetworkPolicy, pod: &PolicyPod) -> bool {
    policy.namespace() == pod.namespace && policy.spec.pod_selector.matches(&pod.labels)
}

/// What rule compilation reads.
struct Context<'a> {
    input: &'a PolicyInput<'a>,
    members: &'a [Member<'a>],
    /// The members by namespace, label and address, for [`Context::peers`].
    index: MemberIndex<'a>,
    block_identities: &'a BTreeMap<Block, BTreeSet<u32>>,
}

impl Context<'_> {
    /// The entries of one local endpoint, both directions.
    fn endpoint_entries(
        &self,
        ep: &Member,
        policies: &[ResolvedPolicy],
        out: &mut BTreeMap<PolicyKey, PolicyEntry>,
    ) {
        let selecting = policies
            .iter()
            .filter(|r| selects_endpoint(r.policy, ep.pod));
        let at = ep.address.octets();
        for resolved in selecting {
            let policy = resolved.policy;
            let (ingress, egress) = policy.spec.policy_types();
            if ingress {
                out.insert(PolicyKey::isolation(at, POLICY_INGRESS), PolicyEntry::DENY);
                // The node's own traffic to its pods (kubelet probes).
                let host = PolicyKey::new(
                    POLICY_PREFIX_IDENTITY,
                    at,
                    POLICY_INGRESS,
                    IDENTITY_HOST,
                    0,
                    0,
                );
                out.insert(host, PolicyEntry::ALLOW);
                for (rule, peers) in policy.spec.ingress.iter().zip(&resolved.ingress) {
                    self.rule_entries(ep, POLICY_INGRESS, peers, &rule.ports, out);
                }
            }
            if egress {
                out.insert(PolicyKey::isolation(at, POLICY_EGRESS), PolicyEntry::DENY);
                for (rule, peers) in policy.spec.egress.iter().zip(&resolved.egress) {
                    self.rule_entries(ep, POLICY_EGRESS, peers, &rule.ports, out);
                }
            }
        }
    }

    /// The identities a rule's `from`/`to` list allows (empty: everyone).
    fn peers<'p>(&'p self, policy: &NetworkPolicy, list: &[Peer]) -> Peers<'p> {
        if list.is_empty() {
            return Peers::Any;
        }
        let mut out = BTreeMap::new();
        for peer in list {
            if let Some(block) = &peer.ip_block {
                let Some(block) = ipv4_block(block) else {
                    continue; // IPv6 (or unparsable): no IPv4 address is in it
                };
                for id in self.block_identities.get(&block).into_iter().flatten() {
                    out.insert(*id, None);
                }
                for i in self.index.in_block(&block) {
                    let m = &self.members[i];
                    out.insert(m.identity, Some(m.pod));
                }
                if block_contains(&block, self.input.node_address) {
                    out.insert(IDENTITY_HOST, None);
                }
                continue;
            }
            for i in self.index.selected(policy.namespace(), peer) {
                let m = &self.members[i];
                out.insert(m.identity, Some(m.pod));
            }
        }
        Peers::Some(out)
    }

    /// Allow entries for one rule at endpoint `ep`.
    fn rule_entries(
        &self,
        ep: &Member,
        direction: u8,
        peers: &Peers,
        ports: &[NetworkPolicyPort],
        out: &mut BTreeMap<PolicyKey, PolicyEntry>,
    ) {
        let at = ep.address.octets();
        let mut allow = |prefix_len, identity, protocol, port| {
            out.insert(
                PolicyKey::new(prefix_len, at, direction, identity, protocol, port),
                PolicyEntry::ALLOW,
            );
        };
        let identities: Vec<u32> = match peers {
            Peers::Any => vec![IDENTITY_ANY],
            Peers::Some(ids) => ids.keys().copied().collect(),
        };
        if ports.is_empty() {
            for &id in &identities {
                allow(POLICY_PREFIX_IDENTITY, id, 0, 0);
            }
            return;
        }
        for port in ports {
            let protocol = port.protocol.clone().unwrap_or_default();
            let Some(proto) = protocol.number() else {
                continue;
            };
            match &port.port {
                None => {
                    for &id in &identities {
                        allow(POLICY_PREFIX_PROTOCOL, id, proto, 0);
                    }
                }
                Some(PortRef::Number(first)) => {
                    let (Ok(first), Ok(last)) = (
                        u16::try_from(*first),
                        u16::try_from(port.end_port.unwrap_or(*first)),
                    ) else {
                        continue; // validation refuses these
                    };
                    for (start, len) in ports::port_prefixes(first, last) {
                        for &id in &identities {
                            allow(len, id, proto, start);
                        }
                    }
                }
                // Ingress: the name resolves on the endpoint itself.
                Some(PortRef::Name(name)) if direction == POLICY_INGRESS => {
                    for number in resolve_named_port(&ep.pod.ports, name, &protocol) {
                        for &id in &identities {
                            allow(POLICY_PREFIX_FULL, id, proto, number);
                        }
                    }
                }
                // Egress: on each destination pod; other peers have no names.
                Some(PortRef::Name(name)) => {
                    let destinations: Vec<(u32, &PolicyPod)> = match peers {
                        Peers::Any => self.members.iter().map(|m| (m.identity, m.pod)).collect(),
                        Peers::Some(ids) => ids
                            .iter()
                            .filter_map(|(id, pod)| Some((*id, (*pod)?)))
                            .collect(),
                    };
                    for (id, pod) in destinations {
                        for number in resolve_named_port(&pod.ports, name, &protocol) {
                            allow(POLICY_PREFIX_FULL, id, proto, number);
                        }
                    }
                }
            }
        }
    }
}

/// Every peer of a policy, both directions.
fn peers_of(policy: &NetworkPolicy) -> impl Iterator<Item = &Peer> {
    let ingress = policy.spec.ingress.iter().flat_map(|r| &r.from);
    let egress = policy.spec.egress.iter().flat_map(|r| &r.to);
    ingress.chain(egress)
}

/// An ipBlock as a canonical IPv4 [`Block`]; `None` for IPv6 (this
/// dataplane carries no IPv6, so such a block holds no peer).
fn ipv4_block(block: &weft_model::policy::IpBlock) -> Option<Block> {
    let (cidr, except) = block.parsed()?;
    let v4 = |n: IpNetwork| match n {
        IpNetwork::V4(n) => Some(n),
        IpNetwork::V6(_) => None,
    };
    let cidr = v4(cidr)?;
    let mut except: Vec<Ipv4Network> = except.into_iter().filter_map(v4).collect();
    except.sort();
    except.dedup();
    Some((cidr, except))
}

fn ipcache_key(address: Ipv4Addr, prefix_len: u8) -> IpcacheKey {
    IpcacheKey::new(address.octets(), u32::from(prefix_len))
}

fn entry(identity: u32) -> IdentityEntry {
    IdentityEntry { identity }
}
