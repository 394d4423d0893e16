//! Weighted overflow (`ip_vs_ovf.c`): the highest weight among destinations whose ActiveConn
//! does not exceed their weight.

use std::sync::Arc;

use super::{SchedInput, Scheduler};
use crate::dest::DestState;

/// Stateless.
#[derive(Debug)]
pub struct WeightedOverflow;

impl Scheduler for WeightedOverflow {
    fn name(&self) -> &'static str {
        "ovf"
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let mut h: Option<&Arc<DestState>> = None;
        for d in input.dests {
            let w = d.weight();
            if d.is_overloaded() || i64::from(d.active()) > i64::from(w) || w == 0 {
                continue;
            }
            if h.is_none_or(|h| w > h.weight()) {
                h = Some(d);
            }
        }
        h.cloned()
    }
}
