//! `xvsd [--interface IF ...]`: hold the tables, serve the control socket, and — with
//! interfaces — attach the steering program, open AF_XDP sockets on every RX queue of every
//! interface and run one worker per queue index, until SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clap::{Args, ValueEnum};
use xvs_core::hash::HashSeed;
use xvs_core::{Engine, Tables, Time};
use xvs_ipvsadm::exec::{execute, Session};
use xvs_ipvsadm::list::Numeric;
use xvs_xdp::admission::AdmitGovernor;
use xvs_xdp::bpf::{XdpMode, XdpProgram, MAX_QUEUES};
use xvs_xdp::nexthop::{link_info, local_addresses, KernelRoutes, LinkInfo};
use xvs_xdp::worker::{EngineHandler, Worker, WorkerCounters, MAX_FRAME};
use xvs_xdp::xsk::{QueueSet, ZeroCopy, FRAME_SIZE};

use crate::control::{listen, serve, Control, CtlState};
use crate::error::StartError;
use crate::names::FileNames;

/// Bytes of a UMEM frame the kernel keeps in front of the packet (XDP_PACKET_HEADROOM), plus
/// the worst-case encapsulation xvs adds (IPv6 + UDP + GUE).
const RESERVED: u32 = 256 + 40 + 8 + 4;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    Drv,
    Skb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ZcArg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Interface to balance on (repeat for two-arm set-ups); none = control plane only.
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// Rules to load at start, in `ipvsadm -S` / `-R` format (ignored when --state exists).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Save the whole configuration here after every change and load it at start.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Firewall-mark rules in iptables-save syntax (`-t mangle -A PREROUTING ... -j MARK`, the
    /// subset LVS set-ups use), for fwmark services (`-f`): AF_XDP frames carry no netfilter
    /// mark. Repeatable (e.g. an iptables-save and an ip6tables-save file); replaced live by
    /// `xvsadm --xvs-fwmark-rules -R`.
    #[arg(long = "fwmark-rules", value_name = "FILE")]
    pub fwmark_rules: Vec<PathBuf>,
    /// Leave the XDP program attached when xvsd stops or dies: it then drops the services'
    /// packets until the next xvsd (which replaces it) runs, instead of passing them to the
    /// kernel, which resets their connections. `xvsd --detach --interface IF` takes it off.
    #[arg(long)]
    pub keep_attached: bool,
    /// Take a program left by --keep-attached off the --interface(s), and exit.
    #[arg(long)]
    pub detach: bool,
    /// Control socket.
    #[arg(long, default_value = "/run/xvs/xvsd.sock")]
    pub control: PathBuf,
    /// Group allowed to read (list) through the control socket; changes stay root-only.
    #[arg(long)]
    pub control_group: Option<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: ModeArg,
    /// AF_XDP zero-copy.
    #[arg(long, value_enum, default_value = "auto")]
    pub zero_copy: ZcArg,
    /// Workers never sleep when idle: each polls its rings in a loop and keeps its core busy,
    /// for the lowest added latency (default: sleep in poll(2) until frames arrive).
    #[arg(long)]
    pub busy_poll: bool,
    /// After a wake-up that received frames, a worker keeps polling for this many microseconds
    /// before it sleeps again: replies that follow within it cost no wake-up, and an idle
    /// worker sleeps (0: sleep as soon as the rings are empty).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub spin_us: u64,
    /// Pin worker i to the i-th listed core (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Static neighbour IP=MAC (repeatable); others are resolved through the kernel.
    #[arg(long = "neigh")]
    pub neigh: Vec<String>,
    /// Also take unicast frames addressed to this MAC on every interface (repeatable), such
    /// as a VRRP virtual MAC; frames for other hosts' MACs are left to the kernel.
    #[arg(long = "accept-mac", value_name = "MAC")]
    pub accept_macs: Vec<String>,
    /// Adapt the rate of packets that may open a connection (TCP SYNs, UDP datagrams to a
    /// service) each socket takes, so that a flood beyond a worker's capacity cannot fill its
    /// ring (the excess is dropped in XDP and counted); off: no limit.
    #[arg(long, value_enum, default_value = "on")]
    pub admission: OnOff,
    /// Forward the segments of established TCP connections (direct routing and NAT) in the
    /// XDP program, without a copy to xvsd; SYN, FIN and RST still come to xvsd. Every egress
    /// must take XDP frames: a NIC whose driver has `ndo_xdp_xmit`, or a veth whose peer runs
    /// NAPI (an XDP program attached to the peer); an egress that drops them is found and left
    /// to the slow path. off: every segment crosses xvsd.
    #[arg(long, value_enum, default_value = "on")]
    pub fast_path: OnOff,
    /// Connection table capacity (entries); default: as many as a 16th of the memory available
    /// at start holds, a power of two between 2^16 and 2^26.
    #[arg(long)]
    pub conn_capacity: Option<usize>,
    /// Set an IPVS sysctl at start, by its kernel name (`drop_packet=1`,
    /// `net.ipv4.vs.secure_tcp=1`); repeatable; after --sysctl-file.
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    pub sysctls: Vec<String>,
    /// IPVS sysctls to set at start, in sysctl.conf syntax (`net.ipv4.vs.drop_entry = 1`; other
    /// keys are ignored with a note).
    #[arg(long, value_name = "FILE")]
    pub sysctl_file: Option<PathBuf>,
    /// Table size (entries) from which workers prefetch their batch's table lookups; 0: always
    /// (see docs/performance-history.md, "Prefetching the table lookups").
    #[arg(long, default_value_t = xvs_core::datapath::PREFETCH_FROM)]
    pub prefetch_from: usize,
}

