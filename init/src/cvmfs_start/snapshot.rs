//! Snapshot pinning (spec §9.3): the first boot records the root catalog hash and tag it
//! mounted in `aux/cvmfs_snapshot`; later boots mount exactly that snapshot, until
//! `aux/cvmfs_force_tag` asks for another tag.

use std::io;
use std::path::{Path, PathBuf};

/// `aux/cvmfs_snapshot`: root hash, newline, tag, newline.
pub const SNAPSHOT_FILE: &str = "cvmfs_snapshot";
/// `aux/cvmfs_force_tag`: its whole content is the tag of every boot while it exists.
pub const FORCE_TAG_FILE: &str = "cvmfs_force_tag";

/// A mounted (or to be mounted) revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Root catalog hash as CernVM-FS prints it (hex, possibly with a suffix).
    pub root_hash: String,
    /// Tag name; empty when the trunk was mounted.
    pub tag: String,
}

/// What this boot mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Not fresh: exactly the recorded snapshot.
    Pinned(Snapshot),
    /// Fresh: resolve the tag (or the newest revision when `None`), then record the result.
    Fresh { tag: Option<String> },
}

impl Selection {
    pub fn is_fresh(&self) -> bool {
        matches!(self, Selection::Fresh { .. })
    }

    /// `(CVMFS_ROOT_HASH, CVMFS_REPOSITORY_TAG)` for the configuration.
    pub fn config_values(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Selection::Pinned(s) => (
                Some(s.root_hash.as_str()),
                (!s.tag.is_empty()).then_some(s.tag.as_str()),
            ),
            Selection::Fresh { tag } => (None, tag.as_deref()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("{} has no root catalog hash on its first line", path.display())]
    NoHash { path: PathBuf },
    #[error("{} holds an invalid root catalog hash {hash:?}", path.display())]
    BadHash { path: PathBuf, hash: String },
}

fn read_optional(path: &Path) -> Result<Option<String>, SnapshotError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Read {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}

/// Decides what to mount from the files in `aux` and the tag asked for by the command line or
/// the user data. `cvmfs_force_tag` wins over a recorded snapshot, which wins over `wanted_tag`.
pub fn select(aux: &Path, wanted_tag: Option<&str>) -> Result<Selection, SnapshotError> {
    let force = aux.join(FORCE_TAG_FILE);
    if let Some(text) = read_optional(&force)? {
        // The whole content is the tag; only the line end an editor adds is dropped.
        let tag = text.trim_end_matches(['\n', '\r']).to_string();
        return Ok(Selection::Fresh {
            tag: (!tag.is_empty()).then_some(tag),
        });
    }
    let file = aux.join(SNAPSHOT_FILE);
    if let Some(text) = read_optional(&file)? {
        let lines: Vec<&str> = text.lines().collect();
        let hash = lines.first().map(|l| l.trim()).unwrap_or_default();
        if hash.is_empty() {
            return Err(SnapshotError::NoHash { path: file });
        }
        if !hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(SnapshotError::BadHash {
                path: file,
                hash: hash.to_string(),
            });
        }
        // The original takes the last line as the tag; a one-line file therefore has the hash
        // as its "tag", which cannot be meant: a single line means no tag.
        let tag = if lines.len() >= 2 {
            lines
                .last()
                .map(|l| l.trim().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        return Ok(Selection::Pinned(Snapshot {
            root_hash: hash.to_string(),
            tag,
        }));
    }
    Ok(Selection::Fresh {
        tag: wanted_tag.filter(|t| !t.is_empty()).map(str::to_string),
    })
}

/// Records `snapshot` in `aux/cvmfs_snapshot`, replacing the file atomically.
pub fn record(aux: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let file = aux.join(SNAPSHOT_FILE);
    let tmp = aux.join(format!(".{SNAPSHOT_FILE}.new"));
    let err = |source| SnapshotError::Write {
        path: file.clone(),
        cause: source,
    };
    std::fs::write(&tmp, format!("{}\n{}\n", snapshot.root_hash, snapshot.tag)).map_err(err)?;
    std::fs::rename(&tmp, &file).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_boot_is_fresh_with_the_wanted_tag() {
        let aux = tempfile::tempdir().unwrap();
        assert_eq!(
            select(aux.path(), Some("v1")).unwrap(),
            Selection::Fresh {
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            select(aux.path(), None).unwrap(),
            Selection::Fresh { tag: None }
        );
        assert_eq!(
            select(aux.path(), Some("")).unwrap(),
            Selection::Fresh { tag: None }
        );
    }

    #[test]
    fn recorded_snapshot_pins_later_boots_over_any_wanted_tag() {
        let aux = tempfile::tempdir().unwrap();
        let snap = Snapshot {
            root_hash: "f71bcc87c33d8adb3851f22152914744e677878f".into(),
            tag: "v1".into(),
        };
        record(aux.path(), &snap).unwrap();
        assert_eq!(
            std::fs::read_to_string(aux.path().join(SNAPSHOT_FILE)).unwrap(),
            "f71bcc87c33d8adb3851f22152914744e677878f\nv1\n"
        );
        let sel = select(aux.path(), Some("v2")).unwrap();
        assert_eq!(sel, Selection::Pinned(snap.clone()));
        assert!(!sel.is_fresh());
        assert_eq!(
            sel.config_values(),
            (Some("f71bcc87c33d8adb3851f22152914744e677878f"), Some("v1"))
        );
    }

    #[test]
    fn trunk_snapshot_has_an_empty_tag() {
        let aux = tempfile::tempdir().unwrap();
        record(
            aux.path(),
            &Snapshot {
                root_hash: "abc123".into(),
                tag: String::new(),
            },
        )
        .unwrap();
        let sel = select(aux.path(), None).unwrap();
        assert_eq!(sel.config_values(), (Some("abc123"), None));
        // A file written by hand with one line only: no tag.
        std::fs::write(aux.path().join(SNAPSHOT_FILE), "abc123").unwrap();
        assert_eq!(
            select(aux.path(), None).unwrap().config_values(),
            (Some("abc123"), None)
        );
    }

    #[test]
    fn force_tag_wins_over_the_snapshot_and_stays_fresh() {
        let aux = tempfile::tempdir().unwrap();
        record(
            aux.path(),
            &Snapshot {
                root_hash: "abc".into(),
                tag: "v1".into(),
            },
        )
        .unwrap();
        std::fs::write(aux.path().join(FORCE_TAG_FILE), "v2\n").unwrap();
        let sel = select(aux.path(), Some("v1")).unwrap();
        assert_eq!(
            sel,
            Selection::Fresh {
                tag: Some("v2".into())
            }
        );
        assert_eq!(sel.config_values(), (None, Some("v2")));
    }

    #[test]
    fn damaged_snapshot_files_are_clear_errors() {
        let aux = tempfile::tempdir().unwrap();
        std::fs::write(aux.path().join(SNAPSHOT_FILE), "\nv1\n").unwrap();
        let e = select(aux.path(), None).unwrap_err();
        assert!(matches!(e, SnapshotError::NoHash { .. }), "{e}");
        std::fs::write(aux.path().join(SNAPSHOT_FILE), "ab/../cd\nv1\n").unwrap();
        let e = select(aux.path(), None).unwrap_err();
        assert!(e.to_string().contains("invalid root catalog hash"), "{e}");
    }
}
