//! The lab as `lab status` shows it: one typed view of the recorded lab
//! for the table, the JSON and every reader of either (the integration
//! tests read labs through these types, never through a copy of them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_model::ContainerPort;

use crate::matrix::render_table;
use crate::probe::{self, Echo, ProbeError};
use crate::state::{LabState, Pod};
use crate::topology::netns_path;

/// The lab as `lab status` shows it (its JSON is `lab status --json`):
/// the recorded lab with every agent pid checked against the live
/// process. Also what the integration tests read a lab through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub fabric: FabricView,
    /// `--route-reflectors` of `lab up`; empty for a full mesh.
    pub route_reflectors: Vec<String>,
    /// A Kubernetes lab's control plane; absent on the directory store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesView>,
    pub nodes: Vec<NodeView>,
    pub pods: Vec<PodView>,
}

/// A Kubernetes lab's control plane: where it is, how to reach it, which
/// of its components still run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubernetesView {
    pub netns: String,
    pub api_server: String,
    pub kubeconfig: String,
    /// The components whose recorded process still runs.
    pub running: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricView {
    pub netns: String,
    pub bridge: String,
    pub cidr: String,
    /// Only in a lab of several underlay subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterView>,
}

/// The router between a lab's underlay subnets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterView {
    pub netns: String,
    pub subnets: Vec<SubnetView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetView {
    pub cidr: String,
    pub bridge: String,
    pub router_ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub netns: String,
    pub underlay_ip: String,
    pub pod_cidr: String,
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub ip: Option<String>,
    pub host_ifname: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's container ports, as in a pod spec.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// The pod's port server, if it runs one and it is alive.
    #[serde(default)]
    pub server_pid: Option<u32>,
}

impl From<&Pod> for PodView {
    fn from(p: &Pod) -> Self {
        PodView {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            node: p.node.clone(),
            netns: p.netns.clone(),
            ip: p.ip.map(|ip| ip.to_string()),
            host_ifname: p.host_ifname.clone(),
            labels: p.labels.clone(),
            ports: p.ports.clone(),
            server_pid: p
                .server_pid
                .filter(|&pid| crate::serve::is_server(pid, &p.netns)),
        }
    }
}

impl PodView {
    /// The pod's address; `None` until its CNI ADD has given it one.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.ip.as_deref()?.parse().ok()
    }

    /// ICMP echo from inside the pod to `dst` ([`probe::icmp_echo`]).
    pub fn echo(&self, dst: Ipv4Addr, echo: Echo) -> Result<Duration, ProbeError> {
        probe::icmp_echo(&netns_path(&self.netns), dst, echo)
    }
}

