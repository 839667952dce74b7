//! The tc programs as functions: what each eBPF shell does with a frame,
//! done in userspace with the same decision from `weft-common`.
//!
//! A hook returns what `BPF_PROG_TEST_RUN` reports for the loaded program:
//! the tc action code, and the frame as the program left it (encapsulated,
//! decapsulated, redirected, or unchanged), plus the counter the program
//! bumped. The differential tests hold the two to be identical.

use weft_common::guard::pod_egress_verdict;
use weft_common::lookup::{Endpoints, Fib, NodeSet, PolicyLookup, RouteLookup};
use weft_common::maps::{EndpointCounterKey, EndpointInfo, NodeConfig};
use weft_common::policy::{PolicyOutcome, enforce, enforce_leaving, may_skip_pod_egress};
use weft_common::redirect::{direct_redirect, write_redirected};
use weft_common::uplink::{self, write_decapsulated, write_encapsulated};
use weft_common::verdict::{Counter, PassReason, UplinkVerdict, Verdict};

use crate::policy::{Conntrack, PolicyTables, PolicyVerdict, RecordingPolicy};

/// `TC_ACT_OK`: the kernel carries on with the (possibly rewritten) packet.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`: the packet is dropped.
pub const TC_ACT_SHOT: i32 = 2;
/// `TC_ACT_REDIRECT`: the packet goes where the program's redirect helper
/// said (`bpf_redirect_peer`: into a pod veth's peer), not on through the
/// stack.
pub const TC_ACT_REDIRECT: i32 = 7;

/// A tc action as the kernel's headers name it.
pub fn action_name(action: i32) -> &'static str {
    match action {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        _ => "TC_ACT_?",
    }
}

/// What one tc program did with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    /// The tc action code the program returned.
    pub action: i32,
    /// The counter the program bumped (for the policy hooks, the first).
    pub counter: Counter,
    /// The policy counters it bumped besides (conntrack, policy by
    /// direction), in the order the eBPF shell bumps them.
    pub also: Vec<Counter>,
    /// The per-endpoint policy counters (`WEFT_EP_COUNTS`) it bumped, in
    /// the eBPF shell's order (egress, then ingress).
    pub endpoint_counters: Vec<EndpointCounterKey>,
    /// For the policy hooks, on the pod's own IPv4: what policy decided
    /// and which map entry decided it (the twin's own account; the eBPF
    /// shell reports only the action and counters).
    pub policy: Option<PolicyVerdict>,
    /// The frame after the program: rewritten when it encapsulated or
    /// decapsulated, else the input unchanged (also when dropped, as
    /// `BPF_PROG_TEST_RUN` reports it).
    pub frame: Vec<u8>,
    /// With [`TC_ACT_REDIRECT`]: the host veth into whose peer (the pod's
    /// `eth0`) the packet was redirected. `BPF_PROG_TEST_RUN` does not
    /// report it; the twin's nodes deliver by it.
    pub redirect: Option<u32>,
}

impl HookOutcome {
    fn unchanged(action: i32, counter: Counter, frame: &[u8]) -> HookOutcome {
        HookOutcome {
            action,
            counter,
            also: Vec::new(),
            endpoint_counters: Vec::new(),
            policy: None,
            frame: frame.to_vec(),
            redirect: None,
        }
    }

    fn rewritten(counter: Counter, frame: Vec<u8>) -> HookOutcome {
        HookOutcome {
            action: TC_ACT_OK,
            counter,
            also: Vec::new(),
            endpoint_counters: Vec::new(),
            policy: None,
            frame,
            redirect: None,
        }
    }

    /// The packet goes on (to the stack, or out of the interface).
    pub fn passes(&self) -> bool {
        self.action == TC_ACT_OK
    }

    /// Every counter the program bumped.
    pub fn counters(&self) -> impl Iterator<Item = Counter> + '_ {
        std::iter::once(self.counter).chain(self.also.iter().copied())
    }
}

