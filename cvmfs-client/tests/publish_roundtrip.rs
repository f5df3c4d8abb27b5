//! `cvmfs-publish` end to end: source trees published with the real binary, served by a real
//! HTTP server, mounted with our library and (as root) through the kernel with our `cvmfs2`,
//! and compared entry by entry with the source (type, mode, uid/gid, mtime, size, content,
//! symlink targets, xattrs, hard links). Also: the catalog and history schemas are the real
//! server's, revisions and tags, deduplication, and tampering detection.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cvmfs_client::hash::{ContentHash, Suffix};
use cvmfs_client::repository::{Found, Repository, RepositoryOptions};
use cvmfs_client::testing::{copy_tree, fixture_dir, StaticHttpServer};
use sha2::Digest as _;

const FQRN: &str = "pub.cernvm.test";
/// Small chunks so that multi-chunk files stay small in tests.
const CHUNKS: &str = "65536,262144,1048576";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    nix::unistd::geteuid().is_root()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let times = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    if is_root() {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A tree with everything a catalog can describe.
fn build_source(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    };
    std::fs::create_dir_all(root).unwrap();
    for (i, size) in [0usize, 1, 100, 4095, 4096, 4097, 65_535, 65_536, 300_000]
        .into_iter()
        .enumerate()
    {
        w(
            &format!("sizes/f{size}"),
            &pseudo_random(size, i as u64 + 1),
        );
    }
    // Above the chunking threshold: several chunks; compressible and incompressible.
    w("big/random.bin", &pseudo_random(3_000_000, 99));
    w("big/text.txt", &b"0123456789abcdef\n".repeat(150_000));
    w("empty", b"");
    w("names/with space.txt", b"space\n");
    w("names/ünïcödé-日本語.txt", b"unicode\n");
    w("names/.hidden", b"hidden\n");
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory, variant.
    std::os::unix::fs::symlink("../sizes/f100", root.join("names/rel")).unwrap();
    std::os::unix::fs::symlink("/cvmfs/pub.cernvm.test/empty", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("sizes", root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("$(PUB_ARCH:-x86_64)/lib", root.join("variant")).unwrap();
    // Hard links: three in one directory, plus one from another directory.
    let h1 = w("links/h1", b"hard linked content\n");
    std::fs::hard_link(&h1, root.join("links/h2")).unwrap();
    std::fs::hard_link(&h1, root.join("links/h3")).unwrap();
    std::fs::hard_link(&h1, root.join("sizes/outside_link")).unwrap();
    // Extended attributes on a file and a directory.
    let x = w("xattr/labelled.txt", b"labelled\n");
    set_xattr(&x, "user.colour", b"blue");
    set_xattr(&x, "user.empty", b"");
    set_xattr(&root.join("xattr"), "user.dirlabel", b"yes");
    // Modes and owners.
    let p = w("perms/private", b"secret\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    lchown(&p, 1000, 1000);
    let p = w("perms/readonly", b"ro\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    let p = w("perms/setuid", b"#!/bin/sh\n");
    lchown(&p, 4242, 100);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir_all(root.join("perms/sticky")).unwrap();
    std::fs::set_permissions(
        root.join("perms/sticky"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    lchown(&root.join("perms/sticky"), 0, 100);
    lchown(&root.join("names/rel"), 1000, 1000);
    // A FIFO.
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // Nested catalogs, two levels, with a chunked file and a hard link inside.
    w("nested/.cvmfscatalog", b"");
    w("nested/top.txt", b"top\n");
    w("nested/plain/p.txt", b"plain\n");
    w("nested/inner/.cvmfscatalog", b"");
    w("nested/inner/deep/leaf.txt", b"leaf\n");
    w("nested/inner/chunked.bin", &pseudo_random(2_500_000, 7));
    let l = w("nested/inner/l1", b"linked in a nested catalog\n");
    std::fs::hard_link(&l, root.join("nested/inner/l2")).unwrap();
    w("static/.cvmfscatalog", b"");
    w("static/unchanging.txt", b"never changes\n");
    // Deterministic mtimes, bottom-up so directories keep theirs.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_700_000_000 + i as i64 * 1000, 123_456_789);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            collect(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// What a client must show for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Info {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    mtime_ns: u32,
    nlink: u32,
    /// sha256 of regular-file content, or the raw symlink target.
    content: String,
    xattrs: BTreeMap<String, String>,
    /// Sibling names sharing this inode (hard-link group), sorted; empty if none.
    same_inode: Vec<String>,
}

type Snapshot = BTreeMap<String, Info>;

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn list_xattrs(p: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    for key in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
    {
        let k = CString::new(key).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0, "lgetxattr {}", p.display());
        v.truncate(m as usize);
        out.insert(
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(&v).into_owned(),
        );
    }
    out
}

/// Snapshot of a real directory tree (the source, or a FUSE mount). With `as_source`, the
/// expectations of a publish are applied: hard links only within one directory, directory
/// link counts 2 + subdirectories, symlink sizes = target length.
fn snapshot_dir(root: &Path, as_source: bool, with_ns: bool) -> Snapshot {
    let mut out = Snapshot::new();
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let mut children: Vec<(String, std::fs::Metadata)> = Vec::new();
        if m.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                children.push((name.clone(), std::fs::symlink_metadata(e.path()).unwrap()));
                stack.push((format!("{rel}/{name}"), e.path()));
            }
        }
        let ft = m.file_type();
        let content = if ft.is_file() {
            sha256(&std::fs::read(&path).unwrap())
        } else if ft.is_symlink() {
            String::from_utf8_lossy(std::fs::read_link(&path).unwrap().as_os_str().as_bytes())
                .into_owned()
        } else {
            String::new()
        };
        let mut info = Info {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_dir() || ft.is_file() || ft.is_symlink() {
                m.size()
            } else {
                0
            },
            mtime: m.mtime(),
            mtime_ns: if with_ns { m.mtime_nsec() as u32 } else { 0 },
            nlink: m.nlink() as u32,
            content,
            xattrs: list_xattrs(&path),
            same_inode: Vec::new(),
        };
        if as_source && ft.is_dir() {
            info.nlink = 2 + children.iter().filter(|(_, c)| c.is_dir()).count() as u32;
        }
        out.insert(rel.clone(), info);
        // Hard-link groups among the children of this directory (applied at the end, when
        // the children have been visited).
        let mut by_ino: HashMap<u64, Vec<String>> = HashMap::new();
        for (name, c) in children.iter().filter(|(_, c)| c.is_file()) {
            by_ino.entry(c.ino()).or_default().push(name.clone());
        }
        for (name, c) in children.iter().filter(|(_, c)| c.is_file()) {
            let mut group = by_ino[&c.ino()].clone();
            group.sort();
            links.insert(format!("{rel}/{name}"), group);
        }
    }
    for (path, group) in links {
        if let Some(i) = out.get_mut(&path) {
            if as_source {
                i.nlink = group.len() as u32;
            }
            i.same_inode = if group.len() > 1 { group } else { Vec::new() };
        }
    }
    out
}

/// Snapshot through our library.
fn snapshot_repo(repo: &Repository) -> Snapshot {
    let mut out = Snapshot::new();
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    let root = repo.lookup(b"").unwrap().expect("root entry");
    let mut stack = vec![root];
    while let Some(f) = stack.pop() {
        let rel = String::from_utf8_lossy(&f.path).into_owned();
        let children = if f.entry.is_dir() {
            repo.list(&f.path).unwrap()
        } else {
            Vec::new()
        };
        let e = &f.entry;
        let content = if e.is_regular() {
            sha256(&read_all(repo, &f))
        } else if e.is_symlink() {
            String::from_utf8_lossy(&e.symlink).into_owned()
        } else {
            String::new()
        };
        let xattrs = repo
            .xattrs(&f)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        out.insert(
            rel,
            Info {
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                size: e.size,
                mtime: e.mtime,
                mtime_ns: e.mtime_ns,
                nlink: e.linkcount(),
                content,
                xattrs,
                same_inode: Vec::new(),
            },
        );
        let mut by_inode: HashMap<u64, Vec<String>> = HashMap::new();
        for c in &children {
            if c.entry.is_regular() {
                by_inode
                    .entry(c.inode().unwrap())
                    .or_default()
                    .push(String::from_utf8_lossy(&c.entry.name).into_owned());
            }
        }
        for c in &children {
            if c.entry.is_regular() {
                let mut g = by_inode[&c.inode().unwrap()].clone();
                g.sort();
                if g.len() > 1 {
                    links.insert(String::from_utf8_lossy(&c.path).into_owned(), g);
                }
            }
        }
        stack.extend(children);
    }
    for (path, group) in links {
        if let Some(i) = out.get_mut(&path) {
            i.same_inode = group;
        }
    }
    out
}

fn read_all(repo: &Repository, f: &Found) -> Vec<u8> {
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

/// Through the kernel, variant symlinks are expanded (`PUB_ARCH` is not set).
fn as_seen_by_fuse(expected: &Snapshot) -> Snapshot {
    let mut s = expected.clone();
    let v = s.get_mut("/variant").expect("/variant");
    v.content = "x86_64/lib".into();
    v.size = v.content.len() as u64;
    s
}

fn assert_same(expected: &Snapshot, actual: &Snapshot, what: &str) {
    let mut problems = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => problems.push(format!("{path}: missing")),
            Some(a) if a != e => {
                problems.push(format!("{path}:\n  expected {e:?}\n  got      {a:?}"))
            }
            Some(_) => {}
        }
    }
    for path in actual.keys() {
        if !expected.contains_key(path) {
            problems.push(format!("{path}: not in the source"));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// A served directory `<tmp>/srv/cvmfs/<fqrn>` and a key directory.
struct Site {
    tmp: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn srv(&self) -> PathBuf {
        self.tmp.path().join("srv")
    }
    fn repo(&self) -> PathBuf {
        self.srv().join("cvmfs").join(FQRN)
    }
    fn keys(&self) -> PathBuf {
        self.tmp.path().join("keys")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn publish(&self, source: &Path, extra: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cvmfs-publish"))
            .args(["--fqrn", FQRN, "--chunk-size", CHUNKS, "--repo"])
            .arg(self.repo())
            .arg("--keys")
            .arg(self.keys())
            .args(extra)
            .arg(source)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cvmfs-publish failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn options(&self, server: &StaticHttpServer, tag: Option<&str>) -> RepositoryOptions {
        let cache = self.path(&format!("cache-{}", tag.unwrap_or("trunk")));
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).unwrap();
        RepositoryOptions {
            fqrn: FQRN.into(),
            server_url: format!("{}/cvmfs/{FQRN}", server.url()),
            proxy: "DIRECT".into(),
            download: cvmfs_client::download::DownloadSettings::default(),
            public_keys: vec![self.keys().join(format!("{FQRN}.pub"))],
            trusted_certs: Vec::new(),
            blacklist: Vec::new(),
            cache_dir: cache,
            quota_limit: None,
            tag: tag.map(str::to_string),
            root_hash: None,
            environment: HashMap::new(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            work_in_cache_dir: false,
        }
    }

    fn mount(&self, server: &StaticHttpServer, tag: Option<&str>) -> Repository {
        Repository::mount(self.options(server, tag)).unwrap()
    }
}

/// Decompressed object from a served repository.
fn object(repo: &Path, hash: &ContentHash, suffix: Suffix) -> Vec<u8> {
    let raw = std::fs::read(repo.join(hash.object_path(suffix))).unwrap();
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn manifest(repo: &Path) -> cvmfs_client::manifest::Manifest {
    let buf = std::fs::read(repo.join(".cvmfspublished")).unwrap();
    cvmfs_client::manifest::Manifest::parse_signed(&buf, FQRN)
        .unwrap()
        .0
}

/// Writes a decompressed database object to `dir/name` and opens it with sqlite.
fn database(repo: &Path, hash: &ContentHash, suffix: Suffix, file: &Path) -> rusqlite::Connection {
    std::fs::write(file, object(repo, hash, suffix)).unwrap();
    rusqlite::Connection::open(file).unwrap()
}

fn schema_sql(conn: &rusqlite::Connection) -> Vec<String> {
    let mut st = conn
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn round_trip_through_library_and_fuse() {
    let site = Site::new();
    let src = site.path("src");
    build_source(&src);
    let out = site.publish(&src, &["--tag", "v1"]);
    assert!(out.contains("revision 1"), "{out}");
    let expected = snapshot_dir(&src, true, false);
    assert!(expected.len() > 40, "{} entries", expected.len());

    let server = StaticHttpServer::start(&site.srv()).unwrap();
    let repo = site.mount(&server, None);
    assert_eq!(repo.revision(), 1);
    assert_same(&expected, &snapshot_repo(&repo), "library mount");
    // Chunked files really are chunked (with the small chunk sizes).
    let big = repo.lookup(b"/big/random.bin").unwrap().unwrap();
    assert!(big.entry.is_chunked());
    assert!(repo.chunks(&big).unwrap().len() >= 3);
    // Nested catalogs are where the markers are.
    let mounts: Vec<String> = repo
        .attached_catalogs()
        .iter()
        .map(|a| String::from_utf8_lossy(&a.catalog.mountpoint).into_owned())
        .collect();
    for m in ["", "/nested", "/nested/inner", "/static"] {
        assert!(mounts.contains(&m.to_string()), "{m} not in {mounts:?}");
    }
    drop(repo);

    if let Some(reason) = fuse::skip_reason() {
        test_prereq::skip(reason);
        return;
    }
    let mounted = fuse::Mounted::start(&site, &server, None);
    assert_same(
        &as_seen_by_fuse(&expected),
        &snapshot_dir(&mounted.mnt, false, false),
        "cvmfs2 FUSE mount",
    );
}

#[test]
fn schemas_and_properties_are_the_real_servers() {
    let site = Site::new();
    let src = site.path("src");
    build_source(&src);
    site.publish(&src, &["--tag", "v1"]);
    let repo = site.repo();
    let m = manifest(&repo);
    let fixture_srv = fixture_dir().join("srv/cvmfs/demo.cernvm.test");
    let fixture_m = {
        let buf = std::fs::read(fixture_srv.join(".cvmfspublished")).unwrap();
        cvmfs_client::manifest::Manifest::parse_signed(&buf, "demo.cernvm.test")
            .unwrap()
            .0
    };

    // Catalog schema, page size and property keys as in the real server's catalogs.
    let ours = database(
        &repo,
        &m.root_catalog,
        Suffix::Catalog,
        &site.path("root.db"),
    );
    let theirs = database(
        &fixture_srv,
        &fixture_m.root_catalog,
        Suffix::Catalog,
        &site.path("fixture-root.db"),
    );
    assert_eq!(schema_sql(&ours), schema_sql(&theirs));
    let page = |c: &rusqlite::Connection| -> i64 {
        c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(page(&ours), page(&theirs));
    let keys = |c: &rusqlite::Connection, t: &str, k: &str| -> Vec<String> {
        let mut st = c
            .prepare(&format!("SELECT {k} FROM {t} ORDER BY {k}"))
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        keys(&ours, "properties", "key"),
        keys(&theirs, "properties", "key")
    );
    assert_eq!(
        keys(&ours, "statistics", "counter"),
        keys(&theirs, "statistics", "counter")
    );
    let prop = |c: &rusqlite::Connection, k: &str| -> String {
        c.query_row("SELECT value FROM properties WHERE key = ?1", [k], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(prop(&ours, "schema"), "2.5");
    assert_eq!(prop(&ours, "schema_revision"), "7");
    assert_eq!(prop(&ours, "revision"), "1");
    assert_eq!(
        prop(&ours, "last_modified"),
        m.timestamp.unwrap().to_string()
    );

    // Counters agree with the rows.
    let stat = |c: &rusqlite::Connection, k: &str| -> i64 {
        c.query_row(
            "SELECT value FROM statistics WHERE counter = ?1",
            [k],
            |r| r.get(0),
        )
        .unwrap()
    };
    let count =
        |c: &rusqlite::Connection, q: &str| -> i64 { c.query_row(q, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        stat(&ours, "self_regular"),
        count(
            &ours,
            "SELECT COUNT(*) FROM catalog WHERE (mode & 61440) = 32768"
        )
    );
    assert_eq!(
        stat(&ours, "self_dir"),
        count(
            &ours,
            "SELECT COUNT(*) FROM catalog WHERE (mode & 61440) = 16384"
        )
    );
    assert_eq!(
        stat(&ours, "self_file_size"),
        count(
            &ours,
            "SELECT SUM(size) FROM catalog WHERE (mode & 61440) = 32768"
        )
    );
    assert_eq!(
        stat(&ours, "self_chunks"),
        count(&ours, "SELECT COUNT(*) FROM chunks")
    );
    assert_eq!(stat(&ours, "self_nested"), 2);
    assert_eq!(stat(&ours, "self_symlink"), 5);
    assert_eq!(stat(&ours, "self_special"), 1);
    assert_eq!(stat(&ours, "subtree_nested"), 1);
    // Root entry: parent (0, 0), empty name; nested root and mountpoint flags.
    assert_eq!(
        count(
            &ours,
            "SELECT COUNT(*) FROM catalog WHERE parent_1 = 0 AND parent_2 = 0 AND name = ''"
        ),
        1
    );
    assert_eq!(
        count(&ours, "SELECT flags FROM catalog WHERE name = 'nested'"),
        3
    );

    let nested_hash: ContentHash = ours
        .query_row(
            "SELECT sha1 FROM nested_catalogs WHERE path = '/nested'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
        .parse()
        .unwrap();
    let nested = database(
        &repo,
        &nested_hash,
        Suffix::Catalog,
        &site.path("nested.db"),
    );
    assert_eq!(prop(&nested, "root_prefix"), "/nested");
    assert_eq!(
        count(&nested, "SELECT flags FROM catalog WHERE name = 'nested'"),
        33
    );

    // History database.
    let ours = database(
        &repo,
        &m.history.unwrap(),
        Suffix::History,
        &site.path("h.db"),
    );
    let theirs = database(
        &fixture_srv,
        &fixture_m.history.unwrap(),
        Suffix::History,
        &site.path("fixture-h.db"),
    );
    assert_eq!(schema_sql(&ours), schema_sql(&theirs));
    assert_eq!(
        keys(&ours, "properties", "key"),
        keys(&theirs, "properties", "key")
    );
    assert_eq!(prop(&ours, "fqrn"), FQRN);
    assert_eq!(keys(&ours, "tags", "name"), vec!["trunk", "v1"]);

    // Manifest fields in the real server's order (the fixture also has M and Y).
    let text = String::from_utf8(m.to_letter()).unwrap();
    let order: String = text.lines().map(|l| &l[..1]).collect();
    assert_eq!(order, "CBRDSGANXHT");
    assert_eq!(
        std::fs::read(repo.join(".cvmfspublished")).unwrap()[..text.len()],
        *text.as_bytes()
    );

    // The certificate object is the key directory's certificate; private keys are 0600.
    let cert = object(&repo, &m.certificate.unwrap(), Suffix::Certificate);
    assert_eq!(
        cert,
        std::fs::read(site.keys().join(format!("{FQRN}.crt"))).unwrap()
    );
    for k in ["masterkey", "key"] {
        let mode = std::fs::metadata(site.keys().join(format!("{FQRN}.{k}")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{k}");
    }
    // Whitelist expiry: 30 days by default.
    let wl = std::fs::read_to_string(repo.join(".cvmfswhitelist").as_path()).unwrap_or_else(|_| {
        String::from_utf8_lossy(&std::fs::read(repo.join(".cvmfswhitelist")).unwrap()).into_owned()
    });
    let expiry = &wl.lines().nth(1).unwrap()[1..];
    let in_30_days =
        cvmfs_config::calendar::timestamp_text(m.timestamp.unwrap() as i64 + 30 * 86_400);
    assert_eq!(expiry, in_30_days);
    assert!(repo.join(".cvmfs_last_snapshot").is_file());
}

#[test]
fn two_revisions_with_tags() {
    let site = Site::new();
    let v1_src = site.path("v1");
    build_source(&v1_src);
    site.publish(&v1_src, &["--tag", "v1", "--mtime-ns"]);
    let m1 = manifest(&site.repo());
    let v1_expected = snapshot_dir(&v1_src, true, true);

    // Revision 2: changed, added and removed files, a changed nested catalog, an unchanged
    // one, and nanosecond mtimes.
    let v2_src = site.path("v2");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&v1_src)
        .arg(&v2_src)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(v2_src.join("sizes/f100"), b"changed in v2\n").unwrap();
    // Same size and mtime, different bytes: must not be mistaken for unchanged.
    let same_size = v2_src.join("names/with space.txt");
    let old_mtime = std::fs::symlink_metadata(&same_size).unwrap().mtime();
    std::fs::write(&same_size, b"SPACE\n").unwrap();
    set_mtime(&same_size, old_mtime, 123_456_789);
    // Chunked file with one byte changed in its middle: only the chunks around it change.
    let chunked = v2_src.join("big/random.bin");
    let mut data = std::fs::read(&chunked).unwrap();
    data[1_500_000] ^= 0xff;
    let chunked_mtime = std::fs::symlink_metadata(&chunked).unwrap().mtime();
    std::fs::write(&chunked, &data).unwrap();
    set_mtime(&chunked, chunked_mtime, 123_456_789);
    std::fs::write(v2_src.join("added_in_v2.txt"), b"new\n").unwrap();
    std::fs::remove_file(v2_src.join("empty")).unwrap();
    std::fs::write(v2_src.join("nested/inner/deep/leaf.txt"), b"leaf v2\n").unwrap();
    // /nested/inner stops being a nested catalog; a directory becomes a file.
    std::fs::remove_file(v2_src.join("nested/inner/.cvmfscatalog")).unwrap();
    std::fs::remove_dir_all(v2_src.join("emptydir")).unwrap();
    std::fs::write(v2_src.join("emptydir"), b"now a file\n").unwrap();
    std::fs::create_dir(v2_src.join("v2nested")).unwrap();
    std::fs::write(v2_src.join("v2nested/.cvmfscatalog"), b"").unwrap();
    std::fs::write(v2_src.join("v2nested/x.txt"), b"x\n").unwrap();
    set_mtime(&v2_src.join("added_in_v2.txt"), 1_750_000_000, 987_654_321);
    let out = site.publish(&v2_src, &["--tag", "v2", "--mtime-ns"]);
    assert!(out.contains("revision 2"), "{out}");
    let v2_expected = snapshot_dir(&v2_src, true, true);
    let m2 = manifest(&site.repo());
    assert_eq!(m2.revision, 2);
    assert_ne!(m1.root_catalog, m2.root_catalog);

    let server = StaticHttpServer::start(&site.srv()).unwrap();
    let r1 = site.mount(&server, Some("v1"));
    assert_eq!(r1.root_hash(), m1.root_catalog);
    assert_same(&v1_expected, &snapshot_repo(&r1), "tag v1");
    let r2 = site.mount(&server, Some("v2"));
    assert_same(&v2_expected, &snapshot_repo(&r2), "tag v2");
    // Content-defined chunking: the changed byte changes only the chunk that holds it.
    let chunk_hashes = |r: &Repository| -> Vec<ContentHash> {
        let f = r.lookup(b"/big/random.bin").unwrap().unwrap();
        r.chunks(&f).unwrap().iter().map(|c| c.hash).collect()
    };
    let (c1, c2) = (chunk_hashes(&r1), chunk_hashes(&r2));
    let shared = c2.iter().filter(|h| c1.contains(h)).count();
    assert!(
        c2.len() >= 3 && shared + 1 == c2.len(),
        "{shared} of {} chunks shared",
        c2.len()
    );
    let trunk = site.mount(&server, None);
    assert_eq!(trunk.root_hash(), m2.root_catalog);
    assert_eq!(trunk.revision(), 2);

    // History: the server's automatic tags plus ours.
    let h = database(
        &site.repo(),
        &m2.history.unwrap(),
        Suffix::History,
        &site.path("h.db"),
    );
    let tags: Vec<(String, String, i64)> = h
        .prepare("SELECT name, hash, revision FROM tags ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (c1, c2) = (m1.root_catalog.to_string(), m2.root_catalog.to_string());
    assert_eq!(
        tags,
        vec![
            ("trunk".into(), c2.clone(), 2),
            ("trunk-previous".into(), c1.clone(), 1),
            ("v1".into(), c1.clone(), 1),
            ("v2".into(), c2, 2),
        ]
    );
    let prev_history: String = h
        .query_row(
            "SELECT value FROM properties WHERE key = 'previous_revision'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(prev_history, m1.history.unwrap().to_string());

    // Catalog revisions: the root's predecessor, the changed nested catalog's predecessor,
    // and the unchanged nested catalog is the same object in both revisions.
    let nested_of = |m: &cvmfs_client::manifest::Manifest, file: &str| -> HashMap<String, String> {
        let db = database(
            &site.repo(),
            &m.root_catalog,
            Suffix::Catalog,
            &site.path(file),
        );
        let r: HashMap<String, String> = db
            .prepare("SELECT path, sha1 FROM nested_catalogs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        r
    };
    let n1 = nested_of(&m1, "r1.db");
    let n2 = nested_of(&m2, "r2.db");
    assert_eq!(
        n1["/static"], n2["/static"],
        "unchanged nested catalog rewritten"
    );
    assert_ne!(n1["/nested"], n2["/nested"]);
    assert!(n2.contains_key("/v2nested"));
    let root2 = database(
        &site.repo(),
        &m2.root_catalog,
        Suffix::Catalog,
        &site.path("r2b.db"),
    );
    let prev: String = root2
        .query_row(
            "SELECT value FROM properties WHERE key = 'previous_revision'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(prev, c1);
    let nested2 = database(
        &site.repo(),
        &n2["/nested"].parse().unwrap(),
        Suffix::Catalog,
        &site.path("n2.db"),
    );
    let (rev, prev): (String, String) = nested2
        .query_row(
            "SELECT (SELECT value FROM properties WHERE key = 'revision'), \
             (SELECT value FROM properties WHERE key = 'previous_revision')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rev.as_str(), prev.as_str()), ("2", n1["/nested"].as_str()));
    let inner_nested: i64 = nested2
        .query_row("SELECT COUNT(*) FROM nested_catalogs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        inner_nested, 0,
        "/nested/inner is no longer a nested catalog"
    );

    if let Some(reason) = fuse::skip_reason() {
        test_prereq::skip(reason);
        return;
    }
    drop((r1, r2, trunk));
    let mounted = fuse::Mounted::start(&site, &server, Some("v1"));
    assert_same(
        &as_seen_by_fuse(&v1_expected),
        &snapshot_dir(&mounted.mnt, false, true),
        "cvmfs2 tag v1",
    );
    drop(mounted);
    let mounted = fuse::Mounted::start(&site, &server, Some("v2"));
    assert_same(
        &as_seen_by_fuse(&v2_expected),
        &snapshot_dir(&mounted.mnt, false, true),
        "cvmfs2 tag v2",
    );
}

/// Extracts the real-server fixture at `tag` into `dest` through our library (modes,
/// owners, mtimes, xattrs, hard links, `.cvmfscatalog` markers).
fn extract_fixture(tag: &str, dest: &Path) {
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::mount(RepositoryOptions {
        fqrn: "demo.cernvm.test".into(),
        server_url: format!("{}/cvmfs/demo.cernvm.test", server.url()),
        proxy: "DIRECT".into(),
        download: cvmfs_client::download::DownloadSettings::default(),
        public_keys: vec![fixture_dir().join("keys/demo.cernvm.test.pub")],
        trusted_certs: Vec::new(),
        blacklist: Vec::new(),
        cache_dir: cache.path().to_path_buf(),
        quota_limit: None,
        tag: Some(tag.into()),
        root_hash: None,
        environment: HashMap::new(),
        now: 1_795_867_200,
        work_in_cache_dir: false,
    })
    .unwrap();
    let target = |f: &Found| dest.join(std::ffi::OsStr::from_bytes(&f.path[1..]));
    let mut dirs = vec![repo.lookup(b"").unwrap().unwrap()];
    let mut all: Vec<Found> = Vec::new();
    std::fs::create_dir_all(dest).unwrap();
    while let Some(d) = dirs.pop() {
        let mut first_of_group: HashMap<u32, PathBuf> = HashMap::new();
        for c in repo.list(&d.path).unwrap() {
            let p = target(&c);
            let e = &c.entry;
            if e.is_dir() {
                std::fs::create_dir(&p).unwrap();
                dirs.push(c.clone());
            } else if e.is_symlink() {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&e.symlink), &p).unwrap();
            } else if let Some(first) = first_of_group.get(&e.hardlink_group()) {
                std::fs::hard_link(first, &p).unwrap();
            } else {
                std::fs::write(&p, read_all(&repo, &c)).unwrap();
                if e.hardlink_group() != 0 {
                    first_of_group.insert(e.hardlink_group(), p.clone());
                }
            }
            all.push(c);
        }
    }
    all.push(repo.lookup(b"").unwrap().unwrap());
    // Attributes bottom-up, so that directory mtimes stay.
    all.sort_by_key(|f| std::cmp::Reverse(f.path.len()));
    for f in &all {
        let p = if f.path.is_empty() {
            dest.to_path_buf()
        } else {
            target(f)
        };
        let e = &f.entry;
        for (k, v) in repo.xattrs(f).unwrap() {
            set_xattr(&p, &String::from_utf8_lossy(&k), &v);
        }
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).unwrap();
        if !e.is_symlink() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777)).unwrap();
        }
        set_mtime(&p, e.mtime, 0);
    }
}

fn rows(db: &rusqlite::Connection, query: &str) -> Vec<String> {
    let mut st = db.prepare(query).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((0..n)
            .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
            .collect::<Vec<_>>()
            .join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The fixture's newest tree, extracted and published with the real server's default chunk
/// sizes, gives catalogs whose rows, chunk boundaries and counters equal the real server's.
#[test]
fn fixture_tree_republished_gives_the_real_servers_catalogs() {
    if !is_root() {
        test_prereq::skip("needs root (owners of the fixture entries)");
        return;
    }
    let site = Site::new();
    let src = site.path("src");
    extract_fixture("v2", &src);
    let out = Command::new(env!("CARGO_BIN_EXE_cvmfs-publish"))
        .args(["--fqrn", FQRN, "--repo"])
        .arg(site.repo())
        .arg("--keys")
        .arg(site.keys())
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fixture_srv = fixture_dir().join("srv/cvmfs/demo.cernvm.test");
    let theirs_root: ContentHash = "aba5b83589bd346cdc5f227346927f1428addde2".parse().unwrap();
    let ours_root = manifest(&site.repo()).root_catalog;

    // Walk both catalog trees in parallel by mountpoint.
    let mut pending = vec![(String::new(), ours_root, theirs_root)];
    let mut compared = 0;
    while let Some((mountpoint, ours, theirs)) = pending.pop() {
        let name = mountpoint.replace('/', "_");
        let a = database(
            &site.repo(),
            &ours,
            Suffix::Catalog,
            &site.path(&format!("o{name}.db")),
        );
        let b = database(
            &fixture_srv,
            &theirs,
            Suffix::Catalog,
            &site.path(&format!("t{name}.db")),
        );
        // Every column but the content hash (zlib implementations may compress differently,
        // so object names may differ; contents were compared by the round-trip tests).
        let entries = "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, size, mode, \
                       mtime, mtimens, flags, name, symlink, uid, gid, xattr, hash IS NULL \
                       FROM catalog ORDER BY md5path_1, md5path_2";
        assert_eq!(
            rows(&a, entries),
            rows(&b, entries),
            "catalog rows of {mountpoint:?}"
        );
        let chunks = "SELECT md5path_1, md5path_2, offset, size FROM chunks ORDER BY 1, 2, 3";
        assert_eq!(
            rows(&a, chunks),
            rows(&b, chunks),
            "chunks of {mountpoint:?}"
        );
        let stats = "SELECT counter, value FROM statistics ORDER BY counter";
        assert_eq!(
            rows(&a, stats),
            rows(&b, stats),
            "statistics of {mountpoint:?}"
        );
        let props = "SELECT key FROM properties WHERE key NOT IN ('revision', 'previous_revision') ORDER BY key";
        assert_eq!(
            rows(&a, props),
            rows(&b, props),
            "property keys of {mountpoint:?}"
        );
        let nested = |db: &rusqlite::Connection| -> BTreeMap<String, ContentHash> {
            let r: BTreeMap<String, ContentHash> = db
                .prepare("SELECT path, sha1 FROM nested_catalogs")
                .unwrap()
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .unwrap()
                .map(|r| {
                    let (p, h) = r.unwrap();
                    (p, h.parse().unwrap())
                })
                .collect();
            r
        };
        let (na, nb) = (nested(&a), nested(&b));
        assert_eq!(na.keys().collect::<Vec<_>>(), nb.keys().collect::<Vec<_>>());
        for (path, h) in na {
            pending.push((path.clone(), h, nb[&path]));
        }
        compared += 1;
    }
    assert_eq!(compared, 4, "root, /nested, /nested/inner, /v2dir");
}

/// Objects below `data/`: name → (size, mtime in ns).
fn objects(repo: &Path) -> BTreeMap<String, (u64, i128)> {
    let mut out = BTreeMap::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        let d = d.unwrap();
        if d.file_name() == "txn" {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap();
            out.insert(
                format!(
                    "{}{}",
                    d.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ),
                {
                    let m = f.metadata().unwrap();
                    (
                        m.len(),
                        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                    )
                },
            );
        }
    }
    out
}

#[test]
fn republishing_the_same_tree_is_deduplicated() {
    let site = Site::new();
    let src = site.path("src");
    build_source(&src);
    site.publish(&src, &[]);
    let m1 = manifest(&site.repo());
    let before = objects(&site.repo());
    let out = site.publish(&src, &[]);
    assert!(out.contains("revision 2"), "{out}");
    // Every file was recognised as unchanged (compared with the stored objects, not
    // compressed again).
    let mut inodes = std::collections::HashSet::new();
    let mut all = Vec::new();
    collect(&src, &mut all);
    for p in &all {
        let m = std::fs::symlink_metadata(p).unwrap();
        if m.is_file() {
            inodes.insert(m.ino());
        }
    }
    assert!(
        out.contains(&format!(" {} unchanged)", inodes.len())),
        "{out}"
    );
    let m2 = manifest(&site.repo());
    let after = objects(&site.repo());

    // Only the new root catalog and history database are new; every data object, chunk,
    // nested catalog and the certificate are reused.
    let new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let mut expected_new = vec![
        format!("{}C", m2.root_catalog),
        format!("{}H", m2.history.unwrap()),
    ];
    expected_new.sort();
    let mut new_sorted: Vec<String> = new.into_iter().cloned().collect();
    new_sorted.sort();
    assert_eq!(new_sorted, expected_new);
    // Existing objects are not rewritten: same size and same modification time.
    for (k, size_and_mtime) in &before {
        assert_eq!(after.get(k), Some(size_and_mtime), "{k} was rewritten");
    }
    assert_eq!(m1.certificate, m2.certificate);

    // The two root catalogs hold identical rows; their properties differ only in revision,
    // time stamp and predecessor.
    let a = site.path("a.db");
    let b = site.path("b.db");
    drop(database(
        &site.repo(),
        &m1.root_catalog,
        Suffix::Catalog,
        &a,
    ));
    drop(database(
        &site.repo(),
        &m2.root_catalog,
        Suffix::Catalog,
        &b,
    ));
    assert!(cvmfs_client::publish::catalog_writer::same_content(&a, &b).unwrap());
    let props = |p: &Path| -> BTreeMap<String, String> {
        let c = rusqlite::Connection::open(p).unwrap();
        let r: BTreeMap<String, String> = c
            .prepare("SELECT key, value FROM properties")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        r
    };
    let (pa, pb) = (props(&a), props(&b));
    let differing: Vec<&String> = pa.keys().filter(|k| pa.get(*k) != pb.get(*k)).collect();
    for k in &differing {
        assert!(
            ["revision", "last_modified", "previous_revision"].contains(&k.as_str()),
            "property {k} differs"
        );
    }
    assert_eq!(pb["previous_revision"], m1.root_catalog.to_string());
}

#[test]
fn uncompressed_file_data_round_trip() {
    let site = Site::new();
    let src = site.path("src");
    build_source(&src);
    site.publish(&src, &["--no-compress"]);
    let m = manifest(&site.repo());
    // File data is stored as is (catalog flag "no compression"); catalogs stay zlib.
    let db = database(
        &site.repo(),
        &m.root_catalog,
        Suffix::Catalog,
        &site.path("r.db"),
    );
    let (flags, hash): (i64, Vec<u8>) = db
        .query_row(
            "SELECT flags, hash FROM catalog WHERE name = 'f4096'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(flags, 4 | 2048);
    let h = ContentHash::from_digest(cvmfs_client::hash::Algorithm::Sha1, &hash).unwrap();
    assert_eq!(
        std::fs::read(site.repo().join(h.object_path(Suffix::None))).unwrap(),
        std::fs::read(src.join("sizes/f4096")).unwrap()
    );
    let server = StaticHttpServer::start(&site.srv()).unwrap();
    let repo = site.mount(&server, None);
    assert_same(
        &snapshot_dir(&src, true, false),
        &snapshot_repo(&repo),
        "uncompressed",
    );
}

#[test]
fn tampering_is_detected_by_our_client() {
    let site = Site::new();
    let src = site.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file.txt"), b"content\n").unwrap();
    site.publish(&src, &[]);
    let server = StaticHttpServer::start(&site.srv()).unwrap();
    Repository::mount(site.options(&server, None)).expect("untampered repository mounts");

    let flip = |name: &str, from_end: usize| {
        let p = site.repo().join(name);
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - from_end] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    };
    let backup = site.path("backup");
    copy_tree(&site.repo(), &backup).unwrap();
    let restore = || {
        std::fs::remove_dir_all(site.repo()).unwrap();
        copy_tree(&backup, &site.repo()).unwrap();
    };

    flip(".cvmfspublished", 5);
    let e = Repository::mount(site.options(&server, None))
        .err()
        .expect("tampered repository mounted");
    assert!(e.to_string().to_lowercase().contains("signature"), "{e}");
    restore();
    flip(".cvmfswhitelist", 5);
    let e = Repository::mount(site.options(&server, None))
        .err()
        .expect("tampered repository mounted");
    assert!(e.to_string().to_lowercase().contains("signature"), "{e}");
    restore();

    // Another repository's master key does not verify our whitelist.
    let other = tempfile::tempdir().unwrap();
    cvmfs_client::publish::keys::RepositoryKeys::load_or_create(other.path(), FQRN).unwrap();
    let mut opts = site.options(&server, None);
    opts.public_keys = vec![other.path().join(format!("{FQRN}.pub"))];
    assert!(Repository::mount(opts).is_err());

    // A corrupted data object is refused at read time.
    let repo = Repository::mount(site.options(&server, None)).unwrap();
    let f = repo.lookup(b"/file.txt").unwrap().unwrap();
    let obj = site
        .repo()
        .join(f.entry.hash.unwrap().object_path(Suffix::None));
    let mut b = std::fs::read(&obj).unwrap();
    b[3] ^= 1;
    std::fs::write(&obj, b).unwrap();
    let file = repo.open(&f);
    let failed = match file {
        Err(_) => true,
        Ok(h) => repo.read(&h, 0, &mut [0u8; 64]).is_err(),
    };
    assert!(failed, "corrupted object was accepted");
}

#[test]
fn bad_input_gives_clear_errors() {
    let site = Site::new();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cvmfs-publish"))
            .args(args)
            .output()
            .unwrap()
    };
    let repo = site.repo();
    let keys = site.keys();
    let (r, k) = (repo.to_str().unwrap(), keys.to_str().unwrap());
    let missing = site.path("missing");
    let out = run(&[
        "--fqrn",
        FQRN,
        "--repo",
        r,
        "--keys",
        k,
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing"), "{err}");

    let src = site.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let s = src.to_str().unwrap();
    let out = run(&[
        "--fqrn",
        FQRN,
        "--repo",
        r,
        "--keys",
        k,
        "--chunk-size",
        "8,4,2",
        s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk"));
    let out = run(&[
        "--fqrn", FQRN, "--repo", r, "--keys", k, "--tag", "trunk", s,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    let out = run(&["--fqrn", "bad/name", "--repo", r, "--keys", k, s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid repository name"));
    // A tampered current manifest is not built upon.
    site.publish(&src, &[]);
    let p = repo.join(".cvmfspublished");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 3] ^= 1;
    std::fs::write(&p, b).unwrap();
    let out = run(&["--fqrn", FQRN, "--repo", r, "--keys", k, s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("current manifest"));
}

/// 200 MB in about 20 000 small files: publish and verify every file through the library.
#[test]
#[ignore = "large: about 200 MB of input; run with --ignored"]
fn large_tree_of_many_small_files() {
    let site = Site::new();
    let src = site.path("src");
    let mut total = 0usize;
    let mut i = 0u64;
    while total < 200_000_000 {
        let size = (i as usize * 7919) % 20_000;
        let data = pseudo_random(size, i + 1);
        let dir = src.join(format!("d{:03}", i % 200));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), &data).unwrap();
        total += size;
        i += 1;
    }
    let started = Instant::now();
    let out = site.publish(&src, &[]);
    eprintln!("{out}({} files, {:?})", i, started.elapsed());
    let server = StaticHttpServer::start(&site.srv()).unwrap();
    let repo = site.mount(&server, None);
    let expected = snapshot_dir(&src, true, false);
    assert_same(&expected, &snapshot_repo(&repo), "large tree");
}

/// The kernel mount through our `cvmfs2` (root and /dev/fuse needed).
mod fuse {
    use super::*;
    use cvmfs_client::testing::Cvmfs2Mount;

    pub use cvmfs_client::testing::fuse_skip_reason as skip_reason;

    /// A site's repository mounted with `cvmfs2`; unmounted on drop.
    pub struct Mounted {
        pub mnt: PathBuf,
        _daemon: Cvmfs2Mount,
    }

    impl Mounted {
        pub fn start(site: &Site, server: &StaticHttpServer, tag: Option<&str>) -> Mounted {
            let base = site.path(&format!("fuse-{}", tag.unwrap_or("trunk")));
            let mnt = base.join("mnt");
            let cache = base.join("cache");
            let config_root = base.join("etc-cvmfs");
            for d in [&mnt, &cache, &config_root] {
                std::fs::create_dir_all(d).unwrap();
            }
            let config = base.join("client.conf");
            let tag_line = tag
                .map(|t| format!("CVMFS_REPOSITORY_TAG={t}\n"))
                .unwrap_or_default();
            std::fs::write(
                &config,
                format!(
                    "CVMFS_SERVER_URL={}/cvmfs/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\n\
                     CVMFS_PUBLIC_KEY={}\nCVMFS_CACHE_BASE={}\nCVMFS_SHARED_CACHE=no\n\
                     CVMFS_CLAIM_OWNERSHIP=no\nCVMFS_MAGIC_XATTRS_VISIBILITY=never\n{tag_line}",
                    server.url(),
                    site.keys().join(format!("{FQRN}.pub")).display(),
                    cache.display(),
                ),
            )
            .unwrap();
            let mut cvmfs2 = Command::new(env!("CARGO_BIN_EXE_cvmfs2"));
            cvmfs2
                .arg("--config-root")
                .arg(&config_root)
                .arg("-o")
                .arg(format!("config={},allow_other", config.display()))
                .arg(FQRN)
                .arg(&mnt);
            let daemon = Cvmfs2Mount::start(cvmfs2, &mnt).unwrap_or_else(|e| panic!("{e}"));
            Mounted {
                mnt,
                _daemon: daemon,
            }
        }
    }
}
