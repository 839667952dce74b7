//! NetworkPolicy enforcement for one packet at one pod veth hook: the
//! transport header, the connection tracker and the policy maps together.
//!
//! # Hooks
//!
//! Both policy hooks run [`enforce`]: `weft_pod_ingress` (tc ingress of a
//! pod's host veth, after the anti-spoofing guard: what the pod sends) and
//! `weft_pod_egress` (tc egress of the host veth: what the node sends to
//! the pod, after its routing and kube-proxy's DNAT, so the destination is
//! the backend pod and its port).
//!
//! A packet with no live connection entry (or the first one after a
//! policy change) is asked against the whole policy this node holds for
//! it, as [`crate::conntrack`] requires of an entry shared by every hook of
//! the node: the egress policy of its source endpoint and the ingress
//! policy of its destination endpoint, both must allow. Which of them are
//! local needs no map of its own: the agent writes policy entries only for
//! its own node's endpoints, so an endpoint without entries here is either
//! remote or not isolated, and [`policy_decision`] answers "not isolated"
//! for both (see [`crate::maps::policy_decision`]). So:
//!
//! - pod to pod across nodes: the sender's egress is checked at the
//!   sender's veth ingress on its node, the receiver's ingress at the
//!   receiver's veth egress on its node; each node tracks the connection
//!   in its own map;
//! - pod to pod on one node: both at the sender's veth ingress, the first
//!   hook the packet meets; the entry it writes lets the packet (and the
//!   replies) through the other veth without asking again;
//! - a packet the uplink decapsulates and redirects straight into a pod
//!   skips the pod veth's egress: only pods that no policy isolates for
//!   ingress get that shortcut ([`may_skip_pod_egress`]);
//! - a connection allowed at a revision passes every later packet, either
//!   way, with one conntrack lookup until the revision changes.
//!
//! # Services (kube-proxy's DNAT)
//!
//! kube-proxy (iptables mode) rewrites a Service address to a backend pod
//! in the node's PREROUTING, which runs *after* tc ingress of the client's
//! veth: there the destination is still the ClusterIP, and judging the
//! sender's egress policy against it would judge the wrong peer (a policy
//! allowing `app=backend` would drop the Service connection, and named
//! ports could not resolve). So a packet to an address in the node's
//! Service range ([`NodeConfig::is_service`], the agent's
//! `--service-cluster-ip-range`) has its sender's egress *deferred* at
//! the pod veth: [`ask`] does not judge it there. The entry the tracker
//! writes for the client · ClusterIP tuple then only carries the replies,
//! which netfilter has turned back into ClusterIP → client before the
//! client's veth egress sees them, so an ingress-isolated client gets
//! them. The deferred check happens where the packet next meets a Weft
//! hook, after the DNAT, with the backend as destination:
//!
//! - a backend on this node: tc egress of its veth ([`enforce`] asks the
//!   client's egress and the backend's ingress, both local);
//! - a backend on another node: the node's way out ([`enforce_leaving`]
//!   at tc egress of the uplink for native routing and IP-in-IP, of the
//!   vxlan device for VXLAN), for a source that a policy isolates for
//!   egress; a packet still addressed to a Service there (no DNAT
//!   happened) is judged against that address, untracked, so the
//!   client · ClusterIP entry can never carry it out.
//!
//! Not covered: a backend calling its own Service (hairpin): kube-proxy
//! masquerades it to a node address, so its egress is never judged.
//!
//! Per packet: one conntrack lookup, and when policy is asked, two ipcache
//! lookups and at most four policy lookups, whatever the number of rules,
//! and one per-endpoint counter update per direction that isolates
//! ([`PolicyOutcome::endpoint_counters`]).
//! With empty policy maps nothing is isolated, and every packet passes
//! but those the tracker refuses on its own (TCP flags no stack sends).

use crate::conntrack::{
    CheckReason, ConntrackDrop, ConntrackVerdict, EntryUpdate, FlowPacket, PolicyQuery,
    TrackedPass, track,
};
use crate::ipv4::Ipv4Header;
use crate::l4::Transport;
use crate::lookup::{ConntrackTable, Ipcache, PolicyLookup};
use crate::maps::{
    EndpointCounterKey, NodeConfig, POLICY_EGRESS, POLICY_INGRESS, POLICY_NOT_FOUND,
    PolicyDecision, PolicyKey, policy_decision_found,
};
use crate::packet::{PacketReader, ethernet};
use crate::verdict::Counter;

