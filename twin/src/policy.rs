//! A node's policy maps as in-memory tables: what the agent writes into
//! `WEFT_IPCACHE`, `WEFT_POLICY` and `WEFT_POLICY_REV`, and the connection
//! tracker's `WEFT_CONNTRACK`, which the policy hooks write themselves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use weft_common::conntrack::{ConntrackEntry, FlowKey};
use weft_common::lookup::{ConntrackTable, PolicyLookup};
use weft_common::maps::{
    FoundAction, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IdentityEntry, IpcacheKey,
    POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_FULL, POLICY_PREFIX_PROTOCOL, PolicyDecision,
    PolicyEntry, PolicyKey, PolicyRevision, found_action,
};
use weft_common::policy::PolicyOutcome;
use weft_common::verdict::Counter;

/// The maps the agent writes (empty: no endpoint is isolated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTables {
    /// `WEFT_IPCACHE`: address prefix → identity.
    pub ipcache: Vec<(IpcacheKey, IdentityEntry)>,
    /// `WEFT_POLICY`: endpoint · direction · identity · protocol · port.
    pub policy: Vec<(PolicyKey, PolicyEntry)>,
    /// `WEFT_POLICY_REV`.
    pub revision: PolicyRevision,
}

impl PolicyTables {
    /// Replaces the ipcache and policy entries (a compiled policy), and
    /// bumps the revision as the agent does once they are in place, so
    /// tracked connections are checked again.
    pub fn load(
        &mut self,
        ipcache: impl IntoIterator<Item = (IpcacheKey, IdentityEntry)>,
        policy: impl IntoIterator<Item = (PolicyKey, PolicyEntry)>,
    ) {
        self.ipcache = ipcache.into_iter().collect();
        self.policy = policy.into_iter().collect();
        self.revision = self.revision.wrapping_add(1);
    }
}

/// `WEFT_CONNTRACK`, without the LRU's eviction (the twin's flows are few).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conntrack(pub HashMap<FlowKey, ConntrackEntry>);

impl ConntrackTable for Conntrack {
    fn entry(&self, key: &FlowKey) -> Option<ConntrackEntry> {
        self.0.get(key).copied()
    }

    fn write(&mut self, key: &FlowKey, entry: &ConntrackEntry) {
        self.0.insert(*key, *entry);
    }

    fn remove(&mut self, key: &FlowKey) {
        self.0.remove(key);
    }
}

/// What policy decided for one packet at a pod veth hook, and the entry
/// of the policy map that decided each direction: what `weftctl lab
/// trace` shows. Read off the very lookups the core's decision made
/// ([`RecordingPolicy`]), so it cannot disagree with the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub pass: bool,
    /// The tracker's view: a new flow, an established one, ...
    pub conntrack: Counter,
    /// The source endpoint's egress, when policy was asked.
    pub egress: Option<DirectionVerdict>,
    /// The destination endpoint's ingress, when policy was asked.
    pub ingress: Option<DirectionVerdict>,
}

/// One direction of one endpoint, as policy decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionVerdict {
    pub endpoint: [u8; 4],
    pub direction: u8,
    /// The peer's identity, from the ipcache.
    pub identity: u32,
    pub decision: PolicyDecision,
    /// The stored key that decided: the allow rule, or the isolation
    /// marker of a denial; `None` when not isolated.
    pub rule: Option<PolicyKey>,
}

impl PolicyVerdict {
    /// The verdict `enforce` reached, explained by the lookups it made.
    pub(crate) fn explain(
        outcome: &PolicyOutcome,
        lookups: &[PolicyLookupRecord],
    ) -> PolicyVerdict {
        let direction = |direction: u8| {
            let mine: Vec<&PolicyLookupRecord> = lookups
                .iter()
                .filter(|r| r.key.direction == direction)
                .collect();
            let first = mine.first()?;
            let allow = mine
                .iter()
                .find_map(|r| r.matched.filter(|(_, e)| e.allows()));
            let (decision, rule) = match (first.matched, allow) {
                (None, _) => (PolicyDecision::NotIsolated, None),
                (_, Some((key, _))) => (PolicyDecision::Allowed, Some(key)),
                (Some((marker, _)), None) => (PolicyDecision::Denied, Some(marker)),
            };
            Some(DirectionVerdict {
                endpoint: first.key.endpoint,
                direction,
                identity: first.key.identity(),
                decision,
                rule,
            })
        };
        PolicyVerdict {
            pass: outcome.pass,
            conntrack: outcome.conntrack,
            egress: direction(POLICY_EGRESS),
            ingress: direction(POLICY_INGRESS),
        }
    }
}

/// One lookup of the policy map: the key asked, and the stored entry the
/// longest-prefix match found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyLookupRecord {
    pub key: PolicyKey,
    pub matched: Option<(PolicyKey, PolicyEntry)>,
}

/// The policy map as a list (longest covering prefix, as the trie and the
/// slice's own [`PolicyLookup`] answer), recording every lookup.
pub(crate) struct RecordingPolicy<'a> {
    table: &'a [(PolicyKey, PolicyEntry)],
    pub lookups: RefCell<Vec<PolicyLookupRecord>>,
}

impl<'a> RecordingPolicy<'a> {
    pub fn new(table: &'a [(PolicyKey, PolicyEntry)]) -> Self {
        RecordingPolicy {
            table,
            lookups: RefCell::new(Vec::new()),
        }
    }
}

