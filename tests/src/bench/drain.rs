//! Drain: how fast the agent empties a slot holding N live flows, against the
//! key-by-key baseline (get_next_key, lookup, delete per entry) on the same
//! maps in the same run. The maps are filled by running the real XDP program
//! (BPF_PROG_TEST_RUN) on N frames with distinct source addresses.
//!
//! The agent drains every interval, and by the next one its outputs have
//! usually dropped the previous batch, whose buffers the drain then reuses.
//! So the headline figures are a drain's second run on the same drainer,
//! the first batch dropped in between; the first run (fresh buffers, every
//! page faulted in) is reported too, and both with one walking thread.

use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{TestRun, TestRunOptions, Xdp},
};
use flowagent::{
    capture::{
        IfNames,
        loader::{Sizes, load_object, program},
    },
    drain::{
        Drainer, Maps,
        sys::{self, Walk},
    },
};
use flowagent_common::{FlowKeyV4, FlowStats, names};

use super::{
    kernel::frame_v4,
    report::{Figure, median},
};

const SECTION: &str = "drain";

/// Offset of the IPv4 source address in the frame.
const SRC_AT: usize = 14 + 12;

/// A loaded object whose maps have room for `n` flows, with caches of
/// `cache` entries per CPU, its XDP program loaded.
fn loaded(n: u32, cache: u32) -> Ebpf {
    let sizes = Sizes::new(n.next_power_of_two(), Some(cache)).expect("possible CPUs");
    let mut ebpf = load_object(1, &sizes).expect("load");
    let xdp = program::<Xdp>(&mut ebpf, names::PROG_XDP).expect("program");
    xdp.load().expect("verifier");
    ebpf
}

/// Counts `n` flows into the slot the programs write now.
fn fill(ebpf: &mut Ebpf, n: u32) {
    let xdp = program::<Xdp>(ebpf, names::PROG_XDP).expect("program");
    let mut frame = frame_v4();
    for i in 0..n {
        frame[SRC_AT..SRC_AT + 4].copy_from_slice(&(0x0b00_0000 + i).to_be_bytes());
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        };
        xdp.test_run(opts).expect("BPF_PROG_TEST_RUN");
    }
}

/// A loaded object whose slot-0 IPv4 map and caches (of `cache` entries
/// per CPU; 0: none) hold `n` flows.
fn filled(n: u32, cache: u32) -> Ebpf {
    let mut ebpf = loaded(n, cache);
    fill(&mut ebpf, n);
    ebpf
}

/// One timed drain.
struct Timed {
    wall: f64,
    cpu: f64,
}

/// The agent's drain of `n` flows on `threads` walking threads (None: the
/// agent's default), twice on the same drainer: (first, second).
fn agent_drains(n: u32, threads: Option<usize>, cache: u32) -> (Timed, Timed) {
    let mut ebpf = filled(n, cache);
    let maps = Maps::take(&mut ebpf).expect("maps");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    // Named, as the agent's interfaces are: BPF_PROG_TEST_RUN runs XDP on
    // the loopback device (ifindex 1).
    let names = IfNames::default();
    names.present(1, "lo");
    let mut drainer = Drainer::new(maps, names, 1, Duration::from_secs(10), tx).expect("drainer");
    if let Some(threads) = threads {
        drainer.set_threads(threads);
    }
    let mut timed = || {
        // Process CPU: the drain may use more than one thread.
        let (t0, c0) = (
            Instant::now(),
            super::cpu::clock_seconds(libc::CLOCK_PROCESS_CPUTIME_ID),
        );
        let batch = drainer.drain().expect("drain");
        let (wall, cpu) = (
            t0.elapsed(),
            super::cpu::clock_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - c0,
        );
        assert_eq!(
            batch.records.len(),
            n as usize,
            "the drain must return every flow"
        );
        let packets: u64 = batch.records.iter().map(|r| r.packets).sum();
        assert_eq!(packets, n as u64, "every packet exactly once");
        // Dropped untimed, as the outputs do: its buffers go back to the drain.
        drop(batch);
        Timed {
            wall: wall.as_secs_f64(),
            cpu,
        }
    };
    let first = timed();
    // The drain flipped the programs to the other slot: fill that one.
    fill(&mut ebpf, n);
    let second = timed();
    (first, second)
}

/// Key by key: collect the keys, then look up and delete each.
fn baseline_drain(n: u32) -> (f64, usize) {
    let mut ebpf = filled(n, 0);
    let map = ebpf.take_map(names::FLOWS_V4[0]).expect("map");
    let mut map: PerCpuHashMap<_, FlowKeyV4, FlowStats> =
        PerCpuHashMap::try_from(map).expect("per-CPU hash");
    let t0 = Instant::now();
    let keys: Vec<FlowKeyV4> = map.keys().map(|k| k.expect("key")).collect();
    let mut packets = 0u64;
    for k in &keys {
        let values = map.get(k, 0).expect("lookup");
        packets += values.iter().map(|v| v.packets).sum::<u64>();
        map.remove(k).expect("delete");
    }
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(packets, n as u64);
    (wall, keys.len())
}

