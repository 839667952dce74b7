//! `trace`: one synthetic packet walked through nodes' tables built from
//! plain data, hop by hop, every decision named.

use std::net::Ipv4Addr;

use weft_common::maps::{NodeConfig, PodCidrKey, RemoteNode};
use weft_common::verdict::Counter;
use weft_twin::hooks::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use weft_twin::wire::Probe;
use weft_twin::{
    Cluster, ClusterConfig, Encap, KernelRoute, NodeTables, RouteDecision, Step, TraceError, Via,
    VxlanDecision, trace,
};

const NODE1: [u8; 4] = [198, 18, 0, 1];
const NODE2: [u8; 4] = [198, 18, 0, 2];
const POD1: [u8; 4] = [10, 244, 1, 5];
const POD2: [u8; 4] = [10, 244, 2, 7];

/// Two ipip nodes as an operator would read them off live nodes: the
/// pinned maps and `ip route`.
fn ipip_tables(route_mtu: Option<u16>) -> Vec<NodeTables> {
    let node = |name: &str, me: [u8; 4], other: [u8; 4], pod: [u8; 4], remote_cidr: [u8; 4]| {
        let config = NodeConfig::new(me, Encap::Ipip).with_uplink_mtu(1500);
        let mut t = NodeTables::new(name, config, 24);
        t.pod_mtu = 1480;
        t.add_pod(7, pod);
        t.pod_routes
            .push((PodCidrKey::new(remote_cidr, 24), RemoteNode::new(other)));
        t.nodes.push(other);
        t.routes.push(
            KernelRoute::new(
                remote_cidr,
                24,
                Via::Uplink {
                    gateway: Some(other),
                },
            )
            .with_mtu(route_mtu),
        );
        t
    };
    vec![
        node("node1", NODE1, NODE2, POD1, [10, 244, 2, 0]),
        node("node2", NODE2, NODE1, POD2, [10, 244, 1, 0]),
    ]
}

fn show(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("{s}\n")).collect()
}

#[test]
fn a_udp_probe_crosses_two_ipip_nodes_hop_by_hop() {
    let tables = ipip_tables(Some(1480));
    let probe = Probe::udp(POD1, POD2, 53);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    let text = show(&steps);
    println!("{text}");
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            Step::PodVeth { .. } => "pod veth",
            Step::Routing { .. } => "routing",
            Step::UplinkEgress { .. } => "uplink egress",
            Step::Underlay { .. } => "underlay",
            Step::UplinkIngress { .. } => "uplink ingress",
            Step::Delivered { .. } => "delivered",
            other => panic!("unexpected step {other}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "pod veth",
            "routing",
            "uplink egress",
            "underlay",
            "uplink ingress",
            "routing",
            "pod veth",
            "delivered"
        ],
        "{text}"
    );
    let counters: Vec<Counter> = steps.iter().filter_map(Step::counter).collect();
    assert_eq!(
        counters,
        [
            Counter::Pass,
            Counter::Encapsulate,
            Counter::Decapsulate,
            Counter::ConntrackNew
        ]
    );
    assert_eq!(
        steps[1].route(),
        Some(RouteDecision::ViaUplink {
            next_hop: NODE2,
            mtu: 1480
        })
    );
    assert_eq!(steps[5].route(), Some(RouteDecision::ToPod { ifindex: 7 }));
    assert!(matches!(
        &steps[6],
        Step::PodVeth { node, ifindex: 7, hook: weft_twin::VethHook::TcEgress, .. } if node == "node2"
    ));
    assert_eq!(steps[7].node(), Some("node2"));
    assert!(text.contains("TC_ACT_OK (encapsulate)"), "{text}");
    assert!(
        text.contains(
            "198.18.0.1 > 198.18.0.2 ipip len 48 DF [10.244.1.5:40000 > 10.244.2.7:53 udp]"
        ),
        "{text}"
    );
}

