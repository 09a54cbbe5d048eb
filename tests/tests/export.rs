//! Export end to end: real traffic through the XDP program in the observer
//! namespace, the agent pushes to `flowagent collect` in a third namespace
//! over gRPC, and the collector's files hold exactly the packets sent.
//!
//! ```text
//!  [gen] ga ── gb [obs: agent, XDP on gb] gc ── gd [col: collector 10.71.0.2:50052]
//! ```

use std::time::{Duration, Instant};

use flowagent_tests::{
    agent::{Agent, Collector},
    lab::{GEN_MAC, Lab, OBS_MAC, quiet_netns},
    netns::veth,
    packet::{self, ETH_P_IP, ETH_P_IPV6, V4Opts, mac, v4, v6},
    send::Sender,
};

#[test]
fn collector_files_hold_exactly_the_packets_sent() {
    let lab = Lab::new("exp");
    let col = quiet_netns("expc");
    veth(
        &lab.obs,
        "gc",
        "02:00:00:00:00:03",
        &col,
        "gd",
        "02:00:00:00:00:04",
    );
    lab.obs.ip(&["addr", "add", "10.71.0.1/24", "dev", "gc"]);
    col.ip(&["addr", "add", "10.71.0.2/24", "dev", "gd"]);
    // Plaintext off loopback must be asked for on both sides.
    let collector = Collector::start(&col, "10.71.0.2:50052", &["--insecure"]);
    let agent = Agent::start(
        &lab.obs,
        &[
            "--iface",
            "gb",
            "--interval",
            "1",
            "--collector",
            "http://10.71.0.2:50052",
            "--insecure",
            "--agent-id",
            "edge-test",
            "--grpc-listen",
            "off",
        ],
    );
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let f4 = packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.72.0.1"),
            v4("10.72.0.2"),
            17,
            &V4Opts::default(),
            &packet::udp(7, 8, &[0; 100]),
        ),
    );
    let f6 = packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IPV6,
        &packet::ipv6(
            v6("2001:db8:72::1"),
            v6("2001:db8:72::2"),
            6,
            0,
            &packet::tcp(9, 10, 0x10, &[0; 20]),
        ),
    );
    // Spread over a few intervals: several batches reach the collector.
    for _ in 0..6 {
        sender.send_paced(&f4, 500, Duration::from_micros(200));
        sender.send_paced(&f6, 100, Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let local = agent.stop();
    assert_eq!(local.sum("packets", |f| f["ip_src"] == "10.72.0.1"), 3000);

    let sum = |lines: &[serde_json::Value], src: &str, field: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l["event_type"] == "purge" && l["ip_src"] == src)
            .map(|l| l[field].as_u64().unwrap())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = collector.lines();
        if sum(&lines, "10.72.0.1", "packets") >= 3000
            && sum(&lines, "2001:db8:72::1", "packets") >= 600
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "collector has {} lines:\n{}",
            lines.len(),
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sum(&lines, "10.72.0.1", "packets"), 3000);
    assert_eq!(sum(&lines, "10.72.0.1", "bytes"), 3000 * 128);
    assert_eq!(sum(&lines, "2001:db8:72::1", "packets"), 600);
    assert_eq!(sum(&lines, "2001:db8:72::1", "bytes"), 600 * 80);
    assert!(
        lines.iter().all(|l| l["agent_id"] == "edge-test"),
        "{:?}",
        &lines[..1]
    );
    // The agent's interval counters reached the collector too, one per interval.
    let counters = lines
        .iter()
        .filter(|l| l["event_type"] == "counters")
        .count();
    assert_eq!(counters, local.counters.len(), "{}", collector.log());
}
