//! Shared harness of Weft's integration tests: the real binaries, a real
//! kernel in network namespaces. Labs are built, read, probed and torn
//! down through the lab's own library, `weft-lab` ([`Lab::build`] with its
//! [`UpOptions`]): its [`StatusView`] is the lab as the tests see it, its
//! [`Echo`] their ping. The tests of the command line run the real
//! `weftctl` ([`Lab::up_with`], [`Lab::ctl`]).
//!
//! Every test that needs root calls [`require_root`] first, which fails the
//! test loudly (never skips it) when it cannot run.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub mod capture;
pub mod deploy;
pub mod framegen;
pub mod netpol_cases;
pub mod peers;
pub mod podman;

pub use weft_lab::UpOptions;
pub use weft_lab::probe::{Echo, ProbeError};
pub use weft_lab::state::{Encap, Routing};
use weft_lab::{LabLock, LabRef};
pub use weft_lab::{NodeView, PodView, StatusView};

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, veths, eBPF): run `make test` as root"
    );
}

/// Where weft-agent, weft-cni and weftctl are: `WEFT_BIN_DIR` (set by the
/// Makefile) or the workspace's target/release.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("WEFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    for bin in ["weft-agent", "weft-cni", "weftctl"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `make build` first (or set WEFT_BIN_DIR)",
            dir.join(bin).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Runs weftctl with `args` and returns its output whatever the exit code.
