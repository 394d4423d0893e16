//! A destination (real server) and its live state, shared by every snapshot of the tables and by
//! the connections bound to it (the kernel's `struct ip_vs_dest`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::Relaxed};

use crate::stats::Stats;
use crate::types::{ForwardMethod, TunnelConfig, TunnelCsum, TunnelType};

/// Set while the destination is linked into its service.
pub const DEST_F_AVAILABLE: u32 = 0x1;
/// Set when the upper threshold was reached.
pub const DEST_F_OVERLOAD: u32 = 0x2;

/// Configuration of a destination as `-a`/`-e` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestConfig {
    /// Real-server address.
    pub addr: IpAddr,
    /// Real-server port (0 = the packet's port, fwmark services).
    pub port: u16,
    /// Forwarding method.
    pub method: ForwardMethod,
    /// Weight 0..=65535; 0 quiesces.
    pub weight: i32,
    /// Upper connection threshold (0 = none).
    pub u_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub l_threshold: u32,
    /// Tunnel parameters (used with `Tunnel`).
    pub tunnel: TunnelConfig,
}

impl DestConfig {
    /// A destination with ipvsadm's defaults: direct routing, weight 1, no thresholds.
    pub fn new(addr: IpAddr, port: u16) -> DestConfig {
        DestConfig {
            addr,
            port,
            method: ForwardMethod::Route,
            weight: 1,
            u_threshold: 0,
            l_threshold: 0,
            tunnel: TunnelConfig::default(),
        }
    }
}

/// How a connection forwards, copied from its destination when it is bound (as the kernel copies
/// `dest->conn_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnForward {
    /// Forwarding method.
    pub method: ForwardMethod,
    /// Tunnel parameters.
    pub tunnel: TunnelConfig,
}

impl ConnForward {
    fn pack(self) -> u32 {
        let m = match self.method {
            ForwardMethod::Route => 0,
            ForwardMethod::Tunnel => 1,
            ForwardMethod::Masq => 2,
        };
        let t = match self.tunnel.kind {
            TunnelType::Ipip => 0,
            TunnelType::Gue => 1,
            TunnelType::Gre => 2,
        };
        let c = match self.tunnel.csum {
            TunnelCsum::NoCsum => 0,
            TunnelCsum::Csum => 1,
            TunnelCsum::RemCsum => 2,
        };
        m | t << 2 | c << 4 | u32::from(self.tunnel.port) << 16
    }

    fn unpack(v: u32) -> ConnForward {
        let method = match v & 3 {
            1 => ForwardMethod::Tunnel,
            2 => ForwardMethod::Masq,
            _ => ForwardMethod::Route,
        };
        let kind = match (v >> 2) & 3 {
            1 => TunnelType::Gue,
            2 => TunnelType::Gre,
            _ => TunnelType::Ipip,
        };
        let csum = match (v >> 4) & 3 {
            1 => TunnelCsum::Csum,
            2 => TunnelCsum::RemCsum,
            _ => TunnelCsum::NoCsum,
        };
        ConnForward {
            method,
            tunnel: TunnelConfig {
                kind,
                port: (v >> 16) as u16,
                csum,
            },
        }
    }
}

/// What a connection bound to a destination counts in: ActiveConn, InActConn or (a persistence
/// template) PersistConn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// An active connection (ActiveConn: the states of `tcp_state_active`).
    Active,
    /// An inactive connection (InActConn).
    Inactive,
    /// A persistence template (PersistConn).
    Template,
}

/// A destination's identity, configuration and live counters. Fields that `-e` may change are
/// atomics, read without locks by the data path (the kernel reads them under RCU the same way).
#[derive(Debug)]
pub struct DestState {
    /// Unique id, stable for the life of this destination (used as scheduler cursor).
    pub id: u32,
    /// Real-server address.
    pub addr: IpAddr,
    /// Real-server port.
    pub port: u16,
    weight: AtomicI32,
    last_weight: AtomicI32,
    flags: AtomicU32,
    u_threshold: AtomicU32,
    l_threshold: AtomicU32,
    forward: AtomicU32,
    active: AtomicU32,
    inactive: AtomicU32,
    persist: AtomicU32,
    /// Traffic counters of this destination.
    pub stats: Stats,
}

