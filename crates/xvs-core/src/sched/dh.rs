//! Destination hashing (`ip_vs_dh.c`): 256 buckets keyed by the packet's destination address.

use std::sync::Arc;

use super::{DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;
use crate::hash::{fold_addr, hash_32};

const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;

/// The bucket table; bucket i holds the (i mod n)-th destination of the list.
#[derive(Debug)]
pub struct DestHash {
    buckets: Vec<Option<Arc<DestState>>>,
}

impl DestHash {
    /// `ip_vs_dh_init_svc`.
    pub fn new(dests: &[Arc<DestState>]) -> Self {
        let mut s = DestHash {
            buckets: vec![None; TAB_SIZE],
        };
        s.assign(dests);
        s
    }

    fn assign(&mut self, dests: &[Arc<DestState>]) {
        for (i, b) in self.buckets.iter_mut().enumerate() {
            *b = if dests.is_empty() {
                None
            } else {
                Some(dests[i % dests.len()].clone())
            };
        }
    }
}

impl Scheduler for DestHash {
    fn name(&self) -> &'static str {
        "dh"
    }

    fn update(&mut self, dests: &[Arc<DestState>], event: DestEvent<'_>) {
        // The kernel reassigns on add and delete only (no upd_dest callback).
        if !matches!(event, DestEvent::Edit(_)) {
            self.assign(dests);
        }
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let b = hash_32(fold_addr(&input.daddr), TAB_BITS) as usize;
        let d = self.buckets[b].as_ref()?;
        if !d.is_available() || d.weight() <= 0 || d.is_overloaded() {
            return None;
        }
        Some(d.clone())
    }
}
