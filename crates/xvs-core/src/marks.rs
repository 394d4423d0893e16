//! xvs's firewall-mark classifier: what `iptables -t mangle -A PREROUTING ... -j MARK` does for
//! the kernel's IPVS, for the frames xvs takes from AF_XDP, which carry no netfilter mark. The
//! rules are the subset LVS set-ups use (interface, source and destination prefixes, protocol,
//! destination ports and port ranges, `MARK --set-mark` / `--set-xmark`); like netfilter's
//! MARK target they do not stop the chain: every matching rule applies, in order. The text
//! form (`iptables-save`) is read by `xvs_ipvsadm::marks`.
//!
//! A new connection's packet without a mark is classified before its service is looked up, so
//! a fwmark service (`-f`) takes it; the XDP program steers each rule's destinations to xvs
//! ([`MarkRules::steering`]).

use std::net::IpAddr;

use crate::types::Protocol;
use crate::wire::Packet;

/// An address prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// Whether `a` is in the prefix (an address of the other family never is).
    pub fn contains(&self, a: &IpAddr) -> bool {
        fn masked(x: u128, len: u8, bits: u8) -> u128 {
            if len == 0 {
                0
            } else {
                x >> (bits - len.min(bits))
            }
        }
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(x)) => {
                masked(u128::from(u32::from(n)), self.len, 32)
                    == masked(u128::from(u32::from(*x)), self.len, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(x)) => {
                masked(u128::from(n), self.len, 128) == masked(u128::from(*x), self.len, 128)
            }
            _ => false,
        }
    }

    /// Every address of the prefix (at most 2^16: callers bound the prefix first).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let bits: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        let host = (bits - u32::from(self.len.min(bits as u8))).min(16);
        let base = match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        } >> host
            << host;
        (0..1u128 << host).map(move |i| match self.addr {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((base + i) as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(base + i)),
        })
    }
}

/// One `-j MARK` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRule {
    /// `-i`: the ingress interface's index (its name as given, for listings).
    pub iface: Option<(u32, String)>,
    /// `-s`.
    pub src: Option<Prefix>,
    /// `-d`.
    pub dst: Option<Prefix>,
    /// `-p` (TCP or UDP); None: any.
    pub proto: Option<Protocol>,
    /// `--dport` / `--dports`: inclusive ranges; empty: any port.
    pub dports: Vec<(u16, u16)>,
    /// The mark is `(mark & !mask) ^ value` (`--set-xmark value/mask`; `--set-mark value/mask`
    /// is `--set-xmark value/(mask | value)`).
    pub value: u32,
    /// See `value`.
    pub mask: u32,
}

impl MarkRule {
    fn matches(&self, ifindex: u32, p: &Packet) -> bool {
        self.iface.as_ref().is_none_or(|(i, _)| *i == ifindex)
            && self.src.is_none_or(|s| s.contains(&p.saddr))
            && self.dst.is_none_or(|d| d.contains(&p.daddr))
            && self.proto.is_none_or(|pr| pr.number() == p.proto)
            && (self.dports.is_empty()
                || self
                    .dports
                    .iter()
                    .any(|(a, b)| (*a..=*b).contains(&p.dport)))
    }
}

/// The rules, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkRules {
    /// Rules, applied in order.
    pub rules: Vec<MarkRule>,
}

impl MarkRules {
    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The mark netfilter's PREROUTING chain of these rules gives a packet received on
    /// `ifindex` (0: none).
    pub fn classify(&self, ifindex: u32, p: &Packet) -> u32 {
        self.rules
            .iter()
            .filter(|r| r.matches(ifindex, p))
            .fold(0, |m, r| (m & !r.mask) ^ r.value)
    }

    /// What the XDP program must redirect for the rules: (destination, protocol, port), port 0
    /// for any port, each address of a rule's `-d` prefix (the parser bounds their number; a
    /// rule without `-d` steers nothing).
    pub fn steering(&self) -> Vec<(IpAddr, Protocol, u16)> {
        let mut out = Vec::new();
        for r in &self.rules {
            let Some(d) = r.dst else { continue };
            let protos: &[Protocol] = match &r.proto {
                Some(p) => std::slice::from_ref(p),
                None => &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            };
            for addr in d.addresses() {
                for &pr in protos {
                    if r.dports.is_empty() {
                        out.push((addr, pr, 0));
                    }
                    for &(a, b) in &r.dports {
                        out.extend((a..=b).map(|port| (addr, pr, port)));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::PacketBuilder;

    fn packet(src: [u8; 4], dst: [u8; 4], dport: u16, tcp: bool) -> Packet {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64);
        let mut v = Vec::new();
        if tcp {
            b.tcp(1000, dport, 1, 100).syn().write(&mut v, &[]).unwrap();
        } else {
            b.udp(1000, dport).write(&mut v, &[]).unwrap();
        }
        parse(&v).unwrap()
    }

    fn prefix(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix {
            addr: a.parse().unwrap(),
            len: l.parse().unwrap(),
        }
    }

    #[test]
    fn rules_apply_in_order_as_netfilters_mark_target() {
        let web = MarkRule {
            iface: None,
            src: None,
            dst: Some(prefix("10.0.0.1/32")),
            proto: Some(Protocol::Tcp),
            dports: vec![(80, 80), (443, 443)],
            value: 1,
            mask: u32::MAX,
        };
        let lan = MarkRule {
            iface: Some((7, "eth0".into())),
            src: Some(prefix("10.9.0.0/16")),
            dst: None,
            proto: None,
            dports: vec![(8000, 8099)],
            value: 0x100,
            mask: 0x100,
        };
        let rules = MarkRules {
            rules: vec![web.clone(), lan],
        };
        assert_eq!(
            rules.classify(1, &packet([1, 2, 3, 4], [10, 0, 0, 1], 443, true)),
            1
        );
        assert_eq!(
            rules.classify(1, &packet([1, 2, 3, 4], [10, 0, 0, 1], 22, true)),
            0
        );
        assert_eq!(
            rules.classify(1, &packet([1, 2, 3, 4], [10, 0, 0, 1], 80, false)),
            0
        );
        // The second rule only on interface 7, from 10.9/16, ports 8000-8099.
        assert_eq!(
            rules.classify(7, &packet([10, 9, 3, 4], [10, 0, 0, 2], 8050, true)),
            0x100
        );
        assert_eq!(
            rules.classify(8, &packet([10, 9, 3, 4], [10, 0, 0, 2], 8050, true)),
            0
        );
        assert_eq!(
            rules.classify(7, &packet([10, 8, 3, 4], [10, 0, 0, 2], 8050, true)),
            0
        );
        assert_eq!(
            rules.steering(),
            vec![
                ("10.0.0.1".parse().unwrap(), Protocol::Tcp, 80),
                ("10.0.0.1".parse().unwrap(), Protocol::Tcp, 443)
            ]
        );
        assert!(prefix("0.0.0.0/0").contains(&"192.0.2.1".parse().unwrap()));
        assert!(prefix("fd00::/64").contains(&"fd00::7".parse().unwrap()));
        assert!(!prefix("fd00::/64").contains(&"fd01::7".parse().unwrap()));
        assert!(!prefix("10.0.0.0/8").contains(&"fd00::7".parse().unwrap()));
    }
}
