//! The packet path between nodes in each encapsulation mode, on labs of
//! three nodes: the real agent, CNI and eBPF programs, a real kernel, and a
//! capture on the lab's underlay bridge to see what actually crosses it.
//! Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use nix::sys::signal::Signal;
use weft_dataplane::netns::run_in;
use weft_lab::probe::icmp_echo;
use weft_lab::topology::netns_path;
use weft_tests::capture::Capture;
use weft_tests::peers::{Daemon, UnderlayHost};
use weft_tests::*;
use weft_twin::wire;

/// The lab's uplinks are veths with the default MTU.
const UPLINK_MTU: u32 = 1500;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Pod traffic on the underlay is exactly what the mode promises, and
/// nothing else: checked in both directions of three ICMP echoes between
/// two nodes.
fn underlay_shows(lab: &Lab, encap: &str) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let (n1, n2) = (lab.node("node1").underlay_ip, lab.node("node2").underlay_ip);
    let fabric = lab.status().fabric;
    let (a_ip, b_ip) = (a.address().unwrap(), b.address().unwrap());
    let capture = Capture::start(&fabric.netns, &fabric.bridge);
    for _ in 0..3 {
        a.echo(b_ip, Echo::new(Duration::from_secs(2), 1))
            .unwrap_or_else(|e| panic!("{encap}: {e}"));
    }
    let captured = capture.stop();

    let ipip = captured.count(&format!("ip proto 4 and src {n1} and dst {n2}"))
        + captured.count(&format!("ip proto 4 and src {n2} and dst {n1}"));
    let vxlan = captured.count(&format!("udp port 4789 and host {n1} and host {n2}"));
    let plain = captured.count(&format!("host {a_ip} and host {b_ip}"));
    let all = captured.lines("");
    let expected = match encap {
        "ipip" => (6, 0, 0),
        "vxlan" => (0, 6, 0),
        "none" => (0, 0, 6),
        _ => unreachable!(),
    };
    assert_eq!(
        (ipip, vxlan, plain),
        expected,
        "{encap}: (IP-in-IP, VXLAN, plain) packets between the pods on the underlay; capture:\n{}",
        all.join("\n")
    );
    if encap == "ipip" {
        // The inner packet is the pods' own, as tcpdump decodes it.
        let inner = format!("{a_ip} > {b_ip}: ICMP echo request");
        assert!(
            all.iter().any(|l| l.contains(&inner)),
            "no {inner:?} inside the tunnel:\n{}",
            all.join("\n")
        );
    }
}

/// A DF echo of exactly the pod MTU crosses nodes; one byte more is
/// refused at the pod. In `ipip` the node's own route into the tunnel
/// carries the pod MTU too, so the kernel refuses oversized DF packets
/// there instead of the tunnel dropping them silently.
fn pod_mtu_crosses(lab: &Lab, encap: &str, overhead: u32) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node3"));
    let mtu = pod_mtu(&a);
    assert_eq!(mtu, UPLINK_MTU - overhead, "{encap}: pod MTU");
    let b_ip = b.address().unwrap();
    df_echoes_stop_at(&a, b_ip, mtu);
    if encap == "ipip" {
        let node = lab.node("node1");
        let too_big = Echo::new(Duration::from_secs(2), 1)
            .with_size(u16::try_from(mtu + 1).unwrap())
            .with_df();
        match icmp_echo(&netns_path(&node.netns), b_ip, too_big) {
            Err(ProbeError::TooBig { mtu: Some(m), .. }) if m == mtu => {}
            other => panic!("the route into the tunnel must carry MTU {mtu}: {other:?}"),
        }
    }
}

