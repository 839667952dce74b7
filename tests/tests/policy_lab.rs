//! NetworkPolicy enforced on a lab: policies applied into the datastore,
//! compiled by each node's agent into its eBPF maps, and judged by the pod
//! veth programs, on real TCP and UDP to the pods' echo servers. Real
//! agents, weft-cni, weftctl and kernel. Needs root.

use std::net::SocketAddrV4;
use std::time::Duration;

use weft_tests::*;

const DENY_ALL_IN_Y: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// From namespace x, to the named port `http` of pods `app=b` only.
const ALLOW_X_TO_HTTP: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x-http, namespace: y}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    ports:
    - port: http
";

/// Whether a TCP exchange with `to`'s echo server on `port` succeeds from `from`.
fn tcp(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    let (from, to) = (lab.pod(from), lab.pod(to));
    weft_lab::probe::tcp_exchange(
        &weft_lab::topology::netns_path(&from.netns),
        SocketAddrV4::new(to.address().unwrap(), port),
        "hello",
        Duration::from_millis(500),
        2,
    )
    .is_ok()
}

/// Whether `to`'s UDP echo server on `port` answers `from`.
fn udp(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    let (from, to) = (lab.pod(from), lab.pod(to));
    weft_lab::probe::udp_exchange(
        &weft_lab::topology::netns_path(&from.netns),
        SocketAddrV4::new(to.address().unwrap(), port),
        "ping",
        Duration::from_millis(500),
        10,
    )
    .is_ok()
}

#[test]
fn policies_isolate_allow_by_namespace_and_named_port_and_go_away() {
    let lab = Lab::up("pol", 2, 0);
    lab.pod_add("node1", "a", "x", "app=a", "http:80/tcp,dns:53/udp");
    lab.pod_add("node2", "b", "y", "app=b", "http:80/tcp,dns:53/udp");
    // Nothing selects b: open.
    assert!(tcp(&lab, "a", "b", 80), "TCP before any policy");
    assert!(udp(&lab, "a", "b", 53), "UDP before any policy");

    // Deny all ingress in y: isolated, nothing in.
    lab.apply(DENY_ALL_IN_Y);
    let eventually_denied = |what: &str, probe: &dyn Fn() -> bool| {
        eventually(what, Duration::from_secs(5), || {
            if probe() {
                Err("still allowed".to_string())
            } else {
                Ok(())
            }
        });
    };
    eventually_denied("TCP to b denied", &|| tcp(&lab, "a", "b", 80));
    assert!(!udp(&lab, "a", "b", 53), "UDP to b denied");

    // Allowing namespace x on the named port http opens TCP 80 only.
    lab.apply(ALLOW_X_TO_HTTP);
    eventually("TCP from x to http allowed", Duration::from_secs(5), || {
        if tcp(&lab, "a", "b", 80) {
            Ok(())
        } else {
            Err("denied".to_string())
        }
    });
    assert!(!udp(&lab, "a", "b", 53), "UDP is no named port http");

    // A pod started in y is isolated from its first packet: its ADD
    // returned after its policy was in the maps.
    lab.pod_add("node2", "new", "y", "app=new", "http:80/tcp,dns:53/udp");
    assert!(
        !tcp(&lab, "a", "new", 80),
        "a new pod in y is isolated at once"
    );

    // Policies gone: open again.
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "y/deny-all"]);
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "y/allow-x-http"]);
    eventually("UDP to b allowed again", Duration::from_secs(5), || {
        if udp(&lab, "a", "b", 53) {
            Ok(())
        } else {
            Err("denied".to_string())
        }
    });
    assert!(tcp(&lab, "a", "new", 80), "the new pod is open too");
    let counters = lab.ctl_ok(&["counters", "--node", "node2"]);
    assert!(
        counters
            .lines()
            .any(|l| l.starts_with("policy_ingress_denied") && !l.trim_end().ends_with(" 0")),
        "denials are counted:\n{counters}"
    );
}
