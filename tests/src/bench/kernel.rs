//! In-kernel cost per packet, two ways:
//!
//! 1. Live traffic: trafgen sends 60-byte frames through a veth pair into a
//!    native XDP program, with `kernel.bpf_stats_enabled=1`; the kernel's
//!    run_time_ns / run_cnt of the program gives ns per packet. The same is
//!    measured for a no-op XDP program (which carries the same ~65 ns stats
//!    overhead) and subtracted. The end-to-end traffic (65536 random flows)
//!    is also measured in the TC program against a TC no-op, with linear
//!    skbs as the end-to-end section sends them, so that section's TC
//!    figures can be read against the program's own share.
//! 2. BPF_PROG_TEST_RUN: the kernel runs the program N times on one frame
//!    and reports the average; again against the no-op program.
//!
//! For A/B work on the programs, `FLOWAGENT_BENCH_OBJECT=path` makes both
//! figures load that eBPF object instead of the one built into the agent
//! (same sampling threshold and map sizes), so two builds of flowagent-ebpf
//! can be compared back to back with one runner binary. The full bench run
//! never sets it.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{
        ProgramInfo, SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode, tc::TcAttachType,
    },
};
use flowagent::capture::loader::{Sizes, configure, load_object, program, write_lines};
use flowagent_common::names;

use super::report::{Figure, median};
use crate::{
    lab::{GEN_MAC, Lab, OBS_MAC},
    netns::in_netns,
    packet::{self, ETH_P_IP, ETH_P_IPV6, V4Opts, mac, v4, v6},
    trafgen,
};

const SECTION: &str = "in-kernel cost per packet";

/// Offset of the IPv4 source address in an untagged frame.
const V4_SRC_AT: usize = 14 + 12;

/// A 60-byte IPv4 UDP frame (46 bytes of IP).
pub fn frame_v4() -> Vec<u8> {
    packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.50.0.1"),
            v4("10.50.0.2"),
            17,
            &V4Opts::default(),
            &packet::udp(1000, 2000, &[0; 18]),
        ),
    )
}

/// A 64-byte IPv6 UDP frame.
pub fn frame_v6() -> Vec<u8> {
    packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IPV6,
        &packet::ipv6(
            v6("2001:db8:50::1"),
            v6("2001:db8:50::2"),
            17,
            0,
            &packet::udp(1000, 2000, &[0; 2]),
        ),
    )
}

/// The agent's eBPF object with its load-time settings, or the object named
/// by `FLOWAGENT_BENCH_OBJECT` with the same settings (A/B runs only).
pub fn load(sampling: u32, max_flows: u32) -> Ebpf {
    let sizes = Sizes::new(max_flows, None).expect("possible CPUs");
    let Some(path) = std::env::var_os("FLOWAGENT_BENCH_OBJECT") else {
        return load_object(sampling, &sizes).expect("load the eBPF object");
    };
    let mut ebpf = configure(&sizes)
        .load_file(&path)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.to_string_lossy()));
    write_lines(&mut ebpf, sampling, &sizes).expect("write the CPUs' lines");
    ebpf
}

/// Loads the object and attaches `prog` in native XDP mode to `iface` in `ns`.
pub fn attach(ns: &str, iface: &str, prog: &'static str, sampling: u32, max_flows: u32) -> Ebpf {
    attach_xdp(ns, iface, prog, sampling, max_flows, XdpMode::Driver)
}

/// Loads the object and attaches the XDP program `prog` to `iface` in `ns`
/// in `mode` (driver or generic/skb).
pub fn attach_xdp(
    ns: &str,
    iface: &str,
    prog: &'static str,
    sampling: u32,
    max_flows: u32,
    mode: XdpMode,
) -> Ebpf {
    let iface = iface.to_owned();
    in_netns(ns, move || {
        let mut ebpf = load(sampling, max_flows);
        let xdp = program::<Xdp>(&mut ebpf, prog).expect("program");
        xdp.load().expect("verifier");
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        xdp.attach_to_if_index(index, mode).expect("attach XDP");
        ebpf
    })
}

