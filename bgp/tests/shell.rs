//! The tokio shell on a real kernel: two speakers, each in its own network
//! namespace (a tokio runtime on a thread that entered it), joined by a veth
//! pair, peering iBGP in AS 64512 over 198.18.9.0/24. Needs root.
//!
//! Set RUST_LOG=weft_bgp=debug to watch the sessions.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use weft_bgp::rib::BestRoute;
use weft_bgp::session::{GracefulRestartConfig, State};
use weft_bgp::shell::{BgpHandle, PeerSpec, ShellConfig, ShellError, ShellEvent, spawn};
use weft_bgp::speaker::{PeerConfig, SpeakerConfig};

mod support;
use support::Pair;

const AS: u32 = 64512;
const PORT: u16 = 1179;
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);

fn pod_cidr() -> IpNetwork {
    "10.244.1.0/24".parse().unwrap()
}

/// Pair::new plus RUST_LOG output for the test.
fn pair(tag: &str) -> Pair {
    init_tracing();
    Pair::new(tag)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Established TCP connections in namespace `ns`.
fn tcp_connections(ns: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// One speaker: a shell on its own runtime, on a thread inside a network
/// namespace. Dropping the node drops the runtime with every task, as if
/// the process crashed.
struct Node {
    handle: BgpHandle,
    events: UnboundedReceiver<ShellEvent>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn try_start(ns: &str, config: ShellConfig) -> std::io::Result<Node> {
        let netns = File::open(format!("/run/netns/{ns}")).unwrap();
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let spawned = spawn(config, tx).await.map(|handle| (handle, rx));
                let ok = spawned.is_ok();
                ready.send(spawned).unwrap();
                if ok {
                    let _ = stopped.await;
                }
            });
        });
        match started.recv().unwrap() {
            Ok((handle, events)) => Ok(Node {
                handle,
                events,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                thread.join().unwrap();
                Err(e)
            }
        }
    }

    fn start(ns: &str, config: ShellConfig) -> Node {
        Node::try_start(ns, config).expect("the shell starts")
    }

    /// Drops the node's runtime with the speaker's task and its sockets.
    fn crash(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    async fn established(&self) -> bool {
        let peers = self.handle.peers().await.unwrap();
        !peers.is_empty() && peers.iter().all(|p| p.state == State::Established)
    }

    async fn learned(&self, prefix: IpNetwork) -> Option<BestRoute> {
        self.handle
            .learned_routes()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.prefix == prefix)
    }

    /// The next event that `wanted` matches, skipping others.
    async fn next_event(
        &mut self,
        within: Duration,
        wanted: impl Fn(&ShellEvent) -> bool,
    ) -> ShellEvent {
        let found = tokio::time::timeout(within, async {
            loop {
                let event = self.events.recv().await.expect("the shell sends events");
                if wanted(&event) {
                    return event;
                }
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no such event within {within:?}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.crash();
    }
}

fn config(me: Ipv4Addr, graceful_restart: Option<GracefulRestartConfig>) -> ShellConfig {
    let mut speaker = SpeakerConfig::new(AS, me);
    speaker.hold_time = 9;
    speaker.connect_retry = Duration::from_secs(1);
    speaker.graceful_restart = graceful_restart;
    ShellConfig {
        speaker,
        listen: SocketAddr::new(me.into(), PORT),
        peer_port: PORT,
    }
}

fn peer(me: Ipv4Addr, other: Ipv4Addr, password: Option<&str>) -> PeerSpec {
    PeerSpec {
        config: PeerConfig {
            address: other.into(),
            asn: AS,
            local_address: me,
            rr_client: false,
            passive: false,
        },
        password: password.map(String::from),
    }
}

/// Polls `probe` until it returns `Some`.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn peered(a: &Node, b: &Node) {
    eventually(
        "both sessions Established",
        Duration::from_secs(5),
        async || (a.established().await && b.established().await).then_some(()),
    )
    .await;
}

fn is_route(event: &ShellEvent, present: bool) -> bool {
    matches!(event, ShellEvent::Route(c) if c.prefix == pod_cidr() && c.best.is_some() == present)
}

fn is_down(event: &ShellEvent) -> bool {
    matches!(event, ShellEvent::PeerDown { .. })
}

#[tokio::test]
async fn routes_flow_and_shut_down_sends_a_cease() {
    let start = Instant::now();
    let pair = pair("flow");
    let a = Node::start(&pair.a, config(A, None));
    let mut b = Node::start(&pair.b, config(B, None));
    a.handle.set_peers(vec![peer(A, B, None)]).await.unwrap();
    b.handle.set_peers(vec![peer(B, A, None)]).await.unwrap();
    peered(&a, &b).await;
    b.next_event(
        Duration::from_secs(1),
        |e| matches!(e, ShellEvent::PeerUp { address } if *address == IpAddr::V4(A)),
    )
    .await;

    a.handle.originate(pod_cidr()).await.unwrap();
    let ShellEvent::Route(change) = b
        .next_event(Duration::from_secs(2), |e| is_route(e, true))
        .await
    else {
        unreachable!()
    };
    let best = change.best.unwrap();
    assert_eq!(best.next_hop, IpAddr::V4(A));
    assert!(best.from.is_some() && !best.stale);
    let learned = b.handle.learned_routes().await.unwrap();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(
        (learned[0].prefix, learned[0].next_hop),
        (pod_cidr(), IpAddr::V4(A))
    );
    assert!(
        a.handle.learned_routes().await.unwrap().is_empty(),
        "A's own route is not a learned one"
    );
    assert!(a.handle.synchronized().await.unwrap() && b.handle.synchronized().await.unwrap());

    a.handle.withdraw(pod_cidr()).await.unwrap();
    b.next_event(Duration::from_secs(2), |e| is_route(e, false))
        .await;
    assert!(b.handle.learned_routes().await.unwrap().is_empty());

    a.handle.originate(pod_cidr()).await.unwrap();
    b.next_event(Duration::from_secs(2), |e| is_route(e, true))
        .await;

    let shutting = Instant::now();
    a.handle.shut_down().await.unwrap();
    let took = shutting.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "shut_down took {took:?}"
    );
    assert!(matches!(a.handle.peers().await, Err(ShellError::Stopped)));
    let ShellEvent::PeerDown {
        address,
        reason,
        graceful,
    } = b.next_event(Duration::from_secs(2), is_down).await
    else {
        unreachable!()
    };
    assert_eq!(address, IpAddr::V4(A));
    assert!(!graceful);
    assert!(
        reason.contains("NOTIFICATION 6/2"),
        "Cease/Administrative Shutdown expected: {reason}"
    );
    b.next_event(Duration::from_secs(1), |e| is_route(e, false))
        .await;
    assert!(b.handle.learned_routes().await.unwrap().is_empty());
    println!("flow: shut_down took {took:?}, test {:?}", start.elapsed());
}