pub(crate) fn sysfs(ifname: &str, what: &str) -> Result<String, StartError> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| StartError::Interface {
            name: ifname.to_string(),
            reason: format!("cannot read {what}: {e}"),
        })
}

fn rx_queues(ifname: &str) -> Result<u32, StartError> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).map_err(|e| {
        StartError::Interface {
            name: ifname.to_string(),
            reason: format!("cannot list queues: {e}"),
        }
    })?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// Load the configuration: the state file if it exists, else the rules file.
fn load_config(args: &DaemonArgs, engine: &Engine, seed: HashSeed) -> Result<CtlState, StartError> {
    let mut st = CtlState {
        director: xvs_core::Director::with_seed(seed),
        daemons: Vec::new(),
    };
    let (path, text) = match (&args.state, &args.rules) {
        (Some(s), _) if s.exists() => {
            (s.clone(), crate::state::load(s).map_err(StartError::State)?)
        }
        (_, Some(r)) => (
            r.clone(),
            std::fs::read_to_string(r).map_err(|source| StartError::Read {
                path: r.clone(),
                source,
            })?,
        ),
        _ => return Ok(st),
    };
    let none = Vec::new;
    let CtlState { director, daemons } = &mut st;
    let mut s = Session {
        director,
        daemons,
        connections: &none,
        conn_tab_size: engine.conns.capacity(),
        names: &Numeric,
        may_change: true,
        prog: "xvsd",
    };
    // Line by line, so that a line refused for any reason stops the start with its file and
    // line: nothing is dropped, and the state file is never rewritten without it.
    let restore = ["-R".to_string()];
    let mut mark_lines = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let refused = |message: String| StartError::Line {
            path: path.clone(),
            line: i + 1,
            text: line.trim().to_string(),
            message,
        };
        // The firewall-mark rules the state file keeps (not ipvsadm's syntax).
        if let Some(rule) = line.trim().strip_prefix(crate::state::MARK_LINE) {
            mark_lines.push_str(rule);
            mark_lines.push('\n');
            continue;
        }
        // The sysctls the state file keeps (not ipvsadm's syntax).
        if let Some(kv) = line.trim().strip_prefix(crate::sysctl::STATE_LINE) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| refused("a sysctl line wants NAME=VALUE".into()))?;
            crate::sysctl::set(engine, s.director, k, v).map_err(refused)?;
            continue;
        }
        let out = execute(&mut s, &restore, line);
        if out.status != 0 || !out.stderr.is_empty() {
            return Err(refused(out.stderr.trim_end().to_string()));
        }
    }
    if !mark_lines.is_empty() {
        let (rules, _) = xvs_ipvsadm::marks::parse(&mark_lines, &ifindex_of)
            .map_err(|e| StartError::Argument(format!("{}: {e}", path.display())))?;
        st.director.set_marks(rules);
    }
    tracing::info!(
        "loaded {} ({} services)",
        path.display(),
        st.director.services().len()
    );
    Ok(st)
}

