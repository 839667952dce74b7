//! One node of the twin: its tables as plain data ([`NodeTables`]: the
//! eBPF maps and the kernel routes the agent programs) and the engine that
//! moves frames through them the way the node's kernel does, calling the
//! tc programs ([`crate::hooks`]) where the kernel runs them.
//!
//! The kernel model is Linux's IPv4 forwarding reduced to what Weft's
//! path touches (`ip_rcv`, `ip_forward`, `ip_output`/`ip_fragment`,
//! `icmp_send`, ARP on the uplink, a vxlan device). Deliberately left
//! out, because Weft's path does not depend on them: netfilter and
//! conntrack, rp_filter, ICMP redirects and rate limits, GSO/GRO (every
//! packet is a single segment), neighbour expiry and ARP retries.

use std::collections::BTreeMap;
use std::fmt;

use weft_common::ipv4::{self, Ipv4Repr};
use weft_common::lookup::Fib;
use weft_common::maps::{
    EndpointCounterKey, EndpointInfo, NodeConfig, PodCidrKey, RemoteNode, prefix_contains,
};
use weft_common::redirect::{FibQuery, FibResult};
use weft_common::verdict::{COUNTER_COUNT, Counter};

use etherparse::UdpHeader;
use smoltcp::wire::Ipv4Packet;

use crate::hooks::{self, HookOutcome};
use crate::policy::{Conntrack, PolicyTables, PolicyVerdictText};
use crate::step::{RouteDecision, Step, VethHook, VxlanDecision};
use crate::wire::{self, Arp, IcmpErrorKind, Ipv4Fields, Mac, PacketSummary};

/// How a kernel route leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `dev <pod host veth>` scope link: a local pod's /32.
    Pod { ifindex: u32 },
    /// `dev <uplink>`, directly (`gateway: None`, the connected subnet) or
    /// `via gateway`.
    Uplink { gateway: Option<[u8; 4]> },
    /// `via <vtep> dev <vxlan> onlink`: into the vxlan device.
    Vxlan { gateway: [u8; 4] },
}

/// One route of the node's main table, as `ip route` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: [u8; 4],
    pub prefix_len: u8,
    pub via: Via,
    /// The route's `mtu` attribute (the agent sets the pod MTU on routes
    /// into IP-in-IP); `None`: the device's MTU.
    pub mtu: Option<u16>,
}

impl KernelRoute {
    pub fn new(dst: [u8; 4], prefix_len: u8, via: Via) -> KernelRoute {
        KernelRoute {
            dst,
            prefix_len,
            via,
            mtu: None,
        }
    }

    pub fn with_mtu(self, mtu: Option<u16>) -> KernelRoute {
        KernelRoute { mtu, ..self }
    }

    pub fn contains(&self, addr: [u8; 4]) -> bool {
        prefix_contains(self.dst, u32::from(self.prefix_len), addr)
    }
}

/// A peer of the vxlan device: its neighbour entry (VTEP address → MAC)
/// and FDB entry (MAC → underlay address), as the agent programs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanPeer {
    pub vtep_ip: [u8; 4],
    pub mac: Mac,
    pub underlay_ip: [u8; 4],
}

/// The node's vxlan device (mode `vxlan`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    pub vni: u32,
    /// The device MTU: the uplink's minus [`wire::VXLAN_OVERHEAD`].
    pub mtu: u16,
    pub mac: Mac,
    pub peers: Vec<VxlanPeer>,
}

/// Everything a node's packet path reads, as plain data: the eBPF maps
/// (what the agent writes into the pinned maps) and the kernel state (what
/// `ip route`, `ip link` and the vxlan FDB show). The twin builds these
/// for its simulated nodes; `weftctl trace` can build them from a live
/// node and walk a packet through them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTables {
    /// The node's name, for steps.
    pub name: String,
    /// `WEFT_CONFIG`: mode, underlay address, uplink MTU, crossSubnet.
    pub config: NodeConfig,
    /// `WEFT_ENDPOINTS`: host veth ifindex → the pod's only source address.
    pub endpoints: Vec<(u32, EndpointInfo)>,
    /// `WEFT_POD_ROUTES`: other nodes' pod CIDRs → node (ipip only).
    pub pod_routes: Vec<(PodCidrKey, RemoteNode)>,
    /// `WEFT_NODES`: underlay addresses IP-in-IP is accepted from.
    pub nodes: Vec<[u8; 4]>,
    /// The kernel's main routing table.
    pub routes: Vec<KernelRoute>,
    /// Addresses of the node itself (underlay address, VTEP address).
    pub local_addrs: Vec<[u8; 4]>,
    /// The MTU of the pods' veths (both ends).
    pub pod_mtu: u16,
    pub vxlan: Option<VxlanDevice>,
    /// `WEFT_IPCACHE`, `WEFT_POLICY`, `WEFT_POLICY_REV`: empty, nothing is
    /// isolated.
    pub policy: PolicyTables,
}

