//! The amiconfig form of the user data (spec §5.11, §17.3): INI sections; this OS acts on
//! `[cernvm]` `users=name:group:password[,…]` and `shell=`. Like amiconfig, lines that are
//! neither a section header nor an option are ignored, so the sections are found inside a
//! µCernVM block, a MIME part or after a shell script.

use crate::accounts::{valid_name, Account, Password};

/// Shell of amiconfig users unless `[cernvm] shell=` says otherwise.
pub const DEFAULT_SHELL: &str = "/bin/bash";

/// `section -> [(key, value)]`, in order; later sections of the same name add to it.
pub fn parse_ini(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim().to_ascii_lowercase();
            current = Some(match sections.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    sections.push((name, Vec::new()));
                    sections.len() - 1
                }
            });
            continue;
        }
        // Continuation lines and text outside a section are not options.
        let (Some(i), false) = (current, line.starts_with([' ', '\t'])) else {
            continue;
        };
        let sep = t.find(['=', ':']);
        if let Some(p) = sep {
            let key = t[..p].trim().to_ascii_lowercase();
            if !key.is_empty() && !key.contains(char::is_whitespace) {
                sections[i].1.push((key, t[p + 1..].trim().to_string()));
            }
        }
    }
    sections
}

/// The value of `key` in `section` (the last one wins, as in an INI parser).
pub fn get<'a>(
    ini: &'a [(String, Vec<(String, String)>)],
    section: &str,
    key: &str,
) -> Option<&'a str> {
    ini.iter()
        .filter(|(n, _)| n == section)
        .flat_map(|(_, kv)| kv.iter())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .next_back()
}

/// The accounts of `[cernvm] users=`; malformed entries are reported in the error list and
/// left out. A password that is already a crypt hash (`$id$…`) is kept as it is.
pub fn accounts(text: &str) -> (Vec<Account>, Vec<String>) {
    let ini = parse_ini(text);
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let Some(users) = get(&ini, "cernvm", "users") else {
        return (out, errors);
    };
    let shell = get(&ini, "cernvm", "shell")
        .filter(|s| s.starts_with('/'))
        .unwrap_or(DEFAULT_SHELL);
    for entry in users.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fields: Vec<&str> = entry.splitn(3, ':').collect();
        let [name, group, password] = fields[..] else {
            errors.push(format!(
                "[cernvm] users: entry {:?} is not name:group:password",
                redact(entry)
            ));
            continue;
        };
        if !valid_name(name) || !valid_name(group) {
            errors.push(format!(
                "[cernvm] users: {:?} or {group:?} is not a valid user or group name",
                name
            ));
            continue;
        }
        let password = if password.is_empty() {
            Password::Locked
        } else if crate::accounts::is_crypt_hash(password) {
            Password::Hash(password.to_string())
        } else {
            Password::Plain(password.to_string())
        };
        out.push(Account {
            name: name.to_string(),
            primary_group: Some(group.to_string()),
            shell: Some(shell.to_string()),
            password,
            ..Account::default()
        });
    }
    (out, errors)
}

/// An entry for messages, without its password.
fn redact(entry: &str) -> String {
    let mut f: Vec<&str> = entry.splitn(3, ':').collect();
    if f.len() == 3 {
        f[2] = "…";
    }
    f.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launcher's default user data (spec §17.3).
    const DEFAULT: &str = "[amiconfig]\nplugins=cernvm\n[cernvm]\nauto_login=on\norganisations=\n\
        repositories=\nshell=/bin/bash\nconfig_url=http://cernvm.cern.ch/config\n\
        users=user:user:password\nedition=Desktop\nscreenRes=1280x800\nkeyboard=us-acentos\n\
        startXDM=on\n";

    #[test]
    fn the_launchers_default_user_data() {
        let (acc, errors) = accounts(DEFAULT);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(acc.len(), 1);
        assert_eq!(acc[0].name, "user");
        assert_eq!(acc[0].primary_group.as_deref(), Some("user"));
        assert_eq!(acc[0].shell.as_deref(), Some("/bin/bash"));
        assert_eq!(acc[0].password, Password::Plain("password".into()));
    }

    #[test]
    fn several_users_hashes_and_bad_entries() {
        let text = "junk before\n[ucernvm-begin]\ncvmfs_tag=x\n[ucernvm-end]\n[CernVM]\n\
            users = a:grp:$6$salt$hash, b:b:, bad-entry, Root!:x:y ,c:c:pw:with:colons\n";
        let (acc, errors) = accounts(text);
        let names: Vec<&str> = acc.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(acc[0].password, Password::Hash("$6$salt$hash".into()));
        assert_eq!(acc[1].password, Password::Locked);
        assert_eq!(acc[2].password, Password::Plain("pw:with:colons".into()));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("$6$")));
    }

    #[test]
    fn no_users_without_a_cernvm_section() {
        assert_eq!(accounts("[amiconfig]\nusers=a:a:a\n").0, vec![]);
        assert_eq!(accounts("users=a:a:a\n").0, vec![]);
    }
}
