//! A whole BGP speaker: its peers' sessions ([`collision::Peer`], one or two
//! connections each) and its RIBs ([`Rib`]), still without I/O or a clock.
//!
//! The owner (the tokio shell in the agent, or a simulation) reports what
//! happens on connections and when time passes, and carries out what
//! [`Speaker::poll_output`] returns: open, write and close connections,
//! and program the kernel from the Loc-RIB changes.
//!
//! The speaker does the owner's duties of the session layer: it sends its
//! table and End-of-RIB when a session comes up, feeds received UPDATEs to
//! the RIB and sends what the RIB exports, keeps a restarting peer's routes
//! as stale (graceful restart helper) and sweeps them on End-of-RIB or when
//! the session's stale timers fire.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::rib::{LocRibChange, PeerId, PeerInfo, Rib, RibChanges, RibConfig};
use crate::session::collision::Peer;
use crate::session::{
    Direction, Event, GracefulRestartConfig, Negotiated, Output, Reason, SendError, SessionConfig,
};
use crate::wire::notification::cease;
use crate::wire::{Notification, Update};

/// The speaker's own settings.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// `Some`: a route reflector of this cluster (RFC 4456).
    pub cluster_id: Option<Ipv4Addr>,
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// `Some`: graceful restart is advertised (RFC 4724); `restarting` set
    /// when this speaker restarted with its forwarding state kept.
    pub graceful_restart: Option<GracefulRestartConfig>,
}

impl SpeakerConfig {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            local_as,
            router_id,
            cluster_id: None,
            hold_time: 90,
            connect_retry: Duration::from_secs(30),
            graceful_restart: None,
        }
    }
}

/// One configured peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    /// Our address towards this peer: the next hop we advertise.
    pub local_address: Ipv4Addr,
    /// A route reflection client of ours (only when we are a reflector).
    pub rr_client: bool,
    /// Wait for the peer to connect; never connect out.
    pub passive: bool,
}

/// What the owner must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpeakerOutput {
    /// Open a TCP connection to the peer (port 179), then report
    /// `TcpConnectionSucceeded` or `TcpConnectionFails` on `Outgoing`.
    Connect { peer: PeerId, address: IpAddr },
    /// Write bytes on that connection.
    Transmit {
        peer: PeerId,
        direction: Direction,
        bytes: Vec<u8>,
    },
    /// Close that connection (or abandon the attempt).
    Disconnect { peer: PeerId, direction: Direction },
    /// The Loc-RIB changed: program (or remove) the kernel route.
    Route(LocRibChange),
    /// A session came up.
    PeerUp {
        peer: PeerId,
        negotiated: Negotiated,
    },
    /// A session went down; `graceful` when its routes are kept as stale.
    PeerDown {
        peer: PeerId,
        reason: Reason,
        graceful: bool,
    },
}

/// A peer's state, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: PeerId,
    pub config: PeerConfig,
    pub state: crate::session::State,
    /// Since when the session is Established.
    pub established_since: Option<Instant>,
    pub received: usize,
    pub advertised: usize,
    pub last_error: Option<String>,
    /// The peer's End-of-RIB arrived since the session came up.
    pub end_of_rib_received: bool,
}

struct PeerEntry {
    config: PeerConfig,
    peer: Peer,
    negotiated: Option<Negotiated>,
    established_since: Option<Instant>,
    last_error: Option<String>,
    end_of_rib_received: bool,
}

pub struct Speaker {
    config: SpeakerConfig,
    rib: Rib,
    peers: BTreeMap<PeerId, PeerEntry>,
    next_id: u32,
    out: VecDeque<SpeakerOutput>,
}

impl Speaker {
    pub fn new(config: SpeakerConfig) -> Speaker {
        let mut rib_config = RibConfig::new(config.local_as, config.router_id);
        rib_config.cluster_id = config.cluster_id;
        Speaker {
            rib: Rib::new(rib_config),
            config,
            peers: BTreeMap::new(),
            next_id: 1,
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    pub fn rib(&self) -> &Rib {
        &self.rib
    }

    /// Adds a peer and starts its session.
    pub fn add_peer(&mut self, now: Instant, config: PeerConfig) -> PeerId {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let mut session = SessionConfig::new(
            self.config.local_as,
            self.config.router_id,
            config.asn,
            config.address,
        );
        session.hold_time = self.config.hold_time;
        session.connect_retry = self.config.connect_retry;
        session.passive = config.passive;
        session.graceful_restart = self.config.graceful_restart.clone();
        let mut peer = Peer::new(session);
        peer.start(now);
        self.peers.insert(
            id,
            PeerEntry {
                config,
                peer,
                negotiated: None,
                established_since: None,
                last_error: None,
                end_of_rib_received: false,
            },
        );
        self.pump(now, id);
        id
    }

    /// Removes a peer: its connections close with Cease/Peer De-configured
    /// and its routes are withdrawn at once.
    pub fn remove_peer(&mut self, now: Instant, id: PeerId) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        entry
            .peer
            .shut_down(now, Notification::cease(cease::PEER_DECONFIGURED));
        self.pump(now, id);
        self.peers.remove(&id);
        let changes = self.rib.peer_down(id);
        self.apply(now, changes);
    }

    /// Closes every session with Cease/Administrative Shutdown: peers drop
    /// our routes at once (no graceful restart after a NOTIFICATION).
    pub fn shut_down(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            if let Some(entry) = self.peers.get_mut(&id) {
                entry
                    .peer
                    .shut_down(now, Notification::cease(cease::ADMINISTRATIVE_SHUTDOWN));
            }
            self.pump(now, id);
        }
    }

