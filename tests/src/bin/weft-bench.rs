//! `make bench`: figures, not pass/fail.
//!
//! 1. CNI ADD and DEL latency (median, p99) of weft-cni with 10 and with 200
//!    pods on the node, against the reference `bridge`
//!    plugin with `host-local` IPAM (Debian's containernetworking-plugins),
//!    measured in the same run on the same lab node, so the machine's speed
//!    cancels out of the ratio.
//! 2. BGP convergence: a 10-node lab (full iBGP mesh) gets an 11th node with
//!    `weftctl lab node add`; how long until every other node's kernel
//!    routes the new node's pod CIDR, and until the new node routes all the
//!    others'. Three rounds (the node is deleted and added again), median.
//! 3. Throughput: single-stream TCP (iperf3) in a 2-node lab per
//!    encapsulation mode (ipip with the node's stack forwarding what it
//!    decapsulates, ipip-redirect with the direct redirect into the pod,
//!    vxlan: the kernel's own vxlan device, the reference; none), pod to
//!    pod across nodes and on the same node, each as a ratio to the bare
//!    underlay (node1 to node2 on their eth0 addresses) measured in the
//!    same lab, in the same rounds (median of three 5 s streams per path
//!    by default). Then the same paths' request/response rate: 1-byte TCP
//!    ping-pong, client and server pinned to one CPU, so the figure is the
//!    inverse of one transaction's CPU cost (syscalls, wake-ups and the
//!    whole packet path both ways), which bulk TCP hides behind GSO and
//!    GRO. A mode whose lab or measurement fails prints the error in its
//!    rows; the others go on.
//! 4. NetworkPolicy (`policy`, `policy-apply`, `policy-apply-k8s`,
//!    `policy-memory`; the module `policy`): the cost of 0 to 10,000 rules
//!    beside as many iptables rules, the time from `lab apply` (directory
//!    store) and from `kubectl apply` (a Kubernetes lab, the agents on
//!    their watches) to the first denied packet, and the maps' memory at
//!    1,000 policies and 10,000 remote pods.
//! 5. Kubernetes datastore (`kubernetes`; the module `kubernetes`): the
//!    agent against a real API server holding 100 Nodes, 10,000 Pods and
//!    1,000 NetworkPolicies: time to its first complete list and to ready,
//!    and its memory against the same agent in a cluster of its own Node
//!    only, in the same control plane.
//!
//! `weft-bench [cni|bgp|throughput|policy|policy-apply|policy-apply-k8s|policy-memory|kubernetes|all]... [--seconds N]
//! [--rounds N] [--modes ipip,ipip-redirect,vxlan,none] [--k8s-nodes N] [--k8s-pods N] [--k8s-policies N]` (no section: all; `--help` for the
//! environment twins and the other knobs). Every lab it makes is
//! named `wbench-*` and torn down afterwards, also when a section fails.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weft_tests::*;

/// The Kubernetes datastore section (issue #11).
#[path = "weft-bench/kubernetes.rs"]
mod kubernetes;
/// The NetworkPolicy sections (issue #10).
#[path = "weft-bench/policy.rs"]
mod policy;

const ROUNDS: usize = 100;
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

struct Plugin<'a> {
    label: &'a str,
    binary: &'a Path,
    plugin_dir: &'a Path,
    config: String,
}

const SECTIONS: [&str; 8] = [
    "cni",
    "bgp",
    "throughput",
    "policy",
    "policy-apply",
    "policy-apply-k8s",
    "policy-memory",
    "kubernetes",
];
/// The throughput section's modes: the agents' `--encap`, and for ipip
/// both settings of `--direct-redirect` (see [`lab_up_flags`]).
const MODES: [&str; 4] = ["ipip", "ipip-redirect", "vxlan", "none"];
/// Seconds per iperf3 stream.
const SECONDS: u32 = 5;

/// Rounds of the three streams per mode; each row is their median.
const THROUGHPUT_ROUNDS: u32 = 3;

