//! The route distributor in the lab: Weft's BGP speakers between the nodes
//! and with real routers (BIRD 2, GoBGP) on the underlay. Needs root,
//! bird2 and gobgpd. Prefixes the routers announce come from 203.0.113.0/24
//! (documentation space) and never carry traffic.

use std::time::Duration;

use weft_tests::peers::{Bird, GoBgp};
use weft_tests::*;

const WAIT: Duration = BGP_WAIT;

fn peer_state(lab: &Lab, node: &str, address: &str) -> String {
    let json = lab.ctl_ok(&["bgp", "peers", "--node", node, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == address)
        .map(|p| p["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| format!("no peer {address} in {json}"))
}

fn bgp_peer(name: &str, ip: &str, asn: u32, password: Option<&str>) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata:\n  name: {name}\nspec:\n  peerIP: {ip}\n  asNumber: {asn}\n{}",
        password
            .map(|p| format!("  password: {p}\n"))
            .unwrap_or_default()
    )
}

/// BIRD in AS 64600 peering with every node, announcing 203.0.113.0/24.
fn bird_config(lab: &Lab, password: Option<&str>) -> String {
    let mut conf = String::from(
        "router id 198.18.0.200;\nprotocol device {}\n\
         protocol static announce { ipv4; route 203.0.113.0/24 blackhole; }\n\
         template bgp weft {\n  local 198.18.0.200 as 64600;\n",
    );
    if let Some(p) = password {
        conf.push_str(&format!("  password \"{p}\";\n"));
    }
    conf.push_str("  ipv4 { import all; export where proto = \"announce\"; };\n}\n");
    for node in lab.status().nodes {
        conf.push_str(&format!(
            "protocol bgp {} from weft {{ neighbor {} as 64512; }}\n",
            node.name, node.underlay_ip
        ));
    }
    conf
}

#[test]
fn nodes_mesh_and_exchange_pod_cidrs_with_bird_over_ebgp() {
    let lab = Lab::up("bird", 3, 1);
    let status = lab.status();
    // The mesh: every node routes every other node's pod CIDR over BGP.
    lab.wait_bgp_mesh();

    let mut bird = Bird::start(
        &lab,
        "bird",
        "198.18.0.200".parse().unwrap(),
        &bird_config(&lab, None),
    );
    lab.apply(&bgp_peer("bird", "198.18.0.200", 64600, None));
    // BIRD receives every node's pod CIDR.
    for node in &status.nodes {
        bird.wait_for_route(&node.pod_cidr);
    }
    // Its announcement reaches every node's kernel, and goes with its withdrawal.
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
    bird.birdc("disable announce");
    lab.wait_bgp_route_everywhere("203.0.113.0/24", false);
    bird.birdc("enable announce");
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);

    // Removing the BGPPeer ends the sessions and the routes learned over them.
    lab.ctl_ok(&["lab", "delete", "bgppeer", "bird"]);
    lab.wait_bgp_route_everywhere("203.0.113.0/24", false);
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// The kernel's TCP MD5 counters in `netns` (`/proc/net/netstat`, TcpExt):
/// `TCPMD5Failure` counts segments dropped because their signature did not
/// match the key held for the sender, `TCPMD5NotFound` those that carried
/// none although a key is held. RFC 2385 has mismatches dropped without a
/// word, so these counters are what shows an attempt was made and refused.
fn md5_drops(netns: &str) -> (u64, u64) {
    let netstat = stdout(&netns_exec(netns, &["cat", "/proc/net/netstat"]));
    let lines: Vec<&str> = netstat.lines().collect();
    let tcp_ext = lines
        .windows(2)
        .find(|w| w[0].starts_with("TcpExt:") && w[1].starts_with("TcpExt:"))
        .unwrap_or_else(|| panic!("no TcpExt in /proc/net/netstat of {netns}:\n{netstat}"));
    let value = |name: &str| {
        let names = tcp_ext[0].split_whitespace();
        let values = tcp_ext[1].split_whitespace();
        names
            .zip(values)
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/net/netstat of {netns}"))
    };
    (value("TCPMD5Failure"), value("TCPMD5NotFound"))
}

#[test]
fn md5_password_must_match_for_the_session_to_come_up() {
    let lab = Lab::up("md5", 1, 0);
    let bird = Bird::start(
        &lab,
        "bird",
        "198.18.0.200".parse().unwrap(),
        &bird_config(&lab, Some("s3cret")),
    );
    // Nothing but node1's agent connects to BIRD, and only once it has the
    // BGPPeer.
    let (failures_before, unsigned_before) = md5_drops(&bird.host.netns);
    lab.apply(&bgp_peer("bird", "198.18.0.200", 64600, Some("wrong")));
    // The agent tries: its SYNs reach BIRD signed, with a key that is not
    // BIRD's, and BIRD's kernel drops them.
    eventually(
        "BIRD's kernel drops node1's wrongly signed SYNs",
        WAIT,
        || {
            let (failures, unsigned) = md5_drops(&bird.host.netns);
            if failures > failures_before {
                Ok(())
            } else {
                Err(format!(
                    "TCPMD5Failure {failures} (before {failures_before}), TCPMD5NotFound {unsigned} (before {unsigned_before})"
                ))
            }
        },
    );
    assert_eq!(
        md5_drops(&bird.host.netns).1,
        unsigned_before,
        "node1's SYNs must carry a signature"
    );
    // And keeps trying, without a session.
    let state = peer_state(&lab, "node1", "198.18.0.200");
    assert!(
        ["Connect", "Active"].contains(&state.as_str()),
        "a wrong password leaves the session trying to connect, not {state}"
    );
    assert!(!bgp_routes(&lab.node("node1").netns).contains("203.0.113.0/24"));

    lab.apply(&bgp_peer("bird", "198.18.0.200", 64600, Some("s3cret")));
    eventually("the session with the right password", WAIT, || {
        let state = peer_state(&lab, "node1", "198.18.0.200");
        if state == "Established" {
            Ok(())
        } else {
            Err(state)
        }
    });
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
}

#[test]
fn gobgp_receives_pod_cidrs_and_its_announcements_reach_the_nodes() {
    let lab = Lab::up("gobgp", 2, 0);
    let mut config =
        String::from("[global.config]\n  as = 64601\n  router-id = \"198.18.0.201\"\n");
    for node in lab.status().nodes {
        config.push_str(&format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 64512\n",
            node.underlay_ip
        ));
    }
    let mut gobgp = GoBgp::start(&lab, "gobgp", "198.18.0.201".parse().unwrap(), &config);
    lab.apply(&bgp_peer("gobgp", "198.18.0.201", 64601, None));
    for node in lab.status().nodes {
        eventually(&format!("GoBGP learns {}", node.pod_cidr), WAIT, || {
            let rib = gobgp.gobgp(&["global", "rib"]);
            if rib.contains(&node.pod_cidr) {
                Ok(())
            } else {
                Err(rib)
            }
        });
    }
    gobgp.gobgp(&["global", "rib", "add", "203.0.113.64/26"]);
    lab.wait_bgp_route_everywhere("203.0.113.64/26 via 198.18.0.201", true);
    gobgp.gobgp(&["global", "rib", "del", "203.0.113.64/26"]);
    lab.wait_bgp_route_everywhere("203.0.113.64/26", false);
}

