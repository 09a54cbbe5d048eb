//! The agent under test: the real binary, run inside a namespace.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Path of the agent binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(
        std::env::var("FLOWAGENT_BIN").expect(
            "FLOWAGENT_BIN is not set: run the end-to-end tests through `cargo xtask test`",
        ),
    )
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "flowagent-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent; killed on drop if the test did not stop it.
pub struct Agent {
    child: Option<Child>,
    dir: TempDir,
}

/// What the agent wrote, split by event type.
#[derive(Debug, Default)]
pub struct Output {
    /// Flow records (`event_type: purge`).
    pub flows: Vec<Value>,
    /// Per-interval counter lines (`event_type: counters`).
    pub counters: Vec<Value>,
    /// The agent's stderr.
    pub log: String,
}

impl Output {
    /// Sum of a numeric field over the flows that `keep` selects.
    pub fn sum(&self, field: &str, keep: impl Fn(&Value) -> bool) -> u64 {
        self.flows
            .iter()
            .filter(|f| keep(f))
            .map(|f| {
                f[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {f}"))
            })
            .sum()
    }

    /// Sum of a counter over every interval.
    pub fn counter(&self, field: &str) -> u64 {
        self.counters
            .iter()
            .map(|c| {
                c[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {c}"))
            })
            .sum()
    }
}

impl Agent {
    /// Starts the agent in `ns` with `args` (plus `--output <file>`) and
    /// waits until it says it is ready.
    pub fn start(ns: &Netns, args: &[&str]) -> Agent {
        let dir = TempDir::new("agent");
        let out = dir.0.join("out.jsonl");
        let err = std::fs::File::create(dir.0.join("stderr")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin())
            .args(args)
            .arg("--output")
            .arg(&out)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start the agent");
        let mut agent = Agent {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = agent.log();
            if log.contains("ready:") {
                return agent;
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The agent's resident set size in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        crate::procfs::rss_kib(self.pid())
    }

    /// Kernel memory of the agent's BPF maps in KiB (see
    /// [`crate::procfs::bpf_map_kib`]).
    pub fn bpf_map_kib(&self) -> u64 {
        crate::procfs::bpf_map_kib(self.pid())
    }

    /// The part of the agent's RSS that is BPF map memory mapped into it
    /// (see [`crate::procfs::bpf_mapped_rss_kib`]).
    pub fn bpf_mapped_rss_kib(&self) -> u64 {
        crate::procfs::bpf_mapped_rss_kib(self.pid())
    }

    /// The agent's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the agent log after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until at least `n` interval counter lines have been written.
    pub fn wait_intervals(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.read().counters.len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} intervals drained"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the agent has written so far.
    pub fn read(&self) -> Output {
        let text = std::fs::read_to_string(self.dir.0.join("out.jsonl")).unwrap_or_default();
        let mut out = Output {
            log: self.log(),
            ..Default::default()
        };
        // The agent may be writing right now: a last line without its
        // newline is not complete yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
            match v["event_type"].as_str() {
                Some("purge") => out.flows.push(v),
                Some("counters") => out.counters.push(v),
                other => panic!("unexpected event_type {other:?} in {line}"),
            }
        }
        out
    }

    /// SIGINT, wait for a clean exit (status 0), and return the output.
    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGINT)
    }

    /// Sends `signal`, waits for a clean exit (status 0), returns the output.
    pub fn stop_with(mut self, signal: i32) -> Output {
        let status = self.signal_and_wait(signal);
        let out = self.read();
        assert!(status.success(), "agent exited with {status}:\n{}", out.log);
        out
    }

    fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `flowagent collect` running in a namespace; killed on drop.
pub struct Collector {
    child: Option<Child>,
    /// Where it writes its hourly files.
    pub dir: TempDir,
}

impl Collector {
    /// Starts the collector in `ns` listening on `listen`, plus `args`.
    pub fn start(ns: &Netns, listen: &str, args: &[&str]) -> Collector {
        let dir = TempDir::new("collector");
        let log = std::fs::File::create(dir.0.join("collector.log")).unwrap();
        let out = dir.0.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin())
            .arg("collect")
            .arg("--out-dir")
            .arg(&out)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start flowagent collect");
        std::thread::sleep(Duration::from_millis(500));
        Collector {
            child: Some(child),
            dir,
        }
    }

    /// Every line of every hourly file, parsed.
    pub fn lines(&self) -> Vec<Value> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.dir.0.join("out")).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "jsonl") {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                let complete = text.rfind('\n').map_or("", |end| &text[..end]);
                lines.extend(
                    complete
                        .lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            }
        }
        lines
    }

    /// The collector's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("collector.log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the agent to completion with `args` (no namespace, no --output) and
/// returns its exit code and stderr: for the bad-input tests.
pub fn run_expecting_failure(prefix: &[&str], args: &[&str]) -> (i32, String) {
    let bin = bin();
    let mut cmd = if prefix.is_empty() {
        Command::new(&bin)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(&bin);
        c
    };
    let out = cmd
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
