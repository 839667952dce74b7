//! NetworkPolicy's state on a lab (issue #10, items 3 to 5): replies of
//! allowed connections and the ICMP errors about them pass where nothing
//! allows their direction; a policy change cuts an established connection
//! it now denies within a second and leaves the allowed ones alone; a pod
//! a policy isolates gets no denied packet from its first moment; and
//! kube-proxy's DNAT (the iptables rules it installs for a ClusterIP, in
//! the lab's node namespaces) is judged after the DNAT, against the
//! backend pod. Real agents, weft-cni, weftctl and kernel. Needs root.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use weft_lab::probe::{Echo, icmp_echo, tcp_exchange, udp_exchange};
use weft_lab::topology::netns_path;
use weft_tests::*;

fn netns_of(lab: &Lab, pod: &str) -> PathBuf {
    netns_path(&lab.pod(pod).netns)
}

fn ip_of(lab: &Lab, pod: &str) -> Ipv4Addr {
    lab.pod(pod).address().expect("the pod has an address")
}

/// Whether a TCP exchange from `from` to `to` succeeds.
fn tcp_to(lab: &Lab, from: &str, to: SocketAddrV4) -> bool {
    tcp_exchange(
        &netns_of(lab, from),
        to,
        "hello",
        Duration::from_millis(400),
        2,
    )
    .is_ok()
}

fn tcp(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    tcp_to(lab, from, SocketAddrV4::new(ip_of(lab, to), port))
}

fn udp(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    udp_exchange(
        &netns_of(lab, from),
        SocketAddrV4::new(ip_of(lab, to), port),
        "ping",
        Duration::from_millis(400),
        3,
    )
    .is_ok()
}

fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    icmp_echo(
        &netns_of(lab, from),
        ip_of(lab, to),
        Echo::new(Duration::from_millis(400), 3),
    )
    .is_ok()
}

/// Waits (up to 5 s) until `probe` answers `want`.
fn until(what: &str, want: bool, probe: impl Fn() -> bool) {
    eventually(what, Duration::from_secs(5), || {
        if probe() == want {
            Ok(())
        } else {
            Err(format!("still {}", !want))
        }
    });
}

/// Runs `f` on a thread of its own inside network namespace `netns`.
fn spawn_in<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        weft_dataplane::netns::run_in(&netns, f)
            .unwrap_or_else(|e| panic!("in {}: {e}", netns.display()))
    })
}

/// The client may send only to the servers; nothing may reach it. The
/// servers take anything from the client and may send to nobody.
const BOTH_ENDS_ISOLATED: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {app: server}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: y}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {app: client}}
";

/// Client `c` (x) on node1, servers `near` (y, node1) and `far` (y, node2),
/// every pod serving TCP 80 and UDP 53.
fn client_and_servers(tag: &str) -> Lab {
    let lab = Lab::up(tag, 2, 0);
    let ports = "http:80/tcp,dns:53/udp";
    lab.pod_add("node1", "c", "x", "app=client", ports);
    lab.pod_add("node1", "near", "y", "app=server", ports);
    lab.pod_add("node2", "far", "y", "app=server", ports);
    lab
}

#[test]
fn replies_pass_when_both_ends_are_isolated() {
    let lab = client_and_servers("st-reply");
    for server in ["near", "far"] {
        assert!(
            tcp(&lab, server, "c", 80),
            "{server} reaches c before policy"
        );
    }
    lab.apply(BOTH_ENDS_ISOLATED);
    // Nothing allows the servers' direction: this is what isolates.
    until("far -> c denied", false, || tcp(&lab, "far", "c", 80));
    for server in ["near", "far"] {
        assert!(!tcp(&lab, server, "c", 80), "TCP {server} -> c is denied");
        assert!(!udp(&lab, server, "c", 53), "UDP {server} -> c is denied");
        assert!(!ping(&lab, server, "c"), "ICMP {server} -> c is denied");
        // The client's direction is allowed, and every reply comes back.
        assert!(tcp(&lab, "c", server, 80), "TCP c -> {server} and back");
        assert!(udp(&lab, "c", server, 53), "UDP c -> {server} and back");
        assert!(ping(&lab, "c", server), "ICMP echo c -> {server} and back");
    }
}

