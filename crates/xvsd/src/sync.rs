//! The sync daemons (`--start-daemon master|backup`): kernel UDP sockets on the multicast
//! interface, as mainline's `ip_vs_sync.c` sets them up (`make_send_sock`,
//! `make_receive_sock`), one per `sync_ports` port. The master's threads take the records the
//! workers queued and send them in datagrams of at most `sync_maxlen` bytes, a partly filled
//! one at most 2 s after its first record; the backup's threads enter received records in the
//! connection table. The XDP program passes this traffic to the kernel like any other that is
//! not a service's.
//!
//! A starting backup asks for a full dump (`wire::dump_request`, an xvs extension a kernel
//! ignores); a master that hears the request sends its whole table, paced, so that a node
//! that rejoins a pair has every connection before it may take the virtual address over.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use xvs_core::sync::{decode, MessageWriter, SyncConn, SyncCounters};
use xvs_core::{Engine, Tables, Time};
use xvs_ipvsadm::parse::{DaemonConfig, DaemonRole};

/// A partly filled message is sent at most this long after its first record.
const FLUSH: Duration = Duration::from_secs(2);
/// How long a sender sleeps when the queue is empty.
const IDLE: Duration = Duration::from_millis(20);
/// How often a receiver looks at its stop flag.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);

struct Running {
    cfg: DaemonConfig,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The running daemons, started and stopped to match the configuration.
pub struct SyncDaemons {
    engine: Arc<Engine>,
    tables: Arc<ArcSwap<Tables>>,
    epoch: Instant,
    master: Option<Running>,
    backup: Option<Running>,
}

impl std::fmt::Debug for SyncDaemons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncDaemons")
            .field("master", &self.master.as_ref().map(|r| &r.cfg))
            .field("backup", &self.backup.as_ref().map(|r| &r.cfg))
            .finish()
    }
}

/// The interface's index and first address of the family.
fn interface(name: &str, v6: bool) -> io::Result<(u32, Option<IpAddr>)> {
    let index = nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::other(format!("{name}: {e}")))?;
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let addr = addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address)
        .find_map(|s| {
            if v6 {
                s.as_sockaddr_in6()
                    .map(|a| IpAddr::V6(a.ip()))
                    .filter(|a| !a.is_loopback())
            } else {
                s.as_sockaddr_in().map(|a| IpAddr::V4(a.ip()))
            }
        });
    Ok((index, addr))
}

fn group_of(cfg: &DaemonConfig) -> IpAddr {
    cfg.group
        .unwrap_or(IpAddr::V4(xvs_core::sync::wire::GROUP_V4))
}

/// A UDP socket of the family of `cfg`'s group, with the group, the multicast interface's index
/// and its first address of that family.
fn udp_socket(cfg: &DaemonConfig) -> io::Result<(Socket, IpAddr, u32, Option<IpAddr>)> {
    let group = group_of(cfg);
    let v6 = group.is_ipv6();
    let (index, addr) = interface(&cfg.mcast_ifn, v6)?;
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    Ok((s, group, index, addr))
}

/// The master's socket for port `port`: multicast out of the interface, no loopback, the
/// configured TTL, bound to the interface's address (IPv4), connected to the group. (The
/// kernel also sets `IP_PMTUDISC_DONT`; a UDP socket's default, `IP_PMTUDISC_WANT`, fragments
/// a datagram above the path MTU as well.)
fn send_socket(cfg: &DaemonConfig, port: u16, sock_size: u32) -> io::Result<Socket> {
    let (s, group, index, addr) = udp_socket(cfg)?;
    let v6 = group.is_ipv6();
    let ttl = u32::from(cfg.ttl.unwrap_or(1));
    if v6 {
        s.set_multicast_if_v6(index)?;
        s.set_multicast_loop_v6(false)?;
        s.set_multicast_hops_v6(ttl)?;
    } else {
        let Some(IpAddr::V4(a)) = addr else {
            return Err(io::Error::other(format!(
                "{} has no IPv4 address to send from",
                cfg.mcast_ifn
            )));
        };
        s.set_multicast_if_v4(&a)?;
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_ttl_v4(ttl)?;
        s.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(a), 0)))?;
    }
    if sock_size > 0 {
        s.set_send_buffer_size(sock_size as usize)?;
    }
    s.connect(&SockAddr::from(SocketAddr::new(group, port)))?;
    Ok(s)
}

