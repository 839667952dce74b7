//! The request and the report of a trace: what `--to` names, the
//! synthetic packet, and each step and the verdict as text and as JSON
//! (`weftctl lab trace [--json]`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Serialize;

use super::TraceError;
use super::facts::{NodeFacts, node_tables, notes};
use super::verdict::{PodAt, Verdict, drop_reason, hook_name, packet_of, pod_name, verdict};
use crate::Encap;
use crate::hooks::action_name;
use crate::node::NodeTables;
use crate::step::Step;
use crate::wire::{PacketSummary, Probe};

/// What `--to` names: an address, and a port and protocol or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub kind: TargetKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// ICMP echo request (no port given).
    Ping,
    Tcp(u16),
    Udp(u16),
}

impl FromStr for Target {
    type Err = String;

    /// `IP` (ICMP echo), `IP/icmp`, `IP:PORT/tcp` or `IP:PORT/udp`.
    fn from_str(s: &str) -> Result<Target, String> {
        let usage = "expected IP, IP:PORT/tcp or IP:PORT/udp (e.g. 10.244.2.3:80/tcp)";
        let (addr, proto) = match s.split_once('/') {
            Some((addr, proto)) => (addr, Some(proto.to_ascii_lowercase())),
            None => (s, None),
        };
        let (ip, port) = match addr.split_once(':') {
            Some((ip, port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{port:?} is not a port (0-65535); {usage}"))?;
                (ip, Some(port))
            }
            None => (addr, None),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address; {usage}"))?;
        let kind = match (port, proto.as_deref()) {
            (None, None | Some("icmp")) => TargetKind::Ping,
            (Some(port), Some("tcp")) => TargetKind::Tcp(port),
            (Some(port), Some("udp")) => TargetKind::Udp(port),
            (Some(_), None) => return Err(format!("{s:?} names a port but no protocol; {usage}")),
            (None, Some("tcp" | "udp")) => {
                return Err(format!("{s:?} names a protocol but no port; {usage}"));
            }
            (Some(_), Some("icmp")) => return Err(format!("ICMP has no port: {s:?}; {usage}")),
            (_, Some(other)) => {
                return Err(format!(
                    "unknown protocol {other:?} (tcp, udp or icmp); {usage}"
                ));
            }
        };
        Ok(Target { ip, kind })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TargetKind::Ping => write!(f, "{} (icmp echo)", self.ip),
            TargetKind::Tcp(port) => write!(f, "{}:{port}/tcp", self.ip),
            TargetKind::Udp(port) => write!(f, "{}:{port}/udp", self.ip),
        }
    }
}

/// The synthetic packet from `src` to `target`: IPv4 total length `size`
/// (raised to the smallest packet of its kind), DF as asked.
pub fn probe(src: Ipv4Addr, target: Target, size: Option<u16>, df: bool) -> Probe {
    let (src, dst) = (src.octets(), target.ip.octets());
    let probe = match target.kind {
        TargetKind::Ping => Probe::ping(src, dst),
        TargetKind::Tcp(port) => Probe::tcp(src, dst, port),
        TargetKind::Udp(port) => Probe::udp(src, dst, port),
    };
    probe.with_len(size.unwrap_or(0)).with_df(df)
}

/// One step as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepView {
    /// `null` for the underlay.
    pub node: Option<String>,
    pub hook: &'static str,
    /// The interface, where the step has one (pod veth, delivery).
    pub ifindex: Option<u32>,
    pub packet: Option<String>,
    /// The tc action of the three tc hooks (`TC_ACT_OK`, `TC_ACT_SHOT`,
    /// `TC_ACT_REDIRECT`).
    pub action: Option<&'static str>,
    /// The eBPF counter the tc hook bumped.
    pub counter: Option<&'static str>,
    /// What was decided, in words.
    pub decision: String,
    /// Whether the step dropped the packet.
    pub dropped: bool,
    /// The pod behind the veth of a pod veth step or a delivery.
    pub pod: Option<String>,
    /// At a pod veth's policy hook: what policy decided and the policy
    /// map entry that decided it (or the tracker's reason for asking
    /// none).
    pub policy: Option<String>,
    /// The step as the text output prints it.
    pub text: String,
}

