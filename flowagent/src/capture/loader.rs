//! Loads the eBPF object with this run's settings: the flow maps' and
//! caches' sizes, and every CPU's line (sampling threshold, cache layout)
//! written before any program runs; then verifies the programs the mode
//! needs.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use flowagent_common::{CpuLine, SLOTS, cache_bits_v6, names};

use super::Error;
use crate::config::{Config, Mode};
use crate::drain::sys::MappedArray;

/// The object built from flowagent-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowagent"));

/// The CPU lines' sampling threshold for 1-in-`rate` sampling: a packet
/// is kept when a uniform random `u32` is below it, so the probability is
/// `threshold / 2^32`, within 2^-32 of `1 / rate`. 0 keeps every packet.
pub fn sample_threshold(rate: u32) -> u32 {
    if rate <= 1 {
        0
    } else {
        ((1u64 << 32) / rate as u64) as u32
    }
}

/// Largest flow cache per CPU: 16M IPv4 entries (4 GiB per CPU for both
/// families and slots).
pub const MAX_CACHE_ENTRIES: u32 = 1 << 24;

/// Most kernel memory the flow caches take by default (see
/// [`Sizes::default_cache`]).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Kernel memory per IPv4 cache entry and CPU: a 64-byte IPv4 entry and
/// half a 128-byte IPv6 entry, in each of the two slots.
pub const CACHE_BYTES_PER_ENTRY: u64 = 2 * (64 + 128 / 2);

/// How large the flow maps and caches are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Entries of each flow hash map (`--max-flows`).
    pub max_flows: u32,
    /// log2 of each CPU's IPv4 cache entries per slot (IPv6: half as many,
    /// see `flowagent_common::cache_bits_v6`); None: no cache.
    pub cache_bits: Option<u32>,
    /// Possible CPUs, which the cache arrays are laid out for.
    pub cpus: u32,
}

impl Sizes {
    /// Maps of `max_flows` entries and caches of `cache` entries per CPU
    /// (rounded up to a power of two; 0 turns the cache off; None picks
    /// the default, [`Sizes::default_cache`]), on this machine's CPUs.
    pub fn new(max_flows: u32, cache: Option<u32>) -> Result<Self, Error> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, source)| Error::Cpus(format!("{what}: {source}")))?
            as u32;
        Ok(Self::for_cpus(max_flows, cache, cpus))
    }

    /// As [`Sizes::new`], for `cpus` possible CPUs.
    pub fn for_cpus(max_flows: u32, cache: Option<u32>, cpus: u32) -> Self {
        let cpus = cpus.max(1);
        let entries = cache
            .unwrap_or_else(|| Self::default_cache(max_flows, cpus))
            .min(MAX_CACHE_ENTRIES);
        let mut bits = (entries > 0).then(|| entries.next_power_of_two().trailing_zeros());
        // Array indexes are u32: keep every CPU's caches of both slots
        // below 2^31 entries (only reachable with hundreds of CPUs).
        while let Some(b) = bits
            && (u64::from(SLOTS) * u64::from(cpus)) << b > 1 << 31
        {
            bits = b.checked_sub(1);
        }
        Sizes {
            max_flows,
            cache_bits: bits,
            cpus,
        }
    }

    /// The default IPv4 cache per CPU: room for twice a CPU's share of
    /// `max_flows` (receive-side scaling spreads flows over CPUs, and a
    /// two-way table half full sends about a tenth of its flows to the hash
    /// map), at least 1024 entries, and at most 64 MiB for all
    /// caches together ([`CACHE_BYTES_PER_ENTRY`] per entry and CPU). More
    /// flows than that go to the hash maps, unless `--flow-cache` asks for
    /// a larger cache.
    pub fn default_cache(max_flows: u32, cpus: u32) -> u32 {
        let cpus = u64::from(cpus.max(1));
        let share = (2 * u64::from(max_flows) / cpus)
            .max(1024)
            .next_power_of_two();
        let budget = DEFAULT_CACHE_BYTES / CACHE_BYTES_PER_ENTRY / cpus;
        // The largest power of two within the budget.
        let budget = 1u64 << budget.max(1024).ilog2();
        share.min(budget) as u32
    }

    /// IPv4 entries per CPU and slot (0 without a cache).
    pub fn cache_entries(&self) -> u32 {
        self.cache_bits.map_or(0, |b| 1 << b)
    }

    /// Entries of the IPv4 (`v6 == false`) or IPv6 cache array: every CPU's
    /// cache for both slots (1, never read, without a cache: a map cannot
    /// have 0 entries).
    pub fn cache_array_entries(&self, v6: bool) -> u32 {
        let bits = match (self.cache_bits, v6) {
            (None, _) => return 1,
            (Some(b), false) => b,
            (Some(b), true) => cache_bits_v6(b),
        };
        (SLOTS * self.cpus) << bits
    }
}

/// Loads the object for 1-in-`sampling` sampling and maps of `sizes`: maps
/// created, and the clock program the drain runs loaded; the flow programs
/// are left to the caller.
pub fn load_object(sampling: u32, sizes: &Sizes) -> Result<Ebpf, Error> {
    let mut ebpf = configure(sizes).load(EBPF_OBJECT).map_err(Error::Load)?;
    write_lines(&mut ebpf, sampling, sizes)?;
    program::<Xdp>(&mut ebpf, names::PROG_CLOCK)?
        .load()
        .map_err(|source| Error::Program {
            name: names::PROG_CLOCK,
            source,
        })?;
    Ok(ebpf)
}

