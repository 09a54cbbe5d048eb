//! `cargo xtask build`: the agent in debug or release; its build script
//! builds the eBPF programs.

use std::path::PathBuf;

use crate::util::{cargo, run as run_cmd, workspace_root};

/// Build options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Build in release mode.
    #[arg(long)]
    pub release: bool,
}

/// Builds the agent and returns the path of the binary.
pub fn run(opts: &Options) -> anyhow::Result<PathBuf> {
    if !crate::setup::ready() {
        crate::setup::run()?;
    }
    let mut cmd = cargo();
    cmd.args(["build", "--package", "flowagent"]);
    if opts.release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    Ok(target
        .join(if opts.release { "release" } else { "debug" })
        .join("flowagent"))
}
