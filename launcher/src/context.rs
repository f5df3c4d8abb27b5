//! User data: the original's default context (spec §17.3), the account `ssh` logs in as, and
//! the context CD-ROM µCernVM reads like an OpenStack config drive (spec §17.5 step 8, §5.2).

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

/// The original's default amiconfig context (spec §17.3).
pub const DEFAULT_USER_DATA: &str = "\
[amiconfig]
plugins=cernvm

[cernvm]
auto_login=on
organisations=
repositories=
shell=/bin/bash
config_url=http://cernvm.cern.ch/config
users=user:user:password
edition=Desktop
screenRes=1280x800
keyboard=us-acentos
startXDM=on
";

/// Volume label of the context CD-ROM.
pub const CONTEXT_LABEL: &str = "config-2";

/// Paths of the user data on the context CD-ROM (both hold the same bytes).
pub const USER_DATA_PATHS: [&str; 2] = ["ec2/latest/user-data", "openstack/latest/user_data"];
/// Paths of the meta data on the context CD-ROM.
pub const META_DATA_PATHS: [&str; 2] = [
    "ec2/latest/meta-data.json",
    "openstack/latest/meta_data.json",
];

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error("cannot run xorriso to build the context CD-ROM (Debian package xorriso): {0}")]
    NoXorriso(io::Error),
    #[error("xorriso failed to build the context CD-ROM ({status}): {stderr}")]
    Xorriso { status: String, stderr: String },
}

/// The first account the user data creates: amiconfig `[cernvm] users=name:group:password`, or
/// the first `name:` of a `#cloud-config` `users:` list (plain text or a plain-text MIME part).
pub fn default_login(user_data: &str) -> Option<String> {
    let mut section = String::new();
    let mut in_users = false;
    for raw in user_data.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            section = trimmed[1..trimmed.len() - 1].trim().to_string();
            in_users = false;
            continue;
        }
        if section == "cernvm" {
            if let Some((k, v)) = trimmed.split_once('=') {
                if k.trim() == "users" {
                    let first = v.trim().split(',').next()?.split(':').next()?.trim();
                    if !first.is_empty() {
                        return Some(first.to_string());
                    }
                }
            }
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_users = trimmed == "users:";
            continue;
        }
        if in_users {
            let item = trimmed.trim_start_matches('-').trim();
            if let Some(name) = item.strip_prefix("name:") {
                let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
                if !name.is_empty() {
                    return Some(name.to_string());
                }
            }
        }
    }
    None
}

/// Writes the context CD-ROM for `user_data` to `dest` (replaced atomically): ISO 9660 with Rock
/// Ridge and Joliet, label `config-2`, the user data under the EC2 and OpenStack paths, meta
/// data with the machine's `uuid`, and a readme.
pub fn build_context_iso(dest: &Path, user_data: &[u8], uuid: &str) -> Result<(), ContextError> {
    let io = |what: String| {
        move |source| ContextError::Io {
            what,
            cause: source,
        }
    };
    let parent = dest.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".context-")
        .tempdir_in(parent)
        .map_err(io(format!(
            "cannot create a staging directory in {}",
            parent.display()
        )))?;
    let tree = staging.path().join("tree");
    let meta = format!("{{\"uuid\": \"{uuid}\"}}\n");
    let readme = "Context CD-ROM made by cernvm-launch: user data for µCernVM, amiconfig and \
                  cloud-init\n(OpenStack config drive and EC2 layout).\n";
    let mut files: Vec<(&str, &[u8])> = vec![("readme", readme.as_bytes())];
    for p in USER_DATA_PATHS {
        files.push((p, user_data));
    }
    for p in META_DATA_PATHS {
        files.push((p, meta.as_bytes()));
    }
    for (rel, contents) in files {
        let path = tree.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        fs::write(&path, contents).map_err(io(format!("cannot write {}", path.display())))?;
    }
    let tmp = staging.path().join("context.iso");
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-J",
            "-V",
            CONTEXT_LABEL,
            "-o",
        ])
        .arg(&tmp)
        .arg(&tree)
        .output()
        .map_err(ContextError::NoXorriso)?;
    if !out.status.success() {
        return Err(ContextError::Xorriso {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, dest).map_err(io(format!("cannot write {}", dest.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_login_from_amiconfig_and_cloud_config() {
        assert_eq!(default_login(DEFAULT_USER_DATA).as_deref(), Some("user"));
        assert_eq!(
            default_login("[cernvm]\nusers = alice:alice:pw,bob:bob:pw\n").as_deref(),
            Some("alice")
        );
        let cloud = "#cloud-config\nusers:\n  - name: carol\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAA x\n";
        assert_eq!(default_login(cloud).as_deref(), Some("carol"));
        // users= outside [cernvm] is somebody else's key.
        assert_eq!(default_login("[condor]\nusers=x:y:z\n"), None);
        assert_eq!(
            default_login("[ucernvm-begin]\ncvmfs_tag=v1\n[ucernvm-end]\n"),
            None
        );
        // A MIME part in plain text.
        let mime = "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\n\
                    Content-Type: text/cloud-config\n\n#cloud-config\nusers:\n- name: dave\n--B--\n";
        assert_eq!(default_login(mime).as_deref(), Some("dave"));
    }

    #[test]
    fn context_iso_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("context.iso");
        let data = b"[ucernvm-begin]\ncvmfs_branch=x\n[ucernvm-end]\n";
        build_context_iso(&iso, data, "1234").unwrap();
        let out = dir.path().join("out");
        let st = Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&iso)
            .args(["-extract", "/"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        for p in USER_DATA_PATHS {
            assert_eq!(fs::read(out.join(p)).unwrap(), data, "{p}");
        }
        for p in META_DATA_PATHS {
            assert_eq!(
                fs::read_to_string(out.join(p)).unwrap(),
                "{\"uuid\": \"1234\"}\n"
            );
        }
        assert!(out.join("readme").is_file());
        let pvd = Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .arg("-pvd_info")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&pvd.stdout);
        assert!(text.contains("Volume Id    : config-2"), "{text}");
        // Nothing but the image is left next to it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
