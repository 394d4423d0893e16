//! Offline replay: every frame of the input pcap is handed to [`Engine::process_frame`] as if it had
//! arrived on one interface, with the pcap's timestamps as the clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use xvs_core::routes::{parse_mac, StaticRoutes};
use xvs_core::types::SockAddr;
use xvs_core::{DropReason, Engine, Frame, Time, Verdict};
use xvs_ipvsadm::apply::restore;
use xvs_ipvsadm::save::save;

/// Headroom kept in front of each frame for encapsulation and ICMP errors.
const HEADROOM: usize = 256;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Rules in `ipvsadm -S` / `-R` format.
    #[arg(long)]
    rules: PathBuf,
    /// Input capture (Ethernet).
    #[arg(long = "in")]
    input: PathBuf,
    /// Output capture: the frames xvs transmits, in order.
    #[arg(long = "out")]
    output: PathBuf,
    /// The balancer's MAC address.
    #[arg(long)]
    local_mac: String,
    /// The balancer's own address (tunnel source); once per family.
    #[arg(long = "local-ip", required = true)]
    local_ip: Vec<IpAddr>,
    /// A next hop on the link: IP=MAC (repeatable).
    #[arg(long = "neigh")]
    neigh: Vec<String>,
    /// Next hop for every other destination.
    #[arg(long)]
    gateway_mac: Option<String>,
    /// One JSON line per input frame.
    #[arg(long)]
    verdicts: Option<PathBuf>,
    /// Route MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Connection table capacity.
    #[arg(long, default_value_t = 65536)]
    conn_capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("pcap: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error("{0}")]
    Usage(String),
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, ReplayError> {
    r.map_err(|e| ReplayError::Io(what.to_string(), e))
}

fn mac(s: &str) -> Result<[u8; 6], ReplayError> {
    parse_mac(s).ok_or_else(|| ReplayError::Usage(format!("invalid MAC address `{s}'")))
}

fn json_verdict(index: usize, v: &Verdict) -> String {
    match v {
        Verdict::Forward {
            ifindex,
            real: Some((a, p)),
        } => {
            format!("{{\"index\":{index},\"verdict\":\"forward\",\"ifindex\":{ifindex},\"real\":\"{}\"}}", SockAddr(*a, *p))
        }
        Verdict::Forward {
            ifindex,
            real: None,
        } => {
            format!("{{\"index\":{index},\"verdict\":\"forward\",\"ifindex\":{ifindex},\"direction\":\"reply\"}}")
        }
        Verdict::Reply(kind) => {
            format!("{{\"index\":{index},\"verdict\":\"icmp\",\"icmp\":\"{kind:?}\"}}")
        }
        Verdict::Pass => format!("{{\"index\":{index},\"verdict\":\"pass\"}}"),
        Verdict::Drop(r) => format!(
            "{{\"index\":{index},\"verdict\":\"drop\",\"reason\":\"{}\"}}",
            r.name()
        ),
    }
}

/// Run a replay; returns a human-readable summary.
pub fn run(args: &ReplayArgs) -> Result<String, ReplayError> {
    let rules = io(
        &args.rules.display().to_string(),
        std::fs::read_to_string(&args.rules),
    )?;
    let mut director = xvs_core::Director::new();
    let rep = restore(&mut director, "xvsd", &rules);
    let mut summary = String::new();
    for (line, msg) in &rep.errors {
        let _ = writeln!(summary, "rules line {line}: {msg}");
    }
    if let Some((line, e)) = &rep.stopped {
        return Err(ReplayError::Usage(format!(
            "rules line {line}: {}",
            e.message.trim_end()
        )));
    }
    let tables = director.snapshot();

    let mut routes = StaticRoutes::new(1, mac(&args.local_mac)?, args.local_ip.clone(), args.mtu);
    for n in &args.neigh {
        let (ip, m) = n
            .split_once('=')
            .ok_or_else(|| ReplayError::Usage(format!("--neigh wants IP=MAC, got `{n}'")))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| ReplayError::Usage(format!("invalid address `{ip}'")))?;
        routes.add_neighbour(ip, mac(m)?);
    }
    routes.set_gateway(args.gateway_mac.as_deref().map(mac).transpose()?);

    let engine = Engine::new(args.conn_capacity, 0x7876_7364);
    let mut reader = PcapReader::new(io("input", File::open(&args.input))?)?;
    if reader.header().datalink != DataLink::ETHERNET {
        return Err(ReplayError::Usage(
            "the input capture is not Ethernet".into(),
        ));
    }
    let mut writer = PcapWriter::new(BufWriter::new(io("output", File::create(&args.output))?))?;
    let mut vout = match &args.verdicts {
        Some(p) => Some(BufWriter::new(io("verdicts", File::create(p))?)),
        None => None,
    };

    let mut buf = vec![0u8; HEADROOM + 65536];
    let mut index = 0usize;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt?;
        let len = pkt.data.len().min(buf.len() - HEADROOM);
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&pkt.data[..len]);
        let now = Time(pkt.timestamp.as_millis() as u64);
        let mut frame = Frame::new(&mut buf, HEADROOM, len);
        let v = engine.process_frame(&tables, &routes, &mut frame, now);
        if matches!(v, Verdict::Forward { .. } | Verdict::Reply(_)) {
            let data = frame.data();
            writer.write_packet(&PcapPacket::new(pkt.timestamp, data.len() as u32, data))?;
        }
        let key = match &v {
            Verdict::Forward {
                real: Some((a, p)), ..
            } => format!("forward to {}", SockAddr(*a, *p)),
            Verdict::Forward { real: None, .. } => "forward reply to client".into(),
            Verdict::Reply(k) => format!("icmp {k:?}"),
            Verdict::Pass => "pass to kernel".into(),
            Verdict::Drop(r) => format!("drop {}", r.name()),
        };
        *counts.entry(key).or_default() += 1;
        if let Some(w) = vout.as_mut() {
            io("verdicts", writeln!(w, "{}", json_verdict(index, &v)))?;
        }
        if index.is_multiple_of(64) {
            engine.conns.expire_step(now);
        }
        index += 1;
    }
    if let Some(mut w) = vout {
        io("verdicts", w.flush())?;
    }
    drop(writer);

    let _ = writeln!(summary, "{index} frames replayed");
    for (k, n) in &counts {
        let _ = writeln!(summary, "  {n:>6}  {k}");
    }
    let _ = writeln!(summary, "rules in effect (-S -n):");
    for l in save(director.services(), true).lines() {
        let _ = writeln!(summary, "  {l}");
    }
    let _ = writeln!(summary, "per service and real server: conns inpkts outpkts");
    for svc in director.services() {
        let c = svc.live.stats.counters();
        let _ = writeln!(
            summary,
            "  {}  {} {} {}",
            svc.cfg.key, c.conns, c.inpkts, c.outpkts
        );
        for d in &svc.dests {
            let c = d.stats.counters();
            let _ = writeln!(
                summary,
                "    -> {}  {} {} {}",
                SockAddr(d.addr, d.port),
                c.conns,
                c.inpkts,
                c.outpkts
            );
        }
    }
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| engine.counters.drops(**r) > 0)
        .map(|r| format!("{}={}", r.name(), engine.counters.drops(*r)))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(summary, "drops: {}", drops.join(" "));
    }
    Ok(summary)
}
