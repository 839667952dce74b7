//! Walking one synthetic packet through nodes' tables, hop by hop: the
//! engine of a future `weftctl trace`. The tables are plain data, read
//! from live nodes or written by hand; the walk uses the same node engine
//! (and so the same tc programs) as the simulated cluster.

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