impl NodeTables {
    /// A node with no pods, no peers: its config, the connected route of
    /// its underlay subnet (`underlay_prefix_len`) and its own address.
    pub fn new(name: impl Into<String>, config: NodeConfig, underlay_prefix_len: u8) -> NodeTables {
        let mut tables = NodeTables {
            name: name.into(),
            config,
            endpoints: Vec::new(),
            pod_routes: Vec::new(),
            nodes: Vec::new(),
            routes: Vec::new(),
            local_addrs: vec![config.underlay_ip],
            pod_mtu: 0,
            vxlan: None,
            policy: PolicyTables::default(),
        };
        tables.pod_mtu = tables.uplink_mtu();
        tables.routes.push(KernelRoute::new(
            config.underlay_ip,
            underlay_prefix_len,
            Via::Uplink { gateway: None },
        ));
        tables
    }

    /// Registers a local pod as the CNI plugin and agent do: its guard
    /// entry and its /32 route into the host veth `ifindex`.
    pub fn add_pod(&mut self, ifindex: u32, ip: [u8; 4]) {
        self.endpoints.push((ifindex, EndpointInfo::new(ip)));
        self.routes
            .push(KernelRoute::new(ip, 32, Via::Pod { ifindex }));
    }

    /// The uplink's MTU (1500 when the config leaves it unknown).
    pub fn uplink_mtu(&self) -> u16 {
        match self.config.uplink_mtu {
            0 => 1500,
            mtu => mtu,
        }
    }

    /// The endpoint entry of a host veth.
    pub fn endpoint(&self, ifindex: u32) -> Option<&EndpointInfo> {
        self.endpoints
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, e)| e)
    }

    /// The longest-prefix route to `dst` (first of equals).
    pub fn lookup(&self, dst: [u8; 4]) -> Option<&KernelRoute> {
        let mut best: Option<&KernelRoute> = None;
        for route in self.routes.iter().filter(|r| r.contains(dst)) {
            if best.is_none_or(|b| route.prefix_len > b.prefix_len) {
                best = Some(route);
            }
        }
        best
    }

    /// The host veth of the local pod `ip` (its /32 route).
    pub fn pod_ifindex(&self, ip: [u8; 4]) -> Option<u32> {
        self.routes.iter().find_map(|r| match r.via {
            Via::Pod { ifindex } if r.dst == ip && r.prefix_len == 32 => Some(ifindex),
            _ => None,
        })
    }

    /// The MTU packets leaving by `route` must fit.
    pub fn route_mtu(&self, route: &KernelRoute) -> u16 {
        let device = match route.via {
            Via::Pod { .. } => self.pod_mtu,
            Via::Uplink { .. } => self.uplink_mtu(),
            Via::Vxlan { .. } => self.vxlan.as_ref().map_or(0, |v| v.mtu),
        };
        route.mtu.map_or(device, |mtu| mtu.min(device))
    }
}

/// The node's FIB as `bpf_fib_lookup` answers it from the uplink, as far
/// as the direct redirect needs it: a local pod's /32 route forwards into
/// its host veth, from the host side's MAC to the pod's (a permanent
/// neighbour in the twin, see [`Mac::pod`]; Linux learns it by ARP, and
/// until then answers "no neighbour"), if the frame fits the veth (its MTU
/// plus 14 + 4 bytes, the kernel's `is_skb_forwardable`). Every other
/// answer is "not forwarded": the node's own addresses, no route, or a
/// route out of the uplink or the vxlan device (which the kernel would
/// name, but which are no pod veths either).
impl Fib for NodeTables {
    fn lookup(&self, query: &FibQuery) -> FibResult {
        if self.local_addrs.contains(&query.dst) {
            return FibResult::NotForwarded;
        }
        let fits = query.frame_len <= usize::from(self.pod_mtu) + 14 + 4;
        match NodeTables::lookup(self, query.dst).map(|r| r.via) {
            Some(Via::Pod { ifindex }) if fits => FibResult::Forward {
                ifindex,
                smac: Mac::HOST_VETH.0,
                dmac: Mac::pod(query.dst).0,
            },
            _ => FibResult::NotForwarded,
        }
    }
}

