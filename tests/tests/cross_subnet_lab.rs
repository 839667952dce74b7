//! Encapsulation across underlay subnets on labs of four nodes over two
//! subnets (`weftctl lab up --underlay-subnets 2`: node1 and node3 on
//! 198.18.0.0/24, node2 and node4 on 198.18.1.0/24, a router namespace
//! between them), static routing: the real agent, CNI and eBPF programs,
//! and a capture on the first subnet's bridge to see what crosses it.
//! With `--cross-subnet` pods on one subnet talk natively and across the
//! router through the tunnel; without it everything is encapsulated.
//! Needs root.

use std::time::Duration;

use weft_tests::capture::Capture;
use weft_tests::*;

/// The lab's uplinks (and the router's interfaces) are veths with the default MTU.
const UPLINK_MTU: u32 = 1500;

/// (tunnelled, plain) packets of three ICMP echoes between two pods as
/// seen on the first subnet's bridge: tunnelled between the two nodes'
/// underlay addresses (IP-in-IP or VXLAN), plain with the pods' own
/// addresses outside.
fn seen_between(lab: &Lab, encap: &str, from: &str, to: &str) -> (usize, usize) {
    let status = lab.status();
    let (a, b) = (status.pod_on(from), status.pod_on(to));
    let (na, nb) = (lab.node(from).underlay_ip, lab.node(to).underlay_ip);
    let (a_ip, b_ip) = (a.address().unwrap(), b.address().unwrap());
    let capture = Capture::start(&status.fabric.netns, &status.fabric.bridge);
    for _ in 0..3 {
        a.echo(b_ip, Echo::new(Duration::from_secs(2), 1))
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    }
    let captured = capture.stop();
    let tunnelled = match encap {
        "ipip" => {
            captured.count(&format!("ip proto 4 and src {na} and dst {nb}"))
                + captured.count(&format!("ip proto 4 and src {nb} and dst {na}"))
        }
        "vxlan" => captured.count(&format!("udp port 4789 and host {na} and host {nb}")),
        _ => unreachable!(),
    };
    let plain = captured.count(&format!("host {a_ip} and host {b_ip}"));
    let other_tunnel = match encap {
        "ipip" => captured.count("udp port 4789"),
        _ => captured.count("ip proto 4"),
    };
    assert_eq!(
        other_tunnel,
        0,
        "{encap}: the other mode's tunnel on the underlay:\n{}",
        captured.lines("").join("\n")
    );
    if encap == "ipip" && tunnelled > 0 {
        let inner = format!("{a_ip} > {b_ip}: ICMP echo request");
        let all = captured.lines("ip proto 4");
        assert!(
            all.iter().any(|l| l.contains(&inner)),
            "no {inner:?} inside the tunnel:\n{}",
            all.join("\n")
        );
    }
    (tunnelled, plain)
}

fn up(tag: &str, encap: &str, cross_subnet: bool) -> Lab {
    let options = UpOptions {
        routing: Routing::Static,
        underlay_subnets: 2,
        encap: encap.parse().unwrap(),
        cross_subnet,
        ..up_options(4, 1)
    };
    Lab::build(tag, options)
}

/// The lab's shape: two subnets, alternating nodes, a router between them.
fn check_layout(lab: &Lab) {
    let status = lab.status();
    let router = status
        .fabric
        .router
        .as_ref()
        .expect("a lab of two underlay subnets has a router");
    let subnets: Vec<(&str, &str, &str)> = router
        .subnets
        .iter()
        .map(|s| (s.cidr.as_str(), s.bridge.as_str(), s.router_ip.as_str()))
        .collect();
    assert_eq!(
        subnets,
        [
            ("198.18.0.0/24", "br-underlay", "198.18.0.1"),
            ("198.18.1.0/24", "br-underlay1", "198.18.1.1")
        ]
    );
    let ips: Vec<&str> = status
        .nodes
        .iter()
        .map(|n| n.underlay_ip.as_str())
        .collect();
    assert_eq!(
        ips,
        ["198.18.0.11", "198.18.1.12", "198.18.0.13", "198.18.1.14"]
    );
}

/// A DF echo of exactly the pod MTU crosses the router; one byte more is
/// refused.
fn pod_mtu_crosses_the_router(lab: &Lab, overhead: u32) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let mtu = pod_mtu(&a);
    assert_eq!(mtu, UPLINK_MTU - overhead);
    df_echoes_stop_at(&a, b.address().unwrap(), mtu);
}

fn node_routes(lab: &Lab, node: &str) -> String {
    stdout(&netns_exec(
        &lab.node(node).netns,
        &["ip", "-4", "route", "show"],
    ))
}

