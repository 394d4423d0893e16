//! Round robin (`ip_vs_rr.c`).

use std::sync::Arc;

use super::{eligible, DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;

/// The cursor is the last picked destination (None = the list head).
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: Option<u32>,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn update(&mut self, dests: &[Arc<DestState>], event: DestEvent<'_>) {
        // When the cursor's destination is unlinked, the cursor moves to the element before it.
        if let DestEvent::Del(d, index) = event {
            if self.cursor == Some(d.id) {
                self.cursor = index
                    .checked_sub(1)
                    .and_then(|i| dests.get(i))
                    .map(|p| p.id);
            }
        }
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let dests = input.dests;
        let n = dests.len();
        let start = match self.cursor {
            None => 0,
            Some(id) => dests.iter().position(|d| d.id == id).map_or(0, |i| i + 1),
        };
        // From the element after the cursor, wrapping, at most one full cycle (the cursor's own
        // destination is examined last).
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| eligible(&dests[i]))?;
        self.cursor = Some(dests[pick].id);
        Some(dests[pick].clone())
    }
}
