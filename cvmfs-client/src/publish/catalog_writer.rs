//! Writes file catalogs: SQLite databases with exactly the real server's schema 2.5
//! revision 7 (tables, column order, index, page size), `statistics` counters and
//! `properties` (spec §5). The reading side is `crate::catalog`.

use std::path::Path;

use rusqlite::{params, Connection};

use crate::catalog::Chunk;
use crate::hash::{md5_path, ContentHash};

/// The schema the real server writes (`CatalogDatabase::kLatestSchema`, revision 7).
pub const SCHEMA: &str = "2.5";
pub const SCHEMA_REVISION: u32 = 7;
/// Page size of the real server's catalogs.
const PAGE_SIZE: u32 = 1024;
/// Root catalog TTL property (seconds), the real server's default.
pub const DEFAULT_TTL: u64 = 240;

const CREATE: &str = "\
CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, \
hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, \
flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,  \
CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);
CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  \
hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  \
FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2));
CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, \
CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, \
CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));
CREATE TABLE statistics (counter TEXT, value INTEGER, \
CONSTRAINT pk_statistics PRIMARY KEY (counter));
CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
";

/// Errors of catalog writing.
#[derive(Debug, thiserror::Error)]
#[error("writing catalog {catalog}: SQLite: {cause}")]
pub struct CatalogWriteError {
    pub catalog: String,
    pub cause: rusqlite::Error,
}

/// The `statistics` counters of one catalog: its own entries (`self_*`) and those of all
/// catalogs below it (`subtree_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub regular: i64,
    pub symlink: i64,
    pub special: i64,
    pub dir: i64,
    pub nested: i64,
    pub chunked: i64,
    pub chunked_size: i64,
    pub chunks: i64,
    pub file_size: i64,
    pub xattr: i64,
    pub external: i64,
    pub external_file_size: i64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.regular += o.regular;
        self.symlink += o.symlink;
        self.special += o.special;
        self.dir += o.dir;
        self.nested += o.nested;
        self.chunked += o.chunked;
        self.chunked_size += o.chunked_size;
        self.chunks += o.chunks;
        self.file_size += o.file_size;
        self.xattr += o.xattr;
        self.external += o.external;
        self.external_file_size += o.external_file_size;
    }

    /// (name, value) in the real server's (alphabetical) order.
    fn fields(&self) -> [(&'static str, i64); 12] {
        [
            ("chunked", self.chunked),
            ("chunked_size", self.chunked_size),
            ("chunks", self.chunks),
            ("dir", self.dir),
            ("external", self.external),
            ("external_file_size", self.external_file_size),
            ("file_size", self.file_size),
            ("nested", self.nested),
            ("regular", self.regular),
            ("special", self.special),
            ("symlink", self.symlink),
            ("xattr", self.xattr),
        ]
    }
}

/// Self and subtree counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogCounters {
    pub own: Counters,
    pub subtree: Counters,
}

/// One row of the `catalog` table.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// Repository path of the entry (hashed into md5path).
    pub path: &'a [u8],
    /// `None` for the root entry of the root catalog (parent hash 0, 0).
    pub parent_path: Option<&'a [u8]>,
    pub name: &'a [u8],
    pub hardlink_group: u32,
    pub linkcount: u32,
    pub hash: Option<ContentHash>,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: Option<u32>,
    pub flags: i64,
    pub symlink: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub xattr: Option<Vec<u8>>,
}

/// Properties written when a catalog is finished.
#[derive(Debug, Clone)]
pub struct CatalogProperties {
    /// `root_prefix`: the mountpoint of a nested catalog; `None` for the root catalog.
    pub root_prefix: Option<Vec<u8>>,
    /// `TTL`: root catalog only.
    pub ttl: Option<u64>,
    pub last_modified: u64,
    pub revision: u64,
    /// Hash of this catalog's previous version (the real server writes the null hash for a
    /// new catalog).
    pub previous_revision: Option<ContentHash>,
}

/// A catalog being written.
pub struct CatalogWriter {
    conn: Connection,
    name: String,
    counters: CatalogCounters,
    next_hardlink_group: u32,
}

