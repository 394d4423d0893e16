//! Schedulers: one module per algorithm behind one trait, as in the kernel
//! (`net/netfilter/ipvs/ip_vs_*.c`). Every scheduler walks the destination list in the kernel's
//! order (newest first) and breaks ties the same way, so that for the same configuration and the
//! same sequence of new connections it picks the same destinations.

use crate::service::Settings;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::dest::DestState;
use crate::hash::HashSeed;
use crate::types::Time;

mod dh;
mod fo;
mod lblc;
mod lblcr;
mod lc;
pub(crate) mod mh;
mod nq;
mod ovf;
mod rr;
mod sed;
mod sh;
mod twos;
mod wlc;
mod wrr;

#[cfg(test)]
mod tests;

/// What changed in a service's destination list; the list passed alongside is the new one.
#[derive(Debug, Clone, Copy)]
pub enum DestEvent<'a> {
    /// A destination was linked at the head of the list.
    Add(&'a Arc<DestState>),
    /// A destination was unlinked; `index` was its position in the old list.
    Del(&'a Arc<DestState>, usize),
    /// A destination's settings were edited in place.
    Edit(&'a Arc<DestState>),
}

/// A service's scheduler flags (`-b`) as sh and mh read them: `sh-fallback` / `mh-fallback`
/// (flag 1) and `sh-port` / `mh-port` (flag 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedFlags {
    /// Flag 1: on an unavailable destination, hash again over the others.
    pub fallback: bool,
    /// Flag 2: the client's port is part of the hash.
    pub port: bool,
}

/// What a scheduler may look at for one new connection.
#[derive(Debug, Clone, Copy)]
pub struct SchedInput<'a> {
    /// The service's scheduler flags.
    pub flags: SchedFlags,
    /// Destinations in list order, newest first.
    pub dests: &'a [Arc<DestState>],
    /// Client address.
    pub saddr: IpAddr,
    /// Client port.
    pub sport: u16,
    /// Destination (virtual) address of the packet.
    pub daddr: IpAddr,
    /// Destination port of the packet.
    pub dport: u16,
    /// The caller's clock.
    pub now: Time,
    /// The sysctls (the locality schedulers' `lblc_expiration`, `lblcr_expiration`).
    pub settings: &'a Settings,
}

/// One scheduling algorithm's state for one service.
pub trait Scheduler: Send + fmt::Debug {
    /// The name ipvsadm uses (`rr`, `wlc`, ...).
    fn name(&self) -> &'static str;

    /// The destination list changed (the kernel's `add_dest`, `del_dest`, `upd_dest`).
    fn update(&mut self, _dests: &[Arc<DestState>], _event: DestEvent<'_>) {}

    /// Pick a destination for a new connection, or none.
    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>>;

    /// Periodic housekeeping (lblc/lblcr garbage collection).
    fn tick(&mut self, _now: Time, _settings: &Settings) {}
}

/// Names of every scheduler xvs implements, as `-s` accepts them.
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
    "none",
];

/// A fresh scheduler for `name`, initialised for `dests` (the kernel's `init_service`).
pub fn new_scheduler(
    name: &str,
    dests: &[Arc<DestState>],
    seed: &HashSeed,
) -> Option<Box<dyn Scheduler>> {
    let s: Box<dyn Scheduler> = match name {
        "rr" => Box::new(rr::RoundRobin::default()),
        "wrr" => Box::new(wrr::WeightedRoundRobin::new(dests)),
        "lc" => Box::new(lc::LeastConn),
        "wlc" => Box::new(wlc::WeightedLeastConn),
        "sed" => Box::new(sed::ShortestExpectedDelay),
        "nq" => Box::new(nq::NeverQueue),
        "fo" => Box::new(fo::WeightedFailover),
        "ovf" => Box::new(ovf::WeightedOverflow),
        "twos" => Box::new(twos::TwoChoices::new(seed.0[0] ^ 0x5eed_1234_abcd_ef01)),
        "lblc" => Box::new(lblc::Lblc::new(seed)),
        "lblcr" => Box::new(lblcr::Lblcr::new(seed)),
        "dh" => Box::new(dh::DestHash::new(dests)),
        "sh" => Box::new(sh::SourceHash::new(dests)),
        "mh" => Box::new(mh::Maglev::new(dests)),
        "none" => Box::new(NoScheduler),
        _ => return None,
    };
    Some(s)
}

