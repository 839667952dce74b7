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

pub mod rib;
pub mod session;
pub mod wire;
