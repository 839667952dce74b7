//! CNI conformance of weft-cni: every verb of the 1.1.0 specification and
//! its error paths, called exactly as a runtime calls it (environment,
//! config on stdin) inside a lab node's namespace. Needs root.

use serde_json::{Value, json};
use weft_tests::*;

struct Node<'a> {
    lab: &'a Lab,
    netns: String,
}

impl Node<'_> {
    fn call(&self, command: &str, id: &str, netns: Option<&str>, config: &str) -> Output {
        CniCall {
            command,
            container_id: id,
            netns,
            ifname: "eth0",
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=conf;K8S_POD_NAME=p",
            config,
        }
        .run_in(&self.netns)
    }

    fn config(&self, version: &str) -> String {
        self.lab.cni_config("node1", version)
    }

    fn links(&self) -> String {
        stdout(&netns_exec(&self.netns, &["ip", "-o", "link", "show"]))
    }

    /// The node's pod veths (host ends), by name.
    fn host_veths(&self) -> Vec<String> {
        self.links()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| weft_dataplane::names::is_host_ifname(n))
            .collect()
    }
}

use std::process::Output;

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "expected success: {}", show(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", show(out)))
}

/// A CNI error: non-zero exit and the spec's error JSON on stdout.
fn error_code(out: &Output) -> u64 {
    assert!(!out.status.success(), "expected a failure: {}", show(out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "an error must be CNI error JSON on stdout ({e}): {}",
            show(out)
        )
    });
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "error without msg: {v}"
    );
    v["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("error without code: {v}"))
}

