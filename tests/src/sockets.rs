//! Traffic from real UDP and TCP sockets, for what only the kernel's own
//! stack produces: GSO super-packets. A UDP socket with `UDP_SEGMENT` and a
//! TCP socket on a TSO-capable device (veth is one) hand the device one skb
//! that stands for many wire packets; veth passes it on to its peer whole,
//! so TC on either end sees one skb with `gso_segs` packets in it, as TC
//! ingress sees GRO-merged packets from a NIC.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::mpsc,
};

use crate::netns::in_netns;

/// SOL_UDP's UDP_SEGMENT (linux/udp.h): the GSO segment size of sends.
const UDP_SEGMENT: libc::c_int = 103;

/// From namespace `ns`, sends `sends` datagrams of `len` payload bytes to
/// `dst`, each as one GSO skb of `segment`-byte segments (the last one
/// shorter when `segment` does not divide `len`).
pub fn udp_gso(ns: &str, dst: SocketAddr, segment: u16, len: usize, sends: usize) {
    in_netns(ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(bind).expect("bind UDP");
        let size = segment as libc::c_int;
        // SAFETY: setsockopt with a valid fd and an int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                UDP_SEGMENT,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        let payload = vec![0x5a; len];
        for _ in 0..sends {
            let sent = socket.send_to(&payload, dst).expect("send UDP GSO");
            assert_eq!(sent, len);
        }
    });
}

/// TCP segments sent and retransmitted by namespace `ns` so far
/// (`Tcp: OutSegs` + `RetransSegs` of its /proc/net/snmp): every segment the
/// stack put on the wire, counted per wire packet even when TSO sends
/// many as one skb.
pub fn tcp_segments_sent(ns: &str) -> u64 {
    in_netns(ns, || {
        // thread-self: /proc/self/net would be the netns of the main thread.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let field = |name: &str| -> u64 {
            let at = names.split_whitespace().position(|n| n == name).unwrap();
            values.split_whitespace().nth(at).unwrap().parse().unwrap()
        };
        field("OutSegs") + field("RetransSegs")
    })
}

/// Opens a TCP connection from namespace `client_ns` to a listener on
/// `server` in `server_ns`, writes `bytes` bytes, closes, and returns once
/// the server has read them all and closed its end too.
pub fn tcp_transfer(client_ns: &str, server_ns: &str, server: SocketAddr, bytes: usize) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server_ns = server_ns.to_owned();
    let reader = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let listener = TcpListener::bind(server).expect("listen");
            ready_tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            conn.read_to_end(&mut got).expect("read");
            got.len()
        })
    });
    ready_rx.recv().expect("listener up");
    in_netns(client_ns, move || {
        let mut conn = TcpStream::connect(server).expect("connect");
        conn.write_all(&vec![0xa5; bytes]).expect("write");
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Wait for the server's FIN, so that every segment of ours,
        // the last ACK included, has been sent when this returns.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("read the server's FIN");
    });
    assert_eq!(reader.join().expect("server thread"), bytes);
}
