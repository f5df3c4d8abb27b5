//! drtini (spec §12.3): shutdown through the initramfs. The union over a FUSE mount served by a
//! boot-loader process cannot be unmounted by the OS itself, so at boot a `/run/initramfs` is
//! prepared with our binary as `/shutdown`; systemd-shutdown pivots into it at the very end and
//! runs `/shutdown <verb>` with the old root at `/oldroot`. There the remaining mounts are
//! unmounted, CernVM-FS is told to stop writing its cache, the union and the scratch disk are
//! remounted read-only, and the machine is rebooted, powered off or halted.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Name under which the init binary acts as the shutdown program.
pub const SHUTDOWN_NAME: &str = "shutdown";
/// Where systemd-shutdown mounts the old root.
pub const OLDROOT: &str = "/oldroot";
/// Mounts the shutdown program leaves alone until the end.
const KEEP: [&str; 2] = ["/oldroot/mnt/.rw", "/oldroot/mnt/.ro"];

/// Boot side: only if the OS has `/run`: a tmpfs on `<root>/run` (mode 0755, nodev) holding
/// `initramfs/shutdown` (a copy of `init_binary`). Returns whether it prepared anything.
pub fn prepare(root: &Path, init_binary: &Path) -> io::Result<bool> {
    let run = root.join("run");
    if !run.is_dir() {
        return Ok(false);
    }
    mount(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(io::Error::from)?;
    let dir = run.join("initramfs");
    std::fs::create_dir_all(&dir)?;
    let target = dir.join(SHUTDOWN_NAME);
    std::fs::copy(init_binary, &target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    Ok(true)
}

/// Mount points to unmount, from `/proc/mounts` text: everything below `/oldroot/` except
/// the scratch disk and the repository, in reverse lexical order (children before parents).
pub fn mounts_to_unmount(proc_mounts: &str) -> Vec<String> {
    let mut points: Vec<String> = proc_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with("/oldroot/") && !KEEP.contains(&p.as_str()))
        .collect();
    points.sort();
    points.dedup();
    points.reverse();
    points
}

/// `/proc/mounts` escapes blanks and backslashes as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(byte) if c == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Control sockets `cvmfs_io.*` at depth ≤ 2 below `cache`.
pub fn find_talk_sockets(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(cache.to_path_buf(), 1)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if e.file_name().to_string_lossy().starts_with("cvmfs_io.") && !is_dir {
                found.push(path);
            } else if is_dir && depth < 2 {
                dirs.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// What the verb asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot,
    PowerOff,
    Halt,
    Kexec,
}

/// `reboot`, `poweroff`, `halt`, `kexec`; anything else reboots (with a message).
pub fn action(verb: Option<&str>) -> (Action, bool) {
    match verb {
        Some("reboot") => (Action::Reboot, true),
        Some("poweroff") => (Action::PowerOff, true),
        Some("halt") => (Action::Halt, true),
        Some("kexec") => (Action::Kexec, true),
        _ => (Action::Reboot, false),
    }
}

/// systemd-shutdown starts us with its /dev/null for stdio, and `/proc` and `/dev` are there
/// only if it could bind them into `/run/initramfs`: mount what is missing and write to the
/// console.
fn api_mounts_and_console() {
    for (dir, probe, fstype) in [
        ("/proc", "/proc/mounts", "proc"),
        ("/dev", "/dev/console", "devtmpfs"),
    ] {
        if !Path::new(probe).exists() {
            let _ = std::fs::create_dir_all(dir);
            let _ = mount(
                Some(fstype),
                dir,
                Some(fstype),
                MsFlags::empty(),
                None::<&str>,
            );
        }
    }
    if let Ok(console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// The shutdown program (`/shutdown <verb>` in `/run/initramfs`). Does not return.
pub fn shutdown_main(verb: Option<&str>) -> ! {
    api_mounts_and_console();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let points = mounts_to_unmount(&mounts);
    eprintln!(
        "drtini: unmounting {} file systems below {OLDROOT}",
        points.len()
    );
    for m in points {
        if umount2(m.as_str(), MntFlags::empty()).is_err() {
            let _ = umount2(m.as_str(), MntFlags::MNT_DETACH);
        }
    }
    for socket in find_talk_sockets(&Path::new(OLDROOT).join("mnt/.rw/cache")) {
        match cvmfs_config::talk::request(
            &socket,
            "tear down to read-only",
            Duration::from_secs(30),
        ) {
            Ok(r) => eprintln!("drtini: {}: {}", socket.display(), r.trim()),
            Err(e) => eprintln!("drtini: {e}"),
        }
    }
    let remount_ro = |p: &str| match mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        Ok(()) => eprintln!("drtini: {p} read-only"),
        Err(e) => eprintln!("drtini: cannot remount {p} read-only: {e}"),
    };
    remount_ro(OLDROOT);
    remount_ro("/oldroot/mnt/.rw");
    nix::unistd::sync();
    eprintln!("drtini: {}", verb.unwrap_or("reboot"));
    use nix::sys::reboot::{reboot, RebootMode};
    let (act, known) = action(verb);
    if !known {
        eprintln!("shutdown: unknown verb {verb:?}, rebooting");
    }
    let mode = match act {
        Action::Reboot => RebootMode::RB_AUTOBOOT,
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Halt => RebootMode::RB_HALT_SYSTEM,
        Action::Kexec => RebootMode::RB_KEXEC,
    };
    let _ = reboot(mode);
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_order_and_exclusions() {
        let mounts = "\
rootfs / rootfs rw 0 0
overlay /oldroot overlay rw 0 0
/dev/vda1 /oldroot/mnt/.rw ext4 rw 0 0
cvmfs2 /oldroot/mnt/.ro fuse ro 0 0
proc /oldroot/proc proc rw 0 0
sysfs /oldroot/sys sysfs rw 0 0
cgroup2 /oldroot/sys/fs/cgroup cgroup2 rw 0 0
/dev/vda1 /oldroot/cvmfs ext4 rw 0 0
tmpfs /oldroot/home/a\\040b tmpfs rw 0 0
tmpfs /run/initramfs tmpfs rw 0 0
";
        assert_eq!(
            mounts_to_unmount(mounts),
            vec![
                "/oldroot/sys/fs/cgroup",
                "/oldroot/sys",
                "/oldroot/proc",
                "/oldroot/home/a b",
                "/oldroot/cvmfs",
            ]
        );
    }

    #[test]
    fn talk_sockets_at_depth_two() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path();
        std::fs::create_dir_all(cache.join("r.example/deeper")).unwrap();
        std::fs::write(cache.join("r.example/cvmfs_io.r.example"), "").unwrap();
        std::fs::write(cache.join("r.example/deeper/cvmfs_io.too-deep"), "").unwrap();
        std::fs::write(cache.join("cvmfs_io.top"), "").unwrap();
        assert_eq!(
            find_talk_sockets(cache),
            vec![
                cache.join("cvmfs_io.top"),
                cache.join("r.example/cvmfs_io.r.example")
            ]
        );
    }

    #[test]
    fn verbs() {
        assert_eq!(action(Some("poweroff")), (Action::PowerOff, true));
        assert_eq!(action(Some("kexec")), (Action::Kexec, true));
        assert_eq!(action(Some("halt")), (Action::Halt, true));
        assert_eq!(action(Some("reboot")), (Action::Reboot, true));
        assert_eq!(action(Some("suspend")), (Action::Reboot, false));
        assert_eq!(action(None), (Action::Reboot, false));
    }

    #[test]
    fn prepare_only_when_the_os_has_run() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("init");
        std::fs::write(&bin, "binary").unwrap();
        assert!(!prepare(t.path(), &bin).unwrap());
        if !nix::unistd::geteuid().is_root() {
            test_prereq::skip("preparing the shutdown tree needs root");
            return;
        }
        std::fs::create_dir_all(t.path().join("run")).unwrap();
        assert!(prepare(t.path(), &bin).unwrap());
        let sd = t.path().join("run/initramfs/shutdown");
        assert_eq!(std::fs::read_to_string(&sd).unwrap(), "binary");
        assert_eq!(
            std::fs::metadata(&sd).unwrap().permissions().mode() & 0o777,
            0o755
        );
        umount2(&t.path().join("run"), MntFlags::MNT_DETACH).unwrap();
        assert!(!sd.exists(), "the program lived on the tmpfs");
    }
}
