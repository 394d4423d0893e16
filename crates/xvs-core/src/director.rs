//! The control side of the tables: add, edit and delete services and destinations with the
//! kernel's checks and error texts (`ip_vs_ctl.c`, as ipvsadm prints them), then publish an
//! immutable [`Tables`] snapshot for the data path.

use std::net::IpAddr;
use std::sync::Arc;

use crate::dest::{DestConfig, DestState};
use crate::hash::HashSeed;
use crate::proto::Timeouts;
use crate::sched::{mh, new_scheduler, DestEvent};
use crate::service::{Service, ServiceConfig, ServiceLive, Settings, Tables};
use crate::stats::Stats;
use crate::types::{Af, ForwardMethod, Netmask, ServiceKey, Time};

/// A refused control operation. The texts are those ipvsadm prints for the kernel's errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// EEXIST on add-service.
    #[error("Service already exists")]
    ServiceExists,
    /// ENOENT: unknown scheduler.
    #[error("Scheduler or persistence engine not found")]
    SchedulerNotFound,
    /// ESRCH on edit/delete/zero/list of a service.
    #[error("No such service")]
    NoService,
    /// ESRCH on a destination operation.
    #[error("Service not defined")]
    ServiceNotDefined,
    /// EEXIST on add-server.
    #[error("Destination already exists")]
    DestExists,
    /// ENOENT on edit/delete-server.
    #[error("No such destination")]
    NoDest,
    /// ERANGE.
    #[error("Numerical result out of range")]
    OutOfRange,
    /// EINVAL.
    #[error("Invalid operation.  Possibly wrong module version, address not unicast, ...")]
    Invalid,
    /// Something ipvsadm accepts that xvs does not implement.
    #[error("{0} is not supported by xvs")]
    Unsupported(String),
}

/// Seconds `--set` accepts (the kernel's INT_MAX / HZ with HZ = 1000).
pub const MAX_SET_TIMEOUT: u32 = (i32::MAX / 1000) as u32;

/// The configuration being edited, and the state shared with published snapshots. A clone
/// shares the services until either changes them (they are behind `Arc`s).
#[derive(Debug, Clone)]
pub struct Director {
    /// Each service behind an `Arc` shared with the published snapshots: a change copies only
    /// the service it touches (`Arc::make_mut`), and publishing clones pointers, not services.
    services: Vec<Arc<Service>>,
    /// Position of each service in `services` (lookups are O(1): a `-R` of 100,000 lines must
    /// not scan the table per line).
    by_key: std::collections::HashMap<ServiceKey, usize>,
    /// Deleted destinations still referenced (by connections or published snapshots), by
    /// service and address: re-adding one revives its counters and connections.
    trash: std::collections::HashMap<(ServiceKey, IpAddr, u16), Arc<DestState>>,
    next_dest_id: u32,
    timeouts: Timeouts,
    settings: Settings,
    totals: Arc<Stats>,
    /// Keys the maps of snapshots and schedulers whose keys clients choose.
    seed: HashSeed,
    /// The firewall-mark rules.
    marks: Arc<crate::marks::MarkRules>,
}

impl Default for Director {
    fn default() -> Self {
        Director::new()
    }
}

fn unicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => !(v.is_unspecified() || v.is_multicast() || v.is_broadcast()),
        IpAddr::V6(v) => !(v.is_unspecified() || v.is_multicast()),
    }
}

impl Director {
    /// No services, default timeouts and settings, and the fixed hash seed
    /// ([`HashSeed::FIXED`]; see [`Director::with_seed`]).
    pub fn new() -> Director {
        Director::with_seed(HashSeed::FIXED)
    }

    /// [`Director::new`] with the hash seed of the snapshots' maps and the schedulers' (xvsd
    /// draws it from the operating system at start).
    pub fn with_seed(seed: HashSeed) -> Director {
        Director {
            seed,
            services: Vec::new(),
            by_key: std::collections::HashMap::new(),
            trash: std::collections::HashMap::new(),
            next_dest_id: 1,
            timeouts: Timeouts::default(),
            settings: Settings::default(),
            totals: Arc::new(Stats::default()),
            marks: Arc::default(),
        }
    }

    /// The firewall-mark rules (`crate::marks`).
    pub fn marks(&self) -> &crate::marks::MarkRules {
        &self.marks
    }

    /// Replace the firewall-mark rules.
    pub fn set_marks(&mut self, rules: crate::marks::MarkRules) {
        self.marks = Arc::new(rules);
    }

