//! lab.json: the record of everything a lab created, so that every later
//! command (and `lab down` after a crash) acts on exactly those objects.
//! Objects are recorded before they are created, so a record may name a
//! namespace that does not exist yet; deleting it is then a no-op.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan;

pub const STATE_FILE: &str = "lab.json";
/// Bumped when the layout of lab.json changes incompatibly.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub lab: String,
    pub state_dir: PathBuf,
    /// Where weft-agent and weft-cni were found at `lab up`; reused by later
    /// commands so a node's agent restarts with the same binary.
    pub bin_dir: PathBuf,
    /// How the agents route between nodes; every agent of the lab the same.
    #[serde(default)]
    pub routing: Routing,
    /// Nodes that are BGP route reflectors (`--route-reflectors`); empty:
    /// a full iBGP mesh. Every agent of the lab gets the same list.
    #[serde(default)]
    pub route_reflectors: Vec<String>,
    /// How pod traffic crosses the underlay; every agent of the lab the same.
    #[serde(default)]
    pub encap: Encap,
    /// Encapsulate only towards nodes outside a node's underlay subnet.
    #[serde(default)]
    pub cross_subnet: bool,
    /// The agents' `--direct-redirect`; `None` leaves it to the agent's
    /// default (the flag is not passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_redirect: Option<bool>,
    /// The agents' `--bgp-on-stop` (`cease` or `graceful-restart`); `None`
    /// leaves it to the agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_on_stop: Option<String>,
    /// How many underlay subnets the nodes alternate between
    /// (`--underlay-subnets`); with more than one, a router joins them.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub underlay_subnets: u32,
    pub fabric: Fabric,
    /// A Kubernetes lab's control plane (`lab up --kubernetes`); `None`: the
    /// agents share the directory store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
}

/// The control plane of a Kubernetes lab: the agents read the cluster from
/// its API server, and the lab plays the kubelet (Nodes, Pods, their status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kubernetes {
    /// The namespace etcd, the API server and the controller manager run in.
    pub netns: String,
    /// The API server's address there, on the first underlay subnet.
    pub address: Ipv4Addr,
    /// Its bridge port in the fabric namespace.
    pub fabric_port: String,
    /// Certificates, kubeconfigs, etcd's data and the components' logs.
    pub dir: PathBuf,
    /// Where etcd, kube-apiserver, kube-controller-manager and kubectl are.
    pub bin_dir: PathBuf,
    /// The administrator's kubeconfig (`weftctl lab kubeconfig`).
    pub admin_kubeconfig: PathBuf,
    /// The running components by name and pid, in start order, recorded as
    /// soon as they run; `lab down` ends exactly these.
    #[serde(default)]
    pub processes: Vec<(String, u32)>,
}

/// The agents' `--routing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// A BGP full mesh between the nodes (the agent's default).
    #[default]
    Bgp,
    /// Static routes from the node records in the datastore.
    Static,
}

impl Routing {
    pub fn as_arg(self) -> &'static str {
        match self {
            Routing::Bgp => "bgp",
            Routing::Static => "static",
        }
    }
}

pub use weft_model::Encap;

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The fabric namespace: the first underlay subnet's bridge (`bridge`,
/// `cidr`) and, in a lab of several underlay subnets, every subnet and the
/// router between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fabric {
    pub netns: String,
    pub bridge: String,
    pub cidr: String,
    /// Every underlay subnet, the first included; empty with one subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Subnet>,
    /// The router's namespace; `None` with one subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_netns: Option<String>,
}

/// One underlay subnet of a lab with several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    pub cidr: String,
    pub bridge: String,
    /// The router's address on it.
    pub router_ip: Ipv4Addr,
    /// The router's port on the bridge (fabric namespace).
    pub router_port: String,
    /// The router's interface on it (router namespace).
    pub router_ifname: String,
}