/// The node's eBPF counters (the `WEFT_COUNTERS` map, summed over CPUs),
/// and its per-endpoint policy counters (`WEFT_EP_COUNTS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    by_verdict: [u64; COUNTER_COUNT],
    endpoints: BTreeMap<EndpointCounterKey, u64>,
}

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.by_verdict[counter.index() as usize]
    }

    pub(crate) fn bump(&mut self, counter: Counter) {
        self.by_verdict[counter.index() as usize] += 1;
    }

    /// Every counter a hook bumped.
    pub(crate) fn bump_hook(&mut self, outcome: &HookOutcome) {
        for counter in outcome.counters() {
            self.bump(counter);
        }
        for key in &outcome.endpoint_counters {
            *self.endpoints.entry(*key).or_default() += 1;
        }
    }

    /// An endpoint's policy counter (0 when never bumped).
    pub fn endpoint(&self, key: &EndpointCounterKey) -> u64 {
        self.endpoints.get(key).copied().unwrap_or(0)
    }

    /// The per-endpoint policy counters bumped so far, by key.
    pub fn endpoints(&self) -> &BTreeMap<EndpointCounterKey, u64> {
        &self.endpoints
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}

impl fmt::Display for Counters {
    /// The non-zero counters, `name=value` separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (counter, value) in self.iter().filter(|(_, v)| *v != 0) {
            if !first {
                write!(f, " ")?;
            }
            first = false;
            write!(f, "{}={value}", counter.name())?;
        }
        Ok(())
    }
}

/// What the node's kernel did, beside the eBPF counters: the kernel's own
/// drops and the ICMP errors it sent, for tests to assert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// IPv4 packets forwarded (each fragment once).
    pub forwarded: u64,
    /// Packets for the node itself (VXLAN excluded).
    pub local_delivered: u64,
    /// ICMP "fragmentation needed" sent.
    pub frag_needed_sent: u64,
    /// Fragments cut from forwarded packets too big without DF.
    pub fragments_created: u64,
    /// ICMP "time exceeded" sent.
    pub ttl_exceeded: u64,
    /// Packets with no route.
    pub no_route: u64,
    /// Bad IPv4 header or checksum.
    pub bad_header: u64,
    /// Frames addressed to another MAC.
    pub other_host: u64,
    /// Frames from a pod above the veth MTU (dropped by the veth).
    pub veth_too_big: u64,
    pub vxlan_encapsulated: u64,
    pub vxlan_decapsulated: u64,
    /// VXLAN refused: unknown VNI, inner frame not for this VTEP.
    pub vxlan_dropped: u64,
    /// Frames dropped because the neighbour queue was full.
    pub neighbor_queue_full: u64,
}

/// Where the node sends a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// Into the host veth `ifindex`, i.e. to its pod.
    Pod(u32),
    /// Out of the uplink, onto the underlay.
    Uplink,
}

/// What one call into a node produced: frames to send on, and the steps
/// taken (when recording).
#[derive(Default)]
pub(crate) struct Io {
    pub out: Vec<(Port, Vec<u8>)>,
    pub steps: Vec<Step>,
    pub record: bool,
    /// The cluster's clock, as `bpf_ktime_get_ns` reads it, for the
    /// connection tracker.
    pub now_ns: u64,
}

impl Io {
    fn step(&mut self, step: impl FnOnce() -> Step) {
        if self.record {
            self.steps.push(step());
        }
    }
}

/// Frames waiting for ARP, at most (Linux's `unres_qlen_bytes` is per
/// neighbour and larger; the twin's flows never come near).
const PENDING_MAX: usize = 256;

/// The engine of one node.
pub(crate) struct Node {
    pub tables: NodeTables,
    pub counters: Counters,
    pub stats: KernelStats,
    pub uplink_mac: Mac,
    /// `WEFT_CONNTRACK`, written by the policy hooks.
    pub conntrack: Conntrack,
    /// The uplink's ARP cache (entries never expire in the twin).
    neighbors: BTreeMap<[u8; 4], Mac>,
    /// Frames waiting for their next hop's ARP answer: (next hop, frame
    /// with its destination MAC still zero).
    pending: Vec<([u8; 4], Vec<u8>)>,
    /// IPv4 identification of packets the node itself sends.
    ident: u16,
}

