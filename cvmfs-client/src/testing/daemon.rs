//! The `cvmfs2` daemon on a kernel FUSE mount, for integration tests: starting it, finding its
//! pid, unmounting and making sure no daemon or mount outlives a failing test.

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// Why tests that mount through the kernel cannot run here, if they cannot.
pub fn fuse_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// Why tests that mount the real-server fixture through the kernel cannot run here, if they
/// cannot: [`fuse_skip_reason`], or the fixture is missing.
pub fn fixture_mount_skip_reason() -> Option<String> {
    fuse_skip_reason().or_else(|| {
        let srv = super::fixture_dir().join("srv");
        (!srv.is_dir()).then(|| format!("fixture {} is missing", srv.display()))
    })
}

/// Relative path → hex SHA-256 of every regular file the fixture's `expected/<tag>.json` lists,
/// sorted by path (what reads through a mount must give).
pub fn expected_file_digests(tag: &str) -> Vec<(String, String)> {
    let path = super::fixture_dir().join(format!("expected/{tag}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("expected listing {}: {e}", path.display()));
    let listing: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("expected listing {} is not JSON: {e}", path.display()));
    let mut out: Vec<(String, String)> = listing["entries"]
        .as_object()
        .map(|entries| {
            entries
                .iter()
                .filter(|(_, v)| v["type"] == "file")
                .filter_map(|(k, v)| Some((k.clone(), v["sha256"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether `mnt` is a mount point of this process's mount namespace.
pub fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.as_os_str().as_bytes();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p.as_bytes() == want))
}

/// True once the process is gone (or a zombie nobody reaps: the daemon is not our child).
pub fn process_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// `lgetxattr` of any size; a missing attribute is `ENODATA`, as the system call says.
pub fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    xattr::get(p, name)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))
}

/// Hex SHA-256 of a file's contents (what the fixture's `expected/*.json` lists).
pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Unmounts `mnt` (lazily when `umount` fails, e.g. after the daemon was killed) and waits up
/// to `grace` for the daemon `pid` to end; kills it when it does not. For cleanup paths.
pub fn stop_daemon(mnt: &Path, pid: Option<i32>, grace: Duration) {
    if is_mounted(mnt) {
        let ok = Command::new("umount")
            .arg(mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(mnt).status();
        }
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + grace;
        while !process_ended(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !process_ended(pid) {
            // SAFETY: plain system call on a daemon the test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A repository mounted by a `cvmfs2` daemon; unmounted (and the daemon ended) on drop.
pub struct Cvmfs2Mount {
    pub mnt: PathBuf,
    /// The daemon's pid, from the mount's `user.pid` attribute.
    pub pid: i32,
    unmounted: bool,
}

impl Cvmfs2Mount {
    /// Runs `command` (a `cvmfs2` invocation mounting on `mnt`), which returns once the
    /// daemon serves the mount; fails with the command's output when nothing got mounted.
    pub fn start(mut command: Command, mnt: &Path) -> Result<Cvmfs2Mount, String> {
        let out = command
            .output()
            .map_err(|e| format!("run {command:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cvmfs2 failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !is_mounted(mnt) {
            return Err(format!(
                "cvmfs2 returned but nothing is mounted on {}",
                mnt.display()
            ));
        }
        let pid = lgetxattr(mnt, "user.pid")
            .ok()
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok());
        let Some(pid) = pid else {
            stop_daemon(mnt, None, Duration::ZERO);
            return Err(format!("the mount on {} has no user.pid", mnt.display()));
        };
        Ok(Cvmfs2Mount {
            mnt: mnt.to_path_buf(),
            pid,
            unmounted: false,
        })
    }

    /// `umount`, then waits for the daemon to end, as a clean shutdown must.
    pub fn unmount(&mut self) -> Result<(), String> {
        let st = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .map_err(|e| format!("umount: {e}"))?;
        if !st.success() {
            return Err(format!("umount {} failed: {st}", self.mnt.display()));
        }
        self.unmounted = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_ended(self.pid) {
            if Instant::now() > deadline {
                return Err(format!("daemon {} still runs after umount", self.pid));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Cvmfs2Mount {
    fn drop(&mut self) {
        if self.unmounted {
            // The mount point may serve another daemon by now: only this one's process.
            if !process_ended(self.pid) {
                // SAFETY: plain system call on the daemon this value stands for.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
            }
        } else {
            stop_daemon(&self.mnt, Some(self.pid), Duration::from_secs(5));
        }
    }
}
