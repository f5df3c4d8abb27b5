//! The cache manager through the real `cvmfs2` daemon, kernel FUSE mounts and the real-server
//! fixture over a real HTTP server: LRU quota with pinned files, the control socket (through
//! `cvmfs_talk`), crash recovery after `kill -9` in the middle of a download, corrupt objects and
//! databases, offline mounts from the cache, and a cache file system that fills up.
//!
//! Needs root and `/dev/fuse`; otherwise the tests print why they are skipped (a failure under `UCERNVM_REQUIRE_ALL=1`, as in `scripts/test`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cvmfs_client::skip_unless_fixture_mount;
use cvmfs_client::testing::{
    expected_file_digests, fixture_dir, lgetxattr, process_ended, sha256_file, Cvmfs2Mount,
    StaticHttpServer,
};
use serde_json::Value;

const FQRN: &str = "demo.cernvm.test";

fn xattr_text(p: &Path, name: &str) -> String {
    lgetxattr(p, name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|e| format!("<{name}: {e}>"))
}

/// The fixture's listing of a tag.
fn expected(tag: &str) -> Value {
    let path = fixture_dir().join(format!("expected/{tag}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("expected listing"))
        .expect("expected listing is JSON")
}

/// Reads `files` through the mount; returns the mismatches.
fn check_files(mnt: &Path, files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, sha) in files {
        match sha256_file(&mnt.join(rel)) {
            Ok(got) if &got == sha => {}
            Ok(got) => problems.push(format!("{rel}: sha256 {got}, expected {sha}")),
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    problems
}

/// A cache object's path for a file of the mount (its `user.hash`).
fn cached_object(cache_dir: &Path, mnt: &Path, rel: &str) -> PathBuf {
    let hash = xattr_text(&mnt.join(rel), "user.hash");
    cache_dir.join(&hash[..2]).join(&hash[2..])
}

/// One test's directories and configuration (each daemon is a `Cvmfs2Mount` of the test).
struct Env {
    tmp: tempfile::TempDir,
    mnt: PathBuf,
    cache_base: PathBuf,
    config: PathBuf,
    usyslog: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mnt = tmp.path().join("mnt");
        let cache_base = tmp.path().join("cache");
        for d in [&mnt, &cache_base] {
            std::fs::create_dir_all(d).expect("create directory");
        }
        Env {
            config: tmp.path().join("client.conf"),
            usyslog: tmp.path().join("usyslog"),
            mnt,
            cache_base,
            tmp,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_base.join(FQRN)
    }

    fn configure(&self, server_url: &str, tag: &str, quota_mb: i64, extra: &str) {
        std::fs::write(
            &self.config,
            format!(
                "CVMFS_SERVER_URL={server_url}/cvmfs/@fqrn@\n\
                 CVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_PUBLIC_KEY={}\n\
                 CVMFS_CACHE_BASE={}\n\
                 CVMFS_SHARED_CACHE=no\n\
                 CVMFS_REPOSITORY_TAG={tag}\n\
                 CVMFS_QUOTA_LIMIT={quota_mb}\n\
                 CVMFS_TIMEOUT=3\n\
                 CVMFS_TIMEOUT_DIRECT=3\n\
                 CVMFS_USYSLOG={}\n{extra}",
                fixture_dir().join("keys/demo.cernvm.test.pub").display(),
                self.cache_base.display(),
                self.usyslog.display(),
            ),
        )
        .expect("write the client configuration");
    }

    /// Runs `cvmfs2` on the test's mount point.
    fn mount(&self) -> Result<Cvmfs2Mount, String> {
        let mut cvmfs2 = Command::new(env!("CARGO_BIN_EXE_cvmfs2"));
        cvmfs2
            .arg("--config-root")
            .arg(self.tmp.path().join("no-etc"))
            .arg("-o")
            .arg(format!("config={}", self.config.display()))
            .arg(FQRN)
            .arg(&self.mnt);
        Cvmfs2Mount::start(cvmfs2, &self.mnt)
    }

    /// A command through the `cvmfs_talk` binary.
    fn talk(&self, command: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cvmfs_talk"))
            .arg("-i")
            .arg(FQRN)
            .arg("-b")
            .arg(&self.cache_base)
            .args(command.split(' '))
            .output()
            .expect("run cvmfs_talk");
        assert!(
            out.status.success(),
            "cvmfs_talk {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.usyslog).unwrap_or_default()
    }
}

fn server() -> StaticHttpServer {
    StaticHttpServer::start(&fixture_dir().join("srv")).expect("start the HTTP server")
}

#[test]
fn lru_quota_keeps_pinned_files_and_the_control_socket_answers() {
    skip_unless_fixture_mount!();
    let srv = server();
    let env = Env::new();
    // 24 MB: the fixture's 38 MB chunked file alone forces cleanups (to 12 MB each time).
    env.configure(&srv.url(), "v1", 24, "");
    let mut daemon = env.mount().expect("mount");
    let cache = env.cache_dir();
    let mnt = &env.mnt;

    assert_eq!(env.talk("pin /README.txt"), "OK\n");
    assert_eq!(env.talk("pin //medium/1mb.bin"), "OK\n");
    assert_eq!(
        env.talk("pin /no/such/file"),
        "No such regular file or pinning failed\n"
    );
    assert_eq!(
        env.talk("pin /big"),
        "No such regular file or pinning failed\n"
    );
    assert_eq!(env.talk("pin"), "Usage: pin <path>\n");
    let readme = cached_object(&cache, mnt, "README.txt");
    let one_mb = cached_object(&cache, mnt, "medium/1mb.bin");
    assert!(readme.is_file() && one_mb.is_file(), "pinning fetches");

    let files = expected_file_digests("v1");
    let problems = check_files(mnt, &files);
    assert!(problems.is_empty(), "{problems:#?}");

    let first_chunk = cache.join("bf/13b6882401c8eb57b19f1eb7d6696a5cd2f518");
    assert!(
        !first_chunk.exists(),
        "the least recently used chunk was evicted"
    );
    assert!(
        readme.is_file() && one_mb.is_file(),
        "pinned files survive cleanups"
    );
    let cleanups: u64 = xattr_text(mnt, "user.ncleanup24").parse().unwrap_or(0);
    assert!(cleanups >= 1, "user.ncleanup24 = {cleanups}");

    let size = env.talk("cache size");
    let used: u64 = size
        .split(['(', ' '])
        .find_map(|w| w.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        size.starts_with("Current cache size is ") && used <= 24 << 20,
        "{size}"
    );
    let pinned = env.talk("cache list pinned");
    for want in [
        "/README.txt",
        "/medium/1mb.bin",
        "file catalog at demo.cernvm.test: (",
    ] {
        assert!(pinned.contains(want), "{want} missing in {pinned}");
    }
    assert!(env.talk("cache list catalogs").lines().count() >= 4);

    // Cleaning everything leaves exactly the pinned objects.
    let small = cached_object(&cache, mnt, "small/1k.txt");
    assert!(small.is_file());
    assert_eq!(
        env.talk("cleanup 0"),
        "Not fully cleaned (there might be pinned chunks)\n"
    );
    assert!(!small.exists() && readme.is_file() && one_mb.is_file());

    // Other commands, with the reference's replies.
    let revision = expected("v1")["revision"].to_string();
    assert_eq!(env.talk("revision"), format!("{revision}\n"));
    assert_eq!(env.talk("pid"), format!("{}\n", daemon.pid));
    assert_eq!(env.talk("mountpoint"), format!("{}\n", mnt.display()));
    assert_eq!(env.talk("cache limit get"), "24\n");
    assert_eq!(env.talk("remount"), "Catalog up to date\n");
    assert_eq!(env.talk("no such command"), "unknown command\n");
    assert_eq!(env.talk("nameserver get"), "DNS server not set.\n");
    assert_eq!(env.talk("nameserver set 127.0.0.1:5353"), "OK\n");
    assert_eq!(
        env.talk("nameserver get"),
        "DNS server address: 127.0.0.1:5353\n"
    );
    assert_eq!(env.talk("nameserver set"), "Usage: nameserver set <host>\n");
    assert_eq!(
        env.talk("proxy info"),
        "Load-balance groups:\n[0] DIRECT\nActive proxy: [0] DIRECT\n"
    );
    let host = format!("{}/cvmfs/{FQRN}", srv.url());
    assert_eq!(
        env.talk("host info"),
        format!("  [0] {host} (unprobed)\nActive host 0: {host}\n")
    );
    assert_eq!(env.talk("host probe"), "OK\n");
    assert!(env.talk("host info").contains(" ms)\n"));
    assert!(env.talk("parameters").contains("CVMFS_QUOTA_LIMIT=24"));
    assert!(env.talk("version").ends_with(" (Loader)\n"));

    // After the tear-down cached content stays readable; nothing new is stored.
    assert_eq!(env.talk("tear down to read-only"), "In read-only mode\n");
    assert_eq!(
        std::fs::read(mnt.join("README.txt")).map(|b| b.len()).ok(),
        Some(107)
    );
    let err = std::fs::read(mnt.join("small/1k.txt")).expect_err("no new objects");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(!small.exists());
    daemon.unmount().expect("unmount");
}

/// A TCP forwarder that passes the server's bytes on slowly, so a download is sure to be in
/// progress when the daemon is killed.
fn throttled_forwarder(upstream_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    return;
                };
                let (mut c_in, mut s_out) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => return,
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                });
                let (mut s_in, mut c_out) = (server, client);
                let mut buf = [0u8; 32 * 1024];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    port
}

#[test]
fn kill_during_a_download_then_remount_recovers() {
    skip_unless_fixture_mount!();
    let srv = server();
    let slow = throttled_forwarder(srv.port);
    let env = Env::new();
    env.configure(&format!("http://127.0.0.1:{slow}"), "v1", 1000, "");
    let daemon = env.mount().expect("mount");
    let txn = env.cache_dir().join("txn");

    // Read the chunked file in the background; kill the daemon once a download is under way.
    let big = env.mnt.join("big/chunked.dat");
    let reader = std::thread::spawn(move || sha256_file(&big));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = std::fs::read_dir(&txn)
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "no download started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain system call on the daemon this test started.
    assert_eq!(unsafe { libc::kill(daemon.pid, libc::SIGKILL) }, 0);
    let read = reader.join().expect("reader thread");
    assert!(
        read.is_err(),
        "a read through a killed daemon cannot succeed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_ended(daemon.pid) {
        assert!(Instant::now() < deadline, "killed daemon still there");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("umount")
        .arg("-l")
        .arg(&env.mnt)
        .status()
        .expect("umount")
        .success());
    drop(daemon);
    assert!(env.cache_dir().join(format!("running.{FQRN}")).exists());

    // Same cache, direct server: the remount repairs and everything reads correctly.
    env.configure(&srv.url(), "v1", 1000, "");
    let mut daemon = env.mount().expect("remount after kill -9");
    assert!(
        env.log().contains("did not shut down cleanly"),
        "{}",
        env.log()
    );
    let problems = check_files(&env.mnt, &expected_file_digests("v1"));
    assert!(problems.is_empty(), "{problems:#?}");
    daemon.unmount().expect("unmount");
    let leftovers: Vec<_> = std::fs::read_dir(&txn).expect("txn").flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!env.cache_dir().join(format!("running.{FQRN}")).exists());
    let fsck = Command::new(env!("CARGO_BIN_EXE_cvmfs_fsck"))
        .arg(env.cache_dir())
        .output()
        .expect("cvmfs_fsck");
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn corrupt_object_and_corrupt_database_are_repaired_on_remount() {
    skip_unless_fixture_mount!();
    let srv = server();
    let env = Env::new();
    env.configure(&srv.url(), "v2", 1000, "");
    let mut daemon = env.mount().expect("mount");
    let files = expected_file_digests("v2");
    assert!(check_files(&env.mnt, &files).is_empty());
    let readme = cached_object(&env.cache_dir(), &env.mnt, "README.txt");
    let one_mb = cached_object(&env.cache_dir(), &env.mnt, "medium/1mb.bin");
    daemon.unmount().expect("unmount");

    // Same size, different bytes: only a hash can tell (here the digest recorded at download).
    let flip = |p: &Path, at: usize| {
        let mut bytes = std::fs::read(p).expect("cached object");
        bytes[at] ^= 0x20;
        std::fs::write(p, &bytes).expect("corrupt the object");
    };
    flip(&readme, 3);
    flip(&one_mb, 500_000);
    let mut daemon = env.mount().expect("remount with corrupt objects");
    let problems = check_files(&env.mnt, &files);
    assert!(problems.is_empty(), "{problems:#?}");
    let log = env.log();
    assert_eq!(
        log.matches("does not match its content hash").count(),
        2,
        "{log}"
    );
    daemon.unmount().expect("unmount");

    // Corrupt database too: rebuilt; the objects are then checked by compressing them again.
    flip(&readme, 5);
    std::fs::write(
        env.cache_dir().join("cachedb"),
        b"SQLite format 3\0 but not really",
    )
    .expect("corrupt cachedb");
    let mut daemon = env.mount().expect("remount with a corrupt cache database");
    let problems = check_files(&env.mnt, &files);
    assert!(problems.is_empty(), "{problems:#?}");
    let log = env.log();
    assert_eq!(
        log.matches("does not match its content hash").count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("rebuilding it from the cache directory"),
        "{log}"
    );
    // The database works again: it knows the objects.
    let listed = env.talk("cache list");
    assert!(listed.contains("unknown (automatic rebuild)"), "{listed}");
    assert!(listed.contains("/README.txt"), "{listed}");
    daemon.unmount().expect("unmount");
    let fsck = Command::new(env!("CARGO_BIN_EXE_cvmfs_fsck"))
        .arg(env.cache_dir())
        .output()
        .expect("cvmfs_fsck");
    assert_eq!(fsck.status.code(), Some(0));

    // cvmfs_fsck finds and removes damage on its own, too.
    let mut bytes = std::fs::read(&one_mb).expect("cached 1mb.bin");
    bytes[0] ^= 0x01;
    std::fs::write(&one_mb, &bytes).expect("corrupt 1mb.bin");
    let fsck = Command::new(env!("CARGO_BIN_EXE_cvmfs_fsck"))
        .arg("-p")
        .arg(env.cache_dir())
        .output()
        .expect("cvmfs_fsck -p");
    assert_eq!(fsck.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fsck.stdout).contains("corrupt object removed"));
    assert!(!one_mb.exists());
}

