//! One peer's BGP session: the RFC 4271 section 8 finite state machine with
//! capability negotiation (RFC 5492, 6793, 4760, 2918), the hold,
//! keepalive and connect-retry timers, and the helper side of graceful
//! restart (RFC 4724).
//!
//! Sans-I/O in the style of quinn-proto: the owner feeds [`Event`]s and
//! timeouts in, with the current time, and drains [`Output`]s; the session
//! never reads a clock or touches a socket. The loop is:
//!
//! ```text
//! session.handle_event(now, Event::ManualStart);
//! loop {
//!     while let Some(out) = session.poll_output() { /* act on it */ }
//!     wait for I/O or session.poll_timeout();
//!     session.handle_event(now, ...) or session.handle_timeout(now);
//! }
//! ```
//!
//! # The owner's duties
//!
//! - [`Output::Connect`]: open a TCP connection to `peer_address` port 179;
//!   report [`Event::TcpConnectionSucceeded`] or [`Event::TcpConnectionFails`].
//!   Accept incoming connections from the peer and report
//!   [`Event::TcpConnectionConfirmed`] (or hand both to a
//!   [`collision::Peer`], which runs one session per connection and
//!   resolves the collision, RFC 4271 section 6.8).
//! - [`Output::Transmit`]: write the bytes, in order. [`Output::Disconnect`]:
//!   close the connection (or abandon the attempt) after writing what was
//!   queued before it; it is not emitted after `TcpConnectionFails` (the
//!   connection is already gone). A connection the session did not take
//!   (it was not in Connect, Active, or Idle waiting to restart) is the
//!   owner's to close; so is an outgoing attempt still pending when the
//!   session takes an incoming connection instead (a [`collision::Peer`]
//!   keeps both and resolves).
//! - Bytes read: [`Event::BytesReceived`], in any chunking; the session does
//!   the framing. End of stream or a read error: `TcpConnectionFails`.
//! - [`Output::Established`]: send the table (UPDATEs through
//!   [`Session::send_update`]), then [`Session::send_end_of_rib`] for every
//!   negotiated family; this is also the End-of-RIB a restarting speaker
//!   sends after its initial dump (RFC 4724 section 4.1). A speaker that
//!   restarted (config `restarting`) defers its best-path selection until
//!   every peer sent End-of-RIB (or a timeout); if the peer's capability has
//!   the R bit set, do not wait for its End-of-RIB before sending ours.
//! - [`Output::Update`]: into the Adj-RIB-In (a missing LOCAL_PREF on iBGP
//!   is tolerated: treat it as 100). [`Output::RouteRefreshRequested`]:
//!   send that family's Adj-RIB-Out again.
//! - [`Output::Down`]: with `graceful: None`, remove every route learnt from
//!   the peer (stale ones included). With `graceful: Some(info)`, keep the
//!   routes of `info.families` but mark them stale (withdraw the rest); the
//!   session runs the restart and stale timers itself.
//! - [`Output::EndOfRib`]: delete the routes of that family still marked
//!   stale (those the peer did not re-advertise). Harmless when none are.
//! - [`Output::StaleRoutesExpired`]: delete the stale routes of those
//!   families now (the peer did not come back within its restart time, did
//!   not send End-of-RIB in time, or came back without its forwarding
//!   state).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::wire::notification::{cease, code, fsm, header};
use crate::wire::{
    self, AfiSafi, CodecContext, GracefulRestartFamily, HEADER_LEN, MAX_MESSAGE_LEN, Message,
    Notification, Open, RouteRefresh, Update, message_type,
};

pub mod collision;
mod open;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod timers;

pub use open::Negotiated;
use timers::{
    OPEN_HOLD_TIME, STABLE_SESSION, Timers, expired, quick_retry_delay, restart_delay, secs,
};

/// The configuration of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_as: u32,
    pub local_id: Ipv4Addr,
    pub peer_as: u32,
    /// The address the owner connects to (port 179); the session only
    /// carries it for the owner.
    pub peer_address: IpAddr,
    /// Seconds; the hold time we propose. 0: no hold timer, no keepalives
    /// (if the peer agrees: the smaller value wins). 1 and 2 are invalid
    /// and sent as 3.
    pub hold_time: u16,
    /// Wait between connection attempts (after one the peer refused or
    /// closed before its OPEN: a short backoff up to this), and the base
    /// of the automatic restart backoff (at least 1 s).
    pub connect_retry: Duration,
    /// Never open connections; only accept the peer's.
    pub passive: bool,
    /// Shorten each connect-retry and restart wait by a pseudo-random 0 to
    /// 25% (RFC 4271 section 10), so that two speakers that failed together
    /// do not retry, and collide, together again and again.
    pub jitter: bool,
    /// The families we offer (multiprotocol capabilities).
    pub families: Vec<AfiSafi>,
    /// Offer the route refresh capability.
    pub route_refresh: bool,
    /// Offer graceful restart (and act as helper for a peer that offers it).
    pub graceful_restart: Option<GracefulRestartConfig>,
}

