//! Where policy's objects come from in a lab: NetworkPolicies and
//! Namespaces applied into the datastore (whole files or nothing), pods
//! with a namespace, labels and container ports (reaching the agent's
//! endpoint record), relabelling on a running lab, and the pods' echo
//! servers on their TCP and UDP ports. Real agents, weft-cni and weftctl,
//! a real kernel. Needs root.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weft_tests::*;

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: http}, {protocol: UDP, port: 5353}]
";

/// A record of the lab's datastore, as JSON; `None` if absent.
fn record(lab: &Lab, path: &str) -> Option<Value> {
    let path = lab.lab().state_dir.join("datastore").join(path);
    let body = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&body).expect("records are JSON"))
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The object of `list` (a JSON array) whose `key` is `name`.
fn named(list: &Value, key: &str, name: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|o| o[key] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
        .clone()
}

/// The endpoint of pod `name` as `weftctl endpoints --node NODE --json` shows it.
fn endpoint(lab: &Lab, node: &str, name: &str) -> Value {
    let out = lab.ctl_ok(&["endpoints", "--node", node, "--json"]);
    named(&serde_json::from_str(&out).unwrap(), "pod_name", name)
}

/// Pod `name` as `weftctl lab status --json` shows it.
fn pod_json(lab: &Lab, name: &str) -> Value {
    let status: Value = serde_json::from_str(&lab.ctl_ok(&["lab", "status", "--json"])).unwrap();
    named(&status["pods"], "name", name)
}

/// `weftctl lab pod add --node NODE --name NAME` with `more` flags.
fn pod_add(lab: &Lab, node: &str, name: &str, more: &[&str]) -> std::process::Output {
    let mut args = vec!["lab", "pod", "add", "--node", node, "--name", name];
    args.extend_from_slice(more);
    lab.ctl(&args)
}

fn pod_add_ok(lab: &Lab, node: &str, name: &str, more: &[&str]) {
    let out = pod_add(lab, node, name, more);
    assert!(out.status.success(), "pod add {name}: {}", show(&out));
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, s)| !s.trim_start().starts_with('Z'))
    })
}

