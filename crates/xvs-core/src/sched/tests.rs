//! Pick sequences for every scheduler, worked out by hand from the kernel's algorithms
//! (`net/netfilter/ipvs/ip_vs_*.c`). Destinations are named by the last octet of 192.168.0.x
//! and are always added in the order the test states (the kernel's list is newest first).

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::dest::{Binding, DestConfig};
use crate::director::Director;
use crate::hash::{fold_addr, hash_32};
use crate::service::{ServiceConfig, SVC_F_SCHED1, SVC_F_SCHED2};
use crate::types::{Protocol, ServiceKey, Time};

struct Rig {
    d: Director,
    key: ServiceKey,
}

fn rig(sched: &str, flags: u32) -> Rig {
    let key = ServiceKey::Addr {
        proto: Protocol::Tcp,
        addr: "10.0.0.1".parse().unwrap(),
        port: 80,
    };
    let mut d = Director::new();
    let mut cfg = ServiceConfig::new(key);
    cfg.scheduler = sched.into();
    cfg.flags = flags;
    d.add_service(cfg).unwrap();
    Rig { d, key }
}

fn rs(n: u8) -> IpAddr {
    IpAddr::from([192, 168, 0, n])
}

impl Rig {
    fn add(&mut self, n: u8, weight: i32) -> &mut Self {
        let mut c = DestConfig::new(rs(n), 80);
        c.weight = weight;
        self.d.add_dest(&self.key, c).unwrap();
        self
    }

    fn edit(&mut self, n: u8, weight: i32) {
        let mut c = self.dest(n).config();
        c.weight = weight;
        self.d.edit_dest(&self.key, c).unwrap();
    }

    fn del(&mut self, n: u8) {
        self.d.del_dest(&self.key, rs(n), 80).unwrap();
    }

    fn dest(&self, n: u8) -> Arc<DestState> {
        self.d
            .service(&self.key)
            .unwrap()
            .dests
            .iter()
            .find(|d| d.addr == rs(n))
            .unwrap()
            .clone()
    }

    fn pick_from(&self, saddr: IpAddr, sport: u16, daddr: IpAddr) -> u8 {
        let svc = self.d.service(&self.key).unwrap();
        let input = SchedInput {
            flags: svc.cfg.sched_flags(),
            dests: &svc.dests,
            saddr,
            sport,
            daddr,
            dport: 80,
            now: Time(1000),
            settings: &crate::service::Settings::default(),
        };
        match svc.live.schedule(&input) {
            Some(d) => match d.addr {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(_) => 255,
            },
            None => 0,
        }
    }

    fn pick(&self) -> u8 {
        self.pick_from(
            "10.1.1.5".parse().unwrap(),
            1234,
            "10.0.0.1".parse().unwrap(),
        )
    }

    fn picks(&self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.pick()).collect()
    }

    /// Give destination `n` `active` established and `inactive` other connections.
    fn load(&self, n: u8, active: u32, inactive: u32) {
        let d = self.dest(n);
        (0..active).for_each(|_| d.bind(Binding::Active));
        (0..inactive).for_each(|_| d.bind(Binding::Inactive));
    }
}

#[test]
fn rr_walks_newest_first_and_skips_ineligible() {
    let mut r = rig("rr", 0);
    r.add(1, 1).add(2, 1).add(3, 1);
    assert_eq!(r.picks(4), [3, 2, 1, 3]);
    r.edit(2, 0);
    assert_eq!(r.picks(3), [1, 3, 1]);
    r.dest(3).set_overloaded(true);
    assert_eq!(r.picks(2), [1, 1]);
    r.dest(3).set_overloaded(false);
    r.edit(2, 1);
    // Cursor at 1 (the tail): next is the head, 3.
    assert_eq!(r.pick(), 3);
    // Deleting the cursor's destination moves the cursor to the element before it (head).
    r.del(3);
    assert_eq!(r.picks(3), [2, 1, 2]);
    // A new destination goes to the head; the cursor (2) stays, so 1 comes next.
    r.add(4, 1);
    assert_eq!(r.picks(3), [1, 4, 2]);
}

#[test]
fn rr_no_destination() {
    let mut r = rig("rr", 0);
    assert_eq!(r.pick(), 0);
    r.add(1, 0);
    assert_eq!(r.pick(), 0);
}

