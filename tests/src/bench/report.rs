//! Benchmark figures and the two files they are written to:
//! BENCHMARKS.md (for people) and bench-results.json (for machines).

use std::fmt::Write as _;

use serde_json::{Value, json};

/// One measured figure, with what it is compared against.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Section, e.g. "in-kernel cost".
    pub section: &'static str,
    /// What was measured.
    pub name: String,
    /// The value (median of the repetitions).
    pub value: f64,
    /// Unit of `value`.
    pub unit: &'static str,
    /// The baseline's name and value, measured in the same run.
    pub baseline: Option<(String, f64)>,
    /// The target, as text, and whether `value` meets it.
    pub target: Option<(String, bool)>,
    /// Every repetition's value (spread).
    pub samples: Vec<f64>,
    /// Conditions: packet sizes, flow counts, modes.
    pub conditions: String,
}

impl Figure {
    /// value / baseline, when there is a non-zero baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b != 0.0)
            .map(|(_, b)| self.value / b)
    }
}

/// Median of `v` (not empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Facts about the machine the run was taken on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// uname -r.
    pub kernel: String,
    /// /proc/cpuinfo model name.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// net.core.bpf_jit_enable.
    pub jit: String,
    /// Quick (CI smoke) or full run.
    pub quick: bool,
}

impl Machine {
    /// Reads the facts.
    pub fn read(quick: bool) -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let cpuinfo = read("/proc/cpuinfo");
        Machine {
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            jit: read("/proc/sys/net/core/bpf_jit_enable"),
            quick,
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The JSON document.
pub fn to_json(machine: &Machine, figures: &[Figure]) -> Value {
    json!({
        "machine": {
            "kernel": machine.kernel, "cpu": machine.cpu, "cpus": machine.cpus,
            "bpf_jit_enable": machine.jit, "quick": machine.quick,
        },
        "figures": figures.iter().map(|f| json!({
            "section": f.section,
            "name": f.name,
            "value": f.value,
            "unit": f.unit,
            "baseline": f.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": v})),
            "ratio": f.ratio(),
            "target": f.target.as_ref().map(|(t, met)| json!({"target": t, "met": met})),
            "samples": f.samples,
            "min": f.samples.iter().copied().fold(f64::INFINITY, f64::min),
            "max": f.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "conditions": f.conditions,
        })).collect::<Vec<_>>(),
    })
}

/// The Markdown document.
pub fn to_markdown(machine: &Machine, figures: &[Figure]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# flowagent benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}`. Machine: Linux {}, {} x {}, bpf_jit_enable={}. \
         Values are medians of the repetitions, with min-max beside them; every ratio \
         is against a baseline measured in the same run.\n",
        if machine.quick { " --quick" } else { "" },
        machine.kernel,
        machine.cpus,
        machine.cpu,
        machine.jit
    );
    let mut section = "";
    for f in figures {
        if f.section != section {
            section = f.section;
            let _ = writeln!(md, "\n## {section}\n");
            let _ = writeln!(
                md,
                "| figure | value | min-max | baseline | ratio | target | conditions |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        }
        let lo = f.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = f.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            md,
            "| {} | {} {} | {}-{} | {} | {} | {} | {} |",
            f.name,
            fmt(f.value),
            f.unit,
            fmt(lo),
            fmt(hi),
            f.baseline
                .as_ref()
                .map(|(n, v)| format!("{n}: {}", fmt(*v)))
                .unwrap_or_default(),
            f.ratio().map(|r| format!("{r:.3}")).unwrap_or_default(),
            f.target
                .as_ref()
                .map(|(t, met)| format!("{t} {}", if *met { "(met)" } else { "(**missed**)" }))
                .unwrap_or_default(),
            f.conditions
        );
    }
    md
}
