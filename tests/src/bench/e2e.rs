//! End to end against pmacctd: the same trafgen traffic (60-byte UDP frames,
//! 65536 flows) through a veth pair with (a) nothing attached, (b) flowagent,
//! (c) pmacctd with the equivalent 5-tuple aggregation, (d) both. The figure
//! is the machine's busy CPU-seconds per million packets above (a), which
//! includes softirq time spent on behalf of either agent; and each agent's
//! packet total against what trafgen sent.

use std::{path::Path, time::Duration};

use super::{
    cpu::busy_seconds,
    kernel::frame_v4,
    report::{Figure, median},
    trafgen,
};
use crate::{agent::Agent, lab::Lab, peers::Pmacctd};

const SECTION: &str = "end to end against pmacctd";

/// Offset of the low 16 bits of the IPv4 source: 65536 distinct flows.
const SRC_LOW_AT: usize = 14 + 12 + 2;

/// Writes pmacctd's config for the comparison run and returns its output file.
fn pmacct_config(dir: &Path, sampling: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    // A new output file per run: a print plugin of an earlier run that is
    // still flushing must not add its lines to this run's total.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let output = dir.join(format!("pmacct-{run}.jsonl"));
    let conf = dir.join("pmacctd.conf");
    let mut text = format!(
        "daemonize: false\npcap_interface: gb\naggregate: src_host, dst_host, src_port, dst_port, proto\n\
         plugins: print\nprint_output: json\nprint_output_file: {}\nprint_output_file_append: true\n\
         print_refresh_time: 5\n",
        output.display()
    );
    if sampling > 1 {
        text.push_str(&format!("sampling_rate: {sampling}\n"));
    }
    std::fs::write(&conf, text).unwrap();
    (conf, output)
}

/// Packets in pmacctd's JSON output.
fn pmacct_total(output: &Path) -> u64 {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["packets"].as_u64())
        .sum()
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Nothing,
    /// A no-op native XDP program: on veth, attaching native XDP moves
    /// receive onto a NAPI ring, which costs by itself.
    NoopXdp,
    Flowagent,
    Pmacctd,
    Both,
}

struct RunResult {
    cpu_per_mpkt: f64,
    flowagent_total: Option<u64>,
    pmacct_total: Option<u64>,
}

fn run_once(
    lab: &Lab,
    dir: &Path,
    conf: &Path,
    variant: Variant,
    sampling: u32,
    packets: u64,
) -> RunResult {
    let sampling_arg = sampling.to_string();
    let noop = (variant == Variant::NoopXdp).then(|| {
        super::kernel::attach(
            lab.obs.name(),
            "gb",
            flowagent_common::names::PROG_NOOP,
            1,
            1024,
        )
    });
    let agent = matches!(variant, Variant::Flowagent | Variant::Both).then(|| {
        Agent::start(
            &lab.obs,
            &[
                "--iface",
                "gb",
                "--interval",
                "5",
                "--max-flows",
                "131072",
                "--sampling",
                &sampling_arg,
            ],
        )
    });
    let pmacct = matches!(variant, Variant::Pmacctd | Variant::Both).then(|| {
        let (conf, output) = pmacct_config(dir, sampling);
        (Pmacctd::start(&lab.obs, &conf), output)
    });
    let before = busy_seconds();
    trafgen::send(lab.gen_ns.name(), "ga", conf, packets);
    // Let softirq and the consumers finish the backlog before reading CPU.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = busy_seconds() - before;
    drop(noop);
    RunResult {
        cpu_per_mpkt: cpu / (packets as f64 / 1e6),
        flowagent_total: agent.map(|a| a.stop().sum("packets", |_| true)),
        pmacct_total: pmacct.map(|(p, output)| {
            p.stop();
            pmacct_total(&output)
        }),
    }
}

