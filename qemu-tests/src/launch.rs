//! Pieces for booting CernVMs through `cernvm-launch` (the demo and the launcher tests): a
//! µCernVM ISO made by `scripts/build-iso` that trusts a test repository's key, and user data
//! that points µCernVM at that repository and gives an account an ssh key.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::scenario::{BootImage, OsRepository};
use crate::{inputs, HarnessError};

/// The guest's view of the host's 127.0.0.1 in QEMU user networking.
pub const GUEST_GATEWAY: &str = "10.0.2.2";

/// `host:port` of `repo`'s server as the guest sees it.
pub fn guest_server(repo: &OsRepository) -> String {
    format!("{GUEST_GATEWAY}:{}", repo.port())
}

/// Builds a µCernVM ISO with `scripts/build-iso` from `image` (kernel and the initramfs with the
/// repository key), whose boot menu points at repository `fqrn` on `server` (`host:port` as
/// the guest sees it) at `tag`, the OS at the repository root.
pub fn build_iso(
    image: &BootImage,
    fqrn: &str,
    server: &str,
    tag: &str,
    output: &Path,
) -> Result<PathBuf, HarnessError> {
    let script = inputs::workspace_root().join("scripts/build-iso");
    let out = Command::new(&script)
        .arg("--kernel")
        .arg(&image.kernel)
        .arg("--initrd")
        .arg(&image.initrd)
        .args(["--repo", fqrn])
        .args(["--server", server])
        .args(["--path", "/", "--tag", tag, "--output"])
        .arg(output)
        .output()
        .map_err(|source| HarnessError::Io {
            what: format!("cannot run {}", script.display()),
            cause: source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Io {
            what: format!(
                "scripts/build-iso failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            cause: std::io::Error::other("build-iso failed"),
        });
    }
    Ok(output.to_path_buf())
}

/// MIME multipart user data (plain-text parts, so µCernVM's and amiconfig's line scans find
/// their sections): a `text/ucernvm` part pointing µCernVM at repository `fqrn` on `server`
/// (`host:port` as the guest sees it) at `tag`, an amiconfig part creating `user` with
/// `password`, and a `#cloud-config` part giving `user` the ssh public keys (one per line).
pub fn cernvm_user_data(
    fqrn: &str,
    server: &str,
    tag: &str,
    user: &str,
    password: &str,
    ssh_public_keys: &str,
) -> String {
    let boundary = "==ucernvm-launch-user-data==";
    let part = |kind: &str, file: &str, body: &str| {
        format!(
            "--{boundary}\nContent-Type: text/{kind}; charset=\"us-ascii\"\n\
             Content-Transfer-Encoding: 7bit\n\
             Content-Disposition: attachment; filename=\"{file}\"\n\n{body}\n"
        )
    };
    let ucernvm = format!(
        "[ucernvm-begin]\ncvmfs_server={server}\ncvmfs_branch={fqrn}\n\
         cvmfs_tag={tag}\ncvmfs_http_proxy=DIRECT\n[ucernvm-end]\n"
    );
    let amiconfig = format!(
        "[amiconfig]\nplugins=cernvm\n\n[cernvm]\nusers={user}:{user}:{password}\nshell=/bin/bash\n"
    );
    let keys: String = ssh_public_keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| format!("      - {k}\n"))
        .collect();
    let cloud = format!(
        "#cloud-config\nusers:\n  - name: {user}\n    shell: /bin/bash\n    ssh_authorized_keys:\n{keys}"
    );
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n{}{}{}--{boundary}--\n",
        part("ucernvm", "ucernvm", &ucernvm),
        part("amiconfig-user-data", "amiconfig", &amiconfig),
        part("cloud-config", "cloud-config", &cloud),
    )
}

/// Generates an ed25519 key pair without passphrase at `path` (and `path.pub`).
pub fn generate_ssh_key(path: &Path) -> Result<String, HarnessError> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "cernvm-launch-demo",
            "-f",
        ])
        .arg(path)
        .output()
        .map_err(|source| HarnessError::Io {
            what: "cannot run ssh-keygen (Debian package openssh-client)".into(),
            cause: source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Io {
            what: format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            cause: std::io::Error::other("ssh-keygen failed"),
        });
    }
    std::fs::read_to_string(format!("{}.pub", path.display())).map_err(|source| HarnessError::Io {
        what: "cannot read the generated public key".into(),
        cause: source,
    })
}
