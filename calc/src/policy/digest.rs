//! A stable digest of what a policy compilation reads (namespaces' labels,
//! pods, policies), so that someone who wrote those inputs can tell when an
//! agent has compiled and programmed exactly them: the agent reports the
//! digest of its last programmed compilation, the writer computes the same
//! from what it wrote (`weftctl lab netpol` waits on it instead of sleeping).
//!
//! Order-independent: every item is put in a canonical form (JSON, labels
//! and ports sorted) and the items of each kind are sorted before hashing.
//! What the compiler does not read (the node compiling, the previous
//! identities) is left out, so every node of a cluster reports the same
//! digest for the same cluster.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use weft_model::namespace::labels_of;
use weft_model::selector::Labels;
use weft_model::{Namespace, NetworkPolicy, PolicyPod};

use super::PolicyInput;

/// The digest of `input`'s namespaces, pods and policies: 32 hex digits.
pub fn input_digest(input: &PolicyInput) -> String {
    digest(input.namespaces, input.pods, input.policies)
}

/// The digest of the inputs [`super::compile_cluster`] reads from `cluster`.
pub fn cluster_digest(cluster: &crate::Cluster) -> String {
    let pods: Vec<PolicyPod> = cluster.endpoints().map(PolicyPod::from).collect();
    let namespaces: Vec<Namespace> = cluster.namespaces().cloned().collect();
    let policies: Vec<NetworkPolicy> = cluster.network_policies().cloned().collect();
    digest(&namespaces, &pods, &policies)
}

/// The digest of namespaces (their labels as selectors see them, those
/// only pods name included), pods and policies, in any order.
pub fn digest(namespaces: &[Namespace], pods: &[PolicyPod], policies: &[NetworkPolicy]) -> String {
    let mut labels: BTreeMap<&str, Labels> =
        namespaces.iter().map(|n| (n.name(), n.labels())).collect();
    for pod in pods {
        labels
            .entry(&pod.namespace)
            .or_insert_with(|| labels_of(&pod.namespace, None));
    }
    let namespaces: Vec<String> = labels.iter().map(|item| canonical(&item)).collect();
    let pods = sorted(pods.iter().map(|pod| {
        let mut pod = pod.clone();
        pod.ports.sort();
        canonical(&pod)
    }));
    let policies = sorted(policies.iter().map(canonical));
    let mut hash = Sha256::new();
    // serde_json escapes newlines inside strings: a line is one item.
    for (kind, items) in [
        ("namespaces", namespaces),
        ("pods", pods),
        ("policies", policies),
    ] {
        hash.update(format!("{kind} {}\n", items.len()));
        for item in items {
            hash.update(item);
            hash.update("\n");
        }
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical<T: serde::Serialize>(item: &T) -> String {
    serde_json::to_string(item).expect("policy inputs serialize to JSON")
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.collect();
    items.sort();
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::policy::{ContainerPort, Protocol, labels};

    fn pod(name: &str, ip: [u8; 4], ports: Vec<ContainerPort>) -> PolicyPod {
        PolicyPod {
            namespace: "x".into(),
            name: name.into(),
            labels: labels([("pod", name)]),
            address: Some(ip.into()),
            node: "node1".into(),
            ports,
        }
    }

    fn port(n: u16) -> ContainerPort {
        ContainerPort {
            name: Some(format!("p{n}")),
            container_port: n,
            protocol: Protocol::Tcp,
        }
    }

    fn policy(name: &str) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap()
    }

    #[test]
    fn the_order_of_inputs_does_not_matter_and_every_input_does() {
        let a = pod("a", [10, 244, 1, 2], vec![port(80), port(81)]);
        let b = pod("b", [10, 244, 2, 2], vec![]);
        let ns = Namespace::new("x", labels([("ns", "x")]));
        let base = digest(
            std::slice::from_ref(&ns),
            &[a.clone(), b.clone()],
            &[policy("p"), policy("q")],
        );
        assert_eq!(base.len(), 32);
        let mut a_swapped = a.clone();
        a_swapped.ports.reverse();
        assert_eq!(
            base,
            digest(
                std::slice::from_ref(&ns),
                &[b.clone(), a_swapped],
                &[policy("q"), policy("p")]
            )
        );
        let mut moved = b.clone();
        moved.node = "node2".into();
        let mut relabelled = b.clone();
        relabelled.labels = labels([("pod", "c")]);
        let mut readdressed = b.clone();
        readdressed.address = Some([10, 244, 2, 3].into());
        for changed in [moved, relabelled, readdressed] {
            assert_ne!(
                base,
                digest(
                    std::slice::from_ref(&ns),
                    &[a.clone(), changed],
                    &[policy("p"), policy("q")]
                )
            );
        }
        assert_ne!(
            base,
            digest(
                std::slice::from_ref(&ns),
                &[a.clone(), b.clone()],
                &[policy("p")]
            )
        );
        let relabelled_ns = Namespace::new("x", labels([("ns", "y")]));
        assert_ne!(
            base,
            digest(
                &[relabelled_ns],
                &[a.clone(), b.clone()],
                &[policy("p"), policy("q")]
            )
        );
    }

    #[test]
    fn a_namespace_only_pods_name_is_the_same_as_its_bare_object() {
        let a = pod("a", [10, 244, 1, 2], vec![]);
        assert_eq!(
            digest(&[], std::slice::from_ref(&a), &[]),
            digest(&[Namespace::new("x", Labels::new())], &[a], &[])
        );
    }
}
