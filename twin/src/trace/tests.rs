//! The pure trace over tables built by hand, as a live lab's would be read.

use std::net::Ipv4Addr;

use weft_common::maps::{EndpointInfo, NodeConfig, PodCidrKey, RemoteNode};
use weft_common::verdict::Counter;
use weft_dataplane::bpf::PinnedMaps;
use weft_dataplane::link::{LinkState, MacAddr};
use weft_dataplane::route::TableRoute;
use weft_dataplane::vxlan::{FdbEntry, NeighbourEntry, VxlanReading, VxlanState};

use super::*;
use crate::wire::{Mac, Probe};
use crate::{Encap, NodeTables, Step, Via, VxlanDecision, VxlanPeer};

const UPLINK: u32 = 2;
const VXLAN: u32 = 3;

/// A link as the kernel reports it.
fn link(name: impl Into<String>, index: u32, mtu: u32) -> LinkState {
    LinkState {
        name: name.into(),
        index,
        mac: None,
        mtu: Some(mtu),
        up: true,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Node `i` of a lab in `encap` as read off the kernel: eth0 with
/// 198.18.0.(10+i)/24, one pod 10.244.i.2 behind veth ifindex 10,
/// routes to the other nodes' pod CIDRs as the agent programs them.
fn facts(i: u8, of: u8, encap: Encap) -> NodeFacts {
    let me = Ipv4Addr::new(198, 18, 0, 10 + i);
    let pod = Ipv4Addr::new(10, 244, i, 2);
    let pod_mtu = 1500 - u32::from(encap.overhead());
    let mut links = vec![
        link("lo", 1, 65536),
        link("eth0", UPLINK, 1500),
        link(format!("weft0000000000{i}"), 10, pod_mtu),
    ];
    let mut routes = vec![
        TableRoute::unicast("198.18.0.0/24", None, UPLINK),
        TableRoute::unicast(&format!("{pod}/32"), None, 10),
    ];
    let mut maps = PinnedMaps {
        endpoints: vec![(10, EndpointInfo::new(pod.octets()))],
        config: Some(NodeConfig::new(me.octets(), encap).with_uplink_mtu(1500)),
        ..PinnedMaps::default()
    };
    let mut vxlan = (encap == Encap::Vxlan).then(|| VxlanReading {
        device: VxlanState {
            ifindex: VXLAN,
            is_vxlan: true,
            vni: Some(4096),
            port: Some(4789),
            local: Some(me),
            uplink_ifindex: Some(UPLINK),
            learning: false,
            mtu: Some(1450),
            mac: Some(MacAddr(Mac::vtep(me.octets()).0)),
            up: true,
            addresses: Vec::new(),
        },
        neighbours: Vec::new(),
        fdb: Vec::new(),
    });
    if vxlan.is_some() {
        links.push(link("weft.vxlan", VXLAN, 1450));
    }
    let mut addresses = vec![ip("127.0.0.1"), me];
    if encap == Encap::Vxlan {
        addresses.push(Ipv4Addr::new(10, 244, i, 0));
    }
    for j in (1..=of).filter(|&j| j != i) {
        let other = Ipv4Addr::new(198, 18, 0, 10 + j);
        let cidr = format!("10.244.{j}.0/24");
        // The agent fills the node set in every mode.
        maps.nodes.push(other.octets());
        match encap {
            Encap::Ipip => {
                routes.push(
                    TableRoute::unicast(&cidr, Some(&other.to_string()), UPLINK).with_mtu(1480),
                );
                maps.pod_routes.push((
                    PodCidrKey::new([10, 244, j, 0], 24),
                    RemoteNode::new(other.octets()),
                ));
            }
            Encap::Vxlan => {
                let vtep = Ipv4Addr::new(10, 244, j, 0);
                routes.push(TableRoute::unicast(&cidr, Some(&vtep.to_string()), VXLAN));
                let v = vxlan.as_mut().unwrap();
                let mac = Mac::vtep(other.octets()).0;
                v.neighbours.push(NeighbourEntry {
                    ip: vtep,
                    mac: MacAddr(mac),
                });
                v.fdb.push(FdbEntry {
                    mac: MacAddr(mac),
                    remote: other,
                });
            }
            Encap::None => {
                routes.push(TableRoute::unicast(&cidr, Some(&other.to_string()), UPLINK))
            }
        }
    }
    NodeFacts {
        name: format!("node{i}"),
        underlay_ip: me,
        encap,
        uplink: "eth0".into(),
        maps,
        links,
        addresses,
        routes,
        vxlan,
    }
}

fn cluster(encap: Encap) -> Vec<NodeFacts> {
    (1..=3).map(|i| facts(i, 3, encap)).collect()
}

fn pods() -> Vec<PodAt> {
    (1..=3)
        .map(|i| PodAt {
            node: format!("node{i}"),
            ifindex: 10,
            pod: format!("node{i}-a"),
            ip: Some(Ipv4Addr::new(10, 244, i, 2)),
        })
        .collect()
}

fn run_trace(encap: Encap, probe: Probe) -> (Vec<Step>, Verdict) {
    let tables: Vec<NodeTables> = cluster(encap).iter().map(node_tables).collect();
    let steps = crate::trace(&tables, Ipv4Addr::from(probe.src), &probe.packet()).unwrap();
    let verdict = verdict(&steps, &probe, &tables, &pods());
    (steps, verdict)
}

fn show(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("{s}\n")).collect()
}

#[test]
fn targets_parse() {
    assert_eq!(
        "10.244.2.1".parse(),
        Ok(Target {
            ip: ip("10.244.2.1"),
            kind: TargetKind::Ping
        })
    );
    assert_eq!(
        "10.244.2.1/icmp".parse::<Target>().unwrap().kind,
        TargetKind::Ping
    );
    assert_eq!(
        "10.244.2.1:80/tcp".parse::<Target>().unwrap().kind,
        TargetKind::Tcp(80)
    );
    assert_eq!(
        "10.244.2.1:53/UDP".parse::<Target>().unwrap().kind,
        TargetKind::Udp(53)
    );
    for bad in [
        "",
        "pod-a",
        "10.244.2",
        "10.244.2.1:80",
        "10.244.2.1/tcp",
        "10.244.2.1:99999/tcp",
        "10.244.2.1:80/sctp",
        "10.244.2.1:7/icmp",
    ] {
        let err = bad.parse::<Target>().unwrap_err();
        assert!(err.contains("expected IP"), "{bad}: {err}");
    }
    assert_eq!(
        "10.244.2.1:80/tcp".parse::<Target>().unwrap().to_string(),
        "10.244.2.1:80/tcp"
    );
}

#[test]
fn probes_have_the_size_and_df_asked() {
    let t: Target = "10.244.2.1:53/udp".parse().unwrap();
    let p = probe(ip("10.244.1.2"), t, Some(1000), true);
    assert_eq!(p.packet().len(), 1000);
    assert!(p.dont_fragment);
    let p = probe(ip("10.244.1.2"), t, None, false);
    assert_eq!(p.packet().len(), 28);
    assert!(!p.dont_fragment);
}

#[test]
fn ipip_tables_are_the_maps_and_the_routes() {
    let node = &cluster(Encap::Ipip)[0];
    let t = node_tables(node);
    assert_eq!(t.name, "node1");
    assert_eq!(t.pod_mtu, 1480);
    assert_eq!(t.pod_ifindex([10, 244, 1, 2]), Some(10));
    assert_eq!(t.nodes, node.maps.nodes);
    assert_eq!(t.pod_routes.len(), 2);
    let r = *t.lookup([10, 244, 2, 9]).unwrap();
    assert_eq!(
        r.via,
        Via::Uplink {
            gateway: Some([198, 18, 0, 12])
        }
    );
    assert_eq!(t.route_mtu(&r), 1480);
    assert_eq!(
        t.lookup([198, 18, 0, 13]).unwrap().via,
        Via::Uplink { gateway: None }
    );
    assert!(t.local_addrs.contains(&[198, 18, 0, 11]));
    assert!(t.vxlan.is_none());
    assert!(notes(node).is_empty(), "{:?}", notes(node));
}

#[test]
fn vxlan_tables_join_neighbours_and_fdb() {
    let mut node = cluster(Encap::Vxlan).remove(1);
    let t = node_tables(&node);
    let v = t.vxlan.as_ref().unwrap();
    assert_eq!((v.vni, v.mtu), (4096, 1450));
    assert_eq!(v.mac, Mac::vtep([198, 18, 0, 12]));
    assert_eq!(v.peers.len(), 2);
    assert_eq!(
        v.peers[0],
        VxlanPeer {
            vtep_ip: [10, 244, 1, 0],
            mac: Mac::vtep([198, 18, 0, 11]),
            underlay_ip: [198, 18, 0, 11],
        }
    );
    assert_eq!(
        t.lookup([10, 244, 3, 7]).unwrap().via,
        Via::Vxlan {
            gateway: [10, 244, 3, 0]
        }
    );
    assert!(t.local_addrs.contains(&[10, 244, 2, 0]), "the VTEP address");
    // A neighbour without its FDB entry is no peer, and said so.
    node.vxlan.as_mut().unwrap().fdb.remove(0);
    assert_eq!(node_tables(&node).vxlan.unwrap().peers.len(), 1);
    let notes = notes(&node);
    assert!(
        notes.iter().any(|n| n.contains("no FDB entry")),
        "{notes:?}"
    );
}

#[test]
fn unmodelled_routes_are_left_out_and_noted() {
    let mut node = facts(1, 2, Encap::Ipip);
    node.routes.push(TableRoute {
        kind: "blackhole".into(),
        oif: None,
        ..TableRoute::unicast("10.244.1.0/24", None, 0)
    });
    node.links.push(link("dummy0", 40, 1500));
    node.routes
        .push(TableRoute::unicast("192.0.2.0/24", None, 40));
    let t = node_tables(&node);
    assert_eq!(t.routes.len(), 3, "{:?}", t.routes);
    let notes = notes(&node);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("blackhole 10.244.1.0/24"), "{notes:?}");
    assert!(notes[1].contains("dev dummy0"), "{notes:?}");
}

