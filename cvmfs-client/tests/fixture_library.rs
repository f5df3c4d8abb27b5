//! The library against the real-server fixture, over a real HTTP server: every entry of
//! `expected/v1.json` and `expected/v2.json`, and tampered copies that must fail.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cvmfs_client::repository::{RepoError, Repository, RepositoryOptions};
use cvmfs_client::testing::{copy_tree, fixture_dir, fixture_repository_options, StaticHttpServer};
use serde_json::Value;
use sha2::Digest as _;

const FQRN: &str = "demo.cernvm.test";

fn options(server: &StaticHttpServer, cache: &Path, tag: Option<&str>) -> RepositoryOptions {
    fixture_repository_options(&server.url(), cache, tag)
}

fn repo_path(rel: &str) -> Vec<u8> {
    if rel.is_empty() {
        Vec::new()
    } else {
        format!("/{rel}").into_bytes()
    }
}

fn read_all(repo: &Repository, f: &cvmfs_client::repository::Found) -> Vec<u8> {
    let file = repo.open(f).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = repo.read(&file, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Walks the whole tree through `list` and compares with the expected listing.
fn compare_with_expected(tag: &str) {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join(format!("expected/{tag}.json"))).unwrap(),
    )
    .unwrap();
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::mount(options(&server, cache.path(), Some(tag))).unwrap();
    assert_eq!(
        repo.root_hash().to_string(),
        expected["root_catalog"].as_str().unwrap()
    );
    assert_eq!(repo.revision(), expected["revision"].as_u64().unwrap());

    // Walk the tree.
    let mut seen: BTreeMap<String, cvmfs_client::repository::Found> = BTreeMap::new();
    let root = repo.lookup(b"").unwrap().expect("root entry");
    seen.insert(String::new(), root);
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        for f in repo.list(&dir).unwrap() {
            let rel = String::from_utf8(f.path[1..].to_vec()).unwrap();
            if f.entry.is_dir() {
                stack.push(f.path.clone());
            }
            seen.insert(rel, f);
        }
    }

    let entries = expected["entries"].as_object().unwrap();
    let mut problems = Vec::new();
    let expected_names: Vec<&String> = entries.keys().collect();
    let seen_names: Vec<&String> = seen.keys().collect();
    if expected_names != seen_names {
        problems.push(format!(
            "tree differs: expected {expected_names:?}, got {seen_names:?}"
        ));
    }
    let mut inode_of_group: HashMap<String, u64> = HashMap::new();
    for (rel, want) in entries {
        let Some(found) = seen.get(rel) else { continue };
        // The entry as a lookup sees it (the parent's entry for nested mountpoints).
        let f = repo
            .lookup(&repo_path(rel))
            .unwrap()
            .expect("lookup of listed entry");
        assert_eq!(f.entry.name, found.entry.name);
        let e = &f.entry;
        let mut check = |field: &str, got: String, want: String| {
            if got != want {
                problems.push(format!("{rel}: {field} is {got}, expected {want}"));
            }
        };
        let typ = if e.is_dir() {
            "dir"
        } else if e.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        check("type", typ.into(), want["type"].as_str().unwrap().into());
        check(
            "mode",
            format!("{:04o}", e.mode & 0o7777),
            want["mode"].as_str().unwrap().into(),
        );
        check("size", e.size.to_string(), want["size"].to_string());
        check("uid", e.uid.to_string(), want["uid"].to_string());
        check("gid", e.gid.to_string(), want["gid"].to_string());
        check("mtime", e.mtime.to_string(), want["mtime"].to_string());
        check(
            "nlink",
            e.linkcount().to_string(),
            want["nlink"].to_string(),
        );
        if let Some(t) = want.get("target") {
            check(
                "target",
                String::from_utf8_lossy(&e.symlink).into(),
                t.as_str().unwrap().into(),
            );
            let expanded = repo.expand_symlink(&e.symlink);
            let want_exp = want.get("target_expanded").unwrap_or(t);
            check(
                "target_expanded",
                String::from_utf8_lossy(&expanded).into(),
                want_exp.as_str().unwrap().into(),
            );
        }
        if let Some(sha) = want.get("sha256") {
            let data = read_all(&repo, &f);
            check(
                "sha256",
                hex(&sha2::Sha256::digest(&data)),
                sha.as_str().unwrap().into(),
            );
        }
        let xattrs: BTreeMap<String, String> = repo
            .xattrs(&f)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        let want_x: BTreeMap<String, String> = want["xattrs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        check("xattrs", format!("{xattrs:?}"), format!("{want_x:?}"));
        if let Some(n) = want.get("nested_catalog") {
            check(
                "nested_catalog",
                e.is_nested_mountpoint().to_string(),
                n.to_string(),
            );
        }
        if e.hardlink_group() != 0 {
            let ino = f.inode().unwrap();
            let key = format!("{}", e.hardlink_group());
            let first = *inode_of_group.entry(key).or_insert(ino);
            if first != ino {
                problems.push(format!(
                    "{rel}: hard link has inode {ino}, group has {first}"
                ));
            }
        }
    }
    // Catalogs: every catalog of the revision was attached during the walk.
    let mut cats: Vec<(String, String)> = repo
        .attached_catalogs()
        .iter()
        .map(|a| {
            (
                String::from_utf8(a.catalog.mountpoint.clone()).unwrap(),
                a.catalog.hash.to_string(),
            )
        })
        .collect();
    cats.sort();
    let mut want_cats: Vec<(String, String)> = expected["catalogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["mountpoint"].as_str().unwrap().into(),
                c["hash"].as_str().unwrap().into(),
            )
        })
        .collect();
    want_cats.sort();
    if cats != want_cats {
        problems.push(format!("catalogs {cats:?}, expected {want_cats:?}"));
    }
    // Chunk lists.
    for (path, chunks) in expected["chunked_files"].as_object().unwrap() {
        let f = repo.lookup(&repo_path(path)).unwrap().unwrap();
        let got: Vec<(u64, u64, String)> = repo
            .chunks(&f)
            .unwrap()
            .into_iter()
            .map(|c| (c.offset, c.size, c.hash.to_string()))
            .collect();
        let want: Vec<(u64, u64, String)> = chunks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["offset"].as_u64().unwrap(),
                    c["size"].as_u64().unwrap(),
                    c["hash"].as_str().unwrap().into(),
                )
            })
            .collect();
        if got != want {
            problems.push(format!("{path}: chunks {got:?}, expected {want:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn tag_v1_matches_real_client() {
    compare_with_expected("v1");
}

#[test]
fn tag_v2_matches_real_client() {
    compare_with_expected("v2");
}

#[test]
fn newest_revision_without_tag_is_trunk() {
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::mount(options(&server, cache.path(), None)).unwrap();
    assert_eq!(
        repo.root_hash().to_string(),
        "aba5b83589bd346cdc5f227346927f1428addde2"
    );
    assert_eq!(repo.revision(), 4);
}

#[test]
fn fixed_root_hash_needs_no_manifest_and_works_from_cache() {
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&server, cache.path(), None);
    o.root_hash = Some("f71bcc87c33d8adb3851f22152914744e677878f".parse().unwrap());
    o.public_keys.clear();
    let repo = Repository::mount(o.clone()).unwrap();
    let f = repo.lookup(b"/README.txt").unwrap().unwrap();
    let before = read_all(&repo, &f);
    drop(repo);
    drop(server);
    // The server is gone: catalog and file come from the cache.
    let repo = Repository::mount(o).unwrap();
    let f = repo.lookup(b"/README.txt").unwrap().unwrap();
    assert_eq!(read_all(&repo, &f), before);
}

/// A tampered copy of the fixture's served tree.
struct Tampered {
    _dir: tempfile::TempDir,
    srv: PathBuf,
}

impl Tampered {
    fn new() -> Tampered {
        let dir = tempfile::tempdir().unwrap();
        let srv = dir.path().join("srv");
        copy_tree(&fixture_dir().join("srv"), &srv).unwrap();
        Tampered { _dir: dir, srv }
    }
    fn repo_file(&self, rel: &str) -> PathBuf {
        self.srv.join(format!("cvmfs/{FQRN}/{rel}"))
    }
    fn flip(&self, rel: &str, from_end: usize) {
        let p = self.repo_file(rel);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() - from_end;
        b[i] ^= 0x5a;
        std::fs::write(&p, b).unwrap();
    }
}

fn mount_err(
    t: &Tampered,
    tag: Option<&str>,
    adjust: impl FnOnce(&mut RepositoryOptions),
) -> RepoError {
    let server = StaticHttpServer::start(&t.srv).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&server, cache.path(), tag);
    adjust(&mut o);
    match Repository::mount(o) {
        Ok(_) => panic!("mount succeeded"),
        Err(e) => e,
    }
}

