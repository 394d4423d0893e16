//! Next hops from the kernel: a route lookup (`RTM_GETROUTE` for the destination, as `ip route
//! get` does) gives the egress and gateway, the neighbour table (`RTM_GETNEIGH`) gives the MAC.
//! A resolver thread keeps a cache that workers read without locks. A destination not in it (a
//! NAT client's first reply) is answered from the main routing table's longest match and the
//! neighbour table, both as of the resolver's last round (once a second); only when that fails
//! is it queued for the resolver, which makes the kernel resolve an unknown neighbour by sending
//! it an empty UDP datagram (port 9, discard) through the normal stack. Until then the packet is
//! dropped and counted (`no_route`), never sent to a wrong MAC. Static neighbours (`--neigh`)
//! take precedence.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
use xvs_core::routes::next_routes_version;
use xvs_core::{NextHop, Routes};

/// What a route lookup says about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Egress interface.
    pub oif: u32,
    /// Gateway, if the destination is not on the link.
    pub gateway: Option<IpAddr>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRoute {
    /// Destination prefix (its family is the route's).
    pub prefix: IpAddr,
    /// Prefix length.
    pub len: u8,
    /// Metric: the lowest wins among routes of one length.
    pub priority: u32,
    /// Egress, gateway, preferred source.
    pub info: RouteInfo,
}

impl TableRoute {
    /// Whether `dst` is in the route's prefix.
    fn covers(&self, dst: &IpAddr) -> bool {
        let bits = |a: &IpAddr| match a {
            IpAddr::V4(v) => (u128::from(v.to_bits()), 32),
            IpAddr::V6(v) => (v.to_bits(), 128),
        };
        let ((p, w), (d, w2)) = (bits(&self.prefix), bits(dst));
        let len = u32::from(self.len);
        w == w2 && len <= w && (len == 0 || (p ^ d) >> (w - len) == 0)
    }
}

/// What a destination not in the cache is answered from: the main table's routes and the
/// neighbour table, as of the resolver's last round.
#[derive(Debug, Default)]
struct Tables {
    routes: Vec<TableRoute>,
    neigh: HashMap<(u32, IpAddr), [u8; 6]>,
}

/// MAC and MTU of an interface xvs transmits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface MAC.
    pub mac: [u8; 6],
    /// Interface MTU.
    pub mtu: u16,
}

/// Read an interface's MAC and MTU from sysfs.
pub fn link_info(ifname: &str) -> io::Result<LinkInfo> {
    let mac_s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mtu_s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))?;
    let mac = xvs_core::routes::parse_mac(mac_s.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad MAC {mac_s:?}")))?;
    let mtu = mtu_s
        .trim()
        .parse::<u32>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(LinkInfo {
        mac,
        mtu: mtu.min(u32::from(u16::MAX)) as u16,
    })
}

/// Destinations waiting for the resolver, at most (more wait for its next round).
const MAX_WANTED: usize = 1024;

/// Destination → next hop, hashed with ahash (read per packet by the workers).
type HopMap = HashMap<IpAddr, NextHop, ahash::RandomState>;

/// The next-hop cache that workers read.
#[derive(Debug)]
pub struct KernelRoutes {
    cache: ArcSwap<HopMap>,
    tables: ArcSwap<Tables>,
    /// Moves on after every store to `cache`, so workers empty their own caches of it.
    version: AtomicU64,
    wanted: Mutex<HashSet<IpAddr>>,
    /// Wakes the resolver when `wanted` gains an address (None: it looks every 20 ms).
    wake: Option<Wake>,
    statics: HashMap<IpAddr, [u8; 6]>,
    links: HashMap<u32, LinkInfo>,
}

/// An eventfd: the data path's "an address is wanted", the resolver's wake-up.
#[derive(Debug)]
struct Wake(std::fs::File);

impl Wake {
    fn new() -> io::Result<Wake> {
        use std::os::fd::FromRawFd;
        // Safety: eventfd takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: `fd` was just created and nothing else owns it.
        Ok(Wake(unsafe { std::fs::File::from_raw_fd(fd) }))
    }

