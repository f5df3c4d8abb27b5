//! The `cvmfs2` binary, mounted with FUSE, against the real-server fixture over a real HTTP
//! server: every entry of `expected/v1.json` and `expected/v2.json` is compared through the
//! kernel (lstat, readlink, read, listxattr/getxattr), plus unaligned reads of the chunked file.
//!
//! Needs root and `/dev/fuse`; otherwise the tests print why they are skipped (a failure under `UCERNVM_REQUIRE_ALL=1`, as in `scripts/test`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cvmfs_client::skip_unless_fixture_mount;
use cvmfs_client::testing::{
    fixture_dir, is_mounted, lgetxattr, sha256_file, Cvmfs2Mount, StaticHttpServer,
};
use serde_json::Value;
use sha2::Digest as _;

const FQRN: &str = "demo.cernvm.test";

/// A repository mounted by the `cvmfs2` daemon, with its HTTP server and directories.
struct Mounted {
    daemon: Cvmfs2Mount,
    mnt: PathBuf,
    _tmp: tempfile::TempDir,
    _server: StaticHttpServer,
}

/// The `cvmfs2` command mounting the fixture at `tag`, with what it needs kept alive.
struct Prepared {
    cvmfs2: Command,
    mnt: PathBuf,
    tmp: tempfile::TempDir,
    server: StaticHttpServer,
}

impl Prepared {
    fn new(tag: &str) -> Prepared {
        let server =
            StaticHttpServer::start(&fixture_dir().join("srv")).expect("start the HTTP server");
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mnt = tmp.path().join("mnt");
        let cache = tmp.path().join("cache");
        let config_root = tmp.path().join("etc-cvmfs");
        for d in [&mnt, &cache, &config_root] {
            std::fs::create_dir_all(d).expect("create directory");
        }
        let config = tmp.path().join("client.conf");
        std::fs::write(
            &config,
            format!(
                "CVMFS_SERVER_URL={}/cvmfs/@fqrn@\n\
                 CVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_PUBLIC_KEY={}\n\
                 CVMFS_CACHE_BASE={}\n\
                 CVMFS_SHARED_CACHE=no\n\
                 CVMFS_CLAIM_OWNERSHIP=no\n\
                 CVMFS_MAGIC_XATTRS_VISIBILITY=never\n\
                 CVMFS_REPOSITORY_TAG={tag}\n\
                 CVMFS_USYSLOG={}\n",
                server.url(),
                fixture_dir().join("keys/demo.cernvm.test.pub").display(),
                cache.display(),
                tmp.path().join("usyslog").display(),
            ),
        )
        .expect("write the client configuration");
        let mut cvmfs2 = Command::new(env!("CARGO_BIN_EXE_cvmfs2"));
        cvmfs2
            .arg("--config-root")
            .arg(&config_root)
            .arg("-o")
            .arg(format!("config={},allow_other", config.display()))
            .arg(FQRN)
            .arg(&mnt)
            .env_remove("DEMO_ARCH")
            .env_remove("DEMO_SITE");
        Prepared {
            cvmfs2,
            mnt,
            tmp,
            server,
        }
    }
}

