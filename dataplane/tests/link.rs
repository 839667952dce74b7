//! Root tests of `weft_dataplane::link` against the real kernel.
//!
//! Each test builds its own "node" and "pod" network namespaces (named
//! `weft-t-link-<pid>-<test>-{node,pod}`), wires a pod from inside the node
//! namespace exactly as weft-cni does, and checks the result with `ip`. The
//! machine's own namespace is never touched. Namespaces are removed by a
//! Drop guard, also when a test fails. Not root is a loud failure, never a
//! silent skip.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use weft_dataplane::link::{self, LinkError, Netlink, PodNetwork, WiredPod};
use weft_dataplane::names::{self, POD_GATEWAY};
use weft_dataplane::netns;

mod support;
use support::ip;

fn require_root() {
    support::require_root("link", "network namespaces, veths");
}

const POD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 77, 5);
/// Stands in for the node's own address in the ping test.
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 77, 1);
const MTU: u32 = 1450;

/// A node namespace and a pod namespace, deleted on drop.
struct Namespaces {
    node: String,
    pod: String,
}

impl Namespaces {
    fn new(test: &str) -> Self {
        require_root();
        let prefix = format!("weft-t-link-{}-{test}", std::process::id());
        let ns = Namespaces {
            node: format!("{prefix}-node"),
            pod: format!("{prefix}-pod"),
        };
        for name in [&ns.node, &ns.pod] {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn node_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.node))
    }

    fn pod_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.pod))
    }

    fn spec(&self, container_id: &str) -> PodNetwork {
        PodNetwork {
            netns: self.pod_path(),
            host_ifname: names::host_ifname(container_id, "eth0"),
            pod_ifname: "eth0".into(),
            address: POD_ADDRESS,
            prefix_len: 32,
            gateway: POD_GATEWAY,
            mtu: MTU,
        }
    }

    /// Runs `f` with a netlink connection in the node namespace, from a
    /// thread inside it (as weft-cni runs in the node's namespace).
    fn in_node<T: Send + 'static>(&self, f: impl AsyncFnOnce(Netlink) -> T + Send + 'static) -> T {
        netns::run_in(&self.node_path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let node = Netlink::current().expect("netlink in node netns");
                f(node).await
            })
        })
        .expect("run in node netns")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[test]
fn wire_pod_configures_both_ends() {
    let ns = Namespaces::new("wire");
    let spec = ns.spec("wire-container");
    let host_ifname = spec.host_ifname.clone();
    let wired: WiredPod = {
        let spec = spec.clone();
        ns.in_node(async move |node| link::wire_pod(&node, &spec).await)
            .expect("wire_pod")
    };
    assert_eq!(wired.host.name, host_ifname);
    assert!(
        !wired.host.up,
        "the agent brings the host end up, once guarded"
    );
    assert_eq!(wired.host.mtu, Some(MTU));
    assert_eq!(wired.pod.name, "eth0");
    assert_eq!(wired.pod.mtu, Some(MTU));
    let host_mac = wired.host.mac.expect("host mac").to_string();

    // Host end: down until the agent has guarded it, right MTU, no
    // address, proxy ARP on.
    let host = ip(&["-n", &ns.node, "-o", "addr", "show", "dev", &host_ifname]);
    assert!(
        !host.contains("inet "),
        "host end has an IPv4 address: {host}"
    );
    let link = ip(&["-n", &ns.node, "-o", "link", "show", "dev", &host_ifname]);
    assert!(
        link.contains(&format!("mtu {MTU}")) && link.contains("state DOWN"),
        "{link}"
    );
    let proxy_arp = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.node,
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{host_ifname}/proxy_arp"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");

    // Pod end: /32, link route to the gateway, default via it onlink,
    // permanent neighbour entry with the host end's MAC.
    let addr = ip(&["-n", &ns.pod, "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {POD_ADDRESS}/32")), "{addr}");
    let link = ip(&["-n", &ns.pod, "-o", "link", "show", "dev", "eth0"]);
    assert!(
        link.contains(&format!("mtu {MTU}")) && link.contains("state DOWN"),
        "{link}"
    );
    let routes = ip(&["-n", &ns.pod, "-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0 onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    let neigh = ip(&["-n", &ns.pod, "neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains(&format!("169.254.1.1 lladdr {host_mac} PERMANENT")),
        "{neigh}"
    );

    // Traffic: the agent brings the host end up (once guarded), the node
    // routes the pod's /32 to it and answers.
    ip(&["-n", &ns.node, "link", "set", &host_ifname, "up"]);
    ip(&[
        "-n",
        &ns.node,
        "addr",
        "add",
        &format!("{NODE_ADDRESS}/32"),
        "dev",
        "lo",
    ]);
    ip(&[
        "-n",
        &ns.node,
        "route",
        "add",
        &format!("{POD_ADDRESS}/32"),
        "dev",
        &host_ifname,
    ]);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.pod,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &NODE_ADDRESS.to_string(),
        ])
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "pod cannot reach the node: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // Read back, as CHECK does.
    let pod_path = ns.pod_path();
    let state = ns
        .in_node(async move |_node| {
            let pod = Netlink::in_netns(&pod_path).expect("netlink in pod");
            pod.pod_side_state("eth0").await
        })
        .expect("pod_side_state")
        .expect("eth0 exists");
    assert!(state.has_address(POD_ADDRESS, 32), "{state:?}");
    assert!(state.has_default_route_via(POD_GATEWAY), "{state:?}");
    assert!(state.link.up);
}

