//! Two [`Peer`]s on a simulated network with simulated time: the one
//! harness for tests where both ends of a session run (collisions, a peer
//! that refuses connections until it is configured).
//!
//! Each end learns of each connection at a moment of its own, and what is
//! on its way to an end travels per connection, in order. [`Order`] says
//! which wire delivers next; timers run only when nothing is in flight.
//! Every run checks what must hold whatever the order: a connection that
//! loses a collision is never sent a KEEPALIVE just before its Cease, and
//! what each owner is told adds up (Up and Down alternate).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::collision::Peer;
use super::{Direction, Event, Output, SessionConfig, State};

/// Which of the wires with something in flight delivers next.
#[derive(Clone, Copy, Debug)]
pub(super) enum Order {
    /// In the order things were sent, as on a network with one latency.
    Sent,
    /// A seeded random wire each time, and sometimes every message already
    /// queued on it in one read (TCP may hand over OPEN, KEEPALIVE and a
    /// Cease at once).
    Seeded(u64),
}

enum Item {
    /// The connection is up at this end: `true` for the end that connected.
    Up(bool),
    Bytes(Vec<u8>),
    Closed,
}

/// One end of one connection: (side, that side's direction).
type End = (usize, Direction);

pub(super) struct Sim {
    pub peers: [Peer; 2],
    pub start: Instant,
    pub now: Instant,
    /// Per receiving end: what is on its way, in order, with the number
    /// it was sent as.
    wires: Vec<(End, VecDeque<(u64, Item)>)>,
    sent: u64,
    order: Order,
    rng: u64,
    /// What each owner was told (every output but Transmit), and when.
    pub told: [Vec<(Duration, Direction, Output)>; 2],
    /// Prints every delivery and output (for replaying one seed).
    pub trace: bool,
}

/// The same connection seen from the other end.
pub(super) fn flip(d: Direction) -> Direction {
    match d {
        Direction::Outgoing => Direction::Incoming,
        Direction::Incoming => Direction::Outgoing,
    }
}

impl Sim {
    /// Two peers, not started: `configs[0]` is side A, `configs[1]` side B.
    pub fn new(configs: [SessionConfig; 2], order: Order) -> Sim {
        let start = Instant::now();
        let seed = match order {
            Order::Sent => 0,
            Order::Seeded(seed) => seed,
        };
        Sim {
            peers: configs.map(Peer::new),
            start,
            now: start,
            wires: Vec::new(),
            sent: 0,
            order,
            rng: seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
            told: [Vec::new(), Vec::new()],
            trace: false,
        }
    }

