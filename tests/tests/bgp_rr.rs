//! Route reflection in the lab: `lab up --route-reflectors`, and BIRD 2 as
//! an iBGP route-reflector client of a reflector node. Needs root and
//! bird2. 203.0.113.0/24 (documentation space) is only ever a route.

use std::time::Duration;

use weft_tests::peers::Bird;
use weft_tests::*;

const WAIT: Duration = BGP_WAIT;

/// `bgp peers --json` of a node: (address, state, route_reflector_client).
fn peers(lab: &Lab, node: &str) -> Vec<(String, String, bool)> {
    let json = lab.ctl_ok(&["bgp", "peers", "--node", node, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut out: Vec<_> = v["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers array in {json}"))
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
                p["route_reflector_client"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn all_established(peers: &[(String, String, bool)]) -> bool {
    peers.iter().all(|(_, state, _)| state == "Established")
}

#[test]
fn four_nodes_converge_through_one_reflector() {
    let lab = Lab::up_with("rr", 4, 1, &["--route-reflectors", "node1"]);
    let status_json: serde_json::Value =
        serde_json::from_str(&lab.ctl_ok(&["lab", "status", "--json"])).unwrap();
    assert_eq!(
        status_json["route_reflectors"],
        serde_json::json!(["node1"])
    );
    assert!(
        lab.ctl_ok(&["lab", "status"])
            .lines()
            .next()
            .unwrap()
            .ends_with("route reflectors node1")
    );
    lab.wait_bgp_mesh();
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "lab check: {}", show(&out));

    // A client peers with the reflector only; the reflector with every client.
    let node3 = peers(&lab, "node3");
    assert_eq!(node3.len(), 1, "node3 peers: {node3:?}");
    assert_eq!(
        (node3[0].0.as_str(), node3[0].2),
        ("198.18.0.11", false),
        "node3 peers: {node3:?}"
    );
    let node1 = eventually("node1's sessions with its clients", WAIT, || {
        let p = peers(&lab, "node1");
        if p.len() == 3 && all_established(&p) {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    });
    let addresses: Vec<&str> = node1.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(addresses, ["198.18.0.12", "198.18.0.13", "198.18.0.14"]);
    assert!(
        node1.iter().all(|p| p.2),
        "every node1 peer is an rr client: {node1:?}"
    );
}

#[test]
fn reflector_names_must_be_nodes_of_the_lab() {
    require_root();
    let out = weftctl(&[
        "lab",
        "up",
        "--lab",
        "weft-rrbad",
        "--nodes",
        "2",
        "--route-reflectors",
        "node3",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node3"),
        "{}",
        show(&out)
    );
    assert!(
        !std::path::Path::new("/run/netns/weft-rrbad-fabric").exists(),
        "nothing is built for a bad flag"
    );
}

#[test]
fn bird_as_an_ibgp_client_of_the_reflector_sees_and_reaches_every_node() {
    let lab = Lab::up_with("rrbird", 4, 0, &["--route-reflectors", "node1"]);
    lab.wait_bgp_mesh();
    // `rr` is a keyword of BIRD's config language: the protocol is weft_rr.
    let config = "router id 198.18.0.200;\nprotocol device {}\n\
                  protocol static announce { ipv4; route 203.0.113.0/24 blackhole; }\n\
                  protocol bgp weft_rr {\n  local 198.18.0.200 as 64512;\n  neighbor 198.18.0.11 as 64512;\n  \
                  ipv4 { import all; export where proto = \"announce\"; };\n}\n";
    let mut bird = Bird::start(&lab, "bird", "198.18.0.200".parse().unwrap(), config);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata:\n  name: bird\nspec:\n  \
         peerIP: 198.18.0.200\n  asNumber: 64512\n  node: node1\n",
    )
    .unwrap();
    lab.ctl_ok(&["lab", "apply", "-f", file.path().to_str().unwrap()]);

    // node1 treats BIRD as a client; the other nodes never peer with it.
    eventually("node1's session with BIRD as an rr client", WAIT, || {
        let p = peers(&lab, "node1");
        if p.contains(&("198.18.0.200".into(), "Established".into(), true)) {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    for node in ["node2", "node3", "node4"] {
        let p = peers(&lab, node);
        assert!(
            p.iter().all(|(a, _, _)| a != "198.18.0.200"),
            "{node} peers with BIRD: {p:?}"
        );
    }

    // BIRD gets every node's pod CIDR, reflected by node1 with the
    // originating node's next hop kept.
    for node in lab.status().nodes {
        eventually(&format!("BIRD learns {}", node.pod_cidr), WAIT, || {
            let routes = bird.birdc("show route");
            let line = routes
                .lines()
                .find(|l| l.contains(&node.pod_cidr))
                .map(str::to_string);
            let next_hop = format!("BGP.next_hop: {}", node.underlay_ip);
            match line {
                Some(_)
                    if bird
                        .birdc(&format!("show route {} all", node.pod_cidr))
                        .contains(&next_hop) =>
                {
                    Ok(())
                }
                _ => Err(routes),
            }
        });
    }
    // BIRD's route is reflected to every client; the next hop is BIRD itself.
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
    bird.birdc("disable announce");
    lab.wait_bgp_route_everywhere("203.0.113.0/24", false);
    bird.birdc("enable announce");
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
}

#[test]
fn a_node_added_to_a_running_lab_joins_the_mesh_and_leaves_it() {
    let lab = Lab::up("rradd", 2, 1);
    let out = lab.ctl_ok(&["lab", "node", "add", "--json"]);
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["name"], "node3");
    assert_eq!(added["underlay_ip"], "198.18.0.13");
    assert_eq!(added["pod_cidr"], "10.244.3.0/24");
    assert!(added["agent_pid"].is_u64(), "{out}");
    // `node add` waited for the routes: no polling needed.
    for node in lab.status().nodes {
        let routes = bgp_routes(&node.netns);
        let others = lab
            .status()
            .nodes
            .into_iter()
            .filter(|o| o.name != node.name);
        for other in others {
            assert!(
                routes.contains(&format!("{} via {}", other.pod_cidr, other.underlay_ip)),
                "{}: {routes}",
                node.name
            );
        }
    }
    lab.ctl_ok(&["lab", "pod", "add", "--node", "node3", "--name", "node3-a"]);
    let out = lab.ctl(&["lab", "check"]);
    assert!(
        out.status.success(),
        "lab check with the added node: {}",
        show(&out)
    );

    lab.ctl_ok(&["lab", "node", "del", "node3"]);
    let status = lab.status();
    assert_eq!(status.nodes.len(), 2);
    assert!(
        status.pods.iter().all(|p| p.node != "node3"),
        "node3's pod went with it"
    );
    assert!(!std::path::Path::new(&format!("/run/netns/{}-node3", lab.name)).exists());
    assert!(!std::path::Path::new(&format!("/run/netns/{}-pod-node3-a", lab.name)).exists());
    lab.wait_bgp_route_everywhere("10.244.3.0/24", false);
    let out = lab.ctl(&["lab", "check"]);
    assert!(
        out.status.success(),
        "lab check after the delete: {}",
        show(&out)
    );
    // The index is free again: the next add is node3 once more.
    let out = lab.ctl_ok(&["lab", "node", "add", "--json"]);
    assert!(out.contains("\"node3\""), "{out}");
}