#[test]
fn without_a_config_map_the_lab_mode_and_uplink_mtu_stand_in() {
    let mut node = facts(1, 2, Encap::Vxlan);
    node.maps.config = None;
    let t = node_tables(&node);
    assert_eq!(t.config.encap(), Some(Encap::Vxlan));
    assert_eq!(t.config.uplink_mtu, 1500);
    assert_eq!(t.config.underlay_ip, [198, 18, 0, 11]);
    assert!(notes(&node).iter().any(|n| n.contains("no config map")));
}

#[test]
fn ipip_pod_to_pod_is_encapsulated_and_delivered() {
    let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
    let (steps, verdict) = run_trace(Encap::Ipip, probe);
    let text = show(&steps);
    let counters: Vec<Counter> = steps.iter().filter_map(Step::counter).collect();
    assert_eq!(
        counters,
        [
            Counter::Pass,
            Counter::Encapsulate,
            Counter::Decapsulate,
            // The receiving pod veth's policy hook: a flow new to node2.
            Counter::ConntrackNew
        ],
        "{text}"
    );
    assert_eq!(
        verdict.outcome,
        Outcome::Delivered {
            node: "node2".into(),
            ifindex: 10,
            pod: Some("node2-a".into()),
            packets: 1
        }
    );
    assert!(verdict.icmp.is_empty());
    assert_eq!(verdict.to_string(), "delivered to pod node2-a on node2");
}

