//! IPv4 headers (RFC 791): a checked view over a frame, the Internet
//! checksum (RFC 1071), and the representation of the outer header Weft
//! emits when it encapsulates.
//!
//! In the style of smoltcp: [`Ipv4Header::new_checked`] validates once
//! (version, IHL, total length against the frame) and the accessors after it
//! cannot fail; [`Ipv4Repr::emit`] writes a header with its checksum. The
//! view copies the fixed 20 bytes out of the frame (one `read`, which the
//! eBPF reader turns into one `bpf_skb_load_bytes`); options are only read
//! again for the checksum, word by word, in a loop bounded by IHL ≤ 15.

use crate::packet::PacketReader;

/// Length of a header without options (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;
/// Length of a header with the most options IHL can describe (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

/// Protocol number of IP-in-IP (RFC 2003).
pub const PROTOCOL_IPIP: u8 = 4;
pub const PROTOCOL_ICMP: u8 = 1;
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;

/// The "don't fragment" bit, in the flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
/// The "more fragments" bit, in the flags/fragment-offset word.
const FLAG_MF: u16 = 0x2000;
/// The fragment offset (in 8-byte units), in the flags/fragment-offset word.
const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// Why bytes are not an IPv4 header Weft will act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv4Error {
    /// Fewer than 20 bytes at the offset.
    Truncated,
    /// The version nibble is not 4.
    Version,
    /// IHL below 5, or IHL words running past the end of the frame.
    HeaderLen,
    /// Total length shorter than the header, or longer than the frame holds.
    TotalLen,
}

/// A validated IPv4 header inside a frame.
///
/// Holds a copy of the fixed part; guarantees version 4, `20 ≤ header_len ≤
/// total_len`, and `offset + total_len ≤ frame_len` (the frame may be
/// longer: Ethernet padding).
#[derive(Debug)]
pub struct Ipv4Header<'a, R: PacketReader + ?Sized> {
    frame: &'a R,
    offset: usize,
    fixed: [u8; MIN_HEADER_LEN],
}

// By hand: a derive would require `R: Copy`, which `[u8]` is not.
impl<R: PacketReader + ?Sized> Clone for Ipv4Header<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: PacketReader + ?Sized> Copy for Ipv4Header<'_, R> {}

impl<'a, R: PacketReader + ?Sized> Ipv4Header<'a, R> {
    /// Validates the header that starts `offset` bytes into `frame`.
    #[inline(always)]
    pub fn new_checked(frame: &'a R, offset: usize) -> Result<Self, Ipv4Error> {
        let fixed = frame
            .read::<MIN_HEADER_LEN>(offset)
            .ok_or(Ipv4Error::Truncated)?;
        let header = Ipv4Header {
            frame,
            offset,
            fixed,
        };
        if header.version() != 4 {
            return Err(Ipv4Error::Version);
        }
        // Bytes of the frame from the header on; `read` succeeded, so no underflow.
        let available = frame.frame_len().saturating_sub(offset);
        let header_len = header.header_len();
        if header_len < MIN_HEADER_LEN || header_len > available {
            return Err(Ipv4Error::HeaderLen);
        }
        let total_len = usize::from(header.total_len());
        if total_len < header_len || total_len > available {
            return Err(Ipv4Error::TotalLen);
        }
        Ok(header)
    }

    /// Offset of the header in the frame.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The fixed 20 bytes, as read (options excluded).
    pub fn fixed_bytes(&self) -> [u8; MIN_HEADER_LEN] {
        self.fixed
    }

    fn word(&self, at: usize) -> u16 {
        // `at` is a constant below 19 at every call site.
        match (self.fixed.get(at), self.fixed.get(at + 1)) {
            (Some(&hi), Some(&lo)) => u16::from_be_bytes([hi, lo]),
            _ => 0,
        }
    }