impl CatalogWriter {
    /// Creates an empty catalog database at `path` (which must not exist).
    pub fn create(path: &Path, name: &str) -> Result<CatalogWriter, CatalogWriteError> {
        let err = |source| CatalogWriteError {
            catalog: name.to_string(),
            cause: source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = OFF; \
             PRAGMA synchronous = OFF; BEGIN; {CREATE}"
        ))
        .map_err(err)?;
        Ok(CatalogWriter {
            conn,
            name: name.to_string(),
            counters: CatalogCounters::default(),
            next_hardlink_group: 1,
        })
    }

    fn err(&self, source: rusqlite::Error) -> CatalogWriteError {
        CatalogWriteError {
            catalog: self.name.clone(),
            cause: source,
        }
    }

    /// A new hard-link group number, unique in this catalog.
    pub fn new_hardlink_group(&mut self) -> u32 {
        let g = self.next_hardlink_group;
        self.next_hardlink_group += 1;
        g
    }

    /// Adds an entry (and its chunks), counting it in `self_*`.
    pub fn add(&mut self, row: &Row, chunks: &[Chunk]) -> Result<(), CatalogWriteError> {
        let (m1, m2) = md5_path(row.path);
        let (p1, p2) = row.parent_path.map(md5_path).unwrap_or((0, 0));
        let hardlinks = (u64::from(row.hardlink_group) << 32) | u64::from(row.linkcount);
        let r = self
            .conn
            .prepare_cached(
                "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, \
                 hash, size, mode, mtime, flags, name, symlink, uid, gid, xattr, mtimens) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, CAST(?11 AS TEXT), \
                 CAST(?12 AS TEXT), ?13, ?14, ?15, ?16)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    m1,
                    m2,
                    p1,
                    p2,
                    hardlinks as i64,
                    row.hash.map(|h| h.digest.to_vec()),
                    row.size as i64,
                    row.mode,
                    row.mtime,
                    row.flags,
                    // TEXT columns hold the raw name bytes, as the real server binds them.
                    row.name,
                    row.symlink,
                    row.uid,
                    row.gid,
                    row.xattr,
                    row.mtime_ns,
                ])
            });
        r.map_err(|e| self.err(e))?;
        for c in chunks {
            self.conn
                .prepare_cached(
                    "INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        m1,
                        m2,
                        c.offset as i64,
                        c.size as i64,
                        c.hash.digest.to_vec()
                    ])
                })
                .map_err(|e| self.err(e))?;
        }
        let own = &mut self.counters.own;
        match row.mode & libc::S_IFMT {
            libc::S_IFREG => {
                own.regular += 1;
                own.file_size += row.size as i64;
                if !chunks.is_empty() {
                    own.chunked += 1;
                    own.chunked_size += row.size as i64;
                    own.chunks += chunks.len() as i64;
                }
            }
            libc::S_IFLNK => own.symlink += 1,
            libc::S_IFDIR => own.dir += 1,
            _ => own.special += 1,
        }
        if row.xattr.is_some() {
            own.xattr += 1;
        }
        Ok(())
    }

    /// Registers a nested catalog mounted at `path` (its mountpoint entry is added with
    /// [`CatalogWriter::add`]); its counters go into `subtree_*`.
    pub fn add_nested(
        &mut self,
        path: &[u8],
        hash: &ContentHash,
        size: u64,
        counters: &CatalogCounters,
    ) -> Result<(), CatalogWriteError> {
        self.conn
            .execute(
                "INSERT INTO nested_catalogs (path, sha1, size) VALUES (CAST(?1 AS TEXT), ?2, ?3)",
                params![path, hash.to_string(), size as i64],
            )
            .map_err(|e| self.err(e))?;
        self.counters.own.nested += 1;
        self.counters.subtree.add(&counters.own);
        self.counters.subtree.add(&counters.subtree);
        Ok(())
    }

    /// Writes statistics and properties and closes the database.
    pub fn finish(self, props: &CatalogProperties) -> Result<CatalogCounters, CatalogWriteError> {
        let mut kv: Vec<(&str, String)> = vec![
            ("schema", SCHEMA.to_string()),
            ("schema_revision", SCHEMA_REVISION.to_string()),
        ];
        if let Some(prefix) = &props.root_prefix {
            kv.push(("root_prefix", String::from_utf8_lossy(prefix).into_owned()));
        }
        if let Some(ttl) = props.ttl {
            kv.push(("TTL", ttl.to_string()));
        }
        kv.push(("last_modified", props.last_modified.to_string()));
        kv.push(("revision", props.revision.to_string()));
        kv.push((
            "previous_revision",
            props
                .previous_revision
                .map(|h| h.to_string())
                .unwrap_or_else(|| "0".repeat(40)),
        ));
        let write = || -> rusqlite::Result<()> {
            for (scope, c) in [
                ("self_", &self.counters.own),
                ("subtree_", &self.counters.subtree),
            ] {
                for (name, value) in c.fields() {
                    self.conn.execute(
                        "INSERT INTO statistics (counter, value) VALUES (?1, ?2)",
                        params![format!("{scope}{name}"), value],
                    )?;
                }
            }
            for (k, v) in &kv {
                self.conn.execute(
                    "INSERT INTO properties (key, value) VALUES (?1, ?2)",
                    params![k, v],
                )?;
            }
            self.conn
                .execute_batch("COMMIT; PRAGMA journal_mode = DELETE;")
        };
        write().map_err(|e| self.err(e))?;
        let counters = self.counters;
        self.conn.close().map_err(|(_, e)| CatalogWriteError {
            catalog: self.name.clone(),
            cause: e,
        })?;
        Ok(counters)
    }
}

/// True if two catalog files hold the same entries, chunks, nested catalogs and counters
/// (properties such as revision and time stamps are not compared).
pub fn same_content(a: &Path, b: &Path) -> Result<bool, CatalogWriteError> {
    let err = |source| CatalogWriteError {
        catalog: a.display().to_string(),
        cause: source,
    };
    let conn =
        Connection::open_with_flags(a, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    conn.execute("ATTACH DATABASE ?1 AS other", params![b.to_string_lossy()])
        .map_err(err)?;
    for table in [
        "catalog",
        "chunks",
        "nested_catalogs",
        "bind_mountpoints",
        "statistics",
    ] {
        let differing: i64 = conn
            .query_row(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM (SELECT * FROM main.{table} EXCEPT SELECT * FROM other.{table})) \
                          + (SELECT COUNT(*) FROM (SELECT * FROM other.{table} EXCEPT SELECT * FROM main.{table}))"
                ),
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if differing != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