/// Sends one datagram on a UDP socket connected to `dst` and reads: the
/// error the socket reports (`ECONNREFUSED` when an ICMP port unreachable
/// came back), or `None` if it timed out or got an answer.
fn connected_udp_error(dst: SocketAddrV4) -> Option<ErrorKind> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    socket.connect(dst).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        socket.send(b"anyone?").ok()?;
        match socket.recv(&mut buf) {
            Ok(_) => return None,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Some(e.kind()),
        }
    }
    None
}

#[test]
fn port_unreachable_of_an_allowed_udp_flow_reaches_its_isolated_sender() {
    let lab = client_and_servers("st-icmp");
    lab.apply(BOTH_ENDS_ISOLATED);
    until("far -> c denied", false, || tcp(&lab, "far", "c", 80));
    for server in ["near", "far"] {
        // Port 9999 has no listener: the server's kernel answers with an
        // ICMP port unreachable, which only the tracker lets back in.
        let dst = SocketAddrV4::new(ip_of(&lab, server), 9999);
        let got = spawn_in(netns_of(&lab, "c"), move || connected_udp_error(dst))
            .join()
            .unwrap();
        assert_eq!(
            got,
            Some(ErrorKind::ConnectionRefused),
            "c's UDP socket connected to {server}:9999 learns the port is closed"
        );
        assert!(
            udp(&lab, "c", server, 53),
            "and UDP to a listener is answered"
        );
    }
}

/// Request/response on one long-lived TCP connection until `stop`: the
/// instant of every answer, and how the loop ended.
struct Loop {
    replies: Vec<Instant>,
    /// When the request that got no answer was sent.
    unanswered: Option<Instant>,
    error: Option<String>,
    retransmits: u32,
}

/// `tcpi_total_retrans` of a connected TCP socket: segments the kernel
/// had to send again, i.e. packets lost on the way.
fn total_retransmits(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: TCP_INFO fills at most `len` bytes of a `tcp_info`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO");
        info.tcpi_total_retrans
    }
}

fn request_loop(dst: SocketAddrV4, stop: Arc<AtomicBool>) -> Loop {
    let mut out = Loop {
        replies: Vec::new(),
        unanswered: None,
        error: None,
        retransmits: 0,
    };
    let mut stream = match TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 8];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let request = n.to_be_bytes();
        let sent = Instant::now();
        if let Err(e) = stream.write_all(&request) {
            out.error = Some(format!("request {n}: {e}"));
            break;
        }
        match stream.read_exact(&mut buf) {
            Ok(()) if buf == request => out.replies.push(Instant::now()),
            Ok(()) => {
                out.error = Some(format!("request {n}: a wrong echo"));
                break;
            }
            Err(e) => {
                out.error = Some(format!("reply {n}: {e}"));
                out.unanswered = Some(sent);
                break;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    out.retransmits = total_retransmits(&stream);
    out
}

#[test]
fn a_policy_change_cuts_a_denied_connection_within_a_second_and_spares_the_allowed() {
    let lab = Lab::up("st-cut", 2, 0);
    lab.pod_add("node2", "s", "y", "app=server", "http:80/tcp");
    lab.pod_add("node1", "keep", "x", "app=keep", "");
    lab.pod_add("node1", "cut", "x", "app=cut", "");
    let dst = SocketAddrV4::new(ip_of(&lab, "s"), 80);
    let stop = Arc::new(AtomicBool::new(false));
    let loops = ["keep", "cut"].map(|client| {
        let stop = stop.clone();
        spawn_in(netns_of(&lab, client), move || request_loop(dst, stop))
    });
    // Both connections running before the change.
    thread::sleep(Duration::from_millis(500));
    // Measured from just before `lab apply` writes the policy into the
    // datastore: the agent's own moment of having it is not visible from
    // outside, so the figure is an upper bound that also holds the
    // agent's pickup (inotify), compilation and map writes.
    let applied = Instant::now();
    lab.apply(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-keep, namespace: y}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: keep}}
