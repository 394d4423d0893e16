//! ipvsadm's listings (reference §2): the default view, `--stats`, `--rate`, `--exact`,
//! `--thresholds`, `--persistent-conn`, `--tun-info`, `-c`, `--timeout`, `--daemon`, with
//! ipvsadm's column widths, truncation and trailing spaces, sorted unless `--nosort`.

use std::fmt::Write as _;
use std::net::IpAddr;

use xvs_core::dest::DestConfig;
use xvs_core::service::Service;
use xvs_core::stats::{Counters, Rates};
use xvs_core::types::{Af, ForwardMethod, Netmask, Protocol, ServiceKey, TunnelCsum, TunnelType};

use crate::parse::{DaemonConfig, DaemonRole, ListOptions};
use crate::save::{sched_flags_text, sorted};

/// Name lookups for listings without `-n` (reverse host names, service names).
pub trait Names {
    /// A host name for an address, if any.
    fn host(&self, addr: &IpAddr) -> Option<String>;
    /// A service name for a port of a protocol, if any.
    fn service(&self, port: u16, proto: Protocol) -> Option<String>;
}

/// No lookups at all (as with `-n`).
#[derive(Debug, Clone, Copy)]
pub struct Numeric;

impl Names for Numeric {
    fn host(&self, _: &IpAddr) -> Option<String> {
        None
    }
    fn service(&self, _: u16, _: Protocol) -> Option<String> {
        None
    }
}

/// `addrport_to_anyname`.
pub fn addr_port_name(
    addr: &IpAddr,
    port: u16,
    proto: Protocol,
    numeric: bool,
    names: &dyn Names,
) -> String {
    let (host, serv) = if numeric {
        (None, None)
    } else {
        (names.host(addr), names.service(port, proto))
    };
    let host = host.unwrap_or_else(|| addr.to_string());
    let serv = serv.unwrap_or_else(|| port.to_string());
    match addr {
        IpAddr::V4(_) => format!("{host}:{serv}"),
        IpAddr::V6(_) => format!("[{host}]:{serv}"),
    }
}

fn proto_of(k: &ServiceKey) -> Protocol {
    match k {
        ServiceKey::Addr { proto, .. } => *proto,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    }
}

/// The service label: `TCP  addr:port` or `FWM  mark [IPv6]`, IPv4 labels cut to 33 characters.
fn service_label(k: &ServiceKey, numeric: bool, names: &dyn Names) -> String {
    match k {
        ServiceKey::Fwmark { af, mark } => {
            // ipvsadm prints the mark with %d (signed).
            let mut s = format!("FWM  {}", *mark as i32);
            if *af == Af::V6 {
                s.push_str(" IPv6");
            }
            s
        }
        ServiceKey::Addr { proto, addr, port } => {
            let mut s = format!(
                "{:<4} {}",
                proto.name(),
                addr_port_name(addr, *port, *proto, numeric, names)
            );
            if addr.is_ipv4() {
                truncate(&mut s, 33);
            }
            s
        }
    }
}

