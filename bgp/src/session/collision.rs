//! Connection collision detection (RFC 4271 section 6.8).
//!
//! When we connect to a peer while it connects to us, there are two TCP
//! connections for one session. Once the BGP identifier of the remote end
//! is known (its OPEN was received) on both, the connection initiated by
//! the speaker with the higher BGP identifier survives; the other is closed
//! with Cease/Connection Collision Resolution. A connection that meets an
//! Established one is the one closed.
//!
//! [`resolve`] is the rule; [`Peer`] runs one [`Session`] per connection
//! (at most one each way) and applies it, so the owner of a peer deals
//! with connections tagged by [`Direction`] instead of one session.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::{Direction, Event, Output, Pending, Reason, SendError, Session, SessionConfig, State};
use crate::wire;

#[cfg(test)]
mod tests;

/// Which connection survives a collision: the one initiated by the
/// speaker with the higher BGP identifier (compared as 32-bit numbers).
pub fn resolve(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> Direction {
    if u32::from(local_id) > u32::from(remote_id) {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

/// One configured peer: the main session (which connects, retries and
/// keeps the graceful-restart state) and, while a collision lasts, a
/// second session for the other connection.
///
/// The owner reports connection events tagged with the connection's
/// direction (`Outgoing`: the one opened after [`Output::Connect`]) and
/// acts on outputs tagged the same way: a `Transmit` or `Disconnect`
/// tagged `Incoming` is for the connection the peer opened.
#[derive(Debug)]
pub struct Peer {
    pub(super) main: Session,
    /// The second connection, always incoming (the main session is the
    /// only one that connects out).
    pub(super) second: Option<Session>,
    pending: VecDeque<(Direction, Pending)>,
    /// What the second session would tell the owner (Established,
    /// UPDATEs, Down, ...), held back until it wins the collision and
    /// dropped if it loses. One read can carry the peer's OPEN, KEEPALIVE
    /// and Cease on the losing connection: passed on, they would tell the
    /// owner the peer went up and down while the main session lives on.
    held: VecDeque<(Direction, Pending)>,
}

impl Peer {
    pub fn new(config: SessionConfig) -> Peer {
        Peer {
            main: Session::new(config),
            second: None,
            pending: VecDeque::new(),
            held: VecDeque::new(),
        }
    }

    /// The session that is (or is becoming) the peer's session.
    pub fn session(&self) -> &Session {
        &self.main
    }

    /// The session of the other connection during a collision.
    pub fn second(&self) -> Option<&Session> {
        self.second.as_ref()
    }

    pub fn start(&mut self, now: Instant) {
        self.main.handle_event(now, Event::ManualStart);
        self.after(now, None);
    }

    /// ManualStop on every connection.
    pub fn stop(&mut self, now: Instant) {
        if let Some(second) = &mut self.second {
            let before = second.direction();
            second.handle_event(now, Event::ManualStop);
            self.drain(true, before);
        }
        self.drop_second();
        self.main.handle_event(now, Event::ManualStop);
        self.after(now, None);
    }

    /// An event on the connection opened in `direction`. Returns false when
    /// an incoming connection is refused (the peer is stopped, or one from
    /// the peer already exists): the owner closes it. Events for a
    /// connection no session owns any more are ignored.
    pub fn handle_event(&mut self, now: Instant, direction: Direction, event: Event<'_>) -> bool {
        let to_main = match (direction, event) {
            (Direction::Incoming, Event::TcpConnectionConfirmed) => {
                let taken =
                    self.main.direction() == Some(Direction::Incoming) || self.second.is_some();
                let stopped = self.main.state() == State::Idle && !self.main.auto_restart;
                if taken || stopped {
                    return false;
                }
                // The main session takes it unless it has a connection or an
                // attempt of its own under way.
                let main_free = matches!(self.main.state(), State::Idle | State::Active)
                    && self.main.auto_restart;
                if !main_free {
                    let mut config = self.main.config.clone();
                    config.passive = true;
                    let mut second = Session::new(config);
                    second.handle_event(now, Event::ManualStart);
                    second.auto_restart = false;
                    self.second = Some(second);
                }
                main_free
            }
            (direction, _) => {
                let main = self.main.direction();
                if main == Some(direction) || (main.is_none() && direction == Direction::Outgoing) {
                    true
                } else if self
                    .second
                    .as_ref()
                    .is_some_and(|s| s.direction() == Some(direction))
                {
                    false
                } else {
                    // A connection no session owns (already closed): ignore.
                    return true;
                }
            }
        };
        if to_main {
            let before = self.main.direction();
            self.main.handle_event(now, event);
            self.after(now, before);
        } else if let Some(second) = &mut self.second {
            let before = second.direction();
            second.handle_event(now, event);
            self.drain(true, before);
            self.after(now, self.main.direction());
        }
        true
    }

    /// Sends an UPDATE on the established session.
    pub fn send_update(&mut self, now: Instant, update: wire::Update) -> Result<(), SendError> {
        let before = self.main.direction();
        let sent = self.main.send_update(now, update);
        self.after(now, before);
        sent
    }

    /// Sends End-of-RIB for `family` on the established session.
    pub fn send_end_of_rib(
        &mut self,
        now: Instant,
        family: wire::AfiSafi,
    ) -> Result<(), SendError> {
        let before = self.main.direction();
        let sent = self.main.send_end_of_rib(now, family);
        self.after(now, before);
        sent
    }

    /// Closes every connection with `notification` (e.g. Cease/Peer
    /// De-configured) and stops: no automatic restart.
    pub fn shut_down(&mut self, now: Instant, notification: wire::Notification) {
        if let Some(second) = &mut self.second {
            let before = second.direction();
            second.stop(now, notification.clone());
            self.drain(true, before);
        }
        self.drop_second();
        let before = self.main.direction();
        self.main.stop(now, notification);
        self.after(now, before);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(second) = &mut self.second {
            let before = second.direction();
            second.handle_timeout(now);
            self.drain(true, before);
        }
        let before = self.main.direction();
        self.main.handle_timeout(now);
        self.after(now, before);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let second = self.second.as_ref().and_then(Session::poll_timeout);
        self.main.poll_timeout().into_iter().chain(second).min()
    }

    /// The next thing to do, and on which connection.
    pub fn poll_output(&mut self) -> Option<(Direction, Output)> {
        let (direction, pending) = self.pending.pop_front()?;
        Some(match pending {
            Pending::Send(message, ctx) => {
                (direction, Output::Transmit(wire::encode(&message, ctx)))
            }
            Pending::Out(output) => (direction, output),
        })
    }

    #[cfg(test)]
    pub(crate) fn poll_pending(&mut self) -> Option<(Direction, Pending)> {
        self.pending.pop_front()
    }

    /// After the main session ran: collect outputs, resolve collisions,
    /// promote the second session when it is the one that lives on.
    pub(super) fn after(&mut self, now: Instant, main_before: Option<Direction>) {
        self.drain(false, main_before);
        self.resolve_collision(now);
        // The second session is one-shot: without its connection it is done.
        if self
            .second
            .as_ref()
            .is_some_and(|s| !s.state().is_connected())
        {
            self.drop_second();
        }
    }

    fn resolve_collision(&mut self, now: Instant) {
        let Some(second) = &self.second else { return };
        let (main_state, second_state) = (self.main.state(), second.state());
        if !second_state.is_connected() {
            return;
        }
        let second_wins = match (main_state, second_state) {
            // Main has neither a connection nor an attempt: nothing collides.
            (State::Idle | State::Active, _) => true,
            // RFC 4271 section 6.8: an Established connection survives the
            // newcomer, once its OPEN shows it is not a graceful-restart
            // peer that restarted (RFC 4724 section 4.2: then the old
            // connection is dead and the new one takes over).
            (State::Established, _) => {
                if second.negotiated().is_none() {
                    return;
                }
                if self.main.graceful(&Reason::PeerRestarted).is_some() {
                    let before = self.main.direction();
                    self.main.close(now, Reason::PeerRestarted, None);
                    self.drain(false, before);
                    true
                } else {
                    false
                }
            }
            (_, State::Established) => true,
            // Our attempt is still under way while the peer's connection
            // already carries its OPEN: take that one and drop the attempt.
            // The peer cannot have our OPEN on the attempt, so it never
            // prefers it; waiting for the attempt instead would let the
            // peer go Established on its connection while we compare.
            (State::Connect, _) => {
                if second.negotiated().is_none() {
                    return;
                }
                true
            }
            _ => {
                // Compare once both connections have the peer's OPEN.
                // Deciding earlier, on a connection still in OpenSent,
                // races with the peer: it may be abandoning that very
                // connection, and each side would close the one the other
                // kept.
                let (Some(theirs), Some(_)) = (second.negotiated(), self.main.negotiated()) else {
                    return;
                };
                resolve(self.main.config.local_id, theirs.peer_id) == Direction::Incoming
            }
        };
        if !second_wins {
            let Some(second) = &mut self.second else {
                return;
            };
            let before = second.direction();
            if let Some(d) = before {
                self.unqueue_keepalives(d);
            }
            let Some(second) = &mut self.second else {
                return;
            };
            second.close_collision(now);
            self.drain(true, before);
            self.drop_second();
            return;
        }
        let Some(mut winner) = self.second.take() else {
            return;
        };
        // The loser: main. Close it, keep its graceful-restart state and
        // its role (connecting out, restarting) for the winner.
        let before = self.main.direction();
        if let Some(d) = before {
            self.unqueue_keepalives(d);
        }
        match self.main.state() {
            State::Idle => {}
            State::Connect => self.main.stop_quietly(),
            _ => self.main.close_collision(now),
        }
        self.drain(false, before.or(Some(Direction::Outgoing)));
        winner.config.passive = self.main.config.passive;
        winner.auto_restart = self.main.auto_restart;
        winner.failures = self.main.failures;
        winner.adopt_stale(now, &mut self.main);
        self.main = winner;
        // The owner hears of the winner after the loser's Down.
        self.pending.append(&mut self.held);
        self.drain(false, self.main.direction());
    }

    /// The second session is done: what it held back goes with it.
    fn drop_second(&mut self) {
        self.second = None;
        self.held.clear();
    }

    /// Takes back the KEEPALIVEs not yet written on a connection that lost
    /// the collision: one that went out before its Cease would make the
    /// peer's side of it Established for a moment, and the Cease would then
    /// take a session down that the other connection is about to bring up.
    fn unqueue_keepalives(&mut self, direction: Direction) {
        self.pending.retain(|(d, p)| {
            !(*d == direction && matches!(p, Pending::Send(wire::Message::Keepalive, _)))
        });
    }

    fn drain(&mut self, second: bool, before: Option<Direction>) {
        let session = if second {
            match &mut self.second {
                Some(s) => s,
                None => return,
            }
        } else {
            &mut self.main
        };
        let direction = session.direction().or(before);
        while let Some(p) = session.poll_pending() {
            let d = match &p {
                Pending::Out(Output::Connect) => Direction::Outgoing,
                _ => direction.unwrap_or(Direction::Outgoing),
            };
            let for_the_owner = !matches!(
                p,
                Pending::Send(..)
                    | Pending::Out(Output::Connect | Output::Disconnect | Output::Transmit(_))
            );
            if second && for_the_owner {
                self.held.push_back((d, p));
            } else {
                self.pending.push_back((d, p));
            }
        }
    }
}
