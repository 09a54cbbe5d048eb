//! Checks made before anything is loaded, so that the usual reasons a load
//! fails come out as one clear sentence instead of a verifier or errno dump.

use std::path::Path;

use super::Error;

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where the kernel publishes its own BTF (CONFIG_DEBUG_INFO_BTF).
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Fails unless the process may load and attach the programs and the kernel
/// has BTF.
pub fn check() -> Result<(), Error> {
    check_capabilities()?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Error::NoBtf);
    }
    Ok(())
}

fn check_capabilities() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(Error::Proc)?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN implies CAP_BPF and CAP_PERFMON (kernels before 5.8 know only it).
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let perfmon = has(CAP_PERFMON) || has(CAP_SYS_ADMIN);
    let net_admin = has(CAP_NET_ADMIN);
    if bpf && perfmon && net_admin {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (!bpf).then_some("CAP_BPF"),
        (!net_admin).then_some("CAP_NET_ADMIN"),
        (!perfmon).then_some("CAP_PERFMON"),
    ]
    .into_iter()
    .flatten()
    .collect();
    Err(Error::Privileges(missing.join(", ")))
}
