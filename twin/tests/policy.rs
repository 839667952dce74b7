//! NetworkPolicy in the twin: policies compiled by the agent's own
//! compiler (`weft_calc::policy::compile`) for each node of a 2-node
//! cluster, loaded into the nodes' policy tables, and real smoltcp
//! conversations through the same hooks the eBPF programs run.
//!
//! Pods: `client` (app=client) on node 1, `server` (app=server) and
//! `other` (app=other) on node 2, `neighbour` (app=client) on node 2 too,
//! for a flow on one node. The policy lets app=client reach the server on
//! TCP 80 and UDP 53, nothing else, and lets nothing in to app=client:
//! whatever reaches a client does so as a reply or an error about a flow
//! it opened.

mod common;

use common::{endpoint, tcp_both_ways, tcp_start, udp_request_reply, udp_socket};
use weft_calc::policy::{PolicyInput, compile};
use weft_common::maps::{EndpointCounterKey, POLICY_EGRESS, POLICY_INGRESS};
use weft_common::verdict::Counter;
use weft_model::manifest::{PolicyManifest, parse_policy_manifests};
use weft_model::policy::labels;
use weft_model::{NetworkPolicy, PolicyPod};
use weft_twin::smoltcp::iface::SocketHandle;
use weft_twin::smoltcp::socket::{tcp, udp};
use weft_twin::{Cluster, PodId};

/// The policy `server`: app=server's ingress is `ingress`.
fn server_policy(ingress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: server
  ingress:{ingress}"
    )
}

/// app=client reaches the server on TCP 80 and UDP 53; nothing reaches
/// app=client.
fn server_open_to_clients() -> String {
    server_policy(
        "
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - protocol: TCP
      port: 80
    - protocol: UDP
      port: 53
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: clients-accept-nothing
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: client
  ingress: []
",
    )
}

/// The same server, now open to nobody.
fn server_closed() -> String {
    server_policy(" []\n")
}

struct Pods {
    client: PodId,
    server: PodId,
    other: PodId,
    neighbour: PodId,
}

fn two_nodes() -> (Cluster, Pods) {
    let mut c = Cluster::new(weft_twin::ClusterConfig {
        nodes: 2,
        ..weft_twin::ClusterConfig::default()
    });
    let pods = Pods {
        client: c.add_pod(0),
        server: c.add_pod(1),
        other: c.add_pod(1),
        neighbour: c.add_pod(1),
    };
    (c, pods)
}

fn policies(yaml: &str) -> Vec<NetworkPolicy> {
    if yaml.is_empty() {
        return Vec::new();
    }
    parse_policy_manifests(yaml)
        .expect("a valid manifest")
        .into_iter()
        .filter_map(|m| match m {
            PolicyManifest::NetworkPolicy(p) => Some(p),
            PolicyManifest::Namespace(_) => None,
        })
        .collect()
}

/// Compiles `yaml` for every node and loads the result into its tables,
/// as the agent writes its maps (then bumps the revision).
fn apply(c: &mut Cluster, pods: &Pods, yaml: &str) {
    let pod = |id: PodId, name: &str, app: &str| PolicyPod {
        namespace: "default".into(),
        name: name.into(),
        labels: labels([("app", app)]),
        address: Some(c.pod_ip(id)),
        node: format!("n{}", c.pod(id).node() + 1),
        ports: Vec::new(),
    };
    let members = [
        pod(pods.client, "client", "client"),
        pod(pods.server, "server", "server"),
        pod(pods.other, "other", "other"),
        pod(pods.neighbour, "neighbour", "client"),
    ];
    let policies = policies(yaml);
    for node in 0..c.node_count() {
        let name = format!("n{}", node + 1);
        let compiled = compile(&PolicyInput {
            node: &name,
            node_address: c.node_ip(node),
            namespaces: &[],
            pods: &members,
            policies: &policies,
            previous: None,
        });
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        c.tables_mut(node)
            .policy
            .load(compiled.ipcache, compiled.policy);
    }
}

/// An open TCP connection from `client` to `server:port`, if the
/// handshake completes within `steps`: (client socket, server socket).
fn connect(
    c: &mut Cluster,
    client: PodId,
    server: PodId,
    port: u16,
    steps: usize,
) -> Option<(SocketHandle, SocketHandle)> {
    let (hc, hs) = tcp_start(c, client, server, port, 40000 + port);
    let open = c.run_until(steps, |c| {
        c.pod_mut(client)
            .sockets()
            .get_mut::<tcp::Socket>(hc)
            .may_send()
            && c.pod_mut(server)
                .sockets()
                .get_mut::<tcp::Socket>(hs)
                .may_recv()
    });
    open.then_some((hc, hs))
}

