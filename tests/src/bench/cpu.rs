//! CPU time from /proc: the whole machine's busy time (user, system, irq,
//! softirq), so that softirq work done on behalf of any process is counted.

/// Clock ticks per second of /proc/stat (USER_HZ).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Busy CPU-seconds of the whole machine since boot.
pub fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().next().expect("cpu line");
    // cpu user nice system idle iowait irq softirq steal ...
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    busy as f64 / ticks_per_second()
}
