//! A small but real operating system for the end-to-end boots: static busybox, a `/sbin/init`
//! that mounts the kernel file systems, prints markers the tests wait for, counts boots in a
//! file (to prove that the scratch disk keeps what the VM writes), and then offers a login on
//! the serial console. It is published with `cvmfs-publish` and streamed by our `cvmfs2`.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Printed by the OS init once it runs as PID 1 of the union root.
pub const OS_READY_MARKER: &str = "UCERNVM-TEST-OS: init started";
/// Printed right before the login prompt.
pub const OS_LOGIN_MARKER: &str = "UCERNVM-TEST-OS: login ready";

/// The file that names the OS revision (`release` of [`build_busybox_os`]); the Debian demo
/// OS (`scripts/build-debian-os`) prints it too.
pub const TEST_OS_RELEASE: &str = "etc/test-os/release";

/// The OS init. `$boots` comes from a file on the union (persistent across reboots when the
/// scratch disk is kept); `/etc/test-os/rc.d/*` lets a test add steps to a published revision.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
echo "UCERNVM-TEST-OS: init started (kernel $(uname -r))"
echo "UCERNVM-TEST-OS: root is $(awk '$2 == "/" { print $3 }' /proc/mounts | tail -n 1)"
echo "UCERNVM-TEST-OS: release $(cat /etc/test-os/release)"
boots=$(cat /var/lib/test-os/boots 2>/dev/null || echo 0)
boots=$((boots + 1))
mkdir -p /var/lib/test-os && echo "$boots" > /var/lib/test-os/boots && sync
echo "UCERNVM-TEST-OS: boot number $boots"
for f in /etc/test-os/rc.d/*; do
  [ -x "$f" ] && "$f"
done
hostname "$(cat /etc/hostname)"
echo "UCERNVM-TEST-OS: login ready"
while true; do
  getty -L 115200 ttyS0 vt100
done
"#;

/// Builds the OS tree in `dest` (created if missing) from a static `busybox`; `release` is
/// written to `/etc/test-os/release` so that tests can tell revisions apart.
pub fn build_busybox_os(dest: &Path, busybox: &Path, release: &str) -> io::Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/test-os/rc.d",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "var/lib",
        "var/log",
        "run",
        "mnt",
    ] {
        fs::create_dir_all(dest.join(d))?;
    }
    fs::set_permissions(dest.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(dest.join("root"), fs::Permissions::from_mode(0o700))?;
    fs::copy(busybox, dest.join("bin/busybox"))?;
    fs::set_permissions(dest.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;

    let list = Command::new(busybox).arg("--list-full").output()?;
    if !list.status.success() {
        return Err(io::Error::other(format!(
            "{} --list-full failed",
            busybox.display()
        )));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        // Our own /sbin/init replaces busybox's; skip anything odd.
        if applet.is_empty() || applet == "sbin/init" || applet.contains("..") {
            continue;
        }
        let link = dest.join(applet);
        if link.exists() || link.is_symlink() {
            continue;
        }
        let target = if applet.starts_with("bin/") {
            "busybox".to_string()
        } else {
            format!("{}bin/busybox", "../".repeat(applet.matches('/').count()))
        };
        symlink(target, link)?;
    }

    write(dest, "sbin/init", INIT, 0o755)?;
    write(dest, TEST_OS_RELEASE, &format!("{release}\n"), 0o644)?;
    write(dest, "etc/hostname", "cernvm-test\n", 0o644)?;
    write(
        dest,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(dest, "etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    // Root's password is locked: only `reset_root_password` in debug mode opens it.
    write(
        dest,
        "etc/shadow",
        "root:!:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n",
        0o600,
    )?;
    write(dest, "etc/shells", "/bin/sh\n", 0o644)?;
    write(dest, "etc/issue", "µCernVM test OS \\n on \\l\n\n", 0o644)?;
    Ok(())
}

fn write(dest: &Path, rel: &str, contents: &str, mode: u32) -> io::Result<()> {
    let path = dest.join(rel);
    fs::write(&path, contents)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_tree_whose_init_runs_under_the_same_busybox() {
        let Some(busybox) = crate::inputs::static_busybox() else {
            test_prereq::skip("no static busybox");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        build_busybox_os(dir.path(), &busybox, "r1").unwrap();
        let init = dir.path().join("sbin/init");
        assert!(fs::metadata(&init).unwrap().permissions().mode() & 0o111 != 0);
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(dir.path().join("sbin/getty")).unwrap(),
            Path::new("../bin/busybox")
        );
        assert_eq!(
            fs::metadata(dir.path().join("etc/shadow"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // The init script is valid shell for the busybox that will run it.
        let check = Command::new(&busybox)
            .args(["sh", "-n"])
            .arg(&init)
            .status()
            .unwrap();
        assert!(check.success());
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/test-os/release")).unwrap(),
            "r1\n"
        );
    }
}