    fn notify(&self) {
        use std::io::Write;
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    fn clear(&self) {
        use std::io::Read;
        let _ = (&self.0).read(&mut [0u8; 8]);
    }
}

impl Routes for KernelRoutes {
    fn next_hop(&self, dst: IpAddr) -> Option<NextHop> {
        if let Some(h) = self.cache.load().get(&dst) {
            return Some(*h);
        }
        if let Some(h) = self.table_answer(dst) {
            return Some(h);
        }
        // Never block a worker: if the resolver holds the set, the next packet asks again.
        // Bounded: a flood of packets to ever new addresses (replies to spoofed clients) must
        // not grow it, nor the resolver's work, without limit.
        if let Ok(mut w) = self.wanted.try_lock() {
            if w.len() < MAX_WANTED && w.insert(dst) {
                if let Some(k) = &self.wake {
                    k.notify();
                }
            }
        }
        None
    }

    fn version(&self) -> Option<u64> {
        // Acquire: a worker that sees a version finds a map at least as new in `cache`.
        Some(self.version.load(Acquire))
    }
}

struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        crate::nl::transact(&mut self.sock, self.seq, msg, dump)
    }

    /// `ip route get DST`: (egress ifindex, gateway if any, preferred source).
    fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<RouteInfo>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if dst.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.destination_prefix_length = if dst.is_ipv6() { 128 } else { 32 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let resp = match self.request(RouteNetlinkMessage::GetRoute(m), false) {
            Ok(r) => r,
            // No route to the destination.
            Err(e)
                if e.raw_os_error() == Some(libc::ENETUNREACH)
                    || e.raw_os_error() == Some(libc::EHOSTUNREACH) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        for r in resp {
            if let RouteNetlinkMessage::NewRoute(rm) = r {
                if rm.header.kind != RouteType::Unicast {
                    return Ok(None);
                }
                let (mut oif, mut gw, mut src) = (None, None, None);
                for a in rm.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(i),
                        RouteAttribute::Gateway(g) => gw = route_ip(&g),
                        RouteAttribute::PrefSource(s) => src = route_ip(&s),
                        _ => {}
                    }
                }
                return Ok(oif.map(|oif| RouteInfo {
                    oif,
                    gateway: gw,
                    src,
                }));
            }
        }
        Ok(None)
    }

    /// `ip route show table main`, unicast routes with one egress (multipath routes are left to
    /// the per-destination lookup).
    fn routes(&mut self) -> io::Result<Vec<TableRoute>> {
        const MAIN: u32 = 254;
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            for r in self.request(RouteNetlinkMessage::GetRoute(m), true)? {
                let RouteNetlinkMessage::NewRoute(rm) = r else {
                    continue;
                };
                if rm.header.kind != RouteType::Unicast {
                    continue;
                }
                let mut table = u32::from(rm.header.table);
                let (mut dst, mut oif, mut gw, mut src, mut prio) = (None, None, None, None, 0);
                for a in rm.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = route_ip(&d),
                        RouteAttribute::Oif(i) => oif = Some(i),
                        RouteAttribute::Gateway(g) => gw = route_ip(&g),
                        RouteAttribute::PrefSource(p) => src = route_ip(&p),
                        RouteAttribute::Priority(p) => prio = p,
                        RouteAttribute::Table(t) => table = t,
                        _ => {}
                    }
                }
                let any = if fam == AddressFamily::Inet6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                };
                if let (MAIN, Some(oif)) = (table, oif) {
                    out.push(TableRoute {
                        prefix: dst.unwrap_or(any),
                        len: rm.header.destination_prefix_length,
                        priority: prio,
                        info: RouteInfo {
                            oif,
                            gateway: gw,
                            src,
                        },
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every usable neighbour entry: (ifindex, address) → MAC.
    fn neighbours(&mut self) -> io::Result<HashMap<(u32, IpAddr), [u8; 6]>> {
        let mut out = HashMap::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = NeighbourMessage::default();
            m.header.family = fam;
            for r in self.request(RouteNetlinkMessage::GetNeighbour(m), true)? {
                if let RouteNetlinkMessage::NewNeighbour(n) = r {
                    out.extend(usable_neighbour(n));
                }
            }
        }
        Ok(out)
    }
}

/// Every address configured on the box (in this network namespace): traffic to them is the
/// kernel's, never a NAT reply for xvs.
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    let mut nl = Netlink::open()?;
    let mut out = Vec::new();
    for r in nl.request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        true,
    )? {
        if let RouteNetlinkMessage::NewAddress(a) = r {
            for attr in a.attributes {
                if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr {
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A neighbour entry whose MAC may be used: ((ifindex, address), MAC).
fn usable_neighbour(n: NeighbourMessage) -> Option<((u32, IpAddr), [u8; 6])> {
    let usable = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    for a in n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(IpAddr::V4(v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => ip = Some(IpAddr::V6(v)),
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some([b[0], b[1], b[2], b[3], b[4], b[5]]);
            }
            _ => {}
        }
    }
    Some(((n.header.ifindex, ip?), mac?))
}

/// A netlink socket that hears the kernel's neighbour changes as they happen (the multicast
/// group RTNLGRP_NEIGH): a client on the link that has just asked for the balancer's MAC is a
/// neighbour of the kernel's before its first packet reaches xvs, and its replies must not
/// wait for the resolver's next round.
struct NeighEvents {
    sock: Socket,
}

impl NeighEvents {
    fn open() -> io::Result<NeighEvents> {
        const RTNLGRP_NEIGH: u32 = 3;
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.add_membership(RTNLGRP_NEIGH)?;
        sock.set_non_blocking(true)?;
        Ok(NeighEvents { sock })
    }

    /// Wait at most `timeout` for neighbour changes or a wake-up; returns the usable entries
    /// heard.
    fn wait(&self, timeout: Duration, wake: Option<&Wake>) -> Vec<((u32, IpAddr), [u8; 6])> {
        use std::os::fd::AsRawFd;
        let mut pfd = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.map_or(-1, |w| w.0.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Safety: two valid pollfds (a negative fd is ignored) for descriptors that outlive
        // the call.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
        let mut out = Vec::new();
        if pfd[1].revents != 0 {
            if let Some(w) = wake {
                w.clear();
            }
        }
        if n <= 0 || pfd[0].revents == 0 {
            return out;
        }
        // Bounded: a neighbour table in upheaval must not keep the resolver from its work.
        for _ in 0..64 {
            let Ok((data, _)) = self.sock.recv_from_full() else {
                break;
            };
            let mut off = 0;
            while off < data.len() {
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]) else {
                    break;
                };
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len;
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) =
                    m.payload
                {
                    out.extend(usable_neighbour(n));
                }
            }
        }
        out
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Ask the kernel to resolve `nh` by sending it an empty datagram through the normal stack.
fn probe(nh: IpAddr) {
    let bind: SocketAddr = if nh.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .expect("literal socket addresses parse");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], SocketAddr::new(nh, 9));
    }
}

