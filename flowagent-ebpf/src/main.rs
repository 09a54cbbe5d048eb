//! flowagent's kernel side: thin XDP and TC entry points.
//!
//! Each entry point decides sampling first (so a sampled-out packet costs one
//! random number), then hands the frame to the shared parser and accounts the
//! result. Every path returns `XDP_PASS` / `TC_ACT_OK`: an accounting agent
//! never drops, redirects or modifies traffic.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod account;
mod load;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use flowagent_common::{DIRECTION_EGRESS, DIRECTION_INGRESS};

use crate::{
    account::{NO_VLAN_HINT, Observation, account},
    parse::{COPY_LEN, Copied, Packet},
};

/// XDP ingress accounting.
#[xdp]
pub fn flowagent_xdp(ctx: XdpContext) -> u32 {
    maps::if_sampled(|cpu, run| {
        let obs = Observation {
            ifindex: ctx.ingress_ifindex() as u32,
            direction: DIRECTION_INGRESS,
            // XDP frames are single packets: no GSO before the driver's hook.
            segs: 1,
            vlan_hint: NO_VLAN_HINT,
            other_ifindex: 0,
        };
        let frame = Packet::new(ctx.data(), ctx.data_end());
        let len = (ctx.data_end() - ctx.data()) as u64;
        account(&ctx, cpu, run, frame, len, &obs);
    });
    xdp_action::XDP_PASS
}

/// Does nothing: the baseline `cargo xtask bench` subtracts from the flow
/// program's cost. The agent never attaches it.
#[xdp]
pub fn flowagent_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Does nothing: the TC baseline of the end-to-end bench (a tcx ingress
/// program costs its hook and dispatch even when it does no work). The agent
/// never attaches it.
#[classifier]
pub fn flowagent_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Writes the current jiffies and CLOCK_MONOTONIC nanoseconds side by side
/// into `CLOCK`. The agent runs it through BPF_PROG_TEST_RUN at every drain
/// to turn the jiffies the flow programs record into wall-clock time.
#[xdp]
pub fn flowagent_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: helpers without preconditions.
    let (jiffies, mono) = unsafe {
        (
            aya_ebpf::helpers::bpf_jiffies64(),
            aya_ebpf::helpers::bpf_ktime_get_ns(),
        )
    };
    for (index, value) in [(0, jiffies), (1, mono)] {
        if let Some(slot) = maps::CLOCK.get_ptr_mut(index) {
            // SAFETY: pointer from a successful array lookup.
            unsafe { *slot = value };
        }
    }
    xdp_action::XDP_PASS
}

/// TC (tcx/clsact) ingress accounting.
#[classifier]
pub fn flowagent_tc_ingress(ctx: TcContext) -> i32 {
    maps::if_sampled(|cpu, run| tc_account(&ctx, cpu, run, DIRECTION_INGRESS));
    TC_ACT_OK
}

/// TC (tcx/clsact) egress accounting.
#[classifier]
pub fn flowagent_tc_egress(ctx: TcContext) -> i32 {
    maps::if_sampled(|cpu, run| tc_account(&ctx, cpu, run, DIRECTION_EGRESS));
    TC_ACT_OK
}

#[inline(always)]
fn tc_account(ctx: &TcContext, cpu: maps::Cpu, run: &maps::Run, direction: u8) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel passed in.
    let (ifindex, ingress_ifindex, vlan_present, vlan_tci, len, gso_segs) = unsafe {
        (
            (*skb).ifindex,
            (*skb).ingress_ifindex,
            (*skb).vlan_present,
            (*skb).vlan_tci,
            (*skb).len,
            (*skb).gso_segs,
        )
    };
    // A GSO skb (TSO/USO from the local stack on egress, GRO-merged on
    // ingress, veth passing either on whole) is gso_segs wire packets;
    // counted as one, a TCP transfer would show 30-45 times too few.
    let segs = if gso_segs > 1 { gso_segs as u16 } else { 1 };
    // On ingress the stack has already moved the outer VLAN tag out of the
    // frame into skb metadata (skb_vlan_untag() runs before tc), so it is
    // taken from there; on egress it is there when the tag is offloaded.
    let vlan_hint = if vlan_present != 0 {
        vlan_tci & 0x0fff
    } else {
        NO_VLAN_HINT
    };
    let other_ifindex = if direction == DIRECTION_EGRESS {
        // The interface a forwarded packet came in on; 0 for local traffic.
        ingress_ifindex
    } else {
        0
    };
    let obs = Observation {
        ifindex,
        direction,
        segs,
        vlan_hint,
        other_ifindex,
    };
    // Direct packet access sees only the skb's linear part. The headers the
    // parser may read (at most COPY_LEN bytes) are there for most drivers,
    // which copy or build the headers into the head; when they are not (for
    // example frames sent from an AF_PACKET TX ring, whose payload stays in
    // page fragments) they are copied out with bpf_skb_load_bytes().
    // bpf_skb_pull_data() would also work but reallocates the skb head and
    // unclones it: measured here at about two thirds of the program's time.
    let want = if (len as usize) < COPY_LEN {
        len as usize
    } else {
        COPY_LEN
    };
    let linear = Packet::new(ctx.data(), ctx.data_end());
    if ctx.data_end() - ctx.data() >= want {
        account(ctx, cpu, run, linear, len as u64, &obs);
    } else if let Some(copy) = copy_headers(ctx, want) {
        account(ctx, cpu, run, copy, len as u64, &obs);
    } else {
        // The skb is shorter than it says (cannot happen): count the packet
        // rather than lose it.
        maps::count(
            run.slot,
            flowagent_common::Counter::MalformedPackets as u32,
            segs as u64,
            len as u64,
        );
    }
}

/// Copies the first `want` bytes of the skb into this CPU's scratch buffer.
#[inline(always)]
fn copy_headers(ctx: &TcContext, want: usize) -> Option<Copied> {
    let buf = maps::HEADERS.get_ptr_mut(0)?;
    // The verifier wants the length nonzero and within the buffer.
    if want == 0 || want > COPY_LEN {
        return None;
    }
    // SAFETY: `buf` is this CPU's COPY_LEN-byte map value and `want` fits in it.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, buf.cast(), want as u32)
    };
    (rc == 0).then(|| Copied::new(buf, want))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// bpf_fib_lookup() is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