impl SessionConfig {
    /// The defaults: hold time 90 s, connect retry 30 s, active, IPv4
    /// unicast, route refresh on, no graceful restart.
    pub fn new(local_as: u32, local_id: Ipv4Addr, peer_as: u32, peer_address: IpAddr) -> Self {
        SessionConfig {
            local_as,
            local_id,
            peer_as,
            peer_address,
            hold_time: 90,
            connect_retry: Duration::from_secs(30),
            passive: false,
            jitter: true,
            families: vec![AfiSafi::IPV4_UNICAST],
            route_refresh: true,
            graceful_restart: None,
        }
    }

    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.peer_as
    }
}

/// Our graceful restart capability (RFC 4724).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds the peer should keep our routes while we restart (≤ 4095).
    pub restart_time: u16,
    /// We restarted (R bit): set when the agent starts again after a crash
    /// or upgrade with forwarding state kept. Cleared by the session once
    /// it is Established (later OPENs do not claim a restart).
    pub restarting: bool,
    /// Our forwarding state survived the restart (F bit, every family).
    pub forwarding_preserved: bool,
    /// As helper: how long to keep the peer's stale routes once it is back,
    /// waiting for its End-of-RIB.
    pub stale_routes_time: Duration,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            restart_time: 120,
            restarting: false,
            forwarding_preserved: false,
            stale_routes_time: Duration::from_secs(360),
        }
    }
}

/// The RFC 4271 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Stopped, or waiting for the automatic restart after an error.
    Idle,
    /// Waiting for our outgoing TCP connection.
    Connect,
    /// Waiting for the peer to connect (or for the connect retry timer).
    Active,
    /// Connected, our OPEN sent, waiting for theirs.
    OpenSent,
    /// OPENs exchanged, waiting for the peer's KEEPALIVE.
    OpenConfirm,
    Established,
}

impl State {
    /// There is a TCP connection.
    pub fn is_connected(self) -> bool {
        matches!(
            self,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }
}

/// Who opened the TCP connection (what RFC 4271 section 6.8 compares).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected (after [`Output::Connect`]).
    Outgoing,
    /// The peer connected to us.
    Incoming,
}

/// What happens to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Start (RFC 4271 event 1, or 4 when `passive`). Also re-enables the
    /// automatic restart after errors.
    ManualStart,
    /// Stop (event 2): Cease/Administrative Shutdown if connected; no
    /// automatic restart until the next ManualStart.
    ManualStop,
    /// Our outgoing connection is up (event 16, Tcp_CR_Acked).
    TcpConnectionSucceeded,
    /// The peer's incoming connection was accepted (event 17).
    TcpConnectionConfirmed,
    /// The connection (or the attempt) failed or was closed (event 18).
    TcpConnectionFails,
    /// Bytes read from the connection, in any chunking.
    BytesReceived(&'a [u8]),
}

/// What the owner must do; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Open a TCP connection to the peer.
    Connect,
    /// Write these bytes (one whole message).
    Transmit(Vec<u8>),
    /// Close the connection, or abandon the connection attempt.
    Disconnect,
    /// The session is up.
    Established(Negotiated),
    /// An UPDATE that passed the session's checks (End-of-RIB markers are
    /// reported as [`Output::EndOfRib`] instead).
    Update(Update),
    /// The peer finished sending its table for this family.
    EndOfRib(AfiSafi),
    /// The peer asks for our Adj-RIB-Out of this family again.
    RouteRefreshRequested(AfiSafi),
    /// The session left Established.
    Down {
        reason: Reason,
        /// Set when the routes must be kept as stale (RFC 4724 helper).
        graceful: Option<GrInfo>,
    },
    /// Delete the peer's stale routes of these families now.
    StaleRoutesExpired(Vec<AfiSafi>),
}