impl KernelRoutes {
    /// A cache for the given egress interfaces (ifindex → MAC/MTU) and static neighbours.
    pub fn new(
        links: HashMap<u32, LinkInfo>,
        statics: HashMap<IpAddr, [u8; 6]>,
    ) -> Arc<KernelRoutes> {
        Arc::new(KernelRoutes {
            cache: ArcSwap::from_pointee(HopMap::default()),
            tables: ArcSwap::from_pointee(Tables::default()),
            version: AtomicU64::new(next_routes_version()),
            wanted: Mutex::new(HashSet::new()),
            wake: Wake::new()
                .map_err(|e| tracing::warn!("resolver wake-ups unavailable ({e}); it polls"))
                .ok(),
            statics,
            links,
        })
    }

    /// Add neighbours the kernel has just learnt to the tables destinations not in the cache are
    /// answered from, and publish.
    fn learn(&self, heard: Vec<((u32, IpAddr), [u8; 6])>) {
        let t = self.tables.load();
        let mut neigh = t.neigh.clone();
        neigh.extend(heard);
        self.tables.store(Arc::new(Tables {
            routes: t.routes.clone(),
            neigh,
        }));
        self.version.store(next_routes_version(), Release);
    }

    /// `dst`'s next hop from the main table's longest match and the neighbour table (None when
    /// no route covers it, its egress is not xvs's, or its next hop's MAC is unknown).
    fn table_answer(&self, dst: IpAddr) -> Option<NextHop> {
        let t = self.tables.load();
        let r = t
            .routes
            .iter()
            .filter(|r| r.covers(&dst))
            .max_by_key(|r| (r.len, std::cmp::Reverse(r.priority)))?;
        let link = self.links.get(&r.info.oif)?;
        let nh = r.info.gateway.unwrap_or(dst);
        let dst_mac = self
            .statics
            .get(&nh)
            .copied()
            .or_else(|| t.neigh.get(&(r.info.oif, nh)).copied())?;
        Some(NextHop {
            ifindex: r.info.oif,
            src_mac: link.mac,
            dst_mac,
            mtu: link.mtu,
            src_ip: r.info.src,
        })
    }

