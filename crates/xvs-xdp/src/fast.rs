//! The fast path's entries in the XDP program (`fast` in `bpf/xvs.bpf.c`): installed from the
//! workers' offloads, collected and removed by one thread.
//!
//! Workers queue what the data path offers ([`FastPath::offer`], lock-free, never blocking a
//! worker); the fast-path thread ([`FastPath::run`]) installs it, and once a second reads every
//! entry: what it forwarded goes to the connection and the statistics
//! ([`Engine::offloaded`]), and an entry whose connection is gone, which the program marked
//! dead (a SYN, FIN or RST came; a configuration generation passed) or whose generation is old
//! is removed, as is one whose next hop changed (interface, MAC or MTU). A published
//! configuration starts a new generation ([`FastPath::invalidate`]): every older entry stops
//! at its next segment, which goes to xvsd and, when the connection still forwards the same
//! way, offloads it again.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use xvs_core::offload::{FastCounts, Offload};
use xvs_core::{Engine, Routes, Tables, Time};

use crate::bpf::XdpProgram;

/// A direction of a connection as its segments arrive (`struct fast_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct FastKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport_be: u16,
    dport_be: u16,
    family: u8,
    pad: [u8; 3],
}

/// An entry (`struct fast_val`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastVal {
    eth: [u8; 12],
    addr: [u8; 16],
    port_be: u16,
    op: u8,
    flags: u8,
    ifindex: u32,
    gen: u32,
    max_ip_len: u16,
    ip_delta: u16,
    l4_delta: u16,
    pad2: u16,
    dead: u32,
    pad3: u32,
    packets: u64,
    bytes: u64,
    last_ns: u64,
    src: [u8; 16],
    outer_v6: u8,
    tun_len: u8,
    tun_proto: u8,
    pad4: [u8; 5],
    tun: [u8; 12],
    pad5: [u8; 4],
}

fn addr16(a: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => b = v.octets(),
    }
    b
}

/// A ones' complement difference of big-endian words as the program adds it: to a checksum
/// loaded as a native-endian word (RFC 1071: the sum in either byte order is the other's
/// bytes swapped).
fn native(delta: u16) -> u16 {
    u16::from_be_bytes(delta.to_ne_bytes())
}

impl FastKey {
    fn of(o: &Offload) -> FastKey {
        FastKey {
            saddr: addr16(&o.saddr),
            daddr: addr16(&o.daddr),
            sport_be: o.sport.to_be(),
            dport_be: o.dport.to_be(),
            family: if o.saddr.is_ipv6() { 6 } else { 4 },
            pad: [0; 3],
        }
    }
}

/// `fast_val.flags`: send by a redirect even to the interface the segment came in on (not
/// `XDP_TX`), as a veth needs (see [`Egress`]).
const FAST_F_REDIRECT: u8 = 1;

impl FastVal {
    fn of(o: &Offload, gen: u32, redirect: bool) -> FastVal {
        FastVal {
            eth: o.eth,
            addr: addr16(&o.addr),
            port_be: o.port.to_be(),
            op: o.op as u8,
            flags: if redirect { FAST_F_REDIRECT } else { 0 },
            ifindex: o.ifindex,
            gen,
            max_ip_len: o.max_ip_len,
            ip_delta: native(o.ip_delta),
            l4_delta: native(o.l4_delta),
            src: addr16(&o.src),
            outer_v6: u8::from(o.src.is_ipv6()),
            tun_len: o.tunnel.len,
            tun_proto: o.tunnel.proto,
            tun: o.tunnel.bytes,
            ..FastVal::default()
        }
    }
}

