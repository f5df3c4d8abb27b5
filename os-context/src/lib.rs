//! The demo OS's side of the µCernVM contract (spec Appendix A), one static executable
//! (`cernvm-context`) run by systemd units of the demo OS:
//!
//! - `apply`: accounts, ssh keys, sudo rules and files from `/mnt/.rw/context/user-data`
//!   (amiconfig `[cernvm] users=` and `#cloud-config`, plain or in MIME parts);
//! - `dhcp-lease`: on each DHCP lease, `resolv.conf` and `nameserver set` to the running
//!   `cvmfs2` through its talk socket;
//! - `shared-folder`: the launcher's virtio-9p folder (tag `<vm name>_sf`) on `/mnt/shared`.
//!
//! docs/demo-os.md explains why this is not Debian's cloud-init.

pub mod accounts;
pub mod amiconfig;
pub mod cloud_config;
pub mod dhcp;
pub mod files;
pub mod shared_folder;
pub mod user_data;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use accounts::{Account, Root};

/// Where µCernVM leaves the context for the OS.
pub const CONTEXT_DIR: &str = "/mnt/.rw/context";
/// Digest of the user data applied last, so that a reboot does not apply it again (users may
/// have changed their password since).
pub const APPLIED_STAMP: &str = "var/lib/cernvm-context/applied";

/// What [`apply`] did and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<String>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// SHA-256 of the user data, hex.
fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The user data may carry passwords in clear text (amiconfig): the context directory is made
/// readable by root only.
pub fn protect_context(context: &Path) -> io::Result<()> {
    if context.is_dir() {
        fs::set_permissions(context, fs::Permissions::from_mode(0o700))?;
    }
    let ud = context.join("user-data");
    if ud.is_file() {
        fs::set_permissions(&ud, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Applies the user data in `context` to the OS tree `root`, once per distinct user data.
pub fn apply(context: &Path, root: &Root, force: bool) -> Report {
    let mut report = Report::default();
    if let Err(e) = protect_context(context) {
        report
            .errors
            .push(format!("cannot restrict {}: {e}", context.display()));
    }
    let path = context.join("user-data");
    let raw = match fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report
                .notes
                .push(format!("no {}: nothing to do", path.display()));
            return report;
        }
        Err(e) => {
            report
                .errors
                .push(format!("cannot read {}: {e}", path.display()));
            return report;
        }
    };
    let stamp = root.path(APPLIED_STAMP);
    let sum = digest(&raw);
    if !force && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == sum) {
        report
            .notes
            .push("this user data was applied on an earlier boot".into());
        return report;
    }
    apply_user_data(&raw, root, &mut report);
    if report.errors.is_empty() {
        let written = stamp
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&stamp, format!("{sum}\n")));
        if let Err(e) = written {
            report
                .errors
                .push(format!("cannot write {}: {e}", stamp.display()));
        }
    }
    report
}

/// Applies user data bytes: files (not deferred), accounts (amiconfig first, then
/// cloud-config, so a cloud-config entry adds keys to an amiconfig user), sudo rules, deferred
/// files.
pub fn apply_user_data(raw: &[u8], root: &Root, report: &mut Report) {
    let split = user_data::split(raw);
    report
        .notes
        .extend(split.skipped.iter().map(|s| format!("ignored {s}")));
    let mut wanted: Vec<Account> = Vec::new();
    for text in &split.amiconfig {
        let (users, errors) = amiconfig::accounts(text);
        wanted.extend(users);
        report.errors.extend(errors);
    }
    let mut files = Vec::new();
    for text in &split.cloud_configs {
        match cloud_config::parse(text) {
            Ok(cfg) => {
                wanted.extend(cfg.users);
                files.extend(cfg.write_files);
                report
                    .notes
                    .extend(cfg.ignored.into_iter().map(|i| format!("ignored {i}")));
            }
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for f in files.iter().filter(|f| !f.defer) {
        match files::write(root, f) {
            Ok(()) => report.done.push(format!("wrote {}", f.path)),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for a in &wanted {
        match accounts::apply(root, a) {
            Ok(done) => report.done.extend(done),
            Err(e) => report.errors.push(format!("user {}: {e}", a.name)),
        }
    }
    match accounts::sudoers(&wanted)
        .and_then(|text| accounts::install_sudoers(root, text.as_deref()))
    {
        Ok(()) => {
            if wanted.iter().any(|a| !a.sudo.is_empty()) {
                report
                    .done
                    .push(format!("sudo rules in /{}", accounts::SUDOERS_FILE));
            }
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    for f in files.iter().filter(|f| f.defer) {
        match files::write(root, f) {
            Ok(()) => report.done.push(format!("wrote {}", f.path)),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

/// `/mnt/.rw/...` of the OS as a path below `root` (tests run on a scratch tree).
pub fn os_path(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}