/// Sends `data` on `from` and runs until `to` has received it all, or
/// `steps` ran out; returns what arrived.
fn send_over(
    c: &mut Cluster,
    (from_pod, from): (PodId, SocketHandle),
    (to_pod, to): (PodId, SocketHandle),
    data: &[u8],
    steps: usize,
) -> Vec<u8> {
    c.pod_mut(from_pod)
        .sockets()
        .get_mut::<tcp::Socket>(from)
        .send_slice(data)
        .unwrap();
    let mut got = Vec::new();
    let _ = c.run_until(steps, |c| {
        let s = c.pod_mut(to_pod).sockets().get_mut::<tcp::Socket>(to);
        while s.can_recv() {
            s.recv(|buf| {
                got.extend_from_slice(buf);
                (buf.len(), ())
            })
            .unwrap();
        }
        got.len() >= data.len()
    });
    got
}

fn counter(c: &Cluster, node: usize, counter: Counter) -> u64 {
    c.counters(node).get(counter)
}

#[test]
fn without_policy_every_pod_reaches_every_other() {
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, "");
    tcp_both_ways(&mut c, pods.other, pods.server, 8080, 2000);
    tcp_both_ways(&mut c, pods.server, pods.client, 9090, 2000);
    for node in 0..2 {
        assert_eq!(counter(&c, node, Counter::PolicyIngressDenied), 0);
        assert_eq!(counter(&c, node, Counter::PolicyIngressAllowed), 0);
    }
}

#[test]
fn tcp_connect_is_allowed_or_denied_by_the_servers_ingress_policy() {
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, &server_open_to_clients());
    // Allowed: across nodes, and on the server's own node.
    tcp_both_ways(&mut c, pods.client, pods.server, 80, 20_000);
    tcp_both_ways(&mut c, pods.neighbour, pods.server, 80, 20_000);
    assert!(counter(&c, 1, Counter::PolicyIngressAllowed) >= 2);
    // The client's node has nothing to check for the server: it is not
    // local there.
    assert_eq!(counter(&c, 0, Counter::PolicyIngressAllowed), 0);
    // Denied: another port, another pod.
    assert!(connect(&mut c, pods.client, pods.server, 81, 3000).is_none());
    assert!(connect(&mut c, pods.other, pods.server, 80, 3000).is_none());
    assert!(counter(&c, 1, Counter::PolicyIngressDenied) >= 2);
    // The server itself is not isolated for egress: it reaches others,
    // but not a client, which accepts nothing it did not ask for.
    tcp_both_ways(&mut c, pods.server, pods.other, 7000, 2000);
    assert!(connect(&mut c, pods.server, pods.client, 7001, 3000).is_none());
    assert!(counter(&c, 0, Counter::PolicyIngressDenied) >= 1);
}

/// A pod's policy counter on its node: `direction`, allowed or denied.
fn endpoint_counter(c: &Cluster, pod: PodId, direction: u8, allowed: bool) -> u64 {
    let key = EndpointCounterKey::new(c.pod_ip(pod).octets(), direction, allowed);
    c.counters(c.pod(pod).node()).endpoint(&key)
}

#[test]
fn each_endpoint_counts_what_its_policy_allowed_and_denied() {
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, &server_open_to_clients());
    tcp_both_ways(&mut c, pods.client, pods.server, 80, 20_000);
    let allowed = endpoint_counter(&c, pods.server, POLICY_INGRESS, true);
    assert!(allowed >= 1, "the server's ingress allowed the client");
    assert_eq!(endpoint_counter(&c, pods.server, POLICY_INGRESS, false), 0);
    assert!(connect(&mut c, pods.other, pods.server, 80, 3000).is_none());
    assert!(endpoint_counter(&c, pods.server, POLICY_INGRESS, false) >= 1);
    assert_eq!(
        endpoint_counter(&c, pods.server, POLICY_INGRESS, true),
        allowed,
        "a denied SYN counts as denied only"
    );
    // Nothing isolates the server's egress, nor anyone's on node 1: no
    // egress counter, and the other pod (not isolated) has none at all.
    for pod in [pods.server, pods.other, pods.client] {
        assert_eq!(endpoint_counter(&c, pod, POLICY_EGRESS, true), 0);
        assert_eq!(endpoint_counter(&c, pod, POLICY_EGRESS, false), 0);
    }
    assert_eq!(endpoint_counter(&c, pods.other, POLICY_INGRESS, true), 0);
    // A client accepts nothing it did not ask for: its own ingress denies.
    assert!(connect(&mut c, pods.server, pods.client, 7001, 3000).is_none());
    assert!(endpoint_counter(&c, pods.client, POLICY_INGRESS, false) >= 1);
    // Per node, the endpoint counters add up to the node's policy counters.
    for node in 0..2 {
        let sum = |direction: u8, allowed: bool| -> u64 {
            c.counters(node)
                .endpoints()
                .iter()
                .filter(|(k, _)| k.direction == direction && k.allowed() == allowed)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(
            sum(POLICY_INGRESS, true),
            counter(&c, node, Counter::PolicyIngressAllowed)
        );
        assert_eq!(
            sum(POLICY_INGRESS, false),
            counter(&c, node, Counter::PolicyIngressDenied)
        );
        assert_eq!(
            sum(POLICY_EGRESS, false),
            counter(&c, node, Counter::PolicyEgressDenied)
        );
    }
}

