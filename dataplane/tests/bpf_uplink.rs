//! IP-in-IP by eBPF in a real kernel: two "nodes" (network namespaces)
//! joined by a veth pair as their underlay, each with its own pin directory
//! and `UplinkPrograms` attached to its end of the pair, and one "pod" each
//! (a namespace behind a veth, wired as weft-cni wires pods), carrying real
//! ICMP, UDP and TCP between the pods: encapsulated on one node's uplink,
//! decapsulated on the other's and forwarded into the pod's veth.
//!
//! Needs root (BPF, bpffs, netns, tc), `ip`, `tc`, `ping` and `tcpdump`
//! (scripts/install-deps.sh), and the eBPF object (`scripts/build-ebpf.sh`);
//! every test panics, never skips, without them.
//! Run: `cargo test -p weft-dataplane --test bpf_uplink -- --test-threads=1`.
//!
//! Each test owns a [`Lab`]:
//!
//! ```text
//!  wdf-<pid>-<tag>-p1: eth0 10.244.1.1/32     wdf-<pid>-<tag>-p2: eth0 10.244.2.1/32
//!    mtu 1480, default via 169.254.1.1          (the same)
//!        │ veth                                       │ veth
//!  wdf-<pid>-<tag>-n1: wp-n1 (proxy ARP)      wdf-<pid>-<tag>-n2: wp-n2
//!    10.244.1.1 dev wp-n1                       10.244.2.1 dev wp-n2
//!    10.244.2.0/24 via 198.18.0.2 mtu 1480      10.244.1.0/24 via 198.18.0.1 mtu 1480
//!  wu-n1: 198.18.0.1/24  ◄───── veth ─────►   wu-n2: 198.18.0.2/24
//!  pins: /sys/fs/bpf/weft-test-<pid>/<tag>/n1 pins: .../<tag>/n2
//! ```
//!
//! Its `Drop` deletes the four namespaces (and with them the veths and
//! filters) and the pin directories, also when the test fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use weft_common::maps::{Encap, NodeConfig, PodCidrKey, RemoteNode};
use weft_dataplane::bpf::{
    BpfError, PodGuard, UplinkPrograms, detach_uplink, read_pinned_maps, remove_pins,
};

mod support;
use support::{in_netns, ip};

fn require_root() {
    support::require_root("bpf_uplink", "BPF syscall, bpffs, network namespaces, tc");
}

const N1_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const N2_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// An underlay address that is no cluster node.
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const N1_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const N2_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
const UPLINK_MTU: u16 = 1500;
const POD_MTU: u16 = UPLINK_MTU - 20;

/// Runs `ip -n NS WORDS...`, `words` split at whitespace.
fn ip_in(ns: &str, words: &str) -> String {
    let mut args = vec!["-n", ns];
    args.extend(words.split_whitespace());
    ip(&args)
}

/// One node of the lab.
struct Node {
    ns: String,
    /// The pod's namespace, behind [`Node::host_veth`].
    pod_ns: String,
    uplink: &'static str,
    underlay: Ipv4Addr,
    pod: Ipv4Addr,
    pin_dir: PathBuf,
}

impl Node {
    /// The pod's host-side veth in the node's namespace.
    fn host_veth(&self) -> String {
        format!("wp-{}", &self.uplink[3..])
    }

    /// The config the agent would write for this node (ipip, MTU known).
    fn config(&self) -> NodeConfig {
        NodeConfig::new(self.underlay.octets(), Encap::Ipip).with_uplink_mtu(UPLINK_MTU)
    }

    /// Number of filters running `program` in `direction` of the uplink, as
    /// `tc filter show` lists them.
    fn filter_count(&self, direction: &str, program: &str) -> usize {
        let out = ip(&[
            "netns",
            "exec",
            &self.ns,
            "tc",
            "filter",
            "show",
            "dev",
            self.uplink,
            direction,
        ]);
        out.matches(program).count()
    }

    fn filter_counts(&self) -> (usize, usize) {
        (
            self.filter_count("egress", "weft_uplink_egress"),
            self.filter_count("ingress", "weft_uplink_ingress"),
        )
    }
}

