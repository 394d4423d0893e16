//! Locality-based least connection (`ip_vs_lblc.c`): destination address → destination cache,
//! falling back to weighted least connection.

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::hash::HashSeed;

use super::{locality_overloaded, weighted_least, SchedInput, Scheduler};
use crate::dest::DestState;
use crate::service::Settings;
use crate::types::Time;

/// Idle time after which an entry may be collected when the table is over its size (6 min).
const ENTRY_TIMEOUT_MS: u64 = 6 * 60 * 1000;
/// Table size (1024 buckets) × 16: collection starts above this many entries.
const MAX_ENTRIES: usize = 16 * 1024;
/// Collection runs every 60 s; a full pass every 30 min.
const GC_PERIOD_MS: u64 = 60 * 1000;
const FULL_GC_PERIOD_MS: u64 = 30 * 60 * 1000;

#[derive(Debug)]
struct Entry {
    dest: Arc<DestState>,
    lastuse: Time,
}

/// The cache and its collection clock.
#[derive(Debug)]
pub struct Lblc {
    /// Keyed by destination addresses, which clients choose: a keyed hasher.
    table: HashMap<IpAddr, Entry, ahash::RandomState>,
    gc: LocalityGc,
}

impl Lblc {
    /// An empty cache whose hasher is keyed by `seed`.
    pub fn new(seed: &HashSeed) -> Lblc {
        Lblc {
            table: HashMap::with_hasher(seed.hasher(0x6c62_6c63)),
            gc: LocalityGc::default(),
        }
    }
}

impl Scheduler for Lblc {
    fn name(&self) -> &'static str {
        "lblc"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        if let Some(en) = self.table.get_mut(&input.daddr) {
            en.lastuse = input.now;
            let d = &en.dest;
            if d.is_available() && d.weight() > 0 && !locality_overloaded(d, input.dests) {
                return Some(d.clone());
            }
        }
        let dest = weighted_least(input.dests, DestState::overhead)?;
        self.table.insert(
            input.daddr,
            Entry {
                dest: dest.clone(),
                lastuse: input.now,
            },
        );
        Some(dest)
    }

    fn tick(&mut self, now: Time, settings: &Settings) {
        let expiration = settings.lblc_expiration_ms;
        self.gc.run(&mut self.table, |e| e.lastuse, now, expiration);
    }
}

/// Garbage collection of the lblc/lblcr tables (`ip_vs_lblc_check_expire`, `ip_vs_lblc_full_check`).
#[derive(Debug, Default)]
pub(crate) struct LocalityGc {
    next_gc: Time,
    next_full_gc: Time,
}

impl LocalityGc {
    pub(crate) fn run<V>(
        &mut self,
        table: &mut HashMap<IpAddr, V, ahash::RandomState>,
        lastuse: impl Fn(&V) -> Time,
        now: Time,
        expiration_ms: u64,
    ) {
        if now >= self.next_full_gc {
            if self.next_full_gc != Time(0) {
                table.retain(|_, e| lastuse(e).until(now) <= expiration_ms);
            }
            self.next_full_gc = Time(now.0 + FULL_GC_PERIOD_MS);
        }
        if now >= self.next_gc {
            self.next_gc = Time(now.0 + GC_PERIOD_MS);
            let len = table.len();
            if len > MAX_ENTRIES {
                // Remove idle entries until (len − max) × 4/3 are gone, at most max/2.
                let goal = ((len - MAX_ENTRIES) * 4 / 3).min(MAX_ENTRIES / 2);
                let mut removed = 0;
                table.retain(|_, e| {
                    if removed < goal && lastuse(e).until(now) > ENTRY_TIMEOUT_MS {
                        removed += 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full collection (every 30 min) drops entries idle longer than `lblc_expiration`.
    #[test]
    fn full_collection_follows_the_expiration() {
        const MIN: u64 = 60 * 1000;
        let mut gc = LocalityGc::default();
        let mut table: HashMap<IpAddr, Time, ahash::RandomState> = HashMap::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        table.insert(a, Time(0));
        table.insert(b, Time(50 * MIN));
        let hour = 60 * MIN;
        gc.run(&mut table, |e| *e, Time(0), hour);
        gc.run(&mut table, |e| *e, Time(31 * MIN), hour);
        assert_eq!(table.len(), 2, "a idle 31 min of an hour");
        gc.run(&mut table, |e| *e, Time(62 * MIN), hour);
        assert_eq!(table.keys().collect::<Vec<_>>(), [&b]);
        // With the default (24 h), nothing idle for 2 h goes.
        table.insert(a, Time(0));
        gc.run(&mut table, |e| *e, Time(125 * MIN), 24 * hour);
        assert_eq!(table.len(), 2);
    }
}
