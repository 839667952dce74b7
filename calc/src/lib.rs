//! weft-calc: the agent's calculation, in the spirit of Felix's
//! calculation graph. From the cluster (indexes fed one change at a time by
//! a cluster source) and what the node holds, it computes the desired state
//! of each dataplane slice, says which slices a change touches, and makes
//! the decisions whose order or timing matters (the flush order, an
//! endpoint's lifecycle, graceful-restart expiry).
//!
//! No I/O and no clock: time is passed in. It depends on no tokio, netlink
//! or aya (only the pure half of weft-dataplane), which `scripts/test.sh`
//! checks.
//!
//! - [`cluster`]: the cluster's indexes and what each change touches.
//! - [`desired`]: the desired state of every slice.
//! - [`policy`]: NetworkPolicy compiled into the policy maps.
//! - [`routing`]: BGP peers wanted, learned routes installable.
//! - [`slice`]: the slices and [`slice::FLUSH_ORDER`].
//! - [`problem`]: why wanted state cannot be built.
//! - [`lifecycle`]: when an ADD is done; the steps of DEL and GC.
//! - [`restart`]: routes kept over a graceful restart.

pub mod cluster;
pub mod desired;
pub mod lifecycle;
pub mod policy;
pub mod problem;
pub mod restart;
pub mod routing;
pub mod slice;

pub use cluster::{Cluster, Touched};
pub use desired::{ClusterView, DesiredState, Remote, desired_state};
pub use problem::Problem;
pub use slice::{FLUSH_ORDER, Slice, Slices};
