//! The NetworkPolicy sections of `make bench` (issue #10), each against a
//! baseline measured in the same run:
//!
//! - `policy`: pod-to-pod TCP across nodes (request/response rate,
//!   connect rate, single-stream throughput) with the destination pod
//!   selected by 0, 100, 1,000 and 10,000 rules that do not match the
//!   client plus one that allows it, each as a ratio to 0 rules; beside
//!   them the same counts as iptables rules in one chain the forwarded
//!   traffic traverses linearly (kube-router's and Calico's iptables
//!   mode), Weft's policy absent, as a ratio to 0 iptables rules.
//! - `policy-apply`, `policy-apply-k8s`: from the start of `weftctl lab
//!   apply -f` (directory store) or `kubectl apply -f` (a Kubernetes lab)
//!   of a deny to the send time of the first UDP datagram (one every ms,
//!   on an established flow) that no longer arrives, and from the delete
//!   to the first one through again; median and p99 over 50, beside the
//!   command's own run time.
//! - `policy-memory`: a real agent whose store holds 10,000 remote
//!   endpoints and 1,000 policies selecting its pods; each pinned map's
//!   memory as the kernel reports it (`memlock` in the map fd's fdinfo)
//!   and its entries, the agent's compile and pass times, and the cost of
//!   one more policy at that scale.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_common::maps::{POLICY_INGRESS, PolicyKey};
use weft_tests::*;

use super::{Stats, bench_lab, iperf3, median, ms, pin_to_cpu, print_error, request_response};

/// The rule counts the `policy` section measures; the first is the baseline.
pub const RULE_COUNTS: [usize; 4] = [0, 100, 1_000, 10_000];
/// Rules per NetworkPolicy object (so 10,000 rules are 100 policies).
const RULES_PER_POLICY: usize = 100;
/// Seconds per measurement of the `policy` section.
pub const POLICY_SECONDS: u32 = 2;
/// Rounds of the `policy` section (each row is their median).
pub const POLICY_ROUNDS: u32 = 2;
/// Policy changes the `policy-apply` section times.
pub const CHANGES: u32 = 50;
/// Policies and remote pods of the `policy-memory` section.
pub const MEMORY_POLICIES: u32 = 1_000;
pub const MEMORY_REMOTE_PODS: u32 = 10_000;

/// The TCP port of the connect-rate server (iperf3 has 5201, request/response 5299).
const CONNECT_PORT: u16 = 5298;
/// Threads writing the `policy-memory` section's store.
const WRITERS: u32 = 16;
/// The UDP port of the `policy-apply` receiver.
const DATAGRAM_PORT: u16 = 5300;
/// How long a measurement waits for the agent to program its maps.
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(300);
/// Kubernetes namespace of the bench's pods and policies (`lab up`'s).
pub const NAMESPACE: &str = "default";

