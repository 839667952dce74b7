//! Tracing one synthetic packet through nodes' tables, hop by hop, as
//! `weftctl lab trace` does over a live lab: the pure part of it.
//!
//! - [`facts`]: kernel facts read off a node (pinned maps, links,
//!   addresses, routes, vxlan entries; the readers are in weft-dataplane)
//!   into the [`NodeTables`] the walk uses, with notes on what they cannot
//!   model.
//! - [`trace()`]: the walk. The tables are plain data, read from live
//!   nodes or written by hand; the walk uses the same node engine (and so
//!   the same tc programs) as the simulated cluster.
//! - [`mod@verdict`]: what the steps amount to (delivered, dropped, lost, and
//!   the ICMP errors on the way).
//! - [`mod@report`]: the request (`--to`, the probe packet) and the report as
//!   text and JSON.
//!
//! What the twin does not model, and so the trace cannot show: netfilter,
//! rp_filter, routing rules and tables other than main, ARP towards hosts
//! that are no lab node (such a next hop never answers), the pod's own
//! stack (the packet starts at the pod's host veth), and whether the uplink
//! programs are actually attached (the config map's mode decides).

pub mod facts;
pub mod report;
#[cfg(test)]
mod tests;
pub mod verdict;

pub use facts::{NodeFacts, node_tables, notes};
pub use report::{
    StepView, Target, TargetKind, TraceFrom, TraceInput, TraceReport, probe, report, step_view,
};
pub use verdict::{IcmpAnswer, Outcome, PodAt, Verdict, drop_reason, hook_name, verdict};

use std::fmt;
use std::net::Ipv4Addr;

use crate::cluster::Cluster;
use crate::node::NodeTables;
use crate::step::Step;
use crate::wire::{self, Mac};

/// Why a trace could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// No node has a local pod with that address (a /32 route into a veth).
    UnknownPod(Ipv4Addr),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::UnknownPod(ip) => write!(f, "no node has a local pod {ip}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// Sends `packet` (IPv4, no Ethernet header) out of the pod `from_pod`
/// (found by its /32 route on one of `nodes`) and returns every step it
/// and what it caused (ICMP errors, fragments) took, in order, until
/// nothing is in flight. The nodes share one underlay segment and
/// resolve each other by ARP; ARP itself is not listed. A packet left
/// waiting for an ARP answer ends the list with a `NeighborUnresolved`
/// routing step.
///
/// The packet's source need not be `from_pod`'s address: that is how a
/// spoofing pod is traced.
pub fn trace(
    nodes: &[NodeTables],
    from_pod: Ipv4Addr,
    packet: &[u8],
) -> Result<Vec<Step>, TraceError> {
    let pod = from_pod.octets();
    let (node, ifindex) = nodes
        .iter()
        .enumerate()
        .find_map(|(i, t)| Some((i, t.pod_ifindex(pod)?)))
        .ok_or(TraceError::UnknownPod(from_pod))?;
    let mut cluster = Cluster::from_tables(nodes.to_vec());
    cluster.set_recording(true);
    let frame = wire::ethernet_frame(Mac::HOST_VETH, Mac::pod(pod), wire::ETHERTYPE_IPV4, packet);
    cluster.send_from_veth(node, ifindex, frame);
    let mut steps = cluster.take_steps();
    steps.extend(cluster.unresolved_steps());
    Ok(steps)
}
