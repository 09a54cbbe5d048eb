//! RIB: an Internet-sized table fed over a real BGP session from BIRD, into
//! the agent and, in the same run, into pmacctd's BGP daemon. Figures: time
//! from the session's start to the table complete, the agent's RSS before
//! and after, against BIRD's own RSS and pmacctd's.
//!
//! The table: prefixes drawn with a DFZ-like length mix (IPv4 mostly /24,
//! IPv6 mostly /48), sharing 150k AS paths of 2 to 6 hops (origins skewed
//! as in the DFZ), generated into BIRD static protocols.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::{Rng, report::Figure};
use crate::{
    agent::Agent,
    lab::quiet_netns,
    peers::{Bird, Pmacctd},
};

const SECTION: &str = "RIB";
const AGENT_PORT: u16 = 17917;
const PMACCT_PORT: u16 = 17918;

/// Distinct AS paths in the table. A DFZ view from one peer has about 75k
/// origin ASes, most reached over one path, so prefixes share paths (the
/// in-process rib_scale test assumes 125k attribute sets); 150k errs on the
/// side of more memory. (A first version drew a new path for every prefix,
/// 1.23M distinct attribute sets, and measured 388 MiB: no real table looks
/// like that.)
const DISTINCT_PATHS: usize = 150_000;

/// BIRD static protocols holding `v4` IPv4 and `v6` IPv6 prefixes.
fn table(v4: usize, v6: usize) -> String {
    let mut rng = Rng(0x5eed_f10a);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity((v4 + v6) * 90);
    let pool: Vec<String> = (0..DISTINCT_PATHS)
        .map(|i| {
            let hops = 2 + (rng.next() % 5) as usize;
            let mut p = format!("bgp_path.prepend({});", 64_512 + i as u64);
            for _ in 1..hops {
                let _ = write!(p, " bgp_path.prepend({});", 1000 + rng.next() % 200);
            }
            p
        })
        .collect();
    // Skewed: a few origins announce many prefixes, most a handful.
    let path = |rng: &mut Rng| -> String {
        let r = rng.next();
        let i = ((r % DISTINCT_PATHS as u64) * ((r >> 32) % DISTINCT_PATHS as u64)) as usize
            / DISTINCT_PATHS;
        pool[i].clone()
    };
    out.push_str("protocol static s4 {\n  ipv4;\n");
    while seen.len() < v4 {
        let r = rng.next();
        let len = match r % 100 {
            0..=59 => 24,
            60..=69 => 23,
            70..=79 => 22,
            80..=87 => 21,
            88..=93 => 20,
            _ => 16 + (r >> 8) % 4,
        } as u32;
        // Unicast space outside 0/8, 10/8, 127/8 and 224/3.
        let addr = ((r >> 16) as u32 | 0x0100_0000) & 0xdfff_ffff & !(u32::MAX >> len);
        if addr >> 24 == 10 || addr >> 24 == 127 || !seen.insert((addr, len)) {
            continue;
        }
        let a = std::net::Ipv4Addr::from(addr);
        let _ = writeln!(out, "  route {a}/{len} blackhole {{ {} }};", path(&mut rng));
    }
    out.push_str("}\nprotocol static s6 {\n  ipv6;\n");
    let mut seen6 = std::collections::HashSet::new();
    while seen6.len() < v6 {
        let r = rng.next();
        let len = match r % 100 {
            0..=49 => 48,
            50..=69 => 32,
            70..=79 => 44,
            80..=89 => 40,
            _ => 36,
        } as u32;
        let hi = (0x2001_0000_0000_0000u64 | (r >> 20)) & !(u64::MAX >> len);
        if !seen6.insert((hi, len)) {
            continue;
        }
        let a = std::net::Ipv6Addr::from(((hi as u128) << 64).to_be_bytes());
        let _ = writeln!(out, "  route {a}/{len} blackhole {{ {} }};", path(&mut rng));
    }
    out.push_str("}\n");
    out
}

fn bird_config(statics: &str) -> String {
    let session = |name: &str, port: u16| {
        format!(
            "protocol bgp {name} {{\n  local 127.0.0.1 as 65000;\n  neighbor 127.0.0.1 port {port} as 65000;\n  rr client;\n  hold time 240;\n  connect delay time 1;\n  connect retry time 1;\n  ipv4 {{ import none; export all; next hop address 192.0.2.1; }};\n  ipv6 {{ import none; export all; next hop address 2001:db8::1; }};\n}}\n"
        )
    };
    format!(
        "router id 192.0.2.254;\nlog stderr {{ error, fatal }};\nprotocol device {{ }}\n{statics}{}{}",
        session("agent", AGENT_PORT),
        session("pmacct", PMACCT_PORT)
    )
}

