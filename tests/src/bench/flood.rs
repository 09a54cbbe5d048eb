//! Memory under a flow flood: random source addresses, so every packet is a
//! new flow, 1M packets per interval. The agent's RSS must stay flat (the
//! kernel maps are preallocated, the drain handles at most --max-flows
//! entries per interval) and every packet must be in a flow or counted as
//! overflow.

use std::{path::Path, time::Duration};

use super::{kernel::frame_v4, report::Figure};
use crate::{agent::Agent, lab::Lab, trafgen};

const SECTION: &str = "memory under a flow flood";

/// Offset of the IPv4 source address in the frame.
const SRC_AT: usize = 14 + 12;

/// The figures.
pub fn run(dir: &Path, quick: bool) -> Vec<Figure> {
    let intervals: u64 = if quick { 2 } else { 5 };
    let per_interval: u64 = if quick { 300_000 } else { 1_000_000 };
    let max_flows = 65_536;
    let lab = Lab::new("bf");
    let conf = dir.join("flood.cfg");
    trafgen::write_config(&conf, &frame_v4(), Some((SRC_AT, 4)));
    let max = max_flows.to_string();
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--interval", "2", "--max-flows", &max],
    );
    let rss_start = agent.rss_kib();
    let maps_kib = agent.bpf_map_kib();
    let (mut rss, mut own) = (Vec::new(), Vec::new());
    for _ in 0..intervals {
        trafgen::send(lab.gen_ns.name(), "ga", &conf, per_interval);
        let seen = agent.read().counters.len();
        agent.wait_intervals(seen + 1, Duration::from_secs(30));
        let (all, mapped) = (agent.rss_kib(), agent.bpf_mapped_rss_kib());
        rss.push(all as f64 / 1024.0);
        own.push(all.saturating_sub(mapped) as f64 / 1024.0);
    }
    let out = agent.stop();
    let sent = intervals * per_interval;
    let counted = out.sum("packets", |_| true) + out.counter("overflow_packets");
    let conditions = format!(
        "{intervals} x {per_interval} packets with random IPv4 sources (a new flow each), --max-flows {max_flows}, --interval 2, native XDP on veth"
    );
    let peak = rss.iter().copied().fold(0.0, f64::max);
    let own_peak = own.iter().copied().fold(0.0, f64::max);
    let cache = flowagent::capture::loader::Sizes::new(max_flows, None)
        .expect("possible CPUs")
        .cache_entries();
    vec![
        Figure {
            section: SECTION,
            name: "agent RSS, peak during the flood".into(),
            value: peak,
            unit: "MiB",
            baseline: Some(("RSS before the flood".into(), rss_start as f64 / 1024.0)),
            target: None,
            samples: rss,
            conditions: conditions.clone(),
        },
        Figure {
            section: SECTION,
            name: "agent RSS without the mapped flow caches, peak".into(),
            value: own_peak,
            unit: "MiB",
            baseline: None,
            target: None,
            samples: own,
            conditions: format!(
                "{conditions}; RSS less the resident part of the BPF maps mapped into the agent (anon_inode:bpf-map in /proc/PID/smaps), which is kernel memory counted below"
            ),
        },
        Figure {
            section: SECTION,
            name: "kernel memory of the agent's BPF maps".into(),
            value: maps_kib as f64 / 1024.0,
            unit: "MiB",
            baseline: None,
            target: None,
            samples: vec![maps_kib as f64 / 1024.0],
            conditions: format!(
                "memlock of every map the agent holds (/proc/PID/fdinfo): flow maps of {max_flows} entries and flow caches of {cache} entries per CPU (the defaults for --max-flows {max_flows} on this machine), both families, both slots"
            ),
        },
        Figure {
            section: SECTION,
            name: "packets in flows + overflow / sent".into(),
            value: counted as f64 / sent as f64,
            unit: "ratio",
            baseline: None,
            target: Some(("exactly 1".into(), counted == sent)),
            samples: vec![counted as f64 / sent as f64],
            conditions: format!(
                "{conditions}; {} packets in {} flow records, {} overflow",
                out.sum("packets", |_| true),
                out.flows.len(),
                out.counter("overflow_packets")
            ),
        },
    ]
}
