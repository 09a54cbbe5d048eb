//! The programs' flow caches, read and emptied through a memory mapping.
//!
//! Each family has one mmapable array holding every CPU's two-way cache
//! for both slots (layout: `flowagent_common::cache_index`). A flow sits in
//! one of the two entries of the set `cache_hash(key) & mask` belongs to
//! (`flowagent_common::cache_buddy`) in every CPU cache it was seen in, so
//! the entries of one flow on several CPUs are found within one set,
//! without a hash table in userspace. A flow whose set was full on some CPU
//! was counted in the hash map there instead: the hash walk folds such an
//! entry into the cached one holding the same key ([`Cache::absorb`])
//! before the scan ([`Cache::scan`]) turns each cached flow into one
//! record, so a flow still gives exactly one record.
//!
//! Invariant: only the slot the programs no longer write (after the
//! drain's flip) is read or written here, and every entry read is
//! zeroed, which is what the programs take for an empty entry.

use std::io;

use aya::maps::MapData;
use flowagent_common::{
    CacheEntry, CacheKey, CachedV4, CachedV6, FlowStats, SLOTS, cache_buddy, cache_index,
};

use super::sys::MappedArray;
use crate::flow::merge_per_cpu;

/// A cache entry type the agent can map: Pod, and shared by the drain's
/// threads.
pub trait Entry: CacheEntry + aya::Pod + Send + Sync {
    /// An empty entry (all zero bytes, as the programs take it).
    fn zeroed() -> Self {
        // SAFETY: Pod: all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }
}

impl Entry for CachedV4 {}
impl Entry for CachedV6 {}

/// Where the entries are.
#[derive(Debug)]
enum Memory<E> {
    /// The array, mapped.
    Mapped(MappedArray<E>),
    /// Entries in plain memory, laid out the same way (tests without a
    /// kernel).
    #[cfg(test)]
    Owned(Vec<E>),
}

/// One family's cache array: every CPU's cache for both slots.
#[derive(Debug)]
pub struct Cache<E> {
    memory: Memory<E>,
    /// Possible CPUs the array is laid out for.
    cpus: u32,
    /// log2 of the entries per CPU and slot; None: the programs run
    /// without a cache.
    bits: Option<u32>,
}

impl<E: Entry> Cache<E> {
    /// Maps the cache array `data` laid out for `cpus` CPUs. An array too
    /// small to give every CPU an entry per slot means the programs run
    /// without a cache.
    pub fn map(data: MapData, cpus: u32) -> io::Result<Self> {
        let mapped = MappedArray::new(data)?;
        let per_cpu = mapped.len() as u32 / (SLOTS * cpus.max(1));
        let bits = (per_cpu > 0 && per_cpu.is_power_of_two()).then(|| per_cpu.trailing_zeros());
        Ok(Self {
            memory: Memory::Mapped(mapped),
            cpus: cpus.max(1),
            bits,
        })
    }

    /// A cache in plain memory, laid out as the programs lay out theirs.
    #[cfg(test)]
    pub fn owned(cpus: u32, bits: u32) -> Self {
        let entries = (SLOTS * cpus) << bits;
        Self {
            memory: Memory::Owned(vec![E::zeroed(); entries as usize]),
            cpus,
            bits: Some(bits),
        }
    }

    fn base(&self) -> *mut E {
        match &self.memory {
            Memory::Mapped(m) => m.as_ptr(),
            #[cfg(test)]
            Memory::Owned(v) => v.as_ptr().cast_mut(),
        }
    }

    /// Entries per CPU and slot (0 without a cache).
    pub fn entries(&self) -> u32 {
        self.bits.map_or(0, |b| 1 << b)
    }

    /// The entries of the set of entry `at`: itself and, in a cache of
    /// more than one entry, the other way (`cache_buddy`).
    fn ways(&self, at: u32) -> impl Iterator<Item = u32> + use<E> {
        let mask = self.entries().saturating_sub(1);
        let buddy = cache_buddy(at, mask);
        std::iter::once(at).chain((buddy != at).then_some(buddy))
    }

    /// Entries of one slot over every CPU: what a scan of the slot reads.
    pub fn slot_entries(&self) -> usize {
        self.entries() as usize * self.cpus as usize
    }

    /// Pointer to entry `at` of CPU `cpu`'s cache of `slot`.
    fn entry(&self, slot: u32, cpu: u32, at: u32) -> *mut E {
        let bits = self.bits.unwrap_or(0);
        let index = cache_index(slot, cpu, self.cpus, bits, at);
        // SAFETY: slot < SLOTS, cpu < cpus and at < 1 << bits keep the index
        // inside the array (callers guarantee the first two, the mask the
        // third).
        unsafe { self.base().add(index as usize) }
    }

