//! The workers' path: a batch in groups, each group's table lookups announced (prefetched)
//! before any of its frames is processed.

use std::sync::atomic::Ordering::Relaxed;

use super::{Batch, Engine, FirstLookup, Tally, Verdict, WorkerState, PREFETCH_GROUP};
pub use crate::routes::Routes;
use crate::service::Tables;
use crate::types::{Protocol, Time};
use crate::wire::{self, Frame};

impl Engine {
    /// Frame by frame, verdicts into `tally` (the path of a small table).
    pub(super) fn classify_all(
        &self,
        b: &mut Batch<'_>,
        frames: &mut [Frame<'_>],
        verdicts: &mut [Verdict],
        tally: &mut Tally,
    ) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            let o = self.classify(b, f, v);
            tally.settle(o, v);
        }
    }

    /// Process a batch of frames received on one interface: the workers' path, the one entry
    /// point for a batch. `verdicts` must be as long as `frames`; each frame is rewritten in
    /// place according to its verdict. Traffic is counted in `worker`'s counter slot (see
    /// [`WorkerSlot`](super::WorkerSlot)), verdicts once per batch; next hops come from
    /// `worker`'s cache of `routes` (see [`HopCache`](crate::hops::HopCache)).
    ///
    /// Once the table holds [`PREFETCH_FROM`](super::PREFETCH_FROM) entries or more (see
    /// [`Engine::set_prefetch_from`]), frames are taken in groups of [`PREFETCH_GROUP`]; for
    /// each group every frame is parsed and `prefetch` is given the addresses of the index
    /// memory its lookup will read (control bytes, slot); then, that memory being on its way,
    /// each frame's candidate entry is read from the index and its cache lines are announced;
    /// then the frames are processed, each lookup starting at its candidate. The I/O layer
    /// passes a CPU prefetch (`xvs_xdp::prefetch`); the misses of a group then overlap instead
    /// of stalling one packet after the other. A smaller table, mostly in the caches, is
    /// processed frame by frame without hints. The addresses are hints: xvs-core never
    /// dereferences them, and a stale one (an index that grew meanwhile, an entry moved by a
    /// removal) only makes a useless prefetch and a lookup that probes from the home bucket.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)] // Called once a batch; kept whole for profilers (callgrind's --toggle-collect).
    pub fn process(
        &self,
        tables: &Tables,
        routes: &dyn Routes,
        frames: &mut [Frame<'_>],
        now: Time,
        verdicts: &mut [Verdict],
        worker: &mut WorkerState,
        prefetch: impl Fn(usize),
    ) {
        let (step, hops, parsed, offloads) = worker.start(routes, now);
        let b = &mut Batch {
            t: tables,
            hops,
            step,
            sync: self.sync.mode(),
            offloads: self.offload.load(Relaxed).then_some(offloads),
        };
        let mut tally = Tally::default();
        for (fs, vs) in frames
            .chunks_mut(PREFETCH_GROUP)
            .zip(verdicts.chunks_mut(PREFETCH_GROUP))
        {
            if self.conns.len_relaxed() < self.prefetch_from.load(Relaxed) {
                // A table this small is mostly in the caches: the plain path is faster.
                self.classify_all(b, fs, vs, &mut tally);
                continue;
            }
            // Each frame parsed straight into its slot of the scratch (see `wire::parse_into`).
            for (f, (p, first)) in fs.iter().zip(parsed.iter_mut()) {
                wire::parse_into(f.data(), p);
                *first = None;
                if let Ok(p) = &*p {
                    if let Some(proto) = Protocol::from_number(p.proto) {
                        // The client side of the lookup classify will make first, each
                        // address hashed where it is (store forwarding).
                        let from_nat = tables.is_nat_source(proto, &p.saddr, p.sport);
                        let h = if from_nat {
                            self.conns.client_hash(p.proto, &p.daddr, p.dport)
                        } else {
                            self.conns.client_hash(p.proto, &p.saddr, p.sport)
                        };
                        if let Some(bucket) = self.conns.lookup_address(h) {
                            prefetch(bucket);
                        }
                        *first = Some(FirstLookup { from_nat, h });
                    }
                }
            }
            // The index memory is on its way; now read each frame's candidate position from it
            // and announce the entry itself.
            for (_, first) in parsed[..fs.len()].iter_mut() {
                if let Some(fl) = first {
                    if let Some([a, b]) = self.conns.candidate(&mut fl.h) {
                        prefetch(a);
                        prefetch(b);
                    }
                }
            }
            for ((f, v), (p, first)) in fs.iter_mut().zip(vs.iter_mut()).zip(parsed.iter()) {
                let o = self.classify_parsed(b, f, p, *first, v);
                tally.settle(o, v);
            }
        }
        tally.add_to(&self.counters);
    }
}
