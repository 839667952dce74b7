//! A node's policy maps as in-memory tables: what the agent writes into
//! `WEFT_IPCACHE`, `WEFT_POLICY` and `WEFT_POLICY_REV`, and the connection
//! tracker's `WEFT_CONNTRACK`, which the policy hooks write themselves.

use std::collections::HashMap;

use weft_common::conntrack::{ConntrackEntry, FlowKey};
use weft_common::lookup::ConntrackTable;
use weft_common::maps::{IdentityEntry, IpcacheKey, PolicyEntry, PolicyKey, PolicyRevision};

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