impl Node {
    pub fn new(tables: NodeTables) -> Node {
        let uplink_mac = Mac::uplink(tables.config.underlay_ip);
        Node {
            tables,
            counters: Counters::default(),
            stats: KernelStats::default(),
            uplink_mac,
            conntrack: Conntrack::default(),
            neighbors: BTreeMap::new(),
            pending: Vec::new(),
            ident: 1,
        }
    }

    fn name(&self) -> String {
        self.tables.name.clone()
    }

    /// A policy hook's verdict in words, identities named by this node's
    /// ipcache.
    fn policy_text(&self, outcome: &HookOutcome) -> Option<String> {
        let verdict = outcome.policy.as_ref()?;
        let text = PolicyVerdictText {
            verdict,
            ipcache: &self.tables.policy.ipcache,
        };
        Some(text.to_string())
    }

    /// The packets still waiting for an ARP answer, with their next hop.
    pub fn unresolved(&self) -> Vec<([u8; 4], PacketSummary)> {
        self.pending
            .iter()
            .filter_map(|(hop, frame)| Some((*hop, PacketSummary::of_frame(frame)?)))
            .collect()
    }

    // --- frames in -------------------------------------------------------

    /// A frame the pod behind host veth `ifindex` sent.
    pub fn receive_from_pod(&mut self, ifindex: u32, frame: &[u8], io: &mut Io) {
        // veth_xmit: the peer refuses what exceeds its MTU (plus a VLAN tag).
        let mtu = self.tables.pod_mtu;
        if frame.len() > usize::from(mtu) + 14 + 4 {
            self.stats.veth_too_big += 1;
            io.step(|| Step::VethTooBig {
                node: self.name(),
                ifindex,
                frame_len: frame.len(),
                mtu,
            });
            return;
        }
        let outcome = hooks::pod_ingress(
            frame,
            self.tables.endpoint(ifindex),
            &self.tables.policy,
            &mut self.conntrack,
            io.now_ns,
            &self.tables.config,
        );
        self.counters.bump_hook(&outcome);
        io.step(|| Step::PodVeth {
            node: self.name(),
            ifindex,
            hook: VethHook::TcIngress,
            packet: PacketSummary::of_frame(frame),
            action: outcome.action,
            counter: outcome.counter,
            policy: self.policy_text(&outcome),
        });
        if !outcome.passes() {
            return;
        }
        match wire::ethertype(frame) {
            Some(wire::ETHERTYPE_ARP) => {
                // proxy_arp on the host veth: the host answers for any
                // address (the pod's gateway 169.254.1.1 above all).
                if let Some(arp) = Arp::parse(frame).filter(|a| a.operation == Arp::REQUEST) {
                    io.out
                        .push((Port::Pod(ifindex), arp.reply(Mac::HOST_VETH).frame()));
                }
            }
            Some(wire::ETHERTYPE_IPV4) => {
                // Only unicast to the host is routed (`ip_forward` drops
                // what is not PACKET_HOST).
                if wire::eth_dst(frame) != Some(Mac::HOST_VETH) {
                    self.stats.other_host += 1;
                    return;
                }
                self.ip_input(frame, io);
            }
            _ => {}
        }
    }

    /// A frame arriving on the uplink from the underlay.
    pub fn receive_from_uplink(&mut self, frame: &[u8], io: &mut Io) {
        let outcome = hooks::uplink_ingress(
            frame,
            self.tables.nodes.as_slice(),
            &self.tables.config,
            &self.tables,
            self.tables.endpoints.as_slice(),
            self.tables.policy.policy.as_slice(),
        );
        self.counters.bump(outcome.counter);
        if let Some(packet) = PacketSummary::of_frame(frame) {
            io.step(|| Step::UplinkIngress {
                node: self.name(),
                packet,
                action: outcome.action,
                counter: outcome.counter,
            });
        }
        if let Some(ifindex) = outcome.redirect {
            // bpf_redirect_peer: into the pod's eth0, no routing on the node.
            io.out.push((Port::Pod(ifindex), outcome.frame));
            return;
        }
        if !outcome.passes() {
            return;
        }
        let HookOutcome { frame, .. } = outcome;
        let dst = wire::eth_dst(&frame);
        match wire::ethertype(&frame) {
            Some(wire::ETHERTYPE_ARP)
                if dst == Some(self.uplink_mac) || dst == Some(Mac::BROADCAST) =>
            {
                self.uplink_arp(&frame, io)
            }
            Some(wire::ETHERTYPE_IPV4) if dst == Some(self.uplink_mac) => self.ip_input(&frame, io),
            Some(wire::ETHERTYPE_ARP | wire::ETHERTYPE_IPV4) => self.stats.other_host += 1,
            _ => {}
        }
    }