/// Two nodes joined by a veth pair, and their pin directories; removed on drop.
struct Lab {
    n1: Node,
    n2: Node,
    pin_root: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let pid = std::process::id();
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/weft-test-{pid}/{tag}"));
        let node = |name: &str, uplink, underlay, pod| Node {
            ns: format!("wdf-{pid}-{tag}-{name}"),
            pod_ns: format!("wdf-{pid}-{tag}-p{}", &name[1..]),
            uplink,
            underlay,
            pod,
            pin_dir: pin_root.join(name),
        };
        let lab = Lab {
            n1: node("n1", "wu-n1", N1_UNDERLAY, N1_POD),
            n2: node("n2", "wu-n2", N2_UNDERLAY, N2_POD),
            pin_root,
        };
        // From here on, a panic drops `lab`, which removes whatever exists.
        for n in [&lab.n1, &lab.n2] {
            for ns in [&n.ns, &n.pod_ns] {
                ip(&["netns", "add", ns]);
                // No IPv6 (its autoconfiguration chatter is not what is
                // tested) and no reverse-path filter (the stranger test
                // injects sources by hand); nodes forward.
                for key in [
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.ip_forward=1",
                ] {
                    ip(&["netns", "exec", ns, "sysctl", "-qw", key]);
                }
                ip_in(ns, "link set lo up");
            }
            // The pod, wired as weft-cni wires one: its /32 and the pod MTU
            // on eth0, a default route via 169.254.1.1 (onlink) with a
            // permanent neighbour entry naming the host side's MAC, and a
            // host route to it on the node.
            let host_veth = n.host_veth();
            ip_in(
                &n.ns,
                &format!(
                    "link add {host_veth} mtu {POD_MTU} type veth peer name eth0 netns {}",
                    n.pod_ns
                ),
            );
            ip_in(&n.ns, &format!("link set {host_veth} up"));
            ip_in(&n.pod_ns, &format!("link set eth0 mtu {POD_MTU} up"));
            ip_in(&n.pod_ns, &format!("addr add {}/32 dev eth0", n.pod));
            ip_in(
                &n.pod_ns,
                "route add default via 169.254.1.1 dev eth0 onlink",
            );
            let gateway_mac = mac_of(&n.ns, &host_veth);
            ip_in(
                &n.pod_ns,
                &format!("neigh add 169.254.1.1 lladdr {gateway_mac} dev eth0 nud permanent"),
            );
            ip_in(&n.ns, &format!("route add {}/32 dev {host_veth}", n.pod));
        }
        ip(&[
            "-n",
            &lab.n1.ns,
            "link",
            "add",
            lab.n1.uplink,
            "type",
            "veth",
            "peer",
            "name",
            lab.n2.uplink,
            "netns",
            &lab.n2.ns,
        ]);
        for (n, peer) in [(&lab.n1, &lab.n2), (&lab.n2, &lab.n1)] {
            ip(&[
                "-n",
                &n.ns,
                "addr",
                "add",
                &format!("{}/24", n.underlay),
                "dev",
                n.uplink,
            ]);
            ip(&["-n", &n.ns, "link", "set", n.uplink, "up"]);
            // What the agent programs: the remote pod CIDR via the remote
            // node, with the pod MTU (room for the outer header).
            let peer_cidr = format!("{}/24", Ipv4Network::new(peer.pod, 24).unwrap().network());
            ip(&[
                "-n",
                &n.ns,
                "route",
                "add",
                &peer_cidr,
                "via",
                &peer.underlay.to_string(),
                "dev",
                n.uplink,
                "mtu",
                &POD_MTU.to_string(),
            ]);
        }
        lab
    }

    fn nodes(&self) -> [(&Node, &Node); 2] {
        [(&self.n1, &self.n2), (&self.n2, &self.n1)]
    }

    /// Loads, fills and attaches both nodes' uplink programs, as an agent in
    /// `ipip` mode does.
    fn bring_up(&self) -> (UplinkPrograms, UplinkPrograms) {
        let [(n1, _), (n2, _)] = self.nodes();
        (self.bring_up_node(n1, n2), self.bring_up_node(n2, n1))
    }

    fn bring_up_node(&self, node: &Node, peer: &Node) -> UplinkPrograms {
        let mut programs = UplinkPrograms::load(&node.pin_dir).expect("load");
        programs.set_config(&node.config()).expect("set_config");
        for n in [node, peer] {
            programs.set_node(n.underlay).expect("set_node");
            programs
                .set_pod_route(Ipv4Network::new(n.pod, 24).unwrap(), n.underlay)
                .expect("set_pod_route");
        }
        in_netns(&node.ns, || programs.attach(node.uplink)).expect("attach");
        programs
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in [&self.n1, &self.n2] {
            // Deleting a namespace deletes its veths and their filters.
            for ns in [&n.ns, &n.pod_ns] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        if let Err(e) = remove_pins(&self.pin_root) {
            eprintln!("cannot remove {}: {e}", self.pin_root.display());
        }
        if let Some(parent) = self.pin_root.parent() {
            // Succeeds only once the last test of this process is done.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn counter(programs: &UplinkPrograms, name: &str) -> u64 {
    let counters = programs.counters().expect("counters");
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
        .1
}

/// `ping -c COUNT -s SIZE` from `from`'s pod address to `to`'s, with DF so
/// that nothing is fragmented on the way; whether it got every answer.
fn ping(from: &Node, to: &Node, count: u32, size: u16) -> bool {
    let (size, source) = (size.to_string(), from.pod.to_string());
    support::ping(
        &from.pod_ns,
        to.pod,
        count,
        &["-M", "do", "-s", &size, "-I", &source],
    )
}

/// A `tcpdump` on `node`'s uplink (a tap sees frames before tc ingress, so
/// exactly as they crossed the wire), stopped after `count` packets or when
/// dropped.
struct Capture {
    child: std::process::Child,
    /// Kept open: tcpdump dies of SIGPIPE if it writes to a closed stderr.
    _stderr: std::process::ChildStderr,
}

impl Capture {
    fn start(node: &Node, filter: &str, count: u32) -> Capture {
        Capture::start_on(&node.ns, node.uplink, &[], filter, count)
    }

    /// A capture on `ifname` in namespace `ns`, with more tcpdump `options`.
    fn start_on(ns: &str, ifname: &str, options: &[&str], filter: &str, count: u32) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-nn", "-l", "-i", ifname])
            .args(options)
            .args(["-c", &count.to_string(), filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run tcpdump (install tcpdump)");
        // tcpdump says "listening on ..." once its socket is open.
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            match stderr.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("tcpdump ended: {}", String::from_utf8_lossy(&seen)),
            }
        }
        Capture {
            child,
            _stderr: stderr,
        }
    }

    /// The captured lines, waiting up to `timeout` for tcpdump to finish.
    fn lines(mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut out);
        out.lines().map(str::to_owned).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Only the tcpdump this test started (by its pid, through `Child`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP datagram from `from`'s pod to `to`'s arrives, and the answer too.
fn udp_round_trip(from: &Node, to: &Node, port: u16) {
    let server = in_netns(&to.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(to.pod, port))
    })
    .expect("bind server");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let client = in_netns(&from.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(from.pod, 0))
    })
    .expect("bind client");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client
        .send_to(b"through the tunnel", SocketAddrV4::new(to.pod, port))
        .unwrap();
    let mut buffer = [0u8; 64];
    let (n, peer) = server.recv_from(&mut buffer).expect("the datagram arrives");
    assert_eq!(&buffer[..n], b"through the tunnel");
    assert_eq!(peer.ip(), from.pod, "the inner source survives");
    server.send_to(b"and back", peer).unwrap();
    let (n, _) = client.recv_from(&mut buffer).expect("the answer arrives");
    assert_eq!(&buffer[..n], b"and back");
}