#[tokio::test]
async fn graceful_restart_keeps_routes_until_the_peer_is_back_or_its_restart_time_passes() {
    let start = Instant::now();
    let restart_time = 4;
    let gr = GracefulRestartConfig {
        restart_time,
        restarting: false,
        forwarding_preserved: false,
        stale_routes_time: Duration::from_secs(5),
    };
    let pair = pair("gr");
    let mut a = Node::start(&pair.a, config(A, Some(gr.clone())));
    let mut b = Node::start(&pair.b, config(B, Some(gr.clone())));
    a.handle.set_peers(vec![peer(A, B, None)]).await.unwrap();
    b.handle.set_peers(vec![peer(B, A, None)]).await.unwrap();
    peered(&a, &b).await;
    a.handle.originate(pod_cidr()).await.unwrap();
    b.next_event(Duration::from_secs(2), |e| is_route(e, true))
        .await;

    // A crashes: B keeps the route as stale.
    a.crash();
    let ShellEvent::PeerDown {
        graceful, reason, ..
    } = b.next_event(Duration::from_secs(2), is_down).await
    else {
        unreachable!()
    };
    assert!(
        graceful,
        "a lost connection with graceful restart is graceful: {reason}"
    );
    let kept = b
        .learned(pod_cidr())
        .await
        .expect("the route is kept while A restarts");
    assert!(kept.stale && kept.next_hop == IpAddr::V4(A));

    // A comes back with its forwarding state, re-advertises and sends
    // End-of-RIB: the route is fresh again and was never removed.
    let restarted = GracefulRestartConfig {
        restarting: true,
        forwarding_preserved: true,
        ..gr.clone()
    };
    let mut a = Node::start(&pair.a, config(A, Some(restarted)));
    a.handle.originate(pod_cidr()).await.unwrap();
    a.handle.set_peers(vec![peer(A, B, None)]).await.unwrap();
    let event = b
        .next_event(Duration::from_secs(3), |e| {
            matches!(e, ShellEvent::PeerUp { .. }) || is_route(e, false)
        })
        .await;
    assert!(
        matches!(event, ShellEvent::PeerUp { .. }),
        "the route was removed during A's restart: {event:?}"
    );
    let fresh = eventually(
        "the route refreshed by A",
        Duration::from_secs(3),
        async || b.learned(pod_cidr()).await.filter(|r| !r.stale),
    )
    .await;
    assert_eq!(fresh.next_hop, IpAddr::V4(A));
    eventually("End-of-RIB both ways", Duration::from_secs(2), async || {
        (a.handle.synchronized().await.unwrap() && b.handle.synchronized().await.unwrap())
            .then_some(())
    })
    .await;
    while let Ok(event) = b.events.try_recv() {
        assert!(
            !is_route(&event, false),
            "the route was removed during A's restart: {event:?}"
        );
    }

    // A crashes for good: the stale route goes when the restart time passes.
    a.crash();
    let ShellEvent::PeerDown { graceful, .. } = b.next_event(Duration::from_secs(2), is_down).await
    else {
        unreachable!()
    };
    assert!(graceful);
    let down = Instant::now();
    assert!(b.learned(pod_cidr()).await.is_some_and(|r| r.stale));
    b.next_event(Duration::from_secs(u64::from(restart_time) + 2), |e| {
        is_route(e, false)
    })
    .await;
    let kept_for = down.elapsed();
    assert!(
        kept_for >= Duration::from_secs(u64::from(restart_time)) - Duration::from_millis(500),
        "the stale route went after {kept_for:?}, before the restart time"
    );
    assert!(b.learned(pod_cidr()).await.is_none());
    println!(
        "graceful restart: stale route kept {kept_for:?}, test {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn md5_with_the_same_password_comes_up_and_a_removed_peer_gets_a_cease() {
    let start = Instant::now();
    let pair = pair("md5ok");
    let mut a = Node::start(&pair.a, config(A, None));
    let b = Node::start(&pair.b, config(B, None));
    // Both at once: the two speakers usually connect to each other and the
    // collision leaves one connection.
    let (ra, rb) = tokio::join!(
        a.handle.set_peers(vec![peer(A, B, Some("weft-secret"))]),
        b.handle.set_peers(vec![peer(B, A, Some("weft-secret"))]),
    );
    ra.unwrap();
    rb.unwrap();
    peered(&a, &b).await;
    eventually(
        "one TCP connection left",
        Duration::from_secs(3),
        async || (tcp_connections(&pair.a) == 1).then_some(()),
    )
    .await;

    b.handle.set_peers(vec![]).await.unwrap();
    assert!(b.handle.peers().await.unwrap().is_empty());
    // Skips an earlier Cease/Connection Collision Resolution (6/7): when one
    // side is Established before the other resolves the collision, the
    // session flaps once.
    let deconfigured = |e: &ShellEvent| matches!(e, ShellEvent::PeerDown { reason, .. } if reason.contains("NOTIFICATION 6/3"));
    let ShellEvent::PeerDown { graceful, .. } =
        a.next_event(Duration::from_secs(2), deconfigured).await
    else {
        unreachable!()
    };
    assert!(!graceful);

    // Wanted again: it comes back (the listener has its key again).
    b.handle
        .set_peers(vec![peer(B, A, Some("weft-secret"))])
        .await
        .unwrap();
    peered(&a, &b).await;
    println!("md5: test {:?}", start.elapsed());
}

#[tokio::test]
async fn a_large_table_goes_across_and_the_session_stays_up_on_keepalives() {
    let pair = pair("keep");
    let mut short = config(A, None);
    short.speaker.hold_time = 3;
    let mut a = Node::start(&pair.a, short);
    let b = Node::start(&pair.b, config(B, None));
    // A table of many UPDATEs, sent when the session comes up: batched
    // writes, messages split across reads.
    let table = 5000;
    for i in 0..table {
        let prefix = IpNetwork::V4(
            ipnetwork::Ipv4Network::new(Ipv4Addr::from(0x0a80_0000 + (i << 8)), 24).unwrap(),
        );
        a.handle.originate(prefix).await.unwrap();
    }
    // A waits for B: no collision that could flap the session at the start.
    let mut passive = peer(A, B, None);
    passive.config.passive = true;
    let started = Instant::now();
    a.handle.set_peers(vec![passive]).await.unwrap();
    b.handle.set_peers(vec![peer(B, A, None)]).await.unwrap();
    peered(&a, &b).await;
    eventually(
        "the whole table learned",
        Duration::from_secs(5),
        async || (b.handle.learned_routes().await.unwrap().len() == table as usize).then_some(()),
    )
    .await;
    assert!(
        b.handle
            .learned_routes()
            .await
            .unwrap()
            .iter()
            .all(|r| r.next_hop == IpAddr::V4(A))
    );
    println!(
        "{table} routes learned {:?} after configuring the peers",
        started.elapsed()
    );
    let since = a.handle.peers().await.unwrap()[0].established_since;
    // Nothing but KEEPALIVEs for more than the hold time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(a.established().await && b.established().await);
    assert_eq!(
        a.handle.peers().await.unwrap()[0].established_since,
        since,
        "the session never flapped"
    );
    while let Ok(event) = a.events.try_recv() {
        assert!(!is_down(&event), "{event:?}");
    }
}

#[tokio::test]
async fn md5_with_different_passwords_never_comes_up() {
    let pair = pair("md5bad");
    let mut a = Node::start(&pair.a, config(A, None));
    let b = Node::start(&pair.b, config(B, None));
    a.handle
        .set_peers(vec![peer(A, B, Some("one password"))])
        .await
        .unwrap();
    b.handle
        .set_peers(vec![peer(B, A, Some("another password"))])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for node in [&a, &b] {
        for status in node.handle.peers().await.unwrap() {
            assert!(
                matches!(status.state, State::Connect | State::Active | State::Idle),
                "no segment should get through: {status:?}"
            );
        }
    }
    while let Ok(event) = a.events.try_recv() {
        assert!(!matches!(event, ShellEvent::PeerUp { .. }), "{event:?}");
    }
}

#[tokio::test]
async fn spawn_fails_when_the_address_is_taken_and_bad_keys_are_reported() {
    let pair = pair("taken");
    let a = Node::start(&pair.a, config(A, None));
    let Err(e) = Node::try_start(&pair.a, config(A, None)) else {
        panic!("a second shell bound the same address")
    };
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);

    let long = "x".repeat(81);
    let result = a.handle.set_peers(vec![peer(A, B, Some(&long))]).await;
    assert!(
        matches!(result, Err(ShellError::Md5Key { .. })),
        "{result:?}"
    );
    assert_eq!(
        a.handle.peers().await.unwrap().len(),
        1,
        "the peer is configured anyway"
    );
}
