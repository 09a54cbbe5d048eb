//! Malformed and unusual frames: they pass through untouched, nothing
//! crashes, and each is accounted where the README says.

use std::time::Duration;

use flowagent_tests::{
    agent::Agent,
    lab::{GEN_MAC, Lab, OBS_MAC},
    packet::{self, ETH_P_IP, ETH_P_IPV6, V4Opts, mac, v4, v6},
    send::{Receiver, Sender},
};

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    packet::eth(mac(OBS_MAC), mac(GEN_MAC), &[], ethertype, payload)
}

#[test]
fn malformed_frames_pass_untouched_and_are_accounted() {
    let lab = Lab::new("bad");
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--mode", "xdp", "--interval", "60"],
    );
    let good_v4 = packet::ipv4(
        v4("10.9.0.1"),
        v4("10.9.0.2"),
        17,
        &V4Opts::default(),
        &packet::udp(7, 8, &[0; 4]),
    );

    // Malformed: IP ethertype but no readable IP header.
    let truncated_v4 = eth(ETH_P_IP, &good_v4[..10]);
    let mut ihl4 = good_v4.clone();
    ihl4[0] = 0x44;
    let ihl_too_small = eth(ETH_P_IP, &ihl4);
    let mut v5 = good_v4.clone();
    v5[0] = 0x55;
    let wrong_version = eth(ETH_P_IP, &v5);
    let v6_full = packet::ipv6(
        v6("2001:db8:9::1"),
        v6("2001:db8:9::2"),
        17,
        0,
        &packet::udp(1, 2, &[]),
    );
    let truncated_v6 = eth(ETH_P_IPV6, &v6_full[..30]);
    let malformed = [truncated_v4, ihl_too_small, wrong_version, truncated_v6];

    // Non-IP: ARP-sized frames of other ethertypes.
    let non_ip = [
        eth(0x88b5, &[0xaa; 46]),
        eth(0x0806, &[0; 28]),
        eth(0x88cc, &[1; 50]),
    ];

    // Counted by L3 protocol alone, ports 0.
    let mut tcp_hdr_cut = packet::ipv4(
        v4("10.9.1.1"),
        v4("10.9.1.2"),
        6,
        &V4Opts::default(),
        &packet::tcp(1, 2, 0x02, &[]),
    );
    tcp_hdr_cut.truncate(26); // 6 bytes of TCP: the flags byte is missing
    tcp_hdr_cut[2..4].copy_from_slice(&26u16.to_be_bytes());
    let tcp_cut = eth(ETH_P_IP, &tcp_hdr_cut);
    let fragment = eth(
        ETH_P_IP,
        &packet::ipv4(
            v4("10.9.2.1"),
            v4("10.9.2.2"),
            17,
            &V4Opts {
                frag_offset: 185,
                ..Default::default()
            },
            &[0; 40],
        ),
    );
    // Seven destination-options headers: one more than the parser walks.
    let mut chain = packet::udp(9, 10, &[0; 8]);
    let mut next = 17;
    for _ in 0..7 {
        chain = packet::ipv6_ext(next, &chain);
        next = 60;
    }
    let long_chain = eth(
        ETH_P_IPV6,
        &packet::ipv6(v6("2001:db8:9::3"), v6("2001:db8:9::4"), 60, 0, &chain),
    );
    // Within the bound: hop-by-hop, routing-style and dest-opts headers then UDP.
    let short_chain_payload = packet::ipv6_ext(
        43,
        &packet::ipv6_ext(60, &packet::ipv6_ext(17, &packet::udp(11, 12, &[]))),
    );
    let short_chain = eth(
        ETH_P_IPV6,
        &packet::ipv6(
            v6("2001:db8:9::5"),
            v6("2001:db8:9::6"),
            0,
            0,
            &short_chain_payload,
        ),
    );
    // IPv4 with 8 bytes of options: ports still found behind them.
    let with_options = eth(
        ETH_P_IP,
        &packet::ipv4(
            v4("10.9.3.1"),
            v4("10.9.3.2"),
            17,
            &V4Opts {
                options: vec![1; 8],
                ..Default::default()
            },
            &packet::udp(13, 14, &[]),
        ),
    );

    let receiver = Receiver::new(lab.obs.name(), "gb");
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let mut sent = Vec::new();
    for f in malformed.iter().chain(&non_ip).chain([
        &tcp_cut,
        &fragment,
        &long_chain,
        &short_chain,
        &with_options,
    ]) {
        sender.send(f);
        sent.push(f.clone());
    }
    // XDP_PASS means the stack gets every frame byte for byte.
    let received = receiver.drain(Duration::from_millis(500));
    assert_eq!(
        received, sent,
        "frames changed or lost after the XDP program"
    );

    let out = agent.stop();
    assert_eq!(out.counter("malformed_packets"), 4);
    assert_eq!(
        out.counter("malformed_bytes"),
        malformed.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    assert_eq!(out.counter("non_ip_packets"), 3);
    assert_eq!(
        out.counter("non_ip_bytes"),
        non_ip.iter().map(|f| f.len() as u64).sum::<u64>()
    );

    let find = |src: &str| {
        let recs: Vec<_> = out.flows.iter().filter(|f| f["ip_src"] == src).collect();
        assert_eq!(recs.len(), 1, "{src}: {:#?}", out.flows);
        recs[0].clone()
    };
    let r = find("10.9.1.1");
    assert_eq!(
        (
            r["ip_proto"].as_str(),
            r["port_src"].as_u64(),
            r["port_dst"].as_u64(),
            r["bytes"].as_u64()
        ),
        (Some("tcp"), Some(0), Some(0), Some(26))
    );
    let r = find("10.9.2.1");
    assert_eq!(
        (
            r["ip_proto"].as_str(),
            r["port_src"].as_u64(),
            r["port_dst"].as_u64(),
            r["bytes"].as_u64()
        ),
        (Some("udp"), Some(0), Some(0), Some(60))
    );
    let r = find("2001:db8:9::3");
    assert_eq!(
        (
            r["ip_proto"].as_u64(),
            r["port_src"].as_u64(),
            r["port_dst"].as_u64()
        ),
        (Some(60), Some(0), Some(0))
    );
    assert_eq!(r["bytes"], 40 + 7 * 8 + 16);
    let r = find("2001:db8:9::5");
    assert_eq!(
        (
            r["ip_proto"].as_str(),
            r["port_src"].as_u64(),
            r["port_dst"].as_u64()
        ),
        (Some("udp"), Some(11), Some(12))
    );
    let r = find("10.9.3.1");
    assert_eq!(
        (
            r["port_src"].as_u64(),
            r["port_dst"].as_u64(),
            r["bytes"].as_u64()
        ),
        (Some(13), Some(14), Some(36))
    );
    assert_eq!(out.flows.len(), 5, "{:#?}", out.flows);
}

/// A frame shorter than an Ethernet header never reaches a program: the
/// kernel refuses to transmit it (dev_validate_header()), so it cannot cross
/// a veth, and BPF_PROG_TEST_RUN rejects it too. The parser still treats one
/// as malformed should a driver ever deliver it; this pins down the kernel
/// behaviour that makes that path unreachable here.
#[test]
fn truncated_ethernet_frames_never_reach_the_program() {
    let lab = Lab::new("short");
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--mode", "xdp", "--interval", "60"],
    );
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    let short = eth(ETH_P_IP, &[])[..13].to_vec();
    let err = sender.try_send(&short).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    sender.send(&eth(0x88b5, &[0; 46]));
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.stop();
    assert_eq!(out.counter("malformed_packets"), 0);
    assert_eq!(out.counter("non_ip_packets"), 1);
}
