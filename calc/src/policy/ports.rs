//! Port ranges as LPM prefixes of a [`PolicyKey`]'s port field.

use weft_common::maps::POLICY_PREFIX_PROTOCOL;

/// The fewest aligned blocks that cover `first..=last` exactly, each as
/// (first port of the block, prefix length of the whole key): a block of
/// 2^k ports fixes the port's top 16 - k bits.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest block aligned at `lo` that does not pass `hi`.
        let mut k = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << k) - 1 > hi {
            k -= 1;
        }
        out.push((lo as u16, POLICY_PREFIX_PROTOCOL + 16 - k));
        lo += 1 << k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ports a prefix list covers, as the trie would match them.
    fn covered(prefixes: &[(u16, u32)]) -> Vec<u16> {
        let mut ports: Vec<u16> = prefixes
            .iter()
            .flat_map(|&(start, len)| {
                let size = 1u32 << (POLICY_PREFIX_PROTOCOL + 16 - len);
                assert_eq!(u32::from(start) % size, 0, "aligned");
                (u32::from(start)..u32::from(start) + size).map(|p| p as u16)
            })
            .collect();
        ports.sort();
        ports
    }

    #[test]
    fn ranges_become_the_fewest_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), [(80, 96)]);
        assert_eq!(port_prefixes(0, u16::MAX), [(0, 80)]);
        assert_eq!(port_prefixes(8080, 8083), [(8080, 94)]);
        // 1..=65535: 16 blocks (1, 2-3, 4-7, ... 32768-65535).
        assert_eq!(port_prefixes(1, u16::MAX).len(), 16);
        assert_eq!(
            port_prefixes(32000, 32768),
            [(32000, 88), (32256, 87), (32768, 96)]
        );
        for (first, last) in [
            (1, 1),
            (1, 65535),
            (80, 90),
            (1000, 2047),
            (32000, 32768),
            (65535, 65535),
        ] {
            let p = port_prefixes(first, last);
            assert_eq!(
                covered(&p),
                (first..=last).collect::<Vec<_>>(),
                "{first}-{last}"
            );
            // Minimal: no two blocks could merge into one aligned block.
            for w in p.windows(2) {
                let (a, b) = (w[0], w[1]);
                let size = 1u32 << (96 - a.1);
                assert!(
                    !(a.1 == b.1 && u32::from(a.0) % (2 * size) == 0),
                    "{first}-{last}: {p:?} merges"
                );
            }
        }
    }
}
