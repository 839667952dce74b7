//! weftctl's commands that are more than a call into a library: `lab
//! trace` reads the lab's nodes and hands what it read to the twin's trace.
//! The lab itself is the `weft-lab` crate. `install-cni` (the DaemonSet's
//! init container) installs weft-cni and its network config on a node.

pub mod install_cni;
pub mod trace;
