//! File catalogs: SQLite databases that describe one subtree of the repository (spec §5).
//!
//! A catalog is opened read-only and immutable from the (decompressed, verified) file in the
//! cache. Lookups go by MD5 path hash; paths are bytes, the repository root is the empty path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::hash::{md5_path, Algorithm, ContentHash, HashError};

/// Catalog `flags` bits (spec §5.5).
pub mod flags {
    pub const DIR: i64 = 1;
    pub const DIR_NESTED_MOUNTPOINT: i64 = 2;
    pub const FILE: i64 = 4;
    pub const LINK: i64 = 8;
    pub const FILE_SPECIAL: i64 = 16;
    pub const DIR_NESTED_ROOT: i64 = 32;
    pub const FILE_CHUNK: i64 = 64;
    pub const FILE_EXTERNAL: i64 = 128;
    pub const COMPRESSION_MASK: i64 = 0x3800;
    pub const DIR_BIND_MOUNTPOINT: i64 = 0x4000;
    pub const HIDDEN: i64 = 0x8000;
    pub const DIRECT_IO: i64 = 0x10000;
}

/// Errors of catalog access.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {catalog}: SQLite: {cause}")]
    Sql {
        catalog: String,
        cause: rusqlite::Error,
    },
    #[error("catalog {catalog}: unsupported schema {schema} (this client reads 2.4 and 2.5)")]
    UnsupportedSchema { catalog: String, schema: f64 },
    #[error("catalog {catalog}: corrupt entry: {reason}")]
    Corrupt { catalog: String, reason: String },
}

/// How an object is compressed (flags bits 11–13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    None,
}

/// One catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub rowid: i64,
    pub md5path: (i64, i64),
    pub parent: (i64, i64),
    pub name: Vec<u8>,
    /// Raw `hardlinks` column: `(group << 32) | linkcount`.
    pub hardlinks: u64,
    pub hash: Option<ContentHash>,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub flags: i64,
    /// Raw symlink target ("" if not a link).
    pub symlink: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub has_xattrs: bool,
}

impl DirEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_chunked(&self) -> bool {
        self.flags & flags::FILE_CHUNK != 0
    }
    pub fn is_nested_mountpoint(&self) -> bool {
        self.flags & flags::DIR_NESTED_MOUNTPOINT != 0
    }
    pub fn is_nested_root(&self) -> bool {
        self.flags & flags::DIR_NESTED_ROOT != 0
    }
    pub fn is_hidden(&self) -> bool {
        self.flags & flags::HIDDEN != 0
    }
    pub fn is_external(&self) -> bool {
        self.flags & flags::FILE_EXTERNAL != 0
    }
    pub fn is_direct_io(&self) -> bool {
        self.flags & flags::DIRECT_IO != 0
    }
    /// `st_nlink`.
    pub fn linkcount(&self) -> u32 {
        (self.hardlinks & 0xffff_ffff) as u32
    }
    /// Hard-link group (0 = none).
    pub fn hardlink_group(&self) -> u32 {
        (self.hardlinks >> 32) as u32
    }
    pub fn compression(&self) -> Compression {
        if (self.flags & flags::COMPRESSION_MASK) >> 11 == 1 {
            Compression::None
        } else {
            Compression::Zlib
        }
    }
    /// Hash algorithm of content and chunks.
    pub fn hash_algorithm(&self) -> Result<Algorithm, HashError> {
        Algorithm::from_catalog_flags(self.flags)
    }
}

/// Extended attributes as (name, value) pairs, in stored order.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One chunk of a chunked file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub size: u64,
    pub hash: ContentHash,
}

/// A nested catalog reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedRef {
    /// Absolute mountpoint path, e.g. `/nested`.
    pub path: Vec<u8>,
    pub hash: ContentHash,
    pub size: u64,
}

/// An open catalog.
pub struct Catalog {
    conn: Mutex<Connection>,
    pub hash: ContentHash,
    /// Where this catalog is mounted: "" for the root catalog.
    pub mountpoint: Vec<u8>,
    pub schema: f64,
    pub schema_revision: i64,
    pub revision: u64,
    pub last_modified: u64,
    pub ttl: u64,
    /// `root_prefix` property: the path hashed for lookups (== mountpoint for ordinary catalogs).
    pub root_prefix: Vec<u8>,
    pub nested: Vec<NestedRef>,
    pub max_rowid: i64,
    select: &'static str,
    hardlink_leaders: Mutex<Option<std::collections::HashMap<u32, i64>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Catalog({} at {:?}, rev {})",
            self.hash,
            String::from_utf8_lossy(&self.mountpoint),
            self.revision
        )
    }
}

