//! Owner maps `CVMFS_UID_MAP` / `CVMFS_GID_MAP` (spec §5.10).
//!
//! One rule per line, `<from> <to>` separated by one or more spaces (tabs are not separators),
//! surrounding whitespace trimmed, blank lines and `#` comment lines ignored. `from` may be `*` to
//! set the id used for all unmapped ids. Unmapped ids without a default pass through unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors while reading a uid/gid map file.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("cannot read id map {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("id map {}, line {line}: {problem}: {content:?}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        content: String,
        problem: String,
    },
}

/// A uid or gid map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    rules: HashMap<u32, u32>,
    default: Option<u32>,
}

impl IdMap {
    /// An empty map (every id maps to itself).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a map file (a missing or unreadable file is an error: the mount must fail).
    pub fn from_file(path: &Path) -> Result<Self, IdMapError> {
        let bytes = std::fs::read(path).map_err(|source| IdMapError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the content of a map file; `origin` is only used in error messages.
    pub fn parse(content: &[u8], origin: &Path) -> Result<Self, IdMapError> {
        let mut map = IdMap::new();
        for (index, raw) in content.split(|&b| b == b'\n').enumerate() {
            let line_no = index + 1;
            let malformed = |problem: &str| IdMapError::Malformed {
                path: origin.to_path_buf(),
                line: line_no,
                content: String::from_utf8_lossy(raw).into_owned(),
                problem: problem.to_string(),
            };
            let line = std::str::from_utf8(raw)
                .map_err(|_| malformed("not valid UTF-8"))?
                .trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
            let [from, to] = fields[..] else {
                return Err(malformed(
                    "expected exactly two space-separated fields `<from> <to>`",
                ));
            };
            let to = parse_id(to).ok_or_else(|| malformed("target is not a decimal id"))?;
            if from == "*" {
                map.default = Some(to);
            } else {
                let from = parse_id(from)
                    .ok_or_else(|| malformed("source is neither `*` nor a decimal id"))?;
                map.rules.insert(from, to);
            }
        }
        Ok(map)
    }

    /// Adds (or replaces) the rule `from -> to`.
    pub fn insert(&mut self, from: u32, to: u32) {
        self.rules.insert(from, to);
    }

    /// Sets the id that unmapped ids are mapped to.
    pub fn set_default(&mut self, to: u32) {
        self.default = Some(to);
    }

    /// The id that unmapped ids are mapped to, if any (`*` rule).
    pub fn default_id(&self) -> Option<u32> {
        self.default
    }

    /// Number of explicit rules (not counting the default).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if the map has neither rules nor a default, i.e. it has no effect.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default.is_none()
    }

    /// Maps an id: explicit rule, else the default, else the id itself.
    pub fn map(&self, id: u32) -> u32 {
        match self.rules.get(&id) {
            Some(&to) => to,
            None => self.default.unwrap_or(id),
        }
    }
}

/// A decimal id: ASCII digits only (no sign), fitting into 32 bits.
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IdMap, IdMapError> {
        IdMap::parse(text.as_bytes(), Path::new("uid_map"))
    }

    fn malformed_line(text: &str) -> usize {
        match parse(text) {
            Err(IdMapError::Malformed { line, .. }) => line,
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_has_no_effect() {
        let map = parse("").expect("empty map");
        assert!(map.is_empty());
        assert_eq!(map.map(0), 0);
        assert_eq!(map.map(1000), 1000);
        assert!(parse("\n\n  \n# only comments\n").expect("map").is_empty());
    }

    #[test]
    fn rules_default_and_pass_through() {
        let map = parse("# merged accounts\n1000 500\n  1001   501  \n\n").expect("map");
        assert_eq!(map.len(), 2);
        assert_eq!(map.map(1000), 500);
        assert_eq!(map.map(1001), 501);
        assert_eq!(map.map(7), 7);
        assert_eq!(map.default_id(), None);

        let map = parse("0 0\n* 65534\n").expect("map");
        assert_eq!(map.map(0), 0);
        assert_eq!(map.map(42), 65534);
        assert_eq!(map.default_id(), Some(65534));
    }

    #[test]
    fn merge_accounts_format_and_crlf() {
        let map = parse("1000 1000\n48 27\r\n").expect("map");
        assert_eq!(map.map(48), 27);
        let map = parse("5 6").expect("no final newline");
        assert_eq!(map.map(5), 6);
    }

    #[test]
    fn later_rules_override() {
        let map = parse("1 2\n1 3\n* 4\n* 5\n").expect("map");
        assert_eq!(map.map(1), 3);
        assert_eq!(map.map(9), 5);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_number() {
        assert_eq!(malformed_line("1 2\n1\t2\n"), 2);
        assert_eq!(malformed_line("1 2 3\n"), 1);
        assert_eq!(malformed_line("\n\nx 2\n"), 3);
        assert_eq!(malformed_line("1 *\n"), 1);
        assert_eq!(malformed_line("-1 2\n"), 1);
        assert_eq!(malformed_line("1 +2\n"), 1);
        assert_eq!(malformed_line("1 4294967296\n"), 1);
        assert_eq!(malformed_line("1 2 # comment\n"), 1);
        assert_eq!(malformed_line("1 2\n\u{0}\n"), 2);
        let err = parse("0 0\nroot 0\n").expect_err("malformed");
        let message = err.to_string();
        assert!(message.contains("uid_map"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("root 0"), "{message}");
    }

    #[test]
    fn large_ids() {
        let map = parse("4294967295 0\n").expect("map");
        assert_eq!(map.map(u32::MAX), 0);
    }

    #[test]
    fn from_file_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gid_map");
        std::fs::write(&path, "100 200\n").expect("write");
        assert_eq!(IdMap::from_file(&path).expect("map").map(100), 200);
        let missing = dir.path().join("missing");
        assert!(matches!(
            IdMap::from_file(&missing),
            Err(IdMapError::Io { .. })
        ));
    }

    #[test]
    fn builder_methods() {
        let mut map = IdMap::new();
        map.insert(1, 2);
        map.set_default(3);
        assert_eq!(map.map(1), 2);
        assert_eq!(map.map(2), 3);
        assert!(!map.is_empty());
    }
}
