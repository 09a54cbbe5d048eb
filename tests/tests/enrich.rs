//! Routing enrichment end to end: BIRD 2 peers with the agent over the
//! observer namespace's loopback (iBGP, route-reflector client, as operators
//! set up pmacct), real frames cross the XDP program, and the records carry
//! the ASNs and prefixes of BIRD's table, longest prefix first.

use std::time::{Duration, Instant};

use flowagent_tests::{
    agent::{Agent, Output},
    lab::{GEN_MAC, Lab, OBS_MAC},
    packet::{self, ETH_P_IP, ETH_P_IPV6, V4Opts, mac, v4, v6},
    peers::Bird,
    send::Sender,
};

const AGENT_PORT: u16 = 17917;

fn bird_config(statics: &str) -> String {
    format!(
        r#"
router id 192.0.2.254;
log stderr all;
protocol device {{ }}
{statics}
protocol bgp agent {{
  local 127.0.0.1 as 65000;
  neighbor 127.0.0.1 port {AGENT_PORT} as 65000;
  rr client;
  hold time 30;
  connect delay time 1;
  connect retry time 1;
  ipv4 {{ import none; export all; next hop address 192.0.2.1; }};
  ipv6 {{ import none; export all; next hop address 2001:db8::1; }};
}}
"#
    )
}

/// A /16 and a /24 inside it with different origins, an IPv6 /48, and a
/// community on the /16.
const TABLE: &str = r#"
protocol static s4 {
  ipv4;
  route 10.60.0.0/16 blackhole { bgp_path.prepend(64502); bgp_path.prepend(64501); bgp_community.add((65000,100)); };
  route 10.60.7.0/24 blackhole { bgp_path.prepend(64503); bgp_path.prepend(64501); };
  route 10.61.0.0/16 blackhole { bgp_path.prepend(64520); bgp_path.prepend(64510); };
}
protocol static s6 {
  ipv6;
  route 2001:db8:60::/48 blackhole { bgp_path.prepend(64530); };
}
"#;

/// The /24 withdrawn and the /16's origin changed.
const TABLE_CHANGED: &str = r#"
protocol static s4 {
  ipv4;
  route 10.60.0.0/16 blackhole { bgp_path.prepend(64599); bgp_path.prepend(64501); };
  route 10.61.0.0/16 blackhole { bgp_path.prepend(64520); bgp_path.prepend(64510); };
}
protocol static s6 {
  ipv6;
  route 2001:db8:60::/48 blackhole { bgp_path.prepend(64530); };
}
"#;

fn v4_frame(src: &str, dst: &str) -> Vec<u8> {
    packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4(src),
            v4(dst),
            17,
            &V4Opts::default(),
            &packet::udp(4000, 53, &[0; 20]),
        ),
    )
}

fn one<'a>(out: &'a Output, src: &str, dst: &str) -> &'a serde_json::Value {
    let recs: Vec<_> = out
        .flows
        .iter()
        .filter(|f| f["ip_src"] == src && f["ip_dst"] == dst)
        .collect();
    assert_eq!(recs.len(), 1, "{src} -> {dst}: {:#?}", out.flows);
    recs[0]
}

/// Sends probe frames every interval until a record for `src` shows
/// `as_src == want`, so the test waits exactly as long as BGP needs.
fn wait_for_as_src(agent: &Agent, sender: &Sender, src: &str, dst: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sender.send(&v4_frame(src, dst));
        std::thread::sleep(Duration::from_millis(1100));
        let out = agent.read();
        if out
            .flows
            .iter()
            .any(|f| f["ip_src"] == src && f["as_src"] == want)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "as_src {want} for {src} never appeared:\n{}",
            out.log
        );
    }
}

