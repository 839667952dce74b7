//! The lab's address and name plan: pure functions from (lab, node index,
//! pod index) to names and addresses, so every command derives the same
//! objects and `lab down` can find them again without a record.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

/// The first underlay segment, where every node's `eth0` sits in a lab of
/// one underlay subnet (a slice of 198.18.0.0/15, the benchmarking range,
/// so it never clashes with a real network). Subnet `s` is 198.18.s.0/24.
pub const UNDERLAY_CIDR: &str = "198.18.0.0/24";
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The bridge in the fabric namespace that plays the L2 underlay switch
/// (of the first subnet; subnet `s > 0` has `br-underlay<s>`).
pub const BRIDGE: &str = "br-underlay";
/// Most underlay subnets a lab can have (`--underlay-subnets`): 198.18.0.0/24
/// up to 198.18.3.0/24, joined by one router.
pub const MAX_UNDERLAY_SUBNETS: u32 = 4;
/// The router's host part on every underlay subnet (198.18.s.1).
const ROUTER_HOST: u8 = 1;
/// The node's uplink inside its namespace, as on a real machine.
pub const UPLINK: &str = "eth0";
/// The interface the runtime asks the plugin to create inside a pod.
pub const POD_IFNAME: &str = "eth0";
/// Underlay host addresses start above this, leaving .1-.10 for routers
/// a test may add to the fabric.
const UNDERLAY_HOST_BASE: u8 = 10;
/// Node indices are 1-based and bounded by the /24 pod CIDR plan
/// (10.244.i.0/24) and the underlay host range (198.18.0.(10+i)).
pub const MAX_NODES: u32 = 200;
/// Bounded by what a node's /24 pod CIDR can hold.
pub const MAX_PODS_PER_NODE: u32 = 250;

/// Lab names become prefixes of namespace names and path components.
pub fn validate_lab_name(lab: &str) -> Result<()> {
    if lab.is_empty() || lab.len() > 32 {
        bail!("lab name {lab:?} must be 1 to 32 characters");
    }
    if !lab
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || lab.starts_with('-')
    {
        bail!("lab name {lab:?} may only hold a-z, 0-9 and '-', and must not start with '-'");
    }
    Ok(())
}

/// Pod names follow Kubernetes (a DNS-1123 label), since the agent records
/// them as such.
pub fn validate_pod_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        bail!(
            "pod name {name:?} is not a DNS-1123 label (1-63 characters of a-z, 0-9, '-', \
             starting and ending with an alphanumeric)"
        );
    }
    Ok(())
}

pub fn fabric_netns(lab: &str) -> String {
    format!("{lab}-fabric")
}

pub fn node_name(index: u32) -> String {
    format!("node{index}")
}

pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// The bridge port of node `index` in the fabric namespace; kept under the
/// 15-byte interface name limit.
pub fn fabric_port(index: u32) -> String {
    format!("fab-node{index}")
}

/// The underlay subnet (0-based) node `index` sits on in a lab of
/// `subnets` subnets: nodes alternate, node1 on the first.
pub fn node_subnet(index: u32, subnets: u32) -> u32 {
    index.saturating_sub(1) % subnets.max(1)
}

/// Node `index`'s underlay address: 198.18.s.(10+i), s its subnet.
pub fn underlay_ip(index: u32, subnets: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        18,
        node_subnet(index, subnets) as u8,
        UNDERLAY_HOST_BASE + index as u8,
    )
}

/// Underlay subnet `subnet` (0-based): 198.18.s.0/24.
pub fn underlay_cidr(subnet: u32) -> String {
    format!("198.18.{subnet}.0/{UNDERLAY_PREFIX_LEN}")
}

/// The bridge of underlay subnet `subnet` in the fabric namespace.
pub fn bridge(subnet: u32) -> String {
    match subnet {
        0 => BRIDGE.to_string(),
        s => format!("{BRIDGE}{s}"),
    }
}

/// The namespace of the router between the underlay subnets (only in a
/// lab of more than one).
pub fn router_netns(lab: &str) -> String {
    format!("{lab}-router")
}

/// The router's address on underlay subnet `subnet`: 198.18.s.1, one of
/// the addresses below the nodes' left for routers.
pub fn router_ip(subnet: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet as u8, ROUTER_HOST)
}

/// The router's port on the bridge of `subnet`, in the fabric namespace.
pub fn router_port(subnet: u32) -> String {
    format!("fab-router{subnet}")
}

/// The router's interface on `subnet`, in the router's namespace.
pub fn router_ifname(subnet: u32) -> String {
    format!("eth{subnet}")
}

/// The routes node `index` needs to the other underlay subnets: each via
/// the router's address on the node's own subnet. None with one subnet.
pub fn underlay_routes(index: u32, subnets: u32) -> Vec<(String, Ipv4Addr)> {
    subnet_routes(node_subnet(index, subnets), subnets)
}