/// A loader for maps of `sizes`.
pub fn configure(sizes: &Sizes) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in names::FLOWS_V4.iter().chain(names::FLOWS_V6.iter()) {
        loader.map_max_entries(name, sizes.max_flows);
    }
    for (name, v6) in [(names::CACHE_V4, false), (names::CACHE_V6, true)] {
        loader.map_max_entries(name, sizes.cache_array_entries(v6));
    }
    loader.map_max_entries(names::CPUS, sizes.cpus);
    loader
}

/// Writes every CPU's line of a freshly loaded object (before any program
/// is attached): the threshold for 1-in-`sampling` sampling and where its
/// caches of `sizes` are.
pub fn write_lines(ebpf: &mut Ebpf, sampling: u32, sizes: &Sizes) -> Result<(), Error> {
    let threshold = sample_threshold(sampling);
    let map = ebpf
        .map(names::CPUS)
        .ok_or_else(|| Error::Lines(format!("map {} missing from the object", names::CPUS)))?;
    let aya::maps::Map::Array(data) = map else {
        return Err(Error::Lines(format!("{} is not an array", names::CPUS)));
    };
    // A second fd of the map, which the mapping keeps while the object
    // keeps its own.
    let data = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())
        .and_then(|fd| aya::maps::MapData::from_fd(fd).map_err(|e| e.to_string()))
        .map_err(Error::Lines)?;
    let lines = MappedArray::<CpuLine>::new(data).map_err(|e| Error::Lines(e.to_string()))?;
    for cpu in 0..lines.len() {
        let line = CpuLine::new(threshold, cpu as u32, sizes.cpus, sizes.cache_bits);
        // SAFETY: in bounds; no program runs yet, so nothing else touches it.
        unsafe { lines.as_ptr().add(cpu).write(line) };
    }
    Ok(())
}

/// Loads the object and the programs `config.mode` uses. Auto mode loads
/// only XDP here; the attacher loads TC ingress when an interface's
/// driver has no native XDP ([`classifier`]).
pub fn load(config: &Config) -> Result<Ebpf, Error> {
    let sizes = Sizes::new(config.max_flows, config.flow_cache)?;
    let mut ebpf = load_object(config.sampling, &sizes)?;
    if config.mode == Mode::Tc {
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            classifier(&mut ebpf, name)?;
        }
    } else {
        program::<Xdp>(&mut ebpf, names::PROG_XDP)?
            .load()
            .map_err(|source| Error::Program {
                name: names::PROG_XDP,
                source,
            })?;
    }
    Ok(ebpf)
}

/// The TC program `name`, loaded (verified) on first use.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    let prog = program::<SchedClassifier>(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|source| Error::Program { name, source })?;
    }
    Ok(prog)
}

/// The program `name` as type `P`.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(Error::Missing(name))?;
    prog.try_into()
        .map_err(|source| Error::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::{Sizes, sample_threshold};

    #[test]
    fn cache_sizes() {
        // Default: twice a CPU's share, a power of two, at least 1024, at
        // most 64 MiB in all (256 B per entry and CPU).
        assert_eq!(Sizes::default_cache(65_536, 2), 65_536);
        assert_eq!(Sizes::default_cache(65_536, 16), 8192);
        assert_eq!(Sizes::default_cache(100_000, 4), 65_536);
        assert_eq!(Sizes::default_cache(100, 2), 1024);
        assert_eq!(Sizes::default_cache(1 << 20, 1), 1 << 18);
        assert_eq!(Sizes::default_cache(1 << 20, 2), 1 << 17);
        // 64 MiB / 256 B / 3 CPUs is 87381: the power of two below.
        assert_eq!(Sizes::default_cache(1 << 20, 3), 1 << 16);
        assert_eq!(Sizes::default_cache(1 << 20, 1024), 1024);
        let s = Sizes::for_cpus(65_536, None, 2);
        assert_eq!((s.cache_bits, s.cache_entries()), (Some(16), 65_536));
        // IPv6: half the entries.
        assert_eq!(
            (s.cache_array_entries(false), s.cache_array_entries(true)),
            (2 * 2 * 65_536, 2 * 2 * 32_768)
        );
        let s = Sizes::for_cpus(1024, Some(1000), 3);
        assert_eq!(
            (s.cache_entries(), s.cache_array_entries(false)),
            (1024, 2 * 3 * 1024)
        );
        // A one-entry IPv4 cache has a one-entry IPv6 cache.
        let one = Sizes::for_cpus(1024, Some(1), 2);
        assert_eq!(
            (
                one.cache_array_entries(false),
                one.cache_array_entries(true)
            ),
            (4, 4)
        );
        let off = Sizes::for_cpus(1024, Some(0), 2);
        assert_eq!(
            (
                off.cache_bits,
                off.cache_array_entries(false),
                off.cache_array_entries(true)
            ),
            (None, 1, 1)
        );
        assert_eq!(
            Sizes::for_cpus(8, Some(u32::MAX), 1).cache_entries(),
            1 << 24
        );
    }

    #[test]
    fn thresholds() {
        assert_eq!(sample_threshold(1), 0);
        assert_eq!(sample_threshold(2), 1 << 31);
        assert_eq!(sample_threshold(100), 42_949_672);
        assert_eq!(sample_threshold(1 << 24), 256);
    }
}
