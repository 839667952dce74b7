//! The Kubernetes cluster source (weft_datastore::kubernetes) against a
//! real API server (the test control plane): objects created with kubectl
//! reach the source's snapshot in the model's types, and later changes
//! arrive as the change of the one object they touch. Needs root (the
//! control plane's network namespace, which this test's thread enters to
//! reach the API server).

use std::time::Duration;

use weft_datastore::kubernetes::KubernetesSource;
use weft_datastore::{ClusterSource, SourceEvent};
use weft_model::{Change, Object, ObjectId};
use weft_tests::{TestControlPlane, require_root};

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 198.18.0.11}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
    ports: [{port: http}]
";

const PEER: &str = "\
apiVersion: weft.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor-a}
spec: {peerIP: 198.18.0.200, asNumber: 64600, node: node-a}
";

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec:
  nodeName: node-a
  automountServiceAccountToken: false
  containers:
  - name: c
    image: none
    ports: [{name: http, containerPort: 8080}]
";

/// Waits up to 30 s for an event `wanted` accepts.
async fn next_matching(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<SourceEvent>,
    what: &str,
    wanted: impl Fn(&SourceEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) if wanted(&event) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the source's channel closed while waiting for {what}"),
            Err(_) => panic!("no {what} within 30 s"),
        }
    }
}

#[test]
fn api_objects_become_model_objects_and_changes() {
    require_root();
    let cp = TestControlPlane::start("wks");
    cp.kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml"),
    ]);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/bgppeers.weft.dev",
        "--timeout=30s",
    ]);
    cp.apply(OBJECTS);
    cp.apply(PEER);
    cp.apply(POD);
    // kubelet's part: the pod's address, written into its status.
    cp.kubectl(&[
        "-n",
        "x",
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.244.0.5","podIPs":[{"ip":"10.244.0.5"}]}}"#,
    ]);

    // This test's own thread enters the control plane's namespace, so the
    // client's sockets are made there; libtest ends the thread afterwards.
    weft_dataplane::netns::enter(&weft_lab::topology::netns_path(&cp.netns))
        .expect("entering the control plane's namespace");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&cp.plane.admin_kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let source = KubernetesSource::start(client);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _watch = source.watch(tx).unwrap();
        assert!(
            matches!(source.snapshot(), Err(weft_datastore::DatastoreError::NotSynced))
                || source.is_synced(),
            "a snapshot before the first complete list is refused"
        );
        tokio::time::timeout(Duration::from_secs(30), source.wait_synced())
            .await
            .expect("the source lists every kind within 30 s");

        // The node is a NodeRecord once node IPAM has given it a pod CIDR
        // (before or after the first list).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let snapshot = loop {
            let snapshot = source.snapshot().unwrap();
            if snapshot.nodes.iter().any(|n| n.name == "node-a") {
                break snapshot;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node-a never became a NodeRecord: {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let node = snapshot.nodes.iter().find(|n| n.name == "node-a").unwrap();
        assert_eq!(node.underlay_ip.to_string(), "198.18.0.11");
        assert_eq!(node.pod_cidr.prefix(), 24);

        let web = snapshot
            .endpoints
            .iter()
            .find(|e| e.pod_name == "web")
            .expect("the addressed pod is an endpoint");
        assert_eq!(web.pod_namespace, "x");
        assert_eq!(web.node, "node-a");
        assert_eq!(web.address.to_string(), "10.244.0.5");
        assert_eq!(web.labels["app"], "web");
        assert_eq!(web.ports[0].name.as_deref(), Some("http"));
        assert_eq!(web.ports[0].container_port, 8080);
        let x = snapshot.namespaces.iter().find(|n| n.name() == "x").unwrap();
        assert_eq!(x.labels()["team"], "blue");
        assert_eq!(x.labels()["kubernetes.io/metadata.name"], "x");
        let peer = snapshot.bgp_peers.iter().find(|p| p.metadata.name == "tor-a").unwrap();
        assert_eq!(peer.spec.as_number, 64600);
        assert!(peer.applies_to("node-a"));
        let policy = &snapshot.network_policies;
        assert!(policy.iter().any(|p| p.namespace() == "x" && p.name() == "web-in"));

        // Changes: a relabelled pod is the upsert of its endpoint, a
        // deleted policy the delete of its id.
        let key = web.key();
        cp.kubectl(&["-n", "x", "label", "pod", "web", "tier=front"]);
        next_matching(&mut rx, "the relabelled pod", |e| {
            matches!(e, SourceEvent::Changed(Change::Upsert(Object::Endpoint(ep)))
                if ep.key() == key && ep.labels.get("tier").map(String::as_str) == Some("front"))
        })
        .await;
        cp.kubectl(&["-n", "x", "delete", "networkpolicy", "web-in"]);
        next_matching(&mut rx, "the deleted policy", |e| {
            *e == SourceEvent::Changed(Change::Delete(ObjectId::NetworkPolicy {
                namespace: "x".into(),
                name: "web-in".into(),
            }))
        })
        .await;
        cp.kubectl(&["-n", "x", "delete", "pod", "web", "--grace-period=0", "--force"]);
        next_matching(&mut rx, "the deleted pod's endpoint", |e| {
            matches!(e, SourceEvent::Changed(Change::Delete(ObjectId::Endpoint { key: k, .. })) if *k == key)
        })
        .await;
        cp.kubectl(&["delete", "bgppeer", "tor-a"]);
        next_matching(&mut rx, "the deleted BGPPeer", |e| {
            *e == SourceEvent::Changed(Change::Delete(ObjectId::BgpPeer("tor-a".into())))
        })
        .await;
    });
}
