//! Early setup (spec §1.2): the kernel file systems and device nodes every later phase needs.
//! Errors are logged and otherwise ignored, as in the original: a missing `/sys` must not stop
//! the boot before the user can see a message.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

fn ensure_dir(path: &str, mode: u32) {
    if let Err(e) = fs::create_dir_all(path) {
        log::warn!("cannot create {path}: {e}");
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
        // EBUSY: already mounted (e.g. the kernel's devtmpfs automount).
        if e != nix::errno::Errno::EBUSY {
            log::warn!("cannot mount {fstype} on {target}: {e}");
        }
    }
}

/// Mounts `/sys`, `/proc`, `/dev`, `/dev/pts` and creates the directories of §1.2.
pub fn setup() {
    ensure_dir("/dev", 0o755);
    ensure_dir("/root", 0o700);
    for d in ["/sys", "/proc", "/tmp", "/var/lock", "/var/log", "/run"] {
        ensure_dir(d, 0o755);
    }
    let _ = fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777));
    let hardened = MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None);
    mount_fs("proc", "/proc", "proc", hardened, None);
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::empty(),
        Some("mode=0755"),
    );
    if !Path::new("/etc/mtab").exists() {
        let _ = fs::create_dir_all("/etc");
        let _ = symlink("/proc/mounts", "/etc/mtab");
    }
    ensure_dir("/dev/pts", 0o755);
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID,
        Some("gid=5,mode=0620"),
    );
}

/// The boot loader version from `/version` (e.g. `2026.11-1.cernvm.x86_64`).
pub fn version() -> String {
    fs::read_to_string("/version")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
