//! Running the `cernvm-launch` binary in a home directory of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fails (with `UCERNVM_REQUIRE_ALL=1`, as in CI) or skips with a message when a prerequisite
/// of a test is missing.
#[macro_export]
macro_rules! require {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            let msg = format!($($msg)+);
            if std::env::var_os("UCERNVM_REQUIRE_ALL").is_some_and(|v| v == "1") {
                panic!("missing prerequisite: {msg}");
            }
            eprintln!("skipping: {msg}");
            return;
        }
    };
}

/// A user of the launcher: a fresh home directory (so a fresh `~/.cernvm-launch.conf` and data
/// directory) and the environment the binary runs with.
pub struct Launcher {
    pub home: tempfile::TempDir,
    pub env: Vec<(String, String)>,
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
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cernvm-launch"));
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
