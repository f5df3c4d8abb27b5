//! The FUSE file system over a mounted [`Repository`] (spec §5.6, §5.10, §10.2–10.5).
//!
//! The kernel's root inode 1 is the repository root; every other entry uses the stable inode of
//! [`Found::inode`]. A table inode → path (with kernel lookup counts) serves the inode-based
//! operations. Content is immutable for the lifetime of a revision, so attributes, entries
//! (including negative ones) and page cache are kept by the kernel for the kcache timeout; when
//! an unpinned mount moves to a new revision they are invalidated through the FUSE notifier
//! ([`FsShared::drop_metadata_caches`]). Inodes handed out before keep their entry (open
//! files read their revision); new lookups see the new one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenAccMode,
    OpenFlags, PollEvents, PollFlags, PollNotifier, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyXattr, Request,
};

use crate::passthrough::BackingFiles;
use cvmfs_client::catalog::{Compression, DirEntry};
use cvmfs_client::mount::{FuseOptions, MagicXattrVisibility};
use cvmfs_client::prefetch::Prefetcher;
use cvmfs_client::repository::{Attached, Found, OpenFile, RepoError, Repository};

/// The kernel's root inode.
pub const ROOT_INO: u64 = 1;

/// Version reported by `user.version`: crate version plus patch level.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), ".0");

/// Magic attributes available on every entry (sorted; listing order).
const GLOBAL_MAGIC: &[&str] = &[
    "user.catalog_counters",
    "user.expires",
    "user.fqrn",
    "user.host",
    "user.host_list",
    "user.inode_max",
    "user.ncleanup24",
    "user.nclg",
    "user.ndiropen",
    "user.ndownload",
    "user.nioerr",
    "user.nopen",
    "user.offline",
    "user.pid",
    "user.proxy",
    "user.repo_counters",
    "user.revision",
    "user.root_hash",
    "user.tag",
    "user.timeout",
    "user.timeout_direct",
    "user.timestamp_last_ioerr",
    "user.uptime",
    "user.usedfd",
    "user.useddirp",
    "user.version",
];
/// Magic attributes of entries with a content hash.
const HASH_MAGIC: &[&str] = &["user.hash"];
/// Magic attributes of regular files.
const REGULAR_MAGIC: &[&str] = &[
    "user.chunk_list",
    "user.chunks",
    "user.compression",
    "user.direct_io",
    "user.external_file",
];
/// Magic attributes of symbolic links (`xfsroot.rawlink` is readable but not listed).
const SYMLINK_MAGIC: &[&str] = &["user.rawlink"];

/// A kernel inode: the entry it was looked up as (an inode belongs to one catalog of one
/// revision, so the entry stays valid and inode operations need no catalog query) and the
/// kernel's lookup count.
struct Node {
    found: Arc<Found>,
    lookups: u64,
}

/// One line of a directory listing built at `opendir`.
struct DirItem {
    ino: u64,
    kind: FileType,
    name: Vec<u8>,
    /// Attributes and entry for `readdirplus` (the kernel then needs no lookup per entry).
    attr: FileAttr,
    found: Arc<Found>,
}

/// What the control socket acts on while the file system runs: the error counters, the
/// daemon's metadata tables and the kernel's caches.
#[derive(Default)]
pub struct FsShared {
    nodes: RwLock<HashMap<u64, Node>>,
    /// Listings being read, by directory inode. The daemon declines `opendir` (the kernel then
    /// sends neither `opendir` nor `releasedir`, two round trips less per directory): a listing
    /// is built when read from offset 0 and dropped when a reader reaches its end.
    dirs: RwLock<HashMap<u64, Arc<Vec<DirItem>>>>,
    nioerr: AtomicU64,
    last_ioerr: AtomicU64,
    /// Invalidation messages to the kernel, once the session runs.
    notifier: OnceLock<Notifier>,
    /// Names the kernel caches as missing (parent inode, name), for mounts that can move to a
    /// new revision: invalidated with everything else when they do.
    negative: Mutex<HashSet<(u64, Vec<u8>)>>,
}