/// What [`enforce`] decided for one packet, and the counters it bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub pass: bool,
    /// The tracker's counter (`conntrack_*`), or [`Counter::PolicyNotIpv4`].
    pub conntrack: Counter,
    /// `policy_egress_*` when the source endpoint's egress was asked and
    /// isolates it.
    pub egress: Option<Counter>,
    /// `policy_ingress_*` when the destination endpoint's ingress was
    /// asked and isolates it.
    pub ingress: Option<Counter>,
    /// The endpoints policy judged: the source (whose egress it asked)
    /// and the destination (whose ingress it asked); zeroes when policy
    /// was not asked. Plain addresses, so the eBPF shell builds each
    /// per-endpoint counter key ([`endpoint_counter_key`]) from runtime
    /// values only, with no constant key the compiler could place in
    /// `.rodata` (which aya would load as a map of its own, new at every
    /// load, so a restarted agent could not adopt its programs).
    pub endpoints: [[u8; 4]; 2],
}

impl PolicyOutcome {
    /// Every counter the hook bumps, in a fixed order.
    #[inline(always)]
    pub const fn counters(&self) -> [Option<Counter>; 3] {
        [Some(self.conntrack), self.egress, self.ingress]
    }

    /// The per-endpoint counters the hook bumps (the
    /// `WEFT_EP_COUNTS` map): one per direction policy decided for an
    /// endpoint it isolates, egress first.
    pub fn endpoint_counters(&self) -> impl Iterator<Item = EndpointCounterKey> + '_ {
        [self.egress, self.ingress]
            .into_iter()
            .zip(self.endpoints)
            .filter_map(|(counter, endpoint)| Some(endpoint_counter_key(endpoint, counter?)))
    }

    #[inline(always)]
    const fn unasked(pass: bool, conntrack: Counter) -> PolicyOutcome {
        PolicyOutcome {
            pass,
            conntrack,
            egress: None,
            ingress: None,
            endpoints: [[0; 4]; 2],
        }
    }

    #[inline(always)]
    const fn answered(pass: bool, conntrack: Counter, answer: &PolicyAnswer) -> PolicyOutcome {
        PolicyOutcome {
            pass,
            conntrack,
            egress: answer.egress,
            ingress: answer.ingress,
            endpoints: answer.endpoints,
        }
    }
}

/// Policy's answer to one [`PolicyQuery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyAnswer {
    pub allowed: bool,
    pub egress: Option<Counter>,
    pub ingress: Option<Counter>,
    /// As [`PolicyOutcome::endpoints`].
    pub endpoints: [[u8; 4]; 2],
}

impl PolicyAnswer {
    /// What a packet policy was not asked about carries: allowed, nothing
    /// counted. A value rather than an `Option<PolicyAnswer>`, whose
    /// `None` would leave the payload undefined for LLVM to carry in a
    /// register the eBPF verifier refuses to read.
    const UNASKED: PolicyAnswer = PolicyAnswer {
        allowed: true,
        egress: None,
        ingress: None,
        endpoints: [[0; 4]; 2],
    };
}

/// Asks the policy maps whether `query` is allowed: the source endpoint's
/// egress towards the destination's identity and the destination
/// endpoint's ingress from the source's identity. A port-less query looks
/// port 0 up, which only rules for every port of the protocol cover. A
/// destination in `config`'s Service range defers the egress question
/// (see "Services" above): pass [`NodeConfig::default`] to judge it here.
#[inline(always)]
pub fn ask<I, P>(query: &PolicyQuery, ipcache: &I, policy: &P, config: &NodeConfig) -> PolicyAnswer
where
    I: Ipcache + ?Sized,
    P: PolicyLookup + ?Sized,
{
    let port = query.dst_port.unwrap_or_default();
    let lookup = |key: &_| policy.policy_action(key);
    let egress = if config.is_service(query.dst) {
        PolicyDecision::NotIsolated
    } else {
        policy_decision_found(
            lookup,
            query.src,
            POLICY_EGRESS,
            ipcache.identity_of(query.dst),
            query.protocol,
            port,
        )
    };
    let ingress = policy_decision_found(
        lookup,
        query.dst,
        POLICY_INGRESS,
        ipcache.identity_of(query.src),
        query.protocol,
        port,
    );
    PolicyAnswer {
        allowed: !matches!(egress, PolicyDecision::Denied)
            && !matches!(ingress, PolicyDecision::Denied),
        egress: decision_counter(
            egress,
            Counter::PolicyEgressAllowed,
            Counter::PolicyEgressDenied,
        ),
        ingress: decision_counter(
            ingress,
            Counter::PolicyIngressAllowed,
            Counter::PolicyIngressDenied,
        ),
        endpoints: [judged(egress, query.src), judged(ingress, query.dst)],
    }
}

