//! End to end against pmacctd: the same trafgen traffic (60-byte UDP frames,
//! 65536 flows) through a veth pair with (a) nothing attached, (b) flowagent,
//! (c) pmacctd with the equivalent 5-tuple aggregation, (d) both. The figure
//! is the machine's busy CPU-seconds per million packets above (a), which
//! includes softirq time spent on behalf of either agent; and each agent's
//! packet total against what trafgen sent.
//!
//! flowagent runs in each of its three attach modes, each next to a no-op
//! program attached the same way (what the hook costs before any work):
//! - native XDP: on veth this moves receive onto the veth's NAPI ring, which
//!   by itself costs about as much as the program (see the no-op figure);
//! - TC (tcx ingress): the skb path is unchanged, like pmacctd's libpcap;
//! - generic (skb) XDP: runs in the skb path, before TC.
//!
//! The headline comparison is TC, flowagent above nothing: on veth it adds
//! nothing to the receive path but the program, so it is the fair comparison
//! with libpcap, and nothing is subtracted from it. The other modes and the
//! above-no-op figures are reported beside it.
//!
//! trafgen sends with one `sendto(2)` per frame, so the receiver gets
//! linear skbs, as NIC drivers build them. Frames from trafgen's TX ring
//! keep the IP header in page fragments, which no NIC driver produces and
//! which makes a TC program copy the headers out; they are measured too,
//! unsampled, as their own figures ("TX-ring frames").

use std::{path::Path, time::Duration};

use super::{
    cpu::busy_seconds,
    kernel::frame_v4,
    report::{Figure, median},
};
use crate::{agent::Agent, lab::Lab, peers::Pmacctd, trafgen};

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

/// How flowagent's program is attached.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// `--mode xdp`: native XDP.
    Xdp,
    /// `--mode tc`: tcx ingress.
    Tc,
    /// `--mode xdp-generic`: skb-mode XDP.
    XdpGeneric,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Tc, Mode::Xdp, Mode::XdpGeneric];

    /// The agent's `--mode` value.
    fn flag(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
            Mode::XdpGeneric => "xdp-generic",
        }
    }

    /// How figures name the mode.
    fn label(self) -> &'static str {
        match self {
            Mode::Xdp => "native XDP",
            Mode::Tc => "TC (tcx ingress)",
            Mode::XdpGeneric => "generic XDP",
        }
    }

    /// A no-op program attached this way; held until dropped.
    fn attach_noop(self, ns: &str) -> aya::Ebpf {
        use aya::programs::XdpMode;
        use flowagent_common::names::{PROG_NOOP, PROG_TC_NOOP};
        match self {
            Mode::Xdp => super::kernel::attach_xdp(ns, "gb", PROG_NOOP, 1, 1024, XdpMode::Driver),
            Mode::XdpGeneric => {
                super::kernel::attach_xdp(ns, "gb", PROG_NOOP, 1, 1024, XdpMode::Skb)
            }
            Mode::Tc => super::kernel::attach_tc(ns, "gb", PROG_TC_NOOP, 1, 1024),
        }
    }
}

