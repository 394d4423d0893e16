//! A shard's index: the positions of its entries by hash, in buckets of one cache line.
//!
//! A bucket holds up to [`SLOTS`] positions, each with a tag byte of its entry's hash, tags and
//! positions on the same 64-byte line. A lookup starts at the hash's home bucket ([`home`]), so
//! the data path can compute that line's address from the index's published base and bucket
//! count and prefetch it: one line, where an index that keeps its tags and its positions in two
//! arrays (as hashbrown's does) needs two. An index is sized as hashbrown sizes its tables, at a
//! power of two of slots ([`Index::nominal_slots`]), in as many whole buckets as that takes (so
//! the bucket count is not a power of two, and the home bucket is found by a multiplication
//! rather than a mask). Buckets are probed one after the other; each counts the entries that
//! found it full on their way from an earlier home bucket (`passed`), and a lookup stops after
//! the first bucket whose count is zero.
//!
//! The index does not know its entries' hashes: growing and shrinking it is the owner's
//! business ([`Index::with_capacity`], then [`Index::insert`] for every entry).

use std::fmt;

/// Positions per bucket.
pub(crate) const SLOTS: usize = 12;

/// The highest load an index is built for, in 1/1024 of its slots (7/8).
pub(crate) const MAX_LOAD: usize = 896;

/// One cache line: 16 control bytes (`SLOTS` tags, 0 for a free slot, then the count of
/// entries that passed the bucket full, a little-endian `u32`), and the positions. All tags
/// are compared at once ([`Bucket::matching`]).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    ctrl: [u8; 16],
    pos: [u32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64 && SLOTS == 12);

const FREE: Bucket = Bucket {
    ctrl: [0; 16],
    pos: [0; SLOTS],
};

impl Bucket {
    fn passed(&self) -> u32 {
        let c = &self.ctrl;
        u32::from_le_bytes([c[12], c[13], c[14], c[15]])
    }

    fn set_passed(&mut self, n: u32) {
        self.ctrl[12..].copy_from_slice(&n.to_le_bytes());
    }

    /// The slots whose tag is `t`: bit i set for slot i. On x86-64 all 16 control bytes are
    /// compared by one SSE2 instruction (through `safe_arch`'s safe wrappers; SSE2 is part of
    /// x86-64) and the count's bytes masked off.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn matching(&self, t: u8) -> u32 {
        use safe_arch::{cmp_eq_mask_i8_m128i, m128i, move_mask_i8_m128i, set_splat_i8_m128i};
        let eq = cmp_eq_mask_i8_m128i(m128i::from(self.ctrl), set_splat_i8_m128i(t as i8));
        (move_mask_i8_m128i(eq) as u32) & ((1 << SLOTS) - 1)
    }

    /// The slots whose tag is `t`: bit i set for slot i.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn matching(&self, t: u8) -> u32 {
        let mut m = 0u32;
        for (i, &x) in self.ctrl[..SLOTS].iter().enumerate() {
            m |= u32::from(x == t) << i;
        }
        m
    }
}

/// The tag of a hash: its top byte, never 0 (a free slot). The shard takes bits 40 to 47 and
/// the home bucket the low 32 bits, so the tag is independent of both.
#[inline(always)]
fn tag(h: u64) -> u8 {
    let t = (h >> 56) as u8;
    t | u8::from(t == 0)
}

/// The home bucket of hash `h` among `n`: its low 32 bits scaled to `0..n` (the shard takes
/// bits 40 to 47 and the tag the top byte, so all three are independent).
#[inline(always)]
fn home(h: u64, n: usize) -> usize {
    (((h & 0xffff_ffff) * n as u64) >> 32) as usize
}

/// The address of hash `h`'s home bucket in an index laid out at `base` with `buckets`
/// buckets ([`Index::layout`]): what a lookup reads first, for a prefetch. Computed, never
/// dereferenced.
#[inline(always)]
pub(crate) fn home_address(base: usize, buckets: usize, h: u64) -> usize {
    base + home(h, buckets) * std::mem::size_of::<Bucket>()
}

