//! `weftctl lab trace`: where would a packet from a pod go, hook by hook,
//! given what the lab's nodes hold right now? Like Antrea's Traceflow, but
//! no packet is injected: the nodes' pinned eBPF maps, kernel routes, links,
//! addresses and vxlan FDB/neighbour entries are read (weft-dataplane's
//! readers), and the twin's trace ([`weft_twin::trace`]) turns them into
//! tables, walks one synthetic packet through them with the very decisions
//! the tc programs are built from, and reports. This is only the command:
//! the lab's pods and nodes in, the report out.

use anyhow::{Context, Result, bail};
use weft_dataplane::bpf::read_pinned_maps;
use weft_dataplane::link::Netlink;
use weft_dataplane::route::RouteTable;
use weft_dataplane::vxlan::{self, Vxlan};
use weft_lab::state::{self, LabState};
use weft_lab::topology::netns_path;
use weft_twin::trace::{NodeFacts, PodAt, Target, TraceFrom, TraceInput, TraceReport, report};

/// What `weftctl lab trace` was asked.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub from: String,
    pub to: Target,
    pub size: Option<u16>,
    pub df: bool,
}

/// Reads every node of the lab and traces the request through them.
/// Must run inside a tokio runtime.
pub async fn run(lab: &LabState, request: &TraceRequest) -> Result<TraceReport> {
    let Some(pod) = lab.pods.iter().find(|p| p.name == request.from) else {
        let known: Vec<&str> = lab.pods.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "lab {} has no pod {:?} (pods: {})",
            lab.lab,
            request.from,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let Some(src) = pod.ip else {
        bail!(
            "pod {} has no address (its CNI ADD did not succeed)",
            pod.name
        );
    };
    let mut facts = Vec::new();
    for node in &lab.nodes {
        facts.push(read_node(lab, node).await?);
    }
    let from = TraceFrom {
        pod: pod.name.clone(),
        node: pod.node.clone(),
        ip: src,
        mtu: read_pod_mtu(pod).await.ok().flatten(),
    };
    let input = TraceInput {
        lab: &lab.lab,
        encap: lab.encap,
        from: &from,
        from_ifname: &pod.ifname,
        to: request.to,
        size: request.size,
        df: request.df,
        nodes: &facts,
        pods: &pods_at(lab, &facts),
    };
    report(&input).map_err(|e| {
        anyhow::anyhow!(
            "pod {} ({src}): {e} (the agent of {} has not routed it yet?)",
            pod.name,
            pod.node
        )
    })
}

/// Reads a lab node: its pinned maps (which must exist), and its links,
/// addresses, main table and vxlan device from its namespace. Must run
/// inside a tokio runtime.
pub async fn read_node(lab: &LabState, node: &state::Node) -> Result<NodeFacts> {
    let netns = netns_path(&node.netns);
    if !netns.exists() {
        bail!(
            "node {}: its namespace {} does not exist",
            node.name,
            netns.display()
        );
    }
    let maps = read_pinned_maps(&node.bpffs_dir).with_context(|| {
        format!(
            "node {}: reading the pinned maps under {} (has its agent ever run?)",
            node.name,
            node.bpffs_dir.display()
        )
    })?;
    let read = async {
        let netlink = Netlink::in_netns(&netns)?;
        let links = netlink.links().await?;
        let addresses = netlink.addresses().await?;
        let routes = RouteTable::in_netns(&netns)?.main_table().await?;
        let vxlan = Vxlan::in_netns(&netns)?.read(vxlan::DEVICE_NAME).await?;
        anyhow::Ok((links, addresses, routes, vxlan))
    };
    let (links, addresses, routes, vxlan) = read
        .await
        .with_context(|| format!("node {}: reading namespace {}", node.name, node.netns))?;
    Ok(NodeFacts {
        name: node.name.clone(),
        underlay_ip: node.underlay_ip,
        encap: lab.encap,
        uplink: node.uplink.clone(),
        maps,
        links,
        addresses,
        routes,
        vxlan,
    })
}

/// The MTU of a pod's own interface, read in its namespace.
pub async fn read_pod_mtu(pod: &state::Pod) -> Result<Option<u32>> {
    let netns = netns_path(&pod.netns);
    let netlink = Netlink::in_netns(&netns)?;
    Ok(netlink.link(&pod.ifname).await?.and_then(|l| l.mtu))
}

/// The lab's pods by (node, host veth ifindex), from the nodes' links.
pub fn pods_at(lab: &LabState, nodes: &[NodeFacts]) -> Vec<PodAt> {
    lab.pods
        .iter()
        .filter_map(|pod| {
            let node = nodes.iter().find(|n| n.name == pod.node)?;
            let link = node.link(pod.host_ifname.as_deref()?)?;
            Some(PodAt {
                node: node.name.clone(),
                ifindex: link.index,
                pod: pod.name.clone(),
                ip: pod.ip,
            })
        })
        .collect()
}