/// The backup's socket for port `port`: bound to the group and port on the interface, member
/// of the group there.
fn receive_socket(cfg: &DaemonConfig, port: u16, sock_size: u32) -> io::Result<Socket> {
    let (s, group, index, addr) = udp_socket(cfg)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(cfg.mcast_ifn.as_bytes()))?;
    if sock_size > 0 {
        s.set_recv_buffer_size(sock_size as usize)?;
    }
    s.bind(&SockAddr::from(SocketAddr::new(group, port)))?;
    match group {
        IpAddr::V4(g) => {
            let local = match addr {
                Some(IpAddr::V4(a)) => a,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            s.join_multicast_v4_n(&g, &socket2::InterfaceIndexOrAddress::Index(index))
                .or_else(|_| s.join_multicast_v4(&g, &local))?;
        }
        IpAddr::V6(g) => s.join_multicast_v6(&g, index)?,
    }
    s.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(s)
}

/// Which of `n` ports (a power of two) a record goes out on: by its client, so that one
/// connection's records keep their order.
fn port_of(r: &SyncConn, n: usize) -> usize {
    let h = match r.caddr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => a.octets().chunks(4).fold(0u32, |h, c| {
            h.rotate_left(5) ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]])
        }),
    };
    ((h ^ u32::from(r.cport)).wrapping_mul(0x9e37_79b1) >> 16) as usize & (n - 1)
}

/// Send `w`'s message on `sock`, count it (or its loss), and empty `w` for `syncid`.
fn send_message(sock: &Socket, w: &mut MessageWriter, c: &SyncCounters, syncid: u8) {
    match sock.send(w.bytes()) {
        Ok(n) => {
            c.sent_msgs.fetch_add(1, Relaxed);
            c.sent_conns.fetch_add(w.count() as u64, Relaxed);
            c.sent_bytes.fetch_add(n as u64, Relaxed);
        }
        Err(e) => {
            c.send_dropped.fetch_add(1, Relaxed);
            tracing::debug!("sync: sending a message: {e}");
        }
    }
    w.reset(syncid);
}

/// Messages of a full dump sent between two pauses of [`DUMP_PAUSE`].
const DUMP_BURST: usize = 16;
/// The pause between two bursts of a full dump, so that the peer's socket keeps up.
const DUMP_PAUSE: Duration = Duration::from_millis(1);

/// Send the whole table over `socks` (by [`port_of`]), in messages of `maxlen`, a shard at a
/// time: each shard's records are copied out under its lock, then sent (no lock is held
/// while a datagram goes, and the copy is one shard's, not the table's).
fn send_dump(engine: &Engine, cfg: &DaemonConfig, version: u8, maxlen: usize, socks: &[Socket]) {
    let s = &engine.sync.counters;
    let mut writers: Vec<MessageWriter> = socks
        .iter()
        .map(|_| MessageWriter::new(version, cfg.syncid, maxlen))
        .collect();
    let mut sent = 0;
    let mut flush = |i: usize, w: &mut MessageWriter| {
        if w.is_empty() {
            return;
        }
        send_message(&socks[i], w, s, cfg.syncid);
        sent += 1;
        if sent % DUMP_BURST == 0 {
            std::thread::sleep(DUMP_PAUSE);
        }
    };
    let mut records = Vec::new();
    let mut total = 0;
    for shard in 0..engine.conns.shard_count() {
        records.clear();
        engine.conns.for_each_in_shard(shard, |k, c| {
            records.push(xvs_core::sync::record(k.view(), c, 0))
        });
        total += records.len();
        for r in &records {
            let i = port_of(r, socks.len());
            if !writers[i].push(r) {
                flush(i, &mut writers[i]);
                writers[i].push(r);
            }
        }
    }
    for (i, w) in writers.iter_mut().enumerate() {
        flush(i, w);
    }
    tracing::info!("sync: sent a full dump of {total} entries");
}

/// Whether a dump request of `asked` is for a daemon of `syncid` (0 on either side: any).
fn for_us(asked: u8, syncid: u8) -> bool {
    asked == 0 || syncid == 0 || asked == syncid
}

