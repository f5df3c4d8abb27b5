//! A mounted repository: verified root catalog (by manifest, tag or fixed root hash), the tree
//! of catalogs attached on demand, and file content access (spec §3, §4.7, §5.11, §6, §7).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::cache::{Cache, CacheOptions, Label};
use crate::catalog::{is_path_prefix, Catalog, CatalogError, Chunk, Compression, DirEntry, Xattrs};
use crate::download::{ConsumeError, DownloadError, DownloadManager, DownloadSettings};
use crate::fetch::{FetchError, ObjectSpec, ObjectStore};
use crate::hash::{ContentHash, Suffix};
use crate::history::{History, HistoryError};
use crate::manifest::{Manifest, ManifestError};
use crate::offline::{Breadcrumb, StoredManifest};
use crate::quota::ObjectType;
use crate::signature::{load_public_key, Certificate, NamedKey, SignatureError, SignedLetter};
use crate::symlink::expand_variant_symlink;
use crate::trust::{Blacklist, TrustStore};
use crate::whitelist::{Whitelist, WhitelistError};

/// Everything that can go wrong while mounting or reading a repository. Messages name the
/// repository and the object.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{fqrn}: cannot load public key: {cause}")]
    Key { fqrn: String, cause: SignatureError },
    #[error("{fqrn}: download manager: {cause}")]
    Setup { fqrn: String, cause: DownloadError },
    #[error("{fqrn}: {cause}")]
    ProxyDiscovery {
        fqrn: String,
        cause: crate::pac::discovery::DiscoveryError,
    },
    #[error("{fqrn}: {cause}")]
    Trust {
        fqrn: String,
        cause: crate::trust::TrustError,
    },
    #[error("{fqrn}: manifest .cvmfspublished: {reason}")]
    Manifest { fqrn: String, reason: String },
    #[error("{fqrn}: whitelist .cvmfswhitelist: {reason}")]
    Whitelist { fqrn: String, reason: String },
    #[error("{fqrn}: certificate {object}: {reason}")]
    Certificate {
        fqrn: String,
        object: String,
        reason: String,
    },
    #[error("{fqrn}: tag {tag:?}: {reason}")]
    Tag {
        fqrn: String,
        tag: String,
        reason: String,
    },
    #[error("{fqrn}: catalog {object}: {reason}")]
    Catalog {
        fqrn: String,
        object: String,
        reason: String,
    },
    #[error("{fqrn}: {path}: {reason}")]
    Content {
        fqrn: String,
        path: String,
        reason: String,
    },
    #[error("{fqrn}: {path}: {cause}")]
    Object {
        fqrn: String,
        path: String,
        cause: Box<FetchError>,
    },
}

impl RepoError {
    /// The errno a file system operation should fail with: ENOSPC for a full cache, EROFS after
    /// the tear-down to read-only, EIO otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            RepoError::Object { cause: source, .. } => source.errno(),
            _ => libc::EIO,
        }
    }
}

/// How to find and trust a repository.
#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    pub fqrn: String,
    /// `CVMFS_SERVER_URL` (`;`-separated, templates already expanded).
    pub server_url: String,
    /// `CVMFS_HTTP_PROXY`.
    pub proxy: String,
    /// Timeouts, fallback proxies, retries, resets (`CVMFS_TIMEOUT`, `CVMFS_FALLBACK_PROXY`, …).
    pub download: DownloadSettings,
    /// `CVMFS_TRUSTED_CERTS`: CA certificate files or directories, for `Wcachain` whitelists.
    pub trusted_certs: Vec<PathBuf>,
    /// Blacklist files (`CVMFS_BLACKLIST`); missing ones count as empty.
    pub blacklist: Vec<PathBuf>,
    /// Master public key files (verify the whitelist).
    pub public_keys: Vec<PathBuf>,
    /// Cache directory of this repository.
    pub cache_dir: PathBuf,
    /// `CVMFS_QUOTA_LIMIT` in bytes; `None` = unmanaged cache.
    pub quota_limit: Option<u64>,
    /// `CVMFS_REPOSITORY_TAG`.
    pub tag: Option<String>,
    /// `CVMFS_ROOT_HASH`: a fixed root catalog, trusted by configuration.
    pub root_hash: Option<ContentHash>,
    /// Environment for variant symlinks (process environment plus configuration).
    pub environment: HashMap<String, String>,
    /// Current time (seconds since the epoch) for the whitelist expiry check.
    pub now: i64,
    /// Work inside the cache directory (the daemon; see `CacheOptions::work_in_dir`).
    pub work_in_cache_dir: bool,
}

/// Result of the talk command `remount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemountOutcome {
    UpToDate,
    /// Moved to a newer revision.
    Updated {
        from: u64,
        to: u64,
    },
    Failed,
}

/// A catalog attached to the tree, with its inode range.
#[derive(Debug, Clone)]
pub struct Attached {
    pub catalog: Arc<Catalog>,
    /// Inode of rowid 0 of this catalog.
    pub inode_base: u64,
}