/// Bytes of one per-CPU value as the batch syscalls return it.
fn value_len() -> usize {
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    size_of::<FlowStats>().next_multiple_of(8) * cpus
}

/// The kernel alone on a map of `n` flows: seconds for each measured step.
/// `op` is what is timed: a LOOKUP_AND_DELETE_BATCH walk in batches of
/// `batch` on `threads` threads (each its own half of the buckets, no
/// records built), or a LOOKUP_BATCH walk followed by DELETE_BATCH of the
/// keys it returned (two timings).
enum Floor {
    LookupAndDelete { batch: usize, threads: u32 },
    LookupThenDelete,
}

fn kernel_floor(n: u32, what: &Floor) -> Vec<f64> {
    let ebpf = filled(n, 0);
    let map = ebpf.map(names::FLOWS_V4[0]).expect("map");
    let aya::maps::Map::PerCpuHashMap(data) = map else {
        panic!("FLOWS_V4 is not a per-CPU hash");
    };
    let fd = data.fd().as_fd();
    let key_len = size_of::<FlowKeyV4>();
    let value_len = value_len();
    // The kernel's bucket count: max_entries rounded up to a power of two.
    let buckets = n.next_power_of_two();
    match *what {
        Floor::LookupAndDelete { batch, threads } => {
            let t0 = Instant::now();
            let total: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| {
                        let range = buckets / threads * i..if i + 1 == threads {
                            u32::MAX
                        } else {
                            buckets / threads * (i + 1)
                        };
                        s.spawn(move || {
                            sys::walk(
                                fd,
                                Walk::LookupAndDelete,
                                key_len,
                                value_len,
                                range,
                                &mut sys::Buffers::with_batch(batch),
                                |_, _| {},
                            )
                            .expect("LOOKUP_AND_DELETE_BATCH")
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("walk")).sum()
            });
            let wall = t0.elapsed().as_secs_f64();
            assert_eq!(total, n as usize, "every entry exactly once");
            vec![wall]
        }
        Floor::LookupThenDelete => {
            let mut keys = Vec::with_capacity(n as usize * key_len);
            let t0 = Instant::now();
            let total = sys::walk(
                fd,
                Walk::Lookup,
                key_len,
                value_len,
                0..u32::MAX,
                &mut sys::Buffers::default(),
                |k, _| keys.extend_from_slice(k),
            )
            .expect("LOOKUP_BATCH");
            let lookup = t0.elapsed().as_secs_f64();
            assert_eq!(total, n as usize);
            let t1 = Instant::now();
            let mut deleted = 0;
            for chunk in keys.chunks(sys::BATCH * key_len) {
                deleted += sys::delete_batch(fd, chunk, key_len).expect("DELETE_BATCH");
            }
            let delete = t1.elapsed().as_secs_f64();
            assert_eq!(deleted, n as usize);
            vec![lookup, delete]
        }
    }
}

/// The kernel's share on `n` flows, without building records.
fn floor_figures(n: u32, reps: usize) -> Vec<Figure> {
    let conditions = format!(
        "{n} IPv4 flows, 2 possible CPUs, map of {} entries, no flow cache, raw bpf(2) batch calls, no records built",
        n.next_power_of_two()
    );
    let mut figures = Vec::new();
    let mut figure = |name: String, samples: Vec<f64>| {
        figures.push(Figure {
            section: SECTION,
            name,
            value: median(&samples),
            unit: "M entries/s",
            baseline: None,
            target: None,
            samples,
            conditions: conditions.clone(),
        })
    };
    let rate = |secs: f64| n as f64 / secs / 1e6;
    for batch in [64, 256, 1024, 4096] {
        let samples = (0..reps)
            .map(|_| rate(kernel_floor(n, &Floor::LookupAndDelete { batch, threads: 1 })[0]))
            .collect();
        figure(
            format!("kernel floor: LOOKUP_AND_DELETE_BATCH, batches of {batch}"),
            samples,
        );
    }
    let samples = (0..reps)
        .map(|_| {
            rate(
                kernel_floor(
                    n,
                    &Floor::LookupAndDelete {
                        batch: sys::BATCH,
                        threads: 2,
                    },
                )[0],
            )
        })
        .collect();
    figure(
        format!(
            "kernel floor: LOOKUP_AND_DELETE_BATCH, batches of {}, 2 threads on half the buckets each",
            sys::BATCH
        ),
        samples,
    );
    let (mut lookups, mut deletes) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = kernel_floor(n, &Floor::LookupThenDelete);
        lookups.push(rate(t[0]));
        deletes.push(rate(t[1]));
    }
    figure(
        format!("kernel floor: LOOKUP_BATCH only, batches of {}", sys::BATCH),
        lookups,
    );
    figure(
        format!(
            "kernel floor: DELETE_BATCH only (keys known), batches of {}",
            sys::BATCH
        ),
        deletes,
    );
    figures
}

