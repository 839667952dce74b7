//! Handing a decapsulated packet straight to a local pod (issue #4).
//!
//! Once the uplink's ingress program has removed the outer header of
//! IP-in-IP from a node, the inner packet is usually for a pod of this
//! node. Left to the kernel (`TC_ACT_OK`), it is routed by the node's stack
//! (`ip_rcv`, netfilter, `ip_forward`, `ip_output`, the neighbour layer),
//! sent into the pod's host veth and queued once more before the pod's
//! stack sees it. With [`NodeConfig::direct_redirect`] on, the program asks
//! the node's own FIB instead (`bpf_fib_lookup`, the same route and
//! neighbour tables), and when the answer is "out of a Weft pod veth, to
//! that pod's MAC" it does what the forwarding path would have done to the
//! bytes (the MACs from the FIB, the TTL decremented with the checksum
//! updated as `ip_decrease_ttl` does) and redirects the packet into the
//! veth's peer (`bpf_redirect_peer`): straight into the pod's namespace,
//! in the same softirq pass.
//!
//! Everything the FIB does not answer cleanly stays with the stack, which
//! then does whatever it would have done (ICMP errors, fragmentation, ARP):
//! the direct path never drops. In particular:
//!
//! - a packet with IPv4 options, a fragment, a bad header checksum, a TTL
//!   of 0 or 1, or a source the stack would call martian;
//! - a destination the FIB does not forward (local, unreachable,
//!   blackhole), or forwards but not without fragmenting (the device's MTU,
//!   checked on the whole skb: a GSO packet fits if its segments do);
//! - a route out of an interface that is not a pod veth in the endpoint
//!   map, or a pod veth whose endpoint is another address;
//! - a pod whose MAC the node has not resolved yet
//!   ([`FibResult::NoNeighbour`]): the stack forwards it and resolves the
//!   neighbour (ARP), after which the pod's packets go direct. The helper
//!   `bpf_redirect_neigh` could resolve it too, but the kernel skips its
//!   MTU check for that answer.
//!
//! What the bypass skips: the node's netfilter hooks (PREROUTING, FORWARD,
//! POSTROUTING) and conntrack never see these packets, only the pod's
//! answers, which still leave through the stack.
//!
//! The decision is here, shared by the eBPF program and the twin; the FIB
//! and the endpoint map come in through [`Fib`] and [`Endpoints`].

use crate::ipv4::{Ipv4Header, checksum_after_ttl_decrement};
use crate::lookup::{Endpoints, Fib};
use crate::maps::NodeConfig;
use crate::packet::{PacketReader, ethernet};

/// Offset of the IPv4 header in a frame.
const L3: usize = ethernet::HEADER_LEN;

/// Bytes of the frame a redirect rewrites: the Ethernet header (both MACs)
/// and the IPv4 header up to its checksum (TTL and checksum), written in
/// one store so that a failed store changes nothing.
pub const REDIRECT_HEAD_LEN: usize = L3 + 12;

/// What `bpf_fib_lookup` is asked about a decapsulated packet: the fields
/// of its IPv4 header it routes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibQuery {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub tos: u8,
    pub protocol: u8,
    /// The frame's length, Ethernet header included. The kernel checks
    /// `skb->len` against the output device (`is_skb_forwardable`: at most
    /// its MTU + 14 + 4 bytes, or any GSO packet); a userspace FIB checks
    /// this.
    pub frame_len: usize,
}

/// What `bpf_fib_lookup` answers, as far as the decision cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibResult {
    /// `BPF_FIB_LKUP_RET_SUCCESS`: forwarded out of `ifindex`, from `smac`
    /// (the device's address) to `dmac` (the next hop's, from a valid
    /// neighbour entry).
    Forward {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// `BPF_FIB_LKUP_RET_NO_NEIGH`: routed out of `ifindex`, but the next
    /// hop's MAC is not known (yet).
    NoNeighbour { ifindex: u32 },
    /// Any other answer: not forwarded (local, broadcast, blackhole,
    /// unreachable, prohibited), too big for the device, forwarding off on
    /// the uplink, or an error.
    NotForwarded,
}

