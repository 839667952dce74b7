//! Several RIBs wired directly, without sessions: each RIB's outgoing
//! UPDATEs are fed, in FIFO order, to the addressed RIB's `update`. Checks
//! that full meshes and route reflection converge to every node knowing
//! every other node's prefix with the originator as next hop.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnetwork::IpNetwork;

use super::*;

const AS: u32 = 64512;

/// Node `i`'s address (router id, session address and next hop).
fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0A00_0000 + i as u32 + 1)
}

/// Node `i`'s pod CIDR.
fn pod_cidr(i: usize) -> IpNetwork {
    IpNetwork::new(
        IpAddr::V4(Ipv4Addr::from(0xAC10_0000 + ((i as u32) << 8))),
        24,
    )
    .unwrap()
}

struct Net {
    ribs: Vec<Rib>,
    asns: Vec<u32>,
    queue: VecDeque<(usize, usize, Update)>,
    messages: usize,
    prefixes_carried: usize,
}

impl Net {
    fn new(n: usize, reflectors: &[usize], cluster: impl Fn(usize) -> Ipv4Addr) -> Net {
        Net::with_asns(vec![AS; n], reflectors, cluster)
    }

    fn with_asns(asns: Vec<u32>, reflectors: &[usize], cluster: impl Fn(usize) -> Ipv4Addr) -> Net {
        let ribs = (0..asns.len())
            .map(|i| {
                let mut config = RibConfig::new(asns[i], addr(i));
                if reflectors.contains(&i) {
                    config.cluster_id = Some(cluster(i));
                }
                Rib::new(config)
            })
            .collect();
        Net {
            ribs,
            asns,
            queue: VecDeque::new(),
            messages: 0,
            prefixes_carried: 0,
        }
    }

    fn send(&mut self, from: usize, changes: RibChanges) {
        for (to, u) in changes.outgoing {
            self.queue.push_back((from, to.0 as usize, u));
        }
    }

    fn info(&self, of: usize, on: usize, rr_client: bool) -> PeerInfo {
        PeerInfo {
            id: PeerId(of as u32),
            address: IpAddr::V4(addr(of)),
            local_address: addr(on),
            asn: self.asns[of],
            router_id: addr(of),
            rr_client,
        }
    }

    /// Brings up the session between `a` and `b`; `b_client`: `b` is a
    /// route reflection client of `a`.
    fn connect(&mut self, a: usize, b: usize, b_client: bool) {
        let info = self.info(b, a, b_client);
        let ch = self.ribs[a].peer_up(info);
        self.send(a, ch);
        let info = self.info(a, b, false);
        let ch = self.ribs[b].peer_up(info);
        self.send(b, ch);
    }

    fn originate_all(&mut self) {
        for i in 0..self.ribs.len() {
            let ch = self.ribs[i].originate(pod_cidr(i), None);
            self.send(i, ch);
        }
    }

    fn run(&mut self) {
        while let Some((from, to, u)) = self.queue.pop_front() {
            self.messages += 1;
            self.prefixes_carried += u.nlri.len() + u.withdrawn.len();
            let ch = self.ribs[to].update(PeerId(from as u32), &u);
            self.send(to, ch);
        }
    }

    /// Every node has every other node's prefix via that node's address,
    /// and its own as originated.
    fn assert_converged(&self, missing: &[usize]) {
        let n = self.ribs.len();
        for (i, rib) in self.ribs.iter().enumerate() {
            assert_eq!(rib.loc_rib().count(), n - missing.len(), "node {i}");
            for j in (0..n).filter(|j| !missing.contains(j)) {
                let best = rib
                    .best(pod_cidr(j))
                    .unwrap_or_else(|| panic!("node {i} lacks {}", pod_cidr(j)));
                if i == j {
                    assert_eq!(best.from, None);
                } else {
                    assert_eq!(
                        best.next_hop,
                        IpAddr::V4(addr(j)),
                        "node {i}, prefix of {j}"
                    );
                    assert!(best.ibgp);
                }
            }
        }
    }
}

fn full_mesh(n: usize, originate_first: bool) -> Net {
    let mut net = Net::new(n, &[], addr);
    if originate_first {
        net.originate_all();
    }
    for a in 0..n {
        for b in a + 1..n {
            net.connect(a, b, false);
        }
    }
    if !originate_first {
        net.originate_all();
    }
    net.run();
    net
}

#[test]
fn full_mesh_of_10_converges() {
    let net = full_mesh(10, false);
    net.assert_converged(&[]);
    // Each node tells each other node about its own prefix once; iBGP-learned
    // routes are not passed on.
    assert_eq!(net.messages, 10 * 9);
    // Already originated when sessions come up: the same, through peer_up.
    let net = full_mesh(10, true);
    net.assert_converged(&[]);
    assert_eq!(net.messages, 10 * 9);
}

/// Two reflectors (0 and 1, non-clients of each other), every other node a
/// client of both.
fn reflected(n: usize, shared_cluster: bool) -> Net {
    let cluster = |i| {
        if shared_cluster {
            Ipv4Addr::new(10, 255, 255, 1)
        } else {
            addr(i)
        }
    };
    let mut net = Net::new(n, &[0, 1], cluster);
    net.connect(0, 1, false);
    for c in 2..n {
        net.connect(0, c, true);
        net.connect(1, c, true);
    }
    net.originate_all();
    net.run();
    net
}

