//! Root tests of `weft_dataplane::vxlan` against the real kernel.
//!
//! Every namespace a test makes is called `wvx-<test>-<pid>-<role>`: nodes
//! `a` and `b` joined by a veth underlay (`ul0`, 198.18.x.1/24 and .2/24),
//! and pod namespaces `pa`/`pb` wired into their node exactly as weft-cni
//! does it. The VXLAN devices, their FDB and neighbour entries and the
//! routes are programmed through `Vxlan` and `RouteTable` only; `ip`,
//! `bridge`, `ping` and `tcpdump` observe. The machine's own namespace is
//! never touched; a Drop guard removes the namespaces, also when a test
//! fails. Not root is a loud failure, never a silent skip.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use weft_dataplane::link::{self, Netlink, PodNetwork};
use weft_dataplane::names::{self, POD_GATEWAY};
use weft_dataplane::netns;
use weft_dataplane::route::{self, Route, RouteTable};
use weft_dataplane::vxlan::{
    self, DEVICE_NAME, FdbEntry, NeighbourEntry, Vxlan, VxlanPeer, VxlanSpec,
};

mod support;
use support::ip;

fn require_root() {
    support::require_root("vxlan", "network namespaces, vxlan devices");
}

const POD_MTU: u32 = 1450;

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}
fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The namespaces of one test, deleted on drop.
struct Lab {
    prefix: String,
    made: Vec<String>,
}

