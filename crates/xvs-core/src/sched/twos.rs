//! Power of two choices (`ip_vs_twos.c`): two weighted random draws, the less loaded wins.

use std::sync::Arc;

use super::{eligible, heavier, SchedInput, Scheduler};
use crate::dest::DestState;

/// Holds its own random generator (xorshift64*), seeded at creation: the core reads no entropy.
#[derive(Debug)]
pub struct TwoChoices {
    state: u64,
}

impl TwoChoices {
    /// A scheduler with a fixed seed.
    pub fn new(seed: u64) -> Self {
        TwoChoices { state: seed | 1 }
    }

    /// Uniform in 0..=max.
    fn below_or_eq(&mut self, max: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(r) * (u128::from(max) + 1)) >> 64) as u64
    }
}

impl Scheduler for TwoChoices {
    fn name(&self) -> &'static str {
        "twos"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let total: i64 = input
            .dests
            .iter()
            .filter(|d| eligible(d))
            .map(|d| i64::from(d.weight()))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r1 = self.below_or_eq(total as u64) as i64;
        let mut r2 = self.below_or_eq(total as u64) as i64;
        let (mut c1, mut c2) = (None, None);
        for d in input.dests.iter().filter(|d| eligible(d)) {
            let w = i64::from(d.weight());
            r1 -= w;
            r2 -= w;
            if c1.is_none() && r1 <= 0 {
                c1 = Some(d);
            }
            if c2.is_none() && r2 <= 0 {
                c2 = Some(d);
            }
        }
        let (c1, c2) = (c1?, c2?);
        if heavier(c1.overhead(), c1.weight(), c2.overhead(), c2.weight()) {
            Some(c2.clone())
        } else {
            Some(c1.clone())
        }
    }
}
