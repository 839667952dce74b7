//! The agent's node: its stores and the reconciler that makes the kernel
//! match the desired state.
//!
//! Every change (a CNI call, a datastore event, the resync timer) ends in
//! [`Node::reconcile`], which reads everything afresh, computes the desired
//! state ([`crate::calc`]) and applies the difference. It is idempotent and
//! is also what adopts a previous run's kernel state at start-up.
//!
//! Apply order (the flush contract, as in Calico's Felix): guard map entries
//! and attachments before the routes that lead to the pods; then routes;
//! removals in reverse (routes, then map entries, then leftover links).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use weft_dataplane::bpf::PodGuard;
use weft_dataplane::link::Netlink;
use weft_dataplane::names::{HOST_IFNAME_PREFIX, is_host_ifname};
use weft_dataplane::route::{self, RouteTable};
use weft_dataplane::uplink::Uplink;

use crate::calc::{self, ClusterView};
use weft_datastore::{self as datastore, Datastore, EndpointRecord, NodeRecord};
use weft_datastore::fsutil;
use crate::ipam::Ipam;

/// The kernel-facing handles, used by one reconcile pass at a time.
pub struct Dataplane {
    pub routes: RouteTable,
    pub netlink: Netlink,
    pub guard: PodGuard,
    /// Host veths (name, ifindex) known to carry the guard. Cleared on each
    /// timed resync, so an attachment removed behind the agent's back is
    /// found and restored.
    attached: BTreeSet<(String, u32)>,
}

impl Dataplane {
    pub fn new(routes: RouteTable, netlink: Netlink, guard: PodGuard) -> Dataplane {
        Dataplane { routes, netlink, guard, attached: BTreeSet::new() }
    }
}

/// What a pass changed, for logs and for CNI GC's reply.
#[derive(Debug, Default)]
pub struct PassReport {
    pub routes_installed: usize,
    pub routes_removed: usize,
    pub guard_removed: usize,
    pub links_removed: Vec<String>,
    pub problems: Vec<String>,
}

