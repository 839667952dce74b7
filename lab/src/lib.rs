//! weft-lab: a whole Weft cluster on one machine out of network
//! namespaces. A fabric namespace holds the underlay bridge; every node is a
//! namespace with its own weft-agent; pods are namespaces wired by the real
//! weft-cni. Everything made is recorded in `<state>/lab.json` before it is
//! made, so [`down`] removes exactly that, also after a crash.
//!
//! One library for `weftctl lab` (a thin command line over it) and for the
//! integration tests, so both see the same lab:
//!
//! - [`LabRef`]: which lab; [`state`]: the record of it ([`LabState`]);
//!   [`status`]: the lab as `lab status` shows it ([`StatusView`]).
//! - [`up`], [`down`], [`add_pod`], [`del_pod`], [`add_node`], [`del_node`],
//!   [`start_agent`], [`stop_agent`]: building and changing a lab.
//! - [`probe`]: ICMP echo and TCP between namespaces, without helper
//!   processes; [`check`] runs them over every pair of pods ([`matrix`]).
//! - [`agent_api`]: a node agent's local gRPC API (status, endpoints,
//!   counters, BGP peers, relabelling an endpoint).
//! - [`objects`]: what `lab apply`, `lab delete` and `lab label` write
//!   (BGPPeers, NetworkPolicies, Namespaces, pod and namespace labels);
//!   [`serve`]: the echo server a pod runs on its TCP and UDP ports.
//! - [`netpol`]: a policy case (`weftctl lab netpol`) run on the lab.
//! - [`plan`], [`topology`], [`cni`], [`agent`], [`process`]: how a lab is
//!   named, wired, and populated, and the processes it starts.
//! - [`kubernetes`]: a lab on a real API server (`lab up --kubernetes`):
//!   the [`control_plane`] on the underlay, the lab playing the kubelet.

pub mod agent;
pub mod agent_api;
pub mod cni;
pub mod control_plane;
pub mod kubernetes;
pub mod matrix;
pub mod netpol;
pub mod objects;
pub mod plan;
pub mod policy_show;
pub mod probe;
pub mod process;
pub mod serve;
pub mod state;
pub mod status;
pub mod topology;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use matrix::Matrix;
pub use objects::{apply, delete};
use probe::{ProbeConfig, ProbeTarget};
pub use state::{LabState, Pod};
pub use status::{FabricView, NodeView, PodView, RouterView, StatusView, SubnetView};

/// Parent of every lab's state directory by default.
pub const STATE_ROOT: &str = "/run/weft-lab";
/// Parent of every lab's bpffs pin directories (`<root>/<lab>/<node>`).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/weft-lab";
/// Files and directories a lab's state directory may hold; `lab down`
/// removes the directory only if it holds nothing else.
const STATE_ENTRIES: &[&str] = &["lab.json", "nodes", "datastore", kubernetes::DIR];

/// Which lab a command acts on.
#[derive(Debug, Clone)]
pub struct LabRef {
    pub lab: String,
    pub state_dir: PathBuf,
}

impl LabRef {
    pub fn new(lab: &str, state_dir: Option<PathBuf>) -> Result<Self> {
        plan::validate_lab_name(lab)?;
        let state_dir = state_dir.unwrap_or_else(|| Path::new(STATE_ROOT).join(lab));
        Ok(LabRef {
            lab: lab.to_string(),
            state_dir,
        })
    }

    pub fn load(&self) -> Result<LabState> {
        LabState::load_existing(&self.state_dir, &self.lab)
    }

    /// The lab as `lab status` shows it, agents checked against their pids.
    pub fn status(&self) -> Result<StatusView> {
        Ok(StatusView::new(&self.load()?, process::is_agent))
    }
}

/// An error and its causes on one line, like `{:#}`, but without a cause
/// that merely repeats the text before it (tonic and io errors often
/// print their source inside their own message).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// An exclusive lock on a lab, held by commands that change it (up, down,
/// pod add/del, agent start/stop) so that concurrent weftctl runs do not
/// lose each other's lab.json updates. It is a `.<state dir name>.lock`
/// file next to the state directory (which `down` removes, so it cannot
/// hold the lock); the file is left in place, as removing it would let two
/// holders in. Released when dropped.
pub struct LabLock {
    _file: fs::File,
}

