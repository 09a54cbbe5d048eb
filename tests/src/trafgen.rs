//! Traffic from trafgen (netsniff-ng): a packet given as bytes, optionally
//! with a random IPv4 source address per packet, sent N times from one CPU.

use std::{path::Path, process::Command, time::Instant};

/// Writes a trafgen config that sends `frame`; with `random = Some((at, n))`
/// the `n` bytes at offset `at` are random per packet (4 bytes of an IPv4
/// source: a new flow per packet; 2 bytes: 65536 flows).
pub fn write_config(path: &Path, frame: &[u8], random: Option<(usize, usize)>) {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < frame.len() {
        if let Some((at, n)) = random.filter(|(at, _)| *at == i) {
            parts.push(format!("drnd({n})"));
            i = at + n;
        } else {
            parts.push(format!("0x{:02x}", frame[i]));
            i += 1;
        }
    }
    std::fs::write(path, format!("{{ {} }}\n", parts.join(", "))).unwrap();
}

/// Sends `count` packets from `dev` in namespace `ns` on one CPU; returns
/// the wall time it took. Frames bypass the sender's qdisc layer (trafgen's
/// default, PACKET_QDISC_BYPASS), so no TC egress hook sees them.
pub fn send(ns: &str, dev: &str, config: &Path, count: u64) -> std::time::Duration {
    run(ns, dev, config, count, &[])
}

/// Like [`send`], through the sender's qdisc layer, where TC egress
/// programs on `dev` see the frames.
pub fn send_through_qdisc(ns: &str, dev: &str, config: &Path, count: u64) -> std::time::Duration {
    run(ns, dev, config, count, &["--qdisc-path"])
}

/// Like [`send`], one `sendto(2)` per frame instead of the TX ring
/// (trafgen's "slow mode", `--gap 0`: no pause between frames).
///
/// The difference is in the skbs the receiver sees. From the TX ring only
/// the 14-byte Ethernet header is in the skb's linear part; the rest stays
/// in page fragments pointing into the ring, so a TC program must copy the
/// IP and transport headers out. From `sendto(2)` the kernel copies each
/// small frame into a fully linear skb, which is what NIC drivers hand the
/// stack (they build or copy the headers into the head).
pub fn send_linear(ns: &str, dev: &str, config: &Path, count: u64) -> std::time::Duration {
    run(ns, dev, config, count, &["--gap", "0"])
}

fn run(ns: &str, dev: &str, config: &Path, count: u64, extra: &[&str]) -> std::time::Duration {
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "trafgen", "--dev", dev, "--conf"])
        .arg(config)
        .args(["--num", &count.to_string(), "--cpus", "1", "--no-sock-mem"])
        .args(extra)
        .output()
        .expect("run trafgen (Debian package netsniff-ng)");
    assert!(
        out.status.success(),
        "trafgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}
