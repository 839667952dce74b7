//! The lab on Kubernetes (`weftctl lab up --kubernetes`, issue #11): the
//! control plane built by scripts/build-control-plane.sh on the lab's
//! underlay, every agent on `--datastore kubernetes` with the weft-agent
//! ServiceAccount's token, the lab playing the kubelet. What only
//! Kubernetes has: the Pod objects carry the addresses the CNI gave, the
//! Nodes the pod CIDRs node IPAM gave and the condition the agents set, the
//! agents' identity may read the cluster but not its secrets, policies and
//! BGP peers come through kubectl (with BIRD as the peer), and the control
//! plane goes with the lab. Each encapsulation mode on Kubernetes is tested
//! in encap_lab (`*_on_kubernetes`). Needs root.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weft_tests::peers::Bird;
use weft_tests::*;

fn kubernetes_lab(tag: &str, encap: Encap, pods_per_node: u32) -> Lab {
    let options = UpOptions {
        encap,
        kubernetes: true,
        ..up_options(3, pods_per_node)
    };
    Lab::build(tag, options)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Every lab pod has its Pod object: bound to its node, Running and ready, with the
/// CNI's address as status.podIP and podIPs and its node's as hostIP; and
/// every Node carries its underlay address as InternalIP and the pod CIDR
/// the lab records (node IPAM's), holding its pods' addresses.
fn objects_match_the_lab(lab: &Lab) {
    let status = lab.status();
    let pods = json(&lab.kubectl(&["get", "pods", "-A", "-o", "json"]));
    let pods: BTreeMap<(String, String), &Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let meta = &p["metadata"];
            let key = (
                meta["namespace"].as_str().unwrap().to_string(),
                meta["name"].as_str().unwrap().to_string(),
            );
            (key, p)
        })
        .collect();
    assert_eq!(pods.len(), status.pods.len(), "{:?}", pods.keys());
    for pod in &status.pods {
        let object = pods
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .unwrap_or_else(|| panic!("no Pod object for {}/{}", pod.namespace, pod.name));
        let ip = pod.ip.as_deref().expect("every lab pod has an address");
        let node = status.node(&pod.node).unwrap();
        assert_eq!(object["spec"]["nodeName"], pod.node.as_str());
        assert_eq!(object["status"]["phase"], "Running", "{}", pod.name);
        assert_eq!(object["status"]["podIP"], ip, "{}", pod.name);
        assert_eq!(object["status"]["podIPs"][0]["ip"], ip, "{}", pod.name);
        assert_eq!(object["status"]["hostIP"], node.underlay_ip.as_str());
        assert_eq!(object["status"]["containerStatuses"][0]["ready"], true);
        let cidr: ipnetwork::Ipv4Network = node.pod_cidr.parse().unwrap();
        assert!(cidr.contains(ip.parse().unwrap()), "{ip} not in {cidr}");
    }
    let nodes = json(&lab.kubectl(&["get", "nodes", "-o", "json"]));
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), status.nodes.len());
    for node in &status.nodes {
        let object = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == node.name.as_str())
            .unwrap_or_else(|| panic!("no Node object {}", node.name));
        assert_eq!(object["spec"]["podCIDR"], node.pod_cidr.as_str());
        let internal = object["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .unwrap_or_else(|| panic!("{} has no InternalIP: {object}", node.name));
        assert_eq!(internal["address"], node.underlay_ip.as_str());
    }
}

/// Every Node gets `NetworkUnavailable=False` from its agent, as
/// `kubectl get nodes` shows it.
fn nodes_report_the_network_up(lab: &Lab) {
    eventually(
        "every Node's NetworkUnavailable=False (set by its agent)",
        Duration::from_secs(30),
        || {
            let out = lab.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} \
                 {.status.conditions[?(@.type==\"NetworkUnavailable\")].status} \
                 {.status.conditions[?(@.type==\"NetworkUnavailable\")].reason}{\"\\n\"}{end}",
            ]);
            let up = out
                .lines()
                .filter(|l| l.ends_with(" False WeftIsUp"))
                .count();
            if up == 3 { Ok(()) } else { Err(out) }
        },
    );
}

