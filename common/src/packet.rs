//! Reading a frame: the one primitive both worlds provide, and the wire
//! constants of the headers the packet path looks at.
//!
//! The eBPF side implements [`PacketReader`] with `bpf_skb_load_bytes`, which
//! copies into the stack and handles non-linear skbs; userspace implements it
//! for `&[u8]`. Reads are fixed-size arrays at offsets so the verifier sees
//! constant sizes and the decision code has no indexing that could panic.

/// Loads fixed-size fields out of an Ethernet frame.
pub trait PacketReader {
    /// Length of the whole frame in bytes, from the Ethernet header on.
    fn frame_len(&self) -> usize;
    /// The `N` bytes at `offset`, or `None` if they are not all in the frame.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl PacketReader for [u8] {
    fn frame_len(&self) -> usize {
        self.len()
    }

    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// Ethernet II header: destination, source, ethertype.
pub mod ethernet {
    pub const HEADER_LEN: usize = 14;
    pub const ETHERTYPE_OFFSET: usize = 12;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_ARP: u16 = 0x0806;
    pub const ETHERTYPE_IPV6: u16 = 0x86DD;
}

/// IPv4 header (RFC 791), offsets from the start of the IPv4 header.
pub mod ipv4 {
    /// Minimum header length (IHL 5).
    pub const MIN_HEADER_LEN: usize = 20;
    pub const VERSION_IHL_OFFSET: usize = 0;
    pub const SOURCE_OFFSET: usize = 12;
    pub const DESTINATION_OFFSET: usize = 16;
}

/// The frame's ethertype, if the frame holds an Ethernet header.
#[inline(always)]
pub fn ethertype<R: PacketReader + ?Sized>(frame: &R) -> Option<u16> {
    frame
        .read::<2>(ethernet::ETHERTYPE_OFFSET)
        .map(u16::from_be_bytes)
}

/// The source address (wire-order octets) of the IPv4 packet after the
/// Ethernet header, if the header there is a complete, well-formed IPv4
/// header: version 4, IHL ≥ 5, and all IHL words inside the frame.
#[inline(always)]
pub fn ipv4_source<R: PacketReader + ?Sized>(frame: &R) -> Option<[u8; 4]> {
    let l3 = ethernet::HEADER_LEN;
    let [version_ihl] = frame.read::<1>(l3 + ipv4::VERSION_IHL_OFFSET)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < ipv4::MIN_HEADER_LEN {
        return None;
    }
    if frame.frame_len() < l3 + header_len {
        return None;
    }
    frame.read::<4>(l3 + ipv4::SOURCE_OFFSET)
}
