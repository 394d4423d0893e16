//! Virtual services and the immutable snapshot of all tables that the data path reads.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::{HashMap, HashSet};

use crate::hash::HashSeed;

use crate::dest::DestState;
use crate::hash::hash_endpoint;
use crate::proto::Timeouts;
use crate::sched::{SchedFlags, SchedInput, Scheduler};
use crate::stats::Stats;
use crate::types::{Af, ForwardMethod, Netmask, Protocol, ServiceKey};

/// Service flag: persistent (`-p`).
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// Service flag: one-packet scheduling (`-o`).
pub const SVC_F_ONEPACKET: u32 = 0x4;
/// Service flag: scheduler flag 1 (`sh-fallback` / `mh-fallback` / `flag-1`).
pub const SVC_F_SCHED1: u32 = 0x8;
/// Service flag: scheduler flag 2 (`sh-port` / `mh-port` / `flag-2`).
pub const SVC_F_SCHED2: u32 = 0x10;
/// Service flag: scheduler flag 3 (`flag-3`).
pub const SVC_F_SCHED3: u32 = 0x20;

/// Configuration of a virtual service as `-A`/`-E` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Identity.
    pub key: ServiceKey,
    /// Scheduler name.
    pub scheduler: String,
    /// PERSISTENT, ONEPACKET and SCHED1..3 bits.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with PERSISTENT).
    pub timeout: u32,
    /// Persistence netmask.
    pub netmask: Netmask,
    /// Persistence engine name (xvs supports none; kept for display of refused input).
    pub pe: Option<String>,
}

impl ServiceConfig {
    /// A service with ipvsadm's defaults (wlc, not persistent, full mask).
    pub fn new(key: ServiceKey) -> ServiceConfig {
        ServiceConfig {
            key,
            scheduler: "wlc".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::full(key.af()),
            pe: None,
        }
    }

    /// `-p`.
    pub fn is_persistent(&self) -> bool {
        self.flags & SVC_F_PERSISTENT != 0
    }

    /// `-o`.
    pub fn is_one_packet(&self) -> bool {
        self.flags & SVC_F_ONEPACKET != 0
    }

    /// The scheduler flags, as the schedulers read them.
    pub fn sched_flags(&self) -> SchedFlags {
        SchedFlags {
            fallback: self.flags & SVC_F_SCHED1 != 0,
            port: self.flags & SVC_F_SCHED2 != 0,
        }
    }
}

/// State of a service that outlives configuration snapshots: counters and the scheduler.
#[derive(Debug)]
pub struct ServiceLive {
    /// Traffic counters.
    pub stats: Stats,
    sched: Mutex<Box<dyn Scheduler>>,
}

impl ServiceLive {
    pub(crate) fn new(sched: Box<dyn Scheduler>) -> ServiceLive {
        ServiceLive {
            stats: Stats::default(),
            sched: Mutex::new(sched),
        }
    }

    /// The scheduler, locked (the kernel's `svc->sched_lock`).
    pub(crate) fn scheduler(&self) -> MutexGuard<'_, Box<dyn Scheduler>> {
        // A panic while scheduling would be a bug; the state itself stays usable.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn replace_scheduler(&self, s: Box<dyn Scheduler>) {
        *self.scheduler() = s;
    }

    /// Run the scheduler for one new connection.
    pub fn schedule(&self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        self.scheduler().schedule(input)
    }
}

/// One service in a snapshot: its configuration, its destinations in list order (newest
/// first) and its live state.
#[derive(Debug, Clone)]
pub struct Service {
    /// Configuration.
    pub cfg: ServiceConfig,
    /// Destinations, newest first (the kernel's list order).
    pub dests: Vec<Arc<DestState>>,
    /// Counters and scheduler.
    pub live: Arc<ServiceLive>,
}

impl AsRef<Service> for Service {
    fn as_ref(&self) -> &Service {
        self
    }
}

