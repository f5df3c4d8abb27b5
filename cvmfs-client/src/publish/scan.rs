//! Reads the source tree: every entry's `lstat` data, symlink target and extended
//! attributes, in a deterministic order (names sorted byte-wise), and which directories are
//! nested-catalog roots (they hold a `.cvmfscatalog` marker).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::catalog::{Xattrs, XATTR_MAX_LEN};

/// The marker file that requests a nested catalog for its directory.
pub const NESTED_CATALOG_MARKER: &[u8] = b".cvmfscatalog";

/// Errors while reading the source tree.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the source {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: file names with a newline cannot be published")]
    BadName { path: PathBuf },
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Directory {
        children: Vec<Node>,
        /// Holds a `.cvmfscatalog` marker (ignored for the repository root).
        nested_catalog: bool,
    },
    Regular,
    Symlink {
        target: Vec<u8>,
    },
    /// FIFO, socket, character or block device.
    Special,
}

/// `lstat` fields a catalog records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub rdev: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

/// One entry of the source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Base name ("" for the root).
    pub name: Vec<u8>,
    /// Repository path: "" for the root, else `/a/b`.
    pub path: Vec<u8>,
    pub stat: Stat,
    pub xattrs: Xattrs,
    pub kind: Kind,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Directory { .. })
    }

    pub fn children(&self) -> &[Node] {
        match &self.kind {
            Kind::Directory { children, .. } => children,
            _ => &[],
        }
    }

    pub fn is_nested_catalog(&self) -> bool {
        matches!(
            self.kind,
            Kind::Directory {
                nested_catalog: true,
                ..
            }
        )
    }

    /// Where this entry is in the source tree.
    pub fn source_path(&self, source_root: &Path) -> PathBuf {
        source_root.join(OsStr::from_bytes(
            self.path.strip_prefix(b"/").unwrap_or(&self.path),
        ))
    }
}

/// Reads the tree under `root`.
pub fn scan(root: &Path) -> Result<Node, ScanError> {
    let meta = lstat(root)?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory(root.to_path_buf()));
    }
    let mut node = read_node(root, Vec::new(), Vec::new(), &meta)?;
    // The repository root is the root catalog anyway.
    if let Kind::Directory { nested_catalog, .. } = &mut node.kind {
        *nested_catalog = false;
    }
    Ok(node)
}

fn lstat(path: &Path) -> Result<std::fs::Metadata, ScanError> {
    std::fs::symlink_metadata(path).map_err(|source| ScanError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

fn read_node(
    source: &Path,
    name: Vec<u8>,
    path: Vec<u8>,
    meta: &std::fs::Metadata,
) -> Result<Node, ScanError> {
    let io = |source_err| ScanError::Io {
        path: source.to_path_buf(),
        cause: source_err,
    };
    let stat = Stat {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        rdev: meta.rdev(),
        dev: meta.dev(),
        ino: meta.ino(),
        nlink: meta.nlink(),
    };
    let xattrs = read_xattrs(source).map_err(io)?;
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        let mut entries: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(source)
            .map_err(io)?
            .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e.path())))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        let mut nested_catalog = false;
        let mut children = Vec::with_capacity(entries.len());
        for (child_name, child_source) in entries {
            if child_name.contains(&b'\n') {
                return Err(ScanError::BadName { path: child_source });
            }
            let child_meta = lstat(&child_source)?;
            if child_name == NESTED_CATALOG_MARKER && child_meta.is_file() {
                nested_catalog = true;
            }
            let mut child_path = path.clone();
            child_path.push(b'/');
            child_path.extend_from_slice(&child_name);
            children.push(read_node(
                &child_source,
                child_name,
                child_path,
                &child_meta,
            )?);
        }
        Kind::Directory {
            children,
            nested_catalog,
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(source).map_err(io)?;
        Kind::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        }
    } else if ft.is_file() {
        Kind::Regular
    } else {
        Kind::Special
    };
    Ok(Node {
        name,
        path,
        stat,
        xattrs,
        kind,
    })
}

/// Extended attributes of `path` (not following symlinks). Like the real server, attributes
/// whose key or value is longer than the catalog blob can hold are skipped (with a warning).
pub fn read_xattrs(path: &Path) -> std::io::Result<Xattrs> {
    use std::os::unix::ffi::OsStrExt;
    let keys = match xattr::list(path) {
        Ok(keys) => keys,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for key in keys {
        let key = key.as_bytes();
        // Removed since listed: nothing to publish.
        let Some(value) = xattr::get(path, std::ffi::OsStr::from_bytes(key))? else {
            continue;
        };
        if value.len() > XATTR_MAX_LEN || key.len() > XATTR_MAX_LEN {
            log::warn!(
                "{}: extended attribute {} is too long; not published",
                path.display(),
                String::from_utf8_lossy(key)
            );
            continue;
        }
        out.push((key.to_vec(), value));
    }
    out.sort();
    Ok(out)
}
