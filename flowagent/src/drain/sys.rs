//! The two bpf(2) commands aya 0.14 does not offer: creating a map-in-map to
//! use as an RCU barrier, and BPF_MAP_LOOKUP_AND_DELETE_BATCH.
//!
//! Both are thin `#[repr(C)]` prefixes of `union bpf_attr` (include/uapi/
//! linux/bpf.h); the kernel zero-extends a shorter attr, so only the fields
//! used are declared.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

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

/// A grace-period barrier for eBPF programs.
///
/// Updating any map-in-map from userspace makes the kernel call
/// `synchronize_rcu()` before the syscall returns ("wait for any running
/// non-sleepable BPF programs to complete so that userspace ... knows that
/// all non-sleepable programs that could be running use the new map value",
/// `maybe_wait_bpf_programs()` in kernel/bpf/syscall.c). XDP and TC programs
/// run inside RCU read-side sections, so after [`Barrier::wait`] returns no
/// program run that began before it is still going: a program that read the
/// old slot number has finished writing the old slot.
#[derive(Debug)]
pub struct Barrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Barrier {
    /// Creates a one-entry ARRAY_OF_MAPS whose only possible value is `inner`
    /// (any map fd; its type is the outer map's template).
    pub fn new(inner: BorrowedFd<'_>) -> io::Result<Self> {
        let inner = inner.try_clone_to_owned()?;
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
            inner_map_fd: inner.as_raw_fd() as u32,
        };
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        let outer = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { outer, inner })
    }

    /// Returns once every eBPF program run in progress at the call has ended.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = ElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// Reads and deletes every entry of a (per-CPU) hash map in batches.
///
/// `value_len` is the bytes of one value as the syscall returns it: for a
/// per-CPU map `round_up(value_size, 8) * possible_cpus`. Calls `each` with
/// the raw key and value bytes. Must only be used on a map no program writes
/// (the inactive slot): the kernel's batch walk is not atomic against writers.
pub fn lookup_and_delete_all(
    map: BorrowedFd<'_>,
    key_len: usize,
    value_len: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<usize> {
    // Hash buckets are walked whole; ENOSPC means one bucket holds more than
    // `count` entries, which the loop answers by growing the buffers.
    let mut count: usize = 4096;
    let mut keys = vec![0u8; count * key_len];
    let mut values = vec![0u8; count * value_len];
    // The hash map's batch token is a bucket index (u32).
    let mut token: u64 = 0;
    let mut first = true;
    let mut total = 0;
    loop {
        let mut out_token: u64 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token as *const u64 as u64 },
            out_batch: &mut out_token as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr);
        let got = attr.count as usize;
        for i in 0..got.min(count) {
            each(
                &keys[i * key_len..(i + 1) * key_len],
                &values[i * value_len..(i + 1) * value_len],
            );
        }
        total += got;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                count *= 2;
                keys.resize(count * key_len, 0);
                values.resize(count * value_len, 0);
                continue;
            }
            Err(e) => return Err(e),
        }
        token = out_token;
        first = false;
    }
}
