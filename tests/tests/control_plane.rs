//! The test control plane (issue #11): etcd, kube-apiserver and
//! kube-controller-manager built by scripts/build-control-plane.sh, started
//! by weft-lab inside a network namespace of the test's own, serving on a lab
//! address of that namespace. Proves what the Kubernetes tests rely on: the API server is
//! ready, RBAC decides (a ServiceAccount without a binding may do nothing),
//! and the controller manager's node IPAM gives a new Node a /24 of
//! 10.244.0.0/16, as kind does. Needs root (a network namespace).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_tests::{TestControlPlane, require_root};

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-a
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.11}
";

#[test]
fn control_plane_serves_rbac_and_node_ipam() {
    require_root();
    let cp = TestControlPlane::start("wcp");
    let plane = &cp.plane;

    let version = plane.kubectl(&["version", "-o", "json"]).unwrap();
    assert!(version.contains("\"serverVersion\""), "{version}");

    // RBAC: an unbound ServiceAccount may not list pods; the admin may.
    plane
        .kubectl(&["create", "namespace", "weft-test"])
        .unwrap();
    plane
        .kubectl(&["-n", "weft-test", "create", "serviceaccount", "nobody"])
        .unwrap();
    assert!(
        cp.can_i("list", "pods", None),
        "the administrator may list pods"
    );
    assert!(
        !cp.can_i(
            "list",
            "pods",
            Some("system:serviceaccount:weft-test:nobody")
        ),
        "a ServiceAccount without a binding may not list pods"
    );

    // Node IPAM: a registered Node gets its pod CIDR from the controller manager.
    plane
        .kubectl_with_input(&["apply", "-f", "-"], Some(NODE))
        .unwrap();
    let started = Instant::now();
    let cidr = loop {
        let cidr = plane
            .kubectl(&["get", "node", "node-a", "-o", "jsonpath={.spec.podCIDR}"])
            .unwrap();
        if !cidr.is_empty() {
            break cidr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node-a has no spec.podCIDR after 60 s: is node IPAM running?"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("node-a got {cidr} after {:?}", started.elapsed());
    let (network, len) = cidr.split_once('/').unwrap();
    assert_eq!(len, "24");
    let network: Ipv4Addr = network.parse().unwrap();
    assert_eq!(network.octets()[..2], [10, 244]);
}
