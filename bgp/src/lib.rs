//! weft-bgp: the route distributor's BGP-4 speaker.
//!
//! The core is deterministic and does no I/O (in the style of quinn-proto):
//! it is driven by events with the time passed in, and says what to send and
//! when it next needs to be woken. A thin tokio shell owns sockets and timers.
//!
//! - [`wire`]: messages as typed values, their decoding (with the RFC 4271
//!   section 6 NOTIFICATION for every malformed input) and encoding.
//! - [`session`]: one peer's RFC 4271 finite state machine, capability
//!   negotiation, hold/keepalive/connect-retry timers, graceful restart.
//! - [`rib`]: Adj-RIB-In, Loc-RIB with best-path selection, Adj-RIB-Out with
//!   iBGP, eBGP and route-reflection export rules.
//! - [`speaker`]: a whole speaker: sessions and RIBs wired together, the
//!   owner's duties of the session layer done, still without I/O.
//! - [`shell`]: the tokio shell that runs a speaker on real sockets and
//!   timers, controlled through a [`shell::BgpHandle`].
//! - [`tcp_md5`]: TCP MD5 signatures (RFC 2385) for sessions with a password.

pub mod rib;
pub mod session;
pub mod shell;
pub mod speaker;
pub mod tcp_md5;
pub mod wire;
