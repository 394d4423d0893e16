//! Source hashing (`ip_vs_sh.c`) with the `sh-fallback` and `sh-port` flags.

use std::net::IpAddr;
use std::sync::Arc;

use super::{DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;
use crate::hash::{fold_addr, hash_32};

const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;

/// The 256-bucket table; a destination occupies max(weight, 1) consecutive buckets.
#[derive(Debug)]
pub struct SourceHash {
    buckets: Vec<Option<Arc<DestState>>>,
}

fn unavailable(d: &DestState) -> bool {
    d.weight() <= 0 || d.is_overloaded()
}

/// `ip_vs_sh_hashkey`.
pub(crate) fn sh_hashkey(addr: &IpAddr, port: u16, offset: u32) -> usize {
    (offset.wrapping_add(hash_32(
        u32::from(port).wrapping_add(fold_addr(addr)),
        TAB_BITS,
    )) as usize)
        & (TAB_SIZE - 1)
}

impl SourceHash {
    /// `ip_vs_sh_init_svc`.
    pub fn new(dests: &[Arc<DestState>]) -> Self {
        let mut s = SourceHash {
            buckets: vec![None; TAB_SIZE],
        };
        s.reassign(dests);
        s
    }

    fn reassign(&mut self, dests: &[Arc<DestState>]) {
        if dests.is_empty() {
            self.buckets.iter_mut().for_each(|b| *b = None);
            return;
        }
        let mut p = 0;
        let mut count = 0;
        for b in self.buckets.iter_mut() {
            let d = &dests[p];
            *b = Some(d.clone());
            count += 1;
            if count >= d.weight() {
                p = (p + 1) % dests.len();
                count = 0;
            }
        }
    }

    fn get(&self, addr: &IpAddr, port: u16) -> Option<Arc<DestState>> {
        let d = self.buckets[sh_hashkey(addr, port, 0)].as_ref()?;
        (!unavailable(d)).then(|| d.clone())
    }

    fn get_fallback(&self, addr: &IpAddr, port: u16) -> Option<Arc<DestState>> {
        let ihash = sh_hashkey(addr, port, 0);
        let d = self.buckets[ihash].as_ref()?;
        if !unavailable(d) {
            return Some(d.clone());
        }
        for offset in 0..TAB_SIZE {
            let roffset = ((offset + ihash) % TAB_SIZE) as u32;
            let d = self.buckets[sh_hashkey(addr, port, roffset)].as_ref()?;
            if !unavailable(d) {
                return Some(d.clone());
            }
        }
        None
    }
}

impl Scheduler for SourceHash {
    fn name(&self) -> &'static str {
        "sh"
    }

    fn update(&mut self, dests: &[Arc<DestState>], _event: DestEvent<'_>) {
        self.reassign(dests);
    }

    fn schedule(&mut self, input: &SchedInput<'_>) -> Option<Arc<DestState>> {
        let port = if input.flags.port { input.sport } else { 0 };
        if input.flags.fallback {
            self.get_fallback(&input.saddr, port)
        } else {
            self.get(&input.saddr, port)
        }
    }
}
