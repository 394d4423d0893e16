//! SYN admission: the rate at which the steering program lets TCP SYNs to services into a
//! socket ([`crate::bpf::XdpProgram::set_syn_rate`]), adapted to what the socket's worker
//! keeps up with. A SYN flood beyond a worker's capacity would otherwise fill its receive
//! ring, and the ring would drop frames at random: the ACK that completes a client's handshake,
//! the data of established connections. Dropped in XDP instead, only SYNs are lost, which
//! clients retransmit, and the ring keeps room for everything else.
//!
//! The governor runs every 100 ms per socket: while the ring overflowed (its `rx_ring_full`
//! count moved) and SYNs arrived, the rate drops to [`DECREASE`] × the SYNs that passed in the
//! period (never below [`MIN_RATE`]); while it did not, the rate grows by [`INCREASE`] per
//! period, and the limit is lifted once it is twice the SYNs arriving.

/// The lowest rate (SYNs per second per socket): new clients always get some room.
pub const MIN_RATE: u64 = 1_000;
/// The factor applied to the passed SYN rate when the ring overflowed (numerator, denominator).
pub const DECREASE: (u64, u64) = (7, 10);
/// The factor applied per period without overflow.
pub const INCREASE: (u64, u64) = (11, 10);

/// One socket's governor.
#[derive(Debug, Clone, Default)]
pub struct SynGovernor {
    /// The rate in force (0: no limit).
    rate: u64,
    /// The counters at the last step: ring overflows, SYNs seen and passed.
    last: Option<(u64, u64, u64)>,
}

impl SynGovernor {
    /// The rate in force (SYNs per second; 0: no limit).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// One period of `secs` seconds, with the socket's counters now (`rx_ring_full`, SYNs
    /// seen and passed by the program): returns the new rate when it changed.
    pub fn step(&mut self, ring_full: u64, seen: u64, passed: u64, secs: f64) -> Option<u64> {
        let (f0, s0, p0) = self.last.replace((ring_full, seen, passed))?;
        let micros = ((secs * 1e6) as u64).max(1_000);
        let per_sec = |n: u64| n.saturating_mul(1_000_000) / micros;
        let overflowed = ring_full > f0;
        let seen_rate = per_sec(seen.saturating_sub(s0));
        let passed_rate = per_sec(passed.saturating_sub(p0));
        let before = self.rate;
        if overflowed && seen_rate > 0 {
            self.rate = (passed_rate * DECREASE.0 / DECREASE.1).max(MIN_RATE);
        } else if !overflowed && self.rate != 0 {
            let r = self.rate * INCREASE.0 / INCREASE.1 + 1;
            self.rate = if r > 2 * seen_rate { 0 } else { r };
        }
        (self.rate != before).then_some(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_lowers_the_rate_and_its_end_lifts_it() {
        let mut g = SynGovernor::default();
        assert_eq!(g.step(0, 0, 0, 0.1), None, "the first step only records");
        // Quiet: no limit.
        assert_eq!(g.step(0, 100, 100, 0.1), None);
        assert_eq!(g.rate(), 0);
        // Overflow with 50,000 SYNs passed in 100 ms: 0.7 × 500,000/s.
        assert_eq!(g.step(10, 60_100, 50_100, 0.1), Some(350_000));
        // Still overflowing at that rate: lower again.
        assert_eq!(g.step(20, 120_100, 85_100, 0.1), Some(245_000));
        // No overflow: grows by a tenth a period while SYNs keep coming.
        assert_eq!(g.step(20, 180_100, 109_600, 0.1), Some(269_501));
        // The flood ends: a few SYNs a period, the limit goes.
        assert_eq!(g.step(20, 180_110, 109_610, 0.1), Some(0));
        assert_eq!(g.step(20, 180_120, 109_620, 0.1), None);
    }

    #[test]
    fn the_rate_never_falls_below_the_minimum() {
        let mut g = SynGovernor::default();
        g.step(0, 0, 0, 0.1);
        assert_eq!(g.step(5, 1000, 10, 0.1), Some(MIN_RATE));
        // An overflow without SYNs (another kind of traffic) leaves the rate alone.
        assert_eq!(g.step(9, 1000, 10, 0.1), None);
        assert_eq!(g.rate(), MIN_RATE);
    }
}
