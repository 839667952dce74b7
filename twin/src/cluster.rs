//! A simulated cluster: nodes (each a [`crate::node`] engine over tables
//! built the way the agent builds them), pods that are smoltcp interfaces
//! behind host veths, and an underlay switch between the nodes' uplinks,
//! optionally with a second subnet behind a router. Everything runs on a
//! virtual clock, in one thread, deterministically.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::AnySocket;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use weft_common::maps::{Encap, NodeConfig, PodCidrKey, RemoteNode};

use crate::node::{
    Counters, Io, KernelRoute, KernelStats, Node, NodeTables, Port, Via, VxlanDevice, VxlanPeer,
};
use crate::step::{RouteDecision, Step};
use crate::wire::{self, Arp, Mac, PacketSummary};

/// What cluster to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub encap: Encap,
    /// `crossSubnet`: encapsulate only towards nodes on another subnet.
    pub cross_subnet: bool,
    /// Every node's direct redirect: IP-in-IP decapsulated for a local pod
    /// goes straight into the pod (`--direct-redirect`; off by default, as
    /// in the agent).
    pub direct_redirect: bool,
    /// Every node's uplink MTU.
    pub uplink_mtu: u16,
    /// Number of nodes: `node1`.., underlay 198.18.0.1.., pod CIDRs
    /// 10.244.1.0/24...
    pub nodes: usize,
    /// How many of the nodes (the last ones) sit on a second underlay
    /// subnet, 198.18.1.0/24, behind a router (198.18.0.254 and
    /// 198.18.1.254 on the same wire). 0: one subnet, no router.
    pub far_nodes: usize,
}

impl Default for ClusterConfig {
    /// Three nodes on one subnet, IP-in-IP, MTU 1500, no direct redirect.
    fn default() -> Self {
        ClusterConfig {
            encap: Encap::Ipip,
            cross_subnet: false,
            direct_redirect: false,
            uplink_mtu: 1500,
            nodes: 3,
            far_nodes: 0,
        }
    }
}

/// A pod of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(usize);

/// One frame seen on the underlay wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub at: Instant,
    pub frame: Vec<u8>,
}

impl Captured {
    /// The frame's IPv4 packet in one line, if it holds one.
    pub fn summary(&self) -> Option<PacketSummary> {
        PacketSummary::of_frame(&self.frame)
    }
}

/// A pod's eth0 as smoltcp sees it: the frames the host hands it, and
/// the frames it sends, which the cluster carries to the host veth.
struct VethDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: u16,
}

impl Device for VethDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp counts the Ethernet header in an Ethernet device's MTU.
        caps.max_transmission_unit = usize::from(self.mtu) + 14;
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

/// A pod: a smoltcp interface with the pod's /32 and a default route via
/// 169.254.1.1, as the CNI plugin configures a real pod.
pub struct Pod {
    node: usize,
    ifindex: u32,
    ip: [u8; 4],
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: VethDevice,
    received: Vec<Vec<u8>>,
}

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }

    /// The node the pod runs on.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The ifindex of the pod's host veth (its key in the endpoint map).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The pod's MTU (its eth0).
    pub fn mtu(&self) -> u16 {
        self.dev.mtu
    }

    pub fn add_socket<T: AnySocket<'static>>(&mut self, socket: T) -> SocketHandle {
        self.sockets.add(socket)
    }

    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The interface and the sockets together, for calls that need both
    /// (`tcp::Socket::connect` takes `iface.context()`).
    pub fn parts(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }

    /// Every frame the host handed to the pod, oldest first: a tap on the
    /// pod's eth0, for asserting what did (not) arrive.
    pub fn received(&self) -> &[Vec<u8>] {
        &self.received
    }
}

/// The underlay router between the two subnets: one interface on the
/// wire with an address in each. It knows every node's MAC (static ARP)
/// and routes only underlay addresses: pod addresses have no route there.
struct Router {
    mac: Mac,
    addrs: Vec<[u8; 4]>,
    hosts: BTreeMap<[u8; 4], Mac>,
}

