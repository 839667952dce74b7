//! The dataplane drivers: one per slice ([`Slice`]), each a pure plan
//! (desired against actual) and an apply, and [`flush`], which runs them
//! in [`FLUSH_ORDER`]: every slice's writes in that order, then every
//! slice's removals in reverse.
//!
//! A driver keeps what it last applied as its view of the kernel, so an
//! event pass (a CNI call) costs the entries that change, not the node's
//! size; a full pass (start-up, the timed resync) reads the kernel again
//! and so also repairs what changed behind the agent's back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_calc::policy::plan::PolicyMapOp;
use weft_calc::policy::{self, CompiledPolicy, PolicyPlan};
use weft_calc::{DesiredState, FLUSH_ORDER, Slice, Slices};
use weft_common::maps::NodeConfig;
use weft_dataplane::bpf::{
    self, GuardPlan, PodGuard, PolicyMaps, UplinkPlan, UplinkPrograms, UplinkState,
};
use weft_dataplane::link::Netlink;
use weft_dataplane::route::{self, Route, RoutePlan, RouteTable};
use weft_dataplane::vxlan;
use weft_model::Encap;

use crate::node::ReconcileError;

/// What a flush changed, per kind of entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub routes_installed: usize,
    pub routes_removed: usize,
    pub guard_written: usize,
    pub guard_removed: usize,
    /// Entries of the uplink programs' maps (config, nodes, pod routes)
    /// written and removed: zero on a pass that changed nothing.
    pub uplink_entries_written: usize,
    pub uplink_entries_removed: usize,
    pub links_removed: Vec<String>,
    /// Policy and ipcache map entries written and removed.
    pub policy_entries_written: usize,
    pub policy_entries_removed: usize,
}

