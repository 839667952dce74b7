//! Weft's tc programs: the pod veths' guard and policy hooks
//! (`weft_pod_ingress`, `weft_pod_egress`) and the uplink's IP-in-IP
//! (`weft_uplink_egress`, `weft_uplink_ingress`). Each is a thin shell:
//! read the map entries the decision needs, call the decision in
//! `weft-common`, carry it out (the
//! only packet rewrites are IP-in-IP's `bpf_skb_adjust_room` and
//! `bpf_skb_store_bytes` of an outer header or of a redirected packet's
//! first bytes), count the outcome and turn it into a tc action.
//! The decisions themselves are unit-tested in userspace over byte-array
//! frames, and `weft-twin`'s hooks mirror these shells so that the
//! differential tests can hold the two to identical actions and bytes.
#![no_std]
#![no_main]

use aya_ebpf::bindings::{
    BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO,
    BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup,
};
use aya_ebpf::helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_peer};
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap};
use aya_ebpf::programs::TcContext;
use weft_common::conntrack::{CONNTRACK_MAX_ENTRIES, ConntrackEntry, FlowKey};
use weft_common::guard::pod_egress_verdict;
use weft_common::lookup::{ConntrackTable, Endpoints, Fib, Ipcache, NodeSet, PolicyLookup, RouteLookup};
use weft_common::maps::{
    ENDPOINT_COUNTERS_MAX_ENTRIES, ENDPOINTS_MAX_ENTRIES, EndpointCounterKey, EndpointInfo,
    EndpointKey, FoundAction, IDENTITY_WORLD, IPCACHE_MAX_ENTRIES, IdentityEntry,
    NODES_MAX_ENTRIES, NodeConfig, NodeEntry, NodeKey, POD_ROUTES_MAX_ENTRIES, POLICY_MAX_ENTRIES,
    POLICY_NOT_FOUND, PolicyEntry, PolicyKey, PolicyRevision, RemoteNode,
};
use weft_common::policy::{
    PolicyOutcome, endpoint_counter_key, enforce, enforce_leaving, may_skip_pod_egress,
};
use weft_common::packet::{PacketReader, ethernet};
use weft_common::redirect::{FibQuery, FibResult, direct_redirect};
use weft_common::uplink::{uplink_egress, uplink_ingress};
use weft_common::verdict::{COUNTER_COUNT, Counter, PassReason, UplinkVerdict, Verdict};

/// Host veth ifindex → the pod endpoint behind it. Pinned by name under the
/// node's pin directory so entries survive agent restarts.
#[map(name = "WEFT_ENDPOINTS")]
static WEFT_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// Packets per verdict, per CPU (no atomics needed), indexed by [`Counter`].
#[map(name = "WEFT_COUNTERS")]
static WEFT_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT as u32, 0);

/// Remote nodes' pod CIDRs → the node owning them (LPM trie; aya adds
/// `BPF_F_NO_PREALLOC`, which the kernel requires for this map type). The
/// key is aya's `lpm_trie::Key<[u8; 4]>`, laid out as
/// `weft_common::maps::PodCidrKey`.
#[map(name = "WEFT_POD_ROUTES")]
static WEFT_POD_ROUTES: LpmTrie<[u8; 4], RemoteNode> = LpmTrie::pinned(POD_ROUTES_MAX_ENTRIES, 0);

/// The cluster's nodes by underlay address: the only sources IP-in-IP is
/// accepted from.
#[map(name = "WEFT_NODES")]
static WEFT_NODES: HashMap<NodeKey, NodeEntry> = HashMap::pinned(NODES_MAX_ENTRIES, 0);

