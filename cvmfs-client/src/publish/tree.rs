//! Builds the catalog tree of one revision from the scanned source tree: file data into the
//! object store (in parallel), then catalogs bottom-up, so that each parent records the hash
//! of its nested catalogs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::catalog_writer::{CatalogCounters, CatalogProperties, CatalogWriter, Row};
use super::objects::{FileContent, ObjectStore};
use super::scan::{Kind, Node};
use super::{PublishError, PublishOptions};
use crate::catalog::{flags, is_path_prefix, serialize_xattr_blob, Catalog, Compression};
use crate::hash::{Algorithm, ContentHash, Suffix};
use path_error::io_err;

/// A catalog of the previous revision.
struct PreviousCatalog {
    hash: ContentHash,
    revision: u64,
    /// Its decompressed database in the work directory.
    file: PathBuf,
    catalog: Catalog,
}

/// A finished catalog.
pub struct Built {
    pub hash: ContentHash,
    /// Uncompressed size.
    pub size: u64,
    pub counters: CatalogCounters,
}

/// Source file identity: hard links share content.
type FileId = (u64, u64);

pub struct TreeBuilder<'a> {
    opts: &'a PublishOptions,
    store: &'a ObjectStore,
    work: &'a Path,
    now: u64,
    revision: u64,
    previous: HashMap<Vec<u8>, PreviousCatalog>,
    contents: HashMap<FileId, FileContent>,
    next_file: u64,
    pub catalogs_written: u64,
    pub catalogs_reused: u64,
    pub regular_files: u64,
    pub input_bytes: u64,
    /// Files whose content equals what the previous revision stored at the same path.
    pub files_unchanged: u64,
}

impl<'a> TreeBuilder<'a> {
    pub fn new(
        opts: &'a PublishOptions,
        store: &'a ObjectStore,
        work: &'a Path,
        now: u64,
        revision: u64,
    ) -> Self {
        TreeBuilder {
            opts,
            store,
            work,
            now,
            revision,
            previous: HashMap::new(),
            contents: HashMap::new(),
            next_file: 0,
            catalogs_written: 0,
            catalogs_reused: 0,
            regular_files: 0,
            input_bytes: 0,
            files_unchanged: 0,
        }
    }

    fn work_file(&mut self, what: &str) -> PathBuf {
        self.next_file += 1;
        self.work.join(format!("{what}.{}", self.next_file))
    }

    /// Reads the catalog tree of the previous revision (to keep unchanged nested catalogs).
    pub fn load_previous(&mut self, root: &ContentHash) -> Result<(), PublishError> {
        let mut pending = vec![(Vec::new(), *root)];
        while let Some((mountpoint, hash)) = pending.pop() {
            let file = self.work_file("previous");
            let bytes = self.store.get(&hash, Suffix::Catalog)?;
            std::fs::write(&file, bytes).map_err(io_err("", &file))?;
            let cat = Catalog::open(&file, hash, &mountpoint)?;
            for n in &cat.nested {
                pending.push((n.path.clone(), n.hash));
            }
            self.previous.insert(
                mountpoint,
                PreviousCatalog {
                    hash,
                    revision: cat.revision,
                    file,
                    catalog: cat,
                },
            );
        }
        Ok(())
    }

    /// What the previous revision stored for the regular file at `path`, if it is
    /// comparable (same compression, SHA-1).
    fn previous_content(&self, path: &[u8]) -> Result<Option<FileContent>, PublishError> {
        let Some(prev) = self
            .previous
            .iter()
            .filter(|(m, _)| is_path_prefix(m, path))
            .max_by_key(|(m, _)| m.len())
            .map(|(_, p)| p)
        else {
            return Ok(None);
        };
        let Some(e) = prev.catalog.lookup(path)? else {
            return Ok(None);
        };
        if !e.is_regular()
            || e.compression() != self.opts.compression
            || e.hash_algorithm().ok() != Some(Algorithm::Sha1)
        {
            return Ok(None);
        }
        Ok(if e.is_chunked() {
            let chunks = prev.catalog.chunks(path, Algorithm::Sha1)?;
            (!chunks.is_empty()).then_some(FileContent::Chunked { chunks })
        } else {
            e.hash.map(|hash| FileContent::Whole { hash, size: e.size })
        })
    }