/// Loads the object and attaches the TC classifier `prog` to `iface`'s
/// ingress in `ns` (tcx on Linux 6.6+, as the agent does).
pub fn attach_tc(ns: &str, iface: &str, prog: &'static str, sampling: u32, max_flows: u32) -> Ebpf {
    let iface = iface.to_owned();
    in_netns(ns, move || {
        let mut ebpf = load(sampling, max_flows);
        let tc = program::<SchedClassifier>(&mut ebpf, prog).expect("program");
        tc.load().expect("verifier");
        tc.attach(&iface, TcAttachType::Ingress)
            .expect("attach TC ingress");
        ebpf
    })
}

fn stats(ebpf: &Ebpf, prog: &str) -> (u64, u64) {
    let info: ProgramInfo = ebpf.program(prog).unwrap().info().unwrap();
    (info.run_time().as_nanos() as u64, info.run_count())
}

/// Turns `kernel.bpf_stats_enabled` on and restores it on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> BpfStats {
        let old = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into());
        std::fs::write(Self::PATH, "1").expect("enable bpf stats");
        BpfStats(old.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// Which flows a scenario's packets belong to.
#[derive(Clone, Copy, PartialEq)]
enum Flows {
    /// Every packet of one flow.
    One,
    /// 65536 flows (the low 16 bits of the IPv4 source random per packet),
    /// all seen once before the measured send: each packet updates an
    /// existing flow in a random cache line, the end-to-end traffic.
    Random65536,
    /// A random IPv4 source per packet: nearly every packet a new flow.
    NewPerPacket,
}

/// Where a scenario's program runs, and how its frames are sent.
#[derive(Clone, Copy, PartialEq)]
enum Hook {
    /// Native XDP; frames from trafgen's TX ring (veth copies every frame
    /// into a page of its own before XDP either way).
    Xdp,
    /// tcx ingress; one `sendto(2)` per frame, so the program reads linear
    /// skbs, as from a NIC driver and as the end-to-end section sends.
    Tc,
}

impl Hook {
    /// The no-op program every scenario on this hook is measured against.
    fn noop(self) -> &'static str {
        match self {
            Hook::Xdp => names::PROG_NOOP,
            Hook::Tc => names::PROG_TC_NOOP,
        }
    }

    /// Loads the object and attaches `prog` here, on the observer's veth.
    fn attach(self, ns: &str, prog: &'static str, sampling: u32, max_flows: u32) -> Ebpf {
        match self {
            Hook::Xdp => attach(ns, "gb", prog, sampling, max_flows),
            Hook::Tc => attach_tc(ns, "gb", prog, sampling, max_flows),
        }
    }

    /// Sends `packets` frames from the generator's veth in `ns`.
    fn send(self, ns: &str, conf: &Path, packets: u64) {
        match self {
            Hook::Xdp => trafgen::send(ns, "ga", conf, packets),
            Hook::Tc => trafgen::send_linear(ns, "ga", conf, packets),
        };
    }

    /// How the figures' conditions describe this hook.
    fn conditions(self) -> &'static str {
        match self {
            Hook::Xdp => "native XDP on veth, frames from trafgen's TX ring",
            Hook::Tc => "tcx ingress on veth, one sendto(2) per frame (linear skbs)",
        }
    }
}

struct Scenario {
    name: &'static str,
    hook: Hook,
    prog: &'static str,
    v6: bool,
    flows: Flows,
    sampling: u32,
    max_flows: u32,
    target_ns: Option<f64>,
}

