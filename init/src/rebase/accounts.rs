//! Merge of the account databases (spec §10.3, the original's `merge_accounts`): the user's
//! `passwd`, `group`, `shadow`, `gshadow` (upper layer) absorb the new OS's entries; where ids
//! collide, the OS's ids are mapped to free ones and the uid/gid map files tell CernVM-FS to
//! show the OS's files with the mapped owners.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

const PASSWD_FIELDS: usize = 7;
const GROUP_FIELDS: usize = 4;
const SHADOW_FIELDS: usize = 9;
const GSHADOW_FIELDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{file} line {line}: expected {expected} ':'-separated fields, found {found}")]
    Fields {
        file: String,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{file} line {line}: {what} {value:?} is not a number")]
    Id {
        file: String,
        line: usize,
        what: &'static str,
        value: String,
    },
    #[error("{} : {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
}

/// One database: its lines split into exactly `N` fields.
type Table<const N: usize> = Vec<[String; N]>;

/// The four files of one tree (`None` = absent).
#[derive(Debug, Clone, Default)]
pub struct AccountDbs {
    pub passwd: String,
    pub group: String,
    pub shadow: Option<String>,
    pub gshadow: Option<String>,
}

/// Result of a merge; `shadow`/`gshadow` are `None` where the original writes no `.merged` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub passwd: String,
    pub group: String,
    pub shadow: Option<String>,
    pub gshadow: Option<String>,
    /// upstream uid → user uid, ascending.
    pub uid_map: BTreeMap<u32, u32>,
    pub gid_map: BTreeMap<u32, u32>,
    pub log: Vec<String>,
}

fn parse<const N: usize>(text: &str, file: &str) -> Result<Table<N>, MergeError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<String> = l.split(':').map(str::to_string).collect();
            let found = f.len();
            <[String; N]>::try_from(f).map_err(|_| MergeError::Fields {
                file: file.to_string(),
                line: i + 1,
                expected: N,
                found,
            })
        })
        .collect()
}

/// The numeric id in `value`, from line `row + 1` of `file`.
fn id(value: &str, row: usize, file: &str, what: &'static str) -> Result<u32, MergeError> {
    value.parse().map_err(|_| MergeError::Id {
        file: file.to_string(),
        line: row + 1,
        what,
        value: value.to_string(),
    })
}

fn render<const N: usize>(t: &Table<N>) -> String {
    t.iter().map(|f| f.join(":") + "\n").collect()
}