/// `endpoint` if policy decided for it, zeroes when it is not isolated
/// (outcomes then compare equal however they were reached).
#[inline(always)]
const fn judged(decision: PolicyDecision, endpoint: [u8; 4]) -> [u8; 4] {
    match decision {
        PolicyDecision::NotIsolated => [0; 4],
        _ => endpoint,
    }
}

/// The per-endpoint counter (`WEFT_EP_COUNTS`) that goes with a policy
/// counter (`policy_{egress,ingress}_{allowed,denied}`) of `endpoint`.
#[inline(always)]
pub const fn endpoint_counter_key(endpoint: [u8; 4], counter: Counter) -> EndpointCounterKey {
    let direction = match counter {
        Counter::PolicyEgressAllowed | Counter::PolicyEgressDenied => POLICY_EGRESS,
        _ => POLICY_INGRESS,
    };
    let allowed = matches!(
        counter,
        Counter::PolicyEgressAllowed | Counter::PolicyIngressAllowed
    );
    EndpointCounterKey::new(endpoint, direction, allowed)
}

#[inline(always)]
const fn decision_counter(
    decision: PolicyDecision,
    allowed: Counter,
    denied: Counter,
) -> Option<Counter> {
    match decision {
        PolicyDecision::NotIsolated => None,
        PolicyDecision::Allowed => Some(allowed),
        PolicyDecision::Denied => Some(denied),
    }
}

/// The policy decision for `frame` (Ethernet) at a pod veth hook, at
/// `now_ns` (`bpf_ktime_get_ns`) under the node's policy `revision`
/// (read before any policy lookup), on the node whose config is `config`
/// (its Service range); applies the tracker's update to `conntrack`.
#[inline(always)]
pub fn enforce<R, I, P, C>(
    frame: &R,
    ipcache: &I,
    policy: &P,
    conntrack: &mut C,
    now_ns: u64,
    revision: u32,
    config: &NodeConfig,
) -> PolicyOutcome
where
    R: PacketReader + ?Sized,
    I: Ipcache + ?Sized,
    P: PolicyLookup + ?Sized,
    C: ConntrackTable + ?Sized,
{
    if crate::packet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
        return PolicyOutcome::unasked(true, Counter::PolicyNotIpv4);
    }
    let Ok(ip) = Ipv4Header::new_checked(frame, ethernet::HEADER_LEN) else {
        return unreadable(frame, ipcache, policy, config);
    };
    let Ok(transport) = Transport::read(frame, &ip) else {
        return unreadable(frame, ipcache, policy, config);
    };
    let packet = FlowPacket {
        src: ip.src(),
        dst: ip.dst(),
        transport,
    };
    let flow = packet.flow();
    let existing = match flow {
        Some(flow) => conntrack.entry(&flow.key),
        None => None,
    };
    let tracked = track(&packet, existing.as_ref(), now_ns, revision);
    let (counter, answer) = match tracked.verdict {
        ConntrackVerdict::Pass(TrackedPass::Original | TrackedPass::Reply) => {
            (Counter::ConntrackEstablished, PolicyAnswer::UNASKED)
        }
        ConntrackVerdict::Pass(TrackedPass::Related) => {
            (Counter::ConntrackRelated, PolicyAnswer::UNASKED)
        }
        ConntrackVerdict::Drop(ConntrackDrop::InvalidTcpFlags) => {
            (Counter::ConntrackInvalid, PolicyAnswer::UNASKED)
        }
        ConntrackVerdict::Drop(ConntrackDrop::DeniedConnection) => {
            (Counter::ConntrackDenied, PolicyAnswer::UNASKED)
        }
        ConntrackVerdict::CheckPolicy(check) => {
            let counter = match check.reason {
                CheckReason::New => Counter::ConntrackNew,
                CheckReason::Recheck => Counter::ConntrackEstablished,
                CheckReason::Untracked => Counter::ConntrackUntracked,
            };
            (counter, ask(&check.query, ipcache, policy, config))
        }
    };
    let (pass, update) = tracked.after_policy(answer.allowed);
    if let Some(flow) = flow {
        match update {
            EntryUpdate::Keep => {}
            EntryUpdate::Write(entry) => conntrack.write(&flow.key, &entry),
            EntryUpdate::Delete => conntrack.remove(&flow.key),
        }
    }
    PolicyOutcome::answered(pass, counter, &answer)
}

