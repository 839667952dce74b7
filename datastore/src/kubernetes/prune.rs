//! What the agent keeps of each object: only the fields [`super::convert`]
//! and the agent read. Every node's agent holds every Pod of the cluster,
//! so a Pod's managed fields, annotations (kubectl's last-applied copy of
//! the whole object), containers' images, environments and probes, and
//! its status conditions would cost each node kilobytes per pod for
//! nothing. Objects are pruned as they arrive, before they are stored.

use k8s_openapi::api::core::v1 as core;
use kube::Resource;
use kube::api::ObjectMeta;

/// Keeps what names, selects and versions an object.
pub fn meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        labels: meta.labels.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
}

/// [`meta`] of any object (NetworkPolicies and BGPPeers keep their specs:
/// the compiler reads all of them).
pub fn meta_of<K: Resource>(obj: &mut K) {
    meta(obj.meta_mut());
}

/// A Pod as a policy peer and an endpoint: its node, whether it is on the
/// host's network, its containers' ports, its phase and address.
pub fn pod(pod: &mut core::Pod) {
    meta(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| core::PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        containers: (spec.containers.into_iter())
            .map(|c| core::Container {
                name: c.name,
                ports: c.ports,
                ..core::Container::default()
            })
            .collect(),
        ..core::PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| core::PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        ..core::PodStatus::default()
    });
}

/// A Node: its pod CIDRs, addresses and the condition Weft owns.
pub fn node(node: &mut core::Node) {
    meta(&mut node.metadata);
    node.spec = node.spec.take().map(|spec| core::NodeSpec {
        pod_cidr: spec.pod_cidr,
        pod_cidrs: spec.pod_cidrs,
        ..core::NodeSpec::default()
    });
    node.status = node.status.take().map(|status| core::NodeStatus {
        addresses: status.addresses,
        conditions: status.conditions.map(|conditions| {
            (conditions.into_iter())
                .filter(|c| c.type_ == super::NETWORK_UNAVAILABLE)
                .collect()
        }),
        ..core::NodeStatus::default()
    });
}

/// A Namespace: its name and labels.
pub fn namespace(ns: &mut core::Namespace) {
    meta(&mut ns.metadata);
    ns.spec = None;
    ns.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::convert;

    /// A Pod as a real cluster has it: kubectl's annotation, managed
    /// fields, a container with everything, conditions.
    const POD: &str = r#"{
      "metadata": {"name": "web-7d4b9", "namespace": "shop", "uid": "0c1d-77",
        "resourceVersion": "4711", "generateName": "web-",
        "labels": {"app": "web", "pod-template-hash": "7d4b9"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"registry.example/web:1.2.3\"}]}}"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "aa", "controller": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
           "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}},
           {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
           "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}}}}]},
      "spec": {"nodeName": "n1", "serviceAccountName": "default", "restartPolicy": "Always",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
        "containers": [{"name": "c", "image": "registry.example/web:1.2.3", "args": ["--port=8080", "--verbose"],
          "env": [{"name": "MODE", "value": "production"}, {"name": "LOG", "value": "info"}],
          "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
          "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
          "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}]},
      "status": {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
        "hostIP": "198.18.0.11", "startTime": "2026-12-06T10:00:00Z", "qosClass": "Burstable",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T10:00:05Z"}],
        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "registry.example/web:1.2.3",
          "imageID": "registry.example/web@sha256:0123456789abcdef", "containerID": "containerd://abcdef",
          "state": {"running": {"startedAt": "2026-12-06T10:00:03Z"}}}]}
    }"#;

    #[test]
    fn a_pruned_pod_converts_as_the_whole_one_and_is_smaller() {
        let whole: core::Pod = serde_json::from_str(POD).unwrap();
        let mut pruned = whole.clone();
        pod(&mut pruned);
        assert_eq!(
            convert::endpoint_record(&pruned).unwrap(),
            convert::endpoint_record(&whole).unwrap()
        );
        assert!(convert::endpoint_record(&pruned).unwrap().is_some());
        assert_eq!(
            convert::pod_metadata(&pruned).unwrap(),
            convert::pod_metadata(&whole).unwrap()
        );
        let size = |p: &core::Pod| serde_json::to_vec(p).unwrap().len();
        println!(
            "pod JSON: {} bytes whole, {} pruned",
            size(&whole),
            size(&pruned)
        );
        assert!(
            size(&pruned) * 4 < size(&whole),
            "pruning keeps a quarter at most"
        );
    }

    #[test]
    fn a_pruned_node_keeps_its_record_and_weft_s_condition() {
        let whole: core::Node = serde_json::from_str(
            r#"{"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
                 "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "kind://n1",
                  "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
                "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
                  "conditions": [{"type": "Ready", "status": "True"},
                                 {"type": "NetworkUnavailable", "status": "False", "reason": "WeftIsUp"}],
                  "images": [{"names": ["registry.example/a@sha256:00", "registry.example/a:1"], "sizeBytes": 1000}],
                  "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1",
                    "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.37.2",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}"#,
        )
        .unwrap();
        let mut pruned = whole.clone();
        node(&mut pruned);
        assert_eq!(
            convert::node_record(&pruned).unwrap(),
            convert::node_record(&whole).unwrap()
        );
        let conditions = pruned.status.unwrap().conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "NetworkUnavailable");
    }
}
