//! The twin's policy case runner (`weftctl policy simulate`): a case's
//! pods become smoltcp pods of a twin cluster, one node per /24; its
//! policies are compiled for each node by the agent's own compiler
//! (`weft_calc::policy::compile`) and loaded into that node's policy
//! tables; every probe is then real traffic through the nodes' hooks.
//! Nothing here evaluates a policy: a verdict is what came through.
//!
//! - TCP: a smoltcp connect from a fresh source port to a socket listening
//!   on the destination pod, which echoes; allowed = the connection is
//!   established and the bytes come back.
//! - UDP: a datagram from a fresh source port to a socket bound on the
//!   destination pod, which echoes it; allowed = the echo arrives (the
//!   request is sent up to [`UDP_ATTEMPTS`] times: smoltcp drops a
//!   datagram that waits for ARP, as a resolver would retry).
//! - SCTP: neither smoltcp nor etherparse speak it, so the source pod
//!   sends a [`wire::SctpInit`] (CRC32c included) as a raw socket would;
//!   allowed = it reaches the destination pod's eth0. The kernel lab can
//!   only do the same (no SCTP sockets there).
//!
//! A destination pod serves exactly the TCP and UDP ports the case lists
//! for it: a TCP probe elsewhere is refused, a UDP one gets a port
//! unreachable, both "not allowed", as on a real pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint};
use weft_calc::policy::{PolicyInput, compile};
use weft_model::policy::Protocol;
use weft_model::policy_case::{CaseResults, PolicyCase, Probe, ProbeResult};

use crate::cluster::{Cluster, ClusterConfig, PodId};
use crate::wire;

/// How long a TCP probe may take, on the twin's virtual clock: the SYN,
/// a retransmission after a first SYN lost to ARP, and the echo.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams a UDP probe sends before it counts as not allowed.
pub const UDP_ATTEMPTS: usize = 3;
/// How long each UDP attempt waits for the echo (virtual time; everything
/// in flight is carried within one step).
const UDP_WAIT: Duration = Duration::from_millis(50);
/// Steps an SCTP INIT gets to arrive.
const SCTP_STEPS: usize = 4;
/// The first source port probes use; each probe takes the next.
const FIRST_SOURCE_PORT: u16 = 20_000;

/// Why a case cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("pods[{index}] ({pod}): {ip} is not a host address of its /24 (.0 and .255 are not)")]
    Address {
        index: usize,
        pod: String,
        ip: Ipv4Addr,
    },
    #[error("the compiler could not program node {node} ({subnet}): {problems}")]
    Compile {
        node: String,
        subnet: String,
        problems: String,
    },
    #[error(
        "pods[{index}] ({pod}): {ip} is in {reserved}, which the twin keeps for its underlay and gateway"
    )]
    Reserved {
        index: usize,
        pod: String,
        ip: Ipv4Addr,
        reserved: &'static str,
    },
    #[error("the case has more nodes (/24s) than the twin can build ({0}, at most 250)")]
    TooManyNodes(usize),
}

/// Runs every probe of `case` through a twin cluster built for it; one
/// result per probe, in the probes' order.
pub fn simulate(case: &PolicyCase) -> Result<CaseResults, SimulateError> {
    let nodes = case.nodes();
    if nodes.len() > 250 {
        return Err(SimulateError::TooManyNodes(nodes.len()));
    }
    let subnets: Vec<_> = nodes.keys().copied().collect();
    let node_name = |i: usize| format!("node{}", i + 1);
    let mut cluster = Cluster::with_pod_cidrs(
        ClusterConfig::default(),
        subnets.iter().map(|s| s.network().octets()).collect(),
    );

    let mut pods: BTreeMap<String, PodId> = BTreeMap::new();
    for (index, pod) in case.pods.iter().enumerate() {
        let reserved = [
            ("198.18.0.0/15", [198, 18], 15),
            ("169.254.0.0/16", [169, 254], 16),
        ]
        .into_iter()
        .find(|(_, net, len)| {
            u32::from(pod.ip) >> (32 - len)
                == u32::from_be_bytes([net[0], net[1], 0, 0]) >> (32 - len)
        });
        if let Some((reserved, _, _)) = reserved {
            return Err(SimulateError::Reserved {
                index,
                pod: pod.id(),
                ip: pod.ip,
                reserved,
            });
        }
        let node = subnets
            .iter()
            .position(|s| *s == pod.node_subnet())
            .expect("nodes() holds every pod's /24");
        let id = cluster
            .add_pod_at(node, pod.ip)
            .ok_or_else(|| SimulateError::Address {
                index,
                pod: pod.id(),
                ip: pod.ip,
            })?;
        pods.insert(pod.id(), id);
    }

    let members = case.policy_pods(
        |subnet| node_name(subnets.iter().position(|s| *s == subnet).unwrap_or(0)),
        |pod| Some(pod.ip),
    );
    let namespaces = case.namespace_objects();
    for (node, subnet) in subnets.iter().enumerate() {
        let name = node_name(node);
        let compiled = compile(&PolicyInput {
            node: &name,
            node_address: cluster.node_ip(node),
            namespaces: &namespaces,
            pods: &members,
            policies: &case.policies,
            previous: None,
        });
        if !compiled.problems.is_empty() {
            let problems: Vec<String> = compiled.problems.iter().map(|p| p.to_string()).collect();
            return Err(SimulateError::Compile {
                node: name,
                subnet: subnet.to_string(),
                problems: problems.join("; "),
            });
        }
        cluster
            .tables_mut(node)
            .policy
            .load(compiled.ipcache, compiled.policy);
    }

    let mut runner = Runner {
        cluster,
        next_port: FIRST_SOURCE_PORT,
    };
    let results = case
        .probes
        .iter()
        .map(|probe| {
            let from = pods[&probe.from];
            let to = pods[&probe.to];
            let serves = case.pod(&probe.to).is_some_and(|pod| {
                pod.ports
                    .iter()
                    .any(|p| p.container_port == probe.port && p.protocol == probe.protocol)
            });
            let allowed = runner.probe(probe, from, to, serves);
            ProbeResult::of(probe, allowed)
        })
        .collect();
    Ok(CaseResults { results })
}

