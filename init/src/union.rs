//! Union mount (spec §11.2): overlayfs with the scratch disk's `persistent` directory as the
//! upper layer over the OS tree of the repository, mounted at `/root`; then the scratch disk and
//! the repository are moved to `/root/mnt/.rw` and `/root/mnt/.ro`.
//!
//! Also here: the overlayfs whiteout conventions, and the one-time migration of an upper branch
//! written by the original AUFS boot loader.

use path_error::{io_err, PathError};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use crate::console;
use crate::cvmfs_start::CvmfsMount;
use crate::layout::Layout;

/// overlayfs work directory on the scratch disk, beside (never inside) `persistent`.
pub const WORK_DIR: &str = "overlay-work";
/// The upper layer on the scratch disk.
pub const UPPER_DIR: &str = "persistent";
/// overlayfs' opaque-directory attribute.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// AUFS names (§11.1).
pub const AUFS_WHITEOUT_PREFIX: &str = ".wh.";
pub const AUFS_OPAQUE: &str = ".wh..wh..opq";
const AUFS_HOUSEKEEPING: [&str; 3] = [".wh..wh.aufs", ".wh..wh.plnk", ".wh..wh.orph"];

#[derive(Debug, thiserror::Error)]
pub enum UnionError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("Unable to mount the union filesystem! ({0})")]
    Mount(nix::Error),
    #[error("cannot move {} to {}: {cause}", from.display(), to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        cause: nix::Error,
    },
}

/// True for an overlayfs whiteout: a character device with device number 0:0.
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Creates an overlayfs whiteout at `path`.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
}

/// Sets an extended attribute of `path` itself, not of a symlink's target (overlayfs'
/// `trusted.*` markers).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set(path, name, value)
}

/// Reads an extended attribute of `path` itself; `None` when it is not set.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    xattr::get(path, name)
}

/// Converts the AUFS markers in an upper branch to overlayfs ones (§11.2): `.wh.X` becomes a
/// whiteout `X` (unless `X` exists), `.wh..wh..opq` becomes the opaque attribute of its
/// directory, AUFS housekeeping entries are removed. Each action is logged; returns how many
/// entries were converted or removed.
pub fn migrate_aufs(upper: &Path, log: &mut dyn Write) -> io::Result<usize> {
    let mut count = 0;
    migrate_dir(upper, upper, log, &mut count)?;
    Ok(count)
}

fn migrate_dir(upper: &Path, dir: &Path, log: &mut dyn Write, count: &mut usize) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let bytes = name.as_bytes();
        let rel = path
            .strip_prefix(upper)
            .unwrap_or(&path)
            .display()
            .to_string();
        if dir == upper && AUFS_HOUSEKEEPING.iter().any(|h| h.as_bytes() == bytes) {
            let r = if std::fs::symlink_metadata(&path)?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            writeln!(log, "remove /{rel}{}", failed_suffix(&r))?;
            *count += 1;
        } else if bytes == AUFS_OPAQUE.as_bytes() {
            let r = set_xattr(dir, OPAQUE_XATTR, b"y").and_then(|()| std::fs::remove_file(&path));
            writeln!(
                log,
                "opaque /{}{}",
                parent_rel(upper, dir),
                failed_suffix(&r)
            )?;
            *count += 1;
        } else if let Some(target) = bytes.strip_prefix(AUFS_WHITEOUT_PREFIX.as_bytes()) {
            if target.starts_with(AUFS_WHITEOUT_PREFIX.as_bytes()) {
                // Some other AUFS-internal name below the root: not user data.
                let r = std::fs::remove_file(&path);
                writeln!(log, "remove /{rel}{}", failed_suffix(&r))?;
            } else {
                let victim = dir.join(std::ffi::OsStr::from_bytes(target));
                let r = if std::fs::symlink_metadata(&victim).is_ok() {
                    Ok(())
                } else {
                    make_whiteout(&victim)
                }
                .and_then(|()| std::fs::remove_file(&path));
                writeln!(
                    log,
                    "whiteout /{}{}",
                    victim.strip_prefix(upper).unwrap_or(&victim).display(),
                    failed_suffix(&r)
                )?;
            }
            *count += 1;
        } else if std::fs::symlink_metadata(&path)?.is_dir() {
            migrate_dir(upper, &path, log, count)?;
        }
    }
    Ok(())
}

fn parent_rel(upper: &Path, dir: &Path) -> String {
    dir.strip_prefix(upper).unwrap_or(dir).display().to_string()
}

fn failed_suffix(r: &io::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!(" ... FAILED ({e})"),
    }
}

/// True when the upper branch still holds AUFS markers at its root.
pub fn has_aufs_markers(upper: &Path) -> bool {
    AUFS_HOUSEKEEPING
        .iter()
        .any(|h| std::fs::symlink_metadata(upper.join(h)).is_ok())
}

/// Mounts overlayfs at `target` with the given layers; `work` must be empty and on the same
/// file system as `upper`.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), UnionError> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(UnionError::Mount)
}

/// The union over `lower` at `layout.root`, then the scratch disk and the repository moved
/// under `<root>/mnt/` (they stay in use by the union through references, not paths).
pub fn assemble(layout: &Layout, lower: &Path) -> Result<(), UnionError> {
    let upper = layout.root_rw.join(UPPER_DIR);
    let work = layout.root_rw.join(WORK_DIR);
    for d in [&upper, &work, &layout.root] {
        std::fs::create_dir_all(d).map_err(io_err("cannot create", d))?;
    }
    if has_aufs_markers(&upper) {
        let log_path = layout.aux().join("aufs-migration.log");
        let mut log =
            std::fs::File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
        let n = migrate_aufs(&upper, &mut log).map_err(io_err("cannot migrate", &upper))?;
        console::info(&format!("converted {n} AUFS entries to overlayfs"));
    }
    mount_overlay(lower, &upper, &work, &layout.root)?;
    std::fs::set_permissions(&layout.root, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("cannot chmod", &layout.root))?;
    for (from, name) in [(&layout.root_rw, ".rw"), (&layout.root_ro, ".ro")] {
        let to = layout.root.join("mnt").join(name);
        std::fs::create_dir_all(&to).map_err(io_err("cannot create", &to))?;
        mount(
            Some(from.as_path()),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| UnionError::Move {
            from: from.clone(),
            to: to.clone(),
            cause: source,
        })?;
    }
    Ok(())
}

/// The union phase: the OS root of `cvmfs` under the scratch disk's upper layer on
/// `layout.root`.
pub fn mount_union(layout: &Layout, cvmfs: &CvmfsMount) -> Result<(), UnionError> {
    let lower = cvmfs.os_root();
    console::begin("Mounting union file system...");
    let r = assemble(layout, &lower);
    if r.is_ok() {
        console::check();
    } else {
        console::failed();
    }
    r
}
