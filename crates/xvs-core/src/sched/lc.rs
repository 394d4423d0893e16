//! Least connection (`ip_vs_lc.c`).

use std::sync::Arc;

use super::{SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct LeastConn;

impl Scheduler for LeastConn {
    fn name(&self) -> &'static str {
        "lc"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let mut least: Option<(&Arc<DestState>, u64)> = None;
        for d in input.dests {
            if d.is_overloaded() || d.weight() == 0 {
                continue;
            }
            let doh = d.overhead();
            if least.is_none_or(|(_, loh)| doh < loh) {
                least = Some((d, doh));
            }
        }
        least.map(|(d, _)| d.clone())
    }
}
