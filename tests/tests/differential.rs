//! Differential tests of the packet path: every generated frame goes
//! through the loaded eBPF program (`BPF_PROG_TEST_RUN`) and through its
//! userspace twin (`weft_twin::hooks`), which must return the same tc
//! action and leave the same bytes; the counters the kernel bumped over a
//! batch must be the ones the twin names.
//!
//! The programs are loaded by the dataplane's own loader (`PodGuard`,
//! `UplinkPrograms`) into a throwaway pin directory
//! `/sys/fs/bpf/weft-test-<pid>/differential`, filled with a fixed cluster
//! (four nodes on two underlay subnets, nested pod CIDRs, one endpoint),
//! and the uplink programs are run under each node configuration (every
//! encapsulation mode, `crossSubnet`, the direct redirect, known and
//! unknown uplink MTU, and configs the programs must refuse). The twin
//! reads the same maps back from the pins (`read_pinned_maps`), so both
//! sides decide over identical state. For the direct redirect the test's
//! namespace holds pod veths with routes and neighbour entries, which the
//! kernel's `bpf_fib_lookup` reads and the twin's [`TestFib`] mirrors.
//! Frames come from `weft_tests::framegen` (seed: `WEFT_DIFF_SEED`, count:
//! `WEFT_DIFF_FRAMES`), plus a few at the redirect's MTU edge.
//!
//! Needs root and the eBPF object; fails loudly without them.
//! Run: `cargo test --release -p weft-tests --test differential -- --nocapture`
//! to see the verdict distribution.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ipnetwork::Ipv4Network;
use nix::sched::{CloneFlags, setns};
use weft_common::ipv4;
use weft_common::lookup::{Fib, NodeSet, RouteLookup};
use weft_common::maps::{
    Encap, EndpointCounterKey, EndpointInfo, IDENTITY_ANY, IdentityEntry, IpcacheKey, NodeConfig,
    POD_EGRESS_PROGRAM, POD_INGRESS_PROGRAM, POLICY_EGRESS, POLICY_INGRESS, POLICY_PREFIX_FULL,
    POLICY_PREFIX_IDENTITY, POLICY_PREFIX_PROTOCOL, PodCidrKey, PolicyEntry, PolicyKey, RemoteNode,
    TUNNEL_EGRESS_PROGRAM, UPLINK_EGRESS_PROGRAM, UPLINK_INGRESS_PROGRAM, prefix_contains,
};
use weft_common::policy::may_skip_pod_egress;
use weft_common::redirect::{FibQuery, FibResult, ToStack, direct_redirect};
use weft_common::uplink::{uplink_egress, uplink_ingress, write_decapsulated};
use weft_common::verdict::{Counter, UplinkVerdict};
use weft_dataplane::bpf::{PodGuard, PolicyMaps, UplinkPrograms, read_pinned_maps, remove_pins};
use weft_tests::framegen::{Addresses, Frame, FrameGen, Ipv4Spec, Kind, Rng, ethernet, hex};
use weft_tests::{Namespaces, require_root};
use weft_twin::hooks::{self, HookOutcome};
use weft_twin::wire;
use weft_twin::{Conntrack, PolicyTables};

// The cluster. This node is N1.
const N1: [u8; 4] = [198, 18, 0, 1];
const N2: [u8; 4] = [198, 18, 0, 2];
/// On another underlay subnet than N1 (for `crossSubnet`).
const N3: [u8; 4] = [198, 18, 1, 3];
const N4: [u8; 4] = [198, 18, 2, 4];

/// (pod CIDR, owning node): N1's own, one per remote node, and nested
/// prefixes where the longest must win.
const POD_ROUTES: [([u8; 4], u8, [u8; 4]); 7] = [
    ([10, 244, 1, 0], 24, N1),
    ([10, 244, 2, 0], 24, N2),
    ([10, 244, 3, 0], 24, N3),
    ([10, 244, 4, 0], 24, N4),
    ([10, 244, 4, 128], 25, N2),
    ([10, 244, 128, 0], 17, N3),
    ([10, 244, 200, 64], 26, N4),
];

/// The endpoint the pod program guards: on `lo` (ifindex 1) of the test's
/// namespace, which `BPF_PROG_TEST_RUN` can name as the arrival interface.
const ENDPOINT_IFINDEX: u32 = 1;
const ENDPOINT_IP: [u8; 4] = [10, 244, 1, 5];

/// The node's pod veths, for the direct redirect: `wd-p<i>` (peer
/// `wd-q<i>`, both in the test's namespace: `BPF_PROG_TEST_RUN` never
/// carries a redirect out), MAC `02:00:00:00:0<i>:01`, MTU 1480.
const POD_VETHS: [u8; 4] = [1, 2, 3, 4];
const POD_VETH_MTU: u16 = 1480;

fn pod_veth_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, i, 0x01]
}

/// Routes into the pod veths: (destination, prefix length, veth).
const FIB_ROUTES: [([u8; 4], u8, u8); 4] = [
    // The endpoint's own /32: redirected.
    (ENDPOINT_IP, 32, 1),
    // An endpoint whose MAC the node has not resolved: to the stack.
    ([10, 244, 1, 6], 32, 2),
    // A veth with no endpoint entry: to the stack.
    ([10, 244, 200, 70], 32, 3),
    // A subnet on one pod's veth: its pod (10.244.4.10) is redirected,
    // another address there (10.244.4.200) is not that pod.
    ([10, 244, 4, 0], 24, 4),
];

/// Resolved neighbours: (address, veth).
const FIB_NEIGHBOURS: [([u8; 4], u8); 4] = [
    (ENDPOINT_IP, 1),
    ([10, 244, 200, 70], 3),
    ([10, 244, 4, 10], 4),
    ([10, 244, 4, 200], 4),
];