",
    );
    let apply_took = applied.elapsed();
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let [keep, cut] = loops.map(|l| l.join().unwrap());

    let after = |replies: &[Instant]| replies.iter().filter(|t| **t > applied).count();
    let last_cut = cut
        .replies
        .last()
        .copied()
        .expect("cut was answered before");
    let cut_after = last_cut.saturating_duration_since(applied);
    let keep_gap = keep
        .replies
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let unanswered = cut.unanswered.map(|t| t.saturating_duration_since(applied));
    println!(
        "lab apply took {apply_took:?}; denied connection: last reply {cut_after:?} after the \
         apply began ({} replies after it), first unanswered request sent {unanswered:?} after \
         it ({:?}); allowed connection: {} replies, {} after the apply, longest gap \
         {keep_gap:?}, {} retransmissions",
        after(&cut.replies),
        cut.error,
        keep.replies.len(),
        after(&keep.replies),
        keep.retransmits,
    );
    assert!(
        cut_after < Duration::from_secs(1),
        "the denied connection still answered {cut_after:?} after the change"
    );
    assert!(
        unanswered.is_some_and(|t| t < Duration::from_secs(1)),
        "the denied connection stopped answering within a second"
    );
    assert_eq!(keep.error, None, "the allowed connection never failed");
    assert!(
        after(&keep.replies) > 50,
        "the allowed connection kept going"
    );
    // A lost segment costs at least TCP's 200 ms minimum RTO.
    assert!(
        keep_gap < Duration::from_millis(150),
        "the allowed connection stalled for {keep_gap:?}"
    );
    assert_eq!(
        keep.retransmits, 0,
        "nothing was lost on the allowed connection"
    );
}

/// Packets an `AF_PACKET` socket in network namespace `netns` receives
/// (every interface, also ones that appear later), by IPv4 source, until
/// `stop`; `ready` is raised once the socket is open, with whether the
/// namespace had an `eth0` at that moment.
fn capture(
    netns: PathBuf,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<bool>,
) -> thread::JoinHandle<BTreeMap<Ipv4Addr, u64>> {
    spawn_in(netns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // This thread's namespace's interfaces.
        let eth0 = std::fs::read_to_string("/proc/thread-self/net/dev")
            .expect("the namespace's interfaces")
            .contains("eth0:");
        ready.send(eth0).unwrap();
        let mut seen = BTreeMap::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is writable for its length; `from` for its size.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Ok(packet) = etherparse::SlicedPacket::from_ethernet(&buf[..n as usize])
                && let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net
            {
                *seen.entry(ip.header().source_addr()).or_insert(0) += 1;
            }
        }
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        seen
    })
}

