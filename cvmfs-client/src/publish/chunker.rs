//! Content-defined chunking with the real server's xor32 rolling checksum
//! (`Xor32Detector` of the CernVM-FS ingestion pipeline), so that our cut marks are the ones
//! `cvmfs_server` computes for the same file and chunk sizes.
//!
//! The checksum is `x = (x << 1) ^ byte` over 32-bit words, so it depends only on the last 32
//! bytes. A chunk ends before the byte at which `|x as i32 - i32::MAX| < u32::MAX / avg`
//! (evaluated with two's-complement wrap-around, as the C++ code computes it), searched from
//! `min` bytes into the chunk; at `max` bytes the chunk is cut hard.

use std::fmt;
use std::str::FromStr;

/// The real server's defaults (`CVMFS_MIN/AVG/MAX_CHUNK_SIZE`).
pub const DEFAULT_MIN: u64 = 4 * 1024 * 1024;
pub const DEFAULT_AVG: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAX: u64 = 16 * 1024 * 1024;

/// The xor32 window: the checksum depends on this many trailing bytes.
const WINDOW: u64 = 32;

/// Minimum, average and maximum chunk size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u64,
    pub avg: u64,
    pub max: u64,
}

impl Default for ChunkSizes {
    fn default() -> Self {
        ChunkSizes {
            min: DEFAULT_MIN,
            avg: DEFAULT_AVG,
            max: DEFAULT_MAX,
        }
    }
}

/// Invalid chunk sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk sizes {0:?}: expected <min>,<avg>,<max> in bytes with {WINDOW} <= min < avg < max")]
pub struct ChunkSizesError(pub String);

impl ChunkSizes {
    /// Checks the relation the real detector asserts: `32 <= min < avg < max`.
    pub fn new(min: u64, avg: u64, max: u64) -> Result<Self, ChunkSizesError> {
        if min >= WINDOW && min < avg && avg < max {
            Ok(ChunkSizes { min, avg, max })
        } else {
            Err(ChunkSizesError(format!("{min},{avg},{max}")))
        }
    }

    /// Files larger than `min` may be cut (`MightFindChunks`).
    pub fn may_chunk(&self, file_size: u64) -> bool {
        file_size > self.min
    }

    fn threshold(&self) -> i32 {
        (u64::from(u32::MAX) / self.avg) as i32
    }
}

impl FromStr for ChunkSizes {
    type Err = ChunkSizesError;

    /// Parses `min,avg,max` (bytes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<u64> = s
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| ChunkSizesError(s.to_string()))?;
        match parts[..] {
            [min, avg, max] => ChunkSizes::new(min, avg, max),
            _ => Err(ChunkSizesError(s.to_string())),
        }
    }
}

impl fmt::Display for ChunkSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.min, self.avg, self.max)
    }
}

/// Streaming cut-mark detector for one file: feed consecutive blocks, get absolute offsets
/// at which a new chunk starts.
pub struct Chunker {
    sizes: ChunkSizes,
    threshold: i32,
    /// Absolute offset of the start of the current chunk.
    last_cut: u64,
    /// Absolute offset of the next byte to be fed.
    offset: u64,
    xor32: u32,
}

impl Chunker {
    pub fn new(sizes: ChunkSizes) -> Self {
        Chunker {
            sizes,
            threshold: sizes.threshold(),
            last_cut: 0,
            offset: 0,
            xor32: 0,
        }
    }

