//! The agent's node: its stores, its indexes of the cluster, and the pass
//! that makes the kernel match the desired state.
//!
//! Changes arrive as events (a CNI call, a cluster source's change, a BGP
//! update); each marks the dataplane slices it touches, and a pass
//! computes the desired state ([`weft_calc`]) and flushes only those
//! slices ([`crate::drivers`]). The timed resync runs a full pass: it
//! takes a new snapshot of the cluster, reads the kernel again and flushes
//! every slice, which also adopts a previous run's state at start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use weft_calc::lifecycle;
use weft_calc::restart::KeptRoutes;
use weft_calc::routing::{self, Learned, Topology, WantedPeer};
use weft_calc::{Cluster, ClusterView, Problem, Remote, Slice, Slices, Touched};
use weft_common::maps::NodeConfig;
use weft_dataplane::names::{HOST_IFNAME_PREFIX, is_host_ifname};
use weft_dataplane::route;
use weft_dataplane::uplink::Uplink;
use weft_dataplane::vxlan;
use weft_datastore::{self as datastore, ClusterSource, SourceEvent, fsutil};
use weft_model::{Change, Encap, EndpointRecord, NodeRecord, Object, ObjectId, Snapshot};

use crate::drivers::{self, Flushed, KernelDrivers};
use crate::ipam::Ipam;

/// What a pass changed, for logs and for CNI GC's reply.
#[derive(Debug, Default)]
pub struct PassReport {
    pub flushed: Flushed,
    pub problems: Vec<Problem>,
}

/// The route distributor, in routing mode `bgp`.
pub struct Bgp {
    pub handle: weft_bgp::shell::BgpHandle,
    pub as_number: u32,
    pub route_reflectors: Vec<String>,
    /// BGP routes a previous run left in the kernel, kept over the restart.
    pub kept: Mutex<Option<KeptRoutes>>,
    /// The speaker has been told this node's peers: before that it is
    /// "synchronized" with no peer at all, which must not end a restart.
    pub peers_configured: AtomicBool,
    /// The peers wanted by the last pass, for operators (where each came from).
    pub wanted: Mutex<Vec<WantedPeer>>,
}

/// How this node carries pod traffic between nodes (the agent's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelOptions {
    pub encap: Encap,
    /// `--cross-subnet`.
    pub cross_subnet: bool,
    /// `--direct-redirect`: decapsulated packets for local pods go straight
    /// into the pod.
    pub direct_redirect: bool,
    /// `--service-cluster-ip-range`: where kube-proxy DNATs, so where the
    /// pod veths defer a sender's egress policy to after the DNAT.
    pub service_range: ipnetwork::Ipv4Network,
}

/// Where the node's facts come from, as `weftctl status` shows them.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// `local` or `kubernetes`.
    pub datastore: String,
    /// Why the node address is the one it is.
    pub address_reason: String,
}

/// What passes read and write, one pass at a time.
pub struct PassState {
    pub drivers: KernelDrivers,
    /// The cluster as the source reported it.
    cluster: Cluster,
    /// Weft's host veths in the kernel, name → ifindex: dumped by a full
    /// pass, kept up to date one link at a time by CNI calls.
    links: BTreeMap<String, u32>,
    /// What events touched since the last pass.
    pending: Touched,
    /// Something BGP reported since the last pass.
    bgp_changed: bool,
    /// What the last passes found, reused by passes that do not touch them.
    learned: Vec<(ipnetwork::Ipv4Network, Ipv4Addr)>,
    bgp_problems: Vec<Problem>,
    kept: Vec<route::Route>,
    underlay_next_hops: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The last policy compilation's problems, reported by every pass.
    policy_problems: Vec<Problem>,
    /// The last policy compilation's identities, kept for the same peers
    /// by the next one.
    policy_identities: Option<weft_calc::policy::Identities>,
    /// Local endpoints the last compilation failed closed, with why.
    policy_failed_closed: BTreeMap<Ipv4Addr, String>,
    /// What the source holds of this node's endpoints, as far as this
    /// agent knows (read at every full pass, kept as it publishes).
    published: BTreeMap<String, EndpointRecord>,
    /// The problems of the last desired state, reported again by passes
    /// with nothing to flush: a concurrent CNI call's pass may have done
    /// this call's work, and its verdict must still reach this call.
    problems: Vec<Problem>,
}

