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

/// `db` (passwd or shadow) with the first `root:` line whose fields `edit` accepts rewritten by
/// it; `None` when no such line is there.
fn edit_root_line<'a>(
    db: &'a str,
    mut edit: impl FnMut(&mut Vec<&'a str>) -> bool,
) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(db.len() + 64);
    for line in db.split_inclusive('\n') {
        if !found && line.starts_with("root:") {
            let (body, nl) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            let mut fields: Vec<&str> = body.split(':').collect();
            if edit(&mut fields) {
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

/// Replaces the password field of the `root:` line; `None` when there is no such line.
pub fn replace_root_password(db: &str, hash: &str) -> Option<String> {
    edit_root_line(db, |fields| match fields.get_mut(1) {
        Some(password) => {
            *password = hash;
            true
        }
        None => false,
    })
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

/// How `cvmssh`'s message on an image without dropbear begins.
pub const NO_SSH_SERVER: &str = "cvmssh: this image has no SSH server";
/// Why the image has no SSH server, written by the image builder (`scripts/build-initrd`).
pub const NO_SSH_SERVER_REASON: &str = "etc/cernvm/no-ssh-server";
/// Where the image's dropbear may be (`initramfs/ucernvm.manifest` puts it in `usr/sbin`).
const DROPBEAR_PATHS: [&str; 3] = ["usr/sbin/dropbear", "sbin/dropbear", "bin/dropbear"];
/// The initramfs root's home while dropbear runs: `/root` is the OS's union, whose
/// `/root/.ssh` must not get the initramfs's keys.
pub const CVMSSH_HOME: &str = "home/root";

/// `cvmssh`'s message on an image without dropbear: the image's reason, if it has one.
pub fn no_ssh_server_message(reason: Option<&str>) -> String {
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("the initramfs was built without dropbear (/usr/sbin/dropbear)");
    format!(
        "{NO_SSH_SERVER}: {reason}. Debug access is the rescue shell on the console (cvmdebug) \
         instead"
    )
}

/// `passwd` with the `root:` line's home set to `home` and its password removed (`blank`,
/// spec §13: dropbear -B lets root in without one) or made one nothing matches (`*`: keys
/// only; not `!`, which dropbear takes for a locked account); `None` without a `root:` line.
pub fn cvmssh_passwd(passwd: &str, home: &str, blank: bool) -> Option<String> {
    edit_root_line(passwd, |fields| {
        if fields.len() != 7 {
            return false;
        }
        for (i, value) in [(1, if blank { "" } else { "*" }), (5, home)] {
            if let Some(f) = fields.get_mut(i) {
                *f = value;
            }
        }
        true
    })
}

/// Prepares the initramfs under `root` for dropbear (spec §13): `/etc/dropbear` for the host
/// keys dropbear makes on demand, `/etc/shells`, root's home in the initramfs, and there
/// `.ssh/authorized_keys` with `keys` (0600 in a 0700 directory, as dropbear insists). Root
/// has no password, as in the original, unless there are keys: then only they let root in
/// (a blank password would let anyone in, whatever the keys). Returns the home directory.
pub fn prepare_cvmssh(root: &Path, keys: &[String]) -> Result<PathBuf, HandoverError> {
    let keys_dir = root.join("etc/dropbear");
    std::fs::create_dir_all(&keys_dir).map_err(io_err("cannot create", &keys_dir))?;
    std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot chmod", &keys_dir))?;
    let shells = root.join("etc/shells");
    std::fs::write(&shells, "/bin/sh\n/bin/bash\n").map_err(io_err("cannot write", &shells))?;
    let passwd = root.join("etc/passwd");
    let text = std::fs::read_to_string(&passwd).map_err(io_err("cannot read", &passwd))?;
    let open = cvmssh_passwd(&text, &format!("/{CVMSSH_HOME}"), keys.is_empty())
        .ok_or_else(|| HandoverError::NoRootEntry(passwd.clone()))?;
    std::fs::write(&passwd, open).map_err(io_err("cannot write", &passwd))?;
    let home = root.join(CVMSSH_HOME);
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).map_err(io_err("cannot create", &ssh))?;
    for dir in [&home, &ssh] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod", dir))?;
    }
    let file = ssh.join("authorized_keys");
    let mut text = keys.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&file, text).map_err(io_err("cannot write", &file))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", &file))?;
    Ok(home)
}

/// The network interfaces with their IPv4 addresses, for the console (`eth0 10.0.2.15/24`).
fn interface_list() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut addrs: Vec<(String, String)> = Vec::new();
    if let Ok(all) = nix::ifaddrs::getifaddrs() {
        for a in all {
            if let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let prefix = a
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in())
                    .map(|m| m.ip().to_bits().count_ones())
                    .unwrap_or(32);
                addrs.push((a.interface_name, format!("{}/{prefix}", v4.ip())));
            }
        }
    }
    names
        .iter()
        .map(|n| {
            let mine: Vec<&str> = addrs
                .iter()
                .filter(|(i, _)| i == n)
                .map(|(_, a)| a.as_str())
                .collect();
            if mine.is_empty() {
                n.clone()
            } else {
                format!("{n} {}", mine.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cvmssh`: dropbear in the foreground on the initramfs, blocking until it ends (§13), with
/// root's blank password, or only the user data's `keys` if it has any. Without dropbear: the image's reason
/// and, unless `cvmdebug` just offered one, the rescue shell on the console, so the boot still
/// stops for debugging as the user asked.
fn cvmssh(shell_offered: bool, keys: &[String]) {
    let root = Path::new("/");
    let Some(dropbear) = DROPBEAR_PATHS
        .into_iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
    else {
        let reason = std::fs::read_to_string(root.join(NO_SSH_SERVER_REASON)).ok();
        let message = no_ssh_server_message(reason.as_deref());
        if shell_offered {
            console::warn(&message);
        } else {
            rescue::enter(&message);
        }
        return;
    };
    match prepare_cvmssh(root, keys) {
        Ok(home) => console::info(&format!(
            "cvmssh: root logs in {}; home {}",
            match keys.len() {
                0 => "without a password".to_string(),
                1 => "with the ssh key of the user data only".to_string(),
                n => format!("with the {n} ssh keys of the user data only"),
            },
            home.display()
        )),
        Err(e) => console::warn(&format!("cvmssh: {e}")),
    }
    console::info(&format!("network interfaces: {}", interface_list()));
    console::info("Starting SSH server (dropbear) on the initramfs; kill it to continue booting");
    // -B: blank passwords allowed; -s: no password logins (keys only).
    let password = if keys.is_empty() { "-B" } else { "-s" };
    match std::process::Command::new(&dropbear)
        .args(["-F", "-E", "-R", password])
        .status()
    {
        Ok(s) => console::info(&format!("cvmssh: dropbear exited ({s}); booting on")),
        Err(e) => console::warn(&format!("cannot start {}: {e}", dropbear.display())),
    }
}

/// The hand-over: `cvmdebug` and `cvmssh` as `config` asks, then `switch_root` into
/// `layout.root`; `before_exec` runs once the initramfs is emptied, right before the OS's
/// init starts. Returns only on failure.
pub fn run(
    layout: &Layout,
    config: &BootConfig,
    before_exec: &mut dyn FnMut(),
) -> Result<(), HandoverError> {
    if config.debug_shell {
        console::info("Debug mode: the union is at /root, the scratch disk at /root/mnt/.rw; 'reset_root_password' sets root's password to 'password'; exit the shell to boot");
        rescue::enter("Debug mode");
    }
    if config.ssh {
        cvmssh(config.debug_shell, &config.ssh_keys);
    }
    let new_root = layout.root.clone();
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
    switch_root(&new_root, &args, before_exec)
}

/// `switch_root`: empties the initramfs, moves `new_root` onto `/`, chroots, makes the console
/// stdio and executes `/sbin/init` with `args`. Returns only on failure.
pub fn switch_root(
    new_root: &Path,
    args: &[OsString],
    before_exec: &mut dyn FnMut(),
) -> Result<(), HandoverError> {
    if !root_is_initramfs() {
        return Err(HandoverError::NotInitramfs);
    }
    std::env::set_current_dir(new_root).map_err(io_err("cannot enter", new_root))?;
    match delete_same_fs(Path::new("/"), new_root) {
        Ok(n) => log::info!("deleted {n} initramfs entries"),
        Err(e) => log::warn!("cannot delete the initramfs contents: {e}"),
    }
    before_exec();
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

    #[test]
    fn cvmssh_opens_roots_password_and_moves_its_home_only() {
        let passwd = "bin:x:1:1:bin:/bin:/bin/false\nroot:x:0:0:root:/root:/bin/sh\nroot2:x:0:0::/r:/bin/sh\n";
        assert_eq!(
            cvmssh_passwd(passwd, "/home/root", true).unwrap(),
            "bin:x:1:1:bin:/bin:/bin/false\nroot::0:0:root:/home/root:/bin/sh\nroot2:x:0:0::/r:/bin/sh\n"
        );
        assert!(cvmssh_passwd(passwd, "/h", false)
            .unwrap()
            .contains("\nroot:*:0:0:root:/h:/bin/sh\n"));
        assert_eq!(cvmssh_passwd("bin:x:1:1::/:/bin/sh\n", "/h", true), None);
        assert_eq!(
            cvmssh_passwd("root:x:0:0", "/h", true),
            None,
            "not a passwd line"
        );
    }

    /// The initramfs as the skeleton makes it; dropbear's files and the keys land in the
    /// initramfs, never in `/root` (the OS's union).
    #[test]
    fn cvmssh_prepares_dropbears_files_and_the_keys_with_strict_modes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("root")).unwrap();
        let skeleton =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../initramfs/skeleton/etc/passwd");
        std::fs::copy(skeleton, root.join("etc/passwd")).unwrap();
        let keys = vec![
            "ssh-ed25519 AAAA a@b".to_string(),
            "ssh-rsa BBBB c".to_string(),
        ];
        let home = prepare_cvmssh(root, &keys).unwrap();
        assert_eq!(home, root.join("home/root"));
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("etc/dropbear"), 0o700);
        assert_eq!(mode("home/root"), 0o700);
        assert_eq!(mode("home/root/.ssh"), 0o700);
        assert_eq!(mode("home/root/.ssh/authorized_keys"), 0o600);
        assert_eq!(
            std::fs::read_to_string(root.join("home/root/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA a@b\nssh-rsa BBBB c\n"
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(
            passwd.starts_with("root:*:0:0:root:/home/root:/bin/sh\n"),
            "{passwd}"
        );
        assert!(std::fs::read_to_string(root.join("etc/shells"))
            .unwrap()
            .contains("/bin/sh\n"));
        assert_eq!(std::fs::read_dir(root.join("root")).unwrap().count(), 0);
        // Again (a second cvmssh in the same initramfs is not possible, but harmless), no keys.
        prepare_cvmssh(root, &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("home/root/.ssh/authorized_keys")).unwrap(),
            ""
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root::0:0:"), "{passwd}");
    }

    #[test]
    fn the_no_ssh_server_message_names_the_images_reason() {
        let m = no_ssh_server_message(Some("left out of images with Debian's kernel\n"));
        assert!(m.starts_with(NO_SSH_SERVER), "{m}");
        assert!(
            m.contains(": left out of images with Debian's kernel. Debug access"),
            "{m}"
        );
        let m = no_ssh_server_message(None);
        assert!(m.contains("built without dropbear"), "{m}");
        assert_eq!(no_ssh_server_message(Some(" ")), m);
    }
}