    /// ARP on the uplink: answer for the node's own addresses, learn the
    /// sender of what is addressed to us, release what waited for it.
    fn uplink_arp(&mut self, frame: &[u8], io: &mut Io) {
        let Some(arp) = Arp::parse(frame) else {
            return;
        };
        if !self.tables.local_addrs.contains(&arp.target_ip) {
            return;
        }
        self.neighbors.insert(arp.sender_ip, arp.sender_mac);
        if arp.operation == Arp::REQUEST {
            self.uplink_send(arp.reply(self.uplink_mac).frame(), io);
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(hop, _)| *hop == arp.sender_ip);
        self.pending = waiting;
        for (_, mut frame) in ready {
            wire::set_eth_dst(&mut frame, arp.sender_mac);
            self.uplink_send(frame, io);
        }
    }

    // --- IPv4 --------------------------------------------------------------

    /// `ip_rcv`: a frame holding IPv4, on any of the node's interfaces.
    fn ip_input(&mut self, frame: &[u8], io: &mut Io) {
        let Some(packet) = wire::ipv4_payload(frame) else {
            self.stats.bad_header += 1;
            if let Some(packet) = PacketSummary::of_frame(frame) {
                io.step(|| Step::Routing {
                    node: self.name(),
                    packet,
                    decision: RouteDecision::Malformed,
                });
            }
            return;
        };
        let packet = packet.to_vec();
        let Some(fields) = Ipv4Fields::parse(&packet) else {
            return;
        };
        if self.tables.local_addrs.contains(&fields.dst) {
            self.local_deliver(packet, fields, io);
        } else {
            self.forward(packet, fields, io);
        }
    }

    /// `ip_forward`: TTL, route, MTU (ICMP or fragmentation), then out.
    fn forward(&mut self, mut packet: Vec<u8>, fields: Ipv4Fields, io: &mut Io) {
        let summary = PacketSummary::of_packet(&packet).expect("checked by ip_input");
        let decide = |node: &Node, io: &mut Io, decision| {
            io.step(|| Step::Routing {
                node: node.name(),
                packet: summary,
                decision,
            })
        };
        if fields.ttl <= 1 {
            decide(self, io, RouteDecision::TtlExceeded);
            self.stats.ttl_exceeded += 1;
            self.icmp_error(&packet, IcmpErrorKind::TtlExceeded, io);
            return;
        }
        let Some(route) = self.tables.lookup(fields.dst).copied() else {
            decide(self, io, RouteDecision::NoRoute);
            self.stats.no_route += 1;
            self.icmp_error(&packet, IcmpErrorKind::NetUnreachable, io);
            return;
        };
        let mtu = self.tables.route_mtu(&route);
        if packet.len() > usize::from(mtu) && fields.dont_fragment {
            decide(self, io, RouteDecision::FragmentationNeeded { mtu });
            self.stats.frag_needed_sent += 1;
            self.icmp_error(&packet, IcmpErrorKind::FragmentationNeeded { mtu }, io);
            return;
        }
        // ip_decrease_ttl: the checksum follows the TTL.
        wire::decrement_ttl(&mut packet);
        let pieces = if packet.len() > usize::from(mtu) {
            let pieces = fragment(&packet, mtu);
            decide(
                self,
                io,
                RouteDecision::Fragmented {
                    mtu,
                    fragments: pieces.len(),
                },
            );
            self.stats.fragments_created += pieces.len() as u64;
            pieces
        } else {
            vec![packet]
        };
        decide(self, io, self.decision(&route, fields.dst, mtu));
        for piece in pieces {
            self.stats.forwarded += 1;
            self.output(piece, &route, io);
        }
    }

    /// Sends a packet the node itself made (ICMP errors, VXLAN): route and
    /// out, no TTL change.
    fn local_out(&mut self, packet: Vec<u8>, io: &mut Io) {
        let Some(fields) = Ipv4Fields::parse(&packet) else {
            return;
        };
        let summary = PacketSummary::of_packet(&packet).expect("just parsed");
        let Some(route) = self.tables.lookup(fields.dst).copied() else {
            self.stats.no_route += 1;
            io.step(|| Step::Routing {
                node: self.name(),
                packet: summary,
                decision: RouteDecision::NoRoute,
            });
            return;
        };
        let mtu = self.tables.route_mtu(&route);
        io.step(|| Step::Routing {
            node: self.name(),
            packet: summary,
            decision: self.decision(&route, fields.dst, mtu),
        });
        // What the node makes fits: errors are at most 576 bytes, VXLAN
        // packets at most the uplink MTU.
        self.output(packet, &route, io);
    }

