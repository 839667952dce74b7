//! deploy/ against a real API server (the test control plane): the API
//! server accepts every manifest (`kubectl apply --dry-run=server`), the
//! BGPPeer CRD serves objects of the model's shape and refuses others, and
//! the agent's ServiceAccount may do exactly what the agent does: read
//! the cluster and patch Node status, nothing else. Needs root.

use weft_tests::{TestControlPlane, require_root};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const AGENT: &str = "system:serviceaccount:kube-system:weft-agent";

#[test]
fn deploy_manifests_are_accepted_and_least_privilege() {
    require_root();
    let cp = TestControlPlane::start("wdp");
    cp.kubectl(&["apply", "--dry-run=server", "-f", DEPLOY]);
    cp.kubectl(&["apply", "-f", DEPLOY]);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/bgppeers.weft.dev",
        "--timeout=30s",
    ]);

    // A BGPPeer as `weftctl lab apply` takes it is served back unchanged;
    // a wrongly typed field is refused by the schema, naming it.
    cp.apply(
        "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor-a}\n\
         spec: {peerIP: 198.18.0.200, asNumber: 64600, node: node1}\n",
    );
    let peer = cp.kubectl(&["get", "bgppeer", "tor-a", "-o", "jsonpath={.spec.asNumber}"]);
    assert_eq!(peer, "64600");
    let bad = cp.plane.kubectl_with_input(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: bad}\n\
             spec: {peerIP: 198.18.0.201, asNumber: many}\n",
        ),
    );
    let e = bad.expect_err("a string AS number is refused").to_string();
    assert!(e.contains("spec.asNumber"), "{e}");

    let can = |verb: &str, resource: &str| cp.can_i(verb, resource, Some(AGENT));
    let mut wrong = Vec::new();
    for resource in [
        "nodes",
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "bgppeers.weft.dev",
    ] {
        for verb in ["get", "list", "watch"] {
            if !can(verb, resource) {
                wrong.push(format!("may not {verb} {resource}"));
            }
        }
    }
    if !can("patch", "nodes/status") {
        wrong.push("may not patch nodes/status".into());
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods/exec"),
        ("delete", "nodes"),
        ("patch", "nodes"),
        ("create", "pods"),
        ("update", "pods"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "bgppeers.weft.dev"),
        ("update", "configmaps"),
    ] {
        if can(verb, resource) {
            wrong.push(format!("may {verb} {resource}"));
        }
    }
    assert!(wrong.is_empty(), "the agent's role is wrong: {wrong:?}");
}