/// What a graceful Down lets the owner keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrInfo {
    /// Seconds the peer asked for; the session times it.
    pub restart_time: u16,
    /// The negotiated families in the peer's capability, with its F bits:
    /// the routes to keep as stale.
    pub families: Vec<GracefulRestartFamily>,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// The owner sent ManualStop (Cease/Administrative Shutdown sent if
    /// there was a connection).
    #[error("stopped by the operator")]
    ManualStop,
    /// The owner called [`Session::stop`] with this NOTIFICATION.
    #[error("stopped locally with NOTIFICATION {}/{}", .0.code, .0.subcode)]
    Stopped(Notification),
    /// The connection was lost or refused (no NOTIFICATION exchanged).
    #[error("TCP connection lost")]
    ConnectionLost,
    /// Nothing heard from the peer for the hold time; we sent Hold Timer
    /// Expired.
    #[error("hold timer expired")]
    HoldTimerExpired,
    /// The peer closed the session with this NOTIFICATION.
    #[error("NOTIFICATION {}/{} received", .0.code, .0.subcode)]
    NotificationReceived(Notification),
    /// The peer sent bytes that are not a valid message; we sent this.
    #[error("malformed message, sent NOTIFICATION {}/{}", .0.code, .0.subcode)]
    Malformed(Notification),
    /// The peer's OPEN was unacceptable; we sent this.
    #[error("OPEN rejected, sent NOTIFICATION {}/{}", .0.code, .0.subcode)]
    OpenRejected(Notification),
    /// A message that is not allowed in this state (RFC 6608 FSM error).
    #[error("unexpected message type {message_type} in {state:?}")]
    UnexpectedMessage { state: State, message_type: u8 },
    /// The peer, which advertised graceful restart, opened a new
    /// connection while this one was Established: it restarted and this
    /// connection is dead (RFC 4724 section 4.2). Closed without
    /// NOTIFICATION.
    #[error("peer restarted (new connection)")]
    PeerRestarted,
    /// This connection lost a collision (RFC 4271 section 6.8); we sent
    /// Cease/Connection Collision Resolution.
    #[error("closed by connection collision resolution")]
    Collision,
}

/// Why a send call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("session not established")]
    NotEstablished,
    #[error("family {0:?} not negotiated")]
    FamilyNotNegotiated(AfiSafi),
    #[error("route refresh not negotiated")]
    RouteRefreshNotNegotiated,
    /// The encoded UPDATE would be this long, past
    /// [`wire::MAX_MESSAGE_LEN`]: split it.
    #[error("UPDATE of {0} bytes is too large")]
    TooLarge(usize),
}

/// An output before encoding: tests look at messages, the owner at bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    Send(Message, CodecContext),
    Out(Output),
}

/// One peer's session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    /// Set from OpenConfirm on.
    negotiated: Option<Negotiated>,
    /// How the current connection came up.
    direction: Option<Direction>,
    /// Bytes received and not yet a whole message.
    rx: Vec<u8>,
    pending: VecDeque<Pending>,
    timers: Timers,
    /// Restart automatically out of Idle after an error (ManualStart sets,
    /// ManualStop clears).
    auto_restart: bool,
    /// Consecutive failures, for the restart backoff.
    failures: u32,
    /// Consecutive connections that ended before the peer's OPEN (refused,
    /// or closed by a peer that does not know us yet), for the quick
    /// retry's backoff. The peer's OPEN resets it.
    refused: u32,
    established_at: Option<Instant>,
    last_reason: Option<Reason>,
    /// RFC 4724 helper: families whose routes the owner holds as stale.
    stale: Vec<AfiSafi>,
    /// The jitter's generator; seeded from both ends' identities so that
    /// the two sides of a session draw different waits.
    jitter_state: u64,
}

impl Session {
    pub fn new(mut config: SessionConfig) -> Session {
        if matches!(config.hold_time, 1 | 2) {
            config.hold_time = 3;
        }
        // A zero retry time would spin; a second is plenty fast.
        config.connect_retry = config.connect_retry.max(Duration::from_secs(1));
        let jitter_state = jitter_seed(&config);
        Session {
            config,
            state: State::Idle,
            negotiated: None,
            direction: None,
            rx: Vec::new(),
            pending: VecDeque::new(),
            timers: Timers::default(),
            auto_restart: false,
            failures: 0,
            refused: 0,
            established_at: None,
            last_reason: None,
            stale: Vec::new(),
            jitter_state,
        }
    }