/// The routes a host on underlay subnet `own` needs to the other subnets:
/// each via the router's address on `own`.
pub fn subnet_routes(own: u32, subnets: u32) -> Vec<(String, Ipv4Addr)> {
    (0..subnets)
        .filter(|&s| s != own)
        .map(|s| (underlay_cidr(s), router_ip(own)))
        .collect()
}

pub fn check_underlay_subnets(subnets: u32) -> Result<()> {
    if subnets == 0 || subnets > MAX_UNDERLAY_SUBNETS {
        bail!("--underlay-subnets must be between 1 and {MAX_UNDERLAY_SUBNETS}, got {subnets}");
    }
    Ok(())
}

pub fn pod_cidr(index: u32) -> String {
    format!("10.244.{index}.0/24")
}

/// Pods made by `lab up` are `<node>-a`, `<node>-b`, … `<node>-z`,
/// `<node>-aa`, … (spreadsheet columns), short and distinct from digits in
/// the node name.
pub fn pod_name(node: &str, index: u32) -> String {
    format!("{node}-{}", letters(index))
}

fn letters(mut index: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

pub fn pod_netns(lab: &str, pod: &str) -> String {
    format!("{lab}-pod-{pod}")
}

/// The namespace of a Kubernetes lab's control plane (etcd, the API
/// server, the controller manager), plugged into the first underlay
/// subnet like a node.
pub fn control_plane_netns(lab: &str) -> String {
    format!("{lab}-kube")
}

/// The control plane's address on the first underlay subnet: above every
/// node's (198.18.0.(10+i), i at most [`MAX_NODES`]) and off the .1-.10 and
/// .200/.201 that tests give routers and BGP peers.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
/// The control plane's bridge port in the fabric namespace.
pub const CONTROL_PLANE_PORT: &str = "fab-kube";

/// Whether `netns` is a name this lab's plan can produce; used by
/// `lab down` when lab.json is gone, so it deletes nothing else.
pub fn is_lab_netns(lab: &str, netns: &str) -> bool {
    if netns == fabric_netns(lab) || netns == router_netns(lab) || netns == control_plane_netns(lab)
    {
        return true;
    }
    let Some(rest) = netns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if let Some(index) = rest.strip_prefix("node") {
        return !index.is_empty() && index.chars().all(|c| c.is_ascii_digit());
    }
    rest.strip_prefix("pod-").is_some_and(|pod| !pod.is_empty())
}

pub fn check_node_count(nodes: u32, pods_per_node: u32) -> Result<()> {
    if nodes == 0 || nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}, got {nodes}");
    }
    if pods_per_node > MAX_PODS_PER_NODE {
        bail!("--pods-per-node must be at most {MAX_PODS_PER_NODE}, got {pods_per_node}");
    }
    Ok(())
}