    /// Folds `stats`, a hash-map copy of `key`'s flow in `slot`, into the
    /// cache entry some CPU holds for `key`; false (nothing changed) when
    /// no CPU's cache holds it. `anchor`: kernel jiffies at this drain
    /// (see [`CacheEntry::stats`]).
    ///
    /// # Safety
    /// No program writes `slot`, and no other thread reads or writes the
    /// entries of `key`'s index meanwhile (distinct keys of one hash walk
    /// are fine: a key is in the hash map once, and the entry it changes
    /// holds that key).
    pub unsafe fn absorb(&self, slot: u32, key: &E::Key, stats: &FlowStats, anchor: u64) -> bool {
        let Some(bits) = self.bits else {
            return false;
        };
        let own = key.cache_hash() & ((1 << bits) - 1);
        for cpu in 0..self.cpus {
            for at in self.ways(own) {
                let entry = self.entry(slot, cpu, at);
                // SAFETY: in bounds (see `entry`); exclusive per the contract.
                let entry = unsafe { &mut *entry };
                if entry.packets() != 0 && entry.key().same(key) {
                    if let Some(merged) = merge_per_cpu([&entry.stats(anchor), stats]) {
                        entry.set_stats(&merged);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Calls `each` with every flow held at indexes `range` of `slot`'s
    /// caches, its copies on every CPU merged, and empties those entries.
    /// Returns the entries read (one per flow and CPU). `anchor`: kernel
    /// jiffies at this drain. `range` covers whole sets: it starts at an
    /// even index and ends at an even one or at the cache's end.
    ///
    /// # Safety
    /// No program writes `slot`, and no other thread reads or writes these
    /// indexes of `slot` meanwhile.
    pub unsafe fn scan(
        &self,
        slot: u32,
        range: std::ops::Range<u32>,
        anchor: u64,
        mut each: impl FnMut(&E::Key, &FlowStats),
    ) -> usize {
        let Some(bits) = self.bits else {
            return 0;
        };
        debug_assert!(
            range.start.is_multiple_of(2),
            "a scan range starts inside a set"
        );
        let mut read = 0;
        // Every copy of a set's flows, on every CPU, in either way.
        let mut set: Vec<*mut E> = Vec::with_capacity(2 * self.cpus as usize);
        for first in (range.start..range.end.min(1 << bits)).step_by(2) {
            set.clear();
            for cpu in 0..self.cpus {
                set.extend(self.ways(first).map(|at| self.entry(slot, cpu, at)));
            }
            for (i, &held) in set.iter().enumerate() {
                // SAFETY: in bounds; exclusive per the contract.
                let held = unsafe { &mut *held };
                if held.packets() == 0 {
                    continue;
                }
                read += 1;
                let key = *held.key();
                let mut stats = held.stats(anchor);
                // The same flow later in the set: another CPU's copy (a CPU
                // holds a flow in one way only).
                for &other in &set[i + 1..] {
                    // SAFETY: as above; a different entry than `held`.
                    let other = unsafe { &mut *other };
                    if other.packets() != 0 && other.key().same(&key) {
                        read += 1;
                        if let Some(merged) = merge_per_cpu([&stats, &other.stats(anchor)]) {
                            stats = merged;
                        }
                        // SAFETY: E is Pod, so zero bytes are a valid (empty) entry.
                        unsafe { std::ptr::write_bytes(other as *mut E, 0, 1) };
                    }
                }
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(held as *mut E, 0, 1) };
                each(&key, &stats);
            }
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use flowagent_common::FlowKeyV4;

    use super::*;

    fn key(n: u8) -> FlowKeyV4 {
        FlowKeyV4 {
            src: [10, 0, 0, n],
            dst: [10, 0, 1, 1],
            ifindex: 3,
            src_port: 1000 + u16::from(n),
            dst_port: 53,
            proto: 17,
            ..Default::default()
        }
    }

    /// Kernel jiffies at the test drain, with high bits set, so that the
    /// 32-bit jiffies of the IPv4 entries must be widened to compare equal.
    const ANCHOR: u64 = (5 << 32) + 1000;

    fn stats(packets: u64, first: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_seen: (5 << 32) + first,
            last_seen: (5 << 32) + first + 5,
            ..Default::default()
        }
    }

    /// Puts `key` into CPU `cpu`'s cache of `slot` as a program would: in
    /// the first empty way of its set. False when both are held.
    fn put(cache: &Cache<CachedV4>, slot: u32, cpu: u32, key: FlowKeyV4, s: FlowStats) -> bool {
        let own = key.cache_hash() & (cache.entries() - 1);
        for at in cache.ways(own) {
            let entry = cache.entry(slot, cpu, at);
            // SAFETY: in bounds; the test is the only user.
            unsafe {
                if (*entry).packets == 0 {
                    (*entry).set_key(&key);
                    (*entry).set_stats(&s);
                    return true;
                }
            }
        }
        false
    }

    fn scan_all(cache: &Cache<CachedV4>, slot: u32) -> (usize, Vec<(FlowKeyV4, FlowStats)>) {
        let mut out = Vec::new();
        // SAFETY: the test is the only user.
        let read =
            unsafe { cache.scan(slot, 0..cache.entries(), ANCHOR, |k, s| out.push((*k, *s))) };
        out.sort_by_key(|(k, _)| k.src);
        (read, out)
    }

    #[test]
    fn one_record_per_flow_across_cpus_and_the_hash_map() {
        let cache = Cache::<CachedV4>::owned(3, 4);
        assert!(put(&cache, 1, 0, key(1), stats(2, 100)));
        assert!(put(&cache, 1, 2, key(1), stats(3, 90)));
        assert!(put(&cache, 1, 1, key(2), stats(1, 50)));
        // Slot 0 is not the drained one: left alone.
        assert!(put(&cache, 0, 0, key(3), stats(7, 10)));
        // key(1) was also counted in the hash map on CPU 1.
        // SAFETY: the test is the only user.
        assert!(unsafe { cache.absorb(1, &key(1), &stats(4, 95), ANCHOR) });
        // SAFETY: as above.
        assert!(!unsafe { cache.absorb(1, &key(9), &stats(4, 95), ANCHOR) });
        let (read, flows) = scan_all(&cache, 1);
        assert_eq!(read, 3);
        assert_eq!(flows.len(), 2);
        let (k, s) = flows[0];
        assert_eq!(k, key(1));
        assert_eq!((s.packets, s.bytes), (9, 900));
        assert_eq!(
            (s.first_seen, s.last_seen),
            ((5 << 32) + 90, (5 << 32) + 105)
        );
        assert_eq!((flows[1].0, flows[1].1.packets), (key(2), 1));
        // Emptied: a second scan finds nothing; slot 0 still holds its flow.
        assert_eq!(scan_all(&cache, 1), (0, vec![]));
        assert_eq!(scan_all(&cache, 0).0, 1);
    }

    #[test]
    fn a_flow_in_different_ways_on_two_cpus_is_one_record() {
        // Two entries per CPU: one set, whose ways are entries 0 and 1.
        let cache = Cache::<CachedV4>::owned(2, 1);
        let own = |n: u8| key(n).cache_hash() & 1;
        let a = 1;
        let b = (2..=255).find(|&n| own(n) == own(a)).unwrap();
        let c = (2..=255).find(|&n| n != b).unwrap();
        // CPU 0 sees a then b, CPU 1 b then a: a sits in its own entry on
        // CPU 0 and in the other way on CPU 1, and b the other way round.
        assert!(put(&cache, 0, 0, key(a), stats(1, 10)));
        assert!(put(&cache, 0, 0, key(b), stats(2, 20)));
        assert!(put(&cache, 0, 1, key(b), stats(4, 15)));
        assert!(put(&cache, 0, 1, key(a), stats(8, 5)));
        // The set is full on both CPUs: c was counted in the hash map, and
        // no cache entry takes it; a's hash-map copy is folded into a.
        assert!(!put(&cache, 0, 0, key(c), stats(1, 1)));
        // SAFETY: the test is the only user.
        assert!(!unsafe { cache.absorb(0, &key(c), &stats(16, 1), ANCHOR) });
        // SAFETY: as above.
        assert!(unsafe { cache.absorb(0, &key(a), &stats(32, 1), ANCHOR) });
        let (read, flows) = scan_all(&cache, 0);
        assert_eq!(read, 4);
        let mut got: Vec<(u8, u64)> = flows.iter().map(|(k, s)| (k.src[3], s.packets)).collect();
        got.sort();
        let mut want = vec![(a, 1 + 8 + 32), (b, 2 + 4)];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(scan_all(&cache, 0), (0, vec![]));
    }

    #[test]
    fn colliding_flows_on_different_cpus_stay_apart() {
        // With one entry per CPU every key collides: two flows at the same
        // index on two CPUs are two records.
        let cache = Cache::<CachedV4>::owned(2, 0);
        assert!(put(&cache, 0, 0, key(1), stats(1, 10)));
        assert!(put(&cache, 0, 1, key(2), stats(2, 20)));
        let (read, flows) = scan_all(&cache, 0);
        assert_eq!(read, 2);
        assert_eq!(
            flows
                .iter()
                .map(|(k, s)| (k.src[3], s.packets))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 2)]
        );
    }
}
