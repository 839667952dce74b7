//! Random clusters, reproducible from a seed: small namespaces, pods and
//! policies drawn from few label keys and values, overlapping addresses
//! and ipBlocks, so that selectors, blocks, clashes and named ports all
//! meet. What the indexed peer resolution is checked against the plain
//! definitions on.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use weft_model::policy::{ContainerPort, Protocol};
use weft_model::selector::Labels;
use weft_model::{Namespace, NetworkPolicy, PolicyPod};

/// xorshift64*: enough for test inputs, no dependency.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'s>(&mut self, of: &[&'s str]) -> &'s str {
        of[self.below(of.len() as u64) as usize]
    }
}

const NAMESPACES: [&str; 5] = ["a", "b", "c", "d", "e"];
const KEYS: [&str; 3] = ["app", "tier", "role"];
const VALUES: [&str; 3] = ["x", "y", "z"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// One random cluster.
pub(super) struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<PolicyPod>,
    pub policies: Vec<NetworkPolicy>,
}

pub(super) fn cluster(seed: u64) -> Cluster {
    let mut rng = Rng::new(seed);
    // Some namespaces have objects (with labels), others only pods.
    let mut namespaces = Vec::new();
    for ns in NAMESPACES {
        if rng.chance(60) {
            namespaces.push(Namespace::new(ns, labels(&mut rng, &["team", "env"])));
        }
    }
    let pods = (0..20 + rng.below(60))
        .map(|i| PolicyPod {
            namespace: rng.pick(&NAMESPACES).into(),
            name: format!("p{i}"),
            labels: labels(&mut rng, &KEYS),
            // 10.244.0-1.0-63: clashes happen, blocks hold several pods.
            address: (!rng.chance(5))
                .then(|| Ipv4Addr::new(10, 244, rng.below(2) as u8, rng.below(64) as u8)),
            node: rng.pick(&NODES).into(),
            ports: (0..rng.below(3))
                .map(|_| ContainerPort {
                    name: Some(rng.pick(&["http", "dns", "metrics"]).into()),
                    container_port: 80 + rng.below(4) as u16,
                    protocol: [Protocol::Tcp, Protocol::Udp][rng.below(2) as usize].clone(),
                })
                .collect(),
        })
        .collect();
    let policies = (0..1 + rng.below(12))
        .map(|i| {
            let rules = |rng: &mut Rng, peers: &str| -> Vec<Value> {
                (0..rng.below(3))
                    .map(|_| {
                        let list: Vec<Value> = (0..rng.below(4)).map(|_| peer(rng)).collect();
                        json!({peers: list, "ports": ports(rng)})
                    })
                    .collect()
            };
            let doc = json!({
                "metadata": {"name": format!("np{i}"), "namespace": rng.pick(&NAMESPACES)},
                "spec": {
                    "podSelector": selector(&mut rng, &KEYS),
                    "ingress": rules(&mut rng, "from"),
                    "egress": rules(&mut rng, "to"),
                    "policyTypes": match rng.below(3) {
                        0 => json!(["Ingress"]),
                        1 => json!(["Egress"]),
                        _ => json!(["Ingress", "Egress"]),
                    },
                },
            });
            serde_json::from_value(doc).expect("a valid policy")
        })
        .collect();
    Cluster {
        namespaces,
        pods,
        policies,
    }
}

fn labels(rng: &mut Rng, keys: &[&str]) -> Labels {
    let mut out = Labels::new();
    for k in keys {
        if rng.chance(60) {
            out.insert(k.to_string(), rng.pick(&VALUES).to_string());
        }
    }
    out
}

/// A selector of every kind: empty, matchLabels, expressions of each
/// operator, both.
fn selector(rng: &mut Rng, keys: &[&str]) -> Value {
    let match_labels: serde_json::Map<String, Value> = (0..rng.below(3))
        .map(|_| (rng.pick(keys).to_string(), json!(rng.pick(&VALUES))))
        .collect();
    let expressions: Vec<Value> = (0..rng.below(3))
        .map(|_| {
            let key = rng.pick(keys);
            match rng.below(4) {
                0 => json!({"key": key, "operator": "In", "values": [rng.pick(&VALUES), rng.pick(&VALUES)]}),
                1 => json!({"key": key, "operator": "NotIn", "values": [rng.pick(&VALUES)]}),
                2 => json!({"key": key, "operator": "Exists"}),
                _ => json!({"key": key, "operator": "DoesNotExist"}),
            }
        })
        .collect();
    json!({"matchLabels": match_labels, "matchExpressions": expressions})
}

fn peer(rng: &mut Rng) -> Value {
    if rng.chance(35) {
        return json!({"ipBlock": block(rng)});
    }
    let mut peer = serde_json::Map::new();
    if rng.chance(60) {
        peer.insert("podSelector".into(), selector(rng, &KEYS));
    }
    if rng.chance(50) {
        let by_name =
            json!({"matchLabels": {"kubernetes.io/metadata.name": rng.pick(&NAMESPACES)}});
        let sel = match rng.chance(30) {
            true => by_name,
            false => selector(rng, &["team", "env", "kubernetes.io/metadata.name"]),
        };
        peer.insert("namespaceSelector".into(), sel);
    }
    Value::Object(peer)
}

/// A block around the pods' addresses (sometimes the node's, the world,
/// or IPv6) with up to two strict-subset excepts.
fn block(rng: &mut Rng) -> Value {
    if rng.chance(5) {
        return json!({"cidr": "2001:db8::/32"});
    }
    let len = [0, 8, 16, 22, 23, 24, 26, 28, 30, 32][rng.below(10) as usize];
    let base = match rng.below(6) {
        0 => u32::from(Ipv4Addr::new(198, 18, 0, 1)),
        _ => u32::from(Ipv4Addr::new(
            10,
            244,
            rng.below(2) as u8,
            rng.below(64) as u8,
        )),
    };
    let except: Vec<String> = (0..rng.below(3))
        .filter(|_| len < 32)
        .map(|_| {
            let e_len = len + 1 + rng.below(u64::from(32 - len)) as u32;
            let offset = match len {
                0 => rng.below(1 << 32) as u32,
                _ => rng.below(1 << (32 - len)) as u32,
            };
            let inside = (base & mask(len)) | (offset & !mask(len));
            format!("{}/{e_len}", Ipv4Addr::from(inside))
        })
        .collect();
    json!({"cidr": format!("{}/{len}", Ipv4Addr::from(base)), "except": except})
}

fn mask(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn ports(rng: &mut Rng) -> Value {
    let ports: Vec<Value> = (0..rng.below(3))
        .map(|_| match rng.below(4) {
            0 => json!({"port": rng.pick(&["http", "dns", "metrics"])}),
            1 => json!({"protocol": "UDP", "port": rng.pick(&["dns", "http"])}),
            2 => json!({"port": 80 + rng.below(4), "endPort": 84 + rng.below(4)}),
            _ => json!({"protocol": "TCP"}),
        })
        .collect();
    json!(ports)
}
