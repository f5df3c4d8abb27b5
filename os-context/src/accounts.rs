//! Accounts from the user data: groups and users are created with the OS's own `groupadd`,
//! `useradd` and `usermod` (so `/etc/login.defs`, skeleton files and the shadow group work as on
//! any Debian); passwords go into `/etc/shadow` only as crypt hashes (plain text from amiconfig
//! is hashed here with SHA-512 crypt and never written anywhere); `authorized_keys` and sudo
//! rules are written with the modes sshd and sudo insist on.
//!
//! Everything works under a root directory (`/` in the OS; a scratch tree in tests, through the
//! tools' `--prefix`).

use std::collections::BTreeSet;

use path_error::{io_err, PathError};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file of sudo rules this tool owns.
pub const SUDOERS_FILE: &str = "etc/sudoers.d/90-cernvm-context";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Password {
    /// Leave the account's password as it is.
    #[default]
    Unchanged,
    /// Lock password logins (`!` before the hash).
    Locked,
    /// A crypt hash to store as it is.
    Hash(String),
    /// Clear text from the user data: hashed before it is stored.
    Plain(String),
}

/// One account the user data asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// Created if missing; `None`: `useradd`'s default (a group named like the user).
    pub primary_group: Option<String>,
    /// Supplementary groups, created if missing.
    pub groups: Vec<String>,
    pub gecos: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub uid: Option<u32>,
    pub system: bool,
    pub password: Password,
    pub ssh_keys: Vec<String>,
    /// sudo rules, e.g. `ALL=(ALL) NOPASSWD:ALL`.
    pub sudo: Vec<String>,
}

/// A user or group name `useradd` accepts on Debian (and nothing that could be an option or a
/// path): `[a-z_][a-z0-9_-]*[$]?`, at most 32 characters.
pub fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `$id$…` as crypt(3) writes it (SHA-512, SHA-256, yescrypt, bcrypt, MD5).
pub fn is_crypt_hash(s: &str) -> bool {
    let mut f = s.split('$');
    f.next() == Some("")
        && f.next().is_some_and(|id| !id.is_empty())
        && s.matches('$').count() >= 3
        && !s.contains([':', '\n', ' '])
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Invalid(String),
}

/// The OS tree the accounts are made in.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

/// `name:x:uid:gid:gecos:home:shell` of the passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    /// `rel` (a path of the OS, absolute or not) inside this root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    fn is_system_root(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// Runs a shadow-utils tool, with `--prefix` unless the root is `/`.
    fn tool(&self, program: &str, args: &[String]) -> Result<(), AccountError> {
        let mut cmd = Command::new(program);
        if !self.is_system_root() {
            cmd.arg("--prefix").arg(&self.dir);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| AccountError::Tool(format!("cannot run {program}: {e}")))?;
        if !out.status.success() {
            return Err(AccountError::Tool(format!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn names_in(&self, db: &str) -> Result<BTreeSet<String>, AccountError> {
        let path = self.path(db);
        let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect())
    }

    pub fn passwd_entry(&self, name: &str) -> Result<Option<PasswdEntry>, AccountError> {
        let path = self.path("etc/passwd");
        let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[0] == name).then(|| PasswdEntry {
                uid: f[2].parse().unwrap_or(0),
                gid: f[3].parse().unwrap_or(0),
                home: f[5].to_string(),
            })
        }))
    }

    /// The gid of group `name`.
    pub fn group_id(&self, name: &str) -> Result<Option<u32>, AccountError> {
        let path = self.path("etc/group");
        let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| f[2].parse().ok())
                .flatten()
        }))
    }

    fn ensure_group(&self, name: &str, system: bool) -> Result<(), AccountError> {
        if !valid_name(name) {
            return Err(AccountError::Invalid(format!(
                "{name:?} is not a valid group name"
            )));
        }
        if self.names_in("etc/group")?.contains(name) {
            return Ok(());
        }
        let mut args = Vec::new();
        if system {
            args.push("--system".to_string());
        }
        args.push(name.to_string());
        self.tool("groupadd", &args)
    }
}

