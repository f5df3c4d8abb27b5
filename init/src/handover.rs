//! Hand-over (spec §13): debug mode (`cvmdebug`), `cvmssh`, then `switch_root` into the union
//! and `exec /sbin/init` with PID 1's own arguments.
//!
//! The steps that do not need PID 1 are separate functions with tests: the root password reset
//! (the `reset_root_password` command of the rescue shell), the device nodes of the new root,
//! and the deletion of the initramfs contents, which never leaves the initramfs file system.

use path_error::{io_err, PathError};
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::config::BootConfig;
use crate::layout::Layout;
use crate::{console, rescue};

/// Name under which the init binary acts as the `reset_root_password` command.
pub const RESET_ROOT_PASSWORD_NAME: &str = "reset_root_password";

/// The password `reset_root_password` sets (documented in the CernVM debugging guide).
pub const RESET_PASSWORD: &str = "password";
/// Where the new root's init lives.
pub const NEW_INIT: &str = "/sbin/init";

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("no line for root in {}", .0.display())]
    NoRootEntry(PathBuf),
    #[error("cannot compute the password hash: {0}")]
    Hash(String),
    #[error("refusing to delete the initramfs: / is not a ramfs/tmpfs")]
    NotInitramfs,
    #[error("Unable to invoke init! {0}")]
    Exec(String),
}

/// SHA-512 crypt (`$6$`) of `password` with a random salt.
pub fn crypt_sha512(password: &str) -> Result<String, HandoverError> {
    use sha_crypt::CustomizedPasswordHasher as _;
    let mut salt = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| HandoverError::Hash(format!("no random salt: {e}")))?;
    sha_crypt::ShaCrypt::SHA512
        .hash_password_customized(
            password.as_bytes(),
            &salt,
            None,
            None,
            sha_crypt::Params::RECOMMENDED,
        )
        .map(|h| h.to_string())
        .map_err(|e| HandoverError::Hash(e.to_string()))
}

/// Replaces the password field of the `root:` line; `None` when there is no such line.
pub fn replace_root_password(db: &str, hash: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(db.len() + hash.len());
    for line in db.split_inclusive('\n') {
        if !found && line.starts_with("root:") {
            let (body, nl) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            let mut fields: Vec<&str> = body.split(':').collect();
            if let Some(password) = fields.get_mut(1) {
                *password = hash;
                out.push_str(&fields.join(":"));
                out.push_str(nl);
                found = true;
                continue;
            }
        }
        out.push_str(line);
    }
    found.then_some(out)
}

/// The `reset_root_password` command (the init binary under that name, spec §13): the union
/// root is the first argument, `/root` by default. Returns the exit status.
pub fn reset_root_password_main(args: &[std::ffi::OsString]) -> i32 {
    let root = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    match reset_root_password(&root) {
        Ok(file) => {
            println!(
                "root password is '{RESET_PASSWORD}' (changed in {})",
                file.display()
            );
            0
        }
        Err(e) => {
            eprintln!("reset_root_password: {e}");
            1
        }
    }
}

/// `reset_root_password`: root's password in the union becomes [`RESET_PASSWORD`], in
/// `<root>/etc/shadow` (or `etc/passwd` without a shadow file). Returns the file changed.
pub fn reset_root_password(root: &Path) -> Result<PathBuf, HandoverError> {
    let shadow = root.join("etc/shadow");
    let file = if shadow.exists() {
        shadow
    } else {
        root.join("etc/passwd")
    };
    let text = std::fs::read_to_string(&file).map_err(io_err("cannot read", &file))?;
    let hash = crypt_sha512(RESET_PASSWORD)?;
    let new = replace_root_password(&text, &hash)
        .ok_or_else(|| HandoverError::NoRootEntry(file.clone()))?;
    let meta = std::fs::metadata(&file).map_err(io_err("cannot stat", &file))?;
    let tmp = file.with_extension("reset-root-password");
    std::fs::write(&tmp, new).map_err(io_err("cannot write", &tmp))?;
    // Owner and group too: Debian's /etc/shadow is root:shadow 0640 (read by unix_chkpwd).
    std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("cannot chown", &tmp))?;
    std::fs::set_permissions(
        &tmp,
        std::fs::Permissions::from_mode(meta.permissions().mode()),
    )
    .map_err(io_err("cannot chmod", &tmp))?;
    std::fs::rename(&tmp, &file).map_err(io_err("cannot replace", &file))?;
    Ok(file)
}

