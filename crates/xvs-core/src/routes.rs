//! Next hops: the [`Routes`] the data path asks, and a static table of them (neighbours on the
//! link and a default gateway) that the offline replay and the tests use; the AF_XDP data plane
//! resolves next hops from the kernel instead.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hashbrown::HashMap;

use crate::wire::NextHop;

static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// A routes version no other routes object has had: for [`Routes::version`].
pub fn next_routes_version() -> u64 {
    VERSIONS.fetch_add(1, Relaxed)
}

/// Next-hop resolution, provided by the caller (netlink cache, static neighbours).
pub trait Routes {
    /// How to reach `dst`: egress, MACs, MTU and the local source address of that family.
    fn next_hop(&self, dst: IpAddr) -> Option<NextHop>;

    /// A number that changes whenever an answer of [`Routes::next_hop`] may have changed, and
    /// that no other routes object uses (take them from [`next_routes_version`]).
    /// Workers cache answers while it stays the same ([`crate::hops::HopCache`]). None, the default: answers
    /// are never cached.
    fn version(&self) -> Option<u64> {
        None
    }
}

/// One interface with known neighbours and an optional gateway.
#[derive(Debug, Clone)]
pub struct StaticRoutes {
    ifindex: u32,
    local_mac: [u8; 6],
    mtu: u16,
    /// The box's own address of each family (tunnel sources): IPv4, IPv6.
    src: [Option<IpAddr>; 2],
    neigh: HashMap<IpAddr, [u8; 6]>,
    gateway: Option<[u8; 6]>,
    /// Changes with every change (see [`Routes::version`]).
    version: u64,
}

impl StaticRoutes {
    /// Interface `ifindex` with MAC `local_mac`, the box's own addresses `local_ips` (the first
    /// of each family is the tunnel source) and route MTU `mtu`; no neighbours yet.
    pub fn new(ifindex: u32, local_mac: [u8; 6], local_ips: Vec<IpAddr>, mtu: u16) -> StaticRoutes {
        let first = |v6: bool| local_ips.iter().find(|a| a.is_ipv6() == v6).copied();
        StaticRoutes {
            ifindex,
            local_mac,
            mtu,
            src: [first(false), first(true)],
            neigh: HashMap::new(),
            gateway: None,
            version: next_routes_version(),
        }
    }

    /// Reach `addr` on the link at `mac` (replacing what was known of it).
    pub fn add_neighbour(&mut self, addr: IpAddr, mac: [u8; 6]) {
        self.neigh.insert(addr, mac);
        self.version = next_routes_version();
    }

    /// Send every destination that is not a neighbour to `mac` (None: drop it, no route).
    pub fn set_gateway(&mut self, mac: Option<[u8; 6]>) {
        self.gateway = mac;
        self.version = next_routes_version();
    }
}

impl Routes for StaticRoutes {
    fn next_hop(&self, dst: IpAddr) -> Option<NextHop> {
        let dst_mac = self.neigh.get(&dst).copied().or(self.gateway)?;
        Some(NextHop {
            ifindex: self.ifindex,
            src_mac: self.local_mac,
            dst_mac,
            mtu: self.mtu,
            src_ip: self.src[usize::from(dst.is_ipv6())],
        })
    }

    fn version(&self) -> Option<u64> {
        Some(self.version)
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
