//! Kubernetes API objects into weft-model's types: the only place that
//! knows both. Pure functions; an object Weft cannot use yet (a Node
//! without its pod CIDR, a Pod without an address) is `Ok(None)`, one it
//! can never use is an error naming the object and the field, which the
//! source logs and skips.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use weft_model::policy::{ContainerPort, Protocol};
use weft_model::{EndpointRecord, Namespace, NetworkPolicy, NodeRecord};

use super::pod::PodObject;
use crate::PodMetadata;

/// Why an object is skipped: `kind namespace/name: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct Refused {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub reason: String,
}

fn refused(kind: &'static str, name: &str, field: &str, reason: impl Into<String>) -> Refused {
    Refused {
        kind,
        name: name.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The interface name an API-only endpoint is keyed with: a remote pod's
/// CNI interface is not in the API, and every pod has one primary address.
pub const API_IFNAME: &str = "eth0";

/// A Node as the other nodes see it: its `spec.podCIDR` (set by the
/// controller manager's node IPAM, as in kind) and its underlay address:
/// the one its agent published ([`super::UNDERLAY_ADDRESS_ANNOTATION`]),
/// else its first IPv4 InternalIP (kubelet's `--node-ip`). `None` until
/// both are there.
pub fn node_record(node: &core::Node) -> Result<Option<NodeRecord>, Refused> {
    let Some(pod_cidr) = pod_cidr(node)? else {
        return Ok(None);
    };
    let Some(underlay_ip) = underlay_annotation(node)?.or_else(|| internal_ip(node)) else {
        return Ok(None);
    };
    Ok(Some(NodeRecord {
        name: node.metadata.name.clone().unwrap_or_default(),
        underlay_ip,
        pod_cidr,
    }))
}

/// The Node's IPv4 pod CIDR from `spec.podCIDRs` (or the older
/// `spec.podCIDR`); `None` until the controller manager has set it.
pub fn pod_cidr(node: &core::Node) -> Result<Option<Ipv4Network>, Refused> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    // podCIDRs may list an IPv6 range too; Weft routes the IPv4 one.
    let cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    for text in &cidrs {
        match text.parse::<ipnetwork::IpNetwork>() {
            Ok(ipnetwork::IpNetwork::V4(v4)) => {
                return Ok(Some(
                    Ipv4Network::new(v4.network(), v4.prefix())
                        .expect("a parsed prefix length is valid"),
                ));
            }
            Ok(ipnetwork::IpNetwork::V6(_)) => {}
            Err(e) => return Err(refused("Node", &name, "spec.podCIDRs", e.to_string())),
        }
    }
    Ok(None)
}

/// The underlay address the Node's agent published, if it has. Only the
/// agent writes it, so a value that is not an IPv4 address refuses the
/// Node rather than falling back to an address the agent did not choose.
pub fn underlay_annotation(node: &core::Node) -> Result<Option<Ipv4Addr>, Refused> {
    let annotation = super::UNDERLAY_ADDRESS_ANNOTATION;
    let Some(text) = (node.metadata.annotations.as_ref()).and_then(|a| a.get(annotation)) else {
        return Ok(None);
    };
    let reason = match text.parse::<Ipv4Addr>() {
        Ok(ip)
            if !ip.is_unspecified()
                && !ip.is_loopback()
                && !ip.is_multicast()
                && !ip.is_broadcast() =>
        {
            return Ok(Some(ip));
        }
        Ok(_) => format!("{text} cannot be a node's underlay address"),
        Err(e) => format!("{text:?}: {e}"),
    };
    Err(refused(
        "Node",
        node.metadata.name.as_deref().unwrap_or_default(),
        &format!("metadata.annotations[{annotation}]"),
        reason,
    ))
}

/// The Node's first IPv4 `InternalIP`.
pub fn internal_ip(node: &core::Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// A Pod as a policy peer and a routed endpoint: scheduled, with an IPv4
/// `status.podIP`, on the pod network (not hostNetwork) and not finished.
/// Its labels and the container ports named ports resolve to.
pub fn endpoint_record(pod: &PodObject) -> Result<Option<EndpointRecord>, Refused> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let id = format!("{namespace}/{name}");
    let spec = &pod.spec;
    if spec.host_network == Some(true) {
        return Ok(None);
    }
    let Some(node) = spec.node_name.clone() else {
        return Ok(None);
    };
    let status = &pod.status;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None); // its address may already be someone else's
    }
    let Some(ip) = status.pod_ip.as_deref() else {
        return Ok(None);
    };
    let address: Ipv4Addr = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4,
        Ok(std::net::IpAddr::V6(_)) => return Ok(None),
        Err(_) => {
            return Err(refused(
                "Pod",
                &id,
                "status.podIP",
                format!("{ip:?} is not an IP address"),
            ));
        }
    };
    let PodMetadata { labels, ports } = pod_metadata(pod)?;
    Ok(Some(EndpointRecord {
        // The pod's UID: stable for the pod's life, unique in the cluster.
        container_id: meta.uid.clone().unwrap_or_else(|| id.clone()),
        ifname: API_IFNAME.into(),
        node,
        pod_name: name,
        pod_namespace: namespace,
        labels,
        address,
        host_ifname: String::new(),
        netns: String::new(),
        ports,
    }))
}