/// `weft_pod_ingress`: tc ingress of a pod's host veth, whose endpoint
/// entry is `endpoint` (`None`: the veth has none): the guard, then for
/// the pod's own IPv4 the policy decision over `policy` and `conntrack`
/// at `now_ns`, on a node whose config (Service range) is `config`.
pub fn pod_ingress(
    frame: &[u8],
    endpoint: Option<&EndpointInfo>,
    policy: &PolicyTables,
    conntrack: &mut Conntrack,
    now_ns: u64,
    config: &NodeConfig,
) -> HookOutcome {
    let verdict = pod_egress_verdict(frame, endpoint);
    match verdict {
        Verdict::Pass(PassReason::OwnSource) => {
            let mut outcome = pod_egress(frame, policy, conntrack, now_ns, config);
            outcome.also.insert(0, outcome.counter);
            outcome.counter = verdict.counter();
            outcome
        }
        Verdict::Pass(_) => HookOutcome::unchanged(TC_ACT_OK, verdict.counter(), frame),
        Verdict::Drop(_) => HookOutcome::unchanged(TC_ACT_SHOT, verdict.counter(), frame),
    }
}

/// `weft_pod_egress`: tc egress of a pod's host veth, what the node sends
/// to the pod: the policy decision over `policy` and `conntrack` at
/// `now_ns`, on a node whose config (Service range) is `config`.
pub fn pod_egress(
    frame: &[u8],
    policy: &PolicyTables,
    conntrack: &mut Conntrack,
    now_ns: u64,
    config: &NodeConfig,
) -> HookOutcome {
    let lookups = RecordingPolicy::new(policy.policy.as_slice());
    let outcome = enforce(
        frame,
        policy.ipcache.as_slice(),
        &lookups,
        conntrack,
        now_ns,
        policy.revision,
        config,
    );
    let mut hook = policy_outcome(frame, &outcome);
    hook.policy = Some(PolicyVerdict::explain(&outcome, &lookups.lookups.borrow()));
    hook
}

/// A policy outcome as the eBPF shell carries it out (`count_policy`):
/// its counters (conntrack, then egress, then ingress), its per-endpoint
/// counters, and the frame unchanged.
fn policy_outcome(frame: &[u8], outcome: &PolicyOutcome) -> HookOutcome {
    let action = if outcome.pass { TC_ACT_OK } else { TC_ACT_SHOT };
    let mut hook = HookOutcome::unchanged(action, outcome.conntrack, frame);
    hook.also.extend(outcome.egress);
    hook.also.extend(outcome.ingress);
    hook.endpoint_counters.extend(outcome.endpoint_counters());
    hook
}

/// The deferred egress check at the node's way out (`enforce_leaving`),
/// as `weft_uplink_egress` and `weft_tunnel_egress` run it first: `Some`
/// when policy judged the frame.
fn leaving(
    frame: &[u8],
    policy: &PolicyTables,
    conntrack: &mut Conntrack,
    now_ns: u64,
    config: &NodeConfig,
) -> Option<HookOutcome> {
    let outcome = enforce_leaving(
        frame,
        policy.ipcache.as_slice(),
        policy.policy.as_slice(),
        conntrack,
        now_ns,
        policy.revision,
        config,
    )?;
    Some(policy_outcome(frame, &outcome))
}

/// `weft_uplink_egress`: tc egress of the uplink, for a frame that is not
/// GSO (the eBPF shell checks a GSO packet's segments against no MTU of its
/// own, the kernel does): the MTU is the config's. First the deferred
/// egress policy over `policy` and `conntrack` at `now_ns`: a frame it
/// drops is returned as that outcome; one it passes goes on to the uplink
/// decision, whose outcome gets the policy counters in `also` and the
/// per-endpoint counters policy bumped.
pub fn uplink_egress<T: RouteLookup + ?Sized>(
    frame: &[u8],
    routes: &T,
    config: &NodeConfig,
    policy: &PolicyTables,
    conntrack: &mut Conntrack,
    now_ns: u64,
) -> HookOutcome {
    let judged = leaving(frame, policy, conntrack, now_ns, config);
    if let Some(judged) = &judged
        && !judged.passes()
    {
        return judged.clone();
    }
    let verdict = uplink::uplink_egress(frame, routes, config, config.egress_mtu());
    let mut outcome = uplink_outcome(frame, verdict);
    if let Some(judged) = judged {
        outcome.also = judged.counters().collect();
        outcome.endpoint_counters = judged.endpoint_counters;
    }
    outcome
}