/// Endpoint entries of the pod veths: (veth, pod address).
const POD_VETH_ENDPOINTS: [(u8, [u8; 4]); 3] = [
    (1, ENDPOINT_IP),
    (2, [10, 244, 1, 6]),
    (4, [10, 244, 4, 10]),
];

fn neighbour_mac(addr: [u8; 4]) -> [u8; 6] {
    let [a, b, c, d] = addr;
    [0x02, 0x42, a, b, c, d]
}

/// The namespace's FIB as `bpf_fib_lookup` answers it (from `lo`, where
/// `BPF_PROG_TEST_RUN` puts the packet), built from the same tables: the
/// longest route into a pod veth, then that veth's MTU (only checked when
/// the neighbour is known, as the kernel does), then the neighbour. No
/// other route leads anywhere a packet could be forwarded.
struct TestFib {
    /// (destination, prefix length, ifindex).
    routes: Vec<([u8; 4], u8, u32)>,
    /// (address, ifindex, MAC).
    neighbours: Vec<([u8; 4], u32, [u8; 6])>,
    /// (ifindex, MAC).
    devices: Vec<(u32, [u8; 6])>,
}

impl TestFib {
    /// Reads the pod veths' ifindexes in the calling thread's namespace.
    fn new() -> TestFib {
        let ifindex =
            |i: u8| nix::net::if_::if_nametoindex(format!("wd-p{i}").as_str()).expect("pod veth");
        TestFib {
            routes: FIB_ROUTES
                .iter()
                .map(|(dst, len, i)| (*dst, *len, ifindex(*i)))
                .collect(),
            neighbours: FIB_NEIGHBOURS
                .iter()
                .map(|(addr, i)| (*addr, ifindex(*i), neighbour_mac(*addr)))
                .collect(),
            devices: POD_VETHS
                .iter()
                .map(|i| (ifindex(*i), pod_veth_mac(*i)))
                .collect(),
        }
    }
}

impl Fib for TestFib {
    fn lookup(&self, query: &FibQuery) -> FibResult {
        let Some(&(_, _, ifindex)) = self
            .routes
            .iter()
            .filter(|(dst, len, _)| prefix_contains(*dst, u32::from(*len), query.dst))
            .max_by_key(|(_, len, _)| *len)
        else {
            return FibResult::NotForwarded;
        };
        let Some(&(_, _, dmac)) = self
            .neighbours
            .iter()
            .find(|(addr, i, _)| *addr == query.dst && *i == ifindex)
        else {
            return FibResult::NoNeighbour { ifindex };
        };
        if query.frame_len > usize::from(POD_VETH_MTU) + 14 + 4 {
            return FibResult::NotForwarded;
        }
        let smac = self
            .devices
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, mac)| *mac)
            .expect("every route leads into a pod veth");
        FibResult::Forward {
            ifindex,
            smac,
            dmac,
        }
    }
}