/// The kubelet's part: the Pod and Node objects say what the lab made
/// (after `lab up` and for a pod added to the running lab, its Pod object
/// first, then the CNI), every pod reaches every pod, and every agent
/// reports its node's network up. (Each encapsulation mode's behaviour on
/// Kubernetes, the full matrix included, is encap_lab's `*_on_kubernetes`.)
#[test]
fn the_lab_plays_the_kubelet() {
    let lab = kubernetes_lab("k8s-objects", Encap::Ipip, 2);
    lab.check();
    objects_match_the_lab(&lab);
    lab.pod_add("node3", "late", "team-a", "app=late", "http:8080/tcp");
    lab.check();
    objects_match_the_lab(&lab);
    nodes_report_the_network_up(&lab);
}

/// The BGP peer addresses `node`'s agent has, with their states.
fn bgp_peers(lab: &Lab, node: &str) -> BTreeMap<String, String> {
    let text = lab.ctl_ok(&["bgp", "peers", "--node", node, "--json"]);
    json(&text)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let field = |f: &str| p[f].as_str().unwrap().to_string();
            (field("address"), field("state"))
        })
        .collect()
}

/// Waits until every Node's `weft.dev/underlay-address` is `published`
/// (`name=address` lines, in the API server's order).
fn wait_published(lab: &Lab, what: &str, published: &str) {
    eventually(what, Duration::from_secs(30), || {
        let now = underlay_annotations(lab);
        if now == published { Ok(()) } else { Err(now) }
    });
}

fn underlay_annotations(lab: &Lab) -> String {
    lab.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.annotations.weft\\.dev/underlay-address}{\"\\n\"}{end}",
    ])
}

/// Other nodes tunnel and peer to the underlay address a node's agent
/// published on its Node (`weft.dev/underlay-address`), not to its
/// InternalIP, so an address the agent found itself (`--node-ip
/// first-found`, `can-reach`) is the one the cluster uses. The agent
/// keeps its annotation level-triggered: one changed behind its back is
/// put back.
#[test]
fn nodes_are_reached_at_the_address_their_agents_published() {
    let lab = kubernetes_lab("k8s-addr", Encap::Ipip, 1);
    let status = lab.status();
    let published: String = (status.nodes.iter())
        .map(|n| format!("{}={}\n", n.name, n.underlay_ip))
        .collect();
    wait_published(
        &lab,
        "every Node's underlay address published by its agent",
        &published,
    );
    let node2 = status.node("node2").unwrap().underlay_ip.clone();
    let node3 = status.node("node3").unwrap().underlay_ip.clone();

    // node2's InternalIP turns wrong: its published address still holds.
    lab.kubectl(&[
        "patch",
        "node",
        "node2",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"198.19.255.2"},{"type":"Hostname","address":"node2"}]}}"#,
    ]);
    // node3's annotation changes while its agent is away; node1 follows it,
    // which also shows node1 has seen node2's change, made before.
    lab.stop_agent("node3");
    lab.kubectl(&[
        "annotate",
        "node",
        "node3",
        "--overwrite",
        "weft.dev/underlay-address=198.19.255.3",
    ]);
    eventually(
        "node1 peers with node3 at its new published address",
        BGP_WAIT,
        || {
            let peers = bgp_peers(&lab, "node1");
            if peers.contains_key("198.19.255.3") && !peers.contains_key(&node3) {
                Ok(())
            } else {
                Err(format!("{peers:?}"))
            }
        },
    );
    let peers = bgp_peers(&lab, "node1");
    assert_eq!(
        peers.get(&node2).map(String::as_str),
        Some("Established"),
        "node2 is still reached at the address it published: {peers:?}"
    );
    assert!(!peers.contains_key("198.19.255.2"), "{peers:?}");

    // node3's agent puts its address back; the cluster follows.
    lab.start_agent("node3", None);
    wait_published(
        &lab,
        "node3's agent publishes its address again",
        &published,
    );
    lab.wait_bgp_mesh();
    lab.check();
}