pub struct Node {
    pub me: NodeRecord,
    pub uplink: Uplink,
    pub mtu: u32,
    pub ipam: Ipam,
    pub datastore: Datastore,
    /// This node's endpoint records: the agent's own source of truth,
    /// published to the datastore by each pass.
    pub endpoints_dir: PathBuf,
    pub dataplane: tokio::sync::Mutex<Dataplane>,
    ready: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    #[error(transparent)]
    Datastore(#[from] datastore::DatastoreError),
    #[error(transparent)]
    Route(#[from] route::RouteError),
    #[error(transparent)]
    Link(#[from] weft_dataplane::link::LinkError),
    #[error(transparent)]
    Bpf(#[from] weft_dataplane::bpf::BpfError),
    #[error("endpoint record {path}: {source}")]
    Record { path: PathBuf, source: std::io::Error },
}

impl Node {
    pub fn new(
        me: NodeRecord,
        uplink: Uplink,
        mtu: u32,
        ipam: Ipam,
        datastore: Datastore,
        endpoints_dir: PathBuf,
        dataplane: Dataplane,
    ) -> Node {
        Node {
            me,
            uplink,
            mtu,
            ipam,
            datastore,
            endpoints_dir,
            dataplane: tokio::sync::Mutex::new(dataplane),
            ready: AtomicBool::new(false),
        }
    }

    /// Ready once a pass has succeeded: the kernel matches the state adopted at start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn local_endpoints(&self) -> Result<Vec<EndpointRecord>, ReconcileError> {
        Ok(datastore::read_records(&self.endpoints_dir)?)
    }

    pub fn local_endpoint(&self, key: &str) -> Result<Option<EndpointRecord>, ReconcileError> {
        Ok(self.local_endpoints()?.into_iter().find(|e| e.key() == key))
    }

    pub fn save_endpoint(&self, ep: &EndpointRecord) -> Result<(), ReconcileError> {
        let path = self.endpoints_dir.join(format!("{}.json", ep.key()));
        let body = serde_json::to_vec_pretty(ep).expect("records serialize");
        fsutil::write_atomic(&path, &body).map_err(|source| ReconcileError::Record { path, source })
    }

    pub fn forget_endpoint(&self, key: &str) -> Result<(), ReconcileError> {
        let path = self.endpoints_dir.join(format!("{key}.json"));
        fsutil::remove_if_exists(&path).map_err(|source| ReconcileError::Record { path, source })
    }

    /// One level-triggered pass. `full` re-verifies every guard attachment
    /// (the timed resync); event-driven passes trust what this process attached.
    pub async fn reconcile(&self, full: bool) -> Result<PassReport, ReconcileError> {
        let mut dp = self.dataplane.lock().await;
        if full {
            dp.attached.clear();
        }
        let mut report = PassReport::default();

        let nodes = self.datastore.nodes()?;
        let endpoints = self.local_endpoints()?;
        // Only pod veths: other Weft devices (tunnels) share the prefix.
        let links: BTreeMap<String, u32> = dp
            .netlink
            .links_with_prefix(HOST_IFNAME_PREFIX)
            .await?
            .into_iter()
            .filter(|(name, _)| is_host_ifname(name))
            .collect();
        let claims = self.ipam.claims();
        let desired = calc::desired_state(&ClusterView {
            me: &self.me,
            uplink_ifindex: self.uplink.ifindex,
            uplink_subnet: self.uplink.address,
            nodes: &nodes,
            endpoints: &endpoints,
            links: &links,
            claims: &claims,
        });
        report.problems = desired.problems.clone();

        // 1. Guard entries, then the guard on each pod's veth.
        for (ifindex, ip) in &desired.guard {
            dp.guard.set_endpoint(*ifindex, *ip)?;
        }
        for name in &desired.guarded_links {
            let ifindex = links[name];
            if dp.attached.contains(&(name.clone(), ifindex)) {
                continue;
            }
            dp.guard.attach(name)?;
            dp.attached.insert((name.clone(), ifindex));
        }

        // 2. Routes: install and replace, then remove.
        let actual = dp.routes.owned().await?;
        let plan = route::plan(&desired.routes, &actual);
        if !plan.is_empty() {
            tracing::info!(install = ?plan.upsert, remove = ?plan.remove, "routes");
            dp.routes.apply(&plan).await?;
        }
        report.routes_installed = plan.upsert.len();
        report.routes_removed = plan.remove.len();

        // 3. Removals in reverse: guard entries of gone pods, then leftover veths.
        let stale_entries: Vec<(u32, Ipv4Addr)> =
            dp.guard.endpoints()?.into_iter().filter(|(i, _)| !desired.guard.contains_key(i)).collect();
        for (ifindex, ip) in &stale_entries {
            tracing::info!(ifindex, %ip, "removing guard entry of a gone endpoint");
            dp.guard.remove_endpoint(*ifindex)?;
        }
        report.guard_removed = stale_entries.len();
        for name in &desired.stale_links {
            tracing::info!(link = %name, "removing a host veth no attachment claims");
            dp.netlink.delete_link(name).await?;
            report.links_removed.push(name.clone());
        }
        dp.attached.retain(|(name, i)| links.get(name) == Some(i));

        // 4. Publish this node and its endpoints for the other nodes.
        self.publish(&nodes, &endpoints)?;

        for problem in &report.problems {
            tracing::warn!("{problem}");
        }
        self.ready.store(true, Ordering::Release);
        Ok(report)
    }

    fn publish(&self, nodes: &[NodeRecord], endpoints: &[EndpointRecord]) -> Result<(), ReconcileError> {
        if !nodes.contains(&self.me) {
            self.datastore.put_node(&self.me)?;
        }
        let published = self.datastore.endpoints(&self.me.name)?;
        for ep in endpoints {
            if !published.contains(ep) {
                self.datastore.put_endpoint(ep)?;
            }
        }
        let local: BTreeSet<String> = endpoints.iter().map(EndpointRecord::key).collect();
        for ep in published.iter().filter(|p| !local.contains(&p.key())) {
            self.datastore.delete_endpoint(&self.me.name, &ep.key())?;
        }
        Ok(())
    }
}