#[test]
fn offline_mount_from_the_cache_at_a_tag_and_recovery() {
    skip_unless_fixture_mount!();
    let srv = server();
    let port = srv.port;
    let env = Env::new();
    env.configure(&srv.url(), "v1", 1000, "");
    let mut daemon = env.mount().expect("mount");
    let all = expected_file_digests("v1");
    let (cached, uncached): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(rel, _)| !rel.starts_with("small/") && !rel.starts_with("software/"));
    assert!(check_files(&env.mnt, &cached).is_empty());
    assert_eq!(xattr_text(&env.mnt, "user.offline"), "0");
    daemon.unmount().expect("unmount");
    assert!(env
        .cache_dir()
        .join(format!("cvmfschecksum.{FQRN}"))
        .is_file());

    // The server goes away: the mount still works from the cache.
    drop(srv);
    let mut daemon = env.mount().expect("offline mount");
    assert_eq!(xattr_text(&env.mnt, "user.offline"), "1");
    assert_eq!(
        xattr_text(&env.mnt, "user.root_hash"),
        expected("v1")["root_catalog"].as_str().unwrap_or("?")
    );
    let problems = check_files(&env.mnt, &cached);
    assert!(problems.is_empty(), "{problems:#?}");
    let (rel, _) = uncached
        .iter()
        .find(|(r, _)| r.starts_with("small/"))
        .expect("an uncached file");
    let err = std::fs::read(env.mnt.join(rel)).expect_err("uncached file while offline");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(env.log().contains("entering offline mode"), "{}", env.log());
    // The nested catalog below /software was never loaded: listing it fails, cleanly (the
    // daemon declines opendir, so the error comes with the first read of the listing).
    let listing = std::fs::read_dir(env.mnt.join("software"))
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
    assert_eq!(
        listing.map(|l| l.len()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );

    // The server is back (same address): the next access recovers.
    let _srv = StaticHttpServer::start_on(&fixture_dir().join("srv"), port).expect("restart");
    let problems = check_files(&env.mnt, &uncached);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(xattr_text(&env.mnt, "user.offline"), "0");
    assert!(env.log().contains("leaving offline mode"), "{}", env.log());
    daemon.unmount().expect("unmount");
}

