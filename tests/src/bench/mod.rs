//! `cargo xtask bench`: cost, scale and accuracy, each against a baseline
//! measured in the same run. Writes BENCHMARKS.md and bench-results.json.

pub mod cpu;
pub mod drain;
pub mod e2e;
pub mod fanout;
pub mod flood;
pub mod grpc;
pub mod kernel;
pub mod lpm;
pub mod report;
pub mod rib;

use std::path::Path;

use crate::agent::TempDir;

/// A seeded xorshift64* generator: the same synthetic tables every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next pseudo-random value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The sections, in the order they run.
pub const SECTIONS: &[&str] = &["kernel", "test-run", "drain", "flood", "grpc", "rib", "e2e"];

/// Not a section of its own: `--only lpm` runs just the longest-prefix
/// figures of the "rib" section (a minute, no BIRD, no root), for work on
/// the lookup code.
pub const LPM_ONLY: &str = "lpm";

/// Runs every section (or only the one named, which must be one of
/// [`SECTIONS`]) and writes the two result files into `out_dir`.
pub fn run(out_dir: &Path, quick: bool, only: Option<&str>) {
    let want = |section: &str| only.is_none_or(|o| o == section);
    let machine = report::Machine::read(quick);
    let scratch = TempDir::new("bench");
    let mut figures = Vec::new();
    if want("kernel") {
        eprintln!("bench: in-kernel cost, live traffic");
        figures.extend(kernel::live(&scratch.0, quick));
    }
    if want("test-run") {
        eprintln!("bench: in-kernel cost, BPF_PROG_TEST_RUN");
        figures.extend(kernel::test_run(quick));
    }
    if want("drain") {
        eprintln!("bench: drain");
        figures.extend(drain::run(quick));
    }
    if want("flood") {
        eprintln!("bench: memory under a flow flood");
        figures.extend(flood::run(&scratch.0, quick));
    }
    if want("grpc") {
        eprintln!("bench: gRPC export");
        figures.extend(grpc::run(quick));
        figures.extend(fanout::run(quick));
    }
    if want("rib") {
        eprintln!("bench: RIB");
        figures.extend(rib::run(&scratch.0, quick));
    }
    if want("rib") || only == Some(LPM_ONLY) {
        eprintln!("bench: longest-prefix match");
        figures.extend(lpm::run(quick));
    }
    if want("e2e") {
        eprintln!("bench: end to end against pmacctd");
        figures.extend(e2e::run(&scratch.0, quick));
    }
    std::fs::create_dir_all(out_dir).expect("create the output directory");
    let json = report::to_json(&machine, &figures);
    std::fs::write(
        out_dir.join("bench-results.json"),
        serde_json::to_string_pretty(&json).unwrap() + "\n",
    )
    .expect("write bench-results.json");
    let md = report::to_markdown(&machine, &figures);
    std::fs::write(out_dir.join("BENCHMARKS.md"), &md).expect("write BENCHMARKS.md");
    print!("{md}");
}
