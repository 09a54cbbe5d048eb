//! Helpers for the BGP integration tests: an in-process speaker and a real
//! BIRD 2 started with its own config and control socket in a temp dir,
//! killed on drop.

#![allow(
    dead_code,
    missing_docs,
    reason = "shared by several test binaries, each using a different subset"
)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowagent::{
    bgp::{NeighborConfig, Speaker, SpeakerConfig, Status},
    rib::RibHandle,
};
use tokio_util::sync::CancellationToken;

/// A running speaker; cancelled on drop.
pub struct Agent {
    pub rib: RibHandle,
    pub status: Status,
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub async fn start(port: u16, local_as: u32, neighbors: &[(&str, u32)]) -> Agent {
        Self::start_with(port, local_as, neighbors, 2_000_000).await
    }

    pub async fn start_with(
        port: u16,
        local_as: u32,
        neighbors: &[(&str, u32)],
        max_prefixes: usize,
    ) -> Agent {
        let config = SpeakerConfig {
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            local_as,
            router_id: Ipv4Addr::new(192, 0, 2, 250),
            hold_time: 30,
            neighbors: neighbors
                .iter()
                .map(|(a, asn)| NeighborConfig {
                    address: a.parse().unwrap(),
                    asn: *asn,
                    active: false,
                    port: 179,
                })
                .collect(),
            max_prefixes,
        };
        Self::start_cfg(config).await
    }

