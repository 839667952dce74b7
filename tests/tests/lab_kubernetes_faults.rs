//! The API server failing under a running Kubernetes lab (issue #11's
//! resilience), while pods on three nodes ping each other every 20 ms:
//! frozen with SIGSTOP for 30 s; killed and started again; its etcd
//! killed and down for 20 s (requests hang); the agents' ClusterRoleBinding
//! deleted and the API server restarted, so that every re-list answers 403
//! for 20 s, while a NetworkPolicy is applied that the agents cannot see.
//! No ping may be lost and no agent may restart; once the agents may read
//! again, the policy made in their absence is enforced, and a pod added
//! right then (its ADD retried as the kubelet does while the agent's watch
//! catches up) reaches everyone. Needs root.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use weft_lab::UpOptions;
use weft_lab::probe::Echo;
use weft_model::Encap;
use weft_tests::peers::Daemon;
use weft_tests::{Lab, eventually, show, up_options};

/// A ping from pod `from` to `to`'s address every 20 ms, into `log`.
fn pinger(lab: &Lab, from: &str, to: &str, log: &std::path::Path) -> Daemon {
    let (from, to) = (lab.pod(from), lab.pod(to));
    let to = to.address().unwrap().to_string();
    Daemon::spawn(
        "ping",
        &from.netns,
        &["ping", "-i", "0.02", "-W", "1", &to],
        log,
    )
}

/// (sent, received) from ping's summary line.
fn ping_summary(log: &std::path::Path) -> (u64, u64, String) {
    let text = std::fs::read_to_string(log).unwrap();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{text}"))
        .to_string();
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1], summary)
}

const RBAC: &str = include_str!("../../deploy/rbac.yaml");

/// Where `node`'s agent logs.
fn node_log(lab: &Lab, node: &str) -> std::path::PathBuf {
    let state = lab.lab().load().unwrap();
    let node = state.nodes.iter().find(|n| n.name == node).unwrap();
    weft_lab::agent::log_path(node)
}

/// Each node's agent log length now, to read what comes after.
fn agent_logs(lab: &Lab) -> Vec<(String, usize)> {
    (lab.status().nodes.iter())
        .map(|n| {
            let len = std::fs::metadata(node_log(lab, &n.name)).map_or(0, |m| m.len());
            (n.name.clone(), len as usize)
        })
        .collect()
}

fn agent_pids(lab: &Lab) -> Vec<(String, Option<u32>)> {
    let status = lab.status();
    status
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.agent_pid))
        .collect()
}

fn api_server_pid(lab: &Lab) -> nix::unistd::Pid {
    let state = lab.lab().load().unwrap();
    let kube = state.kubernetes.expect("a Kubernetes lab");
    let (_, pid) = (kube.processes.iter())
        .find(|(name, _)| name == "kube-apiserver")
        .expect("the API server is recorded")
        .clone();
    nix::unistd::Pid::from_raw(pid as i32)
}

/// Fails the test (the API server resumed first) if an agent's pid changed.
fn assert_agents_kept(lab: &Lab, before: &[(String, Option<u32>)], api: nix::unistd::Pid) {
    let now = agent_pids(lab);
    if now != before {
        let _ = kill(api, Signal::SIGCONT);
        lab.print_agent_logs();
        panic!("an agent restarted or died: {before:?} -> {now:?}");
    }
}