/// Deterministic bytes for a transfer, and their FNV-1a hash.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// 32 MiB of TCP from a pod to a pod on another node, byte for byte.
fn tcp_bulk(lab: &Lab) {
    const LEN: usize = 32 << 20;
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let to = (b.address().unwrap(), 5201);
    let listener = run_in(&netns_path(&b.netns), move || TcpListener::bind(to))
        .unwrap()
        .expect("listen in the pod");
    let reader = std::thread::spawn(move || -> std::io::Result<(usize, u64)> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = Vec::with_capacity(LEN);
        conn.read_to_end(&mut got)?;
        Ok((got.len(), fnv(&got)))
    });
    let data = payload(LEN);
    let want = (data.len(), fnv(&data));
    run_in(&netns_path(&a.netns), move || -> std::io::Result<()> {
        let mut conn = TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(&data)?;
        conn.shutdown(std::net::Shutdown::Write)
    })
    .unwrap()
    .expect("send from the pod");
    let got = reader.join().unwrap().expect("receive in the pod");
    assert_eq!(got, want, "bytes and hash of the bulk transfer");
}

/// An IPv4/UDP packet `src → dst:port` carrying `body` (UDP checksum 0).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, body: &[u8]) -> Vec<u8> {
    let (src, dst) = (src.octets(), dst.octets());
    let udp = wire::udp_datagram(src, dst, 40000, port, body, false);
    wire::ipv4_packet(wire::host_repr(src, dst, 17, 1, false), &udp)
}

/// Sends `inner` as IP-in-IP (the kernel adds the outer header, protocol
/// 4) from the namespace `netns` to `to`.
fn send_ipip(netns: &str, to: Ipv4Addr, inner: Vec<u8>) {
    run_in(&netns_path(netns), move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(to.octets()),
                },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                inner.as_ptr().cast(),
                inner.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(sent, inner.len() as isize, "sendto: {error}");
        }
    })
    .unwrap();
}

/// Whether a UDP datagram reaches `pod` on `port` within a second after
/// `send` runs.
fn pod_receives(pod: &PodView, port: u16, send: impl FnOnce()) -> bool {
    let socket = run_in(&netns_path(&pod.netns), move || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .expect("bind in the pod");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    send();
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).is_ok()
}

/// A VXLAN datagram (VNI 4096) from the namespace `netns` to the node at
/// `to`, carrying `inner` in an Ethernet frame for that node's VTEP.
fn send_vxlan(netns: &str, to: Ipv4Addr, inner: &[u8]) {
    let mut datagram = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0]; // flags I, VNI 4096
    datagram.extend_from_slice(&weft_dataplane::vxlan::vtep_mac(to).0);
    datagram.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
    datagram.extend_from_slice(inner);
    run_in(&netns_path(netns), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.send_to(&datagram, (to, 4789)).map(drop)
    })
    .unwrap()
    .expect("send VXLAN");
}

/// Tunnelled packets from an underlay address that is no node never reach
/// a pod: IP-in-IP in every mode (the uplink program drops and counts it;
/// it decapsulates only from nodes, in every mode, so that nodes part-way
/// through a mode switch still reach each other), and VXLAN in `vxlan`
/// (which the kernel's device alone would take from anyone). The same
/// packets from a node's address are delivered, so the checks can tell.
fn injection_is_refused(lab: &Lab, encap: &str) {
    let status = lab.status();
    let victim = status.pod_on("node2");
    let node1 = lab.node("node1");
    let node2 = ip(&lab.node("node2").underlay_ip);
    let intruder = UnderlayHost::attach(lab, "intruder", ip("198.18.0.200"));
    let inner = |port| {
        udp_packet(
            ip("10.244.1.99"),
            victim.address().unwrap(),
            port,
            b"injected",
        )
    };

    let before = lab.counter("node2", "drop_not_from_node");
    let reached = pod_receives(&victim, 9999, || {
        send_ipip(&intruder.netns, node2, inner(9999))
    });
    assert!(
        !reached,
        "{encap}: IP-in-IP from a non-node reached the pod"
    );
    let after = lab.counter("node2", "drop_not_from_node");
    assert_eq!(
        after,
        before + 1,
        "{encap}: drop_not_from_node counts the injection"
    );
    let reached = pod_receives(&victim, 9998, || {
        send_ipip(&node1.netns, node2, inner(9998))
    });
    assert!(
        reached,
        "{encap}: the same IP-in-IP from a node must be delivered"
    );

    if encap == "vxlan" {
        let reached = pod_receives(&victim, 9997, || {
            send_vxlan(&intruder.netns, node2, &inner(9997))
        });
        assert!(!reached, "VXLAN from a non-node reached the pod");
        let last = lab.counter("node2", "drop_not_from_node");
        assert_eq!(
            last,
            after + 1,
            "drop_not_from_node counts the VXLAN injection"
        );
        let reached = pod_receives(&victim, 9996, || {
            send_vxlan(&node1.netns, node2, &inner(9996))
        });
        assert!(reached, "the same VXLAN from a node must be delivered");
    }
}

