//! weft-agent with `--datastore kubernetes` against a real API server (the
//! test control plane), one node, authenticated as the DaemonSet's
//! ServiceAccount with deploy/rbac.yaml's rights only:
//! - it waits for its Node's pod CIDR, takes its address from the Node's
//!   InternalIP and says so in `weftctl status`;
//! - it sets the Node's NetworkUnavailable=False and publishes its
//!   underlay address (`weft.dev/underlay-address`) through nodes/status;
//! - `/readyz` waits for every wanted BGP session, `/healthz` is up
//!   throughout, also while the API server is frozen or restarting;
//! - a pod wired through weft-cni takes its labels and ports from its Pod
//!   object (named by CNI_ARGS), follows `kubectl label`, also for changes
//!   made while the API server was away; an ADD for a Pod the API does
//!   not have fails with CNI's "try again later" (11) saying so.
//!
//! Needs root (network namespaces, bpffs, the agent's programs).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::{
    CniCall, Namespaces, TestControlPlane, bin, eventually, require_root, show, stdout,
};

const NODE: &str = "wk-n1";

const OBJECTS: &str = "\
apiVersion: v1
kind: Node
metadata: {name: wk-n1}
status:
  addresses: [{type: InternalIP, address: 198.18.250.1}, {type: Hostname, address: wk-n1}]
---
apiVersion: v1
kind: Node
metadata: {name: wk-n2}
status:
  addresses: [{type: InternalIP, address: 198.18.250.2}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: wk-n1
  automountServiceAccountToken: false
  containers:
  - name: c
    image: none
    ports: [{name: http, containerPort: 8080}]
";

fn node_condition(cp: &TestControlPlane, field: &str) -> String {
    cp.kubectl(&[
        "get",
        "node",
        NODE,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"NetworkUnavailable\")].{field}}}"),
    ])
}