impl StatusView {
    /// The lab as recorded, with each agent pid checked: a recorded agent
    /// that died shows as null.
    pub fn new(state: &LabState, alive: impl Fn(u32, &Path) -> bool) -> Self {
        StatusView {
            fabric: FabricView {
                netns: state.fabric.netns.clone(),
                bridge: state.fabric.bridge.clone(),
                cidr: state.fabric.cidr.clone(),
                router: state.fabric.router_netns.as_ref().map(|netns| RouterView {
                    netns: netns.clone(),
                    subnets: state
                        .fabric
                        .subnets
                        .iter()
                        .map(|s| SubnetView {
                            cidr: s.cidr.clone(),
                            bridge: s.bridge.clone(),
                            router_ip: s.router_ip.to_string(),
                        })
                        .collect(),
                }),
            },
            route_reflectors: state.route_reflectors.clone(),
            kubernetes: state.kubernetes.as_ref().map(|k| KubernetesView {
                netns: k.netns.clone(),
                api_server: format!("https://{}:{}", k.address, crate::control_plane::API_PORT),
                kubeconfig: k.admin_kubeconfig.display().to_string(),
                running: k
                    .processes
                    .iter()
                    .filter(|(name, pid)| crate::control_plane::is_process_of(*pid, name, &k.dir))
                    .map(|(name, _)| name.clone())
                    .collect(),
            }),
            nodes: state
                .nodes
                .iter()
                .map(|n| NodeView {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    underlay_ip: n.underlay_ip.to_string(),
                    pod_cidr: n.pod_cidr.clone(),
                    agent_pid: n.agent_pid.filter(|&pid| alive(pid, &n.socket)),
                })
                .collect(),
            pods: state.pods.iter().map(PodView::from).collect(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("status serializes")
    }

    /// The fabric line, a node table and a pod table; `-` for a missing
    /// value (no agent running, no address yet).
    pub fn render(&self) -> String {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let mut out = match &self.fabric.router {
            None => format!(
                "fabric {}  bridge {}  underlay {}",
                self.fabric.netns, self.fabric.bridge, self.fabric.cidr
            ),
            Some(router) => {
                let join = |f: fn(&SubnetView) -> &str| {
                    router.subnets.iter().map(f).collect::<Vec<_>>().join(",")
                };
                format!(
                    "fabric {}  bridges {}  underlay {}  router {} ({})",
                    self.fabric.netns,
                    join(|s| &s.bridge),
                    join(|s| &s.cidr),
                    router.netns,
                    join(|s| &s.router_ip),
                )
            }
        };
        if !self.route_reflectors.is_empty() {
            out.push_str(&format!(
                "  route reflectors {}",
                self.route_reflectors.join(",")
            ));
        }
        if let Some(k) = &self.kubernetes {
            out.push_str(&format!(
                "\nkubernetes {}  API server {}  running {}  kubeconfig {}",
                k.netns,
                k.api_server,
                dash(Some(k.running.join(",")).filter(|s| !s.is_empty())),
                k.kubeconfig
            ));
        }
        out.push_str("\n\n");
        let mut nodes = vec![
            ["NODE", "NETNS", "UNDERLAY IP", "POD CIDR", "AGENT PID"]
                .map(String::from)
                .to_vec(),
        ];
        nodes.extend(self.nodes.iter().map(|n| {
            vec![
                n.name.clone(),
                n.netns.clone(),
                n.underlay_ip.clone(),
                n.pod_cidr.clone(),
                dash(n.agent_pid.map(|p| p.to_string())),
            ]
        }));
        out.push_str(&render_table(&nodes));
        out.push('\n');
        let mut pods = vec![
            [
                "POD",
                "NAMESPACE",
                "NODE",
                "NETNS",
                "IP",
                "HOST IFNAME",
                "LABELS",
                "PORTS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let list = |items: Vec<String>| dash(Some(items.join(",")).filter(|s| !s.is_empty()));
        pods.extend(self.pods.iter().map(|p| {
            vec![
                p.name.clone(),
                p.namespace.clone(),
                p.node.clone(),
                p.netns.clone(),
                dash(p.ip.clone()),
                dash(p.host_ifname.clone()),
                list(p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                list(vec![crate::serve::ports_arg(&p.ports)]),
            ]
        }));
        out.push_str(&render_table(&pods));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::BPFFS_ROOT;

    fn lab_state() -> LabState {
        let mut state = LabState::planned(
            "weft",
            Path::new("/run/weft-lab/weft"),
            Path::new("/bin"),
            Path::new(BPFFS_ROOT),
            2,
        );
        state.nodes[0].agent_pid = Some(100);
        state.nodes[1].agent_pid = Some(200);
        state.pods.push(Pod {
            name: "node1-a".into(),
            namespace: "default".into(),
            node: "node1".into(),
            netns: "weft-pod-node1-a".into(),
            container_id: "0".repeat(64),
            ifname: "eth0".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
            host_ifname: Some("weftab12cd34".into()),
            ports: crate::cni::parse_ports("http:80").unwrap(),
            server_pid: None,
        });
        state
    }

    #[test]
    fn status_json_has_exactly_the_documented_fields() {
        let view = StatusView::new(&lab_state(), |pid, _| pid == 100);
        let json: serde_json::Value = serde_json::from_str(&view.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "fabric": {"netns": "weft-fabric", "bridge": "br-underlay", "cidr": "198.18.0.0/24"},
                "route_reflectors": [],
                "nodes": [
                    {"name": "node1", "netns": "weft-node1", "underlay_ip": "198.18.0.11", "pod_cidr": "10.244.1.0/24", "agent_pid": 100},
                    {"name": "node2", "netns": "weft-node2", "underlay_ip": "198.18.0.12", "pod_cidr": "10.244.2.0/24", "agent_pid": null}
                ],
                "pods": [
                    {"name": "node1-a", "namespace": "default", "node": "node1", "netns": "weft-pod-node1-a", "ip": "10.244.1.2", "host_ifname": "weftab12cd34",
                     "labels": {"app": "web"}, "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                     "server_pid": null}
                ]
            })
        );
    }

    #[test]
    fn status_json_reads_back_as_the_same_view() {
        let view = StatusView::new(&lab_state(), |pid, _| pid == 100);
        let read: StatusView = serde_json::from_str(&view.to_json()).unwrap();
        assert_eq!(read, view);
        assert_eq!(
            read.pod("node1-a").unwrap().address(),
            Some(Ipv4Addr::new(10, 244, 1, 2))
        );
    }

    #[test]
    fn status_table_lists_nodes_then_pods() {
        let view = StatusView::new(&lab_state(), |pid, _| pid == 100);
        assert_eq!(
            view.render(),
            "fabric weft-fabric  bridge br-underlay  underlay 198.18.0.0/24\n\
             \n\
             NODE   NETNS       UNDERLAY IP  POD CIDR       AGENT PID\n\
             node1  weft-node1  198.18.0.11  10.244.1.0/24  100\n\
             node2  weft-node2  198.18.0.12  10.244.2.0/24  -\n\
             \n\
             POD      NAMESPACE  NODE   NETNS             IP          HOST IFNAME   LABELS   PORTS\n\
             node1-a  default    node1  weft-pod-node1-a  10.244.1.2  weftab12cd34  app=web  http:80/tcp\n"
        );
        let mut state = lab_state();
        state.route_reflectors = vec!["node1".into(), "node2".into()];
        let view = StatusView::new(&state, |_, _| false);
        assert!(view.render().starts_with(
            "fabric weft-fabric  bridge br-underlay  underlay 198.18.0.0/24  route reflectors node1,node2\n\n"
        ));
        let json: serde_json::Value = serde_json::from_str(&view.to_json()).unwrap();
        assert_eq!(
            json["route_reflectors"],
            serde_json::json!(["node1", "node2"])
        );
    }

    #[test]
    fn status_shows_the_router_of_several_underlay_subnets() {
        let state = LabState::planned_on(
            "weft",
            Path::new("/run/weft-lab/weft"),
            Path::new("/bin"),
            Path::new(BPFFS_ROOT),
            2,
            2,
        );
        let view = StatusView::new(&state, |_, _| false);
        let text = view.render();
        assert!(
            text.starts_with(
                "fabric weft-fabric  bridges br-underlay,br-underlay1  \
                 underlay 198.18.0.0/24,198.18.1.0/24  router weft-router (198.18.0.1,198.18.1.1)\n\n"
            ),
            "{text}"
        );
        assert!(text.contains("node2  weft-node2  198.18.1.12"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&view.to_json()).unwrap();
        assert_eq!(
            json["fabric"]["router"],
            serde_json::json!({"netns": "weft-router", "subnets": [
                {"cidr": "198.18.0.0/24", "bridge": "br-underlay", "router_ip": "198.18.0.1"},
                {"cidr": "198.18.1.0/24", "bridge": "br-underlay1", "router_ip": "198.18.1.1"}
            ]})
        );
    }
}