#[test]
fn udp_replies_pass_and_a_port_unreachable_reaches_the_sender() {
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, &server_open_to_clients());
    // The reply goes to the client's port 54, which no rule allows.
    udp_request_reply(&mut c, pods.client, pods.server, 53);
    // Nothing listens on the server's 53 any more in a fresh cluster:
    // smoltcp answers with ICMP port unreachable, related to the flow.
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, &server_open_to_clients());
    let hc = udp_socket(&mut c, pods.client, 5353);
    let server_ip = c.pod_ip(pods.server);
    let client_ip = c.pod_ip(pods.client).octets();
    let unreachable = |c: &Cluster| {
        c.pod(pods.client).received().iter().any(|frame| {
            frame.len() > 14 + 20 + 2
                && frame[12..14] == [0x08, 0x00]
                && frame[14 + 9] == 1
                && frame[14 + 16..14 + 20] == client_ip
                && frame[14 + 20] == 3
                && frame[14 + 21] == 3
        })
    };
    // The server's first answer may wait for ARP (smoltcp drops it):
    // the client tries a few times, as a resolver would.
    let mut answered = false;
    for _ in 0..3 {
        c.pod_mut(pods.client)
            .sockets()
            .get_mut::<udp::Socket>(hc)
            .send_slice(b"anyone there?", endpoint(server_ip, 53))
            .unwrap();
        if c.run_until(200, |c| unreachable(c)) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the port unreachable reaches the client");
    assert!(counter(&c, 1, Counter::ConntrackRelated) >= 1);
    assert!(counter(&c, 0, Counter::ConntrackRelated) >= 1);
}

#[test]
fn a_revision_bump_cuts_an_established_connection_policy_no_longer_allows() {
    let (mut c, pods) = two_nodes();
    apply(&mut c, &pods, &server_open_to_clients());
    let (hc, hs) = connect(&mut c, pods.client, pods.server, 80, 20_000).expect("allowed");
    let got = send_over(
        &mut c,
        (pods.client, hc),
        (pods.server, hs),
        b"before",
        2000,
    );
    assert_eq!(got, b"before");
    // The same connection, a neighbour's, stays up across a bump that
    // changes nothing for it.
    let (nc, ns) = connect(&mut c, pods.neighbour, pods.server, 80, 20_000).expect("allowed");
    apply(&mut c, &pods, &server_open_to_clients());
    let got = send_over(
        &mut c,
        (pods.neighbour, nc),
        (pods.server, ns),
        b"same",
        2000,
    );
    assert_eq!(got, b"same");

    apply(&mut c, &pods, &server_closed());
    let denied_before = counter(&c, 1, Counter::PolicyIngressDenied);
    let got = send_over(&mut c, (pods.client, hc), (pods.server, hs), b"after", 3000);
    assert!(got.is_empty(), "{got:?} arrived after the policy closed");
    assert!(counter(&c, 1, Counter::PolicyIngressDenied) > denied_before);
    assert!(
        counter(&c, 1, Counter::ConntrackDenied) >= 1,
        "later packets are dropped without a lookup"
    );
}