#[test]
fn policy_objects_pod_ports_labels_and_servers_on_a_running_lab() {
    let lab = Lab::up("pobj", 2, 0);
    let dir = tempfile::tempdir().unwrap();

    // A file of a namespace and a policy is written whole.
    let file = write_file(dir.path(), "objects.yaml", OBJECTS);
    let out = lab.ctl_ok(&["lab", "apply", "-f", &file]);
    assert!(
        out.contains("namespace/prod applied") && out.contains("networkpolicy/prod/db applied"),
        "{out}"
    );
    let ns = record(&lab, "namespaces/prod.json").expect("the namespace is stored");
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"team": "a", "kubernetes.io/metadata.name": "prod"})
    );
    let policy = record(&lab, "networkpolicies/prod/db.json").expect("the policy is stored");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "http");

    // A file with one invalid field writes nothing, and says where.
    let bad = OBJECTS
        .replace("name: prod\n", "name: qa\n")
        .replace("namespace: prod}", "namespace: qa}")
        .replace("port: 5353", "port: 70000");
    let bad = write_file(dir.path(), "bad.yaml", &bad);
    let out = lab.ctl(&["lab", "apply", "-f", &bad]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (NetworkPolicy qa/db): spec.ingress[0].ports[1].port"),
        "{err}"
    );
    assert_eq!(
        record(&lab, "namespaces/qa.json"),
        None,
        "half a file was written"
    );
    assert_eq!(record(&lab, "networkpolicies/qa/db.json"), None);

    // Invalid ports are refused before any pod is made.
    let out = pod_add(&lab, "node1", "bad", &["--ports", "http:80/icmp"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("protocol \"icmp\" is not tcp, udp or sctp"),
        "{}",
        show(&out)
    );
    assert!(lab.status().pod("bad").is_none());

    // A pod with a namespace, labels and ports: in the lab's record, in
    // the agent's endpoint record and in the datastore.
    pod_add_ok(
        &lab,
        "node1",
        "web",
        &[
            "--namespace",
            "prod",
            "--labels",
            "app=web,tier=front",
            "--ports",
            "http:8080/tcp,dns:5353/udp,9/sctp",
        ],
    );
    let ports = json!([
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
        {"containerPort": 9, "protocol": "SCTP"},
    ]);
    let pod = pod_json(&lab, "web");
    assert_eq!(pod["namespace"], "prod");
    assert_eq!(pod["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(pod["ports"], ports);
    let server = pod["server_pid"].as_u64().expect("the pod runs a server");
    assert!(alive(server));
    let ep = endpoint(&lab, "node1", "web");
    assert_eq!(ep["pod_namespace"], "prod");
    assert_eq!(ep["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(ep["ports"], ports);
    let key = format!("{}_eth0", ep["container_id"].as_str().unwrap());
    let published = record(&lab, &format!("endpoints/node1/{key}.json")).unwrap();
    assert_eq!(published["ports"], ports);

    // The pod's servers answer from another node: TCP echo and UDP echo.
    pod_add_ok(&lab, "node2", "client", &[]);
    let web = lab.pod("web");
    let client = lab.pod("client");
    let ip = web.address().unwrap();
    weft_lab::probe::tcp_exchange(
        &weft_lab::topology::netns_path(&client.netns),
        SocketAddrV4::new(ip, 8080),
        "hello",
        Duration::from_secs(1),
        5,
    )
    .unwrap_or_else(|e| panic!("TCP to web:8080: {e}"));
    weft_lab::probe::udp_exchange(
        &weft_lab::topology::netns_path(&client.netns),
        SocketAddrV4::new(ip, 5353),
        "ping",
        Duration::from_millis(500),
        10,
    )
    .unwrap_or_else(|e| panic!("UDP to web:5353: {e}"));

    // Relabelling a pod rewrites its endpoint, and the datastore sees it.
    let out = lab.ctl_ok(&["lab", "label", "pod", "web", "tier-", "app=api", "zone=z1"]);
    assert!(out.contains("pod/web labeled: app=api,zone=z1"), "{out}");
    let want = json!({"app": "api", "zone": "z1"});
    assert_eq!(endpoint(&lab, "node1", "web")["labels"], want);
    assert_eq!(pod_json(&lab, "web")["labels"], want);
    let published = record(&lab, &format!("endpoints/node1/{key}.json")).unwrap();
    assert_eq!(published["labels"], want);
    assert_eq!(published["ports"], ports, "relabelling keeps the ports");
    let out = lab.ctl(&["lab", "label", "pod", "web", "a b=c"]);
    assert!(!out.status.success(), "{}", show(&out));

    // Relabelling a namespace writes its object; one that existed only
    // through its pods gets one, with its name label.
    lab.ctl_ok(&["lab", "label", "namespace", "prod", "team=b", "env=prod"]);
    let ns = record(&lab, "namespaces/prod.json").unwrap();
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"team": "b", "env": "prod", "kubernetes.io/metadata.name": "prod"})
    );
    lab.ctl_ok(&["lab", "label", "namespace", "default", "env=dev"]);
    let ns = record(&lab, "namespaces/default.json").expect("created");
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"env": "dev", "kubernetes.io/metadata.name": "default"})
    );
    let out = lab.ctl(&[
        "lab",
        "label",
        "namespace",
        "prod",
        "kubernetes.io/metadata.name-",
    ]);
    assert!(!out.status.success(), "{}", show(&out));

    // Deleting the objects.
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "prod/db"]);
    assert_eq!(record(&lab, "networkpolicies/prod/db.json"), None);
    lab.ctl_ok(&["lab", "delete", "namespace", "default"]);
    assert_eq!(record(&lab, "namespaces/default.json"), None);
    assert!(
        !lab.ctl(&["lab", "delete", "namespace", "default"])
            .status
            .success()
    );

    // Deleting the pod stops its server.
    lab.ctl_ok(&["lab", "pod", "del", "web"]);
    assert!(
        !alive(server),
        "the server of a deleted pod is still running"
    );

    // A server whose pid the lab lost (a crash before it was recorded)
    // is still ended by `lab down`.
    pod_add_ok(&lab, "node1", "lost", &["--ports", "7/udp"]);
    let server = pod_json(&lab, "lost")["server_pid"].as_u64().unwrap();
    let state_file = lab.lab().state_dir.join("lab.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    for pod in state["pods"].as_array_mut().unwrap() {
        pod.as_object_mut().unwrap().remove("server_pid");
    }
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    lab.ctl_ok(&["lab", "down"]);
    assert!(!alive(server), "lab down left the pod's server running");
}