    /// Resolve `targets` now (also used at start for the real servers).
    pub fn resolve(
        &self,
        nl: &mut impl ResolverIo,
        targets: &HashSet<IpAddr>,
    ) -> io::Result<HashSet<IpAddr>> {
        let neigh = nl.neighbours()?;
        let mut cache: HopMap =
            HopMap::with_capacity_and_hasher(targets.len(), ahash::RandomState::new());
        let mut unresolved = HashSet::new();
        for &dst in targets {
            // A destination without a usable route is simply not cached (and counted as
            // `no_route` by the data path).
            let Ok(Some(RouteInfo {
                oif,
                gateway: gw,
                src,
            })) = nl.route_get(dst)
            else {
                continue;
            };
            let Some(link) = self.links.get(&oif) else {
                continue;
            };
            let nh = gw.unwrap_or(dst);
            let mac = self
                .statics
                .get(&nh)
                .copied()
                .or_else(|| neigh.get(&(oif, nh)).copied());
            match mac {
                Some(dst_mac) => {
                    cache.insert(
                        dst,
                        NextHop {
                            ifindex: oif,
                            src_mac: link.mac,
                            dst_mac,
                            mtu: link.mtu,
                            src_ip: src,
                        },
                    );
                }
                None => {
                    unresolved.insert(nh);
                    unresolved.insert(dst);
                }
            }
        }
        // A failed dump leaves the fallback as it was.
        if let Ok(routes) = nl.routes() {
            self.tables.store(Arc::new(Tables { routes, neigh }));
        }
        self.cache.store(Arc::new(cache));
        self.version.store(next_routes_version(), Release);
        Ok(unresolved)
    }

    /// Ask the resolver to resolve these addresses soon (e.g. real servers just added).
    pub fn want(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        if let Ok(mut w) = self.wanted.lock() {
            w.extend(addrs);
        }
    }