/// A 10 ms ping between pods on two nodes loses nothing while both nodes'
/// agents are SIGKILLed and restarted.
fn no_loss_across_agent_restart(lab: &Lab) {
    let status = lab.status();
    let (a, b) = (status.pod_on("node1"), status.pod_on("node2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ping.log");
    let pinger = Daemon::spawn(
        "ping",
        &a.netns,
        &["ping", "-i", "0.01", "-W", "1", b.ip.as_deref().unwrap()],
        &log,
    );
    std::thread::sleep(Duration::from_millis(500));
    for node in ["node1", "node2"] {
        lab.stop_agent(node);
    }
    std::thread::sleep(Duration::from_millis(500));
    for node in ["node1", "node2"] {
        lab.start_agent(node, None);
    }
    // Past the restarted agents' first passes (adoption), pinging on.
    std::thread::sleep(Duration::from_millis(1500));
    pinger.stop_with(Signal::SIGINT);
    let text = std::fs::read_to_string(&log).unwrap();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{text}"));
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, received) = (numbers[0], numbers[1]);
    assert!(sent >= 100, "too few pings to mean anything: {summary}");
    assert_eq!(
        sent, received,
        "pings lost across the agents' restart: {summary}"
    );
    eprintln!("across the restart: {summary}");
}

fn check_mode(encap: &str, overhead: u32) {
    let options = UpOptions {
        encap: encap.parse().unwrap(),
        ..up_options(3, 2)
    };
    let lab = Lab::build(&format!("enc-{encap}"), options);
    check_lab(&lab, encap, overhead);
}

/// [`check_mode`] with the agents on Kubernetes (`lab up --kubernetes`:
/// the API server as their datastore, pod CIDRs from node IPAM): a mode
/// must not behave differently with the datastore.
fn check_mode_on_kubernetes(encap: &str, overhead: u32) {
    let options = UpOptions {
        encap: encap.parse().unwrap(),
        kubernetes: true,
        ..up_options(3, 2)
    };
    let lab = Lab::build(&format!("enc-k8s-{encap}"), options);
    check_lab(&lab, encap, overhead);
}

/// Everything a mode must do, on `lab`, brought up in mode `encap`.
fn check_lab(lab: &Lab, encap: &str, overhead: u32) {
    lab.check();
    underlay_shows(lab, encap);
    pod_mtu_crosses(lab, encap, overhead);
    tcp_bulk(lab);
    injection_is_refused(lab, encap);
    no_loss_across_agent_restart(lab);
    lab.check();
}

#[test]
fn ipip_mode() {
    check_mode("ipip", 20);
}

