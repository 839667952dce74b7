//! The agent's gRPC API (proto/weft.proto): the thin shell between weft-cni
//! or weftctl and the node. Requests are validated here and answered with
//! precise status codes; every change ends in a reconcile pass, so the
//! reply says the kernel is in the state asked for.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_dataplane::names::{POD_GATEWAY, host_ifname};
use weft_proto::Agent;
use weft_proto::v1::{self, *};

use crate::ipam::{self, IpamError};
use crate::node::{Node, PodMetadataError, ReconcileError};
use weft_calc::lifecycle::{self, Step};
use weft_calc::policy::IdentityPeer;
use weft_model::policy::{Protocol, validate_container_ports};
use weft_model::selector::{check_label_key, check_label_value};
use weft_model::{ContainerPort, EndpointRecord, endpoint_key};

pub struct AgentService {
    node: Arc<Node>,
}

impl AgentService {
    pub fn new(node: Arc<Node>) -> AgentService {
        AgentService { node }
    }

    fn ready(&self) -> Result<(), Status> {
        if self.node.is_ready() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "agent is starting: the first reconcile has not completed",
            ))
        }
    }
}

/// Checks an attachment as CNI defines it: a container id of letters,
/// digits, `_`, `.`, `-` (the spec's rule), and an interface name the kernel
/// accepts.
fn attachment(a: Option<&v1::Attachment>) -> Result<ipam::Attachment, Status> {
    let a = a.ok_or_else(|| Status::invalid_argument("attachment is required"))?;
    let id = &a.container_id;
    if id.is_empty()
        || id.len() > 256
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Status::invalid_argument(format!(
            "container id {id:?} must be 1-256 characters of letters, digits, '_', '.', '-'"
        )));
    }
    let ifname = &a.ifname;
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.contains(['/', ':'])
        || ifname.chars().any(char::is_whitespace)
    {
        return Err(Status::invalid_argument(format!(
            "interface name {ifname:?} is not a valid Linux interface name"
        )));
    }
    Ok(ipam::Attachment {
        container_id: id.clone(),
        ifname: ifname.clone(),
    })
}

