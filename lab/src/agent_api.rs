//! weftctl's side of the agent's local gRPC API: the calls operators make
//! (status, endpoints, counters) and their table and JSON renderings.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use weft_proto::v1;

use crate::matrix::render_table;

/// Runs one async call on a runtime of its own; weftctl is otherwise
/// synchronous (the lab works with threads and child processes).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
        .block_on(future)
}

pub(crate) async fn client(
    socket: &Path,
    timeout: Duration,
) -> Result<weft_proto::AgentClient<tonic::transport::Channel>> {
    weft_proto::connect(socket, timeout)
        .await
        .with_context(|| format!("connecting to the agent at {}", socket.display()))
}

pub(crate) fn rpc_error(call: &str, socket: &Path) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    let what = format!("{call} on the agent at {}", socket.display());
    move |status| anyhow::anyhow!("{what} failed: {}: {}", status.code(), status.message())
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStatus {
    pub ready: bool,
    pub node_name: String,
    pub pod_cidr: String,
    pub message: String,
    pub endpoints: u32,
    /// The digest of the policy inputs the node's maps are programmed
    /// from (`weft_calc::policy::digest`); empty before the first.
    pub policy_digest: String,
    /// Local endpoints denied everything because their policy could not
    /// be programmed (`weftctl policy show` says why).
    pub policy_endpoints_failed_closed: u32,
    /// Where the agent reads the cluster from: `local` or `kubernetes`.
    pub datastore: String,
    /// The node's underlay address, and why it is that one.
    pub node_address: String,
    pub node_address_reason: String,
}