    /// Services in configuration order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Find a service.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.index(key).map(|i| &*self.services[i])
    }

    fn index(&self, key: &ServiceKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The global totals.
    pub fn totals(&self) -> &Arc<Stats> {
        &self.totals
    }

    /// Current timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Current behaviour switches.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Change behaviour switches.
    pub fn set_settings(&mut self, s: Settings) {
        self.settings = s;
    }

    fn check_service(cfg: &ServiceConfig) -> Result<(), CtlError> {
        // The kernel's engines: sip only (`ip_vs_pe_getbyname`, -ENOENT otherwise).
        if cfg.pe.as_deref().is_some_and(|pe| pe != "sip") {
            return Err(CtlError::SchedulerNotFound);
        }
        if let Netmask::V6(p) = cfg.netmask {
            if cfg.key.af() == Af::V6 && !(1..=128).contains(&p) {
                return Err(CtlError::Invalid);
            }
        }
        Ok(())
    }

    /// `-A`.
    pub fn add_service(&mut self, cfg: ServiceConfig) -> Result<(), CtlError> {
        if self.index(&cfg.key).is_some() {
            return Err(CtlError::ServiceExists);
        }
        let sched =
            new_scheduler(&cfg.scheduler, &[], &self.seed).ok_or(CtlError::SchedulerNotFound)?;
        Self::check_service(&cfg)?;
        self.by_key.insert(cfg.key, self.services.len());
        self.services.push(Arc::new(Service {
            cfg,
            dests: Vec::new(),
            live: Arc::new(ServiceLive::new(sched)),
        }));
        Ok(())
    }

    /// `-E` (a full replacement of the service's settings; destinations stay).
    pub fn edit_service(&mut self, cfg: ServiceConfig) -> Result<(), CtlError> {
        let i = self.index(&cfg.key).ok_or(CtlError::NoService)?;
        let svc = Arc::make_mut(&mut self.services[i]);
        if cfg.scheduler != svc.cfg.scheduler {
            let sched = new_scheduler(&cfg.scheduler, &svc.dests, &self.seed)
                .ok_or(CtlError::SchedulerNotFound)?;
            Self::check_service(&cfg)?;
            svc.live.replace_scheduler(sched);
        } else {
            Self::check_service(&cfg)?;
        }
        svc.cfg = cfg;
        Ok(())
    }

    /// `-D`: the destinations go to the trash; connections keep working until they expire or,
    /// for packets, are dropped as their destination is no longer available.
    ///
    /// The last service takes the deleted one's place (constant time: a `-R` that deletes
    /// 100,000 services must not move the rest each time); listings sort, and `--nosort`
    /// shows the table's own order, which the kernel's hash order is not either.
    pub fn del_service(&mut self, key: &ServiceKey) -> Result<(), CtlError> {
        let i = self.index(key).ok_or(CtlError::NoService)?;
        let svc = Arc::unwrap_or_clone(self.services.swap_remove(i));
        self.by_key.remove(key);
        if let Some(moved) = self.services.get(i) {
            self.by_key.insert(moved.cfg.key, i);
        }
        for d in svc.dests {
            d.set_available(false);
            self.trash_dest(*key, d);
        }
        Ok(())
    }

    /// Keep a deleted destination while something still references it.
    fn trash_dest(&mut self, key: ServiceKey, d: Arc<DestState>) {
        if Arc::strong_count(&d) > 1 {
            self.trash.insert((key, d.addr, d.port), d);
        }
    }

    /// `-C`.
    pub fn clear(&mut self) {
        self.by_key.clear();
        for svc in std::mem::take(&mut self.services) {
            let svc = Arc::unwrap_or_clone(svc);
            for d in svc.dests {
                d.set_available(false);
                self.trash_dest(svc.cfg.key, d);
            }
        }
    }

    fn check_dest(svc: &ServiceConfig, d: &DestConfig) -> Result<(), CtlError> {
        if d.weight < 0 || (d.l_threshold > d.u_threshold) {
            return Err(CtlError::OutOfRange);
        }
        if !unicast(&d.addr) {
            return Err(CtlError::Invalid);
        }
        if Af::of(&d.addr) != svc.key.af() && d.method != ForwardMethod::Tunnel {
            return Err(CtlError::Invalid);
        }
        if d.method == ForwardMethod::Tunnel
            && d.tunnel.kind == crate::types::TunnelType::Gue
            && d.tunnel.port == 0
        {
            return Err(CtlError::Invalid);
        }
        Ok(())
    }

    /// `-a`.
    pub fn add_dest(&mut self, key: &ServiceKey, d: DestConfig) -> Result<(), CtlError> {
        let i = self.index(key).ok_or(CtlError::ServiceNotDefined)?;
        Self::check_dest(&self.services[i].cfg, &d)?;
        let svc = &self.services[i];
        if svc
            .dests
            .iter()
            .any(|x| x.addr == d.addr && x.port == d.port)
        {
            return Err(CtlError::DestExists);
        }
        if svc.cfg.scheduler == "mh" && svc.dests.len() + 1 > mh::TAB_SIZE {
            return Err(CtlError::Invalid);
        }
        let state = match self.trash.remove(&(*key, d.addr, d.port)) {
            Some(s) => {
                s.configure(&d);
                s
            }
            None => {
                let id = self.next_dest_id;
                self.next_dest_id = self.next_dest_id.wrapping_add(1).max(1);
                Arc::new(DestState::new(id, &d))
            }
        };
        state.set_available(true);
        let svc = Arc::make_mut(&mut self.services[i]);
        svc.dests.insert(0, state.clone());
        svc.live
            .scheduler()
            .update(&svc.dests, DestEvent::Add(&state));
        Ok(())
    }

    /// `-e` (a full replacement of the destination's settings).
    pub fn edit_dest(&mut self, key: &ServiceKey, d: DestConfig) -> Result<(), CtlError> {
        let i = self.index(key).ok_or(CtlError::ServiceNotDefined)?;
        Self::check_dest(&self.services[i].cfg, &d)?;
        let svc = &self.services[i];
        let state = svc
            .dests
            .iter()
            .find(|x| x.addr == d.addr && x.port == d.port)
            .ok_or(CtlError::NoDest)?
            .clone();
        state.configure(&d);
        svc.live
            .scheduler()
            .update(&svc.dests, DestEvent::Edit(&state));
        Ok(())
    }

    /// `-d`.
    pub fn del_dest(&mut self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), CtlError> {
        let i = self.index(key).ok_or(CtlError::ServiceNotDefined)?;
        let svc = Arc::make_mut(&mut self.services[i]);
        let pos = svc
            .dests
            .iter()
            .position(|x| x.addr == addr && x.port == port)
            .ok_or(CtlError::NoDest)?;
        let state = svc.dests.remove(pos);
        state.set_available(false);
        svc.live
            .scheduler()
            .update(&svc.dests, DestEvent::Del(&state, pos));
        self.trash_dest(*key, state);
        Ok(())
    }

    /// Free trashed destinations that no connection references any more.
    fn collect_trash(&mut self) {
        self.trash.retain(|_, d| Arc::strong_count(d) > 1);
    }

    /// `-Z [service]`.
    pub fn zero(&mut self, key: Option<&ServiceKey>) -> Result<(), CtlError> {
        match key {
            Some(k) => {
                let svc = self.service(k).ok_or(CtlError::NoService)?;
                svc.live.stats.zero();
                svc.dests.iter().for_each(|d| d.stats.zero());
            }
            None => {
                for svc in &self.services {
                    svc.live.stats.zero();
                    svc.dests.iter().for_each(|d| d.stats.zero());
                }
                self.totals.zero();
            }
        }
        Ok(())
    }

    /// `--set tcp tcpfin udp`.
    pub fn set_timeouts(&mut self, tcp: u32, tcpfin: u32, udp: u32) -> Result<(), CtlError> {
        if [tcp, tcpfin, udp].iter().any(|&v| v > MAX_SET_TIMEOUT) {
            return Err(CtlError::Invalid);
        }
        self.timeouts.set(tcp, tcpfin, udp);
        Ok(())
    }

    /// Run the 2-second rate estimator over every counter set.
    pub fn estimate(&self) {
        // `run_estimation` 0 suspends the estimator; the rates keep their last values.
        if !self.settings.run_estimation {
            return;
        }
        self.totals.estimate();
        for svc in &self.services {
            svc.live.stats.estimate();
            svc.dests.iter().for_each(|d| d.stats.estimate());
        }
    }

    /// Scheduler housekeeping (lblc/lblcr collection) and trash collection.
    pub fn tick(&mut self, now: Time) {
        for svc in &self.services {
            svc.live.scheduler().tick(now, &self.settings);
        }
        self.collect_trash();
    }

    /// Publish: an immutable snapshot for the data path.
    pub fn snapshot(&self) -> Tables {
        let mut t = Tables::build(
            self.services.clone(),
            self.timeouts,
            self.settings,
            self.totals.clone(),
            &self.seed,
        );
        t.marks = self.marks.clone();
        t
    }
}

