//! Content-addressed objects: download, verify (hash over the stored, compressed bytes),
//! decompress and cache (spec §2.4). The hash check is a streaming `Read` wrapper, so objects
//! are never held in memory whole and never reach the cache unverified.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use flate2::read::ZlibDecoder;

use crate::cache::{Cache, CacheError, Label};
use crate::catalog::Compression;
use crate::download::{ConsumeError, DownloadError, DownloadManager};
use crate::hash::{Algorithm, ContentHash, Hasher, Suffix};
use crate::stock_zlib::StockDeflate;

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
    #[error("object {object}: no space left in the cache: {reason}")]
    NoSpace { object: String, reason: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl FetchError {
    /// The errno a file system operation should fail with.
    pub fn errno(&self) -> i32 {
        match self {
            FetchError::Download { .. } | FetchError::Offline { .. } => libc::EIO,
            FetchError::NoSpace { .. } => libc::ENOSPC,
            FetchError::Cache(e) => e.errno(),
        }
    }
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

/// Whether the repository's servers answered lately (offline mode, spec §9.6): set by every
/// download, logged on each change.
#[derive(Debug, Default)]
pub struct NetworkState {
    offline: AtomicBool,
    failures: AtomicU64,
}

impl NetworkState {
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    /// Number of downloads that found no server answering.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A server answered.
    pub fn report_online(&self) {
        if self.offline.swap(false, Ordering::SeqCst) {
            log::info!("CernVM-FS: the repository servers answer again, leaving offline mode");
        }
    }

    /// No server or proxy answered.
    pub fn report_offline(&self, reason: &dyn fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.offline.swap(true, Ordering::SeqCst) {
            log::warn!("CernVM-FS: no server or proxy answers ({reason}), entering offline mode");
        }
    }
}

/// Download manager + cache: where objects come from.
pub struct ObjectStore {
    pub cache: Cache,
    pub downloader: Option<Arc<DownloadManager>>,
    pub network: NetworkState,
    /// Objects whose cached copy was checked against its hash during this mount.
    verified: Mutex<HashSet<ContentHash>>,
    downloads: AtomicU64,
    /// Objects being downloaded now: a second reader (or a prefetch) waits for the first
    /// download instead of starting its own.
    in_flight: Mutex<HashMap<ContentHash, Arc<Flight>>>,
}

/// One download in progress; `done` turns true when it ended (either way).
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    ended: Condvar,
}

impl Flight {
    fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.ended.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended.notify_all();
    }
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

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl ObjectStore {
    pub fn new(cache: Cache, downloader: Option<Arc<DownloadManager>>) -> ObjectStore {
        ObjectStore {
            cache,
            downloader,
            network: NetworkState::default(),
            verified: Mutex::new(HashSet::new()),
            downloads: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Number of objects downloaded so far.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// The path of the verified, decompressed object in the cache, downloading it if needed.
    pub fn get(&self, spec: ObjectSpec) -> Result<PathBuf, FetchError> {
        self.get_labeled(spec, Label::UNKNOWN)
    }

    /// Like [`ObjectStore::get`]; a downloaded object is recorded in the quota database with
    /// `label`. A cached copy is checked against its hash the first time it is used in this
    /// mount; a corrupt one is discarded and fetched again.
    pub fn get_labeled(&self, spec: ObjectSpec, label: Label<'_>) -> Result<PathBuf, FetchError> {
        self.get_object(spec, label).map(|(p, _)| p)
    }

    /// Like [`ObjectStore::get_labeled`], with the cached copy already open when it was there
    /// (one open, checked through the same descriptor that is then read).
    fn get_object(
        &self,
        spec: ObjectSpec,
        label: Label<'_>,
    ) -> Result<(PathBuf, Option<File>), FetchError> {
        let mut waited = false;
        loop {
            if let Some((p, f)) = self.cache.open_object(&spec.hash) {
                if self.cached_copy_is_good(&p, &f, spec) {
                    return Ok((p, Some(f)));
                }
                drop(f);
                self.cache.evict(&spec.hash);
            }
            let (flight, leader) = {
                let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match m.get(&spec.hash) {
                    // After one wait that did not produce the object, download it ourselves
                    // (the other download may have failed for a reason of its own).
                    Some(f) if !waited => (Arc::clone(f), false),
                    Some(_) => (Arc::new(Flight::default()), false),
                    None => {
                        let f = Arc::new(Flight::default());
                        m.insert(spec.hash, Arc::clone(&f));
                        (f, true)
                    }
                }
            };
            if leader {
                let result = self.fetch_missing(spec, label);
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&spec.hash);
                flight.finish();
                return result.map(|p| (p, None));
            }
            if waited {
                return self.fetch_missing(spec, label).map(|p| (p, None));
            }
            flight.wait();
            waited = true;
        }
    }

    /// Objects being downloaded right now.
    pub fn downloading(&self, hash: &ContentHash) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(hash)
    }

    /// Downloads an object that is not in the cache (or whose copy was bad).
    fn fetch_missing(&self, spec: ObjectSpec, label: Label<'_>) -> Result<PathBuf, FetchError> {
        let object = spec.hash.object_path(spec.suffix);
        let Some(dl) = &self.downloader else {
            return Err(FetchError::Offline { object });
        };
        if self.cache.is_read_only() {
            return Err(FetchError::Cache(CacheError::ReadOnly));
        }
        if let (Some(q), Some(size)) = (self.cache.quota(), spec.size) {
            if !q.reserve(size).map_err(CacheError::from)? {
                return Err(FetchError::NoSpace {
                    object,
                    reason: format!(
                        "{size} bytes is more than the largest object the quota allows ({} bytes)",
                        q.max_object_size()
                    ),
                });
            }
        }
        let mut retried = false;
        loop {
            match self.download(dl, spec, label, &object) {
                Ok(p) => {
                    self.network.report_online();
                    self.downloads.fetch_add(1, Ordering::Relaxed);
                    self.mark_verified(spec.hash);
                    return Ok(p);
                }
                Err(DownloadError::LocalIo { source, .. }) if is_disk_full(&source) => {
                    self.network.report_online();
                    // Make room: half of what the cache holds now, least recently used first.
                    let freed = match self.cache.quota() {
                        Some(q) if !retried => {
                            let used = q.usage().used;
                            log::warn!(
                                "cache {}: disk full while storing {object}; cleaning up",
                                self.cache.dir().display()
                            );
                            q.cleanup(used / 2).map_err(CacheError::from)?;
                            q.usage().used < used
                        }
                        _ => false,
                    };
                    if !freed {
                        return Err(FetchError::NoSpace {
                            object,
                            reason: format!("{source}"),
                        });
                    }
                    retried = true;
                }
                Err(DownloadError::LocalIo { source, .. }) => {
                    return Err(FetchError::Cache(CacheError::Io {
                        path: self.cache.dir().join("txn"),
                        source,
                    }))
                }
                Err(e @ DownloadError::Failed { .. }) => {
                    self.network.report_offline(&e);
                    return Err(FetchError::Download { object, source: e });
                }
                Err(source) => {
                    self.network.report_online();
                    return Err(FetchError::Download { object, source });
                }
            }
        }
    }

    fn download(
        &self,
        dl: &DownloadManager,
        spec: ObjectSpec,
        label: Label<'_>,
        object: &str,
    ) -> Result<PathBuf, DownloadError> {
        let local = |e: CacheError| match e {
            CacheError::Io { source, .. } => ConsumeError::Local(source),
            other => ConsumeError::Local(io::Error::other(other.to_string())),
        };
        let limit = spec.size.unwrap_or(MAX_UNSIZED_OBJECT);
        let (path, digest) = dl.fetch(&format!("/{object}"), |body| {
            let mut txn = self.cache.begin().map_err(local)?;
            let mut sink = HashingWriter {
                inner: &mut txn,
                hasher: Some(Algorithm::Sha1.hasher()),
            };
            let n = copy_verified(body, spec.hash, spec.compression, &mut sink, limit)?;
            let digest = sink.hasher.take().map(Hasher::finish);
            txn.flush().map_err(ConsumeError::Local)?;
            if let Some(d) = &digest {
                crate::cache::record_digest(txn.path(), d);
            }
            if let Some(want) = spec.size {
                if n != want {
                    return Err(ConsumeError::BadData(format!(
                        "decompressed size is {n} bytes, the catalog says {want}"
                    )));
                }
            }
            let path = self
                .cache
                .commit_as(txn, &spec.hash, label)
                .map_err(local)?;
            Ok((path, digest))
        })?;
        if let (Some(q), Some(d)) = (self.cache.quota(), digest) {
            if let Err(e) = q.record_digest(&spec.hash, &d) {
                log::warn!("{e}");
            }
        }
        Ok(path)
    }

    fn mark_verified(&self, hash: ContentHash) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash);
    }

    /// Size check always; the hash once per mount. `f` is the open object file `p`.
    fn cached_copy_is_good(&self, p: &Path, f: &File, spec: ObjectSpec) -> bool {
        let Ok(m) = f.metadata() else {
            return false;
        };
        if !m.is_file() {
            return false;
        }
        if let Some(want) = spec.size {
            if m.len() != want {
                log::warn!(
                    "cached object {} has {} bytes instead of {want}; fetching it again",
                    spec.hash,
                    m.len()
                );
                return false;
            }
        }
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&spec.hash)
        {
            return true;
        }
        // Fast path: the digest of the decompressed content recorded at download time.
        let recorded = self
            .cache
            .quota()
            .and_then(|q| q.digest(&spec.hash))
            .or_else(|| crate::cache::recorded_digest(p));
        let checked = match recorded {
            Some(want) => file_digest(f).map(|d| d == want),
            None => cached_object_matches(p, spec.hash, Some(spec.compression)),
        };
        match checked {
            Ok(true) => {
                if recorded.is_none() {
                    if let Ok(d) = file_digest(f) {
                        crate::cache::record_digest(p, &d);
                        if let Some(q) = self.cache.quota() {
                            let _ = q.record_digest(&spec.hash, &d);
                        }
                    }
                }
                self.mark_verified(spec.hash);
                true
            }
            Ok(false) => {
                log::warn!(
                    "cached object {} does not match its content hash; discarding it",
                    spec.hash
                );
                false
            }
            Err(e) => {
                log::warn!("cannot read cached object {}: {e}", spec.hash);
                false
            }
        }
    }

    /// Opens the object (see [`ObjectStore::get`]).
    pub fn open(&self, spec: ObjectSpec) -> Result<File, FetchError> {
        self.open_labeled(spec, Label::UNKNOWN)
    }

    /// Opens the object (see [`ObjectStore::get_labeled`]).
    pub fn open_labeled(&self, spec: ObjectSpec, label: Label<'_>) -> Result<File, FetchError> {
        match self.get_object(spec, label)? {
            (_, Some(f)) => Ok(f),
            (p, None) => File::open(&p)
                .map_err(|source| FetchError::Cache(CacheError::Io { path: p, source })),
        }
    }
}

