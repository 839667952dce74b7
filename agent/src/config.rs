//! The agent's configuration: flags, each also read from a `WEFT_*`
//! environment variable (the DaemonSet's way). Every path is configurable so
//! several agents can share one machine (the lab).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use ipnetwork::Ipv4Network;

use crate::node_ip::{NodeIpChoice, NodeIpMethod};

pub use weft_model::Encap;

/// Where the agent reads the cluster from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatastoreKind {
    /// The embedded directory store (`--datastore-dir`), shared by the
    /// agents of one machine: the lab and the demo.
    Local,
    /// The Kubernetes API server: Nodes, Pods, Namespaces,
    /// NetworkPolicies and Weft's BGPPeers.
    Kubernetes,
}

/// How the agent learns the routes to other nodes' pod CIDRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// Over BGP: every node announces its pod CIDR to the others (a full
    /// iBGP mesh, or through route reflectors) and to external peers.
    Bgp,
    /// From the node records in the datastore (Felix-style static routes).
    Static,
}

/// What the BGP speaker tells its peers when the agent is asked to stop
/// (SIGTERM, SIGINT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BgpOnStop {
    /// Cease/Administrative Shutdown to every peer: they drop this node's
    /// routes at once. For a node that goes away.
    Cease,
    /// Close the sessions without a NOTIFICATION, as a crash would: peers
    /// that negotiated graceful restart keep this node's routes (stale) for
    /// --graceful-restart-seconds while the next agent starts, and its
    /// pods stay reachable. For restarts and rolling updates.
    GracefulRestart,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft's per-node daemon: IPAM, routes, tunnels and eBPF programs, served to weft-cni over gRPC",
    long_about = "Weft's per-node daemon. It hands out pod addresses from the node's pod CIDR, \
programs a host route, the eBPF anti-spoofing guard and the pod's NetworkPolicy (compiled into \
eBPF maps, enforced statefully on the pod's veth) for every local pod, routes other nodes' \
pod CIDRs via their underlay addresses (encapsulated in IP-in-IP by its eBPF uplink programs, \
through a kernel VXLAN device, or natively: --encap). It reads the cluster from the local \
directory store, where it also publishes its node and endpoints, or with --datastore kubernetes \
from the API server (Nodes, Pods, Namespaces, NetworkPolicies, BGPPeers), where it sets its \
Node's NetworkUnavailable condition once the node is programmed and publishes its underlay \
address (annotation weft.dev/underlay-address), which other nodes use in place of the InternalIP. \
State it finds in the kernel from a previous run (routes with Weft's protocol number, weft* \
interfaces, pins under --bpffs-dir) is adopted, not flushed; only stale Weft-owned objects are removed."
)]
pub struct Config {
    /// This node's name in the cluster (the Node object's, in Kubernetes).
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: String,
    /// Where the cluster is read from.
    #[arg(long, env = "WEFT_DATASTORE", value_enum, default_value = "local")]
    pub datastore: DatastoreKind,
    /// The kubeconfig file for `--datastore kubernetes` [default: the
    /// pod's service account (in-cluster configuration)].
    #[arg(long, env = "WEFT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node's pod CIDR. Required with `--datastore local`; with
    /// `kubernetes` it is the Node's spec.podCIDR (the controller manager's
    /// node IPAM), and this flag, if given, must equal it.
    #[arg(long, env = "WEFT_POD_CIDR")]
    pub pod_cidr: Option<Ipv4Network>,
    /// The interface towards the underlay [default: the interface holding
    /// the node address; `eth0` with `--datastore local` and no --node-ip].
    #[arg(long, env = "WEFT_UPLINK")]
    pub uplink: Option<String>,
    /// The node's underlay address, taken as given (overrides --node-ip).
    #[arg(long, env = "WEFT_UNDERLAY_IP")]
    pub underlay_ip: Option<Ipv4Addr>,
    /// How the node's underlay address is found: `kubernetes-internal-ip`
    /// (the Node's InternalIP), `first-found` (the first IPv4 address of an
    /// interface that is not a container, tunnel or bridge device),
    /// `interface=REGEX`, or `can-reach=IPV4` (the source address of the
    /// route there). [default: kubernetes-internal-ip with `--datastore
    /// kubernetes`; else the --uplink's first IPv4 address]
    #[arg(long, env = "WEFT_NODE_IP", value_parser = crate::node_ip::parse_method, conflicts_with = "underlay_ip")]
    pub node_ip: Option<NodeIpMethod>,
    /// Where `/healthz` (the agent and its loops are alive) and `/readyz`
    /// (first sync, first pass and every expected BGP session up) are
    /// served over plain HTTP.
    #[arg(long, env = "WEFT_HEALTH_ADDRESS", default_value = "127.0.0.1:9099")]
    pub health_address: std::net::SocketAddr,
    /// The datastore directory shared by the cluster's agents (`--datastore local`).
    #[arg(
        long,
        env = "WEFT_DATASTORE_DIR",
        default_value = "/var/lib/weft/datastore"
    )]
    pub datastore_dir: PathBuf,
    /// Where the agent keeps its own state (IPAM claims, endpoint records).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// The gRPC unix socket weft-cni and weftctl connect to.
    #[arg(long, env = "WEFT_SOCKET", default_value = "/run/weft/agent.sock")]
    pub socket: PathBuf,
    /// This node's directory for pinned eBPF programs and maps (on a bpffs).
    #[arg(long, env = "WEFT_BPFFS_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpffs_dir: PathBuf,
    /// Pod MTU [default: the uplink's MTU minus the encapsulation overhead].
    #[arg(long, env = "WEFT_MTU", value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub mtu: Option<u32>,
    /// Encapsulation between nodes. With ipip or vxlan, nodes on other
    /// underlay subnets are reached through the tunnel (ipip routes it via
    /// the node's own underlay route to them, e.g. a router); with none,
    /// only nodes on the uplink's subnet are routed.
    #[arg(long, env = "WEFT_ENCAP", value_parser = weft_model::encap_value_parser(), default_value = "ipip")]
    pub encap: Encap,
    /// Encapsulate only towards nodes outside this node's underlay subnet
    /// (Calico's crossSubnet); nodes on the same subnet are routed natively.
    #[arg(long, env = "WEFT_CROSS_SUBNET")]
    pub cross_subnet: bool,
    /// Hand IP-in-IP that arrives for a local pod straight to the pod: after
    /// decapsulating, the uplink's eBPF program looks the inner packet up in
    /// the node's own routes and neighbours (bpf_fib_lookup) and, when they
    /// lead into a Weft pod veth with the pod's MAC known, redirects it into
    /// the pod's namespace (bpf_redirect_peer), TTL decremented as routing
    /// does. Anything else (the first packets before the pod's MAC is
    /// resolved, TTL 1, options, too big, no route) goes through the node's
    /// stack as without it. The node's netfilter and conntrack then no
    /// longer see pod traffic arriving from other nodes, only the pods'
    /// answers: a stateful firewall over forwarded traffic on the node
    /// (kube-proxy's iptables mode drops conntrack-INVALID packets) would
    /// see answers to connections it never saw open; and kube-proxy's
    /// reverse NAT no longer applies to them: a Service backend's replies
    /// on another node reach the client from the backend's own address,
    /// not the Service's, and its socket refuses them. So it is only for
    /// clusters without kube-proxy's iptables or nftables NAT.
    /// Off by default because it does not beat the stack by enough for
    /// that: measured on the lab (nodes without netfilter rules), it saves
    /// the receiving node about 0.1 to 0.2 µs per packet, a few percent of
    /// small-packet and request/response rates (64-byte UDP +4%, flood ping
    /// +3%, TCP request/response +1 to +6%), and nothing measurable on bulk
    /// TCP, where GSO and GRO already amortize the per-packet cost.
    #[arg(
        long,
        env = "WEFT_DIRECT_REDIRECT",
        default_value_t = DIRECT_REDIRECT_DEFAULT,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub direct_redirect: bool,
    /// The cluster's Service range (kube-apiserver's
    /// --service-cluster-ip-range; its default is 10.96.0.0/12): addresses
    /// kube-proxy DNATs to backend pods. A pod's egress policy towards one
    /// is judged after the DNAT, against the backend pod and its port (at
    /// the backend's veth, or where the packet leaves the node), not at the
    /// pod's veth against the Service address.
    #[arg(long, env = "WEFT_SERVICE_CLUSTER_IP_RANGE", default_value = "10.96.0.0/12", value_parser = parse_service_range)]
    pub service_cluster_ip_range: Ipv4Network,
    /// Where routes to other nodes come from.
    #[arg(long, env = "WEFT_ROUTING", value_enum, default_value = "bgp")]
    pub routing: Routing,
    /// The cluster's AS number (every node's; iBGP between nodes).
    #[arg(long, env = "WEFT_AS_NUMBER", default_value = "64512", value_parser = parse_asn)]
    pub as_number: u32,
    /// Nodes that are route reflectors (comma-separated names). Empty: a full mesh.
    #[arg(long, env = "WEFT_ROUTE_REFLECTORS", value_delimiter = ',')]
    pub route_reflectors: Vec<String>,
    /// The TCP port of BGP, listened on at the underlay address and dialled on peers.
    #[arg(long, env = "WEFT_BGP_PORT", default_value = "179")]
    pub bgp_port: u16,
    /// Seconds peers keep this node's routes while its agent restarts (graceful restart).
    #[arg(long, env = "WEFT_GRACEFUL_RESTART_SECONDS", default_value = "120", value_parser = clap::value_parser!(u16).range(1..=4095))]
    pub graceful_restart_seconds: u16,
    /// What BGP peers are told when the agent stops on SIGTERM or SIGINT;
    /// the dataplane stays either way.
    #[arg(long, env = "WEFT_BGP_ON_STOP", value_enum, default_value = "cease")]
    pub bgp_on_stop: BgpOnStop,
    /// Seconds between full resyncs (the safety net under the datastore watch).
    #[arg(long, env = "WEFT_RESYNC_SECONDS", default_value = "10", value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
}

