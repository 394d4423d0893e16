//! A static next-hop table: neighbours on the link and a default gateway. The offline replay
//! and tests use it; the AF_XDP data plane resolves next hops from the kernel instead.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::datapath::Routes;
use crate::wire::NextHop;

/// One interface with known neighbours and an optional gateway.
#[derive(Debug, Clone)]
pub struct StaticRoutes {
    /// Interface index reported in verdicts.
    pub ifindex: u32,
    /// The interface's MAC.
    pub local_mac: [u8; 6],
    /// The box's own addresses (tunnel sources), one per family at most used.
    pub local_ips: Vec<IpAddr>,
    /// Route MTU.
    pub mtu: u16,
    /// Neighbours: address → MAC.
    pub neigh: HashMap<IpAddr, [u8; 6]>,
    /// MAC of the next hop for every other destination.
    pub gateway: Option<[u8; 6]>,
}

impl StaticRoutes {
    /// An interface with no neighbours yet.
    pub fn new(ifindex: u32, local_mac: [u8; 6], local_ips: Vec<IpAddr>, mtu: u16) -> StaticRoutes {
        StaticRoutes {
            ifindex,
            local_mac,
            local_ips,
            mtu,
            neigh: HashMap::new(),
            gateway: None,
        }
    }
}

impl Routes for StaticRoutes {
    fn next_hop(&self, dst: IpAddr) -> Option<NextHop> {
        let dst_mac = self.neigh.get(&dst).copied().or(self.gateway)?;
        let src_ip = self
            .local_ips
            .iter()
            .find(|a| a.is_ipv6() == dst.is_ipv6())
            .copied();
        Some(NextHop {
            ifindex: self.ifindex,
            src_mac: self.local_mac,
            dst_mac,
            mtu: self.mtu,
            src_ip,
        })
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
