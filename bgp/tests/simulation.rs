//! A deterministic simulation of many speakers driven by the core alone:
//! real sessions exchanging real bytes over a simulated network (1 ms
//! latency) in simulated time. Each speaker originates its own /24; the
//! test checks every Loc-RIB ends with every other speaker's prefix via the
//! right next hop, and prints the message count and the wall time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use weft_bgp::rib::PeerId;
use weft_bgp::session::{Direction, Event};
use weft_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig, SpeakerOutput};

const LATENCY: Duration = Duration::from_millis(1);
const AS: u32 = 64512;

fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn pod_cidr(i: usize) -> IpNetwork {
    format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
        .parse()
        .unwrap()
}

fn flip(d: Direction) -> Direction {
    match d {
        Direction::Outgoing => Direction::Incoming,
        Direction::Incoming => Direction::Outgoing,
    }
}

/// What the network delivers to speaker `to`, about its peer at `from`.
enum Delivery {
    /// Our connection attempt reached the other side (it accepts or refuses).
    Dial { from: usize },
    Event {
        from: usize,
        direction: Direction,
        kind: Kind,
    },
}

enum Kind {
    Succeeded,
    Fails,
    Bytes(Vec<u8>),
}

struct Net {
    speakers: Vec<Speaker>,
    /// (speaker, peer address) → the speaker's PeerId for that peer.
    ids: Vec<BTreeMap<usize, PeerId>>,
    by_address: BTreeMap<Ipv4Addr, usize>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    deliveries: BTreeMap<u64, Delivery>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    messages: u64,
    now: Instant,
}

impl Net {
    /// `peers_of(i)` lists speaker i's peers as (index, is a reflection client of i).
    fn new(n: usize, reflectors: &[usize], peers_of: impl Fn(usize) -> Vec<(usize, bool)>) -> Net {
        let now = Instant::now();
        let mut net = Net {
            speakers: Vec::new(),
            ids: vec![BTreeMap::new(); n],
            by_address: (0..n).map(|i| (address(i), i)).collect(),
            queue: BinaryHeap::new(),
            deliveries: BTreeMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            messages: 0,
            now,
        };
        for i in 0..n {
            let mut config = SpeakerConfig::new(AS, address(i));
            config.connect_retry = Duration::from_secs(2);
            if reflectors.contains(&i) {
                config.cluster_id = Some(address(i));
            }
            net.speakers.push(Speaker::new(config));
        }
        for i in 0..n {
            for (j, rr_client) in peers_of(i) {
                let id = net.speakers[i].add_peer(
                    now,
                    PeerConfig {
                        address: IpAddr::V4(address(j)),
                        asn: AS,
                        local_address: address(i),
                        rr_client,
                        passive: false,
                    },
                );
                net.ids[i].insert(j, id);
            }
            net.speakers[i].originate(now, pod_cidr(i));
            net.drain(i);
        }
        net
    }

