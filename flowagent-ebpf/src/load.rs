//! Multi-byte loads from frame memory, one instruction each.
//!
//! Header fields sit at offsets LLVM cannot prove aligned, and its BPF
//! backend then splits every load into byte loads, shifts and ORs: about
//! four instructions a byte, ~100 instructions to read an IPv6 key. These
//! loads are written as BPF assembly instead, so each is one `ldx`.
//!
//! The verifier accepts unaligned packet and map-value loads on CPUs with
//! efficient unaligned access (x86-64, arm64). Elsewhere it checks packet
//! loads assuming NET_IP_ALIGN (2), under which the fields read here are
//! naturally aligned in an untagged or VLAN-tagged frame.
//!
//! Every caller must have bounds-checked the bytes read (`Frame::ptr_at`).
//! The offset from the checked pointer is a const generic so that it goes
//! into the instruction instead of costing an add.

/// The big-endian `u16` at `p + OFF`.
///
/// # Safety
/// Those two bytes must be readable frame memory.
#[inline(always)]
pub unsafe fn be16<const OFF: i16>(p: *const u8) -> u16 {
    // SAFETY: forwarded to the caller.
    u16::from_be(unsafe { raw::<2, OFF>(p) } as u16)
}

/// The four bytes at `p + OFF`, in memory order.
///
/// # Safety
/// Those four bytes must be readable frame memory.
#[inline(always)]
pub unsafe fn bytes4<const OFF: i16>(p: *const u8) -> [u8; 4] {
    // SAFETY: forwarded to the caller.
    (unsafe { raw::<4, OFF>(p) } as u32).to_ne_bytes()
}

/// The sixteen bytes at `p + OFF`, in memory order.
///
/// # Safety
/// Those sixteen bytes must be readable frame memory.
#[inline(always)]
pub unsafe fn bytes16<const OFF: i16>(p: *const u8) -> [u8; 16] {
    // SAFETY: forwarded to the caller.
    let (hi, lo) = unsafe { (raw::<8, OFF>(p), raw::<8, OFF>(p.add(8))) };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_ne_bytes());
    out[8..].copy_from_slice(&lo.to_ne_bytes());
    out
}

/// `N` bytes (2, 4 or 8) at `p + OFF`, zero-extended, in native byte order.
#[inline(always)]
unsafe fn raw<const N: usize, const OFF: i16>(p: *const u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let v: u64;
        // SAFETY: the caller guarantees the bytes are readable. Not `pure`:
        // LLVM must not hoist the load above the bounds check that makes
        // it acceptable to the verifier.
        unsafe {
            match N {
                2 => core::arch::asm!("{0} = *(u16 *)({1} + {2})", out(reg) v, in(reg) p,
                    const OFF, options(readonly, nostack, preserves_flags)),
                4 => core::arch::asm!("{0} = *(u32 *)({1} + {2})", out(reg) v, in(reg) p,
                    const OFF, options(readonly, nostack, preserves_flags)),
                _ => core::arch::asm!("{0} = *(u64 *)({1} + {2})", out(reg) v, in(reg) p,
                    const OFF, options(readonly, nostack, preserves_flags)),
            }
        }
        v
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        let mut bytes = [0u8; 8];
        // SAFETY: the caller guarantees the bytes are readable.
        unsafe { core::ptr::copy_nonoverlapping(p.offset(OFF as isize), bytes.as_mut_ptr(), N) };
        u64::from_ne_bytes(bytes)
    }
}