struct DataPlane {
    /// With --keep-attached: the lock held while this xvsd runs (see `keep_lock`).
    _kept: Option<nix::fcntl::Flock<std::fs::File>>,
    prog: Arc<XdpProgram>,
    routes: Arc<KernelRoutes>,
    sets: Vec<QueueSet>,
    locals: Vec<IpAddr>,
    queues: u32,
}

fn data_plane(args: &DaemonArgs) -> Result<DataPlane, StartError> {
    let mut statics = HashMap::new();
    for n in &args.neigh {
        let (ip, mac) = n
            .split_once('=')
            .ok_or_else(|| StartError::Argument(format!("--neigh wants IP=MAC, got `{n}'")))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| StartError::Argument(format!("--neigh: invalid address `{ip}'")))?;
        let mac = xvs_core::routes::parse_mac(mac)
            .ok_or_else(|| StartError::Argument(format!("--neigh: invalid MAC `{mac}'")))?;
        statics.insert(ip, mac);
    }
    let mut ifaces = Vec::new();
    let mut links: HashMap<u32, LinkInfo> = HashMap::new();
    let mut queues = 0;
    for name in &args.interfaces {
        let refuse = |reason: String| StartError::Interface {
            name: name.clone(),
            reason,
        };
        let ifindex: u32 = sysfs(name, "ifindex")?
            .parse()
            .map_err(|e| refuse(format!("bad ifindex: {e}")))?;
        let info = link_info(name).map_err(|e| refuse(e.to_string()))?;
        let max_mtu = MAX_FRAME - 14;
        if usize::from(info.mtu) > max_mtu {
            return Err(refuse(format!(
                "MTU {} is larger than the {max_mtu} bytes xvs forwards; set it to {max_mtu} or less (ip link set dev {name} mtu {max_mtu})",
                info.mtu
            )));
        }
        let q = rx_queues(name)?;
        if q > MAX_QUEUES {
            return Err(refuse(format!("{q} RX queues, xvs supports {MAX_QUEUES}")));
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
    let extra_macs = args
        .accept_macs
        .iter()
        .map(|m| {
            xvs_core::routes::parse_mac(m)
                .ok_or_else(|| StartError::Argument(format!("--accept-mac: invalid MAC `{m}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut prog = XdpProgram::load()?;
    let mut slots = Vec::new();
    let kept = if args.keep_attached {
        Some(keep_lock(&args.control)?)
    } else {
        None
    };
    for (name, ifindex, _) in &ifaces {
        // The operator's MACs first: from its attachment on, the program passes frames for any
        // other MAC than these and the interface's own.
        for mac in &extra_macs {
            prog.accept_mac(*ifindex, *mac)?;
        }
        let slot = prog.attach(*ifindex, name, mode, args.keep_attached)?;
        slots.push((name.clone(), *ifindex, slot));
    }
    // One worker per queue index; it owns that queue's socket on every interface that has it,
    // so every RX queue of every interface gets a socket.
    let mut sets = Vec::new();
    for q in 0..queues {
        let here: Vec<(String, u32, u32)> = slots
            .iter()
            .zip(&ifaces)
            .filter(|(_, (_, _, nq))| q < *nq)
            .map(|(s, _)| s.clone())
            .collect();
        let qs = QueueSet::open(q, &here, zc)?;
        for p in &qs.ports {
            // A frame larger than one UMEM frame needs multi-buffer sockets.
            let single = FRAME_SIZE - RESERVED - 14;
            let mtu = links.get(&p.ifindex).map_or(0, |l| u32::from(l.mtu));
            if !p.multi_buffer && mtu > single {
                return Err(StartError::Interface {
                    name: p.ifname.clone(),
                    reason: format!(
                        "MTU {mtu} needs multi-buffer AF_XDP sockets (XDP_USE_SG, Linux 6.6 or later, and driver support), which the kernel refused; set the MTU to {single} or less (ip link set dev {} mtu {single})",
                        p.ifname
                    ),
                });
            }
            prog.set_socket(p.slot, q, p.fd())?;
            tracing::info!(
                "{} queue {q}: {} mode{}",
                p.ifname,
                if p.zero_copy { "zero-copy" } else { "copy" },
                if p.multi_buffer { ", multi-buffer" } else { "" }
            );
        }
        sets.push(qs);
    }
    let locals = local_addresses().map_err(StartError::os("listing local addresses"))?;
    Ok(DataPlane {
        _kept: kept,
        prog: Arc::new(prog),
        routes: KernelRoutes::new(links, statics),
        sets,
        locals,
        queues,
    })
}

/// Where an exiting xvsd leaves its connection table for the next one: beside the state file.
fn handoff_path(args: &DaemonArgs) -> Option<PathBuf> {
    let s = args.state.as_ref()?;
    let mut p = s.clone().into_os_string();
    p.push(".conns");
    Some(PathBuf::from(p))
}

/// Write the connection table (sync records, see `xvs_core::sync::encode_table`) to `path`,
/// atomically.
fn leave_handoff(path: &Path, engine: &Engine) {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut written = 0usize;
    let r = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        let mut err = Ok(());
        xvs_core::sync::encode_table(engine, |m| {
            if err.is_ok() {
                err = w.write_all(m);
                written += m.len();
            }
        });
        err?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    match r {
        Ok(()) => tracing::info!(
            "left {} connections for the next xvsd in {} ({written} bytes)",
            engine.conns.len(),
            path.display(),
        ),
        Err(e) => tracing::error!("writing {}: {e}", path.display()),
    }
}

/// Enter the table the previous xvsd left at `path`, then remove the file (a table is taken
/// over once).
fn take_handoff(path: &Path, engine: &Engine, tables: &Tables) {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::error!("reading {}: {e}", path.display());
            return;
        }
    };
    // Message by message: a table of millions is never all in memory.
    let mut r = std::io::BufReader::new(file);
    let mut l = xvs_core::sync::Loaded::default();
    let mut msg = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                tracing::error!("reading {}: {e}", path.display());
                break;
            }
        }
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        if r.read_exact(&mut msg).is_err() {
            l.bad_messages += 1;
            break;
        }
        xvs_core::sync::load_message(engine, tables, &msg, Time(0), &mut l);
    }
    tracing::info!(
        "took over {} connections from {} ({} refused, {} damaged messages)",
        l.applied,
        path.display(),
        l.refused,
        l.bad_messages
    );
    if let Err(e) = std::fs::remove_file(path) {
        tracing::error!("removing {}: {e}", path.display());
    }
}

/// How long a starting xvsd waits for the one it replaces to exit.
const KEEP_WAIT: Duration = Duration::from_secs(10);

/// With --keep-attached, one xvsd at a time replaces the kept programs: a lock beside the
/// control socket (`SOCKET.lock`). A starting xvsd waits up to [`KEEP_WAIT`] for the one it
/// replaces to exit.
fn keep_lock(control: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StartError> {
    let mut path = control.as_os_str().to_owned();
    path.push(".lock");
    let deadline = Instant::now() + KEEP_WAIT;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StartError::os("opening the --keep-attached lock"))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err((_, e)) => {
                return Err(StartError::Argument(format!(
                    "another xvsd still holds {} ({e}): one xvsd per control socket",
                    Path::new(&path).display()
                )))
            }
        }
    }
}