pub async fn status(socket: &Path, timeout: Duration) -> Result<AgentStatus> {
    let reply = client(socket, timeout)
        .await?
        .status(v1::StatusRequest {})
        .await
        .map_err(rpc_error("Status", socket))?
        .into_inner();
    Ok(AgentStatus {
        ready: reply.ready,
        node_name: reply.node_name,
        pod_cidr: reply.pod_cidr,
        message: reply.message,
        endpoints: reply.endpoints,
        policy_digest: reply.policy_digest,
        policy_endpoints_failed_closed: reply.policy_endpoints_failed_closed,
        datastore: reply.datastore,
        node_address: reply.node_address,
        node_address_reason: reply.node_address_reason,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub container_id: String,
    pub ifname: String,
    pub address: String,
    pub host_ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    pub netns: String,
    /// The pod's container ports, as in a pod spec.
    pub ports: Vec<weft_model::ContainerPort>,
}

impl From<v1::Endpoint> for Endpoint {
    fn from(e: v1::Endpoint) -> Endpoint {
        let attachment = e.attachment.unwrap_or_default();
        Endpoint {
            container_id: attachment.container_id,
            ifname: attachment.ifname,
            address: e.address,
            host_ifname: e.host_ifname,
            pod_name: e.pod_name,
            pod_namespace: e.pod_namespace,
            labels: e.labels.into_iter().collect(),
            node: e.node,
            netns: e.netns,
            ports: e
                .ports
                .into_iter()
                .map(|p| weft_model::ContainerPort {
                    name: Some(p.name).filter(|n| !n.is_empty()),
                    // The agent checked it when the endpoint was registered.
                    container_port: p.container_port as u16,
                    protocol: p.protocol.into(),
                })
                .collect(),
        }
    }
}

/// Replaces the labels of the endpoint of (`container_id`, `ifname`) on
/// the agent at `socket`; the agent republishes it.
pub async fn update_endpoint_labels(
    socket: &Path,
    timeout: Duration,
    container_id: &str,
    ifname: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Endpoint> {
    let reply = client(socket, timeout)
        .await?
        .update_endpoint_labels(v1::UpdateEndpointLabelsRequest {
            attachment: Some(v1::Attachment {
                container_id: container_id.into(),
                ifname: ifname.into(),
            }),
            labels: labels.clone().into_iter().collect(),
        })
        .await
        .map_err(rpc_error("UpdateEndpointLabels", socket))?
        .into_inner();
    Ok(reply.endpoint.unwrap_or_default().into())
}

pub async fn endpoints(socket: &Path, timeout: Duration) -> Result<Vec<Endpoint>> {
    let reply = client(socket, timeout)
        .await?
        .list_endpoints(v1::ListEndpointsRequest {})
        .await
        .map_err(rpc_error("ListEndpoints", socket))?
        .into_inner();
    let mut endpoints: Vec<Endpoint> = reply.endpoints.into_iter().map(Endpoint::from).collect();
    endpoints.sort_by(|a, b| (&a.pod_namespace, &a.pod_name).cmp(&(&b.pod_namespace, &b.pod_name)));
    Ok(endpoints)
}

/// One BGP session of an agent, as `weftctl bgp peers --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BgpPeer {
    pub address: String,
    pub asn: u32,
    pub state: String,
    pub uptime_seconds: u64,
    pub prefixes_received: u32,
    pub prefixes_advertised: u32,
    pub last_error: String,
    pub source: String,
    pub route_reflector_client: bool,
    pub end_of_rib_received: bool,
}

/// An agent's BGP speaker and its sessions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BgpPeers {
    pub enabled: bool,
    pub local_as: u32,
    pub router_id: String,
    pub peers: Vec<BgpPeer>,
}

pub async fn bgp_peers(socket: &Path, timeout: Duration) -> Result<BgpPeers> {
    let reply = client(socket, timeout)
        .await?
        .bgp_peers(v1::BgpPeersRequest {})
        .await
        .map_err(rpc_error("BgpPeers", socket))?
        .into_inner();
    Ok(BgpPeers {
        enabled: reply.enabled,
        local_as: reply.local_as,
        router_id: reply.router_id,
        peers: reply
            .peers
            .into_iter()
            .map(|p| BgpPeer {
                address: p.address,
                asn: p.asn,
                state: p.state,
                uptime_seconds: p.uptime_seconds,
                prefixes_received: p.prefixes_received,
                prefixes_advertised: p.prefixes_advertised,
                last_error: p.last_error,
                source: p.source,
                route_reflector_client: p.route_reflector_client,
                end_of_rib_received: p.end_of_rib_received,
            })
            .collect(),
    })
}

pub fn render_bgp_peers(bgp: &BgpPeers) -> String {
    if !bgp.enabled {
        return "BGP is off on this node (routing mode static)\n".to_string();
    }
    let header = [
        "PEER",
        "AS",
        "STATE",
        "UPTIME",
        "RECEIVED",
        "ADVERTISED",
        "SOURCE",
        "LAST ERROR",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(bgp.peers.iter().map(|p| {
        vec![
            p.address.clone(),
            p.asn.to_string(),
            p.state.clone(),
            if p.state == "Established" {
                format!("{}s", p.uptime_seconds)
            } else {
                "-".into()
            },
            p.prefixes_received.to_string(),
            p.prefixes_advertised.to_string(),
            format!(
                "{}{}",
                p.source,
                if p.route_reflector_client {
                    " (rr client)"
                } else {
                    ""
                }
            ),
            if p.last_error.is_empty() {
                "-".into()
            } else {
                p.last_error.clone()
            },
        ]
    }));
    format!(
        "local AS {}, router id {}\n{}",
        bgp.local_as,
        bgp.router_id,
        render_table(&rows)
    )
}

/// Counters by name, in name order.
pub async fn counters(socket: &Path, timeout: Duration) -> Result<BTreeMap<String, u64>> {
    let reply = client(socket, timeout)
        .await?
        .get_counters(v1::GetCountersRequest {})
        .await
        .map_err(rpc_error("GetCounters", socket))?
        .into_inner();
    Ok(reply
        .counters
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect())
}

pub fn render_status(status: &AgentStatus) -> String {
    let rows = vec![
        vec!["node:".to_string(), status.node_name.clone()],
        vec!["ready:".to_string(), status.ready.to_string()],
        vec!["pod CIDR:".to_string(), status.pod_cidr.clone()],
        vec!["datastore:".to_string(), status.datastore.clone()],
        vec![
            "node address:".to_string(),
            format!("{} ({})", status.node_address, status.node_address_reason),
        ],
        vec!["endpoints:".to_string(), status.endpoints.to_string()],
        vec![
            "policy failed closed:".to_string(),
            match status.policy_endpoints_failed_closed {
                0 => "0".to_string(),
                n => format!("{n} endpoints denied everything (see `weftctl policy show`)"),
            },
        ],
        vec!["message:".to_string(), status.message.clone()],
        vec![
            "policy inputs:".to_string(),
            if status.policy_digest.is_empty() {
                "-".to_string()
            } else {
                status.policy_digest.clone()
            },
        ],
    ];
    render_table(&rows)
}

/// One row per endpoint; the container id is shortened to 12 characters
/// as container tools print it.
pub fn render_endpoints(endpoints: &[Endpoint]) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "POD",
            "ADDRESS",
            "HOST IFNAME",
            "CONTAINER",
            "NODE",
            "LABELS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in endpoints {
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(vec![
            e.pod_namespace.clone(),
            e.pod_name.clone(),
            e.address.clone(),
            e.host_ifname.clone(),
            e.container_id.chars().take(12).collect(),
            e.node.clone(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
        ]);
    }
    render_table(&rows)
}

pub fn render_counters(counters: &BTreeMap<String, u64>) -> String {
    let mut rows = vec![vec!["COUNTER".to_string(), "VALUE".to_string()]];
    rows.extend(
        counters
            .iter()
            .map(|(name, value)| vec![name.clone(), value.to_string()]),
    );
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_endpoints_and_counters() {
        let endpoints = vec![Endpoint {
            container_id: "0123456789abcdef".repeat(4),
            ifname: "eth0".into(),
            address: "10.244.1.5".into(),
            host_ifname: "weft0123abcd".into(),
            pod_name: "node1-a".into(),
            pod_namespace: "default".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            node: "node1".into(),
            netns: "/run/netns/weft-pod-node1-a".into(),
            ports: Vec::new(),
        }];
        assert_eq!(
            render_endpoints(&endpoints),
            "NAMESPACE  POD      ADDRESS     HOST IFNAME   CONTAINER     NODE   LABELS\n\
             default    node1-a  10.244.1.5  weft0123abcd  0123456789ab  node1  app=web\n"
        );
        let counters = BTreeMap::from([
            ("rx_packets".to_string(), 12u64),
            ("drop_policy".to_string(), 0),
        ]);
        assert_eq!(
            render_counters(&counters),
            "COUNTER      VALUE\ndrop_policy  0\nrx_packets   12\n"
        );
    }
}
