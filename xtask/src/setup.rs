//! `cargo xtask setup`: everything a fresh machine needs, installed only when
//! missing, so it is cheap to call before every build and test.
//!
//! - the eBPF toolchain with rust-src (the eBPF crate builds `core` itself):
//!   the dated nightly that `flowagent-ebpf/rust-toolchain.toml` pins;
//! - bpf-linker 0.13, linked against the libLLVM 22 that this nightly ships
//!   (no system LLVM needed): a prefix directory whose `lib/` links to the
//!   toolchain's libLLVM is passed as LLVM_PREFIX to `cargo install`;
//! - the Debian packages the end-to-end tests and the benchmark use.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{ebpf_toolchain, output, run as run_cmd, succeeds};

/// bpf-linker release known to work with the pinned nightly's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The libLLVM major version bpf-linker is built for; it must be the one the
/// pinned nightly ships (rustc's LLVM), or the linker cannot read its bitcode.
const LLVM_MAJOR: &str = "22";

/// Components of the eBPF toolchain: rust-src (build-std=core for the BPF
/// target) and clippy (the eBPF lint pass of `cargo xtask test`). The same
/// list as `components` in flowagent-ebpf/rust-toolchain.toml.
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// Debian packages the tests use: iproute2 (ip netns, veth), bpftool (checks
/// that nothing is left attached), util-linux (setpriv, unshare for the
/// privilege and BTF error tests), iputils-ping, and the real BGP peers the
/// BGP tests run: bird2, gobgpd and frr (its bgpd runs without systemd);
/// netsniff-ng for trafgen, whose TX ring sends frames the TC program sees
/// with their headers outside the skb's linear part.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "util-linux",
    "iputils-ping",
    "bird2",
    "gobgpd",
    "frr",
    "netsniff-ng",
];

/// Installs whatever is missing.
pub fn run() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain()?;
    ensure_toolchain(&toolchain)?;
    ensure_bpf_linker(&toolchain)?;
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// True when everything `build` needs is present (no network access).
pub fn ready() -> bool {
    ebpf_toolchain().is_ok_and(|t| toolchain_complete(&t) && bpf_linker_works(&t))
}

/// Whether `toolchain` is installed with every one of [`EBPF_COMPONENTS`].
fn toolchain_complete(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .is_ok_and(|o| {
            let installed = String::from_utf8_lossy(&o.stdout);
            o.status.success()
                && EBPF_COMPONENTS.iter().all(|c| {
                    installed
                        .lines()
                        .any(|l| l.starts_with(&format!("{c}-")) || l == *c)
                })
        })
}

fn ensure_toolchain(toolchain: &str) -> anyhow::Result<()> {
    if toolchain_complete(toolchain) {
        return Ok(());
    }
    // A dated nightly never changes once installed, so this runs once per
    // machine; `rustup toolchain install nightly` would instead move to
    // whatever nightly is newest, with whatever LLVM it ships.
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
    for component in EBPF_COMPONENTS {
        install.args(["--component", component]);
    }
    run_cmd(&mut install)
        .with_context(|| format!("installing the {toolchain} toolchain with {EBPF_COMPONENTS:?}"))
}

fn bpf_linker_works(toolchain: &str) -> bool {
    // aya-build runs bpf-linker through `rustup run TOOLCHAIN`, which puts
    // the toolchain's libLLVM on the library path; check it the same way.
    Command::new("rustup")
        .args(["run", toolchain, "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn ensure_bpf_linker(toolchain: &str) -> anyhow::Result<()> {
    if bpf_linker_works(toolchain) {
        return Ok(());
    }
    let sysroot = PathBuf::from(
        output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let libdir = sysroot.join("lib");
    let llvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{LLVM_MAJOR}.")))
        .with_context(|| {
            format!(
                "{toolchain} at {} ships no libLLVM.so.{LLVM_MAJOR}.*; bpf-linker is built \
                 for LLVM {LLVM_MAJOR}: change LLVM_MAJOR in xtask/src/setup.rs with the \
                 channel in flowagent-ebpf/rust-toolchain.toml",
                sysroot.display()
            )
        })?;
    // A stable prefix (not /tmp): bpf-linker keeps it as its RUNPATH.
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join(format!("flowagent-llvm{LLVM_MAJOR}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run_cmd(
        Command::new("rustup")
            .args([
                "run",
                toolchain,
                "cargo",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| format!("building bpf-linker against {toolchain}'s libLLVM"))?;
    if !bpf_linker_works(toolchain) {
        bail!("bpf-linker was installed but `rustup run {toolchain} bpf-linker --version` fails");
    }
    Ok(())
}

fn debian_package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages in `packages` that are missing.
pub fn ensure_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("missing Debian packages {missing:?} and no apt-get to install them");
    }
    let sudo: &[&str] = if crate::util::is_root() {
        &[]
    } else {
        &["sudo"]
    };
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_cmd(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run_cmd(&mut install).with_context(|| format!("installing {missing:?}"))
}

#[cfg(test)]
mod tests {
    use super::EBPF_COMPONENTS;

    /// The components setup installs are the ones rust-toolchain.toml names,
    /// so that the two lists cannot drift apart.
    #[test]
    fn components_match_the_toolchain_file() {
        let path = crate::util::workspace_root().join("flowagent-ebpf/rust-toolchain.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let quoted: Vec<String> = EBPF_COMPONENTS.iter().map(|c| format!("\"{c}\"")).collect();
        let line = format!("components = [{}]", quoted.join(", "));
        assert!(text.lines().any(|l| l.trim() == line), "no `{line}` line");
    }
}
