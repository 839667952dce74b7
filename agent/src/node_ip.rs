//! Which address is this node's on the underlay, and why: a wrong node
//! address is the first cause of "BGP not established", so the choice
//! follows a method the operator names (Calico's autodetection methods)
//! and is logged and shown by `weftctl status` with its reason.
//!
//! [`choose`] is pure: the shell ([`detect`]) gathers the interfaces'
//! addresses, the Node's InternalIP and the source address the kernel
//! would use towards a `can-reach` target, and hands them over.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use regex::Regex;

/// How to find the node's address (`--node-ip`).
#[derive(Clone, Debug)]
pub enum NodeIpMethod {
    /// The Node object's first IPv4 `InternalIP` (kubelet's `--node-ip`).
    KubernetesInternalIp,
    /// The first IPv4 address of an interface that is not a container,
    /// tunnel or bridge device (see [`IGNORED_INTERFACES`]).
    FirstFound,
    /// The first IPv4 address of the first interface whose name matches.
    Interface(Regex),
    /// The address the kernel would send from towards this one.
    CanReach(Ipv4Addr),
}

impl std::fmt::Display for NodeIpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeIpMethod::KubernetesInternalIp => f.write_str("kubernetes-internal-ip"),
            NodeIpMethod::FirstFound => f.write_str("first-found"),
            NodeIpMethod::Interface(re) => write!(f, "interface={re}"),
            NodeIpMethod::CanReach(ip) => write!(f, "can-reach={ip}"),
        }
    }
}

/// Parses `--node-ip`.
pub fn parse_method(s: &str) -> Result<NodeIpMethod, String> {
    match s.split_once('=') {
        None if s == "kubernetes-internal-ip" => Ok(NodeIpMethod::KubernetesInternalIp),
        None if s == "first-found" => Ok(NodeIpMethod::FirstFound),
        Some(("interface", re)) if !re.is_empty() => Regex::new(re)
            .map(NodeIpMethod::Interface)
            .map_err(|e| format!("interface={re}: not a regular expression: {e}")),
        Some(("can-reach", ip)) => ip
            .parse()
            .map(NodeIpMethod::CanReach)
            .map_err(|e| format!("can-reach={ip}: not an IPv4 address: {e}")),
        _ => Err(format!(
            "{s:?}: expected kubernetes-internal-ip, first-found, interface=REGEX or can-reach=IPV4"
        )),
    }
}

/// How the node address is chosen this run: a method, or what the flags
/// fix.
#[derive(Clone, Debug)]
pub enum NodeIpChoice {
    /// `--underlay-ip`: taken as given.
    Given(Ipv4Addr),
    /// The named uplink's first IPv4 address (`--uplink` without `--node-ip`
    /// in the local datastore mode).
    UplinkFirst(String),
    Method(NodeIpMethod),
}

impl std::fmt::Display for NodeIpChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeIpChoice::Given(ip) => write!(f, "--underlay-ip {ip}"),
            NodeIpChoice::UplinkFirst(uplink) => write!(f, "the first address of {uplink}"),
            NodeIpChoice::Method(method) => method.fmt(f),
        }
    }
}

/// Interfaces `first-found` passes over: loopback, container and
/// tunnel devices (Weft's, and other plugins' left on the machine).
pub const IGNORED_INTERFACES: &[&str] = &[
    "lo",
    "weft",
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "tunl",
    "flannel",
    "kube-ipvs",
    "cni",
    "vxlan",
    "nodelocaldns",
    "cilium",
    "antrea",
    "podman",
];

/// One IPv4 address of one interface, in the kernel's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Network,
}

/// What [`choose`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIp {
    pub address: Ipv4Addr,
    /// The interface holding it: the uplink unless `--uplink` says
    /// otherwise. `None` for a `--underlay-ip` no interface holds.
    pub interface: Option<String>,
    /// Why this address, for the log and `weftctl status`.
    pub reason: String,
}

