//! Content-addressed objects: download, verify (hash over the stored, compressed bytes),
//! decompress and cache (spec §2.4). The hash check is a streaming `Read` wrapper, so objects
//! are never held in memory whole and never reach the cache unverified.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use flate2::read::ZlibDecoder;

use crate::cache::{Cache, CacheError};
use crate::catalog::Compression;
use crate::download::{ConsumeError, DownloadError, DownloadManager};
use crate::hash::{ContentHash, Hasher, Suffix};

/// Errors of object retrieval.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("object {object}: {source}")]
    Download {
        object: String,
        source: DownloadError,
    },
    #[error("object {object} is not in the cache and the repository is not reachable (offline)")]
    Offline { object: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The hash of a stream did not match.
#[derive(Debug)]
pub struct HashMismatch {
    pub expected: ContentHash,
    pub actual: ContentHash,
}

impl fmt::Display for HashMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "content hash is {}, expected {}",
            self.actual, self.expected
        )
    }
}

impl std::error::Error for HashMismatch {}

/// Marks an I/O error of the underlying transport, so it is not mistaken for bad data.
#[derive(Debug)]
struct TransportFailure(io::Error);

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportFailure {}

/// A `Read` wrapper that hashes everything read through it and fails at end of stream with
/// [`HashMismatch`] when the digest is not the expected one.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: ContentHash,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: ContentHash) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(expected.algorithm.hasher()),
            expected,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), TransportFailure(e)))?;
        match (n, self.hasher.take()) {
            (0, Some(h)) if !buf.is_empty() => {
                let actual = h.finish();
                if actual != self.expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        HashMismatch {
                            expected: self.expected,
                            actual,
                        },
                    ));
                }
            }
            (_, Some(mut h)) => {
                h.update(&buf[..n]);
                self.hasher = Some(h);
            }
            (_, None) => {}
        }
        Ok(n)
    }
}

/// Classifies an error that came out of a verifying/decompressing reader chain.
fn classify(e: io::Error) -> ConsumeError {
    if let Some(inner) = e.get_ref() {
        if inner.is::<TransportFailure>() {
            return ConsumeError::Transfer(e);
        }
        if let Some(m) = inner.downcast_ref::<HashMismatch>() {
            return ConsumeError::BadData(m.to_string());
        }
    }
    ConsumeError::BadData(format!("cannot decompress: {e}"))
}

/// Reads a whole verified object into memory (small objects: certificates, meta-info).
pub fn read_verified(
    body: &mut dyn Read,
    expected: ContentHash,
    compression: Compression,
    limit: u64,
) -> Result<Vec<u8>, ConsumeError> {
    let mut out = Vec::new();
    copy_verified(body, expected, compression, &mut out, limit)?;
    Ok(out)
}

/// Streams a verified, decompressed object into `sink`; returns the decompressed size.
/// `limit` bounds the decompressed size (protection against zlib bombs).
fn copy_verified(
    body: &mut dyn Read,
    expected: ContentHash,
    compression: Compression,
    sink: &mut dyn io::Write,
    limit: u64,
) -> Result<u64, ConsumeError> {
    let mut verifying = VerifyingReader::new(body, expected);
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    let mut pump = |r: &mut dyn Read, total: &mut u64| -> Result<(), ConsumeError> {
        loop {
            let n = r.read(&mut buf).map_err(classify)?;
            if n == 0 {
                return Ok(());
            }
            *total += n as u64;
            if *total > limit {
                return Err(ConsumeError::BadData(format!(
                    "object is larger than expected ({limit} bytes)"
                )));
            }
            sink.write_all(&buf[..n]).map_err(ConsumeError::Local)?;
        }
    };
    match compression {
        Compression::None => pump(&mut verifying, &mut total)?,
        Compression::Zlib => {
            let mut z = ZlibDecoder::new(&mut verifying);
            pump(&mut z, &mut total)?;
            // Trailing bytes after the zlib stream are still part of the hashed object.
            io::copy(&mut z.into_inner(), &mut io::sink()).map_err(classify)?;
        }
    }
    Ok(total)
}