/// A Pod's labels and container ports: what policies select it by and
/// resolve named ports to. A node's own pods take these from their Pod
/// object even before it has an address (the CNI call comes first).
pub fn pod_metadata(pod: &PodObject) -> Result<PodMetadata, Refused> {
    let meta = &pod.metadata;
    let id = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    );
    let mut ports = Vec::new();
    for (c, container) in pod.spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().enumerate() {
            let field = || format!("spec.containers[{c}].ports[{p}]");
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    refused(
                        "Pod",
                        &id,
                        &field(),
                        format!("containerPort {} is out of range", port.container_port),
                    )
                })?;
            ports.push(ContainerPort {
                name: port.name.clone(),
                container_port: number,
                protocol: port
                    .protocol
                    .clone()
                    .map(Protocol::from)
                    .unwrap_or_default(),
            });
        }
    }
    Ok(PodMetadata {
        labels: meta.labels.clone().unwrap_or_default(),
        ports,
    })
}

/// A Namespace's name and labels.
pub fn namespace(ns: &core::Namespace) -> Namespace {
    Namespace::new(
        ns.metadata.name.as_deref().unwrap_or_default(),
        ns.metadata.labels.clone().unwrap_or_default(),
    )
}

/// A NetworkPolicy in the model's shape (the API's own, field for field),
/// checked as `weftctl lab apply` checks one.
pub fn network_policy(policy: &networking::NetworkPolicy) -> Result<NetworkPolicy, Refused> {
    let id = format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or_default()
    );
    let value = serde_json::to_value(policy)
        .map_err(|e| refused("NetworkPolicy", &id, "", e.to_string()))?;
    let model: NetworkPolicy = serde_json::from_value(value)
        .map_err(|e| refused("NetworkPolicy", &id, "spec", e.to_string()))?;
    model.validate().map_err(|e| {
        refused(
            "NetworkPolicy",
            &id,
            &e.path,
            format!("{}: {}", e.value, e.reason),
        )
    })?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object as the API server encodes it.
    fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_node_needs_its_pod_cidr_and_internal_ip() {
        let node: core::Node = from_json(
            r#"{"metadata": {"name": "n1", "uid": "u"},
                "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["fd00::/64", "10.244.3.0/24"]},
                "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                         {"type": "InternalIP", "address": "198.18.0.11"}]}}"#,
        );
        let record = node_record(&node).unwrap().unwrap();
        assert_eq!(record.name, "n1");
        assert_eq!(record.underlay_ip, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(record.pod_cidr, "10.244.3.0/24".parse().unwrap());

        let waiting: core::Node = from_json(
            r#"{"metadata": {"name": "n2"},
                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.12"}]}}"#,
        );
        assert_eq!(node_record(&waiting).unwrap(), None, "no pod CIDR yet");
        let bad: core::Node =
            from_json(r#"{"metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3/x"}}"#);
        let e = node_record(&bad).unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), ("Node", "spec.podCIDRs"));
    }

    #[test]
    fn the_address_a_node_s_agent_published_comes_before_its_internal_ip() {
        let node = |annotations: &str| -> core::Node {
            from_json(&format!(
                r#"{{"metadata": {{"name": "n1", "annotations": {annotations}}},
                    "spec": {{"podCIDR": "10.244.3.0/24"}},
                    "status": {{"addresses": [{{"type": "InternalIP", "address": "198.18.0.11"}}]}}}}"#
            ))
        };
        let published = node(r#"{"weft.dev/underlay-address": "198.19.4.11"}"#);
        let record = node_record(&published).unwrap().unwrap();
        assert_eq!(record.underlay_ip, Ipv4Addr::new(198, 19, 4, 11));
        let other = node(r#"{"node.alpha.kubernetes.io/ttl": "0"}"#);
        let record = node_record(&other).unwrap().unwrap();
        assert_eq!(
            record.underlay_ip,
            Ipv4Addr::new(198, 18, 0, 11),
            "not published yet"
        );

        for bad in [
            "198.19.4",
            "fd00::1",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            " 198.19.4.11",
        ] {
            let e = node_record(&node(&format!(
                r#"{{"weft.dev/underlay-address": "{bad}"}}"#
            )))
            .unwrap_err();
            assert_eq!(
                e.field, "metadata.annotations[weft.dev/underlay-address]",
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(bad.trim()), "{e}");
        }
        let published_without_cidr: core::Node = from_json(
            r#"{"metadata": {"name": "n1", "annotations": {"weft.dev/underlay-address": "198.19.4.11"}}}"#,
        );
        assert_eq!(node_record(&published_without_cidr).unwrap(), None);
    }

    #[test]
    fn a_pod_is_an_endpoint_once_scheduled_and_addressed() {
        let pod: PodObject = from_json(
            r#"{"metadata": {"name": "web", "namespace": "x", "uid": "0c1d", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [
                    {"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": "10.244.3.7"}}"#,
        );
        let ep = endpoint_record(&pod).unwrap().unwrap();
        assert_eq!(
            (ep.pod_namespace.as_str(), ep.pod_name.as_str()),
            ("x", "web")
        );
        assert_eq!(
            (ep.container_id.as_str(), ep.ifname.as_str()),
            ("0c1d", API_IFNAME)
        );
        assert_eq!(ep.node, "n1");
        assert_eq!(ep.address, Ipv4Addr::new(10, 244, 3, 7));
        assert_eq!(ep.labels["app"], "web");
        assert_eq!(ep.ports.len(), 2);
        assert_eq!(
            ep.ports[0].protocol,
            Protocol::Tcp,
            "a missing protocol is TCP"
        );
        assert_eq!(ep.ports[1].protocol, Protocol::Udp);

        for skipped in [
            r#"{"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {"podIP": "10.244.3.8"}}"#,
            r#"{"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []}}"#,
            r#"{"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "hostNetwork": true, "containers": []},
                "status": {"podIP": "198.18.0.11"}}"#,
            r#"{"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": "Succeeded", "podIP": "10.244.3.8"}}"#,
        ] {
            let pod: PodObject = from_json(skipped);
            assert_eq!(endpoint_record(&pod).unwrap(), None, "{skipped}");
        }
    }

    #[test]
    fn a_policy_keeps_its_shape_and_is_checked() {
        let policy: networking::NetworkPolicy = from_json(
            r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "allow", "namespace": "y", "resourceVersion": "12",
                             "managedFields": [{"manager": "kubectl"}]},
                "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                         "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                      "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53, "endPort": 60}]}]}}"#,
        );
        let model = network_policy(&policy).unwrap();
        assert_eq!((model.namespace(), model.name()), ("y", "allow"));
        assert_eq!(model.spec.ingress.len(), 1);
        assert_eq!(model.spec.policy_types(), (true, false));

        let bad: networking::NetworkPolicy = from_json(
            r#"{"metadata": {"name": "bad", "namespace": "y"},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]}}"#,
        );
        let e = network_policy(&bad).unwrap_err();
        assert_eq!(e.name, "y/bad");
        assert!(e.field.starts_with("spec.ingress[0].ports[0]"), "{e}");
    }
}
