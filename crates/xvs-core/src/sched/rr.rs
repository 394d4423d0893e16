//! Round robin (`ip_vs_rr.c`).

use std::sync::Arc;

use super::{eligible, Cursor, DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;

/// The cursor is the last picked destination (None = the list head).
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: Option<Cursor>,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn update(&mut self, dests: &[Arc<DestState>], event: DestEvent<'_>) {
        // When the cursor's destination is unlinked, the cursor moves to the element before it.
        if let DestEvent::Del(d, index) = event {
            if self.cursor.is_some_and(|c| c.id == d.id) {
                self.cursor = index
                    .checked_sub(1)
                    .filter(|&i| i < dests.len())
                    .map(|i| Cursor::at(dests, i));
            }
        }
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let dests = input.dests;
        let n = dests.len();
        let start = match self.cursor {
            None => 0,
            Some(c) => c.position(dests).map_or(0, |i| i + 1),
        };
        // From the element after the cursor, wrapping, at most one full cycle (the cursor's own
        // destination is examined last).
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| eligible(&dests[i]))?;
        self.cursor = Some(Cursor::at(dests, pick));
        Some(dests[pick].clone())
    }
}