/// Behaviour switches that the kernel keeps in sysctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Schedule TCP packets without SYN too (`sloppy_tcp`).
    pub sloppy_tcp: bool,
    /// Schedule SCTP packets whose first chunk is not an INIT too, but never an ABORT
    /// (`sloppy_sctp`).
    pub sloppy_sctp: bool,
    /// Expire connections whose destination was deleted, on their next packet (`expire_nodest_conn`).
    pub expire_nodest_conn: bool,
    /// Do not reuse templates pointing at weight-0 destinations (`expire_quiescent_template`).
    pub expire_quiescent_template: bool,
    /// `conn_reuse_mode` bits: 1 = a SYN on TIME_WAIT/CLOSE reschedules, 2 = also FIN_WAIT with NOOUTPUT.
    pub conn_reuse_mode: u8,
    /// Answer a NAT real server's packet that belongs to no connection (not a TCP RST nor an
    /// SCTP ABORT) with ICMP port unreachable and drop it (`nat_icmp_send`).
    pub nat_icmp_send: bool,
    /// Idle time after which lblc's full collection drops an entry, ms (`lblc_expiration`).
    pub lblc_expiration_ms: u64,
    /// The same for lblcr, and the age of a server set that sheds its busiest member
    /// (`lblcr_expiration`).
    pub lblcr_expiration_ms: u64,
    /// Run the rate estimator (`run_estimation`); while off, the rates keep their values.
    pub run_estimation: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sloppy_tcp: false,
            sloppy_sctp: false,
            expire_nodest_conn: false,
            expire_quiescent_template: false,
            conn_reuse_mode: 1,
            nat_icmp_send: false,
            lblc_expiration_ms: 24 * 3600 * 1000,
            lblcr_expiration_ms: 24 * 3600 * 1000,
            run_estimation: true,
        }
    }
}

/// What the XDP program must redirect to xvs (everything else goes to the kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// (VIP, protocol, port) of every address service; port 0 = every port of that VIP.
    pub services: Vec<(IpAddr, Protocol, u16)>,
    /// (real-server address, protocol, port) of NAT destinations: their replies come back through xvs.
    pub nat_sources: Vec<(IpAddr, Protocol, u16)>,
}

/// (protocol, address, port) as the data path's sets key it (services, NAT sources; port 0 in
/// the sets that match every port). Hashed by [`hash_endpoint`], as the connection table's
/// client sides are (the derived hash of the tuple took several hasher rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint {
    proto: Protocol,
    addr: IpAddr,
    port: u16,
}

impl Endpoint {
    pub(crate) fn new(proto: Protocol, addr: IpAddr, port: u16) -> Endpoint {
        Endpoint { proto, addr, port }
    }
}

impl Hash for Endpoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_endpoint(state, self.proto.number(), &self.addr, self.port);
    }
}

/// An immutable snapshot of every table the data path reads. The control plane builds a new one
/// per change and publishes it; live state (counters, scheduler state) is shared between snapshots.
#[derive(Debug)]
pub struct Tables {
    pub(crate) by_addr: HashMap<Endpoint, Arc<Service>, ahash::RandomState>,
    pub(crate) by_mark: HashMap<(Af, u32), Arc<Service>, ahash::RandomState>,
    pub(crate) nat_sources: HashSet<Endpoint, ahash::RandomState>,
    /// NAT destinations of port 0 (as endpoints of port 0).
    pub(crate) nat_sources_any_port: HashSet<Endpoint, ahash::RandomState>,
    /// Services in configuration order.
    pub services: Vec<Arc<Service>>,
    /// State timeouts.
    pub timeouts: Timeouts,
    /// Behaviour switches.
    pub settings: Settings,
    /// Totals over all services.
    pub totals: Arc<Stats>,
    /// The firewall-mark rules (`crate::marks`).
    pub marks: Arc<crate::marks::MarkRules>,
    /// UDP address services with the SIP persistence engine and NAT real servers, whose
    /// servers' own requests make connections (`ip_vs_sip_conn_out`).
    pub(crate) sip_out: Vec<Arc<Service>>,
}

impl Tables {
    pub(crate) fn build(
        services: Vec<Arc<Service>>,
        timeouts: Timeouts,
        settings: Settings,
        totals: Arc<Stats>,
        seed: &HashSeed,
    ) -> Tables {
        let hasher = seed.hasher(0x7365_7276);
        let mut t = Tables {
            by_addr: HashMap::with_hasher(hasher.clone()),
            by_mark: HashMap::with_hasher(hasher.clone()),
            nat_sources: HashSet::with_hasher(hasher.clone()),
            nat_sources_any_port: HashSet::with_hasher(hasher),
            services: Vec::new(),
            timeouts,
            settings,
            totals,
            marks: Arc::default(),
            sip_out: Vec::new(),
        };
        for s in &services {
            if s.cfg.pe.as_deref() == Some("sip")
                && matches!(
                    s.cfg.key,
                    ServiceKey::Addr {
                        proto: Protocol::Udp,
                        ..
                    }
                )
                && s.dests
                    .iter()
                    .any(|d| d.forward().method == ForwardMethod::Masq)
            {
                t.sip_out.push(s.clone());
            }
            match s.cfg.key {
                ServiceKey::Addr { proto, addr, port } => {
                    t.by_addr
                        .insert(Endpoint::new(proto, addr, port), s.clone());
                }
                ServiceKey::Fwmark { af, mark } => {
                    t.by_mark.insert((af, mark), s.clone());
                }
            }
            let protos: &[Protocol] = match s.cfg.key {
                ServiceKey::Addr { proto, .. } => match proto {
                    Protocol::Tcp => &[Protocol::Tcp],
                    Protocol::Udp => &[Protocol::Udp],
                    Protocol::Sctp => &[Protocol::Sctp],
                },
                ServiceKey::Fwmark { .. } => &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            };
            for d in &s.dests {
                if d.forward().method == ForwardMethod::Masq {
                    for &p in protos {
                        let e = Endpoint::new(p, d.addr, d.port);
                        if d.port == 0 {
                            t.nat_sources_any_port.insert(e);
                        } else {
                            t.nat_sources.insert(e);
                        }
                    }
                }
            }
        }
        t.services = services;
        t
    }

