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

use weft_common::maps::NodeConfig;
use weft_dataplane::bpf::{self, PodGuard, UplinkPlan, UplinkPrograms, UplinkState};
use weft_dataplane::link::Netlink;
use weft_dataplane::names::{HOST_IFNAME_PREFIX, is_host_ifname};
use weft_dataplane::route::{self, RouteTable};
use weft_dataplane::uplink::Uplink;
use weft_dataplane::vxlan;

use crate::calc::{self, ClusterView, Remote};
use crate::config::Encap;
use crate::ipam::Ipam;
use crate::routing::{self, Learned, Topology, WantedPeer};
use weft_datastore::fsutil;
use weft_datastore::{self as datastore, Datastore};
use weft_model::{EndpointRecord, NodeRecord};

/// The kernel-facing handles, used by one reconcile pass at a time.
pub struct Dataplane {
    pub routes: RouteTable,
    pub netlink: Netlink,
    pub guard: PodGuard,
    /// The uplink's programs and their maps, attached in every mode: they
    /// encapsulate in `ipip`, and in every mode let tunnels in only from
    /// nodes.
    pub tunnel: UplinkPrograms,
    /// Host veths (name, ifindex) known to carry the guard. Cleared on each
    /// timed resync, so an attachment removed behind the agent's back is
    /// found and restored.
    attached: BTreeSet<(String, u32)>,
    /// The uplink programs are known to be attached; cleared with `attached`.
    tunnel_attached: bool,
    /// What other encapsulation modes program (an earlier run's vxlan
    /// device) is known to be gone; cleared with `attached`.
    other_modes_cleared: bool,
}

impl Dataplane {
    pub fn new(
        routes: RouteTable,
        netlink: Netlink,
        guard: PodGuard,
        tunnel: UplinkPrograms,
    ) -> Dataplane {
        Dataplane {
            routes,
            netlink,
            guard,
            tunnel,
            attached: BTreeSet::new(),
            tunnel_attached: false,
            other_modes_cleared: false,
        }
    }
}

/// What a pass changed, for logs and for CNI GC's reply.
#[derive(Debug, Default)]
pub struct PassReport {
    pub routes_installed: usize,
    pub routes_removed: usize,
    pub guard_removed: usize,
    /// Entries of the uplink programs' maps (config, nodes, pod routes)
    /// written and removed: zero on a pass that changed nothing.
    pub uplink_entries_written: usize,
    pub uplink_entries_removed: usize,
    pub links_removed: Vec<String>,
    pub problems: Vec<String>,
}

/// What BGP gives a pass: learned routes (prefix, next hop), the routes a
/// previous run left that are still kept, and problems to report.
type BgpRoutes = (
    Vec<(ipnetwork::Ipv4Network, Ipv4Addr)>,
    Vec<route::Route>,
    Vec<String>,
);

/// The route distributor, in routing mode `bgp`.
pub struct Bgp {
    pub handle: weft_bgp::shell::BgpHandle,
    pub as_number: u32,
    pub route_reflectors: Vec<String>,
    /// BGP routes a previous run left in the kernel: kept until the
    /// speaker has every peer's End-of-RIB or the restart time is over
    /// (RFC 4724 section 4.1, the restarting speaker's side).
    pub kept: std::sync::Mutex<Option<(Vec<route::Route>, std::time::Instant)>>,
    /// The peers wanted by the last pass, for operators (where each came from).
    pub wanted: std::sync::Mutex<Vec<WantedPeer>>,
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
}