/// The command line of a Kubernetes lab: `lab kubeconfig`, kubectl with
/// it from a node, the agents' least privilege, `lab pod del` deleting the
/// Pod object, `lab apply`/`delete` through the API server, and `lab down`
/// ending the control plane's processes by their pids.
#[test]
fn kubernetes_lab_commands_and_the_agents_identity() {
    let bins = bin_dir();
    let lab = Lab::up_with(
        "k8s-cli",
        2,
        1,
        &["--kubernetes", "--bin-dir", bins.to_str().unwrap()],
    );
    let state = lab.lab().load().unwrap();
    let kube = state
        .kubernetes
        .clone()
        .expect("recorded as a Kubernetes lab");
    let kubeconfig = lab.ctl_ok(&["lab", "kubeconfig"]);
    assert_eq!(
        kubeconfig.trim(),
        kube.admin_kubeconfig.display().to_string()
    );
    let kubectl = kube.bin_dir.join("kubectl");
    let kubectl = kubectl.to_str().unwrap();

    // The administrator's kubeconfig works from a node over the underlay.
    let node1 = &state.nodes[0];
    let out = netns_exec(
        &node1.netns,
        &[kubectl, "--kubeconfig", kubeconfig.trim(), "get", "nodes"],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("node2"), "{}", show(&out));

    // The agent's kubeconfig: what deploy/rbac.yaml grants, nothing more.
    let agent_kubeconfig = node1.kubeconfig();
    let agent = |args: &[&str]| {
        let mut argv = vec![kubectl, "--kubeconfig", agent_kubeconfig.to_str().unwrap()];
        argv.extend_from_slice(args);
        netns_exec(&node1.netns, &argv)
    };
    for allowed in [
        &["get", "pods", "-A"][..],
        &["get", "nodes"],
        &["get", "networkpolicies", "-A"],
        &["get", "bgppeers"],
    ] {
        let out = agent(allowed);
        assert!(out.status.success(), "{allowed:?}: {}", show(&out));
    }
    for denied in [
        &["get", "secrets", "-A"][..],
        &["delete", "node", "node2"],
        &["delete", "pod", "node1-a"],
        &["label", "pod", "node1-a", "x=y"],
    ] {
        let out = agent(denied);
        assert!(
            !out.status.success(),
            "{denied:?} was allowed: {}",
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
            "{denied:?}: {}",
            show(&out)
        );
    }

    // `lab apply` and `lab delete` go to the API server.
    let peer = "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata:\n  name: edge\n\
                spec:\n  peerIP: 198.18.0.200\n  asNumber: 64600\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), peer).unwrap();
    let applied = lab.ctl_ok(&["lab", "apply", "-f", file.path().to_str().unwrap()]);
    assert_eq!(applied.trim(), "bgppeer/edge applied");
    let peers = lab.kubectl(&["get", "bgppeers", "-o", "jsonpath={.items[*].spec.peerIP}"]);
    assert_eq!(peers, "198.18.0.200");
    lab.ctl_ok(&["lab", "delete", "bgppeer", "edge"]);
    assert_eq!(lab.kubectl(&["get", "bgppeers", "-o", "name"]), "");

    // `lab label pod` changes the Pod object's labels.
    lab.ctl_ok(&["lab", "label", "pod", "node2-a", "tier=db", "app-"]);
    let labels = lab.kubectl(&["get", "pod", "node2-a", "-o", "jsonpath={.metadata.labels}"]);
    assert_eq!(json(&labels), serde_json::json!({"tier": "db"}));

    // `lab node add` registers the Node and waits for its pod CIDR before
    // starting its agent; `lab node del` removes the Node.
    lab.ctl_ok(&["lab", "node", "add"]);
    let node3 = lab.node("node3");
    let cidr = lab.kubectl(&["get", "node", "node3", "-o", "jsonpath={.spec.podCIDR}"]);
    assert_eq!(cidr, node3.pod_cidr);
    assert!(node3.agent_pid.is_some());
    lab.ctl_ok(&["lab", "node", "del", "node3"]);
    assert_eq!(
        lab.kubectl(&["get", "nodes", "-o", "name"]).trim(),
        "node/node1\nnode/node2"
    );

    // `lab pod del`: CNI DEL, then the Pod object goes.
    lab.ctl_ok(&["lab", "pod", "del", "node2-a"]);
    assert_eq!(
        lab.kubectl(&["get", "pods", "-A", "-o", "name"]).trim(),
        "pod/node1-a"
    );

    // `lab down` ends etcd, the API server and the controller manager.
    assert_eq!(kube.processes.len(), 3, "{:?}", kube.processes);
    lab.ctl_ok(&["lab", "down"]);
    for (name, pid) in &kube.processes {
        assert!(
            !weft_lab::control_plane::is_process_of(*pid, name, &kube.dir),
            "{name} (pid {pid}) survived lab down"
        );
    }
    assert!(
        !std::path::Path::new("/run/netns")
            .join(&kube.netns)
            .exists()
    );
}