const SUBNET_NEAR: [u8; 4] = [198, 18, 0, 0];
const SUBNET_FAR: [u8; 4] = [198, 18, 1, 0];
const ROUTER_NEAR: [u8; 4] = [198, 18, 0, 254];
const ROUTER_FAR: [u8; 4] = [198, 18, 1, 254];

impl Router {
    fn receive(&self, frame: &[u8], steps: &mut Vec<Step>, record: bool) -> Option<Vec<u8>> {
        match wire::ethertype(frame)? {
            wire::ETHERTYPE_ARP => {
                let arp = Arp::parse(frame)?;
                (arp.operation == Arp::REQUEST && self.addrs.contains(&arp.target_ip))
                    .then(|| arp.reply(self.mac).frame())
            }
            wire::ETHERTYPE_IPV4 if wire::eth_dst(frame) == Some(self.mac) => {
                let mut packet = wire::ipv4_payload(frame)?.to_vec();
                let summary = PacketSummary::of_packet(&packet)?;
                let alive = wire::Ipv4Fields::parse(&packet).is_some_and(|f| f.ttl > 1);
                let host = self.hosts.get(&summary.dst).filter(|_| alive);
                if record {
                    steps.push(Step::Router {
                        packet: summary,
                        forwarded: host.is_some(),
                    });
                }
                let host = host?;
                wire::decrement_ttl(&mut packet);
                Some(wire::ethernet_frame(
                    *host,
                    self.mac,
                    wire::ETHERTYPE_IPV4,
                    &packet,
                ))
            }
            _ => None,
        }
    }
}

/// Who put a frame on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WirePort {
    Node(usize),
    Router,
    /// [`Cluster::inject_underlay`]: a host that is no node.
    Outsider,
}

enum Event {
    FromPod {
        node: usize,
        ifindex: u32,
        frame: Vec<u8>,
    },
    Wire {
        from: WirePort,
        frame: Vec<u8>,
    },
}

/// The simulated cluster.
pub struct Cluster {
    now: Instant,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    pod_at: BTreeMap<(usize, u32), usize>,
    router: Option<Router>,
    capture: Vec<Captured>,
    recording: bool,
    steps: Vec<Step>,
    queue: VecDeque<Event>,
    /// Each node's pod CIDR (a /24), by node.
    pod_cidrs: Vec<[u8; 4]>,
}

/// Rounds of "poll every pod, carry every frame" within one step before
/// the clock moves on (a bound; quiet clusters stop after one).
const ROUNDS_PER_STEP: usize = 64;

impl Cluster {
    /// A cluster whose nodes are programmed as the agent programs them
    /// (`agent/src/calc.rs`): routes to the other nodes' pod CIDRs per
    /// mode, the pod MTU on IP-in-IP routes, the uplink programs' maps,
    /// the vxlan device and its peers.
    pub fn new(config: ClusterConfig) -> Cluster {
        Cluster::with_pod_cidrs(config, (0..config.nodes).map(pod_cidr).collect())
    }

    /// [`Cluster::new`] with the given pod CIDRs (/24s, one per node, in
    /// node order; `config.nodes` is ignored): the policy case runner
    /// gives each /24 of a case its node.
    pub fn with_pod_cidrs(config: ClusterConfig, pod_cidrs: Vec<[u8; 4]>) -> Cluster {
        let config = ClusterConfig {
            nodes: pod_cidrs.len(),
            ..config
        };
        let mut cluster = Cluster::from_tables(
            (0..config.nodes)
                .map(|i| node_tables(&config, &pod_cidrs, i))
                .collect(),
        );
        cluster.pod_cidrs = pod_cidrs;
        if config.far_nodes > 0 {
            let hosts = cluster
                .nodes
                .iter()
                .map(|n| (n.tables.config.underlay_ip, n.uplink_mac))
                .collect();
            cluster.router = Some(Router {
                mac: Mac::uplink(ROUTER_NEAR),
                addrs: vec![ROUTER_NEAR, ROUTER_FAR],
                hosts,
            });
        }
        cluster
    }

