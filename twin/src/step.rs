//! One decision on a packet's way, as `weftctl trace` prints it and tests
//! assert it: which hook or which part of the node, on which node, what it
//! decided, and which counter it bumped.

use std::fmt;
use std::net::Ipv4Addr;

use weft_common::verdict::Counter;

use crate::hooks::action_name;
use crate::wire::PacketSummary;

/// What a node's routing (the kernel's `ip_forward` / local output) did
/// with one IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Out of a pod's host veth, to the pod.
    ToPod { ifindex: u32 },
    /// Out of the uplink towards `next_hop`, under route MTU `mtu`.
    ViaUplink { next_hop: [u8; 4], mtu: u16 },
    /// Into the vxlan device towards the VTEP `vtep`.
    ViaVxlan { vtep: [u8; 4], mtu: u16 },
    /// Addressed to the node itself (and not VXLAN): the node's own stack.
    Local,
    /// Larger than the route MTU with DF set: dropped, and ICMP
    /// "fragmentation needed" with next-hop MTU `mtu` sent to the source.
    FragmentationNeeded { mtu: u16 },
    /// Larger than the route MTU without DF: cut into `fragments` packets
    /// that fit `mtu`, each then routed as the next step says.
    Fragmented { mtu: u16, fragments: usize },
    /// TTL would reach 0: dropped, ICMP "time exceeded" sent to the source.
    TtlExceeded,
    /// No route: dropped, ICMP "network unreachable" sent to the source.
    NoRoute,
    /// Not an IPv4 packet the kernel accepts (bad header or checksum).
    Malformed,
    /// The next hop never answered ARP (the packet waits, then is lost).
    NeighborUnresolved { next_hop: [u8; 4] },
}

/// Why the vxlan device refused a VXLAN packet, or that it took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VxlanDecision {
    /// The inner frame goes on to the node's routing.
    Decapsulated { vni: u32 },
    /// No vxlan device with that VNI (or no I flag): dropped.
    UnknownVni,
    /// The inner frame is not addressed to this VTEP's MAC, or not IPv4.
    NotForThisVtep,
}

/// Which of a pod veth's two tc hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VethHook {
    /// tc ingress of the host veth: what the pod sends.
    TcIngress,
    /// tc egress of the host veth: what the node sends to the pod.
    TcEgress,
}

impl VethHook {
    pub fn name(self) -> &'static str {
        match self {
            VethHook::TcIngress => "tc ingress",
            VethHook::TcEgress => "tc egress",
        }
    }
}

/// One decision on a packet's way through the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A pod's host veth: `weft_pod_ingress` at its tc ingress (what the
    /// pod sends), or `weft_pod_egress` at its tc egress (what the node
    /// sends to the pod).
    PodVeth {
        node: String,
        ifindex: u32,
        hook: VethHook,
        packet: Option<PacketSummary>,
        action: i32,
        counter: Counter,
        /// What policy decided and the entry that decided it, in words
        /// (absent for what the guard alone decided).
        policy: Option<String>,
    },
    /// The veth refused a frame larger than its peer's MTU (before tc).
    VethTooBig {
        node: String,
        ifindex: u32,
        frame_len: usize,
        mtu: u16,
    },
    /// The node's routing.
    Routing {
        node: String,
        packet: PacketSummary,
        decision: RouteDecision,
    },
    /// The vxlan device wrapped a packet towards `remote`.
    VxlanEncap {
        node: String,
        packet: PacketSummary,
        remote: [u8; 4],
        vni: u32,
        src_port: u16,
    },
    /// The vxlan device received a VXLAN packet.
    VxlanDecap {
        node: String,
        packet: PacketSummary,
        decision: VxlanDecision,
    },
    /// `weft_uplink_egress` at tc egress of the uplink.
    UplinkEgress {
        node: String,
        packet: PacketSummary,
        action: i32,
        counter: Counter,
    },
    /// `weft_uplink_ingress` at tc ingress of the uplink.
    UplinkIngress {
        node: String,
        packet: PacketSummary,
        action: i32,
        counter: Counter,
    },
    /// A frame on the underlay.
    Underlay { packet: PacketSummary },
    /// The underlay router between subnets.
    Router {
        packet: PacketSummary,
        forwarded: bool,
    },
    /// A packet handed to a pod (to its smoltcp interface in the cluster).
    Delivered {
        node: String,
        ifindex: u32,
        packet: PacketSummary,
    },
}

impl Step {
    /// The node the step happened on (`None`: the underlay).
    pub fn node(&self) -> Option<&str> {
        match self {
            Step::PodVeth { node, .. }
            | Step::VethTooBig { node, .. }
            | Step::Routing { node, .. }
            | Step::VxlanEncap { node, .. }
            | Step::VxlanDecap { node, .. }
            | Step::UplinkEgress { node, .. }
            | Step::UplinkIngress { node, .. }
            | Step::Delivered { node, .. } => Some(node),
            Step::Underlay { .. } | Step::Router { .. } => None,
        }
    }