const USAGE: &str = "usage: weft-bench [cni|bgp|throughput|policy|policy-apply|policy-apply-k8s|policy-memory|kubernetes|all]...
       [--seconds N] [--rounds N] [--modes ipip,ipip-redirect,vxlan,none] [--k8s-nodes N] [--k8s-pods N] [--k8s-policies N]
  sections (default all): cni = CNI ADD/DEL latency, bgp = BGP convergence,
                          throughput = iperf3 and TCP request/response in a lab per encapsulation mode,
                          policy = TCP request/response, connect rate and iperf3 across nodes with the
                            destination behind 0/100/1,000/10,000 NetworkPolicy rules, beside the same
                            counts as iptables rules in one chain,
                          policy-apply = `weftctl lab apply` of a deny to the first denied UDP datagram, and
                            `lab delete` to the first one through again (median, p99), directory store,
                          policy-apply-k8s = the same with `kubectl apply`/`kubectl delete` on a Kubernetes lab
                            (`lab up --kubernetes`; needs the control plane built), and the kubectl run times,
                          policy-memory = the pinned maps' kernel memory and entries at 1,000 policies and
                            10,000 remote pods, and the agent's compile time for them,
                          kubernetes = the agent (--datastore kubernetes --routing static) against the test control
                            plane holding only its Node, then N Nodes, Pods and NetworkPolicies: time to the first
                            complete list and to ready, VmRSS/VmHWM, bytes per pod (needs the control plane built:
                            scripts/build-control-plane.sh)
  --seconds N   seconds per iperf3 stream (WEFT_BENCH_SECONDS, default 5)
  --rounds N    rounds of the throughput streams, median reported (WEFT_BENCH_THROUGHPUT_ROUNDS, default 3)
  --modes LIST  encapsulation modes to measure (WEFT_BENCH_MODES, default ipip,ipip-redirect,vxlan,none;
                ipip = --direct-redirect false, ipip-redirect = --direct-redirect true)
  --k8s-nodes N     kubernetes: Nodes, the agent's included (WEFT_BENCH_K8S_NODES, default 100, at most 250)
  --k8s-pods N      kubernetes: Pods, spread over the Nodes (WEFT_BENCH_K8S_PODS, default 10000, at most 250 per Node)
  --k8s-policies N  kubernetes: NetworkPolicies (WEFT_BENCH_K8S_POLICIES, default 1000)
  environment: WEFT_BENCH_SECTIONS (comma-separated sections), WEFT_BENCH_ROUNDS (CNI pods, 100),
               WEFT_BENCH_BGP_NODES (10), WEFT_BENCH_BGP_ROUNDS (3),
               WEFT_BENCH_LAB_FLAGS (more `lab up` flags for the cni, bgp, policy-apply(-k8s) and policy-memory labs,
               e.g. \"--encap none\"), WEFT_BENCH_POLICY_SECONDS (seconds per policy measurement, 2),
               WEFT_BENCH_POLICY_ROUNDS (2),
               WEFT_BENCH_POLICY_CHANGES (policy-apply and policy-apply-k8s changes, 50), WEFT_BENCH_POLICIES (policy-memory, 1000),
               WEFT_BENCH_REMOTE_PODS (policy-memory, at most 10000; 10000)";

#[derive(Debug, PartialEq)]
struct Options {
    sections: Vec<String>,
    seconds: u32,
    rounds: u32,
    modes: Vec<String>,
    k8s: kubernetes::Scale,
}

/// Command line first, then the environment, then the defaults.
fn parse_args(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let mut sections: Vec<String> = Vec::new();
    let mut seconds = env("WEFT_BENCH_SECONDS");
    let mut rounds = env("WEFT_BENCH_THROUGHPUT_ROUNDS");
    let mut modes = env("WEFT_BENCH_MODES");
    let mut k8s_nodes = env("WEFT_BENCH_K8S_NODES");
    let mut k8s_pods = env("WEFT_BENCH_K8S_PODS");
    let mut k8s_policies = env("WEFT_BENCH_K8S_POLICIES");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "-h" | "--help" => return Err(String::new()),
            "--seconds" => &mut seconds,
            "--rounds" => &mut rounds,
            "--modes" => &mut modes,
            "--k8s-nodes" => &mut k8s_nodes,
            "--k8s-pods" => &mut k8s_pods,
            "--k8s-policies" => &mut k8s_policies,
            f if f.starts_with('-') => return Err(format!("unknown flag {f}")),
            section => {
                sections.extend(list(section));
                continue;
            }
        };
        *slot = Some(match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(format!("{flag} needs a value"))?,
        });
    }
    if sections.is_empty() {
        sections = env("WEFT_BENCH_SECTIONS")
            .map(|s| list(&s))
            .unwrap_or_default();
    }
    if sections.is_empty() || sections.iter().any(|s| s == "all") {
        sections = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    if let Some(bad) = sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(format!(
            "unknown section {bad:?} (sections: {}, all)",
            SECTIONS.join(", ")
        ));
    }
    let positive = |what: &str, value: Option<String>, default: u32| match value {
        None => Ok(default),
        Some(s) => match s.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} {s:?} is not a positive whole number")),
        },
    };
    let seconds = positive("--seconds", seconds, SECONDS)?;
    let rounds = positive("--rounds", rounds, THROUGHPUT_ROUNDS)?;
    let k8s = kubernetes::Scale {
        nodes: positive("--k8s-nodes", k8s_nodes, kubernetes::NODES)?,
        pods: positive("--k8s-pods", k8s_pods, kubernetes::PODS)?,
        policies: positive("--k8s-policies", k8s_policies, kubernetes::POLICIES)?,
    }
    .check()?;
    let modes = modes
        .map(|m| list(&m))
        .unwrap_or_else(|| MODES.iter().map(|m| m.to_string()).collect());
    if let Some(bad) = modes.iter().find(|m| !MODES.contains(&m.as_str())) {
        return Err(format!(
            "unknown mode {bad:?} (modes: {})",
            MODES.join(", ")
        ));
    }
    if modes.is_empty() {
        return Err("--modes names no mode".into());
    }
    Ok(Options {
        sections,
        seconds,
        rounds,
        modes,
        k8s,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args, |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("weft-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    require_root();
    // A section that breaks (its panic message is on stderr, its labs torn
    // down as the panic unwinds) does not stop the others.
    let mut failed = Vec::new();
    for (i, section) in options.sections.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let run = std::panic::AssertUnwindSafe(|| match section.as_str() {
            "cni" => cni_latency(),
            "bgp" => bgp_convergence(),
            "policy" => policy::rule_scaling(
                env_or("WEFT_BENCH_POLICY_SECONDS", policy::POLICY_SECONDS).max(1),
                env_or("WEFT_BENCH_POLICY_ROUNDS", policy::POLICY_ROUNDS).max(1),
            ),
            "policy-apply" => policy::apply_latency(
                policy::Store::Directory,
                env_or("WEFT_BENCH_POLICY_CHANGES", policy::CHANGES),
            ),
            "policy-apply-k8s" => policy::apply_latency(
                policy::Store::Kubernetes,
                env_or("WEFT_BENCH_POLICY_CHANGES", policy::CHANGES),
            ),
            "policy-memory" => policy::map_memory(
                env_or("WEFT_BENCH_POLICIES", policy::MEMORY_POLICIES),
                env_or("WEFT_BENCH_REMOTE_PODS", policy::MEMORY_REMOTE_PODS),
            ),
            "kubernetes" => kubernetes::agent_at_scale(options.k8s),
            _ => throughput(options.seconds, options.rounds, &options.modes),
        });
        if std::panic::catch_unwind(run).is_err() {
            println!("({section} section failed: see the error above)");
            failed.push(section.as_str());
        }
    }
    if !failed.is_empty() {
        eprintln!("weft-bench: sections that failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// Brings up a lab named exactly `name` (the bench's labs are `wbench-*`);
/// the returned [`Lab`] tears it down when dropped. On failure the lab is
/// torn down too and the error is weftctl's message.
fn bench_lab<S: AsRef<str>>(
    name: &str,
    nodes: u32,
    pods_per_node: u32,
    flags: &[S],
) -> Result<Lab, String> {
    require_root();
    // Made first, so that whatever happens below, dropping it runs `lab down`.
    let lab = Lab {
        name: name.to_string(),
    };
    let (nodes, pods) = (nodes.to_string(), pods_per_node.to_string());
    let mut args = vec![
        "lab",
        "up",
        "--lab",
        name,
        "--nodes",
        &nodes,
        "--pods-per-node",
        &pods,
    ];
    args.extend(flags.iter().map(AsRef::as_ref));
    let out = weftctl(&args);
    if out.status.success() {
        Ok(lab)
    } else {
        Err(format!(
            "weftctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn cni_latency() {
    let runs = std::env::var("WEFT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let lab = bench_lab("wbench-cni", 1, 0, &lab_flags()).unwrap_or_else(|e| panic!("{e}"));
    let node = lab.node("node1");
    // host-local's leases live in the bench's own directory, not the lab's.
    let leases = tempfile::Builder::new()
        .prefix("weft-bench-host-local-")
        .tempdir()
        .expect("temp dir");
    let weft_bin = bin("weft-cni");
    let bin_dir = bin_dir();
    let reference_dir = Path::new(REFERENCE_PLUGINS);
    let bridge_bin = reference_dir.join("bridge");
    assert!(
        bridge_bin.exists(),
        "{} is missing: install containernetworking-plugins (make deps)",
        bridge_bin.display()
    );

    let plugins = [
        Plugin { label: "weft-cni", binary: &weft_bin, plugin_dir: &bin_dir, config: lab.cni_config("node1", "1.1.0") },
        Plugin {
            label: "bridge+host-local (reference)",
            binary: &bridge_bin,
            plugin_dir: reference_dir,
            config: serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "benchbr",
                "type": "bridge",
                "bridge": "benchbr0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {"type": "host-local", "subnet": "10.244.200.0/24", "dataDir": leases.path()}
            })
            .to_string(),
        },
    ];

    println!(
        "CNI latency: {runs} ADDs and DELs of one pod on a lab node already holding N-1 pods \
         (N = {CNI_SIZES:?}), one call at a time (ip netns exec included in both)"
    );
    println!(
        "{:<32} {:>5} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "N", "verb", "median", "p99", "min", "max"
    );
    // (plugin, N) -> (ADD, DEL) medians
    let mut medians = Vec::new();
    for plugin in &plugins {
        for size in CNI_SIZES {
            let (add, del) = measure(plugin, &lab, &node.netns, runs, size);
            for (verb, samples) in [("ADD", &add), ("DEL", &del)] {
                let s = Stats::of(samples);
                println!(
                    "{:<32} {:>5} {:>6} {:>10} {:>10} {:>10} {:>10}",
                    plugin.label,
                    size,
                    verb,
                    ms(s.median),
                    ms(s.p99),
                    ms(s.min),
                    ms(s.max)
                );
            }
            medians.push((Stats::of(&add).median, Stats::of(&del).median));
        }
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let n = CNI_SIZES.len();
    for (i, size) in CNI_SIZES.iter().enumerate() {
        println!(
            "N={size}: weft-cni / reference: ADD median x{:.2}, DEL median x{:.2}",
            ratio(medians[i].0, medians[n + i].0),
            ratio(medians[i].1, medians[n + i].1)
        );
    }
    println!(
        "weft-cni N={} / N={}: ADD median x{:.2}, DEL median x{:.2} (flat is x1.00)",
        CNI_SIZES[n - 1],
        CNI_SIZES[0],
        ratio(medians[n - 1].0, medians[0].0),
        ratio(medians[n - 1].1, medians[0].1)
    );
}

/// How many pods the node holds while ADD and DEL are timed: the cost of
/// a CNI call should not grow with them.
const CNI_SIZES: [usize; 2] = [10, 200];

const BGP_NODES: u32 = 10;
const BGP_ROUNDS: usize = 3;
/// How often each node's routes are looked at.
const POLL: Duration = Duration::from_millis(10);
/// Longer than any sane convergence; a round that takes this long is reported as such.
const GIVE_UP: Duration = Duration::from_secs(60);

/// One `lab node add`, timed from its start (Instant of spawning weftctl).
struct Join {
    /// `node add --no-wait` returned: the new agent answered Status ready
    /// (weftctl polls readiness every 100 ms, so this is up to 100 ms late).
    ready: Duration,
    /// The last of the old nodes routes the new node's pod CIDR.
    others_have_new: Duration,
    /// The new node routes every old node's pod CIDR.
    new_has_others: Duration,
}

fn bgp_convergence() {
    let nodes = env_or("WEFT_BENCH_BGP_NODES", BGP_NODES);
    let rounds = env_or("WEFT_BENCH_BGP_ROUNDS", BGP_ROUNDS as u32) as usize;
    let lab = bench_lab("wbench-bgp", nodes, 0, &lab_flags()).unwrap_or_else(|e| panic!("{e}"));
    let old = lab.status().nodes;
    let new_index = nodes + 1;
    let new_netns = format!("{}-node{new_index}", lab.name);
    let new_cidr = prefix(&format!("10.244.{new_index}.0/24"));
    let old_cidrs: Vec<(Ipv4Addr, u8)> = old.iter().map(|n| prefix(&n.pod_cidr)).collect();

    println!(
        "BGP convergence: {nodes}-node lab (iBGP full mesh), `weftctl lab node add` of node{new_index}; \
         times from the start of `node add`; routes read every {} ms in each node (/proc/net/route of its netns); \
         median of {rounds} rounds (node deleted and added again between rounds)",
        POLL.as_millis()
    );
    println!(
        "{:<8} {:>14} {:>26} {:>26}",
        "round",
        "agent ready",
        format!("all {nodes} have node{new_index}"),
        format!("node{new_index} has all {nodes}")
    );
    let mut joins = Vec::new();
    for round in 1..=rounds {
        let join = measure_join(&lab, &old, &new_netns, new_cidr, &old_cidrs);
        println!(
            "{:<8} {:>14} {:>26} {:>26}",
            round,
            ms(join.ready),
            ms(join.others_have_new),
            ms(join.new_has_others)
        );
        joins.push(join);
        if round < rounds {
            lab.ctl_ok(&["lab", "node", "del", &format!("node{new_index}")]);
            // The next round must start from nodes that forgot the old one.
            let gone = old
                .iter()
                .all(|n| wait_routes(&n.netns, &[new_cidr], false, GIVE_UP).is_some());
            if !gone {
                println!(
                    "(node{new_index}'s pod CIDR outlived its deletion by {GIVE_UP:?}; stopping after {round} rounds)"
                );
                break;
            }
        }
    }
    let median = |f: &dyn Fn(&Join) -> Duration| {
        let mut v: Vec<Duration> = joins.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "{:<8} {:>14} {:>26} {:>26}",
        "median",
        ms(median(&|j| j.ready)),
        ms(median(&|j| j.others_have_new)),
        ms(median(&|j| j.new_has_others))
    );
    let after = |f: fn(&Join) -> Duration| median(&|j| f(j).saturating_sub(j.ready));
    println!(
        "after the agent was ready (median; 0 means routes were there before `node add` returned): \
         all {nodes} have node{new_index} {}, node{new_index} has all {nodes} {}",
        ms(after(|j| j.others_have_new)),
        ms(after(|j| j.new_has_others))
    );
}

/// `WEFT_BENCH_LAB_FLAGS`: more `lab up` flags for the cni, bgp, policy-apply(-k8s) and policy-memory labs
/// (the throughput labs set their own `--encap`).
fn lab_flags() -> Vec<String> {
    std::env::var("WEFT_BENCH_LAB_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn prefix(cidr: &str) -> (Ipv4Addr, u8) {
    let (ip, len) = cidr.split_once('/').expect("a CIDR");
    (
        ip.parse().expect("an IPv4 address"),
        len.parse().expect("a prefix length"),
    )
}

/// Adds the node (`node add --no-wait`) while one thread per node watches
/// its routes; all times from the spawn of weftctl.
fn measure_join(
    lab: &Lab,
    old: &[NodeView],
    new_netns: &str,
    new_cidr: (Ipv4Addr, u8),
    old_cidrs: &[(Ipv4Addr, u8)],
) -> Join {
    let t0 = Instant::now();
    let add = Command::new(bin("weftctl"))
        .args(["lab", "node", "add", "--no-wait", "--lab", &lab.name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weftctl runs");
    std::thread::scope(|scope| {
        let watchers: Vec<_> = old
            .iter()
            .map(|n| {
                scope.spawn(move || {
                    wait_routes(&n.netns, &[new_cidr], true, GIVE_UP).map(|_| t0.elapsed())
                })
            })
            .collect();
        let newcomer = scope
            .spawn(move || wait_routes(new_netns, old_cidrs, true, GIVE_UP).map(|_| t0.elapsed()));
        let out = add.wait_with_output().expect("weftctl runs");
        let ready = t0.elapsed();
        assert!(out.status.success(), "lab node add: {}", show(&out));
        let mut others_have_new = Duration::ZERO;
        for (n, w) in old.iter().zip(watchers) {
            let at = w
                .join()
                .expect("watcher")
                .unwrap_or_else(|| panic!("{} never routed the new node", n.name));
            others_have_new = others_have_new.max(at);
        }
        let new_has_others = newcomer
            .join()
            .expect("watcher")
            .expect("the new node never routed all others");
        Join {
            ready,
            others_have_new,
            new_has_others,
        }
    })
}

/// Waits until the main table of `netns` has every one of `prefixes`
/// (`present`) or none of them; polls every [`POLL`] from a thread inside
/// the namespace (no process per look). The namespace may not exist yet.
/// None after `within`.
fn wait_routes(
    netns: &str,
    prefixes: &[(Ipv4Addr, u8)],
    present: bool,
    within: Duration,
) -> Option<()> {
    let deadline = Instant::now() + within;
    let path = Path::new("/run/netns").join(netns);
    let prefixes = prefixes.to_vec();
    // Enter the namespace on a thread of its own, once it exists.
    loop {
        let entered = std::fs::File::open(&path).ok().and_then(|ns| {
            let prefixes = prefixes.clone();
            std::thread::spawn(move || {
                use std::os::fd::AsFd;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                loop {
                    let table =
                        std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
                    let have = main_table(&table);
                    if prefixes.iter().all(|p| have.contains(p) == present) {
                        return Some(Some(()));
                    }
                    if Instant::now() >= deadline {
                        return Some(None);
                    }
                    std::thread::sleep(POLL);
                }
            })
            .join()
            .ok()
            .flatten()
        });
        match entered {
            Some(done) => return done,
            // Not there yet (or not yet a namespace mount): look again.
            None if Instant::now() < deadline => std::thread::sleep(POLL),
            None => return None,
        }
    }
}

/// The (destination, prefix length) of every route in /proc/net/route
/// (IPv4 main table; addresses as the kernel's native-endian hex of the
/// network-order bytes).
fn main_table(text: &str) -> Vec<(Ipv4Addr, u8)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((Ipv4Addr::from(dst.to_ne_bytes()), mask.count_ones() as u8))
        })
        .collect()
}

/// Times `runs` ADDs, then `runs` DELs, each pod in a fresh namespace.
/// `runs` ADD then DEL of one pod, timed, while `size - 1` other pods
/// stay wired on the node (added before, deleted after, untimed).
fn measure(
    plugin: &Plugin<'_>,
    lab: &Lab,
    node_netns: &str,
    runs: usize,
    size: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut ns = Namespaces::default();
    let tag = if plugin.label.starts_with("weft") {
        "w"
    } else {
        "r"
    };
    let resident: Vec<(String, String)> = (1..size)
        .map(|i| {
            (
                format!("bench{tag}{size}r{i:04}"),
                ns.add(&format!("{}-{tag}{size}r{i}", lab.name)),
            )
        })
        .collect();
    let timed_netns = ns.add(&format!("{}-{tag}{size}t", lab.name));
    let call = |command: &str, id: &str, netns: &str| {
        let start = Instant::now();
        let out = CniCall {
            command,
            container_id: id,
            netns: Some(netns),
            ifname: "eth0",
            args: "",
            config: &plugin.config,
        }
        .run_with(node_netns, plugin.binary, plugin.plugin_dir);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{} {command} {id}: {}",
            plugin.label,
            show(&out)
        );
        took
    };
    for (id, netns) in &resident {
        call("ADD", id, netns);
    }
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let id = format!("bench{tag}{size}t{i:04}");
        add.push(call("ADD", &id, &timed_netns));
        del.push(call("DEL", &id, &timed_netns));
    }
    for (id, netns) in &resident {
        call("DEL", id, netns);
    }
    (add, del)
}

/// The paths the throughput section measures in each lab, in this order;
/// the first is the baseline of the lab's ratios.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Bare,
    AcrossNodes,
    SameNode,
}

const ROUTES: [Route; 3] = [Route::Bare, Route::AcrossNodes, Route::SameNode];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Bare => "bare underlay (node1 -> node2)",
            Route::AcrossNodes => "pod -> pod across nodes (node1-a -> node2-a)",
            Route::SameNode => "pod -> pod same node (node1-a -> node1-b)",
        }
    }
}

/// One iperf3 stream's figures.
#[derive(Debug, PartialEq)]
struct Stream {
    /// The receiver's rate (`end.sum_received.bits_per_second`).
    bits_per_second: f64,
    /// The sender's default MSS (`start.tcp_mss_default`): shows the path MTU.
    mss: Option<u64>,
}

fn throughput(seconds: u32, rounds: u32, modes: &[String]) {
    let load_before = load_average();
    println!(
        "Throughput: single-stream TCP (iperf3 -t {seconds}, the receiver's rate), then request/response: \
         1-byte TCP ping-pong on one connection for {seconds} s (TCP_NODELAY, one transaction at a time, \
         client and server pinned to one CPU: the inverse of a transaction's CPU cost, packet path included, \
         which bulk TCP hides behind GSO and GRO), {rounds} rounds, the paths taken in turn within each round; \
         the figure is the median over the rounds, min-max their range."
    );
    println!(
        "One lab per mode (`weftctl lab up --nodes 2 --pods-per-node 2 --encap MODE [--direct-redirect true|false]`), up and down in turn; \
         ipip and ipip-redirect share one lab, whose agents are restarted with the other --direct-redirect between the two \
         (`weftctl lab agent start NODE --direct-redirect true|false`), every other round in the other order. \
         Each mode is compared with the bare underlay of its own lab (node1's eth0 to node2's eth0: \
         the fabric bridge, no Weft in the path): `vs bare` is the median over the rounds of the path's rate \
         over the bare rate of the same round."
    );
    println!(
        "Modes: ipip = Weft's eBPF IP-in-IP, the receiving node's stack forwarding the decapsulated packet \
         into the pod (--direct-redirect false); ipip-redirect = the same, but the uplink program hands it \
         straight into the pod (--direct-redirect true: bpf_fib_lookup + bpf_redirect_peer); \
         vxlan = the kernel's own vxlan device (the reference); none = native routing."
    );
    let measured = measure_modes(modes, seconds, rounds);
    print_table("Gbit/s", &measured, |m| &m.streams);
    println!();
    print_table("kT/s", &measured, |m| &m.transactions);
    let bares: Vec<(&str, f64)> = measured
        .iter()
        .filter_map(|(mode, m)| {
            let m = m.as_ref().ok()?;
            Some((*mode, median(rates(&m.streams[0]))?))
        })
        .collect();
    if bares.len() > 1 {
        let (lo, hi) = bares
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, b)| {
                (lo.min(b), hi.max(b))
            });
        println!(
            "bare underlay in each lab: {} Gbit/s (spread {:.0}% between the labs: how noisy these figures are)",
            bares
                .iter()
                .map(|(m, b)| format!("{m} {b:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            (hi - lo) / hi * 100.0
        );
    }
    let of = |mode: &str| {
        measured
            .iter()
            .find(|(m, _)| *m == mode)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    if let (Some(stack), Some(redirect)) = (of("ipip"), of("ipip-redirect")) {
        let across = ROUTES
            .iter()
            .position(|r| *r == Route::AcrossNodes)
            .expect("a route");
        let show = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.3}x"));
        println!(
            "direct redirect vs the stack, pod -> pod across nodes, in one lab (its agents restarted \
             with the other setting between the two): the median over the rounds of redirect / stack: \
             throughput {}, request/response {}",
            show(paired_ratio(
                &redirect.streams[across],
                &stack.streams[across]
            )),
            show(paired_ratio(
                &redirect.transactions[across],
                &stack.transactions[across]
            )),
        );
    }
    println!(
        "load average (1 min) {} before, {} after, on {} CPUs: other work on the machine lowers and scatters the figures",
        load_before,
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

/// What one mode's lab measured: per route (in the order of [`ROUTES`]),
/// each round's iperf3 stream and request/response rate.
struct Measured {
    streams: Vec<Vec<Result<Stream, String>>>,
    transactions: Vec<Vec<Result<Transactions, String>>>,
}

/// Prints one table (`unit`: the rate column's heading) over every mode's
/// samples as `pick` chooses them.
fn print_table<T: Rate>(
    unit: &str,
    measured: &[(&str, Result<Measured, String>)],
    pick: impl Fn(&Measured) -> &Vec<Vec<Result<T, String>>>,
) {
    println!(
        "{:<13} {:<46} {:>8} {:>8} {:>13} {:>6}",
        "mode", "path", unit, "vs bare", "min-max", "MSS"
    );
    for (mode, result) in measured {
        let rows = match result {
            Ok(m) => pick(m),
            Err(e) => {
                for route in ROUTES {
                    print_row::<T>(mode, route, &[], None);
                }
                print_error(&format!("the {mode} lab did not come up: {e}"));
                continue;
            }
        };
        for (route, samples) in ROUTES.into_iter().zip(rows) {
            print_row(mode, route, samples, paired_ratio(samples, &rows[0]));
            // Each distinct error once (a failing path usually fails alike every round).
            let mut errors: Vec<&str> = Vec::new();
            for e in samples.iter().filter_map(|s| s.as_ref().err()) {
                if !errors.contains(&e.as_str()) {
                    errors.push(e);
                }
            }
            let failed = samples.iter().filter(|s| s.is_err()).count();
            for e in errors {
                if failed < samples.len() {
                    print_error(&format!("{failed} of {} rounds failed: {e}", samples.len()));
                } else {
                    print_error(e);
                }
            }
        }
    }
}

/// The first figure of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// A measurement's rate, as its table shows it.
trait Rate {
    /// In the table's unit (Gbit/s, thousands of transactions per second).
    fn rate(&self) -> f64;
    /// The MSS the measurement saw, if it tells.
    fn mss(&self) -> Option<u64> {
        None
    }
}

impl Rate for Stream {
    fn rate(&self) -> f64 {
        self.bits_per_second / 1e9
    }

    fn mss(&self) -> Option<u64> {
        self.mss
    }
}

impl Rate for Transactions {
    fn rate(&self) -> f64 {
        self.per_second / 1e3
    }
}

/// One table row: the median of the rounds that succeeded, the ratio to
/// the bare underlay, their range and the MSS; "error" if no round did.
fn print_row<T: Rate>(mode: &str, route: Route, samples: &[Result<T, String>], ratio: Option<f64>) {
    let row = |rate: String, ratio: String, range: String, mss: String| {
        println!(
            "{:<13} {:<46} {:>8} {:>8} {:>13} {:>6}",
            mode,
            route.label(),
            rate,
            ratio,
            range,
            mss
        )
    };
    let values = rates(samples);
    let Some(median) = median(values.clone()) else {
        row("error".into(), "-".into(), "-".into(), "-".into());
        return;
    };
    let lo = values.iter().copied().fold(f64::MAX, f64::min);
    let hi = values.iter().copied().fold(f64::MIN, f64::max);
    let mss = samples
        .iter()
        .find_map(|s| s.as_ref().ok().and_then(Rate::mss))
        .map_or("-".into(), |m| m.to_string());
    row(
        format!("{median:.2}"),
        ratio.map_or("-".into(), |r| format!("{r:.2}")),
        format!("{lo:.2}-{hi:.2}"),
        mss,
    );
}

/// The rates of the rounds that succeeded, in the table's unit.
fn rates<T: Rate>(samples: &[Result<T, String>]) -> Vec<f64> {
    samples
        .iter()
        .filter_map(|s| s.as_ref().ok().map(Rate::rate))
        .collect()
}

/// The median over the rounds where both succeeded of `samples[r] / bare[r]`:
/// pairing each stream with the bare stream of its own round cancels the
/// machine's slower drifts.
fn paired_ratio<T: Rate>(samples: &[Result<T, String>], bare: &[Result<T, String>]) -> Option<f64> {
    median(
        samples
            .iter()
            .zip(bare)
            .filter_map(|pair| match pair {
                (Ok(s), Ok(b)) if b.rate() > 0.0 => Some(s.rate() / b.rate()),
                _ => None,
            })
            .collect(),
    )
}

/// The median (the mean of the middle two for an even count); None if empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// An error under its table row, indented, a few lines at most.
fn print_error(e: &str) {
    let lines: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for line in lines.iter().take(6) {
        println!("         {line}");
    }
    if lines.len() > 6 {
        println!("         ({} more lines)", lines.len() - 6);
    }
}

/// A lab the throughput section brings up: its name, its `lab up`
/// flags, and the modes measured in it, each with the `--direct-redirect`
/// its agents run with (`None`: the lab's own).
#[derive(Debug, PartialEq)]
struct LabPlan<'a> {
    name: String,
    flags: Vec<&'a str>,
    modes: Vec<(&'a str, Option<bool>)>,
}

/// One lab per mode, in the order asked; except that ipip and
/// ipip-redirect share one lab when both are asked for: its agents are
/// restarted with the other `--direct-redirect` between the two (`weftctl
/// lab agent start --direct-redirect`), so that the comparison is made on
/// the same namespaces, round by round, and not blurred by two labs'
/// differences.
fn lab_plans(modes: &[String]) -> Vec<LabPlan<'_>> {
    let asked = |m: &str| modes.iter().any(|x| x == m);
    let both = asked("ipip") && asked("ipip-redirect");
    let mut plans = Vec::new();
    for mode in modes {
        let mode = mode.as_str();
        match mode {
            "ipip-redirect" if both => {}
            "ipip" if both => plans.push(LabPlan {
                name: "wbench-tput-ipip".into(),
                flags: lab_up_flags("ipip"),
                modes: vec![("ipip", Some(false)), ("ipip-redirect", Some(true))],
            }),
            _ => plans.push(LabPlan {
                name: format!("wbench-tput-{mode}"),
                flags: lab_up_flags(mode),
                modes: vec![(mode, None)],
            }),
        }
    }
    plans
}

/// Every plan's lab, up for `rounds` rounds of the streams and
/// request/response runs of [`ROUTES`] in each of its modes, and down
/// again (also when something fails); each mode's measurements, in the
/// order of the plans (an error for each mode of a lab that did not come
/// up).
fn measure_modes(
    modes: &[String],
    seconds: u32,
    rounds: u32,
) -> Vec<(&str, Result<Measured, String>)> {
    let mut measured = Vec::new();
    for plan in lab_plans(modes) {
        match measure_lab(&plan, seconds, rounds) {
            Ok(per_mode) => measured.extend(
                plan.modes
                    .iter()
                    .map(|(mode, _)| *mode)
                    .zip(per_mode.into_iter().map(Ok)),
            ),
            Err(e) => measured.extend(plan.modes.iter().map(|(mode, _)| (*mode, Err(e.clone())))),
        }
    }
    measured
}

/// One plan's lab: each of its modes' measurements, in the plan's order.
/// Err: the lab did not come up.
fn measure_lab(plan: &LabPlan, seconds: u32, rounds: u32) -> Result<Vec<Measured>, String> {
    let lab = bench_lab(&plan.name, 2, 2, &plan.flags)?;
    let out = lab.ctl(&["lab", "status", "--json"]);
    if !out.status.success() {
        return Err(format!("lab status: {}", show(&out)));
    }
    let status: StatusView = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("lab status --json is not the documented shape: {e}"))?;
    let node = |name: &str| {
        status
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| (n.netns.as_str(), n.underlay_ip.as_str()))
            .ok_or_else(|| format!("no {name} in the lab"))
    };
    let pod = |name: &str| {
        status
            .pods
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| Some((p.netns.as_str(), p.ip.as_deref()?)))
            .ok_or_else(|| format!("no pod {name} with an address in the lab"))
    };
    // (client netns, server netns, server address) of each route.
    let ends = |route: Route| -> Result<(&str, &str, &str), String> {
        let ((from, _), (to, to_ip)) = match route {
            Route::Bare => (node("node1")?, node("node2")?),
            Route::AcrossNodes => (pod("node1-a")?, pod("node2-a")?),
            Route::SameNode => (pod("node1-a")?, pod("node1-b")?),
        };
        Ok((from, to, to_ip))
    };
    let mut measured: Vec<Measured> = plan
        .modes
        .iter()
        .map(|_| Measured {
            streams: ROUTES.iter().map(|_| Vec::new()).collect(),
            transactions: ROUTES.iter().map(|_| Vec::new()).collect(),
        })
        .collect();
    // The lab's own setting: the one `lab up` gave the agents.
    let mut running = plan
        .flags
        .iter()
        .position(|f| *f == "--direct-redirect")
        .and_then(|i| plan.flags.get(i + 1))
        .map(|v| *v == "true");
    for round in 0..rounds {
        // Every other round in the other order (ABBA): a drift of the
        // machine's speed over the run weighs on both modes alike.
        let mut order: Vec<usize> = (0..plan.modes.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for m in order {
            let switched = match plan.modes[m].1 {
                Some(on) if running != Some(on) => {
                    let switched = switch_direct_redirect(&lab, on);
                    running = switched.is_ok().then_some(on);
                    switched
                }
                _ => Ok(()),
            };
            for (i, route) in ROUTES.into_iter().enumerate() {
                let ends = || switched.clone().and_then(|()| ends(route));
                measured[m].streams[i]
                    .push(ends().and_then(|(from, to, to_ip)| iperf3(to, to_ip, from, seconds)));
                measured[m].transactions[i].push(
                    ends().and_then(|(from, to, to_ip)| request_response(to, to_ip, from, seconds)),
                );
            }
        }
    }
    drop(lab);
    Ok(measured)
}