/// How trafgen hands the frames to the kernel (see the module docs).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Traffic {
    /// `sendto(2)` per frame: linear skbs.
    Linear,
    /// trafgen's TX ring: headers past Ethernet in page fragments.
    Ring,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    Nothing,
    Pmacctd,
    /// A no-op program attached in this mode.
    Noop(Mode),
    Flowagent(Mode),
    /// flowagent in this mode and pmacctd together.
    Both(Mode),
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
    traffic: Traffic,
    sampling: u32,
    packets: u64,
) -> RunResult {
    let sampling_arg = sampling.to_string();
    let noop = match variant {
        Variant::Noop(mode) => Some(mode.attach_noop(lab.obs.name())),
        _ => None,
    };
    let agent = match variant {
        Variant::Flowagent(mode) | Variant::Both(mode) => Some(Agent::start(
            &lab.obs,
            &[
                "--iface",
                "gb",
                "--mode",
                mode.flag(),
                "--interval",
                "5",
                "--max-flows",
                "131072",
                "--sampling",
                &sampling_arg,
            ],
        )),
        _ => None,
    };
    let pmacct = matches!(variant, Variant::Pmacctd | Variant::Both(_)).then(|| {
        let (conf, output) = pmacct_config(dir, sampling);
        (Pmacctd::start(&lab.obs, &conf), output)
    });
    let before = busy_seconds();
    match traffic {
        Traffic::Linear => trafgen::send_linear(lab.gen_ns.name(), "ga", conf, packets),
        Traffic::Ring => trafgen::send(lab.gen_ns.name(), "ga", conf, packets),
    };
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

/// `runs` less `base`, repetition by repetition: each sample against the
/// baseline measured in its own repetition (minutes apart at most), so that
/// drift in the machine's load between repetitions cancels instead of
/// widening the spread.
fn paired(runs: &[f64], base: &[f64]) -> Vec<f64> {
    runs.iter().zip(base).map(|(r, b)| r - b).collect()
}

/// One figure of this section in CPU-seconds per Mpkt.
fn cpu_figure(name: String, samples: Vec<f64>, pmacctd: Option<f64>, conditions: &str) -> Figure {
    let value = median(&samples);
    Figure {
        section: SECTION,
        name,
        value,
        unit: "CPU-s per Mpkt",
        baseline: pmacctd.map(|p| ("pmacctd".into(), p)),
        target: pmacctd.map(|p| ("<= 0.1 x pmacctd".into(), value <= 0.1 * p)),
        samples,
        conditions: conditions.to_owned(),
    }
}

/// The figures, unsampled and at 1:100, for every attach mode.
pub fn run(dir: &Path, quick: bool) -> Vec<Figure> {
    let packets: u64 = if quick { 300_000 } else { 2_000_000 };
    let reps = if quick { 1 } else { 5 };
    let lab = Lab::new("be");
    let conf = dir.join("e2e.cfg");
    trafgen::write_config(&conf, &frame_v4(), Some((SRC_LOW_AT, 2)));
    let mut figures = Vec::new();
    for sampling in [1u32, 100] {
        let mut variants = vec![Variant::Nothing, Variant::Pmacctd];
        for mode in Mode::ALL {
            variants.extend([
                Variant::Noop(mode),
                Variant::Flowagent(mode),
                Variant::Both(mode),
            ]);
        }
        let mut runs: Vec<(Variant, Traffic)> =
            variants.iter().map(|v| (*v, Traffic::Linear)).collect();
        if sampling == 1 {
            runs.extend(
                [
                    Variant::Nothing,
                    Variant::Pmacctd,
                    Variant::Noop(Mode::Tc),
                    Variant::Flowagent(Mode::Tc),
                ]
                .map(|v| (v, Traffic::Ring)),
            );
        }
        // Repetitions outermost, so that drift in the machine's load spreads
        // over every variant instead of biasing the ones measured last.
        let mut results: Vec<((Variant, Traffic), Vec<RunResult>)> =
            runs.iter().map(|r| (*r, Vec::new())).collect();
        for _ in 0..reps {
            for ((variant, traffic), runs) in &mut results {
                runs.push(run_once(
                    &lab, dir, &conf, *variant, *traffic, sampling, packets,
                ));
            }
        }
        let cpu_of = |v: Variant, t: Traffic| -> Vec<f64> {
            results
                .iter()
                .find(|(x, _)| *x == (v, t))
                .unwrap()
                .1
                .iter()
                .map(|r| r.cpu_per_mpkt)
                .collect()
        };
        let cpu = |v: Variant| cpu_of(v, Traffic::Linear);
        let nothing = cpu(Variant::Nothing);
        let above = |v: Variant| paired(&cpu(v), &nothing);
        let conditions = format!(
            "veth pair, pmacctd (libpcap) on the same veth, 60 B UDP frames, 65536 flows, {packets} packets from trafgen on 1 CPU (one sendto(2) per frame: linear skbs), sampling 1:{sampling}, {reps} repetition(s), each against the baseline of its own repetition"
        );
        let rate = format!("1:{sampling}");
        figures.push(cpu_figure(
            format!("nothing attached, {rate}"),
            cpu(Variant::Nothing),
            None,
            &conditions,
        ));
        let pm = above(Variant::Pmacctd);
        let pm_m = median(&pm);
        figures.push(cpu_figure(
            format!("pmacctd above nothing, {rate}"),
            pm,
            None,
            &conditions,
        ));
        for mode in Mode::ALL {
            let label = mode.label();
            figures.push(cpu_figure(
                format!("{label}: flowagent above nothing, {rate}"),
                above(Variant::Flowagent(mode)),
                Some(pm_m),
                &conditions,
            ));
            figures.push(cpu_figure(
                format!("{label}: no-op program above nothing, {rate}"),
                above(Variant::Noop(mode)),
                None,
                &conditions,
            ));
            figures.push(cpu_figure(
                format!(
                    "{label}: flowagent above the no-op program (its program, drain and output), {rate}"
                ),
                paired(&cpu(Variant::Flowagent(mode)), &cpu(Variant::Noop(mode))),
                Some(pm_m),
                &conditions,
            ));
            figures.push(cpu_figure(
                format!("{label}: flowagent and pmacctd together above nothing, {rate}"),
                above(Variant::Both(mode)),
                None,
                &conditions,
            ));
        }
        if sampling == 1 {
            figures.extend(ring_figures(&cpu_of, packets, reps));
        }
        // Totals over both kinds of traffic: every run must be exact.
        let counted = |pick: &dyn Fn(&RunResult) -> Option<u64>, only: Option<Mode>| -> Vec<f64> {
            results
                .iter()
                .filter(|((v, _), _)| match (only, v) {
                    (None, _) => true,
                    (Some(m), Variant::Flowagent(x) | Variant::Both(x)) => m == *x,
                    _ => false,
                })
                .flat_map(|(_, runs)| runs.iter().filter_map(pick))
                .map(|t| t as f64 * sampling as f64 / packets as f64)
                .collect()
        };
        let mut totals: Vec<(String, Vec<f64>, bool)> = Mode::ALL
            .iter()
            .map(|m| {
                (
                    format!("{}: flowagent packets counted / sent, {rate}", m.label()),
                    counted(&|r| r.flowagent_total, Some(*m)),
                    true,
                )
            })
            .collect();
        totals.push((
            format!("pmacctd packets counted / sent, {rate}"),
            counted(&|r| r.pmacct_total, None),
            false,
        ));
        for (name, samples, ours) in totals {
            // Unsampled, flowagent must count every packet; sampled totals
            // are estimates, reported without a target.
            let exact = samples.iter().all(|c| *c == 1.0);
            figures.push(Figure {
                section: SECTION,
                name,
                value: median(&samples),
                unit: "ratio",
                baseline: None,
                target: (ours && sampling == 1).then(|| ("exactly 1".to_owned(), exact)),
                samples,
                conditions: format!("{conditions}; sampled counts multiplied by the rate"),
            });
        }
    }
    figures
}

/// The unsampled TC figures with frames from trafgen's TX ring, whose IP
/// header is in page fragments: the program copies the headers out with
/// `bpf_skb_load_bytes()` on every packet.
fn ring_figures(
    cpu_of: &dyn Fn(Variant, Traffic) -> Vec<f64>,
    packets: u64,
    reps: usize,
) -> Vec<Figure> {
    let cpu = |v: Variant| cpu_of(v, Traffic::Ring);
    let nothing = cpu(Variant::Nothing);
    let above = |v: Variant| paired(&cpu(v), &nothing);
    let conditions = format!(
        "veth pair, pmacctd (libpcap) on the same veth, 60 B UDP frames, 65536 flows, {packets} packets from trafgen's TX ring on 1 CPU (headers past Ethernet in page fragments), sampling 1:1, {reps} repetition(s), each against the baseline of its own repetition"
    );
    let pm = above(Variant::Pmacctd);
    let pm_m = median(&pm);
    let label = Mode::Tc.label();
    vec![
        cpu_figure(
            "TX-ring frames: nothing attached, 1:1".into(),
            cpu(Variant::Nothing),
            None,
            &conditions,
        ),
        cpu_figure(
            "TX-ring frames: pmacctd above nothing, 1:1".into(),
            pm,
            None,
            &conditions,
        ),
        cpu_figure(
            format!("TX-ring frames, {label}: flowagent above nothing, 1:1"),
            above(Variant::Flowagent(Mode::Tc)),
            Some(pm_m),
            &conditions,
        ),
        cpu_figure(
            format!("TX-ring frames, {label}: no-op program above nothing, 1:1"),
            above(Variant::Noop(Mode::Tc)),
            None,
            &conditions,
        ),
    ]
}
