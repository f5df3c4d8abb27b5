//! A small harness for booting µCernVM in `qemu-system-x86_64` from tests, in the spirit of
//! cloud-hypervisor's `test_infra`: a [`Guest`] runs QEMU with its serial console in a log file,
//! [`GuestConsole::wait_for`] waits for markers on that console, and every failure carries the
//! whole console log so a failed boot can be diagnosed from the test output alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cernvm_launch::qemu::{QemuCommand, Serial};
use cernvm_launch::qmp::Qmp;

/// How often the console file and the QEMU process are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Errors of the harness. Console-related variants include the complete console log.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "timed out after {:.1} s waiting for {marker:?} on the guest console\n\
         ----- full console log ({}) -----\n{log}\n----- end of console log -----",
        timeout.as_secs_f64(), path.display()
    )]
    Timeout {
        marker: String,
        timeout: Duration,
        path: PathBuf,
        log: String,
    },
    #[error(
        "QEMU exited ({status}) before {marker:?} appeared on the guest console{}\n\
         ----- full console log ({}) -----\n{log}\n----- end of console log -----",
        if stderr.is_empty() { String::new() } else { format!("; QEMU stderr: {stderr}") },
        path.display()
    )]
    Exited {
        marker: String,
        status: String,
        stderr: String,
        path: PathBuf,
        log: String,
    },
    #[error("cannot start QEMU ({program}): {cause}")]
    Spawn { program: String, cause: io::Error },
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error("QMP control socket of the guest: {0}")]
    Qmp(cernvm_launch::qmp::QmpError),
}

// Not `#[from]`: the cause is in the message already and must not show twice in a chain.
impl From<cernvm_launch::qmp::QmpError> for HarnessError {
    fn from(e: cernvm_launch::qmp::QmpError) -> Self {
        HarnessError::Qmp(e)
    }
}

/// The serial console of a guest, as written by QEMU to a file.
#[derive(Debug, Clone)]
pub struct GuestConsole {
    path: PathBuf,
}

impl GuestConsole {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GuestConsole { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything written so far (invalid UTF-8 replaced); empty if the file does not exist yet.
    pub fn contents(&self) -> String {
        fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `marker` appears in the console log. On timeout the error holds the whole log.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> Result<(), HarnessError> {
        self.wait_for_while(marker, timeout, || None)
    }

    /// Like [`wait_for`](Self::wait_for), but also stops when `exited` reports that the writer
    /// is gone (returns its exit status and stderr).
    fn wait_for_while(
        &self,
        marker: &str,
        timeout: Duration,
        mut exited: impl FnMut() -> Option<(String, String)>,
    ) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            if self.contents().contains(marker) {
                return Ok(());
            }
            if let Some((status, stderr)) = exited() {
                // Output written just before the exit counts.
                let log = self.contents();
                if log.contains(marker) {
                    return Ok(());
                }
                return Err(HarnessError::Exited {
                    marker: marker.to_string(),
                    status,
                    stderr,
                    path: self.path.clone(),
                    log,
                });
            }
            if start.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    marker: marker.to_string(),
                    timeout,
                    path: self.path.clone(),
                    log: self.contents(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// A running QEMU guest. QEMU is killed when the `Guest` is dropped; if that happens while the
/// test is panicking, the full console log and QEMU's stderr are printed first.
pub struct Guest {
    child: Child,
    console: GuestConsole,
    stderr_path: PathBuf,
    /// QEMU's control socket (QMP).
    qmp_path: PathBuf,
    command_line: String,
    // Declared last: removed after the child is gone.
    dir: tempfile::TempDir,
}

impl Guest {
    /// Starts `cmd` with its serial console redirected to a log file in a fresh temporary
    /// directory (any serial setting of `cmd` is replaced).
    pub fn spawn(cmd: QemuCommand) -> Result<Guest, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("qemu-guest-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                what: "cannot create a temporary directory for the guest".into(),
                cause: source,
            })?;
        let console_path = dir.path().join("console.log");
        let stderr_path = dir.path().join("qemu.stderr");
        let qmp_path = dir.path().join("qmp.sock");
        // The serial console is QEMU's stdio: output goes to the log file, input comes from a
        // pipe the test writes to (logins on the console, commands in the rescue shell). QMP
        // is the control socket (status, a clean quit).
        let cmd = cmd
            .serial(Serial::Stdio)
            .arg("-monitor")
            .arg("none")
            .qmp_socket(&qmp_path);
        let console_file = fs::File::create(&console_path).map_err(|source| HarnessError::Io {
            what: format!("cannot create {}", console_path.display()),
            cause: source,
        })?;
        let stderr = fs::File::create(&stderr_path).map_err(|source| HarnessError::Io {
            what: format!("cannot create {}", stderr_path.display()),
            cause: source,
        })?;
        let command_line = cmd.display_command();
        log::info!("starting guest: {command_line}");
        let child = cmd
            .command()
            .stdin(Stdio::piped())
            .stdout(console_file)
            .stderr(stderr)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: cmd.program().display().to_string(),
                cause: source,
            })?;
        Ok(Guest {
            child,
            console: GuestConsole::new(console_path),
            stderr_path,
            qmp_path,
            command_line,
            dir,
        })
    }