#[test]
fn api_server_frozen_then_restarted_loses_no_ping() {
    let options = UpOptions {
        encap: Encap::Ipip,
        kubernetes: true,
        ..up_options(3, 0)
    };
    let lab = Lab::build("k8s-faults", options);
    lab.pod_add("node1", "a", "default", "app=a", "");
    lab.pod_add("node2", "b", "default", "app=b", "");
    lab.pod_add("node3", "c", "default", "app=c", "");
    // Not pinged: the policy made while the agents are locked out isolates it.
    lab.pod_add("node3", "d", "default", "app=d", "");
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
    let agents = agent_pids(&lab);
    assert!(agents.iter().all(|(_, pid)| pid.is_some()), "{agents:?}");

    let dir = tempfile::tempdir().unwrap();
    let pairs = [("a", "b"), ("b", "c"), ("c", "a")];
    let pingers: Vec<_> = pairs
        .iter()
        .map(|(from, to)| {
            let log = dir.path().join(format!("{from}-{to}.log"));
            (pinger(&lab, from, to, &log), log)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // Frozen: connections to it hang rather than fail, the hardest case.
    let api = api_server_pid(&lab);
    kill(api, Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(30) {
        assert_agents_kept(&lab, &agents, api);
        std::thread::sleep(Duration::from_secs(1));
    }
    kill(api, Signal::SIGCONT).unwrap();
    eventually(
        "the API server answers again",
        Duration::from_secs(30),
        || lab.try_kubectl(&["get", "--raw", "/readyz"], None),
    );

    // Crashed and started again.
    {
        let _lock = weft_lab::LabLock::acquire(&lab.lab()).unwrap();
        let mut state = lab.lab().load().unwrap();
        weft_lab::kubernetes::restart_component(&mut state, "kube-apiserver", Duration::ZERO)
            .expect("the API server restarts");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_agents_kept(&lab, &agents, api);

    // etcd crashed and down for 20 s: the API server is up, but requests
    // that need etcd hang (what a client sees is checked half-way).
    let api = api_server_pid(&lab);
    let answer_while_down = std::thread::scope(|scope| {
        let probe = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(8));
            lab.try_kubectl(&["get", "pods", "-A", "--request-timeout=8s"], None)
        });
        {
            let _lock = weft_lab::LabLock::acquire(&lab.lab()).unwrap();
            let mut state = lab.lab().load().unwrap();
            weft_lab::kubernetes::restart_component(&mut state, "etcd", Duration::from_secs(20))
                .expect("etcd restarts");
        }
        probe.join().unwrap()
    });
    eprintln!("the API server while etcd was down: {answer_while_down:?}");
    assert!(
        answer_while_down.is_err(),
        "the API server answered a list without etcd: {answer_while_down:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_agents_kept(&lab, &agents, api);

    // The agents locked out: their binding deleted, and the API server
    // restarted so that their watches start again and every list is
    // refused (403). A policy applied meanwhile cannot reach them.
    let echo = Echo::new(Duration::from_millis(300), 1);
    let reaches = |from: &str, to: &str| {
        let to = lab.pod(to).address().unwrap();
        lab.pod(from).echo(to, echo).is_ok()
    };
    let logs_before = agent_logs(&lab);
    lab.kubectl(&["delete", "clusterrolebinding", "weft-agent"]);
    {
        let _lock = weft_lab::LabLock::acquire(&lab.lab()).unwrap();
        let mut state = lab.lab().load().unwrap();
        weft_lab::kubernetes::restart_component(&mut state, "kube-apiserver", Duration::ZERO)
            .expect("the API server restarts");
    }
    let api = api_server_pid(&lab);
    let locked_out = Instant::now();
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: d-isolated, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: d}}, policyTypes: [Ingress]}\n",
    );
    while locked_out.elapsed() < Duration::from_secs(20) {
        assert_agents_kept(&lab, &agents, api);
        std::thread::sleep(Duration::from_secs(1));
    }
    for (node, before) in &logs_before {
        let log = std::fs::read_to_string(node_log(&lab, node)).unwrap();
        let new = log.get(*before..).unwrap_or_default();
        assert!(
            new.contains("watch failed") && new.contains("forbidden"),
            "{node}'s agent was not refused while locked out:\n{new}"
        );
    }
    assert!(
        reaches("a", "d"),
        "the agents kept what they had while locked out"
    );
    lab.try_kubectl(&["apply", "-f", "-"], Some(RBAC))
        .expect("the binding is restored");
    // A pod added at once: node2's Pod watch may still wait out its backoff
    // (as client-go's: up to 30 s between attempts plus as much again of
    // jitter), and the lab, as the kubelet, retries the ADD while weft-cni
    // says "try again later".
    let adding = Instant::now();
    lab.pod_add("node2", "late", "default", "app=late", "");
    eprintln!(
        "pod late added {:?} after the binding came back",
        adding.elapsed()
    );
    eventually(
        "d isolated by the policy made while the agents were locked out",
        Duration::from_secs(90),
        || {
            (!reaches("a", "d"))
                .then_some(())
                .ok_or_else(|| "a still reaches d".to_string())
        },
    );
    assert_agents_kept(&lab, &agents, api);

    for (pinger, log) in pingers {
        pinger.stop_with(Signal::SIGINT);
        let (sent, received, summary) = ping_summary(&log);
        eprintln!("{}: {summary}", log.display());
        // 20 ms for well over a minute.
        assert!(sent >= 4000, "too few pings to mean anything: {summary}");
        assert_eq!(
            sent, received,
            "pings lost while the API server was away: {summary}"
        );
    }
    assert_agents_kept(&lab, &agents, api);

    // Back: the policy is followed as any other ...
    assert!(reaches("d", "c"), "d's egress is not isolated");
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "default/d-isolated"]);
    eventually("d open again", Duration::from_secs(20), || {
        reaches("a", "d")
            .then_some(())
            .ok_or_else(|| "a does not reach d".to_string())
    });

    // ... and the pod added on return reaches everyone.
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_agents_kept(&lab, &agents, api);
}
