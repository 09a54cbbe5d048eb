//! Raw Ethernet frames in and out of a namespace.
//!
//! An AF_PACKET socket belongs to the network namespace it was created in,
//! whichever thread uses it later; so a short-lived thread enters the
//! namespace with setns(2) (namespaces are per-thread), creates and binds the
//! socket, and hands the fd back. Frames go out exactly as built.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// ETH_P_ALL, for receiving every frame.
const ETH_P_ALL: u16 = 0x0003;

fn socket_in(ns: &str, iface: &str, protocol: u16) -> OwnedFd {
    let ns_path = format!("/var/run/netns/{ns}");
    let iface = iface.to_owned();
    std::thread::spawn(move || -> Result<OwnedFd, String> {
        let ns = File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
        // SAFETY: setns on this short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let name = CString::new(iface.clone()).unwrap();
        // SAFETY: plain libc calls with valid arguments.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(format!("no interface {iface}"));
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol.to_be() as i32);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_protocol = protocol.to_be();
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(format!("bind: {}", std::io::Error::last_os_error()));
            }
            Ok(fd)
        }
    })
    .join()
    .expect("socket thread")
    .unwrap_or_else(|e| panic!("raw socket on {}: {e}", "interface"))
}

/// Sends raw frames out of one interface of one namespace.
pub struct Sender {
    fd: OwnedFd,
}

impl Sender {
    /// A sender on `iface` in namespace `ns`.
    pub fn new(ns: &str, iface: &str) -> Self {
        // Protocol 0: send only, receive nothing.
        Sender {
            fd: socket_in(ns, iface, 0),
        }
    }

    /// Sends one frame, panicking if the kernel refuses it.
    pub fn send(&self, frame: &[u8]) {
        if let Err(e) = self.try_send(frame) {
            panic!("send of {} bytes failed: {e}", frame.len());
        }
    }

    /// Sends one frame.
    pub fn try_send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: valid socket and buffer.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert_eq!(rc, frame.len() as isize, "short send");
        Ok(())
    }

    /// Sends `frame` `count` times, `gap` apart.
    pub fn send_paced(&self, frame: &[u8], count: usize, gap: Duration) {
        let start = Instant::now();
        for i in 0..count {
            self.send(frame);
            let due = start + gap * (i as u32 + 1);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
}

/// PACKET_VNET_HDR (linux/if_packet.h): frames carry a virtio-net header.
const PACKET_VNET_HDR: libc::c_int = 15;

/// Sends frames whose skb holds only their first bytes in its linear part
/// and the rest in page fragments, as header-split NIC drivers and the
/// local TCP stack deliver them: through an AF_PACKET socket with
/// PACKET_VNET_HDR, whose header's `hdr_len` says how many bytes go into
/// the linear part. The kernel honours it for frames of at least a page
/// (smaller ones it makes linear), so the link needs a jumbo MTU.
pub struct SplitSender {
    fd: OwnedFd,
}

impl SplitSender {
    /// A sender on `iface` in namespace `ns`.
    pub fn new(ns: &str, iface: &str) -> Self {
        let fd = socket_in(ns, iface, 0);
        let on: libc::c_int = 1;
        // SAFETY: valid socket, option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "PACKET_VNET_HDR: {}",
            std::io::Error::last_os_error()
        );
        SplitSender { fd }
    }

    /// Sends `frame` (at least 4096 bytes) with only its first `linear`
    /// bytes in the skb's linear part.
    pub fn send(&self, frame: &[u8], linear: u16) {
        assert!(
            frame.len() >= 4096,
            "the kernel makes smaller frames linear"
        );
        // struct virtio_net_hdr: flags, gso_type (none), hdr_len, gso_size,
        // csum_start, csum_offset; little-endian on this host.
        let mut buf = vec![0u8; 10];
        buf[2..4].copy_from_slice(&linear.to_le_bytes());
        buf.extend_from_slice(frame);
        // SAFETY: valid socket and buffer.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
            )
        };
        assert_eq!(
            rc,
            buf.len() as isize,
            "send of a split frame: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Receives every frame arriving on one interface of one namespace.
pub struct Receiver {
    fd: OwnedFd,
}

impl Receiver {
    /// A receiver on `iface` in namespace `ns`.
    pub fn new(ns: &str, iface: &str) -> Self {
        Receiver {
            fd: socket_in(ns, iface, ETH_P_ALL),
        }
    }

    /// Frames received (incoming only) until `quiet` passes without one.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        let tv = libc::timeval {
            tv_sec: quiet.as_secs() as libc::time_t,
            tv_usec: quiet.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setting a receive timeout on our own socket.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: out-parameters sized correctly.
            let (n, incoming) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                );
                (n, from.sll_pkttype != libc::PACKET_OUTGOING)
            };
            if n < 0 {
                return frames;
            }
            if incoming {
                frames.push(buf[..n as usize].to_vec());
            }
        }
    }
}
