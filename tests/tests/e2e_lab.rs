//! End-to-end tests on labs of network namespaces: the real weft-agent,
//! weft-cni and weftctl, a real kernel. Needs root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use weft_tests::*;

/// Every route Weft owns on a node: its own (0x57) and learned over BGP (0x58).
fn routes(node_netns: &str) -> String {
    ["0x57", "0x58"]
        .iter()
        .map(|proto| {
            stdout(&netns_exec(
                node_netns,
                &["ip", "route", "show", "proto", proto],
            ))
        })
        .collect()
}

fn guard_filters(node_netns: &str, host_ifname: &str) -> String {
    stdout(&netns_exec(
        node_netns,
        &["tc", "filter", "show", "dev", host_ifname, "ingress"],
    ))
}

#[test]
fn three_nodes_full_connectivity() {
    let lab = Lab::up("conn", 3, 2);
    let status = lab.status();
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.pods.len(), 6);
    let ips: BTreeSet<Ipv4Addr> = status.pods.iter().filter_map(PodView::address).collect();
    assert_eq!(
        ips.len(),
        6,
        "pod addresses must be distinct: {:?}",
        status.pods
    );
    for pod in &status.pods {
        let node = status.nodes.iter().find(|n| n.name == pod.node).unwrap();
        let cidr: ipnetwork::Ipv4Network = node.pod_cidr.parse().unwrap();
        let ip = pod.address().unwrap();
        assert!(cidr.contains(ip), "{ip} not in {cidr}");
        let host_ifname = pod.host_ifname.as_deref().unwrap();
        assert!(host_ifname.starts_with("weft"), "{host_ifname}");
    }
    // Every node routes the other nodes' pod CIDRs via their underlay addresses.
    for node in &status.nodes {
        let table = routes(&node.netns);
        for other in status.nodes.iter().filter(|o| o.name != node.name) {
            let want = format!("{} via {}", other.pod_cidr, other.underlay_ip);
            assert!(
                table.contains(&want),
                "{}: no `{want}` in\n{table}",
                node.name
            );
        }
    }
    let out = lab.ctl(&["lab", "check"]);
    assert!(
        out.status.success(),
        "not every pod reaches every pod:\n{}",
        show(&out)
    );
}

#[test]
fn spoofed_source_reaches_nobody_and_is_counted() {
    let lab = Lab::up("spoof", 2, 1);
    let status = lab.status();
    let from = status.pod_on("node1");
    let to = status.pod_on("node2");

    let (from_ip, to_ip) = (from.address().unwrap(), to.address().unwrap());
    let echo = |tries| Echo::new(Duration::from_secs(2), tries);

    // The pod's own traffic flows.
    if let Err(e) = from.echo(to_ip, echo(2)) {
        panic!("own traffic must pass: {e}");
    }

    let before = lab.counter("node1", "drop_spoofed_source");
    // The pod takes a second address and sends from it.
    let fake = Ipv4Addr::new(10, 244, 1, 250);
    let add = netns_exec(
        &from.netns,
        &["ip", "addr", "add", &format!("{fake}/32"), "dev", "eth0"],
    );
    assert!(add.status.success(), "{}", show(&add));
    let spoofed = Echo::new(Duration::from_secs(1), 3).with_source(fake);
    let reached = from.echo(to_ip, spoofed);
    assert!(
        reached.is_err(),
        "a spoofed source must reach nobody: {reached:?}"
    );
    let node1 = Ipv4Addr::new(198, 18, 0, 11);
    let reached = from.echo(
        node1,
        Echo {
            tries: 1,
            ..spoofed
        },
    );
    assert!(reached.is_err(), "not even its own node: {reached:?}");
    let after = lab.counter("node1", "drop_spoofed_source");
    assert!(
        after >= before + 4,
        "spoofed packets must be counted: {before} -> {after}"
    );

    // And the pod's own address still works after the attempt.
    if let Err(e) = from.echo(to_ip, echo(1).with_source(from_ip)) {
        panic!("own traffic must still pass: {e}");
    }
}