impl Lab {
    fn new(test: &str) -> Self {
        require_root();
        Lab {
            prefix: format!("wvx-{test}-{}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn path(&self, role: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name(role)))
    }

    fn add(&mut self, role: &str) {
        let name = self.name(role);
        ip(&["netns", "add", &name]);
        self.made.push(name);
        self.ip(role, &["link", "set", "lo", "up"]);
    }

    /// `ip -n <ns of role> ARGS`.
    fn ip(&self, role: &str, args: &[&str]) -> String {
        let name = self.name(role);
        let mut all = vec!["-n", name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec <ns of role> PROGRAM ARGS`, not checked.
    fn exec(&self, role: &str, program: &str, args: &[&str]) -> std::process::Output {
        let name = self.name(role);
        let mut all = vec!["netns", "exec", name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn ifindex(&self, role: &str, ifname: &str) -> u32 {
        let out = self.ip(role, &["-o", "link", "show", ifname]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    }

    /// Two nodes `a` and `b`, their uplinks `ul0` joined (198.18.`subnet`.1
    /// and .2 /24), forwarding on.
    fn two_nodes(&mut self, subnet: u8) {
        self.add("a");
        self.add("b");
        let b = self.name("b");
        self.ip(
            "a",
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b,
            ],
        );
        for (role, host) in [("a", 1), ("b", 2)] {
            self.ip(
                role,
                &[
                    "addr",
                    "add",
                    &format!("198.18.{subnet}.{host}/24"),
                    "dev",
                    "ul0",
                ],
            );
            self.ip(role, &["link", "set", "ul0", "up"]);
            let out = self.exec(role, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            assert!(out.status.success(), "sysctl in {role}: {out:?}");
        }
    }

    /// A pod namespace `pod_role` wired into node `node_role` by
    /// `link::wire_pod` (run from inside the node namespace, as weft-cni
    /// runs); returns the host end's ifindex.
    fn wire_pod(&mut self, node_role: &str, pod_role: &str, address: Ipv4Addr) -> u32 {
        self.add(pod_role);
        let spec = PodNetwork {
            netns: self.path(pod_role),
            host_ifname: names::host_ifname(&self.name(pod_role), "eth0"),
            pod_ifname: "eth0".into(),
            address,
            prefix_len: 32,
            gateway: POD_GATEWAY,
            mtu: POD_MTU,
        };
        netns::run_in(&self.path(node_role), move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let node = Netlink::current().expect("netlink in node netns");
                    let wired = link::wire_pod(&node, &spec).await.expect("wire_pod");
                    // What the agent does once the host end is guarded.
                    node.set_up(&wired.host.name).await.expect("host end up");
                    wired.host.index
                })
        })
        .expect("run in node netns")
    }

    fn ping(&self, from: &str, to: Ipv4Addr, count: u32) -> bool {
        support::ping(&self.name(from), to, count, &[])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A tcpdump started by this test, killed (by its pid) if still running on drop.
struct Capture {
    child: Child,
}

impl Capture {
    /// Captures up to `count` packets matching `filter` on `ifname` in `ns`;
    /// returns once tcpdump listens.
    fn start(ns: &str, ifname: &str, count: u32, filter: &str) -> Capture {
        let count = count.to_string();
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", ifname, "-nn", "-l", "-c",
            ])
            .arg(&count)
            .args(filter.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).expect("read tcpdump stderr");
            assert!(n > 0, "tcpdump exited before listening");
            if line.contains("listening on") {
                break;
            }
        }
        Capture { child }
    }

    /// Waits up to `timeout` for tcpdump to finish; returns its stdout.
    fn finish(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().expect("wait tcpdump").is_none() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.child.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn converge(table: &RouteTable, desired: &[Route]) -> route::RoutePlan {
    let actual = table.owned().await.expect("owned routes");
    let plan = route::plan(desired, &actual);
    table.apply(&plan).await.expect("apply routes");
    plan
}

/// One node of the two-node overlay.
struct Node {
    spec: VxlanSpec,
    cidr: Ipv4Network,
    pod: Ipv4Addr,
    pod_host_ifindex: u32,
    vxlan: Vxlan,
    routes: RouteTable,
}

impl Node {
    fn peer(&self) -> VxlanPeer {
        VxlanPeer::new(self.spec.local, self.cidr)
    }

    /// One reconcile pass towards `other`: device, peers, routes.
    async fn reconcile(&self, other: &Node) -> (u32, vxlan::PeerPlan, route::RoutePlan) {
        let ifindex = self
            .vxlan
            .ensure_device(&self.spec)
            .await
            .expect("ensure_device");
        let peers = self
            .vxlan
            .sync_peers(ifindex, &[other.peer()])
            .await
            .expect("sync_peers");
        let routes = converge(
            &self.routes,
            &[
                Route::to_local_pod(self.pod, self.pod_host_ifindex),
                Route::via_vxlan(other.cidr, vxlan::vtep_ip(other.cidr), ifindex),
            ],
        )
        .await;
        (ifindex, peers, routes)
    }
}

#[test]
fn pods_on_two_nodes_talk_over_the_vxlan_overlay() {
    let mut lab = Lab::new("ovl");
    lab.two_nodes(30);
    let pod_a = addr("10.244.1.5");
    let pod_b = addr("10.244.2.5");
    let host_a = lab.wire_pod("a", "pa", pod_a);
    let host_b = lab.wire_pod("b", "pb", pod_b);
    let rt = runtime();
    let _guard = rt.enter();
    let mut a = Node {
        spec: VxlanSpec::new(
            addr("198.18.30.1"),
            lab.ifindex("a", "ul0"),
            1500,
            net("10.244.1.0/24"),
        ),
        cidr: net("10.244.1.0/24"),
        pod: pod_a,
        pod_host_ifindex: host_a,
        vxlan: Vxlan::in_netns(&lab.path("a")).unwrap(),
        routes: RouteTable::in_netns(&lab.path("a")).unwrap(),
    };
    let mut b = Node {
        spec: VxlanSpec::new(
            addr("198.18.30.2"),
            lab.ifindex("b", "ul0"),
            1500,
            net("10.244.2.0/24"),
        ),
        cidr: net("10.244.2.0/24"),
        pod: pod_b,
        pod_host_ifindex: host_b,
        vxlan: Vxlan::in_netns(&lab.path("b")).unwrap(),
        routes: RouteTable::in_netns(&lab.path("b")).unwrap(),
    };

    let (idx_a, peers_a, routes_a) = rt.block_on(a.reconcile(&b));
    let (idx_b, _, _) = rt.block_on(b.reconcile(&a));
    assert_eq!(peers_a.fdb_set, vec![b.peer().fdb_entry()]);
    assert_eq!(peers_a.neighbour_set, vec![b.peer().neighbour_entry()]);
    assert_eq!(routes_a.upsert.len(), 2);

    // The kernel's view, in iproute2's words.
    let link = lab.ip("a", &["-d", "link", "show", DEVICE_NAME]);
    for want in [
        "mtu 1450",
        "link/ether 02:57:c6:12:1e:01",
        "vxlan id 4096 local 198.18.30.1 dev ul0",
        "dstport 4789",
        "nolearning",
        "UP",
    ] {
        assert!(link.contains(want), "{want:?} in {link}");
    }
    let addrs = lab.ip("a", &["-4", "addr", "show", DEVICE_NAME]);
    assert!(addrs.contains("inet 10.244.1.0/32"), "{addrs}");
    let fdb = String::from_utf8(
        run(
            "bridge",
            &["-n", &lab.name("a"), "fdb", "show", "dev", DEVICE_NAME],
        )
        .stdout,
    )
    .unwrap();
    assert!(
        fdb.contains("02:57:c6:12:1e:02 dst 198.18.30.2 self permanent"),
        "{fdb}"
    );
    let neigh = lab.ip("a", &["neigh", "show", "dev", DEVICE_NAME]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 02:57:c6:12:1e:02 PERMANENT"),
        "{neigh}"
    );
    let route = lab.ip("a", &["route", "show", "10.244.2.0/24"]);
    assert!(
        route.contains("via 10.244.2.0 dev weft.vxlan proto 87 onlink"),
        "{route}"
    );

    // Pod to pod across the overlay; the underlay sees VXLAN on 4789.
    let capture = Capture::start(&lab.name("b"), "ul0", 2, "udp dst port 4789");
    assert!(
        lab.ping("pa", pod_b, 3),
        "pod a cannot ping pod b over vxlan"
    );
    let seen = capture.finish(Duration::from_secs(5));
    assert!(seen.contains("198.18.30.1."), "outer source: {seen}");
    assert!(
        seen.contains("198.18.30.2.4789"),
        "outer destination: {seen}"
    );
    assert!(seen.contains("VXLAN"), "{seen}");
    assert!(seen.contains("vni 4096"), "{seen}");
    assert!(
        seen.contains("10.244.1.5 > 10.244.2.5: ICMP echo request"),
        "inner packet keeps the pod addresses: {seen}"
    );
    assert!(lab.ping("pb", pod_a, 1), "pod b cannot ping pod a");

    // A second pass changes nothing.
    let (again_a, peers, routes) = rt.block_on(a.reconcile(&b));
    assert_eq!(again_a, idx_a, "ensure_device twice keeps the device");
    assert!(peers.is_empty(), "{peers:?}");
    assert!(routes.is_empty(), "{routes:?}");
    assert_eq!(
        lab.ip("a", &["-d", "link", "show", DEVICE_NAME]),
        link,
        "the device is untouched"
    );

    // A peer gone from the desired state: its entries go, traffic stops.
    let removed = rt
        .block_on(a.vxlan.sync_peers(idx_a, &[]))
        .expect("sync_peers to nothing");
    assert_eq!(removed.fdb_remove, vec![b.peer().fdb_entry()]);
    assert_eq!(removed.neighbour_remove, vec![b.peer().neighbour_entry()]);
    assert!(rt.block_on(a.vxlan.fdb(idx_a)).unwrap().is_empty());
    assert!(rt.block_on(a.vxlan.neighbours(idx_a)).unwrap().is_empty());
    let fdb = String::from_utf8(
        run(
            "bridge",
            &["-n", &lab.name("a"), "fdb", "show", "dev", DEVICE_NAME],
        )
        .stdout,
    )
    .unwrap();
    assert!(!fdb.contains("02:57:c6:12:1e:02"), "{fdb}");
    assert!(
        !lab.ping("pa", pod_b, 1),
        "no FDB/neighbour entry, yet traffic flows"
    );
    rt.block_on(a.reconcile(&b));
    assert!(lab.ping("pa", pod_b, 1), "traffic back after resync");

    // Another VNI on one side: recreated, and the two no longer talk.
    a.spec.vni = 4097;
    let (idx_a2, peers, routes) = rt.block_on(a.reconcile(&b));
    assert_ne!(idx_a2, idx_a, "a VNI change recreates the device");
    assert_eq!(
        peers.fdb_set.len(),
        1,
        "the new device starts empty: {peers:?}"
    );
    assert_eq!(
        routes.upsert.len(),
        1,
        "the route follows the new ifindex: {routes:?}"
    );
    let link = lab.ip("a", &["-d", "link", "show", DEVICE_NAME]);
    assert!(link.contains("vxlan id 4097"), "{link}");
    assert!(
        !lab.ping("pa", pod_b, 1),
        "VNI 4097 reached a VNI 4096 device"
    );
    b.spec.vni = 4097;
    let (idx_b2, _, _) = rt.block_on(b.reconcile(&a));
    assert_ne!(idx_b2, idx_b);
    let capture = Capture::start(&lab.name("b"), "ul0", 1, "udp dst port 4789");
    assert!(lab.ping("pa", pod_b, 2), "both on VNI 4097");
    let seen = capture.finish(Duration::from_secs(5));
    assert!(seen.contains("vni 4097"), "{seen}");

    // delete_device removes the device and, with it, everything through it.
    assert!(rt.block_on(a.vxlan.delete_device(DEVICE_NAME)).unwrap());
    assert!(!rt.block_on(a.vxlan.delete_device(DEVICE_NAME)).unwrap());
    assert!(rt.block_on(a.vxlan.device(DEVICE_NAME)).unwrap().is_none());
    assert!(rt.block_on(a.vxlan.fdb(idx_a2)).unwrap().is_empty());
    assert!(rt.block_on(a.vxlan.neighbours(idx_a2)).unwrap().is_empty());
    assert_eq!(
        rt.block_on(a.routes.owned()).unwrap(),
        vec![Route::to_local_pod(pod_a, host_a)],
        "the route via the deleted device is gone"
    );
    let out = run("ip", &["-n", &lab.name("a"), "link", "show", DEVICE_NAME]);
    assert!(!out.status.success());
    assert!(!lab.ping("pa", pod_b, 1));
}

#[test]
fn ensure_device_fixes_drift_in_place_and_recreates_on_identity_changes() {
    let mut lab = Lab::new("dev");
    lab.two_nodes(31);
    let rt = runtime();
    let _guard = rt.enter();
    let vx = Vxlan::in_netns(&lab.path("a")).unwrap();
    let ul0 = lab.ifindex("a", "ul0");
    let mut spec = VxlanSpec::new(addr("198.18.31.1"), ul0, 1500, net("10.244.1.0/24"));

    assert!(rt.block_on(vx.device(DEVICE_NAME)).unwrap().is_none());
    assert!(!rt.block_on(vx.delete_device(DEVICE_NAME)).unwrap());
    let idx = rt.block_on(vx.ensure_device(&spec)).unwrap();
    let state = rt.block_on(vx.device(DEVICE_NAME)).unwrap().unwrap();
    assert_eq!(state.ifindex, idx);
    assert!(state.is_vxlan);
    assert_eq!(state.vni, Some(4096));
    assert_eq!(state.port, Some(4789));
    assert_eq!(state.local, Some(addr("198.18.31.1")));
    assert_eq!(state.uplink_ifindex, Some(ul0));
    assert!(!state.learning);
    assert_eq!(state.mtu, Some(1450));
    assert_eq!(state.mac, Some(vxlan::vtep_mac(addr("198.18.31.1"))));
    assert!(state.up);
    assert_eq!(state.addresses, vec![net("10.244.1.0/32")]);
    assert_eq!(
        vxlan::plan_device(&spec, Some(&state)),
        vxlan::DevicePlan::Update(Default::default())
    );
    assert_eq!(rt.block_on(vx.ensure_device(&spec)).unwrap(), idx);

    // Drift that can be fixed in place is fixed in place.
    lab.ip(
        "a",
        &[
            "link",
            "set",
            DEVICE_NAME,
            "down",
            "mtu",
            "1400",
            "address",
            "02:00:00:00:00:01",
        ],
    );
    lab.ip("a", &["addr", "del", "10.244.1.0/32", "dev", DEVICE_NAME]);
    lab.ip("a", &["addr", "add", "10.9.9.9/24", "dev", DEVICE_NAME]);
    assert_eq!(rt.block_on(vx.ensure_device(&spec)).unwrap(), idx);
    assert_eq!(rt.block_on(vx.device(DEVICE_NAME)).unwrap().unwrap(), state);

    // A new pod CIDR moves the VTEP address.
    spec.vtep_ip = vxlan::vtep_ip(net("10.244.7.0/24"));
    assert_eq!(rt.block_on(vx.ensure_device(&spec)).unwrap(), idx);
    let moved = rt.block_on(vx.device(DEVICE_NAME)).unwrap().unwrap();
    assert_eq!(moved.addresses, vec![net("10.244.7.0/32")]);

    // Identity changes recreate.
    let recreated = |spec: &VxlanSpec, before: u32, what: &str| -> u32 {
        let idx = rt.block_on(vx.ensure_device(spec)).unwrap();
        assert_ne!(idx, before, "{what} recreates");
        let state = rt.block_on(vx.device(DEVICE_NAME)).unwrap().unwrap();
        assert_eq!(
            vxlan::plan_device(spec, Some(&state)),
            vxlan::DevicePlan::Update(Default::default()),
            "{what}: {state:?}"
        );
        idx
    };
    lab.ip("a", &["addr", "add", "198.18.31.3/24", "dev", "ul0"]);
    spec.local = addr("198.18.31.3");
    spec.mac = vxlan::vtep_mac(spec.local);
    let last = recreated(&spec, idx, "local");
    spec.port = 8472;
    let last = recreated(&spec, last, "port");
    spec.vni = 1;
    let last = recreated(&spec, last, "vni");
    lab.ip(
        "a",
        &["link", "add", "ul9", "type", "veth", "peer", "name", "ul9p"],
    );
    lab.ip("a", &["link", "set", "ul9", "up"]);
    spec.uplink_ifindex = lab.ifindex("a", "ul9");
    recreated(&spec, last, "uplink");
    // Learning on, made by hand.
    lab.ip("a", &["link", "del", DEVICE_NAME]);
    lab.ip(
        "a",
        &[
            "link",
            "add",
            DEVICE_NAME,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "198.18.31.3",
            "dev",
            "ul9",
            "dstport",
            "8472",
            "learning",
        ],
    );
    recreated(&spec, lab.ifindex("a", DEVICE_NAME), "learning");
    // Not a vxlan device at all.
    lab.ip("a", &["link", "del", DEVICE_NAME]);
    lab.ip(
        "a",
        &[
            "link",
            "add",
            DEVICE_NAME,
            "type",
            "veth",
            "peer",
            "name",
            "stray0",
        ],
    );
    recreated(&spec, lab.ifindex("a", DEVICE_NAME), "another kind");
    let link = lab.ip("a", &["-d", "link", "show", DEVICE_NAME]);
    assert!(
        link.contains("vxlan id 1 local 198.18.31.3 dev ul9"),
        "{link}"
    );
    assert!(link.contains("dstport 8472"), "{link}");

    assert!(rt.block_on(vx.delete_device(DEVICE_NAME)).unwrap());
    assert!(rt.block_on(vx.device(DEVICE_NAME)).unwrap().is_none());
}

#[test]
fn fdb_and_neighbour_entries_follow_the_peers_exactly() {
    let mut lab = Lab::new("fdb");
    lab.two_nodes(32);
    let rt = runtime();
    let _guard = rt.enter();
    let vx = Vxlan::in_netns(&lab.path("a")).unwrap();
    let spec = VxlanSpec::new(
        addr("198.18.32.1"),
        lab.ifindex("a", "ul0"),
        1500,
        net("10.244.1.0/24"),
    );
    let idx = rt.block_on(vx.ensure_device(&spec)).unwrap();
    let p2 = VxlanPeer::new(addr("198.18.32.2"), net("10.244.2.0/24"));
    let p3 = VxlanPeer::new(addr("198.18.32.3"), net("10.244.3.0/24"));
    let mut peers = vec![p2, p3];

    let check = |peers: &[VxlanPeer]| {
        let mut fdb: Vec<FdbEntry> = peers.iter().map(VxlanPeer::fdb_entry).collect();
        fdb.sort_by_key(|e| (e.mac.0, e.remote));
        fdb.dedup();
        let mut neigh: Vec<NeighbourEntry> = peers.iter().map(VxlanPeer::neighbour_entry).collect();
        neigh.sort_by_key(|e| (e.ip, e.mac.0));
        assert_eq!(rt.block_on(vx.fdb(idx)).unwrap(), fdb);
        assert_eq!(rt.block_on(vx.neighbours(idx)).unwrap(), neigh);
    };

    let plan = rt.block_on(vx.sync_peers(idx, &peers)).unwrap();
    assert_eq!(plan.fdb_set.len(), 2);
    check(&peers);
    assert!(rt.block_on(vx.sync_peers(idx, &peers)).unwrap().is_empty());

    // Pod CIDR 10.244.3.0/24 moves to the node at 198.18.32.4.
    peers[1] = VxlanPeer::new(addr("198.18.32.4"), net("10.244.3.0/24"));
    let plan = rt.block_on(vx.sync_peers(idx, &peers)).unwrap();
    assert_eq!(plan.neighbour_set, vec![peers[1].neighbour_entry()]);
    assert!(plan.neighbour_remove.is_empty());
    check(&peers);

    // Entries someone else put on Weft's device go; non-permanent
    // neighbour entries are the kernel's and are left alone.
    let a = lab.name("a");
    // Two remotes on the all-zeros (flood) entry, and p2's MAC pointed
    // elsewhere (a unicast MAC has one remote: `append` would be ignored).
    for args in [
        [
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            DEVICE_NAME,
            "dst",
            "198.18.32.76",
        ],
        [
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            DEVICE_NAME,
            "dst",
            "198.18.32.77",
        ],
        [
            "fdb",
            "replace",
            "02:57:c6:12:20:02",
            "dev",
            DEVICE_NAME,
            "dst",
            "198.18.32.78",
        ],
    ] {
        let mut all = vec!["-n", a.as_str()];
        all.extend_from_slice(&args);
        let out = run("bridge", &all);
        assert!(out.status.success(), "bridge {args:?}: {out:?}");
    }
    lab.ip(
        "a",
        &[
            "neigh",
            "add",
            "10.244.9.0",
            "lladdr",
            "02:57:00:00:00:09",
            "dev",
            DEVICE_NAME,
            "nud",
            "permanent",
        ],
    );
    lab.ip(
        "a",
        &[
            "neigh",
            "add",
            "10.244.8.0",
            "lladdr",
            "02:57:00:00:00:08",
            "dev",
            DEVICE_NAME,
            "nud",
            "stale",
        ],
    );
    assert_eq!(rt.block_on(vx.fdb(idx)).unwrap().len(), 4);
    let plan = rt.block_on(vx.sync_peers(idx, &peers)).unwrap();
    assert_eq!(plan.fdb_set, vec![p2.fdb_entry()], "{plan:?}");
    assert_eq!(plan.fdb_remove.len(), 3, "{plan:?}");
    assert_eq!(plan.neighbour_remove.len(), 1, "{plan:?}");
    check(&peers);
    let neigh = lab.ip("a", &["neigh", "show", "dev", DEVICE_NAME]);
    assert!(neigh.contains("10.244.8.0"), "{neigh}");
    assert!(!neigh.contains("10.244.9.0"), "{neigh}");

    // Removing what is not there is not an error.
    let gone = VxlanPeer::new(addr("198.18.32.99"), net("10.244.99.0/24"));
    assert!(!rt.block_on(vx.remove_fdb(idx, &gone.fdb_entry())).unwrap());
    assert!(!rt.block_on(vx.remove_neighbour(idx, gone.vtep_ip)).unwrap());
    assert!(rt.block_on(vx.remove_fdb(idx, &p2.fdb_entry())).unwrap());
    assert!(rt.block_on(vx.remove_neighbour(idx, p2.vtep_ip)).unwrap());
    check(&peers[1..]);

    // And back to nothing.
    rt.block_on(vx.sync_peers(idx, &[])).unwrap();
    check(&[]);

    // The same through the agent's entry points on a `Netlink` connection.
    let netlink = Netlink::in_netns(&lab.path("a")).unwrap();
    assert_eq!(rt.block_on(netlink.ensure_vxlan(&spec)).unwrap(), idx);
    let plan = rt
        .block_on(netlink.sync_vxlan_peers(idx, &[(p2.underlay, p2.vtep_ip)]))
        .unwrap();
    assert_eq!(plan.fdb_set, vec![p2.fdb_entry()]);
    check(&[p2]);
    assert!(
        rt.block_on(netlink.sync_vxlan_peers(idx, &[(p2.underlay, p2.vtep_ip)]))
            .unwrap()
            .is_empty()
    );
    assert!(rt.block_on(netlink.delete_vxlan(DEVICE_NAME)).unwrap());
    assert!(!rt.block_on(netlink.delete_vxlan(DEVICE_NAME)).unwrap());
}