/// This node's configuration, one entry (index 0). Never written, it reads
/// as all zeroes: mode `none`, so the uplink programs pass everything.
#[map(name = "WEFT_CONFIG")]
static WEFT_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Address prefix → identity, for policy (LPM trie, key laid out as
/// `weft_common::maps::IpcacheKey`).
#[map(name = "WEFT_IPCACHE")]
static WEFT_IPCACHE: LpmTrie<[u8; 4], IdentityEntry> = LpmTrie::pinned(IPCACHE_MAX_ENTRIES, 0);

/// Endpoint · direction · identity · protocol · port prefixes → allow or
/// the isolation marker (LPM trie over `PolicyKey::data()`).
#[map(name = "WEFT_POLICY")]
static WEFT_POLICY: LpmTrie<[u8; 12], PolicyEntry> = LpmTrie::pinned(POLICY_MAX_ENTRIES, 0);

/// The connection tracker's entries, one per flow of this node (LRU: a
/// full map evicts, and an evicted flow is checked again, never trusted).
#[map(name = "WEFT_CONNTRACK")]
static WEFT_CONNTRACK: LruHashMap<FlowKey, ConntrackEntry> =
    LruHashMap::pinned(CONNTRACK_MAX_ENTRIES, 0);

/// The node's policy revision, one entry (index 0); 0 until written.
#[map(name = "WEFT_POLICY_REV")]
static WEFT_POLICY_REV: Array<PolicyRevision> = Array::pinned(1, 0);

/// Packets policy allowed and denied per local endpoint and direction,
/// per CPU (see `weft_common::maps::ENDPOINT_COUNTERS_MAP`).
#[map(name = "WEFT_EP_COUNTS")]
static WEFT_EP_COUNTS: PerCpuHashMap<EndpointCounterKey, u64> =
    PerCpuHashMap::pinned(ENDPOINT_COUNTERS_MAX_ENTRIES, 0);

/// Reads the frame with `bpf_skb_load_bytes`: copies into the stack, works on
/// non-linear skbs, and needs no packet-pointer bounds proofs.
struct SkbReader<'a>(&'a TcContext);

impl PacketReader for SkbReader<'_> {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// [`RouteLookup`] over [`WEFT_POD_ROUTES`]: the kernel's trie does the
/// longest-prefix match on a /32 key.
struct PodRoutes;

impl RouteLookup for PodRoutes {
    #[inline(always)]
    fn remote_node_for(&self, dst: [u8; 4]) -> Option<RemoteNode> {
        WEFT_POD_ROUTES.get(Key::new(32, dst)).copied()
    }
}

/// [`NodeSet`] over [`WEFT_NODES`]: presence is membership.
struct Nodes;

impl NodeSet for Nodes {
    #[inline(always)]
    fn is_node(&self, addr: [u8; 4]) -> bool {
        // SAFETY: only the presence of the entry is used, never its value.
        unsafe { WEFT_NODES.get(&addr) }.is_some()
    }
}

/// [`Endpoints`] over [`WEFT_ENDPOINTS`].
struct PodEndpoints;

impl Endpoints for PodEndpoints {
    #[inline(always)]
    fn endpoint(&self, ifindex: EndpointKey) -> Option<EndpointInfo> {
        // SAFETY: copied out at once (see `weft_pod_ingress`).
        unsafe { WEFT_ENDPOINTS.get(&ifindex) }.copied()
    }
}

/// [`Ipcache`] over [`WEFT_IPCACHE`]: a /32 lookup, the trie finds the
/// longest prefix.
struct IpcacheMap;

impl Ipcache for IpcacheMap {
    #[inline(always)]
    fn identity_of(&self, addr: [u8; 4]) -> u32 {
        match WEFT_IPCACHE.get(Key::new(32, addr)) {
            Some(entry) => entry.identity,
            None => IDENTITY_WORLD,
        }
    }
}

/// [`PolicyLookup`] over [`WEFT_POLICY`].
struct PolicyMap;

impl PolicyLookup for PolicyMap {
    #[inline(always)]
    fn policy_action(&self, key: &PolicyKey) -> FoundAction {
        match WEFT_POLICY.get(Key::new(key.prefix_len, key.data())) {
            Some(entry) => 0x100 | entry.action as u16,
            None => POLICY_NOT_FOUND,
        }
    }
}

/// [`ConntrackTable`] over [`WEFT_CONNTRACK`]. A failed write (the map
/// cannot fail one but for memory) leaves the flow untracked: its next
/// packet is checked again.
struct ConntrackMap;

impl ConntrackTable for ConntrackMap {
    #[inline(always)]
    fn entry(&self, key: &FlowKey) -> Option<ConntrackEntry> {
        // SAFETY: copied out at once; a concurrent update of the same
        // flow on another CPU can at worst be read half-written, which the
        // tracker reads as some state of that flow.
        match unsafe { WEFT_CONNTRACK.get(key) } {
            Some(entry) => Some(*entry),
            // All bits defined (asserted below to be `None`): a `None`
            // built the usual way leaves its payload undefined, and LLVM
            // may carry that in a register the verifier refuses to read.
            // SAFETY: an all-zero `Option<ConntrackEntry>` is valid.
            None => unsafe { core::mem::zeroed() },
        }
    }

