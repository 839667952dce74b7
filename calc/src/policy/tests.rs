//! The compiler's semantics, decided by the compiled maps themselves: every
//! verdict here is an ipcache LPM lookup then the policy LPM lookups in
//! `weft_common::maps::policy_decision`'s order, as the eBPF programs do.
//! No separate evaluator of policies exists.
//!
//! The cluster is upstream's e2e model (test/e2e/network/netpol): namespaces
//! x, y, z with pods a, b, c each; a and b on node n1, c on n2.

use std::cell::Cell;
use std::net::Ipv4Addr;

use weft_common::maps::{
    IDENTITY_WORLD, POLICY_EGRESS, POLICY_INGRESS, PolicyDecision, PolicyEntry, PolicyKey,
    policy_decision,
};
use weft_model::manifest::{PolicyManifest, parse_policy_manifests};
use weft_model::policy::{ContainerPort, PortRef, Protocol, labels};
use weft_model::{Namespace, NetworkPolicy, PolicyPod};

use super::plan::apply;
use super::*;

const NODES: [(&str, Ipv4Addr); 2] = [
    ("n1", Ipv4Addr::new(198, 18, 0, 1)),
    ("n2", Ipv4Addr::new(198, 18, 0, 2)),
];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;

#[derive(Clone)]
struct Fixture {
    namespaces: Vec<Namespace>,
    pods: Vec<PolicyPod>,
    policies: Vec<NetworkPolicy>,
}

fn port(name: &str, number: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol,
    }
}

impl Fixture {
    /// x, y, z × a, b, c. Namespace x has an object with `ns: x`; y has
    /// one with `ns: y`; z exists only through its pods. Named ports:
    /// `http` is 80 on a and c but 8080 on b; `dns` is 53/UDP on a;
    /// `assoc` is 82/SCTP on c.
    fn netpol() -> Fixture {
        let mut pods = Vec::new();
        for (i, ns) in ["x", "y", "z"].into_iter().enumerate() {
            for (j, name) in ["a", "b", "c"].into_iter().enumerate() {
                let node = if name == "c" { 2 } else { 1 };
                let address = Ipv4Addr::new(10, 244, node, (10 * (i + 1) + j + 1) as u8);
                let ports = match name {
                    "a" => vec![
                        port("http", 80, Protocol::Tcp),
                        port("dns", 53, Protocol::Udp),
                    ],
                    "b" => vec![port("http", 8080, Protocol::Tcp)],
                    _ => vec![
                        port("http", 80, Protocol::Tcp),
                        port("assoc", 82, Protocol::Sctp),
                    ],
                };
                pods.push(PolicyPod {
                    namespace: ns.into(),
                    name: name.into(),
                    labels: labels([("pod", name)]),
                    address: Some(address),
                    node: format!("n{node}"),
                    ports,
                });
            }
        }
        Fixture {
            namespaces: vec![
                Namespace::new("x", labels([("ns", "x")])),
                Namespace::new("y", labels([("ns", "y")])),
            ],
            pods,
            policies: Vec::new(),
        }
    }

    /// The fixture with the policies of a manifest file added.
    fn with(mut self, yaml: &str) -> Fixture {
        for object in parse_policy_manifests(yaml).expect("a valid manifest") {
            match object {
                PolicyManifest::NetworkPolicy(p) => self.policies.push(p),
                PolicyManifest::Namespace(n) => self.namespaces.push(n),
            }
        }
        self
    }

    fn compile_node(
        &self,
        (node, node_address): (&str, Ipv4Addr),
        previous: Option<&Identities>,
    ) -> CompiledPolicy {
        compile(&PolicyInput {
            node,
            node_address,
            namespaces: &self.namespaces,
            pods: &self.pods,
            policies: &self.policies,
            previous,
        })
    }

    fn compiled(&self) -> Vec<CompiledPolicy> {
        NODES.map(|n| self.compile_node(n, None)).into()
    }

    fn address(&self, who: &str) -> Ipv4Addr {
        match who.split_once('/') {
            Some((ns, name)) => self
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .and_then(|p| p.address)
                .unwrap_or_else(|| panic!("no pod {who}")),
            None => who.parse().unwrap(),
        }
    }

    /// Whether a packet `from` → `to` (pods as `ns/name`, or addresses)
    /// passes every node's maps.
    fn can(&self, from: &str, to: &str, protocol: u8, port: u16) -> bool {
        allowed(
            &self.compiled(),
            self.address(from),
            self.address(to),
            protocol,
            port,
        )
    }

    /// Checks each (from, to, protocol, port, allowed).
    fn expect(&self, probes: &[(&str, &str, u8, u16, bool)]) {
        let compiled = self.compiled();
        for &(from, to, protocol, port, want) in probes {
            let got = allowed(
                &compiled,
                self.address(from),
                self.address(to),
                protocol,
                port,
            );
            assert_eq!(got, want, "{from} -> {to} {protocol}/{port}");
        }
    }

    /// The reachability matrix over every pod pair for one protocol/port,
    /// as upstream's tests print it: one row per source.
    fn matrix(&self, protocol: u8, port: u16) -> Vec<String> {
        let compiled = self.compiled();
        let names: Vec<String> = self
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        names
            .iter()
            .map(|from| {
                let row: String = names
                    .iter()
                    .map(|to| {
                        let ok = allowed(
                            &compiled,
                            self.address(from),
                            self.address(to),
                            protocol,
                            port,
                        );
                        if ok { '.' } else { 'X' }
                    })
                    .collect();
                format!("{from} {row}")
            })
            .collect()
    }
}