    /// The eBPF counter the step bumped, for the three tc hooks.
    pub fn counter(&self) -> Option<Counter> {
        match self {
            Step::PodVeth { counter, .. }
            | Step::UplinkEgress { counter, .. }
            | Step::UplinkIngress { counter, .. } => Some(*counter),
            _ => None,
        }
    }

    /// The routing decision, for routing steps.
    pub fn route(&self) -> Option<RouteDecision> {
        match self {
            Step::Routing { decision, .. } => Some(*decision),
            _ => None,
        }
    }
}

fn ip(addr: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(addr)
}

/// A tc program's result: its action and the counter it bumped.
fn verdict(action: i32, counter: Counter) -> String {
    format!("{} ({})", action_name(action), counter.name())
}

impl fmt::Display for RouteDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RouteDecision::ToPod { ifindex } => write!(f, "to pod veth if{ifindex}"),
            RouteDecision::ViaUplink { next_hop, mtu } => {
                write!(f, "via uplink, next hop {}, mtu {mtu}", ip(next_hop))
            }
            RouteDecision::ViaVxlan { vtep, mtu } => {
                write!(f, "via vxlan device to VTEP {}, mtu {mtu}", ip(vtep))
            }
            RouteDecision::Local => write!(f, "for this node"),
            RouteDecision::FragmentationNeeded { mtu } => {
                write!(f, "DROP: too big with DF, ICMP frag needed mtu {mtu} sent")
            }
            RouteDecision::Fragmented { mtu, fragments } => {
                write!(f, "fragmented into {fragments} to fit mtu {mtu}")
            }
            RouteDecision::TtlExceeded => write!(f, "DROP: TTL exceeded, ICMP sent"),
            RouteDecision::NoRoute => write!(f, "DROP: no route, ICMP unreachable sent"),
            RouteDecision::Malformed => write!(f, "DROP: malformed IPv4"),
            RouteDecision::NeighborUnresolved { next_hop } => {
                write!(f, "waiting: no ARP answer from {}", ip(next_hop))
            }
        }
    }
}

impl fmt::Display for VxlanDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VxlanDecision::Decapsulated { vni } => write!(f, "decapsulated (vni {vni})"),
            VxlanDecision::UnknownVni => write!(f, "DROP: unknown VNI"),
            VxlanDecision::NotForThisVtep => write!(f, "DROP: inner frame not for this VTEP"),
        }
    }
}

impl fmt::Display for Step {
    /// One line: where (node, hook), the packet, and what was decided.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let underlay = "underlay".to_string();
        let (node, hook, what) = match self {
            Step::PodVeth {
                node,
                ifindex,
                hook,
                packet,
                action,
                counter,
                policy,
            } => {
                let packet = packet.map_or_else(|| "non-IPv4 frame".into(), |p| p.to_string());
                let policy = policy
                    .as_ref()
                    .map_or_else(String::new, |p| format!("  policy: {p}"));
                (
                    node,
                    format!("pod veth if{ifindex} {}", hook.name()),
                    format!("{packet}  => {}{policy}", verdict(*action, *counter)),
                )
            }
            Step::VethTooBig {
                node,
                ifindex,
                frame_len,
                mtu,
            } => (
                node,
                format!("pod veth if{ifindex}"),
                format!("{frame_len}-byte frame  => DROP: above the veth MTU {mtu}"),
            ),
            Step::Routing {
                node,
                packet,
                decision,
            } => (node, "routing".into(), format!("{packet}  => {decision}")),
            Step::VxlanEncap {
                node,
                packet,
                remote,
                vni,
                src_port,
            } => (
                node,
                "vxlan device".into(),
                format!(
                    "{packet}  => encapsulated to {} vni {vni} udp src port {src_port}",
                    ip(*remote)
                ),
            ),
            Step::VxlanDecap {
                node,
                packet,
                decision,
            } => (
                node,
                "vxlan device".into(),
                format!("{packet}  => {decision}"),
            ),
            Step::UplinkEgress {
                node,
                packet,
                action,
                counter,
            } => (
                node,
                "uplink tc egress".into(),
                format!("{packet}  => {}", verdict(*action, *counter)),
            ),
            Step::UplinkIngress {
                node,
                packet,
                action,
                counter,
            } => (
                node,
                "uplink tc ingress".into(),
                format!("{packet}  => {}", verdict(*action, *counter)),
            ),
            Step::Underlay { packet } => (&underlay, "wire".into(), packet.to_string()),
            Step::Router { packet, forwarded } => (
                &underlay,
                "router".into(),
                format!(
                    "{packet}  => {}",
                    if *forwarded {
                        "forwarded"
                    } else {
                        "DROP: no route"
                    }
                ),
            ),
            Step::Delivered {
                node,
                ifindex,
                packet,
            } => (
                node,
                format!("pod if{ifindex} delivered"),
                packet.to_string(),
            ),
        };
        write!(f, "{node:<8} {hook:<25} {what}")
    }
}