fn policy_doc(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// Documents as one manifest file (JSON is YAML).
fn manifest(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Filler rule `r`'s ipBlock: the `r`th /28 of 172.16.0.0/12, never a pod's.
fn filler_block(r: usize) -> String {
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    assert!(r < 1 << 16, "172.16.0.0/12 holds 65,536 /28s");
    format!("{}/28", Ipv4Addr::from(base + (r as u32) * 16))
}

/// Filler rule `r`'s TCP port: 10000 and up, none of the measured ones.
fn filler_port(r: usize) -> u16 {
    10_000 + (r % 50_000) as u16
}

/// The policy every rule count shares: the server isolated for ingress,
/// its one allowing rule the client pod (by label), all ports.
fn allow_client() -> Value {
    policy_doc(
        "bench-allow-client",
        json!({
            "podSelector": {"matchLabels": {"role": "bench-server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "bench-client"}}}]}],
        }),
    )
}

/// The `n`th filler policy: rules `n*100 ..`, each one ipBlock and one
/// port that the client is not, selecting the server.
fn filler_policy(n: usize, rules: usize) -> Value {
    let rules: Vec<Value> = (n * RULES_PER_POLICY..(n * RULES_PER_POLICY + rules))
        .map(|r| {
            json!({
                "from": [{"ipBlock": {"cidr": filler_block(r)}}],
                "ports": [{"protocol": "TCP", "port": filler_port(r)}],
            })
        })
        .collect();
    policy_doc(
        &filler_name(n),
        json!({
            "podSelector": {"matchLabels": {"role": "bench-server"}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        }),
    )
}

fn filler_name(n: usize) -> String {
    format!("bench-rules-{n:03}")
}

/// The filler policies of `rules` rules.
fn filler_policies(rules: usize) -> Vec<Value> {
    (0..rules.div_ceil(RULES_PER_POLICY))
        .map(|n| filler_policy(n, (rules - n * RULES_PER_POLICY).min(RULES_PER_POLICY)))
        .collect()
}

/// The iptables-restore input of `rules` non-matching rules and the
/// allowing one in chain WBENCH, jumped to from FORWARD for the server's
/// address: every forwarded packet to the server walks the chain (no
/// conntrack shortcut in front: the per-packet cost of a linear chain).
fn iptables_rules(rules: usize, server: Ipv4Addr, client: Ipv4Addr) -> String {
    let mut out = String::from("*filter\n:WBENCH - [0:0]\n");
    out.push_str(&format!("-A FORWARD -d {server}/32 -j WBENCH\n"));
    for r in 0..rules {
        out.push_str(&format!(
            "-A WBENCH -s {} -p tcp -m tcp --dport {} -j ACCEPT\n",
            filler_block(r),
            filler_port(r)
        ));
    }
    out.push_str(&format!("-A WBENCH -s {client}/32 -j ACCEPT\n"));
    out.push_str("-A WBENCH -j DROP\nCOMMIT\n");
    out
}

/// One measurement of a configuration of the `policy` section.
struct Row {
    /// Thousands of transactions per second (request/response).
    rr: Result<f64, String>,
    /// New connections per second.
    connects: Result<f64, String>,
    /// Gbit/s.
    stream: Result<f64, String>,
    /// How the packets were judged, e.g. counters.
    note: String,
}

impl Row {
    fn failed(e: String) -> Row {
        Row {
            rr: Err(e.clone()),
            connects: Err(e.clone()),
            stream: Err(e),
            note: String::new(),
        }
    }

    fn metrics(&self) -> [&Result<f64, String>; 3] {
        [&self.rr, &self.connects, &self.stream]
    }
}

/// Who judges the traffic in a configuration.
#[derive(Clone, Copy, PartialEq)]
enum Judge {
    Weft,
    Iptables,
}

/// The ends of the `policy` section's traffic, and the node whose policy
/// or chain judges it.
struct Ends {
    client_netns: String,
    client_ip: Ipv4Addr,
    server_netns: String,
    server_ip: Ipv4Addr,
    node_netns: String,
    pin_dir: PathBuf,
}

pub fn rule_scaling(seconds: u32, rounds: u32) {
    println!(
        "Policy rule count: pod -> pod across nodes (node1-a -> node2-a, ipip, --direct-redirect false), \
         the destination selected by N ingress rules that do not match the client (each one ipBlock /28 \
         of 172.16.0.0/12 and one TCP port; {RULES_PER_POLICY} rules per NetworkPolicy) plus one rule \
         allowing the client pod by label; then, Weft's policy deleted, the same N as iptables rules \
         (-s BLOCK -p tcp --dport PORT -j ACCEPT) in one chain that every forwarded packet to the \
         destination walks in node2 (FORWARD -d SERVER -j WBENCH, no conntrack shortcut in front), \
         ending in the allowing rule. {seconds} s per measurement; {rounds} rounds, every other one in \
         the reverse order (iptables first, counts falling), so a drift of the machine weighs on all alike."
    );
    println!(
        "What is measured: Weft's connection tracker passes the packets of an established connection \
         with one conntrack lookup and no policy lookup (its entry carries the policy revision), so \
         request/response and throughput show the established path; the connect rate (a new TCP \
         connection each time, closed with RST) shows the policy lookup path itself (ipcache + policy map \
         for every SYN). The iptables chain judges every packet, of new and established connections alike."
    );
    let load_before = super::load_average();
    let flags = ["--encap", "ipip", "--direct-redirect", "false"];
    let lab = bench_lab("wbench-policy", 2, 2, &flags).unwrap_or_else(|e| panic!("{e}"));
    let ends = policy_ends(&lab).unwrap_or_else(|e| panic!("{e}"));
    lab.ctl_ok(&["lab", "label", "pod", "node1-a", "role=bench-client"]);
    lab.ctl_ok(&["lab", "label", "pod", "node2-a", "role=bench-server"]);

    let open_before = measure_row(&lab, &ends, seconds, "");
    // [judge][count] -> one row per round.
    let mut rows: [Vec<Vec<Row>>; 2] = [
        RULE_COUNTS.iter().map(|_| Vec::new()).collect(),
        RULE_COUNTS.iter().map(|_| Vec::new()).collect(),
    ];
    for round in 0..rounds {
        let forward = round % 2 == 0;
        let judges = if forward {
            [Judge::Weft, Judge::Iptables]
        } else {
            [Judge::Iptables, Judge::Weft]
        };
        for judge in judges {
            let mut order: Vec<usize> = (0..RULE_COUNTS.len()).collect();
            if !forward {
                order.reverse();
            }
            for i in order {
                let rules = RULE_COUNTS[i];
                let row = match judge {
                    Judge::Weft => match program_weft(&lab, &ends, rules) {
                        Ok(programmed) => measure_row(&lab, &ends, seconds, &programmed),
                        Err(e) => Row::failed(e),
                    },
                    Judge::Iptables => match install_chain(&ends, rules) {
                        Ok(()) => {
                            let mut row = measure_row(&lab, &ends, seconds, "");
                            let hits = chain_hits(&ends).unwrap_or_else(|e| e);
                            row.note = format!("{hits}; {}", row.note);
                            row
                        }
                        Err(e) => Row::failed(e),
                    },
                };
                rows[judge as usize][i].push(row);
            }
            let removed = match judge {
                Judge::Weft => remove_weft(&lab, &ends),
                Judge::Iptables => remove_chain(&ends),
            };
            if let Err(e) = removed {
                println!(
                    "(round {}: the policy or chain did not go away: {e})",
                    round + 1
                );
            }
        }
    }
    let open_after = measure_row(&lab, &ends, seconds, "");
    drop(lab);

    println!(
        "{:<30} {:>9} {:>6} {:>11} {:>6} {:>8} {:>6}  how judged (last round)",
        "configuration", "RR kT/s", "x", "connects/s", "x", "Gbit/s", "x"
    );
    // Each metric: the median over the rounds, and the median over the
    // rounds of the ratio to the same round's baseline.
    let print = |label: &str, samples: &[&Row], base: &[&Row]| {
        let mut cells = Vec::new();
        for m in 0..3 {
            let values: Vec<f64> = samples
                .iter()
                .filter_map(|r| r.metrics()[m].as_ref().ok().copied())
                .collect();
            let ratios: Vec<f64> = samples
                .iter()
                .zip(base)
                .filter_map(|(r, b)| match (r.metrics()[m], b.metrics()[m]) {
                    (Ok(v), Ok(b)) if *b > 0.0 => Some(v / b),
                    _ => None,
                })
                .collect();
            let digits = if m == 1 { 0 } else { 2 };
            cells.push(median(values).map_or("error".into(), |v| format!("{v:.digits$}")));
            cells.push(median(ratios).map_or("-".into(), |r| format!("{r:.2}")));
        }
        println!(
            "{:<30} {:>9} {:>6} {:>11} {:>6} {:>8} {:>6}  {}",
            label,
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            samples.last().map_or("", |r| r.note.as_str())
        );
        let mut errors: Vec<&str> = Vec::new();
        for e in samples
            .iter()
            .flat_map(|r| r.metrics())
            .filter_map(|r| r.as_ref().err())
        {
            if !errors.contains(&e.as_str()) {
                errors.push(e);
            }
        }
        for e in errors {
            print_error(e);
        }
    };
    print("no policy, no chain", &[&open_before], &[]);
    for (judge, name) in [
        (Judge::Weft, "Weft policy"),
        (Judge::Iptables, "iptables chain"),
    ] {
        let by_count = &rows[judge as usize];
        let base: Vec<&Row> = by_count[0].iter().collect();
        for (i, rules) in RULE_COUNTS.iter().enumerate() {
            let samples: Vec<&Row> = by_count[i].iter().collect();
            print(&format!("{name}, {rules} rules"), &samples, &base);
        }
    }
    print(
        "no policy, no chain (again)",
        &[&open_after],
        &[&open_before],
    );
    println!(
        "x = the median over the rounds of the ratio to the same round's 0 rules of the same kind (Weft: \
         isolated by the allowing rule alone; iptables: the chain holding only it); the last row's to the \
         first: the run's own drift. Packets \"by policy lookup\" / \"by conntrack\": node2's \
         policy_ingress_allowed and conntrack_established counters over the row."
    );
    println!(
        "load average (1 min) {load_before} before, {} after, on {} CPUs: other work on the machine \
         scatters these figures (compare the two open rows)",
        super::load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn policy_ends(lab: &Lab) -> Result<Ends, String> {
    let status = lab.status();
    let pod = |name: &str| {
        let p = status
            .pod(name)
            .ok_or_else(|| format!("no pod {name} in the lab"))?;
        Ok::<_, String>((
            p.netns.clone(),
            p.address()
                .ok_or_else(|| format!("pod {name} has no address"))?,
        ))
    };
    let (client_netns, client_ip) = pod("node1-a")?;
    let (server_netns, server_ip) = pod("node2-a")?;
    let state = lab.lab().load().map_err(|e| format!("{e:#}"))?;
    let node = state.node("node2").map_err(|e| format!("{e:#}"))?;
    Ok(Ends {
        client_netns,
        client_ip,
        server_netns,
        server_ip,
        node_netns: node.netns.clone(),
        pin_dir: node.bpffs_dir.clone(),
    })
}

/// One row: request/response, connect rate and one iperf3 stream.
fn measure_row(lab: &Lab, ends: &Ends, seconds: u32, note: &str) -> Row {
    let counters = |name| counter(lab, "node2", name);
    let before = (
        counters("policy_ingress_allowed"),
        counters("conntrack_established"),
    );
    let (to, to_ip, from) = (
        ends.server_netns.as_str(),
        ends.server_ip.to_string(),
        ends.client_netns.as_str(),
    );
    let rr = request_response(to, &to_ip, from, seconds).map(|t| t.per_second / 1e3);
    let connects = connect_rate(to, ends.server_ip, from, seconds);
    let stream = iperf3(to, &to_ip, from, seconds).map(|s| s.bits_per_second / 1e9);
    let after = (
        counters("policy_ingress_allowed"),
        counters("conntrack_established"),
    );
    let mut note = note.to_string();
    if let ((Some(p0), Some(c0)), (Some(p1), Some(c1))) = (before, after) {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(&format!(
            "node2: {} packets by policy lookup, {} by conntrack",
            p1 - p0,
            c1 - c0
        ));
    }
    Row {
        rr,
        connects,
        stream,
        note,
    }
}

/// A datapath counter of `node`, `None` if its agent does not answer.
fn counter(lab: &Lab, node: &str, name: &str) -> Option<u64> {
    let counters = weft_lab::agent_api::block_on(weft_lab::agent_api::counters(
        &lab.socket(node),
        Duration::from_secs(5),
    ))
    .ok()?;
    counters.get(name).copied()
}

/// Applies the allowing policy and the fillers of `rules` rules (deleting
/// fillers beyond them), and waits until node2's policy map holds the
/// server's entries for all of them. Returns what the maps hold.
fn program_weft(lab: &Lab, ends: &Ends, rules: usize) -> Result<String, String> {
    let state = lab.lab().load().map_err(|e| format!("{e:#}"))?;
    let mut docs = vec![allow_client()];
    docs.extend(filler_policies(rules));
    let started = Instant::now();
    weft_lab::apply(&state, &manifest(&docs)).map_err(|e| format!("lab apply: {e:#}"))?;
    for n in rules.div_ceil(RULES_PER_POLICY)..RULE_COUNTS[RULE_COUNTS.len() - 1] / RULES_PER_POLICY
    {
        let name = format!("{NAMESPACE}/{}", filler_name(n));
        weft_lab::delete(&state, weft_lab::objects::Kind::Networkpolicy, &name)
            .map_err(|e| format!("lab delete {name}: {e:#}"))?;
    }
    // The isolation marker, and one entry per filler rule (each rule one
    // block identity and one port; the allowing rule and the node's own
    // entries have no port).
    let deadline = started + PROGRAMMED_WITHIN;
    // The agent may take the new policies in several passes: done when
    // two reads 200 ms apart agree.
    let mut last = None;
    loop {
        let maps = weft_dataplane::bpf::read_pinned_maps(&ends.pin_dir)
            .map_err(|e| format!("reading node2's maps: {e}"))?;
        let server = ends.server_ip.octets();
        let isolated = maps
            .policy
            .iter()
            .any(|(k, _)| *k == PolicyKey::isolation(server, POLICY_INGRESS));
        let filler = maps
            .policy
            .iter()
            .filter(|(k, _)| {
                k.endpoint == server && k.direction == POLICY_INGRESS && k.port != [0, 0]
            })
            .count();
        let now = (maps.policy.len(), maps.ipcache.len());
        if isolated && filler == rules && last.replace(now) == Some(now) {
            return Ok(format!(
                "programmed {:.1} s after apply; node2 maps: policy {} entries, ipcache {}",
                started.elapsed().as_secs_f64(),
                maps.policy.len(),
                maps.ipcache.len()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node2's policy map did not reach {rules} rules within {PROGRAMMED_WITHIN:?} \
                 (isolated {isolated}, {filler} port entries for the server)"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Deletes the bench's policies and waits until the server is not isolated.
fn remove_weft(lab: &Lab, ends: &Ends) -> Result<(), String> {
    let state = lab.lab().load().map_err(|e| format!("{e:#}"))?;
    let mut names = vec!["bench-allow-client".to_string()];
    names.extend((0..RULE_COUNTS[RULE_COUNTS.len() - 1] / RULES_PER_POLICY).map(filler_name));
    for name in names {
        let name = format!("{NAMESPACE}/{name}");
        weft_lab::delete(&state, weft_lab::objects::Kind::Networkpolicy, &name)
            .map_err(|e| format!("lab delete {name}: {e:#}"))?;
    }
    let deadline = Instant::now() + PROGRAMMED_WITHIN;
    loop {
        let maps = weft_dataplane::bpf::read_pinned_maps(&ends.pin_dir)
            .map_err(|e| format!("reading node2's maps: {e}"))?;
        if !maps
            .policy
            .iter()
            .any(|(k, _)| k.endpoint == ends.server_ip.octets())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "still entries for the server after {PROGRAMMED_WITHIN:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `args` in `netns` with `input` on stdin.
fn netns_run(netns: &str, args: &[&str], input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} in {netns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Replaces node2's WBENCH chain with one of `rules` rules.
fn install_chain(ends: &Ends, rules: usize) -> Result<(), String> {
    remove_chain(ends)?;
    let text = iptables_rules(rules, ends.server_ip, ends.client_ip);
    netns_run(&ends.node_netns, &["iptables-restore", "--noflush"], &text)?;
    // rules + the allowing rule + the final DROP.
    let listed = netns_run(&ends.node_netns, &["iptables", "-S", "WBENCH"], "")?;
    let have = listed.lines().filter(|l| l.starts_with("-A")).count();
    if have != rules + 2 {
        return Err(format!("chain WBENCH has {have} rules, not {}", rules + 2));
    }
    Ok(())
}

/// Removes the jump to WBENCH and the chain (nothing else of the node's).
fn remove_chain(ends: &Ends) -> Result<(), String> {
    let listed = netns_run(&ends.node_netns, &["iptables", "-S", "FORWARD"], "")?;
    let jump = format!("-A FORWARD -d {}/32 -j WBENCH", ends.server_ip);
    if listed.lines().any(|l| l.trim() == jump) {
        let rule = format!("{}/32", ends.server_ip);
        netns_run(
            &ends.node_netns,
            &["iptables", "-D", "FORWARD", "-d", &rule, "-j", "WBENCH"],
            "",
        )?;
    }
    let chains = netns_run(&ends.node_netns, &["iptables", "-S"], "")?;
    if chains.lines().any(|l| l.trim() == "-N WBENCH") {
        netns_run(&ends.node_netns, &["iptables", "-F", "WBENCH"], "")?;
        netns_run(&ends.node_netns, &["iptables", "-X", "WBENCH"], "")?;
    }
    Ok(())
}

/// The packets the chain's allowing rule and its final DROP counted: the
/// proof that the measured traffic walked the chain.
fn chain_hits(ends: &Ends) -> Result<String, String> {
    let listed = netns_run(
        &ends.node_netns,
        &["iptables", "-L", "WBENCH", "-n", "-v", "-x"],
        "",
    )?;
    let packets: Vec<u64> = listed
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let n = packets.len();
    if n < 2 {
        return Err(format!("chain WBENCH lists {n} rules"));
    }
    Ok(format!(
        "node2 chain: {} packets through all {} rules to the allowing one",
        packets[n - 2],
        n - 2
    ))
}

/// New TCP connections per second for `seconds` from `client_netns` to
/// `server_ip`: each connected (handshake done), then closed with RST
/// (SO_LINGER 0: no TIME_WAIT, so the ports never run out). Client and
/// server on CPU 0, as the request/response run.
fn connect_rate(
    server_netns: &str,
    server_ip: Ipv4Addr,
    client_netns: &str,
    seconds: u32,
) -> Result<f64, String> {
    let netns = |name: &str| Path::new("/run/netns").join(name);
    let addr = SocketAddr::from((server_ip, CONNECT_PORT));
    let listener =
        weft_dataplane::netns::run_in(&netns(server_netns), move || TcpListener::bind(addr))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect-rate server on {addr} in {server_netns}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("connect-rate server: {e}"))?;
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let done = done.clone();
        std::thread::spawn(move || -> std::io::Result<u64> {
            pin_to_cpu(0)?;
            let mut accepted = 0;
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => accepted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(accepted)
        })
    };
    let client = weft_dataplane::netns::run_in(&netns(client_netns), move || {
        pin_to_cpu(0)?;
        let started = Instant::now();
        let until = started + Duration::from_secs(u64::from(seconds));
        let mut made = 0u64;
        while Instant::now() < until {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            reset_on_close(&stream)?;
            drop(stream);
            made += 1;
        }
        Ok::<f64, std::io::Error>(made as f64 / started.elapsed().as_secs_f64())
    });
    done.store(true, Ordering::Relaxed);
    let accepted = server
        .join()
        .map_err(|_| "the connect-rate server panicked".to_string())?;
    let rate = client
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect-rate client in {client_netns} to {addr}: {e}"))?;
    accepted.map_err(|e| format!("connect-rate server in {server_netns}: {e}"))?;
    Ok(rate)
}

/// SO_LINGER {on, 0}: close sends RST and leaves no TIME_WAIT.
fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Datagrams sent every millisecond from the client pod to the server
/// pod, each carrying its sequence number; what was sent when and what
/// arrived, shared with the measuring thread.
struct Datagrams {
    /// Send time of each sequence number, from `epoch`.
    sent: Mutex<Vec<Duration>>,
    /// The highest sequence number received, +1 (0: none yet).
    received_below: AtomicU32,
    /// Each datagram received: its sequence number and arrival time from
    /// `epoch`, in arrival order.
    arrivals: Mutex<Vec<(u32, Duration)>>,
    epoch: Instant,
    stop: AtomicBool,
}

impl Datagrams {
    fn next_seq(&self) -> u32 {
        self.sent.lock().expect("not poisoned").len() as u32
    }

    fn sent_at(&self, seq: u32) -> Option<Instant> {
        let sent = self.sent.lock().expect("not poisoned");
        sent.get(seq as usize).map(|d| self.epoch + *d)
    }

    /// When the first datagram sent at or after `seq` arrived.
    fn first_arrival_from(&self, seq: u32) -> Option<Instant> {
        let arrivals = self.arrivals.lock().expect("not poisoned");
        arrivals
            .iter()
            .filter(|(s, _)| *s >= seq)
            .map(|(_, at)| self.epoch + *at)
            .min()
    }

    /// Waits until a datagram sent at or after `seq` arrives.
    fn wait_flowing(&self, seq: u32, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.received_below.load(Ordering::Acquire) > seq {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

/// Starts the sender and the receiver; both stop when `stop` is set.
fn start_datagrams(
    client_netns: &str,
    server_netns: &str,
    server_ip: Ipv4Addr,
) -> Result<(Arc<Datagrams>, Vec<std::thread::JoinHandle<()>>), String> {
    let netns = |name: &str| Path::new("/run/netns").join(name);
    let addr = SocketAddr::from((server_ip, DATAGRAM_PORT));
    let receiver =
        weft_dataplane::netns::run_in(&netns(server_netns), move || UdpSocket::bind(addr))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("UDP receiver on {addr}: {e}"))?;
    let sender = weft_dataplane::netns::run_in(&netns(client_netns), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(addr)?;
        Ok::<_, std::io::Error>(s)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("UDP sender to {addr}: {e}"))?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Datagrams {
        sent: Mutex::new(Vec::with_capacity(1 << 20)),
        received_below: AtomicU32::new(0),
        arrivals: Mutex::new(Vec::with_capacity(1 << 20)),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
    });
    let rx = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while !shared.stop.load(Ordering::Relaxed) {
                if let Ok(4) = receiver.recv(&mut buf) {
                    let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let at = shared.epoch.elapsed();
                    shared
                        .arrivals
                        .lock()
                        .expect("not poisoned")
                        .push((seq, at));
                    shared.received_below.fetch_max(seq + 1, Ordering::AcqRel);
                }
            }
        })
    };
    let tx = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                let mut sent = shared.sent.lock().expect("not poisoned");
                let seq = sent.len() as u32;
                sent.push(shared.epoch.elapsed());
                drop(sent);
                // A denied datagram is dropped silently; an error (e.g. an
                // ICMP error queued on the socket) is no reason to stop.
                let _ = sender.send(&seq.to_be_bytes());
                next += Duration::from_millis(1);
            }
        })
    };
    Ok((shared, vec![rx, tx]))
}

/// Where the `policy-apply` sections' lab keeps its objects, and so which
/// command an operator changes a policy with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Store {
    /// The directory store: `weftctl lab apply -f` / `lab delete`.
    Directory,
    /// A Kubernetes lab (`lab up --kubernetes`): `kubectl apply -f` /
    /// `kubectl delete` against its API server, the agents on their watches.
    Kubernetes,
}

impl Store {
    fn lab_name(self) -> &'static str {
        match self {
            Store::Directory => "wbench-papply",
            Store::Kubernetes => "wbench-papply-k8s",
        }
    }

    /// The `lab up` flags beyond `WEFT_BENCH_LAB_FLAGS`.
    fn lab_flags(self) -> &'static [&'static str] {
        match self {
            Store::Directory => &[],
            Store::Kubernetes => &["--kubernetes"],
        }
    }

    fn apply_command(self) -> &'static str {
        match self {
            Store::Directory => "weftctl lab apply -f",
            Store::Kubernetes => "kubectl apply -f",
        }
    }

    fn delete_command(self) -> &'static str {
        match self {
            Store::Directory => "weftctl lab delete networkpolicy",
            Store::Kubernetes => "kubectl delete networkpolicy",
        }
    }

    /// The same binary run to do nothing: its start and exit alone.
    fn idle_command(self) -> &'static str {
        match self {
            Store::Directory => "weftctl --version",
            Store::Kubernetes => "kubectl version --client",
        }
    }
}

/// The process that changes the policy, ready to be spawned: everything
/// it needs is read before the clock starts.
enum Changer {
    Weftctl { lab: String },
    Kubectl(weft_lab::state::Kubernetes),
}

impl Changer {
    fn of(store: Store, lab: &Lab) -> Changer {
        match store {
            Store::Directory => Changer::Weftctl {
                lab: lab.name.clone(),
            },
            Store::Kubernetes => Changer::Kubectl(
                lab.lab()
                    .load()
                    .expect("the lab's record")
                    .kubernetes
                    .expect("a Kubernetes lab"),
            ),
        }
    }

    /// Applies the manifest at `path`; returns when the process has exited.
    fn apply(&self, path: &str) -> Result<(), String> {
        match self {
            Changer::Weftctl { lab } => weftctl_run(&["lab", "apply", "-f", path, "--lab", lab]),
            Changer::Kubectl(kube) => kubectl_run(kube, &["apply", "-f", path]),
        }
    }

    /// [`Store::idle_command`]: no request, no lab.
    fn idle(&self) -> Result<(), String> {
        match self {
            Changer::Weftctl { .. } => weftctl_run(&["--version"]),
            Changer::Kubectl(kube) => kubectl_run(kube, &["version", "--client"]),
        }
    }

    /// Deletes NetworkPolicy `name` of [`NAMESPACE`].
    fn delete(&self, name: &str) -> Result<(), String> {
        match self {
            Changer::Weftctl { lab } => {
                let object = format!("{NAMESPACE}/{name}");
                weftctl_run(&["lab", "delete", "networkpolicy", &object, "--lab", lab])
            }
            Changer::Kubectl(kube) => {
                kubectl_run(kube, &["delete", "networkpolicy", name, "-n", NAMESPACE])
            }
        }
    }
}

fn weftctl_run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(bin("weftctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("weftctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("weftctl {}: {}", args.join(" "), show(&out)))
    }
}

