//! `cargo xtask run -- <agent args>`: release build, then the agent with root
//! privileges (through sudo when not root already).

use std::process::Command;

use anyhow::{Context as _, bail};

/// Run options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Arguments for the agent (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Builds and runs the agent in the foreground.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bin = crate::build::run(&crate::build::Options { release: true })?;
    let mut cmd = if crate::util::is_root() {
        Command::new(&bin)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&bin);
        sudo
    };
    cmd.args(&opts.args);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !status.success() {
        bail!("flowagent exited with {status}");
    }
    Ok(())
}
