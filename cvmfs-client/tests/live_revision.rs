//! An unpinned mount moves to a new revision while mounted (spec §10.6): a repository is
//! republished by our publisher while the `cvmfs2` daemon serves it; after `remount` (talk) or
//! the catalog TTL (`CVMFS_AUTO_UPDATE`), new lookups see the new revision although the kernel
//! caches entries for 10 minutes, files opened before keep reading their revision, an older
//! revision offered later is not taken, a newer one with an expired whitelist is refused, and a
//! mount pinned by root hash stays where it is.
//!
//! Needs root and `/dev/fuse` (a failure under `UCERNVM_REQUIRE_ALL=1`, as in `scripts/test`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cvmfs_client::publish::{publish, PublishOptions};
use cvmfs_client::testing::{fuse_skip_reason, lgetxattr, skip, Cvmfs2Mount, StaticHttpServer};

const FQRN: &str = "live.cernvm.test";

struct Setup {
    tmp: tempfile::TempDir,
    server: StaticHttpServer,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("srv")).unwrap();
        let server = StaticHttpServer::start(&tmp.path().join("srv")).unwrap();
        Setup { tmp, server }
    }

    fn repo(&self) -> PathBuf {
        self.tmp.path().join(format!("srv/cvmfs/{FQRN}"))
    }

    /// Publishes `files` (name, content) as the full new state; returns the revision.
    fn publish(&self, files: &[(&str, &str)], ttl: u64, whitelist_days: u32) -> u64 {
        let source = self.tmp.path().join("source");
        let _ = std::fs::remove_dir_all(&source);
        for (name, content) in files {
            let p = source.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let mut o = PublishOptions::new(FQRN, &self.repo(), &self.tmp.path().join("keys"), &source);
        o.ttl = ttl;
        o.whitelist_days = whitelist_days;
        publish(&o).unwrap().manifest.revision
    }

    /// Mounts on `<name>/mnt` with cache `<name>/cache`; `extra` configuration lines.
    fn mount(&self, name: &str, extra: &str) -> (Cvmfs2Mount, PathBuf, PathBuf) {
        let base = self.tmp.path().join(name);
        let (mnt, cache) = (base.join("mnt"), base.join("cache"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        let config = base.join("client.conf");
        std::fs::write(
            &config,
            format!(
                "CVMFS_SERVER_URL={}/cvmfs/@fqrn@\n\
                 CVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_PUBLIC_KEY={}\n\
                 CVMFS_CACHE_BASE={}\n\
                 CVMFS_SHARED_CACHE=no\n\
                 CVMFS_KCACHE_TIMEOUT=600\n\
                 CVMFS_USYSLOG={}\n{extra}",
                self.server.url(),
                self.tmp.path().join(format!("keys/{FQRN}.pub")).display(),
                cache.display(),
                base.join("usyslog").display(),
            ),
        )
        .unwrap();
        let mut cvmfs2 = Command::new(env!("CARGO_BIN_EXE_cvmfs2"));
        cvmfs2
            .arg("--config-root")
            .arg(base.join("no-etc"))
            .arg("-o")
            .arg(format!("config={}", config.display()))
            .arg(FQRN)
            .arg(&mnt);
        let m = Cvmfs2Mount::start(cvmfs2, &mnt).unwrap_or_else(|e| panic!("{e}"));
        (m, mnt, cache)
    }
}

fn talk(cache: &Path, command: &str) -> String {
    cvmfs_client::talk::request(
        &cvmfs_client::talk::socket_path(cache, FQRN),
        command,
        Duration::from_secs(60),
    )
    .unwrap()
}

fn xattr(p: &Path, name: &str) -> String {
    String::from_utf8_lossy(&lgetxattr(p, name).unwrap()).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

fn prereq() -> bool {
    if let Some(reason) = fuse_skip_reason() {
        skip(&reason);
        return false;
    }
    true
}

#[test]
fn remount_moves_to_a_new_revision_while_open_files_keep_theirs() {
    if !prereq() {
        return;
    }
    let s = Setup::new();
    let r1 = s.publish(&[("a.txt", "one\n"), ("dir/b.txt", "bee\n")], 240, 30);
    let v1_manifest = std::fs::read(s.repo().join(".cvmfspublished")).unwrap();
    let v1_whitelist = std::fs::read(s.repo().join(".cvmfswhitelist")).unwrap();
    let (mut m, mnt, cache) = s.mount("unpinned", "CVMFS_AUTO_UPDATE=no\nCVMFS_QUOTA_LIMIT=2000\n");
    let root_hash = xattr(&mnt, "user.root_hash");
    let (mut pinned, pinned_mnt, pinned_cache) =
        s.mount("pinned", &format!("CVMFS_ROOT_HASH={root_hash}\n"));

    assert_eq!(read(&mnt.join("a.txt")), "one\n");
    assert!(mnt.join("dir/b.txt").exists());
    assert!(
        !mnt.join("new.txt").exists(),
        "a miss the kernel now caches"
    );
    let held = std::fs::File::open(mnt.join("a.txt")).unwrap();

    let r2 = s.publish(&[("a.txt", "two, longer\n"), ("new.txt", "new\n")], 240, 30);
    assert_eq!(
        talk(&cache, "revision"),
        format!("{r1}\n"),
        "nothing before remount"
    );
    assert_eq!(
        talk(&cache, "remount sync"),
        format!("Remounted: revision {r1} -> {r2}\n")
    );
    assert_eq!(xattr(&mnt, "user.revision"), r2.to_string());
    let pinned_now = talk(&cache, "cache list pinned");
    let new_root = xattr(&mnt, "user.root_hash");
    assert!(pinned_now.contains(&new_root), "{pinned_now}");
    assert!(
        !pinned_now.contains(&root_hash),
        "the old root catalog is no longer pinned: {pinned_now}"
    );
    assert_eq!(
        read(&mnt.join("a.txt")),
        "two, longer\n",
        "new lookups see the new revision"
    );
    assert_eq!(
        read(&mnt.join("new.txt")),
        "new\n",
        "a cached miss was invalidated"
    );
    assert!(!mnt.join("dir/b.txt").exists(), "removed entries disappear");
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"new.txt".to_string()), "{names:?}");
    let mut buf = [0u8; 4];
    let n = held.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"one\n",
        "the file opened before keeps its revision"
    );
    drop(held);

    // The pinned mount stays where it is.
    assert_eq!(talk(&pinned_cache, "remount"), "Catalog up to date\n");
    assert_eq!(xattr(&pinned_mnt, "user.revision"), r1.to_string());
    assert_eq!(read(&pinned_mnt.join("a.txt")), "one\n");

    // An older revision offered again is not taken (anti-rollback).
    let v2_manifest = std::fs::read(s.repo().join(".cvmfspublished")).unwrap();
    let v2_whitelist = std::fs::read(s.repo().join(".cvmfswhitelist")).unwrap();
    std::fs::write(s.repo().join(".cvmfspublished"), &v1_manifest).unwrap();
    std::fs::write(s.repo().join(".cvmfswhitelist"), &v1_whitelist).unwrap();
    assert_eq!(talk(&cache, "remount"), "Catalog up to date\n");
    assert_eq!(xattr(&mnt, "user.revision"), r2.to_string());
    std::fs::write(s.repo().join(".cvmfspublished"), &v2_manifest).unwrap();
    std::fs::write(s.repo().join(".cvmfswhitelist"), &v2_whitelist).unwrap();

    // A newer revision whose whitelist has expired is refused; the mount keeps working.
    let r3 = s.publish(&[("a.txt", "three\n")], 240, 0);
    assert!(r3 > r2);
    assert_eq!(talk(&cache, "remount"), "Failed\n");
    assert_eq!(xattr(&mnt, "user.revision"), r2.to_string());
    assert_eq!(read(&mnt.join("a.txt")), "two, longer\n");

    pinned.unmount().unwrap();
    m.unmount().unwrap();
}

