//! Background prefetching against the real-server fixture over a real HTTP server: what it puts
//! into the cache is verified (a corrupt object never gets there and its reader still sees the
//! error), it stays within the quota without cleanups, and it stops cleanly.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvmfs_client::fetch::cached_object_matches;
use cvmfs_client::hash::{ContentHash, Suffix};
use cvmfs_client::prefetch::Prefetcher;
use cvmfs_client::repository::{Found, Repository, RepositoryOptions};
use cvmfs_client::testing::{copy_tree, fixture_dir, fixture_repository_options, StaticHttpServer};

const FQRN: &str = "demo.cernvm.test";

fn options(server: &StaticHttpServer, cache: &Path, quota: Option<u64>) -> RepositoryOptions {
    RepositoryOptions {
        quota_limit: quota,
        ..fixture_repository_options(&server.url(), cache, Some("v1"))
    }
}

/// Every directory listing of the tree, as `opendir` sees them.
fn listings(repo: &Repository) -> Vec<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        let list = repo.list(&dir).expect("list");
        stack.extend(
            list.iter()
                .filter(|f| f.entry.is_dir())
                .map(|f| f.path.clone()),
        );
        out.push(list);
    }
    out
}

fn queue_everything(repo: &Repository, pf: &Prefetcher) -> Vec<Found> {
    let mut files = Vec::new();
    for list in listings(repo) {
        pf.files(&list);
        for f in list {
            if f.entry.is_regular() && f.entry.size > 0 {
                if f.entry.is_chunked() {
                    pf.chunks_of(&f, 1);
                }
                files.push(f);
            }
        }
    }
    files
}

/// Content objects of `files`.
fn objects(repo: &Repository, files: &[Found]) -> Vec<ContentHash> {
    let mut out = Vec::new();
    for f in files {
        if f.entry.is_chunked() {
            out.extend(repo.chunks(f).expect("chunks").iter().map(|c| c.hash));
        } else {
            out.extend(f.entry.hash);
        }
    }
    out
}

/// Waits until the prefetcher has handled `n` objects (fetched or failed).
fn wait_for(pf: &Prefetcher, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, failed) = pf.counts();
        if ok + failed >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prefetch stalled at {ok}+{failed} of {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prefetched_objects_are_verified_and_a_corrupt_one_never_reaches_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    copy_tree(&fixture_dir().join("srv"), &srv).unwrap();
    let server = StaticHttpServer::start(&srv).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repository::mount(options(&server, cache.path(), None)).unwrap());
    let readme = repo.lookup(b"/README.txt").unwrap().unwrap();
    let bad = readme.entry.hash.unwrap();
    let served = srv.join(format!("cvmfs/{FQRN}/{}", bad.object_path(Suffix::None)));
    let mut bytes = std::fs::read(&served).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x5a;
    std::fs::write(&served, bytes).unwrap();

    let pf = Prefetcher::start(Arc::clone(&repo), 4);
    let files = queue_everything(&repo, &pf);
    let mut all = objects(&repo, &files);
    all.sort();
    all.dedup();
    assert!(all.len() > 10, "the fixture has {} objects", all.len());
    // Each distinct object once: fetched, or failed (the corrupt one).
    wait_for(&pf, all.len() as u64);
    let (fetched, failed) = pf.counts();
    assert_eq!(failed, 1, "only the corrupt object fails");
    assert_eq!(fetched as usize, all.len() - 1);

    let cached = |h: &ContentHash| cache.path().join(h.cache_path());
    assert!(!cached(&bad).exists(), "the corrupt object is not cached");
    for h in all.iter().filter(|h| **h != bad) {
        assert!(
            cached_object_matches(&cached(h), *h, None).unwrap(),
            "{h} in the cache matches its hash"
        );
    }
    // Readers find everything in the cache (no download), except the corrupt file: an error.
    let downloads = repo.store.downloads();
    for f in files.iter().filter(|f| f.path != b"/README.txt") {
        let file = repo.open(f).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < f.entry.size {
            let n = repo.read(&file, off, &mut buf).unwrap();
            assert!(n > 0);
            off += n as u64;
        }
    }
    assert_eq!(repo.store.downloads(), downloads, "all from the prefetch");
    let e = repo.open(&readme).err().expect("corrupt object refused");
    assert!(e.to_string().contains("/README.txt"), "{e}");
}

#[test]
fn prefetch_stays_within_the_quota_without_cleanups() {
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Smaller than the fixture (its big chunked file alone is 38 MB).
    let limit = 16 << 20;
    let repo = Arc::new(Repository::mount(options(&server, cache.path(), Some(limit))).unwrap());
    let q = repo.store.cache.quota().expect("managed cache");
    let cleanups_before = q.cleanups_last_24h();
    let pf = Prefetcher::start(Arc::clone(&repo), 4);
    queue_everything(&repo, &pf);
    // Wait until the queue ran dry: the counts stop moving.
    let mut last = (u64::MAX, u64::MAX);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = pf.counts();
        if now == last {
            break;
        }
        last = now;
    }
    let u = q.usage();
    assert!(u.used > 0, "something was prefetched");
    assert!(
        u.used <= u.limit && u.used <= u.threshold.max(u.limit / 2),
        "prefetch filled the cache to {} of {} bytes",
        u.used,
        u.limit
    );
    assert_eq!(q.cleanups_last_24h(), cleanups_before, "no cleanup");
}

#[test]
fn stop_ends_the_workers_and_drops_the_queue() {
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repository::mount(options(&server, cache.path(), None)).unwrap());
    let pf = Prefetcher::start(Arc::clone(&repo), 4);
    queue_everything(&repo, &pf);
    pf.stop();
    assert_eq!(
        Arc::strong_count(&repo),
        2,
        "workers released the repository"
    );
    let downloads = repo.store.downloads();
    let txn = cache.path().join("txn");
    assert_eq!(
        std::fs::read_dir(&txn).unwrap().count(),
        0,
        "no partial object"
    );
    // Nothing runs or starts afterwards.
    queue_everything(&repo, &pf);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(repo.store.downloads(), downloads);
    drop(pf);
    assert_eq!(Arc::strong_count(&repo), 1);
}