fn with_prev(config: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(config).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn cni_conformance() {
    let lab = Lab::up("cni", 1, 0);
    let node = Node {
        lab: &lab,
        netns: lab.node("node1").netns,
    };
    let mut ns = Namespaces::default();

    // VERSION lists every version the plugin speaks.
    let v = ok_json(&node.call("VERSION", "", None, &node.config("1.1.0")));
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&want), "VERSION lacks {want}: {v}");
    }

    // ADD in each config version: the result follows that version's schema
    // and the pod is wired as the result says.
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let id = format!("conformance{i}");
        let netns = ns.add(&format!("{}-v{i}", lab.name));
        let r = ok_json(&node.call("ADD", &id, Some(&netns), &node.config(version)));
        assert_eq!(r["cniVersion"], version, "{r}");
        let ip = r["ips"][0]["address"].as_str().unwrap();
        assert!(ip.starts_with("10.244.1.") && ip.ends_with("/32"), "{r}");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        if version == "0.4.0" {
            assert_eq!(
                r["ips"][0]["version"], "4",
                "0.4.0 results carry the IP version: {r}"
            );
        } else {
            assert!(
                r["ips"][0].get("version").is_none(),
                "1.x results have no IP version: {r}"
            );
        }
        let ifaces = r["interfaces"].as_array().unwrap();
        let idx = r["ips"][0]["interface"].as_u64().unwrap() as usize;
        assert_eq!(ifaces[idx]["name"], "eth0");
        assert_eq!(ifaces[idx]["sandbox"], netns.as_str());
        assert!(
            r["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["dst"] == "0.0.0.0/0"),
            "{r}"
        );
        let pod_name = netns.trim_start_matches("/run/netns/");
        let addr = stdout(&netns_exec(pod_name, &["ip", "-4", "addr", "show", "eth0"]));
        assert!(addr.contains(&format!("inet {ip}")), "{addr}");
        let route = stdout(&netns_exec(pod_name, &["ip", "route"]));
        assert!(route.contains("default via 169.254.1.1"), "{route}");
        let neigh = stdout(&netns_exec(
            pod_name,
            &["ip", "neigh", "show", "169.254.1.1"],
        ));
        assert!(neigh.contains("PERMANENT"), "{neigh}");

        // CHECK agrees with ADD's result...
        let checked = node.call(
            "CHECK",
            &id,
            Some(&netns),
            &with_prev(&node.config(version), &r),
        );
        assert!(
            checked.status.success(),
            "CHECK after ADD: {}",
            show(&checked)
        );
        // ...and not once the pod's address is gone.
        if version == "1.1.0" {
            netns_exec(pod_name, &["ip", "addr", "flush", "dev", "eth0"]);
            let broken = node.call(
                "CHECK",
                &id,
                Some(&netns),
                &with_prev(&node.config(version), &r),
            );
            error_code(&broken);
        }

        // DEL twice, and once more without a netns: all succeed.
        for netns_arg in [Some(netns.as_str()), Some(netns.as_str()), None] {
            let out = node.call("DEL", &id, netns_arg, &node.config(version));
            assert!(
                out.status.success(),
                "DEL must be idempotent: {}",
                show(&out)
            );
        }
        assert!(
            !node
                .links()
                .contains(&r["interfaces"][0]["name"].as_str().unwrap().to_string())
        );
    }
    let endpoints = lab.ctl_ok(&["endpoints", "--node", "node1", "--json"]);
    assert!(
        !endpoints.contains("10.244.1."),
        "DEL released everything: {endpoints}"
    );

    // Malformed and invalid configs, bad environments.
    let netns = ns.add(&format!("{}-bad", lab.name));
    assert_eq!(
        error_code(&node.call("ADD", "bad1", Some(&netns), "{not json")),
        6
    );
    assert_eq!(error_code(&node.call("ADD", "bad2", Some(&netns), "")), 6);
    let no_name = json!({"cniVersion": "1.1.0", "type": "weft-cni"}).to_string();
    assert_eq!(
        error_code(&node.call("ADD", "bad3", Some(&netns), &no_name)),
        7
    );
    let wrong_type =
        json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "timeoutSeconds": "ten"})
            .to_string();
    assert_eq!(
        error_code(&node.call("ADD", "bad4", Some(&netns), &wrong_type)),
        7
    );
    let old = json!({"cniVersion": "0.3.1", "name": "weft", "type": "weft-cni"}).to_string();
    assert_eq!(error_code(&node.call("ADD", "bad5", Some(&netns), &old)), 1);
    assert_eq!(
        error_code(&node.call("ADD", "", Some(&netns), &node.config("1.1.0"))),
        4,
        "no CNI_CONTAINERID"
    );
    assert_eq!(
        error_code(&node.call("ADD", "bad6", None, &node.config("1.1.0"))),
        4,
        "no CNI_NETNS"
    );
    assert_eq!(
        error_code(&node.call("FROB", "bad7", Some(&netns), &node.config("1.1.0"))),
        4,
        "unknown CNI_COMMAND"
    );
    let no_ifname = CniCall {
        command: "ADD",
        container_id: "bad8",
        netns: Some(&netns),
        ifname: "",
        args: "",
        config: &node.config("1.1.0"),
    }
    .run_in(&node.netns);
    assert_eq!(error_code(&no_ifname), 4, "no CNI_IFNAME");
    assert_eq!(
        node.host_veths(),
        Vec::<String>::new(),
        "failed ADDs leave no veth"
    );

    // GC with a partial valid-attachments list.
    let mut results = Vec::new();
    for i in 0..3 {
        let netns = ns.add(&format!("{}-gc{i}", lab.name));
        let r = ok_json(&node.call(
            "ADD",
            &format!("gc{i}"),
            Some(&netns),
            &node.config("1.1.0"),
        ));
        results.push((netns, r));
    }
    let mut gc: Value = serde_json::from_str(&node.config("1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    let out = node.call("GC", "", None, &gc.to_string());
    assert!(out.status.success(), "GC: {}", show(&out));
    let links = node.links();
    assert!(
        links.contains(results[0].1["interfaces"][0]["name"].as_str().unwrap()),
        "GC kept the valid one: {links}"
    );
    for (_, r) in &results[1..] {
        assert!(
            !links.contains(r["interfaces"][0]["name"].as_str().unwrap()),
            "GC removed the rest: {links}"
        );
    }
    let endpoints = lab.ctl_ok(&["endpoints", "--node", "node1", "--json"]);
    assert_eq!(endpoints.matches("10.244.1.").count(), 1, "{endpoints}");
    let check = node.call(
        "CHECK",
        "gc0",
        Some(&results[0].0),
        &with_prev(&node.config("1.1.0"), &results[0].1),
    );
    assert!(
        check.status.success(),
        "the valid attachment still checks out: {}",
        show(&check)
    );

    // STATUS: available while the agent runs, code 50 when it does not, and
    // an ADD then is "try again later" and leaves nothing behind.
    assert!(
        node.call("STATUS", "", None, &node.config("1.1.0"))
            .status
            .success()
    );
    lab.ctl_ok(&["lab", "agent", "stop", "node1"]);
    assert_eq!(
        error_code(&node.call("STATUS", "", None, &node.config("1.1.0"))),
        50
    );
    let netns = ns.add(&format!("{}-down", lab.name));
    assert_eq!(
        error_code(&node.call("ADD", "down1", Some(&netns), &node.config("1.1.0"))),
        11
    );
    let pod_links = stdout(&netns_exec(
        netns.trim_start_matches("/run/netns/"),
        &["ip", "-o", "link", "show"],
    ));
    assert!(
        !pod_links.contains("eth0"),
        "a failed ADD leaves nothing in the pod: {pod_links}"
    );
    lab.ctl_ok(&["lab", "agent", "start", "node1"]);
    assert!(
        node.call("STATUS", "", None, &node.config("1.1.0"))
            .status
            .success()
    );
}
