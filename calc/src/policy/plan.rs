//! From one compilation to the next without a window: what both allow
//! stays allowed at every step in between (issue #10, item 6).
//!
//! Writes before removals, and within each phase an order that never
//! denies early:
//! 1. new or changed allow entries (nothing denies more for them);
//! 2. new or changed ipcache entries (their identities' entries are in);
//! 3. new isolation markers (their allows are in);
//!
//! then removals:
//! 4. isolation markers gone (the direction opens before anything shrinks);
//! 5. ipcache entries gone (addresses fall back to shorter prefixes,
//!    whose entries are in);
//! 6. allow entries gone (nothing maps to them any more).

use weft_common::maps::{IdentityEntry, IpcacheKey, PolicyEntry, PolicyKey};

use super::CompiledPolicy;

/// One map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMapOp {
    WriteIpcache(IpcacheKey, IdentityEntry),
    WritePolicy(PolicyKey, PolicyEntry),
    RemoveIpcache(IpcacheKey),
    RemovePolicy(PolicyKey),
}

impl PolicyMapOp {
    /// Whether the operation writes (the flush's write phase) rather than
    /// removes (its removal phase); [`plan`] lists every write first.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            PolicyMapOp::WriteIpcache(..) | PolicyMapOp::WritePolicy(..)
        )
    }
}

/// The operations from `old` to `new`, in the order to apply them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    pub ops: Vec<PolicyMapOp>,
}

impl PolicyPlan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Orders the change from `old` to `new` (see the module doc).
pub fn plan(old: &CompiledPolicy, new: &CompiledPolicy) -> PolicyPlan {
    use PolicyMapOp::*;
    let changed_policy = new
        .policy
        .iter()
        .filter(|(k, v)| old.policy.get(k) != Some(v));
    let (allows, markers): (Vec<_>, Vec<_>) = changed_policy.partition(|(_, v)| v.allows());
    let gone_policy = old
        .policy
        .iter()
        .filter(|(k, _)| !new.policy.contains_key(k));
    let (gone_allows, gone_markers): (Vec<_>, Vec<_>) = gone_policy.partition(|(_, v)| v.allows());

    let mut ops: Vec<PolicyMapOp> = Vec::new();
    ops.extend(allows.into_iter().map(|(k, v)| WritePolicy(*k, *v)));
    ops.extend(
        new.ipcache
            .iter()
            .filter(|(k, v)| old.ipcache.get(k) != Some(v))
            .map(|(k, v)| WriteIpcache(*k, *v)),
    );
    ops.extend(markers.into_iter().map(|(k, v)| WritePolicy(*k, *v)));
    ops.extend(gone_markers.into_iter().map(|(k, _)| RemovePolicy(*k)));
    ops.extend(
        old.ipcache
            .keys()
            .filter(|k| !new.ipcache.contains_key(k))
            .map(|k| RemoveIpcache(*k)),
    );
    ops.extend(gone_allows.into_iter().map(|(k, _)| RemovePolicy(*k)));
    PolicyPlan { ops }
}

/// `state` after `op`: what a driver does to the kernel's maps.
pub fn apply(state: &mut CompiledPolicy, op: &PolicyMapOp) {
    match *op {
        PolicyMapOp::WriteIpcache(k, v) => {
            state.ipcache.insert(k, v);
        }
        PolicyMapOp::WritePolicy(k, v) => {
            state.policy.insert(k, v);
        }
        PolicyMapOp::RemoveIpcache(k) => {
            state.ipcache.remove(&k);
        }
        PolicyMapOp::RemovePolicy(k) => {
            state.policy.remove(&k);
        }
    }
}