/// One probe as the runner sends it.
struct Attempt {
    from: PodId,
    to: PodId,
    port: u16,
    /// A port no earlier probe used.
    source: u16,
    /// Whether the destination pod lists the port and protocol.
    serves: bool,
    payload: Vec<u8>,
}

struct Runner {
    cluster: Cluster,
    next_port: u16,
}

impl Runner {
    /// A source port no earlier probe used (so no conntrack entry or
    /// socket of an earlier probe answers for this one).
    fn source_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX {
            FIRST_SOURCE_PORT
        } else {
            port + 1
        };
        port
    }

    fn probe(&mut self, probe: &Probe, from: PodId, to: PodId, serves: bool) -> bool {
        let source = self.source_port();
        let attempt = Attempt {
            from,
            to,
            port: probe.port,
            source,
            serves,
            // The payload names the probe, so an answer to another cannot pass.
            payload: format!("probe {} -> {} {}", probe.from, probe.to, source).into_bytes(),
        };
        match probe.protocol {
            Protocol::Tcp => self.tcp(&attempt),
            Protocol::Udp => self.udp(&attempt),
            Protocol::Sctp => self.sctp(&attempt),
            Protocol::Unknown(_) => false,
        }
    }

    fn tcp(&mut self, attempt: &Attempt) -> bool {
        let (from, to, port, source) = (attempt.from, attempt.to, attempt.port, attempt.source);
        let (serves, payload) = (attempt.serves, &attempt.payload);
        let c = &mut self.cluster;
        let server = serves.then(|| {
            let mut socket = tcp_socket();
            socket.listen(port).expect("a fresh socket listens");
            c.pod_mut(to).add_socket(socket)
        });
        let client = c.pod_mut(from).add_socket(tcp_socket());
        let destination = endpoint(c.pod_ip(to), port);
        let (iface, sockets) = c.pod_mut(from).parts();
        sockets
            .get_mut::<tcp::Socket>(client)
            .connect(iface.context(), destination, source)
            .expect("a fresh socket connects");

        let deadline = c.now() + TCP_TIMEOUT;
        let (mut sent, mut echoed) = (false, Vec::new());
        let mut closed = false;
        let _ = c.run_until(100_000, |c| {
            if let Some(server) = server {
                echo_tcp(c.pod_mut(to).sockets().get_mut::<tcp::Socket>(server));
            }
            let s = c.pod_mut(from).sockets().get_mut::<tcp::Socket>(client);
            if s.may_send() && !sent {
                sent = s.send_slice(payload).expect("an open socket sends") == payload.len();
            }
            while s.can_recv() {
                s.recv(|buf| {
                    echoed.extend_from_slice(buf);
                    (buf.len(), ())
                })
                .expect("a readable socket reads");
            }
            // Refused (RST) or reset: the socket is closed again.
            closed = s.state() == tcp::State::Closed;
            echoed.len() >= payload.len() || closed || c.now() >= deadline
        });
        let allowed = echoed == *payload;
        self.remove(attempt, client, server);
        allowed
    }

    fn udp(&mut self, attempt: &Attempt) -> bool {
        let (from, to, port, source) = (attempt.from, attempt.to, attempt.port, attempt.source);
        let (serves, payload) = (attempt.serves, &attempt.payload);
        let c = &mut self.cluster;
        let server = serves.then(|| c.pod_mut(to).add_socket(udp_socket(port)));
        let client = c.pod_mut(from).add_socket(udp_socket(source));
        let destination = endpoint(c.pod_ip(to), port);
        let mut allowed = false;
        for _ in 0..UDP_ATTEMPTS {
            c.pod_mut(from)
                .sockets()
                .get_mut::<udp::Socket>(client)
                .send_slice(payload, destination)
                .expect("a bound socket sends");
            let deadline = c.now() + UDP_WAIT;
            let _ = c.run_until(10_000, |c| {
                if let Some(server) = server {
                    echo_udp(c.pod_mut(to).sockets().get_mut::<udp::Socket>(server));
                }
                let s = c.pod_mut(from).sockets().get_mut::<udp::Socket>(client);
                while let Ok((data, meta)) = s.recv() {
                    allowed |= data == payload && meta.endpoint == destination;
                }
                allowed || c.now() >= deadline
            });
            if allowed {
                break;
            }
        }
        self.remove(attempt, client, server);
        allowed
    }

    fn sctp(&mut self, attempt: &Attempt) -> bool {
        let (from, to, port, source) = (attempt.from, attempt.to, attempt.port, attempt.source);
        let c = &mut self.cluster;
        let (src, dst) = (c.pod_ip(from), c.pod_ip(to));
        // The INIT's initiate tag tells this probe's packet from others.
        let tag = 0x5743_0000 | u32::from(source);
        let packet = sctp_init(src, dst, source, port, tag);
        let before = c.pod(to).received().len();
        c.send_raw_from_pod(from, &packet);
        for _ in 0..SCTP_STEPS {
            c.step();
        }
        // Routed, so its TTL and header checksum changed: the same SCTP
        // bytes between the same addresses is the INIT.
        let sent = etherparse::Ipv4Slice::from_slice(&packet).expect("built above");
        c.pod(to).received()[before..].iter().any(|frame| {
            etherparse::Ipv4Slice::from_slice(frame.get(14..).unwrap_or_default()).is_ok_and(
                |got| {
                    got.header().protocol() == sent.header().protocol()
                        && got.header().source() == sent.header().source()
                        && got.header().destination() == sent.header().destination()
                        && got.payload().payload == sent.payload().payload
                },
            )
        })
    }

    /// Drops a probe's sockets, and with them its connection (the next
    /// probe uses another port).
    fn remove(&mut self, attempt: &Attempt, client: SocketHandle, server: Option<SocketHandle>) {
        self.cluster.pod_mut(attempt.from).sockets().remove(client);
        if let Some(server) = server {
            self.cluster.pod_mut(attempt.to).sockets().remove(server);
        }
    }
}