/// The FIB state of [`TestFib`], made in namespace `ns` with `ip`.
fn make_pod_veths(ns: &str) {
    ip(&[
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    for i in POD_VETHS {
        let mac = pod_veth_mac(i).map(|b| format!("{b:02x}")).join(":");
        let (veth, peer) = (format!("wd-p{i}"), format!("wd-q{i}"));
        let mtu = POD_VETH_MTU.to_string();
        ip(&[
            "-n", ns, "link", "add", &veth, "address", &mac, "mtu", &mtu, "type", "veth", "peer",
            "name", &peer,
        ]);
        ip(&["-n", ns, "link", "set", &veth, "up"]);
        ip(&["-n", ns, "link", "set", &peer, "up"]);
    }
    for (dst, len, i) in FIB_ROUTES {
        let dst = format!("{}/{len}", Ipv4Addr::from(dst));
        ip(&["-n", ns, "route", "add", &dst, "dev", &format!("wd-p{i}")]);
    }
    for (addr, i) in FIB_NEIGHBOURS {
        let mac = neighbour_mac(addr).map(|b| format!("{b:02x}")).join(":");
        ip(&[
            "-n",
            ns,
            "neigh",
            "add",
            &Ipv4Addr::from(addr).to_string(),
            "lladdr",
            &mac,
            "dev",
            &format!("wd-p{i}"),
            "nud",
            "permanent",
        ]);
    }
}

/// IP-in-IP from N2 to this node around UDP for the redirected pods, the
/// inner packet around the largest a pod veth takes (1480 + 4 bytes: the
/// kernel allows a VLAN header's worth), so that the twin's MTU check is
/// held to the kernel's at the byte.
fn redirect_mtu_edge() -> Vec<Frame> {
    let mut frames = Vec::new();
    for pod in [ENDPOINT_IP, [10, 244, 4, 10]] {
        for total in 1482..=1487usize {
            let data = vec![0x5a; total - 20 - 8];
            let udp = wire::udp_datagram(N2_POD, pod, 40000, 53, &data, true);
            let inner = Ipv4Spec::new(N2_POD, pod, ipv4::PROTOCOL_UDP, udp).build();
            let outer = Ipv4Spec::new(N2, N1, ipv4::PROTOCOL_IPIP, inner).build();
            frames.push(Frame {
                kind: Kind::Ipip,
                what: format!("ipip from node, inner {total} B to a redirected pod"),
                bytes: ethernet(wire::ETHERTYPE_IPV4, &outer),
            });
        }
    }
    frames
}

/// A pod of N2.
const N2_POD: [u8; 4] = [10, 244, 2, 7];

fn addresses() -> Addresses {
    Addresses {
        nodes: vec![N1, N2, N3, N4],
        strangers: vec![[198, 18, 0, 66], [203, 0, 113, 9], [10, 244, 2, 7]],
        pods: vec![
            ENDPOINT_IP,
            [10, 244, 1, 6],
            [10, 244, 2, 7],
            [10, 244, 3, 9],
            [10, 244, 4, 10],
            [10, 244, 4, 200],
            [10, 244, 200, 70],
            [10, 244, 250, 1],
            [10, 244, 99, 1], // in no route
        ],
        others: vec![
            [8, 8, 8, 8],
            // A ClusterIP: the pod hooks defer the sender's egress, the
            // node's way out judges it.
            [10, 96, 0, 10],
            [198, 18, 0, 9],
            [192, 168, 1, 1],
            [127, 0, 0, 1],
        ],
    }
}

/// The cluster's Service range (kube-apiserver's default).
const SERVICE_RANGE: ([u8; 4], u8) = ([10, 96, 0, 0], 12);

/// The node configurations the uplink programs run under (the Service
/// range in all but the last, as the agent always writes one).
fn configs() -> Vec<(&'static str, NodeConfig)> {
    let configs = configs_without_services();
    let last = configs.len() - 1;
    configs
        .into_iter()
        .enumerate()
        .map(|(i, (name, config))| {
            if i == last {
                (name, config)
            } else {
                (
                    name,
                    config.with_service_range(SERVICE_RANGE.0, SERVICE_RANGE.1),
                )
            }
        })
        .collect()
}

fn configs_without_services() -> Vec<(&'static str, NodeConfig)> {
    let ipip = NodeConfig::new(N1, Encap::Ipip).with_uplink_mtu(1500);
    vec![
        ("ipip, mtu 1500", ipip),
        (
            "ipip, crossSubnet 198.18.0.0/24",
            ipip.with_cross_subnet([198, 18, 0, 0], 24),
        ),
        (
            "ipip, mtu unknown, ttl 17",
            NodeConfig {
                outer_ttl: 17,
                ..NodeConfig::new(N1, Encap::Ipip)
            },
        ),
        ("ipip, mtu 9000", ipip.with_uplink_mtu(9000)),
        ("ipip, direct redirect", ipip.with_direct_redirect()),
        (
            // IP-in-IP is decapsulated in every mode, and redirected too.
            "vxlan, direct redirect",
            NodeConfig::new(N1, Encap::Vxlan)
                .with_uplink_mtu(1500)
                .with_direct_redirect(),
        ),
        (
            "none",
            NodeConfig::new(N1, Encap::None).with_uplink_mtu(1500),
        ),
        (
            "vxlan",
            NodeConfig::new(N1, Encap::Vxlan).with_uplink_mtu(1500),
        ),
        ("unknown mode 7", NodeConfig { encap: 7, ..ipip }),
        (
            "ipip, no underlay address",
            NodeConfig::new([0; 4], Encap::Ipip).with_uplink_mtu(1500),
        ),
    ]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

/// Runs `f` on a scoped thread inside the network namespace at `path`.
fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pin directory, removed on drop (also when the test fails).
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = remove_pins(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// What the kernel did with one frame.
#[derive(Debug, PartialEq, Eq)]
enum KernelRun {
    Ran {
        action: i32,
        frame: Vec<u8>,
    },
    /// `BPF_PROG_TEST_RUN` refused the input (the program never ran).
    Refused(String),
}

fn test_run(program: &SchedClassifier, frame: &[u8], ctx: Option<&[u8]>) -> KernelRun {
    let mut out = vec![0u8; frame.len() + 128];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx,
        ..TestRunOptions::new()
    });
    match result {
        Ok(result) => {
            out.truncate(result.data_size_out as usize);
            KernelRun::Ran {
                action: result.return_value as i32,
                frame: out,
            }
        }
        Err(e) => KernelRun::Refused(format!("{e:?}")),
    }
}

/// The leading part of `struct __sk_buff` up to `ifindex` (offset 40): the
/// frame then arrives on that interface of the caller's namespace.
fn skb_ctx_on(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Frames `BPF_PROG_TEST_RUN` refuses (`EINVAL`) on this kernel: shorter
/// than an Ethernet header, or with the IPv4 (IPv6) ethertype but shorter
/// than an IPv4 (IPv6) header after it. Only these may be refused; the
/// twin's verdicts on them are covered by weft-common's unit tests.
fn kernel_cannot_run(frame: &[u8]) -> bool {
    use etherparse::{EtherType, Ethernet2Header, Ethernet2HeaderSlice, Ipv4Header, Ipv6Header};
    let after_ethernet = frame.len().saturating_sub(Ethernet2Header::LEN);
    match Ethernet2HeaderSlice::from_slice(frame).map(|eth| eth.ether_type()) {
        Err(_) => true,
        Ok(EtherType::IPV4) => after_ethernet < Ipv4Header::MIN_LEN,
        Ok(EtherType::IPV6) => after_ethernet < Ipv6Header::LEN,
        Ok(_) => false,
    }
}

/// Tallies of one program over all its runs.
#[derive(Default)]
struct Tally {
    runs: usize,
    refused: usize,
    counters: BTreeMap<&'static str, u64>,
    /// The per-endpoint policy counters the twin bumped on frames the
    /// kernel ran.
    endpoint_counters: BTreeMap<EndpointCounterKey, u64>,
    verdicts: BTreeMap<String, u64>,
    mismatches: Vec<String>,
    mismatch_count: usize,
}

impl Tally {
    fn print(&self, program: &str) {
        println!(
            "{program}: {} frames run through BPF_PROG_TEST_RUN and the twin, {} identical, \
             {} differing ({} more that BPF_PROG_TEST_RUN refuses: shorter than their L2 + L3 header)",
            self.runs,
            self.runs - self.mismatch_count,
            self.mismatch_count,
            self.refused
        );
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("  counters: {}", counters.join(", "));
        if !self.verdicts.is_empty() {
            let verdicts: Vec<String> = self
                .verdicts
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect();
            println!("  verdicts: {}", verdicts.join(", "));
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// A verdict without its data (`Encapsulate`, `Pass(NotIpv4)`, ...).
fn verdict_name(verdict: &UplinkVerdict) -> String {
    match verdict {
        UplinkVerdict::Pass(reason) => format!("Pass({reason:?})"),
        UplinkVerdict::Encapsulate { .. } => "Encapsulate".into(),
        UplinkVerdict::Decapsulate { .. } => "Decapsulate".into(),
        UplinkVerdict::TooBig { .. } => "TooBig".into(),
        UplinkVerdict::Drop(reason) => format!("Drop({reason:?})"),
    }
}

/// The ingress verdict, and for a decapsulated packet on a node with the
/// direct redirect on, what became of it (`Decapsulate+Redirect`,
/// `Decapsulate+ToStack(NoNeighbour)`, ...).
fn ingress_verdict_name(
    frame: &[u8],
    nodes: &[[u8; 4]],
    config: &NodeConfig,
    fib: &TestFib,
    endpoints: &[(u32, EndpointInfo)],
    policy: &[(PolicyKey, PolicyEntry)],
) -> String {
    let verdict = uplink_ingress(frame, nodes, config);
    let name = verdict_name(&verdict);
    let UplinkVerdict::Decapsulate {
        outer_header_len, ..
    } = verdict
    else {
        return name;
    };
    let mut inner = vec![0; frame.len()];
    let len = write_decapsulated(frame, outer_header_len, &mut inner).unwrap();
    match direct_redirect(&inner[..len], config, fib, endpoints) {
        Ok(_) if !may_skip_pod_egress(&inner[..len], policy) => {
            format!("{name}+ToStack(Isolated)")
        }
        Ok(_) => format!("{name}+Redirect"),
        Err(ToStack::Disabled) => name,
        Err(why) => format!("{name}+ToStack({why:?})"),
    }
}

fn counters_now(guard: &PodGuard) -> BTreeMap<&'static str, u64> {
    guard.counters().expect("counters").into_iter().collect()
}

/// Checks that the kernel's per-endpoint policy counters (`WEFT_EP_COUNTS`)
/// moved since `before` by exactly what the twin counted in `tallies`.
fn assert_endpoint_counters_moved(
    maps: &PolicyMaps,
    before: &BTreeMap<EndpointCounterKey, u64>,
    tallies: &[&Tally],
) {
    let kernel: BTreeMap<EndpointCounterKey, u64> = maps
        .endpoint_counters()
        .unwrap()
        .into_iter()
        .map(|(k, n)| (k, n - before.get(&k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut twin: BTreeMap<EndpointCounterKey, u64> = BTreeMap::new();
    for (key, n) in tallies.iter().flat_map(|t| &t.endpoint_counters) {
        *twin.entry(*key).or_default() += n;
    }
    assert_eq!(
        kernel, twin,
        "the kernel's and the twin's per-endpoint policy counters"
    );
    println!(
        "  endpoint counters: {} keys, {} packets",
        twin.len(),
        twin.values().sum::<u64>()
    );
}

/// Runs `frames` through `program` and through `twin`, recording the
/// outcome of each in `tally`; checks the batch's counter deltas.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    guard: &PodGuard,
    tally: &mut Tally,
    program_name: &str,
    context: &str,
    program: &SchedClassifier,
    ctx: Option<&[u8]>,
    frames: &[Frame],
    mut twin: impl FnMut(&[u8]) -> Option<HookOutcome>,
    verdict: impl Fn(&[u8]) -> Option<String>,
) {
    let before = counters_now(guard);
    let mut twin_counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for frame in frames {
        // `None`: the twin passes the frame unchanged and counts nothing.
        let expected = twin(&frame.bytes);
        let counters: Vec<Counter> = expected.iter().flat_map(|e| e.counters()).collect();
        let (expected_action, expected_frame) = match &expected {
            Some(e) => (e.action, e.frame.clone()),
            None => (hooks::TC_ACT_OK, frame.bytes.clone()),
        };
        let kernel = test_run(program, &frame.bytes, ctx);
        match kernel {
            KernelRun::Refused(error) => {
                assert!(
                    kernel_cannot_run(&frame.bytes),
                    "{program_name} ({context}): BPF_PROG_TEST_RUN refused a frame it should \
                     run ({}): {error}\n{}",
                    frame.what,
                    hex(&frame.bytes)
                );
                tally.refused += 1;
                continue;
            }
            KernelRun::Ran { action, frame: out } => {
                assert!(
                    !kernel_cannot_run(&frame.bytes),
                    "BPF_PROG_TEST_RUN ran a {}-byte frame",
                    frame.bytes.len()
                );
                tally.runs += 1;
                for counter in &counters {
                    *twin_counts.entry(counter.name()).or_default() += 1;
                    *tally.counters.entry(counter.name()).or_default() += 1;
                }
                for key in expected.iter().flat_map(|e| &e.endpoint_counters) {
                    *tally.endpoint_counters.entry(*key).or_default() += 1;
                }
                if let Some(v) = verdict(&frame.bytes) {
                    *tally.verdicts.entry(v).or_default() += 1;
                }
                if action != expected_action || out != expected_frame {
                    tally.mismatch_count += 1;
                    if tally.mismatches.len() < 10 {
                        tally.mismatches.push(format!(
                            "{program_name} ({context}): {}\ninput ({} B):\n{}\n\
                             eBPF: action {action}, output ({} B):\n{}\n\
                             twin: action {expected_action}, counters {:?}, output ({} B):\n{}",
                            frame.what,
                            frame.bytes.len(),
                            hex(&frame.bytes),
                            out.len(),
                            hex(&out),
                            counters.iter().map(|c| c.name()).collect::<Vec<_>>(),
                            expected_frame.len(),
                            hex(&expected_frame),
                        ));
                    }
                }
            }
        }
    }
    // The kernel's counters moved by exactly what the twin says was counted.
    let after = counters_now(guard);
    let deltas: BTreeMap<&'static str, u64> = after
        .iter()
        .map(|(name, n)| (*name, n - before[name]))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        deltas, twin_counts,
        "{program_name} ({context}): kernel counter deltas vs the twin's counters"
    );
}

#[test]
fn ebpf_programs_and_the_twin_agree_frame_for_frame() {
    require_root();
    let seed: u64 = env_or("WEFT_DIFF_SEED", 0x5eed_4e77);
    let count: usize = env_or("WEFT_DIFF_FRAMES", 8000);
    let pid = std::process::id();

    let mut namespaces = Namespaces::default();
    let netns = namespaces.add(&format!("wdf-{pid}-diff"));
    let ns_name = format!("wdf-{pid}-diff");
    ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
    // A second interface: the arrival interface with no endpoint entry.
    ip(&[
        "-n", &ns_name, "link", "add", "wd-a", "type", "veth", "peer", "name", "wd-b",
    ]);
    make_pod_veths(&ns_name);
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/weft-test-{pid}/differential"
    )));

    let mut frames = FrameGen::new(seed, addresses()).frames(count);
    frames.extend(redirect_mtu_edge());
    println!("seed {seed:#x}, {count} generated frames per run, and the redirect's MTU edge");

    in_netns(&netns, || run_all(&pins.0, &frames));
    drop(namespaces);
}

fn run_all(pin_dir: &Path, frames: &[Frame]) {
    let mut guard = PodGuard::load(pin_dir).expect("load the pod guard");
    let mut uplink = UplinkPrograms::load(pin_dir).expect("load the uplink programs");
    guard
        .set_endpoint(ENDPOINT_IFINDEX, Ipv4Addr::from(ENDPOINT_IP))
        .unwrap();
    for (addr, prefix, node) in POD_ROUTES {
        uplink
            .set_pod_route(
                Ipv4Network::new(Ipv4Addr::from(addr), prefix).unwrap(),
                Ipv4Addr::from(node),
            )
            .unwrap();
    }
    for node in [N1, N2, N3, N4] {
        uplink.set_node(Ipv4Addr::from(node)).unwrap();
    }
    let no_entry_ifindex = nix::net::if_::if_nametoindex("wd-a").expect("wd-a exists");
    let fib = TestFib::new();
    let pod_veth = |i: u8| fib.devices[usize::from(i) - 1].0;
    for (i, pod) in POD_VETH_ENDPOINTS {
        guard
            .set_endpoint(pod_veth(i), Ipv4Addr::from(pod))
            .unwrap();
    }

    // The twin decides over what the kernel holds, read back from the pins.
    let pinned = read_pinned_maps(pin_dir).expect("read the pinned maps");
    let mut expected_routes: Vec<(PodCidrKey, RemoteNode)> = POD_ROUTES
        .iter()
        .map(|(a, p, n)| (PodCidrKey::new(*a, u32::from(*p)), RemoteNode::new(*n)))
        .collect();
    expected_routes.sort_unstable_by_key(|(k, _)| (k.addr, k.prefix_len));
    assert_eq!(pinned.pod_routes, expected_routes);
    assert_eq!(pinned.nodes, vec![N1, N2, N3, N4]);
    let mut expected_endpoints: Vec<(u32, EndpointInfo)> = POD_VETH_ENDPOINTS
        .iter()
        .map(|(i, pod)| (pod_veth(*i), EndpointInfo::new(*pod)))
        .chain([(ENDPOINT_IFINDEX, EndpointInfo::new(ENDPOINT_IP))])
        .collect();
    expected_endpoints.sort_unstable_by_key(|(i, _)| *i);
    assert_eq!(pinned.endpoints, expected_endpoints);
    let endpoints: &[(u32, EndpointInfo)] = &pinned.endpoints;
    let routes: &[(PodCidrKey, RemoteNode)] = &pinned.pod_routes;
    let nodes: &[[u8; 4]] = &pinned.nodes;
    let endpoint_of = |ifindex: u32| {
        pinned
            .endpoints
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, e)| *e)
    };

    let program = |name: &str| {
        SchedClassifier::from_pin(pin_dir.join(name))
            .unwrap_or_else(|e| panic!("{name} is pinned: {e}"))
    };
    let pod_program = program(POD_INGRESS_PROGRAM);
    let egress_program = program(UPLINK_EGRESS_PROGRAM);
    let ingress_program = program(UPLINK_INGRESS_PROGRAM);

    // --- weft_pod_ingress, with empty policy maps (nothing isolated) -----------
    let mut conntrack = Conntrack::default();
    let no_policy = PolicyTables::default();
    let mut pod = Tally::default();
    for (context, ifindex) in [
        ("endpoint on lo", ENDPOINT_IFINDEX),
        ("veth without endpoint", no_entry_ifindex),
    ] {
        let ctx = skb_ctx_on(ifindex);
        let endpoint = endpoint_of(ifindex);
        run_batch(
            &guard,
            &mut pod,
            POD_INGRESS_PROGRAM,
            context,
            &pod_program,
            Some(&ctx),
            frames,
            |f| {
                Some(hooks::pod_ingress(
                    f,
                    endpoint.as_ref(),
                    &no_policy,
                    &mut conntrack,
                    monotonic_ns(),
                    &NodeConfig::default(),
                ))
            },
            |_| None,
        );
    }
    // The pod programs read the node's Service range from its config.
    let with_services = NodeConfig::new(N1, Encap::Ipip)
        .with_uplink_mtu(1500)
        .with_service_range(SERVICE_RANGE.0, SERVICE_RANGE.1);
    uplink.set_config(&with_services).unwrap();
    let policy = run_policy(
        pin_dir,
        &guard,
        frames,
        &mut conntrack,
        &program,
        &with_services,
    );

    // --- weft_uplink_egress and weft_uplink_ingress, per node config ----------
    // The uplink programs run under a policy isolating one redirect
    // target (10.244.4.10) for ingress: its packets go to the stack.
    let mut maps = PolicyMaps::load(pin_dir).expect("load the policy maps");
    for (key, _) in maps.policy().unwrap() {
        maps.remove_policy(key).unwrap();
    }
    maps.set_policy(
        PolicyKey::isolation([10, 244, 4, 10], POLICY_INGRESS),
        PolicyEntry::DENY,
    )
    .unwrap();
    // Where the node's way out judges deferred egress: 10.244.1.6 may
    // send TCP to N2_POD's identity and UDP anywhere, 10.244.250.1
    // nothing. (So neither is a redirect target; the endpoint stays one.)
    let n2_pod_identity = maps
        .ipcache()
        .unwrap()
        .iter()
        .find(|(k, _)| k.prefix_len == 32 && k.addr == N2_POD)
        .map(|(_, e)| e.identity)
        .expect("the generated ipcache names every pod");
    let sender = [10, 244, 1, 6];
    for (key, entry) in [
        (
            PolicyKey::isolation(sender, POLICY_EGRESS),
            PolicyEntry::DENY,
        ),
        (
            PolicyKey::new(
                POLICY_PREFIX_PROTOCOL,
                sender,
                POLICY_EGRESS,
                n2_pod_identity,
                ipv4::PROTOCOL_TCP,
                0,
            ),
            PolicyEntry::ALLOW,
        ),
        (
            PolicyKey::new(
                POLICY_PREFIX_PROTOCOL,
                sender,
                POLICY_EGRESS,
                IDENTITY_ANY,
                ipv4::PROTOCOL_UDP,
                0,
            ),
            PolicyEntry::ALLOW,
        ),
        (
            PolicyKey::isolation([10, 244, 250, 1], POLICY_EGRESS),
            PolicyEntry::DENY,
        ),
    ] {
        maps.set_policy(key, entry).unwrap();
    }
    maps.set_revision(3).unwrap();
    let pinned = read_pinned_maps(pin_dir).unwrap();
    assert_eq!(pinned.policy.len(), 5);
    let exit_policy = PolicyTables {
        ipcache: pinned.ipcache,
        policy: pinned.policy,
        revision: pinned.revision,
    };
    let isolating: &[(PolicyKey, PolicyEntry)] = &exit_policy.policy;
    let tunnel_program = program(TUNNEL_EGRESS_PROGRAM);
    let endpoint_counters_before: BTreeMap<_, _> =
        maps.endpoint_counters().unwrap().into_iter().collect();
    let mut egress = Tally::default();
    let mut ingress = Tally::default();
    let mut tunnel = Tally::default();
    for (context, config) in configs() {
        uplink.set_config(&config).unwrap();
        assert_eq!(read_pinned_maps(pin_dir).unwrap().config, Some(config));
        run_batch(
            &guard,
            &mut egress,
            UPLINK_EGRESS_PROGRAM,
            context,
            &egress_program,
            None,
            frames,
            |f| {
                Some(hooks::uplink_egress(
                    f,
                    routes,
                    &config,
                    &exit_policy,
                    &mut conntrack,
                    monotonic_ns(),
                ))
            },
            |f| {
                Some(verdict_name(&uplink_egress(
                    f,
                    routes,
                    &config,
                    config.egress_mtu(),
                )))
            },
        );
        run_batch(
            &guard,
            &mut ingress,
            UPLINK_INGRESS_PROGRAM,
            context,
            &ingress_program,
            None,
            frames,
            |f| {
                Some(hooks::uplink_ingress(
                    f, nodes, &config, &fib, endpoints, isolating,
                ))
            },
            |f| {
                Some(ingress_verdict_name(
                    f, nodes, &config, &fib, endpoints, isolating,
                ))
            },
        );
        // weft_tunnel_egress (the vxlan device's, attached in mode vxlan
        // only) reads nothing of the config but the Service range.
        {
            run_batch(
                &guard,
                &mut tunnel,
                TUNNEL_EGRESS_PROGRAM,
                context,
                &tunnel_program,
                None,
                frames,
                |f| hooks::tunnel_egress(f, &exit_policy, &mut conntrack, monotonic_ns(), &config),
                |_| None,
            );
        }
    }

    // The way out bumps the per-endpoint counters of the egress it judged,
    // as the pod hooks do.
    assert!(
        !egress.endpoint_counters.is_empty() && !tunnel.endpoint_counters.is_empty(),
        "the node's way out judged no egress-isolated sender"
    );
    assert_endpoint_counters_moved(&maps, &endpoint_counters_before, &[&egress, &tunnel]);

    pod.print(POD_INGRESS_PROGRAM);
    policy.print("weft_pod_ingress and weft_pod_egress under generated policy");
    egress.print(UPLINK_EGRESS_PROGRAM);
    ingress.print(UPLINK_INGRESS_PROGRAM);
    tunnel.print(TUNNEL_EGRESS_PROGRAM);

    let mismatches: Vec<&String> = [&pod, &policy, &egress, &ingress, &tunnel]
        .iter()
        .flat_map(|t| t.mismatches.iter())
        .collect();
    let total: usize = [&pod, &policy, &egress, &ingress, &tunnel]
        .iter()
        .map(|t| t.mismatch_count)
        .sum();
    assert!(
        mismatches.is_empty(),
        "{total} frames where the eBPF program and the twin differ; the first ones:\n\n{}",
        mismatches
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );

    // The generator must keep reaching every verdict, or the comparison
    // silently degrades (to all drops, say).
    const AT_LEAST: u64 = 20;
    for (tally, program, wanted) in [
        (
            &pod,
            POD_INGRESS_PROGRAM,
            &[
                Counter::Pass,
                Counter::ArpPass,
                Counter::DropUnknownEndpoint,
                Counter::DropSpoofedSource,
                Counter::DropMalformed,
                Counter::DropUnsupportedProtocol,
            ][..],
        ),
        (
            &policy,
            POD_EGRESS_PROGRAM,
            &[
                Counter::ConntrackNew,
                Counter::ConntrackEstablished,
                Counter::ConntrackInvalid,
                Counter::ConntrackUntracked,
                Counter::PolicyEgressAllowed,
                Counter::PolicyEgressDenied,
                Counter::PolicyIngressAllowed,
                Counter::PolicyIngressDenied,
                Counter::PolicyNotIpv4,
            ][..],
        ),
        (
            &egress,
            UPLINK_EGRESS_PROGRAM,
            &[
                Counter::Encapsulate,
                Counter::UplinkPass,
                Counter::DropTooBig,
                Counter::DropMalformed,
                Counter::DropBadConfig,
                Counter::ConntrackNew,
                Counter::ConntrackEstablished,
                Counter::PolicyEgressAllowed,
                Counter::PolicyEgressDenied,
            ][..],
        ),
        (
            &tunnel,
            TUNNEL_EGRESS_PROGRAM,
            &[
                Counter::ConntrackNew,
                Counter::PolicyEgressAllowed,
                Counter::PolicyEgressDenied,
            ][..],
        ),
        (
            &ingress,
            UPLINK_INGRESS_PROGRAM,
            &[
                Counter::Decapsulate,
                Counter::Redirect,
                Counter::UplinkPass,
                Counter::DropNotFromNode,
                Counter::DropFragment,
                Counter::DropBadChecksum,
                Counter::DropMalformed,
            ][..],
        ),
    ] {
        assert!(
            tally.runs >= 10_000,
            "{program}: only {} frames compared",
            tally.runs
        );
        for counter in wanted {
            assert!(
                tally.counter(counter.name()) >= AT_LEAST,
                "{program}: {} reached only {} times",
                counter.name(),
                tally.counter(counter.name())
            );
        }
    }
    for (tally, program, wanted) in [
        (
            &egress,
            UPLINK_EGRESS_PROGRAM,
            &[
                "Pass(NotIpv4)",
                "Pass(NotPodDestination)",
                "Pass(LocalNode)",
                "Pass(NoEncapsulation)",
                "Pass(SameSubnet)",
            ][..],
        ),
        (
            &ingress,
            UPLINK_INGRESS_PROGRAM,
            &[
                "Pass(NotIpv4)",
                "Pass(NotIpip)",
                "Pass(NotForThisNode)",
                "Pass(VxlanFromNode)",
                "Decapsulate+Redirect",
                "Decapsulate+ToStack(NotPlain)",
                "Decapsulate+ToStack(TtlExpiring)",
                "Decapsulate+ToStack(NotForwarded)",
                "Decapsulate+ToStack(NoNeighbour)",
                "Decapsulate+ToStack(NotAPodVeth)",
                "Decapsulate+ToStack(NotThatPod)",
                "Decapsulate+ToStack(Isolated)",
            ][..],
        ),
    ] {
        for verdict in wanted {
            let n = tally.verdicts.get(*verdict).copied().unwrap_or(0);
            assert!(n >= AT_LEAST, "{program}: {verdict} reached only {n} times");
        }
    }

    // Keep the twin's lookups honest too: the LPM trie and the slice agree
    // on the nested prefixes (checked through the verdicts above), and the
    // node set is what was written.
    assert!(nodes.is_node(N3) && !nodes.is_node([198, 18, 0, 66]));
    assert_eq!(
        routes.remote_node_for([10, 244, 4, 200]),
        Some(RemoteNode::new(N2))
    );
    drop(uplink);
    drop(guard);
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads, so
/// the twin's tracker ages entries as the kernel's does.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a live timespec to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Policy maps generated from `rng` over the frames' addresses: every pod
/// address its own identity, ipBlock-like prefixes sharing some; each pod
/// address isolated or not per direction, with allow entries at every
/// prefix length the compiler writes (all of a peer, all of a protocol,
/// one port, a port range), some for every peer.
fn generated_policy(rng: &mut Rng) -> PolicyTables {
    let plan = addresses();
    let mut ipcache = Vec::new();
    for (i, pod) in plan.pods.iter().enumerate() {
        ipcache.push((
            IpcacheKey::host(*pod),
            IdentityEntry {
                identity: 256 + i as u32,
            },
        ));
    }
    for (i, (addr, prefix)) in [
        ([8, 8, 8, 0], 24),
        ([10, 244, 4, 0], 24),
        ([192, 168, 0, 0], 16),
    ]
    .into_iter()
    .enumerate()
    {
        if rng.percent(70) {
            ipcache.push((
                IpcacheKey::new(addr, prefix),
                IdentityEntry {
                    identity: 400 + i as u32,
                },
            ));
        }
    }
    let identities: Vec<u32> = ipcache
        .iter()
        .map(|(_, e)| e.identity)
        .chain([0, IDENTITY_ANY])
        .collect();
    let mut policy = Vec::new();
    for pod in &plan.pods {
        for direction in [POLICY_INGRESS, POLICY_EGRESS] {
            if rng.percent(35) {
                continue;
            }
            policy.push((PolicyKey::isolation(*pod, direction), PolicyEntry::DENY));
            for _ in 0..rng.range(0, 6) {
                let identity = rng.pick(&identities);
                let protocol = rng.pick(&[6u8, 17, 1, 132]);
                let any_port = rng.u16();
                let port = rng.pick(&[53u16, 80, 443, 8080, any_port]);
                let prefix = rng.pick(&[
                    POLICY_PREFIX_IDENTITY,
                    POLICY_PREFIX_PROTOCOL,
                    POLICY_PREFIX_PROTOCOL + 4,
                    POLICY_PREFIX_FULL - 6,
                    POLICY_PREFIX_FULL,
                ]);
                policy.push((
                    PolicyKey::new(prefix, *pod, direction, identity, protocol, port),
                    PolicyEntry::ALLOW,
                ));
            }
        }
    }
    // The trie holds one entry per key: the last written wins, as below.
    policy.sort_by_key(|(k, _)| *k);
    policy.dedup_by_key(|(k, _)| *k);
    PolicyTables {
        ipcache,
        policy,
        revision: 0,
    }
}

/// Both policy hooks under generated policy maps, over two revisions:
/// the second policy re-checks (and cuts) what the first let through. The
/// twin reads the maps back from the pins and keeps its own tracker, which
/// must end up holding the kernel's connections.
fn run_policy(
    pin_dir: &Path,
    guard: &PodGuard,
    frames: &[Frame],
    conntrack: &mut Conntrack,
    program: &impl Fn(&str) -> SchedClassifier,
    config: &NodeConfig,
) -> Tally {
    let mut maps = PolicyMaps::load(pin_dir).expect("load the policy maps");
    let ingress_program = program(POD_INGRESS_PROGRAM);
    let egress_program = program(POD_EGRESS_PROGRAM);
    let ctx = skb_ctx_on(ENDPOINT_IFINDEX);
    let endpoint = Some(EndpointInfo::new(ENDPOINT_IP));
    let mut rng = Rng::new(env_or("WEFT_DIFF_SEED", 0x5eed_4e77) ^ 0x9011c);
    let mut tally = Tally::default();
    let endpoint_counters_before: BTreeMap<_, _> =
        maps.endpoint_counters().unwrap().into_iter().collect();
    for revision in [1u32, 2] {
        let PolicyTables {
            ipcache, policy, ..
        } = generated_policy(&mut rng);
        // New entries first, then what the new policy no longer has.
        for (key, entry) in &ipcache {
            maps.set_ipcache(*key, *entry).unwrap();
        }
        for (key, entry) in &policy {
            maps.set_policy(*key, *entry).unwrap();
        }
        for old in maps.ipcache().unwrap() {
            if !ipcache.iter().any(|(k, _)| *k == old.0) {
                maps.remove_ipcache(old.0).unwrap();
            }
        }
        for old in maps.policy().unwrap() {
            if !policy.iter().any(|(k, _)| *k == old.0) {
                maps.remove_policy(old.0).unwrap();
            }
        }
        maps.set_revision(revision).unwrap();
        assert_eq!(maps.revision().unwrap(), revision);
        let pinned = read_pinned_maps(pin_dir).expect("read the pinned maps");
        let mut sorted = ipcache.clone();
        sorted.sort_unstable();
        assert_eq!(pinned.ipcache, sorted, "the ipcache reads back as written");
        assert_eq!(
            pinned.policy, policy,
            "the policy map reads back as written"
        );
        let tables = PolicyTables {
            ipcache: pinned.ipcache,
            policy: pinned.policy,
            revision: pinned.revision,
        };
        let context = format!("revision {revision}, {} policy entries", policy.len());
        run_batch(
            guard,
            &mut tally,
            POD_INGRESS_PROGRAM,
            &context,
            &ingress_program,
            Some(&ctx),
            frames,
            |f| {
                Some(hooks::pod_ingress(
                    f,
                    endpoint.as_ref(),
                    &tables,
                    conntrack,
                    monotonic_ns(),
                    config,
                ))
            },
            |_| None,
        );
        run_batch(
            guard,
            &mut tally,
            POD_EGRESS_PROGRAM,
            &context,
            &egress_program,
            Some(&ctx),
            frames,
            |f| {
                Some(hooks::pod_egress(
                    f,
                    &tables,
                    conntrack,
                    monotonic_ns(),
                    config,
                ))
            },
            |_| None,
        );
    }
    assert!(
        !tally.endpoint_counters.is_empty(),
        "generated policy decided nothing for an isolated endpoint"
    );
    assert_endpoint_counters_moved(&maps, &endpoint_counters_before, &[&tally]);
    // The two trackers hold the same connections (times aside).
    let strip = |e: &weft_common::conntrack::ConntrackEntry| {
        (e.policy_revision, e.state, e.opener, e.flags)
    };
    let mut kernel: Vec<_> = maps
        .conntrack()
        .unwrap()
        .iter()
        .map(|(k, e)| (format!("{k:?}"), strip(e)))
        .collect();
    let mut twin: Vec<_> = conntrack
        .0
        .iter()
        .map(|(k, e)| (format!("{k:?}"), strip(e)))
        .collect();
    kernel.sort();
    twin.sort();
    assert!(!kernel.is_empty(), "the policy hooks tracked no connection");
    assert_eq!(
        kernel, twin,
        "the kernel's and the twin's connection trackers"
    );
    tally
}
