//! Host and service names in the addresses of a command line, resolved as ipvsadm resolves
//! them (`parse_service`: `host_to_addr` is `gethostbyname`, IPv4 only; `service_to_port` is
//! `getservbyname` for the service's protocol), before the command goes to xvsd, whose parser
//! does no IO. What resolves is replaced by its numeric form; what does not is left for the
//! parser, which answers with ipvsadm's error.

use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};

use xvs_core::Protocol;
use xvs_ipvsadm::addr::{inet_aton, service_port};
use xvs_ipvsadm::restore_line;

/// Short options that take an argument (the rest of their token, or the next one).
const SHORT_WITH_ARG: &str = "tufsMrwxyb";

/// The command line with the host and service names of its addresses resolved.
pub fn args(args: &[String]) -> Vec<String> {
    let proto = protocol(args);
    let mut out = args.to_vec();
    let mut i = 0;
    while i < out.len() {
        let a = out[i].clone();
        if a == "--" {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let p = match name {
                "tcp-service" => Some(Protocol::Tcp),
                "udp-service" => Some(Protocol::Udp),
                "sctp-service" => Some(Protocol::Sctp),
                "real-server" => Some(proto),
                _ => None,
            };
            if let Some(p) = p {
                match inline {
                    Some(v) => out[i] = format!("--{name}={}", host_port(&v, p)),
                    None if i + 1 < out.len() => {
                        out[i + 1] = host_port(&out[i + 1], p);
                        i += 1;
                    }
                    None => {}
                }
            }
        } else if let Some(shorts) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            // A bundle of short options; the first that takes an argument ends it.
            for (k, c) in shorts.char_indices() {
                if !SHORT_WITH_ARG.contains(c) {
                    continue;
                }
                let p = match c {
                    't' => Some(Protocol::Tcp),
                    'u' => Some(Protocol::Udp),
                    'r' => Some(proto),
                    _ => None,
                };
                let rest = &shorts[k + c.len_utf8()..];
                if !rest.is_empty() {
                    if let Some(p) = p {
                        out[i] = format!("-{}{}", &shorts[..k + c.len_utf8()], host_port(rest, p));
                    }
                } else if i + 1 < out.len() {
                    if let Some(p) = p {
                        out[i + 1] = host_port(&out[i + 1], p);
                    }
                    i += 1;
                }
                break;
            }
        }
        i += 1;
    }
    out
}

/// A `-R` stream with the names of each line resolved (lines left as they are when nothing
/// changes).
pub fn restore(stdin: &str) -> String {
    let mut out = String::with_capacity(stdin.len());
    for line in stdin.split_inclusive('\n') {
        match restore_line(line) {
            Some(toks) => {
                let resolved = args(&toks);
                if resolved == toks {
                    out.push_str(line);
                } else {
                    out.push_str(&resolved.join(" "));
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The service's protocol, for the servers' ports (`-u`/`--udp-service`: UDP, else TCP; xvs
/// refuses SCTP services).
fn protocol(args: &[String]) -> Protocol {
    for a in args {
        if a == "--udp-service" || a.starts_with("--udp-service=") {
            return Protocol::Udp;
        }
        if a == "--sctp-service" || a.starts_with("--sctp-service=") {
            return Protocol::Sctp;
        }
        if let Some(shorts) = a.strip_prefix('-').filter(|s| !s.starts_with('-')) {
            for c in shorts.chars() {
                if c == 'u' {
                    return Protocol::Udp;
                }
                if SHORT_WITH_ARG.contains(c) {
                    break;
                }
            }
        }
    }
    Protocol::Tcp
}

/// `host[:port]` with a host name resolved to its first IPv4 address and a port name to its
/// number; IPv6 addresses (bracketed or bare) are never names.
fn host_port(v: &str, proto: Protocol) -> String {
    if v.starts_with('[') || v.parse::<Ipv6Addr>().is_ok() {
        return match v.rsplit_once("]:") {
            Some((h, p)) => format!("{h}]:{}", port(p, proto)),
            None => v.to_string(),
        };
    }
    let (host, p) = match v.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (v, None),
    };
    let host =
        if host.is_empty() || inet_aton(host).is_some() || host.bytes().all(|b| b.is_ascii_digit())
        {
            host.to_string()
        } else {
            resolve_host(host).unwrap_or_else(|| host.to_string())
        };
    match p {
        Some(p) => format!("{host}:{}", port(p, proto)),
        None => host,
    }
}

fn resolve_host(name: &str) -> Option<String> {
    (name, 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(IpAddr::is_ipv4)
        .map(|a| a.to_string())
}

/// A port number as given, a name xvs knows, or a name from `/etc/services` for `proto`.
fn port(p: &str, proto: Protocol) -> String {
    if p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) || service_port(p, proto).is_some() {
        return p.to_string();
    }
    etc_services(p, proto).map_or_else(|| p.to_string(), |n| n.to_string())
}

/// `getservbyname(name, proto)` over `/etc/services` (names and aliases).
fn etc_services(name: &str, proto: Protocol) -> Option<u16> {
    let want = match proto {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|l| {
        let l = l.split('#').next()?;
        let mut f = l.split_whitespace();
        let first = f.next()?;
        let (num, pr) = f.next()?.split_once('/')?;
        (pr == want && (first == name || f.any(|alias| alias == name)))
            .then(|| num.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn numeric_addresses_are_left_as_they_are() {
        for line in [
            "-A -t 10.0.0.1:80 -s rr",
            "-a -t 10.0.0.1:http -r 10.1:8080 -m",
            "-A -t [fd00::1]:443",
            "-A -u 167772161:53",
            "-A -f 1",
        ] {
            assert_eq!(args(&v(line)), v(line), "{line}");
        }
    }

    #[test]
    fn localhost_resolves_in_every_form() {
        assert_eq!(args(&v("-A -t localhost:80")), v("-A -t 127.0.0.1:80"));
        assert_eq!(
            args(&v("-a --tcp-service=localhost:80 -r localhost:8080")),
            v("-a --tcp-service=127.0.0.1:80 -r 127.0.0.1:8080")
        );
        assert_eq!(args(&v("-At localhost:80")), v("-At 127.0.0.1:80"));
        assert_eq!(args(&v("-A -tlocalhost:80")), v("-A -t127.0.0.1:80"));
        // An unknown name is left for the parser's error.
        assert_eq!(
            args(&v("-A -t no-such-host.invalid:80")),
            v("-A -t no-such-host.invalid:80")
        );
    }

    #[test]
    fn restore_streams_resolve_line_by_line() {
        assert_eq!(
            restore("-A -t localhost:80 -s rr\n\n-a -t 10.0.0.1:80 -r 10.1.0.1\n"),
            "-A -t 127.0.0.1:80 -s rr\n\n-a -t 10.0.0.1:80 -r 10.1.0.1\n"
        );
    }
}