impl DestState {
    /// A new, not yet linked destination.
    pub fn new(id: u32, cfg: &DestConfig) -> DestState {
        let d = DestState {
            id,
            addr: cfg.addr,
            port: cfg.port,
            weight: AtomicI32::new(0),
            last_weight: AtomicI32::new(0),
            flags: AtomicU32::new(0),
            u_threshold: AtomicU32::new(0),
            l_threshold: AtomicU32::new(0),
            forward: AtomicU32::new(0),
            active: AtomicU32::new(0),
            inactive: AtomicU32::new(0),
            persist: AtomicU32::new(0),
            stats: Stats::default(),
        };
        d.configure(cfg);
        d
    }

    /// Apply `-a`/`-e` settings (`__ip_vs_update_dest`).
    pub fn configure(&self, cfg: &DestConfig) {
        let old_u = self.u_threshold.load(Relaxed);
        self.forward.store(
            ConnForward {
                method: cfg.method,
                tunnel: cfg.tunnel,
            }
            .pack(),
            Relaxed,
        );
        self.weight.store(cfg.weight, Relaxed);
        if cfg.weight > 0 {
            self.last_weight.store(cfg.weight, Relaxed);
        }
        // The OVERLOAD flag is cleared when the new upper threshold is 0 or larger than the old.
        if cfg.u_threshold == 0 || cfg.u_threshold > old_u {
            self.flags.fetch_and(!DEST_F_OVERLOAD, Relaxed);
        }
        self.u_threshold.store(cfg.u_threshold, Relaxed);
        self.l_threshold.store(cfg.l_threshold, Relaxed);
    }

    /// The current configuration.
    pub fn config(&self) -> DestConfig {
        let fwd = self.forward();
        DestConfig {
            addr: self.addr,
            port: self.port,
            method: fwd.method,
            weight: self.weight(),
            u_threshold: self.u_threshold.load(Relaxed),
            l_threshold: self.l_threshold.load(Relaxed),
            tunnel: fwd.tunnel,
        }
    }

    /// Current weight.
    pub fn weight(&self) -> i32 {
        self.weight.load(Relaxed)
    }

    /// Most recent non-zero weight (mh keys its table on it).
    pub fn last_weight(&self) -> i32 {
        self.last_weight.load(Relaxed)
    }

    /// Forwarding settings for a connection bound now.
    pub fn forward(&self) -> ConnForward {
        ConnForward::unpack(self.forward.load(Relaxed))
    }

    /// Whether the upper threshold has been reached.
    pub fn is_overloaded(&self) -> bool {
        self.flags.load(Relaxed) & DEST_F_OVERLOAD != 0
    }

    /// Whether the destination is linked into its service.
    pub fn is_available(&self) -> bool {
        self.flags.load(Relaxed) & DEST_F_AVAILABLE != 0
    }

    /// Set or clear AVAILABLE (link/unlink).
    pub fn set_available(&self, on: bool) {
        if on {
            self.flags.fetch_or(DEST_F_AVAILABLE, Relaxed);
        } else {
            self.flags.fetch_and(!DEST_F_AVAILABLE, Relaxed);
        }
    }

    /// ActiveConn.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// InActConn.
    pub fn inactive(&self) -> u32 {
        self.inactive.load(Relaxed)
    }

    /// PersistConn.
    pub fn persist(&self) -> u32 {
        self.persist.load(Relaxed)
    }

    /// Upper threshold.
    pub fn u_threshold(&self) -> u32 {
        self.u_threshold.load(Relaxed)
    }

    /// Lower threshold.
    pub fn l_threshold(&self) -> u32 {
        self.l_threshold.load(Relaxed)
    }

