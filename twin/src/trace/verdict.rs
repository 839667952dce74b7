//! What the steps of a trace amount to: delivered to which pod, local,
//! dropped where and why, or lost, and the ICMP errors the packet caused.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::hooks::TC_ACT_SHOT;
use crate::node::NodeTables;
use crate::step::{RouteDecision, Step, VxlanDecision};
use crate::wire::{PacketSummary, Probe, ProbeKind};

/// A pod veth of the lab: where a delivered packet ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAt {
    pub node: String,
    pub ifindex: u32,
    pub pod: String,
    pub ip: Option<Ipv4Addr>,
}

pub(crate) fn pod_name<'a>(pods: &'a [PodAt], node: &str, ifindex: u32) -> Option<&'a PodAt> {
    pods.iter().find(|p| p.node == node && p.ifindex == ifindex)
}

/// An ICMP error a node sent about the probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IcmpAnswer {
    /// The node that sent it, and from which address.
    pub node: String,
    pub from: Ipv4Addr,
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
    /// Next-hop MTU, for "fragmentation needed".
    pub mtu: Option<u16>,
    pub description: String,
    /// The pod it reached, if it reached one.
    pub delivered_to: Option<String>,
    /// Where it was dropped, if it was.
    pub dropped: Option<String>,
}

/// What happened to the probe, in the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Handed to a pod's veth (`packets`: more than 1 when fragmented).
    Delivered {
        node: String,
        ifindex: u32,
        pod: Option<String>,
        packets: usize,
    },
    /// Addressed to a node itself: its own stack took it.
    Local { node: String },
    /// Dropped by a hook or the node's routing.
    Dropped {
        node: Option<String>,
        hook: String,
        reason: String,
    },
    /// Nothing dropped it, yet it went nowhere.
    Lost {
        node: Option<String>,
        hook: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// ICMP errors the probe caused.
    pub icmp: Vec<IcmpAnswer>,
}

fn same_flow(src: [u8; 4], dst: [u8; 4], protocol: u8, p: &Probe) -> bool {
    src == p.src && dst == p.dst && protocol == probe_protocol(p)
}

fn probe_protocol(p: &Probe) -> u8 {
    match p.kind {
        ProbeKind::Tcp { .. } => 6,
        ProbeKind::Udp { .. } => 17,
        ProbeKind::Ping => 1,
        ProbeKind::Sctp { .. } => crate::wire::PROTOCOL_SCTP,
    }
}

/// Whether a packet is the probe, or carries it in a tunnel.
fn carries(packet: &PacketSummary, p: &Probe) -> bool {
    same_flow(packet.src, packet.dst, packet.protocol, p)
        || packet
            .inner
            .is_some_and(|i| same_flow(i.src, i.dst, i.protocol, p))
}

/// The packet a step is about.
pub(crate) fn packet_of(step: &Step) -> Option<&PacketSummary> {
    match step {
        Step::PodVeth { packet, .. } => packet.as_ref(),
        Step::VethTooBig { .. } => None,
        Step::Routing { packet, .. }
        | Step::VxlanEncap { packet, .. }
        | Step::VxlanDecap { packet, .. }
        | Step::UplinkEgress { packet, .. }
        | Step::UplinkIngress { packet, .. }
        | Step::Underlay { packet }
        | Step::Router { packet, .. }
        | Step::Delivered { packet, .. } => Some(packet),
    }
}

/// The hook a step happened at, in a word or two.
pub fn hook_name(step: &Step) -> &'static str {
    match step {
        Step::PodVeth { .. } => "pod veth",
        Step::VethTooBig { .. } => "pod veth",
        Step::Routing { .. } => "routing",
        Step::VxlanEncap { .. } | Step::VxlanDecap { .. } => "vxlan device",
        Step::UplinkEgress { .. } => "uplink egress",
        Step::UplinkIngress { .. } => "uplink ingress",
        Step::Underlay { .. } => "underlay",
        Step::Router { .. } => "underlay router",
        Step::Delivered { .. } => "pod",
    }
}