    /// Resolve `targets` before traffic starts, making the kernel resolve unknown neighbours;
    /// waits at most `timeout`. Returns the addresses still unresolved.
    pub fn warm_up(
        &self,
        targets: &HashSet<IpAddr>,
        timeout: Duration,
    ) -> io::Result<HashSet<IpAddr>> {
        let mut nl = Netlink::open()?;
        let start = Instant::now();
        loop {
            let unresolved = self.resolve(&mut nl, targets)?;
            if unresolved.is_empty() || start.elapsed() >= timeout {
                return Ok(unresolved);
            }
            for nh in &unresolved {
                probe(*nh);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run the resolver until `stop` is set.
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) -> io::Result<()> {
        let mut nl = Netlink::open()?;
        let events = NeighEvents::open()
            .map_err(|e| tracing::warn!("neighbour events unavailable ({e}); the resolver polls"))
            .ok();
        let mut last_full = Instant::now() - Duration::from_secs(10);
        let mut last_probe: HashMap<IpAddr, Instant> = HashMap::new();
        let mut unresolved_left = false;
        while !stop.load(Relaxed) {
            let wanted: HashSet<IpAddr> = match self.wanted.lock() {
                Ok(mut w) => w.drain().collect(),
                Err(p) => p.into_inner().drain().collect(),
            };
            let refresh = last_full.elapsed() >= Duration::from_secs(1);
            if !wanted.is_empty() || refresh {
                let mut targets: HashSet<IpAddr> = self.cache.load().keys().copied().collect();
                targets.extend(wanted);
                let unresolved = match self.resolve(&mut nl, &targets) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!("resolver: {e}");
                        targets
                    }
                };
                for nh in &unresolved {
                    let due = last_probe
                        .get(nh)
                        .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
                    if due && !self.links.is_empty() {
                        probe(*nh);
                        last_probe.insert(*nh, Instant::now());
                    }
                }
                unresolved_left = !unresolved.is_empty();
                if let Ok(mut w) = self.wanted.lock() {
                    w.extend(unresolved);
                }
                if refresh {
                    last_full = Instant::now();
                }
            }
            match (&events, &self.wake) {
                // Woken by the neighbour events and the data path's wants: otherwise asleep
                // until the next refresh, or the next probe of an address still unresolved.
                (Some(ev), Some(wake)) => {
                    let refresh_in = Duration::from_secs(1).saturating_sub(last_full.elapsed());
                    let wait = if unresolved_left {
                        refresh_in.min(Duration::from_millis(200))
                    } else {
                        refresh_in
                    };
                    let heard = ev.wait(wait.max(Duration::from_millis(1)), Some(wake));
                    if !heard.is_empty() {
                        self.learn(heard);
                    }
                }
                (Some(ev), None) => {
                    let heard = ev.wait(Duration::from_millis(20), None);
                    if !heard.is_empty() {
                        self.learn(heard);
                    }
                }
                (None, _) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Ok(())
    }
}

/// What the resolver needs from the kernel (a trait so the cache logic can be tested without
/// netlink).
pub trait ResolverIo {
    /// Route lookup for a destination.
    fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<RouteInfo>>;
    /// The neighbour table.
    fn neighbours(&mut self) -> io::Result<HashMap<(u32, IpAddr), [u8; 6]>>;
    /// The main table's unicast routes.
    fn routes(&mut self) -> io::Result<Vec<TableRoute>>;
}

impl ResolverIo for Netlink {
    fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<RouteInfo>> {
        Netlink::route_get(self, dst)
    }
    fn neighbours(&mut self) -> io::Result<HashMap<(u32, IpAddr), [u8; 6]>> {
        Netlink::neighbours(self)
    }
    fn routes(&mut self) -> io::Result<Vec<TableRoute>> {
        Netlink::routes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes 192.168.1.0/24 on the link, the rest via the gateway 192.168.1.1 (a neighbour at
    /// the MAC it holds), IPv6 out of an interface xvs does not use.
    struct Fake([u8; 6]);

    impl ResolverIo for Fake {
        fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<RouteInfo>> {
            Ok(match dst {
                IpAddr::V4(a) if a.octets()[0] == 192 => Some(RouteInfo {
                    oif: 2,
                    gateway: None,
                    src: Some("192.168.1.254".parse().unwrap()),
                }),
                IpAddr::V4(_) => Some(RouteInfo {
                    oif: 2,
                    gateway: Some("192.168.1.1".parse().unwrap()),
                    src: None,
                }),
                IpAddr::V6(_) => Some(RouteInfo {
                    oif: 9,
                    gateway: None,
                    src: None,
                }),
            })
        }
        fn neighbours(&mut self) -> io::Result<HashMap<(u32, IpAddr), [u8; 6]>> {
            Ok(HashMap::from([
                ((2, "192.168.1.1".parse().unwrap()), self.0),
                ((2, "192.168.1.20".parse().unwrap()), [0x20; 6]),
            ]))
        }
        fn routes(&mut self) -> io::Result<Vec<TableRoute>> {
            let route = |prefix: &str, len, gateway: Option<&str>, oif, priority| TableRoute {
                prefix: prefix.parse().unwrap(),
                len,
                priority,
                info: RouteInfo {
                    oif,
                    gateway: gateway.map(|g| g.parse().unwrap()),
                    src: None,
                },
            };
            Ok(vec![
                route("0.0.0.0", 0, Some("192.168.1.1"), 2, 0),
                // A worse default: the metric decides between routes of one length.
                route("0.0.0.0", 0, Some("192.168.1.99"), 2, 100),
                route("192.168.1.0", 24, None, 2, 0),
                route("::", 0, None, 9, 0),
            ])
        }
    }

    /// A destination the resolver never looked up is answered from the main table's longest
    /// match and the neighbour table; one the table cannot answer is queued.
    #[test]
    fn destinations_not_yet_resolved_follow_the_routing_table() {
        let r = KernelRoutes::new(links(), HashMap::new());
        // Before any round: nothing to answer from.
        assert!(r.next_hop("10.1.2.3".parse().unwrap()).is_none());
        r.resolve(&mut Fake([1; 6]), &HashSet::new()).unwrap();
        r.wanted.lock().unwrap().clear();
        // Via the default route of the lowest metric: its gateway's MAC.
        let h = r.next_hop("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!((h.ifindex, h.dst_mac, h.src_mac), (2, [1; 6], [9; 6]));
        // On the link, a known neighbour: its own MAC (the /24 is longer than the default).
        assert_eq!(
            r.next_hop("192.168.1.20".parse().unwrap()).unwrap().dst_mac,
            [0x20; 6]
        );
        // Answered from the table: nothing queued.
        assert!(r.wanted.lock().unwrap().is_empty());
        // On the link, unknown: queued. Out of an interface xvs does not use: queued.
        assert!(r.next_hop("192.168.1.21".parse().unwrap()).is_none());
        assert!(r.next_hop("fd00::7".parse().unwrap()).is_none());
        assert_eq!(r.wanted.lock().unwrap().len(), 2);
    }

    #[test]
    fn prefixes_cover_what_they_should() {
        let route = |p: &str, len| TableRoute {
            prefix: p.parse().unwrap(),
            len,
            priority: 0,
            info: RouteInfo {
                oif: 1,
                gateway: None,
                src: None,
            },
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(route("10.0.0.0", 8).covers(&ip("10.255.1.1")));
        assert!(!route("10.0.0.0", 8).covers(&ip("11.0.0.1")));
        assert!(route("0.0.0.0", 0).covers(&ip("1.2.3.4")));
        assert!(!route("0.0.0.0", 0).covers(&ip("::1")));
        assert!(route("10.1.2.3", 32).covers(&ip("10.1.2.3")));
        assert!(!route("10.1.2.3", 32).covers(&ip("10.1.2.2")));
        assert!(route("fd00::", 64).covers(&ip("fd00::1:2")));
        assert!(!route("fd00::", 64).covers(&ip("fd00:0:0:1::1")));
        assert!(route("::", 0).covers(&ip("2001:db8::1")));
    }

    /// Interface 2, the one xvs transmits on.
    fn links() -> HashMap<u32, LinkInfo> {
        HashMap::from([(
            2,
            LinkInfo {
                mac: [9; 6],
                mtu: 1500,
            },
        )])
    }

    #[test]
    fn gateway_neighbour_and_misses() {
        let r = KernelRoutes::new(
            links(),
            HashMap::from([("192.168.1.7".parse().unwrap(), [7; 6])]),
        );
        let targets: HashSet<IpAddr> = ["10.9.9.9", "192.168.1.7", "192.168.1.8", "fd00::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let unresolved = r.resolve(&mut Fake([1; 6]), &targets).unwrap();
        // Via the gateway 192.168.1.1 (known neighbour).
        let h = r.next_hop("10.9.9.9".parse().unwrap()).unwrap();
        assert_eq!(
            (h.ifindex, h.dst_mac, h.src_mac, h.mtu),
            (2, [1; 6], [9; 6], 1500)
        );
        // A static neighbour.
        assert_eq!(
            r.next_hop("192.168.1.7".parse().unwrap()).unwrap().dst_mac,
            [7; 6]
        );
        // Unknown neighbour: not in the cache, queued for resolution.
        assert!(unresolved.contains(&"192.168.1.8".parse().unwrap()));
        assert!(r.next_hop("192.168.1.8".parse().unwrap()).is_none());
        // Egress not attached to xvs: not cached.
        assert!(r.next_hop("fd00::1".parse().unwrap()).is_none());
        assert!(r
            .wanted
            .lock()
            .unwrap()
            .contains(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn every_publish_moves_the_version_and_workers_follow() {
        let r = KernelRoutes::new(links(), HashMap::new());
        // Via the gateway, whose MAC changes between the two resolutions.
        let dst: IpAddr = "10.9.9.9".parse().unwrap();
        let targets = HashSet::from([dst]);
        let mut cache = xvs_core::hops::HopCache::new();
        let v0 = r.version();
        r.resolve(&mut Fake([1; 6]), &targets).unwrap();
        let v1 = r.version();
        assert_ne!(v0, v1);
        cache.sync(&*r);
        assert_eq!(cache.get(&*r, &dst).unwrap().dst_mac, [1; 6]);
        assert_eq!(cache.get(&*r, &dst).unwrap().dst_mac, [1; 6]);
        assert_eq!(cache.hits, 1);
        // The neighbour moved: the next publish moves the version, the next batch sees it.
        r.resolve(&mut Fake([2; 6]), &targets).unwrap();
        assert_ne!(r.version(), v1);
        cache.sync(&*r);
        assert_eq!(cache.get(&*r, &dst).unwrap().dst_mac, [2; 6]);
    }
}