    fn send(&mut self, to: usize, delivery: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + LATENCY, self.seq, to)));
        self.deliveries.insert(self.seq, delivery);
    }

    fn index_of(&self, speaker: usize, peer: PeerId) -> usize {
        let address = self.speakers[speaker].peer_config(peer).unwrap().address;
        let IpAddr::V4(a) = address else {
            unreachable!()
        };
        self.by_address[&a]
    }

    /// Carries out speaker i's outputs and re-arms its timer.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.speakers[i].poll_output() {
            match out {
                SpeakerOutput::Connect { peer, .. } => {
                    let j = self.index_of(i, peer);
                    self.send(j, Delivery::Dial { from: i });
                }
                SpeakerOutput::Transmit {
                    peer,
                    direction,
                    bytes,
                } => {
                    let j = self.index_of(i, peer);
                    self.messages += 1;
                    self.send(
                        j,
                        Delivery::Event {
                            from: i,
                            direction: flip(direction),
                            kind: Kind::Bytes(bytes),
                        },
                    );
                }
                SpeakerOutput::Disconnect { peer, direction } => {
                    let j = self.index_of(i, peer);
                    self.send(
                        j,
                        Delivery::Event {
                            from: i,
                            direction: flip(direction),
                            kind: Kind::Fails,
                        },
                    );
                }
                SpeakerOutput::Route(_)
                | SpeakerOutput::PeerUp { .. }
                | SpeakerOutput::PeerDown { .. } => {}
            }
        }
        if let Some(t) = self.speakers[i].poll_timeout() {
            self.timers.push(Reverse((t, i)));
        }
    }

    fn deliver(&mut self, to: usize, delivery: Delivery) {
        let now = self.now;
        match delivery {
            Delivery::Dial { from } => {
                let id = self.ids[to][&from];
                let accepted = self.speakers[to].connection_event(
                    now,
                    id,
                    Direction::Incoming,
                    Event::TcpConnectionConfirmed,
                );
                let kind = if accepted {
                    Kind::Succeeded
                } else {
                    Kind::Fails
                };
                self.send(
                    from,
                    Delivery::Event {
                        from: to,
                        direction: Direction::Outgoing,
                        kind,
                    },
                );
            }
            Delivery::Event {
                from,
                direction,
                kind,
            } => {
                let id = self.ids[to][&from];
                let event = match &kind {
                    Kind::Succeeded => Event::TcpConnectionSucceeded,
                    Kind::Fails => Event::TcpConnectionFails,
                    Kind::Bytes(b) => Event::BytesReceived(b),
                };
                self.speakers[to].connection_event(now, id, direction, event);
            }
        }
        self.drain(to);
    }

    /// Runs until nothing is in flight and every Loc-RIB is complete, or
    /// `limit` of simulated time passes.
    fn run(&mut self, limit: Duration) -> Duration {
        let start = self.now;
        loop {
            if self.queue.is_empty() && self.converged() {
                return self.now - start;
            }
            assert!(
                self.now - start < limit,
                "no convergence within {limit:?} of simulated time"
            );
            let next_delivery = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let delivery_first = match (next_delivery, next_timer) {
                (None, None) => panic!("nothing left to happen but the Loc-RIBs are incomplete"),
                (Some(d), Some(t)) => d <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if delivery_first {
                let Reverse((t, seq, to)) = self.queue.pop().unwrap();
                self.now = t;
                let delivery = self.deliveries.remove(&seq).unwrap();
                self.deliver(to, delivery);
            } else {
                let Reverse((t, i)) = self.timers.pop().unwrap();
                // Stale entries: the speaker re-armed a different deadline.
                if self.speakers[i].poll_timeout() != Some(t) {
                    continue;
                }
                self.now = self.now.max(t);
                self.speakers[i].handle_timeout(self.now);
                self.drain(i);
            }
        }
    }

    fn converged(&self) -> bool {
        let n = self.speakers.len();
        (0..n).all(|i| {
            let rib = self.speakers[i].rib();
            (0..n).filter(|j| *j != i).all(|j| {
                rib.best(pod_cidr(j))
                    .is_some_and(|b| b.next_hop == IpAddr::V4(address(j)))
            })
        })
    }
}

fn report(name: &str, net: &Net, simulated: Duration, wall: Duration) {
    println!(
        "{name}: {} speakers converged: {} messages, {:.0} ms simulated, {:.2} s wall",
        net.speakers.len(),
        net.messages,
        simulated.as_secs_f64() * 1e3,
        wall.as_secs_f64()
    );
}

#[test]
fn full_mesh_of_50_converges() {
    let n = 50;
    let wall = Instant::now();
    let mut net = Net::new(n, &[], |i| {
        (0..n).filter(|j| *j != i).map(|j| (j, false)).collect()
    });
    let simulated = net.run(Duration::from_secs(120));
    report("full mesh", &net, simulated, wall.elapsed());
}

#[test]
fn cluster_of_500_with_two_route_reflectors_converges() {
    let n = 500;
    let reflectors = [0, 1];
    let wall = Instant::now();
    let mut net = Net::new(n, &reflectors, |i| {
        if reflectors.contains(&i) {
            // A reflector peers with every client and with the other reflector.
            (0..n)
                .filter(|j| *j != i)
                .map(|j| (j, !reflectors.contains(&j)))
                .collect()
        } else {
            reflectors.iter().map(|r| (*r, false)).collect()
        }
    });
    let simulated = net.run(Duration::from_secs(120));
    report("two route reflectors", &net, simulated, wall.elapsed());
}
