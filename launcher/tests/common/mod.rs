//! Running the `cernvm-launch` binary in a home directory of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A user of the launcher: a fresh home directory (so a fresh `~/.cernvm-launch.conf` and data
/// directory) and the environment the binary runs with.
pub struct Launcher {
    pub home: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    /// Run the launcher as this unprivileged user id (through setpriv), with `binary`.
    pub user: Option<(u32, PathBuf)>,
}

/// The result of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Launcher {
    pub fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("launch-home-")
            .tempdir()
            .unwrap();
        // Readable for other users (libvirt's QEMU runs as libvirt-qemu).
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Launcher {
            home,
            env: Vec::new(),
            user: None,
        }
    }

    /// The launcher as user `uid` (owner of the home directory), running a copy of the binary
    /// that user can execute.
    pub fn run_as(mut self, uid: u32) -> Self {
        let bin = self.home.path().join("cernvm-launch");
        std::fs::copy(env!("CARGO_BIN_EXE_cernvm-launch"), &bin).unwrap();
        std::os::unix::fs::chown(self.home.path(), Some(uid), Some(uid)).unwrap();
        self.user = Some((uid, bin));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = match &self.user {
            Some((uid, bin)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(bin);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_cernvm-launch")),
        };
        c.args(args)
            .env("HOME", self.home.path())
            .env_remove("CERNVM_ACCEL")
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().unwrap().into()
    }

    /// Runs and asserts exit status 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "cernvm-launch {args:?} failed:\n{}", r.text());
        r
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join(".cernvm")
    }

    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.data_dir().join("run").join(name)
    }

    pub fn console(&self, name: &str) -> String {
        std::fs::read(self.machine_dir(name).join("console.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for `marker` in a machine's console log; panics with the log on timeout.
    pub fn wait_console(&self, name: &str, marker: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.console(name).contains(marker) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "no {marker:?} on the console of {name} within {timeout:?}\n----- console log -----\n{}\n----- QEMU log -----\n{}",
            self.console(name),
            std::fs::read_to_string(self.machine_dir(name).join("qemu.log")).unwrap_or_default()
        );
    }
}

/// Writes a file and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Destroys the named machines when dropped, so a failing test leaves no QEMU running.
pub struct Cleanup<'a> {
    pub launcher: &'a Launcher,
    pub names: Vec<&'static str>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            if self.launcher.machine_dir(name).exists() {
                let _ = self.launcher.run(&["destroy", "--force", name]);
            }
        }
    }
}

/// What the boot tests boot: the busybox test OS with dropbear published in a repository on
/// 127.0.0.1, a µCernVM ISO (scripts/build-iso) trusting its key, an ssh key pair and user
/// data pointing µCernVM at the repository and giving `tester` the key.
pub struct TestCernvm {
    pub repo: qemu_tests::scenario::OsRepository,
    pub iso: PathBuf,
    pub key: PathBuf,
    pub user_data: PathBuf,
    pub work: tempfile::TempDir,
}

pub const TEST_FQRN: &str = "launch-os.cernvm.test";
pub const TEST_TAG: &str = "launch-1";

impl TestCernvm {
    pub fn prepare() -> Self {
        use qemu_tests::launch::{build_iso, cernvm_user_data, generate_ssh_key, guest_server};
        use qemu_tests::scenario::{BootImage, OsRepository, OsSource};
        let work = tempfile::Builder::new()
            .prefix("launch-work-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            work.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let repo = OsRepository::create_from(
            OsSource::Busybox(qemu_tests::inputs::static_busybox().unwrap()),
            TEST_FQRN,
            "launch-r1",
            Some(TEST_TAG),
            qemu_tests::test_os::add_dropbear,
        )
        .unwrap();
        let image = BootImage::with_repository_key(&repo).unwrap();
        let server = guest_server(&repo);
        let iso = build_iso(
            &image,
            TEST_FQRN,
            &server,
            TEST_TAG,
            &work.path().join("ucernvm-test.iso"),
        )
        .unwrap();
        let key = work.path().join("id_test");
        let public = generate_ssh_key(&key).unwrap();
        let user_data = write(
            work.path(),
            "ctx.txt",
            &cernvm_user_data(TEST_FQRN, &server, TEST_TAG, "tester", "secret", &public),
        );
        TestCernvm {
            repo,
            iso,
            key,
            user_data,
            work,
        }
    }
}

/// Everything a boot test needs; the reason if something is missing.
pub fn missing_boot_inputs() -> Option<String> {
    if !qemu_tests::scenario::full_boot_inputs_ready() {
        return Some("kernel, initramfs, cvmfs-publish or static busybox".into());
    }
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("xorriso", "xorriso"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ] {
        if cernvm_launch::vm::find_program(Path::new(tool)).is_none() {
            return Some(format!("{tool} (Debian package {package})"));
        }
    }
    if !Path::new("/usr/sbin/dropbear").is_file() {
        return Some("/usr/sbin/dropbear (Debian package dropbear-bin)".into());
    }
    None
}

/// `ssh TARGET -- args`, retried while the guest's sshd may still be starting.
pub fn ssh(l: &Launcher, target: &str, args: &[&str]) -> Run {
    let mut all = vec!["ssh", target, "--"];
    all.extend_from_slice(args);
    let mut last = None;
    for _ in 0..10 {
        let r = l.run(&all);
        if r.code != 255 {
            return r;
        }
        last = Some(r);
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let r = last.unwrap();
    panic!("ssh {target} failed:\n{}", r.text());
}
