//! Interfaces that come and go while the agent runs, and a clean exit.

use std::time::Duration;

use flowagent_tests::{
    agent::Agent,
    lab::{GEN_MAC, Lab, OBS_MAC, quiet_netns},
    netns::{exec_output, tcx_program_count, veth},
    packet::{self, ETH_P_IP, V4Opts, mac, v4},
    send::Sender,
};

fn frame(port: u16) -> Vec<u8> {
    packet::eth(
        mac(OBS_MAC),
        mac(GEN_MAC),
        &[],
        ETH_P_IP,
        &packet::ipv4(
            v4("10.8.0.1"),
            v4("10.8.0.2"),
            17,
            &V4Opts::default(),
            &packet::udp(port, 9, &[0; 2]),
        ),
    )
}

/// Programs attached to `iface` in `ns`: XDP (from `ip link`) and tcx
/// ingress and egress (from BPF_PROG_QUERY).
fn attached(ns: &str, iface: &str) -> (bool, u32, u32) {
    let link = exec_output(ns, &["ip", "-d", "link", "show", iface]);
    (
        link.contains("prog/xdp"),
        tcx_program_count(ns, iface, false),
        tcx_program_count(ns, iface, true),
    )
}

/// Neither XDP nor tcx programs nor a clsact qdisc remain in `ns`.
fn assert_nothing_attached(ns: &str, ifaces: &[&str]) {
    for iface in ifaces {
        assert_eq!(
            attached(ns, iface),
            (false, 0, 0),
            "{iface}: programs left behind"
        );
    }
    let links = exec_output(ns, &["ip", "-d", "link", "show"]);
    assert!(!links.contains("prog/xdp"), "XDP left behind:\n{links}");
    let qdiscs = exec_output(ns, &["tc", "qdisc", "show"]);
    assert!(!qdiscs.contains("clsact"), "clsact left behind:\n{qdiscs}");
}

#[test]
fn late_interface_is_attached_and_departed_one_dropped() {
    let gen_ns = quiet_netns("lateg");
    let obs = quiet_netns("lateo");
    let agent = Agent::start(&obs, &["--iface", "late*", "--interval", "1"]);
    assert!(
        agent.log().contains("no interface matches yet"),
        "{}",
        agent.log()
    );

    veth(&gen_ns, "lg", GEN_MAC, &obs, "late0", OBS_MAC);
    agent.wait_log("XDP to late0", Duration::from_secs(10));
    let sender = Sender::new(gen_ns.name(), "lg");
    for _ in 0..10 {
        sender.send(&frame(1));
    }
    // Let one drain take them, then remove the interface under the agent.
    agent.wait_intervals(3, Duration::from_secs(10));
    drop(sender);
    obs.ip(&["link", "del", "late0"]);
    agent.wait_log("detached from ifindex", Duration::from_secs(10));

    // A second interface matching the glob still gets attached afterwards.
    veth(&gen_ns, "lg2", GEN_MAC, &obs, "late1", OBS_MAC);
    agent.wait_log("XDP to late1", Duration::from_secs(10));
    let sender = Sender::new(gen_ns.name(), "lg2");
    for _ in 0..4 {
        sender.send(&frame(2));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.stop();
    assert_eq!(
        out.sum("packets", |f| f["iface_in"] == "late0"),
        10,
        "{:#?}",
        out.flows
    );
    assert_eq!(
        out.sum("packets", |f| f["iface_in"] == "late1"),
        4,
        "{:#?}",
        out.flows
    );
    assert_eq!(out.sum("packets", |_| true), 14);
    assert_nothing_attached(obs.name(), &["late1"]);
}

#[test]
fn exit_leaves_nothing_attached_in_any_mode() {
    for args in [
        &["--mode", "xdp"][..],
        &["--mode", "xdp-generic"][..],
        &["--mode", "tc", "--direction", "both"][..],
    ] {
        let lab = Lab::new("exit");
        let mut full = vec!["--iface", "gb", "--interval", "1"];
        full.extend_from_slice(args);
        let agent = Agent::start(&lab.obs, &full);
        let want = if args.contains(&"tc") {
            (false, 1, 1)
        } else {
            (true, 0, 0)
        };
        assert_eq!(attached(lab.obs.name(), "gb"), want, "{args:?}");
        let sender = Sender::new(lab.gen_ns.name(), "ga");
        sender.send(&frame(3));
        std::thread::sleep(Duration::from_millis(100));
        let out = agent.stop();
        assert_eq!(out.sum("packets", |_| true), 1, "{args:?}");
        assert_nothing_attached(lab.obs.name(), &["gb"]);
    }
}

/// A bridge has no native XDP. Auto mode attaches TC ingress there, not
/// generic XDP, and native XDP on the veth port under it. A frame for the
/// port's MAC is counted on both: by XDP as it arrives on the port, by TC
/// as the bridge hands it to the host.
#[test]
fn auto_mode_falls_back_to_tc_where_the_driver_has_no_native_xdp() {
    let lab = Lab::new("auto");
    lab.obs.ip(&["link", "add", "br0", "type", "bridge"]);
    lab.obs.ip(&["link", "set", "gb", "master", "br0"]);
    lab.obs.ip(&["link", "set", "br0", "up"]);
    let agent = Agent::start(
        &lab.obs,
        &["--iface", "gb", "--iface", "br0", "--interval", "60"],
    );
    let log = agent.log();
    assert!(log.contains("native XDP to gb"), "{log}");
    assert!(log.contains("no native XDP on br0"), "{log}");
    assert_eq!(attached(lab.obs.name(), "gb"), (true, 0, 0));
    assert_eq!(attached(lab.obs.name(), "br0"), (false, 1, 0));
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    for _ in 0..7 {
        sender.send(&frame(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.stop();
    for iface in ["gb", "br0"] {
        assert_eq!(
            out.sum("packets", |f| f["iface_in"] == iface),
            7,
            "{iface}: {:#?}",
            out.flows
        );
    }
    assert_eq!(out.sum("packets", |_| true), 14, "{:#?}", out.flows);
    assert_nothing_attached(lab.obs.name(), &["gb", "br0"]);
}

#[test]
fn without_iface_the_default_route_interface_is_used_and_sigterm_drains() {
    let lab = Lab::new("dflt");
    lab.obs.ip(&["addr", "add", "10.31.0.1/24", "dev", "gb"]);
    lab.obs
        .ip(&["route", "add", "default", "via", "10.31.0.2", "dev", "gb"]);
    // A second interface without a default route must be left alone.
    lab.obs.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    let agent = Agent::start(&lab.obs, &["--interval", "60"]);
    let log = agent.log();
    assert!(log.contains("XDP to gb"), "{log}");
    assert!(!log.contains("other0"), "{log}");
    let sender = Sender::new(lab.gen_ns.name(), "ga");
    for _ in 0..5 {
        sender.send(&frame(4));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.stop_with(libc::SIGTERM);
    assert_eq!(out.sum("packets", |f| f["iface_in"] == "gb"), 5);
    assert!(out.log.contains("SIGTERM"), "{}", out.log);
}