fn master(
    engine: Arc<Engine>,
    cfg: DaemonConfig,
    socks: Vec<Socket>,
    requests: Socket,
    stop: Arc<AtomicBool>,
) {
    let s = &engine.sync;
    let version = s.settings.version.load(Relaxed) as u8;
    let maxlen = usize::from(cfg.maxlen.unwrap_or(1472));
    let mut writers: Vec<(MessageWriter, Option<Instant>)> = socks
        .iter()
        .map(|_| (MessageWriter::new(version, cfg.syncid, maxlen), None))
        .collect();
    let send =
        |sock: &Socket, w: &mut MessageWriter| send_message(sock, w, &s.counters, cfg.syncid);
    let mut req = [0u8; 64];
    while !stop.load(Relaxed) {
        while let Ok(n) = io::Read::read(&mut &requests, &mut req) {
            if xvs_core::sync::wire::is_dump_request(&req[..n])
                .is_some_and(|id| for_us(id, cfg.syncid))
            {
                send_dump(&engine, &cfg, version, maxlen, &socks);
            }
        }
        let mut got = 0;
        while let Some(r) = s.pop() {
            got += 1;
            let i = port_of(&r, socks.len());
            let (w, first) = &mut writers[i];
            if !w.push(&r) {
                send(&socks[i], w);
                *first = None;
                if !w.push(&r) {
                    // Not carried by this version (IPv6 in version 0).
                    continue;
                }
            }
            first.get_or_insert_with(Instant::now);
            if got >= 4096 {
                break;
            }
        }
        for (i, (w, first)) in writers.iter_mut().enumerate() {
            if first.is_some_and(|f| f.elapsed() >= FLUSH) {
                send(&socks[i], w);
                *first = None;
            }
        }
        if got == 0 {
            std::thread::sleep(IDLE);
        }
    }
}

fn backup(
    engine: Arc<Engine>,
    tables: Arc<ArcSwap<Tables>>,
    epoch: Instant,
    cfg: DaemonConfig,
    sock: Socket,
    stop: Arc<AtomicBool>,
) {
    let s = &engine.sync;
    let maxlen = usize::from(cfg.maxlen.unwrap_or(1472));
    let mut buf = vec![0u8; 65536];
    while !stop.load(Relaxed) {
        let n = match io::Read::read(&mut &sock, &mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!("sync: receiving: {e}");
                std::thread::sleep(RECV_TIMEOUT);
                continue;
            }
        };
        let bytes = &buf[..n];
        if xvs_core::sync::wire::is_dump_request(bytes).is_some() {
            // For the masters of the segment (this node's own included).
            continue;
        }
        s.counters.rx_msgs.fetch_add(1, Relaxed);
        if n > maxlen {
            // As the kernel reads at most sync_maxlen bytes: the size no longer matches.
            s.counters.refused(xvs_core::sync::MessageError::BadSize);
            continue;
        }
        let m = match decode(bytes, cfg.syncid) {
            Ok(m) => m,
            Err(e) => {
                s.counters.refused(e);
                continue;
            }
        };
        let t = tables.load();
        let now = Time(epoch.elapsed().as_millis() as u64);
        for r in m.records {
            let Ok(r) = r else {
                s.counters.rx_bad_records.fetch_add(1, Relaxed);
                continue;
            };
            let c = &s.counters;
            match engine.apply_sync(&t, &r, now) {
                Ok(()) => c.rx_applied.fetch_add(1, Relaxed),
                Err(xvs_core::sync::ApplyError::NoService) => c.rx_no_service.fetch_add(1, Relaxed),
                Err(xvs_core::sync::ApplyError::NoDest) => c.rx_no_dest.fetch_add(1, Relaxed),
                Err(xvs_core::sync::ApplyError::TableFull) => c.rx_table_full.fetch_add(1, Relaxed),
            };
        }
    }
}

impl SyncDaemons {
    /// No daemon running.
    pub fn new(engine: Arc<Engine>, tables: Arc<ArcSwap<Tables>>, epoch: Instant) -> Self {
        SyncDaemons {
            engine,
            tables,
            epoch,
            master: None,
            backup: None,
        }
    }

