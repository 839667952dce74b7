//! weftctl: the operator's command line for Weft. Queries a node's agent
//! over its unix socket, and builds and checks a lab cluster made of
//! network namespaces on this machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use weft_lab::agent_api::{self, block_on};
use weft_lab::{self as lab, LabRef, PodView, StatusView, cni, probe::ProbeConfig};
use weftctl::install_cni;

#[derive(Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate Weft: query node agents, run a lab cluster in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show an agent's readiness (gRPC Status).
    Status {
        #[command(flatten)]
        agent: AgentTarget,
        /// Print JSON: {"ready","node_name","pod_cidr","message","endpoints","policy_digest",
        /// "policy_endpoints_failed_closed","datastore","node_address","node_address_reason"}.
        #[arg(long)]
        json: bool,
    },
    /// List the endpoints (pod attachments) an agent holds.
    Endpoints {
        #[command(flatten)]
        agent: AgentTarget,
        /// Print a JSON array of endpoints.
        #[arg(long)]
        json: bool,
    },
    /// Show an agent's datapath counters (gRPC GetCounters).
    Counters {
        #[command(flatten)]
        agent: AgentTarget,
        /// Print a JSON object of counter name to value.
        #[arg(long)]
        json: bool,
    },
    /// The agent's BGP speaker (routing mode bgp).
    #[command(subcommand)]
    Bgp(BgpCommand),
    /// NetworkPolicy: run policy cases; show the node's policy as its agent programmed it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Build, inspect and check a cluster of network namespaces on this machine.
    Lab(LabArgs),
    /// Install weft-cni and its network config on this node (the DaemonSet's init container).
    ///
    /// Checks the config as weft-cni will read it (a .conflist whose first plugin is weft-cni,
    /// or a single .conf/.json) and refuses a bad one, naming the field, before writing
    /// anything. Each file goes through a temporary file in its directory and a rename, so
    /// the runtime never reads half a config and a running weft-cni is never overwritten in
    /// place; files already as wanted are left alone.
    InstallCni(InstallCniArgs),
}

#[derive(Args)]
struct InstallCniArgs {
    /// The weft-cni binary to install [default: weft-cni next to weftctl].
    #[arg(long)]
    cni_bin: Option<PathBuf>,
    /// The network config to install (the DaemonSet mounts its ConfigMap here); its file
    /// name is kept.
    #[arg(long, default_value = "/etc/weft/cni/10-weft.conflist")]
    cni_config: PathBuf,
    /// The node's CNI plugin directory, as mounted in the container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The node's CNI config directory, as mounted in the container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run a policy case on the userspace twin: one node per /24 of the
    /// pods' addresses, the policies compiled by the agent's compiler into
    /// each node's maps, every probe real traffic through the twin (TCP
    /// connect and echo, UDP echo, an SCTP INIT that must arrive). Exits 1
    /// when a probe's answer differs from its `expected`.
    Simulate {
        /// The case: {"namespaces", "pods", "policies", "probes"} (JSON or YAML).
        #[arg(long)]
        input: PathBuf,
        /// Print {"results": [{"from","to","port","protocol","allowed"}, ...]},
        /// one per probe in the probes' order.
        #[arg(long)]
        json: bool,
    },
    /// Print each local endpoint's compiled rules (gRPC GetPolicy): per direction whether
    /// it is isolated, each allow rule's peer (pods as namespace/name, ipBlocks with their
    /// excepts, any, the node itself), protocol and ports, the packets policy allowed and
    /// denied, and whether the endpoint fails closed (denied everything because its policy
    /// could not be programmed) and why.
    Show {
        #[command(flatten)]
        agent: AgentTarget,
        /// Only this pod: NAME or NAMESPACE/NAME.
        #[arg(long)]
        pod: Option<String>,
        /// Print JSON: {"revision","endpoints":[{"pod","address","failed_closed","ingress","egress"}]}.
        #[arg(long)]
        json: bool,
    },
}

