//! Walking a quiescent flow map on several threads, each building the
//! records of the ranges of hash buckets it takes.
//!
//! The kernel's batch walk costs ~0.45 us per entry in cache misses
//! (bucket, element, one per-CPU value per CPU), so one thread cannot drain
//! much faster than 2.2 M entries/s; two threads on disjoint bucket ranges
//! measured 4.4 M/s on 2 CPUs. Splitting is exact: the batch token is a
//! bucket index, and each entry is copied and deleted under its bucket lock,
//! so a walk that runs past its range into the next one only takes entries
//! the next walk then does not see (see [`sys::walk`]).
//!
//! Each thread appends to its own vector (a part of [`super::Records`]), so
//! no record is copied after it is built.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    ops::Range,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicUsize, Ordering},
};

use flowagent_common::{DIRECTION_EGRESS, FlowKeyV4, FlowKeyV6, FlowStats};

use super::{
    cache::{Cache, Entry},
    clock::Snapshot,
    sys,
};
use crate::flow::{FlowDirection, FlowRecord, IfName, merge_per_cpu};

/// What every drain thread needs to turn entries into records.
pub(super) struct Builder<'a> {
    /// Possible CPUs: per-CPU values come as one `FlowStats` per CPU.
    pub cpus: usize,
    /// Jiffies to wall clock for this drain.
    pub clock: &'a Snapshot,
    /// Interface names at the drain.
    pub names: &'a Names,
    /// The sampling rate in force.
    pub sampling_rate: u32,
}

/// What one walking thread writes: its part of the records, and its batch
/// buffers (kept by the drainer from one drain to the next).
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// Records built so far.
    pub part: Vec<FlowRecord>,
    /// The thread's syscall buffers.
    pub buffers: sys::Buffers,
}

/// Bucket ranges per walking thread. The threads take ranges from a shared
/// counter rather than one fixed share each, so a thread slowed down (its
/// CPU busy with other work) walks fewer of them instead of holding up the
/// drain; each range costs about one extra batch call.
const RANGES_PER_THREAD: usize = 8;

/// Cache indexes per range a scanning thread takes: 16k entries per CPU
/// (2 MiB each), large enough that taking ranges costs nothing measurable.
const SCAN_RANGE: u32 = 16 * 1024;
// A range must cover whole two-way sets (`Cache::scan`).
const _: () = assert!(SCAN_RANGE.is_multiple_of(2));

/// Range `i` of `ranges` on a table of `buckets` buckets; the last range is
/// open-ended so no bucket is missed whatever the kernel rounded the table
/// to.
fn range(i: usize, ranges: usize, buckets: u32) -> Range<u32> {
    let at = |i: usize| (u64::from(buckets) * i as u64 / ranges as u64) as u32;
    let end = if i + 1 == ranges { u32::MAX } else { at(i + 1) };
    at(i)..end
}

