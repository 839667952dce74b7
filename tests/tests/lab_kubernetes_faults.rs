//! The API server failing under a running Kubernetes lab (issue #11's
//! resilience): frozen with SIGSTOP for 30 s, then killed and started
//! again, while pods on three nodes ping each other every 20 ms. No ping
//! may be lost, no agent may restart, and once the API server is back a
//! NetworkPolicy applied with kubectl is enforced and a new pod gets
//! connectivity. Needs root.

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
        weft_lab::kubernetes::restart_component(&mut state, "kube-apiserver")
            .expect("the API server restarts");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_agents_kept(&lab, &agents, api);

    for (pinger, log) in pingers {
        pinger.stop_with(Signal::SIGINT);
        let (sent, received, summary) = ping_summary(&log);
        eprintln!("{}: {summary}", log.display());
        // 20 ms for over 34 s: well over a thousand.
        assert!(sent >= 1000, "too few pings to mean anything: {summary}");
        assert_eq!(
            sent, received,
            "pings lost while the API server was away: {summary}"
        );
    }
    assert_agents_kept(&lab, &agents, api);

    // Back: a policy applied with kubectl is enforced ...
    let echo = Echo::new(Duration::from_millis(300), 1);
    let reaches = |from: &str, to: &str| {
        let to = lab.pod(to).address().unwrap();
        lab.pod(from).echo(to, echo).is_ok()
    };
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: b-isolated, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n",
    );
    eventually("b isolated", Duration::from_secs(20), || {
        (!reaches("a", "b"))
            .then_some(())
            .ok_or_else(|| "a still reaches b".to_string())
    });
    assert!(reaches("b", "c"), "b's egress is not isolated");
    lab.ctl_ok(&["lab", "delete", "networkpolicy", "default/b-isolated"]);
    eventually("b open again", Duration::from_secs(20), || {
        reaches("a", "b")
            .then_some(())
            .ok_or_else(|| "a does not reach b".to_string())
    });

    // ... and a new pod gets connectivity with everyone.
    lab.pod_add("node2", "late", "default", "app=late", "");
    let out = lab.ctl(&["lab", "check"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_agents_kept(&lab, &agents, api);
}
