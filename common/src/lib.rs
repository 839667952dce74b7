//! weft-common: the packet path's single source of truth.
//!
//! Everything here is `no_std` and allocation-free so that the eBPF programs
//! (`ebpf/`, built for `bpfel-unknown-none`) and userspace (the dataplane
//! library and its userspace twin) compile the *same* decisions and map
//! layouts. Nothing here does I/O: callers hand in a [`packet::PacketReader`]
//! and the result of their map lookups, and get a [`verdict::Verdict`] back.
//!
//! - [`maps`]: `#[repr(C)]` map keys and values, map and program names.
//! - [`verdict`]: what happens to a packet, and the counter it bumps.
//! - [`packet`]: reading fixed-size fields out of a frame, wire constants.
//! - [`guard`]: the anti-spoofing decision for packets leaving a pod.
//! - [`ipv4`]: a checked IPv4 header view, the Internet checksum, emitting
//!   the outer header of IP-in-IP.
//! - [`lookup`]: map access as traits (eBPF maps and in-memory tables).
//! - [`uplink`]: IP-in-IP encapsulation and decapsulation decisions.
//! - [`redirect`]: handing a decapsulated packet straight to a local pod.
//! - [`l4`]: the transport header after IPv4 (TCP, UDP, SCTP, ICMP and the
//!   datagram an ICMP error quotes).
//! - [`conntrack`]: the connection tracker's flow key, entry and decisions,
//!   so that replies of a connection policy allowed pass, and a policy
//!   change reaches established connections.
//! - [`policy`]: NetworkPolicy enforcement for one packet at a pod veth
//!   hook (tracker, ipcache and policy maps together).
#![cfg_attr(not(test), no_std)]

// The serde impls need `String`.
#[cfg(all(feature = "serde", not(test)))]
extern crate std;

pub mod conntrack;
pub mod guard;
pub mod ipv4;
pub mod l4;
pub mod lookup;
pub mod maps;
pub mod packet;
pub mod policy;
pub mod redirect;
pub mod uplink;
pub mod verdict;

#[cfg(test)]
mod testgen;