#[test]
fn wrr_reference_example() {
    // IPVS-REFERENCE §3.2: C(2), B(3), A(4) added in that order.
    let mut r = rig("wrr", 0);
    r.add(3, 2).add(2, 3).add(1, 4);
    assert_eq!(r.picks(13), [1, 2, 3, 1, 1, 2, 1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn wrr_gcd_stepping() {
    // Weights 2 then 4: gcd 2, mw 3, levels 3 and 1.
    let mut r = rig("wrr", 0);
    r.add(2, 2).add(1, 4);
    assert_eq!(r.picks(8), [1, 2, 1, 1, 2, 1, 1, 2]);
}

#[test]
fn wrr_all_zero_and_overload() {
    let mut r = rig("wrr", 0);
    r.add(1, 0).add(2, 0);
    assert_eq!(r.pick(), 0);
    r.edit(1, 2);
    // Edit resets the cursor to the head and cw to mw when cw was 0.
    assert_eq!(r.picks(3), [1, 1, 1]);
    r.dest(1).set_overloaded(true);
    assert_eq!(r.pick(), 0);
}

#[test]
fn lc_least_overhead_ties_first_in_list() {
    let mut r = rig("lc", 0);
    r.add(1, 1).add(2, 5).add(3, 1); // list 3, 2, 1
    assert_eq!(r.pick(), 3);
    r.load(3, 0, 1);
    assert_eq!(r.pick(), 2);
    r.load(2, 1, 0); // 256
    r.load(1, 0, 255); // 255
    assert_eq!(r.pick(), 3, "3 has overhead 1");
    r.load(3, 1, 0); // 257
    assert_eq!(r.pick(), 1);
    r.edit(1, 0);
    assert_eq!(r.pick(), 2, "weight only matters as 0 / non-0");
}

#[test]
fn wlc_weighted_comparison() {
    let mut r = rig("wlc", 0);
    r.add(1, 1).add(2, 3); // list 2, 1
    assert_eq!(r.pick(), 2);
    r.load(2, 1, 0); // 256 × 1 > 0 × 3 → 1
    assert_eq!(r.pick(), 1);
    r.load(1, 1, 0); // 2: 256, w3; 1: 256, w1 → 256×1 > 256×3? no → stays 2
    assert_eq!(r.pick(), 2);
    r.load(2, 2, 0); // 2: 768/3 = 256; 1: 256/1 → tie keeps 2
    assert_eq!(r.pick(), 2);
    r.load(2, 0, 1); // 769/3 > 256 → 1
    assert_eq!(r.pick(), 1);
    r.edit(1, 0);
    assert_eq!(r.pick(), 2, "weight 0 never wins");
}

#[test]
fn sed_and_nq_use_active_plus_one() {
    let mut r = rig("sed", 0);
    r.add(1, 1).add(2, 2); // list 2, 1
    r.load(2, 1, 0); // (1+1)/2 = 1 vs (0+1)/1 = 1: tie → 2
    assert_eq!(r.pick(), 2);
    r.load(1, 0, 50); // inactive ignored
    assert_eq!(r.pick(), 2);
    r.load(2, 1, 0); // 3/2 > 1 → 1
    assert_eq!(r.pick(), 1);

    let mut n = rig("nq", 0);
    n.add(1, 1).add(2, 100); // list 2, 1
    n.load(2, 1, 0);
    assert_eq!(n.pick(), 1, "an idle destination wins at once");
    n.load(1, 1, 0); // 2: 2/100, 1: 2/1 → 2
    assert_eq!(n.pick(), 2);
}

#[test]
fn fo_and_ovf() {
    let mut r = rig("fo", 0);
    r.add(1, 5).add(2, 7).add(3, 7); // list 3, 2, 1
    assert_eq!(r.pick(), 3, "ties go to the first in list order");
    r.dest(3).set_overloaded(true);
    assert_eq!(r.pick(), 2);

    let mut o = rig("ovf", 0);
    o.add(1, 1).add(2, 2); // list 2, 1
    assert_eq!(o.pick(), 2);
    o.load(2, 2, 0);
    assert_eq!(o.pick(), 2, "ActiveConn equal to weight is still fine");
    o.load(2, 1, 0);
    assert_eq!(o.pick(), 1);
    o.load(1, 2, 0);
    assert_eq!(o.pick(), 0);
}

#[test]
fn dh_buckets_by_destination_address() {
    let mut r = rig("dh", 0);
    r.add(1, 1).add(2, 1).add(3, 1); // list 3, 2, 1
    let list = [3u8, 2, 1];
    for host in 1..=20u8 {
        let daddr = IpAddr::from([10, 0, 0, host]);
        let b = hash_32(fold_addr(&daddr), 8) as usize;
        assert_eq!(
            r.pick_from("10.9.9.9".parse().unwrap(), 1, daddr),
            list[b % 3]
        );
    }
    // No fallback: an unusable bucket owner means no destination.
    let daddr: IpAddr = "10.0.0.7".parse().unwrap();
    let owner = list[hash_32(fold_addr(&daddr), 8) as usize % 3];
    r.edit(owner, 0);
    assert_eq!(r.pick_from("10.9.9.9".parse().unwrap(), 1, daddr), 0);
}

#[test]
fn sh_reference_bucket_weights_and_fallback() {
    // 10.1.1.5 hashes to bucket 253 (IPVS-REFERENCE §3.13).
    let mut r = rig("sh", 0);
    r.add(1, 1).add(2, 1).add(3, 1); // list 3, 2, 1; bucket i → list[i % 3]
    assert_eq!(r.pick(), [3, 2, 1][253 % 3]);
    // Weighted: list 3(2), 2(1), 1(1) → pattern 3, 3, 2, 1.
    let mut w = rig("sh", 0);
    w.add(1, 1).add(2, 1).add(3, 2);
    assert_eq!(w.pick(), [3, 3, 2, 1][253 % 4]);

    // Without fallback an unavailable owner means no destination; with sh-fallback the probe
    // starts at bucket (2 × 253) mod 256 = 250 → list[1] = 2 (weight 0, still owning one
    // bucket), then 251 → list[2] = 1.
    r.edit(2, 0);
    assert_eq!(r.pick(), 0);
    let mut f = rig("sh", SVC_F_SCHED1);
    f.add(1, 1).add(2, 1).add(3, 1);
    f.edit(2, 0);
    assert_eq!(f.pick(), 1);
}

#[test]
fn sh_port_flag_hashes_the_source_port() {
    let mut r = rig("sh", SVC_F_SCHED2);
    r.add(1, 1).add(2, 1).add(3, 1);
    let saddr: IpAddr = "10.1.1.5".parse().unwrap();
    for port in [1000u16, 2000, 3000, 40000] {
        let b = hash_32(u32::from(port).wrapping_add(fold_addr(&saddr)), 8) as usize;
        assert_eq!(
            r.pick_from(saddr, port, "10.0.0.1".parse().unwrap()),
            [3, 2, 1][b % 3]
        );
    }
}

#[test]
fn mh_fills_the_table_by_weight_and_ignores_quiescing() {
    let mut r = rig("mh", 0);
    r.add(1, 1).add(2, 1).add(3, 2);
    // The table the service's scheduler holds is a pure function of the list; rebuild it to look.
    let count = |r: &Rig| {
        let svc = r.d.service(&r.key).unwrap();
        let mut c = [0usize; 4];
        for d in mh::Maglev::new(&svc.dests).slots().iter().flatten() {
            if let IpAddr::V4(a) = d.addr {
                c[a.octets()[3] as usize] += 1;
            }
        }
        c
    };
    let c = count(&r);
    assert_eq!(c[1] + c[2] + c[3], mh::TAB_SIZE);
    // Weight 2 gets about twice the slots of weight 1 (Maglev fills in turns).
    assert!(c[3] > c[1] * 3 / 2 && c[3] > c[2] * 3 / 2, "{c:?}");
    // Quiescing keys the table on last_weight: the layout does not move.
    let before = (1..=40u8)
        .map(|h| r.pick_from(IpAddr::from([10, 1, 2, h]), 0, "10.0.0.1".parse().unwrap()))
        .collect::<Vec<_>>();
    r.edit(3, 0);
    assert_eq!(count(&r), c);
    for (h, b) in (1..=40u8).zip(before) {
        let now = r.pick_from(IpAddr::from([10, 1, 2, h]), 0, "10.0.0.1".parse().unwrap());
        if b == 3 {
            assert_eq!(now, 0, "no fallback: quiesced owner gives no destination");
        } else {
            assert_eq!(now, b);
        }
    }
}

#[test]
fn mh_fallback_finds_another_destination() {
    let mut r = rig("mh", SVC_F_SCHED1);
    r.add(1, 1).add(2, 1);
    r.edit(2, 0);
    for h in 1..=20u8 {
        assert_eq!(
            r.pick_from(IpAddr::from([10, 1, 2, h]), 0, "10.0.0.1".parse().unwrap()),
            1
        );
    }
}

#[test]
fn lblc_sticks_per_destination_address() {
    let mut r = rig("lblc", 0);
    r.add(1, 1).add(2, 1); // list 2, 1
    let c: IpAddr = "10.9.9.9".parse().unwrap();
    let a: IpAddr = "10.0.0.10".parse().unwrap();
    let b: IpAddr = "10.0.0.11".parse().unwrap();
    assert_eq!(r.pick_from(c, 1, a), 2);
    r.load(2, 0, 1);
    assert_eq!(
        r.pick_from(c, 1, b),
        1,
        "new address: wlc picks the less loaded"
    );
    r.load(1, 0, 5);
    assert_eq!(r.pick_from(c, 1, a), 2, "cached");
    assert_eq!(
        r.pick_from(c, 1, b),
        1,
        "cached even though 2 is now less loaded"
    );
    // The cached entry is ignored when its destination has more active conns than weight while
    // another is below half its weight.
    r.load(1, 2, 0);
    r.edit(2, 4);
    assert_eq!(r.pick_from(c, 1, b), 2);
    // The OVERLOAD flag does not stop a cached destination.
    r.dest(2).set_overloaded(true);
    assert_eq!(r.pick_from(c, 1, b), 2);
}

#[test]
fn lblcr_grows_the_set_when_overloaded() {
    let mut r = rig("lblcr", 0);
    r.add(1, 1).add(2, 4); // list 2, 1
    let c: IpAddr = "10.9.9.9".parse().unwrap();
    let a: IpAddr = "10.0.0.10".parse().unwrap();
    assert_eq!(r.pick_from(c, 1, a), 2);
    r.load(2, 5, 0); // active 5 > weight 4, and 1 has 0 × 2 < 1
    assert_eq!(r.pick_from(c, 1, a), 1, "set {{2}} overloaded: wlc adds 1");
    // Now the set is {1, 2}; its least loaded member is 1.
    assert_eq!(r.pick_from(c, 1, a), 1);
}

#[test]
fn twos_never_picks_ineligible() {
    let mut r = rig("twos", 0);
    r.add(1, 0).add(2, 3).add(3, 1);
    r.dest(3).set_overloaded(true);
    for _ in 0..100 {
        assert_eq!(r.pick(), 2);
    }
}

#[test]
fn thresholds_set_overload_for_every_scheduler() {
    for s in SCHEDULERS
        .iter()
        .filter(|s| !matches!(**s, "none" | "lblc" | "lblcr"))
    {
        let mut r = rig(s, 0);
        let mut c = DestConfig::new(rs(1), 80);
        c.u_threshold = 2;
        r.d.add_dest(&r.key, c).unwrap();
        r.load(1, 1, 1);
        assert!(r.dest(1).is_overloaded());
        assert_eq!(r.pick(), 0, "{s} must skip an OVERLOAD destination");
    }
}

#[test]
fn none_scheduler_never_picks() {
    let mut r = rig("none", 0);
    r.add(1, 1);
    assert_eq!(r.pick(), 0);
}

proptest::proptest! {
    /// The one-multiplication comparison agrees with the exact signed one it replaced, up to
    /// the largest overheads (2^32 active connections, shifted) and weights.
    #[test]
    fn heavier_is_the_exact_cross_product(
        aoh in 0u64..(1 << 41),
        boh in 0u64..(1 << 41),
        aw in 0..=i32::MAX,
        bw in 0..=i32::MAX,
    ) {
        let exact = i128::from(aoh) * i128::from(bw) > i128::from(boh) * i128::from(aw);
        proptest::prop_assert_eq!(heavier(aoh, aw, boh, bw), exact);
    }
}
