//! The pod guard in a real kernel: loaded and pinned on bpffs, attached with
//! netlink tc to a veth between two network namespaces this test creates,
//! judged through `BPF_PROG_TEST_RUN` and through real traffic.
//!
//! Needs root (BPF, bpffs, netns, tc) and the eBPF object
//! (`scripts/build-ebpf.sh`); every test panics, never skips, without them.
//! Run: `cargo test -p weft-dataplane --test bpf_guard`.
//!
//! Each test owns a [`Lab`]: two namespaces `weft-t-bpf-<pid>-<tag>-{host,pod}`
//! joined by a veth pair (`wt-host` in the host namespace, `wt-pod` in the
//! pod namespace), and the pin directory `/sys/fs/bpf/weft-test-<pid>/<tag>`.
//! Its `Drop` removes all of it, also when the test fails.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use weft_common::guard::pod_egress_verdict;
use weft_common::maps::{
    EndpointInfo, IdentityEntry, IpcacheKey, POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_FULL,
    PolicyEntry, PolicyKey,
};
use weft_dataplane::bpf::{BpfError, PodGuard, PolicyMaps, remove_pins};

mod support;
use support::{in_netns, ip};

fn require_root() {
    support::require_root("bpf_guard", "BPF syscall, bpffs, network namespaces, tc");
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const HOST_VETH: &str = "wt-host";
const POD_VETH: &str = "wt-pod";
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const OTHER_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);

/// Two namespaces joined by a veth pair, and a pin directory; removed on drop.
struct Lab {
    host_ns: String,
    pod_ns: String,
    pin_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let pid = std::process::id();
        let lab = Lab {
            host_ns: format!("weft-t-bpf-{pid}-{tag}-host"),
            pod_ns: format!("weft-t-bpf-{pid}-{tag}-pod"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/weft-test-{pid}/{tag}")),
        };
        // From here on, a panic drops `lab`, which removes whatever exists.
        for ns in [&lab.host_ns, &lab.pod_ns] {
            ip(&["netns", "add", ns]);
            // No IPv6: its autoconfiguration traffic would add drops that
            // the exact counter checks below do not expect.
            for key in ["all", "default"] {
                ip(&[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
                ]);
            }
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &lab.host_ns,
            "link",
            "add",
            HOST_VETH,
            "type",
            "veth",
            "peer",
            "name",
            POD_VETH,
            "netns",
            &lab.pod_ns,
        ]);
        ip(&["-n", &lab.host_ns, "link", "set", HOST_VETH, "up"]);
        ip(&["-n", &lab.pod_ns, "link", "set", POD_VETH, "up"]);
        lab
    }

    fn host_ifindex(&self) -> u32 {
        in_netns(&self.host_ns, || nix::net::if_::if_nametoindex(HOST_VETH))
            .expect("host veth exists")
    }

    /// Addresses for real traffic: the host side answers as the gateway, the
    /// pod holds its own address and another pod's (to spoof with).
    fn address(&self) {
        ip(&[
            "-n",
            &self.host_ns,
            "addr",
            "add",
            &format!("{GATEWAY_IP}/24"),
            "dev",
            HOST_VETH,
        ]);
        for addr in [POD_IP, OTHER_POD_IP] {
            ip(&[
                "-n",
                &self.pod_ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                POD_VETH,
            ]);
        }
    }

    /// Number of Weft guard filters at tc ingress of the host veth, as `tc` sees them.
    fn guard_filter_count(&self) -> usize {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host_ns,
                "tc",
                "filter",
                "show",
                "dev",
                HOST_VETH,
                "ingress",
            ])
            .output()
            .expect("cannot run tc");
        assert!(
            output.status.success(),
            "tc filter show: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .matches("weft_pod_ingress")
            .count()
    }

    /// The guard program as pinned, for `BPF_PROG_TEST_RUN`.
    fn pinned_program(&self) -> SchedClassifier {
        SchedClassifier::from_pin(self.pin_dir.join("weft_pod_ingress")).expect("program is pinned")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.host_ns, &self.pod_ns] {
            // Deleting the namespace deletes the veth pair and its filters.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Err(e) = remove_pins(&self.pin_dir) {
            eprintln!("cannot remove {}: {e}", self.pin_dir.display());
        }
        if let Some(parent) = self.pin_dir.parent() {
            // Succeeds only once the last test of this process is done.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// An Ethernet frame from the pod carrying `ethertype` and `payload`.
fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0x02, 0x42, 0x0a, 0xf4, 0x00, 0x02,
    ];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A 32-byte IPv4/UDP packet from `source` to the gateway.
