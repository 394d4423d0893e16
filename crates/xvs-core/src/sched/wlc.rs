//! Weighted least connection, the default scheduler (`ip_vs_wlc.c`).

use std::sync::Arc;

use super::{weighted_least, SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct WeightedLeastConn;

impl Scheduler for WeightedLeastConn {
    fn name(&self) -> &'static str {
        "wlc"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        weighted_least(input.dests, DestState::overhead)
    }
}