/// Why a decapsulated packet is left to the node's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToStack {
    /// The node's config has the direct redirect off.
    Disabled,
    /// Not a plain IPv4 packet: a malformed header or a wrong header
    /// checksum (the stack counts and drops it), options (the forwarding
    /// path processes some), or a fragment.
    NotPlain,
    /// TTL 0 or 1: the stack answers "time exceeded".
    TtlExpiring,
    /// A source the stack refuses (0/8, 127/8, multicast, broadcast).
    MartianSource,
    /// The FIB does not forward it as it is (see [`FibResult::NotForwarded`]).
    NotForwarded,
    /// Routed to a pod veth whose pod's MAC is not resolved.
    NoNeighbour,
    /// Routed out of an interface that is not a pod veth of this node.
    NotAPodVeth,
    /// Routed to a pod veth whose endpoint has another address.
    NotThatPod,
}

/// A packet to hand to a pod: overwrite the frame's first
/// [`REDIRECT_HEAD_LEN`] bytes with `head`, then redirect it into the peer
/// of the host veth `ifindex` (the pod's `eth0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub ifindex: u32,
    pub head: [u8; REDIRECT_HEAD_LEN],
}

/// The decision for `frame`, a packet the uplink's ingress has just
/// decapsulated (Ethernet header, then the inner IPv4 packet), on a node
/// configured by `config`, whose FIB and endpoint map are `fib` and
/// `endpoints`.
#[inline(always)]
pub fn direct_redirect<R, F, E>(
    frame: &R,
    config: &NodeConfig,
    fib: &F,
    endpoints: &E,
) -> Result<Redirect, ToStack>
where
    R: PacketReader + ?Sized,
    F: Fib + ?Sized,
    E: Endpoints + ?Sized,
{
    if !config.direct_redirect() {
        return Err(ToStack::Disabled);
    }
    if crate::packet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
        return Err(ToStack::NotPlain);
    }
    let Ok(inner) = Ipv4Header::new_checked(frame, L3) else {
        return Err(ToStack::NotPlain);
    };
    if inner.header_len() != crate::ipv4::MIN_HEADER_LEN
        || inner.is_fragment()
        || !inner.verify_checksum()
    {
        return Err(ToStack::NotPlain);
    }
    if inner.ttl() <= 1 {
        return Err(ToStack::TtlExpiring);
    }
    let src = inner.src();
    if is_martian_source(src) {
        return Err(ToStack::MartianSource);
    }
    let dst = inner.dst();
    let query = FibQuery {
        src,
        dst,
        tos: inner.tos(),
        protocol: inner.protocol(),
        frame_len: frame.frame_len(),
    };
    let (ifindex, smac, dmac) = match fib.lookup(&query) {
        FibResult::Forward {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        FibResult::NoNeighbour { ifindex } => {
            // Not a pod veth is the more telling answer.
            return Err(match endpoints.endpoint(ifindex) {
                Some(_) => ToStack::NoNeighbour,
                None => ToStack::NotAPodVeth,
            });
        }
        FibResult::NotForwarded => return Err(ToStack::NotForwarded),
    };
    match endpoints.endpoint(ifindex) {
        None => return Err(ToStack::NotAPodVeth),
        Some(endpoint) if endpoint.ipv4 != dst => return Err(ToStack::NotThatPod),
        Some(_) => {}
    }
    let [d0, d1, d2, d3, d4, d5] = dmac;
    let [s0, s1, s2, s3, s4, s5] = smac;
    let [t0, t1] = ethernet::ETHERTYPE_IPV4.to_be_bytes();
    let [vi, tos, l0, l1, i0, i1, f0, f1, ttl, proto, ..] = inner.fixed_bytes();
    let [c0, c1] = checksum_after_ttl_decrement(inner.checksum()).to_be_bytes();
    Ok(Redirect {
        ifindex,
        head: [
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            t0,
            t1,
            vi,
            tos,
            l0,
            l1,
            i0,
            i1,
            f0,
            f1,
            // At least 2, checked above.
            ttl.wrapping_sub(1),
            proto,
            c0,
            c1,
        ],
    })
}

/// A source address `ip_route_input` refuses from the wire: "this
/// network" (0/8), loopback (127/8), multicast (224/4), broadcast.
#[inline(always)]
const fn is_martian_source(src: [u8; 4]) -> bool {
    let first = src[0];
    first == 0
        || first == 127
        || (first >= 224 && first < 240)
        || (first == 255 && src[1] == 255 && src[2] == 255 && src[3] == 255)
}