pub fn weftctl(args: &[&str]) -> Output {
    Command::new(bin("weftctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("weftctl runs")
}

/// Runs weftctl and fails the test, showing its output, unless it succeeds.
pub fn weftctl_ok(args: &[&str]) -> String {
    let out = weftctl(args);
    assert!(
        out.status.success(),
        "weftctl {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside a network namespace (`ip netns exec`).
pub fn netns_exec(netns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec runs")
}

/// `weftctl lab up`'s options for `nodes` nodes of `pods_per_node` pods,
/// the binaries from [`bin_dir`], everything else the command's defaults.
pub fn up_options(nodes: u32, pods_per_node: u32) -> UpOptions {
    UpOptions::new(nodes, pods_per_node, bin_dir())
}

/// A lab of its own for one test, torn down when dropped (also when the
/// test fails), so tests never see each other's namespaces.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// Brings up `nodes` nodes with `pods_per_node` pods each. `tag` makes
    /// the lab's name unique per test (namespaces are `<lab>-...`).
    pub fn up(tag: &str, nodes: u32, pods_per_node: u32) -> Lab {
        Lab::build(tag, up_options(nodes, pods_per_node))
    }

    /// Brings up a lab as `options` say, through the lab library (what
    /// `weftctl lab up` does, under the same lock).
    pub fn build(tag: &str, options: UpOptions) -> Lab {
        require_root();
        let lab = Lab {
            name: format!("weft-{tag}"),
        };
        let lab_ref = lab.lab();
        let _lock = LabLock::acquire(&lab_ref).expect("the lab's lock");
        if let Err(e) = weft_lab::up(&lab_ref, &options) {
            panic!("lab up {}: {e:#}", lab.name);
        }
        lab
    }

    /// [`Lab::up`] through the real `weftctl lab up`, with more of its
    /// flags (e.g. `--routing static`): for the tests of the command line.
    pub fn up_with(tag: &str, nodes: u32, pods_per_node: u32, flags: &[&str]) -> Lab {
        require_root();
        let lab = Lab {
            name: format!("weft-{tag}"),
        };
        let (nodes, pods) = (nodes.to_string(), pods_per_node.to_string());
        let mut args = vec![
            "lab",
            "up",
            "--lab",
            &lab.name,
            "--nodes",
            &nodes,
            "--pods-per-node",
            &pods,
        ];
        args.extend_from_slice(flags);
        weftctl_ok(&args);
        lab
    }

    /// Which lab this is, for the lab library.
    pub fn lab(&self) -> LabRef {
        LabRef::new(&self.name, None).expect("a valid lab name")
    }

    /// A datapath counter of `node`, asked of its agent.
    pub fn counter(&self, node: &str, name: &str) -> u64 {
        let socket = self.socket(node);
        let counters = weft_lab::agent_api::block_on(weft_lab::agent_api::counters(
            &socket,
            std::time::Duration::from_secs(5),
        ))
        .unwrap_or_else(|e| panic!("counters of {node}: {e:#}"));
        *counters
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
    }

    /// weftctl with `--lab NAME` added after the given leading words.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--lab", &self.name]);
        weftctl(&full)
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--lab", &self.name]);
        weftctl_ok(&full)
    }

    /// Adds pod `name` on `node` through `weftctl lab pod add`, in
    /// `namespace` with `labels` (`k=v,...`) and container `ports`
    /// (`name:port/proto,...`, each served in the pod; empty: none).
    pub fn pod_add(&self, node: &str, name: &str, namespace: &str, labels: &str, ports: &str) {
        self.ctl_ok(&[
            "lab",
            "pod",
            "add",
            "--node",
            node,
            "--name",
            name,
            "--namespace",
            namespace,
            "--labels",
            labels,
            "--ports",
            ports,
        ]);
    }

    /// The lab as `weftctl lab status` shows it.
    pub fn status(&self) -> StatusView {
        self.lab()
            .status()
            .unwrap_or_else(|e| panic!("lab {}: {e:#}", self.name))
    }

    pub fn pod(&self, name: &str) -> PodView {
        self.status()
            .pod(name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name} in lab {}", self.name))
    }

    pub fn node(&self, name: &str) -> NodeView {
        self.status()
            .node(name)
            .cloned()
            .unwrap_or_else(|| panic!("no node {name} in lab {}", self.name))
    }

    /// SIGKILLs `node`'s agent, leaving its dataplane (`weftctl lab agent
    /// stop`).
    pub fn stop_agent(&self, node: &str) {
        let lab = self.lab();
        let _lock = LabLock::acquire(&lab).expect("the lab's lock");
        let mut state = lab.load().expect("the lab's record");
        weft_lab::stop_agent(&mut state, node)
            .unwrap_or_else(|e| panic!("stopping the agent of {node}: {e:#}"));
    }

    /// Starts `node`'s agent and waits until it is ready, switching the
    /// lab to `encap` first if given (`weftctl lab agent start [--encap]`).
    pub fn start_agent(&self, node: &str, encap: Option<Encap>) {
        let lab = self.lab();
        let _lock = LabLock::acquire(&lab).expect("the lab's lock");
        let mut state = lab.load().expect("the lab's record");
        if let Some(encap) = encap {
            state.switch_encap(encap).expect("lab.json is written");
        }
        weft_lab::start_agent(&mut state, node, std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("starting the agent of {node}: {e:#}"));
    }

    /// ICMP and TCP between every ordered pair of pods (`weftctl lab
    /// check`); fails the test with the matrix unless all pass.
    pub fn check(&self) {
        let state = self.lab().load().expect("the lab's record");
        let matrix = weft_lab::check(&state, weft_lab::probe::ProbeConfig::default())
            .expect("the lab's pods are probed");
        assert!(
            matrix.all_ok(),
            "lab {}: not every pair of pods connects:\n{}",
            self.name,
            matrix.render()
        );
    }
}

impl Lab {
    /// kubectl as the administrator of a Kubernetes lab (`lab up
    /// --kubernetes`), with `input` on its stdin; its stdout, or kubectl's
    /// error.
    pub fn try_kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let state = self.lab().load().expect("the lab's record");
        let kube = state
            .kubernetes
            .as_ref()
            .unwrap_or_else(|| panic!("lab {} is not a Kubernetes lab", self.name));
        weft_lab::kubernetes::kubectl(kube, args, input).map_err(|e| format!("{e:#}"))
    }

    /// [`Lab::try_kubectl`] that fails the test on an error.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args, None)
            .unwrap_or_else(|e| panic!("lab {}: {e}", self.name))
    }
}

/// Lines of each agent's log shown when a test fails on a lab.
const FAILURE_LOG_LINES: usize = 60;

impl Drop for Lab {
    fn drop(&mut self) {
        // The lab and its logs are about to go: a failing test shows what
        // the agents said, so that a failure in CI can be understood.
        if std::thread::panicking() {
            self.print_agent_logs();
        }
        let lab = self.lab();
        let down = LabLock::acquire(&lab).and_then(|_lock| weft_lab::down(&lab));
        if let Err(e) = down {
            eprintln!("lab down {} failed: {e:#}", self.name);
        }
    }
}