/// BGP on Kubernetes: the nodes' mesh, and BIRD on the underlay peering
/// with every node once a BGPPeer is applied with kubectl.
#[test]
fn bgp_with_bird_from_a_bgppeer_applied_with_kubectl() {
    let lab = kubernetes_lab("k8s-bird", Encap::Ipip, 1);
    lab.wait_bgp_mesh();
    let mut config = String::from(
        "router id 198.18.0.200;\nprotocol device {}\n\
         protocol static announce { ipv4; route 203.0.113.0/24 blackhole; }\n\
         template bgp weft {\n  local 198.18.0.200 as 64600;\n\
           ipv4 { import all; export where proto = \"announce\"; };\n}\n",
    );
    let status = lab.status();
    for node in &status.nodes {
        config.push_str(&format!(
            "protocol bgp {} from weft {{ neighbor {} as 64512; }}\n",
            node.name, node.underlay_ip
        ));
    }
    let mut bird = Bird::start(&lab, "bird", "198.18.0.200".parse().unwrap(), &config);
    lab.try_kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata:\n  name: bird\n\
             spec:\n  peerIP: 198.18.0.200\n  asNumber: 64600\n",
        ),
    )
    .unwrap();
    for node in &status.nodes {
        bird.wait_for_route(&node.pod_cidr);
    }
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
    lab.kubectl(&["delete", "bgppeer", "bird"]);
    lab.wait_bgp_route_everywhere("203.0.113.0/24", false);
}

/// Whether a TCP exchange from `from` reaches `to`'s echo server on `port`.
fn tcp_reaches(from: &PodView, to: &PodView, port: u16) -> bool {
    let dst = std::net::SocketAddrV4::new(to.address().unwrap(), port);
    weft_lab::probe::tcp_exchange(
        &std::path::Path::new("/run/netns").join(&from.netns),
        dst,
        "ping",
        Duration::from_millis(300),
        1,
    )
    .is_ok()
}

/// Waits until a TCP exchange from pod `from` to pod `to` on `port` is
/// (or is no longer) answered.
fn wait_tcp(lab: &Lab, from: &str, to: &str, port: u16, allowed: bool) {
    eventually(
        &format!(
            "{from} -> {to}:{port} {}",
            if allowed { "allowed" } else { "denied" }
        ),
        Duration::from_secs(20),
        || {
            let (from, to) = (lab.pod(from), lab.pod(to));
            if tcp_reaches(&from, &to, port) == allowed {
                Ok(())
            } else {
                Err(format!(
                    "still {}",
                    if allowed { "denied" } else { "allowed" }
                ))
            }
        },
    );
}

