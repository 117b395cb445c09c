//! Content-defined chunking with a gear rolling hash and normalized cut
//! masks, after FastCDC (Xia et al., USENIX ATC 2016 and ToS 2020).
//!
//! Cut points depend only on content, so an insertion shifts only the chunks
//! around it. The cutter is resumable: data may arrive in pieces of any size
//! and the cut points are the same as if it came in one piece.

use crate::error::{Error, Result};

/// Minimum, average and maximum chunk sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// No cut before this many bytes.
    pub min: usize,
    /// The target average; rounded to a power of two for the cut masks.
    pub avg: usize,
    /// A cut is forced at this many bytes.
    pub max: usize,
}

impl Default for ChunkSizes {
    fn default() -> Self {
        ChunkSizes { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 }
    }
}

impl ChunkSizes {
    /// Checks the sizes are usable: 64 <= min < avg < max <= `limit`.
    pub fn validate(&self, limit: usize) -> Result<()> {
        if self.min < 64 || self.min >= self.avg || self.avg >= self.max || self.max > limit {
            return Err(Error::usage(format!(
                "chunk sizes must satisfy 64 <= min < avg < max <= {limit} (got min {}, avg {}, max {})",
                self.min, self.avg, self.max
            )));
        }
        Ok(())
    }
}

/// The 256 gear values the rolling hash adds per byte.
pub type GearTable = [u64; 256];

/// The public gear table used when chunking without a key.
pub fn default_gear() -> GearTable {
    gear_from_seed(0x6261_636b_7069_7065) // "backpipe"
}

/// A secret gear table: all 256 values drawn from keyed BLAKE3 output, so
/// cut points depend on the whole key.
pub fn keyed_gear(key: &[u8; 32]) -> GearTable {
    let mut bytes = [0u8; 256 * 8];
    blake3::Hasher::new_keyed(key).update(b"backpipe/v1/gear").finalize_xof().fill(&mut bytes);
    let mut table = [0u64; 256];
    for (value, raw) in table.iter_mut().zip(bytes.chunks_exact(8)) {
        *value = u64::from_le_bytes(raw.try_into().unwrap());
    }
    table
}

/// A gear table expanded from a 64-bit seed with SplitMix64.
fn gear_from_seed(seed: u64) -> GearTable {
    let mut state = seed;
    let mut table = [0u64; 256];
    for value in table.iter_mut() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *value = z ^ (z >> 31);
    }
    table
}

/// Finds cut points in a byte stream delivered in pieces.
pub struct Cutter {
    gear: Box<GearTable>,
    sizes: ChunkSizes,
    /// Harder mask, used before the average size is reached.
    mask_small: u64,
    /// Easier mask, used after.
    mask_large: u64,
    hash: u64,
    /// Bytes of the current chunk seen so far.
    len: usize,
}

/// A mask selecting the top `bits` bits, which depend on the most recent bytes' whole window.
fn top_bits(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        !0u64 << (64 - bits)
    }
}

impl Cutter {
    /// A cutter with the given gear table and (validated) sizes.
    pub fn new(gear: GearTable, sizes: ChunkSizes) -> Cutter {
        let bits = (sizes.avg as f64).log2().round() as u32;
        Cutter {
            gear: Box::new(gear),
            sizes,
            mask_small: top_bits((bits + 2).min(63)),
            mask_large: top_bits(bits.saturating_sub(2)),
            hash: 0,
            len: 0,
        }
    }

    /// Scans `data`, which continues the current chunk. Returns the offset in
    /// `data` just after the next cut point, or `None` when the whole of
    /// `data` belongs to the current chunk. After a cut the next call starts
    /// a new chunk.
    pub fn find_cut(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        if self.len < self.sizes.min {
            let skip = (self.sizes.min - self.len).min(data.len());
            self.len += skip;
            i = skip;
        }
        let avg_end = i + self.sizes.avg.saturating_sub(self.len).min(data.len() - i);
        if let Some(cut) = self.scan(data, i, avg_end, self.mask_small) {
            return Some(cut);
        }
        let max_end = avg_end + self.sizes.max.saturating_sub(self.len).min(data.len() - avg_end);
        if let Some(cut) = self.scan(data, avg_end, max_end, self.mask_large) {
            return Some(cut);
        }
        if self.len >= self.sizes.max {
            self.restart();
            return Some(max_end);
        }
        None
    }