#[test]
fn ipip_cross_subnet_tunnels_only_across_the_router() {
    let lab = up("xs-ipip", "ipip", true);
    check_layout(&lab);
    lab.check();
    // Same subnet: the pods' own packets; across: IP-in-IP node to node.
    assert_eq!(seen_between(&lab, "ipip", "node1", "node3"), (0, 6));
    assert_eq!(seen_between(&lab, "ipip", "node1", "node2"), (6, 0));
    assert_eq!(seen_between(&lab, "ipip", "node4", "node3"), (6, 0));
    // The route into the tunnel goes via the router, with the pod MTU.
    let routes = node_routes(&lab, "node1");
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("10.244.2.0/24 via 198.18.0.1 dev eth0 ")
                && l.contains("mtu 1480")),
        "node1's routes:\n{routes}"
    );
    pod_mtu_crosses_the_router(&lab, 20);
}

#[test]
fn vxlan_cross_subnet_tunnels_only_across_the_router() {
    let lab = up("xs-vxlan", "vxlan", true);
    check_layout(&lab);
    lab.check();
    assert_eq!(seen_between(&lab, "vxlan", "node1", "node3"), (0, 6));
    assert_eq!(seen_between(&lab, "vxlan", "node1", "node2"), (6, 0));
    assert_eq!(seen_between(&lab, "vxlan", "node4", "node3"), (6, 0));
    pod_mtu_crosses_the_router(&lab, 50);
}

#[test]
fn ipip_without_cross_subnet_tunnels_everything() {
    let lab = up("xs-ipip-all", "ipip", false);
    lab.check();
    assert_eq!(seen_between(&lab, "ipip", "node1", "node3"), (6, 0));
    assert_eq!(seen_between(&lab, "ipip", "node1", "node2"), (6, 0));
}

#[test]
fn vxlan_without_cross_subnet_tunnels_everything() {
    let lab = up("xs-vxlan-all", "vxlan", false);
    lab.check();
    assert_eq!(seen_between(&lab, "vxlan", "node1", "node3"), (6, 0));
    assert_eq!(seen_between(&lab, "vxlan", "node1", "node2"), (6, 0));
}

/// Native routing cannot cross the router (it does not know the pod
/// routes): the agents refuse those routes and say why, so the lab never
/// converges.
#[test]
fn native_routing_across_subnets_is_refused_with_a_reason() {
    require_root();
    let lab = Lab {
        name: "weft-xs-none".into(),
    };
    let out = lab.ctl(&[
        "lab",
        "up",
        "--nodes",
        "2",
        "--routing",
        "static",
        "--underlay-subnets",
        "2",
        "--encap",
        "none",
        "--ready-timeout",
        "5",
        "--keep-on-failure",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    let log = std::fs::read_to_string(format!("/run/weft-lab/{}/nodes/node1/agent.log", lab.name))
        .unwrap_or_default();
    assert!(
        log.contains("198.18.1.12 is outside the uplink subnet") && log.contains("--encap none"),
        "node1's agent log:\n{log}"
    );
}

/// BGP between the nodes across the router: routes learned from a node
/// on the other subnet are installed through the tunnel (IP-in-IP via the
/// router with the pod MTU, VXLAN into the device), those from the same
/// subnet natively.
#[test]
fn bgp_routes_across_the_router_are_tunnelled() {
    for encap in ["ipip", "vxlan"] {
        let lab = Lab::up_with(
            &format!("xs-bgp-{encap}"),
            4,
            1,
            &[
                "--underlay-subnets",
                "2",
                "--encap",
                encap,
                "--cross-subnet",
            ],
        );
        lab.check();
        let routes = bgp_routes(&lab.node("node1").netns);
        let across = routes
            .lines()
            .find(|l| l.starts_with("10.244.2.0/24 "))
            .unwrap_or_else(|| panic!("{encap}: node1 learned no 10.244.2.0/24:\n{routes}"));
        match encap {
            "ipip" => assert!(
                across.starts_with("10.244.2.0/24 via 198.18.0.1 dev eth0 ")
                    && across.contains("mtu 1480"),
                "{encap}: {across}"
            ),
            _ => assert!(
                across.starts_with("10.244.2.0/24 via 10.244.2.0 dev weft.vxlan ")
                    && across.contains("onlink"),
                "{encap}: {across}"
            ),
        }
        assert!(
            routes.contains("10.244.3.0/24 via 198.18.0.13 dev eth0 "),
            "{encap}: node1's BGP routes:\n{routes}"
        );
        assert_eq!(seen_between(&lab, encap, "node1", "node2"), (6, 0));
        assert_eq!(seen_between(&lab, encap, "node1", "node3"), (0, 6));
    }
}
