//! The local object cache (spec §9.1): decompressed objects named by their content hash, in the
//! layout of the real client (`<dir>/ab/cdef…`), written atomically through `txn/`, optionally
//! under an LRU quota ([`crate::quota`]).
//!
//! Crash guard: `running.<fqrn>` exists while a managed cache is in use; finding it at start
//! means the previous daemon died (kill -9, power loss), so the quota database is rebuilt from
//! the directory instead of being trusted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::hash::ContentHash;
use crate::quota::{ObjectType, QuotaError, QuotaManager};

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("the cache is read-only (torn down for shutdown)")]
    ReadOnly,
    #[error("the cache is in use by another cvmfs2 process (lock {path})")]
    InUse { path: PathBuf },
}

impl CacheError {
    /// The errno that fits this failure best.
    pub fn errno(&self) -> i32 {
        match self {
            CacheError::Io { cause: source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            CacheError::Quota(_) => libc::EIO,
            CacheError::ReadOnly => libc::EROFS,
            CacheError::InUse { .. } => libc::EBUSY,
        }
    }
}

/// How a cache directory is managed.
#[derive(Debug, Clone, Default)]
pub struct CacheOptions {
    /// `CVMFS_QUOTA_LIMIT` in bytes; `None` = unmanaged (no database).
    pub quota_limit: Option<u64>,
    /// Repository name, for the crash guard `running.<fqrn>`.
    pub fqrn: Option<String>,
    /// The daemon's mode (spec §9.1, µCernVM §13): change the process's working directory into
    /// the cache and reach everything through paths relative to it, so that the cache keeps
    /// working when the mount of its file system is moved (µCernVM's switch_root).
    pub work_in_dir: bool,
}

/// What an object is, for the quota database.
#[derive(Debug, Clone, Copy)]
pub struct Label<'a> {
    /// Shown by `cache list` (file path, `file catalog at …`, `certificate for …`).
    pub description: &'a str,
    pub kind: ObjectType,
}

impl Label<'_> {
    pub const UNKNOWN: Label<'static> = Label {
        description: "unknown",
        kind: ObjectType::Regular,
    };
}

/// A cache directory.
pub struct Cache {
    /// Where the cache was opened, for messages.
    dir: PathBuf,
    /// How the process reaches it: `dir`, or `.` when working inside it.
    root: PathBuf,
    txn_counter: AtomicU64,
    quota: Option<QuotaManager>,
    read_only: AtomicBool,
    /// The quota database missed an update: keep the crash guard so it is rebuilt.
    db_stale: AtomicBool,
    running_guard: Option<PathBuf>,
    in_flight: Arc<InFlight>,
    /// `lock.<fqrn>`, locked (flock) while the cache is in use; released by `close`.
    lock: Mutex<Option<Flock<File>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .field("managed", &self.quota.is_some())
            .finish()
    }
}

