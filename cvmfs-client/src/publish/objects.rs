//! The content-addressed object store of a Stratum-0 directory (`data/XX/…[suffix]`) and the
//! ingestion of regular files into it (whole-file objects or content-defined chunks).
//!
//! Objects are zlib-compressed (unless asked otherwise) and named by the SHA-1 of the stored
//! bytes, as the real server does. Each object is written to `data/txn/` and linked into
//! place, so a reader never sees a partial object; an object that already exists is not
//! written again (deduplication).

use path_error::{io_err, PathError};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::ZlibEncoder;

use super::chunker::{ChunkSizes, Chunker};
use crate::catalog::Compression;
use crate::fetch::VerifyingReader;
use crate::hash::{Algorithm, ContentHash, Suffix};

/// Errors of object storage.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("stored object {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What was written, for reports and deduplication tests.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub objects_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub objects_deduplicated: AtomicU64,
}

/// The object store below `<repo>/data`.
#[derive(Debug)]
pub struct ObjectStore {
    repo: PathBuf,
    txn: PathBuf,
    next_txn: AtomicU64,
    pub counters: StoreCounters,
}

/// The stored content of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// One object without suffix.
    Whole { hash: ContentHash, size: u64 },
    /// Chunks (offset, size, hash), objects with suffix `P`.
    Chunked { chunks: Vec<crate::catalog::Chunk> },
}

impl FileContent {
    pub fn size(&self) -> u64 {
        match self {
            FileContent::Whole { size, .. } => *size,
            FileContent::Chunked { chunks } => chunks.iter().map(|c| c.size).sum(),
        }
    }
}

impl ObjectStore {
    /// Opens (and creates the layout of) the store of repository directory `repo`.
    pub fn open(repo: &Path) -> Result<ObjectStore, ObjectError> {
        let data = repo.join("data");
        for i in 0..=255u8 {
            let d = data.join(format!("{i:02x}"));
            std::fs::create_dir_all(&d).map_err(io_err("", &d))?;
        }
        let txn = data.join("txn");
        std::fs::create_dir_all(&txn).map_err(io_err("", &txn))?;
        Ok(ObjectStore {
            repo: repo.to_path_buf(),
            txn,
            next_txn: AtomicU64::new(0),
            counters: StoreCounters::default(),
        })
    }

    /// Path of an object.
    pub fn path(&self, hash: &ContentHash, suffix: Suffix) -> PathBuf {
        self.repo.join(hash.object_path(suffix))
    }