impl Builder<'_> {
    /// Reads and deletes every entry of `map` (whose kernel table has
    /// `buckets` buckets), one thread per lane, each appending the records
    /// of the bucket ranges it walked to its lane's part. An entry whose
    /// flow `cache` holds in `slot` is folded into the cache entry instead
    /// (see [`Cache::absorb`]), when `cache` is given. Returns the entries
    /// walked.
    ///
    /// Must only be called on a map and a cache slot no program writes any
    /// more, and before that slot's scan.
    pub fn drain_map<E: Entry>(
        &self,
        map: BorrowedFd<'_>,
        buckets: u32,
        cache: Option<(&Cache<E>, u32)>,
        lanes: &mut [Lane],
    ) -> io::Result<usize>
    where
        E::Key: aya::Pod,
        for<'k> KeyParts: From<&'k E::Key>,
    {
        let ranges = if lanes.len() <= 1 {
            1
        } else {
            lanes.len() * RANGES_PER_THREAD
        };
        let next = AtomicUsize::new(0);
        // Takes ranges until none is left (or a walk fails).
        let worker = |lane: &mut Lane| -> io::Result<usize> {
            let mut walked = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ranges {
                    return Ok(walked);
                }
                walked += self.walk::<E>(map, range(i, ranges, buckets), cache, lane)?;
            }
        };
        Ok(on_lanes(lanes, worker)?.into_iter().sum())
    }

    /// Turns every flow in `slot` of `cache` into a record, one thread per
    /// lane, and empties it. Returns the entries read.
    ///
    /// Must only be called on a slot no program writes any more.
    pub fn scan_cache<E: Entry>(&self, cache: &Cache<E>, slot: u32, lanes: &mut [Lane]) -> usize
    where
        for<'k> KeyParts: From<&'k E::Key>,
    {
        let entries = cache.entries();
        let next = AtomicUsize::new(0);
        let worker = |lane: &mut Lane| -> io::Result<usize> {
            let mut read = 0;
            loop {
                let start = next.fetch_add(1, Ordering::Relaxed) as u64 * u64::from(SCAN_RANGE);
                if start >= u64::from(entries) {
                    return Ok(read);
                }
                let start = start as u32;
                let end = start.saturating_add(SCAN_RANGE).min(entries);
                // SAFETY: the caller's slot is quiescent, and each range is
                // taken by one thread only.
                read += unsafe {
                    cache.scan(slot, start..end, self.clock.jiffies(), |key, stats| {
                        lane.part.push(self.record(KeyParts::from(key), stats));
                    })
                };
            }
        };
        // A scan has no syscall to fail: the workers only return Ok.
        on_lanes(lanes, worker).map_or(0, |read| read.into_iter().sum())
    }

    /// One thread's walk of `buckets`, appending a record per flow to the
    /// lane's part (or folding it into `cache`).
    fn walk<E: Entry>(
        &self,
        map: BorrowedFd<'_>,
        buckets: Range<u32>,
        cache: Option<(&Cache<E>, u32)>,
        lane: &mut Lane,
    ) -> io::Result<usize>
    where
        E::Key: aya::Pod,
        for<'k> KeyParts: From<&'k E::Key>,
    {
        let stride = std::mem::size_of::<FlowStats>().next_multiple_of(8);
        let mut per_cpu = Vec::with_capacity(self.cpus);
        sys::walk(
            map,
            sys::Walk::LookupAndDelete,
            std::mem::size_of::<E::Key>(),
            stride * self.cpus,
            buckets,
            &mut lane.buffers,
            |k, v| {
                // SAFETY: the key is size_of::<E::Key>() bytes of a Pod type.
                let key = unsafe { std::ptr::read_unaligned(k.as_ptr() as *const E::Key) };
                per_cpu.clear();
                per_cpu.extend(v.chunks_exact(stride).take(self.cpus).map(|c| {
                    // SAFETY: each chunk is `stride` >= size_of::<FlowStats>()
                    // bytes; FlowStats is Pod, so any bytes are a valid value.
                    unsafe { std::ptr::read_unaligned(c.as_ptr() as *const FlowStats) }
                }));
                let Some(stats) = merge_per_cpu(&per_cpu) else {
                    return;
                };
                if let Some((cache, slot)) = cache
                    // SAFETY: the slot is quiescent (the caller's contract),
                    // and this entry's key is in no other entry of the walk.
                    && unsafe { cache.absorb(slot, &key, &stats, self.clock.jiffies()) }
                {
                    return;
                }
                lane.part.push(self.record(KeyParts::from(&key), &stats));
            },
        )
    }

    fn record(&self, key: KeyParts, stats: &FlowStats) -> FlowRecord {
        let direction = FlowDirection::from_code(key.direction);
        let here = self.names.get(key.ifindex);
        let there = self.names.get(stats.other_ifindex);
        let (iface_in, iface_out) = if key.direction == DIRECTION_EGRESS {
            (there, here)
        } else {
            (here, there)
        };
        FlowRecord {
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
            tos: stats.tos,
            tcp_flags: stats.tcp_flags,
            vlan: key.vlan,
            ifindex: key.ifindex,
            direction,
            other_ifindex: stats.other_ifindex,
            iface_in,
            iface_out,
            next_hop: stats.next_hop_addr(),
            src_mac: stats.src_mac,
            packets: stats.packets,
            bytes: stats.bytes,
            start: self.clock.wall(stats.first_seen),
            end: self.clock.wall(stats.last_seen),
            sampling_rate: self.sampling_rate,
            enrichment: Default::default(),
        }
    }
}

