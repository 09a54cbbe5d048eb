//! Userspace-only helpers: `aya::Pod` so aya can read these types from maps,
//! and conversions into std types. Compiled only with the `user` feature, so
//! the eBPF side stays `no_std` without aya.

extern crate std;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{CachedV4, CachedV6, CpuLine, FlowKeyV4, FlowKeyV6, FlowStats};

// SAFETY: all four are `#[repr(C)]`, `Copy`, built only from integers and
// byte arrays with explicit padding, so every bit pattern is a valid value.
unsafe impl aya::Pod for FlowKeyV4 {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKeyV6 {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowStats {}
// SAFETY: as above (sixteen u32, no implicit padding).
unsafe impl aya::Pod for CpuLine {}
// SAFETY: as above (key, explicit padding, stats, explicit padding).
unsafe impl aya::Pod for CachedV4 {}
// SAFETY: as above.
unsafe impl aya::Pod for CachedV6 {}

impl FlowKeyV4 {
    /// Source address.
    pub fn src_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.src))
    }
    /// Destination address.
    pub fn dst_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.dst))
    }
}

impl FlowKeyV6 {
    /// Source address.
    pub fn src_addr(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self.src))
    }
    /// Destination address.
    pub fn dst_addr(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self.dst))
    }
}

impl FlowStats {
    /// The FIB next hop, `None` when the kernel reported none. IPv4 next hops
    /// are stored IPv4-mapped and come back as [`IpAddr::V4`].
    pub fn next_hop_addr(&self) -> Option<IpAddr> {
        if self.next_hop == [0; 16] {
            return None;
        }
        let v6 = Ipv6Addr::from(self.next_hop);
        Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        })
    }
}