/// kube-proxy's DNAT at the hooks of the client's node (the twin has no
/// netfilter, so the test hands each hook the packet as the kernel would
/// at that point): the client may send only to app=server on TCP 80 and
/// UDP 53, and receives nothing. To a ClusterIP its veth defers the
/// egress; after the DNAT the node's way out (uplink or vxlan device)
/// judges it against the backend; the reverse-NATed reply from the
/// ClusterIP gets in as a reply.
#[test]
fn egress_to_a_service_is_judged_after_the_dnat() {
    use weft_common::maps::EndpointInfo;
    use weft_twin::Conntrack;
    use weft_twin::hooks::{self, TC_ACT_OK, TC_ACT_SHOT};
    use weft_twin::wire::{self, Mac, Probe, ProbeKind};

    let (mut c, pods) = two_nodes();
    apply(
        &mut c,
        &pods,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: server}}
    ports: [{port: 80}, {protocol: UDP, port: 53}]
",
    );
    let [client, server, other] =
        [pods.client, pods.server, pods.other].map(|p| c.pod_ip(p).octets());
    let service = [10, 96, 0, 10];
    let tables = c.tables(0).clone();
    let without_range = tables.config;
    let config = without_range.with_service_range([10, 96, 0, 0], 12);
    let endpoint = EndpointInfo::new(client);
    let frame = |probe: Probe| {
        wire::ethernet_frame(
            Mac::HOST_VETH,
            Mac::pod(probe.src),
            wire::ETHERTYPE_IPV4,
            &probe.packet(),
        )
    };
    let mut conntrack = Conntrack::default();
    let now = 1_000_000;

    // At the client's veth, before the DNAT.
    let to_service = frame(Probe::udp(client, service, 53));
    let judged_here = hooks::pod_ingress(
        &to_service,
        Some(&endpoint),
        &tables.policy,
        &mut conntrack,
        now,
        &without_range,
    );
    assert_eq!(
        judged_here.action, TC_ACT_SHOT,
        "against the ClusterIP: denied"
    );
    let deferred = hooks::pod_ingress(
        &to_service,
        Some(&endpoint),
        &tables.policy,
        &mut conntrack,
        now,
        &config,
    );
    assert_eq!(deferred.action, TC_ACT_OK, "deferred to after the DNAT");
    assert!(
        !deferred
            .counters()
            .any(|c| c == Counter::PolicyEgressDenied)
    );

    // After the DNAT, leaving for the backend's node.
    let routes = tables.pod_routes.as_slice();
    let to_server = frame(Probe::udp(client, server, 53));
    let out = hooks::uplink_egress(
        &to_server,
        routes,
        &config,
        &tables.policy,
        &mut conntrack,
        now,
    );
    assert_eq!(out.action, TC_ACT_OK);
    assert!(out.counters().any(|c| c == Counter::PolicyEgressAllowed));
    let to_other = frame(Probe::udp(client, other, 53));
    let out = hooks::uplink_egress(
        &to_other,
        routes,
        &config,
        &tables.policy,
        &mut conntrack,
        now,
    );
    assert_eq!(
        out.action, TC_ACT_SHOT,
        "a backend the client may not reach"
    );
    assert!(out.counters().any(|c| c == Counter::PolicyEgressDenied));
    let tunnel = hooks::tunnel_egress(&to_other, &tables.policy, &mut conntrack, now, &config);
    assert_eq!(
        tunnel.map(|o| o.action),
        Some(TC_ACT_SHOT),
        "so does the vxlan device"
    );
    // No DNAT happened: judged against the ClusterIP, whatever the veth wrote.
    let out = hooks::uplink_egress(
        &to_service,
        routes,
        &config,
        &tables.policy,
        &mut conntrack,
        now,
    );
    assert_eq!(out.action, TC_ACT_SHOT);
    // The server's node's traffic and the node's own: nothing to judge.
    let from_server = frame(Probe::udp(server, client, 53));
    assert_eq!(
        hooks::tunnel_egress(&from_server, &tables.policy, &mut conntrack, now, &config),
        None
    );

    // The reply, reverse-NATed (from the ClusterIP), into the client that
    // takes nothing in.
    let reply = Probe {
        kind: ProbeKind::Udp {
            src_port: 53,
            dst_port: 40000,
        },
        ..Probe::udp(service, client, 40000)
    };
    let reply = wire::ethernet_frame(
        Mac::pod(client),
        Mac::HOST_VETH,
        wire::ETHERTYPE_IPV4,
        &reply.packet(),
    );
    let back = hooks::pod_egress(&reply, &tables.policy, &mut conntrack, now, &config);
    assert_eq!(back.action, TC_ACT_OK, "the reply gets in");
    assert_eq!(back.counter, Counter::ConntrackEstablished);
}