    pub fn console(&self) -> &GuestConsole {
        &self.console
    }

    /// Types `text` on the guest's serial console.
    pub fn send(&mut self, text: &str) -> Result<(), HarnessError> {
        use std::io::Write;
        let io_err = |source| HarnessError::Io {
            what: "cannot write to the guest console".into(),
            cause: source,
        };
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| io_err(io::Error::other("console input already closed")))?;
        stdin.write_all(text.as_bytes()).map_err(io_err)?;
        stdin.flush().map_err(io_err)
    }

    /// The QEMU command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The guest's scratch directory (console log, QEMU stderr); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// QEMU's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    }

    /// Waits for `marker` on the console; fails early if QEMU exits first.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<(), HarnessError> {
        let child = &mut self.child;
        let stderr_path = &self.stderr_path;
        self.console
            .wait_for_while(marker, timeout, || match child.try_wait() {
                Ok(Some(status)) => Some((
                    status.to_string(),
                    fs::read(stderr_path)
                        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                        .unwrap_or_default(),
                )),
                _ => None,
            })
    }

    /// Waits for QEMU to exit on its own (e.g. the guest powered off); on timeout QEMU keeps
    /// running and the error holds the console log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(source) => {
                    return Err(HarnessError::Io {
                        what: "cannot wait for QEMU".into(),
                        cause: source,
                    })
                }
            }
            if start.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    marker: "<QEMU exit>".into(),
                    timeout,
                    path: self.console.path.clone(),
                    log: self.console.contents(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// A session on QEMU's control socket (QMP), waiting up to 10 s for QEMU to open it.
    pub fn qmp(&self) -> Result<Qmp, HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Qmp::connect(&self.qmp_path, Duration::from_secs(5)) {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// QEMU's run state as QMP reports it (`running`, `paused`, `shutdown`, ...).
    pub fn run_state(&self) -> Result<String, HarnessError> {
        let reply = self.qmp()?.execute("query-status", None)?;
        Ok(reply["status"].as_str().unwrap_or_default().to_string())
    }

    /// Stops the guest like pulling its plug, but lets QEMU close its disk images (QMP
    /// `quit`: qcow2 metadata is written back, as a SIGKILL would not); kills QEMU if it does
    /// not end within 10 s, or if QMP cannot be reached. Reaps it and returns how it ended.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Ok(None) = self.child.try_wait() {
            // QEMU may close the socket before it answers `quit`: the exit is what counts.
            let asked = self
                .qmp()
                .map(|mut q| {
                    let _ = q.execute("quit", None);
                })
                .is_ok();
            let deadline = Instant::now() + Duration::from_secs(10);
            let ended = asked
                && loop {
                    match self.child.try_wait() {
                        Ok(Some(_)) => break true,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => break false,
                    }
                };
            if !ended {
                let _ = self.child.kill();
            }
        }
        self.child.wait().ok()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== guest failed; QEMU command line =====\n{}\n\
                 ===== QEMU stderr =====\n{}\n\
                 ===== full console log ({}) =====\n{}\n\
                 ===== end of console log =====",
                self.command_line,
                self.stderr(),
                self.console.path.display(),
                self.console.contents()
            );
        }
    }
}

