//! The operator's view of NetworkPolicy on a lab: `weftctl policy show`
//! prints an endpoint's compiled rules and its per-endpoint counters,
//! which move as policy allows and denies real traffic. Real agents,
//! weft-cni, weftctl and kernel. Needs root.

use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::Value;
use weft_tests::*;

/// Namespace x reaches app=b on the named port http, nothing else does.
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

/// Whether one TCP exchange with `to`'s echo server on port 80 succeeds
/// from `from` (one try: a denied SYN and its retransmissions count).
fn tcp(lab: &Lab, from: &str, to: &str) -> bool {
    let (from, to) = (lab.pod(from), lab.pod(to));
    weft_lab::probe::tcp_exchange(
        &weft_lab::topology::netns_path(&from.netns),
        SocketAddrV4::new(to.address().unwrap(), 80),
        "hello",
        Duration::from_millis(500),
        1,
    )
    .is_ok()
}

/// `weftctl policy show --node NODE --pod POD --json`: the one endpoint.
fn show(lab: &Lab, node: &str, pod: &str) -> Value {
    let out = lab.ctl_ok(&["policy", "show", "--node", node, "--pod", pod, "--json"]);
    let mut json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let endpoints = json["endpoints"].as_array_mut().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{out}");
    endpoints.remove(0)
}

fn count(ep: &Value, direction: &str, what: &str) -> u64 {
    ep[direction][what].as_u64().expect("a count")
}

#[test]
fn policy_show_prints_an_endpoints_rules_and_its_counters_move() {
    let lab = Lab::up("pops", 2, 0);
    lab.pod_add("node1", "a", "x", "app=a", "http:80/tcp");
    lab.pod_add("node1", "c", "z", "app=c", "http:80/tcp");
    lab.pod_add("node2", "b", "y", "app=b", "http:80/tcp");
    lab.apply(ALLOW_X_TO_HTTP);
    eventually("TCP from x to b allowed", Duration::from_secs(5), || {
        let ep = show(&lab, "node2", "b");
        if ep["ingress"]["isolated"] == true && tcp(&lab, "a", "b") {
            Ok(())
        } else {
            Err(ep.to_string())
        }
    });

    let a = lab.pod("a").address().unwrap();
    let ep = show(&lab, "node2", "y/b");
    assert_eq!(ep["pod"], "y/b");
    assert_eq!(ep["failed_closed"], Value::Null);
    assert_eq!(ep["egress"]["isolated"], false);
    let rules = ep["ingress"]["rules"].as_array().unwrap();
    let rule = |peer: &str, protocol: &str, ports: &str| {
        rules
            .iter()
            .any(|r| r["peer"] == peer && r["protocol"] == protocol && r["ports"] == ports)
    };
    assert!(rule(&format!("pod x/a ({a})"), "TCP", "80"), "{rules:#?}");
    assert!(rule("host (this node)", "any", "any"), "{rules:#?}");
    assert_eq!(rules.len(), 2, "z/c is allowed nothing: {rules:#?}");

    // Allowed and denied connections move b's ingress counters, and only
    // those: nothing isolates a's or c's egress.
    let before = show(&lab, "node2", "b");
    assert!(count(&before, "ingress", "allowed") >= 1);
    assert!(tcp(&lab, "a", "b"), "x/a reaches b:80");
    assert!(!tcp(&lab, "c", "b"), "z/c does not");
    let after = show(&lab, "node2", "b");
    assert!(
        count(&after, "ingress", "allowed") > count(&before, "ingress", "allowed"),
        "allowed: {before} -> {after}"
    );
    assert!(
        count(&after, "ingress", "denied") > count(&before, "ingress", "denied"),
        "denied: {before} -> {after}"
    );
    assert_eq!(count(&after, "egress", "allowed"), 0);
    let c = show(&lab, "node1", "c");
    assert_eq!(c["ingress"]["isolated"], false);
    assert_eq!(count(&c, "egress", "denied"), 0);

    // The text form says the same; an unknown pod is an error naming the
    // endpoints there are.
    let text = lab.ctl_ok(&["policy", "show", "--node", "node2"]);
    assert!(text.contains("pod y/b ("), "{text}");
    assert!(
        text.contains(&format!("allow from pod x/a ({a}): TCP 80")),
        "{text}"
    );
    assert!(text.contains("egress: not isolated"), "{text}");
    let out = lab.ctl(&["policy", "show", "--node", "node2", "--pod", "nosuch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no local endpoint \"nosuch\"") && err.contains("y/b"),
        "{err}"
    );
    // No endpoint fails closed here.
    let status = lab.ctl_ok(&["status", "--node", "node2", "--json"]);
    assert!(
        status.contains("\"policy_endpoints_failed_closed\": 0"),
        "{status}"
    );
    assert_eq!(lab.counter("node2", "policy_endpoints_failed_closed"), 0);
}

