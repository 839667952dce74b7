//! What the agent keeps of each object: only the fields [`super::convert`]
//! and the agent read. Managed fields and annotations (kubectl's
//! last-applied copy of the whole object) would cost every node's agent
//! kilobytes per object for nothing; a Node's images and info too. Objects
//! are pruned as they arrive, before they are stored. Pods, the many, are
//! decoded into a type of their own that has only what Weft reads
//! ([`super::pod::PodObject`]) and then pruned like the others.

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

/// [`meta`] of any object (Pods are already slim; NetworkPolicies and
/// BGPPeers keep their specs: the compiler reads all of them).
pub fn meta_of<K: Resource>(obj: &mut K) {
    meta(obj.meta_mut());
}

/// A Node: its pod CIDRs, addresses, and the condition and annotation
/// Weft owns.
pub fn node(node: &mut core::Node) {
    let underlay = (node.metadata.annotations.as_mut())
        .and_then(|a| a.remove_entry(super::UNDERLAY_ADDRESS_ANNOTATION));
    meta(&mut node.metadata);
    node.metadata.annotations = underlay.map(|entry| [entry].into());
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
    use crate::kubernetes::pod::PodObject;

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
    fn a_slim_pod_keeps_what_weft_reads_of_a_real_one() {
        let whole: serde_json::Value = serde_json::from_str(POD).unwrap();
        let mut pod: PodObject = serde_json::from_str(POD).unwrap();
        meta_of(&mut pod);
        let ep = convert::endpoint_record(&pod).unwrap().unwrap();
        assert_eq!(
            (ep.pod_namespace.as_str(), ep.pod_name.as_str()),
            ("shop", "web-7d4b9")
        );
        assert_eq!(
            (ep.container_id.as_str(), ep.node.as_str()),
            ("0c1d-77", "n1")
        );
        assert_eq!(ep.address.to_string(), "10.244.1.7");
        assert_eq!(ep.labels.len(), 2);
        assert_eq!(ep.ports.len(), 1);
        assert_eq!(ep.ports[0].name.as_deref(), Some("http"));
        let kept = serde_json::to_value(&pod).unwrap();
        assert_eq!(kept["metadata"]["annotations"], serde_json::Value::Null);
        assert_eq!(kept["metadata"]["managedFields"], serde_json::Value::Null);
        let size = |v: &serde_json::Value| v.to_string().len();
        println!(
            "pod JSON: {} bytes whole, {} kept",
            size(&whole),
            size(&kept)
        );
        assert!(size(&kept) * 4 < size(&whole), "a quarter at most is kept");
        assert!(
            size_of::<PodObject>() * 4 < size_of::<core::Pod>(),
            "the slim type is {} bytes, k8s-openapi's {}",
            size_of::<PodObject>(),
            size_of::<core::Pod>()
        );
    }

    #[test]
    fn a_pruned_node_keeps_its_record_and_weft_s_condition() {
        let whole: core::Node = serde_json::from_str(
            r#"{"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
                 "annotations": {"node.alpha.kubernetes.io/ttl": "0", "weft.dev/underlay-address": "198.18.0.11"}},
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
        let annotations = pruned.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["weft.dev/underlay-address"]
        );
        let conditions = pruned.status.unwrap().conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "NetworkUnavailable");
    }
}
