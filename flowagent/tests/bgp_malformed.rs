//! Crafted and malformed messages from hand-driven peers over TCP: each gets
//! its RFC 4271 / RFC 7606 reaction, and another neighbour's session and
//! routes are untouched throughout.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{Agent, wait_for};
use flowagent::bgp::message::{self, Notification};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const ORIGIN_IGP: &[u8] = &[0x40, 1, 1, 0];
const PATH_65001_65010: &[u8] = &[0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0xfe, 0x02];
const NH: &[u8] = &[0x40, 3, 4, 192, 0, 2, 1];

fn update(withdrawn: &[u8], attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
    let attrs = attrs.concat();
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    b.extend_from_slice(nlri);
    message::frame(message::kind::UPDATE, &b)
}

struct Peer {
    s: TcpStream,
}

impl Peer {
    async fn connect(src: &str, agent: SocketAddr) -> Peer {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        Peer {
            s: sock.connect(agent).await.unwrap(),
        }
    }

    /// One message: (type, body); `None` on EOF.
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 19];
        let r = tokio::time::timeout(Duration::from_secs(10), self.s.read_exact(&mut h))
            .await
            .unwrap();
        if r.is_err() {
            return None;
        }
        let len = u16::from_be_bytes([h[16], h[17]]) as usize;
        let mut body = vec![0u8; len - 19];
        self.s.read_exact(&mut body).await.unwrap();
        Some((h[18], body))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn establish(src: &str, agent: SocketAddr, asn: u32) -> Peer {
        let mut p = Peer::connect(src, agent).await;
        assert_eq!(p.read().await.unwrap().0, message::kind::OPEN);
        p.send(&message::encode_open(asn, 30, "10.9.9.9".parse().unwrap()))
            .await;
        p.send(&message::keepalive()).await;
        assert_eq!(p.read().await.unwrap().0, message::kind::KEEPALIVE);
        p
    }

    /// The NOTIFICATION the agent sends (keepalives skipped), then EOF.
    async fn notification(&mut self) -> Notification {
        loop {
            match self.read().await {
                Some((message::kind::NOTIFICATION, body)) => {
                    let n = Notification::decode(&body).unwrap();
                    assert_eq!(self.read().await, None, "connection closed after {n}");
                    return n;
                }
                Some((message::kind::KEEPALIVE, _)) => continue,
                other => panic!("expected a NOTIFICATION, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_their_rfc_reaction() {
    let agent = Agent::start(0, 65000, &[("127.0.0.2", 65001), ("127.0.0.4", 65002)]).await;
    let addr = agent.addr;

    // A well-behaved neighbour whose route must survive everything below.
    let mut good = Peer::establish("127.0.0.4", addr, 65002).await;
    good.send(&update(
        &[],
        &[ORIGIN_IGP, &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea], NH],
        &[24, 192, 0, 2],
    ))
    .await;
    wait_for(10, "the good neighbour's route", || {
        agent.route("192.0.2.9").is_some()
    })
    .await;

    // Header errors: RFC 4271 section 6.1.
    let mut bad_marker = message::keepalive();
    bad_marker[0] = 0xfe;
    let mut bad_length = message::keepalive();
    bad_length[16..18].copy_from_slice(&5000u16.to_be_bytes());
    let mut bad_type = message::keepalive();
    bad_type[18] = 9;
    let unknown_well_known: &[u8] = &[0x40, 99, 1, 0];
    let bad_mp_reach: &[u8] = &[0x80, 14, 5, 0, 2, 1, 16, 0];
    let header_cases: Vec<(&str, Vec<u8>, Notification)> = vec![
        ("bad marker", bad_marker, Notification::new(1, 1, [])),
        (
            "bad length",
            bad_length,
            Notification::new(1, 2, [0x13, 0x88]),
        ),
        ("bad type", bad_type, Notification::new(1, 3, [9])),
        (
            "unknown well-known attribute",
            update(
                &[],
                &[ORIGIN_IGP, PATH_65001_65010, NH, unknown_well_known],
                &[24, 203, 0, 113],
            ),
            Notification::new(3, 2, unknown_well_known),
        ),
        (
            "truncated MP_REACH_NLRI",
            update(&[], &[ORIGIN_IGP, PATH_65001_65010, bad_mp_reach], &[]),
            Notification::new(3, 9, bad_mp_reach),
        ),
        (
            "UPDATE before OPEN is done",
            Vec::new(),
            Notification::new(5, 1, []),
        ),
    ];
    for (name, bytes, expected) in header_cases {
        let mut p = if bytes.is_empty() {
            let mut p = Peer::connect("127.0.0.2", addr).await;
            p.read().await.unwrap();
            p.send(&update(&[], &[], &[])).await;
            p
        } else {
            let mut p = Peer::establish("127.0.0.2", addr, 65001).await;
            p.send(&bytes).await;
            p
        };
        assert_eq!(p.notification().await, expected, "{name}");
        wait_for(10, "the session to be idle", || {
            agent.state("127.0.0.2") == "idle"
        })
        .await;
    }

    // Treat-as-withdraw: the session stays up, the prefix is withdrawn.
    let mut p = Peer::establish("127.0.0.2", addr, 65001).await;
    let valid = update(&[], &[ORIGIN_IGP, PATH_65001_65010, NH], &[24, 203, 0, 113]);
    let truncated_attr: &[u8] = &[0x40, 3, 40, 192, 0, 2, 1];
    let bad_segment: &[u8] = &[0x40, 2, 6, 7, 1, 0, 0, 0xfd, 0xe9];
    for (name, malformed) in [
        (
            "truncated attribute",
            update(
                &[],
                &[ORIGIN_IGP, PATH_65001_65010, truncated_attr],
                &[24, 203, 0, 113],
            ),
        ),
        (
            "AS_PATH with a bad segment type",
            update(&[], &[ORIGIN_IGP, bad_segment, NH], &[24, 203, 0, 113]),
        ),
    ] {
        p.send(&valid).await;
        wait_for(10, "the valid route", || {
            agent.route("203.0.113.1").is_some()
        })
        .await;
        p.send(&malformed).await;
        wait_for(10, name, || agent.route("203.0.113.1").is_none()).await;
        assert_eq!(agent.state("127.0.0.2"), "established", "{name}");
    }
    let treated = agent.status.snapshot()[&"127.0.0.2".parse().unwrap()].treated_as_withdraw;
    assert_eq!(treated, 2);

    // Connections from anywhere else: Cease, Connection Rejected.
    let mut stranger = Peer::connect("127.0.0.3", addr).await;
    assert_eq!(stranger.notification().await, Notification::new(6, 5, []));
    // A second connection from a neighbour with a session: Cease, Collision.
    let mut second = Peer::connect("127.0.0.2", addr).await;
    assert_eq!(second.notification().await, Notification::new(6, 7, []));

    // The good neighbour never noticed.
    assert_eq!(agent.state("127.0.0.4"), "established");
    assert_eq!(agent.route("192.0.2.9").unwrap().path, vec![65002]);
    good.send(&message::keepalive()).await;
    drop(p);
    agent.stop().await;
    // Shutdown says goodbye: Cease, Administrative Shutdown.
    assert_eq!(good.notification().await, Notification::new(6, 2, []));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_limit_closes_the_session_and_drops_its_routes() {
    let agent = Agent::start_with(0, 65000, &[("127.0.0.5", 65001)], 2).await;
    let mut p = Peer::establish("127.0.0.5", agent.addr, 65001).await;
    p.send(&update(
        &[],
        &[ORIGIN_IGP, PATH_65001_65010, NH],
        &[24, 203, 0, 113, 24, 203, 0, 114],
    ))
    .await;
    wait_for(10, "two routes", || agent.counts() == (2, 0)).await;
    p.send(&update(
        &[],
        &[ORIGIN_IGP, PATH_65001_65010, NH],
        &[24, 203, 0, 115],
    ))
    .await;
    assert_eq!(p.notification().await, Notification::new(6, 1, []));
    wait_for(10, "routes dropped", || agent.counts() == (0, 0)).await;
    agent.stop().await;
}
