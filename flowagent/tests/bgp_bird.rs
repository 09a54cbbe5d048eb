//! The speaker against a real BIRD 2 over loopback: eBGP and iBGP, IPv4 and
//! IPv6, longest-prefix lookups, changed and withdrawn routes, a killed and
//! restarted peer, and a generated 100k-prefix table checked against an
//! independent reference.

mod common;

use std::collections::HashMap;

use common::{Agent, Bird, Rng, Route, assert_reference_table, route, wait_for};

fn ebgp_config(bird_port: u16, agent_port: u16, statics: &str) -> String {
    format!(
        r#"
log stderr all;
router id 192.0.2.1;
protocol device {{}}
{statics}
protocol bgp agent {{
  local 127.0.0.1 port {bird_port} as 65001;
  neighbor 127.0.0.1 port {agent_port} as 65000;
  multihop;
  hold time 30;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import none; export all; next hop address 192.0.2.1; }};
  ipv6 {{ import none; export all; next hop address 2001:db8::1; }};
}}
"#
    )
}

const STATICS: &str = r#"
protocol static s4 {
  ipv4;
  route 10.0.0.0/16 blackhole { bgp_path.prepend(65010); bgp_community.add((65001,100)); bgp_large_community.add((65001,1,2)); };
  route 10.0.5.0/24 blackhole { bgp_path.prepend(65021); bgp_path.prepend(65020); };
}
protocol static s6 {
  ipv6;
  route 2001:db8:100::/48 blackhole { bgp_path.prepend(65030); };
  route 2001:db8:100:5::/64 blackhole { bgp_path.prepend(65040); };
}
"#;

/// The /24 removed and the /16's path changed.
const STATICS_CHANGED: &str = r#"
protocol static s4 {
  ipv4;
  route 10.0.0.0/16 blackhole { bgp_path.prepend(65011); };
}
protocol static s6 {
  ipv6;
  route 2001:db8:100::/48 blackhole { bgp_path.prepend(65030); };
  route 2001:db8:100:5::/64 blackhole { bgp_path.prepend(65040); };
}
"#;

/// Runs `flowagent --bgp-socket SOCKET bgp routes [QUERY]`, returns stdout.
async fn bgp_routes(socket: &std::path::Path, query: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowagent"));
    cmd.arg("--bgp-socket").arg(socket).args(["bgp", "routes"]);
    if let Some(q) = query {
        cmd.arg(q);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_ebgp_routes_changes_and_restart() {
    if !Bird::available() {
        return;
    }
    let (agent_port, bird_port) = (17921, 18921);
    let agent = Agent::start(agent_port, 65000, &[("127.0.0.1", 65001)]).await;
    let mut bird = Bird::start("ebgp", &ebgp_config(bird_port, agent_port, STATICS));
    wait_for(30, "4 routes from BIRD", || agent.counts() == (2, 2)).await;
    assert_eq!(agent.state("127.0.0.1"), "established");

    // Longest prefix: the /24 inside the /16 has its own origin.
    assert_reference_table(&agent);

    // `flowagent bgp routes` against the agent's socket.
    let socket =
        std::env::temp_dir().join(format!("flowagent-bgp-test-{}.sock", std::process::id()));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(flowagent::bgp::control::serve(
        socket.clone(),
        agent.status.clone(),
        agent.rib.clone(),
        stop.clone(),
    ));
    wait_for(5, "the control socket", || socket.exists()).await;
    assert_eq!(
        bgp_routes(&socket, Some("10.0.5.9")).await,
        "10.0.5.0/24 via 192.0.2.1 from 127.0.0.1 path [65001 65020 65021] origin i local_pref - med - communities []\n"
    );
    let summary = bgp_routes(&socket, None).await;
    assert!(summary.contains(" 65001 established "), "{summary}");
    assert!(
        summary.ends_with("best routes: 2 IPv4, 2 IPv6; networks file: 0 prefixes\n"),
        "{summary}"
    );
    stop.cancel();

    // Withdrawal and changed path.
    bird.reconfigure(&ebgp_config(bird_port, agent_port, STATICS_CHANGED));
    wait_for(20, "the /24 withdrawn and the /16 changed", || {
        agent.route("10.0.5.9").map(|r| r.path) == Some(vec![65001, 65011])
    })
    .await;
    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.0.0/16", &[65001, 65011], "192.0.2.1"))
    );
    assert_eq!(agent.counts(), (1, 2));

    // Peer killed: its routes go; restarted: they come back.
    bird.kill();
    wait_for(20, "routes dropped after the peer died", || {
        agent.counts() == (0, 0)
    })
    .await;
    assert_eq!(agent.state("127.0.0.1"), "idle");
    bird.restart();
    wait_for(30, "routes back after the restart", || {
        agent.counts() == (1, 2)
    })
    .await;
    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.0.0/16", &[65001, 65011], "192.0.2.1"))
    );
    agent.stop().await;
}