/// Negative entries remembered for invalidation; beyond that, misses are not cached.
const MAX_NEGATIVE_ENTRIES: usize = 65_536;

impl FsShared {
    /// Talk `reset error counters`: `user.nioerr` and `user.timestamp_last_ioerr` start again.
    pub fn reset_error_counters(&self) {
        self.nioerr.store(0, Ordering::Relaxed);
        self.last_ioerr.store(0, Ordering::Relaxed);
    }

    /// Records a cached miss; `false` when too many are remembered (do not cache it then).
    fn remember_negative(&self, parent: u64, name: &OsStr) -> bool {
        let mut n = self.negative.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() >= MAX_NEGATIVE_ENTRIES {
            return false;
        }
        n.insert((parent, name.as_bytes().to_vec()));
        true
    }

    /// Where invalidations go (set once the FUSE session exists).
    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Talk `drop metadata caches`: the listings kept for readers are dropped, and the kernel
    /// forgets the attributes, names and cached pages of every inode it knows, so the next
    /// access asks the daemon again. Returns how many inodes were invalidated.
    pub fn drop_metadata_caches(&self) -> usize {
        self.dirs.write().unwrap_or_else(|e| e.into_inner()).clear();
        let Some(notifier) = self.notifier.get() else {
            return 0;
        };
        // Collected first: the kernel may call back into the file system while invalidating.
        let known: Vec<(u64, Vec<u8>)> = self
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(ino, n)| (*ino, n.found.path.clone()))
            .collect();
        let by_path: HashMap<&[u8], u64> = known.iter().map(|(i, p)| (p.as_slice(), *i)).collect();
        let mut count = 0;
        for (ino, path) in &known {
            let parent = parent_of(path);
            let parent_ino = if parent.is_empty() {
                Some(ROOT_INO)
            } else {
                by_path.get(parent).copied()
            };
            if let Some(pi) = parent_ino {
                let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
                // ENOENT: the kernel dropped the name already.
                let _ = notifier.inval_entry(INodeNo(pi), OsStr::from_bytes(name));
            }
            if notifier.inval_inode(INodeNo(*ino), 0, 0).is_ok() {
                count += 1;
            }
        }
        let _ = notifier.inval_inode(INodeNo(ROOT_INO), 0, 0);
        let negative =
            std::mem::take(&mut *self.negative.lock().unwrap_or_else(|e| e.into_inner()));
        for (parent, name) in negative {
            let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
        }
        count
    }
}

/// The CernVM-FS FUSE file system.
pub struct CvmfsFs {
    repo: Arc<Repository>,
    opts: FuseOptions,
    shared: Arc<FsShared>,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    euid: u32,
    egid: u32,
    started: Instant,
    started_epoch: i64,
    nopen: AtomicU64,
    ndiropen: AtomicU64,
    prefetch: Prefetcher,
    /// Open files the kernel reads directly from their cached object (FUSE passthrough).
    backing: BackingFiles<BackingId>,
}

/// Listings kept for readers in the middle of a directory.
const MAX_OPEN_LISTINGS: usize = 1024;

/// Background downloads of what is likely read next (see `prefetch`).
const PREFETCH_THREADS: usize = 4;

impl CvmfsFs {
    pub fn new(repo: Arc<Repository>, opts: FuseOptions, shared: Arc<FsShared>) -> CvmfsFs {
        CvmfsFs {
            prefetch: Prefetcher::start(Arc::clone(&repo), PREFETCH_THREADS),
            repo,
            opts,
            shared,
            files: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            started: Instant::now(),
            started_epoch: epoch_now(),
            nopen: AtomicU64::new(0),
            ndiropen: AtomicU64::new(0),
            backing: BackingFiles::default(),
        }
    }

    fn ttl(&self) -> Duration {
        self.opts.kcache_timeout
    }