impl Cache {
    /// Opens (creating if needed) the cache directory `dir`, without a quota.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        Cache::open_with(dir, &CacheOptions::default())
    }

    /// Opens (creating if needed) the cache directory `dir` as `opts` say.
    pub fn open_with(dir: &Path, opts: &CacheOptions) -> Result<Cache, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io {
                path,
                cause: source,
            }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let shown = dir;
        let dir = if opts.work_in_dir {
            std::env::set_current_dir(shown).map_err(io(shown))?;
            Path::new(".")
        } else {
            shown
        };
        for i in 0..=255u8 {
            let d = dir.join(format!("{i:02x}"));
            if !d.is_dir() {
                fs::create_dir(&d).or_else(ignore_exists).map_err(io(&d))?;
            }
        }
        for sub in ["txn", "quarantaine"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        // Leftovers of an interrupted download are never valid objects.
        if let Ok(entries) = fs::read_dir(dir.join("txn")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let sentinel = dir.join(".cvmfscache");
        if !sentinel.exists() {
            File::create(&sentinel).map_err(io(&sentinel))?;
        }
        // One daemon per repository and cache (the guard below means "this one crashed" only
        // if no other process can hold it). Released when the process ends, however it ends.
        let lock = match &opts.fqrn {
            Some(fqrn) => Some(lock_workspace(&dir.join(format!("lock.{fqrn}")))?),
            None => None,
        };
        let running_guard = opts
            .fqrn
            .as_ref()
            .map(|fqrn| dir.join(format!("running.{fqrn}")));
        let crashed = running_guard.as_ref().is_some_and(|g| g.exists());
        if crashed {
            log::warn!(
                "cache {}: the previous cvmfs2 did not shut down cleanly; checking the cache database",
                dir.display()
            );
        }
        let quota = match opts.quota_limit {
            Some(limit) => Some(QuotaManager::open(dir, limit, crashed)?),
            None => None,
        };
        if let Some(g) = &running_guard {
            File::create(g).map_err(io(g))?;
        }
        Ok(Cache {
            dir: shown.to_path_buf(),
            root: dir.to_path_buf(),
            txn_counter: AtomicU64::new(0),
            quota,
            read_only: AtomicBool::new(false),
            db_stale: AtomicBool::new(false),
            running_guard,
            in_flight: Arc::default(),
            lock: Mutex::new(lock),
        })
    }

    /// The quota manager, if the cache is managed.
    pub fn quota(&self) -> Option<&QuotaManager> {
        self.quota.as_ref()
    }

    /// Tear-down to read-only (spec §9.7): no new objects, no database writes.
    /// Downloads already writing may finish (for at most `TEAR_DOWN_WAIT`) before the
    /// database closes.
    pub fn tear_down_to_read_only(&self) {
        let mut count = self
            .in_flight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.read_only.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + TEAR_DOWN_WAIT;
        while *count > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                log::warn!(
                    "tear-down: {} downloads still running; not waiting longer",
                    *count
                );
                break;
            }
            count = self
                .in_flight
                .done
                .wait_timeout(count, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let all_finished = *count == 0;
        drop(count);
        let db_closed = self.quota.as_ref().is_none_or(QuotaManager::tear_down);
        // Nothing writes any more and the database is closed with every object in it: the
        // cache is consistent, so the crash guard goes now, as the real client's tear-down
        // removes it. Otherwise (the usual µCernVM shutdown remounts the disk read-only next)
        // every boot after a clean shutdown would check and rebuild the database.
        if all_finished && db_closed && !self.db_stale.load(Ordering::SeqCst) {
            if let Some(g) = &self.running_guard {
                if let Err(e) = fs::remove_file(g) {
                    log::warn!("tear-down: cannot remove {}: {e}", g.display());
                }
            }
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// A clean end of use: removes the crash guard (a tear-down to read-only has removed it
    /// already, or left it because the cache may be inconsistent).
    pub fn close(&self) {
        if !self.is_read_only() && !self.db_stale.load(Ordering::SeqCst) {
            match self.quota.as_ref().map(QuotaManager::close) {
                Some(Err(e)) => {
                    // The guard stays: the next start rebuilds the database.
                    log::warn!("{e}");
                }
                _ => {
                    if let Some(g) = &self.running_guard {
                        let _ = fs::remove_file(g);
                    }
                }
            }
        }
        // Released now rather than when the process is gone: a mount right after the unmount
        // must find the cache free (µCernVM remounts at once).
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Where the cache was opened (for messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path through which this process reaches the cache (`.` when working inside it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The client's identity in this cache (`uuid` in the workspace, spec §9.1), made on first
    /// use: a random version-4 UUID. It names a client without a proxy in Geo-API requests.
    pub fn client_uuid(&self) -> String {
        let file = self.root.join("uuid");
        if let Ok(text) = fs::read_to_string(&file) {
            let text = text.trim();
            if !text.is_empty() {
                return text.to_string();
            }
        }
        let mut b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        if let Err(e) = fs::write(&file, format!("{uuid}\n")) {
            log::debug!("cannot store the client uuid in {}: {e}", file.display());
        }
        uuid
    }

    /// Where object `hash` lives (whether or not it is there).
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.root.join(hash.cache_path())
    }

    /// The cached object, if present (an access for the LRU order).
    pub fn lookup(&self, hash: &ContentHash) -> Option<PathBuf> {
        let p = self.path(hash);
        if !p.is_file() {
            return None;
        }
        if let Some(q) = &self.quota {
            if let Err(e) = q.touch(hash) {
                log::warn!("{e}");
            }
        }
        Some(p)
    }

    /// The cached object opened for reading, if present (an access for the LRU order): one
    /// `open` instead of a `stat` and an `open`.
    pub fn open_object(&self, hash: &ContentHash) -> Option<(PathBuf, File)> {
        let p = self.path(hash);
        let f = File::open(&p).ok()?;
        if let Some(q) = &self.quota {
            if let Err(e) = q.touch(hash) {
                log::warn!("{e}");
            }
        }
        Some((p, f))
    }

    /// Removes a cached object (e.g. found corrupt).
    pub fn evict(&self, hash: &ContentHash) {
        let _ = fs::remove_file(self.path(hash));
        if let Some(q) = &self.quota {
            if let Err(e) = q.remove(hash) {
                log::warn!("{e}");
            }
        }
    }

    /// Starts writing an object: a new file in `txn/`.
    pub fn begin(&self) -> Result<Transaction, CacheError> {
        // Checked and counted under one lock, so the tear-down sees every transaction.
        let mut count = self
            .in_flight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_read_only() {
            return Err(CacheError::ReadOnly);
        }
        *count += 1;
        drop(count);
        let guard = InFlightGuard(Arc::clone(&self.in_flight));
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("txn")
            .join(format!("fetch{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| CacheError::Io {
                path: path.clone(),
                cause: source,
            })?;
        Ok(Transaction {
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            path,
            written: 0,
            _in_flight: guard,
        })
    }

    /// Makes a finished transaction the object `hash` (atomic rename).
    pub fn commit(&self, txn: Transaction, hash: &ContentHash) -> Result<PathBuf, CacheError> {
        self.commit_as(txn, hash, Label::UNKNOWN)
    }

    /// Makes a finished transaction the object `hash` (atomic rename), registered in the quota
    /// database as `label` says.
    pub fn commit_as(
        &self,
        mut txn: Transaction,
        hash: &ContentHash,
        label: Label<'_>,
    ) -> Result<PathBuf, CacheError> {
        let target = self.path(hash);
        let io = |source| CacheError::Io {
            path: txn.path.clone(),
            cause: source,
        };
        if let Some(w) = txn.file.take() {
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            drop(f);
        }
        fs::rename(&txn.path, &target).map_err(io)?;
        if let Some(q) = &self.quota {
            // The object is valid on disk; a database that cannot record it is rebuilt at
            // the next start (the crash guard stays).
            if let Err(e) = q.insert(hash, txn.written, label.description, label.kind) {
                log::warn!("{e}");
                self.db_stale.store(true, Ordering::SeqCst);
            }
        }
        Ok(target)
    }
}

/// Extended attribute of a cached object: the SHA-1 of its decompressed content, recorded at
/// download time, so that the once-per-mount check of a cached copy is one hash over the file
/// instead of compressing it again (the quota database keeps the same digest when it exists).
const DIGEST_XATTR: &str = "user.cvmfs.sha1";

/// Records the local integrity digest of object file `p` (a transaction's file before its
/// commit, so that object and digest appear together). A file system without user xattrs
/// records nothing (the check then falls back to compressing again).
pub fn record_digest(p: &Path, digest: &ContentHash) {
    let value = digest.to_string();
    if let Err(e) = xattr_set(p, DIGEST_XATTR, value.as_bytes()) {
        log::debug!("cannot record the digest of {}: {e}", p.display());
    }
}

/// The digest recorded by [`record_digest`] on cached object `p`, if any.
pub fn recorded_digest(p: &Path) -> Option<ContentHash> {
    let value = xattr::get_deref(p, DIGEST_XATTR).ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set_deref(p, name, value)
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long to wait for a previous daemon that is still ending.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long the tear-down to read-only waits for downloads in flight.
const TEAR_DOWN_WAIT: Duration = Duration::from_secs(30);

/// Takes the exclusive lock on `path`, waiting at most [`LOCK_WAIT`]. The lock is held on a
/// read-only descriptor: a descriptor open for writing for the daemon's life would keep the
/// cache's file system from being remounted read-only at shutdown (spec §12.3).
fn lock_workspace(path: &Path) -> Result<Flock<File>, CacheError> {
    let io_err = |cause| CacheError::Io {
        path: path.to_path_buf(),
        cause,
    };
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let mut f = File::open(path).map_err(io_err)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let e = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((file, errno)) => {
                f = file;
                io::Error::from(errno)
            }
        };
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(CacheError::Io {
                path: path.to_path_buf(),
                cause: e,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(CacheError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn ignore_exists(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::AlreadyExists {
        Ok(())
    } else {
        Err(e)
    }
}

/// An object being written; dropped without commit, the temporary file is removed.
pub struct Transaction {
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
    written: u64,
    _in_flight: InFlightGuard,
}

/// Transactions not yet committed or dropped.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    done: Condvar,
}

/// Counts one transaction while it lives.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        self.0.done.notify_all();
    }
}

impl Transaction {
    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for Transaction {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("transaction already committed"))?
            .write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Algorithm;

    #[test]
    fn layout_and_atomic_commit() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert!(d.path().join("00").is_dir() && d.path().join("ff").is_dir());
        assert!(d.path().join(".cvmfscache").is_file());
        let h = ContentHash::of(Algorithm::Sha1, b"x");
        assert!(c.lookup(&h).is_none());
        let mut t = c.begin().unwrap();
        t.write_all(b"hello").unwrap();
        let p = c.commit(t, &h).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        assert_eq!(c.lookup(&h), Some(p));
        assert_eq!(fs::read_dir(d.path().join("txn")).unwrap().count(), 0);
    }

    #[test]
    fn one_user_per_repository_and_crash_guard() {
        let d = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            quota_limit: Some(1 << 20),
            fqrn: Some("x.test".into()),
            ..Default::default()
        };
        let c = Cache::open_with(d.path(), &opts).unwrap();
        assert!(d.path().join("running.x.test").exists());
        assert!(matches!(
            Cache::open_with(d.path(), &opts),
            Err(CacheError::InUse { .. })
        ));
        c.close();
        drop(c);
        assert!(!d.path().join("running.x.test").exists());
        // The lock went with the first user.
        let c = Cache::open_with(d.path(), &opts).unwrap();
        // After the tear-down nothing of the cache is open for writing (a remount read-only
        // of its file system at shutdown would fail with EBUSY).
        c.tear_down_to_read_only();
        let mut writable = Vec::new();
        for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let info = fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            if target.starts_with(d.path())
                && flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32
            {
                writable.push(target);
            }
        }
        assert_eq!(writable, Vec::<PathBuf>::new());
    }

    #[test]
    fn tear_down_lets_running_transactions_finish_and_refuses_new_ones() {
        let d = tempfile::tempdir().unwrap();
        let c = Arc::new(Cache::open(d.path()).unwrap());
        let mut t = c.begin().unwrap();
        t.write_all(b"in flight").unwrap();
        let c2 = Arc::clone(&c);
        let tear_down = std::thread::spawn(move || c2.tear_down_to_read_only());
        while !c.is_read_only() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !tear_down.is_finished(),
            "the tear-down waits for the transaction"
        );
        assert!(matches!(c.begin(), Err(CacheError::ReadOnly)));
        let h = ContentHash::of(Algorithm::Sha1, b"in flight");
        c.commit(t, &h).unwrap();
        tear_down.join().unwrap();
        assert!(c.lookup(&h).is_some());
    }

    #[test]
    fn tear_down_removes_the_crash_guard_so_the_next_start_needs_no_check() {
        let d = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            quota_limit: Some(1 << 30),
            fqrn: Some("demo.cernvm.test".into()),
            work_in_dir: false,
        };
        let guard = d.path().join("running.demo.cernvm.test");
        let c = Cache::open_with(d.path(), &opts).unwrap();
        assert!(guard.exists());
        let h = ContentHash::of(Algorithm::Sha1, b"object");
        let mut t = c.begin().unwrap();
        t.write_all(b"object").unwrap();
        c.commit(t, &h).unwrap();
        c.tear_down_to_read_only();
        assert!(!guard.exists(), "consistent after the tear-down");
        c.close();
        drop(c);
        // The next start finds a consistent cache holding the object.
        let c = Cache::open_with(d.path(), &opts).unwrap();
        assert!(c.lookup(&h).is_some());
        assert!(guard.exists());
    }

    #[test]
    fn abandoned_transaction_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let mut t = c.begin().unwrap();
        t.write_all(b"partial").unwrap();
        drop(t);
        assert_eq!(fs::read_dir(d.path().join("txn")).unwrap().count(), 0);
    }
}