/// `--detach`: take the programs --keep-attached left off the interfaces.
pub fn detach(args: &DaemonArgs) -> Result<(), StartError> {
    let _lock = keep_lock(&args.control)?;
    for name in &args.interfaces {
        let index =
            nix::net::if_::if_nametoindex(name.as_str()).map_err(|e| StartError::Interface {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        if xvs_xdp::bpf::detach_kept(index, name)? {
            tracing::info!("detached from {name}");
        } else {
            tracing::info!("{name}: no program of xvs attached");
        }
    }
    Ok(())
}

fn reals(t: &Tables) -> HashSet<IpAddr> {
    t.services
        .iter()
        .flat_map(|s| s.dests.iter().map(|d| d.addr))
        .collect()
}

/// Run until a signal arrives.
pub fn run(args: &DaemonArgs) -> Result<(), StartError> {
    let capacity = match args.conn_capacity {
        Some(0) => {
            return Err(StartError::Argument(
                "--conn-capacity must be at least 1".into(),
            ))
        }
        Some(n) => n,
        None => default_capacity(),
    };
    let map_seed = HashSeed([seed()?, seed()?, seed()?, seed()?]);
    let seed = seed()?;
    let engine = Engine::new(capacity, seed);
    engine.set_prefetch_from(args.prefetch_from);
    tracing::info!(
        "connection table: {} entries, at most {} bytes ({} MiB, {} B each; {} B more for each \
         connection of a persistent service); hash seed from getrandom (fingerprint {:08x})",
        engine.conns.capacity(),
        engine.conns.max_bytes(),
        engine.conns.max_bytes() >> 20,
        engine.conns.max_bytes() / engine.conns.capacity(),
        xvs_core::conn::TEMPLATE_KEY_BYTES,
        fingerprint(seed)
    );
    let engine = Arc::new(engine);
    let mut st = load_config(args, &engine, map_seed)?;
    apply_sysctls(args, &engine, &mut st.director)?;
    load_marks(args, &mut st.director)?;
    if let Some(path) = &args.state {
        // The state file exists, sealed, and matches what was loaded; a state directory that
        // cannot be written stops the start before anything else (no change could be saved).
        crate::state::save(
            path,
            &crate::state::text(&engine, &st.director, &st.daemons),
        )
        .map_err(|source| StartError::Save {
            path: path.clone(),
            source,
        })?;
    }
    let tables = Arc::new(ArcSwap::from_pointee(st.director.snapshot()));
    if let Some(path) = handoff_path(args) {
        take_handoff(&path, &engine, &tables.load());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(StartError::os("installing a signal handler"))?;
    }
    // SIGHUP (a closed terminal, an init system's reload) never stops xvsd: it is logged.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(StartError::os("installing a signal handler"))?;
    let listener =
        listen(&args.control, args.control_group.as_deref()).map_err(StartError::Control)?;
    listener
        .set_nonblocking(true)
        .map_err(StartError::os("the control socket"))?;

    let dp = if args.interfaces.is_empty() {
        None
    } else {
        Some(data_plane(args)?)
    };
    let fast = match &dp {
        Some(dp) if args.fast_path == OnOff::On => {
            let f = xvs_xdp::fast::FastPath::new(dp.prog.clone())?;
            f.keep_entries(args.keep_attached);
            engine.set_offload(true);
            Some(Arc::new(f))
        }
        _ => None,
    };
    let on_publish: Box<dyn Fn(&Tables) + Send + Sync> = match &dp {
        Some(dp) => {
            let (prog, routes, locals) = (dp.prog.clone(), dp.routes.clone(), dp.locals.clone());
            let fast = fast.clone();
            Box::new(move |t: &Tables| {
                if let Err(e) = prog.sync(&t.steering(), &locals) {
                    tracing::error!("updating the XDP program's maps: {e}");
                }
                routes.want(reals(t));
                // A change may end or redirect offloaded connections: they come back through
                // the tables just published.
                if let Some(f) = &fast {
                    f.invalidate();
                }
            })
        }
        None => Box::new(|_: &Tables| {}),
    };
    on_publish(&tables.load());
    let epoch = Instant::now();
    let mut ctl = Control::new(
        st,
        tables.clone(),
        engine.clone(),
        on_publish,
        args.state.clone(),
        Box::new(FileNames::load()),
        epoch,
    );
    let nworkers = dp.as_ref().map_or(0, |d| d.sets.len());
    let worker_counters: Vec<Arc<WorkerCounters>> = (0..nworkers).map(|_| Arc::default()).collect();
    if let Some(dp) = &dp {
        let prog = dp.prog.clone();
        let socks: Vec<Sock> = dp
            .sets
            .iter()
            .flat_map(|qs| {
                qs.ports.iter().map(move |p| Sock {
                    ifname: p.ifname.clone(),
                    slot: p.slot,
                    queue: qs.queue,
                    fd: p.fd(),
                    zero_copy: p.zero_copy,
                })
            })
            .collect();
        let socks = Arc::new(socks);
        let wc = worker_counters.clone();
        let (p2, s2, f2) = (prog.clone(), socks.clone(), fast.clone());
        ctl.data_stats = Box::new(move || data_stats(&p2, &s2, &wc, f2.as_deref()));
        if args.admission == OnOff::On {
            let governors = std::sync::Mutex::new(vec![AdmitGovernor::default(); socks.len()]);
            ctl.admission = Box::new(move |secs| {
                let mut g = governors.lock().unwrap_or_else(|e| e.into_inner());
                admission_step(&prog, &socks, &mut g, secs);
            });
        }
    }
    let ctl = Arc::new(ctl);
    {
        let mut st = ctl.state.lock().unwrap_or_else(|e| e.into_inner());
        if !ctl.reconcile_sync(&mut st).is_empty() {
            // A daemon that cannot start is left out of the saved configuration.
            if let Err(e) = ctl.save(&st) {
                tracing::error!("{e}");
            }
        }
    }

    let mut handles = Vec::new();
    let mut counters = Vec::new();
    if let Some(dp) = dp {
        match dp
            .routes
            .warm_up(&reals(&tables.load()), Duration::from_secs(2))
        {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                tracing::warn!("next hop not resolved yet for {left:?}; retrying in the background")
            }
            Err(e) => return Err(StartError::os("reading routes and neighbours")(e)),
        }
        let resolver = {
            let routes = dp.routes.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("xvs-resolver".into())
                .spawn(move || routes.run(&stop))
                .map_err(StartError::os("starting the resolver thread"))?
        };
        let fast_thread = match &fast {
            Some(f) => {
                let (f, engine, tables, routes, stop) = (
                    f.clone(),
                    engine.clone(),
                    tables.clone(),
                    dp.routes.clone(),
                    stop.clone(),
                );
                Some(
                    std::thread::Builder::new()
                        .name("xvs-fast".into())
                        .spawn(move || f.run(&engine, &tables, &*routes, epoch, &stop))
                        .map_err(StartError::os("starting the fast-path thread"))?,
                )
            }
            None => None,
        };
        let injector = match xvs_xdp::inject::Injector::open("xvs-pass") {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                tracing::warn!("no TAP device for frames the kernel must see ({e}); they will be dropped and counted");
                None
            }
        };
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        for (i, qs) in dp.sets.into_iter().enumerate() {
            let c = worker_counters[i].clone();
            counters.push(c.clone());
            let routes: Arc<dyn xvs_core::Routes + Send + Sync> = dp.routes.clone();
            let mut handler = EngineHandler::new(engine.clone(), tables.clone(), routes);
            if let Some(f) = &fast {
                handler = handler.with_fast_path(f.clone());
            }
            let mut w = Worker {
                qs,
                handler,
                counters: c,
                stop: stop.clone(),
                epoch,
                injector: injector.clone(),
                busy_poll: args.busy_poll,
                spin: std::time::Duration::from_micros(args.spin_us),
            };
            let core = args
                .cores
                .get(i)
                .and_then(|&c| core_ids.iter().find(|id| id.id == c).copied());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("xvs-worker-{i}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        w.run();
                    })
                    .map_err(StartError::os("starting a worker thread"))?,
            );
        }
        tracing::info!(
            "balancing on {} ({} queue{}), {} service(s)",
            args.interfaces.join(", "),
            dp.queues,
            if dp.queues == 1 { "" } else { "s" },
            tables.load().services.len()
        );
        // Keep the program alive in this scope.
        let prog = dp.prog.clone();
        let control = spawn_control(ctl.clone(), listener, stop.clone())?;
        wait(&ctl, &stop, &hup);
        for h in handles.drain(..) {
            let _ = h.join();
        }
        // Its last collection gives the connections what the fast path forwarded.
        if let Some(h) = fast_thread {
            if let Some(f) = &fast {
                f.wake();
            }
            let _ = h.join();
        }
        // The workers are gone: the table is final. It goes to the next xvsd.
        if let Some(path) = handoff_path(args) {
            leave_handoff(&path, &engine);
        }
        let _ = control.join();
        let _ = resolver.join();
        let xdp = prog.counters().unwrap_or_default();
        let rx: u64 = counters.iter().map(|c| c.rx.load(Relaxed)).sum();
        let tx: u64 = counters.iter().map(|c| c.tx.load(Relaxed)).sum();
        tracing::info!(
            "stopping; xdp passed={} redirected={} no_socket={} other_host={}; workers rx={rx} tx={tx}",
            xdp.passed,
            xdp.redirected,
            xdp.no_socket,
            xdp.other_host
        );
        for (name, n) in engine.counters.drop_counts() {
            if n > 0 {
                tracing::info!("dropped {name}={n}");
            }
        }
    } else {
        tracing::info!(
            "control plane only (no --interface), {} service(s)",
            tables.load().services.len()
        );
        let control = spawn_control(ctl.clone(), listener, stop.clone())?;
        wait(&ctl, &stop, &hup);
        let _ = control.join();
    }
    ctl.stop_sync();
    let _ = std::fs::remove_file(&args.control);
    drop(ctl);
    Ok(())
}

