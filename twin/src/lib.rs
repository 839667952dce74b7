//! weft-twin: the userspace twin of Weft's eBPF packet path.
//!
//! It runs the decisions of `weft-common`, the very code the tc programs are
//! built from, over in-memory maps, so the packet path can be exercised
//! without root and compared byte for byte with the loaded programs.
//!
//! - [`hooks`]: one function per tc program: a frame in, the program's tc
//!   action, counter and output bytes out.
//! - [`node`]: a node's tables as plain data ([`NodeTables`]: the eBPF maps
//!   and the kernel routes) and the engine that plays the node's kernel
//!   around the hooks: routing, MTU and ICMP, fragmentation, ARP, vxlan.
//! - [`netpol`]: a policy case run on a cluster built for it, every probe
//!   real traffic (`weftctl policy simulate`).
//! - [`policy`]: a node's policy maps and connection tracker as tables.
//! - [`cluster`]: nodes joined by a simulated underlay, pods that are
//!   smoltcp interfaces holding real TCP and UDP conversations, on a
//!   virtual clock ([`Cluster`]).
//! - [`trace()`]: one synthetic packet walked through nodes' tables,
//!   returning every decision on its way ([`Step`]); [`mod@trace`] also turns
//!   kernel facts read off live nodes into those tables and the steps into
//!   a verdict and a report (`weftctl lab trace`).
//! - [`wire`]: the packets around the decisions (ARP, ICMP, UDP, VXLAN)
//!   and [`wire::Probe`], a synthetic packet.

pub mod cluster;
pub mod hooks;
pub mod netpol;
pub mod node;
pub mod policy;
pub mod step;
pub mod trace;
pub mod wire;

pub use cluster::{Captured, Cluster, ClusterConfig, Pod, PodId};
pub use node::{Counters, KernelRoute, KernelStats, NodeTables, Via, VxlanDevice, VxlanPeer};
pub use policy::{Conntrack, DirectionVerdict, PolicyTables, PolicyVerdict};
/// The smoltcp the pods are built with, for their sockets.
pub use smoltcp;
pub use step::{RouteDecision, Step, VethHook, VxlanDecision};
pub use trace::{TraceError, trace};
pub use weft_common::maps::Encap;