/// Counters of the fast path, for `--xvs-stats`.
#[derive(Debug, Default)]
pub struct FastCounters {
    /// Directions of connections the workers offered.
    pub offered: AtomicU64,
    /// Offers lost because the queue to the fast-path thread was full.
    pub queue_full: AtomicU64,
    /// Entries installed.
    pub installed: AtomicU64,
    /// Installs the kernel refused (the map full, no memory).
    pub failed: AtomicU64,
    /// Entries removed (connection ended or gone, new generation).
    pub removed: AtomicU64,
    /// Entries in the program now.
    pub active: AtomicU64,
    /// Segments and IP bytes the entries forwarded, as collected.
    pub packets: AtomicU64,
    /// IP bytes.
    pub bytes: AtomicU64,
    /// Generations started (configurations published).
    pub generations: AtomicU64,
    /// Egress interfaces the fast path stopped using because they refused its frames.
    pub refused_egress: AtomicU64,
    /// Times a veth egress was found taking no frames from XDP (its peer runs no NAPI): its
    /// entries end, its connections stay on the slow path until it takes them again.
    pub closed_egress: AtomicU64,
    /// Offers not installed because their egress took no frames from XDP (their connections
    /// stay on the slow path).
    pub skipped: AtomicU64,
}

/// Offers waiting for the fast-path thread; more are dropped and counted (their connections
/// stay on the slow path).
const QUEUE: usize = 65_536;

/// How often it collects every entry's counts.
const COLLECT_PERIOD: Duration = Duration::from_secs(1);

/// The fast path of one XDP program.
#[derive(Debug)]
pub struct FastPath {
    prog: Arc<XdpProgram>,
    queue: ArrayQueue<(u32, Offload)>,
    /// The fast-path thread, woken by each offer (it sleeps up to a collection period).
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Leave the entries in the program when the thread stops.
    keep: AtomicBool,
    gen: AtomicU32,
    /// Counters.
    pub counters: FastCounters,
}

/// An installed entry as the thread remembers it: the offload, its generation and what has
/// been collected of its counts.
struct Installed {
    o: Offload,
    gen: u32,
    packets: u64,
    bytes: u64,
}

/// The monotonic clock in ns, as `bpf_ktime_get_ns` reads it.
fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The egress interfaces: whether they take the frames the fast path sends them.
///
/// A NIC takes XDP frames or refuses the program; an interface whose XDP transmit errors
/// (`*_xdp_tx_errors`, `*_xdp_xmit_errors` in its driver statistics) grow while entries send
/// from it is refused for good.
///
/// A veth takes them only while its peer runs NAPI (an XDP program there, or GRO), and loses
/// them silently otherwise (mainline v6.12, `drivers/net/veth.c`): `veth_xdp_xmit` refuses a
/// peer without NAPI before it counts anything, and after `XDP_TX` `veth_xdp_flush` wakes
/// the peer's NAPI only when the peer has an XDP program, so with GRO alone the frames wait
/// in its ring unseen. So the fast path sends to a veth by a redirect, even back out of the
/// interface a segment came in on (a redirect wakes the peer's NAPI whatever turned it on),
/// and uses a veth only while its XDP features (the `netdev` netlink family) say it takes
/// redirected frames, which the kernel keeps in step with the peer (`veth_set_xdp_features`).
/// A veth that stops taking them has its entries ended within a collection period; the
/// connections offered while it is closed stay on the slow path, and those made once it takes
/// frames again use it.
#[derive(Default)]
struct Egress {
    /// Interfaces: their names and XDP transmit errors at the last look.
    seen: HashMap<u32, (String, u64)>,
    refused: HashSet<u32>,
    /// Whether each interface is a veth (its driver), looked up once.
    veth: HashMap<u32, bool>,
    /// Veths that took no redirected frames at the last look.
    closed: HashSet<u32>,
    /// Veths looked at, and when.
    looked: HashMap<u32, Instant>,
    /// The `netdev` family, opened at the first look at a veth (`Some(None)` on a kernel
    /// without it: veths are then used as they are).
    netdev: Option<Option<crate::netdev::Netdev>>,
}

impl Egress {
    /// Whether `ifindex` is a veth.
    fn is_veth(&mut self, ifindex: u32) -> bool {
        *self.veth.entry(ifindex).or_insert_with(|| {
            if_name(ifindex)
                .and_then(|n| crate::ethtool::driver(&n).ok())
                .is_some_and(|d| d == "veth")
        })
    }

