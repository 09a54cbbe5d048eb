//! The bpf(2) calls aya 0.14 does not offer here: a memory mapping of an
//! mmapable array, the batch map commands (LOOKUP_AND_DELETE_BATCH for the
//! drain; LOOKUP_BATCH and DELETE_BATCH so the bench can measure the
//! kernel's share), and BPF_PROG_TEST_RUN on a program fd the drain holds
//! without its `Ebpf`.
//!
//! All are thin `#[repr(C)]` prefixes of `union bpf_attr` (include/uapi/
//! linux/bpf.h); the kernel zero-extends a shorter attr, so only the fields
//! used are declared.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// Runs an XDP program once on a dummy frame (BPF_PROG_TEST_RUN) for its
/// side effects on maps; returns its return value.
pub fn run_xdp_once(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // The kernel wants at least an Ethernet header's worth of data.
    let frame = [0u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` of
    // the size passed; pointers inside it are checked by the callers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A BPF_F_MMAPABLE array map's values mapped into this process: the
/// programs' writes are seen here and ours there, without a syscall.
#[derive(Debug)]
pub struct MappedArray<T> {
    base: std::ptr::NonNull<T>,
    len: usize,
    bytes: usize,
    /// The map, kept open so that it is listed with the process's maps
    /// (the mapping alone would keep it alive, unlisted).
    _map: aya::maps::MapData,
}

// SAFETY: the mapping is plain shared memory owned by this value; what may
// touch which element concurrently is up to the users of `as_ptr`.
unsafe impl<T: Send> Send for MappedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for MappedArray<T> {}

impl<T: aya::Pod> MappedArray<T> {
    /// Maps every value of the array `map`, whose values are `T`s.
    pub fn new(map: aya::maps::MapData) -> io::Result<Self> {
        let info = map.info().map_err(io::Error::other)?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(io::Error::other(format!(
                "values of {} bytes, expected {}",
                info.value_size(),
                size_of::<T>()
            )));
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len * size_of::<T>()).next_multiple_of(page.max(1));
        // SAFETY: a fresh shared mapping of the map's fd, which the kernel
        // allows for a BPF_F_MMAPABLE array (EINVAL otherwise); the array's
        // values start at offset 0, elements `round_up(value_size, 8)` apart,
        // which is `size_of::<T>()` for the 8-aligned types mapped here.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            std::ptr::NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Self {
            base,
            len,
            bytes,
            _map: map,
        })
    }

    /// Elements in the array.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element; elements `0..len()` follow it.
    pub fn as_ptr(&self) -> *mut T {
        self.base.as_ptr()
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new` with this length, not yet
        // unmapped; no pointer from `as_ptr` may outlive `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// What a batch walk does to the entries it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// BPF_MAP_LOOKUP_BATCH: read only. Only for measuring the kernel's
    /// share; the drain never reads without deleting.
    Lookup,
    /// BPF_MAP_LOOKUP_AND_DELETE_BATCH: each entry is copied and deleted
    /// under its bucket lock, so two walks over overlapping bucket ranges
    /// never return the same entry.
    LookupAndDelete,
}

/// Entries per batch syscall. Not a lever: on a 1M-entry, 2-CPU IPv4 map
/// (drain bench, "kernel floor" figures, medians of 3 on a shared 2-core
/// VM) batches of 64, 256, 1024 and 4096 walked 2.24, 2.21, 2.24 and 2.29 M
/// entries/s in the quietest run, 1.70, 2.04, 2.18 and 1.87 in another. The
/// kernel stages each batch in a buffer it allocates per call, so very large
/// batches only cost memory.
pub const BATCH: usize = 1024;

/// The batch size and the key and value buffers of [`walk`], kept between
/// walks: a batch of 1024 IPv4 entries on 2 CPUs is ~150 KB, which glibc
/// would map afresh (and the kernel's copy fault in page by page) on every
/// walk.
#[derive(Debug)]
pub struct Buffers {
    /// Entries asked for per syscall.
    batch: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Default for Buffers {
    /// Batches of [`BATCH`].
    fn default() -> Self {
        Self::with_batch(BATCH)
    }
}

impl Buffers {
    /// Buffers for batches of `batch` entries (grown if one hash bucket
    /// holds more).
    pub fn with_batch(batch: usize) -> Self {
        Self {
            batch: batch.max(1),
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Makes room for `count` entries of the given sizes.
    fn fit(&mut self, count: usize, key_len: usize, value_len: usize) {
        if self.keys.len() < count * key_len {
            self.keys.resize(count * key_len, 0);
        }
        if self.values.len() < count * value_len {
            self.values.resize(count * value_len, 0);
        }
    }
}

/// Reads (and with [`Walk::LookupAndDelete`] deletes) the entries of a
/// (per-CPU) hash map in hash buckets `buckets.start..` until the walk has
/// passed `buckets.end` or the last bucket, in batches staged in
/// `buffers`.
///
/// `value_len` is the bytes of one value as the syscall returns it: for a
/// per-CPU map `round_up(value_size, 8) * possible_cpus`. Calls `each` with
/// the raw key and value bytes of every entry and returns how many there
/// were. The batch token of a hash map is the next bucket index
/// (`__htab_map_lookup_and_delete_batch()` in kernel/bpf/hashtab.c), and
/// buckets are walked whole, so a walk may run past `buckets.end` into the
/// bucket range of a concurrent walk: with [`Walk::LookupAndDelete`] that is
/// harmless (an entry is deleted by whichever walk locks its bucket first).
///
/// Must only be used on a map no program writes (the inactive slot): the
/// kernel's batch walk is not atomic against writers.
pub fn walk(
    map: BorrowedFd<'_>,
    op: Walk,
    key_len: usize,
    value_len: usize,
    buckets: std::ops::Range<u32>,
    buffers: &mut Buffers,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<usize> {
    let cmd = match op {
        Walk::Lookup => BPF_MAP_LOOKUP_BATCH,
        Walk::LookupAndDelete => BPF_MAP_LOOKUP_AND_DELETE_BATCH,
    };
    // ENOSPC means one bucket holds more than `count` entries, which the
    // loop answers by growing the buffers.
    let mut count = buffers.batch;
    buffers.fit(count, key_len, value_len);
    let mut token = u64::from(buckets.start);
    let mut total = 0;
    loop {
        if token >= u64::from(buckets.end) {
            return Ok(total);
        }
        let mut out_token: u64 = 0;
        let mut attr = BatchAttr {
            in_batch: &token as *const u64 as u64,
            out_batch: &mut out_token as *mut u64 as u64,
            keys: buffers.keys.as_mut_ptr() as u64,
            values: buffers.values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(cmd, &mut attr);
        let got = (attr.count as usize).min(count);
        for i in 0..got {
            each(
                &buffers.keys[i * key_len..(i + 1) * key_len],
                &buffers.values[i * value_len..(i + 1) * value_len],
            );
        }
        total += got;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                count *= 2;
                buffers.fit(count, key_len, value_len);
                continue;
            }
            Err(e) => return Err(e),
        }
        token = out_token;
    }
}

/// Deletes `keys` (concatenated, `key_len` bytes each) with
/// BPF_MAP_DELETE_BATCH; returns how many were deleted. For measuring the
/// kernel's delete cost apart from the lookup.
pub fn delete_batch(map: BorrowedFd<'_>, keys: &[u8], key_len: usize) -> io::Result<usize> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: (keys.len() / key_len) as u32,
        map_fd: map.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
    result.map(|_| attr.count as usize)
}