    #[inline(always)]
    fn write(&mut self, key: &FlowKey, entry: &ConntrackEntry) {
        let _ = WEFT_CONNTRACK.insert(key, entry, 0);
    }

    #[inline(always)]
    fn remove(&mut self, key: &FlowKey) {
        let _ = WEFT_CONNTRACK.remove(key);
    }
}

// ConntrackEntry has only integer fields, so its `Option` is tagged and
// all zeroes is `None`.
// SAFETY: integers and a tag; every bit pattern of the payload is valid.
const _: () = assert!(unsafe { core::mem::zeroed::<Option<ConntrackEntry>>() }.is_none());

/// Runs the policy decision on the packet in `ctx` and counts it; the tc
/// action.
#[inline(always)]
fn enforce_policy(ctx: &TcContext) -> i32 {
    let revision = WEFT_POLICY_REV.get(0).copied().unwrap_or(0);
    // SAFETY: a plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let outcome = enforce(
        &SkbReader(ctx),
        &IpcacheMap,
        &PolicyMap,
        &mut ConntrackMap,
        now,
        revision,
        &node_config(),
    );
    count_policy(&outcome)
}

/// Counts a policy outcome; its tc action.
#[inline(always)]
fn count_policy(outcome: &PolicyOutcome) -> i32 {
    count(outcome.conntrack);
    if let Some(counter) = outcome.egress {
        count(counter);
        count_endpoint(&endpoint_counter_key(outcome.endpoints[0], counter));
    }
    if let Some(counter) = outcome.ingress {
        count(counter);
        count_endpoint(&endpoint_counter_key(outcome.endpoints[1], counter));
    }
    if outcome.pass { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// `AF_INET`, the family of a `bpf_fib_lookup` query.
const AF_INET: u8 = 2;

/// [`Fib`] by `bpf_fib_lookup` from the interface the packet arrived on:
/// the node's own route and neighbour tables, `ip rule`s included (flags
/// 0, as the stack's own input route lookup), with forwarding required on
/// that interface. `tot_len` stays 0, so the kernel checks the whole skb
/// against the output device's MTU (a GSO packet by its segments) and
/// answers "too big" otherwise.
struct KernelFib<'a>(&'a TcContext);

impl Fib for KernelFib<'_> {
    #[inline(always)]
    fn lookup(&self, query: &FibQuery) -> FibResult {
        // SAFETY: an all-zero `struct bpf_fib_lookup` is a valid query.
        let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = query.protocol;
        // SAFETY: the kernel hands tc programs a valid __sk_buff.
        params.ifindex = unsafe { (*self.0.skb.skb).ifindex };
        params.__bindgen_anon_2.tos = query.tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(query.src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(query.dst);
        // SAFETY: the context is the program's skb, `params` a live struct
        // of the size given.
        let rc = unsafe {
            fib_lookup(
                self.0.skb.skb.cast(),
                &mut params,
                size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
            FibResult::Forward {
                ifindex: params.ifindex,
                smac: params.smac,
                dmac: params.dmac,
            }
        } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
            FibResult::NoNeighbour {
                ifindex: params.ifindex,
            }
        } else {
            FibResult::NotForwarded
        }
    }
}

/// Attached at tc ingress of a pod's host-side veth: sees what the pod sends.
#[classifier]
pub fn weft_pod_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex: EndpointKey = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once; userspace replaces entries
    // whole, so the worst case is reading an entry just being replaced.
    let endpoint = unsafe { WEFT_ENDPOINTS.get(&ifindex) }.copied();
    let verdict = pod_egress_verdict(&SkbReader(&ctx), endpoint.as_ref());
    count(verdict.counter());
    match verdict {
        // The pod's own IPv4: its egress policy (and a local receiver's
        // ingress policy), see `weft_common::policy`.
        Verdict::Pass(PassReason::OwnSource) => enforce_policy(&ctx),
        Verdict::Pass(_) => TC_ACT_OK,
        Verdict::Drop(_) => TC_ACT_SHOT,
    }
}

/// Attached at tc egress of a pod's host-side veth: sees what the node
/// sends to the pod, after routing and kube-proxy's DNAT, and checks the
/// pod's ingress policy there.
#[classifier]
pub fn weft_pod_egress(ctx: TcContext) -> i32 {
    enforce_policy(&ctx)
}

