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

/// What one TCP connection put on the wire, from its own `TCP_INFO`.
#[derive(Debug, Clone, Copy)]
pub struct TcpSent {
    /// Segments sent, retransmissions and pure ACKs included, counted per
    /// wire packet even when TSO sent many as one skb (`tcpi_segs_out`).
    pub segments: u64,
    /// Payload bytes sent, retransmitted ones included (`tcpi_bytes_sent`).
    pub payload: u64,
    /// Segments retransmitted (`tcpi_total_retrans`), for the message of a
    /// failing test: retransmissions are why the payload can exceed what
    /// was written.
    pub retransmitted: u64,
}

/// Opens a TCP connection from namespace `client_ns` to a listener on
/// `server` in `server_ns`, writes `bytes` bytes, closes, and returns once
/// the server has read them all and closed its end too, with what the
/// client sent.
pub fn tcp_transfer(client_ns: &str, server_ns: &str, server: SocketAddr, bytes: usize) -> TcpSent {
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
    let sent = in_netns(client_ns, move || {
        let mut conn = TcpStream::connect(server).expect("connect");
        conn.write_all(&vec![0xa5; bytes]).expect("write");
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Wait for the server's FIN: the kernel ACKs it before waking this
        // read, so every segment of ours has been sent when it returns.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("read the server's FIN");
        tcp_info(&conn)
    });
    assert_eq!(reader.join().expect("server thread"), bytes);
    sent
}

/// The counters of `conn`'s `TCP_INFO` (Linux 4.19 or later for
/// `tcpi_bytes_sent`).
fn tcp_info(conn: &TcpStream) -> TcpSent {
    // SAFETY: tcp_info is plain integers, for which all zeroes is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt with a valid fd writes at most `len` bytes into
    // `info`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let filled = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_retrans);
    assert!(len as usize >= filled, "TCP_INFO too short: {len} bytes");
    TcpSent {
        segments: info.tcpi_segs_out.into(),
        payload: info.tcpi_bytes_sent,
        retransmitted: info.tcpi_total_retrans.into(),
    }
}