/// One AF_XDP socket, as the control thread sees it.
#[derive(Debug)]
struct Sock {
    ifname: String,
    slot: u32,
    queue: u32,
    /// Valid while its worker runs (the control thread stops first).
    fd: i32,
    zero_copy: bool,
}

/// One period of admission (see `xvs_xdp::admission`): each socket's governor reads its ring's
/// overflows and the program's counters of opening packets, and sets the socket's rate.
fn admission_step(prog: &XdpProgram, socks: &[Sock], governors: &mut [AdmitGovernor], secs: f64) {
    for (s, g) in socks.iter().zip(governors.iter_mut()) {
        let (Ok(st), Ok(adm)) = (
            xvs_xdp::xsk::socket_stats(s.fd),
            prog.admit_state(s.slot, s.queue),
        ) else {
            continue;
        };
        if let Some(rate) = g.step(st.rx_ring_full, adm.seen, adm.passed, adm.others, secs) {
            if let Err(e) = prog.set_admit_rate(s.slot, s.queue, rate) {
                tracing::warn!("{} queue {}: setting the SYN rate: {e}", s.ifname, s.queue);
            }
        }
    }
}

/// The text of `xvsadm --xvs-stats` for the data plane.
fn data_stats(
    prog: &XdpProgram,
    socks: &[Sock],
    workers: &[Arc<WorkerCounters>],
    fast: Option<&xvs_xdp::fast::FastPath>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match prog.counters() {
        Ok(x) => {
            let _ = writeln!(
                out,
                "xdp: passed={} redirected={} no_socket={} other_host={} fast={}",
                x.passed, x.redirected, x.no_socket, x.other_host, x.fast
            );
        }
        Err(e) => {
            let _ = writeln!(out, "xdp: counters unavailable: {e}");
        }
    }
    if let Some(f) = fast {
        let c = &f.counters;
        crate::control::counter_line(
            &mut out,
            "fast_path",
            &[
                ("active", c.active.load(Relaxed)),
                ("offered", c.offered.load(Relaxed)),
                ("installed", c.installed.load(Relaxed)),
                ("failed", c.failed.load(Relaxed)),
                ("queue_full", c.queue_full.load(Relaxed)),
                ("removed", c.removed.load(Relaxed)),
                ("packets", c.packets.load(Relaxed)),
                ("bytes", c.bytes.load(Relaxed)),
                ("generations", c.generations.load(Relaxed)),
                ("refused_egress", c.refused_egress.load(Relaxed)),
                ("closed_egress", c.closed_egress.load(Relaxed)),
                ("skipped", c.skipped.load(Relaxed)),
            ],
        );
    }
    for (i, w) in workers.iter().enumerate() {
        crate::control::counter_line(
            &mut out,
            &format!("worker {i}"),
            &[
                ("rx", w.rx.load(Relaxed)),
                ("rx_batches", w.rx_batches.load(Relaxed)),
                ("tx", w.tx.load(Relaxed)),
                ("tx_ring_full", w.tx_ring_full.load(Relaxed)),
                ("no_egress", w.no_egress.load(Relaxed)),
                ("passed_to_kernel", w.passed_to_kernel.load(Relaxed)),
                ("pass_dropped", w.pass_dropped.load(Relaxed)),
                ("engine_drops", w.engine_drops.load(Relaxed)),
                ("multi_buffer", w.multi_buffer.load(Relaxed)),
                ("oversize", w.oversize.load(Relaxed)),
                ("no_frame", w.no_frame.load(Relaxed)),
            ],
        );
    }
    for sock in socks {
        let (ifname, q) = (&sock.ifname, sock.queue);
        let mode = if sock.zero_copy { "zero-copy" } else { "copy" };
        let adm = prog.admit_state(sock.slot, q).unwrap_or_default();
        let rate = prog.admit_rate(sock.slot, q).unwrap_or(0);
        let napi = xvs_xdp::xsk::napi_id(sock.fd).unwrap_or(0);
        match xvs_xdp::xsk::socket_stats(sock.fd) {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "socket {ifname} queue {q} ({mode}): rx_dropped={} rx_invalid_descs={} tx_invalid_descs={} rx_ring_full={} rx_fill_ring_empty_descs={} tx_ring_empty_descs={} admit_rate={rate} admit_seen={} admit_passed={} admit_dropped={} others={} napi_id={napi}",
                    s.rx_dropped, s.rx_invalid_descs, s.tx_invalid_descs, s.rx_ring_full, s.rx_fill_ring_empty_descs, s.tx_ring_empty_descs,
                    adm.seen, adm.passed, adm.dropped, adm.others
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "socket {ifname} queue {q} ({mode}): statistics unavailable: {e}"
                );
            }
        }
    }
    out
}

