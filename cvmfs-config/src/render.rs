//! Writing a configuration: an ordered set of parameters that renders to a shell fragment the
//! parser in [`crate::shell`] reads back to the same values, and that answers questions about
//! those values without being parsed back.

use std::fmt::Write as _;

use crate::shell::expand_templates;

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `KEY=value`: the value has no blanks or shell metacharacters.
    Bare,
    /// `KEY="value"`: lists with `;` and `|`.
    Double,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: &'static str,
    /// The value as the client reads it (before template expansion).
    value: String,
    quoting: Quoting,
}

/// A client configuration file for one repository, in the order it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    fqrn: String,
    entries: Vec<Entry>,
}

impl ConfigFile {
    pub fn new(fqrn: &str) -> Self {
        ConfigFile {
            fqrn: fqrn.to_string(),
            entries: Vec::new(),
        }
    }

    fn put(&mut self, key: &'static str, value: String, quoting: Quoting) {
        let entry = Entry {
            key,
            value,
            quoting,
        };
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// Sets `key` to a value written bare; a key set before keeps its place.
    pub fn set(&mut self, key: &'static str, value: impl ToString) {
        self.put(key, value.to_string(), Quoting::Bare);
    }

    /// Sets `key` to a value written in double quotes (lists separated by `;` or `|`).
    pub fn set_quoted(&mut self, key: &'static str, value: impl ToString) {
        self.put(key, value.to_string(), Quoting::Double);
    }

    /// The value the client reads for `key`, templates (`@fqrn@`) expanded.
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| expand_templates(&e.value, &self.fqrn))
    }

    /// A list value split at `sep`, items trimmed, empty items dropped (unset → empty).
    pub fn get_list(&self, key: &str, sep: char) -> Vec<String> {
        self.get(key)
            .map(|v| crate::shell::split_list(&v, sep))
            .unwrap_or_default()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }

    /// The file text: one `KEY=value` line per parameter, in the order they were first set.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let _ = match e.quoting {
                Quoting::Bare => writeln!(out, "{}={}", e.key, e.value),
                Quoting::Double => writeln!(out, "{}=\"{}\"", e.key, e.value),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::*;
    use crate::shell::Config;

    #[test]
    fn rendered_file_reads_back_to_the_same_values() {
        let mut c = ConfigFile::new("demo.cernvm.test");
        c.set(CVMFS_CACHE_BASE, "/root.rw/cache");
        c.set_quoted(
            CVMFS_SERVER_URL,
            "http://a/cvmfs/@fqrn@;http://b/cvmfs/@fqrn@",
        );
        c.set_quoted(CVMFS_HTTP_PROXY, "auto;DIRECT");
        c.set(CVMFS_NFILES, 65536);
        c.set(CVMFS_CACHE_BASE, "/other");
        let text = c.render();
        assert_eq!(
            text,
            "CVMFS_CACHE_BASE=/other\n\
             CVMFS_SERVER_URL=\"http://a/cvmfs/@fqrn@;http://b/cvmfs/@fqrn@\"\n\
             CVMFS_HTTP_PROXY=\"auto;DIRECT\"\n\
             CVMFS_NFILES=65536\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.cernvm.test.conf");
        std::fs::write(&path, &text).unwrap();
        let parsed = Config::load("demo.cernvm.test", Some(&path), dir.path()).unwrap();
        for key in [
            CVMFS_CACHE_BASE,
            CVMFS_SERVER_URL,
            CVMFS_HTTP_PROXY,
            CVMFS_NFILES,
        ] {
            assert_eq!(parsed.get(key).map(str::to_string), c.get(key), "{key}");
        }
        assert_eq!(
            c.get_list(CVMFS_SERVER_URL, ';'),
            vec![
                "http://a/cvmfs/demo.cernvm.test".to_string(),
                "http://b/cvmfs/demo.cernvm.test".to_string()
            ]
        );
        assert!(!c.contains(CVMFS_ROOT_HASH));
    }
}