pub fn step_view(step: &Step, pods: &[PodAt]) -> StepView {
    let action = action_name;
    let (ifindex, tc, decision) = match step {
        Step::PodVeth {
            ifindex,
            action: a,
            counter,
            ..
        } => (
            Some(*ifindex),
            Some((action(*a), counter.name())),
            counter.name().to_string(),
        ),
        Step::VethTooBig { ifindex, .. } => (Some(*ifindex), None, String::new()),
        Step::Routing { decision, .. } => (None, None, decision.to_string()),
        Step::VxlanEncap {
            remote,
            vni,
            src_port,
            ..
        } => (
            None,
            None,
            format!(
                "encapsulated to {} vni {vni} udp src port {src_port}",
                Ipv4Addr::from(*remote)
            ),
        ),
        Step::VxlanDecap { decision, .. } => (None, None, decision.to_string()),
        Step::UplinkEgress {
            action: a, counter, ..
        }
        | Step::UplinkIngress {
            action: a, counter, ..
        } => (
            None,
            Some((action(*a), counter.name())),
            counter.name().to_string(),
        ),
        Step::Underlay { .. } => (None, None, "on the wire".to_string()),
        Step::Router { forwarded, .. } => (
            None,
            None,
            if *forwarded { "forwarded" } else { "no route" }.to_string(),
        ),
        Step::Delivered { ifindex, .. } => (Some(*ifindex), None, "delivered".to_string()),
    };
    let reason = drop_reason(step);
    StepView {
        node: step.node().map(str::to_string),
        hook: hook_name(step),
        ifindex,
        packet: packet_of(step).map(|p| p.to_string()),
        action: tc.map(|(a, _)| a),
        counter: tc.map(|(_, c)| c),
        decision: reason.clone().unwrap_or(decision),
        dropped: reason.is_some(),
        pod: match step {
            Step::PodVeth { node, ifindex, .. }
            | Step::VethTooBig { node, ifindex, .. }
            | Step::Delivered { node, ifindex, .. } => {
                pod_name(pods, node, *ifindex).map(|p| p.pod.clone())
            }
            _ => None,
        },
        policy: match step {
            Step::PodVeth { policy, .. } => policy.clone(),
            _ => None,
        },
        text: step.to_string(),
    }
}

/// A whole trace: the request, the steps and the verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    pub lab: String,
    pub encap: &'static str,
    pub from: TraceFrom,
    pub to: String,
    pub packet: String,
    /// What the tables could not model, or had to guess.
    pub notes: Vec<String>,
    pub steps: Vec<StepView>,
    pub verdict: Verdict,
    /// The verdict in one line.
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceFrom {
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The MTU of the pod's own interface, when it could be read.
    pub mtu: Option<u32>,
}

/// Everything a trace over a lab's nodes starts from: the lab's name and
/// mode (for the report), the pod the probe leaves from and its own
/// interface, what the probe is, and what was read off the nodes.
#[derive(Clone, Copy, Debug)]
pub struct TraceInput<'a> {
    pub lab: &'a str,
    pub encap: Encap,
    pub from: &'a TraceFrom,
    /// The pod's own interface (`eth0`), named in the note when the
    /// packet is above its MTU.
    pub from_ifname: &'a str,
    pub to: Target,
    /// The IPv4 total length [default: the smallest packet of its kind].
    pub size: Option<u16>,
    pub df: bool,
    pub nodes: &'a [NodeFacts],
    pub pods: &'a [PodAt],
}

/// The whole trace: the nodes' facts into tables (and notes), the probe
/// walked through them from the pod's veth, the verdict, and the report.
/// Fails only when no node has the pod's address behind a veth.
pub fn report(input: &TraceInput) -> Result<TraceReport, TraceError> {
    let TraceInput {
        lab,
        encap,
        from,
        from_ifname,
        to,
        size,
        df,
        nodes,
        pods,
    } = *input;
    let tables: Vec<NodeTables> = nodes.iter().map(node_tables).collect();
    let mut notes: Vec<String> = nodes.iter().flat_map(notes).collect();
    let probe = probe(from.ip, to, size, df);
    let packet = probe.packet();
    if let Some(mtu) = from.mtu
        && packet.len() > mtu as usize
    {
        notes.push(format!(
            "the packet ({} bytes) is above the MTU of {}'s {from_ifname} ({mtu}): the pod's own \
             stack would refuse it{} before it reaches the veth; the trace starts at the veth",
            packet.len(),
            from.pod,
            if df { "" } else { " or fragment it" },
        ));
    }
    let steps = crate::trace(&tables, from.ip, &packet)?;
    let verdict = verdict(&steps, &probe, &tables, pods);
    Ok(TraceReport {
        lab: lab.to_string(),
        encap: encap.name(),
        from: from.clone(),
        to: to.to_string(),
        packet: PacketSummary::of_packet(&packet).map_or_else(String::new, |p| p.to_string()),
        notes,
        steps: steps.iter().map(|s| step_view(s, pods)).collect(),
        summary: verdict.to_string(),
        verdict,
    })
}

impl TraceReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "trace in lab {} (encap {}): from pod {} ({}, {}) to {}\npacket: {}\n",
            self.lab, self.encap, self.from.pod, self.from.ip, self.from.node, self.to, self.packet
        );
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("{:>3}  {}\n", i + 1, step.text));
        }
        out.push_str(&format!("verdict: {}\n", self.summary));
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a trace report serializes")
    }
}