/// `--direct-redirect` when not given (see the flag's help for why).
pub const DIRECT_REDIRECT_DEFAULT: bool = false;

/// A Service range: an IPv4 prefix of length 1 to 32 with no host bits
/// set (a /0 would make every destination a Service).
fn parse_service_range(s: &str) -> Result<Ipv4Network, String> {
    let range: Ipv4Network = s
        .parse()
        .map_err(|e| format!("{s:?} is not an IPv4 CIDR: {e}"))?;
    if range.prefix() == 0 {
        return Err(format!("{s}: a Service range cannot be all addresses"));
    }
    if range.network() != range.ip() {
        return Err(format!(
            "{s} has host bits set (the range is {}/{})",
            range.network(),
            range.prefix()
        ));
    }
    Ok(range)
}

/// An AS number a cluster can use: not 0 and not AS_TRANS (23456).
fn parse_asn(s: &str) -> Result<u32, String> {
    let asn: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not an AS number: {e}"))?;
    if asn == 0 || asn == 23456 {
        return Err(format!("AS {asn} is reserved"));
    }
    Ok(asn)
}

impl Config {
    /// How this run chooses the node address (see `--node-ip`).
    pub fn node_ip_choice(&self) -> NodeIpChoice {
        match (&self.underlay_ip, &self.node_ip, self.datastore) {
            (Some(ip), _, _) => NodeIpChoice::Given(*ip),
            (None, Some(method), _) => NodeIpChoice::Method(method.clone()),
            (None, None, DatastoreKind::Kubernetes) => {
                NodeIpChoice::Method(NodeIpMethod::KubernetesInternalIp)
            }
            (None, None, DatastoreKind::Local) => {
                NodeIpChoice::UplinkFirst(self.uplink.clone().unwrap_or_else(|| "eth0".into()))
            }
        }
    }