#[test]
fn flows_carry_bgp_asns_and_prefixes_and_follow_changes() {
    let lab = Lab::new("bgp");
    let bird = Bird::start(&lab.obs, &bird_config(TABLE));
    let listen = format!("127.0.0.1:{AGENT_PORT}");
    let socket = std::env::temp_dir().join(format!("flowagent-bgp-{}.sock", std::process::id()));
    let socket = socket.to_str().unwrap();
    let agent = Agent::start(
        &lab.obs,
        &[
            "--iface",
            "gb",
            "--interval",
            "1",
            "--bgp-listen",
            &listen,
            "--local-as",
            "65000",
            "--bgp-router-id",
            "192.0.2.250",
            "--bgp-neighbor",
            "127.0.0.1=65000",
            "--bgp-attrs",
            "as_path,communities",
            "--bgp-peer-src-as",
            "gb=64501",
            "--bgp-peer-src-as",
            "gb@02:00:00:00:00:01=64555",
            "--bgp-socket",
            socket,
        ],
    );
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    wait_for_as_src(&agent, &sender, "10.60.7.9", "10.61.3.3", 64503);
    let before = agent.read().flows.len();

    // The operator's check: `flowagent bgp routes IP` asks the running agent.
    let routes = std::process::Command::new(flowagent_tests::agent::bin())
        .args(["--bgp-socket", socket, "bgp", "routes", "10.60.7.9"])
        .output()
        .expect("flowagent bgp routes");
    assert!(routes.status.success(), "{routes:?}");
    assert_eq!(
        String::from_utf8_lossy(&routes.stdout),
        "10.60.7.0/24 via 192.0.2.1 from 127.0.0.1 path [64501 64503] origin i local_pref 100 med - communities []\n"
    );

    // Longest prefix: the /24's origin for 10.60.7.9, the /16's for 10.60.200.1.
    for _ in 0..3 {
        sender.send(&v4_frame("10.60.7.9", "10.60.200.1"));
    }
    // The same path from another router's MAC: the interface entry applies.
    let mut other_router = v4_frame("10.60.7.10", "10.60.200.1");
    other_router[6..12].copy_from_slice(&mac("02:00:00:00:00:09"));
    sender.send(&other_router);
    sender.send(&packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IPV6,
        &packet::ipv6(
            v6("2001:db8:60::5"),
            v6("2001:db8:ffff::1"),
            17,
            0,
            &packet::udp(1, 2, &[]),
        ),
    ));
    agent.wait_intervals(agent.read().counters.len() + 2, Duration::from_secs(10));
    let out = agent.read();
    assert!(out.flows.len() > before);
    let r = one(&out, "10.60.7.9", "10.60.200.1");
    assert_eq!(r["packets"], 3);
    assert_eq!(
        (r["as_src"].as_u64(), r["as_dst"].as_u64()),
        (Some(64503), Some(64502)),
        "{r}"
    );
    assert_eq!(
        (r["net_src"].as_str(), r["mask_src"].as_u64()),
        (Some("10.60.7.0"), Some(24)),
        "{r}"
    );
    assert_eq!(
        (r["net_dst"].as_str(), r["mask_dst"].as_u64()),
        (Some("10.60.0.0"), Some(16)),
        "{r}"
    );
    assert_eq!(r["peer_as_dst"], 64501, "{r}");
    // The peer-source-AS map wins over the path, interface and MAC first.
    assert_eq!(r["mac_src"], GEN_MAC, "{r}");
    assert_eq!(r["peer_as_src"], 64555, "{r}");
    let other = one(&out, "10.60.7.10", "10.60.200.1");
    assert_eq!(other["mac_src"], "02:00:00:00:00:09", "{other}");
    assert_eq!(other["peer_as_src"], 64501, "{other}");
    assert_eq!(r["bgp_nexthop"], "192.0.2.1", "{r}");
    assert_eq!(r["as_path"], "64501_64502", "{r}");
    assert_eq!(r["comms"], "65000:100", "{r}");
    let r6 = one(&out, "2001:db8:60::5", "2001:db8:ffff::1");
    assert_eq!(
        (r6["as_src"].as_u64(), r6["mask_src"].as_u64()),
        (Some(64530), Some(48)),
        "{r6}"
    );
    // Nothing covers the destination.
    assert_eq!(
        (r6["as_dst"].as_u64(), r6["mask_dst"].as_u64()),
        (Some(0), Some(0)),
        "{r6}"
    );
    assert_eq!(r6["net_dst"], "::", "{r6}");

    // Withdraw the /24 and change the /16's origin: the next intervals follow.
    bird.reconfigure(&bird_config(TABLE_CHANGED));
    wait_for_as_src(&agent, &sender, "10.60.7.9", "10.61.3.3", 64599);
    let out = agent.stop();
    let last = out
        .flows
        .iter()
        .rev()
        .find(|f| f["ip_src"] == "10.60.7.9")
        .unwrap();
    assert_eq!(
        (last["net_src"].as_str(), last["mask_src"].as_u64()),
        (Some("10.60.0.0"), Some(16)),
        "{last}"
    );
    drop(bird);
}
