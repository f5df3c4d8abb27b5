//! The local object cache (spec §9.1): decompressed objects named by their content hash, in the
//! layout of the real client (`<dir>/ab/cdef…`), written atomically through `txn/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::ContentHash;

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    txn_counter: AtomicU64,
}

impl Cache {
    /// Opens (creating if needed) the cache directory `dir`.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
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
        Ok(Cache {
            dir: dir.to_path_buf(),
            txn_counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where object `hash` lives (whether or not it is there).
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(hash.cache_path())
    }

    /// The cached object, if present.
    pub fn lookup(&self, hash: &ContentHash) -> Option<PathBuf> {
        let p = self.path(hash);
        p.is_file().then_some(p)
    }

    /// Removes a cached object (e.g. found corrupt).
    pub fn evict(&self, hash: &ContentHash) {
        let _ = fs::remove_file(self.path(hash));
    }

    /// Starts writing an object: a new file in `txn/`.
    pub fn begin(&self) -> Result<Transaction, CacheError> {
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join("txn")
            .join(format!("fetch{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| CacheError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Transaction {
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            path,
            written: 0,
        })
    }

    /// Makes a finished transaction the object `hash` (atomic rename).
    pub fn commit(&self, mut txn: Transaction, hash: &ContentHash) -> Result<PathBuf, CacheError> {
        let target = self.path(hash);
        let io = |source| CacheError::Io {
            path: txn.path.clone(),
            source,
        };
        if let Some(w) = txn.file.take() {
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            drop(f);
        }
        fs::rename(&txn.path, &target).map_err(io)?;
        Ok(target)
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
}

impl Transaction {
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
    fn abandoned_transaction_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let mut t = c.begin().unwrap();
        t.write_all(b"partial").unwrap();
        drop(t);
        assert_eq!(fs::read_dir(d.path().join("txn")).unwrap().count(), 0);
    }
}
