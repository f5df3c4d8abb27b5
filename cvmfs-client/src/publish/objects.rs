//! The content-addressed object store of a Stratum-0 directory (`data/XX/…[suffix]`) and the
//! ingestion of regular files into it (whole-file objects or content-defined chunks).
//!
//! Objects are zlib-compressed (unless asked otherwise) and named by the SHA-1 of the stored
//! bytes, as the real server does. Each object is written to `data/txn/` and linked into
//! place, so a reader never sees a partial object; an object that already exists is not
//! written again (deduplication).

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored object {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ObjectError + '_ {
    move |source| ObjectError::Io {
        path: path.to_path_buf(),
        source,
    }
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
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let txn = data.join("txn");
        std::fs::create_dir_all(&txn).map_err(io_err(&txn))?;
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
                    .map_err(io_err(&self.txn))?
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
                return Err(ObjectError::Io { path, source: e });
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
        let path = self.path(hash, suffix);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut out = Vec::new();
        let mut z = flate2::read::ZlibDecoder::new(VerifyingReader::new(file, *hash));
        z.read_to_end(&mut out)
            .and_then(|_| std::io::copy(&mut z.into_inner(), &mut std::io::sink()))
            .map_err(|e| ObjectError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(out)
    }

    /// Stores the regular file `path`: one object if it is at most `sizes.min` bytes or the
    /// chunker finds no cut, else its chunks.
    pub fn put_file(
        &self,
        path: &Path,
        sizes: ChunkSizes,
        compression: Compression,
    ) -> Result<FileContent, ObjectError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if !sizes.may_chunk(len) {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).map_err(io_err(path))?;
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
            let n = file.read(&mut block).map_err(io_err(path))?;
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
        // A file below the minimum is one object.
        std::fs::write(&src, &data[..1000]).unwrap();
        assert!(matches!(
            store.put_file(&src, sizes, Compression::Zlib).unwrap(),
            FileContent::Whole { size: 1000, .. }
        ));
    }
}
