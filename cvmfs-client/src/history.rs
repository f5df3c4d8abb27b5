//! The history database: named tags pointing at root catalogs (spec §7).

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::hash::ContentHash;

/// Errors of history access.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database: SQLite: {0}")]
    Sql(rusqlite::Error),
    #[error("history database has unsupported schema {0} (expected 1.0)")]
    Schema(String),
    #[error("tag {tag:?}: malformed root catalog hash {hash:?}")]
    BadHash { tag: String, hash: String },
}

// The cause is in the message, so it is not also returned as the source.
impl From<rusqlite::Error> for HistoryError {
    fn from(e: rusqlite::Error) -> Self {
        HistoryError::Sql(e)
    }
}

/// One named tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub root_catalog: ContentHash,
    pub revision: u64,
    pub timestamp: i64,
    pub description: String,
    pub size: u64,
    pub branch: String,
}

/// A raw `tags` row.
struct TagRow {
    name: String,
    hash: String,
    revision: i64,
    timestamp: i64,
    description: Option<String>,
    size: Option<i64>,
    branch: Option<String>,
}

/// An open history database.
pub struct History {
    conn: Connection,
    schema_revision: i64,
}

impl History {
    /// Opens a decompressed history database file.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )?;
        let prop = |k: &str| -> Result<Option<String>, rusqlite::Error> {
            conn.query_row(
                "SELECT CAST(value AS TEXT) FROM properties WHERE key = ?1",
                params![k],
                |r| r.get(0),
            )
            .optional()
        };
        let schema = prop("schema")?.unwrap_or_else(|| "1.0".into());
        if schema
            .trim()
            .parse::<f64>()
            .map(|s| (s - 1.0).abs() > 0.0005)
            .unwrap_or(true)
        {
            return Err(HistoryError::Schema(schema));
        }
        let schema_revision = prop("schema_revision")?
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(History {
            conn,
            schema_revision,
        })
    }

    fn select(&self) -> &'static str {
        match self.schema_revision {
            0 => "SELECT name, hash, revision, timestamp, description, 0, '' FROM tags ",
            1 | 2 => "SELECT name, hash, revision, timestamp, description, size, '' FROM tags ",
            _ => "SELECT name, hash, revision, timestamp, description, size, branch FROM tags ",
        }
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<TagRow> {
        Ok(TagRow {
            name: r.get(0)?,
            hash: r.get(1)?,
            revision: r.get(2)?,
            timestamp: r.get(3)?,
            description: r.get(4)?,
            size: r.get(5)?,
            branch: r.get(6)?,
        })
    }

    fn to_tag(row: TagRow) -> Result<Tag, HistoryError> {
        let root_catalog = row.hash.parse().map_err(|_| HistoryError::BadHash {
            tag: row.name.clone(),
            hash: row.hash.clone(),
        })?;
        Ok(Tag {
            name: row.name,
            root_catalog,
            revision: row.revision.max(0) as u64,
            timestamp: row.timestamp,
            description: row.description.unwrap_or_default(),
            size: row.size.unwrap_or(0).max(0) as u64,
            branch: row.branch.unwrap_or_default(),
        })
    }

    /// The tag called `name`.
    pub fn tag(&self, name: &str) -> Result<Option<Tag>, HistoryError> {
        let row = self
            .conn
            .query_row(
                &format!("{}WHERE name = ?1", self.select()),
                params![name],
                Self::row,
            )
            .optional()?;
        row.map(Self::to_tag).transpose()
    }

    /// The newest tag of the default branch published at or before `timestamp`.
    pub fn tag_at(&self, timestamp: i64) -> Result<Option<Tag>, HistoryError> {
        let branch = if self.schema_revision >= 3 {
            "AND branch = '' "
        } else {
            ""
        };
        let row = self
            .conn
            .query_row(
                &format!(
                    "{}WHERE timestamp <= ?1 {branch}ORDER BY revision DESC LIMIT 1",
                    self.select()
                ),
                params![timestamp],
                Self::row,
            )
            .optional()?;
        row.map(Self::to_tag).transpose()
    }

    /// All tags, newest revision first.
    pub fn tags(&self) -> Result<Vec<Tag>, HistoryError> {
        let mut st = self.conn.prepare(&format!(
            "{}ORDER BY revision DESC, name ASC",
            self.select()
        ))?;
        let rows = st.query_map([], Self::row)?;
        let mut v = Vec::new();
        for r in rows {
            v.push(Self::to_tag(r?)?);
        }
        Ok(v)
    }
}