/// A request's container ports, checked as the API server checks a pod
/// spec's: what named ports in policies resolve to must be well formed.
/// An empty protocol is TCP, as an omitted one is in a pod spec.
fn container_ports(ports: Vec<v1::ContainerPort>) -> Result<Vec<ContainerPort>, Status> {
    let ports = ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let container_port = u16::try_from(p.container_port).map_err(|_| {
                Status::invalid_argument(format!(
                    "ports[{i}].containerPort: invalid value \"{}\": must be between 1 and 65535, inclusive",
                    p.container_port
                ))
            })?;
            Ok(ContainerPort {
                name: Some(p.name).filter(|n| !n.is_empty()),
                container_port,
                protocol: match p.protocol.as_str() {
                    "" => Protocol::Tcp,
                    other => other.to_string().into(),
                },
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    validate_container_ports(&ports).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ports)
}

fn port_to_proto(p: &ContainerPort) -> v1::ContainerPort {
    v1::ContainerPort {
        name: p.name.clone().unwrap_or_default(),
        container_port: p.container_port.into(),
        protocol: p.protocol.name().to_string(),
    }
}

/// Labels checked as the API server checks `metadata.labels`.
fn labels(
    labels: impl IntoIterator<Item = (String, String)>,
) -> Result<weft_model::selector::Labels, Status> {
    let labels: weft_model::selector::Labels = labels.into_iter().collect();
    for (k, v) in &labels {
        check_label_key(k, "labels")
            .and_then(|()| check_label_value(v, &format!("labels.{k}")))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(labels)
}

fn to_proto(ep: &EndpointRecord) -> v1::Endpoint {
    v1::Endpoint {
        attachment: Some(v1::Attachment {
            container_id: ep.container_id.clone(),
            ifname: ep.ifname.clone(),
        }),
        address: ep.address.to_string(),
        host_ifname: ep.host_ifname.clone(),
        pod_name: ep.pod_name.clone(),
        pod_namespace: ep.pod_namespace.clone(),
        labels: ep.labels.clone().into_iter().collect(),
        node: ep.node.clone(),
        netns: ep.netns.clone(),
        ports: ep.ports.iter().map(port_to_proto).collect(),
    }
}

/// The name `GetCounters` gives the number of endpoints failing closed.
pub const POLICY_FAILED_CLOSED_COUNTER: &str = "policy_endpoints_failed_closed";

fn identity_to_proto(identity: u32, peer: IdentityPeer) -> PolicyIdentity {
    match peer {
        IdentityPeer::Pod {
            namespace,
            name,
            address,
        } => PolicyIdentity {
            identity,
            pod: format!("{namespace}/{name}"),
            pod_address: address.to_string(),
            blocks: Vec::new(),
        },
        IdentityPeer::Blocks(blocks) => PolicyIdentity {
            identity,
            blocks,
            ..PolicyIdentity::default()
        },
    }
}

fn internal(e: ReconcileError) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::internal(e.to_string())
}

fn ipam_status(e: IpamError) -> Status {
    match e {
        IpamError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn allocate_address(
        &self,
        request: Request<AllocateAddressRequest>,
    ) -> Result<Response<AllocateAddressReply>, Status> {
        self.ready()?;
        let req = request.into_inner();
        let who = attachment(req.attachment.as_ref())?;
        let ip = self.node.ipam.allocate(&who).map_err(ipam_status)?;
        tracing::info!(container = %who.container_id, ifname = %who.ifname, %ip, "address allocated");
        Ok(Response::new(AllocateAddressReply {
            address: ip.to_string(),
            prefix_len: 32,
            gateway: POD_GATEWAY.to_string(),
            mtu: self.node.mtu,
            pod_cidr: self.node.me.pod_cidr.to_string(),
        }))
    }

    async fn register_endpoint(
        &self,
        request: Request<RegisterEndpointRequest>,
    ) -> Result<Response<RegisterEndpointReply>, Status> {
        self.ready()?;
        let req = request.into_inner();
        let who = attachment(req.attachment.as_ref())?;
        let address: Ipv4Addr = req.address.parse().map_err(|_| {
            Status::invalid_argument(format!("address {:?} is not an IPv4 address", req.address))
        })?;
        let held = self
            .node
            .ipam
            .claims()
            .into_iter()
            .find(|(_, c)| *c == ipam::Claim::Owned(who.clone()));
        match held {
            Some((ip, _)) if ip == address => {}
            Some((ip, _)) => {
                return Err(Status::failed_precondition(format!(
                    "attachment holds {ip}, not {address}: allocate before registering"
                )));
            }
            None => {
                return Err(Status::failed_precondition(format!(
                    "attachment {}/{} holds no address: allocate before registering",
                    who.container_id, who.ifname
                )));
            }
        }
        let ports = container_ports(req.ports)?;
        let expected = host_ifname(&who.container_id, &who.ifname);
        if req.host_ifname != expected {
            return Err(Status::invalid_argument(format!(
                "host interface must be {expected} for this attachment, not {:?}",
                req.host_ifname
            )));
        }
        let ep = EndpointRecord {
            container_id: who.container_id.clone(),
            ifname: who.ifname.clone(),
            node: self.node.me.name.clone(),
            pod_name: req.pod_name,
            pod_namespace: req.pod_namespace,
            labels: req.labels.into_iter().collect(),
            address,
            host_ifname: expected,
            netns: req.netns,
            ports,
        };
        // A Pod the watch does not know yet is a transient condition (the
        // plugin's "try again later"); CNI_ARGS naming no Pod is not.
        let ep = (self.node.with_pod_metadata(ep).await).map_err(|e| match e {
            PodMetadataError::Unknown { .. } => Status::unavailable(e.to_string()),
            PodMetadataError::NotNamed => Status::failed_precondition(e.to_string()),
        })?;
        self.node.save_endpoint(&ep).await.map_err(internal)?;
        let report = self.node.reconcile(false).await.map_err(internal)?;
        // The pass must have guarded and routed this pod; anything else is
        // a failed ADD, which the plugin undoes.
        if let Err(problem) = lifecycle::registration(&report.problems, &ep.host_ifname) {
            let _ = self.node.forget_endpoint(&ep.key()).await;
            return Err(Status::failed_precondition(problem.to_string()));
        }
        tracing::info!(pod = %format!("{}/{}", ep.pod_namespace, ep.pod_name), ip = %address, host = %ep.host_ifname, "endpoint registered");
        Ok(Response::new(RegisterEndpointReply {}))
    }

    /// Rewrites the endpoint's record with the new labels through the
    /// node's save path, so the next pass republishes it to the cluster.
    async fn update_endpoint_labels(
        &self,
        request: Request<UpdateEndpointLabelsRequest>,
    ) -> Result<Response<UpdateEndpointLabelsReply>, Status> {
        self.ready()?;
        let req = request.into_inner();
        let who = attachment(req.attachment.as_ref())?;
        if self.node.source.owns_pod_metadata() {
            return Err(Status::failed_precondition(
                "a pod's labels come from its Pod object here (--datastore kubernetes): \
                 change them there (kubectl label pod)",
            ));
        }
        let labels = labels(req.labels)?;
        let key = endpoint_key(&who.container_id, &who.ifname);
        let mut ep = self.node.local_endpoint(&key).ok_or_else(|| {
            Status::not_found(format!(
                "no endpoint for container {} interface {}",
                who.container_id, who.ifname
            ))
        })?;
        ep.labels = labels;
        self.node.save_endpoint(&ep).await.map_err(internal)?;
        self.node.reconcile(false).await.map_err(internal)?;
        tracing::info!(pod = %format!("{}/{}", ep.pod_namespace, ep.pod_name), labels = ?ep.labels, "endpoint relabelled");
        Ok(Response::new(UpdateEndpointLabelsReply {
            endpoint: Some(to_proto(&ep)),
        }))
    }

    async fn release_endpoint(
        &self,
        request: Request<ReleaseEndpointRequest>,
    ) -> Result<Response<ReleaseEndpointReply>, Status> {
        self.ready()?;
        let who = attachment(request.into_inner().attachment.as_ref())?;
        let key = endpoint_key(&who.container_id, &who.ifname);
        let mut had_endpoint = false;
        let mut released = None;
        for step in lifecycle::RELEASE {
            match step {
                Step::ForgetEndpoints => {
                    had_endpoint = self.node.forget_endpoint(&key).await.map_err(internal)?;
                }
                Step::Flush => {
                    self.node.reconcile(false).await.map_err(internal)?;
                }
                Step::ReleaseAddresses => {
                    released = self.node.ipam.release(&who).map_err(ipam_status)?;
                }
            }
        }
        if let Some(ip) = released {
            tracing::info!(container = %who.container_id, ifname = %who.ifname, %ip, "endpoint released");
        }
        Ok(Response::new(ReleaseEndpointReply {
            released: had_endpoint || released.is_some(),
        }))
    }

    async fn check_endpoint(
        &self,
        request: Request<CheckEndpointRequest>,
    ) -> Result<Response<CheckEndpointReply>, Status> {
        let who = attachment(request.into_inner().attachment.as_ref())?;
        let key = endpoint_key(&who.container_id, &who.ifname);
        match self.node.local_endpoint(&key) {
            Some(ep) => Ok(Response::new(CheckEndpointReply {
                endpoint: Some(to_proto(&ep)),
            })),
            None => Err(Status::not_found(format!(
                "no endpoint for container {} interface {}",
                who.container_id, who.ifname
            ))),
        }
    }

    async fn garbage_collect(
        &self,
        request: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        self.ready()?;
        let valid: BTreeSet<ipam::Attachment> = request
            .into_inner()
            .valid
            .iter()
            .map(|a| attachment(Some(a)))
            .collect::<Result<_, _>>()?;
        let valid_keys: BTreeSet<String> = valid
            .iter()
            .map(|a| endpoint_key(&a.container_id, &a.ifname))
            .collect();
        let mut released = Vec::new();
        let mut report = None;
        for step in lifecycle::GARBAGE_COLLECT {
            match step {
                Step::ForgetEndpoints => {
                    for ep in self.node.local_endpoints() {
                        if !valid_keys.contains(&ep.key()) {
                            self.node
                                .forget_endpoint(&ep.key())
                                .await
                                .map_err(internal)?;
                        }
                    }
                }
                Step::ReleaseAddresses => {
                    released = self
                        .node
                        .ipam
                        .retain(|a| valid.contains(a))
                        .map_err(ipam_status)?;
                }
                // A full pass: it lists the veths, so those of released
                // attachments are found whatever this agent saw of them.
                Step::Flush => report = Some(self.node.reconcile(true).await.map_err(internal)?),
            }
        }
        let links_removed = report.map(|r| r.flushed.links_removed).unwrap_or_default();
        tracing::info!(released = released.len(), links = ?links_removed, "garbage collected");
        Ok(Response::new(GarbageCollectReply {
            released: released
                .into_iter()
                .filter_map(|(_, c)| match c {
                    ipam::Claim::Owned(a) => Some(v1::Attachment {
                        container_id: a.container_id,
                        ifname: a.ifname,
                    }),
                    ipam::Claim::Orphaned => None,
                })
                .collect(),
            removed_links: links_removed,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let ready = self.node.is_ready();
        let endpoints = self.node.local_endpoints().len() as u32;
        let failed_closed = self.node.state.lock().await.policy_failed_closed().len() as u32;
        Ok(Response::new(StatusReply {
            ready,
            node_name: self.node.me.name.clone(),
            pod_cidr: self.node.me.pod_cidr.to_string(),
            message: if ready {
                "ready".into()
            } else {
                "starting: first reconcile pending".into()
            },
            endpoints,
            policy_digest: self.node.policy_digest().unwrap_or_default(),
            policy_endpoints_failed_closed: failed_closed,
            datastore: self.node.origin.datastore.clone(),
            node_address: self.node.me.underlay_ip.to_string(),
            node_address_reason: self.node.origin.address_reason.clone(),
        }))
    }

    async fn list_endpoints(
        &self,
        _request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsReply>, Status> {
        let endpoints = self.node.local_endpoints();
        Ok(Response::new(ListEndpointsReply {
            endpoints: endpoints.iter().map(to_proto).collect(),
        }))
    }

    async fn bgp_peers(
        &self,
        _request: Request<BgpPeersRequest>,
    ) -> Result<Response<BgpPeersReply>, Status> {
        self.bgp_peers_reply().await.map(Response::new)
    }

    async fn get_counters(
        &self,
        _request: Request<GetCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        let st = self.node.state.lock().await;
        let counters = st
            .drivers
            .endpoints
            .guard
            .counters()
            .map_err(|e| Status::internal(e.to_string()))?;
        // The agent's own: endpoints denied everything because their
        // policy could not be programmed (a gauge, not a packet count).
        let failed_closed = (
            POLICY_FAILED_CLOSED_COUNTER,
            st.policy_failed_closed().len() as u64,
        );
        Ok(Response::new(GetCountersReply {
            counters: counters
                .into_iter()
                .chain([failed_closed])
                .map(|(name, value)| Counter {
                    name: name.to_string(),
                    value,
                })
                .collect(),
        }))
    }

    async fn get_policy(
        &self,
        _request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyReply>, Status> {
        self.ready()?;
        let st = self.node.state.lock().await;
        let maps = &st.drivers.policy.maps;
        let bpf = |e: weft_dataplane::bpf::BpfError| Status::internal(e.to_string());
        let entries = maps.policy().map_err(bpf)?;
        let counters = maps.endpoint_counters().map_err(bpf)?;
        let revision = maps.revision().map_err(bpf)?;
        let identities = st
            .policy_identities()
            .map(|ids| ids.peers())
            .unwrap_or_default();
        let failed_closed = st.policy_failed_closed();
        let endpoints = self
            .node
            .local_endpoints()
            .iter()
            .map(|ep| PolicyEndpoint {
                address: ep.address.to_string(),
                pod_namespace: ep.pod_namespace.clone(),
                pod_name: ep.pod_name.clone(),
                failed_closed: failed_closed.get(&ep.address).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(GetPolicyReply {
            entries: entries
                .into_iter()
                .map(|(key, entry)| PolicyMapEntry {
                    prefix_len: key.prefix_len,
                    endpoint: Ipv4Addr::from(key.endpoint).to_string(),
                    direction: key.direction.into(),
                    identity: key.identity(),
                    protocol: key.protocol.into(),
                    port: key.port().into(),
                    allow: entry.allows(),
                })
                .collect(),
            identities: identities
                .into_iter()
                .map(|(identity, peer)| identity_to_proto(identity, peer))
                .collect(),
            endpoints,
            counters: counters
                .into_iter()
                .map(|(key, packets)| PolicyEndpointCounter {
                    endpoint: Ipv4Addr::from(key.endpoint).to_string(),
                    direction: key.direction.into(),
                    allowed: key.allowed(),
                    packets,
                })
                .collect(),
            revision,
        }))
    }
}

impl AgentService {
    async fn bgp_peers_reply(&self) -> Result<BgpPeersReply, Status> {
        let Some(bgp) = &self.node.bgp else {
            return Ok(BgpPeersReply {
                enabled: false,
                ..Default::default()
            });
        };
        let statuses = bgp
            .handle
            .peers()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let wanted = bgp.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = std::time::Instant::now();
        let peers = statuses
            .into_iter()
            .map(|p| BgpPeer {
                address: p.config.address.to_string(),
                asn: p.config.asn,
                state: format!("{:?}", p.state),
                uptime_seconds: p
                    .established_since
                    .map_or(0, |t| now.duration_since(t).as_secs()),
                prefixes_received: p.received as u32,
                prefixes_advertised: p.advertised as u32,
                last_error: p.last_error.unwrap_or_default(),
                source: wanted
                    .iter()
                    .find(|w| w.address == p.config.address)
                    .map(|w| w.source.clone())
                    .unwrap_or_default(),
                route_reflector_client: p.config.rr_client,
                end_of_rib_received: p.end_of_rib_received,
            })
            .collect();
        Ok(BgpPeersReply {
            enabled: true,
            local_as: bgp.as_number,
            router_id: self.node.me.underlay_ip.to_string(),
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str, ifname: &str) -> Option<v1::Attachment> {
        Some(v1::Attachment {
            container_id: id.into(),
            ifname: ifname.into(),
        })
    }

    #[test]
    fn attachments_are_validated_in_cni_terms() {
        assert!(attachment(att("abc-123_x.y", "eth0").as_ref()).is_ok());
        for (id, ifname) in [
            ("", "eth0"),
            ("a/b", "eth0"),
            ("a b", "eth0"),
            ("ok", ""),
            ("ok", "a/b"),
            ("ok", "sixteen-chars-xx"),
            ("ok", ".."),
        ] {
            let err = attachment(att(id, ifname).as_ref()).unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{id:?} {ifname:?}"
            );
        }
        assert_eq!(
            attachment(None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    fn port(name: &str, number: u32, protocol: &str) -> v1::ContainerPort {
        v1::ContainerPort {
            name: name.into(),
            container_port: number,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn container_ports_are_validated_in_pod_spec_terms() {
        let ports = container_ports(vec![port("http", 8080, ""), port("", 53, "UDP")]).unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[0].protocol, Protocol::Tcp, "empty is TCP");
        assert_eq!(
            (ports[1].name.as_deref(), ports[1].protocol.name()),
            (None, "UDP")
        );
        assert_eq!(port_to_proto(&ports[0]), port("http", 8080, "TCP"));
        for (bad, path) in [
            (port("", 0, "TCP"), "ports[0].containerPort"),
            (port("", 65536, "TCP"), "ports[0].containerPort"),
            (port("", 80, "ICMP"), "ports[0].protocol"),
            (port("Http", 80, "TCP"), "ports[0].name"),
            (port("80", 80, "TCP"), "ports[0].name"),
        ] {
            let err = container_ports(vec![bad]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with(path), "{}", err.message());
        }
    }

    #[test]
    fn labels_are_validated_as_metadata_labels() {
        assert!(labels([("app".into(), "web".into())]).is_ok());
        for (k, v) in [("a b", "x"), ("app", "w e b"), ("", "x")] {
            let err = labels([(k.into(), v.into())]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{k:?}={v:?}");
        }
    }
}
