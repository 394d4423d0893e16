//! AF_XDP packet generator for the end-to-end benchmark (see `bench/e2e/run.py`): TCP ACKs over
//! a fixed set of established flows, or SYNs from ever new clients. Prints the packets it handed
//! to the kernel (informative only: results are read at the receivers).

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use xvs_xdp::pktgen::{run, GenConfig};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    interface: String,
    #[arg(long, default_value_t = 0)]
    queue: u32,
    #[arg(long)]
    dst_mac: String,
    #[arg(long)]
    dst: Ipv4Addr,
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, default_value = "10.200.0.0")]
    client_base: Ipv4Addr,
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// Send SYNs from new clients instead of ACKs of established flows.
    #[arg(long)]
    new_conns: bool,
    /// Send UDP datagrams instead of TCP segments.
    #[arg(long)]
    udp: bool,
    #[arg(long, default_value_t = 64)]
    len: usize,
    /// Packets per second, 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = u64::MAX)]
    count: u64,
    /// Seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// First packet's sequence number (continue an earlier run's flow walk).
    #[arg(long, default_value_t = 0)]
    seq_start: u64,
}

fn main() {
    let a = Args::parse();
    let mac = |s: &str| xvs_core::routes::parse_mac(s).unwrap_or_else(|| panic!("invalid MAC {s}"));
    let src_mac_s = std::fs::read_to_string(format!("/sys/class/net/{}/address", a.interface))
        .unwrap_or_else(|e| panic!("interface {}: {e}", a.interface));
    let cfg = GenConfig {
        ifname: a.interface.clone(),
        queue: a.queue,
        src_mac: mac(src_mac_s.trim()),
        dst_mac: mac(&a.dst_mac),
        dst: a.dst,
        dport: a.port,
        client_base: a.client_base,
        flows: a.flows,
        new_conns: a.new_conns,
        udp: a.udp,
        frame_len: a.len,
        rate: a.rate,
        count: a.count,
        duration: Duration::from_secs_f64(a.duration),
        seq_start: a.seq_start,
    };
    match run(&cfg, &AtomicBool::new(false)) {
        Ok(n) => println!("{n}"),
        Err(e) => {
            eprintln!("xvs-pktgen: {e}");
            std::process::exit(1);
        }
    }
}