    /// Logs a repository failure and turns it into EIO.
    fn io_error(&self, op: &str, path: &[u8], err: &dyn std::fmt::Display) -> Errno {
        self.shared.nioerr.fetch_add(1, Ordering::Relaxed);
        self.shared
            .last_ioerr
            .store(epoch_now().max(0) as u64, Ordering::Relaxed);
        log::error!("{}: {op} {}: {err}", self.repo.fqrn, display_path(path));
        Errno::EIO
    }

    /// Like [`CvmfsFs::io_error`], with the errno the failure calls for (ENOSPC, EROFS).
    fn repo_error(&self, op: &str, path: &[u8], err: &RepoError) -> Errno {
        let eio = self.io_error(op, path, err);
        match err.errno() {
            libc::EIO => eio,
            n => Errno::from_i32(n),
        }
    }

    /// The repository path of a kernel inode.
    fn path_of(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        if ino.0 == ROOT_INO {
            return Ok(Vec::new());
        }
        let nodes = self.shared.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(&ino.0)
            .map(|n| n.found.path.clone())
            .ok_or(Errno::ESTALE)
    }

    fn lookup_path(&self, op: &str, path: &[u8]) -> Result<Option<Found>, Errno> {
        self.repo
            .lookup(path)
            .map_err(|e| self.io_error(op, path, &e))
    }

    /// The entry behind a kernel inode.
    fn found(&self, op: &str, ino: INodeNo) -> Result<Arc<Found>, Errno> {
        if ino.0 == ROOT_INO {
            return Ok(Arc::new(self.lookup_path(op, b"")?.ok_or(Errno::ENOENT)?));
        }
        let nodes = self.shared.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(&ino.0)
            .map(|n| Arc::clone(&n.found))
            .ok_or(Errno::ESTALE)
    }

    /// The kernel inode of an entry.
    fn ino_of(&self, f: &Found) -> Result<u64, Errno> {
        if f.path.is_empty() {
            return Ok(ROOT_INO);
        }
        f.inode().map_err(|e| self.io_error("inode", &f.path, &e))
    }