/// Live-traffic figures.
pub fn live(dir: &Path, quick: bool) -> Vec<Figure> {
    let packets: u64 = if quick { 200_000 } else { 1_000_000 };
    let reps = if quick { 1 } else { 5 };
    let big_map = (packets as u32 + 1).next_power_of_two();
    let scenarios = [
        Scenario {
            name: "no-op XDP program",
            hook: Hook::Xdp,
            prog: names::PROG_NOOP,
            v6: false,
            flows: Flows::One,
            sampling: 1,
            max_flows: 1024,
            target_ns: None,
        },
        Scenario {
            name: "existing IPv4 flow",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::One,
            sampling: 1,
            max_flows: 1024,
            target_ns: Some(50.0),
        },
        Scenario {
            name: "existing IPv6 flow",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: true,
            flows: Flows::One,
            sampling: 1,
            max_flows: 1024,
            target_ns: Some(70.0),
        },
        Scenario {
            name: "65536 existing IPv4 flows, random per packet",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::Random65536,
            sampling: 1,
            // As the end-to-end section runs the agent: a cache of 131072
            // entries per CPU (half full), maps of 131072.
            max_flows: 131_072,
            target_ns: None,
        },
        Scenario {
            name: "no-op TC program",
            hook: Hook::Tc,
            prog: names::PROG_TC_NOOP,
            v6: false,
            flows: Flows::One,
            sampling: 1,
            max_flows: 1024,
            target_ns: None,
        },
        Scenario {
            name: "65536 existing IPv4 flows, random per packet, TC",
            hook: Hook::Tc,
            prog: names::PROG_TC_INGRESS,
            v6: false,
            flows: Flows::Random65536,
            sampling: 1,
            max_flows: 131_072,
            target_ns: None,
        },
        Scenario {
            name: "new IPv4 flow per packet",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::NewPerPacket,
            sampling: 1,
            max_flows: big_map,
            target_ns: None,
        },
        Scenario {
            name: "map full (1024 entries), new flows",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::NewPerPacket,
            sampling: 1,
            max_flows: 1024,
            target_ns: None,
        },
        Scenario {
            name: "existing IPv4 flow, sampling 1:100",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::One,
            sampling: 100,
            max_flows: 1024,
            target_ns: Some(10.0),
        },
        Scenario {
            name: "existing IPv4 flow, sampling 1:1000",
            hook: Hook::Xdp,
            prog: names::PROG_XDP,
            v6: false,
            flows: Flows::One,
            sampling: 1000,
            max_flows: 1024,
            target_ns: None,
        },
    ];
    let lab = Lab::new("bk");
    let _stats = BpfStats::enable();
    let conf = dir.join("trafgen.cfg");
    // Rounds outermost: every round measures the no-op and each scenario
    // back to back, and each scenario is compared with the no-op of its own
    // round, so drift in the machine's state (its load, the host's) between
    // rounds does not bias one figure against another.
    let mut raw = vec![Vec::new(); scenarios.len()];
    for _ in 0..reps {
        for (s, samples) in scenarios.iter().zip(&mut raw) {
            let frame = if s.v6 { frame_v6() } else { frame_v4() };
            let random = match s.flows {
                Flows::One => None,
                Flows::Random65536 => Some((V4_SRC_AT + 2, 2)),
                Flows::NewPerPacket => Some((V4_SRC_AT, 4)),
            };
            trafgen::write_config(&conf, &frame, random);
            let ebpf = s
                .hook
                .attach(lab.obs.name(), s.prog, s.sampling, s.max_flows);
            if s.flows == Flows::Random65536 {
                // Every flow in (nothing drains: the bench holds the maps).
                s.hook.send(lab.gen_ns.name(), &conf, packets);
            }
            let (t0, n0) = stats(&ebpf, s.prog);
            s.hook.send(lab.gen_ns.name(), &conf, packets);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let (t1, n1) = stats(&ebpf, s.prog);
            assert!(
                n1 - n0 >= packets,
                "{}: the program ran {} times for {packets} packets",
                s.name,
                n1 - n0
            );
            samples.push((t1 - t0) as f64 / (n1 - n0) as f64);
            drop(ebpf);
        }
    }
    let conditions = |s: &Scenario| {
        format!(
            "{}, {} B frames, {packets} packets from trafgen on 1 CPU, {}{}; {reps} rounds, each against the no-op of its round",
            s.hook.conditions(),
            if s.v6 { 64 } else { 60 },
            match s.flows {
                Flows::One => "one flow",
                Flows::Random65536 =>
                    "65536 flows (low 16 bits of the IPv4 source random per packet), every flow sent once before the measured packets",
                Flows::NewPerPacket => "random IPv4 source per packet",
            },
            if s.max_flows == 1024 {
                String::new()
            } else {
                format!(", {} map entries", s.max_flows)
            }
        )
    };
    let mut figures = Vec::new();
    for (s, samples) in scenarios.iter().zip(&raw) {
        if s.prog == s.hook.noop() {
            figures.push(Figure {
                section: SECTION,
                name: format!("{} (live, with bpf_stats)", s.name),
                value: median(samples),
                unit: "ns/packet",
                baseline: None,
                target: None,
                samples: samples.clone(),
                conditions: conditions(s),
            });
            continue;
        }
        let noop = scenarios
            .iter()
            .position(|b| b.prog == s.hook.noop())
            .map(|at| &raw[at])
            .expect("every hook has its no-op scenario");
        let above: Vec<f64> = samples.iter().zip(noop).map(|(v, n)| v - n).collect();
        let value = median(&above);
        figures.push(Figure {
            section: SECTION,
            name: format!("{} (live), above no-op", s.name),
            value,
            unit: "ns/packet",
            baseline: Some(("no-op program".into(), median(noop))),
            target: s.target_ns.map(|t| (format!("<= {t} ns"), value <= t)),
            samples: above,
            conditions: conditions(s),
        });
    }
    figures
}