impl Lab {
    /// The last lines of every agent's log of the lab (and of its control
    /// plane's components, on Kubernetes), on stderr.
    pub fn print_agent_logs(&self) {
        let nodes = self.lab().state_dir.join("nodes");
        let Ok(entries) = std::fs::read_dir(&nodes) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("agent.log"))
            .filter(|p| p.is_file())
            .collect();
        logs.sort();
        // A Kubernetes lab's control plane: why the API server or the
        // controller manager misbehaved.
        if let Ok(entries) = std::fs::read_dir(self.lab().state_dir.join("kubernetes")) {
            let mut components: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            components.sort();
            logs.extend(components);
        }
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..];
            eprintln!("---- {} (last {} lines)", log.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }

    /// The agent's gRPC socket of a lab node, as the lab recorded it.
    pub fn socket(&self, node: &str) -> PathBuf {
        let state = self.lab().load().expect("the lab's record");
        state
            .node(node)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .socket
            .clone()
    }

    /// The CNI network config a runtime on `node` would pass to weft-cni.
    pub fn cni_config(&self, node: &str, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "name": "weft",
            "type": "weft-cni",
            "agentSocket": self.socket(node),
        })
        .to_string()
    }
}

/// One call of the CNI plugin, made as a container runtime makes it.
pub struct CniCall<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a str>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub config: &'a str,
}