/// The ipcache's answer for `address`: longest covering prefix, else world.
fn identity_of(c: &CompiledPolicy, address: Ipv4Addr) -> u32 {
    c.ipcache
        .iter()
        .filter(|(k, _)| k.contains(address.octets()))
        .max_by_key(|(k, _)| k.prefix_len)
        .map_or(IDENTITY_WORLD, |(_, v)| v.identity)
}

/// The policy trie's answer for a full key: longest covering prefix.
fn policy_lookup<'a>(
    c: &'a CompiledPolicy,
    lookups: &'a Cell<usize>,
) -> impl Fn(&PolicyKey) -> Option<PolicyEntry> + 'a {
    move |key| {
        lookups.set(lookups.get() + 1);
        c.policy
            .iter()
            .filter(|(k, _)| k.covers(key))
            .max_by_key(|(k, _)| k.prefix_len)
            .map(|(_, v)| *v)
    }
}

/// One node's decision for `endpoint` in `direction` with `peer`.
fn decide(
    c: &CompiledPolicy,
    endpoint: Ipv4Addr,
    direction: u8,
    peer: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> PolicyDecision {
    let lookups = Cell::new(0);
    let identity = identity_of(c, peer);
    let d = policy_decision(
        policy_lookup(c, &lookups),
        endpoint.octets(),
        direction,
        identity,
        protocol,
        port,
    );
    assert!(lookups.get() <= 2, "at most two policy lookups per packet");
    d
}

/// The packet passes the sender's egress and the receiver's ingress, on
/// whichever node each is (elsewhere they have no entries).
fn allowed(
    nodes: &[CompiledPolicy],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> bool {
    nodes.iter().all(|c| {
        decide(c, src, POLICY_EGRESS, dst, protocol, port) != PolicyDecision::Denied
            && decide(c, dst, POLICY_INGRESS, src, protocol, port) != PolicyDecision::Denied
    })
}

/// The netpol cluster with one policy `p` in namespace x.
fn in_x(spec: &str) -> Fixture {
    Fixture::netpol().with(&policy("x", "p", spec))
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    let spec = spec
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}---\n"
    )
}

#[test]
fn without_policy_everything_passes_and_nothing_is_isolated() {
    let f = Fixture::netpol();
    assert!(f.matrix(TCP, 80).iter().all(|row| !row.contains('X')));
    let compiled = f.compiled();
    assert!(compiled.iter().all(|c| c.policy.is_empty()));
    assert!(f.can("x/a", "8.8.8.8", UDP, 53));
}

#[test]
fn deny_all_ingress_isolates_only_the_selected_direction() {
    let f = Fixture::netpol().with(&policy("x", "deny", "podSelector: {}\ningress: []"));
    for to in ["x/a", "x/b", "x/c"] {
        assert!(!f.can("y/a", to, TCP, 80), "{to}");
        assert!(!f.can("x/a", to, UDP, 53) || to == "x/a", "{to}");
    }
    // Egress is not a type of this policy: x's pods still reach out.
    f.expect(&[
        ("x/a", "y/b", TCP, 80, true),
        ("x/a", "1.1.1.1", TCP, 443, true),
    ]);
    // Other namespaces' pods are not selected by `{}` in x.
    assert!(f.can("z/a", "y/b", TCP, 80));
    let n1 = &f.compiled()[0];
    assert!(n1.isolated(f.address("x/a"), POLICY_INGRESS));
    assert!(!n1.isolated(f.address("x/a"), POLICY_EGRESS));
    assert!(!n1.isolated(f.address("y/a"), POLICY_INGRESS));
}

#[test]
fn a_pod_reaches_itself_only_if_policy_allows_it() {
    // Upstream: isolation applies to a pod's traffic to itself through its address.
    let f = Fixture::netpol().with(&policy("x", "deny", "podSelector: {}\ningress: []"));
    assert!(!f.can("x/a", "x/a", TCP, 80));
}

