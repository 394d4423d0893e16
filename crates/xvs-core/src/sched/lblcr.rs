//! Locality-based least connection with replication (`ip_vs_lblcr.c`): each destination
//! address maps to a set of destinations.

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::hash::HashSeed;

use super::lblc::LocalityGc;
use super::{heavier, locality_overloaded, weighted_least, SchedInput, Scheduler};
use crate::dest::DestState;
use crate::service::Settings;
use crate::types::Time;

#[derive(Debug)]
struct Entry {
    /// Members, newest inserted first.
    set: Vec<Arc<DestState>>,
    lastmod: Time,
    lastuse: Time,
}

impl Entry {
    fn insert(&mut self, d: Arc<DestState>, now: Time) {
        if self.set.iter().any(|m| m.id == d.id) {
            return;
        }
        self.set.insert(0, d);
        self.lastmod = now;
    }

    /// `ip_vs_dest_set_min`.
    fn min(&self) -> Option<Arc<DestState>> {
        let first = self
            .set
            .iter()
            .position(|d| !d.is_overloaded() && d.weight() > 0 && d.is_available())?;
        let mut least = &self.set[first];
        let mut loh = least.overhead();
        for d in &self.set[first + 1..] {
            if d.is_overloaded() {
                continue;
            }
            let doh = d.overhead();
            if heavier(loh, least.weight(), doh, d.weight()) && d.is_available() {
                least = d;
                loh = doh;
            }
        }
        Some(least.clone())
    }

    /// `ip_vs_dest_set_max`.
    fn max_index(&self) -> Option<usize> {
        let first = self.set.iter().position(|d| d.weight() > 0)?;
        let mut most = first;
        let mut moh = self.set[first].overhead();
        for (i, d) in self.set.iter().enumerate().skip(first + 1) {
            let doh = d.overhead();
            if heavier(doh, d.weight(), moh, self.set[most].weight()) && d.weight() > 0 {
                most = i;
                moh = doh;
            }
        }
        Some(most)
    }
}

/// The cache and its collection clock.
#[derive(Debug)]
pub struct Lblcr {
    /// Keyed by destination addresses, which clients choose: a keyed hasher.
    table: HashMap<IpAddr, Entry, ahash::RandomState>,
    gc: LocalityGc,
}

impl Lblcr {
    /// An empty cache whose hasher is keyed by `seed`.
    pub fn new(seed: &HashSeed) -> Lblcr {
        Lblcr {
            table: HashMap::with_hasher(seed.hasher(0x6c62_6c72)),
            gc: LocalityGc::default(),
        }
    }
}

impl Scheduler for Lblcr {
    fn name(&self) -> &'static str {
        "lblcr"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let now = input.now;
        if let Some(en) = self.table.get_mut(&input.daddr) {
            en.lastuse = now;
            let dest = en.min();
            if en.set.len() > 1 && en.lastmod.until(now) > input.settings.lblcr_expiration_ms {
                if let Some(m) = en.max_index() {
                    en.set.remove(m);
                    en.lastmod = now;
                }
            }
            if let Some(d) = dest {
                if !locality_overloaded(&d, input.dests) {
                    return Some(d);
                }
            }
            let d = weighted_least(input.dests, DestState::overhead)?;
            en.insert(d.clone(), now);
            return Some(d);
        }
        let d = weighted_least(input.dests, DestState::overhead)?;
        self.table.insert(
            input.daddr,
            Entry {
                set: vec![d.clone()],
                lastmod: now,
                lastuse: now,
            },
        );
        Some(d)
    }

    fn tick(&mut self, now: Time, settings: &Settings) {
        let expiration = settings.lblcr_expiration_ms;
        self.gc.run(&mut self.table, |e| e.lastuse, now, expiration);
    }
}
