//! The `#cloud-config` subset this OS acts on, with cloud-init's meaning: `users` (with
//! `name`, `gecos`, `primary_group`, `groups`, `shell`, `homedir`, `uid`, `system`,
//! `lock_passwd`, `passwd`/`hashed_passwd`, `plain_text_passwd`, `ssh_authorized_keys`,
//! `sudo`), top-level `ssh_authorized_keys` (for the default user) and `write_files` (`path`,
//! `content`, `encoding`, `owner`, `permissions`, `append`, `defer`). Other keys are reported
//! as ignored, never silently.

use base64::Engine as _;
use yaml_rust2::{Yaml, YamlLoader};

use crate::accounts::{is_crypt_hash, Account, Password};

/// cloud-init's default user of this OS (created when `users` is missing or lists `default`).
pub const DEFAULT_USER: &str = "cernvm";

/// Top-level keys acted on.
const KNOWN: [&str; 3] = ["users", "ssh_authorized_keys", "write_files"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    /// `user:group`; default `root:root`.
    pub owner: String,
    pub mode: u32,
    pub append: bool,
    /// Written after the users exist (cloud-init's `defer`).
    pub defer: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfig {
    pub users: Vec<Account>,
    pub write_files: Vec<WriteFile>,
    /// Keys and settings that were not applied (for the log).
    pub ignored: Vec<String>,
}

/// The default user: cloud-init's Debian defaults (password locked, `sudo` group and
/// password-less sudo), named [`DEFAULT_USER`].
pub fn default_user() -> Account {
    Account {
        name: DEFAULT_USER.into(),
        gecos: Some("CernVM default user".into()),
        groups: vec!["sudo".into()],
        shell: Some("/bin/bash".into()),
        sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
        ..Account::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("the cloud-config is not valid YAML: {0}")]
    Yaml(String),
    #[error("the cloud-config is not a mapping at its top level")]
    NotAMapping,
    #[error("{0}")]
    Invalid(String),
}

fn string(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list given as a YAML sequence or as one comma-separated string.
fn list(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().filter_map(string).collect(),
        other => string(other)
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn boolean(y: &Yaml) -> Option<bool> {
    match y {
        Yaml::Boolean(b) => Some(*b),
        Yaml::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Parses one cloud-config document.
pub fn parse(text: &str) -> Result<CloudConfig, CloudConfigError> {
    let docs =
        YamlLoader::load_from_str(text).map_err(|e| CloudConfigError::Yaml(e.to_string()))?;
    let doc = docs.into_iter().next().unwrap_or(Yaml::Null);
    let map = match &doc {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(CloudConfig::default()),
        _ => return Err(CloudConfigError::NotAMapping),
    };
    let mut cfg = CloudConfig::default();
    for key in map.keys() {
        let k = string(key).unwrap_or_default();
        if !KNOWN.contains(&k.as_str()) {
            cfg.ignored
                .push(format!("cloud-config key {k:?} (not supported by this OS)"));
        }
    }
    let top_keys = list(&doc["ssh_authorized_keys"]);
    // cloud-init: no `users` means the default user; `default` in the list means it too.
    let mut want_default = doc["users"].is_badvalue();
    match &doc["users"] {
        Yaml::Array(users) => {
            for u in users {
                match u {
                    Yaml::String(s) if s == "default" => want_default = true,
                    Yaml::String(s) => cfg.users.push(Account {
                        name: s.clone(),
                        ..Account::default()
                    }),
                    Yaml::Hash(_) => cfg.users.push(user(u, &mut cfg.ignored)?),
                    other => {
                        return Err(CloudConfigError::Invalid(format!(
                            "users: an entry is neither a name nor a mapping: {other:?}"
                        )))
                    }
                }
            }
        }
        Yaml::BadValue | Yaml::Null => {}
        _ => return Err(CloudConfigError::Invalid("users is not a list".to_string())),
    }
    if want_default {
        let mut d = default_user();
        d.ssh_keys = top_keys;
        cfg.users.insert(0, d);
    } else if !top_keys.is_empty() {
        cfg.ignored.push(format!(
            "{} top-level ssh_authorized_keys: they belong to the default user, which `users` \
             does not list",
            top_keys.len()
        ));
    }
    match &doc["write_files"] {
        Yaml::Array(files) => {
            for f in files {
                cfg.write_files.push(write_file(f)?);
            }
        }
        Yaml::BadValue | Yaml::Null => {}
        _ => {
            return Err(CloudConfigError::Invalid(
                "write_files is not a list".to_string(),
            ))
        }
    }
    Ok(cfg)
}

fn user(u: &Yaml, ignored: &mut Vec<String>) -> Result<Account, CloudConfigError> {
    let name = string(&u["name"])
        .ok_or_else(|| CloudConfigError::Invalid("users: an entry has no name".into()))?;
    let mut a = Account {
        name: name.clone(),
        primary_group: string(&u["primary_group"]),
        groups: list(&u["groups"]),
        gecos: string(&u["gecos"]),
        home: string(&u["homedir"]),
        shell: string(&u["shell"]),
        uid: match &u["uid"] {
            Yaml::Integer(i) => Some(u32::try_from(*i).map_err(|_| {
                CloudConfigError::Invalid(format!("users: uid {i} of {name} is out of range"))
            })?),
            Yaml::String(s) => Some(s.parse().map_err(|_| {
                CloudConfigError::Invalid(format!("users: uid {s:?} of {name} is not a number"))
            })?),
            _ => None,
        },
        system: boolean(&u["system"]).unwrap_or(false),
        ssh_keys: list(&u["ssh_authorized_keys"]),
        ..Account::default()
    };
    let hashed = string(&u["hashed_passwd"]).or_else(|| string(&u["passwd"]));
    let plain = string(&u["plain_text_passwd"]);
    a.password = match (hashed, plain, boolean(&u["lock_passwd"])) {
        (Some(h), _, _) if is_crypt_hash(&h) => Password::Hash(h),
        (Some(_), _, _) => {
            return Err(CloudConfigError::Invalid(format!(
                "users: the passwd of {name} is not a crypt hash (use plain_text_passwd for \
                 clear text)"
            )))
        }
        (None, Some(p), _) => Password::Plain(p),
        (None, None, Some(true)) => Password::Locked,
        (None, None, _) => Password::Unchanged,
    };
    a.sudo = match &u["sudo"] {
        Yaml::Boolean(false) | Yaml::Null | Yaml::BadValue => Vec::new(),
        other => list(other).into_iter().filter(|r| r != "false").collect(),
    };
    if let Yaml::Hash(h) = u {
        for k in h.keys().filter_map(string) {
            const USER_KEYS: [&str; 14] = [
                "name",
                "primary_group",
                "groups",
                "gecos",
                "homedir",
                "shell",
                "uid",
                "system",
                "ssh_authorized_keys",
                "hashed_passwd",
                "passwd",
                "plain_text_passwd",
                "lock_passwd",
                "sudo",
            ];
            if !USER_KEYS.contains(&k.as_str()) {
                ignored.push(format!("users: {k:?} of {name}"));
            }
        }
    }
    Ok(a)
}

fn write_file(f: &Yaml) -> Result<WriteFile, CloudConfigError> {
    let path = string(&f["path"])
        .ok_or_else(|| CloudConfigError::Invalid("write_files: an entry has no path".into()))?;
    if !path.starts_with('/') {
        return Err(CloudConfigError::Invalid(format!(
            "write_files: {path:?} is not an absolute path"
        )));
    }
    let raw = string(&f["content"]).unwrap_or_default();
    let encoding = string(&f["encoding"])
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bad = |what: &str| {
        CloudConfigError::Invalid(format!("write_files: {path}: the content is not {what}"))
    };
    let content =
        match encoding.as_str() {
            "" | "text/plain" => raw.into_bytes(),
            "b64" | "base64" => b64(&raw).ok_or_else(|| bad("base64"))?,
            "gz" | "gzip" => gunzip(raw.as_bytes()).ok_or_else(|| bad("gzip"))?,
            "gz+b64" | "gzip+base64" | "gz+base64" | "gzip+b64" => b64(&raw)
                .and_then(|b| gunzip(&b))
                .ok_or_else(|| bad("base64-encoded gzip"))?,
            other => {
                return Err(CloudConfigError::Invalid(format!(
                    "write_files: {path}: unknown encoding {other:?}"
                )))
            }
        };
    let mode = match string(&f["permissions"]) {
        None => 0o644,
        Some(p) => {
            let digits = p.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    CloudConfigError::Invalid(format!(
                        "write_files: {path}: permissions {p:?} are not octal"
                    ))
                })?
        }
    };
    Ok(WriteFile {
        path,
        content,
        owner: string(&f["owner"]).unwrap_or_else(|| "root:root".into()),
        mode,
        append: boolean(&f["append"]).unwrap_or(false),
        defer: boolean(&f["defer"]).unwrap_or(false),
    })
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).ok()
}

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(64 << 20)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_keys_sudo_and_passwords() {
        let cfg = parse(
            "#cloud-config\nusers:\n  - default\n  - name: alice\n    groups: [sudo, atlas]\n    \
             sudo: ALL=(ALL) NOPASSWD:ALL\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAA a@h\n    \
             lock_passwd: false\n    passwd: $6$s$h\n  - name: bob\n    plain_text_passwd: pw\n    \
             groups: users, video\n    sudo: false\n    favourite_colour: blue\n  - carol\n\
             ssh_authorized_keys:\n  - ssh-rsa BBBB d@h\npackages: [vim]\n",
        )
        .unwrap();
        let names: Vec<&str> = cfg.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["cernvm", "alice", "bob", "carol"]);
        assert_eq!(cfg.users[0].ssh_keys, ["ssh-rsa BBBB d@h"]);
        assert_eq!(cfg.users[0].sudo, ["ALL=(ALL) NOPASSWD:ALL"]);
        let alice = &cfg.users[1];
        assert_eq!(alice.groups, ["sudo", "atlas"]);
        assert_eq!(alice.sudo, ["ALL=(ALL) NOPASSWD:ALL"]);
        assert_eq!(alice.password, Password::Hash("$6$s$h".into()));
        assert_eq!(alice.ssh_keys, ["ssh-ed25519 AAAA a@h"]);
        let bob = &cfg.users[2];
        assert_eq!(bob.groups, ["users", "video"]);
        assert!(bob.sudo.is_empty());
        assert_eq!(bob.password, Password::Plain("pw".into()));
        assert_eq!(cfg.users[3].password, Password::Unchanged);
        assert!(
            cfg.ignored.iter().any(|i| i.contains("packages")),
            "{:?}",
            cfg.ignored
        );
        assert!(cfg.ignored.iter().any(|i| i.contains("favourite_colour")));
    }

    #[test]
    fn no_users_key_means_the_default_user_with_the_top_level_keys() {
        let cfg = parse("#cloud-config\nssh_authorized_keys: [ssh-ed25519 K1 x]\n").unwrap();
        assert_eq!(cfg.users.len(), 1);
        assert_eq!(cfg.users[0].name, DEFAULT_USER);
        assert_eq!(cfg.users[0].ssh_keys, ["ssh-ed25519 K1 x"]);
        // An explicit list without `default`: the top-level keys have no owner (reported).
        let cfg = parse("#cloud-config\nusers: [{name: a}]\nssh_authorized_keys: [k]\n").unwrap();
        assert_eq!(cfg.users.len(), 1);
        assert_eq!(cfg.ignored.len(), 1, "{:?}", cfg.ignored);
    }

    #[test]
    fn write_files_encodings_modes_and_owners() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"zipped\n").unwrap();
        let gzb64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let text = format!(
            "#cloud-config\nusers: []\nwrite_files:\n  - path: /etc/motd\n    content: |\n      hello\n\
             \x20 - path: /opt/b\n    encoding: b64\n    content: aGk=\n    permissions: '0600'\n    \
             owner: alice:alice\n    defer: true\n  - path: /opt/c\n    encoding: gz+b64\n    \
             content: {gzb64}\n    append: true\n"
        );
        let cfg = parse(&text).unwrap();
        assert!(cfg.users.is_empty());
        let f = &cfg.write_files;
        assert_eq!(f[0].content, b"hello\n");
        assert_eq!((f[0].mode, f[0].owner.as_str()), (0o644, "root:root"));
        assert_eq!(f[1].content, b"hi");
        assert_eq!(
            (f[1].mode, f[1].owner.as_str(), f[1].defer),
            (0o600, "alice:alice", true)
        );
        assert_eq!(f[2].content, b"zipped\n");
        assert!(f[2].append);
    }

    #[test]
    fn clear_errors() {
        for (text, want) in [
            ("#cloud-config\nusers: [\n", "not valid YAML"),
            ("#cloud-config\n- a\n", "not a mapping"),
            ("#cloud-config\nusers:\n  - gecos: x\n", "has no name"),
            (
                "#cloud-config\nusers:\n  - name: a\n    passwd: clear\n",
                "not a crypt hash",
            ),
            (
                "#cloud-config\nwrite_files:\n  - path: rel\n",
                "not an absolute path",
            ),
            (
                "#cloud-config\nwrite_files:\n  - path: /a\n    encoding: b64\n    content: '!!'\n",
                "not base64",
            ),
            (
                "#cloud-config\nwrite_files:\n  - path: /a\n    permissions: '0999'\n",
                "not octal",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