fn truncate(s: &mut String, n: usize) {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

fn dest_label(svc: &ServiceKey, d: &DestConfig, numeric: bool, names: &dyn Names) -> String {
    let mut s = addr_port_name(&d.addr, d.port, proto_of(svc), numeric, names);
    if svc.af() != Af::V6 {
        truncate(&mut s, 28);
    }
    s
}

/// `print_largenum`: 9 characters, abbreviated with K/M/G/T unless `--exact`.
fn largenum(out: &mut String, v: u64, exact: bool) {
    if exact {
        let digits = v.to_string().len();
        let _ = write!(out, "{v:>w$}", w = 9.max(digits + 1));
        return;
    }
    if v < 100_000_000 {
        let _ = write!(out, "{v:>9}");
    } else if v < 1_000_000_000 {
        let _ = write!(out, "{:>8}K", v / 1000);
    } else if v < 100_000_000_000 {
        let _ = write!(out, "{:>8}M", v / 1_000_000);
    } else if v < 100_000_000_000_000 {
        let _ = write!(out, "{:>8}G", v / 1_000_000_000);
    } else {
        let _ = write!(out, "{:>8}T", v / 1_000_000_000_000);
    }
}

fn stats_fields(out: &mut String, c: &Counters, exact: bool) {
    for v in [c.conns, c.inpkts, c.outpkts, c.inbytes, c.outbytes] {
        largenum(out, v, exact);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    TunInfo,
    Default,
}

fn view(o: &ListOptions) -> View {
    if o.stats {
        View::Stats
    } else if o.rate {
        View::Rate
    } else if o.thresholds {
        View::Thresholds
    } else if o.persistent_conn {
        View::PersistentConn
    } else if o.tun_info {
        View::TunInfo
    } else {
        View::Default
    }
}

fn title(out: &mut String, v: View) {
    match v {
        View::Stats => {
            let _ = writeln!(
                out,
                "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
            );
        }
        View::Rate => {
            let _ = writeln!(
                out,
                "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
            );
        }
        View::Thresholds => {
            let _ = writeln!(
                out,
                "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
            );
        }
        View::PersistentConn => {
            let _ = writeln!(
                out,
                "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
            );
        }
        View::TunInfo => {
            out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
            out.push_str("  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n");
        }
        View::Default => {
            out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
            out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
        }
    }
}

fn tun_info(d: &DestConfig) -> String {
    if d.method != ForwardMethod::Tunnel {
        return "n/a".into();
    }
    let c = match d.tunnel.csum {
        TunnelCsum::NoCsum => "-c",
        TunnelCsum::Csum => "+c",
        TunnelCsum::RemCsum => "r+c",
    };
    match d.tunnel.kind {
        TunnelType::Ipip => "ipip".into(),
        TunnelType::Gue => format!("gue:{}:{c}", d.tunnel.port),
        TunnelType::Gre => format!("gre:{c}"),
    }
}

fn service_entry(
    out: &mut String,
    svc: &Service,
    dests: &[DestConfig],
    o: &ListOptions,
    names: &dyn Names,
) {
    let v = view(o);
    let c = &svc.cfg;
    let label = service_label(&c.key, o.numeric, names);
    match v {
        View::Stats => {
            let _ = write!(out, "{label:<33}");
            stats_fields(out, &svc.live.stats.counters(), o.exact);
        }
        View::Rate => {
            let _ = write!(out, "{label:<33}");
            let r: Rates = svc.live.stats.rates();
            for x in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps] {
                largenum(out, x, o.exact);
            }
        }
        _ => {
            let _ = write!(out, "{label} {}", c.scheduler);
            let flags = sched_flags_text(&c.scheduler, c.flags);
            if !flags.is_empty() {
                let _ = write!(out, " ({flags})");
            }
            if c.is_persistent() {
                let _ = write!(out, " persistent {}", c.timeout);
                if !c.netmask.is_full() {
                    match c.netmask {
                        Netmask::V4(m) => {
                            let _ = write!(out, " mask {m}");
                        }
                        Netmask::V6(p) => {
                            let _ = write!(out, " mask {p}");
                        }
                    }
                }
                if let Some(pe) = &c.pe {
                    let _ = write!(out, " pe {pe}");
                }
            }
            if c.is_one_packet() {
                out.push_str(" ops");
            }
        }
    }
    out.push('\n');
    for d in dests {
        let state = svc
            .dests
            .iter()
            .find(|s| s.addr == d.addr && s.port == d.port);
        let (active, inactive, persist) =
            state.map_or((0, 0, 0), |s| (s.active(), s.inactive(), s.persist()));
        let name = dest_label(&c.key, d, o.numeric, names);
        match v {
            View::Stats => {
                let _ = write!(out, "  -> {name:<28}");
                let st = state.map(|s| s.stats.counters()).unwrap_or_default();
                stats_fields(out, &st, o.exact);
                out.push('\n');
            }
            View::Rate => {
                let _ = write!(out, "  -> {name:<28}");
                let r = state.map(|s| s.stats.rates()).unwrap_or_default();
                // QUIRK kept: CPS/InPPS/OutPPS of destinations are raw ` %8u` fields.
                let _ = write!(out, " {:>8} {:>8} {:>8}", r.cps, r.inpps, r.outpps);
                largenum(out, r.inbps, o.exact);
                largenum(out, r.outbps, o.exact);
                out.push('\n');
            }
            View::Thresholds => {
                let _ = writeln!(
                    out,
                    "  -> {name:<28} {:<10} {:<10} {:<10} {:<10}",
                    d.u_threshold, d.l_threshold, active, inactive
                );
            }
            View::PersistentConn => {
                let _ = writeln!(
                    out,
                    "  -> {name:<28} {:<9} {:<11} {:<10} {:<10}",
                    d.weight, persist, active, inactive
                );
            }
            View::TunInfo => {
                let _ = writeln!(
                    out,
                    "  -> {name:<28} {:<7} {:<13} {:<6} {:<10} {:<10}",
                    d.method.name(),
                    tun_info(d),
                    d.weight,
                    active,
                    inactive
                );
            }
            View::Default => {
                let _ = writeln!(
                    out,
                    "  -> {name:<28} {:<7} {:<6} {:<10} {:<10}",
                    d.method.name(),
                    d.weight,
                    active,
                    inactive
                );
            }
        }
    }
}

/// `-L` of every service: the version line, the title, then each service.
pub fn list_all(
    services: &[std::sync::Arc<Service>],
    o: &ListOptions,
    conn_tab_size: usize,
    names: &dyn Names,
) -> String {
    let mut out = format!("IP Virtual Server version 1.2.1 (size={conn_tab_size})\n");
    title(&mut out, view(o));
    for (svc, dests) in sorted(services, o.nosort) {
        service_entry(&mut out, svc, &dests, o, names);
    }
    out
}

/// `-L -t|-u|-f service`: the title and that one service (no version line).
pub fn list_service(svc: &Service, o: &ListOptions, names: &dyn Names) -> String {
    let mut out = String::new();
    title(&mut out, view(o));
    let one = std::slice::from_ref(svc);
    for (svc, dests) in sorted(one, o.nosort) {
        service_entry(&mut out, svc, &dests, o, names);
    }
    out
}

/// `--timeout`.
pub fn list_timeout(tcp: u32, tcpfin: u32, udp: u32) -> String {
    format!("Timeout (tcp tcpfin udp): {tcp} {tcpfin} {udp}\n")
}

/// `--daemon`: one line per configured daemon, master first (defaults already applied).
pub fn list_daemons(daemons: &[DaemonConfig]) -> String {
    let mut out = String::new();
    let mut ds: Vec<&DaemonConfig> = daemons.iter().collect();
    ds.sort_by_key(|d| d.role != DaemonRole::Master);
    for d in ds {
        let role = if d.role == DaemonRole::Master {
            "master"
        } else {
            "backup"
        };
        let _ = write!(
            out,
            "{role} sync daemon (mcast={}, syncid={}",
            d.mcast_ifn, d.syncid
        );
        if let Some(m) = d.maxlen.filter(|m| *m != 0) {
            let _ = write!(out, ", maxlen={m}");
        }
        if let Some(g) = d.group {
            let _ = write!(out, ", group={g}");
        }
        if let Some(p) = d.port.filter(|p| *p != 0) {
            let _ = write!(out, ", port={p}");
        }
        if let Some(t) = d.ttl.filter(|t| *t != 0) {
            let _ = write!(out, ", ttl={t}");
        }
        out.push_str(")\n");
    }
    out
}

/// One row of `-L -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    /// `TCP`, `UDP` or `IP` (fwmark templates).
    pub proto: &'static str,
    /// Seconds until expiry.
    pub expires: u64,
    /// State name.
    pub state: &'static str,
    /// Client address and port.
    pub client: (IpAddr, u16),
    /// Virtual address and port.
    pub virt: (IpAddr, u16),
    /// Real server address and port.
    pub dest: (IpAddr, u16),
    /// Entered from a sync message (the SYNC flag).
    pub synced: bool,
    /// The persistence engine's data of a template (`--pe sip`: the Call-ID).
    pub pe_data: Option<String>,
}