    /// Start and stop daemons to match `daemons`. A daemon that cannot start is taken out of
    /// `daemons` and its error returned (as the kernel refuses `--start-daemon`).
    pub fn reconcile(&mut self, daemons: &mut Vec<DaemonConfig>) -> Vec<String> {
        let mut errors = Vec::new();
        for role in [DaemonRole::Master, DaemonRole::Backup] {
            let want = daemons.iter().find(|d| d.role == role).cloned();
            let slot = match role {
                DaemonRole::Master => &mut self.master,
                DaemonRole::Backup => &mut self.backup,
            };
            if slot.as_ref().map(|r| &r.cfg) == want.as_ref() {
                continue;
            }
            if let Some(r) = slot.take() {
                r.stop();
            }
            let flag = match role {
                DaemonRole::Master => &self.engine.sync.settings.master,
                DaemonRole::Backup => &self.engine.sync.settings.backup,
            };
            flag.store(false, Relaxed);
            let Some(mut cfg) = want else { continue };
            if cfg.maxlen.is_none() {
                // A backup's default: the interface's MTU, clamped to 1500..65535, less the
                // headers (`start_sync_thread`).
                let mtu = crate::daemon::sysfs(&cfg.mcast_ifn, "mtu")
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(1500);
                let hdr = if group_of(&cfg).is_ipv6() { 48 } else { 28 };
                cfg.maxlen = Some((mtu.clamp(1500, 65535) - hdr) as u16);
                if let Some(d) = daemons.iter_mut().find(|d| d.role == role) {
                    d.maxlen = cfg.maxlen;
                }
            }
            match self.start(&cfg) {
                Ok(r) => {
                    flag.store(true, Relaxed);
                    tracing::info!(
                        "sync daemon started: {} on {}, syncid {}",
                        if role == DaemonRole::Master {
                            "master"
                        } else {
                            "backup"
                        },
                        cfg.mcast_ifn,
                        cfg.syncid
                    );
                    *match role {
                        DaemonRole::Master => &mut self.master,
                        DaemonRole::Backup => &mut self.backup,
                    } = Some(r);
                }
                Err(e) => {
                    daemons.retain(|d| d.role != role);
                    errors.push(format!(
                        "cannot start the sync daemon on {}: {e}",
                        cfg.mcast_ifn
                    ));
                }
            }
        }
        errors
    }

    fn start(&self, cfg: &DaemonConfig) -> io::Result<Running> {
        let st = &self.engine.sync.settings;
        let ports = st.ports.load(Relaxed).clamp(1, 64) as u16;
        let base = cfg.port.unwrap_or(xvs_core::sync::wire::PORT);
        let size = st.sock_size.load(Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f)
        };
        match cfg.role {
            DaemonRole::Master => {
                let maxlen = usize::from(cfg.maxlen.unwrap_or(1472));
                let per = (maxlen.saturating_sub(xvs_core::sync::wire::HEADER_V1))
                    / xvs_core::sync::wire::RECORD_V4;
                self.engine
                    .sync
                    .set_limit(st.qlen_max.load(Relaxed) as usize, per);
                let socks = (0..ports)
                    .map(|i| send_socket(cfg, base.wrapping_add(i), size))
                    .collect::<io::Result<Vec<_>>>()?;
                // Dump requests arrive on the first port.
                let requests = receive_socket(cfg, base, size)?;
                requests.set_nonblocking(true)?;
                let (e, c, s) = (self.engine.clone(), cfg.clone(), stop.clone());
                threads.push(spawn(
                    "xvs-sync-m".into(),
                    Box::new(move || master(e, c, socks, requests, s)),
                )?);
            }
            DaemonRole::Backup => {
                let mut socks = Vec::new();
                for i in 0..ports {
                    socks.push(receive_socket(cfg, base.wrapping_add(i), size)?);
                }
                // Ask the masters of the segment for their tables (a node that rejoins).
                let asker = send_socket(cfg, base, size)?;
                if let Err(e) = asker.send(&xvs_core::sync::wire::dump_request(cfg.syncid)) {
                    tracing::warn!("sync: asking for a full dump: {e}");
                }
                for (i, sock) in socks.into_iter().enumerate() {
                    let (e, t, c, s) = (
                        self.engine.clone(),
                        self.tables.clone(),
                        cfg.clone(),
                        stop.clone(),
                    );
                    let epoch = self.epoch;
                    threads.push(spawn(
                        format!("xvs-sync-b{i}"),
                        Box::new(move || backup(e, t, epoch, c, sock, s)),
                    )?);
                }
            }
        }
        Ok(Running {
            cfg: cfg.clone(),
            stop,
            threads,
        })
    }

    /// Stop every daemon.
    pub fn stop_all(&mut self) {
        for r in [self.master.take(), self.backup.take()]
            .into_iter()
            .flatten()
        {
            r.stop();
        }
    }
}