    /// Feeds the next block of the file; returns the cut marks (absolute offsets, each the
    /// first byte of a new chunk) that fall inside it, in order.
    pub fn feed(&mut self, block: &[u8]) -> Vec<u64> {
        let mut cuts = Vec::new();
        let start = self.offset;
        let end = start + block.len() as u64;
        let mut pos = start;
        while pos < end {
            // Bytes before `last_cut + min - WINDOW` cannot influence a checksum that is tested.
            let warm_up = self.last_cut + self.sizes.min - WINDOW;
            if pos < warm_up {
                pos = warm_up.min(end);
                continue;
            }
            let first_test = self.last_cut + self.sizes.min;
            let hard_cut = self.last_cut + self.sizes.max;
            let byte = block[(pos - start) as usize];
            self.xor32 = (self.xor32 << 1) ^ u32::from(byte);
            if pos >= first_test && self.at_threshold() {
                // This byte starts the next chunk; it is fed again only if that chunk's
                // warm-up window already covers it (as the C++ detector resumes there).
                self.cut(pos, &mut cuts);
                continue;
            }
            pos += 1;
            if pos == hard_cut {
                self.cut(pos, &mut cuts);
            }
        }
        self.offset = end;
        cuts
    }

    fn at_threshold(&self) -> bool {
        // Same 32-bit arithmetic as the C++ `abs(int32(xor32) - kMagicNumber) < threshold`.
        (self.xor32 as i32).wrapping_sub(i32::MAX).wrapping_abs() < self.threshold
    }

    fn cut(&mut self, at: u64, cuts: &mut Vec<u64>) {
        self.last_cut = at;
        self.xor32 = 0;
        cuts.push(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cuts_of(data: &[u8], sizes: ChunkSizes, block: usize) -> Vec<u64> {
        let mut c = Chunker::new(sizes);
        data.chunks(block).flat_map(|b| c.feed(b)).collect()
    }

    #[test]
    fn cuts_respect_bounds_and_do_not_depend_on_block_size() {
        let sizes = ChunkSizes::new(1024, 4096, 16384).unwrap();
        let data = pseudo_random(1 << 20, 7);
        let cuts = cuts_of(&data, sizes, 1 << 20);
        assert!(cuts.len() > 20, "{} cuts", cuts.len());
        let mut prev = 0;
        for &c in &cuts {
            assert!(c - prev >= 1024 && c - prev <= 16384, "chunk {prev}..{c}");
            prev = c;
        }
        for block in [1, 31, 4096, 65537] {
            assert_eq!(cuts_of(&data, sizes, block), cuts, "block size {block}");
        }
    }

    #[test]
    fn uniform_data_is_cut_at_max() {
        let sizes = ChunkSizes::new(64, 128, 256).unwrap();
        let cuts = cuts_of(&[0u8; 1000], sizes, 100);
        assert_eq!(cuts, vec![256, 512, 768]);
    }

    #[test]
    fn sizes_parse_and_validate() {
        assert_eq!(
            "4194304,8388608,16777216".parse::<ChunkSizes>().unwrap(),
            ChunkSizes::default()
        );
        for bad in ["1,2", "16,64,128", "100,50,200", "a,b,c", "64,128,128,1"] {
            assert!(bad.parse::<ChunkSizes>().is_err(), "{bad}");
        }
    }

    /// The real server cut `big/chunked.dat` of the fixture (default sizes) at these offsets.
    #[test]
    fn same_cut_marks_as_the_real_server() {
        use crate::catalog::Catalog;
        use crate::hash::{ContentHash, Suffix};
        use std::io::Read;
        let srv = crate::testing::fixture_dir().join("srv/cvmfs/demo.cernvm.test");
        let object = |h: &ContentHash, s: Suffix| {
            let raw = std::fs::read(srv.join(h.object_path(s))).unwrap();
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let root: ContentHash = "aba5b83589bd346cdc5f227346927f1428addde2".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("root.db");
        std::fs::write(&db, object(&root, Suffix::Catalog)).unwrap();
        let cat = Catalog::open(&db, root, b"").unwrap();
        let chunks = cat
            .chunks(b"/big/chunked.dat", crate::hash::Algorithm::Sha1)
            .unwrap();
        let data: Vec<u8> = chunks
            .iter()
            .flat_map(|c| object(&c.hash, Suffix::Partial))
            .collect();
        let expected: Vec<u64> = chunks.iter().skip(1).map(|c| c.offset).collect();
        assert_eq!(expected.len(), 5);
        assert_eq!(cuts_of(&data, ChunkSizes::default(), 1 << 20), expected);
    }
}