#[test]
fn delete_link_removes_both_ends_and_is_idempotent() {
    let ns = Namespaces::new("del");
    let spec = ns.spec("del-container");
    let host_ifname = spec.host_ifname.clone();
    let (listed, first, second, exists_after) = ns.in_node(async move |node| {
        link::wire_pod(&node, &spec).await.expect("wire_pod");
        let listed = node
            .links_with_prefix(names::HOST_IFNAME_PREFIX)
            .await
            .expect("list");
        let first = node
            .delete_link(&spec.host_ifname)
            .await
            .expect("first delete");
        let second = node
            .delete_link(&spec.host_ifname)
            .await
            .expect("second delete");
        let exists = node.link_exists(&spec.host_ifname).await.expect("exists");
        (listed, first, second, exists)
    });
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, host_ifname);
    assert!(first, "first delete should find the link");
    assert!(!second, "second delete should be a no-op");
    assert!(!exists_after);
    let pod_links = ip(&["-n", &ns.pod, "-o", "link", "show"]);
    assert!(!pod_links.contains("eth0"), "pod end survived: {pod_links}");
}

#[test]
fn wire_pod_refuses_an_existing_pod_interface() {
    let ns = Namespaces::new("exists");
    ip(&[
        "-n", &ns.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let spec = ns.spec("exists-container");
    let err = ns
        .in_node(async move |node| link::wire_pod(&node, &spec).await)
        .expect_err("must fail");
    match err {
        LinkError::AlreadyExists {
            name,
            netns: Some(_),
        } => assert_eq!(name, "eth0"),
        other => panic!("wrong error: {other}"),
    }
    let node_links = ip(&["-n", &ns.node, "-o", "link", "show"]);
    assert!(
        !node_links.contains("weft"),
        "host end created anyway: {node_links}"
    );
}

#[test]
fn wire_pod_into_a_missing_netns_leaves_nothing() {
    let ns = Namespaces::new("gone");
    let mut spec = ns.spec("gone-container");
    spec.netns = PathBuf::from(format!("/run/netns/{}-does-not-exist", ns.pod));
    let err = ns
        .in_node(async move |node| link::wire_pod(&node, &spec).await)
        .expect_err("must fail");
    assert!(matches!(err, LinkError::Netns(_)), "wrong error: {err}");
    let node_links = ip(&["-n", &ns.node, "-o", "link", "show"]);
    assert!(!node_links.contains("weft"), "{node_links}");
}

#[test]
fn wire_pod_replaces_a_stale_host_end() {
    let ns = Namespaces::new("stale");
    let spec = ns.spec("stale-container");
    // A host end left by an earlier, interrupted ADD of the same attachment.
    ip(&[
        "-n",
        &ns.node,
        "link",
        "add",
        &spec.host_ifname,
        "type",
        "veth",
        "peer",
        "name",
        "leftover",
    ]);
    let wired = ns
        .in_node(async move |node| link::wire_pod(&node, &spec).await)
        .expect("wire_pod");
    assert!(!wired.host.up);
    let node_links = ip(&["-n", &ns.node, "-o", "link", "show"]);
    assert!(
        !node_links.contains("leftover"),
        "stale peer survived: {node_links}"
    );
}

#[test]
fn proxy_arp_of_a_missing_link_is_a_precise_error() {
    let ns = Namespaces::new("sysctl");
    let path = ns.node_path();
    let err = netns::run_in(&path, || link::enable_proxy_arp("weftnosuchlink"))
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("/proc/sys/net/ipv4/conf/weftnosuchlink/proxy_arp"),
        "{err}"
    );
}