#[test]
fn vxlan_pod_to_pod_goes_through_the_device() {
    let probe = Probe::tcp([10, 244, 1, 2], [10, 244, 3, 2], 80);
    let (steps, verdict) = run_trace(Encap::Vxlan, probe);
    let text = show(&steps);
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::VxlanEncap { node, .. } if node == "node1")),
        "{text}"
    );
    assert!(
        steps.iter().any(|s| matches!(
            s,
            Step::VxlanDecap {
                node,
                decision: VxlanDecision::Decapsulated { vni: 4096 },
                ..
            } if node == "node3"
        )),
        "{text}"
    );
    assert_eq!(verdict.to_string(), "delivered to pod node3-a on node3");
}

#[test]
fn a_missing_fdb_entry_loses_the_packet_in_the_device() {
    let mut facts = cluster(Encap::Vxlan);
    facts[0].vxlan.as_mut().unwrap().fdb.clear();
    let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
    let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
    let steps = crate::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
    let v = verdict(&steps, &probe, &tables, &pods());
    assert!(
        matches!(&v.outcome, Outcome::Lost { hook, reason, .. }
            if hook == "routing" && reason.contains("VTEP 10.244.2.0")),
        "{v}\n{}",
        show(&steps)
    );
}

#[test]
fn an_oversized_df_probe_is_answered_with_frag_needed() {
    let probe = Probe::udp([10, 244, 1, 2], [10, 244, 2, 2], 53)
        .with_len(1481)
        .with_df(true);
    let (steps, verdict) = run_trace(Encap::Ipip, probe);
    assert!(
        matches!(&verdict.outcome, Outcome::Dropped { node: Some(n), hook, .. }
            if n == "node1" && hook == "routing"),
        "{verdict}\n{}",
        show(&steps)
    );
    assert_eq!(verdict.icmp.len(), 1);
    let answer = &verdict.icmp[0];
    assert_eq!((answer.kind, answer.code, answer.mtu), (3, 4, Some(1480)));
    assert_eq!(answer.from, ip("198.18.0.11"));
    assert_eq!(answer.delivered_to.as_deref(), Some("node1-a"));
    assert_eq!(
        verdict.to_string(),
        "dropped on node1 at routing: too big for route MTU 1480 with DF set; answered \
         with ICMP fragmentation needed (type 3 code 4, mtu 1480) from node1 \
         (198.18.0.11), delivered to pod node1-a"
    );
    // Above the veth's MTU, the veth itself refuses the frame.
    let probe = probe.with_len(1500);
    let (_, verdict) = run_trace(Encap::Ipip, probe);
    assert!(
        matches!(&verdict.outcome, Outcome::Dropped { hook, reason, .. }
            if hook == "pod veth" && reason.contains("above the veth MTU 1480")),
        "{verdict}"
    );
}

