//! weft-dataplane: describes and programs a node's dataplane.
//!
//! - [`names`]: the names Weft gives to kernel objects it owns.
//! - [`netns`]: running code inside another network namespace.
//! - [`link`]: veth pairs and pod-side interface configuration (used by weft-cni).
//! - [`route`]: Weft-owned routes, the pure diff and its netlink shell.
//! - [`uplink`]: the node's interface towards the underlay.
//! - [`vxlan`]: encapsulation mode `vxlan`: the kernel VXLAN device, its FDB and neighbour entries.
//! - [`bpf`]: loading, pinning and attaching the eBPF programs and their maps.

//!
//! Without the default feature `kernel` only the pure half builds ([`names`],
//! and [`route`]'s `Route` and `plan`): what the agent's calculation needs,
//! with no netlink, aya or tokio behind it.

#[cfg(feature = "kernel")]
pub mod bpf;
#[cfg(feature = "kernel")]
pub mod kernel;
#[cfg(feature = "kernel")]
pub mod link;
pub mod names;
#[cfg(feature = "kernel")]
pub mod netns;
pub mod route;
#[cfg(feature = "kernel")]
pub mod uplink;
#[cfg(feature = "kernel")]
pub mod vxlan;
