//! Conflict resolution between a new OS snapshot and the user's upper layer (spec §10.2: the
//! original's `resolve_aufs_conflicts`, with the overlayfs adaptation of §11.2).
//!
//! The new read-only tree is walked depth first. For each entry `P`:
//! 1. a whiteout of `P` in the upper layer (overlayfs 0:0 character device, or an AUFS
//!    `.wh.<name>` file) is deleted: what the user deleted comes back (`restore`);
//! 2. a file or symlink of the new tree that also exists in the upper layer keeps the user's copy
//!    under `/etc`, `/var` and `/root` except `/var/lib/rpm` (`preserve`), and anywhere else
//!    the upper copy is deleted so that the new version shows (`rebase`);
//! 3. directories are entered whatever the upper layer holds.
//!
//! Entries only in the upper layer are never touched.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

use crate::union::{is_whiteout, AUFS_WHITEOUT_PREFIX};

/// Counts of what happened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub restored: u64,
    pub preserved: u64,
    pub rebased: u64,
    pub failed: u64,
    pub visited: u64,
}

/// True for paths where the user's copy wins (`/etc`, `/var`, `/root`, but not `/var/lib/rpm`).
pub fn user_copy_wins(rel: &str) -> bool {
    let top = rel
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    matches!(top, "etc" | "var" | "root")
        && !(rel == "/var/lib/rpm" || rel.starts_with("/var/lib/rpm/"))
}

fn outcome(
    log: &mut dyn Write,
    what: &str,
    rel: &str,
    r: io::Result<()>,
    n: &mut Resolution,
) -> io::Result<()> {
    match r {
        Ok(()) => writeln!(log, "{what} {rel}"),
        Err(e) => {
            n.failed += 1;
            writeln!(log, "{what} {rel} ... FAILED ({e})")
        }
    }
}

/// Resolves the upper layer `rw` against the new tree `ro`, logging one line per action.
pub fn resolve(ro: &Path, rw: &Path, log: &mut dyn Write) -> io::Result<Resolution> {
    let mut n = Resolution::default();
    walk(ro, rw, "", log, &mut n)?;
    Ok(n)
}