/// `bytes` bytes over TCP from `from`'s pod to `to`'s, echoed back whole: a
/// bulk transfer, so the uplinks see GSO packets (encapsulated whole, then
/// segmented with an outer header each) and GRO-merged ones to decapsulate.
fn tcp_bulk(from: &Node, to: &Node, port: u16, bytes: usize) {
    let listener = in_netns(&to.pod_ns, || {
        TcpListener::bind(SocketAddrV4::new(to.pod, port))
    })
    .expect("listen");
    let payload: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 1000) as u8).collect();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let (mut stream, peer) = listener.accept().expect("accept");
            assert_eq!(peer.ip(), from.pod);
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut received = vec![0u8; bytes];
            stream.read_exact(&mut received).expect("receive all");
            stream.write_all(&received).expect("echo");
        });
        let mut stream = in_netns(&from.pod_ns, || {
            let socket = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::empty(),
                None,
            )
            .unwrap();
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(from.pod, 0)),
            )
            .unwrap();
            nix::sys::socket::connect(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(to.pod, port)),
            )
            .expect("connect");
            TcpStream::from(socket)
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&payload).expect("send");
        let mut echoed = vec![0u8; bytes];
        stream.read_exact(&mut echoed).expect("echo arrives");
        assert!(echoed == payload, "the bytes arrive unchanged");
        server.join().unwrap();
    });
}