#[test]
fn with_direct_redirect_the_probe_skips_the_receiving_nodes_routing() {
    let mut tables = ipip_tables(Some(1480));
    tables[1].config = tables[1].config.with_direct_redirect();
    let probe = Probe::udp(POD1, POD2, 53);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    let text = show(&steps);
    println!("{text}");
    assert_eq!(steps.len(), 6, "{text}");
    assert!(matches!(
        steps[4],
        Step::UplinkIngress {
            action: TC_ACT_REDIRECT,
            counter: Counter::Redirect,
            ..
        }
    ));
    assert!(
        matches!(&steps[5], Step::Delivered { node, ifindex: 7, .. } if node == "node2"),
        "{text}"
    );
    assert!(text.contains("TC_ACT_REDIRECT (redirect)"), "{text}");
}

#[test]
fn a_spoofed_probe_stops_at_the_pod_veth() {
    let tables = ipip_tables(Some(1480));
    let probe = Probe::udp([10, 244, 1, 99], POD2, 53);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    assert_eq!(steps.len(), 1, "{}", show(&steps));
    assert!(matches!(
        steps[0],
        Step::PodVeth {
            action: TC_ACT_SHOT,
            counter: Counter::DropSpoofedSource,
            ..
        }
    ));
    assert!(
        steps[0]
            .to_string()
            .contains("TC_ACT_SHOT (drop_spoofed_source)")
    );
}

#[test]
fn an_oversized_df_probe_gets_icmp_back_to_the_sender() {
    let tables = ipip_tables(Some(1480));
    let probe = Probe::tcp(POD1, POD2, 80).with_len(1481);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    let text = show(&steps);
    let routes: Vec<RouteDecision> = steps.iter().filter_map(Step::route).collect();
    assert_eq!(
        routes,
        [
            RouteDecision::FragmentationNeeded { mtu: 1480 },
            RouteDecision::ToPod { ifindex: 7 }
        ],
        "{text}"
    );
    let Some(Step::Delivered { node, packet, .. }) = steps.last() else {
        panic!("{text}");
    };
    assert_eq!(node, "node1");
    assert_eq!((packet.src, packet.dst, packet.protocol), (NODE1, POD1, 1));
    assert_eq!(packet.ports, Some((3, 4)), "type 3 code 4");
}

#[test]
fn without_the_route_mtu_the_probe_dies_in_the_uplink_program() {
    let tables = ipip_tables(None);
    let probe = Probe::udp(POD1, POD2, 53).with_len(1481);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    let last = steps.last().unwrap();
    assert!(
        matches!(
            last,
            Step::UplinkEgress {
                action: TC_ACT_SHOT,
                counter: Counter::DropTooBig,
                ..
            }
        ),
        "{}",
        show(&steps)
    );
    // At 1480 the same path encapsulates.
    let probe = Probe::udp(POD1, POD2, 53).with_len(1480);
    let steps = trace(&tables, Ipv4Addr::from(POD1), &probe.packet()).unwrap();
    assert!(steps.iter().any(|s| matches!(
        s,
        Step::UplinkEgress {
            action: TC_ACT_OK,
            counter: Counter::Encapsulate,
            ..
        }
    )));
}

#[test]
fn vxlan_tables_taken_from_a_simulated_cluster_trace_through_the_device() {
    let mut c = Cluster::new(ClusterConfig {
        encap: Encap::Vxlan,
        ..ClusterConfig::default()
    });
    let a = c.add_pod(0);
    let b = c.add_pod(2);
    let tables: Vec<NodeTables> = (0..3).map(|n| c.tables(n).clone()).collect();
    let probe = Probe::ping(c.pod_ip(a).octets(), c.pod_ip(b).octets());
    let steps = trace(&tables, c.pod_ip(a), &probe.packet()).unwrap();
    let text = show(&steps);
    println!("{text}");
    let encap = steps
        .iter()
        .find_map(|s| match s {
            Step::VxlanEncap { remote, vni, .. } => Some((*remote, *vni)),
            _ => None,
        })
        .expect(&text);
    assert_eq!(encap, (c.node_ip(2).octets(), 4096));
    assert!(steps.iter().any(|s| matches!(
        s,
        Step::VxlanDecap {
            decision: VxlanDecision::Decapsulated { vni: 4096 },
            ..
        }
    )));
    assert!(matches!(steps.last(), Some(Step::Delivered { node, .. }) if node == "node3"));
    // The trace touched nothing of the cluster it was read from.
    assert_eq!(c.counters(0).get(Counter::Pass), 0);
}