    /// An empty table set.
    pub fn empty() -> Tables {
        Tables::build(
            Vec::new(),
            Timeouts::default(),
            Settings::default(),
            Arc::new(Stats::default()),
            &HashSeed::FIXED,
        )
    }

    /// Service lookup for a packet (kernel order: fwmark, exact, then port 0).
    pub fn lookup(
        &self,
        proto: Protocol,
        vaddr: IpAddr,
        vport: u16,
        fwmark: u32,
    ) -> Option<&Arc<Service>> {
        if fwmark != 0 {
            if let Some(s) = self.by_mark.get(&(Af::of(&vaddr), fwmark)) {
                return Some(s);
            }
        }
        if let Some(s) = self.by_addr.get(&Endpoint::new(proto, vaddr, vport)) {
            return Some(s);
        }
        // A port-0 service of the VIP takes every other port.
        self.by_addr.get(&Endpoint::new(proto, vaddr, 0))
    }

    /// Whether (proto, addr, port) is the source of a NAT destination's replies.
    #[inline(always)]
    pub fn is_nat_source(&self, proto: Protocol, addr: &IpAddr, port: u16) -> bool {
        // Most packets are not from real servers: skip the hashing when there is no NAT dest.
        (!self.nat_sources.is_empty()
            && self
                .nat_sources
                .contains(&Endpoint::new(proto, *addr, port)))
            || (!self.nat_sources_any_port.is_empty()
                && self
                    .nat_sources_any_port
                    .contains(&Endpoint::new(proto, *addr, 0)))
    }

    /// What the XDP program must redirect.
    pub fn steering(&self) -> Steering {
        let mut st = Steering::default();
        for s in &self.services {
            // A fwmark service's traffic is steered by the mark rules' destinations (below).
            if let ServiceKey::Addr { proto, addr, port } = s.cfg.key {
                st.services.push((addr, proto, port));
            }
        }
        st.nat_sources = self
            .nat_sources
            .iter()
            .chain(&self.nat_sources_any_port)
            .map(|e| (e.addr, e.proto, e.port))
            .collect();
        // Traffic the mark rules may give a fwmark service's mark.
        st.services.extend(self.marks.steering());
        st.services.sort();
        st.services.dedup();
        st.nat_sources.sort();
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::director::Director;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn add(d: &mut Director, vip: &str, port: u16) {
        let mut c = ServiceConfig::new(ServiceKey::Addr {
            proto: Protocol::Tcp,
            addr: ip(vip),
            port,
        });
        if port == 0 {
            c.flags |= SVC_F_PERSISTENT;
        }
        d.add_service(c).unwrap();
    }

    #[test]
    fn a_port_zero_service_takes_the_other_ports_of_its_vip() {
        let mut d = Director::new();
        add(&mut d, "10.0.0.1", 0);
        add(&mut d, "10.0.0.1", 80);
        add(&mut d, "10.0.0.2", 80);
        let t = d.snapshot();
        let port = |vip: &str, port: u16| {
            t.lookup(Protocol::Tcp, ip(vip), port, 0)
                .map(|s| s.cfg.key.port())
        };
        // The exact service first, then the VIP's port-0 service, nothing on another VIP.
        assert_eq!(port("10.0.0.1", 80), Some(80));
        assert_eq!(port("10.0.0.1", 443), Some(0));
        assert_eq!(port("10.0.0.2", 80), Some(80));
        assert_eq!(port("10.0.0.2", 443), None);
        assert_eq!(
            t.lookup(Protocol::Udp, ip("10.0.0.1"), 443, 0).map(|_| ()),
            None
        );
    }
}
