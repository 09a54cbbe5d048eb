//! End-to-end capture tests: the real agent, the real eBPF programs, real
//! frames between network namespaces, exact numbers.
//!
//! Run as root through `cargo xtask test` (which sets FLOWAGENT_BIN).

use std::{collections::BTreeMap, time::Duration};

use flowagent_tests::{
    agent::{Agent, Output, TempDir},
    lab::{GEN_MAC, Lab, OBS_MAC},
    packet::{
        self, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, V4Opts, mac, tcp_flags, v4, v6,
    },
    send::{Sender, SplitSender},
    sockets, trafgen,
};
use serde_json::Value;

/// One flow of the standard mix: its frames and what the record must say.
struct Expect {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    port_src: u64,
    port_dst: u64,
    proto: Value,
    vlan: u64,
    tos: u64,
    tcp_flags: u64,
    frames: Vec<Vec<u8>>,
    bytes: u64,
}

fn eth(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    packet::eth(mac(OBS_MAC), mac(GEN_MAC), vlans, ethertype, payload)
}

fn repeat(frame: Vec<u8>, n: usize) -> Vec<Vec<u8>> {
    vec![frame; n]
}

/// IPv4 UDP with ToS, IPv4 TCP with SYN/ACK/PSH/FIN, IPv6 UDP, ICMP echo,
/// ICMPv6 echo, an 802.1Q-tagged flow and a QinQ flow.
fn standard_mix() -> Vec<Expect> {
    let a = v4("10.0.1.1");
    let b = v4("10.0.2.2");
    let udp4 = packet::ipv4(
        a,
        b,
        17,
        &V4Opts {
            tos: 0xb8,
            ..Default::default()
        },
        &packet::udp(1111, 2222, &[7; 100]),
    );
    let tcp = |flags, payload: &[u8]| {
        eth(
            &[],
            ETH_P_IP,
            &packet::ipv4(
                a,
                b,
                6,
                &V4Opts::default(),
                &packet::tcp(40000, 80, flags, payload),
            ),
        )
    };
    let udp6 = packet::ipv6(
        v6("2001:db8::1"),
        v6("2001:db8::2"),
        17,
        0x20,
        &packet::udp(5353, 53, &[1; 20]),
    );
    let icmp = packet::ipv4(a, b, 1, &V4Opts::default(), &packet::icmp(8, 0, &[0; 56]));
    let icmp6 = packet::ipv6(
        v6("2001:db8::1"),
        v6("2001:db8::2"),
        58,
        0,
        &packet::icmp(128, 0, &[0; 8]),
    );
    let tagged = packet::ipv4(
        v4("10.0.3.3"),
        v4("10.0.4.4"),
        17,
        &V4Opts::default(),
        &packet::udp(3333, 4444, &[2; 10]),
    );
    let qinq = packet::ipv4(
        v4("10.0.5.5"),
        v4("10.0.6.6"),
        17,
        &V4Opts::default(),
        &packet::udp(5555, 6666, &[3; 30]),
    );
    vec![
        Expect {
            name: "ipv4 udp",
            src: "10.0.1.1",
            dst: "10.0.2.2",
            port_src: 1111,
            port_dst: 2222,
            proto: "udp".into(),
            vlan: 0,
            tos: 0xb8,
            tcp_flags: 0,
            bytes: 7 * 128,
            frames: repeat(eth(&[], ETH_P_IP, &udp4), 7),
        },
        Expect {
            name: "ipv4 tcp",
            src: "10.0.1.1",
            dst: "10.0.2.2",
            port_src: 40000,
            port_dst: 80,
            proto: "tcp".into(),
            vlan: 0,
            tos: 0,
            tcp_flags: (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN) as u64,
            bytes: 40 + 40 + 90 + 40,
            frames: vec![
                tcp(tcp_flags::SYN, &[]),
                tcp(tcp_flags::ACK, &[]),
                tcp(tcp_flags::PSH | tcp_flags::ACK, &[9; 50]),
                tcp(tcp_flags::FIN | tcp_flags::ACK, &[]),
            ],
        },
        Expect {
            name: "ipv6 udp",
            src: "2001:db8::1",
            dst: "2001:db8::2",
            port_src: 5353,
            port_dst: 53,
            proto: "udp".into(),
            vlan: 0,
            tos: 0x20,
            tcp_flags: 0,
            bytes: 3 * 68,
            frames: repeat(eth(&[], ETH_P_IPV6, &udp6), 3),
        },
        Expect {
            name: "icmp echo",
            src: "10.0.1.1",
            dst: "10.0.2.2",
            port_src: 0,
            port_dst: 8 << 8,
            proto: "icmp".into(),
            vlan: 0,
            tos: 0,
            tcp_flags: 0,
            bytes: 5 * 84,
            frames: repeat(eth(&[], ETH_P_IP, &icmp), 5),
        },
        Expect {
            name: "icmpv6 echo",
            src: "2001:db8::1",
            dst: "2001:db8::2",
            port_src: 0,
            port_dst: 128 << 8,
            proto: "ipv6-icmp".into(),
            vlan: 0,
            tos: 0,
            tcp_flags: 0,
            bytes: 2 * 56,
            frames: repeat(eth(&[], ETH_P_IPV6, &icmp6), 2),
        },
        Expect {
            name: "802.1Q vlan 42",
            src: "10.0.3.3",
            dst: "10.0.4.4",
            port_src: 3333,
            port_dst: 4444,
            proto: "udp".into(),
            vlan: 42,
            tos: 0,
            tcp_flags: 0,
            bytes: 6 * 38,
            frames: repeat(eth(&[(ETH_P_8021Q, 42)], ETH_P_IP, &tagged), 6),
        },
        Expect {
            name: "QinQ 100/200",
            src: "10.0.5.5",
            dst: "10.0.6.6",
            port_src: 5555,
            port_dst: 6666,
            proto: "udp".into(),
            vlan: 100,
            tos: 0,
            tcp_flags: 0,
            bytes: 2 * 58,
            frames: repeat(
                eth(&[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)], ETH_P_IP, &qinq),
                2,
            ),
        },
    ]
}

