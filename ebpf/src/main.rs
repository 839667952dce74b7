//! Weft's tc programs. Each is a thin shell: read the map entries the
//! decision needs, call the decision in `weft-common`, count the verdict and
//! turn it into a tc action. The decisions themselves are unit-tested in
//! userspace over byte-array frames.
#![no_std]
#![no_main]

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::{HashMap, PerCpuArray};
use aya_ebpf::programs::TcContext;
use weft_common::guard::pod_egress_verdict;
use weft_common::maps::{ENDPOINTS_MAX_ENTRIES, EndpointInfo, EndpointKey};
use weft_common::packet::PacketReader;
use weft_common::verdict::{COUNTER_COUNT, Counter, Verdict};

/// Host veth ifindex → the pod endpoint behind it. Pinned by name under the
/// node's pin directory so entries survive agent restarts.
#[map(name = "WEFT_ENDPOINTS")]
static WEFT_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// Packets per verdict, per CPU (no atomics needed), indexed by [`Counter`].
#[map(name = "WEFT_COUNTERS")]
static WEFT_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT as u32, 0);

/// Reads the frame with `bpf_skb_load_bytes`: copies into the stack, works on
/// non-linear skbs, and needs no packet-pointer bounds proofs.
struct SkbReader<'a>(&'a TcContext);

impl PacketReader for SkbReader<'_> {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// Attached at tc ingress of a pod's host-side veth: sees what the pod sends.
#[classifier]
pub fn weft_pod_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex: EndpointKey = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once; userspace replaces entries
    // whole, so the worst case is reading an entry just being replaced.
    let endpoint = unsafe { WEFT_ENDPOINTS.get(&ifindex) }.copied();
    let verdict = pod_egress_verdict(&SkbReader(&ctx), endpoint.as_ref());
    count(verdict.counter());
    match verdict {
        Verdict::Pass(_) => TC_ACT_OK,
        Verdict::Drop(_) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = WEFT_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, and tc programs do not preempt each other on a CPU.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The decisions are written not to panic; the verifier rejects a program
    // whose panic path is reachable, because this loop has no exit.
    loop {}
}
