//! Weighted round robin (`ip_vs_wrr.c`): gcd stepping through weight levels.

use std::sync::Arc;

use super::{gcd, Cursor, DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;

/// `struct ip_vs_wrr_mark`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// Last picked destination (None = the list head).
    cl: Option<Cursor>,
    /// Current weight level.
    cw: i32,
    /// Maximum weight minus (gcd − 1).
    mw: i32,
    /// Gcd of the positive weights.
    di: i32,
}

fn gcd_weight(dests: &[Arc<DestState>]) -> i32 {
    let g = dests
        .iter()
        .map(|d| d.weight())
        .filter(|&w| w > 0)
        .fold(0, |g, w| if g > 0 { gcd(w, g) } else { w });
    if g > 0 {
        g
    } else {
        1
    }
}

fn max_weight(dests: &[Arc<DestState>]) -> i32 {
    dests.iter().map(|d| d.weight()).fold(0, i32::max)
}

impl WeightedRoundRobin {
    /// `ip_vs_wrr_init_svc`.
    pub fn new(dests: &[Arc<DestState>]) -> Self {
        let di = gcd_weight(dests);
        let mw = max_weight(dests) - (di - 1);
        WeightedRoundRobin {
            cl: None,
            cw: mw,
            mw,
            di,
        }
    }
}

impl Scheduler for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "wrr"
    }

    fn update(&mut self, dests: &[Arc<DestState>], _event: DestEvent<'_>) {
        // ip_vs_wrr_dest_changed, run for add, delete and edit alike.
        self.cl = None;
        self.di = gcd_weight(dests);
        self.mw = max_weight(dests) - (self.di - 1);
        if self.cw > self.mw || self.cw == 0 {
            self.cw = self.mw;
        } else if self.di > 1 {
            self.cw = (self.cw / self.di) * self.di + 1;
        }
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let dests = input.dests;
        if self.mw == 0 {
            return None;
        }
        // Position of the cursor: None stands for the list head (before index 0).
        let last: Option<usize> = self.cl.and_then(|c| c.position(dests));
        let mut pos = last; // the scan continues after `pos`
        let mut stop: Option<usize> = None;
        let mut last_pass = false;
        let mut restarted = false;
        loop {
            let from = pos.map_or(0, |p| p + 1);
            for (i, d) in dests.iter().enumerate().skip(from) {
                if !d.is_overloaded() && d.weight() >= self.cw {
                    self.cl = Some(Cursor::at(dests, i));
                    return Some(d.clone());
                }
                if stop == Some(i) {
                    return None;
                }
            }
            pos = None;
            self.cw -= self.di;
            if self.cw <= 0 {
                self.cw = self.mw;
                if last_pass || last.is_none() {
                    return None;
                }
                restarted = true;
            }
            last_pass = self.cw <= self.di;
            if last_pass && restarted && last.is_some() {
                stop = last;
            }
        }
    }
}