#[test]
fn pod_traffic_crosses_the_underlay_in_ip_in_ip() {
    let lab = Lab::new("traffic");
    let (p1, p2) = lab.bring_up();
    for (node, programs) in [(&lab.n1, &p1), (&lab.n2, &p2)] {
        assert!(in_netns(&node.ns, || programs.is_attached(node.uplink)).unwrap());
        assert_eq!(node.filter_counts(), (1, 1));
    }

    // On n2's wire: ICMP inside IP-in-IP from n1's underlay address.
    let capture = Capture::start(&lab.n2, "ip proto 4", 2);
    assert!(ping(&lab.n1, &lab.n2, 1, 56), "ping through the tunnel");
    let lines = capture.lines(Duration::from_secs(3));
    println!("capture on {}:\n{}", lab.n2.uplink, lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "IP {N1_UNDERLAY} > {N2_UNDERLAY}: IP {N1_POD} > {N2_POD}: ICMP echo request"
        ))),
        "the request crossed encapsulated: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "IP {N2_UNDERLAY} > {N1_UNDERLAY}: IP {N2_POD} > {N1_POD}: ICMP echo reply"
        ))),
        "the reply crossed encapsulated: {lines:?}"
    );

    // The largest packet the pod MTU allows fits the uplink once encapsulated.
    assert!(
        ping(&lab.n1, &lab.n2, 3, POD_MTU - 28),
        "full-size packets pass"
    );
    udp_round_trip(&lab.n1, &lab.n2, 7001);
    udp_round_trip(&lab.n2, &lab.n1, 7002);
    tcp_bulk(&lab.n1, &lab.n2, 7003, 4 << 20);

    for programs in [&p1, &p2] {
        let counters = programs.counters().unwrap();
        println!("{}: {counters:?}", programs.pin_dir().display());
        assert!(counter(programs, "encapsulate") >= 5, "{counters:?}");
        assert!(counter(programs, "decapsulate") >= 5, "{counters:?}");
        // ARP between the underlay addresses passes untouched.
        assert!(counter(programs, "pass_uplink") >= 1, "{counters:?}");
        for drop in [
            "drop_malformed",
            "drop_not_from_node",
            "drop_bad_checksum",
            "drop_fragment",
            "drop_too_big",
            "drop_bad_config",
        ] {
            assert_eq!(counter(programs, drop), 0, "{drop}: {counters:?}");
        }
    }
}

/// A counter of namespace `ns`'s IPv4 MIB (`Ip:` in `/proc/net/snmp`),
/// e.g. `ForwDatagrams`: what its stack forwarded.
fn ip_mib(ns: &str, name: &str) -> u64 {
    let out = ip(&["netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut ip_lines = out.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip_lines.next().unwrap(), ip_lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .1
        .parse()
        .unwrap()
}

/// An interface statistic (`tx_packets`, ...) of `ifname` in namespace `ns`.
fn link_stat(ns: &str, ifname: &str, stat: &str) -> u64 {
    let path = format!("/sys/class/net/{ifname}/statistics/{stat}");
    ip(&["netns", "exec", ns, "cat", &path])
        .trim()
        .parse()
        .unwrap()
}

/// `count` UDP datagrams from `from`'s pod to `to`'s pod `port`, one way;
/// asserts every one arrived.
fn udp_one_way(from: &Node, to: &Node, port: u16, count: usize) {
    let server = in_netns(&to.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(to.pod, port))
    })
    .expect("bind server");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let client = in_netns(&from.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(from.pod, 0))
    })
    .expect("bind client");
    let mut buffer = [0u8; 64];
    for i in 0..count {
        let message = format!("datagram {i}");
        client
            .send_to(message.as_bytes(), SocketAddrV4::new(to.pod, port))
            .unwrap();
        let (n, peer) = server.recv_from(&mut buffer).expect("the datagram arrives");
        assert_eq!(&buffer[..n], message.as_bytes());
        assert_eq!(peer.ip(), from.pod);
    }
}

