//! Content hashes (spec §2): the one hash type of the project.
//!
//! A content hash is a 20-byte digest of SHA-1, RIPEMD-160 or SHAKE-128 (160-bit output). Its
//! text form is 40 lower-case hex digits, followed by `-rmd160` or `-shake128` for the newer
//! algorithms; objects are stored at `data/<2 hex>/<rest><suffix>`.

use std::fmt;
use std::str::FromStr;

use sha1::Digest as _;
use shake::digest::{ExtendableOutput, Update, XofReader};

/// A content-hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha1,
    Rmd160,
    Shake128,
}

impl Algorithm {
    /// The identifier appended to the hex digest (`""` for SHA-1).
    pub fn text_suffix(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "",
            Algorithm::Rmd160 => "-rmd160",
            Algorithm::Shake128 => "-shake128",
        }
    }

    /// Decodes the hash-algorithm bits (8–10) of a catalog `flags` value.
    pub fn from_catalog_flags(flags: i64) -> Result<Self, HashError> {
        match (flags >> 8) & 0x7 {
            0 => Ok(Algorithm::Sha1),
            1 => Ok(Algorithm::Rmd160),
            2 => Ok(Algorithm::Shake128),
            n => Err(HashError::UnknownAlgorithm(format!(
                "catalog hash bits {n}"
            ))),
        }
    }

    /// A streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Rmd160 => Hasher::Rmd160(ripemd::Ripemd160::new()),
            Algorithm::Shake128 => Hasher::Shake128(shake::Shake128::default()),
        }
    }
}

/// Object-name suffix letters (spec §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suffix {
    /// Whole-file data: no letter.
    None,
    Catalog,
    Partial,
    History,
    Certificate,
    MetaInfo,
}

impl Suffix {
    pub fn letter(self) -> &'static str {
        match self {
            Suffix::None => "",
            Suffix::Catalog => "C",
            Suffix::Partial => "P",
            Suffix::History => "H",
            Suffix::Certificate => "X",
            Suffix::MetaInfo => "M",
        }
    }
}

/// Errors while parsing or checking hashes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("malformed content hash {0:?}: expected 40 lower-case hex digits with an optional -rmd160/-shake128 identifier")]
    Malformed(String),
    #[error("unknown hash algorithm: {0}")]
    UnknownAlgorithm(String),
    #[error("a content hash needs 20 bytes, got {0}")]
    WrongLength(usize),
}

/// A content hash: algorithm plus 20-byte digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash {
    pub algorithm: Algorithm,
    pub digest: [u8; 20],
}

impl ContentHash {
    /// Builds a hash from a raw digest as stored in catalogs (`hash` BLOB columns).
    pub fn from_digest(algorithm: Algorithm, digest: &[u8]) -> Result<Self, HashError> {
        let digest: [u8; 20] = digest
            .try_into()
            .map_err(|_| HashError::WrongLength(digest.len()))?;
        Ok(ContentHash { algorithm, digest })
    }

    /// Hashes `data` in one go.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    /// The 40 hex digits of the digest, without the algorithm identifier.
    pub fn hex(&self) -> String {
        to_hex(&self.digest)
    }

    /// Relative URL path of the object: `data/ab/cdef…[-rmd160][suffix]`.
    pub fn object_path(&self, suffix: Suffix) -> String {
        let text = self.to_string();
        format!("data/{}/{}{}", &text[..2], &text[2..], suffix.letter())
    }

    /// Path of the object inside a local cache directory: `ab/cdef…[-rmd160]` (no suffix).
    pub fn cache_path(&self) -> String {
        let text = self.to_string();
        format!("{}/{}", &text[..2], &text[2..])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.hex(), self.algorithm.text_suffix())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl FromStr for ContentHash {
    type Err = HashError;

    /// Parses the text form, strictly (lower-case hex, exact identifier).
    fn from_str(s: &str) -> Result<Self, HashError> {
        let (hex, algorithm) = match s.len() {
            40 => (s, Algorithm::Sha1),
            47 if s.ends_with("-rmd160") => (&s[..40], Algorithm::Rmd160),
            49 if s.ends_with("-shake128") => (&s[..40], Algorithm::Shake128),
            _ => return Err(HashError::Malformed(s.to_string())),
        };
        let digest = from_hex(hex).ok_or_else(|| HashError::Malformed(s.to_string()))?;
        ContentHash::from_digest(algorithm, &digest)
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses lower-case hex; `None` on odd length or any other character.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// A streaming content hasher.
#[derive(Clone)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Rmd160(ripemd::Ripemd160),
    Shake128(shake::Shake128),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => sha1::Digest::update(h, data),
            Hasher::Rmd160(h) => sha1::Digest::update(h, data),
            Hasher::Shake128(h) => Update::update(h, data),
        }
    }