impl Mounted {
    fn start(tag: &str) -> Mounted {
        let started = Instant::now();
        let Prepared {
            cvmfs2,
            mnt,
            tmp,
            server,
        } = Prepared::new(tag);
        let daemon = Cvmfs2Mount::start(cvmfs2, &mnt).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("mounted {FQRN} tag {tag} in {:?}", started.elapsed());
        Mounted {
            daemon,
            mnt,
            _tmp: tmp,
            _server: server,
        }
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// `lgetxattr` into a buffer of exactly `size` bytes (for the ERANGE check).
fn get_xattr_sized(p: &Path, name: &str, size: usize) -> std::io::Result<usize> {
    let path = cpath(p);
    let name = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` has room for at least `size` bytes.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `llistxattr`: attribute names.
fn list_xattrs(p: &Path) -> std::io::Result<Vec<String>> {
    let path = cpath(p);
    // SAFETY: valid C string; a null buffer with size 0 asks for the length.
    let n = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; n as usize];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let m = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(m as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// All paths below `root` (relative, `""` = root), walking with readdir and lstat.
fn walk(root: &Path, problems: &mut Vec<String>) -> BTreeMap<String, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    match std::fs::symlink_metadata(root) {
        Ok(m) => {
            out.insert(String::new(), m);
        }
        Err(e) => problems.push(format!("(root): lstat: {e}")),
    }
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{rel}: readdir: {e}"));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("{rel}: readdir: {e}"));
                    continue;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => {
                    if m.is_dir() {
                        stack.push(child.clone());
                    }
                    out.insert(child, m);
                }
                Err(e) => problems.push(format!("{child}: lstat: {e}")),
            }
        }
    }
    out
}

fn load_expected(tag: &str) -> Value {
    let path = fixture_dir().join(format!("expected/{tag}.json"));
    let text = std::fs::read_to_string(&path).expect("expected listing");
    serde_json::from_str(&text).expect("expected listing is JSON")
}

/// Compares the mounted tree with `expected/<tag>.json`; returns every mismatch.
fn compare_mounted(m: &Mounted, expected: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let root = &m.mnt;
    let seen = walk(root, &mut problems);
    let Some(entries) = expected["entries"].as_object() else {
        return vec!["expected listing has no entries".into()];
    };

    let want_names: BTreeSet<&str> = entries.keys().map(String::as_str).collect();
    let seen_names: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    for extra in seen_names.difference(&want_names) {
        problems.push(format!("{extra}: unexpected entry"));
    }
    for missing in want_names.difference(&seen_names) {
        problems.push(format!("{missing}: missing"));
    }

    let mut by_inode: HashMap<u64, Vec<String>> = HashMap::new();
    for (rel, want) in entries {
        let Some(md) = seen.get(rel) else { continue };
        let path = if rel.is_empty() {
            root.clone()
        } else {
            root.join(rel)
        };
        let mut check = |field: &str, got: String, want: String| {
            if got != want {
                problems.push(format!("{rel:?}: {field} is {got}, expected {want}"));
            }
        };
        let ft = md.file_type();
        let typ = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        check(
            "type",
            typ.into(),
            want["type"].as_str().unwrap_or("?").into(),
        );
        let want_mode = want["mode"]
            .as_str()
            .and_then(|s| u32::from_str_radix(s, 8).ok());
        check(
            "mode",
            format!("{:o}", md.mode() & 0o7777),
            want_mode.map(|m| format!("{m:o}")).unwrap_or_default(),
        );
        let want_size = match want.get("target_expanded").and_then(Value::as_str) {
            Some(t) => t.len().to_string(),
            None => want["size"].to_string(),
        };
        check("size", md.size().to_string(), want_size);
        check("uid", md.uid().to_string(), want["uid"].to_string());
        check("gid", md.gid().to_string(), want["gid"].to_string());
        check("mtime", md.mtime().to_string(), want["mtime"].to_string());
        check("nlink", md.nlink().to_string(), want["nlink"].to_string());
        if rel.is_empty() {
            check("st_ino", md.ino().to_string(), "1".into());
        }
        by_inode.entry(md.ino()).or_default().push(rel.clone());

        if let Some(target) = want.get("target").and_then(Value::as_str) {
            let want_link = want
                .get("target_expanded")
                .and_then(Value::as_str)
                .unwrap_or(target);
            match std::fs::read_link(&path) {
                Ok(t) => check(
                    "readlink",
                    t.to_string_lossy().into_owned(),
                    want_link.into(),
                ),
                Err(e) => check("readlink", e.to_string(), want_link.into()),
            }
            match lgetxattr(&path, "xfsroot.rawlink") {
                Ok(raw) => check(
                    "xfsroot.rawlink",
                    String::from_utf8_lossy(&raw).into_owned(),
                    target.into(),
                ),
                Err(e) => check("xfsroot.rawlink", e.to_string(), target.into()),
            }
        }
        if let Some(sha) = want.get("sha256").and_then(Value::as_str) {
            match sha256_file(&path) {
                Ok(got) => check("sha256", got, sha.into()),
                Err(e) => check("sha256", e.to_string(), sha.into()),
            }
        }

        // Stored xattrs only (magic ones are hidden from listxattr with visibility "never").
        let want_x: BTreeMap<String, String> = want["xattrs"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let got_x: Result<BTreeMap<String, String>, std::io::Error> =
            list_xattrs(&path).and_then(|names| {
                names
                    .into_iter()
                    .map(|n| {
                        let v = lgetxattr(&path, &n)?;
                        Ok((n, String::from_utf8_lossy(&v).into_owned()))
                    })
                    .collect()
            });
        match got_x {
            Ok(x) => check("xattrs", format!("{x:?}"), format!("{want_x:?}")),
            Err(e) => check("xattrs", e.to_string(), format!("{want_x:?}")),
        }

        if let Some(nested) = want.get("nested_catalog").and_then(Value::as_bool) {
            // The catalog serving a directory has the directory as mountpoint exactly for
            // nested catalog mountpoints (and the root).
            match lgetxattr(&path, "user.catalog_counters") {
                Ok(v) => {
                    let text = String::from_utf8_lossy(&v).into_owned();
                    let mp = text
                        .lines()
                        .find_map(|l| l.strip_prefix("catalog_mountpoint: "))
                        .unwrap_or("?")
                        .to_string();
                    let own = if rel.is_empty() {
                        String::new()
                    } else {
                        format!("/{rel}")
                    };
                    check(
                        "nested_catalog",
                        (mp == own && !rel.is_empty()).to_string(),
                        nested.to_string(),
                    );
                }
                Err(e) => check("nested_catalog", e.to_string(), nested.to_string()),
            }
        }
    }

    // Hard links share one inode; everything else has its own.
    for (ino, names) in &by_inode {
        if names.len() < 2 {
            continue;
        }
        let nlinks: Vec<String> = names
            .iter()
            .map(|n| entries[n.as_str()]["nlink"].to_string())
            .collect();
        let all_files = names.iter().all(|n| entries[n.as_str()]["type"] == "file");
        if !all_files || nlinks.iter().any(|l| *l != names.len().to_string()) {
            problems.push(format!(
                "inode {ino} is shared by {names:?} (nlink {nlinks:?})"
            ));
        }
    }
    for (rel, want) in entries {
        let nlink = want["nlink"].as_u64().unwrap_or(1);
        if want["type"] == "file" && nlink > 1 {
            if let Some(md) = seen.get(rel) {
                let group = by_inode.get(&md.ino()).map(Vec::len).unwrap_or(0);
                if group as u64 != nlink {
                    problems.push(format!(
                        "{rel}: hard link with nlink {nlink} shares its inode with {group} names"
                    ));
                }
            }
        }
    }

    // Every catalog of the revision was attached by the walk.
    let want_catalogs = expected["catalogs"].as_array().map(Vec::len).unwrap_or(0);
    match lgetxattr(root, "user.nclg") {
        Ok(v) => {
            let got = String::from_utf8_lossy(&v).into_owned();
            if got != want_catalogs.to_string() {
                problems.push(format!(
                    "user.nclg is {got}, expected {want_catalogs} catalogs"
                ));
            }
        }
        Err(e) => problems.push(format!("user.nclg: {e}")),
    }
    problems
}

/// Magic attributes readable although hidden from listxattr; getxattr size protocol.
fn check_magic(m: &Mounted, expected: &Value, tag: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want = |name: &str, value: String| match lgetxattr(&m.mnt, name) {
        Ok(v) if v == value.as_bytes() => {}
        Ok(v) => problems.push(format!(
            "{name} is {:?}, expected {value:?}",
            String::from_utf8_lossy(&v)
        )),
        Err(e) => problems.push(format!("{name}: {e}")),
    };
    want(
        "user.root_hash",
        expected["root_catalog"].as_str().unwrap_or("?").into(),
    );
    want("user.revision", expected["revision"].to_string());
    want("user.tag", tag.into());
    want("user.fqrn", FQRN.into());
    want("user.expires", "never (fixed root catalog)".into());
    want("user.proxy", "DIRECT".into());
    if !list_xattrs(&m.mnt).map(|l| l.is_empty()).unwrap_or(false) {
        problems.push("magic attributes are listed on the root with visibility never".into());
    }
    // Too small a buffer is ERANGE; an unknown attribute is ENODATA.
    match get_xattr_sized(&m.mnt, "user.root_hash", 5) {
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
        other => problems.push(format!("small buffer for user.root_hash: {other:?}")),
    }
    match lgetxattr(&m.mnt, "user.no_such_attribute") {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
        other => problems.push(format!("unknown attribute: {other:?}")),
    }
    // Per-entry magic attributes.
    let chunked = m.mnt.join("big/chunked.dat");
    if let Some(chunks) = expected["chunked_files"]["big/chunked.dat"].as_array() {
        let mut list = String::from("hash,offset,size\n");
        for c in chunks {
            list.push_str(&format!(
                "{},{},{}\n",
                c["hash"].as_str().unwrap_or("?"),
                c["offset"],
                c["size"]
            ));
        }
        match lgetxattr(&chunked, "user.chunk_list") {
            Ok(v) if v == list.as_bytes() => {}
            other => problems.push(format!(
                "user.chunk_list of big/chunked.dat: {:?}",
                other.map(|v| String::from_utf8_lossy(&v).into_owned())
            )),
        }
        match lgetxattr(&chunked, "user.chunks") {
            Ok(v) if v == chunks.len().to_string().as_bytes() => {}
            other => problems.push(format!("user.chunks of big/chunked.dat: {other:?}")),
        }
    }
    match lgetxattr(&m.mnt.join("README.txt"), "user.compression") {
        Ok(v) if v == b"zlib" => {}
        other => problems.push(format!("user.compression of README.txt: {other:?}")),
    }
    // Negative lookups stay negative.
    for _ in 0..2 {
        match std::fs::symlink_metadata(m.mnt.join("no/such/file")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => problems.push(format!("no/such/file: {other:?}")),
        }
    }
    problems
}

fn run_fixture(tag: &str) {
    let expected = load_expected(tag);
    let mut m = Mounted::start(tag);
    let mut problems = compare_mounted(&m, &expected);
    problems.extend(check_magic(&m, &expected, tag));
    if let Err(e) = m.daemon.unmount() {
        problems.push(e);
    }
    if is_mounted(&m.mnt) {
        problems.push("still mounted after umount".into());
    }
    for p in &problems {
        eprintln!("MISMATCH {tag}: {p}");
    }
    assert!(
        problems.is_empty(),
        "{} mismatches for tag {tag} (listed above)",
        problems.len()
    );
}

#[test]
fn mounted_v1_matches_expected() {
    skip_unless_fixture_mount!();
    run_fixture("v1");
}

#[test]
fn mounted_v2_matches_expected() {
    skip_unless_fixture_mount!();
    run_fixture("v2");
}

#[test]
fn chunked_file_unaligned_reads() {
    skip_unless_fixture_mount!();
    let expected = load_expected("v1");
    let want = &expected["entries"]["big/chunked.dat"];
    let want_sha = want["sha256"].as_str().unwrap_or("?").to_string();
    let size = want["size"].as_u64().unwrap_or(0);
    let mut m = Mounted::start("v1");
    let path = m.mnt.join("big/chunked.dat");

    // Sequential reads with odd, unaligned piece sizes.
    let pieces = [
        1usize,
        4095,
        4097,
        65_537,
        999_983,
        7,
        (1 << 20) + 3,
        131_071,
    ];
    let file = File::open(&path).expect("open big/chunked.dat");
    let mut content = Vec::with_capacity(size as usize);
    let mut buf = vec![0u8; (1 << 20) + 3];
    let mut i = 0;
    loop {
        let want_n = pieces[i % pieces.len()];
        i += 1;
        let n = file
            .read_at(&mut buf[..want_n], content.len() as u64)
            .expect("pread");
        if n == 0 {
            break;
        }
        content.extend_from_slice(&buf[..n]);
    }
    drop(file);
    assert_eq!(content.len() as u64, size, "file size through reads");
    assert_eq!(hex(&sha2::Sha256::digest(&content)), want_sha, "sha256");

    // Random-access pieces straddling chunk boundaries, through a fresh descriptor.
    let file = File::open(&path).expect("open big/chunked.dat");
    let mut boundaries: Vec<u64> = expected["chunked_files"]["big/chunked.dat"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["offset"].as_u64()).collect())
        .unwrap_or_default();
    boundaries.push(size);
    let mut problems = Vec::new();
    for &b in boundaries.iter().rev() {
        for (back, len) in [(1u64, 3usize), (4097, 9001), (13, 13), (0, 1)] {
            let off = b.saturating_sub(back);
            let mut piece = vec![0u8; len];
            let n = file.read_at(&mut piece, off).expect("pread");
            let end = (off as usize + len).min(content.len());
            if piece[..n] != content[off as usize..end] {
                problems.push(format!("{len} bytes at offset {off} differ"));
            }
        }
    }
    drop(file);
    for p in &problems {
        eprintln!("MISMATCH: {p}");
    }
    let unmounted = m.daemon.unmount();
    assert!(problems.is_empty(), "{} mismatches", problems.len());
    unmounted.expect("unmount");
}

/// What a normal reader does (Python's `open()` asks `TCGETS`, `close` flushes, `access`,
/// `lseek`) is answered quietly: `ENOTTY` for the ioctl and not one line on the daemon's
/// standard error (in the foreground, as a console would show it) or in its log file.
#[test]
fn normal_reading_writes_nothing_to_the_log() {
    use std::os::fd::AsRawFd;
    skip_unless_fixture_mount!();
    let Prepared {
        mut cvmfs2,
        mnt,
        tmp,
        server: _server,
    } = Prepared::new("v1");
    let stderr_path = tmp.path().join("stderr");
    cvmfs2
        .arg("-f")
        .stdout(std::process::Stdio::null())
        .stderr(File::create(&stderr_path).expect("stderr file"));
    let mut child = cvmfs2.spawn().expect("start cvmfs2 -f");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !is_mounted(&mnt) {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!(
                "cvmfs2 -f did not mount: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let usyslog = tmp.path().join("usyslog");
    let logs = || {
        (
            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            std::fs::read_to_string(&usyslog).unwrap_or_default(),
        )
    };
    // The daemon announces the mount just after the kernel shows it: wait for that line, so the
    // start-up lines are not counted as written by the reads below.
    while !logs().0.contains("mounted cvmfs on") || !logs().1.contains("mounted cvmfs on") {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cvmfs2 -f never logged its mount: {:?}", logs());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = logs();
    let expected = load_expected("v1");
    let entries = expected["entries"].as_object().expect("entries");
    let files: Vec<&String> = entries
        .iter()
        .filter(|(_, e)| e["type"].as_str() == Some("file"))
        .map(|(p, _)| p)
        .take(20)
        .collect();
    assert!(!files.is_empty(), "the fixture lists regular files");
    let mut problems = Vec::new();
    for rel in &files {
        let path = mnt.join(rel);
        let f = File::open(&path).expect("open");
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes one termios into the buffer given.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
        let err = std::io::Error::last_os_error();
        if rc != -1 || err.raw_os_error() != Some(libc::ENOTTY) {
            problems.push(format!("{rel}: TCGETS gave {rc} ({err}), expected ENOTTY"));
        }
        let c = cpath(&path);
        // SAFETY: plain system calls on a valid C string and descriptor.
        unsafe {
            libc::access(c.as_ptr(), libc::R_OK);
            libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA);
            libc::fsync(f.as_raw_fd());
        }
        std::fs::read(&path).expect("read");
    }
    let script = "import sys\nfor p in sys.argv[1:]:\n    with open(p, 'rb') as f: f.read()\n    with open(p, 'r', errors='replace') as f: f.read(10)\n";
    let st = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(files.iter().map(|r| mnt.join(r)))
        .status()
        .expect("run python3");
    if !st.success() {
        problems.push(format!("python3 reading the files: {st}"));
    }
    let after = logs();
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = child.wait();
    for (name, b, a) in [
        ("stderr", &before.0, &after.0),
        ("usyslog", &before.1, &after.1),
    ] {
        let added = a.get(b.len()..).unwrap_or(a);
        if !added.trim().is_empty() {
            problems.push(format!(
                "normal reads wrote to the daemon's {name}:\n{added}"
            ));
        }
    }
    for p in &problems {
        eprintln!("PROBLEM: {p}");
    }
    assert!(
        problems.is_empty(),
        "{} problems (listed above)",
        problems.len()
    );
}