fn records_of<'a>(out: &'a Output, e: &Expect) -> Vec<&'a Value> {
    out.flows
        .iter()
        .filter(|f| {
            f["ip_src"] == e.src
                && f["ip_dst"] == e.dst
                && f["port_src"] == e.port_src
                && f["port_dst"] == e.port_dst
                && f["ip_proto"] == e.proto
        })
        .collect()
}

/// Checks every flow of the mix against the records; `iface` and
/// `direction` are where it was observed.
fn check_mix(out: &Output, mix: &[Expect], iface: &str, direction: &str) {
    for e in mix {
        let recs = records_of(out, e);
        assert!(
            !recs.is_empty(),
            "{}: no record in {:#?}",
            e.name,
            out.flows
        );
        let packets: u64 = recs.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
        let bytes: u64 = recs.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
        let flags = recs
            .iter()
            .fold(0, |acc, r| acc | r["tcp_flags"].as_u64().unwrap());
        assert_eq!(packets, e.frames.len() as u64, "{} packets", e.name);
        assert_eq!(bytes, e.bytes, "{} bytes", e.name);
        assert_eq!(flags, e.tcp_flags, "{} tcp_flags", e.name);
        for r in &recs {
            assert_eq!(r["vlan"], e.vlan, "{} vlan: {r}", e.name);
            assert_eq!(r["mac_src"], GEN_MAC, "{} mac_src: {r}", e.name);
            assert_eq!(r["tos"], e.tos, "{} tos: {r}", e.name);
            assert_eq!(r["direction"], direction, "{}: {r}", e.name);
            let observed = if direction == "ingress" {
                "iface_in"
            } else {
                "iface_out"
            };
            assert_eq!(r[observed], iface, "{}: {r}", e.name);
            assert_eq!(r["sampling_rate"], 1, "{}: {r}", e.name);
            assert!(r["timestamp_start"].as_str().unwrap().ends_with('Z'));
            assert!(
                r["timestamp_start"].as_str() <= r["timestamp_end"].as_str(),
                "{r}"
            );
        }
    }
    // Nothing but the mix was seen.
    let total: u64 = mix.iter().map(|e| e.frames.len() as u64).sum();
    assert_eq!(out.sum("packets", |_| true), total, "{:#?}", out.flows);
    assert_eq!(out.counter("non_ip_packets"), 0);
    assert_eq!(out.counter("malformed_packets"), 0);
    assert_eq!(out.counter("overflow_packets"), 0);
    // The drain walked exactly the entries the programs created.
    assert!(
        !out.log.contains("where the programs created"),
        "{}",
        out.log
    );
}

fn send_mix(sender: &Sender, mix: &[Expect]) {
    for e in mix {
        for f in &e.frames {
            sender.send(f);
        }
    }
}