#[test]
fn direct_redirect_hands_decapsulated_traffic_to_the_pod_past_the_stack() {
    let lab = Lab::new("redirect");
    let (p1, mut p2) = lab.bring_up();
    let (n1, n2) = (&lab.n1, &lab.n2);
    let veth = n2.host_veth();
    // What the agent does for n2's pod: its endpoint entry (the only
    // interfaces the uplink redirects to) and its guard.
    let mut guard = PodGuard::load(&n2.pin_dir).expect("load the guard");
    let veth_index = in_netns(&n2.ns, || nix::net::if_::if_nametoindex(veth.as_str())).unwrap();
    guard
        .set_endpoint(veth_index, n2.pod)
        .expect("set_endpoint");
    in_netns(&n2.ns, || guard.attach(&veth)).expect("attach the guard");
    p2.set_config(&n2.config().with_direct_redirect())
        .expect("set_config");

    // The first packet finds no neighbour entry for the pod on its veth:
    // the stack forwards it and resolves the pod's MAC.
    let forwarded = ip_mib(&n2.ns, "ForwDatagrams");
    assert!(ping(n1, n2, 1, 56), "ping with the direct redirect");
    assert!(
        ip_mib(&n2.ns, "ForwDatagrams") >= forwarded + 2,
        "request and reply"
    );
    let neighbours = ip_in(&n2.ns, &format!("neigh show dev {veth}"));
    assert!(neighbours.contains(&n2.pod.to_string()), "{neighbours}");

    // From then on, what arrives for the pod bypasses n2's forwarding:
    // neither its IP MIB nor the host veth's transmit count moves, and the
    // packets come out of the pod's eth0 as the stack would have sent them
    // (the pod's MAC from the neighbour entry, the veth's as source, TTL
    // 64 less one per node).
    let capture = Capture::start_on(&n2.pod_ns, "eth0", &["-e", "-v"], "udp port 7301", 1);
    let forwarded = ip_mib(&n2.ns, "ForwDatagrams");
    let veth_tx = link_stat(&n2.ns, &veth, "tx_packets");
    let pod_rx = link_stat(&n2.pod_ns, "eth0", "rx_packets");
    let (redirected, decapsulated) = (counter(&p2, "redirect"), counter(&p2, "decapsulate"));
    udp_one_way(n1, n2, 7301, 50);
    assert_eq!(
        ip_mib(&n2.ns, "ForwDatagrams"),
        forwarded,
        "n2 forwarded none"
    );
    assert_eq!(link_stat(&n2.ns, &veth, "tx_packets"), veth_tx);
    assert!(link_stat(&n2.pod_ns, "eth0", "rx_packets") >= pod_rx + 50);
    assert_eq!(counter(&p2, "redirect"), redirected + 50);
    assert_eq!(
        counter(&p2, "decapsulate"),
        decapsulated,
        "redirect replaces decapsulate"
    );
    let lines = capture.lines(Duration::from_secs(3)).join("\n");
    println!("capture on the pod's eth0:\n{lines}");
    let (pod_mac, veth_mac) = (mac_of(&n2.pod_ns, "eth0"), mac_of(&n2.ns, &veth));
    assert!(
        lines.contains(&format!("{veth_mac} > {pod_mac}")),
        "{lines}"
    );
    assert!(lines.contains("ttl 62"), "{lines}");
    assert!(lines.contains(&format!("{N1_POD}.")), "{lines}");

    // Everything still works through it: full-size pings, UDP both ways,
    // a bulk TCP transfer (GSO packets decapsulated and redirected whole).
    assert!(ping(n1, n2, 3, POD_MTU - 28), "full-size packets pass");
    udp_round_trip(n1, n2, 7302);
    udp_round_trip(n2, n1, 7303);
    let redirected = counter(&p2, "redirect");
    tcp_bulk(n1, n2, 7304, 4 << 20);
    let counters = p2.counters().unwrap();
    println!("n2 with the direct redirect: {counters:?}");
    assert!(counter(&p2, "redirect") > redirected + 20, "{counters:?}");
    for (name, value) in &counters {
        if name.starts_with("drop") {
            assert_eq!(*value, 0, "{name}: {counters:?}");
        }
    }
    // n1 never had it on: its stack forwarded n2's answers into its pod.
    assert_eq!(counter(&p1, "redirect"), 0);
    assert!(counter(&p1, "decapsulate") > 20);

    // Off again: the stack forwards every packet. The bulk transfer's last
    // segments (its close) may still be arriving: wait until the tunnel is
    // quiet, and count at least the 50 datagrams rather than exactly.
    p2.set_config(&n2.config()).expect("set_config");
    let mut quiet = counter(&p2, "decapsulate");
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = counter(&p2, "decapsulate");
        if now == quiet {
            break;
        }
        quiet = now;
    }
    let forwarded = ip_mib(&n2.ns, "ForwDatagrams");
    let veth_tx = link_stat(&n2.ns, &veth, "tx_packets");
    let (redirected, decapsulated) = (counter(&p2, "redirect"), counter(&p2, "decapsulate"));
    udp_one_way(n1, n2, 7305, 50);
    assert!(ip_mib(&n2.ns, "ForwDatagrams") >= forwarded + 50);
    assert!(link_stat(&n2.ns, &veth, "tx_packets") >= veth_tx + 50);
    assert!(counter(&p2, "decapsulate") >= decapsulated + 50);
    assert_eq!(
        counter(&p2, "redirect"),
        redirected,
        "nothing redirected once off"
    );
}

/// With the direct redirect on, what the FIB does not resolve to a pod veth
/// with a known neighbour still reaches its destination through the stack:
/// a pod veth without an endpoint entry, and an expiring TTL (the sender
/// gets "time exceeded" from n2, as without the redirect).
#[test]
fn direct_redirect_leaves_what_it_cannot_vouch_for_to_the_stack() {
    let lab = Lab::new("redirect-fallback");
    let (_p1, mut p2) = lab.bring_up();
    let (n1, n2) = (&lab.n1, &lab.n2);
    p2.set_config(&n2.config().with_direct_redirect())
        .expect("set_config");
    // No endpoint entry for n2's pod veth: never a redirect target.
    let redirected = counter(&p2, "redirect");
    assert!(ping(n1, n2, 3, 56), "ping through the stack");
    udp_one_way(n1, n2, 7401, 20);
    assert_eq!(counter(&p2, "redirect"), redirected);
    assert!(counter(&p2, "decapsulate") >= 23);

    // TTL 2 leaves n1 with 1: n2 must answer with ICMP time exceeded.
    let output = Command::new("ip")
        .args([
            "netns", "exec", &n1.pod_ns, "ping", "-n", "-c", "1", "-W", "2",
        ])
        .args(["-t", "2", "-I", &n1.pod.to_string(), &n2.pod.to_string()])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Time to live exceeded"), "{text}");
}

/// Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte IPv4 header with its checksum.
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: usize) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An Ethernet frame to `dst_mac` holding IP-in-IP from `outer_src` to
/// n2's underlay address around a UDP datagram (no UDP checksum) from n1's
/// pod to n2's pod `port`.
fn ipip_frame(dst_mac: [u8; 6], outer_src: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut inner = ipv4_header(N1_POD, N2_POD, 17, 20 + udp_len);
    inner.extend_from_slice(&4242u16.to_be_bytes());
    inner.extend_from_slice(&port.to_be_bytes());
    inner.extend_from_slice(&(udp_len as u16).to_be_bytes());
    inner.extend_from_slice(&[0, 0]);
    inner.extend_from_slice(payload);
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend(ipv4_header(outer_src, N2_UNDERLAY, 4, 20 + inner.len()));
    frame.extend(inner);
    frame
}

/// Sends `frame` as is out of `node`'s uplink (an AF_PACKET socket).
fn inject(node: &Node, frame: &[u8]) {
    let ifindex = in_netns(&node.ns, || nix::net::if_::if_nametoindex(node.uplink)).unwrap();
    in_netns(&node.ns, || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(sent, frame.len() as isize, "sendto: {error}");
        }
    });
}

/// The MAC address of `ifname` in namespace `ns`, as `ip` prints it.
fn mac_of(ns: &str, ifname: &str) -> String {
    let out = ip(&["-n", ns, "-br", "link", "show", ifname]);
    out.split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_owned()
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut bytes = [0u8; 6];
    for (b, part) in bytes.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    bytes
}

#[test]
fn ip_in_ip_from_a_stranger_is_dropped_and_counted() {
    let lab = Lab::new("stranger");
    let (_p1, p2) = lab.bring_up();
    let receiver = in_netns(&lab.n2.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(N2_POD, 7100))
    })
    .expect("bind");
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let n2_mac = mac_bytes(&mac_of(&lab.n2.ns, lab.n2.uplink));
    let mut buffer = [0u8; 64];

    // From an address outside the node set: dropped at n2's ingress.
    let dropped = counter(&p2, "drop_not_from_node");
    inject(&lab.n1, &ipip_frame(n2_mac, STRANGER, 7100, b"injected"));
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "nothing injected by a stranger reaches the pod"
    );
    assert_eq!(counter(&p2, "drop_not_from_node"), dropped + 1);

    // The same packet from a node is decapsulated and delivered.
    let decapsulated = counter(&p2, "decapsulate");
    inject(
        &lab.n1,
        &ipip_frame(n2_mac, N1_UNDERLAY, 7100, b"from node 1"),
    );
    let (n, from) = receiver
        .recv_from(&mut buffer)
        .expect("IP-in-IP from a node arrives");
    assert_eq!(&buffer[..n], b"from node 1");
    assert_eq!(from.ip(), N1_POD);
    assert_eq!(counter(&p2, "decapsulate"), decapsulated + 1);

    // Once node 1 is removed from n2's node set, node 1 is a stranger too.
    let mut p2 = p2;
    p2.remove_node(N1_UNDERLAY).expect("remove_node");
    inject(&lab.n1, &ipip_frame(n2_mac, N1_UNDERLAY, 7100, b"late"));
    assert!(receiver.recv_from(&mut buffer).is_err());
    assert_eq!(counter(&p2, "drop_not_from_node"), dropped + 2);
}