fn udp_from(source: Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&GATEWAY_IP.octets());
    packet.extend_from_slice(&[0x0f, 0xa0, 0x15, 0xb3, 0, 12, 0, 0, b'w', b'e', b'f', b't']);
    frame(0x0800, &packet)
}

fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0x42, 0x0a, 0xf4, 0x00, 0x02];
    arp.extend_from_slice(&POD_IP.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&GATEWAY_IP.octets());
    frame(0x0806, &arp)
}

/// The leading part of `struct __sk_buff` up to `ifindex` (offset 40):
/// `BPF_PROG_TEST_RUN` then runs the program as if the frame arrived on that
/// interface of the caller's network namespace.
fn skb_ctx_on(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// The program's return code for `frame` arriving on `ifindex` (None: on
/// the namespace's loopback, which never has an endpoint).
fn run(lab: &Lab, program: &SchedClassifier, frame: &[u8], ifindex: Option<u32>) -> u32 {
    let ctx = ifindex.map(skb_ctx_on);
    in_netns(&lab.host_ns, || {
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx.as_ref().map(|c| &c[..]),
            ..TestRunOptions::new()
        };
        program
            .test_run(options)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    })
}

fn counter(guard: &PodGuard, name: &str) -> u64 {
    let counters = guard.counters().expect("counters");
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
        .1
}

#[test]
fn verdicts_through_prog_test_run() {
    let lab = Lab::new("verdicts");
    let mut guard = PodGuard::load(&lab.pin_dir).expect("load");
    in_netns(&lab.host_ns, || guard.attach(HOST_VETH)).expect("attach");
    let ifindex = lab.host_ifindex();
    guard.set_endpoint(ifindex, POD_IP).expect("set_endpoint");
    let program = lab.pinned_program();

    let cases = [
        (
            "own source",
            udp_from(POD_IP),
            Some(ifindex),
            TC_ACT_OK,
            "pass",
        ),
        (
            "spoofed source",
            udp_from(OTHER_POD_IP),
            Some(ifindex),
            TC_ACT_SHOT,
            "drop_spoofed_source",
        ),
        ("ARP", arp_request(), Some(ifindex), TC_ACT_OK, "pass_arp"),
        (
            "unknown interface",
            udp_from(POD_IP),
            None,
            TC_ACT_SHOT,
            "drop_unknown_endpoint",
        ),
        (
            "IPv6",
            frame(0x86dd, &[0x60; 40]),
            Some(ifindex),
            TC_ACT_SHOT,
            "drop_unsupported_protocol",
        ),
        (
            "IHL 4",
            {
                let mut f = udp_from(POD_IP);
                f[14] = 0x44;
                f
            },
            Some(ifindex),
            TC_ACT_SHOT,
            "drop_malformed",
        ),
        // (BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IPv4 header
        // itself; weft-common's unit tests cover those.)
        (
            "options past the end",
            {
                let mut f = udp_from(POD_IP);
                f[14] = 0x4f;
                f
            },
            Some(ifindex),
            TC_ACT_SHOT,
            "drop_malformed",
        ),
    ];
    let endpoint = EndpointInfo::new(POD_IP.octets());
    for (what, frame, on, expected, counter_name) in cases {
        // Differential: the kernel's verdict and counter are the ones the
        // shared decision gives in userspace for the same frame.
        let twin = pod_egress_verdict(&frame[..], on.map(|_| &endpoint));
        assert_eq!(
            twin.counter().name(),
            counter_name,
            "{what}: userspace verdict {twin:?}"
        );
        assert_eq!(
            twin.is_pass(),
            expected == TC_ACT_OK,
            "{what}: userspace verdict {twin:?}"
        );

        let before = counter(&guard, counter_name);
        assert_eq!(run(&lab, &program, &frame, on), expected, "{what}");
        assert_eq!(
            counter(&guard, counter_name),
            before + 1,
            "{what} bumps {counter_name}"
        );
    }
    // The guard counts each packet once; the one it passed as the pod's
    // own IPv4 went on to the policy decision (empty maps: a new flow,
    // nothing isolated), which counts it once more.
    let counters = guard.counters().unwrap();
    let is_policy = |name: &str| name.starts_with("conntrack_") || name.starts_with("policy_");
    let total = |policy: bool| -> u64 {
        counters
            .iter()
            .filter(|(n, _)| is_policy(n) == policy)
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        total(false),
        7,
        "exactly one guard count per packet: {counters:?}"
    );
    assert_eq!(
        total(true),
        1,
        "one policy count for the passed packet: {counters:?}"
    );
    assert_eq!(counter(&guard, "conntrack_new"), 1);

    // Removing the endpoint fails the interface closed.
    guard.remove_endpoint(ifindex).expect("remove_endpoint");
    guard
        .remove_endpoint(ifindex)
        .expect("remove_endpoint is idempotent");
    assert_eq!(
        run(&lab, &program, &udp_from(POD_IP), Some(ifindex)),
        TC_ACT_SHOT
    );
    assert!(guard.endpoints().unwrap().is_empty());
}

