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

/// User + system CPU-seconds of process (or thread id) `pid`; 0 when gone.
pub fn task_seconds(pid: u32) -> f64 {
    let f = crate::procfs::stat_fields(pid);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / ticks_per_second()
}

/// Seconds of a POSIX CPU clock: `CLOCK_PROCESS_CPUTIME_ID` (this process,
/// all threads) or `CLOCK_THREAD_CPUTIME_ID` (the calling thread; unlike
/// wall time it leaves out time spent waiting for a CPU, which on a shared
/// machine swung single rounds by 4x).
pub fn clock_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