    /// `wait`, less 0 to 25% when jitter is on.
    fn jittered(&mut self, wait: Duration) -> Duration {
        if !self.config.jitter {
            return wait;
        }
        // xorshift64*: plenty for spreading retries.
        let mut x = self.jitter_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter_state = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        // r / 2^32 is in [0, 1): take off up to a quarter.
        let cut = wait.as_nanos() * u128::from(r) / (4u128 << 32);
        wait - Duration::from_nanos(u64::try_from(cut).unwrap_or(0))
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// What was agreed, from OpenConfirm until the connection ends.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Who opened the current connection.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// Why the last connection ended.
    pub fn last_reason(&self) -> Option<&Reason> {
        self.last_reason.as_ref()
    }

    /// Families whose routes the owner holds as stale (graceful restart).
    pub fn stale_families(&self) -> &[AfiSafi] {
        &self.stale
    }

    /// When to call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// The next thing for the owner to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        Some(match self.pending.pop_front()? {
            Pending::Send(message, ctx) => Output::Transmit(wire::encode(&message, ctx)),
            Pending::Out(output) => output,
        })
    }

    /// [`Session::poll_output`] before encoding.
    pub(crate) fn poll_pending(&mut self) -> Option<Pending> {
        self.pending.pop_front()
    }

    pub fn handle_event(&mut self, now: Instant, event: Event<'_>) {
        match event {
            Event::ManualStart => {
                self.auto_restart = true;
                self.timers.idle_hold = None;
                if self.state == State::Idle {
                    self.start(now);
                }
            }
            Event::ManualStop => {
                let notification = Notification::cease(cease::ADMINISTRATIVE_SHUTDOWN);
                self.stop_with(now, Reason::ManualStop, notification);
            }
            Event::TcpConnectionSucceeded => self.connection_up(now, Direction::Outgoing),
            Event::TcpConnectionConfirmed => self.connection_up(now, Direction::Incoming),
            Event::TcpConnectionFails => self.connection_failed(now),
            Event::BytesReceived(bytes) => self.bytes_received(now, bytes),
        }
    }

    /// Runs every timer that expired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if expired(&mut self.timers.idle_hold, now) && self.state == State::Idle {
            self.start(now);
        }
        if expired(&mut self.timers.connect_retry, now) {
            match self.state {
                State::Connect => {
                    // The attempt is taking too long: abandon it, try again.
                    self.push(Output::Disconnect);
                    self.connect(now);
                }
                State::Active if !self.config.passive => {
                    self.state = State::Connect;
                    self.connect(now);
                }
                _ => {}
            }
        }
        if expired(&mut self.timers.hold, now) && self.state.is_connected() {
            let notification = Notification::new(code::HOLD_TIMER_EXPIRED, 0, Vec::new());
            self.close(now, Reason::HoldTimerExpired, Some(notification));
        }
        if expired(&mut self.timers.keepalive, now)
            && matches!(self.state, State::OpenConfirm | State::Established)
        {
            self.send(Message::Keepalive);
            self.restart_keepalive(now);
        }
        if expired(&mut self.timers.gr_restart, now) || expired(&mut self.timers.gr_stale, now) {
            self.flush_stale();
        }
    }

    /// Sends an UPDATE (Established only; its families negotiated; at most
    /// [`wire::MAX_MESSAGE_LEN`] bytes once encoded, see
    /// [`wire::encoded_len`]). Restarts the keepalive timer.
    pub fn send_update(&mut self, now: Instant, update: Update) -> Result<(), SendError> {
        let negotiated = self
            .negotiated
            .as_ref()
            .filter(|_| self.state == State::Established);
        let negotiated = negotiated.ok_or(SendError::NotEstablished)?;
        let mut families = Vec::new();
        if !update.nlri.is_empty() || !update.withdrawn.is_empty() {
            families.push(AfiSafi::IPV4_UNICAST);
        }
        families.extend(update.attributes.mp_reach.as_ref().map(|m| m.family));
        families.extend(update.attributes.mp_unreach.as_ref().map(|m| m.family));
        if let Some(f) = families
            .into_iter()
            .find(|f| !negotiated.families.contains(f))
        {
            return Err(SendError::FamilyNotNegotiated(f));
        }
        let message = Message::Update(update);
        let len = wire::encoded_len(&message, negotiated.codec());
        if len > MAX_MESSAGE_LEN {
            return Err(SendError::TooLarge(len));
        }
        self.send(message);
        // RFC 4271 section 4.4: an UPDATE does what a KEEPALIVE would.
        self.restart_keepalive(now);
        Ok(())
    }

    /// Sends the End-of-RIB marker of a negotiated family (RFC 4724).
    pub fn send_end_of_rib(&mut self, now: Instant, family: AfiSafi) -> Result<(), SendError> {
        let negotiated = self
            .negotiated
            .as_ref()
            .filter(|_| self.state == State::Established);
        let negotiated = negotiated.ok_or(SendError::NotEstablished)?;
        if !negotiated.families.contains(&family) {
            return Err(SendError::FamilyNotNegotiated(family));
        }
        self.send_update(now, Update::end_of_rib(family))
    }

    /// Asks the peer to send its routes of `family` again (RFC 2918).
    pub fn request_route_refresh(&mut self, family: AfiSafi) -> Result<(), SendError> {
        let negotiated = self
            .negotiated
            .as_ref()
            .filter(|_| self.state == State::Established);
        let negotiated = negotiated.ok_or(SendError::NotEstablished)?;
        if !negotiated.route_refresh {
            return Err(SendError::RouteRefreshNotNegotiated);
        }
        if !negotiated.families.contains(&family) {
            return Err(SendError::FamilyNotNegotiated(family));
        }
        self.send(Message::RouteRefresh(RouteRefresh { family }));
        Ok(())
    }

    /// Closes the session with `notification` (sent if connected) and stays
    /// Idle until the next ManualStart: e.g. Cease/Maximum Number of
    /// Prefixes Reached from the RIB, or Peer De-configured.
    pub fn stop(&mut self, now: Instant, notification: Notification) {
        self.stop_with(now, Reason::Stopped(notification.clone()), notification);
    }

    /// Closes this connection because it lost a collision (RFC 4271
    /// section 6.8). The automatic restart stays on.
    pub(crate) fn close_collision(&mut self, now: Instant) {
        // A KEEPALIVE not yet written would make this connection
        // Established on the peer's side just before the Cease takes it
        // down again: the peer would see its session flap.
        self.pending
            .retain(|p| !matches!(p, Pending::Send(Message::Keepalive, _)));
        let notification = Notification::cease(cease::CONNECTION_COLLISION_RESOLUTION);
        self.close(now, Reason::Collision, Some(notification));
    }

    /// Abandons a connection attempt in progress (Connect): the collision
    /// resolver's way to retire a session that never got a connection.
    pub(crate) fn stop_quietly(&mut self) {
        if self.state == State::Connect {
            self.push(Output::Disconnect);
        }
        self.reset_connection();
        self.state = State::Idle;
        self.timers.idle_hold = None;
    }

    /// Takes over `from`'s graceful-restart helper state (the session that
    /// won a collision continues the restart the lost one was waiting for).
    pub(crate) fn adopt_stale(&mut self, now: Instant, from: &mut Session) {
        if from.stale.is_empty() {
            return;
        }
        for f in std::mem::take(&mut from.stale) {
            if !self.stale.contains(&f) {
                self.stale.push(f);
            }
        }
        self.timers.gr_restart = from.timers.gr_restart.take().or(self.timers.gr_restart);
        from.timers.gr_stale = None;
        if self.state == State::Established {
            self.peer_back(now);
        }
    }

    fn stop_with(&mut self, now: Instant, reason: Reason, notification: Notification) {
        self.auto_restart = false;
        self.timers.idle_hold = None;
        if self.state != State::Idle {
            self.close(now, reason, Some(notification));
        }
        // Stopped for good: the owner should not keep stale routes.
        self.flush_stale();
    }

    /// Idle → Connect (or Active when passive).
    fn start(&mut self, now: Instant) {
        if self.config.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            self.connect(now);
        }
    }

    fn connect(&mut self, now: Instant) {
        self.push(Output::Connect);
        self.timers.connect_retry = Some(now + self.jittered(self.config.connect_retry));
    }

    fn connection_up(&mut self, now: Instant, direction: Direction) {
        match self.state {
            State::Connect | State::Active => {
                self.timers.connect_retry = None;
                self.direction = Some(direction);
                self.rx.clear();
                self.send(Message::Open(open::build_open(&self.config)));
                self.timers.hold = Some(now + OPEN_HOLD_TIME);
                self.state = State::OpenSent;
            }
            // Waiting for the automatic restart: a peer that comes back
            // (say after a graceful restart) need not wait for our backoff.
            State::Idle if self.auto_restart && direction == Direction::Incoming => {
                self.timers.idle_hold = None;
                self.state = State::Active;
                self.connection_up(now, direction);
            }
            // Stopped: refuse the connection.
            State::Idle => self.push(Output::Disconnect),
            // A second connection is not this session's: the owner closes
            // it or hands it to a collision::Peer.
            State::OpenSent | State::OpenConfirm | State::Established => {}
        }
    }

    fn connection_failed(&mut self, now: Instant) {
        match self.state {
            State::Idle | State::Active => {}
            State::Connect => {
                // RFC 4271: keep listening, retry when the timer fires.
                self.state = State::Active;
                self.retry_soon(now);
            }
            State::OpenSent => {
                // RFC 4271: back to Active, connect again later.
                self.reset_connection();
                self.last_reason = Some(Reason::ConnectionLost);
                self.state = State::Active;
                if !self.config.passive {
                    self.retry_soon(now);
                }
            }
            State::OpenConfirm | State::Established => {
                self.close(now, Reason::ConnectionLost, None);
            }
        }
    }

    /// The connection ended before the peer's OPEN: set the connect-retry
    /// timer to a short backoff instead of the whole connect-retry time.
    /// RFC 4271 leaves the ConnectRetryTime to the implementation; a peer
    /// that refused us a moment ago has often just not been configured
    /// yet, and one that keeps refusing is soon back at the full time.
    fn retry_soon(&mut self, now: Instant) {
        self.refused = self.refused.saturating_add(1);
        let delay = quick_retry_delay(self.config.connect_retry, self.refused);
        self.timers.connect_retry = Some(now + self.jittered(delay));
    }

    /// Frames the byte stream into messages.
    fn bytes_received(&mut self, now: Instant, bytes: &[u8]) {
        if !self.state.is_connected() {
            return;
        }
        self.rx.extend_from_slice(bytes);
        let mut start = 0;
        while self.rx.len() - start >= HEADER_LEN {
            let header = match wire::decode_header(&self.rx[start..start + HEADER_LEN]) {
                Ok(header) => header,
                Err(e) => return self.close(now, Reason::Malformed(e.0.clone()), Some(e.0)),
            };
            let len = usize::from(header.length);
            if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
                // The codec checks this; never trust a length blindly.
                let n = Notification::new(
                    code::MESSAGE_HEADER,
                    header::BAD_MESSAGE_LENGTH,
                    header.length.to_be_bytes().to_vec(),
                );
                return self.close(now, Reason::Malformed(n.clone()), Some(n));
            }
            if self.rx.len() - start < len {
                break;
            }
            let ctx = self.codec();
            let decoded = wire::decode(&self.rx[start..start + len], ctx);
            start += len;
            match decoded {
                Ok(message) => self.handle_message(now, message),
                Err(e) => return self.close(now, Reason::Malformed(e.0.clone()), Some(e.0)),
            }
            if !self.state.is_connected() {
                // The message ended the connection (rx was cleared).
                return;
            }
        }
        self.rx.drain(..start);
    }

    /// One decoded message: the FSM proper. Entry point for tests too.
    pub(crate) fn handle_message(&mut self, now: Instant, message: Message) {
        let state = self.state;
        match (state, message) {
            (State::Idle | State::Connect | State::Active, _) => {}
            (_, Message::Notification(n)) => {
                self.close(now, Reason::NotificationReceived(n), None);
            }
            (State::OpenSent, Message::Open(open)) => self.open_received(now, &open),
            (State::OpenConfirm, Message::Keepalive) => self.established(now),
            (State::Established, message) => {
                // Any message shows the peer is alive.
                self.restart_hold(now);
                match message {
                    Message::Keepalive => {}
                    Message::Update(update) => self.update_received(update),
                    Message::RouteRefresh(rr) => {
                        let negotiated = self.negotiated.as_ref();
                        // A family not negotiated, or no capability sent by
                        // us: ignore rather than reset (RFC 2918 says
                        // ignore; a reset would punish the wrong side).
                        let ok = self.config.route_refresh
                            && negotiated.is_some_and(|n| n.families.contains(&rr.family));
                        if ok {
                            self.push(Output::RouteRefreshRequested(rr.family));
                        }
                    }
                    Message::Open(_) => self.unexpected(now, message_type::OPEN),
                    Message::Notification(n) => {
                        self.close(now, Reason::NotificationReceived(n), None);
                    }
                }
            }
            (State::OpenSent | State::OpenConfirm, message) => {
                self.unexpected(now, type_of(&message));
            }
        }
    }

    fn open_received(&mut self, now: Instant, open: &Open) {
        // The peer answers as a BGP speaker: later failures are not refusals.
        self.refused = 0;
        match open::negotiate(&self.config, open) {
            Err(n) => self.close(now, Reason::OpenRejected(n.clone()), Some(n)),
            Ok(negotiated) => {
                self.negotiated = Some(negotiated);
                self.send(Message::Keepalive);
                self.restart_keepalive(now);
                self.restart_hold(now);
                self.state = State::OpenConfirm;
            }
        }
    }

    fn established(&mut self, now: Instant) {
        let Some(negotiated) = self.negotiated.clone() else {
            return;
        };
        self.state = State::Established;
        self.established_at = Some(now);
        // Our restart is over once the session is back: later OPENs (after
        // a flap) must not claim it again (RFC 4724 section 3, R bit).
        if let Some(gr) = &mut self.config.graceful_restart {
            gr.restarting = false;
        }
        self.restart_hold(now);
        self.push(Output::Established(negotiated));
        self.peer_back(now);
    }

    /// RFC 4724 section 4.2, helper side: the restarting peer is back
    /// (Established again) while we hold its routes as stale.
    fn peer_back(&mut self, now: Instant) {
        let Some(negotiated) = self.negotiated.clone() else {
            return;
        };
        if !self.stale.is_empty() {
            // RFC 4724 section 4.2: the peer is back. Families it did not
            // keep forwarding state for (or no longer speaks) go now; the
            // others wait for End-of-RIB, at most stale_routes_time.
            self.timers.gr_restart = None;
            let (keep, flush): (Vec<_>, Vec<_>) = self.stale.iter().partition(|&&f| {
                self.config.graceful_restart.is_some()
                    && negotiated.families.contains(&f)
                    && negotiated.forwarding_preserved(f)
            });
            if !flush.is_empty() {
                self.push(Output::StaleRoutesExpired(flush));
            }
            self.stale = keep;
            if self.stale.is_empty() {
                self.timers.gr_stale = None;
            } else if let Some(gr) = &self.config.graceful_restart {
                self.timers.gr_stale = Some(now + gr.stale_routes_time);
            }
        }
    }

    /// Session-level checks of an UPDATE the codec accepted.
    fn update_received(&mut self, mut update: Update) {
        let Some(negotiated) = &self.negotiated else {
            return;
        };
        if let Some(family) = update.end_of_rib_family() {
            if negotiated.families.contains(&family) {
                self.stale.retain(|&f| f != family);
                if self.stale.is_empty() {
                    self.timers.gr_stale = None;
                }
                self.push(Output::EndOfRib(family));
            }
            return;
        }
        let attributes = &mut update.attributes;
        // RFC 4271 section 5.1.5: LOCAL_PREF from an external peer is ignored.
        if !negotiated.ibgp {
            attributes.local_pref = None;
        }
        // Families we did not agree on are not ours to interpret (RFC 4760
        // leaves it open; dropping them is what deployed speakers do).
        if attributes
            .mp_reach
            .as_ref()
            .is_some_and(|m| !negotiated.families.contains(&m.family))
        {
            attributes.mp_reach = None;
        }
        if attributes
            .mp_unreach
            .as_ref()
            .is_some_and(|m| !negotiated.families.contains(&m.family))
        {
            attributes.mp_unreach = None;
        }
        if !negotiated.families.contains(&AfiSafi::IPV4_UNICAST) {
            update.nlri.clear();
            update.withdrawn.clear();
        }
        let attributes = &update.attributes;
        if update.nlri.is_empty()
            && update.withdrawn.is_empty()
            && attributes.mp_reach.is_none()
            && attributes.mp_unreach.is_none()
        {
            // Nothing left for us (an empty UPDATE is End-of-RIB, handled above).
            return;
        }
        self.push(Output::Update(update));
    }

    /// RFC 6608: a message the state does not allow.
    fn unexpected(&mut self, now: Instant, message_type: u8) {
        let state = self.state;
        let subcode = match state {
            State::OpenSent => fsm::UNEXPECTED_IN_OPENSENT,
            State::OpenConfirm => fsm::UNEXPECTED_IN_OPENCONFIRM,
            State::Established => fsm::UNEXPECTED_IN_ESTABLISHED,
            _ => fsm::UNSPECIFIED,
        };
        let n = Notification::new(code::FSM, subcode, vec![message_type]);
        self.close(
            now,
            Reason::UnexpectedMessage {
                state,
                message_type,
            },
            Some(n),
        );
    }

    /// Ends the connection: the NOTIFICATION (if any, and if connected),
    /// Disconnect, Down when it was Established, then Idle with the
    /// automatic restart scheduled.
    pub(crate) fn close(
        &mut self,
        now: Instant,
        reason: Reason,
        notification: Option<Notification>,
    ) {
        let was = self.state;
        if let Some(n) = notification.filter(|_| was.is_connected()) {
            self.send(Message::Notification(n));
        }
        if reason != Reason::ConnectionLost && (was.is_connected() || was == State::Connect) {
            self.push(Output::Disconnect);
        }
        if was == State::Established {
            let graceful = self.graceful(&reason);
            if let Some(info) = &graceful {
                for f in &info.families {
                    if !self.stale.contains(&f.family) {
                        self.stale.push(f.family);
                    }
                }
                self.timers.gr_restart = Some(now + secs(info.restart_time));
                self.timers.gr_stale = None;
            } else {
                // The owner removes every route of the peer, stale or not.
                self.stale.clear();
                self.timers.gr_restart = None;
                self.timers.gr_stale = None;
            }
            self.push(Output::Down {
                reason: reason.clone(),
                graceful,
            });
            let stable = self
                .established_at
                .is_some_and(|t| now.duration_since(t) >= STABLE_SESSION);
            if stable {
                self.failures = 0;
            }
        }
        self.reset_connection();
        self.state = State::Idle;
        self.last_reason = Some(reason);
        if self.auto_restart {
            self.failures = self.failures.saturating_add(1);
            let delay = restart_delay(self.config.connect_retry, self.failures);
            self.timers.idle_hold = Some(now + self.jittered(delay));
        }
    }

    /// RFC 4724 helper: keep the routes when the peer advertised graceful
    /// restart (and so did we) and the session ended without a
    /// NOTIFICATION from the peer: TCP loss, or our hold timer (a peer
    /// whose control plane restarts goes silent). A NOTIFICATION ends
    /// graceful restart (RFC 4724; RFC 8538 would differ).
    pub(crate) fn graceful(&self, reason: &Reason) -> Option<GrInfo> {
        if !matches!(
            reason,
            Reason::ConnectionLost | Reason::HoldTimerExpired | Reason::PeerRestarted
        ) {
            return None;
        }
        self.config.graceful_restart.as_ref()?;
        let negotiated = self.negotiated.as_ref()?;
        let gr = negotiated.peer_graceful_restart.as_ref()?;
        let families: Vec<_> = gr
            .families
            .iter()
            .filter(|f| negotiated.families.contains(&f.family))
            .copied()
            .collect();
        if families.is_empty() || gr.restart_time == 0 {
            return None;
        }
        Some(GrInfo {
            restart_time: gr.restart_time,
            families,
        })
    }

    fn flush_stale(&mut self) {
        self.timers.gr_restart = None;
        self.timers.gr_stale = None;
        if !self.stale.is_empty() {
            let families = std::mem::take(&mut self.stale);
            self.push(Output::StaleRoutesExpired(families));
        }
    }

    fn reset_connection(&mut self) {
        self.rx.clear();
        self.negotiated = None;
        self.direction = None;
        self.established_at = None;
        self.timers.connect_retry = None;
        self.timers.hold = None;
        self.timers.keepalive = None;
    }

    fn codec(&self) -> CodecContext {
        self.negotiated
            .as_ref()
            .map(Negotiated::codec)
            .unwrap_or_default()
    }

    fn restart_hold(&mut self, now: Instant) {
        let hold = self.negotiated.as_ref().map_or(0, |n| n.hold_time);
        self.timers.hold = (hold > 0).then(|| now + secs(hold));
    }

    fn restart_keepalive(&mut self, now: Instant) {
        let keepalive = self.negotiated.as_ref().map_or(0, |n| n.keepalive);
        self.timers.keepalive = (keepalive > 0).then(|| now + secs(keepalive));
    }

    fn send(&mut self, message: Message) {
        let ctx = self.codec();
        self.pending.push_back(Pending::Send(message, ctx));
    }

    fn push(&mut self, output: Output) {
        self.pending.push_back(Pending::Out(output));
    }
}

fn type_of(message: &Message) -> u8 {
    match message {
        Message::Open(_) => message_type::OPEN,
        Message::Update(_) => message_type::UPDATE,
        Message::Notification(_) => message_type::NOTIFICATION,
        Message::Keepalive => message_type::KEEPALIVE,
        Message::RouteRefresh(_) => message_type::ROUTE_REFRESH,
    }
}

/// A nonzero seed from our identifier and the peer's address (FNV-1a).
fn jitter_seed(config: &SessionConfig) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let peer = match config.peer_address {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    for byte in config.local_id.octets().iter().chain(peer.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash | 1
}