impl Fabric {
    /// The bridge of underlay subnet `subnet` (0-based).
    pub fn bridge_of(&self, subnet: u32) -> &str {
        self.subnets
            .get(subnet as usize)
            .map_or(self.bridge.as_str(), |s| s.bridge.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub index: u32,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: String,
    pub uplink: String,
    /// The node's bridge port in the fabric namespace.
    pub fabric_port: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    /// The pid of the agent this lab started; None when stopped.
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
    pub labels: BTreeMap<String, String>,
    /// Filled from the CNI result; None while ADD has not succeeded.
    pub ip: Option<Ipv4Addr>,
    pub host_ifname: Option<String>,
    /// The pod's container ports (what named ports in policies resolve to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<weft_model::ContainerPort>,
    /// The pid of the server answering on the pod's TCP and UDP ports
    /// (`weftctl lab serve`), recorded as soon as it is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
}

impl Node {
    /// The kubeconfig the node's agent reads the API server with, in a
    /// Kubernetes lab (the weft-agent ServiceAccount's token).
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// Node `index` of lab `lab` as the plan names and addresses it, with
    /// no agent; the one place a node's record is made (`lab up` and
    /// `lab node add`).
    pub fn planned(
        lab: &str,
        state_dir: &Path,
        bpffs_root: &Path,
        index: u32,
        underlay_subnets: u32,
    ) -> Self {
        let name = plan::node_name(index);
        let node_dir = state_dir.join("nodes").join(&name);
        Node {
            netns: plan::node_netns(lab, &name),
            underlay_ip: plan::underlay_ip(index, underlay_subnets),
            pod_cidr: plan::pod_cidr(index),
            uplink: plan::UPLINK.to_string(),
            fabric_port: plan::fabric_port(index),
            socket: node_dir.join("agent.sock"),
            state_dir: node_dir,
            bpffs_dir: bpffs_root.join(lab).join(&name),
            agent_pid: None,
            index,
            name,
        }
    }
}

impl LabState {
    /// The plan of a fresh lab on one underlay subnet: fabric and nodes,
    /// no pods, no agents.
    pub fn planned(
        lab: &str,
        state_dir: &Path,
        bin_dir: &Path,
        bpffs_root: &Path,
        nodes: u32,
    ) -> Self {
        Self::planned_on(lab, state_dir, bin_dir, bpffs_root, nodes, 1)
    }

    /// [`LabState::planned`] with the nodes alternating between
    /// `underlay_subnets` subnets (more than one: joined by a router).
    pub fn planned_on(
        lab: &str,
        state_dir: &Path,
        bin_dir: &Path,
        bpffs_root: &Path,
        nodes: u32,
        underlay_subnets: u32,
    ) -> Self {
        let nodes = (1..=nodes)
            .map(|index| Node::planned(lab, state_dir, bpffs_root, index, underlay_subnets))
            .collect();
        let routed = underlay_subnets > 1;
        let subnets = if routed {
            (0..underlay_subnets)
                .map(|s| Subnet {
                    cidr: plan::underlay_cidr(s),
                    bridge: plan::bridge(s),
                    router_ip: plan::router_ip(s),
                    router_port: plan::router_port(s),
                    router_ifname: plan::router_ifname(s),
                })
                .collect()
        } else {
            Vec::new()
        };
        LabState {
            version: STATE_VERSION,
            lab: lab.to_string(),
            state_dir: state_dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            routing: Routing::default(),
            route_reflectors: Vec::new(),
            encap: Encap::default(),
            cross_subnet: false,
            direct_redirect: None,
            bgp_on_stop: None,
            underlay_subnets,
            kubernetes: None,
            fabric: Fabric {
                netns: plan::fabric_netns(lab),
                bridge: plan::BRIDGE.to_string(),
                cidr: plan::UNDERLAY_CIDR.to_string(),
                subnets,
                router_netns: routed.then(|| plan::router_netns(lab)),
            },
            nodes,
            pods: Vec::new(),
        }
    }

    /// The directory all nodes' agents share as their datastore.
    pub fn datastore_dir(&self) -> PathBuf {
        self.state_dir.join("datastore")
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!(
                "lab {} has no node {name:?} (nodes: {})",
                self.lab,
                known.join(", ")
            )
        })
    }