/// Creates or updates `account`; returns what was done, one line per action.
pub fn apply(root: &Root, account: &Account) -> Result<Vec<String>, AccountError> {
    let name = &account.name;
    if !valid_name(name) {
        return Err(AccountError::Invalid(format!(
            "{name:?} is not a valid user name"
        )));
    }
    let mut done = Vec::new();
    if let Some(g) = &account.primary_group {
        root.ensure_group(g, account.system)?;
    }
    for g in &account.groups {
        root.ensure_group(g, false)?;
    }
    let exists = root.names_in("etc/passwd")?.contains(name);
    if !exists {
        let mut args = vec!["--create-home".to_string()];
        if let Some(g) = &account.primary_group {
            args.extend(["--gid".into(), g.clone()]);
        }
        if !account.groups.is_empty() {
            args.extend(["--groups".into(), account.groups.join(",")]);
        }
        if let Some(s) = &account.shell {
            args.extend(["--shell".into(), s.clone()]);
        }
        if let Some(c) = &account.gecos {
            args.extend(["--comment".into(), c.replace([':', '\n'], " ")]);
        }
        if let Some(h) = &account.home {
            args.extend(["--home-dir".into(), h.clone()]);
        }
        if let Some(u) = account.uid {
            args.extend(["--uid".into(), u.to_string()]);
        }
        if account.system {
            args.push("--system".into());
        }
        args.push(name.clone());
        root.tool("useradd", &args)?;
        done.push(format!("created user {name}"));
    } else if !account.groups.is_empty() {
        root.tool(
            "usermod",
            &[
                "--append".into(),
                "--groups".into(),
                account.groups.join(","),
                name.clone(),
            ],
        )?;
        done.push(format!("added user {name} to {}", account.groups.join(",")));
    }
    match &account.password {
        Password::Unchanged => {}
        Password::Locked => {
            set_shadow_password(root, name, ShadowChange::Lock)?;
            done.push(format!("locked the password of {name}"));
        }
        Password::Hash(h) => {
            set_shadow_password(root, name, ShadowChange::Set(h.clone()))?;
            done.push(format!("set the password of {name} (hash given)"));
        }
        Password::Plain(p) => {
            let h = ucernvm_init::handover::crypt_sha512(p)
                .map_err(|e| AccountError::Tool(format!("cannot hash a password: {e}")))?;
            set_shadow_password(root, name, ShadowChange::Set(h))?;
            done.push(format!("set the password of {name} (SHA-512 crypt)"));
        }
    }
    if !account.ssh_keys.is_empty() {
        let n = add_authorized_keys(root, name, &account.ssh_keys)?;
        done.push(format!(
            "{n} new of {} ssh keys for {name}",
            account.ssh_keys.len()
        ));
    }
    Ok(done)
}

enum ShadowChange {
    Set(String),
    Lock,
}

/// Days since the epoch (the shadow file's date unit).
fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// Changes the password field of `name` in `etc/shadow`: written to a new file with the old
/// file's mode and owner, then renamed over it (a crash leaves the old or the new file).
fn set_shadow_password(root: &Root, name: &str, change: ShadowChange) -> Result<(), AccountError> {
    use std::os::unix::fs::MetadataExt;
    let path = root.path("etc/shadow");
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let meta = fs::metadata(&path).map_err(io_err("cannot stat", &path))?;
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.lines() {
        let mut f: Vec<String> = line.split(':').map(str::to_string).collect();
        if f.len() >= 3 && f[0] == name {
            found = true;
            match &change {
                ShadowChange::Set(h) => {
                    f[1] = h.clone();
                    f[2] = today().to_string();
                }
                ShadowChange::Lock if !f[1].starts_with('!') => f[1] = format!("!{}", f[1]),
                ShadowChange::Lock => {}
            }
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    if !found {
        return Err(AccountError::Invalid(format!(
            "{name} has no line in {}",
            path.display()
        )));
    }
    let tmp = root.path("etc/shadow.cernvm-context");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    f.write_all(out.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("cannot write", &tmp))?;
    nix::unistd::chown(
        &tmp,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    )
    .map_err(|e| io_err("cannot chown", &tmp)(e.into()))?;
    fs::rename(&tmp, &path).map_err(|e| io_err("cannot replace", &path)(e).into())
}

/// Appends the keys `name` does not have yet to `~/.ssh/authorized_keys` (0600 in a 0700
/// directory, owned by the user, as sshd's StrictModes wants). Returns how many were new.
pub fn add_authorized_keys(
    root: &Root,
    name: &str,
    keys: &[String],
) -> Result<usize, AccountError> {
    let entry = root
        .passwd_entry(name)?
        .ok_or_else(|| AccountError::Invalid(format!("no user {name}")))?;
    let home = root.path(&entry.home);
    let ssh = home.join(".ssh");
    let file = ssh.join("authorized_keys");
    fs::create_dir_all(&ssh).map_err(io_err("cannot create", &ssh))?;
    let existing = fs::read_to_string(&file).unwrap_or_default();
    let have: BTreeSet<&str> = existing.lines().map(str::trim).collect();
    let mut new = String::new();
    let mut count = 0;
    for k in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        if k.contains('\n') {
            return Err(AccountError::Invalid(format!(
                "an ssh key of {name} spans several lines"
            )));
        }
        if !have.contains(k) && !new.lines().any(|l| l == k) {
            new.push_str(k);
            new.push('\n');
            count += 1;
        }
    }
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&new);
    fs::write(&file, text).map_err(io_err("cannot write", &file))?;
    let own = |p: &Path| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(entry.uid)),
            Some(nix::unistd::Gid::from_raw(entry.gid)),
        )
        .map_err(|e| io_err("cannot chown", p)(e.into()))
    };
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot chmod", &ssh))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", &file))?;
    own(&ssh)?;
    own(&file)?;
    Ok(count)
}