#[test]
fn the_local_node_always_reaches_isolated_pods() {
    let f = Fixture::netpol().with(&policy(
        "x",
        "deny",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    // x/a is on n1, x/c on n2: each node's own address, not the other's.
    f.expect(&[
        ("198.18.0.1", "x/a", TCP, 8080, true),
        ("198.18.0.1", "x/a", UDP, 9, true),
        ("198.18.0.2", "x/c", TCP, 80, true),
        ("198.18.0.2", "x/a", TCP, 80, false),
        ("198.18.0.1", "x/c", TCP, 80, false),
    ]);
}

#[test]
fn pod_selector_match_labels_and_every_operator() {
    let selectors = [
        "{matchLabels: {pod: b}}",
        "{matchExpressions: [{key: pod, operator: In, values: [a, b]}]}",
        "{matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]}",
        "{matchExpressions: [{key: pod, operator: Exists}]}",
        "{matchExpressions: [{key: pod, operator: DoesNotExist}]}",
        "{matchLabels: {pod: a}, matchExpressions: [{key: pod, operator: In, values: [b]}]}",
    ];
    // Which of x/a, x/b, x/c each selector lets reach x/a (isolated).
    let expected = [
        [false, true, false],
        [true, true, false],
        [false, false, true],
        [true, true, true],
        [false, false, false],
        // The AND of both: no pod is a and b.
        [false, false, false],
    ];
    for (selector, want) in selectors.iter().zip(expected) {
        let spec = format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\ningress: [{{from: [{{podSelector: {selector}}}]}}]"
        );
        let f = Fixture::netpol().with(&policy("x", "p", &spec));
        let got = ["x/a", "x/b", "x/c"].map(|from| f.can(from, "x/a", TCP, 80));
        assert_eq!(got, want, "{selector}");
        // The policy selects only x/a: x/b stays open to everyone.
        assert!(f.can("z/c", "x/b", TCP, 80));
    }
}

#[test]
fn the_policy_pod_selector_uses_expressions_too() {
    let f = in_x(
        "podSelector:\n  matchExpressions: [{key: pod, operator: NotIn, values: [a]}]\ningress: []",
    );
    f.expect(&[
        ("y/a", "x/a", TCP, 80, true),
        ("y/a", "x/b", TCP, 80, false),
        ("y/a", "x/c", TCP, 80, false),
    ]);
}

#[test]
fn a_pod_selector_alone_in_a_peer_means_the_policy_namespace() {
    let f = in_x("podSelector: {}\ningress:\n- from:\n  - podSelector: {}");
    f.expect(&[
        ("x/b", "x/a", TCP, 80, true),
        ("x/c", "x/a", TCP, 80, true),
        ("y/b", "x/a", TCP, 80, false),
        ("z/b", "x/a", TCP, 80, false),
    ]);
}

#[test]
fn an_empty_namespace_selector_means_every_namespace() {
    let f = in_x("podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {}");
    for from in ["x/b", "y/b", "z/c"] {
        assert!(f.can(from, "x/a", TCP, 80), "{from}");
    }
    // Pods only: not the world.
    assert!(!f.can("1.2.3.4", "x/a", TCP, 80));
}

#[test]
fn namespace_selectors_see_object_labels_and_the_name_label_even_without_an_object() {
    let f = in_x(
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}",
    );
    assert!(f.can("y/a", "x/a", TCP, 80));
    assert!(
        f.can("z/a", "x/a", TCP, 80),
        "z has no object, yet its name label"
    );
    assert!(
        !f.can("x/b", "x/a", TCP, 80),
        "x's own pods are not in y or z"
    );
    // A namespace's labels changed: its pods follow.
    let mut relabelled = f.clone();
    relabelled.namespaces[1] = Namespace::new("y", labels([("ns", "other")]));
    assert!(!relabelled.can("y/a", "x/a", TCP, 80));
    // The name label cannot be overridden by the object's own labels.
    let mut spoofed = f.clone();
    spoofed.namespaces[0] = Namespace::new("x", labels([("kubernetes.io/metadata.name", "z")]));
    assert!(!spoofed.can("x/b", "x/a", TCP, 80));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_and_but_two_peers_or() {
    let and = in_x(
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: b}}",
    );
    and.expect(&[
        ("y/b", "x/a", TCP, 80, true),
        ("y/a", "x/a", TCP, 80, false),
        ("x/b", "x/a", TCP, 80, false),
        ("z/b", "x/a", TCP, 80, false),
    ]);
    let or = in_x(
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  - podSelector: {matchLabels: {pod: b}}",
    );
    or.expect(&[
        ("y/b", "x/a", TCP, 80, true),
        ("y/a", "x/a", TCP, 80, true), // any pod of y
    ]);
    assert!(
        or.can("x/b", "x/a", TCP, 80),
        "b of the policy's own namespace"
    );
    or.expect(&[
        ("z/b", "x/a", TCP, 80, false),
        ("x/c", "x/a", TCP, 80, false),
    ]);
}

#[test]
fn ip_blocks_with_except_within_their_own_block_and_pod_addresses() {
    let f = in_x(
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}\n  - ipBlock: {cidr: 192.168.1.128/25}\n  - ipBlock: {cidr: 10.244.2.0/24, except: [10.244.2.23/32]}",
    );
    f.expect(&[
        ("192.168.7.7", "x/a", TCP, 80, true),
        ("192.168.1.7", "x/a", TCP, 80, false), // in the except
    ]);
    // The except removes from its own block only: another block holds it.
    f.expect(&[
        ("192.168.1.200", "x/a", TCP, 80, true),
        ("192.169.0.1", "x/a", TCP, 80, false),
    ]);
    // Pod addresses in a block are peers like any address (x/c, y/c on n2).
    f.expect(&[
        ("x/c", "x/a", TCP, 80, true),
        ("y/c", "x/a", TCP, 80, false), // 10.244.2.23 is excepted
        ("z/c", "x/a", TCP, 80, true),
        ("x/b", "x/a", TCP, 80, false), // 10.244.1.12 is in no block
    ]);
}

#[test]
fn ip_block_egress_reaches_the_world_only_where_allowed() {
    let f = in_x(
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}",
    );
    f.expect(&[
        ("x/a", "8.8.8.8", UDP, 53, true),
        ("x/a", "10.1.2.3", UDP, 53, false),
        ("x/a", "y/b", TCP, 80, false), // pods are in 10/8
        ("x/b", "y/b", TCP, 80, true),  // x/b is not selected
    ]);
    // Ingress is not a type: anyone reaches x/a.
    assert!(f.can("y/b", "x/a", TCP, 80));
}