    /// Records a kernel reference to `ino` (one `lookup`), found as `found`.
    fn remember(&self, ino: u64, found: &Arc<Found>) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.shared.nodes.write().unwrap_or_else(|e| e.into_inner());
        let node = nodes.entry(ino).or_insert_with(|| Node {
            found: Arc::clone(found),
            lookups: 0,
        });
        if node.found.path != found.path {
            // Another name of the same hard-link group: same content and metadata.
            node.found = Arc::clone(found);
        }
        node.lookups += 1;
    }

    fn owner(&self, e: &DirEntry) -> (u32, u32) {
        if self.opts.claim_ownership {
            (self.euid, self.egid)
        } else {
            (self.opts.uid_map.map(e.uid), self.opts.gid_map.map(e.gid))
        }
    }

    /// `struct stat` of an entry (§5.6).
    fn attr(&self, f: &Found, ino: u64) -> FileAttr {
        let e = &f.entry;
        let kind = file_type(e.mode);
        let size = match kind {
            FileType::Symlink => self.repo.expand_symlink(&e.symlink).len() as u64,
            FileType::CharDevice | FileType::BlockDevice => 0,
            _ => e.size,
        };
        let rdev = match kind {
            FileType::CharDevice | FileType::BlockDevice => e.size as u32,
            _ => 1,
        };
        let mut perm = (e.mode & 0o7777) as u16;
        if self.opts.world_readable {
            perm |= if kind == FileType::Directory {
                0o555
            } else {
                0o444
            };
        }
        let (uid, gid) = self.owner(e);
        let time = system_time(e.mtime, e.mtime_ns);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 1 + size / 512,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: e.linkcount(),
            uid,
            gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    fn is_fixed(&self) -> bool {
        self.repo.is_pinned() || !self.opts.auto_update
    }

    /// Root catalog counters, `self_x + subtree_x` by bare name `x`.
    fn repo_counters(&self) -> Result<BTreeMap<String, i64>, RepoError> {
        match self
            .repo
            .attached_catalogs()
            .into_iter()
            .find(|a| a.catalog.mountpoint.is_empty())
        {
            Some(root) => self.counters(&root),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Counters of one catalog, `self_x + subtree_x` by bare name `x`.
    fn counters(&self, a: &Attached) -> Result<BTreeMap<String, i64>, RepoError> {
        let stats = a.catalog.statistics().map_err(|e| RepoError::Catalog {
            fqrn: self.repo.fqrn.clone(),
            object: a.catalog.hash.to_string(),
            reason: e.to_string(),
        })?;
        let mut out = BTreeMap::new();
        for (name, value) in stats {
            let bare = name
                .strip_prefix("self_")
                .or_else(|| name.strip_prefix("subtree_"))
                .unwrap_or(&name);
            *out.entry(bare.to_string()).or_insert(0) += value;
        }
        Ok(out)
    }

    /// `user.catalog_counters`: the catalog serving `f` (for a nested catalog mountpoint, the
    /// nested catalog, as the reference sees the nested root entry there).
    fn catalog_counters(&self, f: &Found) -> Result<Vec<u8>, RepoError> {
        let mut serving = f.attached.clone();
        if f.entry.is_nested_mountpoint() {
            // Listing attaches the nested catalog.
            self.repo.list(&f.path)?;
            if let Some(a) = self
                .repo
                .attached_catalogs()
                .into_iter()
                .find(|a| a.catalog.mountpoint == f.path)
            {
                serving = a;
            }
        }
        let mut out = format!(
            "catalog_hash: {}\ncatalog_mountpoint: {}\n",
            serving.catalog.hash,
            String::from_utf8_lossy(&serving.catalog.mountpoint)
        );
        for (k, v) in self.counters(&serving)? {
            out.push_str(&format!("{k},{v}\n"));
        }
        Ok(out.into_bytes())
    }

    /// The magic attribute names applicable to an entry, sorted.
    fn magic_names(&self, f: &Found) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = GLOBAL_MAGIC.to_vec();
        if f.entry.hash.is_some() {
            names.extend_from_slice(HASH_MAGIC);
        }
        if f.entry.is_regular() {
            names.extend_from_slice(REGULAR_MAGIC);
        }
        if f.entry.is_symlink() {
            names.extend_from_slice(SYMLINK_MAGIC);
        }
        names.sort_unstable();
        names
    }

    /// The value of magic attribute `name` for `f`: `None` if `name` is not a magic attribute
    /// of this entry.
    fn magic_value(&self, name: &[u8], f: &Found) -> Option<Result<Vec<u8>, Errno>> {
        let name = std::str::from_utf8(name).ok()?;
        let e = &f.entry;
        let text = |s: String| Some(Ok(s.into_bytes()));
        let count = |c: &AtomicU64| text(c.load(Ordering::Relaxed).to_string());
        match name {
            "user.fqrn" => text(self.repo.fqrn.clone()),
            "user.root_hash" => text(self.repo.root_hash().to_string()),
            "user.revision" => text(self.repo.revision().to_string()),
            "user.tag" => text(self.repo.tag.clone().unwrap_or_default()),
            "user.expires" => {
                if self.is_fixed() {
                    return text("never (fixed root catalog)".into());
                }
                let max_ttl = self
                    .opts
                    .max_ttl_minutes
                    .map(|m| Duration::from_secs(m.saturating_mul(60)));
                let ttl = self.repo.catalog_ttl(max_ttl).as_secs();
                let expires = self.started_epoch.saturating_add(ttl as i64);
                text(((expires - epoch_now()) / 60).to_string())
            }
            "user.host" => text(self.repo.downloader()?.current_host().to_string()),
            "user.host_list" => text(self.repo.downloader()?.hosts().join(";")),
            "user.proxy" => text(self.repo.downloader()?.current_proxy()),
            "user.timeout" => text(self.opts.timeout.as_secs().to_string()),
            "user.timeout_direct" => text(self.opts.timeout_direct.as_secs().to_string()),
            "user.pid" => text(std::process::id().to_string()),
            "user.nclg" => text(self.repo.attached_catalogs().len().to_string()),
            "user.nopen" => count(&self.nopen),
            "user.ndiropen" => count(&self.ndiropen),
            "user.nioerr" => count(&self.shared.nioerr),
            "user.timestamp_last_ioerr" => count(&self.shared.last_ioerr),
            "user.ndownload" => text(self.repo.store.downloads().to_string()),
            // Not in the reference: 1 while no server answers (offline mode), else 0.
            "user.offline" => text(u8::from(self.repo.is_offline()).to_string()),
            "user.usedfd" => text(
                self.files
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .len()
                    .to_string(),
            ),
            "user.useddirp" => text(
                self.shared
                    .dirs
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .len()
                    .to_string(),
            ),
            "user.uptime" => text((self.started.elapsed().as_secs() / 60).to_string()),
            "user.ncleanup24" => text(match self.repo.store.cache.quota() {
                Some(q) => q.cleanups_last_24h().to_string(),
                None => "-1".into(),
            }),
            "user.inode_max" => text(
                self.repo
                    .attached_catalogs()
                    .iter()
                    .map(|a| a.inode_base + a.catalog.max_rowid.max(0) as u64)
                    .max()
                    .unwrap_or(0)
                    .to_string(),
            ),
            "user.version" => text(VERSION.to_string()),
            "user.repo_counters" => Some(
                self.repo_counters()
                    .map(|c| {
                        c.iter()
                            .map(|(k, v)| format!("{k},{v}\n"))
                            .collect::<String>()
                            .into_bytes()
                    })
                    .map_err(|err| self.io_error("getxattr", &f.path, &err)),
            ),
            "user.catalog_counters" => Some(
                self.catalog_counters(f)
                    .map_err(|err| self.io_error("getxattr", &f.path, &err)),
            ),
            "user.hash" => text(e.hash?.to_string()),
            "user.chunks" if e.is_regular() => {
                if e.is_chunked() {
                    Some(
                        self.repo
                            .chunks(f)
                            .map(|c| c.len().to_string().into_bytes())
                            .map_err(|err| self.io_error("getxattr", &f.path, &err)),
                    )
                } else {
                    text("1".into())
                }
            }
            "user.chunk_list" if e.is_regular() => {
                let mut out = String::from("hash,offset,size\n");
                if e.is_chunked() {
                    match self.repo.chunks(f) {
                        Ok(chunks) => {
                            for c in chunks {
                                out.push_str(&format!("{},{},{}\n", c.hash, c.offset, c.size));
                            }
                        }
                        Err(err) => return Some(Err(self.io_error("getxattr", &f.path, &err))),
                    }
                } else if let Some(h) = e.hash {
                    out.push_str(&format!("{h},0,{}\n", e.size));
                }
                text(out)
            }
            "user.compression" if e.is_regular() => text(
                match e.compression() {
                    Compression::Zlib => "zlib",
                    Compression::None => "none",
                }
                .into(),
            ),
            "user.direct_io" if e.is_regular() => text(u8::from(e.is_direct_io()).to_string()),
            "user.external_file" if e.is_regular() => text(u8::from(e.is_external()).to_string()),
            "user.rawlink" | "xfsroot.rawlink" if e.is_symlink() => Some(Ok(e.symlink.clone())),
            _ => None,
        }
    }

    fn magic_listed(&self, f: &Found) -> bool {
        match self.opts.magic_xattrs {
            MagicXattrVisibility::Always => true,
            MagicXattrVisibility::Never => false,
            MagicXattrVisibility::RootOnly => f.path.is_empty(),
        }
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// The listing of directory `ino` for a read from `offset`: built anew from offset 0 (a new
    /// reader), else the one being read (rebuilt if it was dropped meanwhile).
    fn listing(&self, ino: INodeNo, offset: u64) -> Result<Arc<Vec<DirItem>>, Errno> {
        if offset > 0 {
            let dirs = self.shared.dirs.read().unwrap_or_else(|e| e.into_inner());
            if let Some(items) = dirs.get(&ino.0) {
                return Ok(Arc::clone(items));
            }
        }
        let items = Arc::new(self.build_listing(ino)?);
        if offset == 0 {
            self.ndiropen.fetch_add(1, Ordering::Relaxed);
        }
        let mut dirs = self.shared.dirs.write().unwrap_or_else(|e| e.into_inner());
        if dirs.len() >= MAX_OPEN_LISTINGS {
            // Readers that stopped half-way leave listings behind; they are rebuilt on need.
            dirs.clear();
        }
        dirs.insert(ino.0, Arc::clone(&items));
        Ok(items)
    }

    /// A read from `offset` past the last entry is a reader's end of the listing.
    fn listing_read(&self, ino: INodeNo, offset: u64, items: &[DirItem]) {
        if usize::try_from(offset).unwrap_or(usize::MAX) >= items.len() {
            self.shared
                .dirs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino.0);
        }
    }

    fn build_listing(&self, ino: INodeNo) -> Result<Vec<DirItem>, Errno> {
        let dir = self.found("opendir", ino)?;
        if !dir.entry.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dir_ino = self.ino_of(&dir)?;
        let dir_attr = self.attr(&dir, dir_ino);
        let mut items = vec![DirItem {
            ino: dir_ino,
            kind: FileType::Directory,
            name: b".".to_vec(),
            attr: dir_attr,
            found: Arc::clone(&dir),
        }];
        if !dir.path.is_empty() {
            let parent_path = parent_of(&dir.path);
            let parent_ino = match self.lookup_path("opendir", parent_path)? {
                Some(p) => self.ino_of(&p)?,
                None => ROOT_INO,
            };
            // The kernel takes no attributes (nor lookups) of the dot entries from readdirplus.
            items.push(DirItem {
                ino: parent_ino,
                kind: FileType::Directory,
                name: b"..".to_vec(),
                attr: dir_attr,
                found: Arc::clone(&dir),
            });
        }
        let children = self
            .repo
            .list(&dir.path)
            .map_err(|e| self.io_error("opendir", &dir.path, &e))?;
        // A listed directory's files are likely read next.
        self.prefetch.files(&children);
        for child in children {
            // The listing's entry is the one a lookup finds (a nested catalog's mountpoint is
            // the parent catalog's entry either way): no query per subdirectory.
            let ino = self.ino_of(&child)?;
            items.push(DirItem {
                ino,
                kind: file_type(child.entry.mode),
                attr: self.attr(&child, ino),
                name: child.entry.name.clone(),
                found: Arc::new(child),
            });
        }
        Ok(items)
    }

    fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
    ) -> Result<(u64, FopenFlags, Arc<OpenFile>), Errno> {
        if flags.0 & libc::O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        let f = self.found("open", ino)?;
        if f.entry.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !f.entry.is_regular() {
            return Err(Errno::EINVAL);
        }
        let file = self
            .repo
            .open(&f)
            .map_err(|e| self.repo_error("open", &f.path, &e))?;
        if f.entry.is_chunked() {
            // The reader fetches the first chunk itself; the following ones come in parallel.
            self.prefetch.chunks_of(&f, 1);
        }
        let fh = self.handle();
        let file = Arc::new(file);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::clone(&file));
        self.nopen.fetch_add(1, Ordering::Relaxed);
        // Content behind an inode never changes: keep the page cache across opens.
        let mut out = FopenFlags::FOPEN_KEEP_CACHE;
        if f.entry.is_direct_io() {
            out = FopenFlags::FOPEN_DIRECT_IO;
        }
        Ok((fh, out, file))
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let want = (size as u64).min(file.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let n = self
            .repo
            .read(&file, offset, &mut buf)
            .map_err(|e| self.repo_error("read", &file.path, &e))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn do_getxattr(&self, ino: INodeNo, name: &[u8]) -> Result<Vec<u8>, Errno> {
        let f = self.found("getxattr", ino)?;
        if let Some(v) = self.magic_value(name, &f) {
            return v;
        }
        let stored = self
            .repo
            .xattrs(&f)
            .map_err(|e| self.io_error("getxattr", &f.path, &e))?;
        stored
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(Errno::NO_XATTR)
    }

    fn do_listxattr(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        let f = self.found("listxattr", ino)?;
        let mut out = Vec::new();
        if self.magic_listed(&f) {
            for name in self.magic_names(&f) {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
        }
        let stored = self
            .repo
            .xattrs(&f)
            .map_err(|e| self.io_error("listxattr", &f.path, &e))?;
        for (k, _) in stored {
            out.extend_from_slice(&k);
            out.push(0);
        }
        Ok(out)
    }

    fn do_statfs(&self) -> Result<[u64; 5], Errno> {
        let Some(limit_mb) = self.opts.quota_limit_mb else {
            // No managed quota: the reference replies an all-zero statvfs.
            return Ok([0; 5]);
        };
        let limit = match self.repo.store.cache.quota() {
            Some(q) => q.usage().limit,
            None => limit_mb.saturating_mul(1024 * 1024),
        };
        let blocks = limit / 512;
        let counters = self
            .repo_counters()
            .map_err(|e| self.io_error("statfs", b"", &e))?;
        let total: i64 = ["regular", "symlink", "special", "dir"]
            .iter()
            .filter_map(|k| counters.get(*k))
            .sum();
        let mut loaded: i64 = 0;
        for a in self.repo.attached_catalogs() {
            if let Ok(stats) = a.catalog.statistics() {
                loaded += ["regular", "symlink", "special", "dir"]
                    .iter()
                    .filter_map(|k| stats.get(&format!("self_{k}")))
                    .sum::<i64>();
            }
        }
        let total = total.max(0) as u64;
        let free = total.saturating_sub(loaded.max(0) as u64);
        let used_blocks = match self.repo.store.cache.quota() {
            Some(q) => q.usage().used / 512,
            None => 0,
        };
        let avail = blocks.saturating_sub(used_blocks);
        Ok([blocks, avail, avail, total, free])
    }
}

impl Filesystem for CvmfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Listings carry the attributes: a walk over the tree needs no lookup per entry.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            log::debug!("kernel without {missing:?}");
        }
        if self.opts.passthrough {
            // Backing files live in the cache on an ordinary file system (stacking depth 0);
            // depth 1 keeps this mount usable as an overlay's lower layer.
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) if config.set_max_stack_depth(1).is_ok() => {
                    self.backing.enable();
                    log::info!("FUSE passthrough on: the kernel reads open files from the cache");
                }
                _ => log::debug!("kernel without FUSE passthrough; reads go through the daemon"),
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Unmounted: queued prefetches are dropped, running ones end before the cache closes.
        self.prefetch.stop();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = (|| -> Result<Option<(u64, Found)>, Errno> {
            let parent_path = self.path_of(parent)?;
            let name = name.as_bytes();
            let path = match name {
                b"." => parent_path,
                b".." => parent_of(&parent_path).to_vec(),
                _ => {
                    let mut p = parent_path;
                    p.push(b'/');
                    p.extend_from_slice(name);
                    p
                }
            };
            let Some(f) = self.lookup_path("lookup", &path)? else {
                return Ok(None);
            };
            let ino = self.ino_of(&f)?;
            Ok(Some((ino, f)))
        })();
        match result {
            Ok(Some((ino, f))) => {
                let f = Arc::new(f);
                self.remember(ino, &f);
                reply.entry(&self.ttl(), &self.attr(&f, ino), Generation(0));
            }
            // Negative entry: inode 0 with the kcache timeout lets the kernel cache the miss
            // (remembered when a new revision may make the name appear).
            Ok(None) => {
                let ttl = if self.repo.is_pinned() || self.shared.remember_negative(parent.0, name)
                {
                    self.ttl()
                } else {
                    Duration::ZERO
                };
                reply.entry(&ttl, &negative_attr(), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 == ROOT_INO {
            return;
        }
        let mut nodes = self.shared.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(nlookup);
            if node.lookups == 0 {
                nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .found("getattr", ino)
            .and_then(|f| Ok((self.ino_of(&f)?, f)))
        {
            Ok((i, f)) => reply.attr(&self.ttl(), &self.attr(&f, i)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.found("readlink", ino) {
            Ok(f) if f.entry.is_symlink() => {
                reply.data(&self.repo.expand_symlink(&f.entry.symlink))
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok((fh, out, file)) => {
                // Direct-I/O files stay with the daemon, as the catalog asks.
                let backing = match file.whole_object() {
                    Some(object) if !out.contains(FopenFlags::FOPEN_DIRECT_IO) => self
                        .backing
                        .attach(ino.0, fh, || reply.open_backing(object)),
                    _ => None,
                };
                match backing {
                    // The kernel accepts no page-cache flags on passthrough files (the page
                    // cache is the backing file's).
                    Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
                    None => reply.opened(FileHandle(fh), out),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        self.backing.release(ino.0, fh.0);
        reply.ok();
    }

    // What a normal reader asks besides lookups and reads is answered here without a log line
    // (the library's defaults log a multi-line warning per request).

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written: every close succeeds.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks the mode bits (and refuses writes to the read-only mount) itself;
        // ENOSYS tells it not to ask again.
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No file here is a terminal or a device (Python's `open()` asks `TCGETS`).
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // Regular files are always ready; ENOSYS makes the kernel say so from now on.
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // SEEK_DATA/SEEK_HOLE: files have no holes; the kernel's generic answer is right.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel opens directories without asking from now on (see `dirs`).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.listing(ino, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, item) in items.iter().enumerate().skip(start) {
            if reply.add(
                INodeNo(item.ino),
                i as u64 + 1,
                item.kind,
                OsStr::from_bytes(&item.name),
            ) {
                break;
            }
        }
        self.listing_read(ino, offset, &items);
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.listing(ino, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, item) in items.iter().enumerate().skip(start) {
            let full = reply.add(
                INodeNo(item.ino),
                i as u64 + 1,
                OsStr::from_bytes(&item.name),
                &self.ttl(),
                &item.attr,
                Generation(0),
            );
            if full {
                break;
            }
            // Each entry passed on counts as a lookup (the kernel forgets it later), except
            // the dot entries.
            if item.name != b"." && item.name != b".." {
                self.remember(item.ino, &item.found);
            }
        }
        self.listing_read(ino, offset, &items);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok([blocks, bfree, bavail, files, ffree]) => {
                reply.statfs(blocks, bfree, bavail, files, ffree, 512, 255, 512)
            }
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.do_getxattr(ino, name.as_bytes()) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.do_listxattr(ino) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }
}

/// `size == 0` asks for the length; a too small buffer is ERANGE.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        match u32::try_from(value.len()) {
            Ok(n) => reply.size(n),
            Err(_) => reply.error(Errno::E2BIG),
        }
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// The parent of a repository path (`""` for top-level entries and the root).
fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.get(..i).unwrap_or_default(),
        None => b"",
    }
}

fn display_path(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: i64, nsecs: u32) -> SystemTime {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsecs))))
        .unwrap_or(UNIX_EPOCH)
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent_of(b""), b"");
        assert_eq!(parent_of(b"/a"), b"");
        assert_eq!(parent_of(b"/a/b"), b"/a");
    }

    #[test]
    fn times() {
        assert_eq!(
            system_time(5, 7),
            UNIX_EPOCH + Duration::from_secs(5) + Duration::from_nanos(7)
        );
        assert_eq!(system_time(-5, 0), UNIX_EPOCH - Duration::from_secs(5));
    }

    #[test]
    fn types() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(file_type(libc::S_IFLNK | 0o777), FileType::Symlink);
        assert_eq!(file_type(libc::S_IFREG | 0o644), FileType::RegularFile);
        assert_eq!(file_type(libc::S_IFIFO), FileType::NamedPipe);
    }
}