/// A lab with addresses for real traffic, its guard loaded and attached,
/// the pod's endpoint registered.
fn guarded_pod(name: &str) -> (Lab, PodGuard) {
    let lab = Lab::new(name);
    lab.address();
    let mut guard = PodGuard::load(&lab.pin_dir).expect("load");
    in_netns(&lab.host_ns, || guard.attach(HOST_VETH)).expect("attach");
    guard
        .set_endpoint(lab.host_ifindex(), POD_IP)
        .expect("set_endpoint");
    (lab, guard)
}

#[test]
fn real_traffic_from_the_pod_is_guarded() {
    let (lab, guard) = guarded_pod("traffic");

    let receiver = in_netns(&lab.host_ns, || {
        UdpSocket::bind(SocketAddrV4::new(GATEWAY_IP, 5555))
    })
    .expect("bind receiver");
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let send_from = |source: Ipv4Addr, payload: &[u8]| {
        let socket = in_netns(&lab.pod_ns, || {
            UdpSocket::bind(SocketAddrV4::new(source, 0))
        })
        .expect("bind sender");
        socket
            .send_to(payload, SocketAddrV4::new(GATEWAY_IP, 5555))
            .expect("send");
    };

    // The spoofed datagram goes first: if the guard let it through, it
    // would be the first thing received.
    send_from(OTHER_POD_IP, b"spoofed");
    send_from(POD_IP, b"own");
    let mut buffer = [0u8; 64];
    let (n, from) = receiver
        .recv_from(&mut buffer)
        .expect("the pod's own datagram arrives");
    assert_eq!(&buffer[..n], b"own");
    assert_eq!(from.ip(), POD_IP);
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "nothing else arrives"
    );

    assert!(
        counter(&guard, "pass_arp") >= 1,
        "the pod resolved its gateway through the guard"
    );
    assert!(counter(&guard, "pass") >= 1);
    assert_eq!(counter(&guard, "drop_spoofed_source"), 1);
}