fn endpoint(ip: Ipv4Addr, port: u16) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(ip), port)
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    )
}

fn udp_socket(port: u16) -> udp::Socket<'static> {
    let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket.bind(port).expect("a fresh socket binds");
    socket
}

/// The TCP server: sends back whatever it reads.
fn echo_tcp(socket: &mut tcp::Socket<'static>) {
    let mut data = Vec::new();
    while socket.can_recv() {
        socket
            .recv(|buf| {
                data.extend_from_slice(buf);
                (buf.len(), ())
            })
            .expect("a readable socket reads");
    }
    if !data.is_empty() && socket.may_send() {
        let _ = socket.send_slice(&data);
    }
}

/// The UDP server: answers each datagram with itself, to its sender.
fn echo_udp(socket: &mut udp::Socket<'static>) {
    let mut got = Vec::new();
    while let Ok((data, meta)) = socket.recv() {
        got.push((data.to_vec(), meta.endpoint));
    }
    for (data, to) in got {
        let _ = socket.send_slice(&data, to);
    }
}

/// An IPv4 packet holding an SCTP INIT from `src:source` to `dst:port`
/// with initiate tag `tag`, as a client pod's raw socket sends it.
fn sctp_init(src: Ipv4Addr, dst: Ipv4Addr, source: u16, port: u16, tag: u32) -> Vec<u8> {
    let init = wire::SctpInit {
        src_port: source,
        dst_port: port,
        initiate_tag: tag,
    };
    let repr = wire::host_repr(
        src.octets(),
        dst.octets(),
        wire::PROTOCOL_SCTP,
        source,
        true,
    );
    wire::ipv4_packet(repr, &init.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    use weft_model::policy_case::parse_case;

    /// x/a and x/b on one node, y/a on another; x/a serves TCP and UDP 80
    /// only; `policies` as given.
    fn case(policies: &str, probes: &str) -> PolicyCase {
        let serve = r#"[{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
                        {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"}]"#;
        parse_case(&format!(
            r#"{{"pods": [
                {{"namespace": "x", "name": "a", "labels": {{"pod": "a"}}, "ip": "10.244.7.10", "ports": {serve}}},
                {{"namespace": "x", "name": "b", "labels": {{"pod": "b"}}, "ip": "10.244.7.11", "ports": {serve}}},
                {{"namespace": "y", "name": "a", "labels": {{"pod": "a"}}, "ip": "10.244.9.10"}}],
              "policies": [{policies}], "probes": [{probes}]}}"#
        ))
        .unwrap()
    }

    fn verdicts(case: &PolicyCase) -> Vec<bool> {
        simulate(case)
            .unwrap()
            .results
            .iter()
            .map(|r| r.allowed)
            .collect()
    }

    const TO_XA: &str = r#"{"from": "y/a", "to": "x/a", "port": 80, "protocol": "TCP"},
        {"from": "x/b", "to": "x/a", "port": 80, "protocol": "TCP"},
        {"from": "y/a", "to": "x/a", "port": 80, "protocol": "UDP"},
        {"from": "x/b", "to": "x/a", "port": 80, "protocol": "UDP"},
        {"from": "y/a", "to": "x/a", "port": 80, "protocol": "SCTP"},
        {"from": "x/b", "to": "x/a", "port": 80, "protocol": "SCTP"}"#;

    #[test]
    fn without_policy_served_ports_answer_and_others_do_not() {
        let probes = format!(
            r#"{TO_XA},
            {{"from": "x/b", "to": "x/a", "port": 81, "protocol": "TCP"}},
            {{"from": "x/b", "to": "x/a", "port": 81, "protocol": "UDP"}},
            {{"from": "x/a", "to": "y/a", "port": 80, "protocol": "TCP"}},
            {{"from": "x/a", "to": "y/a", "port": 80, "protocol": "SCTP"}}"#
        );
        let results = simulate(&case("", &probes)).unwrap();
        let allowed: Vec<bool> = results.results.iter().map(|r| r.allowed).collect();
        // Served: all pass, across nodes and on one. Unserved TCP is
        // refused, unserved UDP unanswered; SCTP only has to arrive.
        assert_eq!(
            allowed,
            [
                true, true, true, true, true, true, false, false, false, true
            ]
        );
        assert_eq!(results.results[6].port, 81, "results in the probes' order");
    }

    #[test]
    fn a_policy_decides_each_protocol_on_its_own() {
        // x/a lets in UDP from x/b only, and SCTP from anyone: TCP is denied.
        let policy = r#"{"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
              {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"protocol": "UDP"}]},
              {"ports": [{"protocol": "SCTP", "port": 80}]}]}}"#;
        assert_eq!(
            verdicts(&case(policy, TO_XA)),
            [false, false, false, true, true, true]
        );
    }

    #[test]
    fn an_address_that_is_no_host_of_its_24_is_refused() {
        let mut bad = case("", "");
        bad.pods[2].ip = Ipv4Addr::new(10, 244, 9, 255);
        let e = simulate(&bad).unwrap_err().to_string();
        assert!(e.contains("pods[2] (y/a)"), "{e}");
        bad.pods[2].ip = Ipv4Addr::new(198, 19, 4, 5);
        let e = simulate(&bad).unwrap_err().to_string();
        assert!(
            e.contains("pods[2] (y/a): 198.19.4.5 is in 198.18.0.0/15"),
            "{e}"
        );
    }

    #[test]
    fn an_init_is_a_valid_ipv4_sctp_packet() {
        let src = Ipv4Addr::new(10, 244, 1, 10);
        let dst = Ipv4Addr::new(10, 244, 2, 10);
        let packet = sctp_init(src, dst, 20_001, 80, 7);
        let (ip, sctp) = etherparse::Ipv4Header::from_slice(&packet).unwrap();
        assert_eq!(ip.protocol, etherparse::IpNumber(wire::PROTOCOL_SCTP));
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!((ip.source, ip.destination), (src.octets(), dst.octets()));
        assert_eq!(sctp.len(), 32);
        assert_eq!(&sctp[..4], &[0x4e, 0x21, 0, 80]);
        assert_eq!(sctp[12], 1, "an INIT chunk");
        assert!(wire::sctp_checksum_ok(sctp));
    }
}