/// Attached at tc egress of the node's uplink: encapsulates pod traffic
/// bound for another node's pod CIDR in IP-in-IP.
#[classifier]
pub fn weft_uplink_egress(ctx: TcContext) -> i32 {
    let config = node_config();
    // The node's way out: the egress policy a pod veth deferred for a
    // Service address, now judged against the backend (see
    // `weft_common::policy`, "Services").
    if leaving_denied(&ctx, &config) {
        return TC_ACT_SHOT;
    }
    // A GSO packet is segmented after tc, and each segment gets the outer
    // header (`SKB_GSO_IPXIP4`): its length here is that of all segments
    // together, so only the kernel can check it (against `gso_size`). The
    // pod MTU (uplink MTU - 20) is what keeps those segments within the
    // uplink's MTU. A non-zero `gso_size` is the kernel's `skb_is_gso()`
    // (`gso_segs` may still be 0 there, before the stack counts them).
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let mtu = if gso_size != 0 {
        u16::MAX
    } else {
        config.egress_mtu()
    };
    let verdict = uplink_egress(&SkbReader(&ctx), &PodRoutes, &config, mtu);
    carry_out(&ctx, verdict, &config)
}

/// Attached at tc egress of the vxlan device (mode `vxlan`): the node's
/// way out to other nodes there, where the uplink sees only the outer
/// packets; the same deferred egress check as `weft_uplink_egress`.
#[classifier]
pub fn weft_tunnel_egress(ctx: TcContext) -> i32 {
    if leaving_denied(&ctx, &node_config()) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

/// Runs `enforce_leaving` on the packet in `ctx` and counts it: whether
/// it must be dropped.
#[inline(always)]
fn leaving_denied(ctx: &TcContext, config: &NodeConfig) -> bool {
    let revision = WEFT_POLICY_REV.get(0).copied().unwrap_or(0);
    // SAFETY: a plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    match enforce_leaving(
        &SkbReader(ctx),
        &IpcacheMap,
        &PolicyMap,
        &mut ConntrackMap,
        now,
        revision,
        config,
    ) {
        Some(outcome) => count_policy(&outcome) == TC_ACT_SHOT,
        None => false,
    }
}

/// Attached at tc ingress of the node's uplink: decapsulates IP-in-IP from
/// the cluster's nodes (and, with the config's direct redirect on, hands
/// what is for a local pod straight to it), drops IP-in-IP from anyone
/// else.
#[classifier]
pub fn weft_uplink_ingress(ctx: TcContext) -> i32 {
    let config = node_config();
    let verdict = uplink_ingress(&SkbReader(&ctx), &Nodes, &config);
    carry_out(&ctx, verdict, &config)
}

/// This node's config; all zeroes (mode `none`) if the lookup fails, which
/// it cannot for index 0 of a one-entry array.
#[inline(always)]
fn node_config() -> NodeConfig {
    WEFT_CONFIG.get(0).copied().unwrap_or_default()
}

/// Bytes the outer header takes: the verdict's header is always 20 bytes.
const OUTER_HEADER_LEN: i32 = 20;

/// Does what an uplink verdict says, counts what was done, and returns the
/// tc action. A helper that fails leaves a packet the shell cannot vouch
/// for: it is dropped and counted as malformed, as `weft-twin` does when
/// it cannot rewrite a frame. A decapsulated packet goes on to
/// [`hand_to_pod`], and to the stack if that declines.
#[inline(always)]
fn carry_out(ctx: &TcContext, verdict: UplinkVerdict, config: &NodeConfig) -> i32 {
    let (action, counter) = match verdict {
        UplinkVerdict::Pass(_) => (TC_ACT_OK, verdict.counter()),
        UplinkVerdict::TooBig { .. } | UplinkVerdict::Drop(_) => (TC_ACT_SHOT, verdict.counter()),
        UplinkVerdict::Encapsulate { header, .. } => match encapsulate(ctx, &header) {
            Ok(()) => (TC_ACT_OK, verdict.counter()),
            Err(_) => (TC_ACT_SHOT, Counter::DropMalformed),
        },
        UplinkVerdict::Decapsulate {
            outer_header_len, ..
        } => match decapsulate(ctx, outer_header_len) {
            Ok(()) => match hand_to_pod(ctx, config) {
                Some(action) if action == TC_ACT_REDIRECT as i32 => (action, Counter::Redirect),
                // `bpf_redirect_peer` refuses only flags, and passes none.
                Some(_) => (TC_ACT_SHOT, Counter::DropMalformed),
                None => (TC_ACT_OK, verdict.counter()),
            },
            Err(_) => (TC_ACT_SHOT, Counter::DropMalformed),
        },
    };
    count(counter);
    action
}

