//! The bare AF_XDP forwarder of the benchmark: the same steering program, sockets and worker
//! loop as xvsd, with a handler that only rewrites MAC addresses and sends every frame to one
//! next hop on the other interface. It measures the limit of xvs's own I/O.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use xvs_core::service::Steering;
use xvs_core::{Frame, Protocol, Time, Verdict};
use xvs_xdp::bpf::{XdpMode, XdpProgram};
use xvs_xdp::worker::{Handler, Worker, WorkerCounters};
use xvs_xdp::xsk::{QueueSet, ZeroCopy};

/// The bare forwarder of the benchmarks: every frame goes out of one interface to one next
/// hop, with nothing but the MAC addresses rewritten (the limit of xvs's AF_XDP I/O).
#[derive(Debug, Clone, Copy)]
pub struct BareHandler {
    /// Egress interface.
    pub out_ifindex: u32,
    /// Egress MAC.
    pub src_mac: [u8; 6],
    /// Next hop MAC.
    pub dst_mac: [u8; 6],
}

impl Handler for BareHandler {
    fn handle(&mut self, frame: &mut Frame<'_>, _now: Time) -> Verdict {
        let d = frame.data_mut();
        if d.len() < 14 {
            return Verdict::Drop(xvs_core::DropReason::Malformed);
        }
        d[0..6].copy_from_slice(&self.dst_mac);
        d[6..12].copy_from_slice(&self.src_mac);
        Verdict::Forward {
            ifindex: self.out_ifindex,
            real: None,
        }
    }
}

#[derive(Debug, Parser)]
struct Args {
    /// Receiving interface.
    #[arg(long = "in")]
    input: String,
    /// Transmitting interface.
    #[arg(long = "out")]
    output: String,
    /// Next hop MAC on the transmitting interface.
    #[arg(long)]
    next_hop_mac: String,
    /// The service address to steer (the same match as xvsd's).
    #[arg(long)]
    vip: IpAddr,
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Write the worker's counters ("rx=N rx_batches=N tx=N") to this file every 100 ms, for
    /// the benchmark to read between its runs.
    #[arg(long)]
    stats: Option<std::path::PathBuf>,
}

/// The counters as one line.
fn counters_line(c: &WorkerCounters) -> String {
    format!(
        "rx={} rx_batches={} tx={}",
        c.rx.load(Relaxed),
        c.rx_batches.load(Relaxed),
        c.tx.load(Relaxed)
    )
}

/// Rewrite `path` with the counters every 100 ms until `stop` (each time whole: a new file
/// renamed over the old one).
fn write_stats(path: std::path::PathBuf, c: Arc<WorkerCounters>, stop: Arc<AtomicBool>) {
    let tmp = path.with_extension("tmp");
    while !stop.load(Relaxed) {
        if std::fs::write(&tmp, counters_line(&c) + "\n").is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sys(ifname: &str, what: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/{what}"))
        .unwrap_or_else(|e| panic!("{ifname}: {e}"))
        .trim()
        .to_string()
}

fn main() {
    let a = Args::parse();
    let in_idx: u32 = sys(&a.input, "ifindex").parse().expect("ifindex");
    let out_idx: u32 = sys(&a.output, "ifindex").parse().expect("ifindex");
    let mut prog = XdpProgram::load().expect("load the XDP program");
    let s_in = prog
        .attach(in_idx, &a.input, XdpMode::Auto, false)
        .expect("attach");
    let s_out = prog
        .attach(out_idx, &a.output, XdpMode::Auto, false)
        .expect("attach");
    let qs = QueueSet::open(
        0,
        &[
            (a.input.clone(), in_idx, s_in),
            (a.output.clone(), out_idx, s_out),
        ],
        ZeroCopy::Auto,
    )
    .expect("sockets");
    for p in &qs.ports {
        prog.set_socket(p.slot, 0, p.fd()).expect("socket map");
    }
    let steering = Steering {
        services: vec![(a.vip, Protocol::Tcp, a.port)],
        ..Default::default()
    };
    prog.sync(&steering, &[]).expect("steering maps");
    let handler = BareHandler {
        out_ifindex: out_idx,
        src_mac: xvs_core::routes::parse_mac(&sys(&a.output, "address")).expect("MAC"),
        dst_mac: xvs_core::routes::parse_mac(&a.next_hop_mac).expect("next hop MAC"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).expect("signal handler");
    }
    let counters = Arc::new(WorkerCounters::default());
    if let Some(path) = a.stats.clone() {
        let (c, stop) = (counters.clone(), stop.clone());
        std::thread::spawn(move || write_stats(path, c, stop));
    }
    let mut w = Worker {
        qs,
        handler,
        counters: counters.clone(),
        stop,
        epoch: Instant::now(),
        injector: None,
        busy_poll: false,
        spin: std::time::Duration::ZERO,
    };
    eprintln!("xvs-fwd: forwarding {} -> {}", a.input, a.output);
    w.run();
    eprintln!("xvs-fwd: {}", counters_line(&counters));
}