    /// Whether `ifindex` takes frames from XDP now, as far as its XDP features tell (only a
    /// veth's change with its peer); looked up at most twice per collection period. A veth
    /// found closed is counted and logged.
    fn open(&mut self, ifindex: u32, counters: &FastCounters) -> bool {
        if !self.is_veth(ifindex) {
            return true;
        }
        if self
            .looked
            .get(&ifindex)
            .is_some_and(|t| t.elapsed() < COLLECT_PERIOD / 2)
        {
            return !self.closed.contains(&ifindex);
        }
        self.looked.insert(ifindex, Instant::now());
        let netdev = self
            .netdev
            .get_or_insert_with(|| match crate::netdev::Netdev::open() {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(
                        "fast path: no XDP features from the kernel ({e}): a veth whose peer runs no NAPI loses the frames sent to it"
                    );
                    None
                }
            });
        let takes = match netdev.as_mut().map(|n| n.xdp_features(ifindex)) {
            Some(Ok(f)) => f & crate::netdev::XDP_ACT_NDO_XMIT != 0,
            // Gone, or no way to tell: as it is.
            Some(Err(_)) | None => true,
        };
        let was = !self.closed.contains(&ifindex);
        if takes {
            self.closed.remove(&ifindex);
            if !was {
                tracing::info!(
                    "fast path: {} takes frames from XDP again",
                    self.name(ifindex)
                );
            }
        } else if was {
            self.closed.insert(ifindex);
            counters.closed_egress.fetch_add(1, Relaxed);
            tracing::warn!(
                "fast path: {} takes no frames from XDP (a veth whose peer runs no NAPI: an XDP program or GRO on the peer turns it on); its connections stay on the slow path while it does not",
                self.name(ifindex)
            );
        }
        takes
    }

    fn name(&self, ifindex: u32) -> String {
        self.seen
            .get(&ifindex)
            .map(|(n, _)| n.clone())
            .or_else(|| if_name(ifindex))
            .unwrap_or_else(|| ifindex.to_string())
    }

    /// The interfaces of `used` newly found refusing.
    fn refusing(&mut self, used: &HashSet<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        for &ifindex in used {
            // A veth's transmit errors also count frames its peer's full ring dropped, a
            // moment's congestion; whether it takes frames at all is in its features.
            if self.refused.contains(&ifindex) || self.veth.get(&ifindex) == Some(&true) {
                continue;
            }
            let Some(name) = self
                .seen
                .get(&ifindex)
                .map(|(n, _)| n.clone())
                .or_else(|| if_name(ifindex))
            else {
                continue;
            };
            let Some(errors) = xdp_tx_errors(&name) else {
                continue;
            };
            let before = self.seen.insert(ifindex, (name, errors)).map(|(_, e)| e);
            if before.is_some_and(|b| errors > b) {
                self.refused.insert(ifindex);
                out.push(ifindex);
            }
        }
        out
    }
}

fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // Safety: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..len].to_vec()).ok()
}

/// The sum of an interface's XDP transmit error counters; None when it has none (a driver
/// without them).
fn xdp_tx_errors(name: &str) -> Option<u64> {
    let stats = crate::ethtool::stats(name).ok()?;
    let errors: Vec<u64> = stats
        .iter()
        .filter(|(n, _)| n.ends_with("xdp_tx_errors") || n.ends_with("xdp_xmit_errors"))
        .map(|(_, v)| *v)
        .collect();
    (!errors.is_empty()).then(|| errors.iter().sum())
}

/// Whether the next hop of `o`'s egress is no longer the one it was made with (another
/// interface, MAC or MTU): the entry ends, and the connection's next segment through xvsd
/// offloads it with the new one.
fn hop_moved(routes: &dyn Routes, o: &Offload) -> bool {
    let to = match o.dir {
        xvs_core::proto::Direction::Input => o.addr,
        xvs_core::proto::Direction::Output => o.daddr,
    };
    // A tunnel entry's room is the MTU less the outer headers.
    let over = match o.op {
        xvs_core::offload::FastOp::Tunnel if o.src.is_ipv6() => 40 + u16::from(o.tunnel.len),
        xvs_core::offload::FastOp::Tunnel => 20 + u16::from(o.tunnel.len),
        _ => 0,
    };
    routes.next_hop(to).is_none_or(|h| {
        h.ifindex != o.ifindex
            || h.dst_mac[..] != o.eth[..6]
            || h.src_mac[..] != o.eth[6..]
            || h.mtu.saturating_sub(over) != o.max_ip_len
    })
}

