//! Admission: the rate at which the steering program lets packets that may open a connection
//! (TCP SYNs and UDP datagrams to services: XDP cannot tell a UDP flow's first datagram from the
//! others) into a socket ([`crate::bpf::XdpProgram::set_admit_rate`]), adapted to what the
//! socket's worker keeps up with. A flood beyond a worker's capacity would otherwise fill its
//! receive ring, and the ring would drop frames at random: the ACK that completes a client's
//! handshake, the data of established TCP connections. Dropped in XDP instead, only opening
//! packets are lost (clients retransmit SYNs, and UDP applications their requests), and the
//! ring keeps room for TCP's established traffic.
//!
//! The governor runs every 100 ms per socket. While the ring overflowed (its `rx_ring_full`
//! count moved), opening packets arrived and others (the services' established TCP) arrived in
//! the last [`PROTECT_PERIODS`] periods, the rate drops to [`DECREASE`] × the opening packets
//! that passed in the period (never below [`MIN_RATE`]). While it overflowed with nothing but
//! opening packets for that long, there is nothing to protect (a benchmark of new connections,
//! a flood with no client in sight): no limit, and the ring drops what the worker cannot take,
//! as it would anyway. While it did not overflow, the
//! rate grows by [`INCREASE`] per period, and the limit is lifted once it is twice the opening
//! packets arriving. The rate so stays just under what the worker takes.

/// Periods (of 100 ms) after the last packet of an established connection during which
/// admission still protects the ring: a client between two requests, or whose handshake's ACK
/// is on its way, still counts.
pub const PROTECT_PERIODS: u32 = 20;

/// The lowest rate (opening packets per second per socket): new clients always get some room.
pub const MIN_RATE: u64 = 1_000;
/// The factor applied to the passed SYN rate when the ring overflowed (numerator, denominator).
pub const DECREASE: (u64, u64) = (7, 10);
/// The factor applied per period without overflow.
pub const INCREASE: (u64, u64) = (21, 20);

/// One socket's governor.
#[derive(Debug, Clone, Default)]
pub struct AdmitGovernor {
    /// The rate in force (0: no limit).
    rate: u64,
    /// The counters at the last step: ring overflows, opening packets seen and passed, others.
    last: Option<(u64, u64, u64, u64)>,
    /// Periods since others last arrived.
    quiet: u32,
}

impl AdmitGovernor {
    /// The rate in force (opening packets per second; 0: no limit).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// One period of `secs` seconds, with the socket's counters now (`rx_ring_full`, opening
    /// packets seen and passed by the program, other packets to services): returns the new rate
    /// when it changed.
    pub fn step(
        &mut self,
        ring_full: u64,
        seen: u64,
        passed: u64,
        others: u64,
        secs: f64,
    ) -> Option<u64> {
        let (f0, s0, p0, o0) = self.last.replace((ring_full, seen, passed, others))?;
        let micros = ((secs * 1e6) as u64).max(1_000);
        let per_sec = |n: u64| n.saturating_mul(1_000_000) / micros;
        let overflowed = ring_full > f0;
        let seen_rate = per_sec(seen.saturating_sub(s0));
        let passed_rate = per_sec(passed.saturating_sub(p0));
        self.quiet = if others > o0 {
            0
        } else {
            self.quiet.saturating_add(1)
        };
        let protect = self.quiet < PROTECT_PERIODS;
        let before = self.rate;
        if overflowed && seen_rate > 0 && protect {
            self.rate = (passed_rate * DECREASE.0 / DECREASE.1).max(MIN_RATE);
        } else if overflowed && !protect {
            self.rate = 0;
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
        let mut g = AdmitGovernor::default();
        assert_eq!(g.step(0, 0, 0, 0, 0.1), None, "the first step only records");
        // Quiet: no limit.
        assert_eq!(g.step(0, 100, 100, 50, 0.1), None);
        assert_eq!(g.rate(), 0);
        // Overflow, clients' packets among the flood: 0.7 × the 500,000/s that passed.
        assert_eq!(g.step(10, 60_100, 50_100, 60, 0.1), Some(350_000));
        // Still overflowing at that rate: lower again.
        assert_eq!(g.step(20, 120_100, 85_100, 70, 0.1), Some(245_000));
        // No overflow: grows by a twentieth a period while packets keep coming.
        assert_eq!(g.step(20, 180_100, 109_600, 80, 0.1), Some(257_251));
        // The flood ends: a few packets a period, the limit goes.
        assert_eq!(g.step(20, 180_110, 109_610, 90, 0.1), Some(0));
        assert_eq!(g.step(20, 180_120, 109_620, 100, 0.1), None);
    }

    #[test]
    fn nothing_to_protect_no_limit() {
        let mut g = AdmitGovernor::default();
        g.step(0, 0, 0, 0, 0.1);
        assert_eq!(g.step(10, 60_000, 60_000, 5, 0.1), Some(420_000));
        // Overflowing with opening packets only, but clients were there a moment ago: still
        // limited (0.7 × 420,000/s), and for PROTECT_PERIODS periods.
        assert_eq!(g.step(20, 120_000, 102_000, 5, 0.1), Some(294_000));
        let mut n = 2u64;
        while g.rate() != 0 {
            n += 1;
            g.step(10 * n, 60_000 * n, 40_000 * n, 5, 0.1);
            assert!(n < 30);
        }
        assert_eq!(n, u64::from(PROTECT_PERIODS) + 1);
    }

    #[test]
    fn the_rate_never_falls_below_the_minimum() {
        let mut g = AdmitGovernor::default();
        g.step(0, 0, 0, 0, 0.1);
        assert_eq!(g.step(5, 1000, 10, 1, 0.1), Some(MIN_RATE));
        // An overflow without opening packets (established traffic) leaves the rate alone.
        assert_eq!(g.step(9, 1000, 10, 2, 0.1), None);
        assert_eq!(g.rate(), MIN_RATE);
    }
}