pub struct Node {
    pub me: NodeRecord,
    pub uplink: Uplink,
    pub mtu: u32,
    pub tunnel: TunnelOptions,
    pub ipam: Ipam,
    pub datastore: Datastore,
    /// This node's endpoint records: the agent's own source of truth,
    /// published to the datastore by each pass.
    pub endpoints_dir: PathBuf,
    pub dataplane: tokio::sync::Mutex<Dataplane>,
    /// `None` in routing mode `static`.
    pub bgp: Option<Bgp>,
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
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BGP speaker: {0}")]
    Bgp(#[from] weft_bgp::shell::ShellError),
    #[error(transparent)]
    Vxlan(#[from] vxlan::VxlanError),
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
        datastore: Datastore,
        endpoints_dir: PathBuf,
        dataplane: Dataplane,
        bgp: Option<Bgp>,
    ) -> Node {
        Node {
            me,
            uplink,
            mtu,
            tunnel,
            ipam,
            datastore,
            endpoints_dir,
            dataplane: tokio::sync::Mutex::new(dataplane),
            bgp,
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
            dp.tunnel_attached = false;
            dp.other_modes_cleared = false;
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
        let underlay_next_hops = self.underlay_next_hops(&dp, &nodes).await?;
        let tunnelled = calc::tunnel_reachable(
            self.tunnel.encap,
            &calc::off_subnet_nodes(&self.me, &nodes, self.uplink.address),
            &underlay_next_hops,
        );
        let (learned, kept, mut bgp_problems) = match &self.bgp {
            Some(bgp) => self.bgp_routes(bgp, &nodes, &tunnelled).await?,
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        // The vxlan device before the routes into it.
        let vxlan_ifindex = match self.tunnel.encap {
            Encap::Vxlan => Some(dp.netlink.ensure_vxlan(&self.vxlan_spec()).await?),
            Encap::Ipip | Encap::None => None,
        };
        let remote = if self.bgp.is_some() {
            Remote::Learned(&learned)
        } else {
            Remote::NodeRecords
        };
        let desired = calc::desired_state(&ClusterView {
            me: &self.me,
            uplink_ifindex: self.uplink.ifindex,
            uplink_subnet: self.uplink.address,
            underlay_next_hops: &underlay_next_hops,
            nodes: &nodes,
            remote,
            endpoints: &endpoints,
            links: &links,
            claims: &claims,
            encap: self.tunnel.encap,
            cross_subnet: self.tunnel.cross_subnet,
            pod_mtu: self.mtu,
            vxlan_ifindex,
            kept: &kept,
        });
        report.problems = desired.problems.clone();
        report.problems.append(&mut bgp_problems);

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

        // 1b. The tunnel's state before the routes that lead into it. The
        // uplink programs run in every mode: the config tells them which.
        // The maps are read once and only what differs is written (every
        // CNI call runs a pass); their removals wait for step 3.
        let uplink_plan = bpf::plan_uplink(
            &UplinkState {
                config: self.tunnel_config(),
                nodes: desired.tunnel_peers.clone(),
                pod_routes: desired.pod_routes.clone(),
            },
            &dp.tunnel.state()?,
        );
        if !uplink_plan.is_empty() {
            tracing::info!(
                config = ?uplink_plan.config,
                add_nodes = ?uplink_plan.add_nodes,
                set_pod_routes = ?uplink_plan.set_pod_routes,
                remove_nodes = ?uplink_plan.remove_nodes,
                remove_pod_routes = ?uplink_plan.remove_pod_routes,
                "uplink maps"
            );
        }
        tracing::debug!(
            written = uplink_plan.writes(),
            removed = uplink_plan.removals(),
            "uplink map entries"
        );
        dp.tunnel.apply_writes(&uplink_plan)?;
        report.uplink_entries_written = uplink_plan.writes();
        if !dp.tunnel_attached {
            dp.tunnel.attach(&self.uplink.name)?;
            dp.tunnel_attached = true;
        }
        if let Some(ifindex) = vxlan_ifindex {
            dp.netlink
                .sync_vxlan_peers(ifindex, &desired.vxlan_peers)
                .await?;
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
        let stale_entries: Vec<(u32, Ipv4Addr)> = dp
            .guard
            .endpoints()?
            .into_iter()
            .filter(|(i, _)| !desired.guard.contains_key(i))
            .collect();
        for (ifindex, ip) in &stale_entries {
            tracing::info!(ifindex, %ip, "removing guard entry of a gone endpoint");
            dp.guard.remove_endpoint(*ifindex)?;
        }
        report.guard_removed = stale_entries.len();
        self.remove_stale_tunnel_state(&mut dp, &uplink_plan)
            .await?;
        report.uplink_entries_removed = uplink_plan.removals();
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

    /// In `ipip`, for each other node off the uplink's subnet, the next hop
    /// on the uplink the kernel routes its underlay address via (the
    /// node itself if it is on a link after all). Nodes the kernel routes
    /// elsewhere or not at all are left out: the calculation reports them.
    async fn underlay_next_hops(
        &self,
        dp: &Dataplane,
        nodes: &[NodeRecord],
    ) -> Result<BTreeMap<Ipv4Addr, Ipv4Addr>, ReconcileError> {
        let mut out = BTreeMap::new();
        if self.tunnel.encap != Encap::Ipip {
            return Ok(out);
        }
        for node in calc::off_subnet_nodes(&self.me, nodes, self.uplink.address) {
            match dp.routes.route_to(node).await? {
                Some(to) if to.oif == self.uplink.ifindex => {
                    out.insert(node, to.gateway.unwrap_or(node));
                }
                Some(to) => {
                    tracing::debug!(%node, oif = to.oif, "underlay route not via the uplink")
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Tells the speaker which peers this node wants (level-triggered: the
    /// whole set each pass) and returns the learned routes to install.
    async fn bgp_routes(
        &self,
        bgp: &Bgp,
        nodes: &[NodeRecord],
        tunnelled: &BTreeSet<Ipv4Addr>,
    ) -> Result<BgpRoutes, ReconcileError> {
        let topology = Topology {
            as_number: bgp.as_number,
            route_reflectors: &bgp.route_reflectors,
        };
        let wanted =
            routing::wanted_peers(&self.me, &topology, nodes, &self.datastore.bgp_peers()?);
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
        let (routes, problems) =
            routing::installable(&learned, self.me.pod_cidr, self.uplink.address, tunnelled);

        // After a restart, routes the previous run installed stay until the
        // Loc-RIB is complete again, so forwarding never has a gap.
        let kept = bgp.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut keep = Vec::new();
        if let Some((old, deadline)) = kept {
            if bgp.handle.synchronized().await? || std::time::Instant::now() >= deadline {
                tracing::info!(
                    "BGP synchronized after restart; kept routes not relearned may now go"
                );
                *bgp.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
            } else {
                keep = old;
            }
        }
        Ok((routes, keep, problems))
    }

    /// The uplink programs' view of this node.
    fn tunnel_config(&self) -> NodeConfig {
        tunnel_config(self.me.underlay_ip, &self.uplink, self.tunnel)
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

    /// What other modes (an earlier run's) or gone nodes left: the uplink
    /// map entries `plan` removes, the vxlan device outside `vxlan`.
    async fn remove_stale_tunnel_state(
        &self,
        dp: &mut Dataplane,
        plan: &UplinkPlan,
    ) -> Result<(), ReconcileError> {
        dp.tunnel.apply_removals(plan)?;
        if dp.other_modes_cleared {
            return Ok(());
        }
        if self.tunnel.encap != Encap::Vxlan && dp.netlink.delete_vxlan(vxlan::DEVICE_NAME).await? {
            tracing::info!("removed the vxlan device of an earlier mode");
        }
        dp.other_modes_cleared = true;
        Ok(())
    }

    fn publish(
        &self,
        nodes: &[NodeRecord],
        endpoints: &[EndpointRecord],
    ) -> Result<(), ReconcileError> {
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

/// The config map entry of a node whose underlay address is `underlay`,
/// on `uplink`, with `options`.
fn tunnel_config(underlay: Ipv4Addr, uplink: &Uplink, options: TunnelOptions) -> NodeConfig {
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
    config
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
        };
        let plain = tunnel_config(underlay, &uplink, options);
        assert_eq!(plain.encap(), Some(weft_common::maps::Encap::Ipip));
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