#[test]
fn numbered_ports_ranges_and_protocols() {
    let f = in_x(
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - port: 80\n  - {protocol: UDP, port: 1000, endPort: 2047}\n  - {protocol: SCTP, port: 82}\n  - {protocol: TCP, port: 30000, endPort: 30005}",
    );
    f.expect(&[
        ("y/b", "x/a", TCP, 80, true),   // a missing protocol is TCP
        ("y/b", "x/a", UDP, 80, false),  // ...and only TCP
        ("y/b", "x/a", SCTP, 80, false), // SCTP is never TCP
        ("y/b", "x/a", TCP, 81, false),
    ]);
    for port in [1000, 1024, 2047] {
        assert!(f.can("y/b", "x/a", UDP, port), "{port}");
    }
    for port in [999, 2048] {
        assert!(!f.can("y/b", "x/a", UDP, port), "{port}");
    }
    f.expect(&[
        ("y/b", "x/a", TCP, 1500, false), // the range is UDP's
        ("y/b", "x/a", SCTP, 82, true),
        ("y/b", "x/a", TCP, 82, false),
        ("y/b", "x/a", UDP, 82, false),
    ]);
    for port in 29990..30010 {
        assert_eq!(
            f.can("y/b", "x/a", TCP, port),
            (30000..=30005).contains(&port),
            "{port}"
        );
    }
    assert!(!f.can("y/b", "x/a", ICMP, 0));
}

#[test]
fn a_protocol_without_port_is_every_port_of_it() {
    let f = in_x("podSelector: {}\ningress:\n- ports:\n  - protocol: UDP");
    f.expect(&[
        ("y/b", "x/a", UDP, 1, true),
        ("y/b", "x/a", UDP, 65535, true),
        ("y/b", "x/a", TCP, 80, false),
        ("y/b", "x/a", SCTP, 80, false),
    ]);
}

#[test]
fn empty_ports_allow_every_port_and_protocol_and_empty_from_every_source() {
    let f = in_x("podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}");
    for (proto, port) in [(TCP, 1), (UDP, 53), (SCTP, 82), (ICMP, 0)] {
        f.expect(&[
            ("x/b", "x/a", proto, port, true),
            ("x/c", "x/a", proto, port, false),
        ]);
    }
    let open = in_x("podSelector: {}\ningress:\n- {}");
    for from in ["y/b", "x/c", "203.0.113.9"] {
        assert!(open.can(from, "x/a", ICMP, 0), "{from}");
        assert!(open.can(from, "x/a", TCP, 65535), "{from}");
    }
    let ports_only = in_x("podSelector: {}\ningress:\n- ports: [{port: 443}]");
    ports_only.expect(&[
        ("203.0.113.9", "x/a", TCP, 443, true),
        ("z/c", "x/b", TCP, 443, true),
        ("z/c", "x/b", TCP, 80, false),
    ]);
}

#[test]
fn named_ports_on_ingress_resolve_on_each_selected_pod() {
    let f = in_x("podSelector: {}\ningress:\n- ports: [{port: http}, {protocol: UDP, port: dns}]");
    // http is 80 on a and c, 8080 on b.
    f.expect(&[
        ("y/a", "x/a", TCP, 80, true),
        ("y/a", "x/a", TCP, 8080, false),
        ("y/a", "x/b", TCP, 8080, true),
        ("y/a", "x/b", TCP, 80, false),
        ("y/a", "x/c", TCP, 80, true),
    ]);
    // dns is 53/UDP on a only.
    f.expect(&[
        ("y/a", "x/a", UDP, 53, true),
        ("y/a", "x/b", UDP, 53, false),
        ("y/a", "x/a", TCP, 53, false),
    ]);
}

#[test]
fn a_named_port_whose_protocol_differs_matches_nothing() {
    // dns is UDP on a: a rule for TCP dns opens nothing (the pod stays isolated).
    let f = in_x(
        "podSelector: {}\ningress:\n- ports: [{protocol: TCP, port: dns}, {protocol: TCP, port: assoc}]",
    );
    for (to, proto, port) in [
        ("x/a", TCP, 53),
        ("x/a", UDP, 53),
        ("x/c", TCP, 82),
        ("x/c", SCTP, 82),
    ] {
        assert!(!f.can("y/a", to, proto, port), "{to} {proto}/{port}");
    }
    let sctp = in_x("podSelector: {}\ningress:\n- ports: [{protocol: SCTP, port: assoc}]");
    sctp.expect(&[
        ("y/a", "x/c", SCTP, 82, true),
        ("y/a", "x/c", TCP, 82, false),
    ]);
}

#[test]
fn named_ports_on_egress_resolve_on_each_destination_pod() {
    let f = in_x(
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- ports: [{port: http}]\n- to: [{ipBlock: {cidr: 10.244.1.0/24}}]\n  ports: [{protocol: UDP, port: dns}]",
    );
    // `to` absent: every pod, each by its own number for http.
    f.expect(&[
        ("x/a", "y/a", TCP, 80, true),
        ("x/a", "y/a", TCP, 8080, false),
        ("x/a", "y/b", TCP, 8080, true),
        ("x/a", "y/b", TCP, 80, false),
        ("x/a", "z/c", TCP, 80, true),
    ]);
    // A name means nothing at a non-pod address, even with `to` absent.
    f.expect(&[
        ("x/a", "93.184.216.34", TCP, 80, false),
        ("x/a", "93.184.216.34", TCP, 8080, false),
    ]);
    // Through an ipBlock: the pods in it, by their own dns (a has it, b not).
    f.expect(&[
        ("x/a", "y/a", UDP, 53, true),
        ("x/a", "y/b", UDP, 53, false),
    ]);
    assert!(
        !f.can("x/a", "10.244.1.200", UDP, 53),
        "in the block but no pod"
    );
    assert!(
        !f.can("x/a", "z/c", UDP, 53),
        "z/c (n2) is outside the block"
    );
}

