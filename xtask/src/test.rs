//! `cargo xtask test`: what CI runs.
//!
//! 1. `cargo fmt --check`, `cargo clippy -D warnings` on the userspace crates
//!    and, with nightly for the BPF target, on the eBPF crate;
//! 2. unit tests of the workspace (no privileges needed);
//! 3. the end-to-end tests in tests/, as root: they create network
//!    namespaces and veth pairs, run the built agent, send real frames and
//!    assert exact counts. They find the agent through FLOWAGENT_BIN.

use std::process::Command;

use crate::util::{cargo, is_root, run as run_cmd};

/// Test options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the format and lint checks.
    #[arg(long)]
    pub no_lint: bool,
    /// Only run end-to-end tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

/// Runs every check and test; fails on the first failure.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !crate::setup::ready() {
        crate::setup::run()?;
    }
    crate::setup::ensure_debian_packages(crate::setup::DEBIAN_PACKAGES)?;
    if !opts.no_lint {
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // The eBPF crate only builds for the BPF target, with its nightly.
        let toolchain = crate::util::ebpf_toolchain()?;
        run_cmd(
            Command::new("rustup")
                .current_dir(crate::util::workspace_root())
                .args([
                    "run",
                    &toolchain,
                    "cargo",
                    "clippy",
                    "--package",
                    "flowagent-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/ebpf-clippy",
                    "--",
                    "-D",
                    "warnings",
                ]),
        )?;
    }
    // The BGP tests must not skip for want of a peer here: setup installed them.
    run_cmd(cargo().env("FLOWAGENT_REQUIRE_PEERS", "1").args([
        "test",
        "--package",
        "flowagent",
        "--package",
        "flowagent-common",
        "--package",
        "xtask",
    ]))?;
    let bin = crate::build::run(&crate::build::Options { release: false })?;

    // Build the end-to-end tests unprivileged, then run them as root.
    run_cmd(cargo().args(["test", "--package", "flowagent-tests", "--no-run"]))?;
    let mut cmd = if is_root() {
        cargo()
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-E", "--preserve-env=PATH"])
            .arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        sudo.current_dir(crate::util::workspace_root());
        sudo
    };
    cmd.args(["test", "--package", "flowagent-tests", "--"]);
    if let Some(filter) = &opts.filter {
        cmd.arg(filter);
    }
    cmd.env("FLOWAGENT_BIN", &bin);
    run_cmd(&mut cmd)
}
