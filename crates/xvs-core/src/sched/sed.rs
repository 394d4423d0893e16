//! Shortest expected delay (`ip_vs_sed.c`): wlc with overhead ActiveConn + 1.

use std::sync::Arc;

use super::{weighted_least, SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct ShortestExpectedDelay;

/// `ip_vs_sed_dest_overhead`.
pub(crate) fn sed_overhead(d: &DestState) -> u64 {
    u64::from(d.active()) + 1
}

impl Scheduler for ShortestExpectedDelay {
    fn name(&self) -> &'static str {
        "sed"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        weighted_least(input.dests, sed_overhead)
    }
}