    /// A cluster of nodes with the given tables and no pods, wired to one
    /// underlay segment: what [`crate::trace()`] walks packets through.
    pub fn from_tables(tables: Vec<NodeTables>) -> Cluster {
        Cluster {
            pod_cidrs: (0..tables.len()).map(pod_cidr).collect(),
            now: Instant::from_millis(0),
            nodes: tables.into_iter().map(Node::new).collect(),
            pods: Vec::new(),
            pod_at: BTreeMap::new(),
            router: None,
            capture: Vec::new(),
            recording: false,
            steps: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    /// Adds a pod on `node` with the node's pod MTU.
    pub fn add_pod(&mut self, node: usize) -> PodId {
        let mtu = self.nodes[node].tables.pod_mtu;
        self.add_pod_with_mtu(node, mtu)
    }

    /// Adds a pod on `node` whose eth0 has MTU `mtu` (a pod that raised
    /// its own MTU; the host veth keeps the pod MTU).
    pub fn add_pod_with_mtu(&mut self, node: usize, mtu: u16) -> PodId {
        let local = self.pods.iter().filter(|p| p.node == node).count();
        let cidr = self.pod_cidrs[node];
        let ip = [cidr[0], cidr[1], cidr[2], 2 + local as u8];
        self.attach_pod(node, ip, mtu)
    }

    /// Adds a pod on `node` at `ip`, with the node's pod MTU: a pod whose
    /// address is given (a policy case's). `None` if `ip` is not a host
    /// address of the node's pod CIDR or another pod has it.
    pub fn add_pod_at(&mut self, node: usize, ip: Ipv4Addr) -> Option<PodId> {
        let ip = ip.octets();
        let usable = ip[..3] == self.pod_cidrs[node][..3] && ip[3] != 0 && ip[3] != 255;
        if !usable || self.pods.iter().any(|p| p.ip == ip) {
            return None;
        }
        let mtu = self.nodes[node].tables.pod_mtu;
        Some(self.attach_pod(node, ip, mtu))
    }

    /// A pod at `ip` behind the node's next host veth.
    fn attach_pod(&mut self, node: usize, ip: [u8; 4], mtu: u16) -> PodId {
        let local = self.pods.iter().filter(|p| p.node == node).count();
        let ifindex = 101 + local as u32;
        self.nodes[node].tables.add_pod(ifindex, ip);

        let mut dev = VethDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let mut config = Config::new(EthernetAddress(Mac::pod(ip).0).into());
        config.random_seed = u64::from(u32::from_be_bytes(ip));
        let mut iface = Interface::new(config, &mut dev, self.now);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(ip)), 32))
                .unwrap();
            // Stands for the permanent neighbour entry of 169.254.1.1 the
            // CNI plugin installs: smoltcp has no static neighbours and
            // only takes ARP answers from its own subnets, so the pod gets
            // 169.254.1.0/31 too. The /32 comes first, so it is the source
            // of everything the pod sends.
            addrs
                .push(IpCidr::new(IpAddress::v4(169, 254, 1, 0), 31))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(169, 254, 1, 1))
            .unwrap();
        let id = self.pods.len();
        self.pod_at.insert((node, ifindex), id);
        self.pods.push(Pod {
            node,
            ifindex,
            ip,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            received: Vec::new(),
        });
        PodId(id)
    }

    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0]
    }

    pub fn pod_mut(&mut self, id: PodId) -> &mut Pod {
        &mut self.pods[id.0]
    }

    pub fn pod_ip(&self, id: PodId) -> Ipv4Addr {
        self.pods[id.0].ip()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's underlay address.
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.nodes[node].tables.config.underlay_ip)
    }

    /// A node's uplink MAC, for frames injected on the underlay.
    pub fn node_mac(&self, node: usize) -> Mac {
        self.nodes[node].uplink_mac
    }

    pub fn tables(&self, node: usize) -> &NodeTables {
        &self.nodes[node].tables
    }

    /// Changes a node's tables (say, to break them on purpose); pods
    /// already added keep their entries unless the change removes them.
    pub fn tables_mut(&mut self, node: usize) -> &mut NodeTables {
        &mut self.nodes[node].tables
    }

    /// The node's eBPF counters.
    pub fn counters(&self, node: usize) -> &Counters {
        &self.nodes[node].counters
    }

    /// What the node's kernel did besides the programs.
    pub fn kernel_stats(&self, node: usize) -> &KernelStats {
        &self.nodes[node].stats
    }

    /// Every frame the underlay carried, oldest first.
    pub fn capture(&self) -> &[Captured] {
        &self.capture
    }

    pub fn clear_capture(&mut self) {
        self.capture.clear();
    }

    /// Records [`Step`]s from now on (or stops): every hook decision,
    /// routing decision and underlay frame of IPv4 packets.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// The steps recorded so far, leaving none.
    pub fn take_steps(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.steps)
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends `packet` (IPv4, no Ethernet header) from the pod's eth0 as a
    /// raw socket would, bypassing its stack: to forge sources, or send
    /// what the pod's MTU would not let smoltcp send. Carried at once; the
    /// receiving pods see it at their next poll.
    pub fn send_raw_from_pod(&mut self, pod: PodId, packet: &[u8]) {
        let p = &self.pods[pod.0];
        let frame =
            wire::ethernet_frame(Mac::HOST_VETH, Mac::pod(p.ip), wire::ETHERTYPE_IPV4, packet);
        self.queue.push_back(Event::FromPod {
            node: p.node,
            ifindex: p.ifindex,
            frame,
        });
        self.drain();
    }

    /// Puts `frame` on the underlay wire as a host that is no node would
    /// (the frame's source MAC and addresses are the caller's). Carried at
    /// once.
    pub fn inject_underlay(&mut self, frame: Vec<u8>) {
        self.queue.push_back(Event::Wire {
            from: WirePort::Outsider,
            frame,
        });
        self.drain();
    }

    /// Sends a frame from the host veth of `ifindex` on `node` (pod or
    /// not): how [`crate::trace()`] starts a packet.
    pub(crate) fn send_from_veth(&mut self, node: usize, ifindex: u32, frame: Vec<u8>) {
        self.queue.push_back(Event::FromPod {
            node,
            ifindex,
            frame,
        });
        self.drain();
    }

    /// Packets still waiting for ARP on the nodes, as routing steps.
    pub(crate) fn unresolved_steps(&self) -> Vec<Step> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.unresolved()
                    .into_iter()
                    .map(|(next_hop, packet)| Step::Routing {
                        node: n.tables.name.clone(),
                        packet,
                        decision: RouteDecision::NeighborUnresolved { next_hop },
                    })
            })
            .collect()
    }

    /// One step: poll every pod and carry every frame until the cluster is
    /// quiet, then move the clock to the pods' next deadline (at least
    /// 1 ms on).
    pub fn step(&mut self) {
        for _ in 0..ROUNDS_PER_STEP {
            let mut moved = false;
            for pod in &mut self.pods {
                pod.iface.poll(self.now, &mut pod.dev, &mut pod.sockets);
                while let Some(frame) = pod.dev.tx.pop_front() {
                    self.queue.push_back(Event::FromPod {
                        node: pod.node,
                        ifindex: pod.ifindex,
                        frame,
                    });
                    moved = true;
                }
            }
            self.drain();
            if !moved && self.pods.iter().all(|p| p.dev.rx.is_empty()) {
                break;
            }
        }
        let now = self.now;
        let next = self
            .pods
            .iter_mut()
            .filter_map(|p| p.iface.poll_at(now, &p.sockets))
            .min();
        self.now = match next {
            Some(at) if at > now => at,
            _ => now + Duration::from_millis(1),
        };
    }

    /// Steps until `done` holds (checked before every step; it may drive
    /// the pods' sockets) or `max_steps` have run. Returns whether `done`
    /// held.
    #[must_use]
    pub fn run_until(
        &mut self,
        max_steps: usize,
        mut done: impl FnMut(&mut Cluster) -> bool,
    ) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Carries frames until none is in flight.
    fn drain(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            match event {
                Event::FromPod {
                    node,
                    ifindex,
                    frame,
                } => {
                    let mut io = Io {
                        record: self.recording,
                        now_ns: self.now.total_micros() as u64 * 1000,
                        ..Io::default()
                    };
                    self.nodes[node].receive_from_pod(ifindex, &frame, &mut io);
                    self.node_output(node, io);
                }
                Event::Wire { from, frame } => self.wire(from, frame),
            }
        }
    }

    /// Carries out what a node sent: into pods, onto the wire.
    fn node_output(&mut self, node: usize, io: Io) {
        self.steps.extend(io.steps);
        for (port, frame) in io.out {
            match port {
                Port::Uplink => self.queue.push_back(Event::Wire {
                    from: WirePort::Node(node),
                    frame,
                }),
                Port::Pod(ifindex) => {
                    if self.recording
                        && let Some(packet) = PacketSummary::of_frame(&frame)
                    {
                        self.steps.push(Step::Delivered {
                            node: self.nodes[node].tables.name.clone(),
                            ifindex,
                            packet,
                        });
                    }
                    // A veth with no pod (tables built from data) swallows it.
                    if let Some(&pod) = self.pod_at.get(&(node, ifindex)) {
                        let pod = &mut self.pods[pod];
                        pod.received.push(frame.clone());
                        pod.dev.rx.push_back(frame);
                    }
                }
            }
        }
    }

    /// The underlay switch: logs the frame, then delivers it by destination
    /// MAC (everyone else for broadcast; unknown unicast is lost).
    fn wire(&mut self, from: WirePort, frame: Vec<u8>) {
        if self.recording
            && let Some(packet) = PacketSummary::of_frame(&frame)
        {
            self.steps.push(Step::Underlay { packet });
        }
        self.capture.push(Captured {
            at: self.now,
            frame: frame.clone(),
        });
        let Some(dst) = wire::eth_dst(&frame) else {
            return;
        };
        let mut ports: Vec<WirePort> = (0..self.nodes.len()).map(WirePort::Node).collect();
        if self.router.is_some() {
            ports.push(WirePort::Router);
        }
        for port in ports.into_iter().filter(|p| *p != from) {
            let mac = match port {
                WirePort::Node(i) => self.nodes[i].uplink_mac,
                WirePort::Router => self.router.as_ref().map_or(Mac::BROADCAST, |r| r.mac),
                WirePort::Outsider => continue,
            };
            if !dst.is_broadcast() && dst != mac {
                continue;
            }
            match port {
                WirePort::Node(i) => {
                    let mut io = Io {
                        record: self.recording,
                        now_ns: self.now.total_micros() as u64 * 1000,
                        ..Io::default()
                    };
                    self.nodes[i].receive_from_uplink(&frame, &mut io);
                    self.node_output(i, io);
                }
                WirePort::Router => {
                    let router = self.router.as_ref().expect("listed only if present");
                    if let Some(out) = router.receive(&frame, &mut self.steps, self.recording) {
                        self.queue.push_back(Event::Wire {
                            from: WirePort::Router,
                            frame: out,
                        });
                    }
                }
                WirePort::Outsider => {}
            }
        }
    }
}

