//! The compiler at cluster scale: the shape of `make bench`'s
//! policy-memory section (tests/src/bin/weft-bench/policy.rs:
//! `remote_endpoint`, `memory_policy`), built here as model values so the
//! compile can be timed and profiled without a lab.

use std::net::Ipv4Addr;
use std::time::Instant;

use weft_model::policy::{ContainerPort, Protocol, labels};
use weft_model::{NetworkPolicy, PolicyPod};

use super::super::*;

/// The local node and its underlay address.
pub(super) const NODE: (&str, Ipv4Addr) = ("node1", Ipv4Addr::new(198, 18, 0, 1));

/// The bench's cluster: 4 local pods `slot=s0..s3` in `default`, then
/// `remote_pods` remote pods `k` in `ns(k % 10)` labelled `app(k % 100)`
/// with named port `http` 8080/TCP, on fake nodes of 250 pods.
pub(super) fn bench_pods(remote_pods: u32) -> Vec<PolicyPod> {
    let local = (0..4).map(|i| PolicyPod {
        namespace: "default".into(),
        name: format!("node1-{}", (b'a' + i) as char),
        labels: labels([("slot", &format!("s{i}"))]),
        address: Some(Ipv4Addr::new(10, 244, 0, 10 + i)),
        node: NODE.0.into(),
        ports: Vec::new(),
    });
    let remote = (0..remote_pods).map(|k| {
        let (node, slot) = (k / 250, k % 250);
        PolicyPod {
            namespace: format!("ns{:02}", k % 10),
            name: format!("remote-{k:05}"),
            labels: labels([("app", &format!("app{:03}", k % 100))]),
            address: Some(Ipv4Addr::new(10, 244, 100 + node as u8, 1 + slot as u8)),
            node: format!("remote{node:03}"),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                protocol: Protocol::Tcp,
            }],
        }
    });
    local.chain(remote).collect()
}

/// The bench's policy `i` (its `memory_policy`): selects local pod
/// `slot=s(i % 4)`; ingress from `app(i % 100)` of `ns(i % 10)` on TCP
/// 1000+i and from a /24 ipBlock with a /25 except on 443; egress to
/// `app((i + 50) % 100)` of every namespace on the named port `http`.
pub(super) fn bench_policy(i: u32) -> NetworkPolicy {
    let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i * 256);
    let except = Ipv4Addr::from(u32::from(block) + 128);
    let doc = serde_json::json!({
        "metadata": {"name": format!("bench-mem-{i:04}"), "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"slot": format!("s{}", i % 4)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns{:02}", i % 10)}},
                    "podSelector": {"matchLabels": {"app": format!("app{:03}", i % 100)}},
                }],
                 "ports": [{"protocol": "TCP", "port": 1000 + i}]},
                {"from": [{"ipBlock": {"cidr": format!("{block}/24"), "except": [format!("{except}/25")]}}],
                 "ports": [{"protocol": "TCP", "port": 443}]},
            ],
            "egress": [{
                "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app{:03}", (i + 50) % 100)}}}],
                "ports": [{"port": "http"}],
            }],
        },
    });
    serde_json::from_value(doc).expect("a valid policy")
}

