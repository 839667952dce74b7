//! The session's deadlines. Each timer is just an optional instant: the
//! session is woken by its owner at `poll_timeout()` and compares.

use std::time::{Duration, Instant};

/// RFC 4271 section 8.2.2: the hold timer while waiting for the peer's OPEN
/// ("a large value"; 4 minutes is suggested).
pub(super) const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// The automatic restart delay never grows past this (or past the connect
/// retry time, if that is larger).
pub(super) const MAX_RESTART_DELAY: Duration = Duration::from_secs(120);

/// The first retry after a connection that ended before the peer's OPEN.
/// Such a peer is usually about to accept us (a node whose agent has not yet
/// read our node record closes connections from addresses it does not
/// know), so waiting a whole connect-retry time would only delay the routes.
pub(super) const FIRST_QUICK_RETRY: Duration = Duration::from_millis(25);

/// A session that stayed Established this long is considered stable: its
/// next failure restarts the backoff.
pub(super) const STABLE_SESSION: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub(super) struct Timers {
    /// RFC 4271 ConnectRetryTimer (Connect and Active).
    pub connect_retry: Option<Instant>,
    /// RFC 4271 HoldTimer (OpenSent, OpenConfirm, Established).
    pub hold: Option<Instant>,
    /// RFC 4271 KeepaliveTimer (OpenConfirm, Established).
    pub keepalive: Option<Instant>,
    /// Automatic restart out of Idle after an error (RFC 4271 IdleHoldTimer,
    /// the DampPeerOscillations option in its simplest form).
    pub idle_hold: Option<Instant>,
    /// RFC 4724 helper: how long the peer said it needs to come back.
    pub gr_restart: Option<Instant>,
    /// RFC 4724 helper: how long we wait for End-of-RIB once it is back.
    pub gr_stale: Option<Instant>,
}

impl Timers {
    pub fn earliest(&self) -> Option<Instant> {
        [
            self.connect_retry,
            self.hold,
            self.keepalive,
            self.idle_hold,
            self.gr_restart,
            self.gr_stale,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Takes the deadline out of `timer` if it has passed.
pub(super) fn expired(timer: &mut Option<Instant>, now: Instant) -> bool {
    match *timer {
        Some(deadline) if deadline <= now => {
            *timer = None;
            true
        }
        _ => false,
    }
}

/// The delay before the `failures`-th consecutive automatic restart:
/// connect_retry, then doubling, capped at max(connect_retry, 2 minutes).
pub(super) fn restart_delay(connect_retry: Duration, failures: u32) -> Duration {
    let cap = connect_retry.max(MAX_RESTART_DELAY);
    let shift = failures.saturating_sub(1).min(16);
    connect_retry.saturating_mul(1u32 << shift).min(cap)
}

/// The wait after the `refused`-th consecutive connection that ended before
/// the peer's OPEN: [`FIRST_QUICK_RETRY`], then doubling, never more than
/// the connect-retry time. A peer that keeps refusing is soon tried at the
/// connect-retry pace again.
pub(super) fn quick_retry_delay(connect_retry: Duration, refused: u32) -> Duration {
    let shift = refused.saturating_sub(1).min(16);
    FIRST_QUICK_RETRY
        .saturating_mul(1u32 << shift)
        .min(connect_retry)
}

/// Seconds as a Duration.
pub(super) fn secs(s: u16) -> Duration {
    Duration::from_secs(u64::from(s))
}
