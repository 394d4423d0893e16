//! Weighted failover (`ip_vs_fo.c`): the highest weight wins, ties to the first in list order.

use std::sync::Arc;

use super::{SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct WeightedFailover;

impl Scheduler for WeightedFailover {
    fn name(&self) -> &'static str {
        "fo"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let mut hw = 0;
        let mut best = None;
        for d in input.dests {
            if !d.is_overloaded() && d.weight() > hw {
                hw = d.weight();
                best = Some(d);
            }
        }
        best.cloned()
    }
}