#[test]
fn two_reflectors_and_30_clients_converge() {
    for shared_cluster in [false, true] {
        let mut net = reflected(32, shared_cluster);
        net.assert_converged(&[]);
        let clients = 30;
        // Each client's prefix: 2 UPDATEs to the reflectors, which reflect it
        // to the 29 other clients and to each other; each reflector's own
        // prefix goes to the 31 others, and the other reflector reflects it
        // (from a non-client) to its 30 clients again.
        assert_eq!(
            net.messages,
            clients * (2 + 2 * (clients - 1 + 1)) + 2 * (31 + clients),
            "shared cluster: {shared_cluster}"
        );
        // Reflected routes carry the originator and the reflector's cluster.
        let best = net.ribs[5].best(pod_cidr(9)).unwrap();
        assert_eq!(best.attributes.originator_id, Some(addr(9)));
        assert_eq!(best.attributes.cluster_list.len(), 1);
        assert_eq!(
            best.from,
            Some(PeerId(0)),
            "equal paths: the lower peer address"
        );
        // A reflector keeps the client's own route, not its twin's
        // reflection (shorter CLUSTER_LIST); with a shared cluster id it
        // drops the reflection outright (RFC 4456 section 8).
        let at_rr1 = net.ribs[1].best(pod_cidr(9)).unwrap();
        assert_eq!(at_rr1.from, Some(PeerId(9)));
        let rejected = net.ribs[1].rejected_count(PeerId(0));
        assert_eq!(rejected, if shared_cluster { clients as u64 } else { 0 });

        // A client withdraws its prefix: gone everywhere.
        net.messages = 0;
        let ch = net.ribs[9].withdraw_originated(pod_cidr(9));
        net.send(9, ch);
        net.run();
        net.assert_converged(&[9]);
        if shared_cluster {
            // 2 withdrawals to the reflectors, each passing it to 29 clients
            // and the other reflector.
            assert_eq!(net.messages, 2 + 2 * 30);
        } else {
            // Path hunting: each reflector first falls back on its twin's
            // reflection (29 clients get it, the twin a withdrawal: split
            // horizon), then withdraws it to the 29 when the twin does.
            assert_eq!(net.messages, 2 + 2 * (29 + 1) + 2 * 29);
        }
    }
}

/// The scale the lead's simulation targets: 2 reflectors, 498 clients, each
/// originating a /24 (about half a million UPDATEs of one prefix each, as
/// everything is originated after the sessions are up).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "about 10 s unoptimized; run with --release (under 2 s)"
)]
fn two_reflectors_and_498_clients_converge_quickly() {
    let start = Instant::now();
    let net = reflected(500, false);
    let elapsed = start.elapsed();
    net.assert_converged(&[]);
    eprintln!(
        "500 speakers, 2 reflectors: {} UPDATEs ({} prefixes) in {:?}",
        net.messages, net.prefixes_carried, elapsed
    );
    assert_eq!(net.messages, 498 * (2 + 2 * 498) + 2 * (499 + 498));
}

/// eBGP and iBGP together: A (AS 65001) — B1 = B2 (AS 65002, iBGP) — C
/// (AS 65003), A peering with B1 and C with B2. Paths grow by one AS per
/// eBGP hop, next hops are the sending speaker's address (next hop self,
/// towards iBGP too by default), and no route loops back into its AS.
#[test]
fn ebgp_chain_through_an_ibgp_pair() {
    let (a, b1, b2, c) = (0, 1, 2, 3);
    let mut net = Net::with_asns(vec![65001, 65002, 65002, 65003], &[], addr);
    net.connect(a, b1, false);
    net.connect(b1, b2, false);
    net.connect(b2, c, false);
    net.originate_all();
    net.run();
    let seq = |asns: &[u32]| {
        Some(AsPath {
            segments: vec![crate::wire::AsSegment::Sequence(asns.to_vec())],
        })
    };
    let at_c = net.ribs[c].best(pod_cidr(a)).unwrap();
    assert_eq!(at_c.attributes.as_path, seq(&[65002, 65001]));
    assert_eq!(at_c.next_hop, IpAddr::V4(addr(b2)));
    let at_b2 = net.ribs[b2].best(pod_cidr(a)).unwrap();
    assert_eq!((at_b2.next_hop, at_b2.ibgp), (IpAddr::V4(addr(b1)), true));
    assert_eq!(at_b2.attributes.as_path, seq(&[65001]));
    let at_a = net.ribs[a].best(pod_cidr(c)).unwrap();
    assert_eq!(at_a.attributes.as_path, seq(&[65002, 65003]));
    assert_eq!(at_a.next_hop, IpAddr::V4(addr(b1)));
    // B1 and B2's own prefixes reach A with a one-AS path.
    assert_eq!(
        net.ribs[a].best(pod_cidr(b2)).unwrap().attributes.as_path,
        seq(&[65002])
    );
    for (i, rib) in net.ribs.iter().enumerate() {
        assert_eq!(rib.loc_rib().count(), 4, "node {i}");
    }
    // B1 never tells A about A's own prefix (sender-side loop avoidance).
    assert!(
        net.ribs[b1]
            .adj_rib_out(PeerId(a as u32))
            .all(|(p, _)| p != pod_cidr(a))
    );
}
