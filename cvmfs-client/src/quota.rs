//! The LRU quota of a cache directory (spec §9.3): every object is a row of `<cache>/cachedb`
//! (the real client's schema, so caches stay interchangeable), ordered by an access sequence
//! number. When an insert would exceed `CVMFS_QUOTA_LIMIT`, the least recently used objects
//! that are not pinned are deleted until the cache is down to the cleanup threshold (half the
//! limit). Pins live in memory for the lifetime of the mount and may use at most the threshold.
//!
//! The database is a cache of the directory, never the other way round: a missing, corrupt or
//! stale database (after a crash) is rebuilt by scanning `00`..`ff`.
//!
//! One table is ours, not the reference's (which ignores it): `content_digest`, the SHA-1 of
//! each object's decompressed content recorded at download, so a cached copy can be checked
//! without compressing it again. Digests are content-addressed, so a stale row is never wrong.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::hash::ContentHash;

/// Description of objects found by a rebuild (the reference's wording).
pub const REBUILT_DESCRIPTION: &str = "unknown (automatic rebuild)";
const SCHEMA: &str = "1.0";

/// Errors of the quota database.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("cache database {path}: {cause}")]
    Db {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("cache directory {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

/// What an object is, for the `type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Regular = 0,
    Catalog = 1,
}

/// Sizes for `cache size` and `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of all objects in the cache.
    pub used: u64,
    /// Bytes of the objects pinned in memory.
    pub pinned: u64,
    pub limit: u64,
    pub threshold: u64,
}