#[test]
fn without_df_a_big_probe_arrives_in_fragments() {
    let probe = Probe::udp([10, 244, 1, 2], [10, 244, 2, 2], 53)
        .with_len(1400)
        .with_df(false);
    let mut facts = cluster(Encap::Ipip);
    // A route MTU below the packet: the kernel fragments.
    facts[0].routes[2].mtu = Some(1000);
    let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
    let steps = crate::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
    let v = verdict(&steps, &probe, &tables, &pods());
    assert_eq!(
        v.to_string(),
        "delivered to pod node2-a on node2 in 2 fragments",
        "{}",
        show(&steps)
    );
}

#[test]
fn an_address_nobody_has_gets_an_honest_answer() {
    // Inside a remote pod CIDR: node2 has no route for it.
    let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 200]);
    let (steps, verdict) = run_trace(Encap::Ipip, probe);
    assert!(
        matches!(&verdict.outcome, Outcome::Dropped { node: Some(n), reason, .. }
            if n == "node2" && reason == "no route"),
        "{verdict}\n{}",
        show(&steps)
    );
    assert_eq!(verdict.icmp[0].kind, 3);
    assert_eq!(verdict.icmp[0].code, 0);
    assert_eq!(verdict.icmp[0].from, ip("198.18.0.12"));
    assert_eq!(verdict.icmp[0].delivered_to.as_deref(), Some("node1-a"));
    // Outside the cluster: no route on the first node.
    let probe = Probe::udp([10, 244, 1, 2], [203, 0, 113, 9], 53);
    let (_, verdict) = run_trace(Encap::None, probe);
    assert!(
        verdict.to_string().starts_with(
            "dropped on node1 at routing: no route; answered with ICMP network unreachable"
        ),
        "{verdict}"
    );
}

#[test]
fn a_node_address_is_local() {
    let probe = Probe::ping([10, 244, 1, 2], [198, 18, 0, 12]);
    let (_, verdict) = run_trace(Encap::Ipip, probe);
    assert_eq!(
        verdict.outcome,
        Outcome::Local {
            node: "node2".into()
        }
    );
}

