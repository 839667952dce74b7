//! `weftctl policy show`: a node's compiled NetworkPolicy, as its agent
//! reports it (`GetPolicy`: the policy map's entries, what their
//! identities stand for, the endpoints failing closed and the
//! per-endpoint counters), turned back into rules people read: per local
//! endpoint and direction, whether it is isolated, each rule's peer,
//! protocol and ports, and the packets policy allowed and denied.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use weft_common::maps::{
    IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_FULL,
    POLICY_PREFIX_IDENTITY, POLICY_PREFIX_PROTOCOL,
};
use weft_proto::v1;

use crate::agent_api::{client, rpc_error};

/// A node's policy, endpoint by endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyShow {
    /// The node's policy revision (bumped at every change of the maps).
    pub revision: u32,
    pub endpoints: Vec<EndpointPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPolicy {
    /// `namespace/name`.
    pub pod: String,
    pub address: String,
    /// Why the endpoint is denied everything instead of its rules.
    pub failed_closed: Option<String>,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionPolicy {
    /// Some policy selects the endpoint for this direction: only what a
    /// rule allows passes (replies of allowed connections aside).
    pub isolated: bool,
    pub rules: Vec<Rule>,
    /// Packets policy allowed and denied in this direction (counted when
    /// policy was asked: new connections, and the first packet of each
    /// after a policy change).
    pub allowed: u64,
    pub denied: u64,
}

/// One allow rule as compiled: a peer, a protocol, ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub peer: String,
    /// `TCP`, `UDP`, `SCTP`, a protocol number, or `any`.
    pub protocol: String,
    /// `80`, `8000-8080` (ranges in one rule joined by commas), or `any`.
    pub ports: String,
}

/// Asks the agent at `socket` for its policy, restricted to `pod`
/// (`name` or `namespace/name`) if given.
pub async fn policy_show(
    socket: &Path,
    timeout: Duration,
    pod: Option<&str>,
) -> Result<PolicyShow> {
    let reply = client(socket, timeout)
        .await?
        .get_policy(v1::GetPolicyRequest {})
        .await
        .map_err(rpc_error("GetPolicy", socket))?
        .into_inner();
    let mut show = readable(&reply);
    if let Some(pod) = pod {
        let wanted =
            |e: &EndpointPolicy| e.pod == pod || e.pod.split_once('/').map(|(_, n)| n) == Some(pod);
        if !show.endpoints.iter().any(wanted) {
            let known: Vec<&str> = show.endpoints.iter().map(|e| e.pod.as_str()).collect();
            bail!(
                "no local endpoint {pod:?} on the agent at {} (its endpoints: {})",
                socket.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        show.endpoints.retain(wanted);
    }
    Ok(show)
}

/// The agent's answer in readable form (pure).
pub fn readable(reply: &v1::GetPolicyReply) -> PolicyShow {
    let peers: BTreeMap<u32, String> = reply
        .identities
        .iter()
        .map(|id| (id.identity, identity_peer(id)))
        .collect();
    let endpoints = reply
        .endpoints
        .iter()
        .map(|ep| {
            let direction = |direction: u32| {
                let entries: Vec<&v1::PolicyMapEntry> = reply
                    .entries
                    .iter()
                    .filter(|e| e.endpoint == ep.address && e.direction == direction)
                    .collect();
                let count = |allowed: bool| {
                    reply
                        .counters
                        .iter()
                        .filter(|c| {
                            c.endpoint == ep.address
                                && c.direction == direction
                                && c.allowed == allowed
                        })
                        .map(|c| c.packets)
                        .sum()
                };
                DirectionPolicy {
                    isolated: entries.iter().any(|e| !e.allow),
                    rules: rules(&entries, &peers),
                    allowed: count(true),
                    denied: count(false),
                }
            };
            EndpointPolicy {
                pod: format!("{}/{}", ep.pod_namespace, ep.pod_name),
                address: ep.address.clone(),
                failed_closed: Some(ep.failed_closed.clone()).filter(|w| !w.is_empty()),
                ingress: direction(POLICY_INGRESS.into()),
                egress: direction(POLICY_EGRESS.into()),
            }
        })
        .collect();
    PolicyShow {
        revision: reply.revision,
        endpoints,
    }
}

fn identity_peer(id: &v1::PolicyIdentity) -> String {
    if !id.pod.is_empty() {
        return format!("pod {} ({})", id.pod, id.pod_address);
    }
    let blocks: Vec<String> = id.blocks.iter().map(|b| format!("ipBlock {b}")).collect();
    blocks.join(" and ")
}

/// A peer identity in words.
fn peer_name(identity: u32, peers: &BTreeMap<u32, String>) -> String {
    match identity {
        IDENTITY_ANY => "any".into(),
        IDENTITY_HOST => "host (this node)".into(),
        IDENTITY_WORLD => "world (outside every pod and ipBlock)".into(),
        id => peers
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("identity {id} (unknown to the agent)")),
    }
}

fn protocol_name(protocol: u32) -> String {
    match protocol {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        n => format!("protocol {n}"),
    }
}

/// The allow entries of one endpoint and direction as rules: one per peer
/// and protocol, the port prefixes merged back into ranges.
fn rules(entries: &[&v1::PolicyMapEntry], peers: &BTreeMap<u32, String>) -> Vec<Rule> {
    // (identity, protocol or None for every protocol) → port ranges (None: every port).
    let mut grouped: BTreeMap<(u32, Option<u32>), Vec<Option<PortRange>>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.allow) {
        let (protocol, ports) = match e.prefix_len {
            POLICY_PREFIX_IDENTITY => (None, None),
            POLICY_PREFIX_PROTOCOL => (Some(e.protocol), None),
            len if len > POLICY_PREFIX_PROTOCOL && len <= POLICY_PREFIX_FULL => {
                let span = 1u32 << (POLICY_PREFIX_FULL - len);
                (Some(e.protocol), Some((e.port, e.port + span - 1)))
            }
            // No compiler writes other lengths; shown by their port rather than hidden.
            _ => (Some(e.protocol), Some((e.port, e.port))),
        };
        grouped
            .entry((e.identity, protocol))
            .or_default()
            .push(ports);
    }
    grouped
        .into_iter()
        .map(|((identity, protocol), ports)| Rule {
            peer: peer_name(identity, peers),
            protocol: protocol.map_or_else(|| "any".into(), protocol_name),
            ports: port_ranges(ports),
        })
        .collect()
}