/// Node `i`'s pod CIDR: 10.244.(i+1).0/24.
fn pod_cidr(i: usize) -> [u8; 4] {
    [10, 244, (i + 1) as u8, 0]
}

/// Node `i`'s underlay address, on the far subnet for the last
/// `far_nodes`.
fn underlay_ip(config: &ClusterConfig, i: usize) -> [u8; 4] {
    let far = i + config.far_nodes >= config.nodes;
    let subnet = if far { SUBNET_FAR } else { SUBNET_NEAR };
    [subnet[0], subnet[1], subnet[2], (i + 1) as u8]
}

/// Node `i`'s tables as the agent programs them (`agent/src/calc.rs`).
///
/// One difference: the agent's static routing refuses a node off the
/// uplink's subnet in `ipip` and `none` (its route's gateway, the node,
/// is not on-link). Here an `ipip` route to such a node goes via the
/// underlay router instead, with the node in the uplink programs' map as
/// usual, so that encapsulation across subnets can be shown; `none`
/// keeps the agent's behaviour (no route).
fn node_tables(config: &ClusterConfig, pod_cidrs: &[[u8; 4]], i: usize) -> NodeTables {
    let pod_cidr = |j: usize| pod_cidrs[j];
    let me = underlay_ip(config, i);
    let subnet = [me[0], me[1], me[2], 0];
    let router = if subnet == SUBNET_NEAR {
        ROUTER_NEAR
    } else {
        ROUTER_FAR
    };
    let pod_mtu = config.uplink_mtu - config.encap.overhead();
    let mut node_config = NodeConfig::new(me, config.encap).with_uplink_mtu(config.uplink_mtu);
    if config.cross_subnet {
        node_config = node_config.with_cross_subnet(subnet, 24);
    }
    if config.direct_redirect {
        node_config = node_config.with_direct_redirect();
    }
    let mut t = NodeTables::new(format!("node{}", i + 1), node_config, 24);
    t.pod_mtu = pod_mtu;
    if config.far_nodes > 0 {
        let other = if subnet == SUBNET_NEAR {
            SUBNET_FAR
        } else {
            SUBNET_NEAR
        };
        t.routes.push(KernelRoute::new(
            other,
            24,
            Via::Uplink {
                gateway: Some(router),
            },
        ));
    }
    let others: Vec<usize> = (0..config.nodes).filter(|&j| j != i).collect();
    if config.encap == Encap::Vxlan {
        t.vxlan = Some(VxlanDevice {
            vni: wire::VXLAN_VNI,
            mtu: config.uplink_mtu - wire::VXLAN_OVERHEAD,
            mac: Mac::vtep(me),
            peers: others
                .iter()
                .map(|&j| {
                    let ip = underlay_ip(config, j);
                    VxlanPeer {
                        vtep_ip: pod_cidr(j),
                        mac: Mac::vtep(ip),
                        underlay_ip: ip,
                    }
                })
                .collect(),
        });
        // The VTEP address (the pod CIDR's first address) is the node's.
        t.local_addrs.push(pod_cidr(i));
    }
    for &j in &others {
        let ip = underlay_ip(config, j);
        let cidr = pod_cidr(j);
        let same_subnet = ip[..3] == me[..3];
        let native = config.cross_subnet && same_subnet;
        let route = match config.encap {
            Encap::Ipip => {
                t.pod_routes
                    .push((PodCidrKey::new(cidr, 24), RemoteNode::new(ip)));
                let gateway = if same_subnet { ip } else { router };
                let mtu = (!native).then_some(pod_mtu);
                Some(
                    KernelRoute::new(
                        cidr,
                        24,
                        Via::Uplink {
                            gateway: Some(gateway),
                        },
                    )
                    .with_mtu(mtu),
                )
            }
            Encap::Vxlan if !native => {
                Some(KernelRoute::new(cidr, 24, Via::Vxlan { gateway: cidr }))
            }
            Encap::Vxlan | Encap::None => {
                same_subnet.then(|| KernelRoute::new(cidr, 24, Via::Uplink { gateway: Some(ip) }))
            }
        };
        t.routes.extend(route);
        // The only sources of IP-in-IP (and in vxlan of VXLAN) let in;
        // the agent fills the set in every mode.
        t.nodes.push(ip);
    }
    t
}