const COLS_R0: &str =
    "SELECT hash, hardlinks, size, mode, mtime, flags, name, symlink, md5path_1, \
     md5path_2, parent_1, parent_2, rowid, uid, gid, 0, NULL FROM catalog ";
const COLS_R2: &str =
    "SELECT hash, hardlinks, size, mode, mtime, flags, name, symlink, md5path_1, \
     md5path_2, parent_1, parent_2, rowid, uid, gid, xattr IS NOT NULL, NULL FROM catalog ";
const COLS_R7: &str =
    "SELECT hash, hardlinks, size, mode, mtime, flags, name, symlink, md5path_1, \
     md5path_2, parent_1, parent_2, rowid, uid, gid, xattr IS NOT NULL, mtimens FROM catalog ";

impl Catalog {
    /// Opens the catalog file `path` (decompressed) that was published as `hash` and is mounted
    /// at `mountpoint`.
    pub fn open(
        path: &Path,
        hash: ContentHash,
        mountpoint: &[u8],
    ) -> Result<Catalog, CatalogError> {
        let name = hash.to_string();
        let sql = |source| CatalogError::Sql {
            catalog: name.clone(),
            cause: source,
        };
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sql)?;
        let props: BTreeMap<String, String> = {
            let mut st = conn
                .prepare("SELECT key, value FROM properties")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, value_as_string(r, 1)?)))
                .map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)?
        };
        let prop_num = |k: &str| props.get(k).and_then(|v| v.trim().parse::<f64>().ok());
        let schema = prop_num("schema").unwrap_or(1.0);
        let schema_revision = prop_num("schema_revision").unwrap_or(0.0) as i64;
        if !(schema > 2.4 - 0.0005 && schema < 2.5 + 0.0005) {
            return Err(CatalogError::UnsupportedSchema {
                catalog: name,
                schema,
            });
        }
        let select = if schema < 2.5 - 0.0005 || schema_revision < 2 {
            COLS_R0
        } else if schema_revision < 7 {
            COLS_R2
        } else {
            COLS_R7
        };
        let nested = {
            let q = if schema_revision >= 4 {
                "SELECT path, sha1, size FROM nested_catalogs \
                 UNION ALL SELECT path, sha1, size FROM bind_mountpoints"
            } else if schema_revision >= 1 {
                "SELECT path, sha1, size FROM nested_catalogs"
            } else {
                "SELECT path, sha1, 0 FROM nested_catalogs"
            };
            let mut st = conn.prepare(q).map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get_ref(0)?.as_bytes()?.to_vec(),
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    ))
                })
                .map_err(sql)?;
            let mut v = Vec::new();
            for row in rows {
                let (path, text, size) = row.map_err(sql)?;
                let hash = text.parse().map_err(|e: HashError| CatalogError::Corrupt {
                    catalog: name.clone(),
                    reason: format!("nested catalog {}: {e}", String::from_utf8_lossy(&path)),
                })?;
                v.push(NestedRef {
                    path,
                    hash,
                    size: size.max(0) as u64,
                });
            }
            v
        };
        let max_rowid: i64 = conn
            .query_row("SELECT IFNULL(MAX(rowid), 0) FROM catalog", [], |r| {
                r.get(0)
            })
            .map_err(sql)?;
        let root_prefix = props
            .get("root_prefix")
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_else(|| mountpoint.to_vec());
        Ok(Catalog {
            conn: Mutex::new(conn),
            hash,
            mountpoint: mountpoint.to_vec(),
            schema,
            schema_revision,
            revision: prop_num("revision").unwrap_or(0.0) as u64,
            last_modified: prop_num("last_modified").unwrap_or(0.0) as u64,
            ttl: prop_num("TTL").map(|t| t as u64).unwrap_or(240),
            root_prefix,
            nested,
            max_rowid,
            select,
            hardlink_leaders: Mutex::new(None),
        })
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sql {
            catalog: self.hash.to_string(),
            cause: source,
        }
    }

    /// Runs `query` on the cached prepared statement for `sql`, under the connection's lock;
    /// SQLite errors name this catalog. Every query of an open catalog goes through here.
    fn with_statement<T>(
        &self,
        sql: &str,
        query: impl FnOnce(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        query(&mut st).map_err(|e| self.err(e))
    }

    /// The path hashed for `path` inside this catalog (bind mountpoints map the prefix).
    fn hashed_path(&self, path: &[u8]) -> Vec<u8> {
        if self.root_prefix == self.mountpoint {
            return path.to_vec();
        }
        let mut p = self.root_prefix.clone();
        p.extend_from_slice(&path[self.mountpoint.len().min(path.len())..]);
        p
    }

    /// The entry at absolute repository path `path`, if this catalog has it.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<DirEntry>, CatalogError> {
        let (a, b) = md5_path(&self.hashed_path(path));
        let sql = format!("{}WHERE md5path_1 = ?1 AND md5path_2 = ?2", self.select);
        self.with_statement(&sql, |st| {
            st.query_row(params![a, b], |r| self.read_row(r)).optional()
        })?
        .transpose()
    }

    /// The children of directory `path` (including hidden ones; callers filter).
    pub fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>, CatalogError> {
        let (a, b) = md5_path(&self.hashed_path(path));
        let sql = format!("{}WHERE parent_1 = ?1 AND parent_2 = ?2", self.select);
        self.with_statement(&sql, |st| {
            st.query_map(params![a, b], |r| self.read_row(r))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .into_iter()
        .collect()
    }

    fn read_row(&self, r: &Row) -> rusqlite::Result<Result<DirEntry, CatalogError>> {
        let flags: i64 = r.get(5)?;
        let hash_blob: Option<Vec<u8>> = r.get(0)?;
        let name = r
            .get_ref(6)?
            .as_bytes_or_null()?
            .unwrap_or_default()
            .to_vec();
        let symlink = r
            .get_ref(7)?
            .as_bytes_or_null()?
            .unwrap_or_default()
            .to_vec();
        let hash = match hash_blob {
            Some(b) if !b.is_empty() => {
                match Algorithm::from_catalog_flags(flags)
                    .and_then(|alg| ContentHash::from_digest(alg, &b))
                {
                    Ok(h) => Some(h),
                    Err(e) => {
                        return Ok(Err(CatalogError::Corrupt {
                            catalog: self.hash.to_string(),
                            reason: format!("entry {:?}: {e}", String::from_utf8_lossy(&name)),
                        }))
                    }
                }
            }
            _ => None,
        };
        let mtimens: Option<i64> = r.get(16)?;
        Ok(Ok(DirEntry {
            rowid: r.get(12)?,
            md5path: (r.get(8)?, r.get(9)?),
            parent: (r.get(10)?, r.get(11)?),
            name,
            hardlinks: r.get::<_, Option<i64>>(1)?.unwrap_or(1) as u64,
            hash,
            size: r.get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
            mode: r.get::<_, i64>(3)? as u32,
            mtime: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            mtime_ns: mtimens.unwrap_or(0).clamp(0, 999_999_999) as u32,
            flags,
            symlink,
            uid: r.get::<_, Option<i64>>(13)?.unwrap_or(0) as u32,
            gid: r.get::<_, Option<i64>>(14)?.unwrap_or(0) as u32,
            has_xattrs: r.get::<_, Option<i64>>(15)?.unwrap_or(0) != 0,
        }))
    }

    /// Chunks of the chunked file at `path`, ordered by offset.
    pub fn chunks(&self, path: &[u8], algorithm: Algorithm) -> Result<Vec<Chunk>, CatalogError> {
        let (a, b) = md5_path(&self.hashed_path(path));
        let rows = self.with_statement(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1 = ?1 AND md5path_2 = ?2 \
             ORDER BY offset ASC",
            |st| {
                st.query_map(params![a, b], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            },
        )?;
        let mut v: Vec<Chunk> = Vec::new();
        for (offset, size, digest) in rows {
            let corrupt = |reason: String| CatalogError::Corrupt {
                catalog: self.hash.to_string(),
                reason: format!("chunks of {}: {reason}", String::from_utf8_lossy(path)),
            };
            let hash =
                ContentHash::from_digest(algorithm, &digest).map_err(|e| corrupt(e.to_string()))?;
            let expected = v.last().map(|c| c.offset + c.size).unwrap_or(0);
            if offset < 0 || size < 0 || offset as u64 != expected {
                return Err(corrupt(format!(
                    "chunk at offset {offset} (size {size}) does not follow the previous one (expected offset {expected})"
                )));
            }
            v.push(Chunk {
                offset: offset as u64,
                size: size as u64,
                hash,
            });
        }
        Ok(v)
    }

    /// Extended attributes stored for `path` (spec §5.9); a corrupt blob reads as none.
    pub fn xattrs(&self, path: &[u8]) -> Result<Xattrs, CatalogError> {
        if self.schema_revision < 2 {
            return Ok(Vec::new());
        }
        let (a, b) = md5_path(&self.hashed_path(path));
        let blob: Option<Option<Vec<u8>>> = self.with_statement(
            "SELECT xattr FROM catalog WHERE md5path_1 = ?1 AND md5path_2 = ?2",
            |st| st.query_row(params![a, b], |r| r.get(0)).optional(),
        )?;
        Ok(blob
            .flatten()
            .map(|b| parse_xattr_blob(&b))
            .unwrap_or_default())
    }

    /// The smallest rowid of a hard-link group: the group's shared inode.
    /// The leaders are computed once per catalog (one table scan), not per lookup.
    pub fn hardlink_group_leader(&self, group: u32) -> Result<Option<i64>, CatalogError> {
        let mut leaders = self
            .hardlink_leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if leaders.is_none() {
            let map = self.with_statement(
                "SELECT hardlinks >> 32, MIN(rowid) FROM catalog \
                 WHERE (hardlinks >> 32) != 0 GROUP BY hardlinks >> 32",
                |st| {
                    st.query_map([], |r| {
                        Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)?))
                    })?
                    .collect::<rusqlite::Result<std::collections::HashMap<u32, i64>>>()
                },
            )?;
            *leaders = Some(map);
        }
        Ok(leaders.as_ref().and_then(|m| m.get(&group).copied()))
    }

    /// The `statistics` table (absent counters read as 0 by callers).
    pub fn statistics(&self) -> Result<BTreeMap<String, i64>, CatalogError> {
        self.with_statement("SELECT counter, value FROM statistics", |st| {
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect()
        })
    }

    /// The nested catalog whose mountpoint is `path` or a prefix of it on a component
    /// boundary, among this catalog's direct children.
    pub fn nested_for(&self, path: &[u8]) -> Option<&NestedRef> {
        self.nested.iter().find(|n| is_path_prefix(&n.path, path))
    }
}

