//! Writes the history database (spec §7.1, schema 1.0 revision 3, as the real server):
//! named tags, plus the server's automatic `trunk` (newest revision) and `trunk-previous`
//! (the one before). The reading side is `crate::history`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::hash::ContentHash;

/// The automatic tag of the newest revision.
pub const TRUNK: &str = "trunk";
/// The automatic tag of the revision before it.
pub const TRUNK_PREVIOUS: &str = "trunk-previous";

const CREATE: &str = "\
CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,  \
CONSTRAINT pk_branch PRIMARY KEY (branch),   FOREIGN KEY (parent) REFERENCES branches (branch),   \
CHECK ((branch <> '') OR (parent IS NULL)),   CHECK ((branch = '') OR (parent IS NOT NULL)));
CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER,   timestamp INTEGER, channel INTEGER, \
description TEXT, size INTEGER,   branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name),   \
FOREIGN KEY (branch) REFERENCES branches (branch));
CREATE TABLE recycle_bin (hash TEXT, flags INTEGER,   CONSTRAINT pk_hash PRIMARY KEY (hash));
INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0);
";

/// Errors of history writing.
#[derive(Debug, thiserror::Error)]
pub enum HistoryWriteError {
    #[error("history database: SQLite: {0}")]
    Sql(rusqlite::Error),
    #[error("tag name {0:?} is reserved for the automatic tags")]
    ReservedTag(String),
    #[error("tag name must not be empty")]
    EmptyTag,
}

// The cause is in the message, so it is not also returned as the source.
impl From<rusqlite::Error> for HistoryWriteError {
    fn from(e: rusqlite::Error) -> Self {
        HistoryWriteError::Sql(e)
    }
}

/// One revision to record.
#[derive(Debug, Clone)]
pub struct Revision {
    pub root_catalog: ContentHash,
    /// Uncompressed size of the root catalog.
    pub root_catalog_size: u64,
    pub revision: u64,
    pub timestamp: u64,
}

/// Checks a user tag name.
pub fn check_tag_name(name: &str) -> Result<(), HistoryWriteError> {
    if name.is_empty() {
        Err(HistoryWriteError::EmptyTag)
    } else if name == TRUNK || name == TRUNK_PREVIOUS {
        Err(HistoryWriteError::ReservedTag(name.to_string()))
    } else {
        Ok(())
    }
}

/// Writes the history database `path`: a copy of the previous one (already at `path`, or
/// created empty for `fqrn`) with this revision recorded.
pub fn record_revision(
    path: &Path,
    fqrn: &str,
    previous_history: Option<&ContentHash>,
    revision: &Revision,
    tag: Option<&str>,
) -> Result<(), HistoryWriteError> {
    if let Some(t) = tag {
        check_tag_name(t)?;
    }
    let existed = path.exists();
    let mut conn = Connection::open(path)?;
    if !existed {
        conn.execute_batch(&format!("PRAGMA page_size = 1024; {CREATE}"))?;
        for (k, v) in [("schema", "1.0"), ("schema_revision", "3"), ("fqrn", fqrn)] {
            conn.execute(
                "INSERT INTO properties (key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
    }
    let tx = conn.transaction()?;
    let previous_trunk: Option<(String, i64, i64, Option<i64>)> = tx
        .query_row(
            "SELECT hash, revision, timestamp, size FROM tags WHERE name = ?1",
            params![TRUNK],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let upsert = |name: &str,
                  hash: &str,
                  rev: i64,
                  ts: i64,
                  size: i64,
                  description: &str|
     -> rusqlite::Result<usize> {
        tx.execute(
            "INSERT OR REPLACE INTO tags (name, hash, revision, timestamp, channel, description, \
             size, branch) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, '')",
            params![name, hash, rev, ts, description, size],
        )
    };
    if let Some((hash, rev, ts, size)) = previous_trunk {
        upsert(
            TRUNK_PREVIOUS,
            &hash,
            rev,
            ts,
            size.unwrap_or(0),
            "default undo target",
        )?;
    }
    let hash = revision.root_catalog.to_string();
    let (rev, ts, size) = (
        revision.revision as i64,
        revision.timestamp as i64,
        revision.root_catalog_size as i64,
    );
    upsert(TRUNK, &hash, rev, ts, size, "current HEAD")?;
    if let Some(t) = tag {
        upsert(t, &hash, rev, ts, size, "")?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO properties (key, value) VALUES ('previous_revision', ?1)",
        params![previous_history
            .map(|h| h.to_string())
            .unwrap_or_else(|| "0".repeat(40))],
    )?;
    tx.commit()?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(())
}
