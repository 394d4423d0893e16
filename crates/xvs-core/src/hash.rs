//! The kernel's hash functions used by the hashing schedulers (`include/linux/hash.h`,
//! `lib/siphash.c` on 64-bit kernels).

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

/// `GOLDEN_RATIO_32` from `include/linux/hash.h`.
pub const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// `hash_32(val, bits)`: multiplicative hash, top `bits` bits.
pub fn hash_32(val: u32, bits: u32) -> u32 {
    debug_assert!(bits > 0 && bits <= 32);
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - bits)
}

/// An address folded to 32 bits in host order as the schedulers do: the IPv4 address itself, or
/// the XOR of the four 32-bit words of an IPv6 address.
pub fn fold_addr(addr: &IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(*a),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            w(0) ^ w(4) ^ w(8) ^ w(12)
        }
    }
}

/// Feed (protocol number, address, port) to `state`: one word for IPv4, protocol and port
/// packed beside the address (one hasher round instead of one per field), the address and
/// then protocol and port for IPv6. The connection table's client sides and the data path's
/// service and NAT-source keys are hashed this way. IPv4 and IPv6 keys never compare equal, so
/// their hashes need not be comparable.
pub(crate) fn hash_endpoint<H: Hasher>(state: &mut H, proto: u8, addr: &IpAddr, port: u16) {
    let tail = u32::from(proto) | u32::from(port) << 8;
    match addr {
        IpAddr::V4(a) => state.write_u64(u64::from(a.to_bits()) << 32 | u64::from(tail)),
        IpAddr::V6(a) => {
            state.write_u128(a.to_bits());
            state.write_u32(tail);
        }
    }
}

/// The keys of the maps whose keys clients choose (the service and NAT-source maps of a
/// snapshot, the lblc/lblcr tables, twos's random numbers). xvsd draws them from the operating
/// system's random source at start; [`HashSeed::FIXED`] serves tests and the offline replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSeed(pub [u64; 4]);

impl HashSeed {
    /// A fixed seed, for reproducible runs.
    pub const FIXED: HashSeed = HashSeed([1, 2, 3, 4]);

    /// A hasher keyed by this seed, varied by `salt` (one per use, so that two maps never
    /// share keys).
    pub fn hasher(&self, salt: u64) -> ahash::RandomState {
        let [a, b, c, d] = self.0;
        ahash::RandomState::with_seeds(a ^ salt, b, c.rotate_left(17) ^ salt, d)
    }
}

/// A 64-bit kernel's `hsiphash` key (two machine words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HsipKey(pub u64, pub u64);

/// `hsiphash(&v, 4, key)` on a 64-bit kernel: SipHash-1-3 of the four little-endian bytes of `v`,
/// truncated to 32 bits.
pub fn hsiphash_u32(v: u32, key: HsipKey) -> u32 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(&v.to_le_bytes());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_32_matches_reference_example() {
        // IPVS-REFERENCE §3.13: 10.1.1.5 → 0xFDB7E663, bucket 253.
        let v = u32::from(std::net::Ipv4Addr::new(10, 1, 1, 5));
        assert_eq!(v.wrapping_mul(GOLDEN_RATIO_32), 0xFDB7_E663);
        assert_eq!(hash_32(v, 8), 253);
    }

    #[test]
    fn fold_v6() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(fold_addr(&a), 0x2001_0db8 ^ 1);
    }

    #[test]
    fn siphash13_reference_vector() {
        // SipHash-1-3 is SipHash with one compression and three finalization rounds; check the
        // hasher against a value computed independently from the algorithm's definition.
        let mut h = SipHasher13::new_with_keys(0, 0);
        h.write(&[]);
        let empty = h.finish();
        assert_eq!(empty, reference_siphash13(0, 0, &[]));
        assert_eq!(
            u64::from(hsiphash_u32(0x0102_0304, HsipKey(0x9E37_79B1, 0x9E37_79B1))),
            reference_siphash13(0x9E37_79B1, 0x9E37_79B1, &0x0102_0304u32.to_le_bytes())
                & 0xffff_ffff
        );
    }

    /// A straightforward SipHash-1-3 written from the paper, for cross-checking the crate.
    fn reference_siphash13(k0: u64, k1: u64, msg: &[u8]) -> u64 {
        let mut v0 = 0x736f_6d65_7073_6575u64 ^ k0;
        let mut v1 = 0x646f_7261_6e64_6f6du64 ^ k1;
        let mut v2 = 0x6c79_6765_6e65_7261u64 ^ k0;
        let mut v3 = 0x7465_6462_7974_6573u64 ^ k1;
        let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13);
            *v1 ^= *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16);
            *v3 ^= *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21);
            *v3 ^= *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17);
            *v1 ^= *v2;
            *v2 = v2.rotate_left(32);
        };
        let mut chunks = msg.chunks_exact(8);
        for c in &mut chunks {
            let m = u64::from_le_bytes(c.try_into().unwrap());
            v3 ^= m;
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            v0 ^= m;
        }
        let mut b = (msg.len() as u64) << 56;
        for (i, byte) in chunks.remainder().iter().enumerate() {
            b |= u64::from(*byte) << (8 * i);
        }
        v3 ^= b;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= b;
        v2 ^= 0xff;
        for _ in 0..3 {
            round(&mut v0, &mut v1, &mut v2, &mut v3);
        }
        v0 ^ v1 ^ v2 ^ v3
    }
}