/// Runs `worker` on every lane, the first on this thread and the others on
/// threads of their own, and returns what each returned.
fn on_lanes<T: Send>(
    lanes: &mut [Lane],
    worker: impl Fn(&mut Lane) -> io::Result<T> + Sync,
) -> io::Result<Vec<T>> {
    let Some((first, rest)) = lanes.split_first_mut() else {
        return Ok(Vec::new());
    };
    std::thread::scope(|s| {
        // A thread that cannot be started (resource limits) is no loss:
        // the others take its share.
        let spawned: Vec<_> = rest
            .iter_mut()
            .enumerate()
            .filter_map(|(i, lane)| {
                let worker = &worker;
                std::thread::Builder::new()
                    .name(format!("drain-{}", i + 1))
                    .spawn_scoped(s, move || worker(lane))
                    .ok()
            })
            .collect();
        let mut out = vec![worker(first)?];
        for handle in spawned {
            out.push(
                handle
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))?,
            );
        }
        Ok(out)
    })
}

/// Interface names by index for one drain: a sorted list, because a host
/// has few interfaces and two lookups per record into a short slice beat
/// hashing the index.
#[derive(Debug, Default)]
pub(super) struct Names(Vec<(u32, IfName)>);

impl Names {
    /// The names of a snapshot of the interface table.
    pub fn new(names: &HashMap<u32, String>) -> Self {
        let mut v: Vec<_> = names
            .iter()
            .map(|(i, n)| (*i, IfName::from(n.as_str())))
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        Self(v)
    }

    /// The name of `index`; index 0 ("no interface") is never in the table.
    fn get(&self, index: u32) -> Option<IfName> {
        let at = self.0.binary_search_by_key(&index, |(i, _)| *i).ok()?;
        Some(self.0[at].1)
    }
}

/// The fields both key types share, in userspace types.
pub(super) struct KeyParts {
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    vlan: u16,
    ifindex: u32,
    direction: u8,
}

impl From<&FlowKeyV4> for KeyParts {
    fn from(k: &FlowKeyV4) -> Self {
        Self {
            src: k.src_addr(),
            dst: k.dst_addr(),
            src_port: k.src_port,
            dst_port: k.dst_port,
            proto: k.proto,
            vlan: k.vlan,
            ifindex: k.ifindex,
            direction: k.direction,
        }
    }
}

impl From<&FlowKeyV6> for KeyParts {
    fn from(k: &FlowKeyV6) -> Self {
        Self {
            src: k.src_addr(),
            dst: k.dst_addr(),
            src_port: k.src_port,
            dst_port: k.dst_port,
            proto: k.proto,
            vlan: k.vlan,
            ifindex: k.ifindex,
            direction: k.direction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_index() {
        let names = Names::new(&HashMap::from([(7, "eth1".into()), (2, "lo".into())]));
        assert_eq!(names.get(2).as_deref(), Some("lo"));
        assert_eq!(names.get(7).as_deref(), Some("eth1"));
        assert_eq!(names.get(0), None);
        assert_eq!(names.get(3), None);
    }

    #[test]
    fn ranges_cover_every_bucket_once() {
        for (n, buckets) in [(1, 16), (2, 16), (16, 16), (24, 1000), (32, 1 << 20)] {
            let ranges: Vec<_> = (0..n).map(|i| range(i, n, buckets)).collect();
            assert_eq!(ranges[0].start, 0);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            assert_eq!(ranges[n - 1].end, u32::MAX);
        }
    }
}