impl LabLock {
    pub fn acquire(lab: &LabRef) -> Result<Self> {
        let parent = lab.state_dir.parent().unwrap_or(Path::new("/"));
        let name = lab
            .state_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = parent.join(format!(".{name}.lock"));
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lab lock {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(LabLock { _file: file })
    }
}

/// The directory weftctl's own executable is in, where the other Weft
/// binaries are looked for by default.
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding weftctl's own executable")?;
    Ok(exe
        .parent()
        .context("weftctl's executable has no parent directory")?
        .to_path_buf())
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u32,
    pub pods_per_node: u32,
    pub bin_dir: PathBuf,
    pub ready_timeout: Duration,
    /// Leave what was built in place when `up` fails, for a post-mortem.
    pub keep_on_failure: bool,
    pub routing: state::Routing,
    /// Nodes that are BGP route reflectors; empty for a full mesh.
    pub route_reflectors: Vec<String>,
    pub encap: state::Encap,
    pub cross_subnet: bool,
    /// The agents' `--direct-redirect`; `None`: the agent's default.
    pub direct_redirect: Option<bool>,
    /// The agents' `--bgp-on-stop`; `None`: the agent's default.
    pub bgp_on_stop: Option<String>,
    /// How many underlay subnets the nodes alternate between (1: one segment).
    pub underlay_subnets: u32,
    /// Run a Kubernetes control plane and have the agents read the cluster
    /// from it (`--datastore kubernetes`) instead of the directory store.
    pub kubernetes: bool,
}

impl UpOptions {
    /// `nodes` nodes of `pods_per_node` pods with the binaries in
    /// `bin_dir`, everything else as `weftctl lab up` defaults it.
    pub fn new(nodes: u32, pods_per_node: u32, bin_dir: PathBuf) -> UpOptions {
        UpOptions {
            nodes,
            pods_per_node,
            bin_dir,
            ready_timeout: Duration::from_secs(60),
            keep_on_failure: false,
            routing: state::Routing::default(),
            route_reflectors: Vec::new(),
            encap: state::Encap::default(),
            cross_subnet: false,
            direct_redirect: None,
            bgp_on_stop: None,
            underlay_subnets: 1,
            kubernetes: false,
        }
    }
}

