//! Rebase on a new OS snapshot (spec §10): when a fresh boot mounted a new snapshot under an
//! existing upper layer, the upper layer is reconciled with it (conflicts, account databases),
//! everything replaced is backed up and logged in `aux/`, and CernVM-FS is mounted again so that
//! the new uid/gid maps apply.

pub mod accounts;
pub mod conflicts;

use path_error::{io_err, PathError};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::console;
use crate::cvmfs_start::{CvmfsError, CvmfsMount};
use crate::layout::Layout;

/// The account files merged, in the original's order.
pub const ACCOUNT_FILES: [&str; 4] = ["passwd", "group", "shadow", "gshadow"];

#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Remount(#[from] CvmfsError),
}

/// The rebase id: UTC time in ISO 8601 with seconds, e.g. `2021-05-17T10:00:00+0000`.
pub fn rebase_id(unix: i64) -> String {
    let (y, m, d, h) = cvmfs_config::calendar::utc_fields(unix);
    let secs = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{h:02}:{:02}:{:02}+0000",
        (secs / 60) % 60,
        secs % 60
    )
}

/// True when the upper layer holds anything.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// What a rebase did.
#[derive(Debug)]
pub struct Report {
    pub conflicts: conflicts::Resolution,
    /// `None` when the account merge failed (its log says why).
    pub accounts: Option<accounts::Merged>,
}

/// Reconciles `upper` with the new tree `os_root`; logs go to `aux/rebase-<id>.log` and
/// `aux/account_merge-<id>.log`, backups to `<file>.backup.<id>`.
pub fn rebase(
    os_root: &Path,
    upper: &Path,
    aux: &Path,
    id: &str,
    root_hash: &str,
) -> Result<Report, RebaseError> {
    console::begin("Rebasing system to new version ...");
    let log_path = aux.join(format!("rebase-{id}.log"));
    let mut log = std::fs::File::create(&log_path).map_err(io_err("cannot create", &log_path))?;
    let resolution = conflicts::resolve(os_root, upper, &mut log)
        .and_then(|r| writeln!(log, "Rebased to {root_hash}").map(|()| r));
    let resolution = match resolution {
        Ok(r) => {
            console::check();
            r
        }
        Err(e) => {
            console::failed();
            return Err(RebaseError::Io(PathError::new(
                "cannot rebase onto",
                os_root.to_path_buf(),
                e,
            )));
        }
    };

    console::begin("Merging account databases...");
    let ro_etc = os_root.join("etc");
    let rw_etc = upper.join("etc");
    std::fs::create_dir_all(&rw_etc).map_err(io_err("cannot create", &rw_etc))?;
    for f in ACCOUNT_FILES {
        let (from, to) = (ro_etc.join(f), rw_etc.join(f));
        if std::fs::symlink_metadata(&to).is_err() && from.is_file() {
            std::fs::copy(&from, &to).map_err(io_err("cannot copy up", &to))?;
        }
    }
    let (uid_map, gid_map) = (aux.join("uid_map"), aux.join("gid_map"));
    let mut backups: Vec<PathBuf> = vec![uid_map.clone(), gid_map.clone()];
    backups.extend(ACCOUNT_FILES.iter().map(|f| rw_etc.join(f)));
    for file in backups.iter().filter(|f| f.is_file()) {
        let mut name = file.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".backup.{id}"));
        let to = file.with_file_name(name);
        std::fs::copy(file, &to).map_err(io_err("cannot back up to", &to))?;
    }
    let merge_log_path = aux.join(format!("account_merge-{id}.log"));
    let mut merge_log =
        std::fs::File::create(&merge_log_path).map_err(io_err("cannot create", &merge_log_path))?;
    let merged = match accounts::merge_files(&ro_etc, &rw_etc, &uid_map, &gid_map) {
        Ok(m) => {
            for line in &m.log {
                let _ = writeln!(merge_log, "{line}");
            }
            Some(m)
        }
        Err(e) => {
            let _ = writeln!(merge_log, "account merge failed: {e}");
            None
        }
    };
    for f in ACCOUNT_FILES {
        let file = rw_etc.join(f);
        let merged_file = rw_etc.join(format!("{f}.merged"));
        if file.exists() && merged_file.exists() {
            std::fs::rename(&merged_file, &file).map_err(io_err("cannot replace", &file))?;
        }
    }
    for f in ["shadow", "gshadow"] {
        let file = rw_etc.join(f);
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400))
                .map_err(io_err("cannot chmod", &file))?;
        }
    }
    if merged.is_some() {
        console::check();
    } else {
        console::failed();
        console::warn(&format!("see {}", merge_log_path.display()));
    }
    Ok(Report {
        conflicts: resolution,
        accounts: merged,
    })
}

