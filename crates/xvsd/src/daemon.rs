//! `xvsd --interface IF ...`: attach the steering program, open AF_XDP sockets on every RX queue
//! of every interface, and run one worker per queue index until SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clap::{Args, ValueEnum};
use xvs_core::{Director, Engine};
use xvs_ipvsadm::apply::restore;
use xvs_xdp::bpf::{XdpMode, XdpProgram, MAX_QUEUES};
use xvs_xdp::nexthop::{link_info, local_addresses, KernelRoutes, LinkInfo};
use xvs_xdp::worker::{Worker, WorkerCounters};
use xvs_xdp::xsk::{QueueSet, ZeroCopy, FRAME_SIZE};

/// Bytes of a UMEM frame the kernel keeps in front of the packet (XDP_PACKET_HEADROOM), plus
/// the worst-case encapsulation xvs adds (IPv6 + UDP + GUE).
const RESERVED: u32 = 256 + 40 + 8 + 4;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    Drv,
    Skb,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ZcArg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface to balance on (repeat for two-arm set-ups).
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// Rules to load at start, in `ipvsadm -S` / `-R` format.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: ModeArg,
    /// AF_XDP zero-copy.
    #[arg(long, value_enum, default_value = "auto")]
    pub zero_copy: ZcArg,
    /// Pin worker i to the i-th listed core (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Static neighbour IP=MAC (repeatable); others are resolved through the kernel.
    #[arg(long = "neigh")]
    pub neigh: Vec<String>,
    /// Connection table capacity.
    #[arg(long, default_value_t = 1 << 20)]
    pub conn_capacity: usize,
}

fn sysfs(ifname: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("interface {ifname}: cannot read {what}: {e}"))
}

