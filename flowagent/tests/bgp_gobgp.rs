//! The same routes as `bgp_bird.rs`, from a second implementation (GoBGP),
//! give the same lookups; a withdrawal and a changed path are reflected.

mod common;

use common::{Agent, Gobgp, Route, wait_for};

fn route(prefix: &str, path: &[u32], nh: &str) -> Route {
    Route {
        prefix: prefix.into(),
        path: path.to_vec(),
        next_hop: Some(nh.into()),
        communities: vec![],
        large: vec![],
        local_pref: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_ebgp_same_results_as_bird() {
    if !Gobgp::available() {
        return;
    }
    let (agent_port, api_port) = (17924, 50924);
    let agent = Agent::start(agent_port, 65000, &[("127.0.0.1", 65001)]).await;
    let config = format!(
        r#"
[global.config]
  as = 65001
  router-id = "192.0.2.2"
  port = -1

[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.1"
    peer-as = 65000
  [neighbors.transport.config]
    remote-port = {agent_port}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 30
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 2
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
    );
    let gobgp = Gobgp::start("ebgp", &config, api_port);
    let add = |family: &str, args: &[&str]| {
        let mut a = vec!["global", "rib", "-a", family, "add"];
        a.extend_from_slice(args);
        gobgp.cli(&a);
    };
    add(
        "ipv4",
        &[
            "10.0.0.0/16",
            "nexthop",
            "192.0.2.1",
            "aspath",
            "65010",
            "community",
            "65001:100",
            "large-community",
            "65001:1:2",
        ],
    );
    add(
        "ipv4",
        &[
            "10.0.5.0/24",
            "nexthop",
            "192.0.2.1",
            "aspath",
            "65020,65021",
        ],
    );
    add(
        "ipv6",
        &[
            "2001:db8:100::/48",
            "nexthop",
            "2001:db8::1",
            "aspath",
            "65030",
        ],
    );
    add(
        "ipv6",
        &[
            "2001:db8:100:5::/64",
            "nexthop",
            "2001:db8::1",
            "aspath",
            "65040",
        ],
    );
    wait_for(30, "4 routes from GoBGP", || agent.counts() == (2, 2)).await;

    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.5.0/24", &[65001, 65020, 65021], "192.0.2.1"))
    );
    assert_eq!(
        agent.route("10.0.6.1"),
        Some(Route {
            communities: vec![(65001 << 16) | 100],
            large: vec![[65001, 1, 2]],
            ..route("10.0.0.0/16", &[65001, 65010], "192.0.2.1")
        })
    );
    assert_eq!(
        agent.route("2001:db8:100:5::1"),
        Some(route("2001:db8:100:5::/64", &[65001, 65040], "2001:db8::1"))
    );
    assert_eq!(
        agent.route("2001:db8:100:6::1"),
        Some(route("2001:db8:100::/48", &[65001, 65030], "2001:db8::1"))
    );
    assert_eq!(agent.route("10.1.0.1"), None);

    // Withdraw the /24, change the /16's path.
    gobgp.cli(&["global", "rib", "-a", "ipv4", "del", "10.0.5.0/24"]);
    add(
        "ipv4",
        &["10.0.0.0/16", "nexthop", "192.0.2.1", "aspath", "65011"],
    );
    wait_for(20, "the /24 withdrawn and the /16 changed", || {
        agent.route("10.0.5.9").map(|r| r.path) == Some(vec![65001, 65011])
    })
    .await;
    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.0.0/16", &[65001, 65011], "192.0.2.1"))
    );
    assert_eq!(agent.counts(), (1, 2));
    drop(gobgp);
    wait_for(20, "routes dropped after GoBGP stopped", || {
        agent.counts() == (0, 0)
    })
    .await;
    agent.stop().await;
}