/// Which agent to ask: its socket, or a node of a lab.
#[derive(Args)]
struct AgentTarget {
    /// The agent's unix socket.
    #[arg(long, required_unless_present = "node", conflicts_with = "node")]
    socket: Option<PathBuf>,
    /// A lab node whose agent to ask (socket taken from the lab's lab.json).
    #[arg(long)]
    node: Option<String>,
    /// The lab the node belongs to.
    #[arg(long, default_value = "weft", env = "WEFT_LAB")]
    lab: String,
    /// The lab's state directory [default: /run/weft-lab/<lab>].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How long to wait for the agent, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

impl AgentTarget {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let node = self
            .node
            .as_deref()
            .expect("clap requires --socket or --node");
        let state = LabRef::new(&self.lab, self.state_dir.clone())?.load()?;
        Ok(state.node(node)?.socket.clone())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(Subcommand)]
enum BgpCommand {
    /// List the BGP sessions: peer, AS, state, uptime, prefixes received and advertised, last error.
    Peers {
        #[command(flatten)]
        agent: AgentTarget,
        /// Print JSON: {"enabled","local_as","router_id","peers":[..]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct LabArgs {
    /// The lab's name; prefixes its namespaces (<lab>-fabric, <lab>-node<i>, <lab>-pod-<pod>).
    #[arg(long, global = true, default_value = "weft", env = "WEFT_LAB")]
    lab: String,
    /// Where lab.json, agent logs, sockets and the shared datastore live [default: /run/weft-lab/<lab>].
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab from scratch (a previous lab of that name is torn down first):
    /// fabric, N nodes with their agents, M pods per node via weft-cni ADD.
    Up {
        /// Nodes node1..nodeN: netns <lab>-node<i>, eth0 198.18.0.(10+i)/24 (198.18.s.(10+i)/24
        /// with --underlay-subnets), pod CIDR 10.244.<i>.0/24.
        #[arg(long)]
        nodes: u32,
        /// Pods per node, named <node>-a, <node>-b, ... (namespace "default", label app=web).
        #[arg(long, default_value_t = 0)]
        pods_per_node: u32,
        /// Where weft-agent and weft-cni are [default: the directory of weftctl].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds to wait for the agents (started together) to report ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// On failure, leave what was built for inspection instead of tearing it down.
        #[arg(long)]
        keep_on_failure: bool,
        /// How the agents route between nodes: a BGP mesh, or static routes from the datastore.
        #[arg(long, value_enum, default_value = "bgp")]
        routing: lab::state::Routing,
        /// Nodes that are BGP route reflectors, comma-separated (e.g. node1,node2): they peer
        /// with every other node (the non-reflectors as their route-reflector clients), and
        /// the other nodes peer only with them.
        /// Every name must be a node of the lab. Default: a full iBGP mesh.
        #[arg(long, value_delimiter = ',', value_name = "NODES")]
        route_reflectors: Vec<String>,
        /// How pod traffic crosses the underlay between nodes: IP-in-IP by Weft's eBPF
        /// programs, a kernel vxlan device, or native routing.
        #[arg(long, value_parser = weft_model::encap_value_parser(), default_value = "ipip")]
        encap: lab::state::Encap,
        /// Encapsulate only towards nodes outside a node's underlay subnet (with one
        /// underlay subnet every pod packet is routed natively; see --underlay-subnets).
        #[arg(long)]
        cross_subnet: bool,
        /// Underlay subnets the nodes alternate between: 1 puts every node on
        /// 198.18.0.0/24; N (up to 4) puts node i on 198.18.((i-1) mod N).0/24 (eth0
        /// 198.18.s.(10+i)/24), each subnet its own bridge in the fabric, joined by a router
        /// namespace <lab>-router (198.18.s.1 on each) that nodes reach the other subnets by.
        #[arg(long, default_value_t = 1, value_name = "N")]
        underlay_subnets: u32,
        /// Every agent's `--direct-redirect`: whether IP-in-IP decapsulated for a local pod
        /// is handed straight into the pod (eBPF bpf_fib_lookup + bpf_redirect_peer) or
        /// forwarded by the node's stack. Default: the agent's own default.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        direct_redirect: Option<bool>,
        /// Every agent's `--bgp-on-stop`: what its BGP peers are told when it stops on
        /// SIGTERM (`cease`: drop its routes at once; `graceful-restart`: no NOTIFICATION, keep
        /// them while the next agent starts). Default: the agent's own default.
        #[arg(long, value_parser = ["cease", "graceful-restart"])]
        bgp_on_stop: Option<String>,
        /// Run a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager from
        /// the repository's .tools/control-plane-*/bin, built by scripts/build-control-plane.sh)
        /// in netns <lab>-kube on the underlay (198.18.0.250), and run the agents on it
        /// (`--datastore kubernetes`, the weft-agent ServiceAccount's token and RBAC) instead of
        /// the directory store. The lab plays the kubelet: it registers each Node (InternalIP:
        /// its underlay address; pod CIDR: the controller manager's node IPAM), creates each
        /// pod's Pod object before the CNI ADD and writes its status after. `lab apply`,
        /// `delete` and `label` then go through kubectl; `lab kubeconfig` prints the
        /// administrator's kubeconfig.
        #[arg(long)]
        kubernetes: bool,
    },
    /// Tear the lab down: its agents, control plane, namespaces, bpffs pins and state
    /// directory. Idempotent.
    Down,
    /// Print the path of a Kubernetes lab's administrator kubeconfig (for
    /// `kubectl --kubeconfig`, run inside `ip netns exec <lab>-kube` or any lab node).
    Kubeconfig,
    /// Show the lab's fabric (and route reflectors, if any), its control plane (in a Kubernetes lab),
    /// nodes (with live agent pids) and pods.
    Status {
        /// Print JSON: {"fabric":{..},"route_reflectors":[..],"nodes":[..],"pods":[..]}, and in a
        /// Kubernetes lab "kubernetes":{"netns","api_server","kubeconfig","running":[..]}.
        #[arg(long)]
        json: bool,
    },
    /// Add or delete a pod through weft-cni.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Stop or start a node's agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Add a node to the running lab, or remove one.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Probe ICMP and TCP between every ordered pair of pods; exit 1 unless all pass.
    Check {
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
        /// Per-try timeout of ICMP echo and TCP, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Write BGPPeer, NetworkPolicy and Namespace manifests into the lab's datastore, all or
    /// nothing; the agents react without a restart.
    ///
    /// Takes weft.dev/v1alpha1 BGPPeer, networking.k8s.io/v1 NetworkPolicy and v1 Namespace,
    /// mixed, in YAML or JSON, several documents. The whole file is checked first: one
    /// invalid document (reported with its number and the field's path) refuses the file and
    /// nothing is written. In a Kubernetes lab the checked file goes to the API server
    /// (kubectl apply).
    Apply {
        /// The manifest file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Remove an object from the lab's datastore (in a Kubernetes lab: kubectl delete).
    Delete {
        /// The object's kind.
        #[arg(value_enum)]
        kind: lab::objects::Kind,
        /// The object's metadata.name; a networkpolicy's as NAMESPACE/NAME (NAME alone: in
        /// namespace default).
        name: String,
    },
    /// Change the labels of a pod (its endpoint record, through its node's agent) or of a
    /// namespace (its Namespace object in the datastore, created if the namespace so far
    /// exists only through its pods), kubectl-style. In a Kubernetes lab: the Pod's or the
    /// Namespace's object (kubectl label).
    Label {
        /// What to label.
        #[arg(value_enum)]
        kind: LabelKind,
        /// The pod's or the namespace's name.
        name: String,
        /// Changes: key=value sets a label, key- removes it.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Serve a pod's TCP and UDP ports (echo) inside its network namespace until killed;
    /// what `lab pod add --ports` starts.
    #[command(hide = true)]
    Serve {
        /// The pod's network namespace.
        #[arg(long)]
        netns: String,
        /// The ports, as `lab pod add --ports` takes them.
        #[arg(long, value_parser = cni::parse_ports)]
        ports: PortList,
    },
    /// Trace a packet from a pod hook by hook through the nodes' current tables, injecting nothing.
    ///
    /// Like Antrea's Traceflow, but no packet is sent: the nodes' pinned eBPF maps, routes,
    /// links and vxlan FDB/neighbour entries are read, and the userspace twin (the same
    /// decisions as the tc programs, around a model of the kernel) walks a synthetic packet
    /// through them. Prints one line per step (node, hook, packet, decision, counter; at each
    /// pod veth hook, tc ingress and tc egress, the policy verdict and the policy map entry
    /// that decided it: allow rule, isolation marker, not isolated, or the connection
    /// tracker's reason for asking none), then a verdict: delivered to which pod, or dropped
    /// where and why, and any ICMP error sent back. Exits 0 whenever the trace ran, whatever
    /// the verdict.
    Trace {
        /// The pod the packet leaves from (a lab pod's name, e.g. node1-a).
        #[arg(long)]
        from: String,
        /// Where to: IP (ICMP echo), IP:PORT/tcp or IP:PORT/udp.
        #[arg(long, value_name = "IP[:PORT/PROTO]")]
        to: weft_twin::trace::Target,
        /// The packet's IPv4 total length in bytes [default: the smallest of its kind].
        #[arg(long, value_name = "BYTES")]
        size: Option<u16>,
        /// Set the Don't Fragment bit.
        #[arg(long)]
        df: bool,
        /// Print JSON: {"lab","encap","from","to","packet","notes","steps":[..],"verdict","summary"};
        /// a pod veth step has "policy".
        #[arg(long)]
        json: bool,
    },
    /// Run a NetworkPolicy case (the input of `weftctl policy simulate`) on the lab: real
    /// pods through weft-cni, real agents, real connections from inside the pods.
    ///
    /// Makes the lab match the case, changing only what differs: one node per /24 of the
    /// pods' `ip` (in address order, node1 first; a lab is brought up, or nodes added, if
    /// there are too few), the case's pods as lab pods <namespace>-<name> with their
    /// namespace, labels and container ports (an echo server on the TCP and UDP ones; the
    /// lab's own addresses, not the case's), other lab pods deleted, and exactly the case's
    /// Namespace and NetworkPolicy objects in the datastore (on a lab up with --kubernetes:
    /// applied with kubectl, the API server's own namespaces kept). Then waits until every
    /// node's agent reports its maps programmed from exactly these inputs (a digest; on
    /// Kubernetes computed from what Weft's cluster source lists from the API server), and runs all
    /// probes at once from inside the source pods: TCP an echo exchange, UDP a datagram
    /// echoed back, SCTP a crafted INIT seen or not seen in the destination pod. A denied
    /// probe takes about a second. Exits 1 when a probe's answer differs from its
    /// `expected`.
    Netpol {
        /// The case file (JSON; YAML too), or - for standard input.
        #[arg(long)]
        input: PathBuf,
        /// Print {"results":[{"from","to","port","protocol","allowed"},..]}, one per probe,
        /// as `policy simulate --json` does.
        #[arg(long)]
        json: bool,
        /// Leave a lab this command brought up in place afterwards (a lab that was already
        /// running is always left up).
        #[arg(long)]
        keep: bool,
        /// Where weft-agent and weft-cni are, for a lab this command brings up [default:
        /// the directory of weftctl].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds to wait for every agent to program the case's policy inputs.
        #[arg(long, default_value_t = 30)]
        converge_timeout: u64,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// The pod's name.
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// What `lab label` changes the labels of.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LabelKind {
    Pod,
    Namespace,
}

/// `--ports`, parsed whole (clap would otherwise take a `Vec` as repeated values).
type PortList = Vec<weft_model::ContainerPort>;

#[derive(Subcommand)]
enum PodCommand {
    /// Create a pod's namespace and run weft-cni ADD for it on NODE.
    Add {
        /// The node to run the pod on, e.g. node1.
        #[arg(long)]
        node: String,
        /// The pod's name (a DNS-1123 label); its netns is <lab>-pod-<name>.
        #[arg(long)]
        name: String,
        /// The pod's Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Pod labels, k=v,k2=v2 (passed in the CNI config's args.cni.labels).
        #[arg(long, default_value = "")]
        labels: String,
        /// The pod's container ports, [NAME:]PORT[/tcp|udp|sctp],... (TCP when no protocol
        /// is given; NAME an IANA service name, for named ports in policies). Passed in the
        /// CNI config's args.cni.ports to the agent's endpoint record. The pod runs an echo
        /// server on its TCP and UDP ports (SCTP ports get none: this kernel has no SCTP).
        #[arg(long, default_value = "", value_parser = cni::parse_ports)]
        ports: PortList,
        /// Print the pod as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run weft-cni DEL for a pod, then delete its namespace.
    Del {
        /// The pod's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Add node<N+1> (N the highest node index in use): netns <lab>-node<i> on the fabric,
    /// eth0 198.18.0.(10+i)/24 (in a lab of N underlay subnets on subnet (i-1) mod N:
    /// 198.18.s.(10+i)/24), pod CIDR 10.244.<i>.0/24, its agent started with the lab's
    /// routing and route reflectors. Waits until the agent is ready and, unless --no-wait,
    /// until every node with a running agent routes the pod CIDR of every other such node (if the
    /// routes do not come, the node is left in place and the command fails).
    Add {
        /// Seconds to wait for the agent to report ready (and again for the routes).
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// Return as soon as the new agent is ready, without waiting for the routes.
        #[arg(long)]
        no_wait: bool,
        /// Print the node as JSON (the shape of a node in `lab status --json`).
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: CNI DEL of its pods, its agent (SIGTERM), its datastore records
    /// (so the other nodes drop it and its routes), namespace, pins and state.
    /// A route reflector cannot be removed.
    Del {
        /// The node's name, e.g. node4.
        node: String,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// SIGKILL the node's agent, leaving its dataplane in place.
    Stop {
        /// The node's name, e.g. node2.
        node: String,
    },
    /// Start the node's agent with the arguments of `lab up` and wait until it is ready.
    Start {
        /// The node's name, e.g. node2.
        node: String,
        /// Seconds to wait for the agent to report ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// Switch the lab to this encapsulation mode first. It is recorded for the whole
        /// lab: each other node's agent takes it when it is next started (a rolling change
        /// of the cluster's configuration).
        #[arg(long, value_parser = weft_model::encap_value_parser())]
        encap: Option<lab::state::Encap>,
        /// Switch the lab's `--direct-redirect` first; recorded for the whole lab like
        /// `--encap`.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        direct_redirect: Option<bool>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", weft_lab::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints an agent's answer as pretty JSON (`--json`) or as its table.
fn print_as<T: serde::Serialize>(
    value: &T,
    json: bool,
    render: impl Fn(&T) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", render(value));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Status { agent, json } => {
            let status = block_on(agent_api::status(&agent.socket()?, agent.timeout()))?;
            print_as(&status, json, agent_api::render_status)?;
        }
        Command::Endpoints { agent, json } => {
            let endpoints = block_on(agent_api::endpoints(&agent.socket()?, agent.timeout()))?;
            print_as(&endpoints, json, |e| agent_api::render_endpoints(e))?;
        }
        Command::Counters { agent, json } => {
            let counters = block_on(agent_api::counters(&agent.socket()?, agent.timeout()))?;
            print_as(&counters, json, agent_api::render_counters)?;
        }
        Command::Bgp(BgpCommand::Peers { agent, json }) => {
            let peers = block_on(agent_api::bgp_peers(&agent.socket()?, agent.timeout()))?;
            print_as(&peers, json, agent_api::render_bgp_peers)?;
        }
        Command::Policy(PolicyCommand::Show { agent, pod, json }) => {
            let show = block_on(lab::policy_show::policy_show(
                &agent.socket()?,
                agent.timeout(),
                pod.as_deref(),
            ))?;
            print_as(&show, json, lab::policy_show::PolicyShow::render)?;
        }
        Command::Lab(args) => return run_lab(args),
        Command::InstallCni(args) => {
            let installed = install_cni::install(&install_cni::Install {
                cni_bin: match args.cni_bin {
                    Some(bin) => bin,
                    None => install_cni::default_cni_bin()?,
                },
                cni_config: args.cni_config,
                cni_bin_dir: args.cni_bin_dir,
                cni_conf_dir: args.cni_conf_dir,
            })?;
            print!("{}", installed.render());
        }
        Command::Policy(PolicyCommand::Simulate { input, json }) => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let case = weft_model::policy_case::parse_case(&text)
                .with_context(|| format!("{}", input.display()))?;
            let results = weft_twin::netpol::simulate(&case)
                .with_context(|| format!("simulating {}", input.display()))?;
            print_as(&results, json, |r| case.render(r))?;
            if !case.mismatches(&results).is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_lab(args: LabArgs) -> Result<ExitCode> {
    let lab = LabRef::new(&args.lab, args.state_dir)?;
    let mutates = matches!(
        args.command,
        LabCommand::Up { .. }
            | LabCommand::Down
            | LabCommand::Pod(_)
            | LabCommand::Agent(_)
            | LabCommand::Node(_)
            | LabCommand::Apply { .. }
            | LabCommand::Delete { .. }
            | LabCommand::Label { .. }
            | LabCommand::Netpol { .. }
    );
    let _lock = if mutates {
        Some(lab::LabLock::acquire(&lab)?)
    } else {
        None
    };
    match args.command {
        LabCommand::Up {
            nodes,
            pods_per_node,
            bin_dir,
            ready_timeout,
            keep_on_failure,
            routing,
            route_reflectors,
            encap,
            cross_subnet,
            direct_redirect,
            bgp_on_stop,
            underlay_subnets,
            kubernetes,
        } => {
            let started = Instant::now();
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => lab::default_bin_dir()?,
            };
            let options = lab::UpOptions {
                nodes,
                pods_per_node,
                bin_dir,
                ready_timeout: Duration::from_secs(ready_timeout),
                keep_on_failure,
                routing,
                route_reflectors,
                encap,
                cross_subnet,
                direct_redirect,
                bgp_on_stop,
                underlay_subnets,
                kubernetes,
            };
            let state = lab::up(&lab, &options)?;
            print!(
                "{}",
                StatusView::new(&state, lab::process::is_agent).render()
            );
            eprintln!(
                "lab {} up: {nodes} nodes, {} pods in {:.1} s",
                lab.lab,
                state.pods.len(),
                started.elapsed().as_secs_f64()
            );
        }
        LabCommand::Down => {
            let report = lab::down(&lab)?;
            println!(
                "lab {} down: {} agents stopped, {} namespaces deleted{}",
                lab.lab,
                report.agents_stopped,
                report.namespaces_deleted,
                if report.fallback {
                    " (by name; no lab.json)"
                } else {
                    ""
                }
            );
        }
        LabCommand::Kubeconfig => {
            let state = lab.load()?;
            println!("{}", lab::kubernetes::admin_kubeconfig(&state)?.display());
        }
        LabCommand::Apply { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let state = lab.load()?;
            for name in lab::apply(&state, &text)? {
                println!("{name} applied");
            }
        }
        LabCommand::Delete { kind, name } => {
            let state = lab.load()?;
            if lab::delete(&state, kind, &name)? {
                println!("{}/{name} deleted", kind.name());
            } else {
                bail!("no {} {name:?} in lab {}", kind.name(), lab.lab);
            }
        }
        LabCommand::Label {
            kind,
            name,
            changes,
        } => {
            let changes = lab::objects::parse_label_changes(&changes)?;
            let join = |labels: &std::collections::BTreeMap<String, String>| {
                let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                pairs.join(",")
            };
            match kind {
                LabelKind::Pod => {
                    let mut state = lab.load()?;
                    let pod = lab::objects::label_pod(&mut state, &name, &changes)?;
                    println!("pod/{name} labeled: {}", join(&pod.labels));
                }
                LabelKind::Namespace => {
                    let state = lab.load()?;
                    let ns = lab::objects::label_namespace(&state, &name, &changes)?;
                    println!("namespace/{name} labeled: {}", join(&ns.metadata.labels));
                }
            }
        }
        LabCommand::Serve { netns, ports } => {
            lab::serve::serve(&netns, &ports)?;
        }
        LabCommand::Status { json } => {
            let state = lab.load()?;
            let view = StatusView::new(&state, lab::process::is_agent);
            if json {
                println!("{}", view.to_json());
            } else {
                print!("{}", view.render());
            }
        }
        LabCommand::Pod(PodCommand::Add {
            node,
            name,
            namespace,
            labels,
            ports,
            json,
        }) => {
            let spec = lab::PodSpec {
                namespace,
                labels: cni::parse_labels(&labels)?,
                ports,
            };
            let mut state = lab.load()?;
            let pod = lab::add_pod(&mut state, &node, &name, &spec)?;
            let view = PodView::from(&pod);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "pod {}/{} on {}: {} via {} (netns {})",
                    view.namespace,
                    view.name,
                    view.node,
                    dash(view.ip.clone()),
                    dash(view.host_ifname.clone()),
                    view.netns
                );
            }
        }
        LabCommand::Pod(PodCommand::Del { name }) => {
            let mut state = lab.load()?;
            lab::del_pod(&mut state, &name)?;
            println!("pod {name} deleted");
        }
        LabCommand::Agent(AgentCommand::Stop { node }) => {
            let mut state = lab.load()?;
            match lab::stop_agent(&mut state, &node)? {
                Some(pid) => println!("agent of {node} killed (pid {pid})"),
                None => println!("agent of {node} was not running"),
            }
        }
        LabCommand::Agent(AgentCommand::Start {
            node,
            ready_timeout,
            encap,
            direct_redirect,
        }) => {
            let mut state = lab.load()?;
            if let Some(encap) = encap
                && state.switch_encap(encap)?
            {
                println!(
                    "lab {} switched to encapsulation {}",
                    state.lab,
                    encap.name()
                );
            }
            if let Some(on) = direct_redirect
                && state.switch_direct_redirect(on)?
            {
                println!("lab {} switched to --direct-redirect {on}", state.lab);
            }
            let (pid, already) =
                lab::start_agent(&mut state, &node, Duration::from_secs(ready_timeout))?;
            if already {
                println!("agent of {node} already running (pid {pid})");
            } else {
                println!("agent of {node} ready (pid {pid})");
            }
        }
        LabCommand::Node(NodeCommand::Add {
            ready_timeout,
            no_wait,
            json,
        }) => {
            let started = Instant::now();
            let mut state = lab.load()?;
            let options = lab::NodeAddOptions {
                ready_timeout: Duration::from_secs(ready_timeout),
                wait_converged: !no_wait,
            };
            let node = lab::add_node(&mut state, options)?;
            let view = StatusView::new(&state, lab::process::is_agent);
            let view = view
                .nodes
                .iter()
                .find(|n| n.name == node.name)
                .expect("the added node is in the lab");
            if json {
                println!("{}", serde_json::to_string_pretty(view)?);
            } else {
                println!(
                    "{} added: netns {}, underlay {}, pod CIDR {}, agent pid {}",
                    view.name,
                    view.netns,
                    view.underlay_ip,
                    view.pod_cidr,
                    view.agent_pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            eprintln!(
                "{} {} in {:.2} s",
                node.name,
                if no_wait { "ready" } else { "ready and routed" },
                started.elapsed().as_secs_f64()
            );
        }
        LabCommand::Node(NodeCommand::Del { node }) => {
            let mut state = lab.load()?;
            lab::del_node(&mut state, &node)?;
            println!("{node} deleted");
        }
        LabCommand::Check { json, timeout_ms } => {
            let state = lab.load()?;
            let timeout = Duration::from_millis(timeout_ms);
            let config = ProbeConfig {
                icmp_timeout: timeout,
                tcp_timeout: timeout.mul_f32(1.5),
                ..ProbeConfig::default()
            };
            let started = Instant::now();
            let matrix = lab::check(&state, config)?;
            if json {
                println!("{}", matrix.to_json());
            } else {
                print!("{}", matrix.render());
            }
            eprintln!(
                "checked {} pairs in {:.1} s",
                matrix.pairs.len(),
                started.elapsed().as_secs_f64()
            );
            if !matrix.all_ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Trace {
            from,
            to,
            size,
            df,
            json,
        } => {
            let state = lab.load()?;
            let request = weftctl::trace::TraceRequest { from, to, size, df };
            let report = block_on(weftctl::trace::run(&state, &request))?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
        }
        LabCommand::Netpol {
            input,
            json,
            keep,
            bin_dir,
            converge_timeout,
        } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&input)
                    .with_context(|| format!("reading {}", input.display()))?
            };
            let case = weft_model::policy_case::parse_case(&text)
                .with_context(|| format!("{}", input.display()))?;
            let options = lab::netpol::NetpolOptions {
                keep,
                converge_timeout: Duration::from_secs(converge_timeout),
                ..lab::netpol::NetpolOptions::new(match bin_dir {
                    Some(dir) => dir,
                    None => lab::default_bin_dir()?,
                })
            };
            let run = lab::netpol::run(&lab, &case, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run.results)?);
            } else {
                print!("{}", case.render(&run.results));
            }
            let differing = case.mismatches(&run.results).len();
            eprintln!(
                "{}: {}; lab {}{} matched in {:.2} s, programmed in {:.2} s, probed in {:.2} s{}",
                input.display(),
                lab::netpol::summary(&case),
                lab.lab,
                if run.brought_up {
                    format!(" brought up in {:.2} s,", run.lab.as_secs_f64())
                } else {
                    String::new()
                },
                run.reconcile.as_secs_f64(),
                run.converge.as_secs_f64(),
                run.probe.as_secs_f64(),
                if differing > 0 {
                    format!("; {differing} answers differ from expected")
                } else {
                    String::new()
                }
            );
            if differing > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Exec { pod, command } => {
            let state = lab.load()?;
            lab::exec(&state, &pod, &command).context("lab exec")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
