//! The field's vocabulary: protocols, address families, forwarding methods, service keys.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Address family of a service or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Af {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Af {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Af {
        match addr {
            IpAddr::V4(_) => Af::V4,
            IpAddr::V6(_) => Af::V6,
        }
    }

    /// The kernel's numeric value (`AF_INET` = 2, `AF_INET6` = 10), used for sorting like ipvsadm.
    pub fn number(self) -> u16 {
        match self {
            Af::V4 => 2,
            Af::V6 => 10,
        }
    }
}

/// Transport protocol of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// From the IP header's protocol number.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Name as ipvsadm prints it in listings.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// How packets reach a real server (ipvsadm `-g`, `-i`, `-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardMethod {
    /// Direct routing / gatewaying (`-g`): only the MAC changes.
    #[default]
    Route,
    /// IP-in-IP tunnelling (`-i`).
    Tunnel,
    /// NAT / masquerading (`-m`).
    Masq,
}

impl ForwardMethod {
    /// Name as ipvsadm prints it in the Forward column.
    pub fn name(self) -> &'static str {
        match self {
            ForwardMethod::Route => "Route",
            ForwardMethod::Tunnel => "Tunnel",
            ForwardMethod::Masq => "Masq",
        }
    }
}

/// Tunnel encapsulation (`--tun-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelType {
    /// IPIP / IPv6-in-IPv6 / mixed (protocol 4 or 41).
    #[default]
    Ipip,
    /// Generic UDP Encapsulation to `--tun-port`.
    Gue,
    /// GRE (protocol 47).
    Gre,
}

impl TunnelType {
    /// Name used by ipvsadm.
    pub fn name(self) -> &'static str {
        match self {
            TunnelType::Ipip => "ipip",
            TunnelType::Gue => "gue",
            TunnelType::Gre => "gre",
        }
    }
}

/// Tunnel checksum mode (`--tun-nocsum`, `--tun-csum`, `--tun-remcsum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelCsum {
    /// No outer checksum (the default).
    #[default]
    NoCsum,
    /// Outer checksum.
    Csum,
    /// Remote checksum offload (GUE only).
    RemCsum,
}

/// Tunnel parameters of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TunnelConfig {
    /// Encapsulation.
    pub kind: TunnelType,
    /// Destination UDP port for GUE (0 otherwise).
    pub port: u16,
    /// Checksum mode.
    pub csum: TunnelCsum,
}

/// Identity of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKey {
    /// `-t`/`-u host:port`.
    Addr {
        /// Transport protocol.
        proto: Protocol,
        /// Virtual IP.
        addr: IpAddr,
        /// Virtual port (0 = every port, persistent services only).
        port: u16,
    },
    /// `-f mark [-6]`.
    Fwmark {
        /// Address family of the service.
        af: Af,
        /// The firewall mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// Address family of the service.
    pub fn af(&self) -> Af {
        match self {
            ServiceKey::Addr { addr, .. } => Af::of(addr),
            ServiceKey::Fwmark { af, .. } => *af,
        }
    }

    /// Service port (0 for fwmark services).
    pub fn port(&self) -> u16 {
        match self {
            ServiceKey::Addr { port, .. } => *port,
            ServiceKey::Fwmark { .. } => 0,
        }
    }

    /// The fwmark (0 for address services), as the sort key uses it.
    pub fn fwmark(&self) -> u32 {
        match self {
            ServiceKey::Addr { .. } => 0,
            ServiceKey::Fwmark { mark, .. } => *mark,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr { proto, addr, port } => {
                write!(f, "{} {}", proto.name(), SockAddr(*addr, *port))
            }
            ServiceKey::Fwmark { af, mark } => {
                write!(f, "FWM {mark}")?;
                if *af == Af::V6 {
                    write!(f, " IPv6")?;
                }
                Ok(())
            }
        }
    }
}

/// `addr:port` as ipvsadm writes it with `-n` (IPv6 in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockAddr(pub IpAddr, pub u16);

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{}:{}", a, self.1),
            IpAddr::V6(a) => write!(f, "[{}]:{}", a, self.1),
        }
    }
}

/// Persistence netmask: an IPv4 mask or an IPv6 prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Netmask {
    /// IPv4 dotted mask.
    V4(Ipv4Addr),
    /// IPv6 prefix length 1..=128.
    V6(u8),
}

impl Netmask {
    /// The default mask for a family (/32 or /128).
    pub fn full(af: Af) -> Netmask {
        match af {
            Af::V4 => Netmask::V4(Ipv4Addr::BROADCAST),
            Af::V6 => Netmask::V6(128),
        }
    }

    /// Whether the mask keeps every bit (then it is not shown or saved).
    pub fn is_full(&self) -> bool {
        match self {
            Netmask::V4(m) => *m == Ipv4Addr::BROADCAST,
            Netmask::V6(p) => *p == 128,
        }
    }

    /// Apply the mask to an address of the same family; other families are returned unchanged.
    pub fn apply(&self, addr: IpAddr) -> IpAddr {
        match (self, addr) {
            (Netmask::V4(m), IpAddr::V4(a)) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & u32::from(*m)))
            }
            (Netmask::V6(p), IpAddr::V6(a)) => {
                let bits = u128::from(a);
                let mask = if *p >= 128 {
                    u128::MAX
                } else if *p == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(*p))
                };
                IpAddr::V6((bits & mask).into())
            }
            _ => addr,
        }
    }
}

impl fmt::Display for Netmask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netmask::V4(m) => write!(f, "{m}"),
            Netmask::V6(p) => write!(f, "{p}"),
        }
    }
}

/// Milliseconds on the caller's monotonic clock. The core never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// From whole seconds.
    pub fn from_secs(s: u64) -> Time {
        Time(s * 1000)
    }

    /// This time plus `secs` seconds.
    pub fn plus_secs(self, secs: u32) -> Time {
        Time(self.0.saturating_add(u64::from(secs) * 1000))
    }

    /// Milliseconds from `self` until `later`, 0 if `later` is not after.
    pub fn until(self, later: Time) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_applies() {
        let m = Netmask::V4(Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            m.apply("10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        let m6 = Netmask::V6(64);
        assert_eq!(
            m6.apply("2001:db8:0:0:1:2:3:4".parse().unwrap()),
            "2001:db8::".parse::<IpAddr>().unwrap()
        );
        assert!(Netmask::full(Af::V6).is_full());
    }

    #[test]
    fn sockaddr_display() {
        assert_eq!(
            SockAddr("10.0.0.1".parse().unwrap(), 80).to_string(),
            "10.0.0.1:80"
        );
        assert_eq!(
            SockAddr("2001:db8::1".parse().unwrap(), 443).to_string(),
            "[2001:db8::1]:443"
        );
    }
}