/// What the shell found for [`choose`].
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub interfaces: Vec<InterfaceAddress>,
    /// The Node object's first IPv4 InternalIP (Kubernetes mode).
    pub internal_ip: Option<Ipv4Addr>,
    /// The source address of the kernel's route to the `can-reach` target.
    pub reach_source: Option<Ipv4Addr>,
}

/// Chooses the node address by `choice` from `facts`; an error says what
/// was looked for and what there was.
pub fn choose(choice: &NodeIpChoice, facts: &Facts) -> Result<NodeIp, String> {
    let holder = |ip: Ipv4Addr| {
        facts
            .interfaces
            .iter()
            .find(|i| i.address.ip() == ip)
            .map(|i| i.interface.clone())
    };
    let found = |address: Ipv4Addr, reason: String| NodeIp {
        address,
        interface: holder(address),
        reason,
    };
    let first_on = |wanted: &dyn Fn(&str) -> bool| {
        facts
            .interfaces
            .iter()
            .find(|i| wanted(&i.interface) && !i.address.ip().is_loopback())
    };
    match choice {
        NodeIpChoice::Given(ip) => Ok(found(*ip, "given by --underlay-ip".into())),
        NodeIpChoice::UplinkFirst(uplink) => first_on(&|name| name == uplink)
            .map(|i| {
                found(
                    i.address.ip(),
                    format!("the first IPv4 address of --uplink {uplink}"),
                )
            })
            .ok_or_else(|| {
                format!("uplink {uplink} has no IPv4 address; give --underlay-ip or --node-ip")
            }),
        NodeIpChoice::Method(NodeIpMethod::KubernetesInternalIp) => facts
            .internal_ip
            .map(|ip| found(ip, "the Node's InternalIP (kubernetes-internal-ip)".into()))
            .ok_or_else(|| {
                "the Node has no IPv4 InternalIP in status.addresses (kubelet's --node-ip); \
                 give --node-ip first-found, interface=REGEX or can-reach=IP"
                    .to_string()
            }),
        NodeIpChoice::Method(NodeIpMethod::FirstFound) => {
            first_on(&|name| !IGNORED_INTERFACES.iter().any(|p| name.starts_with(p)))
                .map(|i| {
                    found(
                        i.address.ip(),
                        format!("the first IPv4 address of {} (first-found)", i.interface),
                    )
                })
                .ok_or_else(|| {
                    format!(
                        "first-found: no interface but ignored ones ({}) has an IPv4 address",
                        IGNORED_INTERFACES.join(", ")
                    )
                })
        }
        NodeIpChoice::Method(NodeIpMethod::Interface(re)) => first_on(&|name| re.is_match(name))
            .map(|i| {
                found(
                    i.address.ip(),
                    format!("the first IPv4 address of {} (interface={re})", i.interface),
                )
            })
            .ok_or_else(|| format!("interface={re}: no matching interface has an IPv4 address")),
        NodeIpChoice::Method(NodeIpMethod::CanReach(target)) => {
            let source = facts
                .reach_source
                .ok_or_else(|| format!("can-reach={target}: the node has no route to it"))?;
            let ip = found(
                source,
                format!("the source address of the route to {target} (can-reach)"),
            );
            if ip.interface.is_none() {
                return Err(format!(
                    "can-reach={target}: the route's source {source} is on no interface"
                ));
            }
            Ok(ip)
        }
    }
}

/// Every IPv4 address of every interface of this network namespace, in
/// the kernel's order (interface index, then address).
pub async fn interface_addresses() -> anyhow::Result<Vec<InterfaceAddress>> {
    let netlink = weft_dataplane::link::Netlink::current()?;
    let pairs = netlink.interface_addresses().await?;
    Ok((pairs.into_iter())
        .map(|(interface, address)| InterfaceAddress { interface, address })
        .collect())
}