    /// The configured peer with this address, e.g. for an incoming connection.
    pub fn peer_by_address(&self, address: IpAddr) -> Option<PeerId> {
        self.peers
            .iter()
            .find(|(_, e)| e.config.address == address)
            .map(|(id, _)| *id)
    }

    pub fn peer_config(&self, id: PeerId) -> Option<&PeerConfig> {
        self.peers.get(&id).map(|e| &e.config)
    }

    /// Something happened on one of a peer's connections. Returns false
    /// when an incoming connection is refused: the owner closes it.
    pub fn connection_event(
        &mut self,
        now: Instant,
        id: PeerId,
        direction: Direction,
        event: Event<'_>,
    ) -> bool {
        let Some(entry) = self.peers.get_mut(&id) else {
            return false;
        };
        let accepted = entry.peer.handle_event(now, direction, event);
        self.pump(now, id);
        accepted
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.peer.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(entry) = self.peers.get_mut(&id) {
                entry.peer.handle_timeout(now);
            }
            self.pump(now, id);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|e| e.peer.poll_timeout())
            .min()
    }

    pub fn poll_output(&mut self) -> Option<SpeakerOutput> {
        self.out.pop_front()
    }

    /// Announces a prefix of ours (the node's pod CIDR) to every peer.
    pub fn originate(&mut self, now: Instant, prefix: IpNetwork) {
        let changes = self.rib.originate(prefix, None);
        self.apply(now, changes);
    }

    pub fn withdraw(&mut self, now: Instant, prefix: IpNetwork) {
        let changes = self.rib.withdraw_originated(prefix);
        self.apply(now, changes);
    }

    /// Every peer has sent End-of-RIB since its session came up: the
    /// Loc-RIB is complete (a restarted speaker may now remove kernel routes
    /// it kept but did not relearn, RFC 4724 section 4.1).
    pub fn synchronized(&self) -> bool {
        self.peers.values().all(|e| e.end_of_rib_received)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(id, e)| PeerStatus {
                id: *id,
                config: e.config.clone(),
                state: e.peer.session().state(),
                established_since: e.established_since,
                received: self.rib.received_count(*id),
                advertised: self.rib.advertised_count(*id),
                last_error: e.last_error.clone(),
                end_of_rib_received: e.end_of_rib_received,
            })
            .collect()
    }

    /// Carries out what peer `id`'s sessions asked for, and whatever that
    /// makes other peers send, until nothing is left.
    fn pump(&mut self, now: Instant, id: PeerId) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            while let Some((direction, output)) =
                self.peers.get_mut(&id).and_then(|e| e.peer.poll_output())
            {
                let touched = self.on_output(now, id, direction, output);
                work.extend(touched);
            }
        }
    }

    /// One session output; returns the peers that now have output of their own.
    fn on_output(
        &mut self,
        now: Instant,
        id: PeerId,
        direction: Direction,
        output: Output,
    ) -> BTreeSet<PeerId> {
        let Some(entry) = self.peers.get_mut(&id) else {
            return BTreeSet::new();
        };
        match output {
            Output::Connect => {
                self.out.push_back(SpeakerOutput::Connect {
                    peer: id,
                    address: entry.config.address,
                });
                BTreeSet::new()
            }
            Output::Transmit(bytes) => {
                self.out.push_back(SpeakerOutput::Transmit {
                    peer: id,
                    direction,
                    bytes,
                });
                BTreeSet::new()
            }
            Output::Disconnect => {
                self.out.push_back(SpeakerOutput::Disconnect {
                    peer: id,
                    direction,
                });
                BTreeSet::new()
            }
            Output::Established(negotiated) => {
                entry.negotiated = Some(negotiated.clone());
                entry.established_since = Some(now);
                entry.end_of_rib_received = false;
                let info = PeerInfo {
                    id,
                    address: entry.config.address,
                    local_address: entry.config.local_address,
                    asn: negotiated.peer_as,
                    router_id: negotiated.peer_id,
                    rr_client: entry.config.rr_client,
                };
                let families = negotiated.families.clone();
                self.out.push_back(SpeakerOutput::PeerUp {
                    peer: id,
                    negotiated,
                });
                let changes = self.rib.peer_up(info);
                let mut touched = self.apply_changes(now, changes);
                if let Some(entry) = self.peers.get_mut(&id) {
                    for family in families {
                        // Established a moment ago: it cannot fail.
                        let _ = entry.peer.send_end_of_rib(now, family);
                    }
                    touched.insert(id);
                }
                touched
            }
            Output::Update(update) => {
                let changes = self.rib.update(id, &update);
                self.apply_changes(now, changes)
            }
            Output::EndOfRib(_) | Output::StaleRoutesExpired(_) => {
                entry.end_of_rib_received = true;
                let changes = self.rib.sweep_stale(id);
                self.apply_changes(now, changes)
            }
            Output::RouteRefreshRequested(_) => {
                let changes = self.rib.route_refresh(id);
                self.apply_changes(now, changes)
            }
            Output::Down { reason, graceful } => {
                entry.negotiated = None;
                entry.established_since = None;
                entry.end_of_rib_received = false;
                entry.last_error = Some(reason.to_string());
                let graceful = graceful.is_some();
                self.out.push_back(SpeakerOutput::PeerDown {
                    peer: id,
                    reason,
                    graceful,
                });
                let changes = if graceful {
                    self.rib.peer_stale(id)
                } else {
                    self.rib.peer_down(id)
                };
                self.apply_changes(now, changes)
            }
        }
    }

    fn apply(&mut self, now: Instant, changes: RibChanges) {
        let touched = self.apply_changes(now, changes);
        for id in touched {
            self.pump(now, id);
        }
    }

    /// Hands Loc-RIB changes to the owner and queues the RIB's UPDATEs on
    /// their sessions; returns the peers that got something to send.
    fn apply_changes(&mut self, now: Instant, changes: RibChanges) -> BTreeSet<PeerId> {
        self.out
            .extend(changes.loc_rib.into_iter().map(SpeakerOutput::Route));
        let mut touched = BTreeSet::new();
        for (id, update) in changes.outgoing {
            if let Some(entry) = self.peers.get_mut(&id) {
                send_split(&mut entry.peer, now, update);
                touched.insert(id);
            }
        }
        touched
    }
}