/// Passes writes on and hashes them.
struct HashingWriter<'a, W: io::Write> {
    inner: &'a mut W,
    hasher: Option<Hasher>,
}

impl<W: io::Write> io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Write` sink that only hashes.
struct HashingSink(Option<Hasher>);

impl io::Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(h) = self.0.as_mut() {
            h.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read size of [`file_digest`]: whole small files in one call, large ones in few.
const DIGEST_BUFFER: usize = 128 * 1024;

thread_local! {
    /// One read buffer per thread for [`file_digest`] (no allocation per opened file).
    static DIGEST_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// SHA-1 of an open cached (decompressed) file, read from offset 0 with `pread` (the file
/// position stays where it is): the local integrity digest.
fn file_digest(f: &File) -> io::Result<ContentHash> {
    use std::os::unix::fs::FileExt;
    DIGEST_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(DIGEST_BUFFER, 0);
        let mut h = Algorithm::Sha1.hasher();
        let mut offset = 0u64;
        loop {
            let n = match f.read_at(&mut buf, offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(h.finish())
    })
}

/// Objects up to this size are compressed again in one piece, as the publisher did.
const WHOLE_OBJECT_LIMIT: u64 = 64 << 20;

/// Fills `buf` as far as the file allows.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// How a decompressed object can be turned back into the stored bytes its hash is over.
#[derive(Debug, Clone, Copy)]
enum Stored {
    Raw,
    /// The stock zlib at the default level: the real server's objects.
    StockZlib,
    /// `flate2` (zlib-rs) at the default level: objects of our `cvmfs-publish`.
    OurZlib,
}

/// Whether the decompressed object in file `p` has content hash `hash`: the hash is over the
/// stored (compressed) bytes, so zlib objects are compressed again at the default level, with
/// the stock zlib as the real server does (and as the reference's `user.lhash` and
/// `cvmfs_fsck` do), else as our publisher does. With `compression` unknown, the raw bytes
/// are tried too.
pub fn cached_object_matches(
    p: &Path,
    hash: ContentHash,
    compression: Option<Compression>,
) -> io::Result<bool> {
    let try_one = |how: Stored| -> io::Result<bool> {
        let mut f = File::open(p)?;
        let actual = match how {
            Stored::Raw => {
                let mut sink = HashingSink(Some(hash.algorithm.hasher()));
                io::copy(&mut f, &mut sink)?;
                sink.0.take().map(Hasher::finish)
            }
            Stored::OurZlib => {
                // zlib-rs's output depends on how the input arrives (small pieces compress
                // differently); the publisher hands over the whole object in one write.
                let sink = HashingSink(Some(hash.algorithm.hasher()));
                let mut z = flate2::write::ZlibEncoder::new(sink, flate2::Compression::default());
                let size = f.metadata()?.len();
                let mut buf = vec![0u8; size.clamp(1, WHOLE_OBJECT_LIMIT) as usize];
                loop {
                    let n = read_full(&mut f, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    z.write_all(&buf[..n])?;
                }
                z.finish()?.0.take().map(Hasher::finish)
            }
            Stored::StockZlib => {
                let mut hasher = hash.algorithm.hasher();
                let mut z = StockDeflate::new()?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    z.update(&buf[..n], &mut |out| hasher.update(out))?;
                }
                z.finish(&mut |out| hasher.update(out))?;
                Some(hasher.finish())
            }
        };
        Ok(actual == Some(hash))
    };
    let zlib = || Ok(try_one(Stored::StockZlib)? || try_one(Stored::OurZlib)?);
    match compression {
        Some(Compression::None) => try_one(Stored::Raw),
        Some(Compression::Zlib) => zlib(),
        None => Ok(zlib()? || try_one(Stored::Raw)?),
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
    fn cached_objects_of_our_publisher_verify_too() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
        // Stored as `cvmfs-publish` stores it (flate2, default level).
        let h = ContentHash::of(Algorithm::Sha1, &zlib(&data));
        let p = d.path().join("object");
        std::fs::write(&p, &data).unwrap();
        assert!(cached_object_matches(&p, h, Some(Compression::Zlib)).unwrap());
        assert!(cached_object_matches(&p, h, None).unwrap());
        assert!(!cached_object_matches(&p, h, Some(Compression::None)).unwrap());
        let mut bad = data.clone();
        bad[1000] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(!cached_object_matches(&p, h, None).unwrap());
        // Uncompressed objects hash their raw bytes.
        let raw = ContentHash::of(Algorithm::Rmd160, &data);
        std::fs::write(&p, &data).unwrap();
        assert!(cached_object_matches(&p, raw, Some(Compression::None)).unwrap());
        assert!(cached_object_matches(&p, raw, None).unwrap());
    }

    /// The digest recorded with a cached object makes its once-per-mount check one hash over
    /// the file; it still catches a changed byte (and the object is discarded, not served).
    #[test]
    fn recorded_digest_checks_cached_copies() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let data = vec![5u8; 300_000];
        let h = ContentHash::of(Algorithm::Sha1, &zlib(&data));
        let mut txn = cache.begin().unwrap();
        txn.write_all(&data).unwrap();
        txn.flush().unwrap();
        crate::cache::record_digest(txn.path(), &ContentHash::of(Algorithm::Sha1, &data));
        let p = cache.commit(txn, &h).unwrap();
        if crate::cache::recorded_digest(&p).is_none() {
            test_prereq::skip("the temporary file system has no user xattrs");
            return;
        }
        let spec = ObjectSpec {
            hash: h,
            suffix: Suffix::None,
            compression: Compression::Zlib,
            size: Some(data.len() as u64),
        };
        let store = ObjectStore::new(Cache::open(d.path()).unwrap(), None);
        assert_eq!(store.get(spec).unwrap(), p);

        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all(&[6]).unwrap();
        drop(f);
        assert!(crate::cache::recorded_digest(&p).is_some(), "xattr kept");
        let store = ObjectStore::new(Cache::open(d.path()).unwrap(), None);
        assert!(matches!(store.get(spec), Err(FetchError::Offline { .. })));
        assert!(!p.exists(), "the corrupt copy is discarded");
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