/// kubectl as the lab's administrator, spawned at once (the lab's own
/// runner: the kubectl of the tool directory, in the control plane's
/// namespace).
fn kubectl_run(kube: &weft_lab::state::Kubernetes, args: &[&str]) -> Result<(), String> {
    weft_lab::kubernetes::kubectl(kube, args, None)
        .map(drop)
        .map_err(|e| format!("kubectl {}: {e:#}", args.join(" ")))
}

/// What one run of the `policy-apply` measurement saw.
#[derive(Default)]
struct ApplySamples {
    /// Apply spawned -> send time of the first denied datagram.
    denied: Vec<Duration>,
    /// Apply spawned -> the process's exit.
    applies: Vec<Duration>,
    /// Delete spawned -> a datagram arrives again.
    restored: Vec<Duration>,
    /// Delete spawned -> the process's exit.
    deletes: Vec<Duration>,
    /// The idle command, spawn to exit.
    idle: Vec<Duration>,
    failures: Vec<String>,
}

/// `end - exit` per change (paired by index), in microseconds: negative
/// when the change took effect before the process had exited.
fn after_exit(ends: &[Duration], exits: &[Duration]) -> Vec<i64> {
    let us = |d: &Duration| d.as_micros() as i64;
    ends.iter()
        .zip(exits)
        .map(|(end, exit)| us(end) - us(exit))
        .collect()
}