/// The source address the kernel picks towards `target`: a connected UDP
/// socket is routed without sending anything.
pub fn reach_source(target: Ipv4Addr) -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((target, 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Gathers the facts `choice` needs and chooses.
pub async fn detect(
    choice: &NodeIpChoice,
    internal_ip: Option<Ipv4Addr>,
) -> anyhow::Result<NodeIp> {
    let facts = Facts {
        interfaces: interface_addresses().await?,
        internal_ip,
        reach_source: match choice {
            NodeIpChoice::Method(NodeIpMethod::CanReach(target)) => reach_source(*target),
            _ => None,
        },
    };
    choose(choice, &facts).map_err(|why| anyhow::anyhow!("node address: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        let a = |interface: &str, address: &str| InterfaceAddress {
            interface: interface.into(),
            address: address.parse().unwrap(),
        };
        Facts {
            interfaces: vec![
                a("lo", "127.0.0.1/8"),
                a("docker0", "172.17.0.1/16"),
                a("eth0", "198.18.0.2/24"),
                a("eth0", "198.18.0.9/24"),
                a("ens5", "198.19.1.5/24"),
                a("weft.vxlan", "10.244.1.0/32"),
            ],
            internal_ip: Some("198.19.1.5".parse().unwrap()),
            reach_source: Some("198.19.1.5".parse().unwrap()),
        }
    }

    fn method(s: &str) -> NodeIpChoice {
        NodeIpChoice::Method(parse_method(s).unwrap())
    }

    fn chosen(choice: &NodeIpChoice) -> (String, Option<String>) {
        let ip = choose(choice, &facts()).unwrap();
        (ip.address.to_string(), ip.interface)
    }

    #[test]
    fn each_method_picks_its_address_and_interface() {
        let on = |ip: &str, ifname: &str| (ip.to_string(), Some(ifname.to_string()));
        assert_eq!(
            chosen(&method("kubernetes-internal-ip")),
            on("198.19.1.5", "ens5")
        );
        assert_eq!(chosen(&method("first-found")), on("198.18.0.2", "eth0"));
        assert_eq!(chosen(&method("interface=^ens")), on("198.19.1.5", "ens5"));
        assert_eq!(
            chosen(&method("can-reach=198.19.1.1")),
            on("198.19.1.5", "ens5")
        );
        assert_eq!(
            chosen(&NodeIpChoice::UplinkFirst("eth0".into())),
            on("198.18.0.2", "eth0")
        );
        assert_eq!(
            chosen(&NodeIpChoice::Given("198.18.0.9".parse().unwrap())),
            on("198.18.0.9", "eth0")
        );
        assert_eq!(
            chosen(&NodeIpChoice::Given("203.0.113.1".parse().unwrap())),
            ("203.0.113.1".to_string(), None),
            "a given address need not be local (the uplink is then named)"
        );
        let reason = choose(&method("first-found"), &facts()).unwrap().reason;
        assert!(
            reason.contains("eth0") && reason.contains("first-found"),
            "{reason}"
        );
    }

    #[test]
    fn nothing_to_choose_says_what_was_looked_for() {
        let mut none = facts();
        none.internal_ip = None;
        none.reach_source = None;
        none.interfaces
            .retain(|i| i.interface == "lo" || i.interface == "docker0");
        for (choice, says) in [
            ("kubernetes-internal-ip", "InternalIP"),
            ("first-found", "ignored"),
            ("interface=^eth", "no matching interface"),
            ("can-reach=198.19.1.1", "no route"),
        ] {
            let err = choose(&method(choice), &none).unwrap_err();
            assert!(err.contains(says), "{choice}: {err}");
        }
        let err = choose(&NodeIpChoice::UplinkFirst("eth1".into()), &none).unwrap_err();
        assert!(err.contains("eth1"), "{err}");
    }

    #[test]
    fn bad_methods_are_refused() {
        for bad in [
            "",
            "internal",
            "interface=",
            "interface=(",
            "can-reach=host.example",
            "can-reach=fd00::1",
        ] {
            assert!(parse_method(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_method("interface=eth.*").unwrap().to_string(),
            "interface=eth.*"
        );
    }
}
