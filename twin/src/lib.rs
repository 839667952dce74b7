//! weft-twin: the userspace twin of Weft's eBPF packet path.
//!
//! It runs the decisions of `weft-common`, the very code the tc programs are
//! built from, over in-memory maps, so the packet path can be exercised
//! without root and compared byte for byte with the loaded programs.
//!
//! - [`hooks`]: one function per tc program: a frame in, the program's tc
//!   action, counter and output bytes out.

pub mod hooks;
