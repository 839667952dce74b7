//! weft-dataplane: describes and programs a node's dataplane.
//!
//! - [`names`]: the names Weft gives to kernel objects it owns.
//! - [`netns`]: running code inside another network namespace.
//! - [`link`]: veth pairs and pod-side interface configuration (used by weft-cni).
//! - [`route`]: Weft-owned routes, the pure diff and its netlink shell.
//! - [`uplink`]: the node's interface towards the underlay.
//! - [`vxlan`]: encapsulation mode `vxlan`: the kernel VXLAN device, its FDB and neighbour entries.
//! - [`bpf`]: loading, pinning and attaching the eBPF programs and their maps.

pub mod bpf;
pub mod kernel;
pub mod link;
pub mod names;
pub mod netns;
pub mod route;
pub mod uplink;
pub mod vxlan;