#[test]
fn five_nodes_in_bgp_mode_reach_each_other_as_in_static_mode() {
    for routing in ["bgp", "static"] {
        let lab = Lab::up_with(&format!("five{routing}"), 5, 1, &["--routing", routing]);
        let status = lab.status();
        // Wait until each node has a route to every other pod CIDR.
        for node in &status.nodes {
            let routes_of = || stdout(&netns_exec(&node.netns, &["ip", "route"]));
            eventually(
                &format!("{routing}: {} routes every pod CIDR", node.name),
                WAIT,
                || {
                    let routes = routes_of();
                    let all = status
                        .nodes
                        .iter()
                        .filter(|o| o.name != node.name)
                        .all(|o| routes.contains(&o.pod_cidr));
                    if all { Ok(()) } else { Err(routes) }
                },
            );
        }
        let out = lab.ctl(&["lab", "check"]);
        assert!(out.status.success(), "{routing}: {}", show(&out));
    }
}

#[test]
fn sigterm_sends_a_cease_and_peers_drop_the_routes_at_once() {
    let lab = Lab::up("cease", 2, 0);
    let node2 = lab.node("node2");
    let node1_netns = lab.node("node1").netns;
    eventually("node1 learns node2's pod CIDR", WAIT, || {
        let routes = bgp_routes(&node1_netns);
        if routes.contains("10.244.2.0/24 via 198.18.0.12") {
            Ok(())
        } else {
            Err(routes)
        }
    });
    // A graceful stop (SIGTERM): node1 drops node2's routes at once, no
    // graceful restart after a Cease.
    let pid = nix::unistd::Pid::from_raw(node2.agent_pid.expect("agent runs") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    eventually(
        "node1 drops node2's pod CIDR",
        Duration::from_secs(5),
        || {
            let routes = bgp_routes(&node1_netns);
            if routes.contains("10.244.2.0/24") {
                Err(routes)
            } else {
                Ok(())
            }
        },
    );
    assert!(peer_state(&lab, "node1", &node2.underlay_ip) != "Established");
}

/// Every route Weft owns on a node, sorted: its own (0x57) and learned (0x58).
fn weft_routes(netns: &str) -> Vec<String> {
    let mut lines: Vec<String> = ["0x57", "0x58"]
        .iter()
        .flat_map(|proto| {
            stdout(&netns_exec(netns, &["ip", "route", "show", "proto", proto]))
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn graceful_restart_keeps_forwarding_and_routes_across_an_agent_sigkill() {
    graceful_restart_across(Lab::up("gr", 3, 1), |lab| {
        lab.ctl_ok(&["lab", "agent", "stop", "node2"]);
    });
}

/// With `--bgp-on-stop graceful-restart` (the DaemonSet's, for rolling
/// updates) a SIGTERM sends no Cease: the peers see the sessions close as
/// after a crash and keep the routes, as for a SIGKILL. (Without it, a
/// SIGTERM is a Cease: `sigterm_sends_a_cease_and_peers_drop_the_routes_at_once`.)
#[test]
fn graceful_restart_keeps_forwarding_and_routes_across_an_agent_sigterm_when_so_configured() {
    let options = UpOptions {
        bgp_on_stop: Some("graceful-restart".into()),
        ..up_options(3, 1)
    };
    graceful_restart_across(Lab::build("grterm", options), |lab| {
        let pid = lab.node("node2").agent_pid.expect("agent runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        eventually(
            "node2's agent exits on SIGTERM",
            Duration::from_secs(10),
            || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                if state.is_none_or(|s| s.starts_with('Z')) {
                    Ok(())
                } else {
                    Err(stat)
                }
            },
        );
    });
}

/// BIRD (graceful restart on) and every node keep node2's routes, and a
/// pod on node1 keeps pinging a pod on node2, while `stop` ends node2's
/// agent and it is started again; afterwards the tables are as before.
fn graceful_restart_across(lab: Lab, stop: impl Fn(&Lab)) {
    let status = lab.status();
    let mut conf = bird_config(&lab, None).replace(
        "  local 198.18.0.200 as 64600;\n",
        "  local 198.18.0.200 as 64600;\n  graceful restart on;\n",
    );
    conf.push('\n');
    let mut bird = Bird::start(&lab, "bird", "198.18.0.200".parse().unwrap(), &conf);
    lab.apply(&bgp_peer("bird", "198.18.0.200", 64600, None));
    lab.wait_bgp_route_everywhere("203.0.113.0/24 via 198.18.0.200", true);
    let count = |bird: &mut Bird| {
        let out = bird.birdc("show route count");
        out.lines()
            .find(|l| l.contains("routes for"))
            .unwrap_or_default()
            .to_string()
    };
    // BIRD has every node's pod CIDR before anything happens.
    for node in &status.nodes {
        bird.wait_for_route(&node.pod_cidr);
    }
    std::thread::sleep(Duration::from_secs(1));
    let bird_before = count(&mut bird);
    let kernel_before: Vec<Vec<String>> =
        status.nodes.iter().map(|n| weft_routes(&n.netns)).collect();

    // A pod on node1 pings the pod on node2 every 20 ms throughout.
    let from = status.pod_on("node1");
    let to = status.pod_on("node2").address().unwrap().to_string();
    let pinger = std::thread::spawn(move || {
        netns_exec(
            &from.netns,
            &["ping", "-q", "-i", "0.02", "-c", "300", "-W", "1", &to],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    stop(&lab);
    std::thread::sleep(Duration::from_secs(2));
    // While node2's agent is gone, BIRD and node1 keep its routes (stale).
    // (From the node2 session itself: node1 and node3 pass the prefix on too.)
    let routes = bird.birdc("show route protocol node2");
    assert!(
        routes.contains("10.244.2.0/24"),
        "BIRD keeps node2's own route during the restart:\n{routes}"
    );
    assert!(
        weft_routes(&status.nodes[0].netns)
            .iter()
            .any(|r| r.starts_with("10.244.2.0/24 via 198.18.0.12"))
    );
    lab.ctl_ok(&["lab", "agent", "start", "node2"]);

    // node2's sessions come back and End-of-RIB arrives from each peer.
    eventually(
        "node2's sessions re-established with End-of-RIB",
        WAIT,
        || {
            let json = lab.ctl_ok(&["bgp", "peers", "--node", "node2", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let peers = v["peers"].as_array().unwrap();
            let done = peers.len() == 3
                && peers
                    .iter()
                    .all(|p| p["state"] == "Established" && p["end_of_rib_received"] == true);
            if done { Ok(()) } else { Err(json) }
        },
    );
    let ping = pinger.join().unwrap();
    let summary = stdout(&ping);
    assert!(
        summary.contains(" 0% packet loss"),
        "pings keep flowing across the restart:\n{}",
        show(&ping)
    );

    // Nothing lost or duplicated: BIRD's table and every node's kernel
    // routes are as before.
    eventually("BIRD's table as before", WAIT, || {
        let now = count(&mut bird);
        if now == bird_before {
            Ok(())
        } else {
            Err(format!("before: {bird_before}\nnow: {now}"))
        }
    });
    for (node, before) in status.nodes.iter().zip(&kernel_before) {
        assert_eq!(
            &weft_routes(&node.netns),
            before,
            "{}: routes changed across the restart",
            node.name
        );
    }
}

#[test]
fn routes_learned_over_ebgp_are_passed_on_to_the_mesh() {
    let lab = Lab::up("relay", 2, 0);
    let node1 = lab.node("node1");
    // BIRD peers with node1 only.
    let conf = format!(
        "router id 198.18.0.200;\nprotocol device {{}}\n\
         protocol static announce {{ ipv4; route 203.0.113.0/24 blackhole; }}\n\
         protocol bgp node1 {{\n  local 198.18.0.200 as 64600;\n  neighbor {} as 64512;\n  ipv4 {{ import all; export where proto = \"announce\"; }};\n}}\n",
        node1.underlay_ip
    );
    let mut bird = Bird::start(&lab, "bird", "198.18.0.200".parse().unwrap(), &conf);
    lab.apply(&format!(
        "{}  node: node1\n",
        bgp_peer("bird", "198.18.0.200", 64600, None)
    ));
    // node1 learns it from BIRD; node2 from node1, with node1 as the next
    // hop (BIRD's address is not something node2 need know).
    eventually("node1 learns BIRD's prefix", WAIT, || {
        let routes = bgp_routes(&node1.netns);
        if routes.contains("203.0.113.0/24 via 198.18.0.200") {
            Ok(())
        } else {
            Err(routes)
        }
    });
    let node2 = lab.node("node2");
    eventually("node2 learns it through node1", WAIT, || {
        let routes = bgp_routes(&node2.netns);
        if routes.contains("203.0.113.0/24 via 198.18.0.11") {
            Ok(())
        } else {
            Err(routes)
        }
    });
    // And BIRD hears node2's pod CIDR through node1.
    bird.wait_for_route("10.244.2.0/24");
    bird.birdc("disable announce");
    lab.wait_bgp_route_everywhere("203.0.113.0/24", false);
}