/// What `v` forwarded since `e` was collected, its last segment on the engine's clock.
fn counts(v: &FastVal, e: &Installed, now: Time) -> FastCounts {
    FastCounts {
        packets: v.packets.saturating_sub(e.packets),
        bytes: v.bytes.saturating_sub(e.bytes),
        last: (v.last_ns != 0).then(|| {
            let ago_ms = ktime_ns().saturating_sub(v.last_ns) / 1_000_000;
            Time(now.0.saturating_sub(ago_ms))
        }),
    }
}

impl FastPath {
    /// The fast path of `prog`, generation 1.
    pub fn new(prog: Arc<XdpProgram>) -> Result<FastPath, crate::bpf::BpfError> {
        prog.set_fast_gen(1)?;
        Ok(FastPath {
            prog,
            queue: ArrayQueue::new(QUEUE),
            thread: std::sync::OnceLock::new(),
            keep: AtomicBool::new(false),
            gen: AtomicU32::new(1),
            counters: FastCounters::default(),
        })
    }

    /// Wake the thread (to see its stop flag at once).
    pub fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Leave the entries in the program when the thread stops: with a program that outlives
    /// xvsd (`--keep-attached`), established connections keep flowing until the next xvsd.
    pub fn keep_entries(&self, keep: bool) {
        self.keep.store(keep, Relaxed);
    }

    /// The generation now; a worker reads it before it loads the tables its offers come from.
    pub fn generation(&self) -> u32 {
        self.gen.load(Relaxed)
    }

