//! Graceful restart, the restarting speaker's side (RFC 4724 §4.1): BGP
//! routes a previous run left in the kernel stay until BGP has relearned
//! its table (every peer's End-of-RIB) or the restart time is over, so
//! forwarding never has a gap. Time is passed in.

use std::time::{Duration, Instant};

use weft_dataplane::route::{RTPROT_WEFT_BGP, Route};

/// The BGP routes a previous run left, and until when they are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptRoutes {
    routes: Vec<Route>,
    deadline: Instant,
}

impl KeptRoutes {
    /// What start-up finds among the routes Weft owns: its BGP routes mean
    /// the agent is restarting with forwarding kept (`None`: a cold start).
    /// They are kept for at most `restart_time` from `now`.
    pub fn at_start(owned: &[Route], now: Instant, restart_time: Duration) -> Option<KeptRoutes> {
        let routes: Vec<Route> = owned
            .iter()
            .filter(|r| r.protocol == RTPROT_WEFT_BGP)
            .copied()
            .collect();
        (!routes.is_empty()).then(|| KeptRoutes {
            routes,
            deadline: now + restart_time,
        })
    }

    /// The routes still kept at `now`, given whether BGP is synchronized
    /// again (the speaker has this node's peers and every one's
    /// End-of-RIB; a speaker told no peers yet is not); `None` once they
    /// may go (the caller drops the `KeptRoutes`).
    pub fn still_kept(&self, now: Instant, synchronized: bool) -> Option<&[Route]> {
        (!synchronized && now < self.deadline).then_some(self.routes.as_slice())
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bgp(dst: &str) -> Route {
        Route::learned(dst.parse().unwrap(), "198.18.0.12".parse().unwrap(), 2)
    }

    #[test]
    fn only_bgp_routes_make_a_restart() {
        let t0 = Instant::now();
        let local = Route::to_local_pod("10.244.1.2".parse().unwrap(), 7);
        assert_eq!(
            KeptRoutes::at_start(&[local], t0, Duration::from_secs(120)),
            None
        );
        let kept =
            KeptRoutes::at_start(&[local, bgp("10.244.2.0/24")], t0, Duration::from_secs(120))
                .unwrap();
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn kept_until_synchronized_or_the_restart_time_is_over() {
        // A fake clock: instants at chosen offsets from one origin.
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let kept =
            KeptRoutes::at_start(&[bgp("10.244.2.0/24")], t0, Duration::from_secs(120)).unwrap();
        assert_eq!(kept.still_kept(at(0), false).map(<[Route]>::len), Some(1));
        assert_eq!(kept.still_kept(at(119), false).map(<[Route]>::len), Some(1));
        // Synchronized early: they may go at once.
        assert_eq!(kept.still_kept(at(5), true), None);
        // Never synchronized: they go at the deadline, not a moment later.
        assert_eq!(kept.still_kept(at(120), false), None);
        assert_eq!(kept.still_kept(at(3600), false), None);
    }
}