/// BPF_PROG_TEST_RUN figures.
pub fn test_run(quick: bool) -> Vec<Figure> {
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let reps = if quick { 1 } else { 3 };
    let run = |prog: &'static str, frame: &[u8], sampling: u32| -> Vec<f64> {
        (0..reps)
            .map(|_| {
                let mut ebpf = load(sampling, 1024);
                let xdp = program::<Xdp>(&mut ebpf, prog).expect("program");
                xdp.load().expect("verifier");
                let opts = TestRunOptions {
                    data_in: Some(frame),
                    repeat,
                    ..TestRunOptions::new()
                };
                let result = xdp.test_run(opts).expect("BPF_PROG_TEST_RUN");
                assert_eq!(result.return_value, 2, "XDP_PASS");
                result.duration.as_nanos() as f64
            })
            .collect()
    };
    let noop = run(names::PROG_NOOP, &frame_v4(), 1);
    let noop_m = median(&noop);
    let mut figures = vec![Figure {
        section: SECTION,
        name: "no-op XDP program (BPF_PROG_TEST_RUN)".into(),
        value: noop_m,
        unit: "ns/run",
        baseline: None,
        target: None,
        samples: noop,
        conditions: format!("{repeat} runs on one 60 B frame"),
    }];
    for (name, frame, sampling, target) in [
        ("existing IPv4 flow", frame_v4(), 1, 50.0),
        ("existing IPv6 flow", frame_v6(), 1, 70.0),
        ("existing IPv4 flow, sampling 1:100", frame_v4(), 100, 10.0),
    ] {
        let above: Vec<f64> = run(names::PROG_XDP, &frame, sampling)
            .iter()
            .map(|v| v - noop_m)
            .collect();
        let value = median(&above);
        figures.push(Figure {
            section: SECTION,
            name: format!("{name} (BPF_PROG_TEST_RUN), above no-op"),
            value,
            unit: "ns/run",
            baseline: Some(("no-op program".into(), noop_m)),
            target: Some((format!("<= {target} ns"), value <= target)),
            samples: above,
            conditions: format!("{repeat} runs on one {} B frame", frame.len()),
        });
    }
    figures
}