pub fn apply_latency(store: Store, changes: u32) {
    println!(
        "Policy apply to first denied packet ({}): node1-a sends a UDP datagram every 1 ms to node2-a on one \
         flow (established in Weft's conntrack); `{}` of a NetworkPolicy denying node2-a's ingress; the \
         figure is the send time of the first datagram that no longer arrives (the one after the last \
         received), from the start of the apply (just before its process is spawned, so the process's \
         start is included, as an operator sees it). Then `{}` and wait until datagrams arrive again. \
         {changes} changes.",
        match store {
            Store::Directory => "directory store",
            Store::Kubernetes => "Kubernetes: the API server and the agents' watches",
        },
        store.apply_command(),
        store.delete_command(),
    );
    let mut flags = super::lab_flags();
    flags.extend(store.lab_flags().iter().map(|f| f.to_string()));
    let lab = bench_lab(store.lab_name(), 2, 1, &flags).unwrap_or_else(|e| panic!("{e}"));
    let samples = measure_applies(&lab, Changer::of(store, &lab), changes);
    drop(lab);
    print_applies(store, &samples);
}

/// The `policy-apply` measurement on `lab` (2 nodes, a pod each), the
/// policy changed by `changer`.
fn measure_applies(lab: &Lab, changer: Changer, changes: u32) -> ApplySamples {
    let status = lab.status();
    let pod = |name: &str| {
        status
            .pod(name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name}"))
    };
    let (client, server) = (pod("node1-a"), pod("node2-a"));
    let server_ip = server.address().expect("the server pod's address");
    lab.ctl_ok(&["lab", "label", "pod", "node2-a", "role=bench-target"]);
    let deny = manifest(&[policy_doc(
        "bench-deny",
        json!({"podSelector": {"matchLabels": {"role": "bench-target"}}, "policyTypes": ["Ingress"]}),
    )]);
    let file = tempfile::Builder::new()
        .prefix("weft-bench-deny-")
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), deny).expect("writing the policy file");
    let path = file.path().to_str().expect("a UTF-8 temp path").to_string();

    let (traffic, threads) =
        start_datagrams(&client.netns, &server.netns, server_ip).unwrap_or_else(|e| panic!("{e}"));
    let mut s = ApplySamples::default();
    for change in 1..=changes {
        let flowing = traffic.next_seq();
        if traffic
            .wait_flowing(flowing, Duration::from_secs(10))
            .is_none()
        {
            s.failures.push(format!(
                "change {change}: datagrams do not arrive before the apply"
            ));
            break;
        }
        let t0 = Instant::now();
        let applied = changer.apply(&path);
        let applied_at = t0.elapsed();
        if let Err(e) = applied {
            s.failures.push(format!("change {change}: {e}"));
            break;
        }
        // Stopped: nothing arrived of the last 200 sent.
        let deadline = t0 + Duration::from_secs(10);
        let first_lost = loop {
            std::thread::sleep(Duration::from_millis(20));
            let below = traffic.received_below.load(Ordering::Acquire);
            if traffic.next_seq() > below + 200 {
                break Some(below);
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        match first_lost.and_then(|seq| traffic.sent_at(seq)) {
            Some(at) => {
                s.denied.push(at.saturating_duration_since(t0));
                s.applies.push(applied_at);
            }
            None => s.failures.push(format!(
                "change {change}: datagrams still arrive 10 s after the apply"
            )),
        }
        // Every datagram from here on is denied until the delete takes
        // effect, so the first to arrive shows it, also when that is
        // before the deleting process has exited.
        let seq = traffic.next_seq();
        let t1 = Instant::now();
        let deleted = changer.delete("bench-deny");
        let deleted_at = t1.elapsed();
        if let Err(e) = deleted {
            s.failures.push(format!("change {change}: {e}"));
            break;
        }
        let arrived = traffic
            .wait_flowing(seq, Duration::from_secs(10))
            .and_then(|_| traffic.first_arrival_from(seq));
        match arrived {
            Some(at) => {
                s.restored.push(at.saturating_duration_since(t1));
                s.deletes.push(deleted_at);
            }
            None => {
                s.failures.push(format!(
                    "change {change}: datagrams do not arrive again after the delete"
                ));
                break;
            }
        }
        let t2 = Instant::now();
        match changer.idle() {
            Ok(()) => s.idle.push(t2.elapsed()),
            Err(e) => s.failures.push(format!("change {change}: {e}")),
        }
    }
    traffic.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    s
}

fn print_applies(store: Store, s: &ApplySamples) {
    println!(
        "{:<58} {:>10} {:>10} {:>10} {:>10} {:>4}",
        "", "median", "p99", "min", "max", "n"
    );
    let line = |what: &str, cells: Option<[String; 4]>, n: usize| match cells {
        None => println!("{what:<58} {:>10}", "no sample"),
        Some([median, p99, min, max]) => {
            println!("{what:<58} {median:>10} {p99:>10} {min:>10} {max:>10} {n:>4}")
        }
    };
    let row = |what: &str, samples: &[Duration]| {
        let cells = (!samples.is_empty()).then(|| {
            let st = Stats::of(samples);
            [st.median, st.p99, st.min, st.max].map(ms)
        });
        line(what, cells, samples.len());
    };
    let signed_row = |what: &str, us: &[i64]| {
        let cells = (!us.is_empty()).then(|| {
            let st = Stats::of(us);
            [st.median, st.p99, st.min, st.max].map(|v| format!("{:+.2} ms", v as f64 / 1e3))
        });
        line(what, cells, us.len());
    };
    let apply_tool = store.apply_command().trim_end_matches(" -f");
    let delete_tool = store.delete_command().trim_end_matches(" networkpolicy");
    let watch = after_exit(&s.denied, &s.applies);
    let watch_back = after_exit(&s.restored, &s.deletes);
    row("apply start -> first denied datagram sent", &s.denied);
    row(
        &format!("  `{apply_tool}` process (spawn to exit)"),
        &s.applies,
    );
    signed_row(
        &format!("  `{apply_tool}` exit -> first denied sent"),
        &watch,
    );
    row("delete start -> first datagram through again", &s.restored);
    row(
        &format!("  `{delete_tool}` process (spawn to exit)"),
        &s.deletes,
    );
    signed_row(
        &format!("  `{delete_tool}` exit -> first datagram through"),
        &watch_back,
    );
    row(
        &format!("the binary doing nothing (`{}`)", store.idle_command()),
        &s.idle,
    );
    let early = |v: &[i64]| v.iter().filter(|us| **us < 0).count();
    println!(
        "(datagrams are 1 ms apart: the first denied one (its send time) and the first through again (its \
         arrival) are known to within 1 ms; p99 of {} samples is their {}th smallest. \"exit ->\" rows, per change: \
         negative = the dataplane had changed before the process exited ({} of {} applies, {} of {} \
         deletes), i.e. the process's own run, not the store or the agent, is the wait; the last row: how much of \
         that run is the binary's start and exit alone)",
        s.denied.len(),
        (((s.denied.len().max(1) - 1) as f64 * 0.99).round() as usize) + 1,
        early(&watch),
        watch.len(),
        early(&watch_back),
        watch_back.len(),
    );
    for f in &s.failures {
        print_error(f);
    }
}

/// One remote endpoint of the `policy-memory` section: pod `k` of the
/// fake nodes, in namespace `ns(k % 10)` with label `app=app(k % 100)`,
/// container port `http` 8080/TCP.
fn remote_endpoint(k: u32) -> weft_model::EndpointRecord {
    let (node, slot) = (k / 250, k % 250);
    weft_model::EndpointRecord {
        container_id: format!("benchremote{k:05}"),
        ifname: "eth0".into(),
        node: format!("remote{node:03}"),
        pod_name: format!("remote-{k:05}"),
        pod_namespace: format!("ns{:02}", k % 10),
        labels: BTreeMap::from([("app".to_string(), format!("app{:03}", k % 100))]),
        address: Ipv4Addr::new(10, 244, 100 + node as u8, 1 + slot as u8),
        host_ifname: format!("weftbench{k:05}"),
        netns: String::new(),
        ports: vec![weft_model::policy::ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            protocol: weft_model::policy::Protocol::Tcp,
        }],
    }
}