impl PassState {
    /// The identities the last policy compilation handed out.
    pub fn policy_identities(&self) -> Option<&weft_calc::policy::Identities> {
        self.policy_identities.as_ref()
    }

    /// Local endpoints the last policy compilation failed closed, with why.
    pub fn policy_failed_closed(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.policy_failed_closed
    }
}

pub struct Node {
    pub me: NodeRecord,
    pub uplink: Uplink,
    pub mtu: u32,
    pub tunnel: TunnelOptions,
    pub ipam: Ipam,
    pub source: Box<dyn ClusterSource>,
    /// This node's endpoint records: the agent's own source of truth,
    /// published to the cluster source.
    pub endpoints_dir: PathBuf,
    /// The records of `endpoints_dir`, in memory.
    local: Mutex<BTreeMap<String, EndpointRecord>>,
    pub state: tokio::sync::Mutex<PassState>,
    /// `None` in routing mode `static`.
    pub bgp: Option<Bgp>,
    /// Where the cluster is read from and why the node address is what
    /// it is, for operators.
    pub origin: Origin,
    ready: AtomicBool,
    /// The digest of the policy inputs whose maps are programmed (see
    /// [`weft_calc::policy::digest`]); `None` before the first.
    policy_digest: Mutex<Option<String>>,
}