/// The sudoers text for `accounts` (one `user rule` line per rule), or `None` if none has one.
pub fn sudoers(accounts: &[Account]) -> Result<Option<String>, AccountError> {
    let mut text = String::from("# Written by cernvm-context from the user data.\n");
    let mut any = false;
    for a in accounts {
        for rule in &a.sudo {
            if rule.contains('\n') || rule.trim().is_empty() {
                return Err(AccountError::Invalid(format!(
                    "sudo rule of {} is empty or spans several lines",
                    a.name
                )));
            }
            text.push_str(&format!("{} {}\n", a.name, rule.trim()));
            any = true;
        }
    }
    Ok(any.then_some(text))
}

/// Installs (or removes, for `None`) the sudo rules, 0440, checked with `visudo -cf` first
/// when sudo is installed: a broken file would lock everybody out of sudo.
pub fn install_sudoers(root: &Root, text: Option<&str>) -> Result<(), AccountError> {
    let path = root.path(SUDOERS_FILE);
    let Some(text) = text else {
        let _ = fs::remove_file(&path);
        return Ok(());
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    let tmp = dir.join(".90-cernvm-context.new");
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o440)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err("cannot write", &tmp))?;
    if let Ok(out) = Command::new("visudo").arg("-cf").arg(&tmp).output() {
        if !out.status.success() {
            let _ = fs::remove_file(&tmp);
            return Err(AccountError::Invalid(format!(
                "the sudo rules do not parse: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
    }
    fs::rename(&tmp, &path).map_err(|e| io_err("cannot install", &path)(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hashes() {
        for ok in ["user", "_x", "a-b_9", "machine$"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "-rf",
            "a b",
            "a/b",
            "9a",
            "a:b",
            &"x".repeat(33),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(is_crypt_hash("$6$salt$abc"));
        assert!(is_crypt_hash("$y$j9T$salt$abc"));
        assert!(!is_crypt_hash("password"));
        assert!(!is_crypt_hash("$6$"));
        assert!(!is_crypt_hash("$6$a$b:c"));
    }

    #[test]
    fn sudoers_lines() {
        let a = Account {
            name: "u".into(),
            sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
            ..Account::default()
        };
        let text = sudoers(&[a.clone(), Account::default()]).unwrap().unwrap();
        assert!(text.ends_with("u ALL=(ALL) NOPASSWD:ALL\n"), "{text}");
        assert_eq!(sudoers(&[Account::default()]).unwrap(), None);
        let bad = Account {
            sudo: vec!["ALL\nroot ALL".into()],
            ..a
        };
        assert!(sudoers(&[bad]).is_err());
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A minimal Debian-like /etc in a scratch directory.
    fn scratch_root() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        fs::create_dir_all(etc.join("skel")).unwrap();
        fs::create_dir_all(t.path().join("home")).unwrap();
        fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::write(etc.join("group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        fs::write(etc.join("shadow"), "root:!:20000:0:99999:7:::\n").unwrap();
        fs::write(etc.join("gshadow"), "root:*::\nsudo:*::\n").unwrap();
        fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(etc.join("skel/.profile"), "# skel\n").unwrap();
        fs::write(
            etc.join("login.defs"),
            "UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\nUSERGROUPS_ENAB yes\n\
             SYS_UID_MIN 100\nSYS_UID_MAX 999\nSYS_GID_MIN 100\nSYS_GID_MAX 999\n",
        )
        .unwrap();
        let root = Root::new(t.path());
        (t, root)
    }

    #[test]
    fn creates_users_with_hashed_passwords_keys_and_groups() {
        if !is_root() || Command::new("useradd").arg("--help").output().is_err() {
            eprintln!("skipping: needs root and shadow-utils (useradd --prefix)");
            return;
        }
        let (_t, root) = scratch_root();
        let user = Account {
            name: "alice".into(),
            primary_group: Some("physics".into()),
            groups: vec!["sudo".into(), "atlas".into()],
            shell: Some("/bin/bash".into()),
            password: Password::Plain("s3cret".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nz alice@host".into()],
            ..Account::default()
        };
        let done = apply(&root, &user).unwrap();
        assert_eq!(done[0], "created user alice", "{done:?}");
        let shadow = fs::read_to_string(root.path("etc/shadow")).unwrap();
        let line = shadow.lines().find(|l| l.starts_with("alice:")).unwrap();
        let hash = line.split(':').nth(1).unwrap();
        assert!(
            hash.starts_with("$6$") && !shadow.contains("s3cret"),
            "{line}"
        );
        assert_eq!(
            fs::metadata(root.path("etc/shadow"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        let entry = root.passwd_entry("alice").unwrap().unwrap();
        assert_eq!(Some(entry.gid), root.group_id("physics").unwrap());
        let group = fs::read_to_string(root.path("etc/group")).unwrap();
        assert!(
            group
                .lines()
                .any(|l| l.starts_with("atlas:") && l.ends_with(":alice")),
            "{group}"
        );
        assert!(group.lines().any(|l| l == "sudo:x:27:alice"), "{group}");
        let keys = root.path(&format!("{}/.ssh/authorized_keys", entry.home));
        assert_eq!(
            fs::read_to_string(&keys).unwrap(),
            "ssh-ed25519 AAAAC3Nz alice@host\n"
        );
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&keys).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o600, entry.uid));

        // Again, with one more key and a lock: nothing is duplicated.
        let again = Account {
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3Nz alice@host".into(),
                "ssh-rsa BBBB second".into(),
            ],
            password: Password::Locked,
            groups: vec![],
            ..user
        };
        let done = apply(&root, &again).unwrap();
        assert_eq!(
            done,
            vec![
                "locked the password of alice".to_string(),
                "1 new of 2 ssh keys for alice".to_string()
            ]
        );
        assert_eq!(fs::read_to_string(&keys).unwrap().lines().count(), 2);
        let shadow = fs::read_to_string(root.path("etc/shadow")).unwrap();
        assert!(shadow.contains(&format!("alice:!{hash}:")), "{shadow}");
    }

    #[test]
    fn a_bad_name_is_refused_before_any_tool_runs() {
        let (_t, root) = scratch_root();
        let bad = Account {
            name: "--help".into(),
            ..Account::default()
        };
        assert!(matches!(apply(&root, &bad), Err(AccountError::Invalid(_))));
        let bad_group = Account {
            name: "ok".into(),
            primary_group: Some("Bad Group".into()),
            ..Account::default()
        };
        assert!(matches!(
            apply(&root, &bad_group),
            Err(AccountError::Invalid(_))
        ));
    }

    #[test]
    fn sudo_rules_are_installed_read_only() {
        let (_t, root) = scratch_root();
        install_sudoers(&root, Some("u ALL=(ALL) NOPASSWD:ALL\n")).unwrap();
        let p = root.path(SUDOERS_FILE);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o440
        );
        install_sudoers(&root, None).unwrap();
        assert!(!p.exists());
    }
}
