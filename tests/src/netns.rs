//! Network namespaces and veth pairs that remove themselves on drop.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run inside a namespace.
pub fn exec_output(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("run ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fa-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "fa-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let out = exec_output(&self.name, &["sysctl", "-qw", &format!("{key}={value}")]);
        assert!(out.trim().is_empty(), "sysctl {key}: {out}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veths in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair `a_name` (in `a`) <-> `b_name` (in `b`), both up,
/// with the given MAC addresses. Removed with the namespaces.
pub fn veth(a: &Netns, a_name: &str, a_mac: &str, b: &Netns, b_name: &str, b_mac: &str) {
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        a_name,
        "address",
        a_mac,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "address",
        b_mac,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// Runs `f` on a thread that has entered namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this short-lived thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// Number of programs attached through tcx to `iface` in `ns`
/// (BPF_PROG_QUERY; bpftool before 7.3 does not list tcx).
pub fn tcx_program_count(ns: &str, iface: &str, egress: bool) -> u32 {
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let iface = std::ffi::CString::new(iface).unwrap();
    in_netns(ns, move || {
        // SAFETY: valid C string; the attr is a correctly laid out prefix of bpf_attr.
        unsafe {
            let index = libc::if_nametoindex(iface.as_ptr());
            assert_ne!(index, 0, "no interface {iface:?}");
            let mut q = Query {
                target_ifindex: index,
                attach_type: if egress {
                    BPF_TCX_EGRESS
                } else {
                    BPF_TCX_INGRESS
                },
                ..Default::default()
            };
            let rc = libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut q as *mut Query,
                std::mem::size_of::<Query>() as u32,
            );
            assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
            q.prog_cnt
        }
    })
}