#[test]
fn a_probe_from_an_unknown_pod_is_refused() {
    let err = trace(&ipip_tables(Some(1480)), Ipv4Addr::new(10, 244, 9, 9), &[]).unwrap_err();
    assert_eq!(err, TraceError::UnknownPod(Ipv4Addr::new(10, 244, 9, 9)));
    assert_eq!(err.to_string(), "no node has a local pod 10.244.9.9");
}

/// node2 isolates POD2's ingress and allows POD1 (identity 300) on UDP 53
/// and TCP 8000-8007 (one /93 prefix).
fn policy_tables() -> Vec<NodeTables> {
    use weft_common::maps::{
        IdentityEntry, IpcacheKey, POLICY_INGRESS, POLICY_PREFIX_FULL, PolicyEntry, PolicyKey,
    };
    let mut tables = ipip_tables(Some(1480));
    tables[1].policy.load(
        [(IpcacheKey::host(POD1), IdentityEntry { identity: 300 })],
        [
            (
                PolicyKey::isolation(POD2, POLICY_INGRESS),
                PolicyEntry::DENY,
            ),
            (
                PolicyKey::new(POLICY_PREFIX_FULL, POD2, POLICY_INGRESS, 300, 17, 53),
                PolicyEntry::ALLOW,
            ),
            (
                PolicyKey::new(93, POD2, POLICY_INGRESS, 300, 6, 8000),
                PolicyEntry::ALLOW,
            ),
        ],
    );
    tables
}

/// The pod veth steps' texts.
fn veth_steps(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|s| matches!(s, Step::PodVeth { .. }))
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_trace_names_the_policy_entry_that_decided_at_each_pod_veth() {
    let tables = policy_tables();
    // Allowed by the UDP 53 rule, at node2's pod veth egress.
    let steps = trace(&tables, POD1.into(), &Probe::udp(POD1, POD2, 53).packet()).unwrap();
    let veth = veth_steps(&steps);
    assert_eq!(veth.len(), 2, "{}", show(&steps));
    assert!(
        veth[0].contains("tc ingress") && veth[0].contains("neither end isolated"),
        "{}",
        veth[0]
    );
    assert!(veth[1].contains("pod veth if7 tc egress"), "{}", veth[1]);
    assert!(
        veth[1].contains(
            "ingress of 10.244.2.7: allowed by rule [ingress peer identity 300 (10.244.1.5/32), UDP, port 53]"
        ),
        "{}",
        veth[1]
    );
    assert!(
        matches!(steps.last(), Some(Step::Delivered { .. })),
        "{}",
        show(&steps)
    );

    // A port range's prefix.
    let steps = trace(&tables, POD1.into(), &Probe::tcp(POD1, POD2, 8005).packet()).unwrap();
    let veth = veth_steps(&steps);
    assert!(
        veth[1].contains("TCP, ports 8000-8007 (/93 prefix)"),
        "{}",
        veth[1]
    );

    // Denied by the isolation marker: dropped at node2's pod veth egress.
    let steps = trace(&tables, POD1.into(), &Probe::udp(POD1, POD2, 54).packet()).unwrap();
    let last = steps.last().unwrap();
    assert!(
        matches!(
            last,
            Step::PodVeth {
                action: TC_ACT_SHOT,
                hook: weft_twin::VethHook::TcEgress,
                ..
            }
        ),
        "{}",
        show(&steps)
    );
    assert!(
        last.to_string().contains(
            "ingress of 10.244.2.7: DENIED by the isolation marker: no rule allows peer identity 300 (10.244.1.5/32)"
        ),
        "{last}"
    );
    let reason = weft_twin::trace::drop_reason(last).unwrap();
    assert!(reason.contains("policy: "), "{reason}");
}