/// The deferred egress check of a packet leaving the node towards another
/// node (tc egress of the uplink, or of the vxlan device; Ethernet, then
/// IPv4, before any encapsulation): `None` when policy has nothing to say
/// (not IPv4, or a source no policy isolates for egress: one policy
/// lookup), else [`enforce`]'s outcome with nothing deferred. A flow the
/// sender's veth already judged (pod to pod) finds its entry and passes
/// with no policy lookup; a Service flow, now DNATed to a remote backend,
/// is new here and judged against the backend. A packet still addressed to
/// a Service is judged against that address without the tracker, so that
/// the entry its veth wrote without asking cannot let it out.
#[inline(always)]
pub fn enforce_leaving<R, I, P, C>(
    frame: &R,
    ipcache: &I,
    policy: &P,
    conntrack: &mut C,
    now_ns: u64,
    revision: u32,
    config: &NodeConfig,
) -> Option<PolicyOutcome>
where
    R: PacketReader + ?Sized,
    I: Ipcache + ?Sized,
    P: PolicyLookup + ?Sized,
    C: ConntrackTable + ?Sized,
{
    if crate::packet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
        return None;
    }
    let src = frame.read::<4>(IPV4_SOURCE_OFFSET)?;
    let isolated = PolicyKey::lookup(src, POLICY_EGRESS, 0, 0, 0);
    if policy.policy_action(&isolated) == POLICY_NOT_FOUND {
        return None;
    }
    let dst = frame.read::<4>(IPV4_DESTINATION_OFFSET)?;
    let mut table = Tracker {
        table: conntrack,
        tracked: !config.is_service(dst),
    };
    // Nothing deferred here: this is where the deferred check happens.
    Some(enforce(
        frame,
        ipcache,
        policy,
        &mut table,
        now_ns,
        revision,
        &NodeConfig::default(),
    ))
}

/// `table`, or (not `tracked`) a tracker that knows no flow and keeps
/// none, so that every packet is judged by policy on its own. One type
/// for both, so that [`enforce`] is inlined once into the eBPF program.
struct Tracker<'a, C: ?Sized> {
    table: &'a mut C,
    tracked: bool,
}

impl<C: ConntrackTable + ?Sized> ConntrackTable for Tracker<'_, C> {
    #[inline(always)]
    fn entry(&self, key: &crate::conntrack::FlowKey) -> Option<crate::conntrack::ConntrackEntry> {
        if self.tracked {
            self.table.entry(key)
        } else {
            None
        }
    }
    #[inline(always)]
    fn write(&mut self, key: &crate::conntrack::FlowKey, entry: &crate::conntrack::ConntrackEntry) {
        if self.tracked {
            self.table.write(key, entry);
        }
    }
    #[inline(always)]
    fn remove(&mut self, key: &crate::conntrack::FlowKey) {
        if self.tracked {
            self.table.remove(key);
        }
    }
}

/// Whether a packet the uplink has just decapsulated (Ethernet, then
/// IPv4) may be redirected straight into its pod (`bpf_redirect_peer`,
/// see [`crate::redirect`]): such a packet never passes the pod veth's tc
/// egress, where the pod's ingress policy is checked and where the tracker
/// records the connection, so only a pod that no policy isolates in either
/// direction takes the shortcut (an egress-isolated pod's replies need the
/// entry the request would have written). The others' packets go through
/// the stack and that hook. Two policy lookups: an isolated direction
/// always has its marker, which covers every key of it.
#[inline(always)]
pub fn may_skip_pod_egress<R, P>(frame: &R, policy: &P) -> bool
where
    R: PacketReader + ?Sized,
    P: PolicyLookup + ?Sized,
{
    let Some(dst) = frame.read::<4>(IPV4_DESTINATION_OFFSET) else {
        return false;
    };
    policy.policy_action(&PolicyKey::lookup(dst, POLICY_INGRESS, 0, 0, 0)) == POLICY_NOT_FOUND
        && policy.policy_action(&PolicyKey::lookup(dst, POLICY_EGRESS, 0, 0, 0)) == POLICY_NOT_FOUND
}

/// Where the offset of a field of the IPv4 header after Ethernet is.
const IPV4_PROTOCOL_OFFSET: usize = ethernet::HEADER_LEN + 9;
const IPV4_SOURCE_OFFSET: usize = ethernet::HEADER_LEN + 12;
const IPV4_DESTINATION_OFFSET: usize = ethernet::HEADER_LEN + 16;