/// A shard's index of entry positions.
pub(crate) struct Index {
    /// Enough of them for `nominal` slots.
    buckets: Vec<Bucket>,
    /// A power of two, at most the slots of the buckets.
    nominal: usize,
    len: usize,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("len", &self.len)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl Index {
    /// An empty index with room for `n` positions at its highest load: the smallest power
    /// of two of slots that holds them, in whole buckets.
    pub(crate) fn with_capacity(n: usize) -> Index {
        Index::with_nominal_slots((n.max(1) * 1024).div_ceil(MAX_LOAD).next_power_of_two())
    }

    /// An empty index of `nominal` slots (a power of two), in whole buckets.
    pub(crate) fn with_nominal_slots(nominal: usize) -> Index {
        let nominal = nominal.max(1).next_power_of_two();
        Index {
            buckets: vec![FREE; nominal.div_ceil(SLOTS)],
            nominal,
            len: 0,
        }
    }

    /// Positions held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots in all (positions it can hold at all).
    pub(crate) fn slots(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// The power of two of slots it was sized for (its growth doubles it).
    pub(crate) fn nominal_slots(&self) -> usize {
        self.nominal
    }

    /// Positions it holds at its highest load.
    pub(crate) fn capacity(&self) -> usize {
        self.nominal * MAX_LOAD / 1024
    }

    /// Where a lookup of hash `h` reads first, for prefetching: the address of the first
    /// bucket and the number of buckets (the home bucket is [`home`]`(h, n)`; hints: the
    /// address changes when the index is rebuilt).
    pub(crate) fn layout(&self) -> (usize, usize) {
        (self.buckets.as_ptr() as usize, self.buckets.len())
    }

    /// The bucket after `b`, round.
    #[inline(always)]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// The bucket and slot of the first position hashed to `h` that `eq` accepts.
    #[inline(always)]
    fn locate(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, usize)> {
        let t = tag(h);
        let mut b = home(h, self.buckets.len());
        for _ in 0..self.buckets.len() {
            let bk = &self.buckets[b];
            let mut m = bk.matching(t);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if eq(bk.pos[i]) {
                    return Some((b, i));
                }
                m &= m - 1;
            }
            if bk.passed() == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// The first position hashed to `h` that `eq` accepts.
    #[inline(always)]
    pub(crate) fn find(&self, h: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let (b, i) = self.locate(h, eq)?;
        Some(self.buckets[b].pos[i])
    }

    /// The first position in `h`'s home bucket whose tag matches `h`, without probing further:
    /// a hint for a prefetch (an entry is in its home bucket unless that bucket was full when it
    /// came).
    #[inline(always)]
    pub(crate) fn home_candidate(&self, h: u64) -> Option<u32> {
        let bk = self.buckets.get(home(h, self.buckets.len()))?;
        let m = bk.matching(tag(h));
        (m != 0).then(|| bk.pos[m.trailing_zeros() as usize])
    }

    /// Point the slot holding position `old` (hash `h`) at `new`; false if there is none.
    pub(crate) fn replace(&mut self, h: u64, old: u32, new: u32) -> bool {
        match self.locate(h, |p| p == old) {
            Some((b, i)) => {
                self.buckets[b].pos[i] = new;
                true
            }
            None => false,
        }
    }

    /// Remove position `pos` (hash `h`); false if it is not there.
    pub(crate) fn remove(&mut self, h: u64, pos: u32) -> bool {
        let Some((b, i)) = self.locate(h, |p| p == pos) else {
            return false;
        };
        self.buckets[b].ctrl[i] = 0;
        self.len -= 1;
        // The buckets it passed on its way no longer count it.
        let mut x = home(h, self.buckets.len());
        while x != b {
            let n = self.buckets[x].passed();
            debug_assert!(
                n > 0,
                "bucket {x} counted fewer passing entries than passed it"
            );
            self.buckets[x].set_passed(n.saturating_sub(1));
            x = self.next(x);
        }
        true
    }

    /// Add position `pos` with hash `h` (the caller knows it is not there yet). False, and
    /// nothing added, when every slot is taken: the owner grows the index first.
    pub(crate) fn insert(&mut self, h: u64, pos: u32) -> bool {
        if self.len >= self.slots() {
            return false;
        }
        let t = tag(h);
        let mut b = home(h, self.buckets.len());
        // A free slot exists, so this ends within one round of the buckets.
        loop {
            let bk = &mut self.buckets[b];
            let free = bk.matching(0);
            if free != 0 {
                let i = free.trailing_zeros() as usize;
                bk.ctrl[i] = t;
                bk.pos[i] = pos;
                self.len += 1;
                return true;
            }
            let n = bk.passed();
            bk.set_passed(n.saturating_add(1));
            b = self.next(b);
        }
    }

    /// Remove every position, keeping the buckets.
    pub(crate) fn clear(&mut self) {
        self.buckets.fill(FREE);
        self.len = 0;
    }

    /// The address of the bucket holding position `pos` (hash `h`), for tests of the
    /// prefetch's addresses.
    #[cfg(test)]
    pub(crate) fn bucket_address(&self, h: u64, pos: u32) -> Option<usize> {
        let (b, _) = self.locate(h, |p| p == pos)?;
        Some(&self.buckets[b] as *const Bucket as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A weak hash, so that positions crowd the same buckets and tags.
    fn crowded(k: u32) -> u64 {
        u64::from(k % 7) << 56 | u64::from(k % 5) << 28
    }

    #[test]
    fn crowded_buckets_keep_every_position_reachable() {
        let mut ix = Index::with_capacity(200);
        for k in 0..200u32 {
            assert!(ix.insert(crowded(k), k));
        }
        for k in 0..200u32 {
            assert_eq!(ix.find(crowded(k), |p| p == k), Some(k));
        }
        for k in (0..200u32).step_by(3) {
            assert!(ix.remove(crowded(k), k));
            assert!(!ix.remove(crowded(k), k));
        }
        for k in 0..200u32 {
            let want = (k % 3 != 0).then_some(k);
            assert_eq!(ix.find(crowded(k), |p| p == k), want, "{k}");
        }
        assert_eq!(ix.len(), 200 - 67);
        // Every count of passing entries went back down with their removal.
        for k in 0..200u32 {
            if k % 3 != 0 {
                assert!(ix.remove(crowded(k), k));
            }
        }
        assert_eq!(ix.len(), 0);
        assert!(ix.buckets.iter().all(|b| b.ctrl == [0; 16]));
    }

    #[test]
    fn the_home_candidate_is_the_first_tag_match_of_the_home_bucket() {
        let mut ix = Index::with_capacity(200);
        // Spread hashes, distinct tags: every position in its home bucket, found as its own
        // candidate.
        let spread = |k: u32| u64::from(k + 1) << 56 | u64::from(k).wrapping_mul(0x9E37_79B9);
        for k in 0..100u32 {
            assert!(ix.insert(spread(k), k));
        }
        for k in 0..100u32 {
            assert_eq!(ix.home_candidate(spread(k)), Some(k));
        }
        // Crowded hashes: a candidate is a position stored under the hash's tag, or none when
        // the home bucket holds no such tag (the entry went on to a later bucket).
        let mut ix = Index::with_capacity(200);
        for k in 0..200u32 {
            assert!(ix.insert(crowded(k), k));
        }
        for k in 0..200u32 {
            if let Some(p) = ix.home_candidate(crowded(k)) {
                assert_eq!(tag(crowded(p)), tag(crowded(k)));
            }
        }
        assert_eq!(Index::with_capacity(4).home_candidate(crowded(3)), None);
    }

    #[test]
    fn a_full_index_refuses_and_keeps_what_it_has() {
        let mut ix = Index::with_capacity(1);
        let n = ix.slots() as u32;
        for k in 0..n {
            assert!(ix.insert(crowded(k), k));
        }
        assert!(!ix.insert(crowded(n), n));
        assert_eq!(ix.len(), n as usize);
        for k in 0..n {
            assert_eq!(ix.find(crowded(k), |p| p == k), Some(k));
        }
        assert_eq!(ix.find(crowded(n), |p| p == n), None);
    }

    proptest::proptest! {
        /// Against a map: any sequence of inserts, removals, moves (a position re-pointed, as a
        /// shard's removal moves its last entry) and lookups, with hashes from a small range so
        /// that buckets overflow and tags collide.
        #[test]
        fn matches_a_map(ops in proptest::collection::vec((0u8..4, 0u32..300, 0u64..64), 1..600)) {
            let mut ix = Index::with_capacity(300);
            let mut model: HashMap<u32, u64> = HashMap::new();
            let spread = |h: u64| (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8) | (h << 60);
            for (op, pos, h) in ops {
                let h = spread(h);
                match op {
                    0 if !model.contains_key(&pos) && ix.len() < ix.capacity() => {
                        proptest::prop_assert!(ix.insert(h, pos));
                        model.insert(pos, h);
                    }
                    1 => {
                        let had = model.remove(&pos);
                        let hh = had.unwrap_or(h);
                        proptest::prop_assert_eq!(ix.remove(hh, pos), had.is_some());
                    }
                    2 => {
                        // Move pos to a free position with the same hash.
                        if let Some(&hh) = model.get(&pos) {
                            let new = pos + 1000;
                            if !model.contains_key(&new) {
                                proptest::prop_assert!(ix.replace(hh, pos, new));
                                model.remove(&pos);
                                model.insert(new, hh);
                            }
                        }
                    }
                    _ => {
                        let want = model.get(&pos).map(|_| pos);
                        let hh = model.get(&pos).copied().unwrap_or(h);
                        proptest::prop_assert_eq!(ix.find(hh, |p| p == pos), want);
                    }
                }
                proptest::prop_assert_eq!(ix.len(), model.len());
            }
            for (&pos, &h) in &model {
                proptest::prop_assert_eq!(ix.find(h, |p| p == pos), Some(pos));
            }
        }
    }
}
