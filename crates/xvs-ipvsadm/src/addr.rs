//! Address, port and number parsing exactly as ipvsadm does it (`parse_service`, `inet_aton`,
//! `string_to_number`), without DNS: host names are refused and service names come from a
//! built-in copy of the common `/etc/services` entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xvs_core::Protocol;

/// `string_to_number`: `strtol` base 10 over the whole string (leading blanks and a sign are
/// accepted), within `min..=max`.
pub fn string_to_number(s: &str, min: i64, max: i64) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
        return None;
    }
    let v: i64 = digits.parse().ok()?;
    let v = if neg { -v } else { v };
    (min..=max).contains(&v).then_some(v)
}

/// One component of an `inet_aton` address: decimal, octal (leading 0) or hex (0x).
fn aton_part(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() {
        // "0x" alone is 0 for glibc.
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .filter(|v| *v <= u64::from(u32::MAX))
}

/// glibc `inet_aton`: `a`, `a.b`, `a.b.c`, `a.b.c.d`, each part in C notation.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Vec<u64> = parts.iter().map(|p| aton_part(p)).collect::<Option<_>>()?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let max_last = match head.len() {
        0 => u64::from(u32::MAX),
        1 => 0xff_ffff,
        2 => 0xffff,
        _ => 0xff,
    };
    if *last > max_last {
        return None;
    }
    let mut v: u64 = 0;
    for (i, h) in head.iter().enumerate() {
        v |= h << (24 - 8 * i);
    }
    Some(Ipv4Addr::from((v | last) as u32))
}

/// What `parse_service` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// The address.
    pub addr: IpAddr,
    /// The port, if one was given.
    pub port: Option<u16>,
}

/// `parse_service`: `host[:port]`, `[v6]:port` or a bare IPv6 address. None on error.
pub fn parse_host_port(buf: &str, proto: Protocol) -> Option<HostPort> {
    if !buf.is_empty() && buf.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (host, port) = if let Some(rest) = buf.strip_prefix('[') {
        let close = rest.find(']')?;
        let after = &rest[close + 1..];
        let port = after.strip_prefix(':')?;
        (&rest[..close], Some(port))
    } else {
        (buf, None)
    };
    if let Ok(a6) = host.parse::<Ipv6Addr>() {
        let port = match port {
            Some(p) => Some(parse_port(p, proto)?),
            None => None,
        };
        return Some(HostPort {
            addr: IpAddr::V6(a6),
            port,
        });
    }
    if port.is_some() {
        // A bracketed host must be IPv6.
        return None;
    }
    let (host, port) = match buf.rfind(':') {
        Some(i) => (&buf[..i], Some(&buf[i + 1..])),
        None => (buf, None),
    };
    let a4 = inet_aton(host)?;
    let port = match port {
        Some(p) => Some(parse_port(p, proto)?),
        None => None,
    };
    Some(HostPort {
        addr: IpAddr::V4(a4),
        port,
    })
}

fn parse_port(p: &str, proto: Protocol) -> Option<u16> {
    if let Some(n) = string_to_number(p, 0, 65535) {
        return Some(n as u16);
    }
    service_port(p, proto)
}

/// Well-known service names (a subset of Debian's `/etc/services`, TCP and UDP alike).
const SERVICES: &[(&str, u16)] = &[
    ("ftp-data", 20),
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("domain", 53),
    ("http", 80),
    ("www", 80),
    ("pop3", 110),
    ("sunrpc", 111),
    ("ntp", 123),
    ("imap2", 143),
    ("imap", 143),
    ("snmp", 161),
    ("ldap", 389),
    ("https", 443),
    ("submissions", 465),
    ("syslog", 514),
    ("submission", 587),
    ("ldaps", 636),
    ("imaps", 993),
    ("pop3s", 995),
    ("mysql", 3306),
    ("postgresql", 5432),
    ("http-alt", 8080),
];

/// `getservbyname` over the built-in table.
pub fn service_port(name: &str, _proto: Protocol) -> Option<u16> {
    SERVICES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// `getservbyport` over the built-in table (the first name of a port).
pub fn port_service(port: u16, _proto: Protocol) -> Option<&'static str> {
    SERVICES.iter().find(|(_, p)| *p == port).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_strtol() {
        assert_eq!(string_to_number("10", 0, 65535), Some(10));
        assert_eq!(string_to_number(" +10", 0, 65535), Some(10));
        assert_eq!(string_to_number("-1", 0, 65535), None);
        assert_eq!(string_to_number("0x10", 0, 65535), None);
        assert_eq!(string_to_number("10a", 0, 65535), None);
        assert_eq!(string_to_number("", 0, 65535), None);
        assert_eq!(string_to_number("65536", 0, 65535), None);
    }

    #[test]
    fn aton_forms() {
        assert_eq!(inet_aton("10.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("167772161"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("0x0a.0.0.010"), Some(Ipv4Addr::new(10, 0, 0, 8)));
        assert_eq!(inet_aton("256.0.0.1"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("host.example"), None);
    }

    #[test]
    fn host_ports() {
        let t = Protocol::Tcp;
        assert_eq!(parse_host_port("10.0.0.1:80", t).unwrap().port, Some(80));
        assert_eq!(parse_host_port("10.0.0.1:http", t).unwrap().port, Some(80));
        assert_eq!(parse_host_port("10.0.0.1", t).unwrap().port, None);
        assert_eq!(
            parse_host_port("[2001:db8::1]:443", t).unwrap().addr,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(parse_host_port("2001:db8::1", t).unwrap().port, None);
        assert_eq!(parse_host_port("[2001:db8::1]", t), None);
        assert_eq!(parse_host_port("[10.0.0.1]:80", t), None);
        assert_eq!(parse_host_port("12345", t), None);
        assert_eq!(parse_host_port("10.0.0.1:99999", t), None);
        assert_eq!(parse_host_port("10.0.0.1:nosuch", t), None);
    }
}