/// `prefix` is `path` or one of its ancestors.
pub fn is_path_prefix(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

fn value_as_string(r: &Row, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => String::new(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
    })
}

/// Decodes the xattr blob of §5.9; anything malformed yields no attributes.
pub fn parse_xattr_blob(blob: &[u8]) -> Xattrs {
    let parse = || -> Option<Xattrs> {
        let (&version, rest) = blob.split_first()?;
        if version != 1 {
            return None;
        }
        let (&n, mut rest) = rest.split_first()?;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (&lk, r) = rest.split_first()?;
            let (&lv, r) = r.split_first()?;
            let (lk, lv) = (lk as usize, lv as usize);
            if lk + lv == 0 || r.len() < lk + lv {
                return None;
            }
            out.push((r[..lk].to_vec(), r[lk..lk + lv].to_vec()));
            rest = &r[lk + lv..];
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

/// Largest key or value length, and largest number of attributes, the blob can hold.
pub const XATTR_MAX_LEN: usize = 255;

/// Encodes extended attributes as the blob of §5.9 (sorted by key, as the real server writes
/// them); `None` when there are none. Callers drop attributes whose key or value exceeds
/// [`XATTR_MAX_LEN`] (the real server skips them too).
pub fn serialize_xattr_blob(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    if xattrs.is_empty() {
        return None;
    }
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = xattrs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut blob = vec![1u8, sorted.len().min(XATTR_MAX_LEN) as u8];
    for (k, v) in sorted.into_iter().take(XATTR_MAX_LEN) {
        blob.push(k.len() as u8);
        blob.push(v.len() as u8);
        blob.extend_from_slice(k);
        blob.extend_from_slice(v);
    }
    Some(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_blob() {
        let blob = [
            1, 1, 8, 3, b'u', b's', b'e', b'r', b'.', b'f', b'o', b'o', b'b', b'a', b'r',
        ];
        assert_eq!(
            parse_xattr_blob(&blob),
            vec![(b"user.foo".to_vec(), b"bar".to_vec())]
        );
        assert!(parse_xattr_blob(&blob[..10]).is_empty());
        assert!(parse_xattr_blob(&[2, 0]).is_empty());
        assert!(parse_xattr_blob(&[1, 1, 0, 0]).is_empty());
        assert!(parse_xattr_blob(&[]).is_empty());
    }

    #[test]
    fn xattr_blob_written_in_key_order() {
        let attrs = vec![
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"user.a".to_vec(), b"".to_vec()),
        ];
        let blob = serialize_xattr_blob(&attrs).unwrap();
        assert_eq!(&blob[..4], &[1, 2, 6, 0]);
        assert_eq!(
            parse_xattr_blob(&blob),
            vec![
                (b"user.a".to_vec(), b"".to_vec()),
                (b"user.b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(serialize_xattr_blob(&[]), None);
        // The fixture's blob of the `xattr` directory.
        assert_eq!(
            serialize_xattr_blob(&[(b"user.demo.dirlabel".to_vec(), b"yes".to_vec())]).unwrap(),
            b"\x01\x01\x12\x03user.demo.dirlabelyes"
        );
    }

    #[test]
    fn path_prefixes() {
        assert!(is_path_prefix(b"/a", b"/a"));
        assert!(is_path_prefix(b"/a", b"/a/b"));
        assert!(!is_path_prefix(b"/a", b"/ab"));
        assert!(is_path_prefix(b"", b"/a"));
    }
}
