//! Memory hints for the lookup tables: a software prefetch for the batched
//! lookups, and huge pages for the large arrays.
//!
//! A longest-prefix lookup in a large table is a chain of dependent cache
//! misses; one lookup cannot go faster than the chain. A batch of lookups
//! can: each stage asks for the next cache line of every address in the
//! batch before reading any of them, so the misses of different addresses
//! are in flight together. The hint never faults and never changes memory,
//! so it may be given any address (a dangling or out-of-range one only
//! wastes the hint); on targets without one it does nothing.

/// Asks the CPU to start loading the cache line holding `p` into L1.
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is an SSE instruction (always present on x86_64);
    // it is a hint that reads no memory architecturally and cannot fault,
    // whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the kernel to back `v`'s buffer with transparent huge pages:
/// lookups land at random in tens of MiB, and with 4 KiB pages nearly every
/// read is also a TLB miss (a two-dimensional page walk under a hypervisor).
/// Advice only: without THP it changes nothing.
pub(super) fn advise_huge<T>(v: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < HUGE {
        return;
    }
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    let end = (start + bytes) & !4095;
    if end > aligned {
        // SAFETY: the range lies inside `v`'s live allocation; MADV_HUGEPAGE
        // changes how it is backed, never its contents.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}