impl CniCall<'_> {
    /// Runs `weft-cni` inside the node's network namespace with the CNI
    /// environment and the config on stdin.
    pub fn run_in(&self, node_netns: &str) -> Output {
        self.run_with(node_netns, &bin("weft-cni"), &bin_dir())
    }

    /// The same call to another plugin (`binary`, with its `CNI_PATH`).
    pub fn run_with(
        &self,
        node_netns: &str,
        binary: &std::path::Path,
        plugin_dir: &std::path::Path,
    ) -> Output {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node_netns])
            .arg(binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", plugin_dir)
            .env("CNI_ARGS", self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(netns) = self.netns {
            cmd.env("CNI_NETNS", netns);
        }
        let mut child = cmd.spawn().expect("weft-cni starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.config.as_bytes())
            .unwrap();
        child.wait_with_output().expect("weft-cni runs")
    }
}

/// Network namespaces a test made, deleted when dropped (also on failure).
#[derive(Default)]
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn add(&mut self, name: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.push(name.to_string());
        format!("/run/netns/{name}")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Describes an output for an assertion message.
pub fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 100 ms until it returns `Some`, failing the test
/// with `what` and the last observation after `timeout`.
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if std::time::Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// How long the BGP lab tests wait for routes to come or go.
pub const BGP_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The routes a node learned over BGP (Weft's protocol 0x58).
pub fn bgp_routes(netns: &str) -> String {
    stdout(&netns_exec(
        netns,
        &["ip", "route", "show", "proto", "0x58"],
    ))
}

impl Lab {
    /// Waits until every node's BGP routes have (or no longer have) `route`.
    pub fn wait_bgp_route_everywhere(&self, route: &str, present: bool) {
        for node in self.status().nodes {
            eventually(
                &format!(
                    "{} {} `{route}`",
                    node.name,
                    if present { "has" } else { "lost" }
                ),
                BGP_WAIT,
                || {
                    let routes = bgp_routes(&node.netns);
                    if routes.contains(route) == present {
                        Ok(())
                    } else {
                        Err(routes)
                    }
                },
            );
        }
    }

    /// Writes manifests into the lab's datastore (`weftctl lab apply -f`).
    pub fn apply(&self, yaml: &str) {
        let lab = self.lab();
        let _lock = LabLock::acquire(&lab).expect("the lab's lock");
        let state = lab.load().expect("the lab's record");
        weft_lab::apply(&state, yaml).unwrap_or_else(|e| panic!("applying {yaml}: {e:#}"));
    }
}

impl Lab {
    /// Waits until every node has a BGP route to every other node's pod
    /// CIDR via that node's underlay address.
    pub fn wait_bgp_mesh(&self) {
        let status = self.status();
        for node in &status.nodes {
            for other in status.nodes.iter().filter(|o| o.name != node.name) {
                let want = format!("{} via {}", other.pod_cidr, other.underlay_ip);
                eventually(
                    &format!("{} learns {}", node.name, other.pod_cidr),
                    BGP_WAIT,
                    || {
                        let routes = bgp_routes(&node.netns);
                        if routes.contains(&want) {
                            Ok(())
                        } else {
                            Err(routes)
                        }
                    },
                );
            }
        }
    }
}

/// Test-side shorthands on the lab's status, which fail the test.
pub trait StatusExt {
    /// The first pod on `node` (tests that need "a pod there").
    fn pod_on(&self, node: &str) -> PodView;
}

impl StatusExt for StatusView {
    fn pod_on(&self, node: &str) -> PodView {
        self.pods
            .iter()
            .find(|p| p.node == node)
            .cloned()
            .unwrap_or_else(|| panic!("no pod on {node}: {:?}", self.pods))
    }
}

/// The MTU of a pod's eth0.
pub fn pod_mtu(pod: &PodView) -> u32 {
    let out = stdout(&netns_exec(&pod.netns, &["cat", "/sys/class/net/eth0/mtu"]));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("pod MTU {out:?}: {e}"))
}

/// A Don't Fragment echo of exactly `mtu` bytes from `from` to `to` is
/// answered; one byte more is refused before it leaves, naming `mtu` as
/// the path MTU (what `ping -M do` reports as "message too long").
pub fn df_echoes_stop_at(from: &PodView, to: std::net::Ipv4Addr, mtu: u32) {
    let echo = Echo::new(std::time::Duration::from_secs(2), 3).with_df();
    let size = u16::try_from(mtu).expect("an MTU");
    if let Err(e) = from.echo(to, echo.with_size(size)) {
        panic!("a DF echo of {mtu} bytes from {} to {to}: {e}", from.name);
    }
    match from.echo(to, echo.with_size(size + 1)) {
        Err(ProbeError::TooBig { mtu: Some(m), .. }) if m == mtu => {}
        other => panic!(
            "a DF echo of {} bytes from {} to {to} must be refused with mtu {mtu}: {other:?}",
            mtu + 1,
            from.name
        ),
    }
}

/// A Kubernetes control plane (weft_lab::control_plane) in a network
/// namespace of the test's own, `<tag>-<pid>`, serving on 198.18.250.1
/// there (a veth pair inside it carries the address: the API server
/// refuses to advertise loopback, and this kernel has no dummy device).
/// Its processes, directory and namespace go when it drops.
pub struct TestControlPlane {
    pub plane: weft_lab::control_plane::ControlPlane,
    pub netns: String,
    _dir: tempfile::TempDir,
    // Dropped last: the processes are ended before their namespace goes.
    _namespaces: Namespaces,
}

impl TestControlPlane {
    pub const ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 250, 1);

    pub fn start(tag: &str) -> TestControlPlane {
        use weft_lab::control_plane::{ControlPlane, ControlPlaneConfig, find_bin_dir};
        let mut namespaces = Namespaces::default();
        let netns = format!("{tag}-{}", std::process::id());
        namespaces.add(&netns);
        let address = format!("{}/24", Self::ADDRESS);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "cp0", "type", "veth", "peer", "name", "cp1"],
            &["link", "set", "cp0", "up"],
            &["addr", "add", &address, "dev", "cp0"],
        ] {
            let out = Command::new("ip")
                .args(["-n", &netns])
                .args(args)
                .output()
                .expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bin_dir = find_bin_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
            .expect("the control plane is built by `make test` (scripts/build-control-plane.sh)");
        let plane = ControlPlane::start(ControlPlaneConfig {
            dir: dir.path().to_path_buf(),
            netns: netns.clone(),
            address: Self::ADDRESS,
            bin_dir,
        })
        .expect("the control plane starts");
        println!("{netns}: API server ready after {:?}", plane.ready_after);
        TestControlPlane {
            plane,
            netns,
            _dir: dir,
            _namespaces: namespaces,
        }
    }

    /// `kubectl apply -f -` of `manifest`, retried for up to 10 s while the
    /// controllers create what it needs (a namespace's default
    /// ServiceAccount, which a Pod must have).
    pub fn apply(&self, manifest: &str) {
        let started = std::time::Instant::now();
        loop {
            match self
                .plane
                .kubectl_with_input(&["apply", "-f", "-"], Some(manifest))
            {
                Ok(_) => return,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    eprintln!("kubectl apply (retrying): {e}");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("kubectl apply: {e}\n{manifest}"),
            }
        }
    }

    /// `kubectl auth can-i VERB RESOURCE` in every namespace, as `user`
    /// (None: the administrator). `resource` may name a subresource
    /// (`nodes/status`). `auth can-i` says "no" with exit status 1.
    pub fn can_i(&self, verb: &str, resource: &str, user: Option<&str>) -> bool {
        let (resource, sub) = match resource.split_once('/') {
            Some((resource, sub)) => (resource, Some(format!("--subresource={sub}"))),
            None => (resource, None),
        };
        let user = user.map(|u| format!("--as={u}"));
        let mut args = vec!["auth", "can-i", verb, resource, "--all-namespaces"];
        args.extend(sub.as_deref());
        args.extend(user.as_deref());
        self.plane
            .kubectl(&args)
            .is_ok_and(|out| out.trim() == "yes")
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.plane.kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Where a [`ClusterAgent`] serves `/healthz` and `/readyz` (the agent's
/// default `--health-address`), inside the control plane's namespace.
pub const AGENT_HEALTH: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9099),
);

/// weft-agent with `--datastore kubernetes` as a process in a
/// [`TestControlPlane`]'s namespace (uplink: the API server's veth),
/// killed by its pid and its bpffs pins removed when dropped.
pub struct ClusterAgent {
    pub child: std::process::Child,
    pub bpffs: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
}

impl Drop for ClusterAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

impl ClusterAgent {
    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status and log if it has exited.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().expect("waiting on the agent")?;
        Some(format!("the agent exited ({status}):\n{}", self.log()))
    }

    /// Panics with the agent's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(exited) = self.exited() {
            panic!("{exited}");
        }
    }
}