/// The direct path for a packet just decapsulated (see
/// `weft_common::redirect`): when the decision redirects, its first bytes
/// are rewritten in one store (the MACs from the FIB, TTL and checksum)
/// and the packet is redirected into the pod veth's peer; the helper's
/// action is returned. `None`: the stack takes the packet as it is (the
/// decision declined, the pod's ingress is isolated by policy and must be
/// checked at its veth's egress, or the store failed and changed nothing).
#[inline(always)]
fn hand_to_pod(ctx: &TcContext, config: &NodeConfig) -> Option<i32> {
    let redirect = direct_redirect(&SkbReader(ctx), config, &KernelFib(ctx), &PodEndpoints).ok()?;
    if !may_skip_pod_egress(&SkbReader(ctx), &PolicyMap) {
        return None;
    }
    ctx.store(0, &redirect.head, 0).ok()?;
    // SAFETY: a plain helper call; flags 0.
    Some(unsafe { bpf_redirect_peer(redirect.ifindex, 0) } as i32)
}

/// Inserts `header` between the Ethernet header and the IPv4 packet.
///
/// `BPF_ADJ_ROOM_MAC` opens the room right after the MAC header;
/// `ENCAP_L3_IPV4` marks the skb as encapsulated (inner header offsets,
/// `SKB_GSO_IPXIP4`), so a GSO packet is segmented with an outer header on
/// every segment and checksum offload still finds the inner L4 header.
/// `FIXED_GSO` keeps `gso_size`: without it the kernel would shrink the
/// MSS by 20 to keep the segments' size, but the pod MTU (uplink MTU - 20)
/// already leaves the room, so each segment plus its outer header fits the
/// uplink as it is, and the kernel need not linearize frag_list skbs.
#[inline(always)]
fn encapsulate(ctx: &TcContext, header: &[u8; 20]) -> Result<(), i64> {
    let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO);
    ctx.adjust_room(OUTER_HEADER_LEN, BPF_ADJ_ROOM_MAC, flags)?;
    ctx.store(ethernet::HEADER_LEN, header, 0)
}

/// Removes the `outer_header_len` bytes of the outer IPv4 header after the
/// Ethernet header.
///
/// `DECAP_L3_IPV4` says an IPv4 header follows (the kernel checks at least
/// 20 bytes remain, and keeps `skb->protocol` IPv4); `FIXED_GSO` keeps the
/// `gso_size` of a GRO-merged packet: its segments were cut to fit the
/// pod MTU and must stay so (without it the kernel would grow the MSS by
/// the 20 bytes removed, and the forwarding path towards the pod, whose MTU
/// is 20 smaller, would refuse the packet).
#[inline(always)]
fn decapsulate(ctx: &TcContext, outer_header_len: u8) -> Result<(), i64> {
    let flags = u64::from(BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO);
    ctx.adjust_room(-i32::from(outer_header_len), BPF_ADJ_ROOM_MAC, flags)
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = WEFT_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, and tc programs do not preempt each other on a CPU.
        unsafe { *slot += 1 };
    }
}

/// Bumps an endpoint's policy counter: in place when this CPU's slot
/// exists, else by inserting 1. An insert from a program sets only this
/// CPU's slot of a per-CPU hash (the others start at zero, or keep what
/// a concurrent insert on another CPU wrote), so nothing is lost. A full
/// map (more endpoints than it holds) counts nothing.
#[inline(always)]
fn count_endpoint(key: &EndpointCounterKey) {
    match WEFT_EP_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot; tc programs do not preempt each other on a CPU.
        Some(slot) => unsafe { *slot += 1 },
        None => {
            // A local, not `&1`: a promoted constant would live in
            // `.rodata` (see `PolicyOutcome::endpoints`).
            let one: u64 = 1;
            let _ = WEFT_EP_COUNTS.insert(key, &one, 0);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The decisions are written not to panic; the verifier rejects a program
    // whose panic path is reachable, because this loop has no exit.
    loop {}
}
