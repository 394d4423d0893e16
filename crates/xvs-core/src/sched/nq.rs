//! Never queue (`ip_vs_nq.c`): an idle destination at once, else shortest expected delay.

use std::sync::Arc;

use super::sed::sed_overhead;
use super::{heavier, SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct NeverQueue;

impl Scheduler for NeverQueue {
    fn name(&self) -> &'static str {
        "nq"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let mut least: Option<(&Arc<DestState>, u64)> = None;
        for d in input.dests {
            if d.is_overloaded() || d.weight() == 0 {
                continue;
            }
            let doh = sed_overhead(d);
            if d.active() == 0 {
                return Some(d.clone());
            }
            let better = match least {
                None => true,
                Some((l, loh)) => heavier(loh, l.weight(), doh, d.weight()),
            };
            if better {
                least = Some((d, doh));
            }
        }
        least.map(|(d, _)| d.clone())
    }
}