    /// Queue a worker's offer made in generation `gen`.
    pub fn offer(&self, gen: u32, o: Offload) {
        self.counters.offered.fetch_add(1, Relaxed);
        if self.queue.push((gen, o)).is_err() {
            self.counters.queue_full.fetch_add(1, Relaxed);
        } else if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Start a new generation: every entry made before stops at its next segment. Call it
    /// after publishing the tables that make the change.
    pub fn invalidate(&self) {
        let g = self.gen.fetch_add(1, Relaxed).wrapping_add(1);
        if let Err(e) = self.prog.set_fast_gen(g) {
            tracing::error!("fast path: {e}");
        }
        self.counters.generations.fetch_add(1, Relaxed);
    }

    /// Install, collect and remove until `stop`; entries whose next hop in `routes` moved
    /// end. `epoch` is the engine clock's zero. Removes every entry when it stops, unless
    /// told to keep them ([`FastPath::keep_entries`]).
    pub fn run(
        &self,
        engine: &Engine,
        tables: &ArcSwap<Tables>,
        routes: &dyn Routes,
        epoch: Instant,
        stop: &AtomicBool,
    ) {
        let mut entries: HashMap<FastKey, Installed> = HashMap::new();
        let mut egress = Egress::default();
        let mut last_collect = Instant::now();
        let _ = self.thread.set(std::thread::current());
        while !stop.load(Relaxed) {
            // Woken by an offer; else at the next collection (an idle xvsd wakes once a second).
            std::thread::park_timeout(COLLECT_PERIOD.saturating_sub(last_collect.elapsed()));
            let t = tables.load();
            let now = Time(epoch.elapsed().as_millis() as u64);
            while let Some((gen, o)) = self.queue.pop() {
                if egress.refused.contains(&o.ifindex) {
                    // Left flagged: the connection stays on the slow path, offering nothing.
                    continue;
                }
                if !egress.open(o.ifindex, &self.counters) {
                    // Left flagged, as above (offering each segment again would wake this
                    // thread for every one); connections made once it opens again use it.
                    self.counters.skipped.fetch_add(1, Relaxed);
                    continue;
                }
                let redirect = egress.is_veth(o.ifindex);
                let key = FastKey::of(&o);
                if let Some(old) = entries.remove(&key) {
                    // Replaced: what the old entry forwarded goes to its connection, whose
                    // flag stays when it is the same connection offered again.
                    let n = self.counts_since(&key, &old, now);
                    let same = old.o.conn == o.conn && old.o.dir == o.dir;
                    engine.offloaded(&t, &old.o, n, !same, now);
                }
                match self.prog.fast_put(&key, &FastVal::of(&o, gen, redirect)) {
                    Ok(()) => {
                        self.counters.installed.fetch_add(1, Relaxed);
                        entries.insert(
                            key,
                            Installed {
                                o,
                                gen,
                                packets: 0,
                                bytes: 0,
                            },
                        );
                    }
                    Err(_) => {
                        self.counters.failed.fetch_add(1, Relaxed);
                        // The connection may offer itself again at a later segment.
                        engine.offloaded(&t, &o, FastCounts::default(), true, now);
                    }
                }
            }
            if last_collect.elapsed() >= COLLECT_PERIOD {
                last_collect = Instant::now();
                let gen = self.generation();
                let used: HashSet<u32> = entries.values().map(|e| e.o.ifindex).collect();
                for &ifindex in &used {
                    egress.open(ifindex, &self.counters);
                }
                for ifindex in egress.refusing(&used) {
                    self.counters.refused_egress.fetch_add(1, Relaxed);
                    tracing::warn!(
                        "fast path: interface {} drops the frames XDP sends it; its connections stay on the slow path",
                        egress.name(ifindex)
                    );
                }
                let keys: Vec<FastKey> = entries.keys().copied().collect();
                for key in keys {
                    let e = entries.remove(&key).expect("listed");
                    let stale = e.gen != gen
                        || hop_moved(routes, &e.o)
                        || egress.refused.contains(&e.o.ifindex)
                        || egress.closed.contains(&e.o.ifindex);
                    if let Some(e) = self.collect(engine, &t, &key, e, stale, now, true) {
                        entries.insert(key, e);
                    }
                }
            }
            self.counters.active.store(entries.len() as u64, Relaxed);
        }
        let t = tables.load();
        let now = Time(epoch.elapsed().as_millis() as u64);
        for (key, e) in entries.drain() {
            if self.keep.load(Relaxed) {
                // The program stays attached: its entries keep forwarding their connections
                // until the next xvsd replaces it. What they forwarded so far goes to the table
                // that xvsd hands over.
                let n = self.counts_since(&key, &e, now);
                engine.offloaded(&t, &e.o, n, false, now);
            } else {
                self.collect(engine, &t, &key, e, true, now, false);
            }
        }
        self.counters.active.store(0, Relaxed);
    }

    /// What the entry at `key` forwarded since `e` was last collected.
    fn counts_since(&self, key: &FastKey, e: &Installed, now: Time) -> FastCounts {
        let n = self
            .prog
            .fast_get(key)
            .map_or_else(FastCounts::default, |v| counts(&v, e, now));
        self.counters.packets.fetch_add(n.packets, Relaxed);
        self.counters.bytes.fetch_add(n.bytes, Relaxed);
        n
    }

    /// Give the connection what entry `e` forwarded since the last time; remove the entry when
    /// `end`, when the program marked it dead, or when the connection is gone. The entry when
    /// it stays.
    #[allow(clippy::too_many_arguments)] // The thread's state, passed as it has it.
    fn collect(
        &self,
        engine: &Engine,
        t: &Tables,
        key: &FastKey,
        mut e: Installed,
        end: bool,
        now: Time,
        keep: bool,
    ) -> Option<Installed> {
        let v = self.prog.fast_get(key);
        let n = match &v {
            Some(v) => counts(v, &e, now),
            None => FastCounts::default(),
        };
        let end = end || !keep || v.is_none_or(|v| v.dead != 0);
        if let Some(v) = &v {
            e.packets = v.packets;
            e.bytes = v.bytes;
        }
        self.counters.packets.fetch_add(n.packets, Relaxed);
        self.counters.bytes.fetch_add(n.bytes, Relaxed);
        let alive = engine.offloaded(t, &e.o, n, end, now);
        if end || !alive {
            if v.is_some() {
                self.prog.fast_remove(key);
            }
            self.counters.removed.fetch_add(1, Relaxed);
            return None;
        }
        Some(e)
    }
}
