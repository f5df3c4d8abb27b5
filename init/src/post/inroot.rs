//! Path lookup inside the union root as the OS will see it after `chroot`: symbolic links on
//! the way are followed with absolute targets taken from the root, and `..` never leaves it.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed while resolving one path (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, read from the root) inside `root` and returns it
/// relative to `root`. The last component is followed only when `follow_last` is set; missing
/// intermediate directories are created when `create_dirs` is set (else: `NotFound`).
pub fn resolve(
    root: &Path,
    path: &Path,
    follow_last: bool,
    create_dirs: bool,
) -> io::Result<PathBuf> {
    let parts = |p: &Path| -> Vec<PathBuf> {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
            .map(|c| PathBuf::from(c.as_os_str()))
            .rev()
            .collect()
    };
    let mut pending = parts(path);
    let mut current = PathBuf::new();
    let mut followed = 0;
    while let Some(c) = pending.pop() {
        if c.as_os_str() == ".." {
            current.pop();
            continue;
        }
        let last = pending.is_empty();
        let candidate = current.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                pending.extend(parts(&target));
            }
            Ok(_) if last => current = candidate,
            Ok(m) if m.is_dir() => current = candidate,
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    candidate.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && last => current = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_dirs => {
                std::fs::create_dir(&full)?;
                current = candidate;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::fs::write(root.join("usr/lib64/libc.so.6"), "").unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        symlink("/usr/lib64", root.join("lib64")).unwrap();
        symlink("libc.so.6", root.join("usr/lib64/libc.so")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str, follow| resolve(root, Path::new(p), follow, false);
        assert_eq!(
            r("/lib64/libc.so", true).unwrap(),
            Path::new("usr/lib64/libc.so.6")
        );
        assert_eq!(
            r("/lib64/libc.so", false).unwrap(),
            Path::new("usr/lib64/libc.so")
        );
        assert_eq!(r("/up/usr/../etc/x", true).unwrap(), Path::new("etc/x"));
        assert_eq!(r("../../lib64", true).unwrap(), Path::new("usr/lib64"));
        assert!(r("/loop/x", true)
            .unwrap_err()
            .to_string()
            .contains("symbolic links"));
        assert!(r("/missing/x", true).is_err());
        assert_eq!(
            resolve(root, Path::new("new/dir/file"), false, true).unwrap(),
            Path::new("new/dir/file")
        );
        assert!(root.join("new/dir").is_dir());
    }
}