/// Policy in the kernel, on real datagrams: the pod isolated both ways,
/// UDP 7000 allowed in from the host side's address. What the host sends
/// to 7000 arrives (weft_pod_egress), to 7001 not; the pod's reply passes
/// as a reply though its egress allows nothing, what it starts itself is
/// dropped (weft_pod_ingress); a revision bump without the rule cuts the
/// flow at its next datagram.
#[test]
fn policy_isolates_the_pod_in_both_directions() {
    let (lab, guard) = guarded_pod("policy");
    let mut maps = PolicyMaps::load(&lab.pin_dir).expect("policy maps");
    let host_id = IdentityEntry { identity: 300 };
    let pod = POD_IP.octets();
    let allow_7000 = PolicyKey::new(POLICY_PREFIX_FULL, pod, POLICY_INGRESS, 300, 17, 7000);
    maps.set_ipcache(IpcacheKey::host(GATEWAY_IP.octets()), host_id)
        .unwrap();
    maps.set_policy(PolicyKey::isolation(pod, POLICY_INGRESS), PolicyEntry::DENY)
        .unwrap();
    maps.set_policy(PolicyKey::isolation(pod, POLICY_EGRESS), PolicyEntry::DENY)
        .unwrap();
    maps.set_policy(allow_7000, PolicyEntry::ALLOW).unwrap();
    maps.set_revision(1).unwrap();
    assert_eq!(maps.revision().unwrap(), 1);
    assert_eq!(maps.policy().unwrap().len(), 3);

    let bind = |ns: &str, addr: Ipv4Addr, port: u16| {
        let socket = in_netns(ns, || UdpSocket::bind(SocketAddrV4::new(addr, port))).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket
    };
    let open = bind(&lab.pod_ns, POD_IP, 7000);
    let closed = bind(&lab.pod_ns, POD_IP, 7001);
    let host = bind(&lab.host_ns, GATEWAY_IP, 6000);
    let mut buffer = [0u8; 64];
    host.send_to(b"closed", SocketAddrV4::new(POD_IP, 7001))
        .unwrap();
    host.send_to(b"open", SocketAddrV4::new(POD_IP, 7000))
        .unwrap();
    let (n, from) = open.recv_from(&mut buffer).expect("allowed in");
    assert_eq!(&buffer[..n], b"open");
    assert!(
        closed.recv_from(&mut buffer).is_err(),
        "7001 is not allowed"
    );

    open.send_to(b"reply", from).unwrap();
    let (n, _) = host.recv_from(&mut buffer).expect("the reply passes");
    assert_eq!(&buffer[..n], b"reply");
    let started = bind(&lab.pod_ns, POD_IP, 0);
    started
        .send_to(b"new", SocketAddrV4::new(GATEWAY_IP, 6000))
        .unwrap();
    assert!(
        host.recv_from(&mut buffer).is_err(),
        "the pod's egress allows nothing new"
    );

    maps.remove_policy(allow_7000).unwrap();
    maps.set_revision(2).unwrap();
    host.send_to(b"after", SocketAddrV4::new(POD_IP, 7000))
        .unwrap();
    assert!(
        open.recv_from(&mut buffer).is_err(),
        "the bump cut the flow"
    );

    for (name, at_least) in [
        ("policy_ingress_allowed", 1),
        ("policy_ingress_denied", 2),
        ("policy_egress_denied", 1),
        ("conntrack_established", 1),
        ("conntrack_new", 3),
    ] {
        assert!(
            counter(&guard, name) >= at_least,
            "{name}: {:?}",
            guard.counters().unwrap()
        );
    }
}