/// An entry found in the tree, with the catalog that holds it.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: Vec<u8>,
    pub entry: DirEntry,
    pub attached: Attached,
}

impl Found {
    /// Stable inode: catalog base + rowid, shared by a hard-link group (smallest rowid).
    pub fn inode(&self) -> Result<u64, CatalogError> {
        let rowid = match self.entry.hardlink_group() {
            0 => self.entry.rowid,
            g => self
                .attached
                .catalog
                .hardlink_group_leader(g)?
                .unwrap_or(self.entry.rowid),
        };
        Ok(self.attached.inode_base + rowid.max(0) as u64)
    }
}

/// The revision a mount shows: replaced whole when an unpinned mount moves to a newer one.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `None` for a mount pinned by root hash.
    pub manifest: Option<Manifest>,
    pub root_hash: ContentHash,
    pub revision: u64,
}

/// The attached catalogs of the current revision. `generation` counts revision switches: a
/// lookup that started before a switch does not attach its (old) nested catalogs to the new
/// revision's list.
#[derive(Default)]
struct Attachments {
    generation: u64,
    list: Vec<Attached>,
}

/// A mounted repository.
pub struct Repository {
    pub fqrn: String,
    pub store: ObjectStore,
    pub tag: Option<String>,
    current: RwLock<Arc<Snapshot>>,
    environment: HashMap<String, String>,
    options: RepositoryOptions,
    attached: RwLock<Attachments>,
    next_inode_base: Mutex<u64>,
    /// Inode bases given out, by catalog: a catalog attached again (after `detach nested
    /// catalogs`) keeps its inodes.
    inode_bases: Mutex<HashMap<ContentHash, u64>>,
}

/// Inodes below this are reserved (FUSE root is 1).
const FIRST_INODE_BASE: u64 = 256;

impl Repository {
    /// Mounts the repository: verifies manifest, certificate and whitelist (unless a root hash
    /// is fixed), resolves the tag, loads the root catalog. When no server answers (or the
    /// manifest is older than the one last seen), the last verified manifest stored in the cache
    /// is verified again and used: offline mode (spec §9.6).
    pub fn mount(opts: RepositoryOptions) -> Result<Repository, RepoError> {
        let fqrn = opts.fqrn.clone();
        let cache = Cache::open_with(
            &opts.cache_dir,
            &CacheOptions {
                quota_limit: opts.quota_limit,
                fqrn: Some(fqrn.clone()),
                work_in_dir: opts.work_in_cache_dir,
            },
        )
        .map_err(|e| RepoError::Catalog {
            fqrn: fqrn.clone(),
            object: "(cache)".into(),
            reason: e.to_string(),
        })?;
        // `auto` groups of CVMFS_HTTP_PROXY (spec §8.3); `CVMFS_PAC_URLS` and `http_proxy` come
        // from the configuration and the process environment.
        let auto = crate::pac::discovery::AutoProxy::from_environment(
            &opts.environment,
            &opts.server_url,
            opts.download.timeout_direct,
        );
        let proxy = crate::pac::discovery::resolve_for_mount(
            &opts.proxy,
            &auto,
            Some((cache.root(), &fqrn)),
        )
        .map_err(|source| RepoError::ProxyDiscovery {
            fqrn: fqrn.clone(),
            cause: source,
        })?;
        let dl = DownloadManager::new(&opts.server_url, &proxy, opts.download.clone()).map_err(
            |source| RepoError::Setup {
                fqrn: fqrn.clone(),
                cause: source,
            },
        )?;
        if opts.download.use_geoapi {
            match dl.probe_geo(&cache.client_uuid()) {
                Ok(_) => {}
                Err(e) => {
                    log::warn!("{fqrn}: Geo-API: {e}; keeping the configured order of the servers")
                }
            }
        }
        let store = ObjectStore::new(cache, Some(Arc::new(dl)));
        let mut fresh_manifest = false;
        let (manifest, root_hash, revision, tag) = match opts.root_hash {
            Some(h) => (None, h, None, opts.tag.clone()),
            None => {
                let (m, fresh) = current_manifest(&store, &opts)?;
                fresh_manifest = fresh;
                match &opts.tag {
                    None => {
                        let (root, rev) = (m.root_catalog, m.revision);
                        (Some(m), root, Some(rev), None)
                    }
                    Some(tag) => {
                        let t = resolve_tag(&store, &m, &fqrn, tag)?;
                        (Some(m), t.root_catalog, Some(t.revision), Some(tag.clone()))
                    }
                }
            }
        };
        let repo = Repository {
            fqrn,
            store,
            tag,
            current: RwLock::new(Arc::new(Snapshot {
                manifest,
                root_hash,
                revision: 0,
            })),
            environment: opts.environment.clone(),
            options: opts,
            attached: RwLock::new(Attachments::default()),
            next_inode_base: Mutex::new(FIRST_INODE_BASE),
            inode_bases: Mutex::new(HashMap::new()),
        };
        let root = repo.attach(root_hash, b"", 0)?;
        let revision = revision.unwrap_or(root.catalog.revision);
        {
            let mut cur = repo.current.write().unwrap_or_else(|e| e.into_inner());
            let mut snap = (**cur).clone();
            snap.revision = revision;
            *cur = Arc::new(snap);
        }
        Blacklist::load(&repo.options.blacklist)
            .and_then(|b| b.check_revision(&repo.fqrn, revision))
            .map_err(|cause| RepoError::Trust {
                fqrn: repo.fqrn.clone(),
                cause,
            })?;
        if let (true, Some(m)) = (fresh_manifest, &repo.snapshot().manifest) {
            let crumb = Breadcrumb {
                root_hash: m.root_catalog,
                timestamp: m.timestamp.unwrap_or(0),
                revision: m.revision,
            };
            if crumb.timestamp > 0 {
                if let Err(e) = crumb.write(repo.store.cache.root(), &repo.fqrn) {
                    log::warn!("{}: cannot write the breadcrumb: {e}", repo.fqrn);
                }
            }
        }
        Ok(repo)
    }