/// Routes BIRD says it exported on protocol `name`.
fn exported(bird: &Bird, name: &str) -> u64 {
    let text = bird.birdc(&format!("show protocols all {name}"));
    text.lines()
        .filter(|l| l.contains("Routes:"))
        .filter_map(|l| {
            l.split(',')
                .find(|p| p.contains("exported"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Bytes BIRD's session socket to the agent still holds unsent or
/// unacknowledged (`ss` Send-Q of the connection to the agent's port);
/// `None` while there is no such connection.
fn bird_send_queue(ns: &str) -> Option<u64> {
    // BIRD connects to the agent, or the agent to BIRD's port 179.
    let filter = format!("( dport = :{AGENT_PORT} or sport = :179 )");
    let out = crate::netns::exec_output(ns, &["ss", "-tnH", "state", "established", &filter]);
    // Recv-Q Send-Q Local:Port Peer:Port
    out.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|q| q.parse().ok())
}

fn agent_routes(socket: &str) -> u64 {
    let out = Command::new(crate::agent::bin())
        .args(["--bgp-socket", socket, "bgp", "routes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "best routes: N IPv4, M IPv6; ..."
    let count = |line: &str, family: &str| -> u64 {
        line.split(',')
            .find(|part| part.contains(family))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(0)
    };
    text.lines()
        .find_map(|l| l.strip_prefix("best routes: "))
        .map(|l| {
            let l = l.split(';').next().unwrap_or("");
            count(l, "IPv4") + count(l, "IPv6")
        })
        .unwrap_or(0)
}

/// The figures.
pub fn run(dir: &Path, quick: bool) -> Vec<Figure> {
    let (n4, n6) = if quick {
        (50_000, 10_000)
    } else {
        (1_000_000, 230_000)
    };
    let total = (n4 + n6) as u64;
    let ns = quiet_netns("br");
    let socket = dir.join("bgp.sock");
    let socket = socket.to_str().unwrap().to_owned();

    let listen = format!("127.0.0.1:{AGENT_PORT}");
    let agent = Agent::start(
        &ns,
        &[
            "--iface",
            "lo",
            "--mode",
            "xdp-generic",
            "--interval",
            "60",
            "--bgp-listen",
            &listen,
            "--local-as",
            "65000",
            "--bgp-router-id",
            "192.0.2.250",
            "--bgp-neighbor",
            "127.0.0.1=65000",
            "--bgp-socket",
            &socket,
            "--grpc-listen",
            "off",
        ],
    );
    // The agent's own memory: its RSS less the BPF maps mapped into it (the
    // flow caches and CPU lines, kernel memory that the mapping makes count
    // in RSS whatever the table).
    let own_rss =
        |agent: &Agent| agent.rss_kib().saturating_sub(agent.bpf_mapped_rss_kib()) as f64 / 1024.0;
    let agent_rss_before = own_rss(&agent);

    let pm_conf = dir.join("pmacctd-bgp.conf");
    std::fs::write(
        &pm_conf,
        format!(
            "daemonize: false\npcap_interface: lo\naggregate: src_as, dst_as\nplugins: print\nprint_output_file: {}/pm.txt\n\
             print_refresh_time: 300\npmacctd_as: bgp\npmacctd_net: bgp\nbgp_daemon: true\nbgp_daemon_ip: 127.0.0.1\n\
             bgp_daemon_port: {PMACCT_PORT}\nbgp_daemon_max_peers: 2\nbgp_agent_map: {}/agent.map\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("agent.map"), "bgp_ip=127.0.0.1 ip=0.0.0.0/0\n").unwrap();
    let pmacct = Pmacctd::start(&ns, &pm_conf);
    let pmacct_rss_before = pmacct.rss_mib();

    eprintln!("bench: generating {n4} IPv4 + {n6} IPv6 routes for BIRD");
    let started = Instant::now();
    let bird = Bird::start(&ns, &bird_config(&table(n4, n6)));
    let deadline = started + Duration::from_secs(if quick { 120 } else { 900 });
    let mut agent_done = None;
    let mut feeder_done = None;
    let mut pmacct_sent = None;
    while agent_done.is_none() || feeder_done.is_none() || pmacct_sent.is_none() {
        assert!(
            Instant::now() < deadline,
            "table not complete: agent {} routes, feeder done: {feeder_done:?}",
            agent_routes(&socket)
        );
        std::thread::sleep(Duration::from_millis(50));
        // The feeder is done when BIRD has exported every route to the
        // agent's session and its socket holds nothing more for the agent:
        // the last UPDATE is in the agent's socket buffer. What follows is
        // the agent's own work.
        if feeder_done.is_none()
            && exported(&bird, "agent") >= total
            && bird_send_queue(ns.name()) == Some(0)
        {
            feeder_done = Some(started.elapsed());
        }
        if agent_done.is_none() && agent_routes(&socket) >= total {
            agent_done = Some(started.elapsed());
        }
        if pmacct_sent.is_none() && exported(&bird, "pmacct") >= total {
            pmacct_sent = Some(started.elapsed());
        }
    }
    // Let pmacctd take in what BIRD has sent.
    std::thread::sleep(Duration::from_secs(3));
    let agent_rss = own_rss(&agent);
    let agent_rss_all = agent.rss_kib() as f64 / 1024.0;
    let bird_rss = crate::procfs::rss_kib(bird.pid()) as f64 / 1024.0;
    let pmacct_rss = pmacct.rss_mib();
    let agent_done = agent_done.unwrap().as_secs_f64();
    // Both are seen at a poll: the agent may be seen complete a poll before
    // the feeder is seen done, so the difference is clamped at zero.
    let after_feeder = (agent_done - feeder_done.unwrap().as_secs_f64()).max(0.0);
    let conditions = format!(
        "{n4} IPv4 + {n6} IPv6 prefixes, DFZ-like lengths, {DISTINCT_PATHS} distinct 2-6 hop AS paths, from BIRD 2 over iBGP on loopback (rr client); time includes BIRD parsing its config"
    );
    drop(agent);
    pmacct.stop();
    drop(bird);
    vec![
        Figure {
            section: SECTION,
            name: "agent RSS with the table, less the mapped BPF maps".into(),
            value: agent_rss,
            unit: "MiB",
            baseline: Some((
                "pmacctd (all processes) with the same table".into(),
                pmacct_rss,
            )),
            target: (!quick).then(|| ("<= 150 MB".to_owned(), agent_rss * 1.048_576 <= 150.0)),
            samples: vec![agent_rss],
            conditions: format!(
                "{conditions}; agent RSS before the table {agent_rss_before:.1} MiB, pmacctd before {pmacct_rss_before:.1} MiB; the agent's flow caches and CPU lines are mapped into it (kernel memory, anon_inode:bpf-map in /proc/PID/smaps) and left out"
            ),
        },
        Figure {
            section: SECTION,
            name: "agent RSS with the table, as ps shows it".into(),
            value: agent_rss_all,
            unit: "MiB",
            baseline: None,
            target: None,
            samples: vec![agent_rss_all],
            conditions: format!(
                "{conditions}; includes the flow caches mapped into the agent (default --flow-cache), which are kernel memory present whatever the table"
            ),
        },
        Figure {
            section: SECTION,
            name: "BIRD RSS with the table".into(),
            value: bird_rss,
            unit: "MiB",
            baseline: None,
            target: None,
            samples: vec![bird_rss],
            conditions: conditions.clone(),
        },
        Figure {
            section: SECTION,
            name: "table complete in the agent after the feeder's last update".into(),
            value: after_feeder,
            unit: "s",
            baseline: None,
            target: Some(("<= 10 s".into(), after_feeder <= 10.0)),
            samples: vec![after_feeder],
            conditions: format!(
                "{conditions}; feeder done = BIRD reports every route exported to the agent and its socket's send queue is empty (`ss` and `birdc`), both polled about every 0.1 s, so values under 0.1 s mean within one poll"
            ),
        },
        Figure {
            section: SECTION,
            name: "table complete in the agent, from BIRD's start".into(),
            value: agent_done,
            unit: "s",
            baseline: Some((
                "BIRD done sending to pmacctd".into(),
                pmacct_sent.unwrap().as_secs_f64(),
            )),
            target: None,
            samples: vec![agent_done],
            conditions,
        },
    ]
}