/// `/dev/console` (c 5 1, 0600) and `/dev/null` (c 1 3, 0666) in the new root, if missing.
pub fn create_device_nodes(new_root: &Path) -> Result<(), HandoverError> {
    let dev = new_root.join("dev");
    std::fs::create_dir_all(&dev).map_err(io_err("cannot create", &dev))?;
    for (name, major, minor, mode) in [("console", 5, 1, 0o600), ("null", 1, 3, 0o666)] {
        let path = dev.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(|e| HandoverError::Io(PathError::new("cannot create", path.clone(), e.into())))?;
        // mknod applies the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot chmod", &path))?;
    }
    Ok(())
}

/// Deletes everything below `dir` that is on the file system of `dir` itself, except `keep`
/// (the new root); other file systems mounted below are left alone (as `switch_root` does).
/// Returns the number of entries removed.
pub fn delete_same_fs(dir: &Path, keep: &Path) -> io::Result<u64> {
    let dev = std::fs::symlink_metadata(dir)?.dev();
    delete_below(dir, dev, keep)
}

fn delete_below(dir: &Path, dev: u64, keep: &Path) -> io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path == keep {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.dev() != dev {
            continue; // another file system (a mount point): not ours to delete
        }
        if m.is_dir() {
            n += delete_below(&path, dev, keep)?;
            // A directory still holding a mount point (or `keep`) stays.
            if std::fs::remove_dir(&path).is_ok() {
                n += 1;
            }
        } else if std::fs::remove_file(&path).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// True when `/` is the initramfs (ramfs or tmpfs), the only root this code may empty.
fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // ramfs' magic number (linux/magic.h); nix does not name it.
    const RAMFS_MAGIC: FsType = FsType(0x858458f6);
    statfs("/")
        .is_ok_and(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC)
}

/// What `cvmssh` says on an image without dropbear.
pub const NO_SSH_SERVER: &str = "cvmssh: this image has no SSH server: dropbear with its \
libraries (about 0.8 MB compressed) does not fit the 20 MiB image budget with the default \
kernel. Debug access is the rescue shell on the console (cvmdebug) instead";

/// `cvmssh`: dropbear in the foreground on the initramfs, blocking until it ends (§13).
/// Without dropbear: the message and, unless `cvmdebug` just offered one, the rescue shell on
/// the console, so the boot still stops for debugging as the user asked.
fn cvmssh(shell_offered: bool) {
    let dropbear = ["/usr/sbin/dropbear", "/sbin/dropbear", "/bin/dropbear"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let Some(dropbear) = dropbear else {
        if shell_offered {
            console::warn(NO_SSH_SERVER);
        } else {
            rescue::enter(NO_SSH_SERVER);
        }
        return;
    };
    let _ = std::fs::create_dir_all("/etc/dropbear");
    let _ = std::fs::write("/etc/shells", "/bin/sh\n/bin/bash\n");
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        if let Some(open) = replace_root_password(&passwd, "") {
            let _ = std::fs::write("/etc/passwd", open);
        }
    }
    if let Ok(ifs) = std::fs::read_dir("/sys/class/net") {
        let names: Vec<String> = ifs
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        console::info(&format!("network interfaces: {}", names.join(" ")));
    }
    console::info("Starting SSH server (dropbear) on the initramfs; kill it to continue booting");
    match std::process::Command::new(dropbear)
        .args(["-F", "-E", "-B", "-R"])
        .status()
    {
        Ok(s) => log::info!("dropbear exited ({s})"),
        Err(e) => console::warn(&format!("cannot start dropbear: {e}")),
    }
}

