//! Running commands with clear errors.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `cmd`, failing with its command line if it does not exit 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Captured stdout of `cmd`, failing if it does not exit 0.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The toolchain the eBPF crate builds with: the `channel` of
/// `flowagent-ebpf/rust-toolchain.toml` (flowagent/build.rs reads it the same
/// way, for aya-build).
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    let path = workspace_root().join("flowagent-ebpf/rust-toolchain.toml");
    crate::toolchain::read_channel(&path).map_err(anyhow::Error::msg)
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ebpf_toolchain_is_a_dated_nightly() {
        let channel = ebpf_toolchain().unwrap();
        let date = channel.strip_prefix("nightly-").unwrap();
        assert_eq!(date.len(), "2026-05-20".len(), "{channel}");
        assert!(
            date.bytes().all(|b| b.is_ascii_digit() || b == b'-'),
            "{channel}"
        );
    }
}