/// `--direct-redirect true`: the same checks, and the packets a node
/// decapsulates for its pods are handed to them by the uplink program
/// (counted as `redirect`), past the node's forwarding.
#[test]
fn ipip_mode_with_direct_redirect() {
    let options = UpOptions {
        encap: Encap::Ipip,
        direct_redirect: Some(true),
        ..up_options(3, 2)
    };
    let lab = Lab::build("enc-ipip-dr", options);
    check_lab(&lab, "ipip", 20);
    // A known number of packets into a pod of each node: every one of them
    // is decapsulated there and handed to the pod by the program (the
    // pod's MAC is resolved by the traffic above), none by the stack.
    const PINGS: u64 = 200;
    let status = lab.status();
    let nodes = ["node1", "node2", "node3"];
    for (i, node) in nodes.iter().enumerate() {
        let to = status.pod_on(node);
        let from = status.pod_on(nodes[(i + 1) % nodes.len()]);
        let (redirected, decapsulated) = (
            lab.counter(node, "redirect"),
            lab.counter(node, "decapsulate"),
        );
        let count = PINGS.to_string();
        let out = netns_exec(
            &from.netns,
            &[
                "ping",
                "-q",
                "-c",
                &count,
                "-i",
                "0.005",
                "-W",
                "2",
                to.ip.as_deref().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{} -> {}: {}",
            from.name,
            to.name,
            show(&out)
        );
        let redirected = lab.counter(node, "redirect") - redirected;
        let decapsulated = lab.counter(node, "decapsulate") - decapsulated;
        eprintln!("{node}: {PINGS} pings in, redirect +{redirected}, decapsulate +{decapsulated}");
        assert!(
            redirected >= PINGS,
            "{node}: only {redirected} of {PINGS} pings redirected (decapsulate +{decapsulated})"
        );
        assert_eq!(decapsulated, 0, "{node}: pings left to the stack");
        assert_eq!(lab.counter(node, "drop_malformed"), 0, "{node}");
    }
}

#[test]
fn vxlan_mode() {
    check_mode("vxlan", 50);
}

#[test]
fn none_mode() {
    check_mode("none", 0);
}

#[test]
fn ipip_mode_on_kubernetes() {
    check_mode_on_kubernetes("ipip", 20);
}

#[test]
fn vxlan_mode_on_kubernetes() {
    check_mode_on_kubernetes("vxlan", 50);
}

#[test]
fn none_mode_on_kubernetes() {
    check_mode_on_kubernetes("none", 0);
}

/// What is attached to the uplink, in both directions.
fn uplink_filters(lab: &Lab, node: &str) -> String {
    let netns = lab.node(node).netns;
    ["ingress", "egress"]
        .iter()
        .map(|dir| {
            stdout(&netns_exec(
                &netns,
                &["tc", "filter", "show", "dev", "eth0", dir],
            ))
        })
        .collect()
}

fn has_vxlan_device(lab: &Lab, node: &str) -> bool {
    let out = stdout(&netns_exec(
        &lab.node(node).netns,
        &["ip", "-o", "link", "show", "type", "vxlan"],
    ));
    !out.trim().is_empty()
}

/// Restarting every agent in another mode leaves nothing of the old one:
/// no vxlan device outside `vxlan`, the uplink programs once in each
/// direction, and full connectivity in the new mode.
#[test]
fn agents_switch_modes_on_restart_without_leftovers() {
    let lab = Lab::build("enc-switch", up_options(2, 1));
    for (encap, device) in [("vxlan", true), ("none", false), ("ipip", false)] {
        for node in ["node1", "node2"] {
            lab.stop_agent(node);
        }
        for node in ["node1", "node2"] {
            lab.start_agent(node, Some(encap.parse().unwrap()));
        }
        for node in ["node1", "node2"] {
            let filters = uplink_filters(&lab, node);
            // The uplink programs stay, in place, in every mode.
            assert_eq!(
                filters
                    .lines()
                    .filter(|l| l.contains("weft_uplink"))
                    .count(),
                2,
                "{encap} on {node}: uplink filters:\n{filters}"
            );
            assert_eq!(has_vxlan_device(&lab, node), device, "{encap} on {node}");
        }
        lab.check();
        underlay_shows(&lab, encap);
    }
}