    /// Starts side `side` (0: A, 1: B): configured from now on.
    pub fn start(&mut self, side: usize) {
        self.peers[side].start(self.now);
        self.flush();
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Both on one connection, Established, no collision left.
    pub fn converged(&self) -> bool {
        let p = &self.peers;
        p.iter()
            .all(|p| p.session().state() == State::Established && p.second().is_none())
            && p[0].session().direction().map(flip) == p[1].session().direction()
    }

    /// What side `side`'s owner was told, Connect left out.
    pub fn outputs(&self, side: usize) -> Vec<(Direction, Output)> {
        self.told[side]
            .iter()
            .filter(|(_, _, o)| *o != Output::Connect)
            .map(|(_, d, o)| (*d, o.clone()))
            .collect()
    }

    /// When side `side` was first told Established.
    pub fn established_at(&self, side: usize) -> Option<Duration> {
        self.told[side]
            .iter()
            .find(|(_, _, o)| matches!(o, Output::Established(_)))
            .map(|(t, _, _)| *t)
    }

    /// Session downs both owners were told of.
    pub fn downs(&self) -> usize {
        self.told
            .iter()
            .flatten()
            .filter(|(_, _, o)| matches!(o, Output::Down { .. }))
            .count()
    }

    /// Runs until both ends are Established on one connection, timers
    /// included. Panics when stuck or after an hour of virtual time.
    pub fn run_to_convergence(&mut self) {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "{}: no end in sight", self.name());
            if self.step() {
                continue;
            }
            if self.converged() {
                break;
            }
            let next = self.next_timer().unwrap_or_else(|| {
                panic!(
                    "{}: stuck with no timer: {:?}",
                    self.name(),
                    self.peers
                        .iter()
                        .map(|p| (p.session().state(), p.session().direction()))
                        .collect::<Vec<_>>()
                )
            });
            assert!(
                next - self.start < Duration::from_secs(3600),
                "{}: not converged after an hour",
                self.name()
            );
            self.advance(next);
        }
        self.check_told();
    }

    /// Runs everything in flight and every timer due before `start + until`,
    /// then sets the clock there.
    pub fn run_until(&mut self, until: Duration) {
        let until = self.start + until;
        loop {
            if self.step() {
                continue;
            }
            match self.next_timer() {
                Some(next) if next <= until => self.advance(next),
                _ => break,
            }
        }
        self.now = self.now.max(until);
    }

    fn name(&self) -> String {
        match self.order {
            Order::Sent => "in the order sent".to_string(),
            Order::Seeded(seed) => format!("seed {seed}"),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.peers.iter().filter_map(Peer::poll_timeout).min()
    }

    fn advance(&mut self, to: Instant) {
        self.now = self.now.max(to);
        for p in &mut self.peers {
            p.handle_timeout(self.now);
        }
        self.flush();
    }

    fn push(&mut self, end: End, item: Item) {
        self.sent += 1;
        let sent = self.sent;
        match self.wires.iter_mut().find(|(e, _)| *e == end) {
            Some((_, q)) => q.push_back((sent, item)),
            None => self.wires.push((end, [(sent, item)].into())),
        }
    }

    /// Carries every output of both peers onto the wires, or to the record.
    fn flush(&mut self) {
        for from in 0..2 {
            // Per connection, the type of what this batch last wrote.
            let mut last_sent: Vec<(Direction, u8)> = Vec::new();
            while let Some((d, o)) = self.peers[from].poll_output() {
                if let Output::Transmit(bytes) = &o {
                    let kind = bytes.get(18).copied().unwrap_or(0);
                    let previous = last_sent
                        .iter()
                        .rev()
                        .find(|(pd, _)| *pd == d)
                        .map(|(_, k)| *k);
                    assert!(
                        !(kind == 3 && previous == Some(4)),
                        "{}: a KEEPALIVE went out right before a NOTIFICATION on one connection",
                        self.name()
                    );
                    last_sent.push((d, kind));
                }
                if self.trace {
                    let shown = match &o {
                        Output::Transmit(b) => {
                            format!("Transmit(type {})", b.get(18).copied().unwrap_or(0))
                        }
                        o => format!("{o:?}").chars().take(60).collect(),
                    };
                    eprintln!(
                        "  {:>5?} {} {d:?} -> {shown}",
                        self.elapsed(),
                        ["A", "B"][from]
                    );
                }
                match o {
                    Output::Transmit(bytes) => self.push((1 - from, flip(d)), Item::Bytes(bytes)),
                    Output::Disconnect => {
                        // Our end is gone: nothing more arrives on it.
                        self.wires.retain(|(e, _)| *e != (from, d));
                        self.push((1 - from, flip(d)), Item::Closed);
                        self.told[from].push((self.elapsed(), d, Output::Disconnect));
                    }
                    Output::Connect => {
                        self.push((from, Direction::Outgoing), Item::Up(true));
                        self.push((1 - from, Direction::Incoming), Item::Up(false));
                        self.told[from].push((self.elapsed(), d, Output::Connect));
                    }
                    o => self.told[from].push((self.elapsed(), d, o)),
                }
            }
        }
    }

    /// Delivers one thing in flight; false when nothing is.
    pub fn step(&mut self) -> bool {
        self.flush();
        self.wires.retain(|(_, q)| !q.is_empty());
        if self.wires.is_empty() {
            return false;
        }
        let (pick, batch) = match self.order {
            Order::Sent => {
                let first = self
                    .wires
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, q))| q[0].0);
                (first.map_or(0, |(i, _)| i), false)
            }
            Order::Seeded(_) => {
                self.rng = self
                    .rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (
                    (self.rng >> 33) as usize % self.wires.len(),
                    self.rng >> 63 == 1,
                )
            }
        };
        let (to, d) = self.wires[pick].0;
        let queue = &mut self.wires[pick].1;
        let (_, mut item) = queue.pop_front().expect("wires in flight are not empty");
        match &mut item {
            Item::Bytes(bytes) if batch => {
                while let Some((_, Item::Bytes(more))) = queue.front() {
                    bytes.extend_from_slice(more);
                    queue.pop_front();
                }
            }
            // Nothing more arrives on a closed connection.
            Item::Closed => queue.clear(),
            _ => {}
        }
        if self.trace {
            let what = match &item {
                Item::Up(true) => "Succeeded".to_string(),
                Item::Up(false) => "Confirmed".to_string(),
                Item::Bytes(b) => format!("bytes(type {})", b.get(18).copied().unwrap_or(0)),
                Item::Closed => "Closed".to_string(),
            };
            eprintln!(
                "{} {d:?} <= {what}   [{:?} {:?}]",
                ["A", "B"][to],
                self.peers[to].session().state(),
                self.peers[to].second().map(|s| s.state())
            );
        }
        let now = self.now;
        let event = match &item {
            Item::Up(true) => Event::TcpConnectionSucceeded,
            Item::Up(false) => Event::TcpConnectionConfirmed,
            Item::Bytes(bytes) => Event::BytesReceived(bytes),
            Item::Closed => Event::TcpConnectionFails,
        };
        let taken = self.peers[to].handle_event(now, d, event);
        if matches!(item, Item::Up(false)) && !taken {
            // Refused: the owner closes it at once.
            self.wires[pick].1.clear();
            self.push((1 - to, flip(d)), Item::Closed);
        }
        self.flush();
        true
    }

    /// Up and Down alternate and the last word is Up: an owner told Down
    /// while its session in fact lives on would drop the peer's routes for
    /// good.
    fn check_told(&self) {
        for (side, told) in self.told.iter().enumerate() {
            let ups: Vec<bool> = told
                .iter()
                .filter_map(|(_, _, o)| match o {
                    Output::Established(_) => Some(true),
                    Output::Down { .. } => Some(false),
                    _ => None,
                })
                .collect();
            assert!(
                ups.windows(2).all(|w| w[0] != w[1]) && ups.last() == Some(&true),
                "{}: side {} was told {ups:?} (true: Up, false: Down)",
                self.name(),
                ["A", "B"][side]
            );
        }
    }
}