    fn decision(&self, route: &KernelRoute, dst: [u8; 4], mtu: u16) -> RouteDecision {
        match route.via {
            Via::Pod { ifindex } => RouteDecision::ToPod { ifindex },
            Via::Uplink { gateway } => RouteDecision::ViaUplink {
                next_hop: gateway.unwrap_or(dst),
                mtu,
            },
            Via::Vxlan { gateway } => RouteDecision::ViaVxlan { vtep: gateway, mtu },
        }
    }

    /// `ip_output` for one packet that fits.
    fn output(&mut self, packet: Vec<u8>, route: &KernelRoute, io: &mut Io) {
        let dst = Ipv4Fields::parse(&packet).map_or([0; 4], |f| f.dst);
        match route.via {
            Via::Pod { ifindex } => {
                // The pod's MAC is a permanent neighbour entry in the twin
                // (see `Mac::pod`); Linux learns it by ARP.
                let frame = wire::ethernet_frame(
                    Mac::pod(dst),
                    Mac::HOST_VETH,
                    wire::ETHERTYPE_IPV4,
                    &packet,
                );
                // weft_pod_egress on the host veth: the pod's ingress policy.
                let outcome = hooks::pod_egress(
                    &frame,
                    &self.tables.policy,
                    &mut self.conntrack,
                    io.now_ns,
                    &self.tables.config,
                );
                self.counters.bump_hook(&outcome);
                io.step(|| Step::PodVeth {
                    node: self.name(),
                    ifindex,
                    hook: VethHook::TcEgress,
                    packet: PacketSummary::of_frame(&frame),
                    action: outcome.action,
                    counter: outcome.counter,
                    policy: self.policy_text(&outcome),
                });
                if !outcome.passes() {
                    return;
                }
                io.out.push((Port::Pod(ifindex), frame));
            }
            Via::Uplink { gateway } => {
                let next_hop = gateway.unwrap_or(dst);
                let frame = wire::ethernet_frame(
                    Mac([0; 6]),
                    self.uplink_mac,
                    wire::ETHERTYPE_IPV4,
                    &packet,
                );
                self.neighbor_output(next_hop, frame, io);
            }
            Via::Vxlan { gateway } => self.vxlan_xmit(gateway, &packet, io),
        }
    }

    /// `neigh_output` on the uplink: send at once if the next hop's MAC is
    /// known, else queue the frame and ask by ARP.
    fn neighbor_output(&mut self, next_hop: [u8; 4], mut frame: Vec<u8>, io: &mut Io) {
        if let Some(mac) = self.neighbors.get(&next_hop) {
            wire::set_eth_dst(&mut frame, *mac);
            self.uplink_send(frame, io);
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.stats.neighbor_queue_full += 1;
            return;
        }
        let asked = self.pending.iter().any(|(hop, _)| *hop == next_hop);
        self.pending.push((next_hop, frame));
        if !asked {
            let request = Arp {
                operation: Arp::REQUEST,
                sender_mac: self.uplink_mac,
                sender_ip: self.tables.config.underlay_ip,
                target_mac: Mac([0; 6]),
                target_ip: next_hop,
            };
            self.uplink_send(request.frame(), io);
        }
    }

    /// The uplink's transmit path: `weft_uplink_egress`, then the wire.
    fn uplink_send(&mut self, frame: Vec<u8>, io: &mut Io) {
        let outcome = hooks::uplink_egress(
            &frame,
            self.tables.pod_routes.as_slice(),
            &self.tables.config,
            &self.tables.policy,
            &mut self.conntrack,
            io.now_ns,
        );
        self.counters.bump_hook(&outcome);
        if let Some(packet) = PacketSummary::of_frame(&frame) {
            io.step(|| Step::UplinkEgress {
                node: self.name(),
                packet,
                action: outcome.action,
                counter: outcome.counter,
            });
        }
        if outcome.passes() {
            io.out.push((Port::Uplink, outcome.frame));
        }
    }

