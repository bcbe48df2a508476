//! Hashing for keys seam assigns itself (connection ids, thread ids, its own random trace ids).
//!
//! No peer chooses these keys, so the flooding resistance of the standard SipHash buys nothing
//! here, and it showed up in the correlator's profile; a multiply-rotate mix is enough. Keys a
//! peer can influence (addresses and ports) keep the standard hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// A map keyed by ids seam assigns.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let low_bits: std::collections::HashSet<u64> =
            (0..1024u64).map(|i| b.hash_one(i) & 1023).collect();
        assert!(low_bits.len() > 1000, "{} distinct of 1024", low_bits.len());
        let top7: std::collections::HashSet<u64> =
            (0..1024u64).map(|i| b.hash_one(i) >> 57).collect();
        assert!(top7.len() > 100);
    }

    #[test]
    fn maps_work_with_every_key_shape() {
        let mut m: IdMap<[u8; 16], u8> = IdMap::default();
        m.insert([1; 16], 1);
        m.insert([2; 16], 2);
        assert_eq!(m.get(&[1; 16]), Some(&1));
        let mut r: IdMap<(u64, u64), u8> = IdMap::default();
        r.insert((1, 2), 3);
        assert_eq!(r.get(&(1, 2)), Some(&3));
        assert_eq!(r.get(&(2, 1)), None);
    }
}
