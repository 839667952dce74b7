//! `make bench`: figures, not pass/fail.
//!
//! 1. CNI ADD and DEL latency of weft-cni against the reference `bridge`
//!    plugin with `host-local` IPAM (Debian's containernetworking-plugins),
//!    measured in the same run on the same lab node, so the machine's speed
//!    cancels out of the ratio.
//! 2. BGP convergence: a 10-node lab (full iBGP mesh) gets an 11th node with
//!    `weftctl lab node add`; how long until every other node's kernel
//!    routes the new node's pod CIDR, and until the new node routes all the
//!    others'. Three rounds (the node is deleted and added again), median.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::*;

const ROUNDS: usize = 100;
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

struct Plugin<'a> {
    label: &'a str,
    binary: &'a Path,
    plugin_dir: &'a Path,
    config: String,
}

fn main() {
    require_root();
    let runs = std::env::var("WEFT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let lab = Lab::up("bench", 1, 0);
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
        "CNI latency, {runs} pods each, one lab node, one call at a time (ip netns exec included in both)"
    );
    println!(
        "{:<32} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "verb", "median", "p90", "min", "max"
    );
    let mut medians = Vec::new();
    for plugin in &plugins {
        let (add, del) = measure(plugin, &lab, &node.netns, runs);
        for (verb, samples) in [("ADD", &add), ("DEL", &del)] {
            let s = Stats::of(samples);
            println!(
                "{:<32} {:>6} {:>10} {:>10} {:>10} {:>10}",
                plugin.label,
                verb,
                ms(s.median),
                ms(s.p90),
                ms(s.min),
                ms(s.max)
            );
        }
        medians.push((Stats::of(&add).median, Stats::of(&del).median));
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "weft-cni / reference: ADD median x{:.2}, DEL median x{:.2}",
        ratio(medians[0].0, medians[1].0),
        ratio(medians[0].1, medians[1].1)
    );
    drop(lab);
    println!();
    bgp_convergence();
}

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
    let lab = Lab::up("benchbgp", nodes, 0);
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
    old: &[LabNode],
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
fn measure(
    plugin: &Plugin<'_>,
    lab: &Lab,
    node_netns: &str,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut ns = Namespaces::default();
    let tag = if plugin.label.starts_with("weft") {
        "w"
    } else {
        "r"
    };
    let pods: Vec<(String, String)> = (0..runs)
        .map(|i| {
            (
                format!("bench{tag}{i:04}"),
                ns.add(&format!("{}-{tag}{i}", lab.name)),
            )
        })
        .collect();
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
    let add = pods
        .iter()
        .map(|(id, netns)| call("ADD", id, netns))
        .collect();
    let del = pods
        .iter()
        .map(|(id, netns)| call("DEL", id, netns))
        .collect();
    (add, del)
}

struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut s = samples.to_vec();
        s.sort();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p90: at(0.9),
            min: s[0],
            max: s[s.len() - 1],
        }
    }
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
}
