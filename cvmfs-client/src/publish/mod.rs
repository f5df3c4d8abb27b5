//! The publisher: turns a directory tree into a signed CernVM-FS repository in the format
//! the real `cvmfs_server` writes (spec `../shared/spec/cvmfs-client.md`, checked against
//! the real-server fixture), so that both our client and the real `cvmfs2` mount it.
//!
//! One publish writes the full new state of the source tree as a new revision: objects
//! (deduplicated), catalogs bottom-up (a nested catalog whose content did not change keeps
//! its previous object), the history database, the certificate object, the whitelist and
//! finally the manifest, which is what makes the revision visible.

pub mod catalog_writer;
pub mod chunker;
pub mod history_writer;
pub mod keys;
pub mod objects;
pub mod scan;
mod tree;

use path_error::{io_err, PathError};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::catalog::Compression;
use crate::hash::{md5_hex, Suffix};
use crate::manifest::Manifest;
use crate::signature::SignedLetter;

pub use chunker::ChunkSizes;

/// Default whitelist validity (days).
pub const DEFAULT_WHITELIST_DAYS: u32 = 30;

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid repository name {0:?}")]
    BadName(String),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error(transparent)]
    Object(#[from] objects::ObjectError),
    #[error(transparent)]
    Catalog(#[from] catalog_writer::CatalogWriteError),
    #[error(transparent)]
    History(#[from] history_writer::HistoryWriteError),
    #[error("reading the previous revision: {0}")]
    PreviousCatalog(crate::catalog::CatalogError),
    #[error("the repository's current manifest {path} is not acceptable: {reason}")]
    PreviousManifest { path: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("another publish into {0} is running")]
    Locked(PathBuf),
    #[error("internal error: the data of {0} was not stored")]
    NotStored(PathBuf),
}

// The cause is in the message, so it is not also returned as the source.
impl From<crate::catalog::CatalogError> for PublishError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        PublishError::PreviousCatalog(e)
    }
}

/// What to publish, where, how.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub fqrn: String,
    /// The served repository directory (Stratum-0 backend).
    pub repo: PathBuf,
    /// Key directory (`<fqrn>.masterkey`, `.pub`, `.key`, `.crt`).
    pub keys: PathBuf,
    /// The full new state of the repository.
    pub source: PathBuf,
    /// Named tag for this revision.
    pub tag: Option<String>,
    pub chunk_sizes: ChunkSizes,
    /// Compression of file data (catalogs, history and certificate are always zlib).
    pub compression: Compression,
    pub whitelist_days: u32,
    /// Catalog TTL in seconds (how often clients look for a new revision; the real server's
    /// `CVMFS_REPOSITORY_TTL`).
    pub ttl: u64,
    /// Write `Wcachain` into the whitelist: clients then require the certificate to chain to
    /// their trusted CAs (`CVMFS_TRUSTED_CERTS`).
    pub whitelist_ca_chain: bool,
    /// Record nanoseconds of mtimes (`mtimens`; the real server's `CVMFS_ENABLE_MTIME_NS`).
    pub mtime_ns: bool,
    /// Worker threads for compressing and hashing file data.
    pub threads: usize,
}