pub mod kernel_modules;
pub mod launch;
pub mod media;
pub mod metadata;
pub mod relay;
pub mod scenario;
pub mod ssh;
pub mod test_os;

/// Locating test inputs produced by the build scripts.
pub mod inputs {
    use std::path::{Path, PathBuf};

    /// The workspace root (parent of this crate).
    pub fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".."))
    }

    /// A kernel to boot: `$UCERNVM_TEST_KERNEL`, else the µCernVM kernel built by
    /// `kernel-config/build-custom-kernel` (`build/custom-kernel/current/vmlinuz`).
    pub fn kernel() -> Option<PathBuf> {
        if let Some(k) = std::env::var_os("UCERNVM_TEST_KERNEL") {
            return Some(PathBuf::from(k)).filter(|p| p.is_file());
        }
        let vmlinuz = workspace_root().join("build/custom-kernel/current/vmlinuz");
        vmlinuz.is_file().then_some(vmlinuz)
    }

    /// Debian's cloud kernel, unpacked by `kernel-config/fetch-debian-kernel` under
    /// `build/kernel` (`<root>/boot/vmlinuz-<release>`, modules in `<root>/lib/modules`).
    pub fn debian_kernel() -> Option<PathBuf> {
        let build = workspace_root().join("build/kernel");
        let version = std::fs::read_to_string(build.join("kernel-version")).ok()?;
        let vmlinuz = build
            .join("root/boot")
            .join(format!("vmlinuz-{}", version.trim()));
        vmlinuz.is_file().then_some(vmlinuz)
    }

    /// A binary of this workspace, as `scripts/test` builds them before the tests run:
    /// `target/debug/<name>` (what the test run just built), else `target/release/<name>`.
    pub fn workspace_binary(name: &str) -> Option<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        ["debug", "release"]
            .iter()
            .map(|profile| target.join(profile).join(name))
            .find(|p| p.is_file())
    }

    /// The µCernVM initramfs for [`kernel`]: `$UCERNVM_TEST_INITRD`, else
    /// `build/ucernvm-initrd.img` as `scripts/test` builds it with `scripts/build-initrd`.
    pub fn initrd() -> Option<PathBuf> {
        let path = match std::env::var_os("UCERNVM_TEST_INITRD") {
            Some(p) => PathBuf::from(p),
            None => workspace_root().join("build/ucernvm-initrd.img"),
        };
        path.is_file().then_some(path)
    }

    /// The µCernVM initramfs for [`debian_kernel`], with its modules:
    /// `build/ucernvm-initrd-debian.img` (`scripts/build-initrd --kernel debian`).
    pub fn debian_initrd() -> Option<PathBuf> {
        let path = workspace_root().join("build/ucernvm-initrd-debian.img");
        path.is_file().then_some(path)
    }

    /// The static mke2fs, e2fsck, resize2fs and dropbear of `scripts/build-static-tools`
    /// (`build/static-tools/current`), if built.
    pub fn static_tools() -> Option<PathBuf> {
        let dir = workspace_root().join("build/static-tools/current");
        ["mke2fs", "e2fsck", "resize2fs", "dropbear"]
            .iter()
            .all(|t| dir.join(t).is_file())
            .then_some(dir)
    }

    /// True if `path` is an ELF executable without a program interpreter (statically linked).
    pub fn is_static_elf(path: &Path) -> bool {
        use ucernvm_initramfs::elf::{linking, Linking};
        std::fs::read(path).is_ok_and(|data| linking(&data) == Some(Linking::Static))
    }

    /// A statically linked busybox: `$UCERNVM_TEST_BUSYBOX`, else `busybox` on `$PATH` if static.
    pub fn static_busybox() -> Option<PathBuf> {
        let candidate = match std::env::var_os("UCERNVM_TEST_BUSYBOX") {
            Some(p) => PathBuf::from(p),
            None => std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("busybox"))
                .find(|p| p.is_file())?,
        };
        is_static_elf(&candidate).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Appends `lines` to `path` one by one with a pause in between, like a booting guest.
    fn write_slowly(
        path: PathBuf,
        lines: Vec<&'static str>,
        pause: Duration,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            for line in lines {
                std::thread::sleep(pause);
                f.write_all(line.as_bytes()).unwrap();
                f.flush().unwrap();
            }
        })
    }

    #[test]
    fn wait_for_finds_a_marker_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let writer = write_slowly(
            path.clone(),
            vec![
                "SeaBIOS\n",
                "Linux version 6.1.0\n",
                "* Welcome to micro-CernVM\n",
            ],
            Duration::from_millis(100),
        );
        let console = GuestConsole::new(&path);
        console
            .wait_for("Welcome to micro-CernVM", Duration::from_secs(20))
            .unwrap();
        writer.join().unwrap();
        assert!(console.contents().starts_with("SeaBIOS\nLinux version"));
    }

    #[test]
    fn wait_for_times_out_with_the_full_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let writer = write_slowly(
            path.clone(),
            vec!["first line\n", "Kernel panic - not syncing: VFS\n"],
            Duration::from_millis(20),
        );
        let console = GuestConsole::new(&path);
        writer.join().unwrap();
        let start = Instant::now();
        let err = console
            .wait_for("login:", Duration::from_millis(300))
            .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        match &err {
            HarnessError::Timeout { marker, log, .. } => {
                assert_eq!(marker, "login:");
                assert_eq!(log, "first line\nKernel panic - not syncing: VFS\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("waiting for \"login:\""), "{msg}");
        assert!(
            msg.contains("first line\nKernel panic - not syncing: VFS"),
            "{msg}"
        );
    }

    #[test]
    fn wait_for_on_a_missing_file_times_out_with_an_empty_log() {
        let console = GuestConsole::new("/nonexistent/console.log");
        let err = console
            .wait_for("x", Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, HarnessError::Timeout { ref log, .. } if log.is_empty()));
    }

    #[test]
    fn guest_reports_an_early_qemu_exit_with_its_stderr() {
        // `false`-like stand-in for QEMU that prints an error and exits.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut guest = loop {
            match Guest::spawn(QemuCommand::new().binary(&fake)) {
                // A concurrent fork may still hold the fresh script open for writing.
                Err(HarnessError::Spawn { cause: source, .. })
                    if source.raw_os_error() == Some(26) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other.unwrap(),
            }
        };
        let err = guest
            .wait_for("Linux version", Duration::from_secs(20))
            .unwrap_err();
        match err {
            HarnessError::Exited { stderr, .. } => {
                assert_eq!(stderr, "qemu: could not load kernel")
            }
            other => panic!("unexpected {other}"),
        }
    }

    /// A minimal ELF64 header followed by one program header of type `p_type`.
    fn elf_with_phdr(p_type: u32) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2; // 64-bit
        d[5] = 1; // little-endian
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        d[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        d[64..68].copy_from_slice(&p_type.to_le_bytes());
        d
    }

    #[test]
    fn static_elf_detection() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            inputs::is_static_elf(&p)
        };
        assert!(!check("script", b"#!/bin/sh\n"));
        assert!(check("static", &elf_with_phdr(1))); // PT_LOAD only
        assert!(!check("dynamic", &elf_with_phdr(3))); // PT_INTERP
        let mut truncated = elf_with_phdr(1);
        truncated.truncate(66);
        assert!(!check("truncated", &truncated));
    }
}