    fn addr(&self, at: usize) -> [u8; 4] {
        let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, c, d, e, f, g, h] = self.fixed;
        if at == 12 { [a, b, c, d] } else { [e, f, g, h] }
    }

    pub fn version(&self) -> u8 {
        self.fixed[0] >> 4
    }

    /// Header length in bytes (IHL × 4), options included: 20..=60.
    pub fn header_len(&self) -> usize {
        usize::from(self.fixed[0] & 0x0f) * 4
    }

    /// Type of service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.fixed[1]
    }

    /// Length of the datagram, header included.
    pub fn total_len(&self) -> u16 {
        self.word(2)
    }

    /// Bytes after the header (options excluded), up to the total length.
    pub fn payload_len(&self) -> usize {
        usize::from(self.total_len()).saturating_sub(self.header_len())
    }

    pub fn ident(&self) -> u16 {
        self.word(4)
    }

    pub fn dont_fragment(&self) -> bool {
        self.word(6) & FLAG_DF != 0
    }

    pub fn more_fragments(&self) -> bool {
        self.word(6) & FLAG_MF != 0
    }

    /// Offset of this fragment's data in the original datagram, in bytes.
    pub fn fragment_offset(&self) -> u16 {
        (self.word(6) & FRAGMENT_OFFSET_MASK) << 3
    }

    /// Part of a fragmented datagram (first, middle or last fragment).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.fixed[8]
    }

    pub fn protocol(&self) -> u8 {
        self.fixed[9]
    }

    pub fn checksum(&self) -> u16 {
        self.word(10)
    }

    /// Source address, wire-order octets.
    pub fn src(&self) -> [u8; 4] {
        self.addr(12)
    }

    /// Destination address, wire-order octets.
    pub fn dst(&self) -> [u8; 4] {
        self.addr(16)
    }

    /// One's complement sum over the whole header (options included), not
    /// yet complemented; `None` if an option word cannot be read.
    fn header_sum(&self) -> Option<u16> {
        let mut sum = sum_words(0, &self.fixed);
        let option_words = self.header_len().saturating_sub(MIN_HEADER_LEN) / 4;
        // At most 10 option words (IHL 15): a bound the verifier can see.
        let mut i = 0;
        while i < 10 {
            if i >= option_words {
                break;
            }
            let at = self.offset + MIN_HEADER_LEN + i * 4;
            let word = self.frame.read::<4>(at)?;
            sum = sum_words(sum, &word);
            i += 1;
        }
        Some(fold(sum))
    }

    /// The header checksum is right (RFC 1071: the sum over the header,
    /// checksum field included, is all ones).
    pub fn verify_checksum(&self) -> bool {
        self.header_sum() == Some(0xffff)
    }

    /// The checksum this header should carry (computed as if its checksum
    /// field were zero).
    pub fn compute_checksum(&self) -> Option<u16> {
        let sum = self.header_sum()?;
        // Remove the stored checksum from the sum: one's complement subtraction.
        Some(!fold(u32::from(sum) + u32::from(!self.checksum())))
    }
}