/// Why a local pod's labels and ports cannot be had from its Pod object.
#[derive(Debug, thiserror::Error)]
pub enum PodMetadataError {
    #[error(
        "CNI_ARGS names no pod (K8S_POD_NAMESPACE and K8S_POD_NAME): with --datastore \
         kubernetes a pod's labels, which policies select it by, come from its Pod object"
    )]
    NotNamed,
    #[error(
        "Pod {pod} is not known to the agent's watch of the API server after {waited:?}: \
         its labels, which policies select it by, are unknown"
    )]
    Unknown {
        pod: String,
        waited: std::time::Duration,
    },
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
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BGP speaker: {0}")]
    Bgp(#[from] weft_bgp::shell::ShellError),
    #[error(transparent)]
    Vxlan(#[from] vxlan::VxlanError),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// A failure a unit test injects into a fake driver.
    #[cfg(test)]
    #[error("injected failure")]
    Injected,
}

impl Node {
    /// The node from its parts, each opened by main (which reports which
    /// one failed to start).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeRecord,
        uplink: Uplink,
        mtu: u32,
        tunnel: TunnelOptions,
        ipam: Ipam,
        source: Box<dyn ClusterSource>,
        endpoints_dir: PathBuf,
        drivers: KernelDrivers,
        bgp: Option<Bgp>,
        origin: Origin,
    ) -> Result<Node, ReconcileError> {
        let local = datastore::read_records::<EndpointRecord>(&endpoints_dir)?
            .into_iter()
            .map(|e| (e.key(), e))
            .collect();
        Ok(Node {
            me,
            uplink,
            mtu,
            tunnel,
            ipam,
            source,
            endpoints_dir,
            local: Mutex::new(local),
            state: tokio::sync::Mutex::new(PassState {
                drivers,
                cluster: Cluster::default(),
                links: BTreeMap::new(),
                pending: Touched::NOTHING,
                bgp_changed: true,
                learned: Vec::new(),
                bgp_problems: Vec::new(),
                kept: Vec::new(),
                underlay_next_hops: BTreeMap::new(),
                problems: Vec::new(),
                published: BTreeMap::new(),
                policy_problems: Vec::new(),
                policy_identities: None,
                policy_failed_closed: BTreeMap::new(),
            }),
            bgp,
            origin,
            ready: AtomicBool::new(false),
            policy_digest: Mutex::new(None),
        })
    }

    /// Ready once a pass has succeeded: the kernel matches the state adopted at start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The digest of the policy inputs whose maps are programmed.
    pub fn policy_digest(&self) -> Option<String> {
        self.policy_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EndpointRecord>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_endpoints(&self) -> Vec<EndpointRecord> {
        self.local().values().cloned().collect()
    }

    pub fn local_endpoint(&self, key: &str) -> Option<EndpointRecord> {
        self.local().get(key).cloned()
    }

    /// Records a local endpoint (file, then memory, under one lock so a
    /// concurrent change cannot leave the two apart) and marks what it
    /// touches; its host veth is looked up by name, one link.
    pub async fn save_endpoint(&self, ep: &EndpointRecord) -> Result<(), ReconcileError> {
        self.write_endpoint(&mut self.local(), ep)?;
        self.endpoint_touched(
            &ep.host_ifname,
            Change::Upsert(Object::Endpoint(ep.clone())),
        )
        .await
    }

    fn write_endpoint(
        &self,
        local: &mut BTreeMap<String, EndpointRecord>,
        ep: &EndpointRecord,
    ) -> Result<(), ReconcileError> {
        let path = self.endpoints_dir.join(format!("{}.json", ep.key()));
        let body = serde_json::to_vec_pretty(ep).expect("records serialize");
        fsutil::write_atomic(&path, &body)
            .map_err(|source| ReconcileError::Record { path, source })?;
        local.insert(ep.key(), ep.clone());
        Ok(())
    }

    /// Forgets a local endpoint; `false` if there was none.
    pub async fn forget_endpoint(&self, key: &str) -> Result<bool, ReconcileError> {
        let removed = {
            let mut local = self.local();
            let path = self.endpoints_dir.join(format!("{key}.json"));
            fsutil::remove_if_exists(&path)
                .map_err(|source| ReconcileError::Record { path, source })?;
            local.remove(key)
        };
        let Some(ep) = removed else {
            return Ok(false);
        };
        let gone = Change::Delete(ObjectId::Endpoint {
            node: ep.node.clone(),
            key: ep.key(),
        });
        self.endpoint_touched(&ep.host_ifname, gone).await?;
        Ok(true)
    }

    /// How long a CNI ADD waits for its Pod to reach this agent's watch:
    /// kubelet creates the sandbox only after it has seen the Pod, so the
    /// agent's own watch is rarely far behind.
    const POD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// `ep` with the labels and ports its Pod object gives it, where the
    /// source owns them (Kubernetes); as it is otherwise.
    pub async fn with_pod_metadata(
        &self,
        mut ep: EndpointRecord,
    ) -> Result<EndpointRecord, PodMetadataError> {
        if !self.source.owns_pod_metadata() {
            return Ok(ep);
        }
        if ep.pod_namespace.is_empty() || ep.pod_name.is_empty() {
            return Err(PodMetadataError::NotNamed);
        }
        let deadline = Instant::now() + Self::POD_WAIT;
        loop {
            if let Some(meta) = self.source.pod_metadata(&ep.pod_namespace, &ep.pod_name) {
                ep.labels = meta.labels;
                ep.ports = meta.ports;
                return Ok(ep);
            }
            if Instant::now() >= deadline {
                return Err(PodMetadataError::Unknown {
                    pod: format!("{}/{}", ep.pod_namespace, ep.pod_name),
                    waited: Self::POD_WAIT,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Where the source owns pods' labels and ports, takes them into this
    /// node's endpoint records; returns the changes to the cluster. A pod
    /// the source no longer knows keeps its last labels until its CNI DEL.
    fn adopt_pod_metadata(&self) -> Vec<Change> {
        if !self.source.owns_pod_metadata() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let mut local = self.local();
        let stale: Vec<EndpointRecord> = local
            .values()
            .filter_map(|ep| {
                let meta = self.source.pod_metadata(&ep.pod_namespace, &ep.pod_name)?;
                (meta.labels != ep.labels || meta.ports != ep.ports).then(|| EndpointRecord {
                    labels: meta.labels,
                    ports: meta.ports,
                    ..ep.clone()
                })
            })
            .collect();
        for ep in stale {
            match self.write_endpoint(&mut local, &ep) {
                Ok(()) => {
                    tracing::info!(pod = %format!("{}/{}", ep.pod_namespace, ep.pod_name), labels = ?ep.labels, "endpoint labels and ports from its Pod");
                    changes.push(Change::Upsert(Object::Endpoint(ep)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the Pod's labels; retried on the next pass")
                }
            }
        }
        changes
    }

    /// A local endpoint or its veth changed (`change`): refresh that one
    /// link, and take the change into the cluster's indexes at once (this
    /// agent is the authority on its endpoints; the source's echo of it is
    /// ignored), so the next pass programs everything about the endpoint,
    /// policy included, before its CNI call returns.
    async fn endpoint_touched(
        &self,
        host_ifname: &str,
        change: Change,
    ) -> Result<(), ReconcileError> {
        let mut st = self.state.lock().await;
        let touched = st.cluster.apply(change);
        st.pending = st.pending.union(touched);
        let link = st.drivers.endpoints.netlink.link(host_ifname).await?;
        match link {
            Some(link) => st.links.insert(host_ifname.to_string(), link.index),
            None => st.links.remove(host_ifname),
        };
        st.pending = st.pending.union(Touched {
            slices: Slices::of(Slice::Endpoints).with(Slice::Routes),
            bgp_peers: false,
        });
        Ok(())
    }

    /// Applies what a cluster source reported.
    pub async fn cluster_events(&self, events: Vec<SourceEvent>) -> Result<(), ReconcileError> {
        let mut st = self.state.lock().await;
        for event in events {
            let touched = match event {
                // The source's own view of a local pod: only its labels
                // and ports, where the source owns them, are news.
                SourceEvent::Changed(change) if self.is_own_endpoint(&change) => {
                    let mut touched = Touched::NOTHING;
                    for change in self.adopt_pod_metadata() {
                        touched = touched.union(st.cluster.apply(change));
                    }
                    touched
                }
                SourceEvent::Changed(change) => st.cluster.apply(change),
                SourceEvent::Resync => {
                    let snapshot = self.source.snapshot()?;
                    self.reset_cluster(&mut st, snapshot)
                }
            };
            st.pending = st.pending.union(touched);
        }
        Ok(())
    }

    /// Whether `change` is about one of this node's endpoints: the source
    /// only echoes what this agent published (or lags behind it).
    fn is_own_endpoint(&self, change: &Change) -> bool {
        match change {
            Change::Upsert(Object::Endpoint(ep)) => ep.node == self.me.name,
            Change::Delete(ObjectId::Endpoint { node, .. }) => *node == self.me.name,
            _ => false,
        }
    }

    /// Takes a snapshot of the source into the indexes, with this node's
    /// endpoints as the agent holds them; remembers what the source holds
    /// of them, for [`Node::publish`].
    fn reset_cluster(&self, st: &mut PassState, mut snapshot: Snapshot) -> Touched {
        let (own, others): (Vec<EndpointRecord>, Vec<EndpointRecord>) = snapshot
            .endpoints
            .into_iter()
            .partition(|e| e.node == self.me.name);
        st.published = own.into_iter().map(|e| (e.key(), e)).collect();
        snapshot.endpoints = others;
        self.adopt_pod_metadata();
        snapshot.endpoints.extend(self.local_endpoints());
        st.cluster.reset(snapshot)
    }

    /// BGP's routes or peers changed.
    pub async fn bgp_event(&self) {
        let mut st = self.state.lock().await;
        st.bgp_changed = true;
    }

    /// One level-triggered pass. `full` (the timed resync, start-up)
    /// re-reads the cluster and the kernel and flushes every slice; an
    /// event pass flushes what events touched since the last pass.
    pub async fn reconcile(&self, full: bool) -> Result<PassReport, ReconcileError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let pending = std::mem::replace(&mut st.pending, Touched::NOTHING);
        let bgp_changed = std::mem::replace(&mut st.bgp_changed, false);
        let started = Instant::now();
        let result = self.pass(st, full, pending, bgp_changed).await;
        tracing::debug!(
            full,
            took_us = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "pass done"
        );
        if result.is_err() {
            // What this pass did not get done stays for the next one.
            st.pending = st.pending.union(pending);
            st.bgp_changed |= bgp_changed;
        }
        result
    }

    async fn pass(
        &self,
        st: &mut PassState,
        full: bool,
        pending: Touched,
        bgp_changed: bool,
    ) -> Result<PassReport, ReconcileError> {
        if full {
            let snapshot = self.source.snapshot()?;
            self.reset_cluster(st, snapshot);
            // Only pod veths: other Weft devices (tunnels) share the prefix.
            st.links = st
                .drivers
                .endpoints
                .netlink
                .links_with_prefix(HOST_IFNAME_PREFIX)
                .await?
                .into_iter()
                .filter(|(name, _)| is_host_ifname(name))
                .collect();
        }
        let mut slices = if full { Slices::ALL } else { pending.slices };
        // What BGP learned changes the routes and the tunnel's map.
        if bgp_changed && self.bgp.is_some() {
            slices = slices.with(Slice::Routes).with(Slice::Tunnel);
        }
        let mut report = PassReport::default();
        if slices.is_empty() && !pending.bgp_peers {
            report.problems = st.problems.clone();
            return Ok(report);
        }

        let nodes = st.cluster.nodes();
        // Next hops and learned routes change with nodes and BGP, which
        // touch the tunnel; endpoint events reuse the last ones.
        if slices.contains(Slice::Tunnel) {
            st.underlay_next_hops = self.underlay_next_hops(st, &nodes).await?;
        }
        if let Some(bgp) = &self.bgp
            && slices.contains(Slice::Tunnel)
        {
            let tunnelled = weft_calc::desired::tunnel_reachable(
                self.tunnel.encap,
                &weft_calc::desired::off_subnet_nodes(&self.me, &nodes, self.uplink.address),
                &st.underlay_next_hops,
            );
            (st.learned, st.bgp_problems) = self.learned_routes(bgp, &tunnelled).await?;
            st.kept = self.kept_routes(bgp).await?;
        }
        // The vxlan device before the routes into it.
        if self.tunnel.encap == Encap::Vxlan && (full || st.drivers.vxlan.ifindex.is_none()) {
            st.drivers.vxlan.ifindex = Some(
                st.drivers
                    .endpoints
                    .netlink
                    .ensure_vxlan(&self.vxlan_spec())
                    .await?,
            );
        }
        let endpoints = self.local_endpoints();
        let claimed_links = self.ipam.claimed_links();
        let remote = if self.bgp.is_some() {
            Remote::Learned(&st.learned)
        } else {
            Remote::NodeRecords
        };
        let mut desired = weft_calc::desired_state(&ClusterView {
            me: &self.me,
            uplink_ifindex: self.uplink.ifindex,
            uplink_subnet: self.uplink.address,
            underlay_next_hops: &st.underlay_next_hops,
            nodes: &nodes,
            remote,
            endpoints: &endpoints,
            links: &st.links,
            claimed_links: &claimed_links,
            encap: self.tunnel.encap,
            cross_subnet: self.tunnel.cross_subnet,
            pod_mtu: self.mtu,
            vxlan_ifindex: st.drivers.vxlan.ifindex,
            kept: &st.kept,
        });
        // Policy reads the whole cluster: compiled only when it is flushed.
        let mut policy_digest = None;
        if slices.contains(Slice::Policy) {
            policy_digest = Some(weft_calc::policy::digest::cluster_digest(&st.cluster));
            desired.policy = weft_calc::policy::compile_cluster(
                &st.cluster,
                &self.me,
                st.policy_identities.as_ref(),
            );
            st.policy_problems = desired.policy.problems.clone();
            st.policy_identities = Some(desired.policy.identities.clone());
            for (address, why) in &desired.policy.failed_closed {
                if !st.policy_failed_closed.contains_key(address) {
                    tracing::error!(%address, "endpoint fails closed, denied everything: {why}");
                }
            }
            st.policy_failed_closed = (desired.policy.failed_closed.iter())
                .map(|(address, why)| (*address, why.to_string()))
                .collect();
        }
        report.problems = desired.problems.clone();
        report.problems.extend(st.bgp_problems.iter().cloned());
        report.problems.extend(st.policy_problems.iter().cloned());
        st.problems = report.problems.clone();

        report.flushed = drivers::flush(&mut st.drivers, &desired, slices, full).await?;
        if let Some(digest) = policy_digest {
            // The maps hold that compilation now.
            *self.policy_digest.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        }
        for name in &report.flushed.links_removed {
            st.links.remove(name);
        }
        tracing::debug!(?slices, flushed = ?report.flushed, "pass");

        // Publish this node and its endpoints for the other nodes.
        self.publish(st, &endpoints)?;
        if full {
            self.release_leaked(&st.links, &endpoints)?;
        }

        // Peers last: a connection opened before the uplink's programs are
        // attached loses its ARP requests while tc's clsact qdisc is being
        // added (the kernel asks again only a second later), and one
        // opened before this node is published is refused by peers that
        // do not know it yet. The peers change no route of this pass.
        if let Some(bgp) = &self.bgp
            && (full || pending.bgp_peers)
        {
            self.set_bgp_peers(bgp, &nodes, &st.cluster).await?;
        }

        for problem in &report.problems {
            tracing::warn!("{problem}");
        }
        self.ready.store(true, Ordering::Release);
        Ok(report)
    }

    /// In `ipip`, for each other node off the uplink's subnet, the next hop
    /// the kernel routes its underlay address via
    /// ([`weft_calc::desired::underlay_next_hop`] decides).
    async fn underlay_next_hops(
        &self,
        st: &PassState,
        nodes: &[NodeRecord],
    ) -> Result<BTreeMap<Ipv4Addr, Ipv4Addr>, ReconcileError> {
        let mut out = BTreeMap::new();
        if self.tunnel.encap != Encap::Ipip {
            return Ok(out);
        }
        for node in weft_calc::desired::off_subnet_nodes(&self.me, nodes, self.uplink.address) {
            let route = st.drivers.routes.table.route_to(node).await?;
            let route = route.map(|to| (to.oif, to.gateway));
            match weft_calc::desired::underlay_next_hop(node, route, self.uplink.ifindex) {
                Some(via) => {
                    out.insert(node, via);
                }
                None => tracing::debug!(%node, ?route, "no underlay route via the uplink"),
            }
        }
        Ok(out)
    }

    /// Tells the speaker which peers this node wants (level-triggered: the
    /// whole set).
    async fn set_bgp_peers(
        &self,
        bgp: &Bgp,
        nodes: &[NodeRecord],
        cluster: &Cluster,
    ) -> Result<(), ReconcileError> {
        let topology = Topology {
            as_number: bgp.as_number,
            route_reflectors: &bgp.route_reflectors,
        };
        let wanted = routing::wanted_peers(&self.me, &topology, nodes, &cluster.bgp_peers());
        let specs = wanted
            .iter()
            .map(|w| weft_bgp::shell::PeerSpec {
                config: weft_bgp::speaker::PeerConfig {
                    address: w.address,
                    asn: w.asn,
                    local_address: self.me.underlay_ip,
                    rr_client: w.rr_client,
                    passive: w.passive,
                },
                password: w.password.clone(),
            })
            .collect();
        bgp.handle.set_peers(specs).await?;
        *bgp.wanted.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
        bgp.peers_configured.store(true, Ordering::Release);
        Ok(())
    }

    /// The learned routes the kernel may get, and why others may not.
    async fn learned_routes(
        &self,
        bgp: &Bgp,
        tunnelled: &BTreeSet<Ipv4Addr>,
    ) -> Result<(Vec<(ipnetwork::Ipv4Network, Ipv4Addr)>, Vec<Problem>), ReconcileError> {
        let learned: Vec<Learned> = bgp
            .handle
            .learned_routes()
            .await?
            .into_iter()
            .map(|b| Learned {
                prefix: b.prefix,
                next_hop: b.next_hop,
            })
            .collect();
        Ok(routing::installable(
            &learned,
            self.me.pod_cidr,
            self.uplink.address,
            tunnelled,
        ))
    }

    /// After a restart, the routes the previous run installed stay until
    /// the Loc-RIB is complete again, so forwarding never has a gap.
    async fn kept_routes(&self, bgp: &Bgp) -> Result<Vec<route::Route>, ReconcileError> {
        let kept = bgp.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(kept) = kept else {
            return Ok(Vec::new());
        };
        let synchronized =
            bgp.peers_configured.load(Ordering::Acquire) && bgp.handle.synchronized().await?;
        match kept.still_kept(Instant::now(), synchronized) {
            Some(routes) => Ok(routes.to_vec()),
            None => {
                tracing::info!(
                    "BGP synchronized after restart; kept routes not relearned may now go"
                );
                *bgp.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Vec::new())
            }
        }
    }

    /// Releases the addresses of ADDs that died with nobody to DEL them
    /// ([`lifecycle::is_leaked`] decides, under the allocator's lock).
    fn release_leaked(
        &self,
        links: &BTreeMap<String, u32>,
        endpoints: &[EndpointRecord],
    ) -> Result<(), ReconcileError> {
        let registered: BTreeSet<Ipv4Addr> = endpoints.iter().map(|e| e.address).collect();
        let now = SystemTime::now();
        let released = self.ipam.release_where(|held| {
            lifecycle::is_leaked(held, &registered, links, now, lifecycle::LEAK_GRACE)
        })?;
        for (ip, claim) in released {
            tracing::warn!(%ip, ?claim, grace_seconds = lifecycle::LEAK_GRACE.as_secs(), "released a leaked address: claimed by an ADD that never registered an endpoint or left a veth");
        }
        Ok(())
    }

    /// The vxlan device of mode `vxlan`, on the uplink.
    fn vxlan_spec(&self) -> vxlan::VxlanSpec {
        vxlan::VxlanSpec::new(
            self.me.underlay_ip,
            self.uplink.ifindex,
            self.uplink.mtu,
            self.me.pod_cidr,
        )
    }

    /// Makes the source hold this node and exactly its endpoints: only
    /// what differs from what the source holds is written, and what is
    /// written is recorded at once (the source's echo is then no change).
    fn publish(
        &self,
        st: &mut PassState,
        endpoints: &[EndpointRecord],
    ) -> Result<(), ReconcileError> {
        if st.cluster.node(&self.me.name) != Some(&self.me) {
            self.source.publish_node(&self.me)?;
            st.cluster
                .apply(Change::Upsert(Object::Node(self.me.clone())));
        }
        for ep in endpoints {
            if st.published.get(&ep.key()) != Some(ep) {
                self.source.publish_endpoint(ep)?;
                st.published.insert(ep.key(), ep.clone());
            }
        }
        let local: BTreeSet<String> = endpoints.iter().map(EndpointRecord::key).collect();
        let gone: Vec<String> = st
            .published
            .keys()
            .filter(|k| !local.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.source.withdraw_endpoint(&self.me.name, &key)?;
            st.published.remove(&key);
        }
        Ok(())
    }
}

/// The uplink programs' config map entry of a node whose underlay address is `underlay`,
/// on `uplink`, with `options`.
pub fn tunnel_config(underlay: Ipv4Addr, uplink: &Uplink, options: TunnelOptions) -> NodeConfig {
    let mut config = NodeConfig::new(underlay.octets(), options.encap)
        .with_uplink_mtu(u16::try_from(uplink.mtu).unwrap_or(u16::MAX));
    if let Some(subnet) = uplink.address
        && options.cross_subnet
    {
        config = config.with_cross_subnet(subnet.network().octets(), subnet.prefix());
    }
    if options.direct_redirect {
        config = config.with_direct_redirect();
    }
    config.with_service_range(
        options.service_range.network().octets(),
        options.service_range.prefix(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::maps::NODE_CONFIG_DIRECT_REDIRECT;

    #[test]
    fn tunnel_config_carries_the_flags() {
        let uplink = Uplink {
            name: "eth0".into(),
            ifindex: 2,
            mtu: 1500,
            address: Some("198.18.0.11/24".parse().unwrap()),
        };
        let underlay = Ipv4Addr::new(198, 18, 0, 11);
        let options = TunnelOptions {
            encap: Encap::Ipip,
            cross_subnet: false,
            direct_redirect: false,
            service_range: "10.96.0.0/12".parse().unwrap(),
        };
        let plain = tunnel_config(underlay, &uplink, options);
        assert_eq!(plain.encap(), Some(weft_common::maps::Encap::Ipip));
        assert!(plain.is_service([10, 96, 0, 10]) && plain.is_service([10, 111, 255, 255]));
        assert!(!plain.is_service([10, 112, 0, 0]) && !plain.is_service([10, 244, 1, 2]));
        assert_eq!(plain.uplink_mtu, 1500);
        assert_eq!(plain.flags, 0);
        let redirect = tunnel_config(
            underlay,
            &uplink,
            TunnelOptions {
                direct_redirect: true,
                ..options
            },
        );
        assert!(redirect.direct_redirect() && !redirect.cross_subnet());
        assert_eq!(redirect.flags, NODE_CONFIG_DIRECT_REDIRECT);
        let both = tunnel_config(
            underlay,
            &uplink,
            TunnelOptions {
                cross_subnet: true,
                direct_redirect: true,
                ..options
            },
        );
        assert!(both.direct_redirect() && both.cross_subnet());
        assert!(both.same_subnet([198, 18, 0, 99]));
    }
}
