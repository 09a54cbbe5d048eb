//! The same routes as `bgp_bird.rs`, from a second implementation (GoBGP),
//! give the same lookups; a withdrawal and a changed path are reflected.

mod common;

use common::{Agent, Gobgp, assert_reference_table, route, wait_for};

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

    assert_reference_table(&agent);

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