/// Adds `bytes` as big-endian 16-bit words to `acc` (a trailing odd byte is
/// padded with zero, as RFC 1071 says). Carries are kept in the upper half
/// and folded by [`fold`]; 32 bits hold the sum of any header.
fn sum_words(acc: u32, bytes: &[u8]) -> u32 {
    let mut sum = acc;
    let mut pairs = bytes.chunks_exact(2);
    for pair in &mut pairs {
        if let [hi, lo] = pair {
            sum += u32::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = pairs.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds the carries of a 32-bit accumulator into 16 bits.
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The Internet checksum (RFC 1071) of `bytes`: the complement of their one's
/// complement sum. Over a header whose checksum field is zero it gives the
/// value to store; over a header with a correct checksum it gives 0.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum_words(0, bytes))
}

/// The header checksum once the TTL is decremented by one, updated the way
/// Linux's `ip_decrease_ttl` updates it when it forwards, on a
/// little-endian machine: the field is loaded as a native `u16`,
/// `htons(0x0100)` is added with an end-around carry, and a sum of 0xffff
/// becomes 0x0000. An incremental update (RFC 1624), so a wrong checksum
/// stays wrong, and the bytes are the ones the node's stack would forward.
pub const fn checksum_after_ttl_decrement(checksum: u16) -> u16 {
    let [hi, lo] = checksum.to_be_bytes();
    // The two bytes as an x86 kernel loads them, plus htons(0x0100) (1 there).
    let sum = u16::from_le_bytes([hi, lo]) as u32 + 1;
    let folded = (sum + (sum >= 0xffff) as u32) as u16;
    let [a, b] = folded.to_le_bytes();
    u16::from_be_bytes([a, b])
}

/// The fields of a header without options, for emitting one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    /// Bytes after the header.
    pub payload_len: u16,
}

impl Ipv4Repr {
    /// The representation of a checked header (its options are not kept).
    /// `None` for a fragment: a repr describes a whole datagram.
    pub fn parse<R: PacketReader + ?Sized>(header: &Ipv4Header<'_, R>) -> Option<Self> {
        if header.is_fragment() {
            return None;
        }
        Some(Ipv4Repr {
            src: header.src(),
            dst: header.dst(),
            protocol: header.protocol(),
            ttl: header.ttl(),
            tos: header.tos(),
            ident: header.ident(),
            dont_fragment: header.dont_fragment(),
            payload_len: u16::try_from(header.payload_len()).ok()?,
        })
    }

    /// The 20-byte header, checksum included; `None` if 20 + `payload_len`
    /// does not fit the 16-bit total length.
    pub fn emit(&self) -> Option<[u8; MIN_HEADER_LEN]> {
        let total_len = self.payload_len.checked_add(MIN_HEADER_LEN as u16)?;
        let [tl_hi, tl_lo] = total_len.to_be_bytes();
        let [id_hi, id_lo] = self.ident.to_be_bytes();
        let flags: u8 = if self.dont_fragment { 0x40 } else { 0 };
        let [s0, s1, s2, s3] = self.src;
        let [d0, d1, d2, d3] = self.dst;
        let mut header = [
            0x45,
            self.tos,
            tl_hi,
            tl_lo, //
            id_hi,
            id_lo,
            flags,
            0, //
            self.ttl,
            self.protocol,
            0,
            0, //
            s0,
            s1,
            s2,
            s3, //
            d0,
            d1,
            d2,
            d3,
        ];
        let [c_hi, c_lo] = checksum(&header).to_be_bytes();
        header[10] = c_hi;
        header[11] = c_lo;
        Some(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgen::Gen;

    /// A captured-looking header: TCP SYN 192.168.1.10 → 93.184.216.34,
    /// id 0x1c46, DF, TTL 64, checksum 0x26e9.
    const TCP_SYN: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x26, 0xe9, 192, 168, 1, 10,
        93, 184, 216, 34,
    ];

    /// The classic RFC 1071 / Wikipedia example: checksum 0xb861.
    const WIKIPEDIA: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn with_checksum(mut header: Vec<u8>) -> Vec<u8> {
        let len = usize::from(header[0] & 0x0f) * 4;
        header[10] = 0;
        header[11] = 0;
        let c = checksum(&header[..len]).to_be_bytes();
        header[10..12].copy_from_slice(&c);
        header
    }

    /// `header` followed by `payload_len` bytes of payload.
    fn packet(header: &[u8], payload_len: usize) -> Vec<u8> {
        let mut p = header.to_vec();
        p.resize(header.len() + payload_len, 0xab);
        p
    }

    #[test]
    fn known_checksum_verifies_and_recomputes() {
        let p = packet(&WIKIPEDIA, 0x73 - 20);
        let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
        assert!(h.verify_checksum());
        assert_eq!(h.compute_checksum(), Some(0xb861));
        assert_eq!(h.checksum(), 0xb861);
        let mut zeroed = WIKIPEDIA;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(checksum(&zeroed), 0xb861);
        assert_eq!(checksum(&WIKIPEDIA), 0);
    }

    #[test]
    fn fields_of_a_captured_tcp_syn() {
        let p = packet(&TCP_SYN, 40);
        let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
        assert_eq!(h.version(), 4);
        assert_eq!(h.header_len(), 20);
        assert_eq!(h.total_len(), 60);
        assert_eq!(h.payload_len(), 40);
        assert_eq!(h.ident(), 0x1c46);
        assert!(h.dont_fragment());
        assert!(!h.more_fragments());
        assert_eq!(h.fragment_offset(), 0);
        assert!(!h.is_fragment());
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol(), PROTOCOL_TCP);
        assert_eq!(h.src(), [192, 168, 1, 10]);
        assert_eq!(h.dst(), [93, 184, 216, 34]);
        assert_eq!(h.checksum(), 0x26e9);
        assert!(h.verify_checksum());
    }

    #[test]
    fn header_at_an_offset_behind_ethernet() {
        let mut frame = vec![0u8; 14];
        frame.extend(packet(&WIKIPEDIA, 0x73 - 20));
        frame.extend([0; 6]); // padding after the datagram is allowed
        let h = Ipv4Header::new_checked(&frame[..], 14).unwrap();
        assert_eq!(h.offset(), 14);
        assert_eq!(h.dst(), [192, 168, 0, 199]);
        assert!(h.verify_checksum());
    }

    #[test]
    fn ttl_decrement_updates_the_checksum_as_linux_forwards() {
        // The Wikipedia header at TTL 63, as a full recomputation gives it.
        let mut header = WIKIPEDIA.to_vec();
        header[8] -= 1;
        assert_eq!(with_checksum(header)[10..12], [0xb9, 0x61]);
        assert_eq!(checksum_after_ttl_decrement(0xb861), 0xb961);
        // Carries out of the high byte wrap around into the low byte.
        assert_eq!(checksum_after_ttl_decrement(0xff12), 0x0013);
        assert_eq!(checksum_after_ttl_decrement(0xffff), 0x0100);
        // Linux writes 0x0000 where the sum reaches 0xffff.
        assert_eq!(checksum_after_ttl_decrement(0xfeff), 0x0000);
        // Every header stays valid, whatever its checksum was.
        let mut g = Gen::new(0x77);
        for _ in 0..20_000 {
            let mut header = g.bytes(20);
            header[0] = 0x45;
            header[2..4].copy_from_slice(&20u16.to_be_bytes());
            header[8] = 1 + g.u8() % 255;
            let header = with_checksum(header);
            let mut after = header.clone();
            after[8] -= 1;
            let c = checksum_after_ttl_decrement(u16::from_be_bytes([header[10], header[11]]));
            after[10..12].copy_from_slice(&c.to_be_bytes());
            let p = packet(&after, 0);
            assert!(
                Ipv4Header::new_checked(&p[..], 0)
                    .unwrap()
                    .verify_checksum(),
                "{header:02x?}"
            );
        }
    }

    #[test]
    fn bad_checksum_is_detected() {
        let mut p = packet(&WIKIPEDIA, 0x73 - 20);
        p[11] ^= 0x01;
        let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
        assert!(!h.verify_checksum());
        assert_eq!(h.compute_checksum(), Some(0xb861));
        // A changed field with the old checksum fails too.
        let mut p = packet(&WIKIPEDIA, 0x73 - 20);
        p[8] = 63;
        assert!(
            !Ipv4Header::new_checked(&p[..], 0)
                .unwrap()
                .verify_checksum()
        );
    }

    #[test]
    fn options_are_covered_by_length_and_checksum() {
        for ihl in 6u8..=15 {
            let header_len = usize::from(ihl) * 4;
            let mut header = WIKIPEDIA.to_vec();
            header[0] = 0x40 | ihl;
            // Options: NOPs ended by a record-route-looking byte pattern.
            header.resize(header_len, 0x01);
            header[header_len - 1] = 0x07;
            let total = header_len + 8;
            header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let p = packet(&with_checksum(header), 8);
            let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
            assert_eq!(h.header_len(), header_len, "ihl {ihl}");
            assert_eq!(h.payload_len(), 8);
            assert!(h.verify_checksum(), "ihl {ihl}");
            // Corrupt the last option byte: only the option words catch it.
            let mut bad = p.clone();
            bad[header_len - 1] ^= 0x80;
            assert!(
                !Ipv4Header::new_checked(&bad[..], 0)
                    .unwrap()
                    .verify_checksum()
            );
        }
    }

    #[test]
    fn structural_errors() {
        let p = packet(&WIKIPEDIA, 0x73 - 20);
        assert_eq!(
            Ipv4Header::new_checked(&p[..19], 0).unwrap_err(),
            Ipv4Error::Truncated
        );
        assert_eq!(
            Ipv4Header::new_checked(&p[..], 0x73 - 10).unwrap_err(),
            Ipv4Error::Truncated
        );
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Header::new_checked(&v6[..], 0).unwrap_err(),
            Ipv4Error::Version
        );
        for ihl in 0..5 {
            let mut short = p.clone();
            short[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Header::new_checked(&short[..], 0).unwrap_err(),
                Ipv4Error::HeaderLen
            );
        }
        // IHL 15 (60 bytes) in a 24-byte frame.
        let mut long = p[..24].to_vec();
        long[0] = 0x4f;
        assert_eq!(
            Ipv4Header::new_checked(&long[..], 0).unwrap_err(),
            Ipv4Error::HeaderLen
        );
        // Total length below the header, and beyond the frame.
        let mut tl = p.clone();
        tl[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Header::new_checked(&tl[..], 0).unwrap_err(),
            Ipv4Error::TotalLen
        );
        let mut tl = p.clone();
        tl[0] = 0x46;
        tl[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(
            Ipv4Header::new_checked(&tl[..], 0).unwrap_err(),
            Ipv4Error::TotalLen
        );
        assert_eq!(
            Ipv4Header::new_checked(&p[..0x72], 0).unwrap_err(),
            Ipv4Error::TotalLen
        );
    }

    #[test]
    fn fragments() {
        // First fragment: MF, offset 0.
        let mut first = WIKIPEDIA;
        first[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        // Middle: MF, offset 185 × 8 = 1480.
        let mut middle = WIKIPEDIA;
        middle[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        // Last: offset 370 × 8 = 2960, no MF.
        let mut last = WIKIPEDIA;
        last[6..8].copy_from_slice(&370u16.to_be_bytes());
        let cases = [(first, true, 0), (middle, true, 1480), (last, false, 2960)];
        for (header, mf, offset) in cases {
            let p = packet(&with_checksum(header.to_vec()), 0x73 - 20);
            let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
            assert!(h.is_fragment());
            assert!(!h.dont_fragment());
            assert_eq!(h.more_fragments(), mf);
            assert_eq!(h.fragment_offset(), offset);
            assert!(h.verify_checksum());
            assert_eq!(Ipv4Repr::parse(&h), None);
        }
    }

    #[test]
    fn emit_then_parse() {
        let repr = Ipv4Repr {
            src: [198, 18, 0, 1],
            dst: [198, 18, 0, 2],
            protocol: PROTOCOL_IPIP,
            ttl: 64,
            tos: 0xb8,
            ident: 0xbeef,
            dont_fragment: true,
            payload_len: 84,
        };
        let header = repr.emit().unwrap();
        assert_eq!(&header[..4], &[0x45, 0xb8, 0x00, 104]);
        assert_eq!(&header[6..10], &[0x40, 0x00, 64, 4]);
        assert_eq!(checksum(&header), 0);
        let p = packet(&header, 84);
        let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
        assert!(h.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&h), Some(repr));
    }

    #[test]
    fn emit_refuses_a_total_length_over_65535() {
        let repr = Ipv4Repr {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            protocol: PROTOCOL_UDP,
            ttl: 1,
            tos: 0,
            ident: 0,
            dont_fragment: false,
            payload_len: 65535 - 20,
        };
        assert!(repr.emit().is_some());
        assert_eq!(
            Ipv4Repr {
                payload_len: 65535 - 19,
                ..repr
            }
            .emit(),
            None
        );
    }

    #[test]
    fn odd_length_checksum_pads_with_zero() {
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[0x01, 0x00]), checksum(&[0x01]));
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn property_emitted_headers_parse_back_and_verify() {
        let mut g = Gen::new(0x5eed);
        for _ in 0..2000 {
            let repr = Ipv4Repr {
                src: g.addr(),
                dst: g.addr(),
                protocol: g.u8(),
                ttl: g.u8(),
                tos: g.u8(),
                ident: g.u16(),
                dont_fragment: g.u8() & 1 == 1,
                payload_len: g.below(1500) as u16,
            };
            let header = repr.emit().unwrap();
            let p = packet(&header, usize::from(repr.payload_len));
            let h = Ipv4Header::new_checked(&p[..], 0).unwrap();
            assert!(h.verify_checksum());
            assert_eq!(h.compute_checksum(), Some(h.checksum()));
            assert_eq!(Ipv4Repr::parse(&h), Some(repr));
            // Any single flipped bit in the header is caught.
            let bit = g.below(160);
            let mut bad = p.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if let Ok(h) = Ipv4Header::new_checked(&bad[..], 0) {
                assert!(!h.verify_checksum(), "flipped bit {bit} of {header:02x?}");
            }
        }
    }

    #[test]
    fn property_random_bytes_never_panic_and_respect_the_frame() {
        let mut g = Gen::new(7);
        for _ in 0..5000 {
            let len = g.below(80);
            let mut bytes = g.bytes(len);
            if let Some(b) = bytes.first_mut() {
                *b = 0x40 | (*b & 0x0f); // mostly version 4, any IHL
            }
            let offset = g.below(4);
            if let Ok(h) = Ipv4Header::new_checked(&bytes[..], offset) {
                assert!(h.header_len() >= 20);
                assert!(h.header_len() <= usize::from(h.total_len()));
                assert!(offset + usize::from(h.total_len()) <= bytes.len());
                assert!(h.compute_checksum().is_some());
                let _ = h.verify_checksum();
            }
        }
    }
}