/// Restarts both nodes' agents with `--direct-redirect on` (the
/// dataplane keeps forwarding while they restart; the first pass of each
/// new agent writes the setting to its uplink program's config).
fn switch_direct_redirect(lab: &Lab, on: bool) -> Result<(), String> {
    let on = on.to_string();
    for node in ["node1", "node2"] {
        let out = lab.ctl(&["lab", "agent", "stop", node]);
        if !out.status.success() {
            return Err(format!("lab agent stop {node}: {}", show(&out)));
        }
        let out = lab.ctl(&["lab", "agent", "start", node, "--direct-redirect", &on]);
        if !out.status.success() {
            return Err(format!(
                "lab agent start {node} --direct-redirect {on}: {}",
                show(&out)
            ));
        }
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(std::io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

/// One request/response run's rate.
#[derive(Debug, PartialEq)]
struct Transactions {
    per_second: f64,
}

/// The TCP port of the request/response server (iperf3 has 5201).
const RR_PORT: u16 = 5299;

/// One request/response run (netperf's TCP_RR): a server on `server_ip`
/// in `server_netns` answers each byte with one byte; a client in
/// `client_netns` sends one and waits for the answer, over one connection
/// with Nagle off, for `seconds`. Both run on CPU 0, so the rate is the
/// inverse of a transaction's CPU cost (two wake-ups on one CPU are cheap;
/// across CPUs, in a VM, they would dominate). Sockets are made by threads
/// inside the namespaces (`weft_dataplane::netns::run_in`).
fn request_response(
    server_netns: &str,
    server_ip: &str,
    client_netns: &str,
    seconds: u32,
) -> Result<Transactions, String> {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let netns = |name: &str| Path::new("/run/netns").join(name);
    let ip: Ipv4Addr = server_ip.parse().map_err(|e| format!("{server_ip}: {e}"))?;
    let addr = SocketAddr::from((ip, RR_PORT));
    let listener =
        weft_dataplane::netns::run_in(&netns(server_netns), move || TcpListener::bind(addr))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("request/response server on {addr} in {server_netns}: {e}"))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        pin_to_cpu(0)?;
        // Not forever: the client may never come.
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(u64::from(seconds) + 10)))?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        // Until the client closes (0 bytes read).
        while stream.read(&mut byte)? == 1 {
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let client = weft_dataplane::netns::run_in(&netns(client_netns), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .map_err(|e| e.to_string())?;
    // On a thread of its own: the pin must not reach the processes this
    // thread starts later (a child inherits its parent thread's CPUs).
    let result = std::thread::spawn(move || -> std::io::Result<f64> {
        let mut stream = client?;
        pin_to_cpu(0)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut byte = [0u8; 1];
        let started = Instant::now();
        let until = started + Duration::from_secs(u64::from(seconds));
        let mut done = 0u64;
        while Instant::now() < until {
            for _ in 0..100 {
                stream.write_all(&byte)?;
                stream.read_exact(&mut byte)?;
            }
            done += 100;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| "the request/response client panicked".to_string())?
    .map_err(|e| format!("request/response client in {client_netns} to {addr}: {e}"));
    // The client's stream is closed by now: the server sees the end.
    let served = server
        .join()
        .map_err(|_| "the request/response server panicked".to_string())?;
    let per_second = result?;
    served.map_err(|e| format!("request/response server in {server_netns}: {e}"))?;
    Ok(Transactions { per_second })
}

/// The `lab up` flags of a throughput mode: ipip names the direct
/// redirect's setting explicitly either way, whatever the agent's default.
fn lab_up_flags(mode: &str) -> Vec<&str> {
    match mode {
        "ipip" => vec!["--encap", "ipip", "--direct-redirect", "false"],
        "ipip-redirect" => vec!["--encap", "ipip", "--direct-redirect", "true"],
        other => vec!["--encap", other],
    }
}

/// A child process killed (SIGKILL to its own pid) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// One stream: a one-off iperf3 server on `server_ip` in `server_netns`,
/// the client in `client_netns`. `ip netns exec` execs iperf3, so the
/// child's pid is iperf3's own.
fn iperf3(
    server_netns: &str,
    server_ip: &str,
    client_netns: &str,
    seconds: u32,
) -> Result<Stream, String> {
    use std::io::BufRead;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("pipe: {e}"))?;
    // The Command (holding the pipe's write ends) is dropped at the end of
    // the statement, so the reader sees EOF once the server is gone.
    let server = Reaped(
        Command::new("ip")
            .args(["netns", "exec", server_netns])
            .args(["iperf3", "-s", "-1", "-B", server_ip, "--forceflush"])
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .spawn()
            .map_err(|e| format!("iperf3 server: {e} (is iperf3 installed? make deps)"))?,
    );
    let (listening, is_listening) = std::sync::mpsc::channel();
    let server_output = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.contains("Server listening") {
                let _ = listening.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    if is_listening.recv_timeout(Duration::from_secs(10)).is_err() {
        drop(server);
        let text = server_output.join().unwrap_or_default();
        return Err(format!(
            "the iperf3 server in {server_netns} did not start listening on {server_ip}: {}",
            text.trim()
        ));
    }
    let secs = seconds.to_string();
    let client = run_until(
        Command::new("ip")
            .args(["netns", "exec", client_netns])
            .args([
                "iperf3",
                "-c",
                server_ip,
                "-t",
                &secs,
                "-J",
                "--connect-timeout",
                "3000",
            ]),
        Duration::from_secs(u64::from(seconds) + 30),
    );
    drop(server);
    let server_text = server_output.join().unwrap_or_default();
    let (status, out, err) = client.map_err(|e| format!("iperf3 client to {server_ip}: {e}"))?;
    parse_iperf3(&out).map_err(|e| {
        let mut msg = format!("iperf3 client in {client_netns} to {server_ip}: {e}");
        if !status.success() {
            msg.push_str(&format!(" ({status})"));
        }
        if !err.trim().is_empty() {
            msg.push_str(&format!("\nclient stderr: {}", err.trim()));
        }
        // The server's own words, without its banner lines.
        for line in server_text.lines().filter(|l| l.contains("error")) {
            msg.push_str(&format!("\nserver: {}", line.trim()));
        }
        msg
    })
}

/// Runs `cmd` with its output collected; kills it (by its pid) if it is
/// still running after `limit`.
fn run_until(cmd: &mut Command, limit: Duration) -> Result<(ExitStatus, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("piped")));
    let err = collect(Box::new(child.stderr.take().expect("piped")));
    let mut child = Reaped(child);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    drop(child);
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Ok((status, out, err)),
        None => Err(format!(
            "killed after {limit:?} without finishing: {}",
            err.trim()
        )),
    }
}

/// The receiver's rate from iperf3's `-J` report, or the error it reports.
fn parse_iperf3(json: &str) -> Result<Stream, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("no JSON report from iperf3 ({e})"))?;
    if let Some(error) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {error}"));
    }
    let bits_per_second = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(Stream {
        bits_per_second,
        mss: v
            .pointer("/start/tcp_mss_default")
            .and_then(serde_json::Value::as_u64),
    })
}