/// Samples of one way of draining, over the repetitions.
#[derive(Default)]
struct Samples {
    rates: Vec<f64>,
    walls: Vec<f64>,
    cpus: Vec<f64>,
}

impl Samples {
    fn push(&mut self, n: u32, t: &Timed) {
        self.rates.push(n as f64 / t.wall / 1e6);
        self.walls.push(t.wall * 1e3);
        self.cpus.push(t.cpu * 1e3);
    }
}

/// The figures for 10k, 100k and (full run) 1M flows.
pub fn run(quick: bool) -> Vec<Figure> {
    let sizes: &[u32] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let reps = if quick { 1 } else { 3 };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(flowagent::drain::MAX_THREADS);
    let mut figures = Vec::new();
    for &n in sizes {
        let (mut steady, mut fresh, mut one_steady, mut hashed) = Default::default();
        let mut base_rates = Vec::new();
        let cache = n.next_power_of_two();
        for _ in 0..reps {
            let (first, second) = agent_drains(n, None, cache);
            Samples::push(&mut fresh, n, &first);
            Samples::push(&mut steady, n, &second);
            let (_, second) = agent_drains(n, Some(1), cache);
            Samples::push(&mut one_steady, n, &second);
            let (_, second) = agent_drains(n, None, 0);
            Samples::push(&mut hashed, n, &second);
            let (bwall, bkeys) = baseline_drain(n);
            assert_eq!(bkeys, n as usize);
            base_rates.push(n as f64 / bwall / 1e6);
        }
        let conditions = format!(
            "{n} IPv4 flows from one CPU, 2 possible CPUs, map of {cache} entries, flow cache of {cache} entries per CPU (--flow-cache), {threads} walking thread(s) (one per available CPU), record buffers of the previous (dropped) batch reused",
        );
        let Samples { rates, walls, cpus } = steady;
        let rate = median(&rates);
        let base = median(&base_rates);
        figures.push(Figure {
            section: SECTION,
            name: format!("{n} flows: entries per second"),
            value: rate,
            unit: "M entries/s",
            baseline: Some(("key-by-key iterate and delete".into(), base)),
            target: Some((
                ">= 4 M/s and >= 5 x baseline".into(),
                rate >= 4.0 && rate >= 5.0 * base,
            )),
            samples: rates,
            conditions: conditions.clone(),
        });
        let wall = median(&walls);
        figures.push(Figure {
            section: SECTION,
            name: format!("{n} flows: wall time of one drain (flip, wait, read, records)"),
            value: wall,
            unit: "ms",
            baseline: None,
            target: (n == 1_000_000).then(|| ("< 250 ms".to_owned(), wall < 250.0)),
            samples: walls,
            conditions: conditions.clone(),
        });
        figures.push(Figure {
            section: SECTION,
            name: format!("{n} flows: agent CPU for one drain"),
            value: median(&cpus),
            unit: "ms",
            baseline: None,
            target: None,
            samples: cpus,
            conditions,
        });
        let variants = [
            (
                fresh,
                format!("first drain: fresh record buffers, {threads} walking thread(s)"),
            ),
            (
                one_steady,
                "1 walking thread, record buffers reused".to_owned(),
            ),
            (
                hashed,
                format!(
                    "no flow cache (hash maps only), {threads} walking thread(s), record buffers reused"
                ),
            ),
        ];
        for (samples, how) in variants {
            let conditions = format!(
                "{n} IPv4 flows from one CPU, 2 possible CPUs, map of {cache} entries, {how}"
            );
            figures.push(Figure {
                section: SECTION,
                name: format!("{n} flows, {how}: entries per second"),
                value: median(&samples.rates),
                unit: "M entries/s",
                baseline: None,
                target: None,
                samples: samples.rates,
                conditions: conditions.clone(),
            });
            figures.push(Figure {
                section: SECTION,
                name: format!("{n} flows, {how}: agent CPU for one drain"),
                value: median(&samples.cpus),
                unit: "ms",
                baseline: None,
                target: None,
                samples: samples.cpus,
                conditions,
            });
        }
    }
    figures.extend(floor_figures(*sizes.last().expect("sizes"), reps));
    figures
}
