//! `fsck` of a cache directory: every object in `00`..`ff` is checked against the content hash
//! it is named by; bad ones (and files that are no object at all, and leftovers in `txn/`) are
//! removed, and the quota database is rebuilt from what remains, so the next mount starts from a
//! consistent cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fetch::cached_object_matches;
use crate::hash::ContentHash;
use crate::quota::QuotaManager;

/// What a check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Objects whose content matches their name.
    pub good: u64,
    /// Objects removed because the content does not match.
    pub corrupt: Vec<PathBuf>,
    /// Files in `00`..`ff` that are not named like an object (removed).
    pub strays: Vec<PathBuf>,
    /// Unfinished downloads removed from `txn/`.
    pub leftovers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("{path} is not a CernVM-FS cache directory (no 00..ff subdirectories)")]
    NotACache { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is in use by the cvmfs2 of {fqrn}; unmount it first")]
    InUse { path: PathBuf, fqrn: String },
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaError),
}

/// Checks cache directory `dir`; with `repair`, removes what is bad and rebuilds the quota
/// database (if there is one). The cache must not be in use.
pub fn check(dir: &Path, repair: bool) -> Result<FsckReport, FsckError> {
    if !dir.join("00").is_dir() || !dir.join("ff").is_dir() {
        return Err(FsckError::NotACache {
            path: dir.to_path_buf(),
        });
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FsckError::Io { path, source }
    };
    refuse_if_in_use(dir)?;
    let mut report = FsckReport::default();
    let txn = dir.join("txn");
    if let Ok(entries) = fs::read_dir(&txn) {
        for e in entries.flatten() {
            report.leftovers += 1;
            if repair {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    for i in 0..=255u8 {
        let sub = format!("{i:02x}");
        let d = dir.join(&sub);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&d)(e)),
        };
        for e in entries {
            let e = e.map_err(io_err(&d))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(hash) = format!("{sub}{name}").parse::<ContentHash>() else {
                report.strays.push(path);
                continue;
            };
            match cached_object_matches(&path, hash, None) {
                Ok(true) => report.good += 1,
                Ok(false) => report.corrupt.push(path),
                Err(e) => {
                    log::warn!("{}: {e}", path.display());
                    report.corrupt.push(path);
                }
            }
        }
    }
    if repair {
        for p in report.corrupt.iter().chain(&report.strays) {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
                    let _ = fs::remove_dir_all(p);
                }
                Err(e) => return Err(io_err(p)(e)),
            }
        }
        if dir.join("cachedb").exists() {
            // Any limit: the rebuild only records what is there; cleanups happen at mount.
            QuotaManager::open(dir, u64::MAX / 4, true)?;
        }
    }
    Ok(report)
}

/// A daemon holds `lock.<fqrn>` while it uses the cache; checking under it could remove a
/// download being renamed into place and would rebuild the database behind the daemon's back.
fn refuse_if_in_use(dir: &Path) -> Result<(), FsckError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(fqrn) = name.to_str().and_then(|n| n.strip_prefix("lock.")) else {
            continue;
        };
        let Ok(f) = fs::File::open(e.path()) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; released when `f` is closed.
        let held = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_SH | libc::LOCK_NB,
            )
        } != 0;
        if held {
            return Err(FsckError::InUse {
                path: dir.to_path_buf(),
                fqrn: fqrn.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_dir;

    /// Fixture objects decompressed into a cache layout, as a client stores them.
    fn cache_from_fixture(dir: &Path) -> usize {
        let data = fixture_dir().join("srv/cvmfs/demo.cernvm.test/data");
        let mut n = 0;
        crate::cache::Cache::open(dir).unwrap();
        for sub in fs::read_dir(&data).unwrap().flatten() {
            for obj in fs::read_dir(sub.path()).unwrap().flatten() {
                let name = obj.file_name().to_string_lossy().into_owned();
                let raw = fs::read(obj.path()).unwrap();
                let mut plain = Vec::new();
                io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&raw[..]), &mut plain)
                    .unwrap();
                let target = dir.join(sub.file_name()).join(&name[..38.min(name.len())]);
                fs::write(target, plain).unwrap();
                n += 1;
            }
        }
        n
    }

    #[test]
    fn fixture_objects_verify_and_damage_is_found_and_repaired() {
        if !fixture_dir().join("srv").is_dir() {
            test_prereq::skip("fixture missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let all = cache_from_fixture(d.path()) as u64;
        assert!(all > 10);
        // A quota database exists (and dropped the empty object, as the reference does).
        QuotaManager::open(d.path(), 1 << 40, false).unwrap();
        let n = (0..=255u8)
            .flat_map(|i| fs::read_dir(d.path().join(format!("{i:02x}"))).unwrap())
            .flatten()
            .count() as u64;
        assert!(n >= all - 1);
        // Every real object re-compresses to its name (same zlib level as the publisher).
        let r = check(d.path(), false).unwrap();
        assert_eq!(r.good, n, "{r:?}");
        assert!(r.corrupt.is_empty() && r.strays.is_empty());

        // Damage one object, add a stray and an unfinished download.
        let victim = fs::read_dir(d.path().join("ff"))
            .unwrap()
            .flatten()
            .next()
            .map(|e| e.path())
            .or_else(|| {
                (0..=255u8)
                    .flat_map(|i| fs::read_dir(d.path().join(format!("{i:02x}"))).unwrap())
                    .flatten()
                    .map(|e| e.path())
                    .next()
            })
            .unwrap();
        let mut bytes = fs::read(&victim).unwrap();
        bytes[0] ^= 0x55;
        fs::write(&victim, &bytes).unwrap();
        fs::write(d.path().join("00/stray"), b"x").unwrap();
        fs::write(d.path().join("txn/fetch1-0"), b"partial").unwrap();

        let r = check(d.path(), true).unwrap();
        assert_eq!(r.corrupt, vec![victim.clone()]);
        assert_eq!(r.strays, vec![d.path().join("00/stray")]);
        assert_eq!(r.leftovers, 1);
        assert_eq!(r.good, n - 1);
        assert!(!victim.exists());
        let again = check(d.path(), false).unwrap();
        assert_eq!(again.good, n - 1);
        assert!(again.corrupt.is_empty() && again.strays.is_empty() && again.leftovers == 0);
        // The rebuilt database lists exactly the objects left on disk.
        let q = QuotaManager::open(d.path(), 1 << 40, false).unwrap();
        let on_disk = (0..=255u8)
            .flat_map(|i| fs::read_dir(d.path().join(format!("{i:02x}"))).unwrap())
            .flatten()
            .count();
        assert_eq!(q.list().unwrap().len(), on_disk);
    }

    #[test]
    fn refuses_a_directory_that_is_no_cache_or_in_use() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            check(d.path(), true),
            Err(FsckError::NotACache { .. })
        ));
        let opts = crate::cache::CacheOptions {
            quota_limit: Some(1 << 20),
            fqrn: Some("x.test".into()),
            ..Default::default()
        };
        let cache = crate::cache::Cache::open_with(d.path(), &opts).unwrap();
        assert!(matches!(
            check(d.path(), true),
            Err(FsckError::InUse { .. })
        ));
        cache.close();
        drop(cache);
        assert!(check(d.path(), true).is_ok());
    }
}