/// First and last port, inclusive.
type PortRange = (u32, u32);

/// Ranges joined where they touch; `any` if one covers every port.
fn port_ranges(ports: Vec<Option<PortRange>>) -> String {
    let Some(mut ranges) = ports.into_iter().collect::<Option<Vec<_>>>() else {
        return "any".into();
    };
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 + 1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let text: Vec<String> = merged
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    text.join(",")
}

impl PolicyShow {
    pub fn render(&self) -> String {
        let mut out = format!("policy revision {}\n", self.revision);
        if self.endpoints.is_empty() {
            out.push_str("no local endpoints\n");
        }
        for ep in &self.endpoints {
            out.push_str(&format!("pod {} ({})\n", ep.pod, ep.address));
            if let Some(why) = &ep.failed_closed {
                out.push_str(&format!(
                    "  FAILS CLOSED: denied everything both ways: {why}\n"
                ));
            }
            for (name, d) in [("ingress", &ep.ingress), ("egress", &ep.egress)] {
                let verb = if name == "ingress" { "from" } else { "to" };
                if !d.isolated {
                    out.push_str(&format!("  {name}: not isolated (everything allowed)\n"));
                    continue;
                }
                out.push_str(&format!(
                    "  {name}: isolated; allowed {} packets, denied {}\n",
                    d.allowed, d.denied
                ));
                if d.rules.is_empty() {
                    out.push_str("    no rule allows anything\n");
                }
                for rule in &d.rules {
                    let ports = if rule.protocol == "any" {
                        "every protocol and port".to_string()
                    } else if rule.ports == "any" {
                        format!("{} every port", rule.protocol)
                    } else {
                        format!("{} {}", rule.protocol, rule.ports)
                    };
                    out.push_str(&format!("    allow {verb} {}: {ports}\n", rule.peer));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        prefix_len: u32,
        direction: u8,
        identity: u32,
        protocol: u32,
        port: u32,
    ) -> v1::PolicyMapEntry {
        v1::PolicyMapEntry {
            prefix_len,
            endpoint: "10.244.1.5".into(),
            direction: direction.into(),
            identity,
            protocol,
            port,
            allow: true,
        }
    }

    fn marker(direction: u8) -> v1::PolicyMapEntry {
        v1::PolicyMapEntry {
            allow: false,
            ..entry(40, direction, 0, 0, 0)
        }
    }

    #[test]
    fn entries_read_back_as_rules_with_their_ranges_merged() {
        let reply = v1::GetPolicyReply {
            entries: vec![
                marker(POLICY_INGRESS),
                entry(POLICY_PREFIX_IDENTITY, POLICY_INGRESS, IDENTITY_HOST, 0, 0),
                // TCP 8000-8011: 8000/93 (8000-8007), 8008/94 (8008-8011).
                entry(93, POLICY_INGRESS, 300, 6, 8000),
                entry(94, POLICY_INGRESS, 300, 6, 8008),
                entry(POLICY_PREFIX_FULL, POLICY_INGRESS, 300, 6, 80),
                entry(POLICY_PREFIX_PROTOCOL, POLICY_INGRESS, 301, 17, 0),
                entry(POLICY_PREFIX_FULL, POLICY_INGRESS, IDENTITY_ANY, 132, 9),
            ],
            identities: vec![
                v1::PolicyIdentity {
                    identity: 300,
                    pod: "y/b".into(),
                    pod_address: "10.244.2.3".into(),
                    blocks: vec![],
                },
                v1::PolicyIdentity {
                    identity: 301,
                    blocks: vec!["10.0.0.0/8 except 10.1.0.0/16".into()],
                    ..Default::default()
                },
            ],
            endpoints: vec![v1::PolicyEndpoint {
                address: "10.244.1.5".into(),
                pod_namespace: "x".into(),
                pod_name: "a".into(),
                failed_closed: String::new(),
            }],
            counters: vec![
                v1::PolicyEndpointCounter {
                    endpoint: "10.244.1.5".into(),
                    direction: POLICY_INGRESS.into(),
                    allowed: false,
                    packets: 7,
                },
                v1::PolicyEndpointCounter {
                    endpoint: "10.244.9.9".into(),
                    direction: POLICY_INGRESS.into(),
                    allowed: false,
                    packets: 100,
                },
            ],
            revision: 4,
        };
        let show = readable(&reply);
        let ep = &show.endpoints[0];
        assert!(ep.ingress.isolated && !ep.egress.isolated);
        assert_eq!((ep.ingress.allowed, ep.ingress.denied), (0, 7));
        let rules: Vec<(String, String, String)> = ep
            .ingress
            .rules
            .iter()
            .map(|r| (r.peer.clone(), r.protocol.clone(), r.ports.clone()))
            .collect();
        let r = |p: &str, q: &str, n: &str| (p.to_string(), q.to_string(), n.to_string());
        assert_eq!(
            rules,
            [
                r("host (this node)", "any", "any"),
                r("pod y/b (10.244.2.3)", "TCP", "80,8000-8011"),
                r("ipBlock 10.0.0.0/8 except 10.1.0.0/16", "UDP", "any"),
                r("any", "SCTP", "9"),
            ]
        );
        let text = show.render();
        assert!(text.contains("pod x/a (10.244.1.5)"), "{text}");
        assert!(
            text.contains("ingress: isolated; allowed 0 packets, denied 7"),
            "{text}"
        );
        assert!(
            text.contains("allow from pod y/b (10.244.2.3): TCP 80,8000-8011"),
            "{text}"
        );
        assert!(text.contains("egress: not isolated"), "{text}");
    }

    #[test]
    fn an_endpoint_failing_closed_says_so() {
        let reply = v1::GetPolicyReply {
            entries: vec![marker(POLICY_INGRESS), marker(POLICY_EGRESS)],
            endpoints: vec![v1::PolicyEndpoint {
                address: "10.244.1.5".into(),
                pod_namespace: "x".into(),
                pod_name: "a".into(),
                failed_closed: "policy x/p is malformed: unknown protocol \"ICMP\"".into(),
            }],
            ..Default::default()
        };
        let show = readable(&reply);
        let text = show.render();
        assert!(text.contains("FAILS CLOSED"), "{text}");
        assert!(show.endpoints[0].egress.isolated && show.endpoints[0].egress.rules.is_empty());
        assert!(text.contains("no rule allows anything"), "{text}");
    }
}