    /// Compresses (or not) and stores `content`; returns its content hash.
    pub fn put(
        &self,
        content: &[u8],
        suffix: Suffix,
        compression: Compression,
    ) -> Result<ContentHash, ObjectError> {
        let stored = match compression {
            Compression::Zlib => {
                let mut z = ZlibEncoder::new(
                    Vec::with_capacity(content.len() / 2 + 64),
                    flate2::Compression::default(),
                );
                z.write_all(content)
                    .and_then(|_| z.finish())
                    .map_err(io_err("", &self.txn))?
            }
            Compression::None => content.to_vec(),
        };
        let hash = ContentHash::of(Algorithm::Sha1, &stored);
        let path = self.path(&hash, suffix);
        if path.exists() {
            self.counters
                .objects_deduplicated
                .fetch_add(1, Ordering::Relaxed);
            return Ok(hash);
        }
        let tmp = self.txn.join(format!(
            "{}.{}",
            std::process::id(),
            self.next_txn.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<bool> {
            let mut f = File::create(&tmp)?;
            f.write_all(&stored)?;
            // No fsync per object (neither does the real server's local uploader); the
            // publisher syncs the file system once before the new manifest points to them.
            // link() rather than rename(): as atomic, and it tells whether another thread
            // stored the same object meanwhile.
            let linked = match std::fs::hard_link(&tmp, &path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            std::fs::remove_file(&tmp)?;
            Ok(linked)
        };
        match write() {
            Ok(true) => {}
            Ok(false) => {
                self.counters
                    .objects_deduplicated
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(hash);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ObjectError::Io(PathError::new("", path, e)));
            }
        }
        self.counters
            .objects_written
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        Ok(hash)
    }

    /// Reads a zlib-compressed object back, checking its hash (previous catalogs and
    /// history when publishing a new revision).
    pub fn get(&self, hash: &ContentHash, suffix: Suffix) -> Result<Vec<u8>, ObjectError> {
        self.get_as(hash, suffix, Compression::Zlib)
    }

    /// Reads an object back (decompressed), checking its hash.
    pub fn get_as(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        compression: Compression,
    ) -> Result<Vec<u8>, ObjectError> {
        let path = self.path(hash, suffix);
        let file = File::open(&path).map_err(io_err("", &path))?;
        let mut out = Vec::new();
        let verifying = VerifyingReader::new(file, *hash);
        let r = match compression {
            Compression::Zlib => {
                let mut z = flate2::read::ZlibDecoder::new(verifying);
                z.read_to_end(&mut out)
                    .and_then(|_| std::io::copy(&mut z.into_inner(), &mut std::io::sink()))
            }
            Compression::None => {
                let mut v = verifying;
                v.read_to_end(&mut out).map(|n| n as u64)
            }
        };
        r.map_err(|e| ObjectError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    /// True if the regular file `path` has exactly the content stored as `previous` and
    /// would be cut into the same chunks: then its objects can be reused without compressing
    /// the file again. Reading and inflating the stored objects is much cheaper than
    /// deflating the file; a missing or corrupt previous object just means "no".
    pub fn holds_file(
        &self,
        path: &Path,
        previous: &FileContent,
        sizes: ChunkSizes,
        compression: Compression,
    ) -> Result<bool, ObjectError> {
        let mut file = File::open(path).map_err(io_err("", path))?;
        let len = file.metadata().map_err(io_err("", path))?.len();
        if len != previous.size() {
            return Ok(false);
        }
        let (objects, expected_cuts): (Vec<(ContentHash, Suffix)>, Vec<u64>) = match previous {
            FileContent::Whole { hash, .. } => (vec![(*hash, Suffix::None)], Vec::new()),
            FileContent::Chunked { chunks } => (
                chunks.iter().map(|c| (c.hash, Suffix::Partial)).collect(),
                chunks.iter().skip(1).map(|c| c.offset).collect(),
            ),
        };
        let mut chunker = sizes.may_chunk(len).then(|| Chunker::new(sizes));
        let mut cuts = Vec::new();
        let mut buf = Vec::new();
        for (hash, suffix) in objects {
            let stored = match self.get_as(&hash, suffix, compression) {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("previous object of {} unusable: {e}", path.display());
                    return Ok(false);
                }
            };
            buf.resize(stored.len(), 0);
            if file.read_exact(&mut buf).is_err() || buf != stored {
                return Ok(false);
            }
            if let Some(c) = chunker.as_mut() {
                cuts.extend(c.feed(&buf));
            }
        }
        let at_end = file.read(&mut [0u8; 1]).map_err(io_err("", path))? == 0;
        Ok(at_end && cuts == expected_cuts)
    }

    /// Stores the regular file `path`: one object if it is at most `sizes.min` bytes or the
    /// chunker finds no cut, else its chunks.
    pub fn put_file(
        &self,
        path: &Path,
        sizes: ChunkSizes,
        compression: Compression,
    ) -> Result<FileContent, ObjectError> {
        let mut file = File::open(path).map_err(io_err("", path))?;
        let len = file.metadata().map_err(io_err("", path))?.len();
        if !sizes.may_chunk(len) {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).map_err(io_err("", path))?;
            let hash = self.put(&buf, Suffix::None, compression)?;
            return Ok(FileContent::Whole {
                hash,
                size: buf.len() as u64,
            });
        }
        let mut chunker = Chunker::new(sizes);
        let mut chunks = Vec::new();
        // Bytes of the current chunk, which starts at file offset `start`.
        let mut current: Vec<u8> = Vec::with_capacity(sizes.avg as usize);
        let mut start = 0u64;
        let mut block = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = file.read(&mut block).map_err(io_err("", path))?;
            if n == 0 {
                break;
            }
            let mut from = 0usize;
            for cut in chunker.feed(&block[..n]) {
                let upto = (cut - offset) as usize;
                current.extend_from_slice(&block[from..upto]);
                from = upto;
                let hash = self.put(&current, Suffix::Partial, compression)?;
                chunks.push(crate::catalog::Chunk {
                    offset: start,
                    size: current.len() as u64,
                    hash,
                });
                start = cut;
                current.clear();
            }
            current.extend_from_slice(&block[from..n]);
            offset += n as u64;
        }
        if chunks.is_empty() {
            // No cut: an ordinary whole-file object (the real server fixes single chunks up
            // the same way).
            let hash = self.put(&current, Suffix::None, compression)?;
            return Ok(FileContent::Whole {
                hash,
                size: current.len() as u64,
            });
        }
        if !current.is_empty() {
            let hash = self.put(&current, Suffix::Partial, compression)?;
            chunks.push(crate::catalog::Chunk {
                offset: start,
                size: current.len() as u64,
                hash,
            });
        }
        Ok(FileContent::Chunked { chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_object_is_the_real_servers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let h = store.put(b"", Suffix::None, Compression::Zlib).unwrap();
        assert_eq!(h.to_string(), "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78");
        assert_eq!(
            std::fs::read(store.path(&h, Suffix::None)).unwrap(),
            [0x78, 0x9c, 3, 0, 0, 0, 0, 1]
        );
        // Stored again: deduplicated, not rewritten.
        store.put(b"", Suffix::None, Compression::Zlib).unwrap();
        assert_eq!(store.counters.objects_written.load(Ordering::Relaxed), 1);
        assert_eq!(
            store.counters.objects_deduplicated.load(Ordering::Relaxed),
            1
        );
        assert_eq!(store.get(&h, Suffix::None).unwrap(), b"");
    }

    #[test]
    fn chunked_file_tiles_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("repo")).unwrap();
        let mut x = 1u64;
        let data: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let src = dir.path().join("f");
        std::fs::write(&src, &data).unwrap();
        let sizes = ChunkSizes::new(64 * 1024, 256 * 1024, 1024 * 1024).unwrap();
        let FileContent::Chunked { chunks } =
            store.put_file(&src, sizes, Compression::Zlib).unwrap()
        else {
            panic!("not chunked")
        };
        let mut joined = Vec::new();
        for c in &chunks {
            assert_eq!(c.offset, joined.len() as u64);
            let part = store.get(&c.hash, Suffix::Partial).unwrap();
            assert_eq!(part.len() as u64, c.size);
            joined.extend(part);
        }
        assert_eq!(joined, data);
        // The stored content is recognised; one changed byte or other chunk sizes are not.
        let content = store.put_file(&src, sizes, Compression::Zlib).unwrap();
        assert!(store
            .holds_file(&src, &content, sizes, Compression::Zlib)
            .unwrap());
        let other_sizes = ChunkSizes::new(32 * 1024, 128 * 1024, 512 * 1024).unwrap();
        assert!(!store
            .holds_file(&src, &content, other_sizes, Compression::Zlib)
            .unwrap());
        let mut changed = data.clone();
        changed[2_999_999] ^= 1;
        std::fs::write(&src, &changed).unwrap();
        assert!(!store
            .holds_file(&src, &content, sizes, Compression::Zlib)
            .unwrap());
        // A file below the minimum is one object.
        std::fs::write(&src, &data[..1000]).unwrap();
        assert!(matches!(
            store.put_file(&src, sizes, Compression::Zlib).unwrap(),
            FileContent::Whole { size: 1000, .. }
        ));
    }
}