/// The drivers of every slice, as [`flush`] drives them.
pub trait Drivers {
    /// Writes what `desired` adds or changes in `slice`. `full`: read the
    /// kernel first rather than trust what was last applied.
    fn write(
        &mut self,
        slice: Slice,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
    /// Removes what `slice` holds that `desired` no longer wants.
    fn remove(
        &mut self,
        slice: Slice,
        desired: &DesiredState,
        out: &mut Flushed,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
}

/// Brings `slices` to `desired`: writes in [`FLUSH_ORDER`], removals in
/// reverse. Stops at the first error; the next pass starts over from the
/// kernel (a driver that failed forgets what it believed it had applied).
pub async fn flush<D: Drivers>(
    drivers: &mut D,
    desired: &DesiredState,
    slices: Slices,
    full: bool,
) -> Result<Flushed, ReconcileError> {
    debug_assert_eq!(Slices::ALL.in_flush_order().count(), FLUSH_ORDER.len());
    let mut out = Flushed::default();
    for slice in slices.in_flush_order() {
        drivers.write(slice, desired, full, &mut out).await?;
    }
    for slice in slices.in_flush_order().rev() {
        drivers.remove(slice, desired, &mut out).await?;
    }
    Ok(out)
}

/// The kernel's drivers.
pub struct KernelDrivers {
    pub policy: PolicyDriver,
    pub endpoints: EndpointsDriver,
    pub tunnel: TunnelDriver,
    pub vxlan: VxlanDriver,
    pub routes: RoutesDriver,
}

impl Drivers for KernelDrivers {
    async fn write(
        &mut self,
        slice: Slice,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        match slice {
            // No policy driver yet: the compiler is not wired in (issue #10).
            Slice::Policy => self.policy.write(desired, full, out),
            Slice::Endpoints => self.endpoints.write(desired, full, out).await,
            Slice::Tunnel => self.tunnel.write(desired, full, out),
            Slice::Vxlan => self.vxlan.write(desired).await,
            Slice::Routes => self.routes.write(desired, full, out).await,
        }
    }

    async fn remove(
        &mut self,
        slice: Slice,
        desired: &DesiredState,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        match slice {
            Slice::Policy => self.policy.remove(out),
            Slice::Endpoints => self.endpoints.remove(desired, out).await,
            Slice::Tunnel => self.tunnel.remove(out).await,
            // The FDB and neighbour sync removes as it writes.
            Slice::Vxlan => Ok(()),
            Slice::Routes => self.routes.remove(out).await,
        }
    }
}

/// [`Slice::Policy`]: the ipcache and policy maps, written in the order
/// [`weft_calc::policy::plan`] gives (nothing both the old and the new
/// policy allow is dropped in between), then the revision bumped so that
/// every tracked connection is checked against the new maps at its next
/// packet.
pub struct PolicyDriver {
    pub maps: PolicyMaps,
    /// The maps as last written; `None`: read them first.
    applied: Option<CompiledPolicy>,
    /// Between the two phases: the plan and the maps' state so far.
    plan: Option<(PolicyPlan, CompiledPolicy)>,
}

impl PolicyDriver {
    pub fn new(maps: PolicyMaps) -> PolicyDriver {
        PolicyDriver {
            maps,
            applied: None,
            plan: None,
        }
    }

    fn write(
        &mut self,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        let mut state = match self.applied.take() {
            Some(applied) if !full => applied,
            _ => CompiledPolicy {
                ipcache: self.maps.ipcache()?.into_iter().collect(),
                policy: self.maps.policy()?.into_iter().collect(),
                ..CompiledPolicy::default()
            },
        };
        let plan = policy::plan(&state, &desired.policy);
        for op in plan.ops.iter().filter(|op| op.writes()) {
            self.apply(op)?;
            policy::plan::apply(&mut state, op);
            out.policy_entries_written += 1;
        }
        self.plan = Some((plan, state));
        Ok(())
    }

    fn remove(&mut self, out: &mut Flushed) -> Result<(), ReconcileError> {
        let Some((plan, mut state)) = self.plan.take() else {
            return Ok(());
        };
        for op in plan.ops.iter().filter(|op| !op.writes()) {
            self.apply(op)?;
            policy::plan::apply(&mut state, op);
            out.policy_entries_removed += 1;
        }
        if !plan.is_empty() {
            let revision = self.maps.revision()?.wrapping_add(1);
            self.maps.set_revision(revision)?;
            tracing::info!(revision, ops = plan.ops.len(), "policy maps updated");
            self.forget_counters(&state)?;
        }
        self.applied = Some(state);
        Ok(())
    }

    /// Removes the per-endpoint policy counters of endpoints that no
    /// longer have policy entries (gone, or no longer isolated), so a pod
    /// given the address later starts from zero.
    fn forget_counters(&mut self, state: &CompiledPolicy) -> Result<(), ReconcileError> {
        let programmed: BTreeSet<[u8; 4]> = state.policy.keys().map(|k| k.endpoint).collect();
        for (key, _) in self.maps.endpoint_counters()? {
            if !programmed.contains(&key.endpoint) {
                self.maps.remove_endpoint_counter(&key)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &PolicyMapOp) -> Result<(), ReconcileError> {
        match *op {
            PolicyMapOp::WriteIpcache(k, v) => self.maps.set_ipcache(k, v)?,
            PolicyMapOp::WritePolicy(k, v) => self.maps.set_policy(k, v)?,
            PolicyMapOp::RemoveIpcache(k) => self.maps.remove_ipcache(k)?,
            PolicyMapOp::RemovePolicy(k) => self.maps.remove_policy(k)?,
        }
        Ok(())
    }
}

/// [`Slice::Endpoints`]: guard map entries and guard attachments, then
/// (removals) stale entries and veths no attachment claims.
pub struct EndpointsDriver {
    pub guard: PodGuard,
    pub netlink: Netlink,
    /// The guard map as last written; `None`: read it first.
    entries: Option<BTreeMap<u32, Ipv4Addr>>,
    /// Host veths (name, ifindex) known to carry the guard.
    attached: BTreeSet<(String, u32)>,
    /// Between the two phases: what the removals take.
    plan: Option<GuardPlan>,
}

impl EndpointsDriver {
    pub fn new(guard: PodGuard, netlink: Netlink) -> EndpointsDriver {
        EndpointsDriver {
            guard,
            netlink,
            entries: None,
            attached: BTreeSet::new(),
            plan: None,
        }
    }

    async fn write(
        &mut self,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        // Taken while applying: after an error it stays `None`, so the next
        // pass reads the map again.
        let mut entries = match self.entries.take() {
            Some(entries) if !full => entries,
            _ => {
                // Re-verify attachments too: one removed behind our back is restored.
                self.attached.clear();
                self.guard.endpoints()?.into_iter().collect()
            }
        };
        let plan = bpf::plan_guard(&desired.guard, &entries);
        for (ifindex, ip) in &plan.set {
            self.guard.set_endpoint(*ifindex, *ip)?;
            entries.insert(*ifindex, *ip);
        }
        out.guard_written += plan.set.len();
        self.entries = Some(entries);
        for link in &desired.guarded_links {
            if self.attached.contains(link) {
                continue;
            }
            self.guard.attach(&link.0)?;
            // The plugin wires the host end down: no packet crosses the
            // veth before its programs are on it and the pod's guard entry
            // and policy (flushed before this slice) are in the maps.
            self.netlink.set_up(&link.0).await?;
            self.attached.insert(link.clone());
        }
        self.plan = Some(plan);
        Ok(())
    }

    async fn remove(
        &mut self,
        desired: &DesiredState,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        let (Some(mut entries), Some(plan)) = (self.entries.take(), self.plan.take()) else {
            return Ok(());
        };
        for ifindex in &plan.remove {
            tracing::info!(ifindex, ip = ?entries.get(ifindex), "removing guard entry of a gone endpoint");
            self.guard.remove_endpoint(*ifindex)?;
            entries.remove(ifindex);
        }
        out.guard_removed += plan.remove.len();
        self.entries = Some(entries);
        for name in &desired.stale_links {
            tracing::info!(link = %name, "removing a host veth no attachment claims");
            self.netlink.delete_link(name).await?;
            out.links_removed.push(name.clone());
        }
        let guarded: BTreeSet<&(String, u32)> = desired.guarded_links.iter().collect();
        self.attached.retain(|link| guarded.contains(link));
        Ok(())
    }
}

/// [`Slice::Tunnel`]: the uplink programs' maps and attachment (in every
/// mode: they encapsulate in `ipip`, and in every mode let tunnels in only
/// from nodes); removals also take what other modes left.
pub struct TunnelDriver {
    pub programs: UplinkPrograms,
    netlink: Netlink,
    uplink: String,
    config: NodeConfig,
    encap: Encap,
    plan: Option<UplinkPlan>,
    /// Known attached; cleared by a full pass.
    attached: bool,
    /// What other encapsulation modes program (an earlier run's vxlan
    /// device) is known to be gone; cleared by a full pass.
    other_modes_cleared: bool,
}

impl TunnelDriver {
    pub fn new(
        programs: UplinkPrograms,
        netlink: Netlink,
        uplink: String,
        config: NodeConfig,
        encap: Encap,
    ) -> TunnelDriver {
        TunnelDriver {
            programs,
            netlink,
            uplink,
            config,
            encap,
            plan: None,
            attached: false,
            other_modes_cleared: false,
        }
    }

    fn write(
        &mut self,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        if full {
            self.attached = false;
            self.other_modes_cleared = false;
        }
        // The maps are small (one entry per node) and this slice changes
        // only with nodes or BGP: read them each time.
        let mut plan = bpf::plan_uplink(
            &UplinkState {
                config: self.config,
                nodes: desired.tunnel_peers.clone(),
                pod_routes: desired.pod_routes.clone(),
            },
            &self.programs.state()?,
        );
        if desired.keep_pod_routes {
            // The kept routes lead into these entries: without them the
            // node would stop encapsulating until BGP relearns the routes.
            plan.remove_pod_routes.clear();
        }
        if !plan.is_empty() {
            tracing::info!(
                config = ?plan.config,
                add_nodes = ?plan.add_nodes,
                set_pod_routes = ?plan.set_pod_routes,
                remove_nodes = ?plan.remove_nodes,
                remove_pod_routes = ?plan.remove_pod_routes,
                "uplink maps"
            );
        }
        self.programs.apply_writes(&plan)?;
        out.uplink_entries_written += plan.writes();
        if !self.attached {
            self.programs.attach(&self.uplink)?;
            // Mode vxlan: pod traffic leaves through the vxlan device (made
            // earlier in the pass), where the uplink sees only its outer
            // packets; the deferred egress policy runs there.
            if self.encap == Encap::Vxlan {
                self.programs.attach_tunnel(vxlan::DEVICE_NAME)?;
            }
            self.attached = true;
        }
        self.plan = Some(plan);
        Ok(())
    }

    async fn remove(&mut self, out: &mut Flushed) -> Result<(), ReconcileError> {
        if let Some(plan) = self.plan.take() {
            self.programs.apply_removals(&plan)?;
            out.uplink_entries_removed += plan.removals();
        }
        if self.other_modes_cleared {
            return Ok(());
        }
        if self.encap != Encap::Vxlan && self.netlink.delete_vxlan(vxlan::DEVICE_NAME).await? {
            tracing::info!("removed the vxlan device of an earlier mode");
        }
        self.other_modes_cleared = true;
        Ok(())
    }
}

/// [`Slice::Vxlan`]: the vxlan device's FDB and neighbour entries (mode
/// `vxlan`, once the device exists).
pub struct VxlanDriver {
    netlink: Netlink,
    pub ifindex: Option<u32>,
}

impl VxlanDriver {
    pub fn new(netlink: Netlink) -> VxlanDriver {
        VxlanDriver {
            netlink,
            ifindex: None,
        }
    }

    async fn write(&mut self, desired: &DesiredState) -> Result<(), ReconcileError> {
        if let Some(ifindex) = self.ifindex {
            self.netlink
                .sync_vxlan_peers(ifindex, &desired.vxlan_peers)
                .await?;
        }
        Ok(())
    }
}

/// [`Slice::Routes`]: Weft's routes, installed and replaced in the write
/// phase, removed in the removal phase.
pub struct RoutesDriver {
    pub table: RouteTable,
    /// Weft's routes as last applied; `None`: read them first.
    actual: Option<Vec<Route>>,
    /// Between the two phases: the plan, and the routes the kernel holds
    /// once its removals are done.
    plan: Option<(RoutePlan, Vec<Route>)>,
}

impl RoutesDriver {
    pub fn new(table: RouteTable) -> RoutesDriver {
        RoutesDriver {
            table,
            actual: None,
            plan: None,
        }
    }

    async fn write(
        &mut self,
        desired: &DesiredState,
        full: bool,
        out: &mut Flushed,
    ) -> Result<(), ReconcileError> {
        let actual = match self.actual.take() {
            Some(actual) if !full => actual,
            _ => self.table.owned().await?,
        };
        let plan = route::plan(&desired.routes, &actual);
        if !plan.upsert.is_empty() {
            tracing::info!(install = ?plan.upsert, "routes");
            self.table.install(&plan.upsert).await?;
        }
        out.routes_installed += plan.upsert.len();
        self.plan = Some((plan, desired.routes.clone()));
        Ok(())
    }

    async fn remove(&mut self, out: &mut Flushed) -> Result<(), ReconcileError> {
        let Some((plan, after)) = self.plan.take() else {
            return Ok(());
        };
        if !plan.remove.is_empty() {
            tracing::info!(remove = ?plan.remove, "routes");
            self.table.remove(&plan.remove).await?;
        }
        out.routes_removed += plan.remove.len();
        self.actual = Some(after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the order drivers were called in.
    #[derive(Default)]
    struct Fake {
        calls: Vec<(&'static str, Slice)>,
        fail_on: Option<(&'static str, Slice)>,
    }

    impl Fake {
        fn call(&mut self, what: &'static str, slice: Slice) -> Result<(), ReconcileError> {
            self.calls.push((what, slice));
            if self.fail_on == Some((what, slice)) {
                return Err(ReconcileError::Injected);
            }
            Ok(())
        }
    }

    impl Drivers for Fake {
        async fn write(
            &mut self,
            slice: Slice,
            _: &DesiredState,
            _: bool,
            _: &mut Flushed,
        ) -> Result<(), ReconcileError> {
            self.call("write", slice)
        }
        async fn remove(
            &mut self,
            slice: Slice,
            _: &DesiredState,
            _: &mut Flushed,
        ) -> Result<(), ReconcileError> {
            self.call("remove", slice)
        }
    }

    fn run(fake: &mut Fake, slices: Slices) -> Result<Flushed, ReconcileError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(flush(fake, &DesiredState::default(), slices, false))
    }

    #[test]
    fn writes_in_flush_order_then_removals_in_reverse() {
        let mut fake = Fake::default();
        run(&mut fake, Slices::ALL).unwrap();
        use Slice::*;
        assert_eq!(
            fake.calls,
            [
                ("write", Policy),
                ("write", Endpoints),
                ("write", Tunnel),
                ("write", Vxlan),
                ("write", Routes),
                ("remove", Routes),
                ("remove", Vxlan),
                ("remove", Tunnel),
                ("remove", Endpoints),
                ("remove", Policy),
            ]
        );
    }

    #[test]
    fn only_the_touched_slices_are_flushed() {
        let mut fake = Fake::default();
        let slices: Slices = [Slice::Routes, Slice::Endpoints].into_iter().collect();
        run(&mut fake, slices).unwrap();
        use Slice::*;
        assert_eq!(
            fake.calls,
            [
                ("write", Endpoints),
                ("write", Routes),
                ("remove", Routes),
                ("remove", Endpoints)
            ]
        );
    }

    #[test]
    fn a_failed_write_removes_nothing() {
        // A route that could not be installed must not see the guard
        // entries or tunnel state it leads into removed.
        let mut fake = Fake {
            fail_on: Some(("write", Slice::Routes)),
            ..Fake::default()
        };
        assert!(run(&mut fake, Slices::ALL).is_err());
        assert!(fake.calls.iter().all(|(what, _)| *what == "write"));
    }
}
