//! Drain: how fast the agent empties a slot holding N live flows, against the
//! key-by-key baseline (get_next_key, lookup, delete per entry) on the same
//! maps in the same run. The maps are filled by running the real XDP program
//! (BPF_PROG_TEST_RUN) on N frames with distinct source addresses.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{TestRun, TestRunOptions, Xdp},
};
use flowagent::{
    capture::{
        IfNames,
        loader::{load_object, program},
    },
    drain::{Drainer, Maps},
};
use flowagent_common::{FlowKeyV4, FlowStats, names};

use super::{
    kernel::frame_v4,
    report::{Figure, median},
};

const SECTION: &str = "drain";

/// Offset of the IPv4 source address in the frame.
const SRC_AT: usize = 14 + 12;

/// A loaded object whose slot-0 IPv4 map holds `n` flows.
fn filled(n: u32) -> Ebpf {
    let mut ebpf = load_object(1, n.next_power_of_two()).expect("load");
    let xdp = program::<Xdp>(&mut ebpf, names::PROG_XDP).expect("program");
    xdp.load().expect("verifier");
    let mut frame = frame_v4();
    for i in 0..n {
        frame[SRC_AT..SRC_AT + 4].copy_from_slice(&(0x0b00_0000 + i).to_be_bytes());
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        };
        xdp.test_run(opts).expect("BPF_PROG_TEST_RUN");
    }
    ebpf
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The agent's drain of `n` flows: (wall seconds, CPU seconds, records).
fn agent_drain(n: u32) -> (f64, f64, usize) {
    let mut ebpf = filled(n);
    let maps = Maps::take(&mut ebpf).expect("maps");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let mut drainer =
        Drainer::new(maps, IfNames::default(), 1, Duration::from_secs(10), tx).expect("drainer");
    let (t0, c0) = (Instant::now(), thread_cpu());
    let batch = drainer.drain().expect("drain");
    let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
    (wall.as_secs_f64(), cpu.as_secs_f64(), batch.records.len())
}

/// Key by key: collect the keys, then look up and delete each.
fn baseline_drain(n: u32) -> (f64, usize) {
    let mut ebpf = filled(n);
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

/// The figures for 10k, 100k and (full run) 1M flows.
pub fn run(quick: bool) -> Vec<Figure> {
    let sizes: &[u32] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let reps = if quick { 1 } else { 3 };
    let mut figures = Vec::new();
    for &n in sizes {
        let mut rates = Vec::new();
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        let mut base_rates = Vec::new();
        for _ in 0..reps {
            let (wall, cpu, records) = agent_drain(n);
            assert_eq!(records, n as usize, "the drain must return every flow");
            rates.push(n as f64 / wall / 1e6);
            walls.push(wall * 1e3);
            cpus.push(cpu * 1e3);
            let (bwall, bkeys) = baseline_drain(n);
            assert_eq!(bkeys, n as usize);
            base_rates.push(n as f64 / bwall / 1e6);
        }
        let conditions = format!(
            "{n} IPv4 flows, 2 possible CPUs, map of {} entries",
            n.next_power_of_two()
        );
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
            name: format!("{n} flows: wall time of one drain (flip, barrier, batch read, records)"),
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
    }
    figures
}