fn rx_queues(ifname: &str) -> Result<u32, String> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map_err(|e| format!("interface {ifname}: cannot list queues: {e}"))?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// Run the data plane until a signal arrives.
pub fn run(args: &DaemonArgs) -> Result<(), String> {
    if args.interfaces.is_empty() {
        return Err("no --interface given (the control-plane-only daemon is not built yet)".into());
    }
    let mut director = Director::new();
    if let Some(path) = &args.rules {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rep = restore(&mut director, "xvsd", &text);
        for (line, msg) in &rep.errors {
            eprintln!("xvsd: rules line {line}: {msg}");
        }
        if let Some((line, e)) = rep.stopped {
            return Err(format!("rules line {line}: {}", e.message.trim_end()));
        }
    }
    let mut statics = HashMap::new();
    for n in &args.neigh {
        let (ip, mac) = n
            .split_once('=')
            .ok_or_else(|| format!("--neigh wants IP=MAC, got `{n}'"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("invalid address `{ip}'"))?;
        let mac = xvs_core::routes::parse_mac(mac).ok_or_else(|| format!("invalid MAC `{mac}'"))?;
        statics.insert(ip, mac);
    }

    // Interfaces: index, MTU check, queue count.
    let mut ifaces = Vec::new();
    let mut links: HashMap<u32, LinkInfo> = HashMap::new();
    let mut queues = 0;
    for name in &args.interfaces {
        let ifindex: u32 = sysfs(name, "ifindex")?
            .parse()
            .map_err(|e| format!("interface {name}: bad ifindex: {e}"))?;
        let info = link_info(name).map_err(|e| format!("interface {name}: {e}"))?;
        let max_mtu = FRAME_SIZE - RESERVED - 14;
        if u32::from(info.mtu) > max_mtu {
            return Err(format!(
                "interface {name}: MTU {} does not fit a {FRAME_SIZE}-byte UMEM frame; set it to {max_mtu} or less (ip link set dev {name} mtu {max_mtu})",
                info.mtu
            ));
        }
        let q = rx_queues(name)?;
        if q > MAX_QUEUES {
            return Err(format!(
                "interface {name}: {q} RX queues, xvs supports {MAX_QUEUES}"
            ));
        }
        queues = queues.max(q);
        links.insert(ifindex, info);
        ifaces.push((name.clone(), ifindex, q));
    }

    let mode = match args.xdp_mode {
        ModeArg::Auto => XdpMode::Auto,
        ModeArg::Drv => XdpMode::Drv,
        ModeArg::Skb => XdpMode::Skb,
    };
    let zc = match args.zero_copy {
        ZcArg::Auto => ZeroCopy::Auto,
        ZcArg::On => ZeroCopy::On,
        ZcArg::Off => ZeroCopy::Off,
    };
    let mut prog = XdpProgram::load().map_err(|e| format!("loading the XDP program: {e}"))?;
    let mut slots = Vec::new();
    for (name, ifindex, _) in &ifaces {
        let slot = prog
            .attach(*ifindex, name, mode)
            .map_err(|e| e.to_string())?;
        slots.push((name.clone(), *ifindex, slot));
    }
    // One worker per queue index; it owns that queue's socket on every interface that has it.
    let mut sets = Vec::new();
    for q in 0..queues {
        let here: Vec<(String, u32, u32)> = slots
            .iter()
            .zip(&ifaces)
            .filter(|(_, (_, _, nq))| q < *nq)
            .map(|(s, _)| s.clone())
            .collect();
        let qs = QueueSet::open(q, &here, zc).map_err(|e| e.to_string())?;
        for p in &qs.ports {
            prog.set_socket(p.slot, q, p.fd())
                .map_err(|e| e.to_string())?;
        }
        sets.push(qs);
    }

    let tables = Arc::new(ArcSwap::from_pointee(director.snapshot()));
    let locals = local_addresses().map_err(|e| format!("listing local addresses: {e}"))?;
    prog.sync(&tables.load().steering(), &locals)
        .map_err(|e| e.to_string())?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }

    let routes = KernelRoutes::new(links, statics);
    let reals: HashSet<IpAddr> = director
        .services()
        .iter()
        .flat_map(|s| s.dests.iter().map(|d| d.addr))
        .collect();
    match routes.warm_up(&reals, Duration::from_secs(2)) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            eprintln!("xvsd: next hop not resolved yet for {left:?}; retrying in the background")
        }
        Err(e) => return Err(format!("reading routes and neighbours: {e}")),
    }
    let resolver = {
        let routes = routes.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("xvs-resolver".into())
            .spawn(move || routes.run(&stop))
            .map_err(|e| e.to_string())?
    };

    let engine = Arc::new(Engine::new(args.conn_capacity, seed()));
    let epoch = Instant::now();
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    for (i, qs) in sets.into_iter().enumerate() {
        let c = Arc::new(WorkerCounters::default());
        counters.push(c.clone());
        let mut w = Worker {
            qs,
            engine: engine.clone(),
            tables: tables.clone(),
            counters: c,
            stop: stop.clone(),
            epoch,
        };
        let routes = routes.clone();
        let core = args
            .cores
            .get(i)
            .and_then(|&c| core_ids.iter().find(|id| id.id == c).copied());
        let h = std::thread::Builder::new()
            .name(format!("xvs-worker-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                w.run(&*routes);
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    eprintln!(
        "xvsd: balancing on {} ({} queue{}), {} service(s)",
        args.interfaces.join(", "),
        queues,
        if queues == 1 { "" } else { "s" },
        director.services().len()
    );

    let mut last_est = Instant::now();
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last_est.elapsed() >= Duration::from_secs(2) {
            last_est = Instant::now();
            director.estimate();
            director.tick(xvs_core::Time(epoch.elapsed().as_millis() as u64));
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let _ = resolver.join();
    let xdp = prog.counters().unwrap_or_default();
    let rx: u64 = counters.iter().map(|c| c.rx.load(Relaxed)).sum();
    let tx: u64 = counters.iter().map(|c| c.tx.load(Relaxed)).sum();
    eprintln!(
        "xvsd: stopping; xdp passed={} redirected={} no_socket={}; workers rx={rx} tx={tx}",
        xdp.passed, xdp.redirected, xdp.no_socket
    );
    for (name, n) in engine.counters.drop_counts() {
        if n > 0 {
            eprintln!("xvsd: dropped {name}={n}");
        }
    }
    drop(prog);
    Ok(())
}

/// A hash seed that differs between runs (the table's shard hash is keyed with it).
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ (u64::from(std::process::id()) << 32)
}