#[test]
fn bad_manifest_signature_is_refused() {
    let t = Tampered::new();
    t.flip(".cvmfspublished", 5);
    let e = mount_err(&t, None, |_| {});
    assert!(matches!(e, RepoError::Manifest { .. }), "{e}");
    assert!(e.to_string().contains("demo.cernvm.test"), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
}

#[test]
fn expired_whitelist_is_refused() {
    let t = Tampered::new();
    // 2037-01-01: after the whitelist's expiry.
    let e = mount_err(&t, None, |o| o.now = 2_114_380_800);
    assert!(
        e.to_string()
            .contains("whitelist expired at 2036-11-25 01:07:33"),
        "{e}"
    );
}

#[test]
fn wrong_master_key_is_refused() {
    let t = Tampered::new();
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("other.pub");
    let priv_key = keydir.path().join("other.key");
    assert!(std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&priv_key)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success());
    assert!(std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&priv_key)
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success());
    let e = mount_err(&t, None, |o| o.public_keys = vec![key.clone()]);
    assert!(matches!(e, RepoError::Whitelist { .. }), "{e}");
    assert!(e.to_string().contains("master key"), "{e}");
}

#[test]
fn corrupt_catalog_is_refused() {
    let t = Tampered::new();
    t.flip("data/ab/a5b83589bd346cdc5f227346927f1428addde2C", 100);
    let e = mount_err(&t, None, |_| {});
    let msg = e.to_string();
    assert!(matches!(e, RepoError::Catalog { .. }), "{msg}");
    assert!(
        msg.contains("data/ab/a5b83589bd346cdc5f227346927f1428addde2C"),
        "{msg}"
    );
}