fn walk(
    ro: &Path,
    rw: &Path,
    dir: &str,
    log: &mut dyn Write,
    n: &mut Resolution,
) -> io::Result<()> {
    let ro_dir = ro.join(dir.trim_start_matches('/'));
    let rw_dir = rw.join(dir.trim_start_matches('/'));
    for entry in std::fs::read_dir(&ro_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let rel = format!("{dir}/{}", name.to_string_lossy());
        let ft = entry.file_type()?;
        n.visited += 1;
        if n.visited % 1000 == 0 {
            eprint!(".");
        }
        let upper = rw_dir.join(&name);

        // 1. Restore what the user deleted: AUFS whiteout beside it, overlayfs whiteout in place.
        let mut aufs = OsString::from(AUFS_WHITEOUT_PREFIX);
        aufs.push(&name);
        let aufs = rw_dir.join(aufs);
        if std::fs::symlink_metadata(&aufs).is_ok() {
            n.restored += 1;
            outcome(log, "restore", &rel, std::fs::remove_file(&aufs), n)?;
        }
        if std::fs::symlink_metadata(&upper).is_ok_and(|m| is_whiteout(&m)) {
            n.restored += 1;
            outcome(log, "restore", &rel, std::fs::remove_file(&upper), n)?;
        }

        if ft.is_file() || ft.is_symlink() {
            // 2. Modified in the upper layer.
            if std::fs::symlink_metadata(&upper).is_ok() {
                if user_copy_wins(&rel) {
                    n.preserved += 1;
                    writeln!(log, "preserve {rel}")?;
                } else {
                    n.rebased += 1;
                    outcome(log, "rebase", &rel, std::fs::remove_file(&upper), n)?;
                }
            }
        } else if ft.is_dir() {
            // 3.
            walk(ro, rw, &rel, log, n)?;
        } else {
            // 4.
            eprintln!("rebase: {rel}: unexpected file type in the OS tree, left alone");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_paths_keep_the_users_copy() {
        for p in ["/etc/passwd", "/var/log/x", "/root/.bashrc", "/etc/a/b"] {
            assert!(user_copy_wins(p), "{p}");
        }
        for p in [
            "/usr/bin/x",
            "/var/lib/rpm/Packages",
            "/var/lib/rpm",
            "/etcetera/x",
            "/bin/sh",
            "/rootfs/x",
        ] {
            assert!(!user_copy_wins(p), "{p}");
        }
        assert!(user_copy_wins("/var/lib/rpmx/y"));
    }

    /// Builds `ro` and `rw` trees; files are written with the given contents.
    fn tree(base: &Path, files: &[(&str, &str)]) {
        for (p, c) in files {
            let path = base.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
    }

    #[test]
    fn rules_of_the_original_on_a_table_of_cases() {
        let t = tempfile::tempdir().unwrap();
        let (ro, rw) = (t.path().join("ro"), t.path().join("rw"));
        tree(
            &ro,
            &[
                ("etc/passwd", "new"),
                ("etc/motd", "new"),
                ("var/lib/rpm/Packages", "new"),
                ("var/log/messages", "new"),
                ("usr/bin/tool", "new"),
                ("usr/bin/other", "new"),
                ("usr/lib/gone-by-aufs", "new"),
                ("etc/gone-by-aufs", "new"),
                ("root/.bashrc", "new"),
                ("usr/share/dir-vs-file/x", "new"),
                ("usr/share/file-vs-dir", "new"),
            ],
        );
        tree(
            &rw,
            &[
                ("etc/passwd", "user"),
                ("var/lib/rpm/Packages", "user"),
                ("var/log/messages", "user"),
                ("usr/bin/tool", "user"),
                ("usr/lib/.wh.gone-by-aufs", ""),
                ("etc/.wh.gone-by-aufs", ""),
                ("root/.bashrc", "user"),
                ("usr/local/only-user", "user"),
                ("usr/share/file-vs-dir/inner", "user"),
            ],
        );
        std::os::unix::fs::symlink("elsewhere", rw.join("usr/bin/other")).unwrap();
        let mut log = Vec::new();
        let n = resolve(&ro, &rw, &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        let mut lines: Vec<&str> = log.lines().collect();
        lines.sort();
        let mut expected = vec![
            "preserve /etc/passwd",
            "rebase /var/lib/rpm/Packages",
            "preserve /var/log/messages",
            "rebase /usr/bin/tool",
            "rebase /usr/bin/other",
            "restore /usr/lib/gone-by-aufs",
            "restore /etc/gone-by-aufs",
            "preserve /root/.bashrc",
        ];
        expected.sort();
        let failed: Vec<&&str> = lines.iter().filter(|l| l.contains("FAILED")).collect();
        assert_eq!(failed.len(), 1, "{log}");
        assert!(
            failed[0].starts_with("rebase /usr/share/file-vs-dir ... FAILED ("),
            "{log}"
        );
        lines.retain(|l| !l.contains("FAILED"));
        assert_eq!(lines, expected, "{log}");
        assert_eq!((n.restored, n.preserved, n.rebased, n.failed), (2, 3, 4, 1));
        assert_eq!(
            std::fs::read_to_string(rw.join("etc/passwd")).unwrap(),
            "user"
        );
        assert!(!rw.join("usr/bin/tool").exists());
        assert!(std::fs::symlink_metadata(rw.join("usr/bin/other")).is_err());
        assert!(!rw.join("usr/lib/.wh.gone-by-aufs").exists());
        assert_eq!(
            std::fs::read_to_string(rw.join("usr/local/only-user")).unwrap(),
            "user"
        );
        assert!(
            rw.join("usr/share/file-vs-dir/inner").exists(),
            "a directory is not deleted"
        );
    }

    #[test]
    fn overlay_whiteouts_are_restored_before_the_modified_check() {
        if unsafe { libc::geteuid() } != 0 {
            test_prereq::skip("mknod needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (ro, rw) = (t.path().join("ro"), t.path().join("rw"));
        tree(&ro, &[("etc/hosts", "new"), ("usr/bin/tool", "new")]);
        std::fs::create_dir_all(rw.join("etc")).unwrap();
        std::fs::create_dir_all(rw.join("usr/bin")).unwrap();
        crate::union::make_whiteout(&rw.join("etc/hosts")).unwrap();
        crate::union::make_whiteout(&rw.join("usr/bin/tool")).unwrap();
        let mut log = Vec::new();
        let n = resolve(&ro, &rw, &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        // Under /etc the whiteout must not be "preserved"; elsewhere it is not a "rebase".
        assert!(
            log.contains("restore /etc/hosts\n") && log.contains("restore /usr/bin/tool\n"),
            "{log}"
        );
        assert!(
            !log.contains("preserve") && !log.contains("rebase"),
            "{log}"
        );
        assert_eq!(n.restored, 2);
        assert!(std::fs::symlink_metadata(rw.join("etc/hosts")).is_err());
        assert!(std::fs::symlink_metadata(rw.join("usr/bin/tool")).is_err());
    }
}