/// The rebase phase: reconciles the upper layer with a newly pinned snapshot of `cvmfs` and
/// mounts it again (which is why the mount is borrowed mutably). Returns the report, `None`
/// when there was nothing to rebase (a pinned boot, or an empty upper layer).
pub fn run(layout: &Layout, cvmfs: &mut CvmfsMount) -> Result<Option<Report>, RebaseError> {
    let upper = layout.root_rw.join(crate::union::UPPER_DIR);
    if !cvmfs.fresh || is_empty_dir(&upper) {
        return Ok(None);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let id = rebase_id(now);
    let report = rebase(
        &cvmfs.os_root(),
        &upper,
        &layout.aux(),
        &id,
        &cvmfs.snapshot.root_hash,
    )?;
    log::info!("rebase {id}: {:?}", report.conflicts);
    cvmfs.remount(&layout.initramfs.join("etc/resolv.conf"))?;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn id_is_iso8601_utc() {
        assert_eq!(rebase_id(0), "1970-01-01T00:00:00+0000");
        assert_eq!(rebase_id(1_621_245_600), "2021-05-17T10:00:00+0000");
        assert_eq!(rebase_id(1_621_245_659), "2021-05-17T10:00:59+0000");
    }

    #[test]
    fn full_rebase_logs_backs_up_and_merges() {
        let t = tempfile::tempdir().unwrap();
        let (ro, upper, aux) = (
            t.path().join("ro"),
            t.path().join("upper"),
            t.path().join("aux"),
        );
        for d in [
            ro.join("etc"),
            ro.join("usr/bin"),
            upper.join("usr/bin"),
            aux.clone(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            ro.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnew:x:5:5::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(ro.join("etc/group"), "root:x:0:\nnew:x:5:\n").unwrap();
        std::fs::write(ro.join("etc/shadow"), "root:*:1::::::\nnew:!!:1::::::\n").unwrap();
        std::fs::write(ro.join("usr/bin/tool"), "v2").unwrap();
        std::fs::write(upper.join("usr/bin/tool"), "old copy-up").unwrap();
        // The user's database (as copied up by an earlier boot) has uid/gid 5 taken.
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(
            upper.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nme:x:5:5::/home/me:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(upper.join("etc/group"), "root:x:0:\nme:x:5:\n").unwrap();
        std::fs::write(aux.join("uid_map"), "").unwrap();

        let r = rebase(&ro, &upper, &aux, "2021-05-17T10:00:00+0000", "abc").unwrap();
        assert_eq!(r.conflicts.rebased, 1);
        let log = std::fs::read_to_string(aux.join("rebase-2021-05-17T10:00:00+0000.log")).unwrap();
        assert!(log.contains("preserve /etc/passwd\n"), "{log}");
        assert!(log.contains("rebase /usr/bin/tool\n"), "{log}");
        assert!(log.ends_with("Rebased to abc\n"), "{log}");
        assert!(!upper.join("usr/bin/tool").exists());
        // shadow was copied up from the new OS, then merged; passwd merged with a new uid.
        assert_eq!(
            std::fs::read_to_string(upper.join("etc/passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\nme:x:5:5::/home/me:/bin/sh\nnew:x:6:6::/:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_to_string(aux.join("uid_map")).unwrap(),
            "5 6\n"
        );
        assert_eq!(
            std::fs::read_to_string(aux.join("gid_map")).unwrap(),
            "5 6\n"
        );
        assert_eq!(
            std::fs::metadata(upper.join("etc/shadow")).unwrap().mode() & 0o777,
            0o400
        );
        assert_eq!(
            std::fs::read_to_string(upper.join("etc/passwd.backup.2021-05-17T10:00:00+0000"))
                .unwrap(),
            "root:x:0:0::/root:/bin/sh\nme:x:5:5::/home/me:/bin/sh\n"
        );
        assert!(aux.join("uid_map.backup.2021-05-17T10:00:00+0000").exists());
        assert!(
            !aux.join("gid_map.backup.2021-05-17T10:00:00+0000").exists(),
            "no gid_map before"
        );
        let mlog = std::fs::read_to_string(aux.join("account_merge-2021-05-17T10:00:00+0000.log"))
            .unwrap();
        assert!(mlog.contains("user new: uid 5 -> 6"), "{mlog}");
        assert!(!upper.join("etc/passwd.merged").exists());
    }

    #[test]
    fn failed_merge_keeps_files_and_empties_maps() {
        let t = tempfile::tempdir().unwrap();
        let (ro, upper, aux) = (
            t.path().join("ro"),
            t.path().join("upper"),
            t.path().join("aux"),
        );
        for d in [ro.join("etc"), upper.join("etc"), aux.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(ro.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(ro.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(
            upper.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\ngarbage\n",
        )
        .unwrap();
        std::fs::write(upper.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(aux.join("uid_map"), "7 8\n").unwrap();
        let r = rebase(&ro, &upper, &aux, "ID", "h").unwrap();
        assert!(r.accounts.is_none());
        assert_eq!(
            std::fs::read_to_string(upper.join("etc/passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\ngarbage\n"
        );
        assert_eq!(std::fs::read_to_string(aux.join("uid_map")).unwrap(), "");
        assert_eq!(
            std::fs::read_to_string(aux.join("uid_map.backup.ID")).unwrap(),
            "7 8\n"
        );
        let mlog = std::fs::read_to_string(aux.join("account_merge-ID.log")).unwrap();
        assert!(mlog.contains("passwd line 2: expected 7"), "{mlog}");
    }
}