    /// The pod MTU: the flag if given, else what the uplink leaves after encapsulation.
    pub fn pod_mtu(&self, uplink_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or(uplink_mtu.saturating_sub(self.encap.overhead().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the two required flags plus `extra`.
    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = [
            "weft-agent",
            "--node-name",
            "n1",
            "--pod-cidr",
            "10.244.1.0/24",
        ];
        Config::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn flags_parse_and_defaults_hold() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.uplink, None);
        assert_eq!(c.datastore, DatastoreKind::Local);
        assert!(matches!(c.node_ip_choice(), NodeIpChoice::UplinkFirst(u) if u == "eth0"));
        assert_eq!(c.health_address, "127.0.0.1:9099".parse().unwrap());
        assert_eq!(c.encap, Encap::Ipip);
        assert!(!c.cross_subnet);
        assert_eq!(c.pod_mtu(1500), 1480);
        assert_eq!(parse(&["--encap", "vxlan"]).unwrap().pod_mtu(1500), 1450);
        assert_eq!(parse(&["--encap", "none"]).unwrap().pod_mtu(9000), 9000);
        assert_eq!(parse(&["--mtu", "1400"]).unwrap().pod_mtu(1500), 1400);
        assert!(parse(&["--cross-subnet"]).unwrap().cross_subnet);
        assert_eq!(c.direct_redirect, DIRECT_REDIRECT_DEFAULT);
        assert_eq!(
            c.service_cluster_ip_range,
            "10.96.0.0/12".parse::<Ipv4Network>().unwrap()
        );
        assert_eq!(
            parse(&["--service-cluster-ip-range", "10.100.0.0/16"])
                .unwrap()
                .service_cluster_ip_range,
            "10.100.0.0/16".parse::<Ipv4Network>().unwrap()
        );
        for bad in ["0.0.0.0/0", "10.96.0.1/12", "10.96.0.0/33", "fd00::/108"] {
            assert!(
                parse(&["--service-cluster-ip-range", bad]).is_err(),
                "{bad} is refused"
            );
        }
        assert!(
            parse(&["--direct-redirect", "true"])
                .unwrap()
                .direct_redirect
        );
        assert!(!parse(&["--direct-redirect=false"]).unwrap().direct_redirect);
        assert_eq!(c.socket, PathBuf::from("/run/weft/agent.sock"));
        assert_eq!(c.routing, Routing::Bgp);
        assert_eq!(c.bgp_on_stop, BgpOnStop::Cease);
        assert_eq!(
            parse(&["--bgp-on-stop", "graceful-restart"])
                .unwrap()
                .bgp_on_stop,
            BgpOnStop::GracefulRestart
        );
        assert!(parse(&["--bgp-on-stop", "withdraw"]).is_err());
        assert_eq!(c.as_number, 64512);
        assert!(c.route_reflectors.is_empty());
        let c = parse(&["--route-reflectors", "node1,node2"]).unwrap();
        assert_eq!(c.route_reflectors, ["node1", "node2"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Config::try_parse_from([
                "weft-agent",
                "--node-name",
                "n1",
                "--pod-cidr",
                "10.244.1.0/33"
            ])
            .is_err()
        );
        assert!(parse(&["--mtu", "100"]).is_err());
        assert!(parse(&["--encap", "gre"]).is_err());
        assert!(parse(&["--direct-redirect", "maybe"]).is_err());
        assert!(
            parse(&["--direct-redirect"]).is_err(),
            "the value is explicit"
        );
        assert!(parse(&["--as-number", "23456"]).is_err());
        assert!(parse(&["--as-number", "0"]).is_err());
        assert!(parse(&["--datastore", "etcd"]).is_err());
        assert!(parse(&["--node-ip", "somewhere"]).is_err());
        assert!(
            parse(&["--node-ip", "first-found", "--underlay-ip", "198.18.0.1"]).is_err(),
            "one way to choose the address"
        );
    }

    #[test]
    fn the_node_address_method_follows_the_flags_and_the_datastore() {
        let k8s = Config::try_parse_from([
            "weft-agent",
            "--node-name",
            "n1",
            "--datastore",
            "kubernetes",
        ])
        .unwrap();
        assert_eq!(k8s.pod_cidr, None, "the Node's, in Kubernetes");
        assert!(matches!(
            k8s.node_ip_choice(),
            NodeIpChoice::Method(NodeIpMethod::KubernetesInternalIp)
        ));
        let c = parse(&["--uplink", "ens5"]).unwrap();
        assert!(matches!(c.node_ip_choice(), NodeIpChoice::UplinkFirst(u) if u == "ens5"));
        let c = parse(&["--node-ip", "can-reach=198.18.0.1"]).unwrap();
        assert_eq!(c.node_ip_choice().to_string(), "can-reach=198.18.0.1");
        let c = parse(&["--underlay-ip", "198.18.0.7"]).unwrap();
        assert!(
            matches!(c.node_ip_choice(), NodeIpChoice::Given(ip) if ip == Ipv4Addr::new(198, 18, 0, 7))
        );
    }
}