/// NetworkPolicy on Kubernetes: policies applied with kubectl (through `lab
/// apply`) are enforced by the agents, and a Pod relabelled through the API
/// (`lab label`) moves in and out of a policy's peers.
#[test]
fn network_policies_applied_with_kubectl_are_enforced() {
    let lab = kubernetes_lab("k8s-pol", Encap::Ipip, 0);
    lab.pod_add("node1", "web", "default", "app=web", "");
    lab.pod_add("node3", "other", "default", "app=other", "");
    lab.pod_add("node2", "db", "prod", "app=db", "sql:5432/tcp");
    wait_tcp(&lab, "web", "db", 5432, true);
    wait_tcp(&lab, "other", "db", 5432, true);

    // Only pods labelled app=web, in namespace default, may reach app=db.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                  metadata: {name: db-from-web, namespace: prod}\n\
                  spec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    \
                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}\n      \
                  podSelector: {matchLabels: {app: web}}\n    ports: [{port: sql}]\n";
    lab.apply(policy);
    let stored = lab.kubectl(&["get", "networkpolicy", "-n", "prod", "-o", "name"]);
    assert_eq!(stored.trim(), "networkpolicy.networking.k8s.io/db-from-web");
    wait_tcp(&lab, "other", "db", 5432, false);
    wait_tcp(&lab, "web", "db", 5432, true);

    // The Pod object's labels decide: relabelled, web loses, other gains.
    lab.ctl_ok(&["lab", "label", "pod", "web", "app=old"]);
    lab.ctl_ok(&["lab", "label", "pod", "other", "app=web"]);
    wait_tcp(&lab, "web", "db", 5432, false);
    wait_tcp(&lab, "other", "db", 5432, true);

    // Deleted with kubectl: everyone again.
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "prod/db-from-web"]);
    wait_tcp(&lab, "web", "db", 5432, true);
}

/// A `lab up --kubernetes` that fails after the control plane is up (here:
/// an agent that exits at once) rolls back: no etcd, API server or
/// controller manager of the lab is left running, no namespace of it left.
#[test]
fn a_failed_kubernetes_lab_up_ends_its_control_plane() {
    require_root();
    let bins = tempfile::tempdir().unwrap();
    for bin in ["weft-cni", "weftctl"] {
        std::os::unix::fs::symlink(bin_dir().join(bin), bins.path().join(bin)).unwrap();
    }
    let agent = bins.path().join("weft-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'this agent refuses to start' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lab = weft_lab::LabRef::new("weft-k8s-fail", None).unwrap();
    let out = weftctl(&[
        "lab",
        "up",
        "--lab",
        &lab.lab,
        "--nodes",
        "1",
        "--kubernetes",
        "--bin-dir",
        bins.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("this agent refuses to start"),
        "{}",
        show(&out)
    );
    assert!(stderr.contains("rolled back"), "{}", show(&out));
    let dir = lab.state_dir.join("kubernetes");
    let left: Vec<u32> = weft_lab::process::pids()
        .into_iter()
        .filter(|&pid| {
            ["etcd", "kube-apiserver", "kube-controller-manager"]
                .iter()
                .any(|name| weft_lab::control_plane::is_process_of(pid, name, &dir))
        })
        .collect();
    assert!(left.is_empty(), "control plane processes left: {left:?}");
    for netns in [
        "weft-k8s-fail-kube",
        "weft-k8s-fail-fabric",
        "weft-k8s-fail-node1",
    ] {
        assert!(
            !std::path::Path::new("/run/netns").join(netns).exists(),
            "{netns} left behind"
        );
    }
}