/// Userspace's way of carrying out a [`Redirect`]: `frame` with its first
/// [`REDIRECT_HEAD_LEN`] bytes replaced by `head` (`None` if it is
/// shorter). The eBPF shell uses `bpf_skb_store_bytes`.
pub fn write_redirected(frame: &[u8], redirect: &Redirect, out: &mut [u8]) -> Option<usize> {
    let rest = frame.get(REDIRECT_HEAD_LEN..)?;
    let out = out.get_mut(..frame.len())?;
    let (out_head, out_rest) = out.split_at_mut(REDIRECT_HEAD_LEN);
    out_head.copy_from_slice(&redirect.head);
    out_rest.copy_from_slice(rest);
    Some(frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::checksum;
    use crate::maps::{Encap, EndpointInfo};
    use crate::testgen::Gen;

    const NODE: [u8; 4] = [198, 18, 0, 2];
    const POD: [u8; 4] = [10, 244, 2, 7];
    const REMOTE_POD: [u8; 4] = [10, 244, 1, 5];
    const POD_VETH: u32 = 12;
    const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x07];
    const VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
    const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const VETH_MTU: usize = 1480;

    fn on() -> NodeConfig {
        NodeConfig::new(NODE, Encap::Ipip).with_direct_redirect()
    }

    /// A node with one pod (POD behind POD_VETH, its MAC resolved), a
    /// second pod whose MAC is not (10.244.2.8 on 13), a veth that is no
    /// endpoint (10.244.2.9 on 14), and the rest of 10.244.2.0/24 on 15,
    /// whose endpoint is 10.244.2.10.
    struct TestFib;

    impl Fib for TestFib {
        fn lookup(&self, q: &FibQuery) -> FibResult {
            let forward = |ifindex| FibResult::Forward {
                ifindex,
                smac: VETH_MAC,
                dmac: POD_MAC,
            };
            match q.dst {
                _ if q.frame_len > VETH_MTU + 18 => FibResult::NotForwarded,
                POD => forward(POD_VETH),
                [10, 244, 2, 8] => FibResult::NoNeighbour { ifindex: 13 },
                [10, 244, 2, 9] => forward(14),
                [10, 244, 2, _] => forward(15),
                [198, 18, 0, 1] => FibResult::NoNeighbour { ifindex: 2 },
                _ => FibResult::NotForwarded,
            }
        }
    }

    const ENDPOINTS: [(u32, EndpointInfo); 3] = [
        (POD_VETH, EndpointInfo::new(POD)),
        (13, EndpointInfo::new([10, 244, 2, 8])),
        (15, EndpointInfo::new([10, 244, 2, 10])),
    ];

    /// An Ethernet frame (as decapsulated: the uplink's MACs) holding UDP
    /// `src → dst` with `payload` bytes, TTL `ttl`.
    fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: usize) -> Vec<u8> {
        let total = (28 + payload) as u16;
        let mut f = UPLINK_MAC.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0x10, 0, 0, 0xab, 0xcd, 0x40, 0, ttl, 17, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x0f, 0xa0, 0x00, 0x35]);
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.resize(14 + usize::from(total), 0x5a);
        f
    }

    fn decide(frame: &[u8], config: &NodeConfig) -> Result<Redirect, ToStack> {
        direct_redirect(frame, config, &TestFib, &ENDPOINTS[..])
    }

    #[test]
    fn a_packet_for_a_resolved_local_pod_is_redirected_as_forwarded() {
        let input = frame(REMOTE_POD, POD, 64, 100);
        let redirect = decide(&input, &on()).expect("redirected");
        assert_eq!(redirect.ifindex, POD_VETH);
        let mut out = vec![0; input.len()];
        let len = write_redirected(&input, &redirect, &mut out).unwrap();
        assert_eq!(len, input.len());
        // What the node's stack would have sent into the veth.
        let mut forwarded = input.clone();
        forwarded[..6].copy_from_slice(&POD_MAC);
        forwarded[6..12].copy_from_slice(&VETH_MAC);
        forwarded[14 + 8] = 63;
        forwarded[24..26].fill(0);
        let c = checksum(&forwarded[14..34]);
        forwarded[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(out, forwarded);
    }

    #[test]
    fn off_by_default() {
        let input = frame(REMOTE_POD, POD, 64, 100);
        assert_eq!(
            decide(&input, &NodeConfig::new(NODE, Encap::Ipip)),
            Err(ToStack::Disabled)
        );
        assert_eq!(
            decide(&input, &NodeConfig::default()),
            Err(ToStack::Disabled)
        );
    }

    #[test]
    fn whatever_the_fib_does_not_answer_cleanly_goes_to_the_stack() {
        let cases = [
            ([10, 244, 2, 8], 100, ToStack::NoNeighbour),
            ([10, 244, 2, 9], 100, ToStack::NotAPodVeth),
            ([10, 244, 2, 33], 100, ToStack::NotThatPod),
            ([198, 18, 0, 1], 100, ToStack::NotAPodVeth),
            ([8, 8, 8, 8], 100, ToStack::NotForwarded),
            // Too big for the veth (1480 + 14 + 4 bytes fit).
            (POD, 1480 - 28 + 5, ToStack::NotForwarded),
        ];
        for (dst, payload, why) in cases {
            assert_eq!(
                decide(&frame(REMOTE_POD, dst, 64, payload), &on()),
                Err(why)
            );
        }
        assert!(decide(&frame(REMOTE_POD, POD, 64, 1480 - 28 + 4), &on()).is_ok());
    }

    #[test]
    fn what_the_forwarding_path_treats_specially_goes_to_the_stack() {
        let on = on();
        for ttl in [0, 1] {
            let f = frame(REMOTE_POD, POD, ttl, 10);
            assert_eq!(decide(&f, &on), Err(ToStack::TtlExpiring));
        }
        assert!(decide(&frame(REMOTE_POD, POD, 2, 10), &on).is_ok());
        for src in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 5],
            [239, 1, 1, 1],
            [255, 255, 255, 255],
        ] {
            let f = frame(src, POD, 64, 10);
            assert_eq!(decide(&f, &on), Err(ToStack::MartianSource), "{src:?}");
        }
        assert!(decide(&frame([240, 0, 0, 1], POD, 64, 10), &on).is_ok());

        let good = frame(REMOTE_POD, POD, 64, 40);
        let mut bad_checksum = good.clone();
        bad_checksum[24] ^= 1;
        let mut fragment = good.clone();
        fragment[20] = 0x20; // MF
        fragment[24..26].fill(0);
        let c = checksum(&fragment[14..34]);
        fragment[24..26].copy_from_slice(&c.to_be_bytes());
        let mut options = good[..34].to_vec();
        options[14] = 0x46;
        options.extend_from_slice(&[1, 1, 1, 0]);
        options.extend_from_slice(&good[34..]);
        options[17] += 4;
        options[24..26].fill(0);
        let c = checksum(&options[14..38]);
        options[24..26].copy_from_slice(&c.to_be_bytes());
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for (what, f) in [
            ("bad checksum", &bad_checksum[..]),
            ("fragment", &fragment[..]),
            ("options", &options[..]),
            ("not ipv4", &arp[..]),
            ("truncated", &good[..30]),
        ] {
            assert_eq!(decide(f, &on), Err(ToStack::NotPlain), "{what}");
        }
    }

    #[test]
    fn property_redirected_frames_differ_only_where_forwarding_writes() {
        let mut g = Gen::new(0xd1ec7);
        let on = on();
        let mut redirected = 0;
        for _ in 0..5000 {
            let dst = [10, 244, 2, 6 + g.below(5) as u8];
            let mut f = frame(g.addr(), dst, g.u8(), g.below(1500));
            f[15] = g.u8();
            f[23] = g.u8();
            f[24..26].fill(0);
            let c = checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            if g.below(10) == 0 {
                let at = 14 + g.below(20);
                f[at] = g.u8();
            }
            let Ok(redirect) = decide(&f, &on) else {
                continue;
            };
            redirected += 1;
            let mut out = vec![0; f.len()];
            write_redirected(&f, &redirect, &mut out).unwrap();
            assert_eq!(&out[..6], &POD_MAC);
            assert_eq!(&out[6..12], &VETH_MAC);
            assert_eq!(out[14 + 8], f[14 + 8] - 1);
            assert_eq!(checksum(&out[14..34]), 0, "the header stays valid");
            let unchanged = |i: usize| !(i < 12 || i == 22 || i == 24 || i == 25);
            for (i, (a, b)) in f.iter().zip(&out).enumerate() {
                if unchanged(i) {
                    assert_eq!(a, b, "byte {i}");
                }
            }
            let inner = Ipv4Header::new_checked(&out[..], 14).unwrap();
            let endpoint = ENDPOINTS[..].endpoint(redirect.ifindex).unwrap();
            assert_eq!(inner.dst(), endpoint.ipv4, "only to the pod itself");
        }
        assert!(redirected > 300, "{redirected}");
    }

    #[test]
    fn write_redirected_refuses_short_buffers() {
        let f = frame(REMOTE_POD, POD, 64, 10);
        let r = decide(&f, &on()).unwrap();
        assert_eq!(write_redirected(&f[..20], &r, &mut [0; 100]), None);
        assert_eq!(write_redirected(&f, &r, &mut [0; 30]), None);
    }
}
