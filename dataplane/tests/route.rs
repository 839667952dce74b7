//! Root tests of `weft_dataplane::route` against the real kernel.
//!
//! Each test builds its own network namespace (`wvx-rt-<test>-<pid>`) with a
//! veth pair standing in for the uplink, programs routes there through
//! `RouteTable::in_netns` and checks them with `owned()` and `ip route`. The
//! machine's own namespace is never touched. The namespace is removed by a
//! Drop guard, also when a test fails. Not root is a loud failure, never a
//! silent skip.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use ipnetwork::Ipv4Network;
use weft_dataplane::route::{self, RTPROT_WEFT, Route, RouteTable};

mod support;
use support::ip;

fn require_root() {
    support::require_root("route", "network namespaces, routes");
}

/// One namespace with `ul0` (198.18.20.1/24, up) and its peer `ul1` (up), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str) -> Self {
        require_root();
        let ns = Netns {
            name: format!("wvx-rt-{test}-{}", std::process::id()),
        };
        ip(&["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
        ns.ip(&["addr", "add", "198.18.20.1/24", "dev", "ul0"]);
        ns.ip(&["link", "set", "ul0", "up"]);
        ns.ip(&["link", "set", "ul1", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn ifindex(&self, name: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", name]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}
fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

async fn converge(table: &RouteTable, desired: &[Route]) -> route::RoutePlan {
    let actual = table.owned().await.expect("owned");
    let plan = route::plan(desired, &actual);
    table.apply(&plan).await.expect("apply");
    plan
}

#[test]
fn mtu_and_onlink_are_installed_read_back_and_replaced_in_place() {
    let ns = Netns::new("mtu");
    let ul = ns.ifindex("ul0");
    let host = ns.ifindex("ul1");
    runtime().block_on(async {
        let table = RouteTable::in_netns(&ns.path()).expect("route table in netns");
        let ipip =
            Route::to_pod_cidr(net("10.244.2.0/24"), addr("198.18.20.2"), ul).with_mtu(Some(1480));
        // A next hop on no subnet of the device: only valid with onlink.
        let vxlan = Route::via_vxlan(net("10.244.3.0/24"), addr("10.244.3.0"), ul);
        let pod = Route::to_local_pod(addr("10.244.1.5"), host);
        let mut desired = vec![ipip, vxlan, pod];
        desired.sort();

        let plan = converge(&table, &desired).await;
        assert_eq!(plan.upsert.len(), 3);
        assert!(plan.remove.is_empty());
        assert_eq!(table.owned().await.unwrap(), desired, "read back exactly");
        let shown = ns.ip(&["route", "show", "10.244.2.0/24"]);
        assert!(shown.contains("mtu 1480"), "{shown}");
        assert!(shown.contains("proto 87"), "{shown}");
        let shown = ns.ip(&["route", "show", "10.244.3.0/24"]);
        assert!(shown.contains("via 10.244.3.0 dev ul0"), "{shown}");
        assert!(shown.contains("onlink"), "{shown}");
        // The kernel agrees: the next hop of the onlink route resolves on ul0.
        let got = ns.ip(&["route", "get", "10.244.3.7"]);
        assert!(got.contains("via 10.244.3.0 dev ul0"), "{got}");
        // A second pass (a restarted agent) finds nothing to do.
        assert!(converge(&table, &desired).await.is_empty());

        // MTU change: one replace, no removal, the route keeps existing.
        let ipip_1400 = ipip.with_mtu(Some(1400));
        let desired = {
            let mut d = vec![ipip_1400, vxlan, pod];
            d.sort();
            d
        };
        let plan = converge(&table, &desired).await;
        assert_eq!(plan.upsert, vec![ipip_1400]);
        assert!(plan.remove.is_empty(), "{plan:?}");
        assert_eq!(table.owned().await.unwrap(), desired);
        let shown = ns.ip(&["route", "show", "10.244.2.0/24"]);
        assert_eq!(shown.lines().count(), 1, "replaced in place: {shown}");
        assert!(shown.contains("mtu 1400"), "{shown}");

        // MTU dropped and onlink added to a route via a reachable next hop.
        let ipip_plain = ipip.with_mtu(None).with_onlink(true);
        let desired = {
            let mut d = vec![ipip_plain, vxlan, pod];
            d.sort();
            d
        };
        let plan = converge(&table, &desired).await;
        assert_eq!(plan.upsert, vec![ipip_plain]);
        assert!(plan.remove.is_empty(), "{plan:?}");
        assert_eq!(table.owned().await.unwrap(), desired);
        let shown = ns.ip(&["route", "show", "10.244.2.0/24"]);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(!shown.contains("mtu"), "{shown}");
        assert!(shown.contains("onlink"), "{shown}");

        // onlink off again.
        let desired = {
            let mut d = vec![ipip_plain.with_onlink(false), vxlan, pod];
            d.sort();
            d
        };
        converge(&table, &desired).await;
        assert_eq!(table.owned().await.unwrap(), desired);

        // Nothing wanted: everything Weft owns goes, nothing else.
        ns.ip(&[
            "route",
            "add",
            "10.250.0.0/24",
            "via",
            "198.18.20.9",
            "mtu",
            "1300",
        ]);
        converge(&table, &[]).await;
        assert!(table.owned().await.unwrap().is_empty());
        let left = ns.ip(&["route", "show"]);
        assert!(left.contains("10.250.0.0/24"), "foreign route kept: {left}");
        assert!(!left.contains("10.244."), "{left}");
    });
}

#[test]
fn foreign_routes_with_the_same_shape_are_not_owned() {
    let ns = Netns::new("foreign");
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        "ul0",
        "onlink",
        "mtu",
        "1400",
    ]);
    runtime().block_on(async {
        let table = RouteTable::in_netns(&ns.path()).expect("route table in netns");
        assert!(table.owned().await.unwrap().is_empty());
        ns.ip(&[
            "route",
            "replace",
            "10.244.9.0/24",
            "via",
            "10.244.9.0",
            "dev",
            "ul0",
            "onlink",
            "mtu",
            "1400",
            "proto",
            "0x57",
        ]);
        let ul = ns.ifindex("ul0");
        assert_eq!(
            table.owned().await.unwrap(),
            vec![
                Route::via_vxlan(net("10.244.9.0/24"), addr("10.244.9.0"), ul).with_mtu(Some(1400))
            ],
            "an `ip route ... proto 0x57 onlink mtu 1400` route reads back with both"
        );
        assert_eq!(
            table.owned().await.unwrap()[0].protocol,
            RTPROT_WEFT,
            "protocol"
        );
    });
}