/// Sends an UPDATE, halving its prefix lists until each part fits in one
/// message. A session that is not Established drops it: the RIB sends the
/// whole table again when it comes up. One prefix whose attributes alone
/// exceed a message cannot be sent at all; it is dropped (RFC 4271 has no
/// way to carry it).
fn send_split(peer: &mut Peer, now: Instant, update: Update) {
    if let Err(SendError::TooLarge(_)) = peer.send_update(now, update.clone())
        && prefix_count(&update) > 1
    {
        for part in halves(update) {
            send_split(peer, now, part);
        }
    }
}

fn prefix_count(update: &Update) -> usize {
    let a = &update.attributes;
    update.nlri.len()
        + update.withdrawn.len()
        + a.mp_reach.as_ref().map_or(0, |m| m.nlri.len())
        + a.mp_unreach.as_ref().map_or(0, |m| m.withdrawn.len())
}

/// Two UPDATEs that together say what `update` says.
fn halves(update: Update) -> [Update; 2] {
    fn split<T: Clone>(v: &[T]) -> (Vec<T>, Vec<T>) {
        let (a, b) = v.split_at(v.len() / 2);
        (a.to_vec(), b.to_vec())
    }
    let mut first = update.clone();
    let mut second = update;
    if first.nlri.len() > 1 || first.withdrawn.len() > 1 {
        (first.nlri, second.nlri) = split(&first.nlri);
        (first.withdrawn, second.withdrawn) = split(&first.withdrawn);
    } else if let (Some(a), Some(b)) = (
        first.attributes.mp_reach.as_mut(),
        second.attributes.mp_reach.as_mut(),
    ) {
        (a.nlri, b.nlri) = split(&a.nlri);
    } else if let (Some(a), Some(b)) = (
        first.attributes.mp_unreach.as_mut(),
        second.attributes.mp_unreach.as_mut(),
    ) {
        (a.withdrawn, b.withdrawn) = split(&a.withdrawn);
    }
    [first, second]
}
