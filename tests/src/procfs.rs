//! What the tests and the benchmark read from /proc about processes.

/// Resident set size of process `pid` in KiB (VmRSS); 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Kernel memory charged to the BPF maps process `pid` holds, in KiB: the
/// `memlock` of each distinct map among its file descriptors
/// (/proc/`pid`/fdinfo, whose map entries carry `map_id` and `memlock`).
/// 0 when the process is gone.
pub fn bpf_map_kib(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let mut maps = std::collections::BTreeMap::new();
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, bytes);
        }
    }
    maps.values().sum::<u64>() / 1024
}

/// The part of process `pid`'s resident set that is BPF map memory mapped
/// into it (shared with the kernel, not memory of its own), in KiB: the
/// `Rss` of its `anon_inode:bpf-map` mappings in /proc/`pid`/smaps.
pub fn bpf_mapped_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if in_map {
                kib += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|first| !first.ends_with(':'))
        {
            // A mapping's header ("start-end perms offset dev inode name");
            // the lines of its fields start with "Name:".
            in_map = line.contains("bpf-map");
        }
    }
    kib
}

/// The fields of /proc/`pid`/stat after the command name (which may hold
/// spaces, so the line is split after its last ')'): state, ppid, pgrp, ...
/// Empty when the process is gone.
pub fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}