#[test]
fn policy_types_default_from_the_rules() {
    // No policyTypes, egress rules: both directions isolated.
    let both = in_x(
        "podSelector: {matchLabels: {pod: a}}\negress:\n- to: [{podSelector: {matchLabels: {pod: b}}}]",
    );
    let n1 = &both.compiled()[0];
    let a = both.address("x/a");
    assert!(n1.isolated(a, POLICY_INGRESS) && n1.isolated(a, POLICY_EGRESS));
    both.expect(&[
        ("x/a", "x/b", TCP, 80, true),
        ("x/a", "x/c", TCP, 80, false),
    ]);
    assert!(
        !both.can("x/b", "x/a", TCP, 80),
        "ingress isolated, no ingress rule"
    );
    // No policyTypes, no egress rules: ingress only.
    let ingress = in_x("podSelector: {matchLabels: {pod: a}}");
    ingress.expect(&[
        ("x/b", "x/a", TCP, 80, false),
        ("x/a", "x/c", TCP, 80, true),
    ]);
    // Egress only: ingress stays open, every egress denied.
    let egress = in_x("podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]");
    egress.expect(&[
        ("x/b", "x/a", TCP, 80, true),
        ("x/a", "x/b", TCP, 80, false),
        ("x/a", "8.8.8.8", UDP, 53, false),
    ]);
    // Explicit Ingress only with egress rules: the egress rules are ignored.
    let ignored = in_x(
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: [{}]\negress: [{to: [{podSelector: {}}]}]",
    );
    assert!(ignored.can("x/a", "8.8.8.8", UDP, 53));
}

#[test]
fn an_empty_egress_rule_allows_everything_and_an_empty_list_nothing() {
    let none = in_x("podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: []");
    let all = in_x("podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{}]");
    // Explicitly empty `to` and `ports` lists are the same as absent ones.
    let lists = in_x(
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{to: [], ports: []}]",
    );
    for (to, proto, port) in [
        ("x/b", TCP, 80),
        ("z/c", SCTP, 82),
        ("8.8.8.8", UDP, 53),
        ("203.0.113.9", ICMP, 0),
    ] {
        assert!(!none.can("x/a", to, proto, port), "{to}");
        assert!(all.can("x/a", to, proto, port), "{to}");
        assert!(lists.can("x/a", to, proto, port), "{to}");
    }
    let from_list = in_x("podSelector: {}\ningress: [{from: [], ports: []}]");
    assert!(from_list.can("203.0.113.9", "x/a", TCP, 1));
    assert!(from_list.can("z/c", "x/b", UDP, 53));
}

#[test]
fn empty_pod_and_namespace_selectors_in_one_peer_are_every_pod_but_no_address() {
    let f =
        in_x("podSelector: {}\ningress:\n- from:\n  - {podSelector: {}, namespaceSelector: {}}");
    for from in ["x/b", "y/a", "z/c"] {
        assert!(f.can(from, "x/a", TCP, 80), "{from}");
    }
    assert!(!f.can("203.0.113.9", "x/a", TCP, 80));
}

#[test]
fn end_port_ranges_apply_on_egress_too() {
    let f = in_x(
        "podSelector: {matchLabels: {pod: a}}\negress:\n- ports: [{protocol: SCTP, port: 5000, endPort: 5003}]",
    );
    for port in 4998..5006 {
        assert_eq!(
            f.can("x/a", "y/b", SCTP, port),
            (5000..=5003).contains(&port),
            "{port}"
        );
        assert!(!f.can("x/a", "y/b", TCP, port), "SCTP's range is not TCP's");
    }
}

#[test]
fn policies_add_up() {
    let f = Fixture::netpol()
        .with(&policy("x", "from-b", "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]"))
        .with(&policy("x", "from-y", "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{protocol: UDP, port: 53}]}]"))
        .with(&policy("x", "deny", "podSelector: {}\ningress: []"));
    f.expect(&[
        ("x/b", "x/a", TCP, 80, true),
        ("x/b", "x/a", UDP, 53, false),
        ("y/c", "x/a", UDP, 53, true),
        ("y/c", "x/b", UDP, 53, true),
        ("y/c", "x/a", TCP, 80, false),
        ("x/b", "x/c", TCP, 80, false), // from-b selects a only
    ]);
    // The sender's egress and the receiver's ingress must both allow.
    let both = f.with(&policy(
        "y",
        "out",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: 80}]}]",
    ));
    both.expect(&[
        ("y/c", "x/a", UDP, 53, false), // y's egress denies it
        ("y/c", "z/a", TCP, 80, true),
    ]);
}

#[test]
fn upstream_matrix_allow_from_namespace_y_to_x() {
    // e2e "should enforce policy to allow traffic only from a different
    // namespace, based on NamespaceSelector": x isolated, from ns y allowed.
    let f = Fixture::netpol().with(&policy(
        "x",
        "allow-y",
        "podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
    ));
    let m = f.matrix(TCP, 80);
    assert_eq!(
        m,
        [
            "x/a XXX......",
            "x/b XXX......",
            "x/c XXX......",
            "y/a .........",
            "y/b .........",
            "y/c .........",
            "z/a XXX......",
            "z/b XXX......",
            "z/c XXX......",
        ]
    );
}