/// Now moved by `ms` milliseconds, as RFC 3339 UTC with microseconds: the
/// agent's format, in which strings order like the times they stand for.
fn rfc3339_now_plus(ms: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if ms >= 0 {
        now + Duration::from_millis(ms as u64)
    } else {
        now - Duration::from_millis((-ms) as u64)
    };
    humantime::format_rfc3339_micros(t).to_string()
}

#[test]
fn xdp_counts_exact_flows() {
    let lab = Lab::new("xdp");
    // Kernel stamps are jiffies, exact to one tick (10 ms at most).
    let before = rfc3339_now_plus(-20);
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--mode", "xdp", "--interval", "60"],
    );
    assert!(
        agent.log().contains("attached native XDP to gb"),
        "{}",
        agent.log()
    );
    let mix = standard_mix();
    send_mix(&Sender::new(lab.gen_ns.name(), "ga"), &mix);
    let after = rfc3339_now_plus(20);
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    check_mix(&out, &mix, "gb", "ingress");
    for f in &out.flows {
        let (start, end) = (
            f["timestamp_start"].as_str().unwrap(),
            f["timestamp_end"].as_str().unwrap(),
        );
        assert!(
            before.as_str() <= start && end <= after.as_str(),
            "{before} <= {start} .. {end} <= {after}"
        );
    }
}

/// How test frames are sent.
#[derive(Clone, Copy)]
enum Via {
    /// One sendto() per frame on an AF_PACKET socket: the skb is linear.
    Socket,
    /// trafgen's AF_PACKET TX ring (through the qdisc layer, so that TC
    /// egress sees it too): only the Ethernet header is in the skb's linear
    /// part, the rest stays in page fragments (what makes the TC program
    /// copy the headers out instead of reading packet memory).
    TxRing,
}

/// Sends the mix from `dev` in namespace `ns`.
fn send_mix_via(via: Via, ns: &str, dev: &str, mix: &[Expect]) {
    match via {
        Via::Socket => send_mix(&Sender::new(ns, dev), mix),
        Via::TxRing => {
            let dir = TempDir::new("txring");
            let conf = dir.0.join("frame.cfg");
            for frames in mix.iter().flat_map(|e| e.frames.chunk_by(|a, b| a == b)) {
                trafgen::write_config(&conf, &frames[0], None);
                trafgen::send_through_qdisc(ns, dev, &conf, frames.len() as u64);
            }
        }
    }
}