/// The agent connects (BIRD is passive), no listener at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connects_actively_to_a_passive_bird() {
    if !Bird::available() {
        return;
    }
    let bird_port = 18925;
    let agent = Agent::start_cfg(flowagent::bgp::SpeakerConfig {
        listen: None,
        local_as: 65000,
        router_id: "192.0.2.250".parse().unwrap(),
        hold_time: 30,
        neighbors: vec![flowagent::bgp::NeighborConfig {
            address: "127.0.0.1".parse().unwrap(),
            asn: 65001,
            active: true,
            port: bird_port,
        }],
        max_prefixes: 1000,
    })
    .await;
    let config =
        ebgp_config(bird_port, 1, STATICS).replace("multihop;", "multihop;\n  passive on;");
    let _bird = Bird::start("passive", &config);
    wait_for(30, "4 routes from the passive BIRD", || {
        agent.counts() == (2, 2)
    })
    .await;
    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.5.0/24", &[65001, 65020, 65021], "192.0.2.1"))
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_ibgp_route_reflector_client() {
    if !Bird::available() {
        return;
    }
    let (agent_port, bird_port) = (17922, 18922);
    let agent = Agent::start(agent_port, 65000, &[("127.0.0.1", 65000)]).await;
    let config = format!(
        r#"
log stderr all;
router id 192.0.2.1;
protocol device {{}}
protocol static s4 {{
  ipv4;
  route 198.51.100.0/24 blackhole {{ bgp_local_pref = 200; bgp_path.prepend(64999); }};
  route 198.51.0.0/16 blackhole;
}}
# A second path for the /24, sent alongside with ADD-PATH.
protocol static s4b {{
  ipv4;
  route 198.51.100.0/24 blackhole {{ bgp_path.prepend(64997); bgp_path.prepend(64998); }};
}}
protocol bgp agent {{
  local 127.0.0.1 port {bird_port} as 65000;
  neighbor 127.0.0.1 port {agent_port} as 65000;
  rr client;
  hold time 30;
  connect delay time 1;
  connect retry time 1;
  ipv4 {{ import none; export all; next hop address 192.0.2.1; add paths tx; }};
}}
"#
    );
    let _bird = Bird::start("ibgp", &config);
    // Two prefixes, three paths (ADD-PATH); the LOCAL_PREF 200 one is best.
    wait_for(30, "3 paths from BIRD", || agent.paths("127.0.0.1") == 3).await;
    assert_eq!(agent.counts(), (2, 0));
    assert_eq!(
        agent.route("198.51.100.7"),
        Some(Route {
            local_pref: Some(200),
            ..route("198.51.100.0/24", &[64999], "192.0.2.1")
        })
    );
    // Locally originated in the same AS: empty path, BIRD's default LOCAL_PREF.
    assert_eq!(
        agent.route("198.51.7.7"),
        Some(Route {
            local_pref: Some(100),
            ..route("198.51.0.0/16", &[], "192.0.2.1")
        })
    );
    agent.stop().await;
}

/// 100k+ generated IPv4 prefixes (lengths 12 to 28, nested at random) in
/// BIRD, each with an origin AS; 200k lookups compared with a per-length
/// hash-map reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_generated_100k_table() {
    if !Bird::available() {
        return;
    }
    let (agent_port, bird_port) = (17923, 18923);
    let agent = Agent::start(agent_port, 65000, &[("127.0.0.1", 65001)]).await;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut by_len: Vec<HashMap<u32, u32>> = vec![HashMap::new(); 33];
    let mut statics = String::from("protocol static gen {\n  ipv4;\n");
    let mut total = 0;
    while total < 110_000 {
        let bits = rng.next();
        let len = 12 + (bits % 17) as u32;
        // Addresses inside 20.0.0.0/6 so prefixes nest often.
        let addr = 0x1400_0000 | ((bits >> 32) as u32 & 0x03ff_ffff);
        let net = addr & (u32::MAX << (32 - len));
        if by_len[len as usize].contains_key(&net) {
            continue;
        }
        let origin = 64_512 + (bits >> 20) as u32 % 1000;
        by_len[len as usize].insert(net, origin);
        statics.push_str(&format!(
            "  route {}/{len} blackhole {{ bgp_path.prepend({origin}); }};\n",
            std::net::Ipv4Addr::from(net)
        ));
        total += 1;
    }
    statics.push_str("}\n");
    let _bird = Bird::start("gen100k", &ebgp_config(bird_port, agent_port, &statics));
    wait_for(120, "110k routes from BIRD", || agent.counts().0 == total).await;
    let mut covered = 0;
    for i in 0..200_000u32 {
        let q = if i % 2 == 0 {
            0x1400_0000 | (rng.next() as u32 & 0x03ff_ffff)
        } else {
            rng.next() as u32
        };
        let expected = (0..=32u32).rev().find_map(|len| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            by_len[len as usize].get(&(q & mask)).map(|o| {
                (
                    format!("{}/{len}", std::net::Ipv4Addr::from(q & mask)),
                    vec![65001, *o],
                )
            })
        });
        let got = agent
            .route(&std::net::Ipv4Addr::from(q).to_string())
            .map(|r| (r.prefix, r.path));
        assert_eq!(got, expected, "query {}", std::net::Ipv4Addr::from(q));
        covered += usize::from(got.is_some());
    }
    assert!(covered > 50_000, "only {covered} queries covered");
    agent.stop().await;
}
