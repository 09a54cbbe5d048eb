//! `cargo xtask bench [--quick] [--only SECTION]`: release build of the agent and of the
//! benchmark runner (tests/src/bench), then the runner as root. It writes
//! BENCHMARKS.md and bench-results.json at the workspace root (under
//! target/bench-SECTION with `--only`).

use std::process::Command;

use crate::util::{cargo, is_root, run as run_cmd, workspace_root};

/// Debian packages the benchmark drives: trafgen (netsniff-ng) for traffic,
/// pmacct (pmacctd) as the reference agent.
const BENCH_PACKAGES: &[&str] = &["netsniff-ng", "pmacct"];

/// Bench options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// A short run (under 3 minutes) for CI: fewer packets and repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Run one section only: kernel, test-run, drain, flood, grpc, rib or e2e.
    #[arg(long, value_name = "SECTION")]
    pub only: Option<String>,
}

/// Builds and runs the benchmark.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !crate::setup::ready() {
        crate::setup::run()?;
    }
    crate::setup::ensure_debian_packages(crate::setup::DEBIAN_PACKAGES)?;
    crate::setup::ensure_debian_packages(BENCH_PACKAGES)?;
    let agent = crate::build::run(&crate::build::Options { release: true })?;
    run_cmd(cargo().args([
        "build",
        "--release",
        "--package",
        "flowagent-tests",
        "--bin",
        "flowagent-bench",
    ]))?;
    let runner = agent.with_file_name("flowagent-bench");
    let mut cmd = if is_root() {
        Command::new(&runner)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&runner);
        sudo
    };
    // A one-section run writes under target/ so it never replaces the
    // committed results of a full run.
    let out = match &opts.only {
        Some(section) => format!("target/bench-{section}"),
        None => ".".to_owned(),
    };
    cmd.current_dir(workspace_root())
        .env("FLOWAGENT_BIN", &agent)
        .args(["--out", &out]);
    if opts.quick {
        cmd.arg("--quick");
    }
    if let Some(section) = &opts.only {
        cmd.args(["--only", section]);
    }
    run_cmd(&mut cmd)
}