/// The kernel accepts the scheduler name `none`: a service whose new connections all fail.
#[derive(Debug)]
struct NoScheduler;

impl Scheduler for NoScheduler {
    fn name(&self) -> &'static str {
        "none"
    }
    fn schedule(&mut self, _input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        None
    }
}

/// The destination a list scheduler (rr, wrr) picked last: its id, which survives changes of
/// the list, and where it was, which finds it at once while the list has not changed (the
/// kernel keeps a pointer into its list; a snapshot of ours may be another list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) id: u32,
    at: usize,
}

impl Cursor {
    /// The cursor at `dests[at]`.
    pub(crate) fn at(dests: &[Arc<DestState>], at: usize) -> Cursor {
        Cursor {
            id: dests[at].id,
            at,
        }
    }

    /// Its position in `dests`: where it was, else by a search for its id; None when its
    /// destination is not in the list.
    pub(crate) fn position(&self, dests: &[Arc<DestState>]) -> Option<usize> {
        match dests.get(self.at) {
            Some(d) if d.id == self.id => Some(self.at),
            _ => dests.iter().position(|d| d.id == self.id),
        }
    }
}

/// Eligible for a new connection by the common rule: not OVERLOAD and weight > 0.
pub(crate) fn eligible(d: &DestState) -> bool {
    !d.is_overloaded() && d.weight() > 0
}

/// The weighted-least-connection selection shared by wlc, lblc and lblcr
/// (`ip_vs_wlc_schedule`): first eligible destination, then a strict weighted comparison.
pub(crate) fn weighted_least(
    dests: &[Arc<DestState>],
    overhead: impl Fn(&DestState) -> u64,
) -> Option<Arc<DestState>> {
    let first = dests.iter().position(|d| eligible(d))?;
    let mut least = &dests[first];
    let (mut loh, mut lw) = (overhead(least), least.weight());
    for d in &dests[first + 1..] {
        if d.is_overloaded() {
            continue;
        }
        let (doh, dw) = (overhead(d), d.weight());
        if heavier(loh, lw, doh, dw) {
            least = d;
            (loh, lw) = (doh, dw);
        }
    }
    Some(least.clone())
}

/// Whether overhead `aoh` at weight `aw` is more than `boh` at `bw` per unit of weight:
/// `aoh / aw > boh / bw` compared as the kernel does, by cross products (`aoh * bw > boh * aw`),
/// here without overflow. Weights are never negative (ipvsadm takes 0 to 65,535; a negative
/// one would count as 0), so each product is one 64 × 64 → 128-bit multiplication; the signed
/// 128-bit products this replaced took three, and made wlc cost twice lc.
#[inline]
pub(crate) fn heavier(aoh: u64, aw: i32, boh: u64, bw: i32) -> bool {
    let w = |x: i32| u128::from(u32::try_from(x).unwrap_or(0));
    u128::from(aoh) * w(bw) > u128::from(boh) * w(aw)
}

/// `is_overloaded()` of lblc/lblcr: more active connections than weight while some destination of
/// the service is below half its weight.
pub(crate) fn locality_overloaded(d: &DestState, dests: &[Arc<DestState>]) -> bool {
    i64::from(d.active()) > i64::from(d.weight())
        && dests
            .iter()
            .any(|o| i64::from(o.active()) * 2 < i64::from(o.weight()))
}

/// Greatest common divisor.
pub(crate) fn gcd(mut a: i32, mut b: i32) -> i32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}