    /// Rolls the hash over `data[from..to]` looking for `hash & mask == 0`.
    ///
    /// Four bytes at a time: the hashes after each of them are computed from
    /// the hash before the four, `h(i+k) = (h << (k+1)) + sum of gear(b(i+j)) << (k-j)`,
    /// so only one shift and one add per four bytes depend on the previous
    /// step. The hashes, and so the cut points, are exactly those of the
    /// byte-at-a-time definition.
    #[inline]
    fn scan(&mut self, data: &[u8], from: usize, to: usize, mask: u64) -> Option<usize> {
        let gear = &*self.gear;
        let mut hash = self.hash;
        let bytes = &data[from..to];
        let mut quads = bytes.chunks_exact(4);
        for (quad, chunk) in quads.by_ref().enumerate() {
            let [g0, g1, g2, g3] = [0, 1, 2, 3].map(|k| gear[chunk[k] as usize]);
            let s1 = (g0 << 1).wrapping_add(g1);
            let s2 = (s1 << 1).wrapping_add(g2);
            let s3 = (s2 << 1).wrapping_add(g3);
            let steps = [
                (hash << 1).wrapping_add(g0),
                (hash << 2).wrapping_add(s1),
                (hash << 3).wrapping_add(s2),
                (hash << 4).wrapping_add(s3),
            ];
            if steps.iter().any(|h| h & mask == 0) {
                let k = steps.iter().position(|h| h & mask == 0).expect("one matched");
                self.restart();
                return Some(from + quad * 4 + k + 1);
            }
            hash = steps[3];
        }
        let done = bytes.len() - quads.remainder().len();
        for (offset, &byte) in quads.remainder().iter().enumerate() {
            hash = (hash << 1).wrapping_add(gear[byte as usize]);
            if hash & mask == 0 {
                self.restart();
                return Some(from + done + offset + 1);
            }
        }
        self.hash = hash;
        self.len += to - from;
        None
    }

    /// Forgets the current chunk: the next byte starts a new one.
    pub fn restart(&mut self) {
        self.hash = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let table = gear_from_seed(seed);
        (0..len).map(|i| (table[i % 256] >> (i % 56)) as u8 ^ (i / 256) as u8).collect()
    }

    fn cuts(data: &[u8], piece: usize, sizes: ChunkSizes) -> Vec<usize> {
        let mut cutter = Cutter::new(default_gear(), sizes);
        let mut lens = Vec::new();
        let mut current = 0;
        for mut part in data.chunks(piece) {
            while let Some(cut) = cutter.find_cut(part) {
                lens.push(current + cut);
                current = 0;
                part = &part[cut..];
            }
            current += part.len();
        }
        if current > 0 {
            lens.push(current);
        }
        lens
    }

    const SMALL: ChunkSizes = ChunkSizes { min: 512, avg: 2048, max: 8192 };

    #[test]
    fn cuts_do_not_depend_on_how_data_is_split() {
        let data = pseudo_random(300_000, 7);
        let whole = cuts(&data, data.len(), SMALL);
        for piece in [1, 7, 100, 4096, 65536] {
            assert_eq!(cuts(&data, piece, SMALL), whole, "piece size {piece}");
        }
        assert_eq!(whole.iter().sum::<usize>(), data.len());
    }

    /// The cut points straight from the definition, one byte at a time.
    fn reference_cuts(data: &[u8], sizes: ChunkSizes) -> Vec<usize> {
        let gear = default_gear();
        let bits = sizes.avg.trailing_zeros();
        let (small, large) = (top_bits((bits + 2).min(63)), top_bits(bits.saturating_sub(2)));
        let (mut lens, mut start) = (Vec::new(), 0);
        while start < data.len() {
            let (mut hash, mut len) = (0u64, sizes.min.min(data.len() - start));
            while start + len < data.len() && len < sizes.max {
                hash = (hash << 1).wrapping_add(gear[data[start + len] as usize]);
                len += 1;
                if hash & if len <= sizes.avg { small } else { large } == 0 {
                    break;
                }
            }
            lens.push(len);
            start += len;
        }
        lens
    }

    #[test]
    fn cut_points_match_the_byte_at_a_time_definition() {
        for seed in 0..4 {
            let data = pseudo_random(400_000 + seed as usize * 13, seed);
            assert_eq!(cuts(&data, 3000 + seed as usize, SMALL), reference_cuts(&data, SMALL), "seed {seed}");
        }
    }

    #[test]
    fn chunk_sizes_respect_bounds_and_average() {
        let data = pseudo_random(2_000_000, 3);
        let lens = cuts(&data, 10_000, SMALL);
        let (last, rest) = lens.split_last().unwrap();
        assert!(rest.iter().all(|&l| (SMALL.min..=SMALL.max).contains(&l)));
        assert!(*last <= SMALL.max);
        let mean = data.len() / lens.len();
        assert!(mean > SMALL.avg / 2 && mean < SMALL.avg * 2, "mean chunk {mean}");
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(500_000, 11);
        let mut edited = data.clone();
        edited.splice(250_000..250_000, b"inserted bytes".iter().copied());
        let a = cuts(&data, 4096, SMALL);
        let b = cuts(&edited, 4096, SMALL);
        let shared = a.iter().filter(|l| b.contains(l)).count();
        assert!(shared * 10 > a.len() * 9, "{shared} of {} chunks survive", a.len());
    }
}