#[test]
fn agent_sigkill_keeps_traffic_and_restart_flushes_nothing() {
    let lab = Lab::up("kill", 2, 2);
    let node1 = lab.node("node1");
    let pod1 = lab.status().pod_on("node1");
    let routes_before = routes(&node1.netns);
    let host_ifname = pod1.host_ifname.clone().unwrap();
    let filters_before = guard_filters(&node1.netns, &host_ifname);
    assert!(
        filters_before.contains("bpf"),
        "guard attached: {filters_before}"
    );

    lab.ctl_ok(&["lab", "agent", "stop", "node1"]);
    assert_eq!(lab.node("node1").agent_pid, None);
    let out = lab.ctl(&["lab", "check"]);
    assert!(
        out.status.success(),
        "traffic must survive the agent's death:\n{}",
        show(&out)
    );

    lab.ctl_ok(&["lab", "agent", "start", "node1"]);
    assert_eq!(
        routes(&node1.netns),
        routes_before,
        "a restarted agent must not flush or churn routes"
    );
    assert_eq!(
        guard_filters(&node1.netns, &host_ifname),
        filters_before,
        "a restarted agent must adopt the guard in place"
    );

    lab.ctl_ok(&["lab", "pod", "add", "--node", "node1", "--name", "fresh"]);
    let status = lab.status();
    let ips: BTreeSet<Ipv4Addr> = status.pods.iter().filter_map(PodView::address).collect();
    assert_eq!(
        ips.len(),
        status.pods.len(),
        "addresses must stay distinct: {:?}",
        status.pods
    );
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// Runs `n` ADDs at once against node1 and returns (container id, address) per success.
fn concurrent_adds(
    lab: &Lab,
    ns: &mut Namespaces,
    tag: &str,
    n: usize,
) -> Vec<(String, Result<Ipv4Addr, String>)> {
    let node_netns = lab.node("node1").netns;
    let config = lab.cni_config("node1", "1.1.0");
    let pods: Vec<(String, String)> = (0..n)
        .map(|i| {
            let name = format!("{}-{tag}{i}", lab.name);
            let path = ns.add(&name);
            (format!("{tag}{i:03}{}", "0".repeat(40)), path)
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(id, path)| {
                let (node_netns, config) = (&node_netns, &config);
                s.spawn(move || {
                    let out = CniCall {
                        command: "ADD",
                        container_id: id,
                        netns: Some(path),
                        ifname: "eth0",
                        args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=burst",
                        config,
                    }
                    .run_in(node_netns);
                    if !out.status.success() {
                        return (id.clone(), Err(show(&out)));
                    }
                    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    let addr = result["ips"][0]["address"].as_str().unwrap();
                    (
                        id.clone(),
                        Ok(addr.trim_end_matches("/32").parse().unwrap()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    let lab = Lab::up("burst", 1, 0);
    let mut ns = Namespaces::default();
    let results = concurrent_adds(&lab, &mut ns, "b", 50);
    let mut ips = BTreeSet::new();
    for (id, r) in &results {
        let ip = r
            .as_ref()
            .unwrap_or_else(|e| panic!("ADD {id} failed: {e}"));
        assert!(
            "10.244.1.0/24"
                .parse::<ipnetwork::Ipv4Network>()
                .unwrap()
                .contains(*ip)
        );
        ips.insert(*ip);
    }
    assert_eq!(ips.len(), 50, "50 ADDs must get 50 distinct addresses");
    let endpoints = lab.ctl_ok(&["endpoints", "--node", "node1", "--json"]);
    assert_eq!(endpoints.matches("10.244.1.").count(), 50, "{endpoints}");
}

#[test]
fn agent_killed_during_adds_never_hands_out_a_duplicate() {
    let lab = Lab::up("crash", 1, 0);
    let mut ns = Namespaces::default();
    let node_netns = lab.node("node1").netns;
    // Kill the agent in the middle of a burst of ADDs: once five addresses
    // are claimed on disk, while the rest are in flight.
    let killer = {
        let name = lab.name.clone();
        let ipam = format!("/run/weft-lab/{name}/nodes/node1/ipam");
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::fs::read_dir(&ipam)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                        .count()
                })
                .unwrap_or(0)
                < 5
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no claims appeared in {ipam}"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            weftctl_ok(&["lab", "agent", "stop", "node1", "--lab", &name]);
        })
    };
    let first = concurrent_adds(&lab, &mut ns, "k", 30);
    killer.join().unwrap();
    let failed = first.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        failed > 0,
        "the agent died after the burst: the test proved nothing"
    );
    // An agent that dies under a runtime is a reason to retry, never a
    // verdict on the pod: every failure must be CNI code 11.
    let codes: std::collections::BTreeSet<u64> = first
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .map(|e| {
            let json = e
                .lines()
                .find(|l| l.starts_with('{'))
                .unwrap_or_else(|| panic!("no CNI error JSON in {e}"));
            serde_json::from_str::<serde_json::Value>(json).unwrap()["code"]
                .as_u64()
                .unwrap()
        })
        .collect();
    eprintln!(
        "{failed} of 30 ADDs failed while the agent was killed (CNI codes {codes:?}); retrying them"
    );
    assert_eq!(
        codes,
        [11].into(),
        "an agent killed mid-ADD must read as 'try again later'"
    );
    lab.ctl_ok(&["lab", "agent", "start", "node1"]);

    // Retry what failed, as a runtime would; what succeeded must still be
    // the agent's record after the restart. Every address stays distinct.
    let config = lab.cni_config("node1", "1.1.0");
    let endpoints: serde_json::Value =
        serde_json::from_str(&lab.ctl_ok(&["endpoints", "--node", "node1", "--json"])).unwrap();
    let recorded = |id: &str| -> Option<Ipv4Addr> {
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["container_id"] == id)
            .map(|e| e["address"].as_str().unwrap().parse().unwrap())
    };
    let mut by_ip = std::collections::BTreeMap::new();
    for (i, (id, r)) in first.iter().enumerate() {
        let ip = match r {
            Ok(ip) => {
                assert_eq!(
                    recorded(id),
                    Some(*ip),
                    "{id} kept its address across the crash"
                );
                *ip
            }
            Err(_) => {
                let netns = format!("/run/netns/{}-k{i}", lab.name);
                let out = CniCall {
                    command: "ADD",
                    container_id: id,
                    netns: Some(&netns),
                    ifname: "eth0",
                    args: "",
                    config: &config,
                }
                .run_in(&node_netns);
                assert!(out.status.success(), "retried ADD {id}: {}", show(&out));
                let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                result["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches("/32")
                    .parse()
                    .unwrap()
            }
        };
        if let Some(other) = by_ip.insert(ip, id.clone()) {
            panic!("{ip} handed out twice: {other} and {id}");
        }
    }
    assert_eq!(by_ip.len(), 30);
}

#[test]
fn restart_removes_only_stale_weft_objects() {
    let lab = Lab::up("stale", 2, 1);
    let node1 = lab.node("node1");
    let ns = node1.netns.as_str();
    lab.ctl_ok(&["lab", "agent", "stop", "node1"]);

    let run = |cmd: &[&str]| {
        let out = netns_exec(ns, cmd);
        assert!(out.status.success(), "{cmd:?}: {}", show(&out));
    };
    // Left by "a previous run": a Weft route to a CIDR no node has, and a pod
    // veth no attachment claims. Beside them, a route and links that are not
    // Weft's, which must survive.
    run(&[
        "ip",
        "route",
        "add",
        "10.244.99.0/24",
        "via",
        "198.18.0.99",
        "dev",
        "eth0",
        "proto",
        "0x57",
    ]);
    run(&[
        "ip",
        "route",
        "add",
        "10.244.98.0/24",
        "via",
        "198.18.0.98",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    // (veth pairs: this kernel has no dummy devices)
    run(&[
        "ip",
        "link",
        "add",
        "weft0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "stale-peer",
    ]);
    run(&[
        "ip",
        "link",
        "add",
        "weft.tunnel",
        "type",
        "veth",
        "peer",
        "name",
        "other0",
    ]);

    lab.ctl_ok(&["lab", "agent", "start", "node1"]);
    let all_routes = stdout(&netns_exec(ns, &["ip", "route"]));
    assert!(
        !all_routes.contains("10.244.99.0/24"),
        "stale Weft route removed:\n{all_routes}"
    );
    assert!(
        all_routes.contains("10.244.98.0/24"),
        "foreign route kept:\n{all_routes}"
    );
    assert!(
        all_routes.contains("10.244.2.0/24 via 198.18.0.12"),
        "live route kept:\n{all_routes}"
    );
    let links = stdout(&netns_exec(ns, &["ip", "-o", "link"]));
    assert!(
        !links.contains("weft0123456789a"),
        "unclaimed pod veth removed:\n{links}"
    );
    assert!(
        links.contains("weft.tunnel") && links.contains("other0"),
        "other links kept:\n{links}"
    );
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
}