/// Quantiles of samples: durations, or signed microseconds where a
/// difference may be negative.
struct Stats<T = Duration> {
    median: T,
    p99: T,
    min: T,
    max: T,
}

impl<T: Ord + Copy> Stats<T> {
    fn of(samples: &[T]) -> Stats<T> {
        let mut s = samples.to_vec();
        s.sort();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p99: at(0.99),
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

/// A `Name:   N kB` field of /proc/PID/status, in KiB.
fn proc_status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_is_read_as_prefixes() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t000BF40A\t0D0012C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            main_table(table),
            [
                (Ipv4Addr::new(10, 244, 11, 0), 24),
                (Ipv4Addr::new(198, 18, 0, 0), 24)
            ]
        );
        assert_eq!(
            prefix("10.244.11.0/24"),
            (Ipv4Addr::new(10, 244, 11, 0), 24)
        );
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn arguments_then_environment_then_defaults() {
        let none = |_: &str| None;
        let all = parse_args(&[], none).unwrap();
        assert_eq!(all.sections, SECTIONS);
        assert_eq!((all.seconds, all.rounds), (SECONDS, THROUGHPUT_ROUNDS));
        assert_eq!(all.modes, ["ipip", "ipip-redirect", "vxlan", "none"]);
        assert_eq!(
            all.k8s,
            kubernetes::Scale {
                nodes: 100,
                pods: 10_000,
                policies: 1_000
            }
        );
        assert_eq!(
            lab_up_flags("ipip-redirect"),
            ["--encap", "ipip", "--direct-redirect", "true"]
        );
        assert_eq!(
            lab_up_flags("ipip"),
            ["--encap", "ipip", "--direct-redirect", "false"]
        );
        assert_eq!(lab_up_flags("vxlan"), ["--encap", "vxlan"]);
        let modes = args(&["vxlan", "ipip-redirect", "ipip"]);
        let plans = lab_plans(&modes);
        assert_eq!(
            plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["wbench-tput-vxlan", "wbench-tput-ipip"]
        );
        assert_eq!(
            plans[1].modes,
            [("ipip", Some(false)), ("ipip-redirect", Some(true))]
        );
        assert_eq!(plans[0].modes, [("vxlan", None)]);
        let modes = args(&["ipip-redirect"]);
        let alone = lab_plans(&modes);
        assert_eq!(alone[0].name, "wbench-tput-ipip-redirect");
        assert_eq!(alone[0].modes, [("ipip-redirect", None)]);

        let env = |k: &str| match k {
            "WEFT_BENCH_SECTIONS" => Some("bgp".to_string()),
            "WEFT_BENCH_SECONDS" => Some("2".to_string()),
            "WEFT_BENCH_MODES" => Some("vxlan".to_string()),
            "WEFT_BENCH_K8S_PODS" => Some("300".to_string()),
            "WEFT_BENCH_K8S_POLICIES" => Some("20".to_string()),
            _ => None,
        };
        let o = parse_args(&[], env).unwrap();
        assert_eq!(
            (o.sections, o.seconds, o.modes),
            (args(&["bgp"]), 2, args(&["vxlan"]))
        );
        let o = parse_args(
            &args(&[
                "throughput",
                "--seconds",
                "7",
                "--modes=none,ipip",
                "--rounds=1",
            ]),
            env,
        )
        .unwrap();
        assert_eq!(o.sections, ["throughput"]);
        assert_eq!((o.seconds, o.rounds), (7, 1));
        assert_eq!(o.modes, ["none", "ipip"]);
        assert_eq!((o.k8s.nodes, o.k8s.pods, o.k8s.policies), (100, 300, 20));
        let o = parse_args(
            &args(&[
                "kubernetes",
                "--k8s-nodes",
                "3",
                "--k8s-pods=600",
                "--k8s-policies",
                "5",
            ]),
            env,
        )
        .unwrap();
        assert_eq!(o.sections, ["kubernetes"]);
        assert_eq!(
            o.k8s,
            kubernetes::Scale {
                nodes: 3,
                pods: 600,
                policies: 5
            }
        );
        // 751 pods do not fit 3 nodes' /24s; 251 nodes not the InternalIPs.
        let e = parse_args(&args(&["--k8s-nodes", "3", "--k8s-pods", "751"]), none).unwrap_err();
        assert!(e.contains("250 per node"), "{e}");
        assert!(parse_args(&args(&["--k8s-nodes", "251"]), none).is_err());
        assert!(parse_args(&args(&["--k8s-pods", "0"]), none).is_err());
        assert!(parse_args(&args(&["--k8s-policies"]), none).is_err());

        // The Kubernetes twin of policy-apply is a section of its own, run
        // next to it by `all`, and asked for alone or beside it.
        let o = parse_args(&args(&["policy-apply,policy-apply-k8s"]), none).unwrap();
        assert_eq!(o.sections, ["policy-apply", "policy-apply-k8s"]);
        let o = parse_args(&args(&["policy-apply-k8s"]), none).unwrap();
        assert_eq!(o.sections, ["policy-apply-k8s"]);
        let at = |s: &str| all.sections.iter().position(|x| x == s).unwrap();
        assert_eq!(at("policy-apply-k8s"), at("policy-apply") + 1);
        assert!(USAGE.contains("policy-apply-k8s ="), "{USAGE}");
        assert!(parse_args(&args(&["policy-apply-kubernetes"]), none).is_err());
        assert!(parse_args(&args(&["tput"]), none).is_err());
        assert!(parse_args(&args(&["--seconds", "0"]), none).is_err());
        assert!(parse_args(&args(&["--seconds"]), none).is_err());
        assert!(parse_args(&args(&["--modes", "gre"]), none).is_err());
        assert!(parse_args(&args(&["--fast"]), none).is_err());
        assert_eq!(parse_args(&args(&["--help"]), none), Err(String::new()));
    }

