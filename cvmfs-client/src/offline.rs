//! What a cache keeps so that a repository can be mounted without network (spec §9.5, §9.6):
//! the breadcrumb `cvmfschecksum.<fqrn>` of the real client, plus the last verified manifest
//! and whitelist as fetched (`cvmfspublished.<fqrn>`, `cvmfswhitelist.<fqrn>`), so an offline
//! mount verifies the same signatures as an online one and can still resolve tags. The
//! certificate is an ordinary cached object.
//!
//! All files are written atomically (temporary file, then rename) with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::hash::ContentHash;

/// `<root catalog hash>T<publish timestamp>R<revision>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breadcrumb {
    pub root_hash: ContentHash,
    pub timestamp: u64,
    pub revision: u64,
}

impl Breadcrumb {
    fn path(cache_dir: &Path, fqrn: &str) -> PathBuf {
        cache_dir.join(format!("cvmfschecksum.{fqrn}"))
    }

    /// Parses the breadcrumb text (first 164 bytes; old form without `R` ⇒ revision 0).
    pub fn parse(text: &[u8]) -> Option<Breadcrumb> {
        let text = std::str::from_utf8(&text[..text.len().min(164)]).ok()?;
        let text = text.trim_end();
        let (hash, rest) = text.split_once('T')?;
        let (timestamp, revision) = match rest.split_once('R') {
            Some((t, r)) => (t, r.parse().ok()?),
            None => (rest, 0),
        };
        let timestamp: u64 = timestamp.parse().ok()?;
        (timestamp > 0).then_some(Breadcrumb {
            root_hash: hash.parse().ok()?,
            timestamp,
            revision,
        })
    }

    /// The breadcrumb of `fqrn` in `cache_dir`, if there is a valid one.
    pub fn read(cache_dir: &Path, fqrn: &str) -> Option<Breadcrumb> {
        Breadcrumb::parse(&fs::read(Breadcrumb::path(cache_dir, fqrn)).ok()?)
    }

    /// Writes the breadcrumb (no trailing newline, as the reference), unless it is unchanged.
    pub fn write(&self, cache_dir: &Path, fqrn: &str) -> io::Result<()> {
        let text = format!("{}T{}R{}", self.root_hash, self.timestamp, self.revision);
        let path = Breadcrumb::path(cache_dir, fqrn);
        if fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(());
        }
        write_atomic(&path, text.as_bytes())
    }
}

/// The last verified `.cvmfspublished` and `.cvmfswhitelist`, byte for byte.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub manifest: Vec<u8>,
    pub whitelist: Vec<u8>,
    /// When they were stored (seconds since the epoch): the whitelist expiry is checked
    /// against this time, the time it was last seen valid online.
    pub stored_at: i64,
}

impl StoredManifest {
    fn paths(cache_dir: &Path, fqrn: &str) -> (PathBuf, PathBuf) {
        (
            cache_dir.join(format!("cvmfspublished.{fqrn}")),
            cache_dir.join(format!("cvmfswhitelist.{fqrn}")),
        )
    }

    /// Loads what [`StoredManifest::save`] stored, if complete.
    pub fn load(cache_dir: &Path, fqrn: &str) -> Option<StoredManifest> {
        let (m, w) = StoredManifest::paths(cache_dir, fqrn);
        let manifest = fs::read(&m).ok()?;
        let whitelist = fs::read(&w).ok()?;
        let stored_at = fs::metadata(&m)
            .and_then(|md| md.modified())
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        Some(StoredManifest {
            manifest,
            whitelist,
            stored_at,
        })
    }

    /// Stores freshly verified copies (whitelist first: a manifest is only used with one).
    /// Unchanged copies only get a new time stamp (no writes on every mount).
    pub fn save(cache_dir: &Path, fqrn: &str, manifest: &[u8], whitelist: &[u8]) -> io::Result<()> {
        let (m, w) = StoredManifest::paths(cache_dir, fqrn);
        let same = |p: &Path, data: &[u8]| fs::read(p).is_ok_and(|old| old == data);
        if same(&w, whitelist) && same(&m, manifest) {
            return fs::File::options()
                .write(true)
                .open(&m)?
                .set_modified(std::time::SystemTime::now());
        }
        write_atomic(&w, whitelist)?;
        write_atomic(&m, manifest)
    }
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breadcrumb_round_trip_and_old_format() {
        let d = tempfile::tempdir().unwrap();
        let h: ContentHash = "8220c7b0307b55556bfb2cd7c19e4bae8f0eb864".parse().unwrap();
        let b = Breadcrumb {
            root_hash: h,
            timestamp: 1704067200,
            revision: 42,
        };
        b.write(d.path(), "x.test").unwrap();
        let text = fs::read(d.path().join("cvmfschecksum.x.test")).unwrap();
        assert_eq!(
            text,
            b"8220c7b0307b55556bfb2cd7c19e4bae8f0eb864T1704067200R42"
        );
        assert_eq!(Breadcrumb::read(d.path(), "x.test"), Some(b));
        let old =
            Breadcrumb::parse(b"8220c7b0307b55556bfb2cd7c19e4bae8f0eb864T1704067200").unwrap();
        assert_eq!(old.revision, 0);
        assert!(Breadcrumb::parse(b"8220c7b0307b55556bfb2cd7c19e4bae8f0eb864T0R1").is_none());
        assert!(Breadcrumb::parse(b"garbage").is_none());
        assert!(Breadcrumb::read(d.path(), "other.test").is_none());
    }

    #[test]
    fn stored_manifest_round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert!(StoredManifest::load(d.path(), "x.test").is_none());
        StoredManifest::save(d.path(), "x.test", b"manifest", b"whitelist").unwrap();
        let s = StoredManifest::load(d.path(), "x.test").unwrap();
        assert_eq!(
            (s.manifest.as_slice(), s.whitelist.as_slice()),
            (&b"manifest"[..], &b"whitelist"[..])
        );
        assert!(s.stored_at > 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join("cvmfspublished.x.test"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