impl TestControlPlane {
    /// What an agent needs of the cluster: deploy/crds.yaml (established)
    /// and deploy/rbac.yaml applied, and at `kubeconfig` a kubeconfig with
    /// a token of the DaemonSet's ServiceAccount (kube-system/weft-agent),
    /// so the agent has exactly those rights.
    pub fn prepare_agent(&self, kubeconfig: &std::path::Path) {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in ["deploy/crds.yaml", "deploy/rbac.yaml"] {
            self.kubectl(&[
                "apply",
                "-f",
                repo.join(file).to_str().expect("a UTF-8 path"),
            ]);
        }
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/bgppeers.weft.dev",
            "--timeout=30s",
        ]);
        self.plane
            .service_account_kubeconfig("kube-system", "weft-agent", 2, kubeconfig)
            .expect("a token for the agent's ServiceAccount");
    }

    /// Starts weft-agent for Node `node` in this control plane's namespace,
    /// authenticated by `kubeconfig`, its state, socket and log under
    /// `dir`, with `RUST_LOG=rust_log` and `flags` added.
    pub fn spawn_agent(
        &self,
        node: &str,
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        rust_log: &str,
        flags: &[&str],
    ) -> ClusterAgent {
        let socket = dir.join("agent.sock");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/weft-test-{}", self.netns));
        let log = dir.join("agent.log");
        let log_file = std::fs::File::create(&log).expect("the agent's log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(bin("weft-agent"))
            .args([
                "--datastore",
                "kubernetes",
                "--node-name",
                node,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--bpffs-dir")
            .arg(&bpffs)
            .args(flags)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("the agent's log"))
            .stderr(log_file)
            .spawn()
            .expect("weft-agent starts");
        ClusterAgent {
            child,
            bpffs,
            log,
            socket,
        }
    }

    /// `GET path` on [`AGENT_HEALTH`]: (status code, body), or (0, why)
    /// when nothing answers there.
    pub fn agent_health(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let timeout = std::time::Duration::from_secs(3);
        let answer = weft_dataplane::netns::run_in(
            &weft_lab::topology::netns_path(&self.netns),
            move || -> std::io::Result<String> {
                let mut stream = std::net::TcpStream::connect_timeout(&AGENT_HEALTH, timeout)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.write_all(request.as_bytes())?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            },
        );
        match answer {
            Ok(Ok(text)) => parse_http_answer(&text),
            Ok(Err(e)) => (0, e.to_string()),
            Err(e) => (0, e.to_string()),
        }
    }
}

/// (status code, trimmed body) of an HTTP/1.x answer; code 0 if it is not one.
pub fn parse_http_answer(text: &str) -> (u16, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let code = head
        .lines()
        .next()
        .and_then(|status| status.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (code, body.trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_answers_are_read() {
        let ok = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready\n";
        assert_eq!(super::parse_http_answer(ok), (503, "not ready".into()));
        assert_eq!(super::parse_http_answer("garbage").0, 0);
    }
}