/// The figures, unsampled and at 1:100.
pub fn run(dir: &Path, quick: bool) -> Vec<Figure> {
    let packets: u64 = if quick { 300_000 } else { 2_000_000 };
    let reps = if quick { 1 } else { 3 };
    let lab = Lab::new("be");
    let conf = dir.join("e2e.cfg");
    trafgen::write_config(&conf, &frame_v4(), Some((SRC_LOW_AT, 2)));
    let mut figures = Vec::new();
    for sampling in [1u32, 100] {
        let mut results: Vec<(Variant, Vec<RunResult>)> = Vec::new();
        for variant in [
            Variant::Nothing,
            Variant::NoopXdp,
            Variant::Flowagent,
            Variant::Pmacctd,
            Variant::Both,
        ] {
            let runs = (0..reps)
                .map(|_| run_once(&lab, dir, &conf, variant, sampling, packets))
                .collect();
            results.push((variant, runs));
        }
        let cpu = |v: Variant| -> Vec<f64> {
            results
                .iter()
                .find(|(x, _)| *x == v)
                .unwrap()
                .1
                .iter()
                .map(|r| r.cpu_per_mpkt)
                .collect()
        };
        let base = median(&cpu(Variant::Nothing));
        let above = |v: Variant| -> Vec<f64> { cpu(v).iter().map(|c| c - base).collect() };
        let fa = above(Variant::Flowagent);
        let pm = above(Variant::Pmacctd);
        let both = above(Variant::Both);
        let conditions = format!(
            "native XDP on veth vs pmacctd (libpcap) on the same veth, 60 B UDP frames, 65536 flows, {packets} packets from trafgen on 1 CPU, sampling 1:{sampling}, {reps} repetition(s)"
        );
        let rate = format!("1:{sampling}");
        figures.push(Figure {
            section: SECTION,
            name: format!("nothing attached, {rate}"),
            value: base,
            unit: "CPU-s per Mpkt",
            baseline: None,
            target: None,
            samples: cpu(Variant::Nothing),
            conditions: conditions.clone(),
        });
        let pm_m = median(&pm);
        let fa_m = median(&fa);
        figures.push(Figure {
            section: SECTION,
            name: format!("pmacctd above nothing, {rate}"),
            value: pm_m,
            unit: "CPU-s per Mpkt",
            baseline: None,
            target: None,
            samples: pm,
            conditions: conditions.clone(),
        });
        figures.push(Figure {
            section: SECTION,
            name: format!("flowagent above nothing, {rate}"),
            value: fa_m,
            unit: "CPU-s per Mpkt",
            baseline: Some(("pmacctd".into(), pm_m)),
            target: Some(("<= 0.1 x pmacctd".into(), fa_m <= 0.1 * pm_m)),
            samples: fa,
            conditions: conditions.clone(),
        });
        let noop = above(Variant::NoopXdp);
        let noop_m = median(&noop);
        let fa_noop: Vec<f64> = cpu(Variant::Flowagent)
            .iter()
            .map(|c| c - base - noop_m)
            .collect();
        figures.push(Figure {
            section: SECTION,
            name: format!("no-op native XDP program above nothing (veth NAPI path), {rate}"),
            value: noop_m,
            unit: "CPU-s per Mpkt",
            baseline: None,
            target: None,
            samples: noop,
            conditions: conditions.clone(),
        });
        let fa_noop_m = median(&fa_noop);
        figures.push(Figure {
            section: SECTION,
            name: format!(
                "flowagent above the no-op XDP program (its program, drain and output), {rate}"
            ),
            value: fa_noop_m,
            unit: "CPU-s per Mpkt",
            baseline: Some(("pmacctd".into(), pm_m)),
            target: Some(("<= 0.1 x pmacctd".into(), fa_noop_m <= 0.1 * pm_m)),
            samples: fa_noop,
            conditions: conditions.clone(),
        });
        figures.push(Figure {
            section: SECTION,
            name: format!("both above nothing, {rate}"),
            value: median(&both),
            unit: "CPU-s per Mpkt",
            baseline: None,
            target: None,
            samples: both,
            conditions: conditions.clone(),
        });
        for (who, pick) in [
            (
                "flowagent",
                (|r: &RunResult| r.flowagent_total) as fn(&RunResult) -> Option<u64>,
            ),
            ("pmacctd", |r: &RunResult| r.pmacct_total),
        ] {
            let counted: Vec<f64> = results
                .iter()
                .flat_map(|(_, runs)| runs.iter().filter_map(pick))
                .map(|t| t as f64 * sampling as f64 / packets as f64)
                .collect();
            let exact = sampling > 1 || counted.iter().all(|c| *c == 1.0);
            figures.push(Figure {
                section: SECTION,
                name: format!("{who} packets counted / sent, {rate}"),
                value: median(&counted),
                unit: "ratio",
                baseline: None,
                target: (who == "flowagent" && sampling == 1)
                    .then(|| ("exactly 1".to_owned(), exact)),
                samples: counted,
                conditions: format!("{conditions}; sampled counts multiplied by the rate"),
            });
        }
    }
    figures
}
