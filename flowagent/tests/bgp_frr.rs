//! The same routes as `bgp_bird.rs`, from FRR's bgpd, give the same
//! lookups; a withdrawal and a changed path are reflected.

mod common;

use common::{Agent, Frr, assert_reference_table, route, wait_for};

fn config(agent_port: u16) -> String {
    format!(
        r#"frr defaults traditional
hostname flowagent-test
log stdout informational
!
router bgp 65001
 bgp router-id 192.0.2.3
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 127.0.0.1 remote-as 65000
 neighbor 127.0.0.1 port {agent_port}
 neighbor 127.0.0.1 ebgp-multihop 2
 neighbor 127.0.0.1 timers connect 1
 neighbor 127.0.0.1 timers 10 30
 !
 address-family ipv4 unicast
  network 10.0.0.0/16 route-map SET16
  network 10.0.5.0/24 route-map SET24
  neighbor 127.0.0.1 activate
  neighbor 127.0.0.1 route-map NH4 out
 exit-address-family
 !
 address-family ipv6 unicast
  network 2001:db8:100::/48 route-map SET48
  network 2001:db8:100:5::/64 route-map SET64
  neighbor 127.0.0.1 activate
  neighbor 127.0.0.1 route-map NH6 out
 exit-address-family
!
route-map SET16 permit 10
 set as-path prepend 65010
 set community 65001:100
 set large-community 65001:1:2
!
route-map SET16B permit 10
 set as-path prepend 65011
!
route-map SET24 permit 10
 set as-path prepend 65020 65021
!
route-map SET48 permit 10
 set as-path prepend 65030
!
route-map SET64 permit 10
 set as-path prepend 65040
!
route-map NH4 permit 10
 set ip next-hop 192.0.2.1
!
route-map NH6 permit 10
 set ipv6 next-hop global 2001:db8::1
!
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_ebgp_same_results_as_bird() {
    if !Frr::available() {
        return;
    }
    let agent_port = 17926;
    let agent = Agent::start(agent_port, 65000, &[("127.0.0.1", 65001)]).await;
    let frr = Frr::start("ebgp", &config(agent_port));
    wait_for(30, "4 routes from FRR", || agent.counts() == (2, 2)).await;

    assert_reference_table(&agent);

    // Withdraw the /24, change the /16's path.
    tokio::task::block_in_place(|| {
        frr.configure(&[
            "router bgp 65001",
            "address-family ipv4 unicast",
            "no network 10.0.5.0/24",
            "network 10.0.0.0/16 route-map SET16B",
        ])
    });
    wait_for(20, "the /24 withdrawn and the /16 changed", || {
        agent.route("10.0.5.9").map(|r| r.path) == Some(vec![65001, 65011])
    })
    .await;
    assert_eq!(
        agent.route("10.0.5.9"),
        Some(route("10.0.0.0/16", &[65001, 65011], "192.0.2.1"))
    );
    assert_eq!(agent.counts(), (1, 2));
    drop(frr);
    wait_for(20, "routes dropped after FRR stopped", || {
        agent.counts() == (0, 0)
    })
    .await;
    agent.stop().await;
}
