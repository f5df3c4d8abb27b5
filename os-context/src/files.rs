//! cloud-config `write_files`: the content with its mode and owner, created atomically (a new
//! file renamed over the old one) unless it is appended to.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use crate::accounts::{AccountError, Root};
use crate::cloud_config::WriteFile;

fn err(path: &str, what: &str, e: impl std::fmt::Display) -> AccountError {
    AccountError::Invalid(format!("write_files: {path}: {what}: {e}"))
}

/// `user[:group]` as numeric ids in `root` (the group defaults to the user's primary group).
fn owner_ids(root: &Root, f: &WriteFile) -> Result<(u32, u32), AccountError> {
    let (user, group) = match f.owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (f.owner.as_str(), None),
    };
    let entry = root
        .passwd_entry(user)?
        .ok_or_else(|| err(&f.path, "no such owner", user))?;
    let gid = match group {
        Some(g) => root
            .group_id(g)?
            .ok_or_else(|| err(&f.path, "no such group", g))?,
        None => entry.gid,
    };
    Ok((entry.uid, gid))
}

/// Writes `f` below `root`.
pub fn write(root: &Root, f: &WriteFile) -> Result<(), AccountError> {
    let (uid, gid) = owner_ids(root, f)?;
    let target = root.path(&f.path);
    if target.is_dir() {
        return Err(err(&f.path, "is", "a directory"));
    }
    let dir = target
        .parent()
        .ok_or_else(|| err(&f.path, "has no parent", "/"))?;
    fs::create_dir_all(dir).map_err(|e| err(&f.path, "cannot create its directory", e))?;
    let chown = |p: &std::path::Path| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| err(&f.path, "cannot chown", e))
    };
    if f.append {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(f.mode)
            .open(&target)
            .map_err(|e| err(&f.path, "cannot open", e))?;
        file.write_all(&f.content)
            .map_err(|e| err(&f.path, "cannot append", e))?;
        return chown(&target);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.cernvm-context"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(&f.path, "cannot create", e))?;
    file.write_all(&f.content)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(&f.path, "cannot write", e))?;
    chown(&tmp)?;
    // After chown, which clears set-id bits.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(f.mode))
        .map_err(|e| err(&f.path, "cannot chmod", e))?;
    fs::rename(&tmp, &target).map_err(|e| err(&f.path, "cannot replace", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let my_gid = nix::unistd::getegid().as_raw();
        fs::write(
            t.path().join("etc/passwd"),
            format!("root:x:0:0::/root:/bin/sh\nme:x:{me}:{my_gid}::/home/me:/bin/sh\n"),
        )
        .unwrap();
        fs::write(
            t.path().join("etc/group"),
            format!("root:x:0:\nmine:x:{my_gid}:\n"),
        )
        .unwrap();
        let r = Root::new(t.path());
        (t, r)
    }

    fn wf(path: &str, content: &str, owner: &str, mode: u32, append: bool) -> WriteFile {
        WriteFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            owner: owner.into(),
            mode,
            append,
            defer: false,
        }
    }

    #[test]
    fn writes_replaces_and_appends_with_mode_and_owner() {
        let (_t, r) = root();
        write(&r, &wf("/opt/app/conf", "one\n", "me:mine", 0o640, false)).unwrap();
        let p = r.path("/opt/app/conf");
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
        write(&r, &wf("/opt/app/conf", "two\n", "me", 0o600, false)).unwrap();
        write(&r, &wf("/opt/app/conf", "three\n", "me", 0o600, true)).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two\nthree\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn unknown_owners_and_directories_are_refused() {
        let (_t, r) = root();
        let e = write(&r, &wf("/x", "", "nobody", 0o644, false)).unwrap_err();
        assert!(e.to_string().contains("no such owner"), "{e}");
        let e = write(&r, &wf("/x", "", "me:nogroup", 0o644, false)).unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
        let e = write(&r, &wf("/etc", "", "me", 0o644, false)).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        assert!(!r.path("/x").exists());
    }
}