#[test]
fn a_next_hop_that_is_no_node_never_answers() {
    let mut facts = cluster(Encap::None);
    facts[0]
        .routes
        .push(TableRoute::unicast("0.0.0.0/0", Some("198.18.0.1"), UPLINK));
    let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
    let probe = Probe::ping([10, 244, 1, 2], [203, 0, 113, 9]);
    let steps = crate::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
    let v = verdict(&steps, &probe, &tables, &pods());
    assert!(
        matches!(&v.outcome, Outcome::Dropped { reason, .. } if reason.contains("198.18.0.1 never answered ARP")),
        "{v}\n{}",
        show(&steps)
    );
}

#[test]
fn a_veth_without_endpoint_entry_drops_at_the_guard() {
    let mut facts = cluster(Encap::Ipip);
    facts[0].maps.endpoints.clear();
    let tables: Vec<NodeTables> = facts.iter().map(node_tables).collect();
    let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
    let steps = crate::trace(&tables, ip("10.244.1.2"), &probe.packet()).unwrap();
    let v = verdict(&steps, &probe, &tables, &pods());
    assert_eq!(
        v.to_string(),
        "dropped on node1 at pod veth: TC_ACT_SHOT (drop_unknown_endpoint)"
    );
}

#[test]
fn json_steps_name_hook_counter_and_pod() {
    let probe = Probe::ping([10, 244, 1, 2], [10, 244, 2, 2]);
    let (steps, _) = run_trace(Encap::Ipip, probe);
    let views: Vec<StepView> = steps.iter().map(|s| step_view(s, &pods())).collect();
    assert_eq!(views[0].hook, "pod veth");
    assert_eq!(views[0].action, Some("TC_ACT_OK"));
    assert_eq!(views[0].counter, Some("pass"));
    assert_eq!(views[0].pod.as_deref(), Some("node1-a"));
    assert!(!views[0].dropped);
    let egress = views.iter().find(|v| v.hook == "uplink egress").unwrap();
    assert_eq!(egress.counter, Some("encapsulate"));
    let last = views.last().unwrap();
    assert_eq!(
        (last.hook, last.pod.as_deref(), last.node.as_deref()),
        ("pod", Some("node2-a"), Some("node2"))
    );
    let json = serde_json::to_value(&views).unwrap();
    assert_eq!(json[0]["counter"], "pass");
    assert!(
        json[0]["text"]
            .as_str()
            .unwrap()
            .contains("TC_ACT_OK (pass)")
    );
}

#[test]
fn a_report_walks_renders_and_notes_the_pods_own_mtu() {
    let nodes = cluster(Encap::Ipip);
    let pods = pods();
    let from = TraceFrom {
        pod: "node1-a".into(),
        node: "node1".into(),
        ip: ip("10.244.1.2"),
        mtu: Some(1480),
    };
    let input = TraceInput {
        lab: "weft",
        encap: Encap::Ipip,
        from: &from,
        from_ifname: "eth0",
        to: "10.244.2.2".parse().unwrap(),
        size: None,
        df: false,
        nodes: &nodes,
        pods: &pods,
    };
    let r = report(&input).unwrap();
    assert_eq!(r.summary, "delivered to pod node2-a on node2");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let text = r.render();
    assert!(
        text.starts_with(
            "trace in lab weft (encap ipip): from pod node1-a (10.244.1.2, node1) to 10.244.2.2 (icmp echo)\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("verdict: delivered to pod node2-a on node2\n"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["from"]["mtu"], 1480);
    assert_eq!(json["steps"].as_array().unwrap().len(), r.steps.len());

    // Above the pod's own MTU: said so, and still traced from the veth.
    let big = report(&TraceInput {
        size: Some(1500),
        df: true,
        ..input
    })
    .unwrap();
    assert!(
        big.notes[0].contains("above the MTU of node1-a's eth0 (1480)"),
        "{:?}",
        big.notes
    );

    // From an address no node has behind a veth: no trace.
    let stranger = TraceFrom {
        ip: ip("10.244.1.77"),
        ..from.clone()
    };
    assert!(
        report(&TraceInput {
            from: &stranger,
            ..input
        })
        .is_err()
    );
}