fn members(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// Appends the members of `add` missing from the list in `field`.
fn add_members(field: &mut String, add: &[String]) -> Vec<String> {
    let mut list = members(field);
    let mut added = Vec::new();
    for m in add {
        if !list.contains(m) {
            list.push(m.clone());
            added.push(m.clone());
        }
    }
    *field = list.join(",");
    added
}

/// Merges `upstream` (the new OS) into `user` (the upper layer).
pub fn merge(upstream: &AccountDbs, user: &AccountDbs) -> Result<Merged, MergeError> {
    let mut up_passwd: Table<PASSWD_FIELDS> = parse(&upstream.passwd, "upstream passwd")?;
    let up_group: Table<GROUP_FIELDS> = parse(&upstream.group, "upstream group")?;
    let up_shadow: Option<Table<SHADOW_FIELDS>> = upstream
        .shadow
        .as_deref()
        .map(|s| parse(s, "upstream shadow"))
        .transpose()?;
    let up_gshadow: Option<Table<GSHADOW_FIELDS>> = upstream
        .gshadow
        .as_deref()
        .map(|s| parse(s, "upstream gshadow"))
        .transpose()?;
    let mut passwd: Table<PASSWD_FIELDS> = parse(&user.passwd, "passwd")?;
    let mut group: Table<GROUP_FIELDS> = parse(&user.group, "group")?;
    let mut shadow: Option<Table<SHADOW_FIELDS>> = user
        .shadow
        .as_deref()
        .map(|s| parse(s, "shadow"))
        .transpose()?;
    let mut gshadow: Option<Table<GSHADOW_FIELDS>> = user
        .gshadow
        .as_deref()
        .map(|s| parse(s, "gshadow"))
        .transpose()?;

    let mut max_uid = None;
    for (r, p) in passwd.iter().enumerate() {
        max_uid = max_uid.max(Some(id(&p[2], r, "passwd", "uid")?));
    }
    let mut max_gid = None;
    for (r, g) in group.iter().enumerate() {
        max_gid = max_gid.max(Some(id(&g[2], r, "group", "gid")?));
    }
    let mut next_uid = max_uid.map_or(0, |m| m + 1);
    let mut next_gid = max_gid.map_or(0, |m| m + 1);
    let mut uid_map = BTreeMap::new();
    let mut gid_map = BTreeMap::new();
    let mut log = Vec::new();

    for (r, g) in up_group.iter().enumerate() {
        let up_gid = id(&g[2], r, "upstream group", "gid")?;
        let mut mapped = None;
        let up_members = members(&g[3]);
        if let Some((ui, u)) = group.iter_mut().enumerate().find(|(_, u)| u[0] == g[0]) {
            let user_gid = id(&u[2], ui, "group", "gid")?;
            if user_gid != up_gid {
                mapped = Some(user_gid);
            }
            let added = add_members(&mut u[3], &up_members);
            if !added.is_empty() {
                log.push(format!("group {}: added members {}", g[0], added.join(",")));
            }
            if let Some(gs) = gshadow.as_mut() {
                if let Some(e) = gs.iter_mut().find(|e| e[0] == g[0]) {
                    add_members(&mut e[3], &up_members);
                }
            }
        } else {
            let mut entry = g.clone();
            if group.iter().any(|u| u[2] == g[2]) {
                let new = next_gid;
                next_gid += 1;
                mapped = Some(new);
                entry[2] = new.to_string();
            }
            log.push(format!("adding group {} ({})", entry[0], entry[2]));
            group.push(entry);
        }
        if let Some(to) = mapped {
            log.push(format!("group {}: gid {up_gid} -> {to}", g[0]));
            gid_map.insert(up_gid, to);
            for p in up_passwd.iter_mut() {
                if p[3] == up_gid.to_string() {
                    p[3] = to.to_string();
                }
            }
        }
    }

    for (r, p) in up_passwd.iter().enumerate() {
        let up_uid = id(&p[2], r, "upstream passwd", "uid")?;
        if let Some((ui, u)) = passwd.iter().enumerate().find(|(_, u)| u[0] == p[0]) {
            let user_uid = id(&u[2], ui, "passwd", "uid")?;
            if user_uid != up_uid {
                log.push(format!("user {}: uid {up_uid} -> {user_uid}", p[0]));
                uid_map.insert(up_uid, user_uid);
            }
        } else {
            let mut entry = p.clone();
            if passwd.iter().any(|u| u[2] == p[2]) {
                let new = next_uid;
                next_uid += 1;
                log.push(format!("user {}: uid {up_uid} -> {new}", p[0]));
                uid_map.insert(up_uid, new);
                entry[2] = new.to_string();
            }
            log.push(format!("adding user {} ({})", entry[0], entry[2]));
            passwd.push(entry);
        }
    }

    // shadow.merged exists iff the upstream shadow exists; gshadow.merged iff the user's does.
    let shadow_out = up_shadow.as_ref().map(|up| {
        let mut s = shadow.take().unwrap_or_default();
        for e in up {
            if !s.iter().any(|u| u[0] == e[0]) {
                s.push(e.clone());
            }
        }
        render(&s)
    });
    let gshadow_out = gshadow.as_mut().map(|gs| {
        for e in up_gshadow.iter().flatten() {
            if !gs.iter().any(|u| u[0] == e[0]) {
                gs.push(e.clone());
            }
        }
        render(gs)
    });
    Ok(Merged {
        passwd: render(&passwd),
        group: render(&group),
        shadow: shadow_out,
        gshadow: gshadow_out,
        uid_map,
        gid_map,
        log,
    })
}

/// A map file: `<upstream id> <mapped id>` per line, ascending.
pub fn render_map(map: &BTreeMap<u32, u32>) -> String {
    let mut s = String::new();
    for (from, to) in map {
        let _ = writeln!(s, "{from} {to}");
    }
    s
}

fn read_optional(path: &Path) -> Result<Option<String>, MergeError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {
            std::fs::read_to_string(path)
                .map(Some)
                .map_err(|source| MergeError::Io {
                    path: path.to_path_buf(),
                    cause: source,
                })
        }
        _ => Ok(None),
    }
}