/// Sends UDP to port 53 of every address of `cidr` (a /24), over and
/// over, from network namespace `netns` until `stop`; sends that fail
/// (no route yet, the neighbour unresolved) are retried on the next round.
fn flood(
    netns: PathBuf,
    cidr: ipnetwork::Ipv4Network,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    spawn_in(netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            for dst in cidr.iter().skip(1).take(254) {
                if socket.send_to(b"denied?", (dst, 53)).is_ok() {
                    sent += 1;
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

/// Everything into and out of namespace y is denied but to and from
/// pods `app=friend` of namespace x.
const ONLY_FRIENDS: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-friends, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {app: friend}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {app: friend}}
";

#[test]
fn a_pod_isolated_by_policy_never_sees_a_denied_packet_from_its_first_moment() {
    let lab = Lab::up("st-start", 2, 0);
    let dns = "dns:53/udp";
    lab.pod_add("node1", "friend", "x", "app=friend", dns);
    lab.pod_add("node1", "foe-far", "x", "app=foe", dns);
    lab.pod_add("node2", "foe-near", "x", "app=foe", dns);
    lab.apply(ONLY_FRIENDS);
    // The policy is in node2's maps once it isolates a pod there.
    lab.pod_add("node2", "old", "y", "app=new", dns);
    until("foe-near -> old denied", false, || {
        udp(&lab, "foe-near", "old", 53)
    });
    assert!(udp(&lab, "friend", "old", 53), "friend -> old allowed");

    let stop = Arc::new(AtomicBool::new(false));
    let cidr: ipnetwork::Ipv4Network = lab.node("node2").pod_cidr.parse().unwrap();
    let senders =
        ["friend", "foe-far", "foe-near"].map(|pod| flood(netns_of(&lab, pod), cidr, stop.clone()));
    // Captures at the foes and the friend: what the new pod sends.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let peers = ["friend", "foe-far", "foe-near"]
        .map(|pod| capture(netns_of(&lab, pod), stop.clone(), ready_tx.clone()));
    for _ in &peers {
        ready_rx.recv().unwrap();
    }
    // The new pod's namespace is created by `lab pod add` just before its
    // CNI ADD: open the capture in it as soon as it exists, before its
    // eth0 does.
    let new_netns = netns_path(&weft_lab::plan::pod_netns(&lab.name, "new"));
    let watch = {
        let (stop, ready_tx, new_netns) = (stop.clone(), ready_tx.clone(), new_netns.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                // Until `ip netns add` has bind-mounted it, the file is no
                // network namespace and entering it fails.
                let entered = std::fs::File::open(&new_netns).ok().filter(|f| {
                    use std::os::fd::AsFd;
                    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                });
                if entered.is_some() {
                    // This thread is now inside; capture from here.
                    return capture(new_netns, stop, ready_tx);
                }
                assert!(
                    Instant::now() < deadline,
                    "the new pod's namespace never appeared"
                );
                thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // The new pod sends from its first moment too: to both foes (denied)
    // and to the friend (allowed).
    let new_sender = {
        let (stop, new_netns) = (stop.clone(), new_netns.clone());
        let targets = ["friend", "foe-far", "foe-near"].map(|p| ip_of(&lab, p));
        thread::spawn(move || {
            while std::fs::File::open(&new_netns).is_err() {
                thread::sleep(Duration::from_micros(200));
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                match weft_dataplane::netns::run_in(&new_netns, {
                    let stop = stop.clone();
                    move || {
                        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                        socket.set_nonblocking(true)?;
                        let mut sent = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            for dst in targets {
                                if socket.send_to(b"from new", (dst, 53)).is_ok() {
                                    sent += 1;
                                }
                            }
                            thread::sleep(Duration::from_millis(1));
                        }
                        Ok::<u64, std::io::Error>(sent)
                    }
                }) {
                    Ok(result) => return result.unwrap(),
                    Err(_) if attempts < 100_000 => thread::sleep(Duration::from_micros(200)),
                    Err(e) => panic!("entering the new pod: {e}"),
                }
            }
        })
    };
    let added = Instant::now();
    lab.pod_add("node2", "new", "y", "app=new", dns);
    let add_took = added.elapsed();
    let had_eth0 = ready_rx.recv().unwrap();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let sent = senders.map(|s| s.join().unwrap());
    let new_sent = new_sender.join().unwrap();
    let at_new = watch.join().unwrap().join().unwrap();
    let [at_friend, at_foe_far, at_foe_near] = peers.map(|p| p.join().unwrap());
    let new_ip = ip_of(&lab, "new");
    let from = |seen: &BTreeMap<Ipv4Addr, u64>, pod: &str| {
        seen.get(&ip_of(&lab, pod)).copied().unwrap_or(0)
    };
    let to = |seen: &BTreeMap<Ipv4Addr, u64>| seen.get(&new_ip).copied().unwrap_or(0);
    println!(
        "pod add took {add_took:?}; capture opened before eth0: {}; sent {sent:?} \
         (friend, foe-far, foe-near), new sent {new_sent}; at new: from friend {}, from \
         foe-far {}, from foe-near {}; from new: at friend {}, at foe-far {}, at foe-near {}",
        !had_eth0,
        from(&at_new, "friend"),
        from(&at_new, "foe-far"),
        from(&at_new, "foe-near"),
        to(&at_friend),
        to(&at_foe_far),
        to(&at_foe_near),
    );
    assert!(
        !had_eth0,
        "the capture began before the pod's interface existed"
    );
    assert!(
        from(&at_new, "friend") > 0,
        "the capture sees allowed traffic"
    );
    assert_eq!(
        from(&at_new, "foe-far"),
        0,
        "nothing from the foe on another node"
    );
    assert_eq!(
        from(&at_new, "foe-near"),
        0,
        "nothing from the foe on the node"
    );
    assert!(to(&at_friend) > 0, "the new pod's allowed packets arrive");
    assert_eq!(to(&at_foe_far), 0, "none of its packets reach the far foe");
    assert_eq!(
        to(&at_foe_near),
        0,
        "none of its packets reach the near foe"
    );
}

/// A ClusterIP Service as kube-proxy sees it: its address and port, and
/// the backends (pod address, target port) it DNATs to.
struct Service {
    name: &'static str,
    cluster_ip: Ipv4Addr,
    port: u16,
    protocol: &'static str,
    backends: Vec<SocketAddrV4>,
}

/// The nat table rules kube-proxy in iptables mode installs for
/// `services` (pkg/proxy/iptables/proxier.go): KUBE-SERVICES from
/// PREROUTING and OUTPUT, one KUBE-SVC-* chain per Service port that
/// marks traffic from outside `cluster_cidr` for masquerading and picks a
/// backend with `statistic --mode random` (probability 1/n, 1/(n-1), ...),
/// one KUBE-SEP-* chain per backend that marks hairpin traffic and DNATs
/// to the backend's address and target port, and KUBE-POSTROUTING's
/// masquerade of marked packets. For `iptables-restore --noflush`.
fn kube_proxy_rules(cluster_cidr: &str, services: &[Service]) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    let mut rules = vec![
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            .to_string(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
            .into(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into(),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.into(),
    ];
    for service in services {
        let svc = format!("KUBE-SVC-{}", service.name.to_ascii_uppercase());
        let (ip, port, proto) = (service.cluster_ip, service.port, service.protocol);
        let comment = format!("y/{}:p cluster IP", service.name);
        chains.push(svc.clone());
        rules.push(format!(
            r#"-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment "{comment}" -m {proto} --dport {port} -j {svc}"#
        ));
        rules.push(format!(
            r#"-A {svc} ! -s {cluster_cidr} -d {ip}/32 -p {proto} -m comment --comment "{comment}" -m {proto} --dport {port} -j KUBE-MARK-MASQ"#
        ));
        let n = service.backends.len();
        for (i, backend) in service.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}{i}", service.name.to_ascii_uppercase());
            chains.push(sep.clone());
            let comment = format!("y/{}:p -> {backend}", service.name);
            let left = n - i;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.11} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                r#"-A {svc} -m comment --comment "{comment}" {pick}-j {sep}"#
            ));
            rules.push(format!(
                r#"-A {sep} -s {}/32 -m comment --comment "{comment}" -j KUBE-MARK-MASQ"#,
                backend.ip()
            ));
            rules.push(format!(
                r#"-A {sep} -p {proto} -m comment --comment "{comment}" -m {proto} -j DNAT --to-destination {backend}"#
            ));
        }
    }
    let mut text = String::from("*nat\n");
    for chain in chains {
        text += &format!(":{chain} - [0:0]\n");
    }
    for rule in rules {
        text += &rule;
        text.push('\n');
    }
    text + "COMMIT\n"
}