#[test]
fn auto_update_follows_the_catalog_ttl_under_a_running_reader() {
    if !prereq() {
        return;
    }
    let s = Setup::new();
    let r1 = s.publish(&[("a.txt", "one\n")], 1, 30);
    let (mut m, mnt, _cache) = s.mount("auto", "CVMFS_AUTO_UPDATE=yes\n");
    assert_eq!(xattr(&mnt, "user.revision"), r1.to_string());
    // A reader opens and reads the file over and over while the revision changes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (std::sync::Arc::clone(&stop), mnt.join("a.txt"));
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                *seen.entry(read(&path)).or_default() += 1;
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let r2 = s.publish(&[("a.txt", "two\n"), ("b.txt", "bee\n")], 1, 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while xattr(&mnt, "user.revision") != r2.to_string() {
        assert!(
            Instant::now() < deadline,
            "no switch to revision {r2} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(read(&mnt.join("b.txt")), "bee\n");
    assert_eq!(read(&mnt.join("a.txt")), "two\n");
    let unexpected: Vec<&String> = seen
        .keys()
        .filter(|k| *k != "one\n" && *k != "two\n")
        .collect();
    assert!(unexpected.is_empty(), "the reader saw {seen:?}");
    assert!(seen.contains_key("two\n"), "the reader saw {seen:?}");
    m.unmount().unwrap();
}