fn read_required(path: &Path) -> Result<String, MergeError> {
    std::fs::read_to_string(path).map_err(|source| MergeError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), MergeError> {
    std::fs::write(path, text).map_err(|source| MergeError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

/// The file-level tool: `merge_accounts <ro>/etc <rw>/etc <uid map> <gid map>`. The map files
/// are truncated first (a failed merge leaves them empty, as the original); on success the
/// `.merged` files are written next to the user's files. Returns the merge for logging.
pub fn merge_files(
    ro_etc: &Path,
    rw_etc: &Path,
    uid_map: &Path,
    gid_map: &Path,
) -> Result<Merged, MergeError> {
    write(uid_map, "")?;
    write(gid_map, "")?;
    let load = |etc: &Path| -> Result<AccountDbs, MergeError> {
        Ok(AccountDbs {
            passwd: read_required(&etc.join("passwd"))?,
            group: read_required(&etc.join("group"))?,
            shadow: read_optional(&etc.join("shadow"))?,
            gshadow: read_optional(&etc.join("gshadow"))?,
        })
    };
    let m = merge(&load(ro_etc)?, &load(rw_etc)?)?;
    write(&rw_etc.join("passwd.merged"), &m.passwd)?;
    write(&rw_etc.join("group.merged"), &m.group)?;
    if let Some(s) = &m.shadow {
        write(&rw_etc.join("shadow.merged"), s)?;
    }
    if let Some(s) = &m.gshadow {
        write(&rw_etc.join("gshadow.merged"), s)?;
    }
    write(uid_map, &render_map(&m.uid_map))?;
    write(gid_map, &render_map(&m.gid_map))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbs(passwd: &str, group: &str, shadow: Option<&str>, gshadow: Option<&str>) -> AccountDbs {
        AccountDbs {
            passwd: passwd.into(),
            group: group.into(),
            shadow: shadow.map(Into::into),
            gshadow: gshadow.map(Into::into),
        }
    }

    #[test]
    fn new_accounts_collisions_renames_and_members() {
        let upstream = dbs(
            "root:x:0:0:root:/root:/bin/bash\n\
             bin:x:1:1:bin:/bin:/sbin/nologin\n\
             chrony:x:998:996::/var/lib/chrony:/sbin/nologin\n\
             tss:x:59:59:tss:/dev/null:/sbin/nologin\n",
            "root:x:0:\nbin:x:1:\nwheel:x:10:admin\nchrony:x:996:\ntss:x:59:\n",
            Some("root:*::0:99999:7:::\nchrony:!!:18000::::::\ntss:!!:18000::::::\n"),
            Some("root:::\nwheel:::admin\nchrony:!::\n"),
        );
        let user = dbs(
            // The user created 'alice' with uid 998 and group 'alice' 996 before the OS got
            // chrony; tss kept its name but has another id in the user db.
            "root:x:0:0:root:/root:/bin/bash\n\
             bin:x:1:1:bin:/bin:/sbin/nologin\n\
             tss:x:60:60:tss:/dev/null:/sbin/nologin\n\
             alice:x:998:996::/home/alice:/bin/bash\n\
             nfsnobody:x:65534:65534::/:/sbin/nologin\n",
            "root:x:0:\nbin:x:1:\nwheel:x:10:alice\ntss:x:60:\nalice:x:996:\nnfsnobody:x:65534:\n",
            Some("root:$6$x$y::0:99999:7:::\nalice:$6$a$b:18000::::::\n"),
            Some("root:::\nwheel:::alice\n"),
        );
        let m = merge(&upstream, &user).unwrap();
        assert_eq!(
            m.passwd,
            "root:x:0:0:root:/root:/bin/bash\n\
             bin:x:1:1:bin:/bin:/sbin/nologin\n\
             tss:x:60:60:tss:/dev/null:/sbin/nologin\n\
             alice:x:998:996::/home/alice:/bin/bash\n\
             nfsnobody:x:65534:65534::/:/sbin/nologin\n\
             chrony:x:65535:65535::/var/lib/chrony:/sbin/nologin\n"
        );
        assert_eq!(
            m.group,
            "root:x:0:\nbin:x:1:\nwheel:x:10:alice,admin\ntss:x:60:\nalice:x:996:\n\
             nfsnobody:x:65534:\nchrony:x:65535:\n"
        );
        assert_eq!(
            m.shadow.as_deref(),
            Some("root:$6$x$y::0:99999:7:::\nalice:$6$a$b:18000::::::\nchrony:!!:18000::::::\ntss:!!:18000::::::\n")
        );
        assert_eq!(
            m.gshadow.as_deref(),
            Some("root:::\nwheel:::alice,admin\nchrony:!::\n")
        );
        assert_eq!(m.uid_map, BTreeMap::from([(59, 60), (998, 65535)]));
        assert_eq!(m.gid_map, BTreeMap::from([(59, 60), (996, 65535)]));
        assert_eq!(render_map(&m.uid_map), "59 60\n998 65535\n");
    }

    #[test]
    fn shadow_and_gshadow_outputs_are_asymmetric_as_in_the_original() {
        let up = dbs("a:x:1:1::/:/bin/sh\n", "a:x:1:\n", None, Some("a:!::\n"));
        let user = dbs(
            "a:x:1:1::/:/bin/sh\n",
            "a:x:1:\n",
            Some("a:*:1::::::\n"),
            None,
        );
        let m = merge(&up, &user).unwrap();
        assert_eq!(m.shadow, None, "no upstream shadow: no shadow.merged");
        assert_eq!(m.gshadow, None, "no user gshadow: no gshadow.merged");
        // User without shadow, upstream with: the merged file holds the upstream entries.
        let up = dbs(
            "a:x:1:1::/:/bin/sh\n",
            "a:x:1:\n",
            Some("a:*:1::::::\n"),
            None,
        );
        let user = dbs("a:x:1:1::/:/bin/sh\n", "a:x:1:\n", None, Some("a:!::\n"));
        let m = merge(&up, &user).unwrap();
        assert_eq!(m.shadow.as_deref(), Some("a:*:1::::::\n"));
        assert_eq!(m.gshadow.as_deref(), Some("a:!::\n"));
        assert!(m.uid_map.is_empty() && m.gid_map.is_empty());
    }

    #[test]
    fn malformed_lines_abort_with_the_place() {
        let good = dbs("a:x:1:1::/:/bin/sh\n", "a:x:1:\n", None, None);
        for (bad, needle) in [
            (
                dbs(
                    "a:x:1:1::/:/bin/sh\n\nb:x:2:2::/:/bin/sh\n",
                    "a:x:1:\n",
                    None,
                    None,
                ),
                "passwd line 2: expected 7",
            ),
            (
                dbs("a:x:1:1::/:/bin/sh\n", "a:x:1\n", None, None),
                "group line 1: expected 4",
            ),
            (
                dbs("a:x:1:1::/:/bin/sh\n", "a:x:1:\n", Some("a:x\n"), None),
                "shadow line 1: expected 9",
            ),
            (
                dbs("a:x:one:1::/:/bin/sh\n", "a:x:1:\n", None, None),
                "uid \"one\"",
            ),
        ] {
            let e = merge(&good, &bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            let e = merge(&bad, &good).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        // A missing final newline is fine; an empty user group file gives new gids from 0.
        let m = merge(
            &dbs("a:x:5:5::/:/bin/sh", "a:x:5:", None, None),
            &dbs("b:x:5:5::/:/bin/sh", "", None, None),
        )
        .unwrap();
        assert_eq!(m.group, "a:x:5:\n");
        assert_eq!(m.passwd, "b:x:5:5::/:/bin/sh\na:x:6:5::/:/bin/sh\n");
    }

    #[test]
    fn files_maps_truncated_first_and_merged_files_written() {
        let t = tempfile::tempdir().unwrap();
        let (ro, rw) = (t.path().join("ro/etc"), t.path().join("rw/etc"));
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::create_dir_all(&rw).unwrap();
        let (um, gm) = (t.path().join("uid_map"), t.path().join("gid_map"));
        std::fs::write(&um, "1 2\n").unwrap();
        std::fs::write(&gm, "1 2\n").unwrap();
        std::fs::write(
            ro.join("passwd"),
            "a:x:1:1::/:/bin/sh\nn:x:2:2::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(ro.join("group"), "a:x:1:\nn:x:2:\n").unwrap();
        std::fs::write(ro.join("shadow"), "n:*:1::::::\n").unwrap();
        std::fs::write(rw.join("passwd"), "u:x:2:2::/:/bin/sh\n").unwrap();
        std::fs::write(rw.join("group"), "u:x:2:\n").unwrap();
        merge_files(&ro, &rw, &um, &gm).unwrap();
        assert_eq!(
            std::fs::read_to_string(rw.join("passwd.merged")).unwrap(),
            "u:x:2:2::/:/bin/sh\na:x:1:1::/:/bin/sh\nn:x:3:3::/:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_to_string(rw.join("group.merged")).unwrap(),
            "u:x:2:\na:x:1:\nn:x:3:\n"
        );
        assert_eq!(
            std::fs::read_to_string(rw.join("shadow.merged")).unwrap(),
            "n:*:1::::::\n"
        );
        assert!(!rw.join("gshadow.merged").exists());
        assert_eq!(std::fs::read_to_string(&um).unwrap(), "2 3\n");
        assert_eq!(std::fs::read_to_string(&gm).unwrap(), "2 3\n");

        // A broken user file: maps end up empty, no new .merged files.
        std::fs::remove_file(rw.join("passwd.merged")).unwrap();
        std::fs::write(rw.join("group"), "broken\n").unwrap();
        assert!(merge_files(&ro, &rw, &um, &gm).is_err());
        assert_eq!(std::fs::read_to_string(&um).unwrap(), "");
        assert_eq!(std::fs::read_to_string(&gm).unwrap(), "");
        assert!(!rw.join("passwd.merged").exists());
    }
}