/// An IPv4 packet whose headers the tracker cannot read (a total length
/// past the frame, a truncated transport header): nothing is tracked, and
/// policy judges its addresses and protocol without ports, so it passes
/// only where nothing isolates either end or the peer is allowed on every
/// port. Unreadable addresses are dropped.
#[inline(always)]
fn unreadable<R, I, P>(frame: &R, ipcache: &I, policy: &P, config: &NodeConfig) -> PolicyOutcome
where
    R: PacketReader + ?Sized,
    I: Ipcache + ?Sized,
    P: PolicyLookup + ?Sized,
{
    let (Some(src), Some(dst), Some([protocol])) = (
        frame.read::<4>(IPV4_SOURCE_OFFSET),
        frame.read::<4>(IPV4_DESTINATION_OFFSET),
        frame.read::<1>(IPV4_PROTOCOL_OFFSET),
    ) else {
        return PolicyOutcome::unasked(false, Counter::ConntrackInvalid);
    };
    let query = PolicyQuery {
        src,
        dst,
        protocol,
        dst_port: None,
    };
    let answer = ask(&query, ipcache, policy, config);
    PolicyOutcome::answered(answer.allowed, Counter::ConntrackInvalid, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ConntrackEntry, FlowKey};
    use crate::ipv4::PROTOCOL_TCP;
    use crate::l4::TcpFlags;
    use crate::maps::{
        IdentityEntry, IpcacheKey, POLICY_PREFIX_FULL, POLICY_PREFIX_IDENTITY, PolicyEntry,
    };

    const CLIENT: [u8; 4] = [10, 244, 1, 5];
    const SERVER: [u8; 4] = [10, 244, 2, 7];
    const CLIENT_ID: u32 = 300;
    const SERVER_ID: u32 = 301;

    /// A table of flows, as the twin keeps one.
    #[derive(Default)]
    struct Table(Vec<(FlowKey, ConntrackEntry)>);

    impl ConntrackTable for Table {
        fn entry(&self, key: &FlowKey) -> Option<ConntrackEntry> {
            self.0.iter().find(|(k, _)| k == key).map(|(_, e)| *e)
        }
        fn write(&mut self, key: &FlowKey, entry: &ConntrackEntry) {
            self.remove(key);
            self.0.push((*key, *entry));
        }
        fn remove(&mut self, key: &FlowKey) {
            self.0.retain(|(k, _)| k != key);
        }
    }

    /// Ethernet + IPv4 (no options, checksum unchecked here) + `l4`.
    fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        frame.extend_from_slice(&[0x45, 0, total.to_be_bytes()[0], total.to_be_bytes()[1]]);
        frame.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(l4);
        frame
    }

    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, flags: u8) -> Vec<u8> {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&sp.to_be_bytes());
        h[2..4].copy_from_slice(&dp.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        ipv4(src, dst, PROTOCOL_TCP, &h)
    }

    fn ipcache() -> [(IpcacheKey, IdentityEntry); 2] {
        [
            (
                IpcacheKey::host(CLIENT),
                IdentityEntry {
                    identity: CLIENT_ID,
                },
            ),
            (
                IpcacheKey::host(SERVER),
                IdentityEntry {
                    identity: SERVER_ID,
                },
            ),
        ]
    }

    /// The server isolated for ingress, TCP 80 allowed from the client.
    fn server_allows_web() -> [(PolicyKey, PolicyEntry); 2] {
        [
            (
                PolicyKey::isolation(SERVER, POLICY_INGRESS),
                PolicyEntry::DENY,
            ),
            (
                PolicyKey::new(
                    POLICY_PREFIX_FULL,
                    SERVER,
                    POLICY_INGRESS,
                    CLIENT_ID,
                    PROTOCOL_TCP,
                    80,
                ),
                PolicyEntry::ALLOW,
            ),
        ]
    }

    fn run(
        frame: &[u8],
        policy: &[(PolicyKey, PolicyEntry)],
        table: &mut Table,
        revision: u32,
    ) -> PolicyOutcome {
        enforce(
            frame,
            &ipcache()[..],
            policy,
            table,
            1_000,
            revision,
            &NodeConfig::default(),
        )
    }

    const SYN: u8 = TcpFlags::SYN;
    const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;

    #[test]
    fn empty_maps_isolate_nothing_and_track_the_connection() {
        let mut table = Table::default();
        let syn = run(&tcp(CLIENT, 4000, SERVER, 80, SYN), &[], &mut table, 0);
        assert_eq!(syn, PolicyOutcome::unasked(true, Counter::ConntrackNew));
        let reply = run(&tcp(SERVER, 80, CLIENT, 4000, SYN_ACK), &[], &mut table, 0);
        assert_eq!(
            reply,
            PolicyOutcome::unasked(true, Counter::ConntrackEstablished)
        );
        assert_eq!(table.0.len(), 1);
        let arp = [0u8; 12]
            .into_iter()
            .chain([0x08, 0x06])
            .chain([0; 28])
            .collect::<Vec<_>>();
        assert_eq!(
            run(&arp, &[], &mut table, 0),
            PolicyOutcome::unasked(true, Counter::PolicyNotIpv4)
        );
    }

    #[test]
    fn the_receivers_ingress_decides_and_replies_pass_without_a_rule() {
        let policy = server_allows_web();
        let mut table = Table::default();
        let denied = run(&tcp(CLIENT, 4000, SERVER, 81, SYN), &policy, &mut table, 1);
        assert!(!denied.pass);
        assert_eq!(denied.ingress, Some(Counter::PolicyIngressDenied));
        assert_eq!(denied.egress, None, "the client is not isolated");
        assert_eq!(
            denied.endpoint_counters().collect::<Vec<_>>(),
            [EndpointCounterKey::new(SERVER, POLICY_INGRESS, false)],
            "only the isolated end counts"
        );
        assert!(table.0.is_empty(), "a denied packet opens nothing");
        let allowed = run(&tcp(CLIENT, 4000, SERVER, 80, SYN), &policy, &mut table, 1);
        assert!(allowed.pass);
        assert_eq!(allowed.ingress, Some(Counter::PolicyIngressAllowed));
        assert_eq!(
            allowed.endpoint_counters().collect::<Vec<_>>(),
            [EndpointCounterKey::new(SERVER, POLICY_INGRESS, true)]
        );
        // The reply goes to the client's port 4000, which no rule names.
        let reply = run(
            &tcp(SERVER, 80, CLIENT, 4000, SYN_ACK),
            &policy,
            &mut table,
            1,
        );
        assert_eq!(
            reply,
            PolicyOutcome::unasked(true, Counter::ConntrackEstablished)
        );
        assert_eq!(reply.endpoint_counters().count(), 0, "no policy asked");
    }

    #[test]
    fn both_ends_must_allow() {
        let mut policy = server_allows_web().to_vec();
        // The client may send only to identity SERVER_ID on UDP.
        policy.push((
            PolicyKey::isolation(CLIENT, POLICY_EGRESS),
            PolicyEntry::DENY,
        ));
        policy.push((
            PolicyKey::new(
                POLICY_PREFIX_IDENTITY + 8,
                CLIENT,
                POLICY_EGRESS,
                SERVER_ID,
                17,
                0,
            ),
            PolicyEntry::ALLOW,
        ));
        let mut table = Table::default();
        let out = run(&tcp(CLIENT, 4000, SERVER, 80, SYN), &policy, &mut table, 1);
        assert!(!out.pass);
        assert_eq!(out.egress, Some(Counter::PolicyEgressDenied));
        assert_eq!(out.ingress, Some(Counter::PolicyIngressAllowed));
        // Each end counts its own direction's decision, egress first.
        assert_eq!(
            out.endpoint_counters().collect::<Vec<_>>(),
            [
                EndpointCounterKey::new(CLIENT, POLICY_EGRESS, false),
                EndpointCounterKey::new(SERVER, POLICY_INGRESS, true),
            ]
        );
    }

    #[test]
    fn a_revision_bump_cuts_a_connection_policy_no_longer_allows() {
        let policy = server_allows_web();
        let mut table = Table::default();
        for (frame, _) in [
            (tcp(CLIENT, 4000, SERVER, 80, SYN), ()),
            (tcp(SERVER, 80, CLIENT, 4000, SYN_ACK), ()),
            (tcp(CLIENT, 4000, SERVER, 80, ACK), ()),
        ] {
            assert!(run(&frame, &policy, &mut table, 1).pass);
        }
        // Same policy, new revision: checked again, allowed, no drop.
        let same = run(&tcp(SERVER, 80, CLIENT, 4000, ACK), &policy, &mut table, 2);
        assert!(same.pass);
        assert_eq!(same.ingress, Some(Counter::PolicyIngressAllowed));
        // The rule goes: the next packet, either way, is dropped, and so
        // is every later one without a lookup.
        let marker_only = &policy[..1];
        let cut = run(
            &tcp(SERVER, 80, CLIENT, 4000, ACK),
            marker_only,
            &mut table,
            3,
        );
        assert!(!cut.pass);
        assert_eq!(cut.conntrack, Counter::ConntrackEstablished);
        assert_eq!(cut.ingress, Some(Counter::PolicyIngressDenied));
        let after = run(
            &tcp(CLIENT, 4000, SERVER, 80, ACK),
            marker_only,
            &mut table,
            3,
        );
        assert_eq!(
            after,
            PolicyOutcome::unasked(false, Counter::ConntrackDenied)
        );
    }

    /// A ClusterIP inside the cluster's Service range.
    const SERVICE: [u8; 4] = [10, 96, 0, 10];

    fn with_services() -> NodeConfig {
        NodeConfig::default().with_service_range([10, 96, 0, 0], 12)
    }

    /// The client isolated both ways: egress only to the server's
    /// identity on TCP 80, ingress from nobody.
    fn client_egress_to_server_only() -> Vec<(PolicyKey, PolicyEntry)> {
        vec![
            (
                PolicyKey::isolation(CLIENT, POLICY_EGRESS),
                PolicyEntry::DENY,
            ),
            (
                PolicyKey::isolation(CLIENT, POLICY_INGRESS),
                PolicyEntry::DENY,
            ),
            (
                PolicyKey::new(
                    POLICY_PREFIX_FULL,
                    CLIENT,
                    POLICY_EGRESS,
                    SERVER_ID,
                    PROTOCOL_TCP,
                    80,
                ),
                PolicyEntry::ALLOW,
            ),
        ]
    }

    fn at_veth(
        frame: &[u8],
        policy: &[(PolicyKey, PolicyEntry)],
        table: &mut Table,
        config: &NodeConfig,
    ) -> PolicyOutcome {
        enforce(frame, &ipcache()[..], policy, table, 1_000, 1, config)
    }

    fn leaving(
        frame: &[u8],
        policy: &[(PolicyKey, PolicyEntry)],
        table: &mut Table,
    ) -> Option<PolicyOutcome> {
        enforce_leaving(
            frame,
            &ipcache()[..],
            policy,
            table,
            1_000,
            1,
            &with_services(),
        )
    }

    #[test]
    fn a_service_address_defers_the_senders_egress_and_carries_the_replies() {
        let policy = client_egress_to_server_only();
        let mut table = Table::default();
        // Judged against the ClusterIP (world), the egress rule would drop it.
        let before_dnat = tcp(CLIENT, 4000, SERVICE, 80, SYN);
        let judged_here = at_veth(&before_dnat, &policy, &mut table, &NodeConfig::default());
        assert!(!judged_here.pass);
        assert_eq!(judged_here.egress, Some(Counter::PolicyEgressDenied));
        // With the Service range known, the egress is left to after the DNAT.
        let deferred = at_veth(&before_dnat, &policy, &mut table, &with_services());
        assert_eq!(
            deferred,
            PolicyOutcome::unasked(true, Counter::ConntrackNew)
        );
        assert_eq!(
            deferred.endpoint_counters().count(),
            0,
            "nothing judged yet"
        );
        // kube-proxy's DNAT: the backend's veth egress judges the client's
        // egress against the backend and its port.
        let after_dnat = at_veth(
            &tcp(CLIENT, 4000, SERVER, 80, SYN),
            &policy,
            &mut table,
            &with_services(),
        );
        assert!(after_dnat.pass);
        assert_eq!(after_dnat.egress, Some(Counter::PolicyEgressAllowed));
        let wrong_port = at_veth(
            &tcp(CLIENT, 4001, SERVER, 81, SYN),
            &policy,
            &mut table,
            &with_services(),
        );
        assert!(!wrong_port.pass);
        assert_eq!(wrong_port.egress, Some(Counter::PolicyEgressDenied));
        // The backend's reply before the reverse NAT, and after it (from
        // the ClusterIP) to the ingress-isolated client: both replies.
        for reply in [
            tcp(SERVER, 80, CLIENT, 4000, SYN_ACK),
            tcp(SERVICE, 80, CLIENT, 4000, SYN_ACK),
        ] {
            assert_eq!(
                at_veth(&reply, &policy, &mut table, &with_services()),
                PolicyOutcome::unasked(true, Counter::ConntrackEstablished)
            );
        }
        // Something else from the ClusterIP is no reply: the client's
        // ingress isolation drops it.
        let unsolicited = at_veth(
            &tcp(SERVICE, 80, CLIENT, 4999, SYN),
            &policy,
            &mut table,
            &with_services(),
        );
        assert!(!unsolicited.pass);
        assert_eq!(unsolicited.ingress, Some(Counter::PolicyIngressDenied));
    }

    #[test]
    fn leaving_the_node_judges_what_the_veth_deferred() {
        let policy = client_egress_to_server_only();
        let mut table = Table::default();
        // A sender no policy isolates for egress: nothing to say.
        assert_eq!(
            leaving(&tcp(SERVER, 80, CLIENT, 4000, SYN), &policy, &mut table),
            None
        );
        let arp = [0u8; 12].into_iter().chain([0x08, 0x06]).chain([0; 28]);
        assert_eq!(leaving(&arp.collect::<Vec<_>>(), &policy, &mut table), None);
        // The veth deferred the egress and wrote the client · ClusterIP
        // entry; still addressed to the ClusterIP (no DNAT), the packet is
        // judged against it without that entry, and dropped.
        let to_service = tcp(CLIENT, 4000, SERVICE, 80, SYN);
        assert!(at_veth(&to_service, &policy, &mut table, &with_services()).pass);
        let undnatted = leaving(&to_service, &policy, &mut table).unwrap();
        assert!(!undnatted.pass);
        assert_eq!(undnatted.egress, Some(Counter::PolicyEgressDenied));
        assert_eq!(table.0.len(), 1, "nothing written for it");
        // DNATed to a remote backend: new here, judged against the backend.
        let allowed = leaving(&tcp(CLIENT, 4000, SERVER, 80, SYN), &policy, &mut table).unwrap();
        assert!(allowed.pass);
        assert_eq!(allowed.conntrack, Counter::ConntrackNew);
        assert_eq!(allowed.egress, Some(Counter::PolicyEgressAllowed));
        assert_eq!(
            allowed.endpoint_counters().collect::<Vec<_>>(),
            [EndpointCounterKey::new(CLIENT, POLICY_EGRESS, true)],
            "the way out counts the sender's egress as its veth would"
        );
        let denied = leaving(&tcp(CLIENT, 4001, SERVER, 443, SYN), &policy, &mut table).unwrap();
        assert!(!denied.pass);
        assert_eq!(
            denied.endpoint_counters().collect::<Vec<_>>(),
            [EndpointCounterKey::new(CLIENT, POLICY_EGRESS, false)]
        );
        // A flow the veth already judged finds its entry: no policy lookup.
        let again = leaving(&tcp(CLIENT, 4000, SERVER, 80, ACK), &policy, &mut table).unwrap();
        assert_eq!(
            again,
            PolicyOutcome::unasked(true, Counter::ConntrackEstablished)
        );
    }

    #[test]
    fn only_pods_isolated_in_neither_direction_skip_their_veth_egress() {
        let mut policy = server_allows_web().to_vec();
        let to_client = tcp(SERVER, 80, CLIENT, 4000, SYN);
        assert!(may_skip_pod_egress(&to_client[..], &policy[..]));
        policy.push((
            PolicyKey::isolation(CLIENT, POLICY_EGRESS),
            PolicyEntry::DENY,
        ));
        assert!(
            !may_skip_pod_egress(&to_client[..], &policy[..]),
            "an egress-isolated pod's replies need the request's entry"
        );
    }

    #[test]
    fn only_pods_open_for_ingress_skip_their_veth_egress() {
        let to_server = tcp(CLIENT, 4000, SERVER, 80, SYN);
        let to_client = tcp(SERVER, 80, CLIENT, 4000, SYN);
        let policy = server_allows_web();
        assert!(!may_skip_pod_egress(&to_server[..], &policy[..]));
        assert!(may_skip_pod_egress(&to_client[..], &policy[..]));
        assert!(!may_skip_pod_egress(&to_server[..20], &policy[..]));
    }

    #[test]
    fn unreadable_transport_headers_are_judged_without_ports() {
        let mut frame = tcp(CLIENT, 4000, SERVER, 80, SYN);
        frame.truncate(14 + 20 + 10);
        frame[16..18].copy_from_slice(&30u16.to_be_bytes());
        let mut table = Table::default();
        let open = run(&frame, &[], &mut table, 0);
        assert_eq!(
            open,
            PolicyOutcome::unasked(true, Counter::ConntrackInvalid)
        );
        // Port 80 is allowed, but a packet without ports is not on port 80.
        let isolated = run(&frame, &server_allows_web(), &mut table, 0);
        assert!(!isolated.pass);
        assert_eq!(isolated.ingress, Some(Counter::PolicyIngressDenied));
        assert_eq!(
            isolated.endpoint_counters().collect::<Vec<_>>(),
            [EndpointCounterKey::new(SERVER, POLICY_INGRESS, false)]
        );
        assert!(table.0.is_empty());
    }
}
