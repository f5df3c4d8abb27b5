//! Background downloads of what is likely read next (a cold cache is bound by round trips):
//! the files of a directory when it is listed, the chunks of a chunked file when it is opened.
//! A small pool of threads works through a bounded queue; a reader never waits for the queue
//! (a full queue drops requests), only for a download of the very object it needs, which
//! `ObjectStore` shares instead of starting a second one. Prefetched objects go through the
//! same verified path as any other (nothing unverified reaches the cache), and only while the
//! quota has room without a cleanup (prefetching never evicts what was read) and into at most
//! half of the free disk space (a reader never finds the disk filled by prefetches).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::cache::Label;
use crate::fetch::ObjectSpec;
use crate::hash::ContentHash;
use crate::quota::ObjectType;
use crate::repository::{Found, Repository};

/// Requests waiting at most (older ones are served first; newer ones beyond this are dropped).
pub const QUEUE_LIMIT: usize = 4096;

/// One object to fetch, with what the cache database shows for it.
struct Job {
    spec: ObjectSpec,
    description: String,
    kind: ObjectType,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Job>>,
    /// Objects queued or being handled by a worker: a second job for one of them (a file
    /// listed twice, identical contents) is not queued, so each object is handled once.
    claimed: Mutex<HashSet<ContentHash>>,
    wake: Condvar,
    stop: AtomicBool,
    fetched: AtomicU64,
    failed: AtomicU64,
    /// Bytes of the prefetches in progress (not yet in the quota's count).
    in_progress: Mutex<u64>,
}

/// The pool; stopping (or dropping) it ends the workers after their current download.
pub struct Prefetcher {
    repo: Arc<Repository>,
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Prefetcher {
    /// Starts `threads` workers (none: prefetching is off).
    pub fn start(repo: Arc<Repository>, threads: usize) -> Prefetcher {
        let shared = Arc::new(Shared::default());
        let mut workers = Vec::new();
        if repo.store.downloader.is_some() {
            for i in 0..threads {
                let (repo, shared) = (Arc::clone(&repo), Arc::clone(&shared));
                let spawned = std::thread::Builder::new()
                    .name(format!("prefetch-{i}"))
                    .spawn(move || work(&repo, &shared));
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(e) => log::warn!("cannot start a prefetch thread: {e}"),
                }
            }
        }
        Prefetcher {
            repo,
            shared,
            workers: Mutex::new(workers),
        }
    }

    /// Queues the content of the regular files among `entries` (a directory listing).
    pub fn files(&self, entries: &[Found]) {
        let mut jobs = Vec::new();
        for f in entries {
            if !f.entry.is_regular() || f.entry.is_external() || f.entry.size == 0 {
                continue;
            }
            if f.entry.is_chunked() {
                // The first chunk only: the rest follows when the file is opened.
                if let Ok(chunks) = self.repo.chunks(f) {
                    if let Some(spec) = chunks.first().map(|c| self.repo.chunk_spec(f, c)) {
                        jobs.push(job(spec, f, ObjectType::Regular, true));
                    }
                }
            } else if let Some(spec) = self.repo.file_spec(f) {
                jobs.push(job(spec, f, ObjectType::Regular, false));
            }
        }
        self.push(jobs);
    }

    /// Queues the chunks of chunked file `f` after the first `skip` ones.
    pub fn chunks_of(&self, f: &Found, skip: usize) {
        let Ok(chunks) = self.repo.chunks(f) else {
            return;
        };
        let jobs = chunks
            .iter()
            .skip(skip)
            .map(|c| job(self.repo.chunk_spec(f, c), f, ObjectType::Regular, true))
            .collect();
        self.push(jobs);
    }

    fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() || self.shared.stop.load(Ordering::SeqCst) || self.idle() {
            return;
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut claimed = self
            .shared
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for j in jobs {
            if q.len() >= QUEUE_LIMIT {
                break;
            }
            let store = &self.repo.store;
            if claimed.contains(&j.spec.hash)
                || store.cache.path(&j.spec.hash).exists()
                || store.downloading(&j.spec.hash)
            {
                continue;
            }
            claimed.insert(j.spec.hash);
            q.push_back(j);
        }
        drop(claimed);
        drop(q);
        self.shared.wake.notify_all();
    }

    fn idle(&self) -> bool {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Objects fetched and failed so far (a failure is left to the reader to report).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.fetched.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// Drops what is queued and waits for the downloads in progress to end.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.shared.wake.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn job(spec: ObjectSpec, f: &Found, kind: ObjectType, chunk: bool) -> Job {
    let path = String::from_utf8_lossy(&f.path);
    Job {
        spec,
        description: if chunk {
            format!("Part of {path}")
        } else {
            path.into_owned()
        },
        kind,
    }
}

/// A worker's claim on an object; released when the worker is done with it.
struct Claim<'a>(&'a Shared, ContentHash);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Bytes an unprivileged writer can still put on the file system of `dir`.
fn free_disk_space(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

fn work(repo: &Repository, shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(j) = q.pop_front() {
                    break j;
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let _claim = Claim(shared, job.spec.hash);
        let store = &repo.store;
        if store.cache.is_read_only() || store.cache.path(&job.spec.hash).exists() {
            continue;
        }
        // Only into room nobody else needs, counting the other prefetches in progress: below
        // the quota's cleanup threshold (a prefetch never causes a cleanup), and into at most
        // half of the free disk space (partial downloads are not in the quota's books, and a
        // reader must never find the disk filled by objects nobody asked for yet).
        let size = job.spec.size.unwrap_or(u64::MAX);
        let reserved = {
            let mut pending = shared.in_progress.lock().unwrap_or_else(|e| e.into_inner());
            let wanted = pending.saturating_add(size);
            if let Some(q) = store.cache.quota() {
                let u = q.usage();
                let budget = u.threshold.max(u.limit / 2);
                if u.used.saturating_add(wanted) > budget {
                    continue;
                }
            }
            if free_disk_space(store.cache.dir()).is_some_and(|free| wanted > free / 2) {
                continue;
            }
            *pending += size;
            size
        };
        let label = Label {
            description: &job.description,
            kind: job.kind,
        };
        let result = store.get_labeled(job.spec, label);
        *shared.in_progress.lock().unwrap_or_else(|e| e.into_inner()) -= reserved;
        match result {
            Ok(_) => shared.fetched.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                log::debug!("prefetch of {}: {e}", job.description);
                shared.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