    pub async fn start_cfg(config: SpeakerConfig) -> Agent {
        let rib = RibHandle::default();
        let speaker = Speaker::bind(config, rib.clone()).await.unwrap();
        let addr = speaker
            .local_addr()
            .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
        let status = speaker.status();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(speaker.run(cancel.clone()));
        Agent {
            rib,
            status,
            addr,
            cancel,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// (matched prefix, flat AS path, next hop, communities, large communities, local pref).
    pub fn route(&self, ip: &str) -> Option<Route> {
        let view = self.rib.read();
        view.bgp(ip.parse().unwrap()).map(|(p, a)| Route {
            prefix: p.to_string(),
            path: a.flat_path().collect(),
            next_hop: a.next_hop.map(|n| n.to_string()),
            communities: a.communities.clone(),
            large: a.large_communities.clone(),
            local_pref: a.local_pref,
        })
    }

    pub fn counts(&self) -> (usize, usize) {
        self.rib.read().bgp_len()
    }

    pub fn state(&self, neighbor: &str) -> &'static str {
        self.status.snapshot()[&neighbor.parse::<IpAddr>().unwrap()].state
    }

    pub fn paths(&self, neighbor: &str) -> usize {
        self.status.snapshot()[&neighbor.parse::<IpAddr>().unwrap()].paths
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub path: Vec<u32>,
    pub next_hop: Option<String>,
    pub communities: Vec<u32>,
    pub large: Vec<[u32; 3]>,
    pub local_pref: Option<u32>,
}

/// A route with no communities and no LOCAL_PREF.
pub fn route(prefix: &str, path: &[u32], nh: &str) -> Route {
    Route {
        prefix: prefix.into(),
        path: path.to_vec(),
        next_hop: Some(nh.into()),
        communities: vec![],
        large: vec![],
        local_pref: None,
    }
}

/// The lookups every peer's copy of the reference table must give (BIRD,
/// GoBGP and FRR announce the same routes): the /24 inside the /16 with
/// its own origin, communities on the /16, an IPv6 /64 inside a /48, and
/// nothing for uncovered addresses.
pub fn assert_reference_table(agent: &Agent) {
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
    assert_eq!(agent.route("2001:db8:101::1"), None);
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A BIRD 2 daemon with its own directory, config and control socket.
pub struct Bird {
    child: Option<Child>,
    dir: PathBuf,
}

impl Bird {
    /// Whether the `bird` binary is there; tests skip (loudly) without it
    /// unless FLOWAGENT_REQUIRE_PEERS=1.
    pub fn available() -> bool {
        let ok = Command::new("bird").arg("--version").output().is_ok();
        if !ok {
            assert!(
                std::env::var_os("FLOWAGENT_REQUIRE_PEERS").is_none(),
                "bird is not installed (apt-get install bird2)"
            );
            eprintln!("SKIPPED: bird is not installed (apt-get install bird2)");
        }
        ok
    }

    pub fn start(name: &str, config: &str) -> Bird {
        let dir =
            std::env::temp_dir().join(format!("flowagent-bird-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Bird { child: None, dir };
        b.write_config(config);
        b.spawn();
        b
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    fn write_config(&self, config: &str) {
        std::fs::write(self.conf(), config).unwrap();
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("bird.log")).unwrap();
        let child = Command::new("bird")
            .arg("-f")
            .arg("-c")
            .arg(self.conf())
            .arg("-s")
            .arg(self.sock())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Replaces the config and tells BIRD to reload it.
    pub fn reconfigure(&self, config: &str) {
        self.write_config(config);
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.sock())
            .arg("configure")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Reconfigured") || text.contains("Reconfiguration in progress"),
            "birdc configure: {text}"
        );
    }

    /// SIGKILL, no goodbye: the agent sees the TCP connection drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.sock());
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GoBGP daemon (`gobgpd`) with its own config and API port, killed on drop.
pub struct Gobgp {
    child: Option<Child>,
    dir: PathBuf,
    api: String,
}

impl Gobgp {
    pub fn available() -> bool {
        let ok = Command::new("gobgpd").arg("--version").output().is_ok()
            && Command::new("gobgp").arg("--version").output().is_ok();
        if !ok {
            assert!(
                std::env::var_os("FLOWAGENT_REQUIRE_PEERS").is_none(),
                "gobgpd is not installed (apt-get install gobgpd)"
            );
            eprintln!("SKIPPED: gobgpd is not installed (apt-get install gobgpd)");
        }
        ok
    }

    pub fn start(name: &str, config: &str, api_port: u16) -> Gobgp {
        let dir =
            std::env::temp_dir().join(format!("flowagent-gobgp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gobgpd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("gobgpd.log")).unwrap();
        let api = format!("127.0.0.1:{api_port}");
        let child = Command::new("gobgpd")
            .arg("-f")
            .arg(dir.join("gobgpd.toml"))
            .arg("--api-hosts")
            .arg(&api)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Gobgp {
            child: Some(child),
            dir,
            api,
        }
    }

    /// Runs `gobgp <args>` against this daemon's API (retrying while it starts).
    pub fn cli(&self, args: &[&str]) {
        let (host, port) = self.api.split_once(':').unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("gobgp")
                .args(["-u", host, "-p", port])
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < end,
                "gobgp {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gobgpd.log")).unwrap_or_default()
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An FRR `bgpd` alone (no zebra, no kernel, no listener) with its own
/// config, pid file and vty socket directory, killed on drop.
pub struct Frr {
    child: Option<Child>,
    dir: PathBuf,
}

/// Where Debian puts the FRR daemons.
const BGPD: &str = "/usr/lib/frr/bgpd";

impl Frr {
    pub fn available() -> bool {
        let ok = std::path::Path::new(BGPD).exists()
            && Command::new("vtysh").arg("--help").output().is_ok();
        if !ok {
            assert!(
                std::env::var_os("FLOWAGENT_REQUIRE_PEERS").is_none(),
                "FRR is not installed (apt-get install frr)"
            );
            eprintln!("SKIPPED: FRR is not installed (apt-get install frr)");
        }
        ok
    }

    pub fn start(name: &str, config: &str) -> Frr {
        let dir = std::env::temp_dir().join(format!("flowagent-frr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bgpd.conf"), config).unwrap();
        let log = std::fs::File::create(dir.join("bgpd.log")).unwrap();
        let child = Command::new(BGPD)
            .arg("-f")
            .arg(dir.join("bgpd.conf"))
            .arg("-i")
            .arg(dir.join("bgpd.pid"))
            .arg("-z")
            .arg(dir.join("zserv.api"))
            .arg("--vty_socket")
            .arg(&dir)
            .args(["-Z", "-n", "-S", "-p", "0", "-P", "0", "--log", "stdout"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Frr {
            child: Some(child),
            dir,
        }
    }

    /// Runs configuration commands through vtysh (retrying while bgpd starts).
    pub fn configure(&self, commands: &[&str]) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cmd = Command::new("vtysh");
            cmd.arg("--vty_socket")
                .arg(&self.dir)
                .args(["-d", "bgpd", "-c", "configure terminal"]);
            for c in commands {
                cmd.args(["-c", c]);
            }
            let out = cmd.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && !text.contains('%') {
                return;
            }
            assert!(Instant::now() < end, "vtysh {commands:?}: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bgpd.log")).unwrap_or_default()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// xorshift64*, deterministic: generated tables are the same every run.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
