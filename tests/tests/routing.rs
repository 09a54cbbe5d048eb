//! The flow's other interface on a router: the FIB's egress interface and
//! gateway for ingress flows, the packet's ingress interface at TC egress.
//!
//! ```text
//!  [gen] ga ──── gb [router: agent] gc ──── gd [far]
//!   10.10.1.2    10.10.1.1   10.10.2.1    10.10.2.2
//!                 route 10.20.0.0/16 via 10.10.2.2
//! ```

use std::time::Duration;

use flowagent_tests::{
    agent::{Agent, Output},
    lab::{GEN_MAC, OBS_MAC, quiet_netns},
    netns::{Netns, veth},
    packet::{self, ETH_P_IP, V4Opts, mac, v4},
    send::Sender,
};

struct Router {
    gen_ns: Netns,
    router: Netns,
    _far: Netns,
}

fn router() -> Router {
    let gen_ns = quiet_netns("fibg");
    let router = quiet_netns("fibr");
    let far = quiet_netns("fibf");
    veth(&gen_ns, "ga", GEN_MAC, &router, "gb", OBS_MAC);
    veth(
        &router,
        "gc",
        "02:00:00:00:00:03",
        &far,
        "gd",
        "02:00:00:00:00:04",
    );
    gen_ns.ip(&["addr", "add", "10.10.1.2/24", "dev", "ga"]);
    router.ip(&["addr", "add", "10.10.1.1/24", "dev", "gb"]);
    router.ip(&["addr", "add", "10.10.2.1/24", "dev", "gc"]);
    far.ip(&["addr", "add", "10.10.2.2/24", "dev", "gd"]);
    router.ip(&["route", "add", "10.20.0.0/16", "via", "10.10.2.2"]);
    router.sysctl("net.ipv4.ip_forward", "1");
    Router {
        gen_ns,
        router,
        _far: far,
    }
}

fn to(dst: &str, n: u8) -> Vec<u8> {
    packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.10.1.2"),
            v4(dst),
            17,
            &V4Opts::default(),
            &packet::udp(1000 + n as u16, 53, &[n; 8]),
        ),
    )
}

fn send_three(r: &Router) {
    let sender = Sender::new(r.gen_ns.name(), "ga");
    for (dst, n) in [("10.10.2.2", 1), ("10.20.5.5", 2), ("10.10.1.1", 3)] {
        for _ in 0..3 {
            sender.send(&to(dst, n));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
}

fn one<'a>(out: &'a Output, dst: &str, direction: &str) -> &'a serde_json::Value {
    let recs: Vec<_> = out
        .flows
        .iter()
        .filter(|f| f["ip_dst"] == dst && f["direction"] == direction)
        .collect();
    assert_eq!(recs.len(), 1, "{dst} {direction}: {:#?}", out.flows);
    assert_eq!(recs[0]["packets"], 3, "{}", recs[0]);
    recs[0]
}

#[test]
fn xdp_ingress_flows_carry_the_fib_egress_interface() {
    fib_egress_interface("1024");
}

/// The same through the hash maps (no flow cache), where the FIB is asked
/// after the insert.
#[test]
fn xdp_ingress_flows_in_the_hash_map_carry_the_fib_egress_interface() {
    fib_egress_interface("0");
}

/// Three flows through the router, observed in XDP with `--flow-cache cache`.
fn fib_egress_interface(cache: &str) {
    let r = router();
    let agent = Agent::start(
        &r.router,
        &["--iface", "gb", "--interval", "60", "--flow-cache", cache],
    );
    send_three(&r);
    let out = agent.stop();
    // Connected destination: out of gc, no gateway.
    let direct = one(&out, "10.10.2.2", "ingress");
    assert_eq!(
        (direct["iface_in"].as_str(), direct["iface_out"].as_str()),
        (Some("gb"), Some("gc"))
    );
    assert!(direct.get("peer_ip_dst").is_none(), "{direct}");
    // Routed through a gateway: out of gc via 10.10.2.2.
    let routed = one(&out, "10.20.5.5", "ingress");
    assert_eq!(routed["iface_out"], "gc");
    assert_eq!(routed["peer_ip_dst"], "10.10.2.2");
    // For the router itself: not forwarded, no output interface.
    let local = one(&out, "10.10.1.1", "ingress");
    assert!(local["iface_out"].is_null(), "{local}");
}

#[test]
fn tc_egress_flows_carry_the_ingress_interface() {
    let r = router();
    let agent = Agent::start(
        &r.router,
        &[
            "--iface",
            "gb",
            "--iface",
            "gc",
            "--mode",
            "tc",
            "--direction",
            "both",
            "--interval",
            "60",
        ],
    );
    send_three(&r);
    let out = agent.stop();
    let ingress = one(&out, "10.10.2.2", "ingress");
    assert_eq!(
        (ingress["iface_in"].as_str(), ingress["iface_out"].as_str()),
        (Some("gb"), Some("gc"))
    );
    // The kernel forwarded the packets out of gc: seen at egress there,
    // with gb as their ingress interface.
    let egress = one(&out, "10.10.2.2", "egress");
    assert_eq!(
        (egress["iface_in"].as_str(), egress["iface_out"].as_str()),
        (Some("gb"), Some("gc"))
    );
    assert_eq!(egress["bytes"], ingress["bytes"]);
}