    #[test]
    fn proc_status_fields_are_read() {
        let status = "Name:\tweft-agent\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(proc_status_kib(status, "VmRSS"), Some(40_960));
        assert_eq!(proc_status_kib(status, "VmHWM"), Some(51_200));
        assert_eq!(proc_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn iperf3_reports_are_read() {
        let ok = r#"{"start": {"tcp_mss_default": 1398},
                     "end": {"sum_sent": {"bits_per_second": 2e9},
                             "sum_received": {"bits_per_second": 1.5e9}}}"#;
        assert_eq!(
            parse_iperf3(ok),
            Ok(Stream {
                bits_per_second: 1.5e9,
                mss: Some(1398)
            })
        );
        let refused = r#"{"start": {}, "intervals": [], "end": {},
                          "error": "unable to connect to server: Connection refused"}"#;
        assert_eq!(
            parse_iperf3(refused),
            Err("iperf3: unable to connect to server: Connection refused".into())
        );
        assert!(parse_iperf3("").is_err());
        assert!(parse_iperf3(r#"{"end": {}}"#).is_err());
    }

    #[test]
    fn medians_and_ratios_of_the_rounds_that_succeeded() {
        let s = |gbit: f64| {
            Ok(Stream {
                bits_per_second: gbit * 1e9,
                mss: None,
            })
        };
        let e = || Err("x".to_string());
        assert_eq!(rates(&[s(3.0), e(), s(1.0)]), [3.0, 1.0]);
        assert_eq!(median(rates(&[s(3.0), e(), s(1.0), s(2.0)])), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(rates(&[e()])), None);
        // Round by round: 4/8, 3/4 (round 2's bare failed: skipped), 2/2.
        let bare = [s(8.0), e(), s(4.0), s(2.0)];
        let pods = [s(4.0), s(9.0), s(3.0), s(2.0)];
        assert_eq!(paired_ratio(&pods, &bare), Some(0.75));
        assert_eq!(paired_ratio(&bare, &bare), Some(1.0));
        assert_eq!(paired_ratio(&[e(), e()], &bare), None);
    }
}