#[test]
fn pods_without_addresses_and_address_clashes_are_problems() {
    let mut f = Fixture::netpol().with(&policy("x", "deny", "podSelector: {}\ningress: []"));
    let mut pending = f.pods[0].clone();
    pending.name = "pending".into();
    pending.address = None;
    let mut twin = f.pods[1].clone();
    twin.namespace = "z".into();
    twin.name = "clone".into();
    f.pods.extend([pending, twin]);
    let n1 = f.compile_node(NODES[0], None);
    // In the order pods are read: by namespace, then name.
    assert_eq!(
        n1.problems,
        [
            Problem::PolicyPodWithoutAddress {
                namespace: "x".into(),
                pod: "pending".into(),
            },
            Problem::PolicyAddressClash {
                address: f.address("x/b"),
                pod: "z/clone".into(),
                holder: "x/b".into(),
            },
        ]
    );
    // The address stays x/b's: x's policy still protects it.
    assert!(!f.can("y/a", "x/b", TCP, 80));
}

#[test]
fn a_packet_costs_the_same_lookups_whatever_the_rule_count() {
    // 1000 policies with ipBlocks and ports: still one ipcache lookup and
    // at most two policy lookups (checked in `decide`).
    let mut f = Fixture::netpol();
    let mut yaml = String::new();
    for i in 0..1000 {
        yaml.push_str(&policy(
            "x",
            &format!("p{i}"),
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\ningress: [{{from: [{{ipBlock: {{cidr: 172.{}.{}.0/24}}}}], ports: [{{port: {}, endPort: {}}}]}}]",
                16 + i / 256,
                i % 256,
                1000 + i,
                1010 + i
            ),
        ));
    }
    f = f.with(&yaml);
    f.expect(&[
        ("172.16.5.9", "x/a", TCP, 1007, true),
        ("172.16.5.9", "x/a", TCP, 1016, false),
        ("172.20.0.1", "x/a", TCP, 1007, false),
    ]);
}

#[test]
fn compiling_is_deterministic_and_identities_survive_changes() {
    let f = in_x(
        "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}, {podSelector: {}}]}]",
    );
    let first = f.compile_node(NODES[0], None);
    assert_eq!(f.compile_node(NODES[0], None), first);
    // Passing the identities back with nothing changed: nothing to do.
    let again = f.compile_node(NODES[0], Some(&first.identities));
    assert!(plan(&first, &again).is_empty());
    // A new pod elsewhere: only its own entries appear.
    let mut grown = f.clone();
    let mut d = grown.pods[0].clone();
    d.name = "d".into();
    d.address = Some(Ipv4Addr::new(10, 244, 2, 14));
    d.node = "n2".into();
    grown.pods.push(d);
    let next = grown.compile_node(NODES[0], Some(&first.identities));
    let ops = plan(&first, &next).ops;
    assert!(!ops.iter().any(|op| matches!(
        op,
        plan::PolicyMapOp::RemovePolicy(_) | plan::PolicyMapOp::RemoveIpcache(_)
    )));
    // Its /32 and one allow per x pod on n1 (a and b).
    assert_eq!(ops.len(), 3, "{ops:?}");
    for who in ["x/a", "x/b", "y/c"] {
        let a = f.address(who);
        let ns_name = who.split_once('/').unwrap();
        assert_eq!(
            first.identities.of_pod(ns_name.0, ns_name.1, a),
            next.identities.of_pod(ns_name.0, ns_name.1, a)
        );
    }
}

