//! Logging in to a guest over ssh, as a user would: a key pair made with `ssh-keygen`, the
//! guest's port 22 forwarded to a free port of 127.0.0.1 (QEMU `hostfwd`), and the OpenSSH
//! client in batch mode (keys only, no prompts; the guest's fresh host key is not recorded).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// An ed25519 key pair in a temporary directory.
pub struct SshKey {
    pub private: PathBuf,
    /// The `authorized_keys` line.
    pub public: String,
    _dir: tempfile::TempDir,
}

impl SshKey {
    pub fn generate(comment: &str) -> Result<SshKey, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ssh-key-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                what: "cannot create a directory for the ssh key".into(),
                cause: source,
            })?;
        let private = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&private)
            .output()
            .map_err(|source| HarnessError::Io {
                what: "cannot run ssh-keygen".into(),
                cause: source,
            })?;
        let public = std::fs::read_to_string(private.with_extension("pub")).unwrap_or_default();
        if !out.status.success() || public.is_empty() {
            return Err(HarnessError::Io {
                what: format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                cause: std::io::Error::other("ssh-keygen"),
            });
        }
        Ok(SshKey {
            private,
            public: public.trim().to_string(),
            _dir: dir,
        })
    }
}

/// A free TCP port on 127.0.0.1 (for a `hostfwd` rule).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The `hostfwd` rule that forwards `127.0.0.1:<port>` to the guest's sshd.
pub fn hostfwd(port: u16) -> String {
    format!("tcp:127.0.0.1:{port}-:22")
}

/// Runs `command` as `user` in the guest behind `127.0.0.1:<port>`; one attempt.
pub fn run(port: u16, user: &str, key: &Path, command: &str) -> std::io::Result<Output> {
    Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .args([
            "-p",
            &port.to_string(),
            &format!("{user}@127.0.0.1"),
            command,
        ])
        .stdin(Stdio::null())
        .output()
}

/// Like [`run`], retried until it succeeds or `timeout` passes (sshd may still be starting);
/// returns the last output.
pub fn run_until_ok(
    port: u16,
    user: &str,
    key: &Path,
    command: &str,
    timeout: Duration,
) -> std::io::Result<Output> {
    let start = Instant::now();
    loop {
        let out = run(port, user, key, command)?;
        if out.status.success() || start.elapsed() >= timeout {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
