//! Real BGP peers on the lab's underlay: BIRD 2 and GoBGP start in their
//! own namespaces plugged into the fabric and reach the nodes. (The
//! sessions with Weft's own speaker come with issue #3's agent
//! integration.) Needs root, bird2 and gobgpd.

use weft_tests::peers::{Bird, GoBgp};
use weft_tests::*;

#[test]
fn bird_and_gobgp_run_on_the_underlay_and_reach_the_nodes() {
    let lab = Lab::up("peers", 1, 0);
    let node = lab.node("node1");
    let mut bird = Bird::start(
        &lab,
        "bird",
        "198.18.0.200".parse().unwrap(),
        &format!(
            "router id 198.18.0.200;\nprotocol device {{}}\nprotocol bgp node1 {{\n  local 198.18.0.200 as 64600;\n  neighbor {} as 64512;\n  ipv4 {{ import all; export none; }};\n}}\n",
            node.underlay_ip
        ),
    );
    let status = bird.birdc("show status");
    assert!(status.contains("Daemon is up and running"), "{status}");
    let protocols = bird.birdc("show protocols");
    assert!(protocols.contains("node1"), "{protocols}");

    let mut gobgp = GoBgp::start(
        &lab,
        "gobgp",
        "198.18.0.201".parse().unwrap(),
        &format!(
            "[global.config]\n  as = 64601\n  router-id = \"198.18.0.201\"\n\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 64512\n",
            node.underlay_ip
        ),
    );
    let neighbors = gobgp.gobgp(&["neighbor"]);
    assert!(neighbors.contains(&node.underlay_ip), "{neighbors}");

    for host in [&bird.host, &gobgp.host] {
        let out = netns_exec(
            &host.netns,
            &["ping", "-c", "1", "-W", "2", &node.underlay_ip],
        );
        assert!(
            out.status.success(),
            "{} reaches node1: {}",
            host.netns,
            show(&out)
        );
    }
}