#[test]
fn corrupt_data_object_and_missing_chunk_give_errors_not_wrong_bytes() {
    let t = Tampered::new();
    let server = StaticHttpServer::start(&t.srv).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::mount(options(&server, cache.path(), Some("v1"))).unwrap();
    // Corrupt the object of README.txt (v1) after mounting.
    let f = repo.lookup(b"/README.txt").unwrap().unwrap();
    let h = f.entry.hash.unwrap();
    t.flip(&h.object_path(cvmfs_client::hash::Suffix::None), 3);
    let e = match repo.open(&f) {
        Ok(_) => panic!("corrupt object was served"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("/README.txt") && e.contains(&h.object_path(cvmfs_client::hash::Suffix::None)),
        "{e}"
    );
    assert!(!cache.path().join(h.cache_path()).exists());

    // Remove the last chunk of big/chunked.dat.
    let f = repo.lookup(b"/big/chunked.dat").unwrap().unwrap();
    let chunks = repo.chunks(&f).unwrap();
    let last = chunks.last().unwrap();
    std::fs::remove_file(t.repo_file(&last.hash.object_path(cvmfs_client::hash::Suffix::Partial)))
        .unwrap();
    let file = repo.open(&f).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(repo.read(&file, 0, &mut buf).unwrap(), 4096);
    let e = repo
        .read(&file, last.offset + 10, &mut buf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/big/chunked.dat") && e.contains("404"), "{e}");
}

#[test]
fn unknown_tag_is_refused() {
    let t = Tampered::new();
    let e = mount_err(&t, Some("v9"), |_| {});
    assert!(e.to_string().contains("tag \"v9\": no such tag"), "{e}");
}