/// Download manager + cache: where objects come from.
pub struct ObjectStore {
    pub cache: Cache,
    pub downloader: Option<Arc<DownloadManager>>,
}

/// What is known about an object before it is fetched.
#[derive(Debug, Clone, Copy)]
pub struct ObjectSpec {
    pub hash: ContentHash,
    pub suffix: Suffix,
    pub compression: Compression,
    /// Decompressed size, when known (file and chunk sizes from the catalog).
    pub size: Option<u64>,
}

/// Largest object accepted when its size is not known (catalogs, history, certificates).
const MAX_UNSIZED_OBJECT: u64 = 4 << 30;

impl ObjectStore {
    /// The path of the verified, decompressed object in the cache, downloading it if needed.
    pub fn get(&self, spec: ObjectSpec) -> Result<PathBuf, FetchError> {
        if let Some(p) = self.cache.lookup(&spec.hash) {
            match (spec.size, std::fs::metadata(&p)) {
                (Some(want), Ok(m)) if m.len() != want => {
                    log::warn!(
                        "cached object {} has {} bytes instead of {want}; fetching it again",
                        spec.hash,
                        m.len()
                    );
                    self.cache.evict(&spec.hash);
                }
                (_, Ok(_)) => return Ok(p),
                (_, Err(_)) => {}
            }
        }
        let object = spec.hash.object_path(spec.suffix);
        let Some(dl) = &self.downloader else {
            return Err(FetchError::Offline { object });
        };
        let limit = spec.size.unwrap_or(MAX_UNSIZED_OBJECT);
        let path = dl
            .fetch(&format!("/{object}"), |body| {
                let mut txn = self.cache.begin().map_err(|e| match e {
                    CacheError::Io { source, .. } => ConsumeError::Local(source),
                })?;
                let n = copy_verified(body, spec.hash, spec.compression, &mut txn, limit)?;
                if let Some(want) = spec.size {
                    if n != want {
                        return Err(ConsumeError::BadData(format!(
                            "decompressed size is {n} bytes, the catalog says {want}"
                        )));
                    }
                }
                self.cache.commit(txn, &spec.hash).map_err(|e| match e {
                    CacheError::Io { source, .. } => ConsumeError::Local(source),
                })
            })
            .map_err(|source| FetchError::Download { object, source })?;
        Ok(path)
    }

    /// Opens the object (see [`ObjectStore::get`]).
    pub fn open(&self, spec: ObjectSpec) -> Result<File, FetchError> {
        let p = self.get(spec)?;
        File::open(&p).map_err(|source| FetchError::Cache(CacheError::Io { path: p, source }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Algorithm;
    use flate2::{write::ZlibEncoder, Compression as Level};
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Level::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn empty_file_object() {
        let z = zlib(b"");
        assert_eq!(z, [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        let h = ContentHash::of(Algorithm::Sha1, &z);
        assert_eq!(h.hex(), "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78");
        assert_eq!(
            read_verified(&mut &z[..], h, Compression::Zlib, 10).unwrap(),
            b""
        );
    }

    #[test]
    fn verified_round_trip_and_failures() {
        let data = vec![7u8; 100_000];
        let z = zlib(&data);
        let h = ContentHash::of(Algorithm::Sha1, &z);
        assert_eq!(
            read_verified(&mut &z[..], h, Compression::Zlib, 1 << 20).unwrap(),
            data
        );

        let mut flipped = z.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            read_verified(&mut &flipped[..], h, Compression::Zlib, 1 << 20),
            Err(ConsumeError::BadData(_))
        ));
        let truncated = &z[..z.len() - 3];
        assert!(matches!(
            read_verified(&mut &truncated[..], h, Compression::Zlib, 1 << 20),
            Err(ConsumeError::BadData(_))
        ));
        assert!(matches!(
            read_verified(&mut &z[..], h, Compression::Zlib, 1000),
            Err(ConsumeError::BadData(_))
        ));
        let raw = b"uncompressed".to_vec();
        let hr = ContentHash::of(Algorithm::Rmd160, &raw);
        assert_eq!(
            read_verified(&mut &raw[..], hr, Compression::None, 100).unwrap(),
            raw
        );
    }
}