/// Runs the agent on `gb` with `mode_args`, sends the standard mix `via` a
/// socket or TX ring (from the generator, or out of `gb` itself for
/// egress) and checks every flow.
fn mix_through(tag: &str, mode_args: &[&str], direction: &str, via: Via) -> Output {
    let lab = Lab::new(tag);
    let mut args = vec!["--iface", "gb", "--interval", "60"];
    args.extend_from_slice(mode_args);
    let agent = Agent::start(&lab.obs, &args);
    let mix = standard_mix();
    if direction == "egress" {
        // Frames leave the observed namespace through gb: the egress hook sees them.
        send_mix_via(via, lab.obs.name(), "gb", &mix);
    } else {
        send_mix_via(via, lab.gen_ns.name(), "ga", &mix);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    check_mix(&out, &mix, "gb", direction);
    out
}

#[test]
fn xdp_generic_counts_exact_flows() {
    let out = mix_through("xdpg", &["--mode", "xdp-generic"], "ingress", Via::Socket);
    assert!(
        out.log.contains("attached generic XDP to gb"),
        "{}",
        out.log
    );
}

#[test]
fn tc_ingress_counts_exact_flows() {
    mix_through(
        "tci",
        &["--mode", "tc", "--direction", "ingress"],
        "ingress",
        Via::Socket,
    );
}

/// Frames whose headers are not in the skb's linear part are parsed from a
/// copy, with the same exact results.
#[test]
fn tc_ingress_counts_exact_flows_from_a_tx_ring() {
    mix_through(
        "tcr",
        &["--mode", "tc", "--direction", "ingress"],
        "ingress",
        Via::TxRing,
    );
}

/// Frames with the headers in the skb's linear part and the payload in page
/// fragments (as header-split drivers and the local TCP stack deliver
/// them), and frames whose linear part ends before the UDP ports: the
/// program copies the headers out of both and gives exact records.
#[test]
fn tc_ingress_reads_headers_split_from_the_payload() {
    let lab = Lab::new("tcs");
    lab.gen_ns.ip(&["link", "set", "ga", "mtu", "9000"]);
    lab.obs.ip(&["link", "set", "gb", "mtu", "9000"]);
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--mode", "tc", "--interval", "60"],
    );
    let frame = |sport: u16| {
        packet::eth(
            mac(OBS_MAC),
            mac(GEN_MAC),
            &[],
            ETH_P_IP,
            &packet::ipv4(
                v4("10.9.0.1"),
                v4("10.9.0.2"),
                17,
                &V4Opts::default(),
                &packet::udp(sport, 5000, &[7; 6000]),
            ),
        )
    };
    let sender = SplitSender::new(lab.gen_ns.name(), "ga");
    // Ethernet, IPv4 and UDP headers linear (42 bytes).
    for _ in 0..3 {
        sender.send(&frame(4000), 42);
    }
    // Only Ethernet and IPv4 linear: the ports are past it.
    for _ in 0..2 {
        sender.send(&frame(4001), 34);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    let ip_len = 20 + 8 + 6000;
    for (sport, packets) in [(4000, 3), (4001, 2)] {
        let recs: Vec<&Value> = out
            .flows
            .iter()
            .filter(|f| f["port_src"] == sport)
            .collect();
        assert_eq!(recs.len(), 1, "port {sport}: {:#?}", out.flows);
        let r = recs[0];
        assert_eq!(
            (
                r["ip_src"].as_str(),
                r["ip_dst"].as_str(),
                r["port_dst"].as_u64(),
                r["packets"].as_u64(),
                r["bytes"].as_u64()
            ),
            (
                Some("10.9.0.1"),
                Some("10.9.0.2"),
                Some(5000),
                Some(packets),
                Some(packets * ip_len)
            ),
            "port {sport}: {r:#}"
        );
    }
    assert_eq!(out.flows.len(), 2, "{:#?}", out.flows);
}

#[test]
fn tc_egress_counts_exact_flows() {
    for (tag, via) in [("tce", Via::Socket), ("tcer", Via::TxRing)] {
        let out = mix_through(
            tag,
            &["--mode", "tc", "--direction", "egress"],
            "egress",
            via,
        );
        // Locally sent: no ingress interface.
        assert!(
            out.flows.iter().all(|f| f["iface_in"].is_null()),
            "{:#?}",
            out.flows
        );
    }
}

/// Gives `ga` and `gb` addresses in `net` (IPv4 /24 or IPv6 /64 prefix
/// text, hosts 1 and 2) with permanent neighbour entries, so the kernel
/// sends no ARP or neighbour discovery of its own.
fn address_lab(lab: &Lab, v4_net: &str, v6_net: Option<&str>) {
    let nets = [(v4_net, "24", "-4")]
        .into_iter()
        .chain(v6_net.map(|n| (n, "64", "-6")));
    for (net, len, family) in nets {
        for (ns, dev, host, peer, peer_mac) in [
            (&lab.gen_ns, "ga", "1", "2", OBS_MAC),
            (&lab.obs, "gb", "2", "1", GEN_MAC),
        ] {
            if family == "-6" {
                ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
            }
            let addr = format!("{net}{host}/{len}");
            let mut add = vec![family, "addr", "add", &addr, "dev", dev];
            if family == "-6" {
                add.push("nodad");
            }
            ns.ip(&add);
            let peer = format!("{net}{peer}");
            ns.ip(&[
                family,
                "neigh",
                "replace",
                &peer,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }
}

/// Packets and bytes of the records to `dst` port `dport` seen in `direction`.
fn to_port(out: &Output, dst: &str, dport: u64, direction: &str) -> (u64, u64) {
    let keep =
        |f: &Value| f["ip_dst"] == dst && f["port_dst"] == dport && f["direction"] == direction;
    (out.sum("packets", keep), out.sum("bytes", keep))
}

/// A UDP GSO skb (one send with UDP_SEGMENT) is as many packets on the
/// wire as it has segments, each with its own IP and UDP header: TC counts
/// them so, on ingress (as after GRO on a NIC) and egress, IPv4 and IPv6.
/// Counted per skb, the 11-segment sends below would be 11 times too few
/// packets.
#[test]
fn tc_counts_every_segment_of_a_udp_gso_skb() {
    let lab = Lab::new("ugso");
    address_lab(&lab, "10.61.0.", Some("2001:db8:61::"));
    let agent = Agent::start(
        &lab.obs,
        &[
            "--iface",
            "gb",
            "--mode",
            "tc",
            "--direction",
            "both",
            "--interval",
            "60",
        ],
    );
    // 10500 bytes in 1000-byte segments: 10 full and one of 500.
    let (segment, len, segments) = (1000, 10_500, 11);
    let gen_ns = lab.gen_ns.name();
    sockets::udp_gso(gen_ns, "10.61.0.2:7001".parse().unwrap(), segment, len, 5);
    sockets::udp_gso(
        gen_ns,
        "[2001:db8:61::2]:7003".parse().unwrap(),
        segment,
        len,
        4,
    );
    sockets::udp_gso(
        lab.obs.name(),
        "10.61.0.1:7002".parse().unwrap(),
        segment,
        len,
        3,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    // Per segment: its payload plus a 20-byte IPv4 (40-byte IPv6) and an
    // 8-byte UDP header.
    let wire = |hdr: u64| len as u64 + segments * hdr;
    assert_eq!(
        to_port(&out, "10.61.0.2", 7001, "ingress"),
        (5 * segments, 5 * wire(28)),
        "{:#?}",
        out.flows
    );
    assert_eq!(
        to_port(&out, "2001:db8:61::2", 7003, "ingress"),
        (4 * segments, 4 * wire(48)),
        "{:#?}",
        out.flows
    );
    assert_eq!(
        to_port(&out, "10.61.0.1", 7002, "egress"),
        (3 * segments, 3 * wire(28)),
        "{:#?}",
        out.flows
    );
}

/// A TCP transfer between namespaces goes over veth as TSO skbs of up to
/// 64 KB: TC counts exactly the segments the sender's socket put on the
/// wire, retransmissions included, and their bytes with a header per
/// segment.
#[test]
fn tc_counts_every_segment_of_a_tso_tcp_stream() {
    let lab = Lab::new("tso");
    address_lab(&lab, "10.62.0.", None);
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--mode", "tc", "--interval", "60"],
    );
    let sent = sockets::tcp_transfer(
        lab.gen_ns.name(),
        lab.obs.name(),
        "10.62.0.2:7010".parse().unwrap(),
        2_000_000,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    // Linux's defaults put timestamps (12 bytes of options) on every
    // segment: 20 + 32 bytes of headers, and the SYN 8 more (MSS, SACK
    // permitted, window scale). Retransmitted payload is on the wire
    // again, so it is counted again.
    assert_eq!(
        to_port(&out, "10.62.0.2", 7010, "ingress"),
        (sent.segments, sent.payload + 52 * sent.segments + 8),
        "{sent:?} {:#?}",
        out.flows
    );
}

/// Sums packets and bytes per (src, dst, sport, dport) over all records.
fn totals(out: &Output) -> BTreeMap<String, (u64, u64, usize)> {
    let mut m = BTreeMap::new();
    for f in &out.flows {
        let k = format!(
            "{} {} {} {}",
            f["ip_src"], f["ip_dst"], f["port_src"], f["port_dst"]
        );
        let e = m.entry(k).or_insert((0, 0, 0));
        e.0 += f["packets"].as_u64().unwrap();
        e.1 += f["bytes"].as_u64().unwrap();
        e.2 += 1;
    }
    m
}

#[test]
fn continuous_traffic_over_many_intervals_sums_exactly() {
    let lab = Lab::new("cont");
    let agent = Agent::start(&lab.obs, &["--iface", "gb", "--interval", "1"]);
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let f4 = eth(
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.1.0.1"),
            v4("10.1.0.2"),
            17,
            &V4Opts::default(),
            &packet::udp(1, 2, &[0; 72]),
        ),
    );
    let f6 = eth(
        &[],
        ETH_P_IPV6,
        &packet::ipv6(
            v6("2001:db8:1::1"),
            v6("2001:db8:1::2"),
            17,
            0,
            &packet::udp(3, 4, &[0; 12]),
        ),
    );
    // 3 frames every 2 ms for about 6.5 s: more than 5 drain boundaries
    // cross a steady stream.
    let rounds = 3200;
    let start = std::time::Instant::now();
    for i in 0..rounds {
        sender.send(&f4);
        sender.send(&f6);
        sender.send(&f4);
        let due = start + Duration::from_millis(2) * (i + 1);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // SIGINT right after the last frame: the final drain must take the rest.
    let out = agent.stop();
    let t = totals(&out);
    let v4 = t["\"10.1.0.1\" \"10.1.0.2\" 1 2"];
    let v6 = t["\"2001:db8:1::1\" \"2001:db8:1::2\" 3 4"];
    assert_eq!(v4.0, 2 * rounds as u64, "IPv4 packets");
    assert_eq!(v4.1, 2 * rounds as u64 * 100, "IPv4 bytes");
    assert_eq!(v6.0, rounds as u64, "IPv6 packets");
    assert_eq!(v6.1, rounds as u64 * 60, "IPv6 bytes");
    assert!(
        out.counters.len() >= 6,
        "only {} intervals",
        out.counters.len()
    );
    assert!(
        v4.2 >= 6 && v6.2 >= 6,
        "flows split over too few intervals: {v4:?} {v6:?}"
    );
    assert_eq!(t.len(), 2, "{t:#?}");
}

#[test]
fn sampling_stays_within_binomial_bounds() {
    let lab = Lab::new("samp");
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--sampling", "100", "--interval", "60"],
    );
    let frame = eth(
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.2.0.1"),
            v4("10.2.0.2"),
            17,
            &V4Opts::default(),
            &packet::udp(5, 6, &[0; 22]),
        ),
    );
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let n = 40_000u64;
    for _ in 0..n {
        sender.send(&frame);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    let sampled = out.sum("packets", |_| true);
    // Binomial(n, 1/100): mean 400, sd sqrt(n p (1-p)) = 19.9. Five standard
    // deviations either side: a correct sampler fails this once in ~1.7M runs.
    let mean = n as f64 / 100.0;
    let sd = (n as f64 * 0.01 * 0.99).sqrt();
    assert!(
        (sampled as f64 - mean).abs() <= 5.0 * sd,
        "sampled {sampled} of {n}, expected {mean} ± {:.0}",
        5.0 * sd
    );
    assert_eq!(out.sum("bytes", |_| true), sampled * 50);
    assert!(out.flows.iter().all(|f| f["sampling_rate"] == 100));
    assert!(out.counters.iter().all(|c| c["sampling_rate"] == 100));
}

/// 200 two-packet flows against a 16-entry map: without a flow cache
/// exactly 16 flows get in, with both packets, and the rest is counted as
/// overflow.
#[test]
fn full_map_overflow_is_counted_exactly() {
    let out = overflow_run("full", "0");
    let in_flows = out.sum("packets", |_| true);
    // The map holds exactly 16 flows; each got both of its packets.
    assert_eq!(out.flows.len(), 16, "{:#?}", out.flows);
    assert_eq!(in_flows, 32);
}

/// The same with a cache of 4 entries per CPU in front of the map: the
/// flows that get in are those of the map and those the caches hold, and
/// each still has both of its packets in one record.
#[test]
fn full_map_and_cache_overflow_is_counted_exactly() {
    let out = overflow_run("fullc", "4");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let n = out.flows.len();
    assert!((17..=16 + 4 * cpus).contains(&n), "{n} flows");
    assert!(
        out.flows.iter().all(|f| f["packets"] == 2),
        "{:#?}",
        out.flows
    );
}

/// Sends 200 flows of two packets each through an agent with `--max-flows
/// 16` and `--flow-cache cache`, and checks that every packet is in a flow
/// or the overflow counters, and that the map-full warning was logged.
fn overflow_run(name: &str, cache: &str) -> Output {
    let lab = Lab::new(name);
    let agent = Agent::start(
        &lab.obs,
        &[
            "--iface",
            "gb",
            "--max-flows",
            "16",
            "--flow-cache",
            cache,
            "--interval",
            "60",
        ],
    );
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let flows = 200u16;
    for round in 0..2 {
        for port in 0..flows {
            let f = eth(
                &[],
                ETH_P_IP,
                &packet::ipv4(
                    v4("10.3.0.1"),
                    v4("10.3.0.2"),
                    17,
                    &V4Opts::default(),
                    &packet::udp(10_000 + port, 53, &[round; 12]),
                ),
            );
            sender.send(&f);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.stop();
    let in_flows = out.sum("packets", |_| true);
    let overflow = out.counter("overflow_packets");
    assert_eq!(
        in_flows + overflow,
        2 * flows as u64,
        "flows {in_flows} + overflow {overflow}"
    );
    assert_eq!(
        out.sum("bytes", |_| true) + out.counter("overflow_bytes"),
        2 * flows as u64 * 40
    );
    assert!(
        out.log.contains("flow map full"),
        "aya-log warning missing:\n{}",
        out.log
    );
    out
}