#[test]
fn restart_adopts_maps_and_filters_without_duplicates() {
    let lab = Lab::new("restart");
    let (p1, p2) = lab.bring_up();
    let first_config = p1.config().unwrap();
    let first_routes = p1.pod_routes().unwrap();
    let first_nodes = p1.nodes().unwrap();
    // An agent killed: its handles go, the pins and filters stay.
    drop(p1);
    assert_eq!(
        lab.n1.filter_counts(),
        (1, 1),
        "the filters outlive the agent"
    );
    assert!(
        ping(&lab.n1, &lab.n2, 1, 56),
        "traffic while n1 has no agent"
    );

    // What `weftctl trace` reads, with no program loaded.
    let pinned = read_pinned_maps(&lab.n1.pin_dir).expect("read_pinned_maps");
    assert_eq!(pinned.config, Some(first_config));
    assert_eq!(
        pinned.pod_routes,
        vec![
            (
                PodCidrKey::new([10, 244, 1, 0], 24),
                RemoteNode::new(N1_UNDERLAY.octets())
            ),
            (
                PodCidrKey::new([10, 244, 2, 0], 24),
                RemoteNode::new(N2_UNDERLAY.octets())
            ),
        ]
    );
    assert_eq!(
        pinned.nodes,
        vec![N1_UNDERLAY.octets(), N2_UNDERLAY.octets()]
    );
    assert!(pinned.endpoints.is_empty());

    // The next agent adopts the maps...
    let mut p1 = UplinkPrograms::load(&lab.n1.pin_dir).expect("second load");
    assert_eq!(p1.config().unwrap(), first_config);
    assert_eq!(p1.pod_routes().unwrap(), first_routes);
    assert_eq!(p1.nodes().unwrap(), first_nodes);
    assert!(in_netns(&lab.n1.ns, || p1.is_attached(lab.n1.uplink)).unwrap());
    // ...and the filters: the same build's programs over the same maps
    // are adopted as they are (a newer build's would be swapped in place).
    let ids_before = filter_program_ids(&lab.n1);
    let encapsulated = counter(&p1, "encapsulate");
    for _ in 0..3 {
        in_netns(&lab.n1.ns, || p1.attach(lab.n1.uplink)).expect("attach again");
        assert_eq!(lab.n1.filter_counts(), (1, 1), "still one filter each way");
    }
    let ids_after = filter_program_ids(&lab.n1);
    assert_eq!(
        ids_before, ids_after,
        "the same programs, adopted: no churn"
    );
    assert!(ping(&lab.n1, &lab.n2, 2, 56), "traffic after the restart");
    assert!(
        counter(&p1, "encapsulate") >= encapsulated + 2,
        "counted in the adopted counter map"
    );
    udp_round_trip(&lab.n2, &lab.n1, 7201);
    drop(p2);
}

/// The program ids `tc` reports for n1's uplink filters (egress, ingress).
fn filter_program_ids(node: &Node) -> (String, String) {
    let id = |direction| {
        let out = ip(&[
            "netns",
            "exec",
            &node.ns,
            "tc",
            "filter",
            "show",
            "dev",
            node.uplink,
            direction,
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .unwrap_or_else(|| panic!("no program id in {out}"))
            .to_owned()
    };
    (id("egress"), id("ingress"))
}

#[test]
fn detach_uplink_removes_both_filters_and_only_them() {
    let lab = Lab::new("detach");
    let (p1, _p2) = lab.bring_up();
    // A filter that is not Weft's, which must survive.
    ip(&[
        "netns",
        "exec",
        &lab.n1.ns,
        "tc",
        "filter",
        "add",
        "dev",
        lab.n1.uplink,
        "egress",
        "pref",
        "9",
        "u32",
        "match",
        "u32",
        "0",
        "0",
        "classid",
        "1:1",
    ]);
    assert!(in_netns(&lab.n1.ns, || detach_uplink(lab.n1.uplink)).expect("detach"));
    assert_eq!(lab.n1.filter_counts(), (0, 0));
    assert!(!in_netns(&lab.n1.ns, || p1.is_attached(lab.n1.uplink)).unwrap());
    assert!(
        lab.n1.filter_count("egress", "flowid 1:1") == 1,
        "other filters stay"
    );
    assert!(
        !in_netns(&lab.n1.ns, || detach_uplink(lab.n1.uplink)).expect("detach again"),
        "nothing left to detach"
    );
    // An interface that never had a clsact qdisc (a node that never ran
    // ipip): nothing to detach, not an error.
    assert!(!in_netns(&lab.n1.ns, || detach_uplink("lo")).expect("detach from lo"));
    assert!(!in_netns(&lab.n1.ns, || p1.is_attached("lo")).unwrap());
    let error = in_netns(&lab.n1.ns, || detach_uplink("wu-nope")).unwrap_err();
    assert!(matches!(error, BpfError::NoSuchInterface { .. }), "{error}");
}

#[test]
fn map_entries_are_upserts_and_removals_are_idempotent() {
    let lab = Lab::new("maps");
    let mut p = UplinkPrograms::load(&lab.n1.pin_dir).expect("load");
    assert_eq!(
        p.config().unwrap(),
        NodeConfig::default(),
        "unwritten: mode none"
    );
    let config = lab.n1.config().with_cross_subnet([198, 18, 0, 0], 24);
    p.set_config(&config).unwrap();
    assert_eq!(p.config().unwrap(), config);

    // Host bits of a CIDR are ignored; a second set replaces the node.
    let cidr: Ipv4Network = "10.244.7.77/24".parse().unwrap();
    p.set_pod_route(cidr, N1_UNDERLAY).unwrap();
    p.set_pod_route(cidr, N2_UNDERLAY).unwrap();
    p.set_pod_route("10.244.0.0/16".parse().unwrap(), STRANGER)
        .unwrap();
    assert_eq!(
        p.pod_routes().unwrap(),
        vec![
            ("10.244.0.0/16".parse().unwrap(), STRANGER),
            ("10.244.7.0/24".parse().unwrap(), N2_UNDERLAY),
        ]
    );
    p.remove_pod_route(cidr).unwrap();
    p.remove_pod_route(cidr).unwrap();
    assert_eq!(p.pod_routes().unwrap().len(), 1);

    p.set_node(N2_UNDERLAY).unwrap();
    p.set_node(N1_UNDERLAY).unwrap();
    p.set_node(N2_UNDERLAY).unwrap();
    assert_eq!(p.nodes().unwrap(), vec![N1_UNDERLAY, N2_UNDERLAY]);
    p.remove_node(N2_UNDERLAY).unwrap();
    p.remove_node(N2_UNDERLAY).unwrap();
    assert_eq!(p.nodes().unwrap(), vec![N1_UNDERLAY]);

    let error = in_netns(&lab.n1.ns, || p.attach("wu-nope")).unwrap_err();
    assert!(matches!(error, BpfError::NoSuchInterface { .. }), "{error}");
    assert!(
        read_pinned_maps(&lab.pin_root.join("never-loaded")).is_err(),
        "a missing pin directory is an error, not an empty node"
    );
}

/// `bpf(BPF_MAP_CREATE)` of a per-CPU array of `entries` u64 counters, then
/// `bpf(BPF_OBJ_PIN)` at `path`: the counter map an older build pinned.
fn pin_old_counter_map(path: &Path, entries: u32) {
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    pin_array(path, BPF_MAP_TYPE_PERCPU_ARRAY, 8, entries);
}

/// `bpf(BPF_MAP_CREATE)` of an array of `map_type` (4-byte keys) with
/// `entries` values of `value_size` bytes, then `bpf(BPF_OBJ_PIN)` at `path`.
fn pin_array(path: &Path, map_type: u32, value_size: u32, entries: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&map_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&value_size.to_ne_bytes());
    attr[12..16].copy_from_slice(&entries.to_ne_bytes());
    // SAFETY: a zeroed `union bpf_attr` prefix with the map-create fields set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: `pathname` points at a NUL-terminated string that outlives the call.
    let pinned =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len() as u32) };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor created above; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN: {error}");
}