/// The labels of the agent's one endpoint, as `weftctl endpoints` shows them.
fn endpoint_labels(socket: &Path) -> String {
    let out = Command::new(bin("weftctl"))
        .args(["endpoints", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("weftctl runs");
    assert!(out.status.success(), "weftctl endpoints: {}", show(&out));
    let endpoints: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    endpoints[0]["labels"].to_string()
}

#[test]
fn agent_runs_on_the_api_server() {
    require_root();
    let cp = TestControlPlane::start("wka");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("agent.kubeconfig");
    cp.prepare_agent(&kubeconfig);
    cp.apply(OBJECTS);

    let mut agent = cp.spawn_agent(
        NODE,
        &kubeconfig,
        dir.path(),
        "info",
        &["--resync-seconds", "2"],
    );
    let socket = agent.socket.clone();

    // Alive while it waits; the status says where the address came from.
    eventually(
        "the agent serves its status",
        Duration::from_secs(60),
        || {
            agent.assert_running();
            let out = Command::new(bin("weftctl"))
                .args(["status", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| stdout(&out))
                .ok_or_else(|| show(&out))
        },
    );
    assert_eq!(cp.agent_health("/healthz").0, 200);
    let out = Command::new(bin("weftctl"))
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["datastore"], "kubernetes", "{status}");
    assert_eq!(status["node_address"], "198.18.250.1", "{status}");
    let reason = status["node_address_reason"].as_str().unwrap();
    assert!(reason.contains("InternalIP"), "{reason}");
    let cidr = cp.kubectl(&["get", "node", NODE, "-o", "jsonpath={.spec.podCIDR}"]);
    assert_eq!(status["pod_cidr"], cidr.trim(), "the Node's pod CIDR");

    // Not ready while the session with wk-n2 (nobody there) is down.
    let (code, body) = cp.agent_health("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("198.18.250.2"), "{body}");
    eventually("NetworkUnavailable=False", Duration::from_secs(30), || {
        let status = node_condition(&cp, "status");
        (status == "False").then_some(()).ok_or(status)
    });
    assert_eq!(node_condition(&cp, "reason"), "WeftIsUp");
    let published = cp.kubectl(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.metadata.annotations.weft\\.dev/underlay-address}",
    ]);
    assert_eq!(published.trim(), "198.18.250.1");
    cp.kubectl(&["delete", "node", "wk-n2"]);
    eventually("ready without wk-n2", Duration::from_secs(30), || {
        let (code, body) = cp.agent_health("/readyz");
        (code == 200).then_some(()).ok_or(body)
    });

    // A pod wired as kubelet would: its labels and ports from the Pod.
    let mut namespaces = Namespaces::default();
    let netns_path = namespaces.add(&format!("wka-pod-{}", std::process::id()));
    let config = serde_json::json!({
        "cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
        "agentSocket": socket,
        // What CNI passes is overridden by the Pod object's.
        "args": {"cni": {"labels": [{"key": "app", "value": "from-cni"}]}},
    })
    .to_string();
    let ghost_netns = namespaces.add(&format!("wka-ghost-{}", std::process::id()));
    let call = |command, container_id: &'static str, args| CniCall {
        command,
        container_id,
        netns: Some(if container_id == "wka-ghost" {
            &ghost_netns
        } else {
            &netns_path
        }),
        ifname: "eth0",
        args,
        config: &config,
    };
    let add = call(
        "ADD",
        "wka-web",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    )
    .run_in(&cp.netns);
    assert!(add.status.success(), "ADD: {}\n{}", show(&add), agent.log());
    assert_eq!(endpoint_labels(&socket), r#"{"app":"web"}"#);
    let out = Command::new(bin("weftctl"))
        .args(["endpoints", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("8080"),
        "the Pod's port: {}",
        stdout(&out)
    );

    let ghost = call(
        "ADD",
        "wka-ghost",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=ghost",
    )
    .run_in(&cp.netns);
    assert!(!ghost.status.success(), "an unknown Pod's ADD fails");
    assert!(
        stdout(&ghost).contains("Pod default/ghost is not known"),
        "{}",
        show(&ghost)
    );
    // The watch may only lag: "try again later", as the kubelet retries.
    let error: serde_json::Value = serde_json::from_slice(&ghost.stdout).unwrap();
    assert_eq!(error["code"], 11, "{error}");

    cp.kubectl(&["label", "pod", "web", "app=db", "--overwrite"]);
    eventually(
        "the relabel reaches the endpoint",
        Duration::from_secs(10),
        || {
            let labels = endpoint_labels(&socket);
            (labels == r#"{"app":"db"}"#).then_some(()).ok_or(labels)
        },
    );

    // The API server frozen: the agent stays alive and keeps serving.
    let api = cp.plane.pid("kube-apiserver").unwrap() as i32;
    let pid = nix::unistd::Pid::from_raw(api);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(8) {
        let (code, body) = cp.agent_health("/healthz");
        if code != 200 {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            panic!("liveness failed with the API server frozen: {code} {body}");
        }
        agent.assert_running();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(endpoint_labels(&socket), r#"{"app":"db"}"#, "state kept");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    cp.kubectl(&["label", "pod", "web", "app=after-freeze", "--overwrite"]);
    eventually("a change after the freeze", Duration::from_secs(30), || {
        let labels = endpoint_labels(&socket);
        (labels == r#"{"app":"after-freeze"}"#)
            .then_some(())
            .ok_or(labels)
    });

    // Killed and restarted: a change made meanwhile arrives once it is back.
    let mut cp = cp;
    cp.plane
        .restart("kube-apiserver")
        .expect("the API server restarts");
    cp.kubectl(&["label", "pod", "web", "app=after-restart", "--overwrite"]);
    eventually(
        "a change after the restart",
        Duration::from_secs(60),
        || {
            agent.assert_running();
            let labels = endpoint_labels(&socket);
            (labels == r#"{"app":"after-restart"}"#)
                .then_some(())
                .ok_or(labels)
        },
    );
    assert_eq!(cp.agent_health("/healthz").0, 200);

    let del = call(
        "DEL",
        "wka-web",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    )
    .run_in(&cp.netns);
    assert!(del.status.success(), "DEL: {}", show(&del));
    agent.assert_running();
    let mut text = String::new();
    let _ = std::fs::File::open(&agent.log).and_then(|mut f| f.read_to_string(&mut text));
    assert!(!text.contains("panicked"), "{text}");
    drop(agent);
    std::io::stdout().flush().unwrap();
}