/// The hand-over: `cvmdebug` and `cvmssh` as `config` asks, then `switch_root` into
/// `layout.root`. Returns only on failure.
pub fn run(layout: &Layout, config: &BootConfig) -> Result<(), HandoverError> {
    if config.debug_shell {
        console::info("Debug mode: the union is at /root, the scratch disk at /root/mnt/.rw; 'reset_root_password' sets root's password to 'password'; exit the shell to boot");
        rescue::enter("Debug mode");
    }
    if config.ssh {
        cvmssh(config.debug_shell);
    }
    let new_root = layout.root.clone();
    // The timeline was saved by the sequencer after the post phase.
    console::restore_kmsg_ratelimit();
    for m in ["/sys", "/proc", "/dev/pts"] {
        if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
            log::warn!("cannot unmount {m}: {e}");
        }
    }
    let _ = std::fs::remove_dir("/dev/pts");
    create_device_nodes(&new_root)?;
    eprintln!();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    switch_root(&new_root, &args)
}

/// `switch_root`: empties the initramfs, moves `new_root` onto `/`, chroots, makes the console
/// stdio and executes `/sbin/init` with `args`. Returns only on failure.
pub fn switch_root(new_root: &Path, args: &[OsString]) -> Result<(), HandoverError> {
    if !root_is_initramfs() {
        return Err(HandoverError::NotInitramfs);
    }
    std::env::set_current_dir(new_root).map_err(io_err("cannot enter", new_root))?;
    match delete_same_fs(Path::new("/"), new_root) {
        Ok(n) => log::info!("deleted {n} initramfs entries"),
        Err(e) => log::warn!("cannot delete the initramfs contents: {e}"),
    }
    mount(
        Some(new_root),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| HandoverError::Exec(format!("cannot move {} to /: {e}", new_root.display())))?;
    nix::unistd::chroot(".").map_err(|e| HandoverError::Exec(format!("chroot: {e}")))?;
    nix::unistd::chdir("/").map_err(|e| HandoverError::Exec(format!("chdir: {e}")))?;
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
    let prog = CString::new(NEW_INIT).map_err(|e| HandoverError::Exec(e.to_string()))?;
    let mut argv = vec![prog.clone()];
    for a in args {
        argv.push(CString::new(a.as_bytes()).map_err(|e| HandoverError::Exec(e.to_string()))?);
    }
    let e = nix::unistd::execv(&prog, &argv).unwrap_err();
    Err(HandoverError::Exec(format!("{NEW_INIT}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_line_is_replaced_and_nothing_else() {
        let shadow = "root:!locked:19000:0:99999:7:::\nbin:*:19000::::::\nroot2:x:1::::::\n";
        let out = replace_root_password(shadow, "$6$s$h").unwrap();
        assert_eq!(
            out,
            "root:$6$s$h:19000:0:99999:7:::\nbin:*:19000::::::\nroot2:x:1::::::\n"
        );
        assert_eq!(replace_root_password("bin:x:1:1::/:/bin/sh\n", "h"), None);
        assert_eq!(replace_root_password("root:x", "h").unwrap(), "root:h");
    }

    /// The hash verified by independent implementations: OpenSSL (`openssl passwd -6` with the
    /// same salt) and glibc's crypt(3) through Python when available.
    #[test]
    fn reset_root_password_writes_a_sha512_crypt_that_others_verify() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(
            etc.join("shadow"),
            "root:*:19000:0:99999:7:::\nuser:$6$a$b:1::::::\n",
        )
        .unwrap();
        std::fs::set_permissions(etc.join("shadow"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        let changed = reset_root_password(t.path()).unwrap();
        assert_eq!(changed, etc.join("shadow"));
        let text = std::fs::read_to_string(&changed).unwrap();
        assert!(text.ends_with("\nuser:$6$a$b:1::::::\n"), "{text}");
        assert_eq!(std::fs::metadata(&changed).unwrap().mode() & 0o777, 0o400);
        assert_eq!(
            std::fs::read_to_string(etc.join("passwd")).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\n"
        );
        let hash = text
            .lines()
            .next()
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .to_string();
        // $6$rounds=5000$<salt>$<digest>
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(parts[..3], ["", "6", "rounds=5000"], "{hash}");
        let (salt, digest) = (parts[3], parts[4]);
        assert_eq!(salt.len(), 16);
        let out = std::process::Command::new("openssl")
            .args(["passwd", "-6", "-salt", salt, RESET_PASSWORD])
            .output()
            .expect("openssl");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("$6${salt}${digest}")
        );
        let wrong = std::process::Command::new("openssl")
            .args(["passwd", "-6", "-salt", salt, "Password"])
            .output()
            .unwrap();
        assert_ne!(
            String::from_utf8_lossy(&wrong.stdout).trim(),
            format!("$6${salt}${digest}")
        );
        let py = std::process::Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])",
                RESET_PASSWORD,
                &hash,
            ])
            .output();
        if let Some(py) = py.ok().filter(|o| o.status.success()) {
            assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "True");
        }
    }

    /// Debian's layout: `root:!*:` (locked by `passwd -l`), shadow owned by group `shadow`
    /// with mode 0640; the reset keeps owner, group and mode.
    #[test]
    fn reset_root_password_keeps_owner_group_and_mode_of_debians_shadow() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let shadow = etc.join("shadow");
        std::fs::write(
            &shadow,
            "root:!*:20785:0:99999:7:::
daemon:*:20785:0:99999:7:::
",
        )
        .unwrap();
        std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A group other than the current one, where the test may change it (root in CI).
        let gid = if nix::unistd::geteuid().is_root() {
            42
        } else {
            nix::unistd::getegid().as_raw()
        };
        std::os::unix::fs::chown(&shadow, None, Some(gid)).unwrap();
        reset_root_password(t.path()).unwrap();
        let meta = std::fs::metadata(&shadow).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o777), (gid, 0o640));
        let text = std::fs::read_to_string(&shadow).unwrap();
        assert!(text.starts_with("root:$6$"), "{text}");
        assert!(
            text.ends_with(":20785:0:99999:7:::\ndaemon:*:20785:0:99999:7:::\n"),
            "{text}"
        );
    }

    #[test]
    fn without_shadow_passwd_is_changed_and_missing_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(reset_root_password(t.path()).unwrap(), etc.join("passwd"));
        assert!(std::fs::read_to_string(etc.join("passwd"))
            .unwrap()
            .starts_with("root:$6$"));
        std::fs::write(etc.join("passwd"), "bin:x:1:1::/:/bin/sh\n").unwrap();
        let e = reset_root_password(t.path()).unwrap_err();
        assert!(matches!(e, HandoverError::NoRootEntry(_)), "{e}");
    }

    #[test]
    fn deletion_stays_on_one_file_system_and_spares_the_new_root() {
        let t = tempfile::tempdir().unwrap();
        let init = t.path().join("initramfs");
        for d in ["bin", "etc/cvmfs", "root/keep", "sys"] {
            std::fs::create_dir_all(init.join(d)).unwrap();
        }
        std::fs::write(init.join("bin/busybox"), "x").unwrap();
        std::fs::write(init.join("etc/cvmfs/x.conf"), "x").unwrap();
        std::fs::write(init.join("root/keep/os-file"), "keep").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", init.join("link")).unwrap();
        let mounted = nix::unistd::geteuid().is_root()
            && mount(
                Some("tmpfs"),
                &init.join("sys"),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .is_ok();
        if mounted {
            std::fs::write(init.join("sys/other-fs"), "x").unwrap();
        }
        let n = delete_same_fs(&init, &init.join("root")).unwrap();
        assert!(n >= 5, "{n}");
        assert!(!init.join("bin").exists() && !init.join("etc").exists());
        assert!(std::fs::symlink_metadata(init.join("link")).is_err());
        assert_eq!(
            std::fs::read_to_string(init.join("root/keep/os-file")).unwrap(),
            "keep"
        );
        if mounted {
            assert_eq!(
                std::fs::read_to_string(init.join("sys/other-fs")).unwrap(),
                "x"
            );
            umount2(&init.join("sys"), MntFlags::MNT_DETACH).unwrap();
        }
    }

    #[test]
    fn console_and_null_nodes() {
        if !nix::unistd::geteuid().is_root() {
            test_prereq::skip("mknod needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        create_device_nodes(t.path()).unwrap();
        let c = std::fs::metadata(t.path().join("dev/console")).unwrap();
        assert_eq!((c.rdev(), c.mode() & 0o7777), (makedev(5, 1), 0o600));
        let n = std::fs::metadata(t.path().join("dev/null")).unwrap();
        assert_eq!((n.rdev(), n.mode() & 0o7777), (makedev(1, 3), 0o666));
        create_device_nodes(t.path()).unwrap();
    }
}