#[cfg(test)]
mod tests {
    /// `run_estimation` 0 suspends the estimator: the rates keep their values, and move again
    /// once it is back on.
    #[test]
    fn run_estimation_off_keeps_the_rates() {
        let mut d = Director::new();
        for _ in 0..2000 {
            d.totals().add_in(1000);
        }
        d.estimate();
        let before = d.totals().rates();
        assert!(before.inpps > 0);
        let mut s = d.settings();
        s.run_estimation = false;
        d.set_settings(s);
        for _ in 0..10 {
            d.estimate();
        }
        assert_eq!(d.totals().rates(), before);
        s.run_estimation = true;
        d.set_settings(s);
        for _ in 0..2000 {
            d.totals().add_in(1000);
        }
        d.estimate();
        assert_ne!(d.totals().rates(), before);
    }

    use super::*;
    use crate::types::Protocol;

    fn key() -> ServiceKey {
        ServiceKey::Addr {
            proto: Protocol::Tcp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        }
    }

    #[test]
    fn errors_match_ipvsadm() {
        let mut d = Director::new();
        let mut cfg = ServiceConfig::new(key());
        d.add_service(cfg.clone()).unwrap();
        assert_eq!(d.add_service(cfg.clone()), Err(CtlError::ServiceExists));
        cfg.scheduler = "bogus".into();
        assert_eq!(
            d.edit_service(cfg).unwrap_err().to_string(),
            "Scheduler or persistence engine not found"
        );
        let rs = DestConfig::new("192.168.0.2".parse().unwrap(), 80);
        d.add_dest(&key(), rs).unwrap();
        assert_eq!(d.add_dest(&key(), rs), Err(CtlError::DestExists));
        let other = ServiceKey::Addr {
            proto: Protocol::Udp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        assert_eq!(
            d.add_dest(&other, rs).unwrap_err().to_string(),
            "Service not defined"
        );
        assert_eq!(
            d.del_service(&other).unwrap_err().to_string(),
            "No such service"
        );
        assert_eq!(
            d.del_dest(&key(), "192.168.0.3".parse().unwrap(), 80),
            Err(CtlError::NoDest)
        );
        let mut bad = rs;
        bad.l_threshold = 5;
        assert_eq!(d.edit_dest(&key(), bad), Err(CtlError::OutOfRange));
        let mut mixed = DestConfig::new("2001:db8::2".parse().unwrap(), 80);
        assert_eq!(d.add_dest(&key(), mixed), Err(CtlError::Invalid));
        mixed.method = ForwardMethod::Tunnel;
        d.add_dest(&key(), mixed).unwrap();
        let mut pe = ServiceConfig::new(other);
        pe.pe = Some("nosuch".into());
        assert_eq!(
            d.add_service(pe.clone()).unwrap_err().to_string(),
            "Scheduler or persistence engine not found"
        );
        pe.pe = Some("sip".into());
        d.add_service(pe).unwrap();
        // --tun-remcsum is taken (see `wire::encapsulate` for what it emits).
        let mut rem = DestConfig::new("192.168.0.9".parse().unwrap(), 80);
        rem.method = ForwardMethod::Tunnel;
        rem.tunnel = crate::types::TunnelConfig {
            kind: crate::types::TunnelType::Gue,
            port: 6080,
            csum: crate::types::TunnelCsum::RemCsum,
        };
        assert!(d.add_dest(&key(), rem).is_ok());
    }

    #[test]
    fn deleted_dest_is_revived_with_its_counters() {
        let mut d = Director::new();
        d.add_service(ServiceConfig::new(key())).unwrap();
        let rs = DestConfig::new("192.168.0.2".parse().unwrap(), 80);
        d.add_dest(&key(), rs).unwrap();
        let state = d.service(&key()).unwrap().dests[0].clone();
        state.stats.add_conn();
        d.del_dest(&key(), rs.addr, 80).unwrap();
        assert!(!state.is_available());
        d.add_dest(&key(), rs).unwrap();
        let again = d.service(&key()).unwrap().dests[0].clone();
        assert!(Arc::ptr_eq(&state, &again));
        assert!(again.is_available());
        assert_eq!(again.stats.counters().conns, 1);
        drop((state, again));
        d.del_dest(&key(), rs.addr, 80).unwrap();
        assert!(d.trash.is_empty(), "unreferenced trash is freed");
    }
}