#[test]
fn restart_adopts_pins_and_keeps_the_filter() {
    let lab = Lab::new("restart");
    lab.address();
    let ifindex = lab.host_ifindex();
    {
        let mut first = PodGuard::load(&lab.pin_dir).expect("first load");
        in_netns(&lab.host_ns, || first.attach(HOST_VETH)).expect("attach");
        first.set_endpoint(ifindex, POD_IP).expect("set_endpoint");
        first
            .set_endpoint(ifindex, POD_IP)
            .expect("set_endpoint is an upsert");
        // Dropping the agent's handles is what a SIGKILL does, and less.
    }
    assert_eq!(lab.guard_filter_count(), 1, "the filter outlives the agent");

    let mut second = PodGuard::load(&lab.pin_dir).expect("second load adopts the pins");
    assert_eq!(
        second.endpoints().unwrap(),
        vec![(ifindex, POD_IP)],
        "entries survive the restart"
    );
    assert!(in_netns(&lab.host_ns, || second.is_attached(HOST_VETH)).unwrap());
    assert!(
        in_netns(&lab.host_ns, || second.is_policy_attached(HOST_VETH)).unwrap(),
        "the policy program sits at tc egress beside the guard"
    );
    in_netns(&lab.host_ns, || second.attach(HOST_VETH)).expect("attach again");
    in_netns(&lab.host_ns, || second.attach(HOST_VETH)).expect("and again");
    assert_eq!(
        lab.guard_filter_count(),
        1,
        "attach is idempotent: still exactly one filter"
    );

    // The filter still runs the first agent's program (the same code over
    // the same pinned maps, so it is adopted as it is): the second agent's
    // map changes and counters reach it.
    let receiver = in_netns(&lab.host_ns, || {
        UdpSocket::bind(SocketAddrV4::new(GATEWAY_IP, 5556))
    })
    .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sender = in_netns(&lab.pod_ns, || {
        UdpSocket::bind(SocketAddrV4::new(POD_IP, 0))
    })
    .unwrap();
    let mut buffer = [0u8; 64];

    let passed = counter(&second, "pass");
    sender
        .send_to(b"after restart", SocketAddrV4::new(GATEWAY_IP, 5556))
        .unwrap();
    let (n, _) = receiver
        .recv_from(&mut buffer)
        .expect("traffic flows after the restart");
    assert_eq!(&buffer[..n], b"after restart");
    assert!(
        counter(&second, "pass") > passed,
        "counted in the adopted counter map"
    );

    second.remove_endpoint(ifindex).expect("remove_endpoint");
    let unknown = counter(&second, "drop_unknown_endpoint");
    sender
        .send_to(b"stale", SocketAddrV4::new(GATEWAY_IP, 5556))
        .unwrap();
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "a removed endpoint sends nothing"
    );
    assert!(counter(&second, "drop_unknown_endpoint") > unknown);
}

#[test]
fn attach_to_a_missing_interface_is_a_precise_error() {
    let lab = Lab::new("missing");
    let mut guard = PodGuard::load(&lab.pin_dir).expect("load");
    let error = in_netns(&lab.host_ns, || guard.attach("wt-nope")).unwrap_err();
    assert!(matches!(error, BpfError::NoSuchInterface { .. }), "{error}");
    assert!(
        !in_netns(&lab.host_ns, || guard.is_attached(HOST_VETH)).unwrap(),
        "nothing attached yet"
    );
}

#[test]
fn pin_dir_outside_bpffs_is_refused() {
    require_root();
    let dir = std::env::temp_dir().join(format!("weft-t-bpf-{}-not-bpffs", std::process::id()));
    let error = PodGuard::load(&dir.join("node1")).unwrap_err();
    assert!(matches!(error, BpfError::NotBpffs { .. }), "{error}");
    assert!(!dir.exists(), "nothing created outside bpffs");
}

#[test]
fn pinned_map_with_another_layout_is_refused() {
    let lab = Lab::new("layout");
    let node1 = lab.pin_dir.join("node1");
    let node2 = lab.pin_dir.join("node2");
    drop(PodGuard::load(&node1).expect("load node1"));
    // node2's "endpoint map" is really a counter array (another map type,
    // value size and capacity): what an older or newer build might have left.
    std::fs::create_dir_all(&node2).unwrap();
    let counters =
        aya::maps::MapData::from_pin(node1.join("WEFT_COUNTERS")).expect("counters pinned");
    counters
        .pin(node2.join("WEFT_ENDPOINTS"))
        .expect("pin under node2");

    let error = PodGuard::load(&node2).unwrap_err();
    assert!(
        matches!(error, BpfError::IncompatiblePinnedMap { .. }),
        "{error}"
    );
    assert!(
        !node2.join("WEFT_COUNTERS").exists(),
        "nothing loaded or pinned beside it"
    );
}