/// A tmpfs of `size` mounted for the test, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Option<SmallFs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_cache_file_system_cleans_up_and_never_corrupts_the_cache() {
    skip_unless_fixture_mount!();
    let srv = server();
    let env = Env::new();
    // 10 MB of disk under a 1000 MB quota: the disk fills long before the quota does. The
    // 11 MB chunk can never fit; everything else must, after cleanups.
    let Some(_fs) = SmallFs::mount(&env.cache_base, "10m") else {
        test_prereq::skip("cannot mount a tmpfs");
        return;
    };
    env.configure(&srv.url(), "v1", 1000, "");
    let mut daemon = env.mount().expect("mount on a small file system");
    let files: Vec<_> = expected_file_digests("v1")
        .into_iter()
        .filter(|(rel, _)| rel != "big/chunked.dat")
        .collect();
    let problems = check_files(&env.mnt, &files);
    assert!(problems.is_empty(), "{problems:#?}");

    // Chunks of 5, 8.5 and 6.5 MB one after the other: only possible with cleanups.
    let big = env.mnt.join("big/chunked.dat");
    let mut f = File::open(&big).expect("open the chunked file");
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let err = loop {
        match f.read(&mut buf) {
            Ok(0) => panic!("the 11 MB chunk cannot fit in a 10 MB file system"),
            Ok(n) => read += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Past the second chunk (5 + 8.5 MB > 10 MB): the first had to be evicted.
    assert!(read >= 14 << 20, "read only {read} bytes\n{}", env.log());
    assert!(env.log().contains("disk full"), "{}", env.log());
    drop(f);

    // The mount stays usable and the cache consistent.
    let problems = check_files(&env.mnt, &files[..3]);
    assert!(problems.is_empty(), "{problems:#?}");
    daemon.unmount().expect("unmount");
    let fsck = Command::new(env!("CARGO_BIN_EXE_cvmfs_fsck"))
        .arg(env.cache_dir())
        .output()
        .expect("cvmfs_fsck");
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// A bind mount of `dir` onto itself made private, so that mounts below it can be moved
/// (`mount --move` refuses mounts under a shared parent); unmounted on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn make(dir: &Path) -> Option<PrivateDir> {
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["--bind"]) {
            return None;
        }
        let me = PrivateDir(dir.to_path_buf());
        let private = Command::new("mount")
            .arg("--make-private")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        private.then_some(me)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// µCernVM starts `cvmfs2` with its cache on the scratch disk, then moves that disk's mount
/// under the new root (switch_root). The daemon works inside its cache through relative paths,
/// so reads of cached and of new objects, the cache database and the control socket keep
/// working at the new place.
#[test]
fn the_cache_file_system_can_be_moved_under_a_running_daemon() {
    skip_unless_fixture_mount!();
    let srv = server();
    let env = Env::new();
    let Some(_private) = PrivateDir::make(env.tmp.path()) else {
        test_prereq::skip("cannot make a private bind mount");
        return;
    };
    let Some(disk) = SmallFs::mount(&env.cache_base, "200m") else {
        test_prereq::skip("cannot mount a tmpfs");
        return;
    };
    env.configure(&srv.url(), "v1", 1000, "");
    let mut daemon = env.mount().expect("mount");
    let files = expected_file_digests("v1");
    let (first, rest) = files.split_at(files.len() / 2);
    let problems = check_files(&env.mnt, first);
    assert!(problems.is_empty(), "{problems:#?}");

    let moved = env.tmp.path().join("moved");
    std::fs::create_dir_all(&moved).expect("create directory");
    let st = Command::new("mount")
        .arg("--move")
        .arg(&env.cache_base)
        .arg(&moved)
        .status()
        .expect("mount --move");
    assert!(st.success(), "mount --move failed");
    let _disk = SmallFs(moved.clone());
    std::mem::forget(disk);
    assert!(
        !env.cache_dir().exists(),
        "the old cache path is gone: the daemon cannot use it"
    );

    // New objects (downloaded into the moved cache) and cached ones (read again after the
    // page cache is dropped).
    let problems = check_files(&env.mnt, rest);
    assert!(problems.is_empty(), "{problems:#?}");
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache");
    let problems = check_files(&env.mnt, &files);
    assert!(problems.is_empty(), "{problems:#?}");
    let moved_cache = moved.join(FQRN);
    let readme = cached_object(&moved_cache, &env.mnt, "README.txt");
    assert!(readme.is_file(), "objects land in the moved cache");

    // The control socket moved along; the cache database still records new objects.
    let out = Command::new(env!("CARGO_BIN_EXE_cvmfs_talk"))
        .arg("-i")
        .arg(FQRN)
        .arg("-b")
        .arg(&moved)
        .args(["cache", "size"])
        .output()
        .expect("run cvmfs_talk");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cvmfs_talk: {answer}");
    let used_mb: u64 = answer
        .split("Current cache size is ")
        .nth(1)
        .and_then(|s| s.split("MB").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
    assert!(
        used_mb >= 30,
        "the cache database holds the objects: {answer}"
    );
    daemon.unmount().expect("unmount");
    assert!(
        !moved_cache.join(format!("running.{FQRN}")).exists(),
        "clean shutdown in the moved cache"
    );
    assert!(!env.log().contains("cannot"), "{}", env.log());
}

/// The first byte of `argv[0]` of process `pid`.
fn argv0_first_byte(pid: &str) -> u8 {
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .expect("cmdline of the daemon")
        .first()
        .copied()
        .unwrap_or(0)
}

#[test]
fn systemd_nokill_marks_the_daemon_with_an_at() {
    skip_unless_fixture_mount!();
    let srv = server();
    let env = Env::new();
    env.configure(&srv.url(), "v1", 100, "CVMFS_SYSTEMD_NOKILL=yes\n");
    let daemon = env.mount().expect("mount");
    let pid = env.talk("pid");
    assert_eq!(argv0_first_byte(&pid), b'@', "daemon {pid}");
    // The mark does not disturb the daemon: it serves files and answers the DHCP hook.
    assert!(env.mnt.join("README.txt").is_file());
    assert_eq!(env.talk("nameserver set 10.0.2.3"), "OK\n");
    drop(daemon);

    let env = Env::new();
    env.configure(&srv.url(), "v1", 100, "CVMFS_SYSTEMD_NOKILL=no\n");
    let _daemon = env.mount().expect("mount");
    let pid = env.talk("pid");
    assert_ne!(argv0_first_byte(&pid), b'@', "daemon {pid}");
}

/// Runtime control through `cvmfs_talk` (spec §11.1): proxy groups switched, replaced,
/// rebalanced, fallback proxies set, hosts switched and replaced, error counters reset, nested
/// catalogs detached, metadata caches dropped; `user.proxy` / `user.host` show each choice,
/// and the requests reach the server or proxy chosen (our fault-injecting servers count them).
#[test]
fn the_control_socket_steers_proxies_hosts_and_caches() {
    use cvmfs_client::testing::{Fault, FaultServer};
    skip_unless_fixture_mount!();
    let srv = fixture_dir().join("srv");
    let local = "127.0.0.1".parse().expect("address");
    let start = || FaultServer::start(&srv, local, 0).expect("start a test server");
    let (h1, h2, p1, p2, p3) = (start(), start(), start(), start(), start());
    let env = Env::new();
    let host = |h: &FaultServer| format!("{}/cvmfs/{FQRN}", h.url());
    env.configure(
        &h1.url(),
        "v1",
        -1,
        &format!(
            "CVMFS_SERVER_URL='{};{}'\n\
             CVMFS_HTTP_PROXY='{};{}'\n\
             CVMFS_FALLBACK_PROXY={}\n",
            host(&h1),
            host(&h2),
            p1.url(),
            p2.url(),
            p3.url()
        ),
    );
    let files = expected_file_digests("v1");
    let sha = |rel: &str| {
        files
            .iter()
            .find(|(r, _)| r == rel)
            .map(|(_, s)| s.clone())
            .expect("file in the listing")
    };
    let mut m = env.mount().unwrap_or_else(|e| panic!("{e}"));
    let mnt = &env.mnt;
    let proxy = || xattr_text(mnt, "user.proxy");
    let read_ok = |rel: &str| {
        assert_eq!(
            sha256_file(&mnt.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")),
            sha(rel),
            "{rel}"
        )
    };
    let info = env.talk("proxy info");
    assert!(
        info.contains(&format!("[2] {} (fallback)", p3.url())),
        "{info}"
    );
    assert_eq!(proxy(), p1.url());
    assert_eq!(xattr_text(mnt, "user.host"), host(&h1));

    assert_eq!(env.talk("proxy group switch"), "OK\n");
    assert_eq!(proxy(), p2.url());
    let before = p2.proxied_requests();
    read_ok("README.txt");
    assert!(
        p2.proxied_requests() > before,
        "the read went through {}",
        p2.url()
    );
    env.talk("proxy group switch");
    assert_eq!(proxy(), p3.url(), "the fallback group comes next");
    env.talk("proxy group switch");
    assert_eq!(proxy(), p1.url(), "and then the first again");

    assert_eq!(env.talk(&format!("proxy set {}", p2.url())), "OK\n");
    let info = env.talk("proxy info");
    assert!(
        !info.contains(&p1.url()) && info.contains(&p3.url()),
        "{info}"
    );
    assert_eq!(proxy(), p2.url());
    assert_eq!(env.talk(&format!("proxy fallback {}", p1.url())), "OK\n");
    let info = env.talk("proxy info");
    assert!(info.contains(&format!("{} (fallback)", p1.url())), "{info}");
    assert!(!info.contains(&p3.url()), "{info}");
    assert_eq!(env.talk("proxy rebalance"), "OK\n");
    assert!(env.talk("proxy set").starts_with("Usage:"));

    assert_eq!(env.talk("host switch"), "OK\n");
    assert_eq!(xattr_text(mnt, "user.host"), host(&h2));
    assert_eq!(env.talk(&format!("host set {}", host(&h1))), "OK\n");
    let info = env.talk("host info");
    assert!(
        info.contains(&host(&h1)) && !info.contains(&host(&h2)),
        "{info}"
    );

    // An I/O error counted, then the counters reset.
    p2.set(Fault::Status(503));
    p1.set(Fault::Status(503));
    assert!(std::fs::read(mnt.join("medium/1mb.bin")).is_err());
    assert_ne!(xattr_text(mnt, "user.nioerr"), "0");
    assert_eq!(env.talk("reset error counters"), "OK\n");
    assert_eq!(xattr_text(mnt, "user.nioerr"), "0");
    p1.set(Fault::None);
    p2.set(Fault::None);
    read_ok("medium/1mb.bin");

    // Nested catalogs detached and attached again on need, with the same inodes.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(mnt.join("nested/inner/inner.txt"))
        .expect("stat")
        .ino();
    read_ok("nested/inner/inner.txt");
    let open_before = env.talk("open catalogs").lines().count();
    assert!(open_before >= 3, "{}", env.talk("open catalogs"));
    assert_eq!(env.talk("detach nested catalogs"), "OK\n");
    assert_eq!(env.talk("open catalogs").lines().count(), 1);
    assert_eq!(env.talk("drop metadata caches"), "OK\n");
    read_ok("nested/inner/inner.txt");
    read_ok("software/v1.0/README");
    let again = std::fs::metadata(mnt.join("nested/inner/inner.txt"))
        .expect("stat")
        .ino();
    assert_eq!(ino, again, "inodes survive detaching");

    assert_eq!(env.talk("remount"), "Catalog up to date\n");
    assert_eq!(env.talk("remount sync"), "Catalog up to date\n");
    assert_eq!(
        h2.direct_requests() + h1.direct_requests(),
        0,
        "DIRECT never used"
    );
    m.unmount().expect("unmount");
}