    /// Stores the data of every regular file (each hard-linked inode once), in parallel. A
    /// file whose bytes equal what the previous revision stored at the same path keeps those
    /// objects (compared after inflating them, which is much cheaper than deflating).
    pub fn ingest_files(&mut self, root: &Node) -> Result<(), PublishError> {
        let mut files: Vec<(FileId, PathBuf, Option<FileContent>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            match &n.kind {
                Kind::Directory { children, .. } => stack.extend(children.iter().rev()),
                Kind::Regular => {
                    self.regular_files += 1;
                    let id = (n.stat.dev, n.stat.ino);
                    if seen.insert(id) {
                        let previous = self.previous_content(&n.path)?;
                        files.push((id, n.source_path(&self.opts.source), previous));
                    }
                }
                _ => {}
            }
        }
        let next = AtomicUsize::new(0);
        let unchanged = AtomicUsize::new(0);
        let results: Mutex<Vec<(FileId, FileContent)>> =
            Mutex::new(Vec::with_capacity(files.len()));
        let failure: Mutex<Option<PublishError>> = Mutex::new(None);
        let threads = self.opts.threads.clamp(1, 64);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, path, previous)) = files.get(i) else {
                        return;
                    };
                    if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    let (sizes, compression) = (self.opts.chunk_sizes, self.opts.compression);
                    let reused = match previous {
                        Some(p) => self
                            .store
                            .holds_file(path, p, sizes, compression)
                            .map(|same| same.then(|| p.clone())),
                        None => Ok(None),
                    };
                    let stored = match reused {
                        Ok(Some(c)) => {
                            unchanged.fetch_add(1, Ordering::Relaxed);
                            Ok(c)
                        }
                        Ok(None) => self.store.put_file(path, sizes, compression),
                        Err(e) => Err(e),
                    };
                    match stored {
                        Ok(c) => results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((*id, c)),
                        Err(e) => {
                            failure
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e.into());
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        self.files_unchanged = unchanged.into_inner() as u64;
        for (id, content) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            self.input_bytes += content.size();
            self.contents.insert(id, content);
        }
        Ok(())
    }

    /// Builds all catalogs; returns the root catalog.
    pub fn build_root(
        &mut self,
        root: &Node,
        previous_root: Option<ContentHash>,
    ) -> Result<Built, PublishError> {
        let file = self.work_file("catalog");
        let mut w = CatalogWriter::create(&file, "/")?;
        let row = self.row(root, None, flags::DIR, &Default::default());
        w.add(&row, &[])?;
        self.add_children(&mut w, root)?;
        let counters = w.finish(&CatalogProperties {
            root_prefix: None,
            ttl: Some(self.opts.ttl),
            last_modified: self.now,
            revision: self.revision,
            previous_revision: previous_root,
        })?;
        self.store_catalog(&file, counters)
    }

    fn build_nested(&mut self, root: &Node) -> Result<Built, PublishError> {
        let file = self.work_file("catalog");
        let mut w = CatalogWriter::create(&file, &String::from_utf8_lossy(&root.path))?;
        let parent = parent_path(&root.path).to_vec();
        let row = self.row(
            root,
            Some(&parent),
            flags::DIR | flags::DIR_NESTED_ROOT,
            &Default::default(),
        );
        w.add(&row, &[])?;
        self.add_children(&mut w, root)?;
        let previous = self
            .previous
            .get(&root.path)
            .map(|p| (p.hash, p.revision, p.file.clone()));
        let counters = w.finish(&CatalogProperties {
            root_prefix: Some(root.path.clone()),
            ttl: None,
            last_modified: self.now,
            revision: previous.as_ref().map(|p| p.1 + 1).unwrap_or(1),
            previous_revision: previous.as_ref().map(|p| p.0),
        })?;
        if let Some((hash, _, old_file)) = previous {
            if super::catalog_writer::same_content(&file, &old_file)? {
                // Unchanged: the previous catalog object stays (as the real server leaves
                // catalogs without changes alone).
                let size = std::fs::metadata(&old_file)
                    .map_err(io_err("", &old_file))?
                    .len();
                let _ = std::fs::remove_file(&file);
                self.catalogs_reused += 1;
                return Ok(Built {
                    hash,
                    size,
                    counters,
                });
            }
        }
        self.store_catalog(&file, counters)
    }

    fn store_catalog(
        &mut self,
        file: &Path,
        counters: CatalogCounters,
    ) -> Result<Built, PublishError> {
        let bytes = std::fs::read(file).map_err(io_err("", file))?;
        let hash = self.store.put(&bytes, Suffix::Catalog, Compression::Zlib)?;
        let _ = std::fs::remove_file(file);
        self.catalogs_written += 1;
        Ok(Built {
            hash,
            size: bytes.len() as u64,
            counters,
        })
    }

    /// Adds the entries below `dir` (recursing into subdirectories of the same catalog and
    /// building nested catalogs first).
    fn add_children(&mut self, w: &mut CatalogWriter, dir: &Node) -> Result<(), PublishError> {
        // Hard links: only links within one directory form a group (like the real server);
        // a file linked from elsewhere is published as an independent copy.
        let mut links: HashMap<FileId, u32> = HashMap::new();
        for c in dir.children() {
            if matches!(c.kind, Kind::Regular) && c.stat.nlink > 1 {
                *links.entry((c.stat.dev, c.stat.ino)).or_default() += 1;
            }
        }
        let mut groups: HashMap<FileId, (u32, u32)> = HashMap::new();
        for c in dir.children() {
            let id = (c.stat.dev, c.stat.ino);
            if let Some(&count) = links.get(&id) {
                if count > 1 && !groups.contains_key(&id) {
                    groups.insert(id, (w.new_hardlink_group(), count));
                }
            }
        }
        for c in dir.children() {
            match &c.kind {
                Kind::Directory { .. } if c.is_nested_catalog() => {
                    let built = self.build_nested(c)?;
                    let row = self.row(
                        c,
                        Some(&dir.path),
                        flags::DIR | flags::DIR_NESTED_MOUNTPOINT,
                        &groups,
                    );
                    w.add(&row, &[])?;
                    w.add_nested(&c.path, &built.hash, built.size, &built.counters)?;
                }
                Kind::Directory { .. } => {
                    let row = self.row(c, Some(&dir.path), flags::DIR, &groups);
                    w.add(&row, &[])?;
                    self.add_children(w, c)?;
                }
                Kind::Regular => {
                    let content = self
                        .contents
                        .get(&(c.stat.dev, c.stat.ino))
                        .ok_or_else(|| PublishError::NotStored(c.source_path(&self.opts.source)))?;
                    let chunks = match content {
                        FileContent::Chunked { chunks } => chunks.as_slice(),
                        FileContent::Whole { .. } => &[],
                    };
                    let mut f = flags::FILE;
                    if !chunks.is_empty() {
                        f |= flags::FILE_CHUNK;
                    }
                    if self.opts.compression == Compression::None {
                        f |= 1 << 11;
                    }
                    let row = self.row(c, Some(&dir.path), f, &groups);
                    w.add(&row, chunks)?;
                }
                Kind::Symlink { .. } => {
                    let row = self.row(c, Some(&dir.path), flags::FILE | flags::LINK, &groups);
                    w.add(&row, &[])?;
                }
                Kind::Special => {
                    let row = self.row(
                        c,
                        Some(&dir.path),
                        flags::FILE | flags::FILE_SPECIAL,
                        &groups,
                    );
                    w.add(&row, &[])?;
                }
            }
        }
        Ok(())
    }

    /// The catalog row of `n`.
    fn row<'n>(
        &self,
        n: &'n Node,
        parent: Option<&'n [u8]>,
        flags: i64,
        groups: &HashMap<FileId, (u32, u32)>,
    ) -> Row<'n> {
        let st = &n.stat;
        let (mut hash, mut size, mut linkcount, mut group) = (None, st.size, 1u32, 0u32);
        let mut symlink: &[u8] = b"";
        match &n.kind {
            Kind::Directory { children, .. } => {
                linkcount = 2 + children.iter().filter(|c| c.is_dir()).count() as u32;
            }
            Kind::Regular => {
                match self.contents.get(&(st.dev, st.ino)) {
                    Some(FileContent::Whole { hash: h, size: s }) => {
                        hash = Some(*h);
                        size = *s;
                    }
                    Some(c @ FileContent::Chunked { .. }) => size = c.size(),
                    None => {}
                }
                if let Some(&(g, count)) = groups.get(&(st.dev, st.ino)) {
                    group = g;
                    linkcount = count;
                }
            }
            Kind::Symlink { target } => {
                symlink = target;
                size = target.len() as u64;
            }
            Kind::Special => {
                let t = st.mode & libc::S_IFMT;
                size = if t == libc::S_IFCHR || t == libc::S_IFBLK {
                    st.rdev
                } else {
                    0
                };
            }
        }
        Row {
            path: &n.path,
            parent_path: parent,
            name: &n.name,
            hardlink_group: group,
            linkcount,
            hash,
            size,
            mode: st.mode,
            mtime: st.mtime,
            mtime_ns: self.opts.mtime_ns.then_some(st.mtime_ns),
            flags,
            symlink,
            uid: st.uid,
            gid: st.gid,
            xattr: serialize_xattr_blob(&n.xattrs),
        }
    }
}

/// `/a/b` → `/a`; `/a` → "".
fn parent_path(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}
