//! The drain: every interval, flip the programs to the other slot, wait out
//! the programs still writing the old one, then read and empty it.
//!
//! Why nothing is lost or doubled: each packet is counted in exactly one slot
//! (the one its program run read from its CPU's line). After the flip,
//! [`slots::Slots::flip`] returns only when every program run that could
//! have read the old slot number has finished, so the old slot is complete
//! and quiescent; it is then read and emptied in one pass. Packets arriving
//! meanwhile go to the new slot and are reported next interval. A plain
//! iterate-then-delete on a live map would lose updates between the read and
//! the delete.
//!
//! A slot of one family is a per-CPU hash map and every CPU's flow cache
//! (see [`cache`]): most flows are in the caches, read through a memory
//! mapping; the hash map holds the flows whose cache set (two entries) other
//! flows took, and is walked first so that a flow found in both gives one record.
//!
//! Cost of the hash walk (drain bench, 1M IPv4 flows, 2 CPUs, no cache): the
//! kernel's batch walk is about 0.45 us per entry whether or not it deletes
//! (bucket, element and one per-CPU value per CPU are cache misses), so it
//! bounds a single-threaded walk near 2.2 M entries/s. The walk is therefore
//! split over threads by hash bucket ([`build`]), and so is the cache scan.
//! Userspace adds the page faults of the record buffers, which
//! [`records::Pool`] avoids by reusing the buffers of batches the outputs
//! are done with, and little else: interface names come from one snapshot
//! per drain (no lock per record) and jiffies convert with integer math.

mod build;
pub mod cache;
pub mod clock;
pub mod records;
pub mod slots;
pub mod sys;

