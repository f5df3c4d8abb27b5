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

/// Printed by the test OS's sshd step once dropbear listens on port 22.
pub const OS_SSHD_MARKER: &str = "UCERNVM-TEST-OS: sshd ready";

/// The sshd step of the test OS: the account and the authorized keys from the context user
/// data (amiconfig `[cernvm] users=name:group:password`, else `user`; every `ssh-…`/`ecdsa-…`
/// public key line, e.g. of a `#cloud-config` `ssh_authorized_keys` list), the network from
/// DHCP if the boot loader's lease is gone, then dropbear on port 22.
const SSHD_RC: &str = r#"#!/bin/sh
ud=/mnt/.rw/context/user-data
user=$(awk -F= '/^\[/ { s = $0 } s == "[cernvm]" && $1 ~ /^ *users *$/ { split($2, u, ":"); gsub(/ /, "", u[1]); print u[1]; exit }' "$ud" 2>/dev/null)
[ -n "$user" ] || user=user
if ! grep -q "^$user:" /etc/passwd; then
  echo "$user:x:1000:1000:$user:/home/$user:/bin/sh" >> /etc/passwd
  echo "$user:x:1000:" >> /etc/group
  echo "$user:*:20000:0:99999:7:::" >> /etc/shadow
fi
mkdir -p "/home/$user/.ssh"
grep -oE '(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp[0-9]+) [A-Za-z0-9+/=]+' "$ud" 2>/dev/null > "/home/$user/.ssh/authorized_keys"
chmod 700 "/home/$user/.ssh"; chmod 600 "/home/$user/.ssh/authorized_keys"
chown -R 1000:1000 "/home/$user"
echo "UCERNVM-TEST-OS: user $user with $(wc -l < "/home/$user/.ssh/authorized_keys") key(s)"
ip link set lo up
if ! ip -4 addr show dev eth0 | grep -q inet; then
  udhcpc -i eth0 -q -n -s /etc/test-os/udhcpc.script >/dev/null 2>&1
fi
echo "UCERNVM-TEST-OS: eth0 $(ip -4 addr show dev eth0 | awk '/inet / { print $2 }')"
mkdir -p /etc/dropbear /var/log
/usr/sbin/dropbear -R -p 22 -P /run/dropbear.pid && echo "UCERNVM-TEST-OS: sshd ready"
"#;

/// Applies a DHCP lease for busybox udhcpc.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  ip link set "$interface" up
  for r in $router; do ip route add default via "$r"; break; done
  ;;
esac
"#;

/// Adds Debian's dropbear SSH server (from this machine, with the shared libraries `ldd`
/// names) and the sshd step to a test OS tree made by [`build_busybox_os`]. Needs the Debian
/// package dropbear-bin.
pub fn add_dropbear(dest: &Path) -> io::Result<()> {
    let dropbear = Path::new("/usr/sbin/dropbear");
    if !dropbear.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/usr/sbin/dropbear missing (Debian package dropbear-bin)",
        ));
    }
    let ldd = Command::new("ldd").arg(dropbear).output()?;
    let mut files = vec![dropbear.to_path_buf()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(std::path::PathBuf::from(p));
        }
    }
    for f in files {
        let real = fs::canonicalize(&f)?;
        let rel = f.strip_prefix("/").unwrap_or(&f);
        let target = dest.join(rel);
        if let Some(dir) = target.parent() {
            // /lib64 and /lib may be symlinks in the OS tree (merged /usr); create real dirs.
            fs::create_dir_all(dir)?;
        }
        if target.exists() || target.is_symlink() {
            fs::remove_file(&target)?;
        }
        fs::copy(&real, &target)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    }
    write(dest, "etc/test-os/rc.d/50-sshd", SSHD_RC, 0o755)?;
    write(dest, "etc/test-os/udhcpc.script", UDHCPC_SCRIPT, 0o755)?;
    fs::create_dir_all(dest.join("home"))?;
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