    pub fn finish(self) -> ContentHash {
        let mut digest = [0u8; 20];
        let algorithm = match self {
            Hasher::Sha1(h) => {
                digest.copy_from_slice(&h.finalize());
                Algorithm::Sha1
            }
            Hasher::Rmd160(h) => {
                digest.copy_from_slice(&h.finalize());
                Algorithm::Rmd160
            }
            Hasher::Shake128(h) => {
                h.finalize_xof().read(&mut digest);
                Algorithm::Shake128
            }
        };
        ContentHash { algorithm, digest }
    }
}

/// MD5 of a repository path, split into the two signed little-endian halves that catalogs use
/// as keys (spec §5.4). The root is the empty path.
pub fn md5_path(path: &[u8]) -> (i64, i64) {
    let d = md5::Md5::digest(path);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    b.copy_from_slice(&d[8..16]);
    (i64::from_le_bytes(a), i64::from_le_bytes(b))
}

/// Hex MD5 of `data` (the manifest's `R` field is MD5 of the root path).
pub fn md5_hex(data: &[u8]) -> String {
    to_hex(&md5::Md5::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        for (alg, input, expected) in [
            (
                Algorithm::Sha1,
                "",
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            ),
            (
                Algorithm::Sha1,
                "abc",
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (
                Algorithm::Rmd160,
                "",
                "9c1185a5c5e9fc54612808977ee8f548b2258d31",
            ),
            (
                Algorithm::Rmd160,
                "abc",
                "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
            ),
            (
                Algorithm::Shake128,
                "",
                "7f9c2ba4e88f827d616045507605853ed73b8093",
            ),
            (
                Algorithm::Shake128,
                "abc",
                "5881092dd818bf5cf8a3ddb793fbcba74097d5c5",
            ),
        ] {
            assert_eq!(
                ContentHash::of(alg, input.as_bytes()).hex(),
                expected,
                "{alg:?} {input:?}"
            );
        }
    }

    #[test]
    fn text_round_trip_and_object_paths() {
        let h: ContentHash = "8220c7b0307b55556bfb2cd7c19e4bae8f0eb864".parse().unwrap();
        assert_eq!(
            h.object_path(Suffix::Catalog),
            "data/82/20c7b0307b55556bfb2cd7c19e4bae8f0eb864C"
        );
        assert_eq!(h.cache_path(), "82/20c7b0307b55556bfb2cd7c19e4bae8f0eb864");
        let r: ContentHash = "9c1185a5c5e9fc54612808977ee8f548b2258d31-rmd160"
            .parse()
            .unwrap();
        assert_eq!(r.algorithm, Algorithm::Rmd160);
        assert_eq!(
            r.object_path(Suffix::Catalog),
            "data/9c/1185a5c5e9fc54612808977ee8f548b2258d31-rmd160C"
        );
        let s: ContentHash = "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"
            .parse()
            .unwrap();
        assert_eq!(
            s.to_string(),
            "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"
        );
        assert_eq!(
            s.object_path(Suffix::None),
            "data/7f/9c2ba4e88f827d616045507605853ed73b8093-shake128"
        );
    }

    #[test]
    fn malformed_text_is_rejected() {
        for bad in [
            "",
            "8220C7B0307B55556BFB2CD7C19E4BAE8F0EB864",
            "8220c7b0307b55556bfb2cd7c19e4bae8f0eb86",
            "8220c7b0307b55556bfb2cd7c19e4bae8f0eb864C",
            "8220c7b0307b55556bfb2cd7c19e4bae8f0eb864-md5xxx",
            "zz20c7b0307b55556bfb2cd7c19e4bae8f0eb864",
        ] {
            assert!(bad.parse::<ContentHash>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn md5_path_vectors() {
        assert_eq!(md5_path(b""), (338333539836370388, 9098107892288553193));
        assert_eq!(
            md5_path(b"/usr"),
            (4261349461019561853, 8805651796865472228)
        );
        assert_eq!(
            md5_path(b"/usr/bin"),
            (-6332405977853062539, -3354531661490446888)
        );
        assert_eq!(
            md5_path(b"/cvm4/usr/bin/bash"),
            (2939963804143313985, 2048949939906111361)
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn catalog_flag_bits() {
        assert_eq!(Algorithm::from_catalog_flags(4).unwrap(), Algorithm::Sha1);
        assert_eq!(
            Algorithm::from_catalog_flags(260).unwrap(),
            Algorithm::Rmd160
        );
        assert_eq!(
            Algorithm::from_catalog_flags(2 << 8 | 4).unwrap(),
            Algorithm::Shake128
        );
        assert!(Algorithm::from_catalog_flags(3 << 8).is_err());
    }
}