/// Why a step dropped its packet, if it did.
pub fn drop_reason(step: &Step) -> Option<String> {
    match step {
        Step::PodVeth {
            action,
            counter,
            policy: Some(policy),
            ..
        } if *action == TC_ACT_SHOT => Some(format!(
            "TC_ACT_SHOT ({}), policy: {policy}",
            counter.name()
        )),
        Step::PodVeth {
            action, counter, ..
        }
        | Step::UplinkEgress {
            action, counter, ..
        }
        | Step::UplinkIngress {
            action, counter, ..
        } if *action == TC_ACT_SHOT => Some(format!("TC_ACT_SHOT ({})", counter.name())),
        Step::VethTooBig { frame_len, mtu, .. } => {
            Some(format!("{frame_len}-byte frame above the veth MTU {mtu}"))
        }
        Step::Routing { decision, .. } => match decision {
            RouteDecision::FragmentationNeeded { mtu } => {
                Some(format!("too big for route MTU {mtu} with DF set"))
            }
            RouteDecision::TtlExceeded => Some("TTL exceeded".into()),
            RouteDecision::NoRoute => Some("no route".into()),
            RouteDecision::Malformed => Some("malformed IPv4".into()),
            RouteDecision::NeighborUnresolved { next_hop } => Some(format!(
                "next hop {} never answered ARP (no lab node has that address)",
                Ipv4Addr::from(*next_hop)
            )),
            _ => None,
        },
        Step::VxlanDecap { decision, .. } => match decision {
            VxlanDecision::Decapsulated { .. } => None,
            VxlanDecision::UnknownVni => Some("unknown VNI".into()),
            VxlanDecision::NotForThisVtep => Some("inner frame not for this VTEP".into()),
        },
        Step::Router {
            forwarded: false, ..
        } => Some("the underlay router has no route".into()),
        _ => None,
    }
}

/// The ICMP error a routing decision sends: (type, code, mtu, words).
fn icmp_of(decision: &RouteDecision) -> Option<(u8, u8, Option<u16>, &'static str)> {
    match *decision {
        RouteDecision::FragmentationNeeded { mtu } => {
            Some((3, 4, Some(mtu), "fragmentation needed"))
        }
        RouteDecision::NoRoute => Some((3, 0, None, "network unreachable")),
        RouteDecision::TtlExceeded => Some((11, 0, None, "time exceeded")),
        _ => None,
    }
}