impl PolicyLookup for RecordingPolicy<'_> {
    fn policy_action(&self, key: &PolicyKey) -> FoundAction {
        let matched = self
            .table
            .iter()
            .filter(|(k, _)| k.covers(key))
            .max_by_key(|(k, _)| k.prefix_len)
            .copied();
        self.lookups
            .borrow_mut()
            .push(PolicyLookupRecord { key: *key, matched });
        let action = found_action(matched.map(|(_, e)| e));
        debug_assert_eq!(action, self.table.policy_action(key));
        action
    }
}

/// Words for a verdict, with identities named by the ipcache's prefixes.
pub struct PolicyVerdictText<'a> {
    pub verdict: &'a PolicyVerdict,
    pub ipcache: &'a [(IpcacheKey, IdentityEntry)],
}

impl fmt::Display for PolicyVerdictText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.verdict;
        if v.egress.is_none() && v.ingress.is_none() {
            let why = match v.conntrack {
                Counter::ConntrackEstablished => {
                    "conntrack established: passes without a policy lookup"
                }
                Counter::ConntrackRelated => {
                    "conntrack related (ICMP error about a tracked flow): passes"
                }
                Counter::ConntrackDenied => {
                    "conntrack: a connection policy denied at this revision: dropped without a lookup"
                }
                Counter::ConntrackInvalid => "conntrack invalid: dropped",
                Counter::PolicyNotIpv4 => "not IPv4: nothing to check",
                _ => "no policy lookup",
            };
            return write!(f, "{why}");
        }
        write!(f, "{}", v.conntrack.name())?;
        let isolated = |d: &Option<DirectionVerdict>| {
            d.as_ref()
                .is_some_and(|d| d.decision != PolicyDecision::NotIsolated)
        };
        if !isolated(&v.egress) && !isolated(&v.ingress) {
            return write!(f, "; neither end isolated: allowed");
        }
        for d in [&v.egress, &v.ingress].into_iter().flatten() {
            write!(
                f,
                "; {}",
                DirectionText {
                    d,
                    ipcache: self.ipcache
                }
            )?;
        }
        Ok(())
    }
}

struct DirectionText<'a> {
    d: &'a DirectionVerdict,
    ipcache: &'a [(IpcacheKey, IdentityEntry)],
}

impl fmt::Display for DirectionText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.d;
        let direction = direction_name(d.direction);
        write!(f, "{direction} of {}: ", Ipv4Addr::from(d.endpoint))?;
        match (d.decision, d.rule) {
            (PolicyDecision::NotIsolated, _) | (_, None) => write!(f, "not isolated"),
            (PolicyDecision::Allowed, Some(rule)) => write!(
                f,
                "allowed by rule [{}]",
                RuleText {
                    rule: &rule,
                    ipcache: self.ipcache
                }
            ),
            (PolicyDecision::Denied, Some(_)) => write!(
                f,
                "DENIED by the isolation marker: no rule allows peer {}",
                IdentityText {
                    identity: d.identity,
                    ipcache: self.ipcache
                }
            ),
        }
    }
}

/// "ingress" or "egress".
pub fn direction_name(direction: u8) -> &'static str {
    if direction == POLICY_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

/// A stored policy key in words: direction, peer, protocol, ports.
pub struct RuleText<'a> {
    pub rule: &'a PolicyKey,
    pub ipcache: &'a [(IpcacheKey, IdentityEntry)],
}

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.rule;
        let peer = IdentityText {
            identity: k.identity(),
            ipcache: self.ipcache,
        };
        write!(f, "{} peer {peer}", direction_name(k.direction))?;
        if k.prefix_len < POLICY_PREFIX_PROTOCOL {
            return write!(f, ", every protocol and port");
        }
        match k.protocol {
            6 => write!(f, ", TCP")?,
            17 => write!(f, ", UDP")?,
            132 => write!(f, ", SCTP")?,
            1 => write!(f, ", ICMP")?,
            n => write!(f, ", protocol {n}")?,
        }
        if k.prefix_len <= POLICY_PREFIX_PROTOCOL {
            return write!(f, ", every port");
        }
        let span = 1u32 << (POLICY_PREFIX_FULL - k.prefix_len.min(POLICY_PREFIX_FULL));
        let first = u32::from(k.port());
        if span == 1 {
            write!(f, ", port {first}")
        } else {
            write!(
                f,
                ", ports {first}-{} (/{} prefix)",
                first + span - 1,
                k.prefix_len
            )
        }
    }
}

/// An identity with the ipcache prefixes that map to it.
struct IdentityText<'a> {
    identity: u32,
    ipcache: &'a [(IpcacheKey, IdentityEntry)],
}

impl fmt::Display for IdentityText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.identity {
            IDENTITY_ANY => return write!(f, "any"),
            IDENTITY_HOST => return write!(f, "host (identity {IDENTITY_HOST})"),
            IDENTITY_WORLD => return write!(f, "world (identity {IDENTITY_WORLD})"),
            _ => {}
        }
        let prefixes: Vec<String> = self
            .ipcache
            .iter()
            .filter(|(_, e)| e.identity == self.identity)
            .map(|(k, _)| format!("{}/{}", Ipv4Addr::from(k.addr), k.prefix_len))
            .collect();
        write!(f, "identity {}", self.identity)?;
        if !prefixes.is_empty() {
            write!(f, " ({})", prefixes.join(", "))?;
        }
        Ok(())
    }
}