    /// The vxlan device's transmit: neighbour (VTEP → MAC), FDB (MAC →
    /// underlay), then Ethernet + UDP 4789 + VXLAN around the inner frame,
    /// sent by the node's own stack (outer checksum 0, no DF, TTL 64).
    fn vxlan_xmit(&mut self, vtep: [u8; 4], packet: &[u8], io: &mut Io) {
        let Some(device) = self.tables.vxlan.as_ref() else {
            self.stats.no_route += 1;
            return;
        };
        let Some(peer) = device.peers.iter().find(|p| p.vtep_ip == vtep).copied() else {
            self.stats.no_route += 1;
            return;
        };
        let (vni, mac) = (device.vni, device.mac);
        let inner = wire::ethernet_frame(peer.mac, mac, wire::ETHERTYPE_IPV4, packet);
        // weft_tunnel_egress on the vxlan device: the deferred egress policy.
        if let Some(outcome) = hooks::tunnel_egress(
            &inner,
            &self.tables.policy,
            &mut self.conntrack,
            io.now_ns,
            &self.tables.config,
        ) {
            self.counters.bump_hook(&outcome);
            if !outcome.passes() {
                return;
            }
        }
        let src_port = wire::flow_src_port(packet);
        let mut payload = wire::vxlan_header(vni).to_vec();
        payload.extend_from_slice(&inner);
        let src = self.tables.config.underlay_ip;
        let udp = wire::udp_datagram(
            src,
            peer.underlay_ip,
            src_port,
            wire::VXLAN_PORT,
            &payload,
            false,
        );
        self.stats.vxlan_encapsulated += 1;
        if let Some(summary) = PacketSummary::of_packet(packet) {
            io.step(|| Step::VxlanEncap {
                node: self.name(),
                packet: summary,
                remote: peer.underlay_ip,
                vni,
                src_port,
            });
        }
        let ident = self.next_ident();
        let outer = wire::ipv4_packet(
            wire::host_repr(src, peer.underlay_ip, ipv4::PROTOCOL_UDP, ident, false),
            &udp,
        );
        self.local_out(outer, io);
    }

    /// `ip_local_deliver`: VXLAN to the vxlan device, the rest to the
    /// node's own stack (where the twin ends its journey).
    fn local_deliver(&mut self, packet: Vec<u8>, fields: Ipv4Fields, io: &mut Io) {
        let summary = PacketSummary::of_packet(&packet).expect("checked by ip_input");
        let is_vxlan = self.tables.vxlan.is_some()
            && fields.protocol == ipv4::PROTOCOL_UDP
            && !fields.is_fragment()
            && summary.ports.is_some_and(|(_, dp)| dp == wire::VXLAN_PORT);
        if !is_vxlan {
            self.stats.local_delivered += 1;
            io.step(|| Step::Routing {
                node: self.name(),
                packet: summary,
                decision: RouteDecision::Local,
            });
            return;
        }
        let udp_payload = &packet[fields.header_len + UdpHeader::LEN..];
        let decision = self.vxlan_rcv(udp_payload);
        io.step(|| Step::VxlanDecap {
            node: self.name(),
            packet: summary,
            decision,
        });
        if matches!(decision, VxlanDecision::Decapsulated { .. }) {
            self.stats.vxlan_decapsulated += 1;
            let inner = udp_payload[wire::VXLAN_HEADER_LEN..].to_vec();
            self.ip_input(&inner, io);
        } else {
            self.stats.vxlan_dropped += 1;
        }
    }

