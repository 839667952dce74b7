//! `make bench`: figures, not pass/fail. CNI ADD and DEL latency of weft-cni
//! against the reference `bridge` plugin with `host-local` IPAM (Debian's
//! containernetworking-plugins), measured in the same run on the same lab
//! node, so the machine's speed cancels out of the ratio.

use std::path::Path;
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
    let runs = std::env::var("WEFT_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS);
    let lab = Lab::up("bench", 1, 0);
    let node = lab.node("node1");
    // host-local's leases live in the bench's own directory, not the lab's.
    let leases = tempfile::Builder::new().prefix("weft-bench-host-local-").tempdir().expect("temp dir");
    let weft_bin = bin("weft-cni");
    let bin_dir = bin_dir();
    let reference_dir = Path::new(REFERENCE_PLUGINS);
    let bridge_bin = reference_dir.join("bridge");
    assert!(bridge_bin.exists(), "{} is missing: install containernetworking-plugins (make deps)", bridge_bin.display());

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

    println!("CNI latency, {runs} pods each, one lab node, one call at a time (ip netns exec included in both)");
    println!("{:<32} {:>6} {:>10} {:>10} {:>10} {:>10}", "plugin", "verb", "median", "p90", "min", "max");
    let mut medians = Vec::new();
    for plugin in &plugins {
        let (add, del) = measure(plugin, &lab, &node.netns, runs);
        for (verb, samples) in [("ADD", &add), ("DEL", &del)] {
            let s = Stats::of(samples);
            println!(
                "{:<32} {:>6} {:>10} {:>10} {:>10} {:>10}",
                plugin.label, verb, ms(s.median), ms(s.p90), ms(s.min), ms(s.max)
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
}

/// Times `runs` ADDs, then `runs` DELs, each pod in a fresh namespace.
fn measure(plugin: &Plugin<'_>, lab: &Lab, node_netns: &str, runs: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut ns = Namespaces::default();
    let tag = if plugin.label.starts_with("weft") { "w" } else { "r" };
    let pods: Vec<(String, String)> = (0..runs)
        .map(|i| (format!("bench{tag}{i:04}"), ns.add(&format!("{}-{tag}{i}", lab.name))))
        .collect();
    let call = |command: &str, id: &str, netns: &str| {
        let start = Instant::now();
        let out = CniCall { command, container_id: id, netns: Some(netns), ifname: "eth0", args: "", config: &plugin.config }
            .run_with(node_netns, plugin.binary, plugin.plugin_dir);
        let took = start.elapsed();
        assert!(out.status.success(), "{} {command} {id}: {}", plugin.label, show(&out));
        took
    };
    let add = pods.iter().map(|(id, netns)| call("ADD", id, netns)).collect();
    let del = pods.iter().map(|(id, netns)| call("DEL", id, netns)).collect();
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
        Stats { median: at(0.5), p90: at(0.9), min: s[0], max: s[s.len() - 1] }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