/// The rule-scaling section's filler policy `n` (its `filler_policy`):
/// 100 ingress rules `r`, each from the `r`th /28 of 172.16.0.0/12 on TCP
/// 10000 + r, selecting local pod `slot=s0`.
pub(super) fn filler_policy(n: u32) -> NetworkPolicy {
    let rules: Vec<serde_json::Value> = (n * 100..(n + 1) * 100)
        .map(|r| {
            let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + r * 16);
            serde_json::json!({
                "from": [{"ipBlock": {"cidr": format!("{block}/28")}}],
                "ports": [{"protocol": "TCP", "port": 10_000 + r}],
            })
        })
        .collect();
    let doc = serde_json::json!({
        "metadata": {"name": format!("bench-rules-{n:03}"), "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"slot": "s0"}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    });
    serde_json::from_value(doc).expect("a valid policy")
}

/// Compiles from scratch and says how long it took.
fn timed(policies: u32, remote_pods: u32) -> (CompiledPolicy, f64) {
    let policies: Vec<NetworkPolicy> = (0..policies).map(bench_policy).collect();
    timed_with(&policies, remote_pods)
}

fn timed_with(policies: &[NetworkPolicy], remote_pods: u32) -> (CompiledPolicy, f64) {
    let pods = bench_pods(remote_pods);
    let input = PolicyInput {
        node: NODE.0,
        node_address: NODE.1,
        namespaces: &[],
        pods: &pods,
        policies,
        previous: None,
    };
    let t = Instant::now();
    let compiled = compile(&input);
    (compiled, t.elapsed().as_secs_f64())
}

/// A mid-size compile, timed (printed with `--nocapture`, never asserted:
/// machines differ); its counts are the bench shape's.
#[test]
fn bench_shape_compiles_and_prints_its_time() {
    let (c, took) = timed(100, 1_000);
    println!(
        "compile 100 policies x 1,000 remote pods: {:.1} ms; {} policy, {} ipcache entries",
        took * 1e3,
        c.policy.len(),
        c.ipcache.len()
    );
    // 4 local + 1,000 remote /32s, the node, 100 /24s and 100 /25s.
    assert_eq!(c.ipcache.len(), 4 + 1_000 + 1 + 200);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
}

/// The bench's three sizes, timed: `cargo test --release -p weft-calc
/// bench_sizes -- --ignored --nocapture`.
#[test]
#[ignore = "seconds of CPU; run by hand to time the compiler"]
fn bench_sizes() {
    for (policies, pods) in [(1_000, 1_000), (100, 10_000), (1_000, 10_000)] {
        let (c, took) = timed(policies, pods);
        println!(
            "compile {policies} policies x {pods} remote pods: {:.3} s; {} policy, {} ipcache entries",
            took,
            c.policy.len(),
            c.ipcache.len()
        );
    }
    // As the agent and the bench call it: through the cluster's indexes.
    let (policies, pods) = (1_000, 10_000);
    let cluster = super::cluster_of(
        &[],
        &bench_pods(pods),
        &(0..policies).map(bench_policy).collect::<Vec<_>>(),
    );
    let node = weft_model::NodeRecord {
        name: NODE.0.into(),
        underlay_ip: NODE.1,
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
    };
    let t = Instant::now();
    let c = compile_cluster(&cluster, &node, None);
    println!(
        "compile_cluster {policies} policies x {pods} remote pods: {:.3} s; {} policy, {} ipcache entries",
        t.elapsed().as_secs_f64(),
        c.policy.len(),
        c.ipcache.len()
    );
    // One more policy: the rest of an agent's pass for a change (its
    // input digest, the compile keeping identities, the plan).
    let mut more = cluster.clone();
    let change = weft_model::Change::Upsert(weft_model::Object::NetworkPolicy(Box::new(
        bench_policy(policies),
    )));
    more.apply(change);
    let t = Instant::now();
    let _ = super::super::digest::cluster_digest(&more);
    let digest_took = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let next = compile_cluster(&more, &node, Some(&c.identities));
    let compile_took = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan = plan(&c, &next);
    println!(
        "one more policy: cluster_digest {digest_took:.3} s, compile_cluster {compile_took:.3} s, \
         plan {:.3} s ({} map operations)",
        t.elapsed().as_secs_f64(),
        plan.ops.len()
    );
    let fillers: Vec<NetworkPolicy> = (0..100).map(filler_policy).collect();
    let (c, took) = timed_with(&fillers, 1_000);
    println!(
        "compile 10,000 ipBlock rules (100 policies) x 1000 remote pods: {took:.3} s; {} policy, {} ipcache entries",
        c.policy.len(),
        c.ipcache.len()
    );
}