    pub fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        self.node(name)?;
        Ok(self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("checked above"))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("lab {} has no pod {name:?}", self.lab))
    }

    /// The arguments the agent of `node` runs with; the same on every
    /// start, so a restarted agent adopts what its predecessor programmed.
    pub fn agent_args(&self, node: &Node) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        // In a Kubernetes lab the agent takes its pod CIDR from its Node
        // (the controller manager's node IPAM) and reads the cluster with
        // its ServiceAccount's kubeconfig.
        let datastore: Vec<String> = match &self.kubernetes {
            None => vec![
                "--pod-cidr".into(),
                node.pod_cidr.clone(),
                "--uplink".into(),
                node.uplink.clone(),
                "--datastore-dir".into(),
                path(&self.datastore_dir()),
            ],
            Some(_) => vec![
                "--uplink".into(),
                node.uplink.clone(),
                "--datastore".into(),
                "kubernetes".into(),
                "--kubeconfig".into(),
                path(&node.kubeconfig()),
            ],
        };
        ["--node-name".into(), node.name.clone()]
            .into_iter()
            .chain(datastore)
            .chain([
                "--state-dir".into(),
                path(&node.state_dir),
                "--socket".into(),
                path(&node.socket),
                "--bpffs-dir".into(),
                path(&node.bpffs_dir),
                "--encap".into(),
                self.encap.name().into(),
                "--routing".into(),
                self.routing.as_arg().into(),
            ])
            .chain(self.cross_subnet.then(|| "--cross-subnet".to_string()))
            .chain(
                self.direct_redirect
                    .map(|on| ["--direct-redirect".into(), on.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .chain(
                (self.bgp_on_stop.clone())
                    .map(|mode| ["--bgp-on-stop".into(), mode])
                    .into_iter()
                    .flatten(),
            )
            .chain(
                (!self.route_reflectors.is_empty())
                    .then(|| ["--route-reflectors".into(), self.route_reflectors.join(",")])
                    .into_iter()
                    .flatten(),
            )
            .collect()
    }

    /// The index the next `lab node add` gets: one above the highest in
    /// use (indices of deleted nodes above it are reused, lower gaps not).
    pub fn next_node_index(&self) -> u32 {
        self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("lab state serializes")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let state: LabState =
            serde_json::from_str(text).context("lab.json is not a valid lab record")?;
        if state.version != STATE_VERSION {
            anyhow::bail!(
                "lab.json has version {}, this weftctl reads {STATE_VERSION}",
                state.version
            );
        }
        Ok(state)
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Reads `<state_dir>/lab.json`; Ok(None) when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(state_dir);
        match fs::read_to_string(&path) {
            Ok(text) => Self::from_json(&text)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Reads lab.json and fails with a hint when the lab does not exist.
    pub fn load_existing(state_dir: &Path, lab: &str) -> Result<Self> {
        Self::load(state_dir)?.with_context(|| {
            format!(
                "no lab {lab:?}: {} does not exist (run `weftctl lab up` first, or pass --lab/--state-dir)",
                Self::path(state_dir).display()
            )
        })
    }

    /// Writes lab.json atomically (temp file, fsync, rename), so a reader
    /// or a crash never sees half a record.
    /// Records `encap` as the lab's mode (each agent takes it when next
    /// started: a rolling change); whether it changed anything.
    pub fn switch_encap(&mut self, encap: Encap) -> Result<bool> {
        if encap == self.encap {
            return Ok(false);
        }
        self.encap = encap;
        self.save()?;
        Ok(true)
    }

    /// Records the agents' `--direct-redirect`, like [`Self::switch_encap`].
    pub fn switch_direct_redirect(&mut self, on: bool) -> Result<bool> {
        if Some(on) == self.direct_redirect {
            return Ok(false);
        }
        self.direct_redirect = Some(on);
        self.save()?;
        Ok(true)
    }

    pub fn save(&self) -> Result<()> {
        fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating state directory {}", self.state_dir.display()))?;
        let path = Self::path(&self.state_dir);
        let tmp = self
            .state_dir
            .join(format!(".{STATE_FILE}.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(self.to_json().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let mut state = LabState::planned(
            "weft",
            Path::new("/run/weft-lab/weft"),
            Path::new("/opt/weft/bin"),
            Path::new("/sys/fs/bpf/weft-lab"),
            2,
        );
        state.nodes[0].agent_pid = Some(4242);
        state.pods.push(Pod {
            name: "node1-a".into(),
            namespace: "default".into(),
            node: "node1".into(),
            netns: "weft-pod-node1-a".into(),
            container_id: "ab".repeat(32),
            ifname: "eth0".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
            host_ifname: Some("weft1234abcd".into()),
            ports: Vec::new(),
            server_pid: None,
        });
        state
    }

    #[test]
    fn plan_fills_nodes() {
        let state = sample();
        assert_eq!(state.fabric.netns, "weft-fabric");
        assert_eq!(state.fabric.bridge, "br-underlay");
        assert_eq!(state.fabric.cidr, "198.18.0.0/24");
        let node2 = state.node("node2").unwrap();
        assert_eq!(node2.netns, "weft-node2");
        assert_eq!(node2.underlay_ip.to_string(), "198.18.0.12");
        assert_eq!(node2.pod_cidr, "10.244.2.0/24");
        assert_eq!(
            node2.socket,
            Path::new("/run/weft-lab/weft/nodes/node2/agent.sock")
        );
        assert_eq!(
            node2.bpffs_dir,
            Path::new("/sys/fs/bpf/weft-lab/weft/node2")
        );
        assert!(
            state
                .node("node3")
                .unwrap_err()
                .to_string()
                .contains("node1, node2")
        );
    }

    #[test]
    fn one_subnet_keeps_the_single_segment_record() {
        let text = sample().to_json();
        assert!(!text.contains("underlay_subnets"), "{text}");
        assert!(!text.contains("router"), "{text}");
        assert!(!text.contains("subnets"), "{text}");
        assert_eq!(LabState::from_json(&text).unwrap().underlay_subnets, 1);
    }

    #[test]
    fn two_subnets_plan_a_router_and_alternate_nodes() {
        let state = LabState::planned_on(
            "weft",
            Path::new("/run/weft-lab/weft"),
            Path::new("/opt/weft/bin"),
            Path::new("/sys/fs/bpf/weft-lab"),
            4,
            2,
        );
        assert_eq!(state.fabric.router_netns.as_deref(), Some("weft-router"));
        assert_eq!(state.fabric.subnets.len(), 2);
        assert_eq!(state.fabric.subnets[1].cidr, "198.18.1.0/24");
        assert_eq!(state.fabric.subnets[1].router_ip.to_string(), "198.18.1.1");
        assert_eq!(state.fabric.bridge_of(0), "br-underlay");
        assert_eq!(state.fabric.bridge_of(1), "br-underlay1");
        let ips: Vec<String> = state
            .nodes
            .iter()
            .map(|n| n.underlay_ip.to_string())
            .collect();
        assert_eq!(
            ips,
            ["198.18.0.11", "198.18.1.12", "198.18.0.13", "198.18.1.14"]
        );
        let text = state.to_json();
        assert_eq!(LabState::from_json(&text).unwrap(), state);
        assert!(text.contains("\"underlay_subnets\": 2"), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let state = sample();
        let text = state.to_json();
        assert_eq!(LabState::from_json(&text).unwrap(), state);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["pods"][0]["ip"], "10.244.1.5");
        assert_eq!(value["nodes"][1]["agent_pid"], serde_json::Value::Null);
        assert!(LabState::from_json("{").is_err());
        assert!(LabState::from_json(&text.replace("\"version\": 1", "\"version\": 9")).is_err());
    }

    #[test]
    fn agent_args_match_the_contract() {
        let state = sample();
        let args = state.agent_args(state.node("node1").unwrap());
        assert_eq!(
            args.join(" "),
            "--node-name node1 --pod-cidr 10.244.1.0/24 --uplink eth0 \
             --datastore-dir /run/weft-lab/weft/datastore --state-dir /run/weft-lab/weft/nodes/node1 \
             --socket /run/weft-lab/weft/nodes/node1/agent.sock \
             --bpffs-dir /sys/fs/bpf/weft-lab/weft/node1 --encap ipip --routing bgp"
        );
        let mut vxlan = state.clone();
        vxlan.encap = Encap::Vxlan;
        vxlan.cross_subnet = true;
        let args = vxlan.agent_args(vxlan.node("node1").unwrap()).join(" ");
        assert!(
            args.contains("--encap vxlan --routing bgp --cross-subnet"),
            "{args}"
        );
        assert!(!args.contains("--direct-redirect"), "{args}");
        for on in [true, false] {
            let mut ipip = state.clone();
            ipip.direct_redirect = Some(on);
            let args = ipip.agent_args(ipip.node("node1").unwrap()).join(" ");
            assert!(
                args.ends_with(&format!("--routing bgp --direct-redirect {on}")),
                "{args}"
            );
        }
        let mut state = state;
        state.route_reflectors = vec!["node1".into(), "node2".into()];
        let args = state.agent_args(state.node("node2").unwrap());
        assert_eq!(
            args[args.len() - 2..],
            ["--route-reflectors", "node1,node2"]
        );
    }

    /// A Kubernetes lab's agents: the contract's flags (no --pod-cidr, no
    /// directory store), every other flag kept; the record round-trips.
    #[test]
    fn kubernetes_agent_args_follow_the_contract() {
        let mut state = sample();
        state.kubernetes = Some(crate::kubernetes::planned(
            "weft",
            Path::new("/run/weft-lab/weft"),
            Path::new("/repo/.tools/control-plane-v1/bin"),
        ));
        state.encap = Encap::Vxlan;
        let args = state.agent_args(state.node("node2").unwrap());
        assert_eq!(
            args.join(" "),
            "--node-name node2 --uplink eth0 --datastore kubernetes \
             --kubeconfig /run/weft-lab/weft/nodes/node2/kubeconfig \
             --state-dir /run/weft-lab/weft/nodes/node2 \
             --socket /run/weft-lab/weft/nodes/node2/agent.sock \
             --bpffs-dir /sys/fs/bpf/weft-lab/weft/node2 --encap vxlan --routing bgp"
        );
        let text = state.to_json();
        assert_eq!(LabState::from_json(&text).unwrap(), state);
        assert!(
            text.contains(
                "\"admin_kubeconfig\": \"/run/weft-lab/weft/kubernetes/admin.kubeconfig\""
            )
        );
        assert!(!sample().to_json().contains("kubernetes"));
    }

    #[test]
    fn old_lab_json_without_reflectors_loads_and_indices_continue() {
        let state = sample();
        let mut value: serde_json::Value = serde_json::from_str(&state.to_json()).unwrap();
        value.as_object_mut().unwrap().remove("route_reflectors");
        let loaded = LabState::from_json(&value.to_string()).unwrap();
        assert!(loaded.route_reflectors.is_empty());
        assert_eq!(loaded.next_node_index(), 3);
        let mut state = sample();
        state.nodes.remove(0);
        assert_eq!(state.next_node_index(), 3);
        state.nodes.clear();
        assert_eq!(state.next_node_index(), 1);
    }

    #[test]
    fn save_is_atomic_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("weftctl-state-test-{}", std::process::id()));
        let mut state = sample();
        state.state_dir = dir.clone();
        assert!(LabState::load(&dir).unwrap().is_none());
        state.save().unwrap();
        assert_eq!(LabState::load(&dir).unwrap().unwrap(), state);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lab.json")]);
        fs::write(LabState::path(&dir), "garbage").unwrap();
        assert!(LabState::load(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