/// Builds the lab from scratch (tearing down a previous one of that name).
/// On failure everything is torn down again unless `keep_on_failure`.
pub fn up(lab: &LabRef, options: &UpOptions) -> Result<LabState> {
    plan::check_node_count(options.nodes, options.pods_per_node)?;
    plan::check_underlay_subnets(options.underlay_subnets)?;
    let names: Vec<String> = (1..=options.nodes).map(plan::node_name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let route_reflectors = plan::validate_route_reflectors(&options.route_reflectors, &names)?;
    agent::agent_path(&options.bin_dir)?;
    cni::plugin_path(&options.bin_dir)?;
    let control_plane_bins = options
        .kubernetes
        .then(|| kubernetes::find_bin_dir(&options.bin_dir))
        .transpose()?;
    down(lab).context("tearing down the previous lab")?;
    let mut state = LabState::planned_on(
        &lab.lab,
        &lab.state_dir,
        &options.bin_dir,
        Path::new(BPFFS_ROOT),
        options.nodes,
        options.underlay_subnets,
    );
    state.routing = options.routing;
    state.route_reflectors = route_reflectors;
    state.encap = options.encap;
    state.cross_subnet = options.cross_subnet;
    state.direct_redirect = options.direct_redirect;
    state.bgp_on_stop = options.bgp_on_stop.clone();
    state.kubernetes =
        control_plane_bins.map(|bins| kubernetes::planned(&lab.lab, &lab.state_dir, &bins));
    let built = state.save().and_then(|()| build(&mut state, options));
    match built {
        Ok(()) => Ok(state),
        Err(e) if options.keep_on_failure => Err(e.context(format!(
            "lab up failed; left in place (`weftctl lab down --lab {}` removes it)",
            lab.lab
        ))),
        Err(e) => {
            if let Err(cleanup) = down(lab) {
                eprintln!("warning: cleaning up after the failed lab up: {cleanup:#}");
            }
            Err(e.context("lab up failed and was rolled back"))
        }
    }
}

/// The fabric namespace with its bridge (one per underlay subnet, and
/// then the router between them), and every node's namespace plugged into
/// it with its underlay address and forwarding on.
fn build_underlay(state: &LabState) -> Result<()> {
    topology::create_fabric(&state.fabric.netns, &state.fabric.bridge)
        .with_context(|| format!("creating the fabric namespace {}", state.fabric.netns))?;
    for subnet in state.fabric.subnets.iter().skip(1) {
        topology::create_bridge(&state.fabric.netns, &subnet.bridge)
            .with_context(|| format!("creating the underlay bridge {}", subnet.bridge))?;
    }
    if let Some(router) = &state.fabric.router_netns {
        topology::create_netns(router)?;
        for subnet in &state.fabric.subnets {
            topology::attach_node(
                &state.fabric.netns,
                &subnet.bridge,
                &subnet.router_port,
                router,
                &subnet.router_ifname,
                subnet.router_ip,
                plan::UNDERLAY_PREFIX_LEN,
            )
            .with_context(|| format!("plugging the router into {}", subnet.cidr))?;
        }
        topology::set_net_sysctl(router, "net.ipv4.ip_forward", "1")?;
    }
    for node in &state.nodes {
        build_node(state, node)?;
    }
    Ok(())
}

/// One node's namespace, plugged into its underlay subnet's bridge with
/// its underlay address, routes to the other underlay subnets via the
/// router, and forwarding on; the one home of this for `lab up` and
/// `lab node add`.
fn build_node(state: &LabState, node: &state::Node) -> Result<()> {
    topology::create_netns(&node.netns)?;
    let subnet = plan::node_subnet(node.index, state.underlay_subnets);
    topology::attach_node(
        &state.fabric.netns,
        state.fabric.bridge_of(subnet),
        &node.fabric_port,
        &node.netns,
        &node.uplink,
        node.underlay_ip,
        plan::UNDERLAY_PREFIX_LEN,
    )
    .with_context(|| format!("plugging {} into the fabric", node.name))?;
    for (cidr, via) in plan::underlay_routes(node.index, state.underlay_subnets) {
        topology::add_route(&node.netns, &cidr, via, &node.uplink)
            .with_context(|| format!("routing {} to the underlay subnet {cidr}", node.name))?;
    }
    topology::set_net_sysctl(&node.netns, "net.ipv4.ip_forward", "1")
}

/// Starts the agents of the nodes at `indices` together, recording each
/// pid as it starts, and waits until all are ready.
fn start_agents(state: &mut LabState, indices: &[usize], timeout: Duration) -> Result<()> {
    let mut children = Vec::new();
    for &i in indices {
        let child = agent::start(state, &state.nodes[i])?;
        record_agent(state, i, Some(child.id()))?;
        children.push(child);
    }
    let starting = indices
        .iter()
        .zip(children)
        .map(|(&i, child)| agent::Starting {
            node: &state.nodes[i],
            child,
        })
        .collect();
    agent::wait_ready(starting, timeout)
}

/// Waits until every node routes every other node's pod CIDR (learned over
/// BGP, or from the node records), so the lab is usable when `up` returns.
fn wait_converged(state: &LabState, timeout: Duration) -> Result<()> {
    wait_routed(state, &state.nodes, timeout)
}

/// Waits until each of `nodes` routes the pod CIDR of every other one of
/// `nodes`.
fn wait_routed(state: &LabState, nodes: &[state::Node], timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    for node in nodes {
        loop {
            let routes = topology::routes(&node.netns)?;
            let missing: Vec<&str> = nodes
                .iter()
                .filter(|o| {
                    o.name != node.name
                        && !routes
                            .lines()
                            .any(|l| l.starts_with(&format!("{} ", o.pod_cidr)))
                })
                .map(|o| o.pod_cidr.as_str())
                .collect();
            if missing.is_empty() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "{} has no route to {} after {:?} (routing {}); its routes:\n{routes}",
                    node.name,
                    missing.join(", "),
                    timeout,
                    state.routing.as_arg()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn build(state: &mut LabState, options: &UpOptions) -> Result<()> {
    build_underlay(state)?;
    let all: Vec<usize> = (0..state.nodes.len()).collect();
    if state.kubernetes.is_some() {
        kubernetes::start(state)?;
        kubernetes::join_nodes(state, &all, options.ready_timeout)?;
    }
    start_agents(state, &all, options.ready_timeout)?;
    wait_converged(state, options.ready_timeout)?;
    let spec = PodSpec {
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        ..PodSpec::default()
    };
    for i in 0..state.nodes.len() {
        let node = state.nodes[i].name.clone();
        for j in 0..options.pods_per_node {
            add_pod(state, &node, &plan::pod_name(&node, j), &spec)?;
        }
    }
    Ok(())
}

/// Records an agent's pid in lab.json and in `<node state>/agent.pid`; the
/// latter lets `lab down` find the agent when lab.json is lost.
fn record_agent(state: &mut LabState, node: usize, pid: Option<u32>) -> Result<()> {
    state.nodes[node].agent_pid = pid;
    let pid_file = state.nodes[node].state_dir.join("agent.pid");
    match pid {
        Some(pid) => fs::write(&pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", pid_file.display()))?,
        None => {
            let _ = fs::remove_file(&pid_file);
        }
    }
    state.save()
}

/// What `down` did, for its one-line summary.
#[derive(Debug, Default)]
pub struct DownReport {
    pub agents_stopped: usize,
    pub namespaces_deleted: usize,
    pub fallback: bool,
}

/// Removes everything of the lab: agents (only the recorded pids, and only
/// if they still are that lab's agents), namespaces, bpffs pins, state.
/// Idempotent. Without a readable lab.json it falls back to the planned
/// namespace names and the agent.pid files.
pub fn down(lab: &LabRef) -> Result<DownReport> {
    let mut report = DownReport::default();
    let recorded = match LabState::load(&lab.state_dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("warning: {e:#}; falling back to the lab's namespace names");
            None
        }
    };
    let mut errors = Vec::new();

    let mut agents: Vec<(u32, PathBuf)> = Vec::new();
    if let Some(state) = &recorded {
        agents.extend(
            state
                .nodes
                .iter()
                .filter_map(|n| n.agent_pid.map(|pid| (pid, n.socket.clone()))),
        );
    }
    if let Ok(entries) = fs::read_dir(lab.state_dir.join("nodes")) {
        for dir in entries.flatten().map(|e| e.path()) {
            if let Some(pid) = fs::read_to_string(dir.join("agent.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                agents.push((pid, dir.join("agent.sock")));
            }
        }
    }
    agents.sort();
    agents.dedup();
    for (pid, socket) in agents {
        match process::stop_agent(pid, &socket, Duration::from_secs(2)) {
            Ok(process::Ended::NotRunning) => {}
            Ok(_) => report.agents_stopped += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    // Pods' port servers: the recorded ones, and any of this lab's pods
    // whose pid was never recorded (a crash between start and record).
    let mut servers: Vec<(u32, String)> = recorded
        .iter()
        .flat_map(|state| &state.pods)
        .filter_map(|p| p.server_pid.map(|pid| (pid, p.netns.clone())))
        .collect();
    servers.extend(serve::running(|netns| plan::is_lab_netns(&lab.lab, netns)));
    servers.sort();
    servers.dedup();
    for (pid, netns) in servers {
        if let Err(e) = serve::stop(pid, &netns) {
            errors.push(format!("{e:#}"));
        }
    }

    if let Err(e) = kubernetes::stop(
        &lab.state_dir,
        recorded.as_ref().and_then(|s| s.kubernetes.as_ref()),
    ) {
        errors.push(format!("{e:#}"));
    }

    let namespaces: Vec<String> = match &recorded {
        Some(state) => state
            .pods
            .iter()
            .map(|p| p.netns.clone())
            .chain(state.nodes.iter().map(|n| n.netns.clone()))
            .chain(state.fabric.router_netns.clone())
            .chain(state.kubernetes.as_ref().map(|k| k.netns.clone()))
            .chain(std::iter::once(state.fabric.netns.clone()))
            .collect(),
        None => {
            report.fallback = true;
            let mut names: Vec<String> = topology::list_netns()?
                .into_iter()
                .filter(|n| plan::is_lab_netns(&lab.lab, n))
                .collect();
            // Pods first, the fabric last, as when recorded.
            names.sort_by_key(|n| {
                (
                    !n.contains("-pod-"),
                    n == &plan::fabric_netns(&lab.lab),
                    n.clone(),
                )
            });
            names
        }
    };
    for netns in namespaces {
        match topology::delete_netns(&netns) {
            Ok(true) => report.namespaces_deleted += 1,
            Ok(false) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    let bpffs = Path::new(BPFFS_ROOT).join(&lab.lab);
    if bpffs.exists() {
        if let Err(e) = fs::remove_dir_all(&bpffs) {
            errors.push(format!("removing {}: {e}", bpffs.display()));
        }
        let _ = fs::remove_dir(BPFFS_ROOT); // only succeeds when empty
    }

    if let Err(e) = remove_state_dir(&lab.state_dir) {
        errors.push(format!("{e:#}"));
    }
    if !errors.is_empty() {
        bail!(
            "lab {} was not fully torn down:\n  {}",
            lab.lab,
            errors.join("\n  ")
        );
    }
    Ok(report)
}

/// Removes the state directory, but only if it holds nothing a lab does
/// not make: `--state-dir` is user input and must never cost them a file.
fn remove_state_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let name = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        if !STATE_ENTRIES.contains(&name.as_ref()) && !name.starts_with(".lab.json.tmp.") {
            bail!(
                "not removing {}: it holds {name:?}, which no lab creates",
                dir.display()
            );
        }
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// What a pod is, beside its name and node: what a pod spec would say.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The pod's Kubernetes namespace.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Container ports: named ports for policies, and what the pod's
    /// server listens on (TCP and UDP).
    pub ports: Vec<weft_model::ContainerPort>,
}

impl Default for PodSpec {
    fn default() -> PodSpec {
        PodSpec {
            namespace: "default".into(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
        }
    }
}

/// How long the lab, as the kubelet, retries an ADD that says "try again
/// later" on a Kubernetes lab: the agents' watches retry a failing API
/// server as client-go's do, up to 30 s apart plus as much again of jitter.
const KUBELET_ADD_RETRY: Duration = Duration::from_secs(120);

/// Creates pod `name` on `node`: its namespace, then CNI ADD, then the
/// server on its TCP and UDP ports. If any of it fails the pod is undone
/// (server stopped, DEL, namespace deleted, record dropped), as a runtime
/// does.
pub fn add_pod(state: &mut LabState, node: &str, name: &str, spec: &PodSpec) -> Result<Pod> {
    plan::validate_pod_name(name)?;
    let namespace = &spec.namespace;
    objects::check_namespace_name(namespace)?;
    let node = state.node(node)?.clone();
    if state.pod(name).is_ok() {
        bail!("lab {} already has a pod {name:?}", state.lab);
    }
    let serves = spec.ports.iter().any(serve::is_served);
    if serves {
        serve::binary_path(&state.bin_dir)?;
    }
    let netns = plan::pod_netns(&state.lab, name);
    if topology::netns_exists(&netns) {
        bail!(
            "network namespace {netns} already exists but lab.json has no pod {name:?}; delete it with `ip netns delete {netns}`"
        );
    }
    let mut pod = Pod {
        name: name.to_string(),
        namespace: namespace.to_string(),
        node: node.name.clone(),
        netns,
        container_id: cni::new_container_id()?,
        ifname: plan::POD_IFNAME.to_string(),
        labels: spec.labels.clone(),
        ip: None,
        host_ifname: None,
        ports: spec.ports.clone(),
        server_pid: None,
    };
    state.pods.push(pod.clone());
    state.save()?;
    let bin_dir = state.bin_dir.clone();
    let on_kubernetes = state.kubernetes.is_some();
    // On Kubernetes the Pod object exists, bound to its node, before the
    // kubelet calls the CNI, and the kubelet reports its address after.
    let attached = if on_kubernetes {
        kubernetes::create_pod(state, &pod)
    } else {
        Ok(())
    }
    .and_then(|()| topology::create_netns(&pod.netns))
    .and_then(|()| {
        let inv = invocation(&bin_dir, &node, &pod);
        if on_kubernetes {
            // As the kubelet does: its watch may lag behind the Pod's creation.
            cni::add_retrying(&inv, KUBELET_ADD_RETRY)
        } else {
            cni::add(&inv)
        }
    })
    .and_then(|attached| {
        if on_kubernetes {
            kubernetes::set_pod_running(state, &pod, attached.ip)?;
        }
        pod.ip = Some(attached.ip);
        pod.host_ifname = Some(attached.host_ifname);
        if serves {
            let mut server = serve::start(&bin_dir, &pod.netns, &pod.ports)?;
            pod.server_pid = Some(server.id());
            record_pod(state, &pod)?;
            serve::wait_ready(&mut server)?;
        }
        Ok(())
    });
    if let Err(e) = attached {
        if let Some(pid) = pod.server_pid {
            let _ = serve::stop(pid, &pod.netns);
        }
        let _ = cni::del(&invocation(&bin_dir, &node, &pod));
        let _ = topology::delete_netns(&pod.netns);
        if on_kubernetes && let Err(cleanup) = kubernetes::delete_pod(state, &pod) {
            eprintln!("warning: {cleanup:#}");
        }
        state.pods.retain(|p| p.name != pod.name);
        state.save()?;
        return Err(e.context(format!("adding pod {namespace}/{name} on {}", node.name)));
    }
    record_pod(state, &pod)?;
    Ok(pod)
}

/// Replaces the record of `pod` in lab.json.
fn record_pod(state: &mut LabState, pod: &Pod) -> Result<()> {
    *state
        .pods
        .iter_mut()
        .find(|p| p.name == pod.name)
        .expect("recorded before it was made") = pod.clone();
    state.save()
}

fn invocation<'a>(bin_dir: &'a Path, node: &'a state::Node, pod: &'a Pod) -> cni::Invocation<'a> {
    cni::Invocation {
        bin_dir,
        node_netns: &node.netns,
        agent_socket: &node.socket,
        container_id: &pod.container_id,
        pod_netns: &pod.netns,
        ifname: &pod.ifname,
        pod_namespace: &pod.namespace,
        pod_name: &pod.name,
        labels: &pod.labels,
        ports: &pod.ports,
    }
}

/// Deletes pod `name`: its port server, CNI DEL, then its namespace, then
/// its record. The record stays until all succeed, so a failed `pod del` can be retried
/// (and DEL runs again, which the plugin must accept).
pub fn del_pod(state: &mut LabState, name: &str) -> Result<()> {
    let pod = state.pod(name)?.clone();
    let node = state.node(&pod.node)?.clone();
    if let Some(pid) = pod.server_pid {
        serve::stop(pid, &pod.netns)?;
    }
    cni::del(&invocation(&state.bin_dir, &node, &pod))
        .with_context(|| format!("deleting pod {}/{name} on {}", pod.namespace, node.name))?;
    if state.kubernetes.is_some() {
        kubernetes::delete_pod(state, &pod)?;
    }
    topology::delete_netns(&pod.netns)?;
    state.pods.retain(|p| p.name != name);
    state.save()
}

fn node_index(state: &LabState, node: &str) -> Result<usize> {
    state.node(node)?;
    Ok(state
        .nodes
        .iter()
        .position(|n| n.name == node)
        .expect("checked above"))
}

/// SIGKILLs the node's agent (to test that the dataplane survives it).
/// Returns the pid it killed, None if none was running.
pub fn stop_agent(state: &mut LabState, node: &str) -> Result<Option<u32>> {
    let index = node_index(state, node)?;
    let (pid, socket) = (
        state.nodes[index].agent_pid,
        state.nodes[index].socket.clone(),
    );
    let killed = match pid {
        Some(pid) => match process::stop_agent(pid, &socket, Duration::ZERO)? {
            process::Ended::NotRunning => None,
            _ => Some(pid),
        },
        None => None,
    };
    record_agent(state, index, None)?;
    Ok(killed)
}

/// Starts the node's agent with the arguments of `lab up` and waits until
/// it is ready. Returns the pid and whether it was already running.
pub fn start_agent(
    state: &mut LabState,
    node: &str,
    ready_timeout: Duration,
) -> Result<(u32, bool)> {
    let index = node_index(state, node)?;
    if let Some(pid) = state.nodes[index]
        .agent_pid
        .filter(|&pid| process::is_agent(pid, &state.nodes[index].socket))
    {
        return Ok((pid, true));
    }
    start_agents(state, &[index], ready_timeout)?;
    let pid = state.nodes[index].agent_pid.expect("recorded at start");
    Ok((pid, false))
}

/// How `lab node add` waits.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddOptions {
    pub ready_timeout: Duration,
    /// Also wait until every node routes every other node's pod CIDR (the
    /// new one included), as `lab up` does.
    pub wait_converged: bool,
}

/// Adds node N+1 (N the highest index in use) to a running lab, built as
/// `lab up` builds a node: namespace on the fabric (on the underlay subnet
/// its index gives), underlay address 198.18.s.(10+i), pod CIDR
/// 10.244.i.0/24, its agent started and ready.
/// Recorded in lab.json before it is made; on failure it is removed again.
pub fn add_node(state: &mut LabState, options: NodeAddOptions) -> Result<state::Node> {
    let index = state.next_node_index();
    if index > plan::MAX_NODES {
        bail!(
            "lab {} cannot have a node{index}: node indices go up to {}",
            state.lab,
            plan::MAX_NODES
        );
    }
    if !topology::netns_exists(&state.fabric.netns) {
        bail!(
            "lab {}'s fabric namespace {} does not exist; is the lab up?",
            state.lab,
            state.fabric.netns
        );
    }
    if let Some(router) = &state.fabric.router_netns
        && !topology::netns_exists(router)
    {
        bail!(
            "lab {}'s router namespace {router} does not exist; is the lab up?",
            state.lab
        );
    }
    let node = state::Node::planned(
        &state.lab,
        &state.state_dir,
        Path::new(BPFFS_ROOT),
        index,
        state.underlay_subnets,
    );
    if topology::netns_exists(&node.netns) {
        bail!(
            "network namespace {} already exists but lab.json has no {}; delete it with `ip netns delete {}`",
            node.netns,
            node.name,
            node.netns
        );
    }
    let name = node.name.clone();
    state.nodes.push(node);
    state.save()?;
    let at = state.nodes.len() - 1;
    let added = build_node(state, &state.nodes[at])
        .and_then(|()| match state.kubernetes {
            Some(_) => kubernetes::join_nodes(state, &[at], options.ready_timeout),
            None => Ok(()),
        })
        .and_then(|()| start_agents(state, &[at], options.ready_timeout));
    if let Err(e) = added {
        if let Err(cleanup) = remove_node(state, &name) {
            eprintln!("warning: removing the half-added {name}: {cleanup:#}");
        }
        return Err(e.context(format!("adding {name} to lab {} (rolled back)", state.lab)));
    }
    if options.wait_converged {
        // Nodes whose agent was stopped (`lab agent stop`) neither learn
        // nor announce anything: they are left out both ways.
        let running: Vec<state::Node> = state
            .nodes
            .iter()
            .filter(|n| n.agent_pid.is_some())
            .cloned()
            .collect();
        wait_routed(state, &running, options.ready_timeout).with_context(|| {
            format!(
                "{name} was added and its agent is ready, but the routes between the nodes with running agents did not converge; \
                 it is left in place for inspection (`weftctl lab node del {name}` removes it)"
            )
        })?;
    }
    Ok(state.nodes[at].clone())
}

/// Removes a node from a running lab: its pods (CNI DEL), its agent, its
/// records in the datastore (so the other nodes drop their sessions with
/// it and its routes), its namespace (and with it the fabric port), pins
/// and state. A route reflector cannot be removed: the other nodes' agents
/// were started with it as theirs.
pub fn del_node(state: &mut LabState, name: &str) -> Result<()> {
    state.node(name)?;
    if state.route_reflectors.iter().any(|r| r == name) {
        bail!(
            "{name} is a route reflector of lab {} (--route-reflectors {}); it cannot be removed",
            state.lab,
            state.route_reflectors.join(",")
        );
    }
    let pods: Vec<String> = state
        .pods
        .iter()
        .filter(|p| p.node == name)
        .map(|p| p.name.clone())
        .collect();
    for pod in pods {
        if let Err(e) = del_pod(state, &pod) {
            eprintln!("warning: {e:#}; deleting pod {pod}'s namespace without DEL");
            let (netns, server) = {
                let pod = state.pod(&pod)?;
                (pod.netns.clone(), pod.server_pid)
            };
            if let Some(pid) = server {
                serve::stop(pid, &netns)?;
            }
            topology::delete_netns(&netns)?;
            state.pods.retain(|p| p.name != pod);
            state.save()?;
        }
    }
    remove_node(state, name)
}

/// Undoes what `add_node` made for `name`, whatever of it exists, and
/// drops its record. The agent goes first: it republishes its node record.
fn remove_node(state: &mut LabState, name: &str) -> Result<()> {
    let index = node_index(state, name)?;
    let node = state.nodes[index].clone();
    if let Some(pid) = node.agent_pid {
        process::stop_agent(pid, &node.socket, Duration::from_secs(2))?;
    }
    record_agent(state, index, None)?;
    if state.kubernetes.is_some() {
        kubernetes::delete_node(state, name)?;
    } else {
        let datastore = state.datastore_dir();
        remove_path(&datastore.join("nodes").join(format!("{name}.json")))?;
        remove_path(&datastore.join("endpoints").join(name))?;
    }
    topology::detach_node(&state.fabric.netns, &node.fabric_port)?;
    topology::delete_netns(&node.netns)?;
    remove_path(&node.bpffs_dir)?;
    remove_path(&node.state_dir)?;
    state.nodes.retain(|n| n.name != name);
    state.save()
}

/// Removes a file or a directory tree; nothing there is fine.
fn remove_path(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Probes every ordered pair of the lab's pods that have an address.
pub fn check(state: &LabState, config: ProbeConfig) -> Result<Matrix> {
    let targets: Vec<ProbeTarget> = state
        .pods
        .iter()
        .filter_map(|p| {
            p.ip.map(|ip| ProbeTarget {
                name: p.name.clone(),
                netns: topology::netns_path(&p.netns),
                ip,
            })
        })
        .collect();
    for pod in state.pods.iter().filter(|p| p.ip.is_none()) {
        eprintln!(
            "warning: pod {} has no address (its ADD never completed); not probed",
            pod.name
        );
    }
    Ok(probe::probe_all(&targets, config))
}

/// Runs `command` inside the pod's namespace, replacing weftctl.
pub fn exec(state: &LabState, pod: &str, command: &[String]) -> Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let pod = state.pod(pod)?;
    let (program, args) = command.split_first().context("no command given after --")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    process::in_netns(&mut cmd, &pod.netns, false)?;
    let err = cmd.exec();
    Err(err).with_context(|| format!("running {program} in {}", pod.netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_drops_repeats() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(io)
            .context("transport error: entity not found")
            .context("connecting");
        assert_eq!(
            error_chain(&e),
            "connecting: transport error: entity not found"
        );
    }

    #[test]
    fn state_dir_is_removed_only_when_it_holds_lab_files() {
        let dir = std::env::temp_dir().join(format!("weftctl-down-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("nodes/node1")).unwrap();
        fs::write(dir.join("lab.json"), "{}").unwrap();
        fs::write(dir.join("precious.txt"), "keep").unwrap();
        assert!(
            remove_state_dir(&dir)
                .unwrap_err()
                .to_string()
                .contains("precious.txt")
        );
        assert!(dir.join("precious.txt").exists());
        fs::remove_file(dir.join("precious.txt")).unwrap();
        remove_state_dir(&dir).unwrap();
        assert!(!dir.exists());
        remove_state_dir(&dir).unwrap();
    }

    #[test]
    fn lab_ref_defaults_state_dir() {
        let lab = LabRef::new("e2e", None).unwrap();
        assert_eq!(lab.state_dir, Path::new("/run/weft-lab/e2e"));
        assert!(LabRef::new("../x", None).is_err());
    }

    /// A lab named `<prefix><pid>` with its state under the temp dir, for
    /// the tests that build namespaces; they fail loudly without root.
    fn root_test_lab(prefix: &str) -> LabRef {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test needs root (network namespaces): run it as root"
        );
        let lab = LabRef::new(&format!("{prefix}{}", std::process::id()), None).unwrap();
        LabRef {
            state_dir: std::env::temp_dir().join(&lab.lab),
            ..lab
        }
    }

    /// The underlay part of `lab up` for real (needs root; fails without
    /// it): nodes reach each other over the fabric bridge, forward
    /// packets, and `down` finds everything by name without a lab.json.
    #[test]
    fn underlay_connects_nodes_and_down_removes_it() {
        let lab = root_test_lab("wctl-t");
        let state = LabState::planned(
            &lab.lab,
            &lab.state_dir,
            Path::new("/nonexistent"),
            Path::new(BPFFS_ROOT),
            2,
        );
        let built = build_underlay(&state);
        let checked = built.and_then(|()| {
            assert_eq!(
                topology::get_net_sysctl(&state.nodes[1].netns, "net.ipv4.ip_forward")?,
                "1"
            );
            let node1 = topology::netns_path(&state.nodes[0].netns);
            probe::icmp_echo(
                &node1,
                state.nodes[1].underlay_ip,
                probe::Echo::new(Duration::from_secs(1), 3),
            )?;
            Ok(())
        });
        let report = down(&lab).unwrap();
        checked.unwrap();
        assert!(report.fallback);
        assert_eq!(report.namespaces_deleted, 3);
        let left: Vec<String> = topology::list_netns()
            .unwrap()
            .into_iter()
            .filter(|n| plan::is_lab_netns(&lab.lab, n))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// Two underlay subnets for real (needs root; fails without it): nodes
    /// on different subnets reach each other through the router, and
    /// `down` finds the router namespace too, without a lab.json.
    #[test]
    fn two_underlay_subnets_are_routed_and_down_removes_the_router() {
        let lab = root_test_lab("weft-xs-t");
        let state = LabState::planned_on(
            &lab.lab,
            &lab.state_dir,
            Path::new("/nonexistent"),
            Path::new(BPFFS_ROOT),
            3,
            2,
        );
        let built = build_underlay(&state);
        let checked = built.and_then(|()| {
            let node1 = topology::netns_path(&state.nodes[0].netns);
            // Across the router, and on the same subnet.
            for other in [1, 2] {
                probe::icmp_echo(
                    &node1,
                    state.nodes[other].underlay_ip,
                    probe::Echo::new(Duration::from_secs(1), 3),
                )?;
            }
            let routes = topology::routes(&state.nodes[1].netns)?;
            anyhow::ensure!(
                routes.contains("198.18.0.0/24 via 198.18.1.1 dev eth0"),
                "node2's routes:\n{routes}"
            );
            Ok(())
        });
        let report = down(&lab).unwrap();
        checked.unwrap();
        assert!(report.fallback);
        assert_eq!(report.namespaces_deleted, 5);
        let left: Vec<String> = topology::list_netns()
            .unwrap()
            .into_iter()
            .filter(|n| plan::is_lab_netns(&lab.lab, n))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