/// `weft_tunnel_egress`: tc egress of the vxlan device, the deferred
/// egress policy alone. `None`: policy has nothing to say about the frame,
/// which passes with no counter bumped.
pub fn tunnel_egress(
    frame: &[u8],
    policy: &PolicyTables,
    conntrack: &mut Conntrack,
    now_ns: u64,
    config: &NodeConfig,
) -> Option<HookOutcome> {
    leaving(frame, policy, conntrack, now_ns, config)
}

/// `weft_uplink_ingress`: tc ingress of the uplink, on a node whose FIB
/// (route and neighbour tables, as `bpf_fib_lookup` answers from the
/// uplink) is `fib` and whose endpoint map is `endpoints`; both matter
/// only with the config's direct redirect on, as does its policy map
/// `policy` (a pod isolated for ingress is not redirected to).
pub fn uplink_ingress<N, F, E, P>(
    frame: &[u8],
    nodes: &N,
    config: &NodeConfig,
    fib: &F,
    endpoints: &E,
    policy: &P,
) -> HookOutcome
where
    N: NodeSet + ?Sized,
    F: Fib + ?Sized,
    E: Endpoints + ?Sized,
    P: PolicyLookup + ?Sized,
{
    let verdict = uplink::uplink_ingress(frame, nodes, config);
    let outcome = uplink_outcome(frame, verdict);
    if !matches!(verdict, UplinkVerdict::Decapsulate { .. }) || !outcome.passes() {
        return outcome;
    }
    // The decapsulated packet, offered to the direct path.
    let Ok(redirect) = direct_redirect(&outcome.frame[..], config, fib, endpoints) else {
        return outcome;
    };
    if !may_skip_pod_egress(&outcome.frame[..], policy) {
        return outcome;
    }
    let mut out = vec![0; outcome.frame.len()];
    match write_redirected(&outcome.frame, &redirect, &mut out) {
        Some(_) => HookOutcome {
            action: TC_ACT_REDIRECT,
            counter: Counter::Redirect,
            also: Vec::new(),
            endpoint_counters: Vec::new(),
            policy: None,
            frame: out,
            redirect: Some(redirect.ifindex),
        },
        // The decision read the bytes it rewrites: unreachable. The eBPF
        // shell leaves the packet to the stack when its store fails.
        None => outcome,
    }
}

/// Carries out an uplink verdict the way the eBPF shells do.
fn uplink_outcome(frame: &[u8], verdict: UplinkVerdict) -> HookOutcome {
    let counter = verdict.counter();
    match verdict {
        UplinkVerdict::Pass(_) => HookOutcome::unchanged(TC_ACT_OK, counter, frame),
        UplinkVerdict::Drop(_) | UplinkVerdict::TooBig { .. } => {
            HookOutcome::unchanged(TC_ACT_SHOT, counter, frame)
        }
        UplinkVerdict::Encapsulate { header, .. } => {
            let mut out = vec![0; frame.len() + header.len()];
            match write_encapsulated(frame, &header, &mut out) {
                Some(len) => {
                    out.truncate(len);
                    HookOutcome::rewritten(counter, out)
                }
                // The decision only encapsulates a frame with an IPv4
                // header, so this is unreachable; fail closed regardless.
                None => HookOutcome::unchanged(TC_ACT_SHOT, Counter::DropMalformed, frame),
            }
        }
        UplinkVerdict::Decapsulate {
            outer_header_len, ..
        } => {
            let mut out = vec![0; frame.len()];
            match write_decapsulated(frame, outer_header_len, &mut out) {
                Some(len) => {
                    out.truncate(len);
                    HookOutcome::rewritten(counter, out)
                }
                None => HookOutcome::unchanged(TC_ACT_SHOT, Counter::DropMalformed, frame),
            }
        }
    }
}