/// Every probe the old and the new state both allow, allowed at every
/// step of the plan between them.
fn assert_no_window(old_f: &Fixture, new_f: &Fixture) {
    let old: Vec<CompiledPolicy> = NODES.map(|n| old_f.compile_node(n, None)).into();
    let new: Vec<CompiledPolicy> = NODES
        .iter()
        .zip(&old)
        .map(|(n, o)| new_f.compile_node(*n, Some(&o.identities)))
        .collect();
    let mut addresses: Vec<Ipv4Addr> = old_f
        .pods
        .iter()
        .chain(&new_f.pods)
        .filter_map(|p| p.address)
        .collect();
    addresses.extend(
        ["192.168.1.1", "192.168.2.1", "8.8.8.8", "198.18.0.1"]
            .map(|a| a.parse::<Ipv4Addr>().unwrap()),
    );
    addresses.sort();
    addresses.dedup();
    let probes = [(TCP, 80), (TCP, 8080), (UDP, 53), (SCTP, 82)];
    let mut state = old.clone();
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        for op in plan(o, n).ops {
            apply(&mut state[i], &op);
            for &src in &addresses {
                for &dst in &addresses {
                    for (proto, port) in probes {
                        if allowed(&old, src, dst, proto, port)
                            && allowed(&new, src, dst, proto, port)
                        {
                            assert!(
                                allowed(&state, src, dst, proto, port),
                                "{src} -> {dst} {proto}/{port} dropped after {op:?}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(state[i].policy, n.policy);
        assert_eq!(state[i].ipcache, n.ipcache);
    }
}

#[test]
fn plans_write_before_they_remove_and_open_no_window() {
    let base = in_x(
        "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}, {podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}, {protocol: UDP, port: dns}]}]",
    );
    // A policy changed: the except goes, a port range replaces a port.
    let changed = in_x(
        "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}, {podSelector: {matchLabels: {pod: b}}}], ports: [{port: 79, endPort: 81}, {protocol: UDP, port: dns}]}]",
    );
    assert_no_window(&base, &changed);
    assert_no_window(&changed, &base);
    // A policy added (isolating more) and deleted (isolating less).
    let added = base.clone().with(&policy(
        "y",
        "q",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{to: [{namespaceSelector: {}}]}]",
    ));
    assert_no_window(&base, &added);
    assert_no_window(&added, &base);
    // A pod's labels changed, and a pod recreated under its name elsewhere.
    let mut moved = base.clone();
    moved.pods[1].labels = labels([("pod", "z")]);
    moved.pods[4].address = Some(Ipv4Addr::new(10, 244, 1, 99));
    assert_no_window(&base, &moved);
    assert_no_window(&moved, &base);
}

#[test]
fn ipv6_blocks_hold_no_ipv4_peer_and_host_bits_are_ignored() {
    let v6 = in_x("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: '::/0'}}]}]");
    v6.expect(&[
        ("y/a", "x/a", TCP, 80, false),
        ("8.8.8.8", "x/a", TCP, 80, false),
    ]);
    let sloppy = in_x("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 192.168.1.77/16}}]}]");
    sloppy.expect(&[
        ("192.168.200.1", "x/a", TCP, 80, true),
        ("192.169.0.1", "x/a", TCP, 80, false),
    ]);
}

#[test]
fn the_cluster_indexes_feed_the_compiler() {
    use weft_model::NodeRecord;
    let f = in_x("podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]");
    let cluster = cluster_of(&f.namespaces, &f.pods, &f.policies);
    let n1 = NodeRecord {
        name: "n1".into(),
        underlay_ip: NODES[0].1,
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
    };
    let from_cluster = compile_cluster(&cluster, &n1, None);
    assert_eq!(from_cluster, f.compile_node(NODES[0], None));
}

/// The cluster's indexes holding these namespaces, policies and pods (as
/// endpoints): what [`compile_cluster`] reads.
fn cluster_of(
    namespaces: &[Namespace],
    pods: &[PolicyPod],
    policies: &[NetworkPolicy],
) -> crate::Cluster {
    use weft_model::{Change, EndpointRecord, Object};
    let mut cluster = crate::Cluster::default();
    for ns in namespaces {
        cluster.apply(Change::Upsert(Object::Namespace(ns.clone())));
    }
    for p in policies {
        cluster.apply(Change::Upsert(Object::NetworkPolicy(Box::new(p.clone()))));
    }
    for p in pods {
        cluster.apply(Change::Upsert(Object::Endpoint(EndpointRecord {
            container_id: format!("{}-{}", p.namespace, p.name),
            ifname: "eth0".into(),
            node: p.node.clone(),
            pod_name: p.name.clone(),
            pod_namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            address: p.address.expect("a pod with an address"),
            host_ifname: String::new(),
            netns: String::new(),
            ports: p.ports.clone(),
        })));
    }
    cluster
}

// --- Failing closed: capacities and malformed policies ---------------------

/// x's pods accept TCP 80 from namespace y: on n1, x/a and x/b are
/// isolated with the same rules; y's and z's pods are not.
fn x_open_to_y() -> Fixture {
    in_x(
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels:\n        ns: y\n  ports:\n  - port: 80",
    )
}

fn n1_within(f: &Fixture, capacity: MapCapacity) -> CompiledPolicy {
    let (node, node_address) = NODES[0];
    compile_within(
        &PolicyInput {
            node,
            node_address,
            namespaces: &f.namespaces,
            pods: &f.pods,
            policies: &f.policies,
            previous: None,
        },
        capacity,
    )
}

fn entries_of(c: &CompiledPolicy, endpoint: Ipv4Addr) -> usize {
    c.policy
        .keys()
        .filter(|k| k.endpoint == endpoint.octets())
        .count()
}

/// `endpoint` is denied everything both ways, the node's probes too.
fn assert_deny_all(f: &Fixture, c: &CompiledPolicy, endpoint: &str) {
    let at = f.address(endpoint);
    assert_eq!(entries_of(c, at), 2, "{endpoint}: the two markers only");
    for peer in ["y/a", "x/a", "198.18.0.1", "8.8.8.8"] {
        let peer = f.address(peer);
        for direction in [POLICY_INGRESS, POLICY_EGRESS] {
            assert_eq!(
                decide(c, at, direction, peer, TCP, 80),
                PolicyDecision::Denied,
                "{endpoint} {direction} {peer}"
            );
        }
    }
}

#[test]
fn within_capacity_nothing_fails_closed() {
    let f = x_open_to_y();
    let full = n1_within(&f, MapCapacity::KERNEL);
    assert!(full.failed_closed.is_empty());
    let exact = n1_within(
        &f,
        MapCapacity {
            policy: full.policy.len(),
            ipcache: full.ipcache.len(),
        },
    );
    assert_eq!(exact, full, "a compilation that fits exactly is unchanged");
}

#[test]
fn an_endpoint_whose_entries_do_not_fit_fails_closed_and_the_others_keep_theirs() {
    let f = x_open_to_y();
    let full = n1_within(&f, MapCapacity::KERNEL);
    let (a, b) = (f.address("x/a"), f.address("x/b"));
    let (per_a, per_b) = (entries_of(&full, a), entries_of(&full, b));
    assert_eq!(per_a + per_b, full.policy.len());
    let capacity = MapCapacity {
        policy: full.policy.len() - 1,
        ..MapCapacity::KERNEL
    };
    let c = n1_within(&f, capacity);
    assert!(c.policy.len() <= capacity.policy);
    // x/a comes first and keeps its rules; x/b no longer fits.
    assert_eq!(entries_of(&c, a), per_a);
    assert_eq!(
        decide(&c, a, POLICY_INGRESS, f.address("y/a"), TCP, 80),
        PolicyDecision::Allowed
    );
    assert_eq!(c.failed_closed.keys().copied().collect::<Vec<_>>(), [b]);
    assert_eq!(
        c.failed_closed[&b],
        FailClosed::PolicyMapFull {
            needed: per_b,
            free: per_b - 1,
            capacity: capacity.policy
        }
    );
    assert_deny_all(&f, &c, "x/b");
    assert!(c.problems.iter().any(|p| matches!(
        p,
        Problem::PolicyFailedClosed { namespace, pod, .. } if namespace == "x" && pod == "b"
    )));
    let text = c
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("pod x/b (10.244.1.12) fails closed"),
        "{text}"
    );
}

#[test]
fn an_endpoint_that_fits_alone_fails_closed_when_later_ones_would_get_no_markers() {
    let f = x_open_to_y();
    let full = n1_within(&f, MapCapacity::KERNEL);
    let per_a = entries_of(&full, f.address("x/a"));
    // x/a's entries fit, but then x/b could not even be denied.
    let capacity = MapCapacity {
        policy: per_a + 1,
        ..MapCapacity::KERNEL
    };
    let c = n1_within(&f, capacity);
    assert_eq!(c.failed_closed.len(), 2);
    assert!(c.policy.len() <= capacity.policy);
    assert_deny_all(&f, &c, "x/a");
    assert_deny_all(&f, &c, "x/b");
}

#[test]
fn an_ipcache_that_does_not_fit_fails_every_isolated_endpoint_closed() {
    let f = x_open_to_y();
    let full = n1_within(&f, MapCapacity::KERNEL);
    let capacity = MapCapacity {
        ipcache: full.ipcache.len() - 1,
        ..MapCapacity::KERNEL
    };
    let c = n1_within(&f, capacity);
    assert!(c.ipcache.is_empty());
    assert_eq!(c.failed_closed.len(), 2);
    assert!(matches!(
        c.failed_closed[&f.address("x/a")],
        FailClosed::IpcacheFull { capacity: cap, .. } if cap == capacity.ipcache
    ));
    assert_deny_all(&f, &c, "x/a");
    assert_deny_all(&f, &c, "x/b");
    // Pods no policy selects stay open.
    let (y_a, z_a) = (f.address("y/a"), f.address("z/a"));
    assert_eq!(
        decide(&c, y_a, POLICY_EGRESS, z_a, TCP, 80),
        PolicyDecision::NotIsolated
    );
    assert_eq!(
        decide(&c, z_a, POLICY_INGRESS, y_a, TCP, 80),
        PolicyDecision::NotIsolated
    );
}

#[test]
fn a_malformed_policy_fails_the_endpoints_it_selects_closed() {
    let mut f = x_open_to_y().with(&policy(
        "y",
        "q",
        "podSelector: {}\ningress:\n- ports:\n  - port: 53\n    protocol: UDP",
    ));
    let x = f
        .policies
        .iter_mut()
        .find(|p| p.namespace() == "x")
        .unwrap();
    x.spec.ingress[0].ports[0].protocol = Some(Protocol::Unknown("ICMP".into()));
    let c = n1_within(&f, MapCapacity::KERNEL);
    assert_eq!(
        c.failed_closed.get(&f.address("x/a")),
        Some(&FailClosed::Malformed {
            policy: "x/p".into(),
            reason: "unknown protocol \"ICMP\"".into()
        })
    );
    assert_deny_all(&f, &c, "x/b");
    // y's policy is well formed: its pods keep their rules.
    let (y_a, z_a) = (f.address("y/a"), f.address("z/a"));
    assert_eq!(
        decide(&c, y_a, POLICY_INGRESS, z_a, UDP, 53),
        PolicyDecision::Allowed
    );
    assert_eq!(
        decide(&c, y_a, POLICY_INGRESS, z_a, TCP, 80),
        PolicyDecision::Denied
    );
    // A range ending before it starts, and an ipBlock that does not parse
    // (the manifest parser refuses both, so they are made by hand).
    let backwards = |f: &mut Fixture| {
        let port = &mut f.policies[0].spec.ingress[0].ports[0];
        port.port = Some(PortRef::Number(90));
        port.end_port = Some(80);
    };
    let unparsable = |f: &mut Fixture| {
        let block = f.policies[0].spec.ingress[0].from[0]
            .ip_block
            .as_mut()
            .unwrap();
        block.except = vec!["nonsense".into()];
    };
    let ingress = "podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n  ports:\n  - port: 80";
    for (what, break_it) in [
        ("port 90 to 80", &backwards as &dyn Fn(&mut Fixture)),
        ("ipBlock 10.0.0.0/8", &unparsable),
    ] {
        let mut f = in_x(ingress);
        break_it(&mut f);
        let c = n1_within(&f, MapCapacity::KERNEL);
        assert_eq!(c.failed_closed.len(), 2, "{what}");
        let why = c.failed_closed[&f.address("x/a")].to_string();
        assert!(why.contains(what), "{why}");
        assert_deny_all(&f, &c, "x/a");
    }
}

#[test]
fn identities_name_their_pods_and_ipblocks_for_operators() {
    let f = in_x(
        "podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n      except: [10.244.2.0/24]",
    );
    let c = &f.compiled()[0];
    let peers = c.identities.peers();
    let a = c.identities.of_pod("x", "a", f.address("x/a")).unwrap();
    assert_eq!(
        peers[&a],
        IdentityPeer::Pod {
            namespace: "x".into(),
            name: "a".into(),
            address: f.address("x/a")
        }
    );
    let blocks: Vec<&Vec<String>> = peers
        .values()
        .filter_map(|p| match p {
            IdentityPeer::Blocks(b) => Some(b),
            IdentityPeer::Pod { .. } => None,
        })
        .collect();
    assert_eq!(
        blocks,
        [&vec!["10.0.0.0/8 except 10.244.2.0/24".to_string()]]
    );
}

mod random;
mod reference;
mod scale;