impl PublishOptions {
    /// Options with the real server's defaults.
    pub fn new(fqrn: &str, repo: &Path, keys: &Path, source: &Path) -> PublishOptions {
        PublishOptions {
            fqrn: fqrn.to_string(),
            repo: repo.to_path_buf(),
            keys: keys.to_path_buf(),
            source: source.to_path_buf(),
            tag: None,
            chunk_sizes: ChunkSizes::default(),
            compression: Compression::Zlib,
            whitelist_days: DEFAULT_WHITELIST_DAYS,
            whitelist_ca_chain: false,
            ttl: catalog_writer::DEFAULT_TTL,
            mtime_ns: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    pub manifest: Manifest,
    pub catalogs_written: u64,
    pub catalogs_reused: u64,
    pub regular_files: u64,
    /// Bytes of regular-file data read from the source.
    pub input_bytes: u64,
    /// Files with the same content as in the previous revision (not compressed again).
    pub files_unchanged: u64,
    pub objects_written: u64,
    pub bytes_written: u64,
    pub objects_deduplicated: u64,
}

/// Publishes `opts.source` as the next revision of the repository in `opts.repo`.
pub fn publish(opts: &PublishOptions) -> Result<PublishReport, PublishError> {
    check_fqrn(&opts.fqrn)?;
    if let Some(t) = &opts.tag {
        history_writer::check_tag_name(t)?;
    }
    std::fs::create_dir_all(&opts.repo).map_err(io_err("", &opts.repo))?;
    let store = objects::ObjectStore::open(&opts.repo)?;
    let _lock = lock(&opts.repo.join("data/txn/.publish.lock"))?;
    remove_leftovers(&opts.repo.join("data/txn"))?;
    let work = WorkDir::create(
        &opts
            .repo
            .join(format!("data/txn/work.{}", std::process::id())),
    )?;
    let keys = keys::RepositoryKeys::load_or_create(&opts.keys, &opts.fqrn)?;
    let previous = read_previous_manifest(opts, &store)?;
    let now = unix_now();
    let revision = previous.as_ref().map(|m| m.revision + 1).unwrap_or(1);

    let phase = std::time::Instant::now();
    let root = scan::scan(&opts.source)?;
    log::info!("read the source tree in {:.2?}", phase.elapsed());
    let mut build = tree::TreeBuilder::new(opts, &store, &work.path, now as u64, revision);
    if let Some(m) = &previous {
        build.load_previous(&m.root_catalog)?;
    }
    let phase = std::time::Instant::now();
    build.ingest_files(&root)?;
    log::info!(
        "stored the data of {} files in {:.2?}",
        build.regular_files,
        phase.elapsed()
    );
    let phase = std::time::Instant::now();
    let built = build.build_root(&root, previous.as_ref().map(|m| m.root_catalog))?;
    log::info!(
        "wrote {} catalogs ({} unchanged) in {:.2?}",
        build.catalogs_written,
        build.catalogs_reused,
        phase.elapsed()
    );

    // History: the previous database plus this revision.
    let history_path = work.path.join("history.db");
    if let Some(h) = previous.as_ref().and_then(|m| m.history) {
        let bytes = store.get(&h, Suffix::History)?;
        std::fs::write(&history_path, bytes).map_err(io_err("", &history_path))?;
    }
    history_writer::record_revision(
        &history_path,
        &opts.fqrn,
        previous.as_ref().and_then(|m| m.history.as_ref()),
        &history_writer::Revision {
            root_catalog: built.hash,
            root_catalog_size: built.size,
            revision,
            timestamp: now as u64,
        },
        opts.tag.as_deref(),
    )?;
    let history_bytes = std::fs::read(&history_path).map_err(io_err("", &history_path))?;
    let history = store.put(&history_bytes, Suffix::History, Compression::Zlib)?;
    let certificate = store.put(
        &keys.certificate_pem,
        Suffix::Certificate,
        Compression::Zlib,
    )?;

    let manifest = Manifest {
        root_catalog: built.hash,
        root_catalog_size: Some(built.size),
        root_path_md5: md5_hex(b""),
        ttl: opts.ttl,
        revision,
        garbage_collectable: false,
        alt_paths: false,
        fqrn: Some(opts.fqrn.clone()),
        certificate: Some(certificate),
        history: Some(history),
        timestamp: Some(now as u64),
        meta_info: None,
        reflog: None,
    };
    let whitelist = crate::whitelist::whitelist_letter(
        now,
        now + i64::from(opts.whitelist_days) * 86_400,
        &opts.fqrn,
        &[keys.fingerprint()],
        opts.whitelist_ca_chain,
    );
    let signed_whitelist = keys.sign_whitelist(&whitelist)?;
    let signed_manifest = keys.sign_manifest(&manifest.to_letter())?;

    // Everything the manifest references must be on disk before the manifest is (the real
    // server also calls syncfs before signing).
    let phase = std::time::Instant::now();
    sync_filesystem(&opts.repo)?;
    log::info!("flushed the file system in {:.2?}", phase.elapsed());
    write_atomically(&opts.repo, ".cvmfswhitelist", &signed_whitelist)?;
    write_atomically(
        &opts.repo,
        ".cvmfs_master_replica",
        b"This file marks the repository as replicatable to stratum 1 servers\n",
    )?;
    write_atomically(&opts.repo, ".cvmfspublished", &signed_manifest)?;
    // What `cvmfs_server snapshot` writes (`date --utc`); some clients probe it.
    write_atomically(
        &opts.repo,
        ".cvmfs_last_snapshot",
        format!("{}\n", date_utc_text(now)).as_bytes(),
    )?;
    sync_filesystem(&opts.repo)?;

    let c = &store.counters;
    Ok(PublishReport {
        manifest,
        catalogs_written: build.catalogs_written,
        catalogs_reused: build.catalogs_reused,
        regular_files: build.regular_files,
        input_bytes: build.input_bytes,
        files_unchanged: build.files_unchanged,
        objects_written: c.objects_written.load(Ordering::Relaxed),
        bytes_written: c.bytes_written.load(Ordering::Relaxed),
        objects_deduplicated: c.objects_deduplicated.load(Ordering::Relaxed),
    })
}

fn check_fqrn(fqrn: &str) -> Result<(), PublishError> {
    let ok = !fqrn.is_empty()
        && fqrn.len() <= 255
        && fqrn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !fqrn.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PublishError::BadName(fqrn.to_string()))
    }
}

