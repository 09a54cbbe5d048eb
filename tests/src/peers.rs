//! Real BGP daemons for the end-to-end tests: BIRD 2 with its own config,
//! control socket and log in a scratch directory, inside a test namespace;
//! killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use crate::{agent::TempDir, netns::Netns};

/// A BIRD 2 daemon running in a namespace.
pub struct Bird {
    child: Option<Child>,
    dir: TempDir,
}

impl Bird {
    /// Starts `bird` in `ns` with `config`.
    pub fn start(ns: &Netns, config: &str) -> Bird {
        let dir = TempDir::new("bird");
        std::fs::write(dir.0.join("bird.conf"), config).unwrap();
        let log = std::fs::File::create(dir.0.join("bird.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
            .arg(dir.0.join("bird.conf"))
            .arg("-s")
            .arg(dir.0.join("bird.ctl"))
            .arg("-P")
            .arg(dir.0.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bird (Debian package bird2)");
        Bird {
            child: Some(child),
            dir,
        }
    }

    /// Replaces the config and reloads it with `birdc configure`.
    pub fn reconfigure(&self, config: &str) {
        std::fs::write(self.dir.0.join("bird.conf"), config).unwrap();
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .arg("configure")
            .output()
            .expect("birdc");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Reconfigured"), "birdc configure: {text}");
    }

    /// Output of `birdc <command>`.
    pub fn birdc(&self, command: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(command.split_whitespace())
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// BIRD's process id (the daemon runs in the foreground under `ip netns exec`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("bird.ctl")
    }

    /// BIRD's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// pmacctd, the reference agent, in a namespace: in its own process group
/// so its plugin processes are measured and stopped with it.
pub struct Pmacctd {
    child: Option<Child>,
}

impl Pmacctd {
    /// Starts `pmacctd -f conf` in `ns` and gives libpcap time to open.
    pub fn start(ns: &Netns, conf: &std::path::Path) -> Pmacctd {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "pmacctd", "-f"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start pmacctd (Debian package pmacct)");
        std::thread::sleep(std::time::Duration::from_secs(2));
        Pmacctd { child: Some(child) }
    }

    fn group(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Summed RSS of the core and plugin processes, MiB.
    pub fn rss_mib(&self) -> f64 {
        let pgid = self.group();
        let kib: u64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // Fields after the command: state, ppid, pgrp.
                crate::procfs::stat_fields(*pid)
                    .get(2)
                    .and_then(|g| g.parse::<i32>().ok())
                    == Some(pgid)
            })
            .map(crate::procfs::rss_kib)
            .sum();
        kib as f64 / 1024.0
    }

    /// SIGINT (the print plugin writes its cache), wait, then make sure no
    /// process of the group is left.
    pub fn stop(mut self) {
        self.signal_group(libc::SIGINT);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        self.signal_group(libc::SIGKILL);
    }

    fn signal_group(&self, signal: i32) {
        let pgid = self.group();
        if pgid > 0 {
            // SAFETY: signalling the process group we created.
            unsafe { libc::killpg(pgid, signal) };
        }
    }
}

impl Drop for Pmacctd {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}
