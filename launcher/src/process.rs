//! Recorded QEMU processes: pid files, liveness, signals.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Reads a pid file as written by QEMU's `-pidfile`; `None` if it is missing or malformed.
pub fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid: &i32| pid > 0)
}

/// True if a process with this pid exists (it may belong to another user).
pub fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; no signal is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The NUL-separated command line of a running process, joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The pid recorded in `pid_file` if that process is alive and its command line mentions
/// `marker` (guards against a recycled pid belonging to an unrelated process).
pub fn running_pid(pid_file: &Path, marker: &str) -> Option<i32> {
    let pid = read_pid_file(pid_file)?;
    if !is_alive(pid) {
        return None;
    }
    match cmdline(pid) {
        Some(cmd) if cmd.contains(marker) => Some(pid),
        _ => None,
    }
}

/// Sends SIGTERM.
pub fn terminate(pid: i32) -> io::Result<()> {
    // SAFETY: plain kill(2) on a pid we recorded; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while is_alive(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn pid_files_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("qemu.pid");
        assert_eq!(read_pid_file(&pid_file), None);
        fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(read_pid_file(&pid_file), None);

        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        fs::write(&pid_file, format!("{pid}\n")).unwrap();
        assert_eq!(read_pid_file(&pid_file), Some(pid));
        assert!(is_alive(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert_eq!(running_pid(&pid_file, "anything"), None);
    }

    #[test]
    fn running_pid_checks_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("qemu.pid");
        let marker = format!("{}/qmp.sock", dir.path().display());
        // A process that keeps the marker in its argv for its whole life (a shell may exec
        // its last command in place and lose it).
        let mut child = Command::new("python3")
            .args(["-c", "import time; time.sleep(30)", &marker])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        fs::write(&pid_file, pid.to_string()).unwrap();
        // On a loaded machine the new argv may show up in /proc a moment after spawn returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running_pid(&pid_file, &marker).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(running_pid(&pid_file, &marker), Some(pid));
        assert_eq!(running_pid(&pid_file, "/other/instance"), None);
        terminate(pid).unwrap();
        let _ = child.wait();
        assert!(wait_gone(pid, Duration::from_secs(5)));
        assert_eq!(running_pid(&pid_file, &marker), None);
    }
}