use std::{
    num::NonZeroUsize,
    os::fd::AsFd,
    time::{Duration, SystemTime},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
};
use flowagent_common::{CachedV4, CachedV6, Counter, SLOTS, names};
use log::{debug, warn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::records::Records;
use self::{
    build::Builder,
    cache::{Cache, Entry},
    clock::KernelClock,
    records::Pool,
    slots::Slots,
};
use crate::capture::IfNames;

/// Drain errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A map is missing from the object or has the wrong type.
    #[error("map {name}: {reason}")]
    Map {
        /// The map.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A program run did not end.
    #[error(transparent)]
    Stalled(#[from] slots::Stalled),
    /// The jiffies clock could not be calibrated.
    #[error("kernel clock: {0}")]
    Clock(String),
    /// A bpf(2) call failed.
    #[error("{what}: {source}")]
    Syscall {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Totals of the out-of-flow counters for one interval, indexed by [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::ALL.len()]);

impl Counters {
    /// One counter's total.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// Everything one drain produced.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Start of the interval (the previous drain, or agent start).
    pub start: SystemTime,
    /// End of the interval (this drain).
    pub end: SystemTime,
    /// One record per flow seen in the interval.
    pub records: Records,
    /// Out-of-flow counters of the interval.
    pub counters: Counters,
    /// Records of earlier batches dropped because the output fell behind.
    pub dropped_records: u64,
    /// The sampling rate in force.
    pub sampling_rate: u32,
}

/// The maps the drain owns, taken out of the loaded object.
pub struct Maps {
    v4: Family<CachedV4>,
    v6: Family<CachedV6>,
    counters: PerCpuArray<MapData, u64>,
    /// Every CPU's line: the slot its programs write, their runs.
    slots: Slots,
    /// Jiffies to wall-clock time (the clock program and its map).
    clock: KernelClock,
    /// Possible CPUs: per-CPU values come one per CPU, and the caches are
    /// laid out for them.
    cpus: usize,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, Error> {
    ebpf.take_map(name).ok_or(Error::Map {
        name,
        reason: "missing from the eBPF object".into(),
    })
}

/// Maps the cache array `name`, laid out for `cpus` CPUs.
fn cache<E: Entry>(ebpf: &mut Ebpf, name: &'static str, cpus: u32) -> Result<Cache<E>, Error> {
    match take(ebpf, name)? {
        Map::Array(data) => Cache::map(data, cpus).map_err(|source| Error::Syscall {
            what: "mapping a flow cache into memory",
            source,
        }),
        other => Err(Error::Map {
            name,
            reason: format!("expected an array, found {other:?}"),
        }),
    }
}

/// Possible CPUs: what per-CPU maps hold a value for, and what the caches
/// are laid out for.
fn possible_cpus() -> Result<usize, Error> {
    aya::util::nr_cpus().map_err(|(what, source)| Error::Syscall {
        what: if what.is_empty() {
            "possible CPUs"
        } else {
            what
        },
        source,
    })
}

fn per_cpu_hash(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, Error> {
    match take(ebpf, name)? {
        Map::PerCpuHashMap(data) => Ok(data),
        other => Err(Error::Map {
            name,
            reason: format!("expected a per-CPU hash map, found {other:?}"),
        }),
    }
}

/// The kernel's bucket count for a hash map: max_entries rounded up to a
/// power of two (`htab_map_alloc()` in kernel/bpf/hashtab.c).
fn buckets(data: &MapData, name: &'static str) -> Result<u32, Error> {
    let info = data.info().map_err(|e| Error::Map {
        name,
        reason: e.to_string(),
    })?;
    Ok(info.max_entries().max(1).next_power_of_two())
}

impl Maps {
    /// Takes the flow, cache, counter, CPU-line and clock maps out of `ebpf` (whose
    /// clock program must be loaded) and calibrates the clock.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let map_err = |name| {
            move |e: aya::maps::MapError| Error::Map {
                name,
                reason: e.to_string(),
            }
        };
        let clock_prog = ebpf
            .program(names::PROG_CLOCK)
            .ok_or(Error::Map {
                name: names::PROG_CLOCK,
                reason: "program missing from the eBPF object".into(),
            })?
            .fd()
            .and_then(|fd| Ok(fd.as_fd().try_clone_to_owned()?))
            .map_err(|e| Error::Map {
                name: names::PROG_CLOCK,
                reason: format!("not loaded: {e}"),
            })?;
        let clock_map =
            Array::try_from(take(ebpf, names::CLOCK)?).map_err(map_err(names::CLOCK))?;
        let cpus = possible_cpus()?;
        Ok(Self {
            cpus,
            v4: Family::take(
                ebpf,
                names::FLOWS_V4,
                names::CACHE_V4,
                cpus as u32,
                "draining the IPv4 flow map",
            )?,
            v6: Family::take(
                ebpf,
                names::FLOWS_V6,
                names::CACHE_V6,
                cpus as u32,
                "draining the IPv6 flow map",
            )?,
            clock: KernelClock::new(clock_prog, clock_map)?,
            counters: PerCpuArray::try_from(take(ebpf, names::COUNTERS)?)
                .map_err(map_err(names::COUNTERS))?,
            slots: Slots::new(match take(ebpf, names::CPUS)? {
                Map::Array(data) => {
                    sys::MappedArray::new(data).map_err(|source| Error::Syscall {
                        what: "mapping the CPUs' lines into memory",
                        source,
                    })?
                }
                other => {
                    return Err(Error::Map {
                        name: names::CPUS,
                        reason: format!("expected an array, found {other:?}"),
                    });
                }
            }),
        })
    }
}

/// Most threads one drain uses. The walk is bound by memory latency, so
/// threads beyond the cores gain nothing, and each thread's records are a
/// separate part of the batch.
pub const MAX_THREADS: usize = 4;

/// Entries (hash-map entries, or cache entries scanned) per thread below
/// which fewer threads are used. Measured (drain bench, 2 CPUs, 100k flows
/// of which ~30k in the hash map): a second thread on the hash walk took
/// the drain from 26 to 16 ms at the same CPU. The kernel's walk costs
/// ~0.45 us per entry, so 8k entries are ~4 ms, well above a thread's
/// start-up; at 10k flows (~3k in the hash map) one thread walks.
const MIN_ENTRIES_PER_THREAD: usize = 8 * 1024;

/// Threads (at most `threads`) for a map holding `entries` entries.
fn threads_for(threads: usize, entries: usize) -> usize {
    (entries / MIN_ENTRIES_PER_THREAD).clamp(1, threads)
}

/// What the programs created in one family's map and caches of a slot, and
/// what the drain found there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entries {
    /// Hash-map entries.
    hashed: usize,
    /// Cache entries (one per flow and CPU).
    cached: usize,
}

/// One address family's hash maps and caches.
struct Family<E> {
    /// The hash map of each slot.
    maps: [MapData; 2],
    /// Hash buckets of the maps (the same in both slots).
    buckets: u32,
    /// Every CPU's cache, both slots.
    cache: Cache<E>,
    /// Per slot: a drain of the slot's map (or of its caches) did not
    /// complete, so they may hold entries their created-entries counters
    /// no longer know of, and the next drain of the slot reads them
    /// whatever the counters say.
    unclean: [bool; 2],
    /// The same for the caches.
    cache_unclean: [bool; 2],
    /// What a failed walk was doing, for its error.
    what: &'static str,
}

impl<E: Entry> Family<E> {
    fn take(
        ebpf: &mut Ebpf,
        names: [&'static str; 2],
        cache_name: &'static str,
        cpus: u32,
        what: &'static str,
    ) -> Result<Self, Error> {
        let maps = [per_cpu_hash(ebpf, names[0])?, per_cpu_hash(ebpf, names[1])?];
        Ok(Self {
            buckets: buckets(&maps[0], names[0])?,
            maps,
            cache: cache(ebpf, cache_name, cpus)?,
            unclean: [false; 2],
            cache_unclean: [false; 2],
            what,
        })
    }

    /// Drains this family's part of `slot`: its hash map first, folding
    /// entries of flows a cache also holds into the cache, then its caches.
    /// Each is skipped when the programs created nothing in it and the
    /// last drain of the slot completed. Returns the entries found.
    fn drain(
        &mut self,
        builder: &Builder<'_>,
        slot: u32,
        lanes: &mut [build::Lane],
        created: Entries,
    ) -> Result<Entries, Error>
    where
        E::Key: aya::Pod,
        for<'k> build::KeyParts: From<&'k E::Key>,
    {
        let mut found = Entries::default();
        let at = (slot & 1) as usize;
        let cached = created.cached > 0 || self.cache_unclean[at];
        // Set until the scan below completes (the walk may fail first).
        self.cache_unclean[at] = cached;
        if created.hashed > 0 || self.unclean[at] {
            self.unclean[at] = true;
            let threads = threads_for(lanes.len(), created.hashed);
            let with_cache = cached.then_some((&self.cache, slot));
            let map = self.maps[slot as usize].fd().as_fd();
            found.hashed = builder
                .drain_map(map, self.buckets, with_cache, &mut lanes[..threads])
                .map_err(|source| Error::Syscall {
                    what: self.what,
                    source,
                })?;
            self.unclean[at] = false;
        }
        if cached {
            // The scan reads every CPU's entries of an index, full or not:
            // its size is the cache's, not the flows'.
            let threads = threads_for(lanes.len(), self.cache.slot_entries());
            found.cached = builder.scan_cache(&self.cache, slot, &mut lanes[..threads]);
            self.cache_unclean[at] = false;
        }
        Ok(found)
    }
}

/// Drains the maps every interval and sends the batches on.
pub struct Drainer {
    maps: Maps,
    /// The slot the programs write now.
    slot: u32,
    /// Threads walking a large map, 1 to [`MAX_THREADS`].
    threads: usize,
    /// Record buffers handed back by the outputs.
    pool: Pool,
    /// One per thread; their parts are empty between drains.
    lanes: Vec<build::Lane>,
    names: IfNames,
    sampling_rate: u32,
    interval: Duration,
    last_drain: SystemTime,
    out: mpsc::Sender<Batch>,
    dropped_records: u64,
    /// Program runs in progress the flips waited for, since the start.
    waited_for_runs: u64,
}

impl Drainer {
    /// Prepares the drain; slot 0 is the one the programs start with.
    pub fn new(
        maps: Maps,
        names: IfNames,
        sampling_rate: u32,
        interval: Duration,
        out: mpsc::Sender<Batch>,
    ) -> Result<Self, Error> {
        // One walking thread per CPU this process may run on.
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(MAX_THREADS);
        Ok(Self {
            slot: 0,
            maps,
            threads,
            pool: Pool::new(threads),
            lanes: (0..threads).map(|_| build::Lane::default()).collect(),
            names,
            sampling_rate,
            interval,
            last_drain: SystemTime::now(),
            out,
            dropped_records: 0,
            waited_for_runs: 0,
        })
    }

    /// Drains every interval until cancelled, then once more.
    pub async fn run(mut self, cancel: CancellationToken) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut ticks = tokio::time::interval_at(start, self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match tokio::task::block_in_place(|| self.drain()) {
                Ok(batch) => self.send(batch),
                Err(e) => warn!("drain failed, will retry next interval: {e}"),
            }
        }
        // Final drain of the partial interval. Capture has detached by now
        // (app orders it), so this takes the last packets counted.
        match tokio::task::block_in_place(|| self.drain()) {
            Ok(batch) => {
                if self.out.send(batch).await.is_err() {
                    warn!("output closed before the final interval was written");
                }
            }
            Err(e) => warn!("final drain failed: {e}"),
        }
    }

    /// Program runs that were in progress when a flip happened, which the
    /// drain waited for before reading the old slot, since the start.
    pub fn waited_for_runs(&self) -> u64 {
        self.waited_for_runs
    }

    /// Walks large maps with `threads` threads (clamped to 1..=[`MAX_THREADS`])
    /// instead of one per available CPU.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, MAX_THREADS);
        self.pool = Pool::new(self.threads);
        self.lanes.resize_with(self.threads, build::Lane::default);
    }

    fn send(&mut self, batch: Batch) {
        let n = batch.records.len() as u64;
        match self.out.try_send(batch) {
            Ok(()) => self.dropped_records = 0,
            Err(_) => {
                // Never block the drain on a slow output: count what is lost
                // and report it with the next batch that gets through.
                self.dropped_records += n;
                warn!(
                    "output is behind: dropped a batch of {n} records ({} since the last one written)",
                    self.dropped_records
                );
            }
        }
    }

    /// Flips the slot, waits for writers of the old slot to finish, and reads
    /// and empties it.
    pub fn drain(&mut self) -> Result<Batch, Error> {
        let old = self.slot;
        let new = (old + 1) % SLOTS;
        let started = std::time::Instant::now();
        // The lines name the new slot even when the wait fails: the old one
        // is then drained at the next flip back, its packets a interval late
        // but not lost.
        self.slot = new;
        self.waited_for_runs += self.maps.slots.flip(new)? as u64;
        let flip = started.elapsed();
        let end = SystemTime::now();
        let clock = self.maps.clock.snapshot()?;
        let names = build::Names::new(&self.names.snapshot());
        let builder = Builder {
            cpus: self.maps.cpus,
            clock: &clock,
            names: &names,
            sampling_rate: self.sampling_rate,
        };
        // Recycled buffers where the outputs gave some back; otherwise grown
        // as needed (glibc grows an mmapped block with mremap, a page-table
        // move rather than a copy). Reserving fresh buffers on transparent
        // huge pages was tried and measured: 100k flows drained with ~15%
        // less CPU, 1M flows with ~50% more on this VM.
        for lane in &mut self.lanes {
            lane.part = self.pool.take();
        }
        // The counters are quiescent after the flip too. The entries the
        // programs created say how large each map is: the walk is sized by
        // them, and skipped for a map that is empty (walking an empty 1M-
        // bucket map still locks every bucket: ~16 ms).
        let counters = self.take_counters(old)?;
        let created = |hashed, cached| Entries {
            hashed: counters.get(hashed) as usize,
            cached: counters.get(cached) as usize,
        };
        let created = [
            created(Counter::FlowsV4, Counter::CachedV4),
            created(Counter::FlowsV6, Counter::CachedV6),
        ];
        let n4 = self
            .maps
            .v4
            .drain(&builder, old, &mut self.lanes, created[0])?;
        let n6 = self
            .maps
            .v6
            .drain(&builder, old, &mut self.lanes, created[1])?;
        // Both hash maps of the old slot are empty again.
        self.maps.slots.clear_full(old);
        if [n4, n6] != created {
            // Only after a failed walk (the map kept entries the counter no
            // longer counts) or a bug: say so, the records are right anyway.
            warn!(
                "drained {n4:?} IPv4 + {n6:?} IPv6 entries where the programs created {created:?}"
            );
        }
        let parts = self.lanes.iter_mut().map(|l| std::mem::take(&mut l.part));
        let records = Records::pooled(parts.collect(), self.pool.clone());
        debug!(
            "drained slot {old}: {n4:?} IPv4 + {n6:?} IPv6 entries in {:?} (flip {flip:?})",
            started.elapsed()
        );
        self.names.expire(self.interval * 2);
        let start = std::mem::replace(&mut self.last_drain, end);
        Ok(Batch {
            start,
            end,
            records,
            counters,
            dropped_records: self.dropped_records,
            sampling_rate: self.sampling_rate,
        })
    }

    /// Sums and zeroes the counters of `slot` (quiescent after the flip).
    fn take_counters(&mut self, slot: u32) -> Result<Counters, Error> {
        let map_err = |e: aya::maps::MapError| Error::Map {
            name: names::COUNTERS,
            reason: e.to_string(),
        };
        let mut totals = Counters::default();
        for c in Counter::ALL {
            let index = c.index(slot);
            let values = self.maps.counters.get(&index, 0).map_err(map_err)?;
            totals.0[c as usize] = values.iter().sum();
            let zeros =
                PerCpuValues::try_from(vec![0u64; self.maps.cpus]).map_err(|e| Error::Map {
                    name: names::COUNTERS,
                    reason: e.to_string(),
                })?;
            self.maps.counters.set(index, zeros, 0).map_err(map_err)?;
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_maps_are_walked_by_one_thread() {
        assert_eq!(threads_for(2, 0), 1);
        assert_eq!(threads_for(2, 8_000), 1);
        assert_eq!(threads_for(2, 30_000), 2);
        assert_eq!(threads_for(4, 20_000), 2);
        assert_eq!(threads_for(4, 100_000), 4);
        assert_eq!(threads_for(1, 1_000_000), 1);
    }
}