/// The LRU quota manager of one cache directory.
pub struct QuotaManager {
    dir: PathBuf,
    db_path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` after the tear-down to read-only: nothing is written any more.
    db: Option<Connection>,
    limit: u64,
    gauge: u64,
    seq: i64,
    pinned: HashMap<String, u64>,
    pinned_total: u64,
    /// Epoch seconds of recent cleanups (for `user.ncleanup24`).
    cleanups: VecDeque<i64>,
}

impl Inner {
    fn threshold(&self) -> u64 {
        self.limit / 2
    }
}

fn key(hash: &ContentHash) -> String {
    hash.to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl QuotaManager {
    /// Opens the quota database of cache directory `dir` (which must already have its layout)
    /// with a limit of `limit` bytes. `rebuild` forces a rescan of the directory (the caller
    /// detected an unclean shutdown); a missing, corrupt or empty database is rebuilt anyway.
    pub fn open(dir: &Path, limit: u64, rebuild: bool) -> Result<QuotaManager, QuotaError> {
        match QuotaManager::open_once(dir, limit, rebuild) {
            Ok(q) => Ok(q),
            Err(e) => {
                let db_path = dir.join("cachedb");
                log::warn!(
                    "cache database {} is unusable ({e}); rebuilding it from the cache directory",
                    db_path.display()
                );
                remove_db(&db_path);
                QuotaManager::open_once(dir, limit, true)
            }
        }
    }

    fn open_once(dir: &Path, limit: u64, rebuild: bool) -> Result<QuotaManager, QuotaError> {
        let db_path = dir.join("cachedb");
        // A full integrity check costs time proportional to the database; it is only worth it
        // after a crash (`synchronous=0` trades durability for speed, as the reference does).
        // Other damage shows when the database is read below, and leads to a rebuild.
        let db = open_db(&db_path, rebuild).map_err(|source| QuotaError::Db {
            path: db_path.clone(),
            cause: source,
        })?;
        let qm = QuotaManager {
            dir: dir.to_path_buf(),
            db_path: db_path.clone(),
            inner: Mutex::new(Inner {
                db: Some(db),
                limit,
                gauge: 0,
                seq: 0,
                pinned: HashMap::new(),
                pinned_total: 0,
                cleanups: VecDeque::new(),
            }),
        };
        {
            let mut inner = qm.lock();
            let db = inner.db.as_ref().expect("just opened");
            let empty: bool = db
                .query_row("SELECT NOT EXISTS (SELECT 1 FROM cache_catalog)", [], |r| {
                    r.get(0)
                })
                .map_err(|e| qm.db_err(e))?;
            if rebuild || empty {
                qm.rebuild(&mut inner)?;
            }
            let db = inner.db.as_ref().expect("just opened");
            // After a clean shutdown the total is stored and pins are already reset; it is
            // taken (and removed, so a crash cannot leave it stale) instead of scanning the
            // table, which costs milliseconds per 10 000 objects at every mount.
            let stored: Option<String> = db
                .query_row(
                    "SELECT value FROM properties WHERE key='clean_gauge'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| qm.db_err(e))?;
            let gauge = match stored.and_then(|g| g.parse::<i64>().ok()) {
                Some(g) => {
                    db.execute("DELETE FROM properties WHERE key='clean_gauge'", [])
                        .map_err(|e| qm.db_err(e))?;
                    g
                }
                None => {
                    // Pins do not survive a restart.
                    db.execute("UPDATE cache_catalog SET pinned=0 WHERE pinned<>0", [])
                        .map_err(|e| qm.db_err(e))?;
                    db.query_row("SELECT coalesce(sum(size),0) FROM cache_catalog", [], |r| {
                        r.get(0)
                    })
                    .map_err(|e| qm.db_err(e))?
                }
            };
            let seq: i64 = db
                .query_row(
                    "SELECT coalesce(max(acseq),0) FROM cache_catalog",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| qm.db_err(e))?;
            inner.gauge = gauge.max(0) as u64;
            inner.seq = seq.max(0) + 1;
        }
        Ok(qm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db_err(&self, source: rusqlite::Error) -> QuotaError {
        QuotaError::Db {
            path: self.db_path.clone(),
            cause: source,
        }
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(&key[2..])
    }

    /// Replaces the table content by the objects found in `00`..`ff`, oldest access first.
    fn rebuild(&self, inner: &mut Inner) -> Result<(), QuotaError> {
        let started = std::time::Instant::now();
        let mut found: Vec<(i64, String, u64)> = Vec::new();
        for i in 0..=255u8 {
            let sub = format!("{i:02x}");
            let d = self.dir.join(&sub);
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(QuotaError::Io {
                        path: d,
                        cause: source,
                    })
                }
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let k = format!("{sub}{name}");
                if k.parse::<ContentHash>().is_err() {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                if md.len() == 0 {
                    // As the reference does: empty objects are cheap to fetch again.
                    let _ = fs::remove_file(e.path());
                    continue;
                }
                use std::os::unix::fs::MetadataExt;
                found.push((md.atime(), k, md.len()));
            }
        }
        found.sort();
        let db = inner.db.as_mut().expect("rebuild needs the database");
        let tx = db.transaction().map_err(|e| self.db_err(e))?;
        tx.execute("DELETE FROM cache_catalog", [])
            .map_err(|e| self.db_err(e))?;
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO cache_catalog (sha1, size, acseq, path, type, pinned) \
                     VALUES (?1, ?2, ?3, ?4, 0, 0)",
                )
                .map_err(|e| self.db_err(e))?;
            for (seq, (_, k, size)) in found.iter().enumerate() {
                ins.execute(params![
                    k,
                    *size as i64,
                    seq as i64 + 1,
                    REBUILT_DESCRIPTION
                ])
                .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        log::info!(
            "rebuilt the cache database {} from {} objects in {:?}",
            self.db_path.display(),
            found.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Current sizes.
    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            used: inner.gauge,
            pinned: inner.pinned_total,
            limit: inner.limit,
            threshold: inner.threshold(),
        }
    }

    /// The largest object the cache accepts (the reference's `limit - threshold`).
    pub fn max_object_size(&self) -> u64 {
        let inner = self.lock();
        inner.limit - inner.threshold()
    }

    /// Changes the limit (talk `cache limit set`); cleans up if the cache is now too full.
    pub fn set_limit(&self, limit: u64) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        inner.limit = limit;
        if inner.gauge > limit {
            let t = inner.threshold();
            self.cleanup_locked(&mut inner, t)?;
        }
        Ok(())
    }

    /// Whether `hash` has a row.
    pub fn contains(&self, hash: &ContentHash) -> bool {
        let inner = self.lock();
        let Some(db) = &inner.db else { return false };
        db.query_row(
            "SELECT 1 FROM cache_catalog WHERE sha1=?1",
            [key(hash)],
            |_| Ok(()),
        )
        .optional()
        .ok()
        .flatten()
        .is_some()
    }

    /// Makes room for an object of `size` bytes that is about to be downloaded. Fails with
    /// `false` if it can never fit (larger than [`QuotaManager::max_object_size`]).
    pub fn reserve(&self, size: u64) -> Result<bool, QuotaError> {
        let mut inner = self.lock();
        if size > inner.limit - inner.threshold() {
            return Ok(false);
        }
        if inner.db.is_some() && inner.gauge + size > inner.limit {
            let target = inner.threshold().min(inner.limit - size);
            self.cleanup_locked(&mut inner, target)?;
        }
        Ok(true)
    }

    /// Registers a new object (after its file was renamed into place). Cleans up first if the
    /// object would exceed the limit. An object already known is only touched.
    pub fn insert(
        &self,
        hash: &ContentHash,
        size: u64,
        description: &str,
        kind: ObjectType,
    ) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        if inner.db.is_none() {
            return Ok(());
        }
        let k = key(hash);
        let old: Option<i64> = inner
            .db
            .as_ref()
            .expect("checked")
            .query_row("SELECT size FROM cache_catalog WHERE sha1=?1", [&k], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db_err(e))?;
        if let Some(old) = old {
            // Replaced in place (e.g. refetched after corruption): keep the gauge right.
            inner.gauge = inner.gauge.saturating_sub(old.max(0) as u64) + size;
            let seq = inner.seq;
            inner.seq += 1;
            inner
                .db
                .as_ref()
                .expect("checked")
                .execute(
                    "UPDATE cache_catalog SET size=?2, acseq=?3 WHERE sha1=?1",
                    params![k, size as i64, seq],
                )
                .map_err(|e| self.db_err(e))?;
            return Ok(());
        }
        if inner.gauge + size > inner.limit {
            let t = inner.threshold();
            self.cleanup_locked(&mut inner, t)?;
        }
        let seq = inner.seq;
        inner.seq += 1;
        let pinned = i64::from(inner.pinned.contains_key(&k));
        inner
            .db
            .as_ref()
            .expect("checked")
            .execute(
                "INSERT OR REPLACE INTO cache_catalog (sha1, size, acseq, path, type, pinned) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![k, size as i64, seq, description, kind as i64, pinned],
            )
            .map_err(|e| self.db_err(e))?;
        inner.gauge += size;
        Ok(())
    }

    /// Marks an access (cache hit).
    pub fn touch(&self, hash: &ContentHash) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        if inner.db.is_none() {
            return Ok(());
        }
        let seq = inner.seq;
        inner.seq += 1;
        inner
            .db
            .as_ref()
            .expect("checked")
            .execute(
                "UPDATE cache_catalog SET acseq=?2 WHERE sha1=?1",
                params![key(hash), seq],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Forgets an object whose file was removed (evicted, found corrupt).
    pub fn remove(&self, hash: &ContentHash) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        let k = key(hash);
        let Some(db) = &inner.db else { return Ok(()) };
        let size: Option<i64> = db
            .query_row("SELECT size FROM cache_catalog WHERE sha1=?1", [&k], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db_err(e))?;
        if let Some(size) = size {
            db.execute("DELETE FROM cache_catalog WHERE sha1=?1", [&k])
                .map_err(|e| self.db_err(e))?;
            inner.gauge = inner.gauge.saturating_sub(size.max(0) as u64);
        }
        Ok(())
    }

    /// Pins `hash` (of `size` bytes) for the lifetime of this manager. Refused (`false`) when
    /// the pinned objects would exceed the cleanup threshold.
    pub fn pin(&self, hash: &ContentHash, size: u64) -> Result<bool, QuotaError> {
        let mut inner = self.lock();
        let k = key(hash);
        if inner.pinned.contains_key(&k) {
            return Ok(true);
        }
        if inner.pinned_total + size > inner.threshold() {
            return Ok(false);
        }
        inner.pinned_total += size;
        if let Some(db) = &inner.db {
            db.execute("UPDATE cache_catalog SET pinned=1 WHERE sha1=?1", [&k])
                .map_err(|e| self.db_err(e))?;
        }
        inner.pinned.insert(k, size);
        Ok(true)
    }

    /// Releases a pin (a detached catalog).
    pub fn unpin(&self, hash: &ContentHash) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        let k = key(hash);
        if let Some(size) = inner.pinned.remove(&k) {
            inner.pinned_total = inner.pinned_total.saturating_sub(size);
            if let Some(db) = &inner.db {
                db.execute("UPDATE cache_catalog SET pinned=0 WHERE sha1=?1", [&k])
                    .map_err(|e| self.db_err(e))?;
            }
        }
        Ok(())
    }

    /// Whether `hash` is pinned.
    pub fn is_pinned(&self, hash: &ContentHash) -> bool {
        self.lock().pinned.contains_key(&key(hash))
    }

    /// Deletes least recently used, unpinned objects until at most `leave` bytes remain.
    /// Returns whether that was reached (pinned objects may prevent it).
    pub fn cleanup(&self, leave: u64) -> Result<bool, QuotaError> {
        let mut inner = self.lock();
        self.cleanup_locked(&mut inner, leave)
    }

    fn cleanup_locked(&self, inner: &mut Inner, leave: u64) -> Result<bool, QuotaError> {
        if inner.gauge <= leave {
            return Ok(true);
        }
        let Some(db) = inner.db.as_mut() else {
            return Ok(false);
        };
        let mut victims: Vec<(String, u64)> = Vec::new();
        let mut gauge = inner.gauge;
        {
            let mut stmt = db
                .prepare_cached("SELECT sha1, size FROM cache_catalog ORDER BY acseq")
                .map_err(|e| self.db_err(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.db_err(e))?;
            while gauge > leave {
                let Some(row) = rows.next().map_err(|e| self.db_err(e))? else {
                    break;
                };
                let k: String = row.get(0).map_err(|e| self.db_err(e))?;
                let size: i64 = row.get(1).map_err(|e| self.db_err(e))?;
                if inner.pinned.contains_key(&k) {
                    continue;
                }
                gauge = gauge.saturating_sub(size.max(0) as u64);
                victims.push((k, size.max(0) as u64));
            }
        }
        let tx = db.transaction().map_err(|e| self.db_err(e))?;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM cache_catalog WHERE sha1=?1")
                .map_err(|e| self.db_err(e))?;
            let mut del_digest = tx
                .prepare_cached("DELETE FROM content_digest WHERE sha1=?1")
                .map_err(|e| self.db_err(e))?;
            for (k, _) in &victims {
                // The file goes first: a row without a file is harmless, a file without a row
                // would escape the quota.
                match fs::remove_file(self.object_path(k)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("cannot evict {k}: {e}"),
                }
                del.execute([k]).map_err(|e| self.db_err(e))?;
                del_digest.execute([k]).map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        let freed: u64 = victims.iter().map(|(_, s)| s).sum();
        inner.gauge = inner.gauge.saturating_sub(freed);
        let t = now();
        inner.cleanups.push_back(t);
        while inner.cleanups.front().is_some_and(|&c| c < t - 86_400) {
            inner.cleanups.pop_front();
        }
        log::info!(
            "cache cleanup: evicted {} objects ({freed} bytes), {} bytes remain",
            victims.len(),
            inner.gauge
        );
        Ok(inner.gauge <= leave)
    }

    /// Records the digest of an object's decompressed content (SHA-1, computed while it was
    /// downloaded and verified): checking a cached copy against it is much cheaper than
    /// compressing the copy again to recompute the content hash.
    pub fn record_digest(
        &self,
        hash: &ContentHash,
        digest: &ContentHash,
    ) -> Result<(), QuotaError> {
        let inner = self.lock();
        let Some(db) = &inner.db else { return Ok(()) };
        db.prepare_cached("INSERT OR REPLACE INTO content_digest (sha1, digest) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![key(hash), digest.to_string()]))
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// The recorded digest of `hash`'s decompressed content.
    pub fn digest(&self, hash: &ContentHash) -> Option<ContentHash> {
        let inner = self.lock();
        let db = inner.db.as_ref()?;
        let text: Option<String> = db
            .prepare_cached("SELECT digest FROM content_digest WHERE sha1=?1")
            .and_then(|mut st| st.query_row([key(hash)], |r| r.get(0)).optional())
            .ok()
            .flatten();
        text?.parse().ok()
    }

    /// Number of cleanups in the last 24 hours.
    pub fn cleanups_last_24h(&self) -> usize {
        let inner = self.lock();
        let t = now() - 86_400;
        inner.cleanups.iter().filter(|&&c| c >= t).count()
    }

    fn list_where(&self, filter: &str) -> Result<Vec<String>, QuotaError> {
        let inner = self.lock();
        let Some(db) = &inner.db else {
            return Ok(Vec::new());
        };
        let mut stmt = db
            .prepare(&format!(
                "SELECT sha1, path, type FROM cache_catalog {filter} ORDER BY acseq"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (k, path, _) = row.map_err(|e| self.db_err(e))?;
            if filter.contains("pinned") && !inner.pinned.contains_key(&k) {
                continue;
            }
            out.push(path);
        }
        Ok(out)
    }

    /// Descriptions of all objects, least recently used first.
    pub fn list(&self) -> Result<Vec<String>, QuotaError> {
        self.list_where("")
    }

    /// Descriptions of the pinned objects.
    pub fn list_pinned(&self) -> Result<Vec<String>, QuotaError> {
        self.list_where("WHERE pinned<>0")
    }

    /// Descriptions of the cached catalogs.
    pub fn list_catalogs(&self) -> Result<Vec<String>, QuotaError> {
        self.list_where("WHERE type=1")
    }

    /// A clean end of use: pins are released and the total stored for the next start.
    pub fn close(&self) -> Result<(), QuotaError> {
        let mut inner = self.lock();
        let gauge = inner.gauge;
        inner.pinned.clear();
        inner.pinned_total = 0;
        let Some(db) = inner.db.as_mut() else {
            return Ok(());
        };
        let tx = db.transaction().map_err(|e| self.db_err(e))?;
        tx.execute("UPDATE cache_catalog SET pinned=0 WHERE pinned<>0", [])
            .map_err(|e| self.db_err(e))?;
        tx.execute(
            "INSERT OR REPLACE INTO properties (key, value) VALUES ('clean_gauge', ?1)",
            [gauge.to_string()],
        )
        .map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        if let Some(db) = inner.db.take() {
            if let Err((_, e)) = db.close() {
                log::warn!("closing {}: {e}", self.db_path.display());
            }
        }
        Ok(())
    }

    /// Stops all writes to the database and closes it (tear-down to read-only). False when
    /// closing it failed (then the database may not hold every write).
    pub fn tear_down(&self) -> bool {
        let mut inner = self.lock();
        let Some(db) = inner.db.take() else {
            return true;
        };
        match db.close() {
            Ok(()) => true,
            Err((_, e)) => {
                log::warn!("closing {}: {e}", self.db_path.display());
                false
            }
        }
    }
}

fn open_db(path: &Path, check: bool) -> Result<Connection, rusqlite::Error> {
    let db = Connection::open(path)?;
    db.execute_batch("PRAGMA synchronous=0; PRAGMA locking_mode=EXCLUSIVE; PRAGMA auto_vacuum=1;")?;
    // Keep the rollback journal file between transactions (one per inserted object).
    db.query_row("PRAGMA journal_mode=TRUNCATE", [], |_| Ok(()))?;
    let check: String = if check {
        db.query_row("PRAGMA quick_check", [], |r| r.get(0))?
    } else {
        "ok".into()
    };
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("integrity check: {check}")),
        ));
    }
    // Only a new (or half-made, or the reference client's) database needs table definitions;
    // a complete one is recognised by one query of the schema SQLite loads anyway, instead of
    // four definitions parsed (and, under emulation, the parser translated) at every mount.
    let complete: bool = db.query_row(
        "SELECT count(*) = 4 FROM sqlite_master WHERE name IN \
           ('cache_catalog', 'idx_cache_catalog_acseq', 'properties', 'content_digest')",
        [],
        |r| r.get(0),
    )?;
    if !complete {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cache_catalog (sha1 TEXT, size INTEGER, acseq INTEGER, \
               path TEXT, type INTEGER, pinned INTEGER, \
               CONSTRAINT pk_cache_catalog PRIMARY KEY (sha1)); \
             CREATE UNIQUE INDEX IF NOT EXISTS idx_cache_catalog_acseq ON cache_catalog (acseq); \
             CREATE TABLE IF NOT EXISTS properties (key TEXT, value TEXT, \
               CONSTRAINT pk_properties PRIMARY KEY(key)); \
             CREATE TABLE IF NOT EXISTS content_digest (sha1 TEXT, digest TEXT, \
               CONSTRAINT pk_content_digest PRIMARY KEY (sha1));",
        )?;
    }
    let schema = read_schema(&db)?;
    match schema.as_deref() {
        Some(SCHEMA) => {}
        None => {
            db.execute(
                "INSERT INTO properties (key, value) VALUES ('schema', ?1)",
                [SCHEMA],
            )?;
        }
        Some(other) => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!("unknown cache database schema {other:?}")),
            ))
        }
    }
    Ok(db)
}

/// The schema version in the `properties` table.
fn read_schema(db: &Connection) -> Result<Option<String>, rusqlite::Error> {
    db.query_row("SELECT value FROM properties WHERE key='schema'", [], |r| {
        r.get(0)
    })
    .optional()
}

fn remove_db(path: &Path) {
    let _ = fs::remove_file(path);
    for ext in ["-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Algorithm;

    fn object(dir: &Path, data: &[u8]) -> ContentHash {
        let h = ContentHash::of(Algorithm::Sha1, data);
        let p = dir.join(h.cache_path());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        h
    }

    #[test]
    fn lru_eviction_keeps_pinned_and_recent() {
        let d = tempfile::tempdir().unwrap();
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        let mut hashes = Vec::new();
        for i in 0..8u8 {
            let h = object(d.path(), &[i; 100]);
            q.insert(&h, 100, &format!("/f{i}"), ObjectType::Regular)
                .unwrap();
            hashes.push(h);
        }
        assert_eq!(q.usage().used, 800);
        assert!(q.pin(&hashes[0], 100).unwrap());
        q.touch(&hashes[1]).unwrap();
        // 800 + 300 > 1000: clean up to 500, oldest unpinned first (f2, f3, f4, ...).
        let h = object(d.path(), &[9; 300]);
        q.insert(&h, 300, "/big", ObjectType::Regular).unwrap();
        let present = |h: &ContentHash| d.path().join(h.cache_path()).exists();
        assert!(present(&hashes[0]), "pinned object evicted");
        assert!(present(&hashes[1]), "recently touched object evicted");
        assert!(!present(&hashes[2]) && !present(&hashes[3]) && !present(&hashes[4]));
        assert!(present(&h));
        assert_eq!(q.usage().used, 800);
        assert_eq!(q.cleanups_last_24h(), 1);
        let list = q.list().unwrap();
        assert_eq!(list.last().map(String::as_str), Some("/big"));
        assert_eq!(q.list_pinned().unwrap(), vec!["/f0".to_string()]);
    }

    #[test]
    fn pins_are_bounded_by_the_threshold_and_reset_on_restart() {
        let d = tempfile::tempdir().unwrap();
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        let a = object(d.path(), b"a");
        let b = object(d.path(), b"b");
        assert!(q.pin(&a, 400).unwrap());
        assert!(!q.pin(&b, 200).unwrap(), "pins beyond half the quota");
        q.insert(&a, 400, "/a", ObjectType::Regular).unwrap();
        assert!(!q.cleanup(0).unwrap(), "a pinned object must stay");
        assert!(d.path().join(a.cache_path()).exists());
        q.unpin(&a).unwrap();
        assert!(q.pin(&a, 400).unwrap());
        drop(q);
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        assert!(!q.is_pinned(&a));
        assert!(q.cleanup(0).unwrap());
        assert!(!d.path().join(a.cache_path()).exists());
        assert!(!q.reserve(600).unwrap(), "larger than limit - threshold");
        assert!(q.reserve(500).unwrap());
    }

    #[test]
    fn corrupt_or_missing_database_is_rebuilt_from_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let a = object(d.path(), b"first object");
        let b = object(d.path(), b"second");
        let empty = object(d.path(), b"");
        fs::create_dir_all(d.path().join("ab")).unwrap();
        fs::write(d.path().join("ab/not-a-hash"), b"x").unwrap();
        {
            let q = QuotaManager::open(d.path(), 1 << 20, false).unwrap();
            assert_eq!(q.usage().used, 12 + 6);
            assert!(!d.path().join(empty.cache_path()).exists());
            assert_eq!(q.list().unwrap().len(), 2);
        }
        fs::write(
            d.path().join("cachedb"),
            b"this is not an SQLite database at all",
        )
        .unwrap();
        let q = QuotaManager::open(d.path(), 1 << 20, false).unwrap();
        assert_eq!(q.usage().used, 18);
        assert!(q.contains(&a) && q.contains(&b));
        assert_eq!(
            q.list().unwrap(),
            vec![REBUILT_DESCRIPTION.to_string(), REBUILT_DESCRIPTION.into()]
        );
        // A forced rebuild (after a crash) drops rows whose files are gone.
        fs::remove_file(d.path().join(a.cache_path())).unwrap();
        drop(q);
        let q = QuotaManager::open(d.path(), 1 << 20, true).unwrap();
        assert_eq!(q.usage().used, 6);
        assert!(!q.contains(&a));
    }

    #[test]
    fn clean_close_stores_the_total_and_releases_pins() {
        let d = tempfile::tempdir().unwrap();
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        let a = object(d.path(), b"abc");
        let b = object(d.path(), b"defg");
        q.insert(&a, 3, "/a", ObjectType::Regular).unwrap();
        q.insert(&b, 4, "/b", ObjectType::Regular).unwrap();
        assert!(q.pin(&a, 3).unwrap());
        q.close().unwrap();
        q.insert(&b, 4, "/b", ObjectType::Regular).unwrap(); // closed: ignored
        drop(q);
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        assert_eq!(q.usage().used, 7);
        assert!(q.list_pinned().unwrap().is_empty());
        // The stored total is used once: a crash now must not reuse it.
        q.insert(&object(d.path(), b"hijkl"), 5, "/c", ObjectType::Regular)
            .unwrap();
        drop(q);
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        assert_eq!(q.usage().used, 12);
    }

    #[test]
    fn a_database_without_our_table_gets_it() {
        // The reference client's tables only (schema 1.0, no `content_digest`).
        let d = tempfile::tempdir().unwrap();
        let a = object(d.path(), b"abc");
        {
            let db = Connection::open(d.path().join("cachedb")).unwrap();
            db.execute_batch(
                "CREATE TABLE cache_catalog (sha1 TEXT, size INTEGER, acseq INTEGER, \
                   path TEXT, type INTEGER, pinned INTEGER, \
                   CONSTRAINT pk_cache_catalog PRIMARY KEY (sha1)); \
                 CREATE UNIQUE INDEX idx_cache_catalog_acseq ON cache_catalog (acseq); \
                 CREATE TABLE properties (key TEXT, value TEXT, \
                   CONSTRAINT pk_properties PRIMARY KEY(key)); \
                 INSERT INTO properties VALUES ('schema', '1.0');",
            )
            .unwrap();
            db.execute(
                "INSERT INTO cache_catalog VALUES (?1, 3, 1, '/a', 1, 0)",
                [key(&a)],
            )
            .unwrap();
        }
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        assert_eq!(q.usage().used, 3);
        let digest = ContentHash::of(Algorithm::Sha1, b"plain abc");
        q.record_digest(&a, &digest).unwrap();
        assert_eq!(q.digest(&a), Some(digest));
    }

    #[test]
    fn tear_down_stops_writes() {
        let d = tempfile::tempdir().unwrap();
        let q = QuotaManager::open(d.path(), 1000, false).unwrap();
        let a = object(d.path(), b"a");
        q.tear_down();
        q.insert(&a, 1, "/a", ObjectType::Regular).unwrap();
        q.touch(&a).unwrap();
        assert!(!q.contains(&a));
    }
}