    /// `ip_vs_dest_conn_overhead`: ActiveConn × 256 + InActConn.
    pub fn overhead(&self) -> u64 {
        (u64::from(self.active()) << 8) + u64::from(self.inactive())
    }

    fn total(&self) -> u64 {
        u64::from(self.active()) + u64::from(self.inactive())
    }

    /// A connection (or template) was bound to this destination (`ip_vs_bind_dest`).
    pub fn bind(&self, kind: Binding) {
        match kind {
            Binding::Template => self.persist.fetch_add(1, Relaxed),
            Binding::Inactive => self.inactive.fetch_add(1, Relaxed),
            Binding::Active => self.active.fetch_add(1, Relaxed),
        };
        let u = self.u_threshold();
        if u != 0 && self.total() >= u64::from(u) {
            self.flags.fetch_or(DEST_F_OVERLOAD, Relaxed);
        }
    }

    /// A connection (or template) left this destination (`ip_vs_unbind_dest`).
    pub fn unbind(&self, kind: Binding) {
        let dec = |c: &AtomicU32| {
            // Saturating: counts never wrap even if a caller double-unbinds.
            let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        };
        match kind {
            Binding::Template => dec(&self.persist),
            Binding::Inactive => dec(&self.inactive),
            Binding::Active => dec(&self.active),
        }
        let (u, l) = (self.u_threshold(), self.l_threshold());
        let total = self.total();
        let clear = if l != 0 {
            total < u64::from(l)
        } else if u != 0 {
            total * 4 < u64::from(u) * 3
        } else {
            true
        };
        if clear {
            self.flags.fetch_and(!DEST_F_OVERLOAD, Relaxed);
        }
    }

    /// A connection crossed the active/inactive boundary.
    pub fn move_conn(&self, to_inactive: bool) {
        let dec = |c: &AtomicU32| {
            let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        };
        if to_inactive {
            dec(&self.active);
            self.inactive.fetch_add(1, Relaxed);
        } else {
            dec(&self.inactive);
            self.active.fetch_add(1, Relaxed);
        }
    }

    /// Force the OVERLOAD flag (tests and sync).
    pub fn set_overloaded(&self, on: bool) {
        if on {
            self.flags.fetch_or(DEST_F_OVERLOAD, Relaxed);
        } else {
            self.flags.fetch_and(!DEST_F_OVERLOAD, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(u: u32, l: u32) -> DestState {
        let mut cfg = DestConfig::new("10.0.0.1".parse().unwrap(), 80);
        cfg.u_threshold = u;
        cfg.l_threshold = l;
        DestState::new(1, &cfg)
    }

    #[test]
    fn upper_threshold_and_three_quarter_rule() {
        let d = dest(4, 0);
        for _ in 0..3 {
            d.bind(Binding::Active);
        }
        assert!(!d.is_overloaded());
        d.bind(Binding::Inactive);
        assert!(d.is_overloaded());
        d.unbind(Binding::Active); // total 3: 12 < 12 is false
        assert!(d.is_overloaded());
        d.unbind(Binding::Active); // total 2: 8 < 12
        assert!(!d.is_overloaded());
    }

    #[test]
    fn lower_threshold() {
        let d = dest(3, 2);
        for _ in 0..3 {
            d.bind(Binding::Active);
        }
        assert!(d.is_overloaded());
        d.unbind(Binding::Active);
        assert!(d.is_overloaded());
        d.unbind(Binding::Active);
        assert!(!d.is_overloaded());
    }

    #[test]
    fn templates_do_not_count() {
        let d = dest(1, 0);
        d.bind(Binding::Template);
        assert!(!d.is_overloaded());
        assert_eq!(d.persist(), 1);
    }

    #[test]
    fn forward_roundtrip() {
        let f = ConnForward {
            method: ForwardMethod::Tunnel,
            tunnel: TunnelConfig {
                kind: TunnelType::Gue,
                port: 6080,
                csum: TunnelCsum::RemCsum,
            },
        };
        assert_eq!(ConnForward::unpack(f.pack()), f);
    }
}
