//! Packing a directory tree of the build host into an [`Archive`].

use path_error::{io_err, PathError};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Archive, EntryKind, Metadata};

/// Errors while reading a directory tree.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{path}: file name is not valid UTF-8")]
    NonUtf8 { path: PathBuf },
    #[error("{path}: unsupported file type ({kind}); only directories, regular files, symlinks and device nodes can be packed")]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{path}: {cause}")]
    Archive { path: PathBuf, cause: crate::Error },
}

/// How ownership is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// Every entry is owned by root (uid 0, gid 0), independent of who built the tree.
    #[default]
    Root,
    /// uid and gid of the files on the build host.
    Preserve,
}

/// Splits a Linux `dev_t` into major and minor numbers (glibc's encoding: 12-bit major and
/// 20-bit minor spread over the 64-bit value).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    // Both values have at most 32 significant bits by construction.
    (major as u32, minor as u32)
}

/// Adds everything below `root` (not `root` itself) to `archive`, preserving permission bits,
/// symlink targets and device numbers. Hard links become independent files.
pub fn add_tree(archive: &mut Archive, root: &Path, ownership: Ownership) -> Result<(), PackError> {
    walk(archive, root, "", ownership)
}

fn walk(
    archive: &mut Archive,
    dir: &Path,
    prefix: &str,
    ownership: Ownership,
) -> Result<(), PackError> {
    let mut children = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("", dir))? {
        let entry = entry.map_err(io_err("", dir))?;
        children.push(entry.path());
    }
    children.sort();
    for path in children {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| PackError::NonUtf8 { path: path.clone() })?;
        let archive_path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let md = fs::symlink_metadata(&path).map_err(io_err("", &path))?;
        let (uid, gid) = match ownership {
            Ownership::Root => (0, 0),
            Ownership::Preserve => (md.uid(), md.gid()),
        };
        let meta = Metadata {
            mode: md.mode() & 0o7777,
            uid,
            gid,
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_file() {
            EntryKind::File(fs::read(&path).map_err(io_err("", &path))?)
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("", &path))?;
            let target = target
                .to_str()
                .ok_or_else(|| PackError::NonUtf8 { path: path.clone() })?
                .to_string();
            EntryKind::Symlink(target)
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = dev_major_minor(md.rdev());
            if ft.is_char_device() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        } else {
            let kind = if ft.is_fifo() { "fifo" } else { "socket" };
            return Err(PackError::Unsupported { path, kind });
        };
        let is_dir = kind == EntryKind::Directory;
        archive
            .add(&archive_path, kind, meta)
            .map_err(|source| PackError::Archive {
                path: path.clone(),
                cause: source,
            })?;
        if is_dir {
            walk(archive, &path, &archive_path, ownership)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_decoding() {
        // makedev(5, 1) and makedev(259, 70000) in glibc's encoding.
        assert_eq!(dev_major_minor(0x501), (5, 1));
        let major: u64 = 259;
        let minor: u64 = 70_000;
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(dev_major_minor(dev), (259, 70_000));
    }

    #[test]
    fn packs_a_small_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/cvmfs")).unwrap();
        fs::write(root.join("etc/cvmfs/default.conf"), "X=1\n").unwrap();
        std::os::unix::fs::symlink("/proc/mounts", root.join("etc/mtab")).unwrap();
        let mut a = Archive::new();
        add_tree(&mut a, root, Ownership::Root).unwrap();
        let names: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            ["etc", "etc/cvmfs", "etc/cvmfs/default.conf", "etc/mtab"]
        );
        assert_eq!(
            a.get("etc/mtab").unwrap().kind,
            EntryKind::Symlink("/proc/mounts".into())
        );
        assert_eq!(a.get("etc").unwrap().meta.uid, 0);
    }
}