    /// Proxy and direct download timeouts.
    pub fn timeouts(&self) -> (Duration, Duration) {
        (
            self.options.download.timeout,
            self.options.download.timeout_direct,
        )
    }

    /// The revision shown now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn revision(&self) -> u64 {
        self.snapshot().revision
    }

    pub fn root_hash(&self) -> ContentHash {
        self.snapshot().root_hash
    }

    /// Fixed to a root hash or a tag: never moves to another revision (µCernVM's OS mount).
    pub fn is_pinned(&self) -> bool {
        self.options.root_hash.is_some() || self.tag.is_some()
    }

    /// Talk `remount` and the catalog TTL timer: a mount fixed to a tag or root hash is always
    /// up to date; otherwise the servers' manifest is fetched and verified again (whitelist,
    /// certificate, blacklist, CA chain; which also ends offline mode when they answer again).
    /// A newer revision becomes the mounted one: its root catalog is attached, new lookups see
    /// it, entries already handed out (open files) keep theirs. An older revision is never
    /// taken (anti-rollback).
    pub fn remount(&self) -> RemountOutcome {
        if self.is_pinned() {
            return RemountOutcome::UpToDate;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(self.options.now);
        let fetched = fetch_signed_files(&self.store, &self.options).and_then(|(m, w)| {
            let manifest = verify_manifest(&self.store, &self.options, &m, &w, now)?;
            Ok((manifest, m, w))
        });
        let (m, mbuf, wbuf) = match fetched {
            Err(e) => {
                self.store.network.report_offline(&e);
                log::warn!("{}: remount: {e}", self.fqrn);
                return RemountOutcome::Failed;
            }
            Ok(v) => v,
        };
        self.store.network.report_online();
        let mounted = self.revision();
        if m.revision < mounted {
            log::warn!(
                "{}: remount: the servers offer revision {}, older than the mounted {mounted}; \
                 keeping it",
                self.fqrn,
                m.revision
            );
            return RemountOutcome::UpToDate;
        }
        if m.revision == mounted {
            if let Err(e) = StoredManifest::save(self.store.cache.root(), &self.fqrn, &mbuf, &wbuf)
            {
                log::warn!("{}: cannot store the manifest: {e}", self.fqrn);
            }
            return RemountOutcome::UpToDate;
        }
        match self.switch_to(m, &mbuf, &wbuf) {
            Ok(revision) => RemountOutcome::Updated {
                from: mounted,
                to: revision,
            },
            Err(e) => {
                log::warn!("{}: remount to a new revision: {e}", self.fqrn);
                RemountOutcome::Failed
            }
        }
    }

    /// Makes verified manifest `m` the mounted revision.
    fn switch_to(&self, m: Manifest, mbuf: &[u8], wbuf: &[u8]) -> Result<u64, RepoError> {
        let root = self.load_catalog(m.root_catalog, b"")?;
        let revision = m.revision;
        let crumb = Breadcrumb {
            root_hash: m.root_catalog,
            timestamp: m.timestamp.unwrap_or(0),
            revision,
        };
        let new_root = root.catalog.hash;
        let (from, old) = {
            let mut list = self.attached.write().unwrap_or_else(|e| e.into_inner());
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            let from = cur.revision;
            list.generation += 1;
            let old = std::mem::replace(&mut list.list, vec![root]);
            *cur = Arc::new(Snapshot {
                root_hash: m.root_catalog,
                revision,
                manifest: Some(m),
            });
            (from, old)
        };
        // The old revision's catalogs may be evicted now (entries still open keep their
        // database open); those the new revision shares are pinned again when attached.
        if let Some(q) = self.store.cache.quota() {
            for a in old.iter().filter(|a| a.catalog.hash != new_root) {
                if let Err(e) = q.unpin(&a.catalog.hash) {
                    log::warn!("{}: {e}", self.fqrn);
                }
            }
        }
        log::info!(
            "CernVM-FS: {}: switched from revision {from} to revision {revision}",
            self.fqrn
        );
        if let Err(e) = StoredManifest::save(self.store.cache.root(), &self.fqrn, mbuf, wbuf) {
            log::warn!("{}: cannot store the manifest: {e}", self.fqrn);
        }
        if crumb.timestamp > 0 {
            if let Err(e) = crumb.write(self.store.cache.root(), &self.fqrn) {
                log::warn!("{}: cannot write the breadcrumb: {e}", self.fqrn);
            }
        }
        Ok(revision)
    }

    /// Seconds until the next revision check of an unpinned mount: the root catalog's TTL,
    /// capped by `max_ttl` (`CVMFS_MAX_TTL`).
    pub fn catalog_ttl(&self, max_ttl: Option<Duration>) -> Duration {
        let ttl = self
            .attached_catalogs()
            .iter()
            .find(|a| a.catalog.mountpoint.is_empty())
            .map_or(240, |a| a.catalog.ttl);
        let ttl = Duration::from_secs(ttl.max(1));
        max_ttl.map_or(ttl, |m| ttl.min(m))
    }

    /// Talk `evict`: removes a regular file's objects from the cache. `false` if `path` is
    /// no regular file.
    pub fn evict(&self, path: &[u8]) -> Result<bool, RepoError> {
        let Some(f) = self.lookup(path)? else {
            return Ok(false);
        };
        if !f.entry.is_regular() {
            return Ok(false);
        }
        if f.entry.is_chunked() {
            for c in self.chunks(&f)? {
                self.store.cache.evict(&c.hash);
            }
        } else if let Some(h) = f.entry.hash {
            self.store.cache.evict(&h);
        }
        Ok(true)
    }

    /// Whether the servers did not answer lately (offline mode).
    pub fn is_offline(&self) -> bool {
        self.store.network.is_offline()
    }

    /// Pins regular file `path` (talk `pin`, spec §9.4): reserves its size (each chunk's) in
    /// the pinned set and fetches it into the cache. `false` if it is no regular file or
    /// pinning failed.
    pub fn pin(&self, path: &[u8]) -> Result<bool, RepoError> {
        let Some(f) = self.lookup(path)? else {
            return Ok(false);
        };
        if !f.entry.is_regular() || f.entry.is_external() {
            return Ok(false);
        }
        let Some(q) = self.store.cache.quota() else {
            // Without a quota nothing is ever evicted; fetching is all pinning means.
            return self.open(&f).map(|_| true);
        };
        let description = String::from_utf8_lossy(path).into_owned();
        let objects: Vec<(ContentHash, u64, Suffix)> = if f.entry.is_chunked() {
            self.chunks(&f)?
                .into_iter()
                .map(|c| (c.hash, c.size, Suffix::Partial))
                .collect()
        } else {
            match f.entry.hash {
                Some(h) => vec![(h, f.entry.size, Suffix::None)],
                None => return Ok(false),
            }
        };
        for (hash, size, suffix) in objects {
            let pinned = q
                .pin(&hash, size)
                .map_err(|e| self.content_error(path, e))?;
            if !pinned {
                log::warn!(
                    "{}: cannot pin {description}: pinned files would exceed half the cache quota",
                    self.fqrn
                );
                return Ok(false);
            }
            let spec = ObjectSpec {
                hash,
                suffix,
                compression: f.entry.compression(),
                size: Some(size),
            };
            let label = Label {
                description: &description,
                kind: ObjectType::Regular,
            };
            if let Err(e) = self.store.get_labeled(spec, label) {
                log::warn!("{}: cannot pin {description}: {e}", self.fqrn);
                let _ = q.unpin(&hash);
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn catalog_error(&self, object: &ContentHash, reason: impl ToString) -> RepoError {
        RepoError::Catalog {
            fqrn: self.fqrn.clone(),
            object: object.object_path(Suffix::Catalog),
            reason: reason.to_string(),
        }
    }

    /// Attaches catalog `hash` at `mountpoint` (or returns it if already attached). A catalog
    /// of a lookup that began before a revision switch (`generation`) is used for that lookup
    /// but not attached to the new revision.
    fn attach(
        &self,
        hash: ContentHash,
        mountpoint: &[u8],
        generation: u64,
    ) -> Result<Attached, RepoError> {
        if let Some(a) = self.find_attached(mountpoint, hash) {
            return Ok(a);
        }
        let a = self.load_catalog(hash, mountpoint)?;
        let mut list = self.attached.write().unwrap_or_else(|e| e.into_inner());
        if list.generation != generation {
            return Ok(a);
        }
        if let Some(a) = list
            .list
            .iter()
            .find(|a| a.catalog.mountpoint == mountpoint && a.catalog.hash == hash)
        {
            return Ok(a.clone());
        }
        list.list.push(a.clone());
        Ok(a)
    }

    /// Downloads (or finds in the cache), pins and opens catalog `hash` for `mountpoint`, with
    /// its inode base.
    fn load_catalog(&self, hash: ContentHash, mountpoint: &[u8]) -> Result<Attached, RepoError> {
        let spec = ObjectSpec {
            hash,
            suffix: Suffix::Catalog,
            compression: Compression::Zlib,
            size: None,
        };
        let description = format!(
            "file catalog at {}:{} ({hash})",
            self.fqrn,
            String::from_utf8_lossy(mountpoint)
        );
        let label = Label {
            description: &description,
            kind: ObjectType::Catalog,
        };
        let path = self
            .store
            .get_labeled(spec, label)
            .map_err(|e| self.catalog_error(&hash, e))?;
        if let Some(q) = self.store.cache.quota() {
            // Catalogs stay while attached (a mount never detaches one).
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match q.pin(&hash, size) {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!("{description}: cannot pin it, the cache quota is too small")
                }
                Err(e) => log::warn!("{description}: {e}"),
            }
        }
        let catalog = match Catalog::open(&path, hash, mountpoint) {
            Ok(c) => c,
            Err(e) => {
                // A verified object that is no valid catalog stays bad; a cache file that rotted
                // is dropped so the next attempt downloads it again.
                self.store.cache.evict(&hash);
                return Err(self.catalog_error(&hash, e));
            }
        };
        let mut bases = self.inode_bases.lock().unwrap_or_else(|e| e.into_inner());
        let inode_base = *bases.entry(hash).or_insert_with(|| {
            let mut next = self
                .next_inode_base
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let base = *next;
            *next += catalog.max_rowid.max(0) as u64 + 1;
            base
        });
        Ok(Attached {
            inode_base,
            catalog: Arc::new(catalog),
        })
    }

    /// Talk `detach nested catalogs`: only the root catalog stays attached; nested ones are
    /// attached again (with the same inodes) when a lookup needs them. Entries already handed
    /// out keep their catalog open. Returns how many were detached.
    pub fn detach_nested(&self) -> usize {
        let mut list = self.attached.write().unwrap_or_else(|e| e.into_inner());
        let before = list.list.len();
        list.list.retain(|a| a.catalog.mountpoint.is_empty());
        before - list.list.len()
    }

    fn find_attached(&self, mountpoint: &[u8], hash: ContentHash) -> Option<Attached> {
        let list = self.attached.read().unwrap_or_else(|e| e.into_inner());
        list.list
            .iter()
            .find(|a| a.catalog.mountpoint == mountpoint && a.catalog.hash == hash)
            .cloned()
    }

    /// The deepest attached catalog containing `path`. A nested mountpoint itself belongs to
    /// its parent catalog, whose entry is authoritative for lookups.
    fn best_attached(&self, path: &[u8]) -> (Attached, u64) {
        let list = self.attached.read().unwrap_or_else(|e| e.into_inner());
        let best = list
            .list
            .iter()
            .filter(|a| {
                let m = &a.catalog.mountpoint;
                m.is_empty() || (is_path_prefix(m, path) && m.as_slice() != path)
            })
            .max_by_key(|a| a.catalog.mountpoint.len())
            .cloned()
            .expect("the root catalog is always attached");
        (best, list.generation)
    }

    /// All attached catalogs.
    pub fn attached_catalogs(&self) -> Vec<Attached> {
        self.attached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }

    /// Looks up an absolute repository path (`""` is the root, otherwise `/a/b`). For a nested
    /// catalog mountpoint the parent catalog's entry is returned.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<Found>, RepoError> {
        let (mut current, generation) = self.best_attached(path);
        loop {
            let cat = &current.catalog;
            if let Some(entry) = cat
                .lookup(path)
                .map_err(|e| self.catalog_error(&cat.hash, e))?
            {
                return Ok(Some(Found {
                    path: path.to_vec(),
                    entry,
                    attached: current,
                }));
            }
            let Some(nested) = cat.nested_for(path).cloned() else {
                return Ok(None);
            };
            if nested.path == path {
                return Ok(None);
            }
            current = self.attach(nested.hash, &nested.path, generation)?;
        }
    }

    /// The children of directory `path`, without hidden entries. A nested mountpoint is listed
    /// from its own catalog.
    pub fn list(&self, path: &[u8]) -> Result<Vec<Found>, RepoError> {
        let (mut holder, generation) = self.best_attached(path);
        if let Some(f) = self.lookup(path)? {
            holder = f.attached.clone();
            if f.entry.is_nested_mountpoint() {
                let nested = holder
                    .catalog
                    .nested
                    .iter()
                    .find(|n| n.path == path)
                    .cloned()
                    .ok_or_else(|| {
                        self.catalog_error(
                            &holder.catalog.hash,
                            format!(
                                "{} is flagged as a nested catalog but not listed as one",
                                String::from_utf8_lossy(path)
                            ),
                        )
                    })?;
                holder = self.attach(nested.hash, &nested.path, generation)?;
            }
        }
        let cat = &holder.catalog;
        let entries = cat
            .list(path)
            .map_err(|e| self.catalog_error(&cat.hash, e))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_hidden())
            .map(|entry| {
                let mut p = path.to_vec();
                p.push(b'/');
                p.extend_from_slice(&entry.name);
                Found {
                    path: p,
                    entry,
                    attached: holder.clone(),
                }
            })
            .collect())
    }

    /// The symlink target with `$(VAR)` / `$(VAR:-default)` expanded.
    pub fn expand_symlink(&self, raw: &[u8]) -> Vec<u8> {
        expand_variant_symlink(raw, |name| self.environment.get(name).cloned())
    }

    /// Extended attributes stored in the catalog for this entry.
    pub fn xattrs(&self, f: &Found) -> Result<Xattrs, RepoError> {
        if !f.entry.has_xattrs {
            return Ok(Vec::new());
        }
        f.attached
            .catalog
            .xattrs(&f.path)
            .map_err(|e| self.catalog_error(&f.attached.catalog.hash, e))
    }

    fn content_error(&self, path: &[u8], reason: impl ToString) -> RepoError {
        RepoError::Content {
            fqrn: self.fqrn.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_string(),
        }
    }

    /// Chunks of a chunked regular file.
    pub fn chunks(&self, f: &Found) -> Result<Vec<Chunk>, RepoError> {
        let alg = f
            .entry
            .hash_algorithm()
            .map_err(|e| self.content_error(&f.path, e))?;
        let chunks = f
            .attached
            .catalog
            .chunks(&f.path, alg)
            .map_err(|e| self.catalog_error(&f.attached.catalog.hash, e))?;
        let total: u64 = chunks.iter().map(|c| c.size).sum();
        if chunks.is_empty() || total != f.entry.size {
            return Err(self.content_error(
                &f.path,
                format!(
                    "chunk list covers {total} bytes in {} chunks, the file has {}",
                    chunks.len(),
                    f.entry.size
                ),
            ));
        }
        Ok(chunks)
    }

    /// The object holding the content of unchunked regular file `f`.
    pub fn file_spec(&self, f: &Found) -> Option<ObjectSpec> {
        Some(ObjectSpec {
            hash: f.entry.hash?,
            suffix: Suffix::None,
            compression: f.entry.compression(),
            size: Some(f.entry.size),
        })
    }

    /// The object of chunk `c` of chunked file `f`.
    pub fn chunk_spec(&self, f: &Found, c: &Chunk) -> ObjectSpec {
        ObjectSpec {
            hash: c.hash,
            suffix: Suffix::Partial,
            compression: f.entry.compression(),
            size: Some(c.size),
        }
    }

    /// Opens a regular file for reading: downloads it if it is not chunked (chunks are fetched
    /// when read).
    pub fn open(&self, f: &Found) -> Result<OpenFile, RepoError> {
        if !f.entry.is_regular() {
            return Err(self.content_error(&f.path, "not a regular file"));
        }
        if f.entry.is_external() {
            return Err(self.content_error(&f.path, "external files are not supported"));
        }
        if f.entry.is_chunked() {
            return Ok(OpenFile {
                path: f.path.clone(),
                size: f.entry.size,
                compression: f.entry.compression(),
                content: Content::Chunked {
                    chunks: self.chunks(f)?,
                    current: Mutex::new(None),
                },
            });
        }
        let hash = f
            .entry
            .hash
            .ok_or_else(|| self.content_error(&f.path, "regular file without content hash"))?;
        let description = String::from_utf8_lossy(&f.path).into_owned();
        let file = self
            .store
            .open_labeled(
                ObjectSpec {
                    hash,
                    suffix: Suffix::None,
                    compression: f.entry.compression(),
                    size: Some(f.entry.size),
                },
                Label {
                    description: &description,
                    kind: ObjectType::Regular,
                },
            )
            .map_err(|e| self.object_error(&f.path, e))?;
        Ok(OpenFile {
            path: f.path.clone(),
            size: f.entry.size,
            compression: f.entry.compression(),
            content: Content::Whole(file),
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the number read (0 at the end).
    pub fn read(&self, file: &OpenFile, offset: u64, buf: &mut [u8]) -> Result<usize, RepoError> {
        if offset >= file.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((file.size - offset) as usize);
        match &file.content {
            Content::Whole(f) => read_full_at(f, &mut buf[..want], offset)
                .map_err(|e| self.content_error(&file.path, e)),
            Content::Chunked { chunks, current } => {
                let mut done = 0usize;
                while done < want {
                    let pos = offset + done as u64;
                    let idx = chunks.partition_point(|c| c.offset + c.size <= pos);
                    let Some(chunk) = chunks.get(idx) else { break };
                    let chunk_file = {
                        let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
                        match &*cur {
                            Some((i, f)) if *i == idx => Arc::clone(f),
                            _ => {
                                // Close the previous chunk first: after an eviction (a full
                                // cache disk) its space is only freed with the last descriptor.
                                *cur = None;
                                let f = Arc::new(self.open_chunk(file, chunk)?);
                                *cur = Some((idx, Arc::clone(&f)));
                                f
                            }
                        }
                    };
                    let in_chunk = pos - chunk.offset;
                    let n = ((chunk.size - in_chunk) as usize).min(want - done);
                    let got = read_full_at(&chunk_file, &mut buf[done..done + n], in_chunk)
                        .map_err(|e| self.content_error(&file.path, e))?;
                    if got < n {
                        return Err(self.content_error(
                            &file.path,
                            format!(
                                "chunk {} is shorter than its {} bytes",
                                chunk.hash, chunk.size
                            ),
                        ));
                    }
                    done += n;
                }
                Ok(done)
            }
        }
    }

    fn open_chunk(&self, file: &OpenFile, chunk: &Chunk) -> Result<File, RepoError> {
        let description = format!("Part of {}", String::from_utf8_lossy(&file.path));
        self.store
            .open_labeled(
                ObjectSpec {
                    hash: chunk.hash,
                    suffix: Suffix::Partial,
                    compression: file.compression,
                    size: Some(chunk.size),
                },
                Label {
                    description: &description,
                    kind: ObjectType::Regular,
                },
            )
            .map_err(|e| self.object_error(&file.path, e))
    }

    fn object_error(&self, path: &[u8], source: FetchError) -> RepoError {
        RepoError::Object {
            fqrn: self.fqrn.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            cause: Box::new(source),
        }
    }

    /// The download manager, if online.
    pub fn downloader(&self) -> Option<&DownloadManager> {
        self.store.downloader.as_deref()
    }
}

fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// An open regular file.
pub struct OpenFile {
    pub path: Vec<u8>,
    pub size: u64,
    compression: Compression,
    content: Content,
}

enum Content {
    Whole(File),
    Chunked {
        chunks: Vec<Chunk>,
        current: Mutex<Option<(usize, Arc<File>)>>,
    },
}

impl OpenFile {
    /// The verified cached object holding the whole content (not for chunked files): what
    /// the kernel may read directly (FUSE passthrough).
    pub fn whole_object(&self) -> Option<&File> {
        match &self.content {
            Content::Whole(f) => Some(f),
            Content::Chunked { .. } => None,
        }
    }

    /// Number of chunks (1 if not chunked).
    pub fn chunk_count(&self) -> usize {
        match &self.content {
            Content::Whole(_) => 1,
            Content::Chunked { chunks, .. } => chunks.len(),
        }
    }
}

const MAX_SIGNED_FILE: u64 = 1 << 20;

fn fetch_small(dl: &DownloadManager, rel: &str) -> Result<Vec<u8>, DownloadError> {
    dl.fetch(rel, |body| {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(body, MAX_SIGNED_FILE + 1), &mut v)
            .map_err(ConsumeError::Transfer)?;
        if v.len() as u64 > MAX_SIGNED_FILE {
            return Err(ConsumeError::BadData(format!(
                "larger than {MAX_SIGNED_FILE} bytes"
            )));
        }
        Ok(v)
    })
}

/// The manifest to mount: the servers' one if it verifies and is not older than the last one
/// stored in the cache (anti-rollback), else the stored one (offline). `true` with a manifest
/// fetched now.
fn current_manifest(
    store: &ObjectStore,
    opts: &RepositoryOptions,
) -> Result<(Manifest, bool), RepoError> {
    let fqrn = &opts.fqrn;
    let cache_dir = store.cache.root().to_path_buf();
    let stored = StoredManifest::load(&cache_dir, fqrn);
    // The stored copy is verified only when it is used (the servers did not answer, or they
    // offer an older revision); a mount with the servers reachable does not pay for it.
    let verified_local = || {
        let s = stored.as_ref()?;
        match verify_manifest(store, opts, &s.manifest, &s.whitelist, s.stored_at) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("{fqrn}: ignoring the manifest stored in the cache: {e}");
                None
            }
        }
    };
    let online = fetch_signed_files(store, opts).and_then(|(mbuf, wbuf)| {
        let m = verify_manifest(store, opts, &mbuf, &wbuf, opts.now)?;
        Ok((m, mbuf, wbuf))
    });
    match online {
        Ok((m, mbuf, wbuf)) => {
            let stored_revision = stored
                .as_ref()
                .and_then(|s| Manifest::parse_signed(&s.manifest, fqrn).ok())
                .map(|(l, _)| l.revision);
            if stored_revision.is_some_and(|r| r > m.revision) {
                if let Some(l) = verified_local() {
                    log::warn!(
                        "{fqrn}: the servers offer revision {}, older than revision {} seen \
                         before; keeping the newer one",
                        m.revision,
                        l.revision
                    );
                    return Ok((l, false));
                }
            }
            if let Err(e) = StoredManifest::save(&cache_dir, fqrn, &mbuf, &wbuf) {
                log::warn!("{fqrn}: cannot store the manifest in the cache: {e}");
            }
            Ok((m, true))
        }
        Err(e) => match verified_local() {
            Some(l) => {
                store.network.report_offline(&e);
                log::warn!(
                    "{fqrn}: mounting revision {} from the cache (offline): {e}",
                    l.revision
                );
                Ok((l, false))
            }
            None => Err(e),
        },
    }
}

