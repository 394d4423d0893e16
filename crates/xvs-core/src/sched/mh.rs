//! Maglev hashing (`ip_vs_mh.c`): a 4093-entry lookup table filled from per-destination
//! permutations computed with the kernel's hsiphash keys.

use std::net::IpAddr;
use std::sync::Arc;

use super::{gcd, DestEvent, SchedInput, Scheduler};
use crate::dest::DestState;
use crate::hash::{fold_addr, hsiphash_u32, HsipKey};

/// Table size: primes[12 − 8].
pub const TAB_SIZE: usize = 4093;
/// `IP_VS_MH_TAB_BITS` = 12 / 2.
const TAB_BITS: u32 = 6;
const KEY1: HsipKey = HsipKey(2_654_435_761, 2_654_435_761);
const KEY2: HsipKey = HsipKey(2_654_446_892, 2_654_446_892);

fn hashkey(addr: &IpAddr, port: u16, key: HsipKey, offset: u32) -> u32 {
    let v = offset
        .wrapping_add(u32::from(port))
        .wrapping_add(fold_addr(addr));
    hsiphash_u32(v, key)
}

fn unavailable(d: &DestState) -> bool {
    d.weight() <= 0 || d.is_overloaded()
}

/// The lookup table.
#[derive(Debug)]
pub struct Maglev {
    lookup: Vec<Option<Arc<DestState>>>,
}

impl Maglev {
    /// `ip_vs_mh_init_svc`.
    pub fn new(dests: &[Arc<DestState>]) -> Self {
        let mut s = Maglev {
            lookup: vec![None; TAB_SIZE],
        };
        s.reassign(dests);
        s
    }

    fn reassign(&mut self, dests: &[Arc<DestState>]) {
        if dests.len() > TAB_SIZE {
            // The kernel refuses the change with EINVAL; the control plane checks this first.
            return;
        }
        let g = dests
            .iter()
            .map(|d| d.last_weight())
            .filter(|&w| w > 0)
            .fold(0, |g, w| if g > 0 { gcd(w, g) } else { w });
        if g < 1 {
            self.lookup.iter_mut().for_each(|b| *b = None);
            return;
        }
        let mw = dests.iter().map(|d| d.last_weight()).fold(0, i32::max) / g;
        let fls = 32 - (mw as u32).leading_zeros();
        let shift = fls.saturating_sub(TAB_BITS);
        struct Setup {
            perm: usize,
            skip: usize,
            turns: i32,
        }
        let mut setup: Vec<Setup> = dests
            .iter()
            .map(|d| {
                let offset = hashkey(&d.addr, d.port, KEY1, 0) as usize % TAB_SIZE;
                let skip = hashkey(&d.addr, d.port, KEY2, 0) as usize % (TAB_SIZE - 1) + 1;
                let lw = d.last_weight();
                let t = (lw / g) >> shift;
                let turns = if t != 0 { t } else { i32::from(lw != 0) };
                Setup {
                    perm: offset,
                    skip,
                    turns,
                }
            })
            .collect();
        let mut taken = vec![false; TAB_SIZE];
        let mut n = 0;
        'fill: loop {
            let mut i = 0;
            let mut dt_count = 0;
            while i < dests.len() {
                let ds = &mut setup[i];
                if ds.turns < 1 {
                    i += 1;
                    continue;
                }
                while taken[ds.perm] {
                    ds.perm += ds.skip;
                    if ds.perm >= TAB_SIZE {
                        ds.perm -= TAB_SIZE;
                    }
                }
                taken[ds.perm] = true;
                self.lookup[ds.perm] = Some(dests[i].clone());
                n += 1;
                if n == TAB_SIZE {
                    break 'fill;
                }
                dt_count += 1;
                if dt_count >= ds.turns {
                    dt_count = 0;
                    i += 1;
                }
            }
        }
    }

    fn get(&self, addr: &IpAddr, port: u16) -> Option<Arc<DestState>> {
        let d = self.lookup[hashkey(addr, port, KEY1, 0) as usize % TAB_SIZE].as_ref()?;
        (!unavailable(d)).then(|| d.clone())
    }

    fn get_fallback(&self, addr: &IpAddr, port: u16) -> Option<Arc<DestState>> {
        let ihash = hashkey(addr, port, KEY1, 0) as usize % TAB_SIZE;
        let d = self.lookup[ihash].as_ref()?;
        if !unavailable(d) {
            return Some(d.clone());
        }
        for offset in 0..TAB_SIZE {
            let roffset = ((offset + ihash) % TAB_SIZE) as u32;
            let d = self.lookup[hashkey(addr, port, KEY1, roffset) as usize % TAB_SIZE].as_ref()?;
            if !unavailable(d) {
                return Some(d.clone());
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn slots(&self) -> &[Option<Arc<DestState>>] {
        &self.lookup
    }
}

impl Scheduler for Maglev {
    fn name(&self) -> &'static str {
        "mh"
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
