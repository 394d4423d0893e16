//! `ipvsadm -S [-n]` (reference §2.8) and the sort order of listings (§2.3, with the
//! comparator's 32-bit overflow kept on purpose, so outputs match ipvsadm line for line).

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::net::IpAddr;

use xvs_core::dest::DestConfig;
use xvs_core::service::Service;
use xvs_core::service::{SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3};
use xvs_core::types::{Af, ForwardMethod, Protocol, ServiceKey, TunnelCsum, TunnelType};

use crate::addr::port_service;
use crate::list::{addr_port_name, Names};

/// ipvsadm compares by subtracting unsigned values and taking the sign of the 32-bit result.
fn quirk_cmp(a: u32, b: u32) -> Ordering {
    (a.wrapping_sub(b) as i32).cmp(&0)
}

fn addr_words(a: &IpAddr) -> Vec<u32> {
    match a {
        IpAddr::V4(v) => vec![u32::from(*v)],
        IpAddr::V6(v) => v
            .octets()
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

fn addr_cmp(a: &IpAddr, b: &IpAddr) -> Ordering {
    addr_words(a)
        .iter()
        .zip(addr_words(b).iter())
        .map(|(x, y)| quirk_cmp(*x, *y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn proto_num(k: &ServiceKey) -> u32 {
    match k {
        ServiceKey::Addr { proto, .. } => u32::from(proto.number()),
        ServiceKey::Fwmark { .. } => u32::from(Protocol::Tcp.number()),
    }
}

/// ipvsadm's service order: fwmark, af, protocol, address, port.
pub fn service_cmp(a: &ServiceKey, b: &ServiceKey) -> Ordering {
    quirk_cmp(a.fwmark(), b.fwmark())
        .then_with(|| a.af().number().cmp(&b.af().number()))
        .then_with(|| proto_num(a).cmp(&proto_num(b)))
        .then_with(|| match (a, b) {
            (ServiceKey::Addr { addr: x, .. }, ServiceKey::Addr { addr: y, .. }) => addr_cmp(x, y),
            _ => Ordering::Equal,
        })
        .then_with(|| a.port().cmp(&b.port()))
}

/// ipvsadm's destination order: address, port.
pub fn dest_cmp(a: &DestConfig, b: &DestConfig) -> Ordering {
    addr_cmp(&a.addr, &b.addr).then_with(|| a.port.cmp(&b.port))
}

/// The built-in service-name table as [`Names`] (no host names).
#[derive(Debug, Clone, Copy)]
pub struct BuiltinNames;

impl Names for BuiltinNames {
    fn host(&self, _: &IpAddr) -> Option<String> {
        None
    }
    fn service(&self, port: u16, proto: Protocol) -> Option<String> {
        port_service(port, proto).map(str::to_string)
    }
}

fn svc_arg(k: &ServiceKey, numeric: bool, names: &dyn Names) -> String {
    match k {
        ServiceKey::Addr { proto, addr, port } => {
            let flag = match proto {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!(
                "{flag} {}",
                addr_port_name(addr, *port, *proto, numeric, names)
            )
        }
        ServiceKey::Fwmark { af, mark } => {
            if *af == Af::V6 {
                format!("-f {mark} -6")
            } else {
                format!("-f {mark}")
            }
        }
    }
}

/// The text of scheduler flags (`sh-fallback,sh-port`, ...); empty when none is set.
pub fn sched_flags_text(sched: &str, flags: u32) -> String {
    let names: [(u32, &str); 3] = match sched {
        "sh" => [
            (SVC_F_SCHED1, "sh-fallback"),
            (SVC_F_SCHED2, "sh-port"),
            (0, ""),
        ],
        "mh" => [
            (SVC_F_SCHED1, "mh-fallback"),
            (SVC_F_SCHED2, "mh-port"),
            (0, ""),
        ],
        _ => [
            (SVC_F_SCHED1, "flag-1"),
            (SVC_F_SCHED2, "flag-2"),
            (SVC_F_SCHED3, "flag-3"),
        ],
    };
    names
        .iter()
        .filter(|(b, _)| *b != 0 && flags & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

fn method_switch(m: ForwardMethod) -> &'static str {
    match m {
        ForwardMethod::Masq => "-m",
        ForwardMethod::Tunnel => "-i",
        ForwardMethod::Route => "-g",
    }
}

/// Services sorted as ipvsadm lists them (or in table order with `nosort`).
pub fn sorted<S: AsRef<Service>>(services: &[S], nosort: bool) -> Vec<(&Service, Vec<DestConfig>)> {
    let mut v: Vec<(&Service, Vec<DestConfig>)> = services
        .iter()
        .map(|s| {
            let s = s.as_ref();
            let mut d: Vec<DestConfig> = s.dests.iter().map(|d| d.config()).collect();
            if !nosort {
                d.sort_by(dest_cmp);
            }
            (s, d)
        })
        .collect();
    if !nosort {
        v.sort_by(|a, b| service_cmp(&a.0.cfg.key, &b.0.cfg.key));
    }
    v
}

/// `ipvsadm -S [-n]` with the built-in service names.
pub fn save(services: &[std::sync::Arc<Service>], numeric: bool) -> String {
    save_with(services, numeric, &BuiltinNames, false)
}

/// `ipvsadm -S [-n]` with the given name lookups. With `thresholds`, destination lines also
/// carry `-x`/`-y` when set (xvs's state file; ipvsadm's `-S` does not save thresholds).
pub fn save_with(
    services: &[std::sync::Arc<Service>],
    numeric: bool,
    names: &dyn Names,
    thresholds: bool,
) -> String {
    let mut out = String::new();
    for (svc, dests) in sorted(services, false) {
        let c = &svc.cfg;
        let sa = svc_arg(&c.key, numeric, names);
        let _ = write!(out, "-A {sa} -s {}", c.scheduler);
        if c.is_persistent() {
            let _ = write!(out, " -p {}", c.timeout);
            if !c.netmask.is_full() {
                let _ = write!(out, " -M {}", c.netmask);
            }
        }
        if let Some(pe) = &c.pe {
            let _ = write!(out, " --pe {pe}");
        }
        if c.is_one_packet() {
            out.push_str(" -o");
        }
        let flags = sched_flags_text(&c.scheduler, c.flags);
        if !flags.is_empty() {
            let _ = write!(out, " -b {flags}");
        }
        out.push('\n');
        let proto = match c.key {
            ServiceKey::Addr { proto, .. } => proto,
            ServiceKey::Fwmark { .. } => Protocol::Tcp,
        };
        for d in dests {
            let _ = write!(
                out,
                "-a {sa} -r {} {} -w {}",
                addr_port_name(&d.addr, d.port, proto, numeric, names),
                method_switch(d.method),
                d.weight
            );
            if thresholds && d.u_threshold != 0 {
                let _ = write!(out, " -x {}", d.u_threshold);
            }
            if thresholds && d.l_threshold != 0 {
                let _ = write!(out, " -y {}", d.l_threshold);
            }
            if d.method == ForwardMethod::Tunnel {
                let _ = write!(out, " --tun-type {}", d.tunnel.kind.name());
                if d.tunnel.kind == TunnelType::Gue {
                    let _ = write!(out, " --tun-port {}", d.tunnel.port);
                }
                if d.tunnel.kind != TunnelType::Ipip {
                    out.push_str(match d.tunnel.csum {
                        TunnelCsum::NoCsum => " --tun-nocsum",
                        TunnelCsum::Csum => " --tun-csum",
                        TunnelCsum::RemCsum => " --tun-remcsum",
                    });
                }
            }
            out.push('\n');
        }
    }
    out
}