/// A policy the API server would refuse (an unknown protocol) reaches the
/// agent through its store: the endpoints it selects fail closed, denied
/// everything, and the agent says so in its log, its status, its counters
/// and `policy show`; once the policy is gone they are open again.
#[test]
fn an_endpoint_with_a_malformed_policy_fails_closed_and_says_so() {
    let lab = Lab::up("pfail", 2, 0);
    lab.pod_add("node1", "a", "x", "app=a", "http:80/tcp");
    lab.pod_add("node2", "b", "y", "app=b", "http:80/tcp");
    lab.apply(ALLOW_X_TO_HTTP);
    lab.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: y}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - ports: [{protocol: UDP, port: 53}]
",
    );
    eventually("b's rules programmed", Duration::from_secs(5), || {
        let ep = show(&lab, "node2", "b");
        let udp = ep["ingress"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["protocol"] == "UDP");
        if udp && tcp(&lab, "a", "b") {
            Ok(())
        } else {
            Err(ep.to_string())
        }
    });

    // Break the stored object as no validated write could.
    let state = lab.lab().load().unwrap();
    let path = state.datastore_dir().join("networkpolicies/y/broken.json");
    let stored = std::fs::read_to_string(&path).unwrap();
    assert_eq!(stored.matches("\"UDP\"").count(), 1, "{stored}");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, stored.replace("\"UDP\"", "\"ICMP\"")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();

    let ep = eventually("b fails closed", Duration::from_secs(15), || {
        let ep = show(&lab, "node2", "b");
        if ep["failed_closed"].is_string() {
            Ok(ep)
        } else {
            Err(ep.to_string())
        }
    });
    assert_eq!(
        ep["failed_closed"],
        "policy y/broken is malformed: unknown protocol \"ICMP\""
    );
    for direction in ["ingress", "egress"] {
        assert_eq!(ep[direction]["isolated"], true, "{ep}");
        assert_eq!(ep[direction]["rules"], serde_json::json!([]), "{ep}");
    }
    assert!(
        !tcp(&lab, "a", "b"),
        "x/a is denied too, though a policy allows it"
    );
    let text = lab.ctl_ok(&["policy", "show", "--node", "node2", "--pod", "b"]);
    assert!(
        text.contains("FAILS CLOSED: denied everything both ways"),
        "{text}"
    );
    let status = lab.ctl_ok(&["status", "--node", "node2", "--json"]);
    assert!(
        status.contains("\"policy_endpoints_failed_closed\": 1"),
        "{status}"
    );
    assert_eq!(lab.counter("node2", "policy_endpoints_failed_closed"), 1);
    let log =
        std::fs::read_to_string(weft_lab::agent::log_path(state.node("node2").unwrap())).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("fails closed") && l.contains("y/broken")),
        "the agent's log says so:\n{log}"
    );
    // a's endpoint, on node1, is untouched.
    assert_eq!(lab.counter("node1", "policy_endpoints_failed_closed"), 0);

    lab.ctl_ok(&["lab", "delete", "networkpolicy", "y/broken"]);
    eventually("b open to x again", Duration::from_secs(5), || {
        if tcp(&lab, "a", "b") {
            Ok(())
        } else {
            Err(show(&lab, "node2", "b").to_string())
        }
    });
    assert_eq!(show(&lab, "node2", "b")["failed_closed"], Value::Null);
    assert_eq!(lab.counter("node2", "policy_endpoints_failed_closed"), 0);
}