/// Fetches `.cvmfspublished` and `.cvmfswhitelist`.
fn fetch_signed_files(
    store: &ObjectStore,
    opts: &RepositoryOptions,
) -> Result<(Vec<u8>, Vec<u8>), RepoError> {
    let fqrn = &opts.fqrn;
    let dl = store
        .downloader
        .as_deref()
        .ok_or_else(|| RepoError::Manifest {
            fqrn: fqrn.clone(),
            reason: "offline".into(),
        })?;
    let mbuf = fetch_small(dl, "/.cvmfspublished").map_err(|e| RepoError::Manifest {
        fqrn: fqrn.clone(),
        reason: e.to_string(),
    })?;
    let wbuf = fetch_small(dl, "/.cvmfswhitelist").map_err(|e| RepoError::Whitelist {
        fqrn: fqrn.clone(),
        reason: e.to_string(),
    })?;
    Ok((mbuf, wbuf))
}

/// §4.7: manifest, certificate, signature, whitelist (expiry against `now`), fingerprint.
fn verify_manifest(
    store: &ObjectStore,
    opts: &RepositoryOptions,
    mbuf: &[u8],
    wbuf: &[u8],
    now: i64,
) -> Result<Manifest, RepoError> {
    let fqrn = &opts.fqrn;
    let keys: Vec<NamedKey> = opts
        .public_keys
        .iter()
        .map(|p| load_public_key(p))
        .collect::<Result<_, _>>()
        .map_err(|source| RepoError::Key {
            fqrn: fqrn.clone(),
            cause: source,
        })?;
    let (manifest, letter): (Manifest, SignedLetter) =
        Manifest::parse_signed(mbuf, fqrn).map_err(|e: ManifestError| RepoError::Manifest {
            fqrn: fqrn.clone(),
            reason: e.to_string(),
        })?;
    let cert_hash = manifest.certificate.ok_or_else(|| RepoError::Manifest {
        fqrn: fqrn.clone(),
        reason: "no certificate (X) field".into(),
    })?;
    let cert_object = cert_hash.object_path(Suffix::Certificate);
    let cert_err = |reason: String| RepoError::Certificate {
        fqrn: fqrn.clone(),
        object: cert_object.clone(),
        reason,
    };
    let description = format!("certificate for {fqrn}");
    let cert_path = store
        .get_labeled(
            ObjectSpec {
                hash: cert_hash,
                suffix: Suffix::Certificate,
                compression: Compression::Zlib,
                size: None,
            },
            Label {
                description: &description,
                kind: ObjectType::Regular,
            },
        )
        .map_err(|e| cert_err(e.to_string()))?;
    let pem = std::fs::read(&cert_path).map_err(|e| cert_err(e.to_string()))?;
    if pem.len() as u64 > MAX_SIGNED_FILE {
        return Err(cert_err(format!("larger than {MAX_SIGNED_FILE} bytes")));
    }
    let cert = Certificate::from_pem(&pem).map_err(|e| cert_err(e.to_string()))?;
    cert.verify_manifest_signature(&letter)
        .map_err(|e| RepoError::Manifest {
            fqrn: fqrn.clone(),
            reason: e.to_string(),
        })?;
    let wl_err = |e: WhitelistError| RepoError::Whitelist {
        fqrn: fqrn.clone(),
        reason: e.to_string(),
    };
    let whitelist = Whitelist::verify(wbuf, fqrn, &keys, now).map_err(wl_err)?;
    whitelist.check_certificate(&cert).map_err(wl_err)?;
    let trust_err = |cause| RepoError::Trust {
        fqrn: fqrn.clone(),
        cause,
    };
    let blacklist = Blacklist::load(&opts.blacklist).map_err(trust_err)?;
    blacklist.check_certificate(&cert).map_err(trust_err)?;
    blacklist
        .check_revision(fqrn, manifest.revision)
        .map_err(trust_err)?;
    if whitelist.requires_ca_chain {
        TrustStore::load(&opts.trusted_certs)
            .and_then(|store| store.verify_chain(&cert, now))
            .map_err(trust_err)?;
    }
    Ok(manifest)
}

fn resolve_tag(
    store: &ObjectStore,
    m: &Manifest,
    fqrn: &str,
    tag: &str,
) -> Result<crate::history::Tag, RepoError> {
    let err = |reason: String| RepoError::Tag {
        fqrn: fqrn.to_string(),
        tag: tag.to_string(),
        reason,
    };
    let h = m
        .history
        .ok_or_else(|| err("the manifest has no history database (H)".into()))?;
    let description = format!("tag database for {fqrn}");
    let path = store
        .get_labeled(
            ObjectSpec {
                hash: h,
                suffix: Suffix::History,
                compression: Compression::Zlib,
                size: None,
            },
            Label {
                description: &description,
                kind: ObjectType::Regular,
            },
        )
        .map_err(|e: FetchError| err(e.to_string()))?;
    let hist = History::open(&path).map_err(|e: HistoryError| err(e.to_string()))?;
    hist.tag(tag)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("no such tag".into()))
}