fn spawn_control(
    ctl: Arc<Control>,
    listener: std::os::unix::net::UnixListener,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name("xvs-control".into())
        .spawn(move || serve(ctl, listener, stop))
        .map_err(StartError::os("starting the control thread"))
}

fn wait(ctl: &Control, stop: &AtomicBool, hup: &AtomicBool) {
    let mut last = Instant::now();
    let mut defence = Instant::now();
    let mut period = Instant::now();
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Relaxed) {
            tracing::info!("SIGHUP: ignored (xvsd has no reload; change rules with xvsadm)");
        }
        (ctl.admission)(period.elapsed().as_secs_f64());
        period = Instant::now();
        if defence.elapsed() >= Duration::from_secs(1) {
            defence = Instant::now();
            ctl.defence_tick();
        }
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            ctl.tick();
        }
    }
}

/// A hash seed from the operating system's random source (the connection table's, and the
/// words of the maps' [`HashSeed`]): clients cannot predict which of their addresses and ports
/// share a shard or a bucket.
fn seed() -> Result<u64, StartError> {
    getrandom::u64().map_err(|e| StartError::Os {
        what: "reading a hash seed from getrandom".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// A fingerprint of the seed for the log (tells two starts apart; reveals nothing usable of it).
fn fingerprint(seed: u64) -> u32 {
    use std::hash::Hasher;
    // SipHash with fixed keys: the same seed, the same fingerprint.
    let mut f = std::hash::DefaultHasher::new();
    f.write_u64(seed);
    f.write_u64(0x7876_7364_7365_6564);
    f.finish() as u32
}

/// The default capacity: as many entries as a 16th of the memory available at start holds at
/// their most ([`xvs_core::conn::ConnTable::max_bytes`]), a power of two from 2^16 to 2^26.
fn default_capacity() -> usize {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(1 << 30, |kib| kib * 1024);
    let budget = avail / 16;
    let mut cap = 1usize << 16;
    while cap < 1 << 26 && xvs_core::conn::ConnTable::new(cap * 2, 0).max_bytes() <= budget {
        cap *= 2;
    }
    cap
}

/// `--sysctl-file`, then each `--sysctl`.
/// The firewall-mark rules of the `--fwmark-rules` files, in order (when given, they replace
/// those of the state file).
fn load_marks(args: &DaemonArgs, director: &mut xvs_core::Director) -> Result<(), StartError> {
    if args.fwmark_rules.is_empty() {
        return Ok(());
    }
    let mut all = xvs_core::marks::MarkRules::default();
    for path in &args.fwmark_rules {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
            path: path.clone(),
            source,
        })?;
        let (rules, notes) = xvs_ipvsadm::marks::parse(&text, &ifindex_of)
            .map_err(|e| StartError::Argument(format!("{}: {e}", path.display())))?;
        for n in notes {
            tracing::info!("{}: {n}", path.display());
        }
        all.rules.extend(rules.rules);
    }
    if !all.is_empty() {
        tracing::info!("{} firewall-mark rule(s)", all.rules.len());
    }
    director.set_marks(all);
    Ok(())
}

/// An interface's index by name (for the mark rules' `-i`).
pub fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

fn apply_sysctls(
    args: &DaemonArgs,
    engine: &Engine,
    director: &mut xvs_core::Director,
) -> Result<(), StartError> {
    if let Some(path) = &args.sysctl_file {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
            path: path.clone(),
            source,
        })?;
        let notes = crate::sysctl::apply_conf(engine, director, &text)
            .map_err(|e| StartError::Sysctl(format!("{}: {e}", path.display())))?;
        for n in notes {
            tracing::info!("{}: {n}", path.display());
        }
    }
    for kv in &args.sysctls {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            StartError::Argument(format!("--sysctl wants NAME=VALUE, got `{kv}'"))
        })?;
        crate::sysctl::set(engine, director, k, v).map_err(StartError::Sysctl)?;
    }
    Ok(())
}