/// Installs `rules` into node `node`'s network namespace.
fn iptables_restore(lab: &Lab, node: &str, rules: &str) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node(node).netns])
        .args(["iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iptables-restore on {node}: {}\n{rules}",
        show(&out)
    );
}

/// The backends take the client on their named port `web` (8080 on
/// `local`, 8090 on `remote`) and UDP `dns`, not on `alt`, and send to
/// nobody; the client may send to the backends on their target ports
/// (and 8081) and nothing may reach it.
const SERVICE_POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend, namespace: y}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {app: client}}
    ports: [{port: web}, {port: dns, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {app: backend}}
    ports: [{port: 8080}, {port: 8090}, {port: 8081}, {port: 5353, protocol: UDP}]
";

/// The client may send nowhere (and still receives nothing).
const CLIENT_SENDS_NOTHING: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
";

#[test]
fn kube_proxy_dnat_is_judged_against_the_backend_pod_and_its_ports() {
    kube_proxy_dnat(Lab::up("st-svc", 2, 0));
}

/// The same in mode vxlan: a remote backend's traffic leaves through the
/// vxlan device, where `weft_tunnel_egress` judges the deferred egress.
#[test]
fn kube_proxy_dnat_is_judged_after_the_dnat_in_vxlan_mode() {
    let mut options = up_options(2, 0);
    options.encap = weft_lab::state::Encap::Vxlan;
    kube_proxy_dnat(Lab::build("st-svcvx", options));
}

fn kube_proxy_dnat(lab: Lab) {
    lab.pod_add("node1", "c", "x", "app=client", "");
    // The named port `web` is a different number on each backend.
    lab.pod_add(
        "node1",
        "local",
        "y",
        "app=backend",
        "web:8080/tcp,alt:8081/tcp,dns:5353/udp",
    );
    lab.pod_add(
        "node2",
        "remote",
        "y",
        "app=backend",
        "web:8090/tcp,alt:8081/tcp,dns:5353/udp",
    );
    let at = |pod: &str, port: u16| SocketAddrV4::new(ip_of(&lab, pod), port);
    let service = |name, last: u8, port, protocol, backends: Vec<SocketAddrV4>| Service {
        name,
        cluster_ip: Ipv4Addr::new(10, 96, 0, last),
        port,
        protocol,
        backends,
    };
    let services = vec![
        service("local", 10, 80, "tcp", vec![at("local", 8080)]),
        service("remote", 11, 80, "tcp", vec![at("remote", 8090)]),
        service(
            "both",
            12,
            80,
            "tcp",
            vec![at("local", 8080), at("remote", 8090)],
        ),
        service(
            "alt",
            13,
            81,
            "tcp",
            vec![at("local", 8081), at("remote", 8081)],
        ),
        service("dns", 14, 53, "udp", vec![at("remote", 5353)]),
    ];
    let rules = kube_proxy_rules("10.244.0.0/16", &services);
    for node in ["node1", "node2"] {
        iptables_restore(&lab, node, &rules);
    }
    let vip = |i: usize| SocketAddrV4::new(services[i].cluster_ip, services[i].port);
    let via = |i: usize| tcp_to(&lab, "c", vip(i));
    let dns = || {
        udp_exchange(
            &netns_of(&lab, "c"),
            vip(4),
            "ping",
            Duration::from_millis(400),
            3,
        )
        .is_ok()
    };

    // No policy: every Service answers through kube-proxy's DNAT.
    for (i, s) in services.iter().enumerate().take(4) {
        assert!(via(i), "{} answers before any policy", s.name);
    }
    assert!(dns(), "the UDP Service answers before any policy");

    lab.apply(SERVICE_POLICIES);
    until("alt denied by the backends' named port", false, || via(3));
    // The client's egress names only the backends and their target ports,
    // never the ClusterIP or port 80: judged after the DNAT, it allows.
    // The client is isolated for ingress: the replies, from the ClusterIP
    // after the reverse NAT, come back as replies.
    assert!(via(0), "ClusterIP -> the backend on the client's node");
    assert!(via(1), "ClusterIP -> the backend on another node");
    for n in 0..10 {
        assert!(via(2), "ClusterIP -> either backend (try {n})");
    }
    assert!(
        dns(),
        "UDP ClusterIP -> a backend's named port on another node"
    );
    // Port 8081 is allowed by the client's egress but is not the
    // backends' `web`: their ingress denies it, behind the ClusterIP too.
    assert!(!via(3), "ClusterIP -> alt is denied by the backends");
    assert!(!tcp(&lab, "c", "local", 8081), "so is alt directly");
    assert!(tcp(&lab, "c", "remote", 8090), "web directly is allowed");

    // The client may send nowhere: the Service connections stop, on this
    // node and to the other.
    lab.apply(CLIENT_SENDS_NOTHING);
    until("the local backend denied", false, || via(0));
    assert!(!via(1), "ClusterIP -> the remote backend is denied");
    assert!(!via(2), "ClusterIP -> either backend is denied");
    assert!(!dns(), "UDP ClusterIP is denied");
    let node1 = lab.ctl_ok(&["counters", "--node", "node1"]);
    assert!(
        node1
            .lines()
            .any(|l| l.starts_with("policy_egress_denied") && !l.trim_end().ends_with(" 0")),
        "node1 counts the client's denied egress:\n{node1}"
    );
}