/// The repository's current manifest, checked like a client would (name, hash line and the
/// signature of the certificate it names), or `None` for a new repository.
fn read_previous_manifest(
    opts: &PublishOptions,
    store: &objects::ObjectStore,
) -> Result<Option<Manifest>, PublishError> {
    let path = opts.repo.join(".cvmfspublished");
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("", &path)(e).into()),
    };
    let bad = |reason: String| PublishError::PreviousManifest {
        path: path.clone(),
        reason,
    };
    let (manifest, letter): (Manifest, SignedLetter) =
        Manifest::parse_signed(&buf, &opts.fqrn).map_err(|e| bad(e.to_string()))?;
    let cert_hash = manifest
        .certificate
        .ok_or_else(|| bad("it names no certificate".into()))?;
    let pem = store.get(&cert_hash, Suffix::Certificate)?;
    let cert = crate::signature::Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
    cert.verify_manifest_signature(&letter)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Some(manifest))
}

/// An exclusive lock held while publishing.
/// Held while publishing; the lock is released when it is dropped.
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn lock(path: &Path) -> Result<Lock, PublishError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("", path))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(Lock(locked)),
        Err(_) => Err(PublishError::Locked(
            path.parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .unwrap_or(path)
                .to_path_buf(),
        )),
    }
}

/// Removes what an interrupted publish left in `data/txn` (we hold the lock, so nothing in
/// there is in use).
fn remove_leftovers(txn: &Path) -> Result<(), PublishError> {
    for e in std::fs::read_dir(txn).map_err(io_err("", txn))? {
        let e = e.map_err(io_err("", txn))?;
        if e.file_name() == ".publish.lock" {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().map_err(io_err("", &p))?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io_err("", &p))?;
        log::info!("removed {} (left by an interrupted publish)", p.display());
    }
    Ok(())
}

/// Scratch directory for catalog and history databases, removed when done.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(path: &Path) -> Result<WorkDir, PublishError> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(io_err("", path))?;
        }
        std::fs::create_dir_all(path).map_err(io_err("", path))?;
        Ok(WorkDir {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn write_atomically(dir: &Path, name: &str, content: &[u8]) -> Result<(), PublishError> {
    let tmp = dir.join(format!("data/txn/{name}.{}", std::process::id()));
    let target = dir.join(name);
    std::fs::write(&tmp, content).map_err(io_err("", &tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_err("", &target))?;
    Ok(())
}

fn sync_filesystem(dir: &Path) -> Result<(), PublishError> {
    let f = std::fs::File::open(dir).map_err(io_err("", dir))?;
    nix::unistd::syncfs(&f).map_err(|e| io_err("", dir)(e.into()))?;
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `date --utc` text, e.g. `Sat Nov 28 02:24:37 UTC 2026`.
fn date_utc_text(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let [y, mo, d, h, mi, s] = cvmfs_config::calendar::utc_datetime(unix);
    format!(
        "{} {} {d:2} {h:02}:{mi:02}:{s:02} UTC {y}",
        DAYS[unix.div_euclid(86_400).rem_euclid(7) as usize],
        MONTHS[(mo as usize).clamp(1, 12) - 1]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_text_like_date_utc() {
        assert_eq!(date_utc_text(1_795_828_052), "Sat Nov 28 01:07:32 UTC 2026");
        assert_eq!(date_utc_text(0), "Thu Jan  1 00:00:00 UTC 1970");
    }

    #[test]
    fn one_publish_at_a_time_and_leftovers_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".publish.lock");
        let held = lock(&path).unwrap();
        assert!(matches!(lock(&path), Err(PublishError::Locked(_))));
        drop(held);
        let _again = lock(&path).unwrap();
        std::fs::create_dir(dir.path().join("work.1")).unwrap();
        std::fs::write(dir.path().join("work.1/catalog.1"), b"x").unwrap();
        std::fs::write(dir.path().join("123.4"), b"partial object").unwrap();
        remove_leftovers(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(".publish.lock")]);
    }

    #[test]
    fn repository_names() {
        assert!(check_fqrn("demo.cernvm.test").is_ok());
        for bad in ["", "../x", "a/b", "a b", ".hidden"] {
            assert!(check_fqrn(bad).is_err(), "{bad:?}");
        }
    }
}