#[test]
fn an_older_counter_map_is_replaced_other_layouts_are_refused() {
    let lab = Lab::new("upgrade");
    std::fs::create_dir_all(&lab.n1.pin_dir).unwrap();
    // The 6 counters of the build before the uplink programs.
    pin_old_counter_map(&lab.n1.pin_dir.join("WEFT_COUNTERS"), 6);
    let p = UplinkPrograms::load(&lab.n1.pin_dir).expect("an old counter map is upgraded");
    let count = weft_common::verdict::COUNTER_COUNT;
    assert_eq!(p.counters().unwrap().len(), count);
    let info = aya::maps::MapInfo::from_pin(lab.n1.pin_dir.join("WEFT_COUNTERS")).unwrap();
    assert_eq!(
        info.max_entries() as usize,
        count,
        "the new counter map is pinned"
    );
    drop(p);

    // The 16-byte config of the build before the Service range: replaced
    // (the agent writes the whole config again), and written as this one.
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    std::fs::create_dir_all(lab.pin_root.join("n4")).unwrap();
    pin_array(
        &lab.pin_root.join("n4").join("WEFT_CONFIG"),
        BPF_MAP_TYPE_ARRAY,
        16,
        1,
    );
    let mut p = UplinkPrograms::load(&lab.pin_root.join("n4")).expect("an old config is upgraded");
    let config =
        NodeConfig::new([198, 18, 0, 4], Encap::Ipip).with_service_range([10, 96, 0, 0], 12);
    p.set_config(&config).unwrap();
    assert_eq!(p.config().unwrap(), config);
    drop(p);

    // A node map of another shape is never replaced: it holds state.
    std::fs::create_dir_all(&lab.n2.pin_dir).unwrap();
    pin_old_counter_map(&lab.n2.pin_dir.join("WEFT_NODES"), 6);
    let error = UplinkPrograms::load(&lab.n2.pin_dir).unwrap_err();
    assert!(
        matches!(error, BpfError::IncompatiblePinnedMap { .. }),
        "{error}"
    );
    assert!(
        !lab.n2.pin_dir.join("WEFT_CONFIG").exists(),
        "nothing pinned beside it"
    );
    // A counter map with more counters than this build knows is a newer
    // build's: refused, not shrunk.
    std::fs::create_dir_all(lab.pin_root.join("n3")).unwrap();
    pin_old_counter_map(
        &lab.pin_root.join("n3").join("WEFT_COUNTERS"),
        count as u32 + 5,
    );
    assert!(matches!(
        UplinkPrograms::load(&lab.pin_root.join("n3")).unwrap_err(),
        BpfError::IncompatiblePinnedMap { .. }
    ));
}
