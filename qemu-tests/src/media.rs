//! Virtual media for the guests: blank qcow2 scratch disks (`qemu-img`) and context CD-ROMs
//! (`genisoimage`), made with the same tools users and clouds use.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::HarnessError;

fn run(what: &str, cmd: &mut Command) -> Result<(), HarnessError> {
    let out = cmd.output().map_err(|source| HarnessError::Io {
        what: format!("cannot run {what}"),
        cause: source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Io {
            what: format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            cause: io::Error::other("tool failed"),
        })
    }
}

/// Creates an empty (sparse) qcow2 disk of `size_mib` MiB, as a cloud or a user would attach.
pub fn blank_qcow2(path: &Path, size_mib: u64) -> Result<(), HarnessError> {
    run(
        "qemu-img create",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg(format!("{size_mib}M")),
    )
}

/// Builds an ISO 9660 image (Rock Ridge + Joliet) with volume label `label` holding `files`
/// (relative path → contents), like the context CD-ROMs of OpenNebula (`CONTEXT`), OpenStack's
/// config drive (`config-2`) or vSphere.
pub fn context_iso(path: &Path, label: &str, files: &[(&str, &[u8])]) -> Result<(), HarnessError> {
    let staging = tempfile::tempdir().map_err(|source| HarnessError::Io {
        what: "cannot create a staging directory".into(),
        cause: source,
    })?;
    for (rel, contents) in files {
        let dest = staging.path().join(rel);
        let io_err = |source| HarnessError::Io {
            what: format!("cannot stage {rel}"),
            cause: source,
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        fs::write(&dest, contents).map_err(io_err)?;
    }
    run(
        "genisoimage",
        Command::new("genisoimage")
            .args(["-quiet", "-J", "-R", "-V", label, "-o"])
            .arg(path)
            .arg(staging.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_disk_has_the_requested_virtual_size() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("scratch.qcow2");
        blank_qcow2(&disk, 2048).unwrap();
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(text.contains("\"virtual-size\": 2147483648"), "{text}");
        assert!(text.contains("\"format\": \"qcow2\""), "{text}");
        // The disk is sparse: creating it costs almost nothing.
        assert!(fs::metadata(&disk).unwrap().len() < 1024 * 1024);
    }

    #[test]
    fn context_iso_carries_label_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("context.iso");
        context_iso(
            &iso,
            "config-2",
            &[(
                "openstack/latest/user_data",
                b"[ucernvm-begin]\ncvmfs_tag=v1\n",
            )],
        )
        .unwrap();
        let listing = Command::new("isoinfo")
            .args(["-R", "-f", "-i"])
            .arg(&iso)
            .output()
            .unwrap();
        let files = String::from_utf8_lossy(&listing.stdout);
        assert!(files.contains("/openstack/latest/user_data"), "{files}");
        let pvd = Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&iso)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&pvd.stdout).contains("Volume id: config-2"));
        let bad = context_iso(&dir.path().join("missing/dir/x.iso"), "X", &[]);
        assert!(bad.is_err());
    }
}