/// The kernel's `/proc/net/ip_vs_conn_sync` (mainline v6.12, `ip_vs_conn.c`,
/// `ip_vs_conn_sync_seq_show`): every entry with its origin, `LOCAL` or `SYNC`; addresses in
/// hexadecimal (IPv4) or full IPv6 form, ports in hexadecimal.
pub fn conn_sync_table(rows: &[ConnRow]) -> String {
    fn addr(a: &IpAddr) -> String {
        match a {
            IpAddr::V4(v) => format!("{:08X}", u32::from(*v)),
            IpAddr::V6(v) => v
                .segments()
                .iter()
                .map(|s| format!("{s:04x}"))
                .collect::<Vec<_>>()
                .join(":"),
        }
    }
    let mut out =
        String::from("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<3} {} {:04X} {} {:04X} {} {:04X} {:<11} {:<6} {:>7}",
            r.proto,
            addr(&r.client.0),
            r.client.1,
            addr(&r.virt.0),
            r.virt.1,
            addr(&r.dest.0),
            r.dest.1,
            r.state,
            if r.synced { "SYNC" } else { "LOCAL" },
            r.expires
        );
    }
    out
}

/// `-L -c [--persistent-conn]`.
pub fn list_connections(rows: &[ConnRow], o: &ListOptions, names: &dyn Names) -> String {
    let mut out = String::from("IPVS connection entries\n");
    if o.persistent_conn {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        );
    } else {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} destination",
            "state", "source", "virtual"
        );
    }
    for r in rows {
        let proto = match r.proto {
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => Protocol::Tcp,
        };
        let an = |(a, p): (IpAddr, u16)| addr_port_name(&a, p, proto, o.numeric, names);
        let expire = format!("{:02}:{:02}", r.expires / 60, r.expires % 60);
        match &r.pe_data {
            // ipvsadm's `print_conn`: the engine's columns, for rows that have its data.
            Some(data) if o.persistent_conn => {
                let _ = writeln!(
                    out,
                    "{:<3} {:<6} {:<11} {:<18} {:<18} {:<16} {:<18} {}",
                    r.proto,
                    expire,
                    r.state,
                    an(r.client),
                    an(r.virt),
                    an(r.dest),
                    "sip",
                    data
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
                    r.proto,
                    expire,
                    r.state,
                    an(r.client),
                    an(r.virt),
                    an(r.dest)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod conn_sync_tests {
    use super::*;

    #[test]
    fn the_conn_sync_view_is_the_kernels() {
        let rows = [
            ConnRow {
                proto: "TCP",
                expires: 899,
                state: "ESTABLISHED",
                client: ("10.9.0.2".parse().unwrap(), 40000),
                virt: ("10.0.0.1".parse().unwrap(), 80),
                dest: ("10.9.0.11".parse().unwrap(), 80),
                synced: true,
                pe_data: None,
            },
            ConnRow {
                proto: "UDP",
                expires: 12,
                state: "UDP",
                client: ("fd09::2".parse().unwrap(), 5000),
                virt: ("fd00::1".parse().unwrap(), 53),
                dest: ("fd09::12".parse().unwrap(), 53),
                synced: false,
                pe_data: None,
            },
        ];
        assert_eq!(
            conn_sync_table(&rows),
            "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n\
             TCP 0A090002 9C40 0A000001 0050 0A09000B 0050 ESTABLISHED SYNC       899\n\
             UDP fd09:0000:0000:0000:0000:0000:0000:0002 1388 \
             fd00:0000:0000:0000:0000:0000:0000:0001 0035 \
             fd09:0000:0000:0000:0000:0000:0000:0012 0035 UDP         LOCAL       12\n"
        );
    }
}