/// Policy `i` of the `policy-memory` section: selects local pod
/// `slot=s(i % 4)`; ingress from the 100 pods `app=app(i % 100)` of
/// namespace `ns(i % 10)` on TCP 1000+i, and from one ipBlock (with an
/// except) on 443; egress to the 100 pods `app=app((i + 50) % 100)` in any
/// namespace on the named port `http`.
pub fn memory_policy(i: u32) -> Value {
    let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i * 256);
    let except = Ipv4Addr::from(u32::from(block) + 128);
    policy_doc(
        &format!("bench-mem-{i:04}"),
        json!({
            "podSelector": {"matchLabels": {"slot": format!("s{}", i % 4)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns{:02}", i % 10)}},
                    "podSelector": {"matchLabels": {"app": format!("app{:03}", i % 100)}},
                }],
                 "ports": [{"protocol": "TCP", "port": 1000 + i}]},
                {"from": [{"ipBlock": {"cidr": format!("{block}/24"), "except": [format!("{except}/25")]}}],
                 "ports": [{"protocol": "TCP", "port": 443}]},
            ],
            "egress": [{
                "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app{:03}", (i + 50) % 100)}}}],
                "ports": [{"port": "http"}],
            }],
        }),
    )
}

pub fn map_memory(policies: u32, remote_pods: u32) {
    assert!(
        remote_pods <= 40 * 250,
        "at most 10,000 remote pods (40 fake nodes of 250 in 10.244.100-139.0/24)"
    );
    println!(
        "Policy map memory: a 1-node lab (4 pods, labelled slot=s0..s3), its agent stopped; {remote_pods} \
         remote endpoints of 40 fake nodes written into the lab's store (namespaces ns00..ns09, labels \
         app=app000..app099, 100 pods each, named port http 8080/TCP) and {policies} NetworkPolicies \
         (each selecting one local pod; ingress from the 100 pods of one app in one namespace on one port \
         and from one ipBlock with an except on 443; egress to the 100 pods of another app on the named \
         port http); then the agent started and read: every pinned map's memory as the kernel reports \
         it (memlock in the map fd's /proc fdinfo) and its entries."
    );
    let lab = bench_lab("wbench-pmem", 1, 4, &super::lab_flags()).unwrap_or_else(|e| panic!("{e}"));
    for (i, pod) in ["node1-a", "node1-b", "node1-c", "node1-d"]
        .iter()
        .enumerate()
    {
        lab.ctl_ok(&["lab", "label", "pod", pod, &format!("slot=s{i}")]);
    }
    let before = pinned_maps_memory(&lab_pin_dir(&lab)).unwrap_or_else(|e| panic!("{e}"));
    lab.ctl_ok(&["lab", "agent", "stop", "node1"]);
    let state = lab.lab().load().expect("the lab's record");
    let store = weft_datastore::Datastore::open(&state.datastore_dir()).expect("the lab's store");
    // The store fsyncs every record and its directory: written from
    // several threads, so the disk's flushes overlap.
    let written = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..WRITERS {
            let store = &store;
            scope.spawn(move || {
                for k in (t..remote_pods).step_by(WRITERS as usize) {
                    store
                        .put_endpoint(&remote_endpoint(k))
                        .unwrap_or_else(|e| panic!("writing remote endpoint {k}: {e}"));
                }
            });
        }
    });
    let endpoints_took = written.elapsed();
    let written = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..WRITERS {
            let state = &state;
            scope.spawn(move || {
                let docs: Vec<Value> = (t..policies)
                    .step_by(WRITERS as usize)
                    .map(memory_policy)
                    .collect();
                weft_lab::apply(state, &manifest(&docs))
                    .unwrap_or_else(|e| panic!("lab apply: {e:#}"));
            });
        }
    });
    println!(
        "store written: {remote_pods} endpoint records in {:.1} s, {policies} policies (through the lab's apply) \
         in {:.1} s, {WRITERS} writers (each record fsynced with its directory)",
        endpoints_took.as_secs_f64(),
        written.elapsed().as_secs_f64()
    );

    let log = weft_lab::agent::log_path(state.node("node1").expect("node1"));
    let log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let started = Instant::now();
    let out = Command::new(bin("weftctl"))
        .args(["lab", "agent", "start", "node1", "--lab", &lab.name])
        // The agent's pass times (debug) without the rest of its debug output.
        .env("RUST_LOG", "info,weft_agent::node=debug")
        .stdin(Stdio::null())
        .output()
        .expect("weftctl runs");
    let start_took = started.elapsed();
    assert!(out.status.success(), "lab agent start: {}", show(&out));
    let pin_dir = lab_pin_dir(&lab);
    let after = pinned_maps_memory(&pin_dir).unwrap_or_else(|e| panic!("{e}"));
    let maps = weft_dataplane::bpf::read_pinned_maps(&pin_dir).expect("node1's maps");
    let counts = BTreeMap::from([
        (weft_common::maps::IPCACHE_MAP, maps.ipcache.len()),
        (weft_common::maps::POLICY_MAP, maps.policy.len()),
        (weft_common::conntrack::CONNTRACK_MAP, maps.conntrack.len()),
        (weft_common::maps::ENDPOINTS_MAP, maps.endpoints.len()),
        (weft_common::maps::POD_ROUTES_MAP, maps.pod_routes.len()),
        (weft_common::maps::NODES_MAP, maps.nodes.len()),
    ]);
    println!(
        "{:<18} {:<10} {:>12} {:>10} {:>14} {:>14} {:>9}",
        "map", "type", "max entries", "entries", "memlock", "before", "B/entry"
    );
    let mut total = (0u64, 0u64);
    for m in &after {
        let entries = counts.get(m.name.as_str()).copied();
        let was = before.iter().find(|b| b.name == m.name).map(|b| b.memlock);
        total.0 += m.memlock;
        total.1 += was.unwrap_or(0);
        println!(
            "{:<18} {:<10} {:>12} {:>10} {:>14} {:>14} {:>9}",
            m.name,
            m.map_type,
            m.max_entries,
            entries.map_or("-".into(), |e| e.to_string()),
            mib(m.memlock),
            was.map_or("-".into(), mib),
            entries.filter(|e| *e > 0).map_or("-".into(), |e| format!(
                "{:.0}",
                m.memlock as f64 / e as f64
            ))
        );
    }
    println!(
        "{:<18} {:<10} {:>12} {:>10} {:>14} {:>14}",
        "all maps",
        "",
        "",
        "",
        mib(total.0),
        mib(total.1)
    );
    println!("(before = the same lab before the remote pods and policies: 4 pods, no policy)");
    let agent_pid = lab.node("node1").agent_pid;
    println!(
        "agent: `lab agent start` to ready {:.2} s; its first full pass {}; resident memory {}",
        start_took.as_secs_f64(),
        pass_times(&log, log_offset, true)
            .last()
            .map_or("(not in its log)".into(), |us| ms(Duration::from_micros(
                *us
            ))),
        agent_pid.and_then(resident_memory).map_or("?".into(), mib)
    );
    compile_times(&state, "node1");

    // One more policy at this scale: a change's cost.
    let rev0 = read_revision(&pin_dir);
    let log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let t0 = Instant::now();
    weft_lab::apply(&state, &manifest(&[memory_policy(policies)]))
        .unwrap_or_else(|e| panic!("lab apply: {e:#}"));
    let mut changed = None;
    while t0.elapsed() < PROGRAMMED_WITHIN {
        if read_revision(&pin_dir) != rev0 {
            changed = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pass's own line follows the revision's bump: give it a moment.
    let mut passes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while changed.is_some() && passes.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        passes = pass_times(&log, log_offset, false);
    }
    println!(
        "one more policy applied with the agent running: maps updated (revision bumped) after {}; \
         the agent's passes for it {} (each compiles the whole cluster's policy for the node)",
        changed.map_or("never".into(), ms),
        if passes.is_empty() {
            "(not in its log)".to_string()
        } else {
            passes
                .iter()
                .map(|us| ms(Duration::from_micros(*us)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    drop(lab);
}

/// The node's policy revision, read from its pinned map alone (not the
/// whole policy map: this is polled).
fn read_revision(pin_dir: &Path) -> Option<weft_common::maps::PolicyRevision> {
    let path = pin_dir.join(weft_common::maps::POLICY_REVISION_MAP);
    let data = aya::maps::MapData::from_pin(path).ok()?;
    let array: aya::maps::Array<_, weft_common::maps::PolicyRevision> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).ok()?;
    array.get(&0, 0).ok()
}

fn lab_pin_dir(lab: &Lab) -> PathBuf {
    let state = lab.lab().load().expect("the lab's record");
    state.node("node1").expect("node1").bpffs_dir.clone()
}

/// One pinned map as the kernel describes it.
struct MapMemory {
    name: String,
    map_type: String,
    max_entries: u32,
    /// Bytes, as the kernel charges them (`memlock` in fdinfo).
    memlock: u64,
}

/// Every map pinned in `pin_dir`, read from the fdinfo of the fd that
/// BPF_OBJ_GET gives for its pin (pinned programs have no `map_type` there
/// and are skipped).
fn pinned_maps_memory(pin_dir: &Path) -> Result<Vec<MapMemory>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(pin_dir).map_err(|e| format!("{}: {e}", pin_dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let fdinfo = pinned_fdinfo(&path)?;
        let Some(map_type) = fdinfo_field(&fdinfo, "map_type") else {
            continue;
        };
        let field = |key| {
            fdinfo_field(&fdinfo, key)
                .ok_or_else(|| format!("no {key} in the fdinfo of {}", path.display()))
        };
        out.push(MapMemory {
            name: entry.file_name().to_string_lossy().into_owned(),
            map_type: map_type_name(map_type).to_string(),
            max_entries: field("max_entries")? as u32,
            memlock: field("memlock")?,
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    Ok(out)
}

/// The /proc fdinfo of the object pinned at `path` (BPF_OBJ_GET, read-only).
fn pinned_fdinfo(path: &Path) -> Result<String, String> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    /// `union bpf_attr` for BPF_OBJ_GET: pathname, bpf_fd, file_flags (+ path_fd).
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_F_RDONLY: u32 = 1 << 3;
    let attr = ObjGet {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
    };
    // SAFETY: a valid bpf_attr prefix of the size given, its path alive.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "BPF_OBJ_GET {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new fd the syscall gave us; closed when dropped.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| format!("fdinfo of {}: {e}", path.display()))
}

fn fdinfo_field(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// The kernel's `enum bpf_map_type` numbers of the maps Weft pins.
fn map_type_name(t: u64) -> &'static str {
    match t {
        1 => "hash",
        2 => "array",
        5 => "percpu_hash",
        6 => "percpu_arr",
        9 => "lru_hash",
        10 => "lru_pcpu",
        11 => "lpm_trie",
        _ => "other",
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

/// VmRSS of `pid`, in bytes.
fn resident_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(super::proc_status_kib(&status, "VmRSS")? * 1024)
}

/// The `took_us` of the agent's "pass done" lines (full passes or event
/// passes) written after `offset`.
fn pass_times(log: &Path, offset: u64, full: bool) -> Vec<u64> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
    parse_pass_times(&text, full)
}

pub fn parse_pass_times(text: &str, full: bool) -> Vec<u64> {
    let want = format!("full={full}");
    text.lines()
        .filter(|l| l.contains("pass done") && l.contains(&want))
        .filter_map(|l| {
            let at = l.find("took_us=")? + "took_us=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The agent's own compiler on the store's snapshot, from scratch (as at
/// the agent's start), timed in this process: the compile's share of the
/// agent's pass (which also plans and writes the maps).
fn compile_times(state: &weft_lab::LabState, node: &str) {
    use weft_datastore::ClusterSource;
    let store = weft_datastore::Datastore::open(&state.datastore_dir()).expect("the lab's store");
    let snapshot = match store.snapshot() {
        Ok(s) => s,
        Err(e) => return println!("(compile time: the store's snapshot failed: {e})"),
    };
    let Some(me) = snapshot.nodes.iter().find(|n| n.name == node).cloned() else {
        return println!("(compile time: no node record of {node})");
    };
    let (endpoints, policies) = (snapshot.endpoints.len(), snapshot.network_policies.len());
    let mut cluster = weft_calc::Cluster::default();
    cluster.reset(snapshot);
    let t = Instant::now();
    let compiled = weft_calc::policy::compile_cluster(&cluster, &me, None);
    println!(
        "the agent's compiler (weft_calc::policy::compile_cluster) on this store ({endpoints} endpoints, \
         {policies} policies), in this process, from scratch: {}; {} policy and {} ipcache entries, \
         {} problems",
        ms(t.elapsed()),
        compiled.policy.len(),
        compiled.ipcache.len(),
        compiled.problems.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fillers_match_no_pod_and_count_their_rules() {
        assert_eq!(filler_block(0), "172.16.0.0/28");
        assert_eq!(filler_block(1), "172.16.0.16/28");
        assert_eq!(filler_block(65_535), "172.31.255.240/28");
        assert!(filler_port(0) >= 10_000 && filler_port(49_999) == 59_999);
        assert!(filler_policies(0).is_empty());
        let p = filler_policies(250);
        assert_eq!(p.len(), 3);
        let rules = |v: &Value| v["spec"]["ingress"].as_array().unwrap().len();
        assert_eq!(p.iter().map(rules).collect::<Vec<_>>(), [100, 100, 50]);
        assert_eq!(p[2]["metadata"]["name"], "bench-rules-002");
        assert_eq!(
            p[2]["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
            filler_block(200)
        );
        // Every generated manifest is one the lab's apply takes.
        let mut docs = vec![allow_client()];
        docs.extend(p);
        docs.push(memory_policy(7));
        let parsed = weft_model::manifest::parse_store_manifests(&manifest(&docs)).unwrap();
        assert_eq!(parsed.len(), 5);
    }

    #[test]
    fn time_after_the_process_exit_is_paired_per_change_and_signed() {
        let ms = Duration::from_millis;
        let after = after_exit(&[ms(30), ms(5), ms(12)], &[ms(20), ms(8), ms(12)]);
        assert_eq!(after, [10_000, -3_000, 0]);
        assert!(after_exit(&[], &[]).is_empty());
        let st = super::super::Stats::of(&after);
        assert_eq!((st.min, st.median, st.max), (-3_000, 0, 10_000));
        assert_eq!(Store::Kubernetes.lab_flags(), ["--kubernetes"]);
        assert_ne!(Store::Kubernetes.lab_name(), Store::Directory.lab_name());
    }

    #[test]
    fn the_iptables_chain_holds_the_rules_then_allow_then_drop() {
        let text = iptables_rules(
            2,
            Ipv4Addr::new(10, 244, 2, 2),
            Ipv4Addr::new(10, 244, 1, 2),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "-A FORWARD -d 10.244.2.2/32 -j WBENCH");
        assert_eq!(
            lines[3],
            "-A WBENCH -s 172.16.0.0/28 -p tcp -m tcp --dport 10000 -j ACCEPT"
        );
        assert_eq!(lines[5], "-A WBENCH -s 10.244.1.2/32 -j ACCEPT");
        assert_eq!(&lines[6..], ["-A WBENCH -j DROP", "COMMIT"]);
    }

    #[test]
    fn remote_endpoints_spread_over_fake_nodes_namespaces_and_apps() {
        let e = remote_endpoint(9_999);
        assert_eq!(e.node, "remote039");
        assert_eq!(e.address, Ipv4Addr::new(10, 244, 139, 250));
        assert_eq!(e.pod_namespace, "ns09");
        assert_eq!(e.labels["app"], "app099");
        assert_eq!(remote_endpoint(0).address, Ipv4Addr::new(10, 244, 100, 1));
    }

    #[test]
    fn agent_pass_times_and_fdinfo_are_read() {
        let log = "2026-12-06T07:00:00Z DEBUG weft_agent::node: pass done full=true took_us=1234 ok=true\n\
                   2026-12-06T07:00:01Z DEBUG weft_agent::node: pass done full=false took_us=56 ok=true\n\
                   2026-12-06T07:00:01Z  INFO weft_agent::drivers: policy maps updated revision=3\n";
        assert_eq!(parse_pass_times(log, true), [1234]);
        assert_eq!(parse_pass_times(log, false), [56]);
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t11\n\
                      key_size:\t16\nvalue_size:\t4\nmax_entries:\t65536\nmap_flags:\t0x1\n\
                      map_extra:\t0x0\nmemlock:\t2097152\nmap_id:\t7\n";
        assert_eq!(fdinfo_field(fdinfo, "memlock"), Some(2_097_152));
        assert_eq!(
            fdinfo_field(fdinfo, "map_type").map(map_type_name),
            Some("lpm_trie")
        );
        assert_eq!(fdinfo_field(fdinfo, "absent"), None);
    }
}