/// `--route-reflectors`: every name a node of the lab (`nodes` are its
/// node names), none twice. Returns them in the given order.
pub fn validate_route_reflectors(reflectors: &[String], nodes: &[&str]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in reflectors {
        let name = name.trim();
        if name.is_empty() {
            bail!("--route-reflectors has an empty name");
        }
        if !nodes.contains(&name) {
            bail!(
                "--route-reflectors names {name:?}, which is not a node of this lab (nodes: {})",
                nodes.join(", ")
            );
        }
        if out.iter().any(|r| r == name) {
            bail!("--route-reflectors names {name:?} twice");
        }
        out.push(name.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_index() {
        assert_eq!(underlay_ip(1, 1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(underlay_ip(3, 1), Ipv4Addr::new(198, 18, 0, 13));
        assert_eq!(underlay_ip(MAX_NODES, 1), Ipv4Addr::new(198, 18, 0, 210));
        assert_eq!(pod_cidr(2), "10.244.2.0/24");
        assert_eq!(node_name(2), "node2");
        assert_eq!(node_netns("weft", "node2"), "weft-node2");
        assert_eq!(fabric_netns("weft"), "weft-fabric");
        assert!(fabric_port(MAX_NODES).len() <= 15);
    }

    #[test]
    fn one_subnet_is_the_single_segment_layout() {
        for index in 1..=MAX_NODES {
            assert_eq!(node_subnet(index, 1), 0);
            assert_eq!(
                underlay_ip(index, 1),
                Ipv4Addr::new(198, 18, 0, 10 + index as u8)
            );
            assert!(underlay_routes(index, 1).is_empty());
        }
        assert_eq!(underlay_cidr(0), UNDERLAY_CIDR);
        assert_eq!(bridge(0), BRIDGE);
    }

    #[test]
    fn two_subnets_alternate_and_route_via_the_router() {
        let subnets: Vec<u32> = (1..=4).map(|i| node_subnet(i, 2)).collect();
        assert_eq!(subnets, [0, 1, 0, 1]);
        assert_eq!(underlay_ip(1, 2), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(underlay_ip(2, 2), Ipv4Addr::new(198, 18, 1, 12));
        assert_eq!(underlay_ip(3, 2), Ipv4Addr::new(198, 18, 0, 13));
        assert_eq!(underlay_ip(4, 2), Ipv4Addr::new(198, 18, 1, 14));
        assert_eq!(underlay_cidr(1), "198.18.1.0/24");
        assert_eq!(bridge(1), "br-underlay1");
        assert_eq!(router_netns("weft"), "weft-router");
        assert_eq!(router_ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(router_ip(1), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(
            underlay_routes(1, 2),
            [("198.18.1.0/24".to_string(), Ipv4Addr::new(198, 18, 0, 1))]
        );
        assert_eq!(
            underlay_routes(4, 2),
            [("198.18.0.0/24".to_string(), Ipv4Addr::new(198, 18, 1, 1))]
        );
        // Addresses stay distinct and off the routers' .1-.10 and the
        // control plane's.
        let all: std::collections::BTreeSet<Ipv4Addr> =
            (1..=MAX_NODES).map(|i| underlay_ip(i, 2)).collect();
        assert!(!all.contains(&CONTROL_PLANE_IP));
        assert_eq!(all.len(), MAX_NODES as usize);
        assert!(all.iter().all(|a| a.octets()[3] > 10));
        for s in 0..MAX_UNDERLAY_SUBNETS {
            assert!(router_port(s).len() <= 15 && bridge(s).len() <= 15);
        }
        check_underlay_subnets(1).unwrap();
        check_underlay_subnets(MAX_UNDERLAY_SUBNETS).unwrap();
        assert!(check_underlay_subnets(0).is_err());
        assert!(check_underlay_subnets(MAX_UNDERLAY_SUBNETS + 1).is_err());
    }

    #[test]
    fn pod_names_are_letters() {
        assert_eq!(pod_name("node1", 0), "node1-a");
        assert_eq!(pod_name("node1", 1), "node1-b");
        assert_eq!(pod_name("node1", 25), "node1-z");
        assert_eq!(pod_name("node1", 26), "node1-aa");
        assert_eq!(pod_name("node1", 27), "node1-ab");
        assert_eq!(pod_name("node1", 26 + 26 * 26), "node1-aaa");
        assert_eq!(pod_netns("weft", "node1-a"), "weft-pod-node1-a");
        for j in 0..MAX_PODS_PER_NODE {
            validate_pod_name(&pod_name("node200", j)).unwrap();
        }
    }

    #[test]
    fn only_planned_namespaces_belong_to_the_lab() {
        assert!(is_lab_netns("weft", "weft-fabric"));
        assert!(is_lab_netns("weft", "weft-router"));
        assert!(is_lab_netns("weft", "weft-kube"));
        assert!(!is_lab_netns("weft", "weft2-kube"));
        assert!(!is_lab_netns("weft", "weft2-router"));
        assert!(is_lab_netns("weft", "weft-node1"));
        assert!(is_lab_netns("weft", "weft-node12"));
        assert!(is_lab_netns("weft", "weft-pod-node1-a"));
        assert!(!is_lab_netns("weft", "weft-node"));
        assert!(!is_lab_netns("weft", "weft-nodex"));
        assert!(!is_lab_netns("weft", "weft-pod-"));
        assert!(!is_lab_netns("weft", "weft2-node1"));
        assert!(!is_lab_netns("weft", "other-node1"));
        assert!(!is_lab_netns("weft", "weftnode1"));
    }

    #[test]
    fn route_reflectors_must_be_nodes_of_the_lab() {
        let nodes = ["node1", "node2", "node3"];
        let names = |s: &[&str]| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            validate_route_reflectors(&names(&["node1"]), &nodes).unwrap(),
            ["node1"]
        );
        assert_eq!(
            validate_route_reflectors(&names(&["node3", "node1"]), &nodes).unwrap(),
            ["node3", "node1"]
        );
        assert!(validate_route_reflectors(&[], &nodes).unwrap().is_empty());
        let err = validate_route_reflectors(&names(&["node4"]), &nodes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node4") && err.contains("node1, node2, node3"),
            "{err}"
        );
        assert!(validate_route_reflectors(&names(&["node1", "node1"]), &nodes).is_err());
        assert!(validate_route_reflectors(&names(&[""]), &nodes).is_err());
        assert!(validate_route_reflectors(&names(&["Node1"]), &nodes).is_err());
    }

    #[test]
    fn names_are_validated() {
        validate_lab_name("weft").unwrap();
        validate_lab_name("e2e-3").unwrap();
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("Weft").is_err());
        assert!(validate_lab_name("a/b").is_err());
        assert!(validate_lab_name("-x").is_err());
        validate_pod_name("web-1").unwrap();
        assert!(validate_pod_name("web_1").is_err());
        assert!(validate_pod_name("web-").is_err());
        assert!(validate_pod_name(&"a".repeat(64)).is_err());
        check_node_count(3, 2).unwrap();
        assert!(check_node_count(0, 2).is_err());
        assert!(check_node_count(MAX_NODES + 1, 2).is_err());
    }
}