    /// `vxlan_rcv`: the VNI must be the device's and the inner frame
    /// addressed to its MAC. Like Linux without `learning`, the outer
    /// source is not checked against the FDB: any host that can reach
    /// UDP 4789 can inject (Calico closes this with an iptables rule
    /// allowing VXLAN from known nodes only; Weft has no such check yet).
    fn vxlan_rcv(&self, payload: &[u8]) -> VxlanDecision {
        let device = self.tables.vxlan.as_ref().expect("checked by the caller");
        match wire::vxlan_vni(payload) {
            Some(vni) if vni == device.vni => {
                let inner = &payload[wire::VXLAN_HEADER_LEN..];
                let for_us = wire::eth_dst(inner) == Some(device.mac)
                    && wire::eth_src(inner) != Some(device.mac)
                    && wire::ethertype(inner) == Some(wire::ETHERTYPE_IPV4);
                if for_us {
                    VxlanDecision::Decapsulated { vni }
                } else {
                    VxlanDecision::NotForThisVtep
                }
            }
            _ => VxlanDecision::UnknownVni,
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// `icmp_send`: an error about `offending` to its source, from the
    /// node's underlay address, quoting at most 548 bytes. Never about an
    /// ICMP error, a non-first fragment, or a non-unicast source.
    fn icmp_error(&mut self, offending: &[u8], kind: IcmpErrorKind, io: &mut Io) {
        let Some(f) = Ipv4Fields::parse(offending) else {
            return;
        };
        if f.fragment_offset != 0 || f.src == [0; 4] || f.src[0] >= 224 {
            return;
        }
        if f.protocol == ipv4::PROTOCOL_ICMP {
            let kind = offending.get(f.header_len).copied().unwrap_or(0);
            if !matches!(kind, 0 | 8 | 13 | 14 | 17 | 18) {
                return;
            }
        }
        let icmp = wire::icmp_error(kind, offending);
        let ident = self.next_ident();
        let repr = Ipv4Repr {
            // Linux: IPTOS_PREC_INTERNETCONTROL.
            tos: 0xc0,
            ..wire::host_repr(
                self.tables.config.underlay_ip,
                f.src,
                ipv4::PROTOCOL_ICMP,
                ident,
                false,
            )
        };
        self.local_out(wire::ipv4_packet(repr, &icmp), io);
    }
}

/// `ip_fragment`: `packet` (header included) cut into packets of at most
/// `mtu` bytes, each carrying a copy of the header with its offset and MF
/// bit; data in multiples of 8 bytes except the last. The header is copied
/// whole (options included; Linux keeps only the options marked "copy" in
/// later fragments; the twin's hosts send none).
pub(crate) fn fragment(packet: &[u8], mtu: u16) -> Vec<Vec<u8>> {
    let Some(f) = Ipv4Fields::parse(packet) else {
        return Vec::new();
    };
    let header = &packet[..f.header_len];
    let data = &packet[f.header_len..usize::from(f.total_len)];
    let chunk = usize::from(mtu).saturating_sub(f.header_len) & !7;
    if chunk == 0 {
        return Vec::new();
    }
    let base = usize::from(f.fragment_offset);
    let mut pieces = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + chunk).min(data.len());
        let last = end == data.len();
        let mut piece = header.to_vec();
        piece.extend_from_slice(&data[offset..end]);
        let total = piece.len() as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut piece);
        ip.set_total_len(total);
        ip.set_more_frags(!last || f.more_fragments);
        ip.set_frag_offset((base + offset) as u16);
        ip.fill_checksum();
        pieces.push(piece);
        offset = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Probe;
    use weft_common::maps::Encap;

    #[test]
    fn fragments_cover_the_datagram_in_order() {
        let packet = Probe::udp([10, 244, 1, 5], [10, 244, 2, 7], 53)
            .with_len(3000)
            .with_df(false)
            .packet();
        let pieces = fragment(&packet, 1480);
        assert_eq!(pieces.len(), 3);
        let mut data = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let f = Ipv4Fields::parse(piece).unwrap();
            assert!(piece.len() <= 1480);
            assert_eq!(usize::from(f.fragment_offset), data.len());
            assert_eq!(f.more_fragments, i < 2);
            assert_eq!(weft_common::ipv4::checksum(&piece[..20]), 0);
            data.extend_from_slice(&piece[20..]);
        }
        assert_eq!(data, packet[20..]);
    }

    #[test]
    fn longest_route_wins_and_route_mtu_caps_the_device() {
        let mut t = NodeTables::new(
            "n",
            NodeConfig::new([198, 18, 0, 1], Encap::Ipip).with_uplink_mtu(1500),
            24,
        );
        t.routes.push(
            KernelRoute::new(
                [10, 244, 2, 0],
                24,
                Via::Uplink {
                    gateway: Some([198, 18, 0, 2]),
                },
            )
            .with_mtu(Some(1480)),
        );
        t.add_pod(101, [10, 244, 1, 5]);
        let r = *t.lookup([10, 244, 2, 9]).unwrap();
        assert_eq!(t.route_mtu(&r), 1480);
        assert_eq!(
            t.lookup([10, 244, 1, 5]).unwrap().via,
            Via::Pod { ifindex: 101 }
        );
        assert_eq!(
            t.lookup([198, 18, 0, 7]).unwrap().via,
            Via::Uplink { gateway: None }
        );
        assert!(t.lookup([8, 8, 8, 8]).is_none());
        assert_eq!(t.pod_ifindex([10, 244, 1, 5]), Some(101));
    }
}