/// What the steps of a trace of `probe` amount to. `nodes` gives each
/// node's ICMP source address (its underlay address), `pods` the names.
pub fn verdict(steps: &[Step], probe: &Probe, nodes: &[NodeTables], pods: &[PodAt]) -> Verdict {
    let about_probe = |s: &&Step| match s {
        Step::VethTooBig { .. } => true,
        _ => packet_of(s).is_some_and(|p| carries(p, probe)),
    };
    let delivered: Vec<(&str, u32)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Delivered {
                node,
                ifindex,
                packet,
            } if carries(packet, probe) => Some((node.as_str(), *ifindex)),
            _ => None,
        })
        .collect();
    let outcome = if let Some(&(node, ifindex)) = delivered.first() {
        Outcome::Delivered {
            node: node.to_string(),
            ifindex,
            pod: pod_name(pods, node, ifindex).map(|p| p.pod.clone()),
            packets: delivered.len(),
        }
    } else if let Some(step) = steps
        .iter()
        .filter(about_probe)
        .find(|s| drop_reason(s).is_some())
    {
        Outcome::Dropped {
            node: step.node().map(str::to_string),
            hook: hook_name(step).to_string(),
            reason: drop_reason(step).unwrap_or_default(),
        }
    } else if let Some(node) = steps.iter().filter(about_probe).find_map(|s| match s {
        Step::Routing {
            node,
            decision: RouteDecision::Local,
            ..
        } => Some(node.clone()),
        _ => None,
    }) {
        Outcome::Local { node }
    } else {
        let last = steps.iter().rev().find(about_probe);
        let reason = match last {
            None => "no step".to_string(),
            Some(Step::Routing {
                decision: RouteDecision::ViaVxlan { vtep, .. },
                ..
            }) => format!(
                "the vxlan device has no neighbour and FDB entry for VTEP {}",
                Ipv4Addr::from(*vtep)
            ),
            Some(Step::Underlay { packet }) => format!(
                "no node on the underlay took the frame for {}",
                Ipv4Addr::from(packet.dst)
            ),
            Some(step) => format!("nothing happened after {}", hook_name(step)),
        };
        Outcome::Lost {
            node: last.and_then(Step::node).map(str::to_string),
            hook: last.map_or("-", hook_name).to_string(),
            reason,
        }
    };

    let mut icmp = Vec::new();
    for step in steps.iter().filter(about_probe) {
        let Step::Routing { node, decision, .. } = step else {
            continue;
        };
        let Some((kind, code, mtu, words)) = icmp_of(decision) else {
            continue;
        };
        let from = nodes
            .iter()
            .find(|t| &t.name == node)
            .map_or(Ipv4Addr::UNSPECIFIED, |t| {
                Ipv4Addr::from(t.config.underlay_ip)
            });
        let is_answer = |p: &PacketSummary| {
            p.protocol == 1
                && p.src == from.octets()
                && p.dst == probe.src
                && p.ports == Some((u16::from(kind), u16::from(code)))
        };
        let delivered_to = steps.iter().find_map(|s| match s {
            Step::Delivered {
                node,
                ifindex,
                packet,
            } if is_answer(packet) => Some(
                pod_name(pods, node, *ifindex)
                    .map_or_else(|| format!("if{ifindex} on {node}"), |p| p.pod.clone()),
            ),
            _ => None,
        });
        let dropped = steps
            .iter()
            .filter(|s| packet_of(s).is_some_and(is_answer))
            .find_map(|s| {
                let reason = drop_reason(s)?;
                Some(format!(
                    "{} {}: {reason}",
                    s.node().unwrap_or("underlay"),
                    hook_name(s)
                ))
            });
        icmp.push(IcmpAnswer {
            node: node.clone(),
            from,
            kind,
            code,
            mtu,
            description: words.to_string(),
            delivered_to,
            dropped,
        });
    }
    Verdict { outcome, icmp }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Delivered {
                node,
                ifindex,
                pod,
                packets,
            } => {
                match pod {
                    Some(pod) => write!(f, "delivered to pod {pod} on {node}")?,
                    None => write!(
                        f,
                        "delivered to host veth if{ifindex} on {node}, which is no lab pod's"
                    )?,
                }
                if *packets > 1 {
                    write!(f, " in {packets} fragments")?;
                }
            }
            Outcome::Local { node } => write!(f, "delivered to {node} itself (its own address)")?,
            Outcome::Dropped { node, hook, reason } => write!(
                f,
                "dropped on {} at {hook}: {reason}",
                node.as_deref().unwrap_or("the underlay")
            )?,
            Outcome::Lost { node, hook, reason } => write!(
                f,
                "lost on {} after {hook}: {reason}",
                node.as_deref().unwrap_or("the underlay")
            )?,
        }
        for answer in &self.icmp {
            write!(
                f,
                "; answered with ICMP {} (type {} code {}",
                answer.description, answer.kind, answer.code
            )?;
            if let Some(mtu) = answer.mtu {
                write!(f, ", mtu {mtu}")?;
            }
            write!(f, ") from {} ({})", answer.node, answer.from)?;
            match (&answer.delivered_to, &answer.dropped) {
                (Some(pod), _) => write!(f, ", delivered to pod {pod}")?,
                (None, Some(dropped)) => write!(f, ", itself dropped on {dropped}")?,
                (None, None) => write!(f, ", which reached no pod")?,
            }
        }
        Ok(())
    }
}
