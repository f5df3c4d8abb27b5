//! CernVM-FS client configuration (spec §10.1, §8.1, §11.2, §12).
//!
//! Configuration files are shell fragments. Instead of running a shell, each line is parsed as a
//! sequence of shell assignments: `KEY=value`, `KEY="value"`, `KEY='value'`, `export KEY=…`,
//! `readonly KEY=…`, several assignments separated by blanks or `;`, comments, and `$VAR` /
//! `${VAR}` / `${VAR:-word}` expansion of previously defined parameters (falling back to
//! `CVMFS_FQRN` and the process environment, as a shell would). Lines that are not assignments
//! (conditionals, commands) are ignored; constructs that would need a real shell (command
//! substitution, unquoted `|`, `&`, `<`, `>`, `(`, `)`, unterminated quotes) are errors naming
//! the file and line. After parsing, every value is template expanded (`@fqrn@`, `@org@`).

use crate::keys::{CVMFS_CONFIG_REPOSITORY, CVMFS_FQRN, CVMFS_MOUNT_DIR};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The usual configuration root.
pub const DEFAULT_CONFIG_ROOT: &str = "/etc/cvmfs";

/// Mount directory used for the config repository when `CVMFS_MOUNT_DIR` is not set.
pub const DEFAULT_MOUNT_DIR: &str = "/cvmfs";

/// The one parameter that may not change after the `default.d` files have been read.
const PROTECTED_PARAMETERS: &[&str] = &[CVMFS_CONFIG_REPOSITORY];

/// Where a parameter value was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Assigned in a configuration file, at the given (1-based) line.
    File { path: PathBuf, line: usize },
    /// Set by the program (`Config::from_pairs`, `Config::set`).
    Explicit,
}

/// `value` split at `sep`, items trimmed, empty items dropped: how list-valued keys are read.
pub(crate) fn split_list(value: &str, sep: char) -> Vec<String> {
    value
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Source {
    /// The file of a file source.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File { path, .. } => Some(path),
            Source::Explicit => None,
        }
    }

    /// The label used by [`Config::dump`] after `# from `.
    fn dump_label(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Explicit => "(explicit)".to_string(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File { path, line } => write!(f, "{}, line {line}", path.display()),
            Source::Explicit => f.write_str("(set explicitly)"),
        }
    }
}

/// A parameter value with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub value: String,
    pub source: Source,
}

/// Errors while loading or interpreting the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid repository name {0:?}")]
    InvalidFqrn(String),
    #[error("cannot read configuration file {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("configuration file {} (given by config=) does not exist", path.display())]
    MissingFile { path: PathBuf },
    #[error("configuration file {}, line {line}: {problem}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("parameter {key}={value:?} ({origin}): {problem}")]
    InvalidValue {
        key: String,
        value: String,
        origin: Source,
        problem: String,
    },
}

/// The parsed client configuration: ordered `KEY -> value` parameters with their sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    fqrn: String,
    /// Keys in the order of their first definition.
    order: Vec<String>,
    params: HashMap<String, Parameter>,
}

impl Config {
    /// An empty configuration for a repository.
    pub fn new(fqrn: &str) -> Self {
        Config {
            fqrn: fqrn.to_string(),
            order: Vec::new(),
            params: HashMap::new(),
        }
    }

    /// A configuration from explicit pairs (tests, the boot loader). Values are template
    /// expanded like file values; later pairs override earlier ones.
    pub fn from_pairs<I, K, V>(fqrn: &str, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: AsRef<str>,
    {
        let mut config = Config::new(fqrn);
        for (key, value) in pairs {
            config.set(key, value.as_ref());
        }
        config
    }

    /// Loads the configuration of repository `fqrn` like a mount does.
    ///
    /// `config_file` is the value of the mount option `config=`: a `:`-separated list of files
    /// that are read *instead of* the default search path (spec §10.1, §12); each listed file
    /// must exist. Without it, these files are read if they exist, later ones overriding
    /// earlier ones (`<cr>` = `<CVMFS_MOUNT_DIR>/<CVMFS_CONFIG_REPOSITORY>/etc/cvmfs`, used only
    /// if a config repository other than `fqrn` is configured):
    ///
    /// `<root>/default.conf`, `<root>/default.d/*.conf` (sorted), `<cr>/default.conf`,
    /// `<root>/default.local`, `<cr>/domain.d/<domain>.conf`, `<root>/domain.d/<domain>.conf`,
    /// `<root>/domain.d/<domain>.local`, `<cr>/config.d/<fqrn>.conf`,
    /// `<root>/config.d/<fqrn>.conf`, `<root>/config.d/<fqrn>.local`,
    ///
    /// where `<domain>` is `fqrn` without its first label and `config_root` is normally
    /// [`DEFAULT_CONFIG_ROOT`]. `CVMFS_CONFIG_REPOSITORY` cannot be changed after the
    /// `default.d` files (such assignments are ignored with a warning).
    pub fn load(
        fqrn: &str,
        config_file: Option<&Path>,
        config_root: &Path,
    ) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Self::load_with_env(fqrn, config_file, config_root, &env)
    }

    fn load_with_env(
        fqrn: &str,
        config_file: Option<&Path>,
        config_root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        validate_fqrn(fqrn)?;
        let mut loader = Loader {
            config: Config::new(fqrn),
            env,
            protected: HashMap::new(),
        };
        if let Some(list) = config_file {
            for path in split_config_list(list) {
                if !loader.read_file(&path)? {
                    return Err(ConfigError::MissingFile { path });
                }
            }
            return Ok(loader.config);
        }

        loader.read_file(&config_root.join("default.conf"))?;
        for path in conf_files_sorted(&config_root.join("default.d"))? {
            loader.read_file(&path)?;
        }
        loader.protect();
        let repo_root = loader.config.config_repository_root();
        if let Some(cr) = &repo_root {
            loader.read_file(&cr.join("default.conf"))?;
        }
        loader.read_file(&config_root.join("default.local"))?;
        if let Some((_, domain)) = fqrn.split_once('.') {
            if let Some(cr) = &repo_root {
                loader.read_file(&cr.join("domain.d").join(format!("{domain}.conf")))?;
            }
            let dir = config_root.join("domain.d");
            loader.read_file(&dir.join(format!("{domain}.conf")))?;
            loader.read_file(&dir.join(format!("{domain}.local")))?;
        }
        if let Some(cr) = &repo_root {
            loader.read_file(&cr.join("config.d").join(format!("{fqrn}.conf")))?;
        }
        let dir = config_root.join("config.d");
        loader.read_file(&dir.join(format!("{fqrn}.conf")))?;
        loader.read_file(&dir.join(format!("{fqrn}.local")))?;
        Ok(loader.config)
    }

    /// `<mount dir>/<config repository>/etc/cvmfs` if a usable config repository is set.
    fn config_repository_root(&self) -> Option<PathBuf> {
        let repo = self.get(CVMFS_CONFIG_REPOSITORY)?;
        if repo.is_empty() || repo == self.fqrn {
            return None;
        }
        if validate_fqrn(repo).is_err() {
            log::warn!("ignoring invalid CVMFS_CONFIG_REPOSITORY {repo:?}");
            return None;
        }
        let mount_dir = self.get(CVMFS_MOUNT_DIR).unwrap_or(DEFAULT_MOUNT_DIR);
        Some(Path::new(mount_dir).join(repo).join("etc").join("cvmfs"))
    }

    /// The repository name the configuration was made for.
    pub fn fqrn(&self) -> &str {
        &self.fqrn
    }

    /// Sets a parameter explicitly (template expanded).
    pub fn set(&mut self, key: impl Into<String>, value: &str) {
        let value = expand_templates(value, &self.fqrn);
        self.insert(key.into(), value, Source::Explicit);
    }

    fn insert(&mut self, key: String, value: String, source: Source) {
        if !self.params.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.params.insert(key, Parameter { value, source });
    }

    /// Removes a parameter; returns its former value.
    pub fn remove(&mut self, key: &str) -> Option<Parameter> {
        let removed = self.params.remove(key)?;
        self.order.retain(|k| k != key);
        Some(removed)
    }

    /// The value of a parameter (unknown parameters are simply absent).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(|p| p.value.as_str())
    }

    /// The value and source of a parameter.
    pub fn parameter(&self, key: &str) -> Option<&Parameter> {
        self.params.get(key)
    }

    /// True if the parameter is defined (possibly empty).
    pub fn contains(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// A boolean parameter: `yes|on|1|true` / `no|off|0|false` (case-insensitive, surrounding
    /// blanks ignored). Unset or empty → `Ok(None)` (the code default applies); anything else is
    /// an error.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(param) = self.params.get(key) else {
            return Ok(None);
        };
        let text = param.value.trim();
        if text.is_empty() {
            return Ok(None);
        }
        parse_bool(text).map(Some).ok_or_else(|| {
            self.invalid(
                key,
                param,
                "not a boolean (expected yes/on/1/true or no/off/0/false)",
            )
        })
    }

    /// An unsigned decimal parameter (surrounding blanks ignored). Unset or empty → `Ok(None)`;
    /// anything that is not a decimal number fitting in 64 bits is an error.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(param) = self.params.get(key) else {
            return Ok(None);
        };
        let text = param.value.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.invalid(key, param, "not an unsigned decimal number"));
        }
        text.parse()
            .map(Some)
            .map_err(|_| self.invalid(key, param, "number too large"))
    }

    /// A list parameter split at `sep`, items trimmed, empty items dropped (unset → empty).
    pub fn get_list(&self, key: &str, sep: char) -> Vec<String> {
        self.get(key)
            .map(|v| split_list(v, sep))
            .unwrap_or_default()
    }

    fn invalid(&self, key: &str, param: &Parameter, problem: &str) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_string(),
            value: param.value.clone(),
            origin: param.source.clone(),
            problem: problem.to_string(),
        }
    }

    /// All parameters in the order of their first definition.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Parameter)> {
        self.order
            .iter()
            .filter_map(|k| self.params.get(k).map(|p| (k.as_str(), p)))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// True if no parameter is defined.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The `cvmfs2 -o parse` output (spec §11.2): a header line, then one line per parameter
    /// sorted by name, `NAME=VALUE    # from <file>`. Values that are not plain are single
    /// quoted so that the output can be sourced by `/bin/sh`.
    pub fn dump(&self) -> String {
        let mut keys: Vec<&String> = self.params.keys().collect();
        keys.sort();
        let mut out = String::from("# CernVM-FS parameters:\n");
        for key in keys {
            let param = &self.params[key];
            out.push_str(&format!(
                "{key}={}    # from {}\n",
                shell_quote(&param.value),
                param.source.dump_label()
            ));
        }
        out
    }

    /// The environment for variant symlink expansion (spec §5.8): the process environment
    /// (variables with UTF-8 names and values) overlaid with all parameters.
    pub fn environment(&self) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        for (key, param) in &self.params {
            env.insert(key.clone(), param.value.clone());
        }
        env
    }
}

/// Parses a boolean option value: `yes|on|1|true` → true, `no|off|0|false` → false
/// (case-insensitive), anything else → `None`.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    match v.as_str() {
        "yes" | "on" | "1" | "true" => Some(true),
        "no" | "off" | "0" | "false" => Some(false),
        _ => None,
    }
}

/// Template expansion (spec §8.1): `@fqrn@` → `fqrn`, `@org@` → the first label of `fqrn`.
/// Unknown `@name@` stay literal (scanning continues after their closing `@`); an unterminated
/// `@…` is kept literally.
pub fn expand_templates(value: &str, fqrn: &str) -> String {
    if !value.contains('@') {
        return value.to_string();
    }
    let org = fqrn.split('.').next().unwrap_or(fqrn);
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(len) = after.find('@') else {
            out.push_str(&rest[start..]);
            return out;
        };
        match &after[..len] {
            "fqrn" => out.push_str(fqrn),
            "org" => out.push_str(org),
            other => {
                out.push('@');
                out.push_str(other);
                out.push('@');
            }
        }
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

/// Quotes a value for `dump`: bare if it only contains `[0-9A-Za-z/:._,-]`, else in single
/// quotes; an embedded `'` is written as `'\''` so that the result stays valid shell.
fn shell_quote(value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/:._,-".contains(&b));
    if plain {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Splits the `config=` value at `:` (empty entries skipped).
fn split_config_list(list: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    list.as_os_str()
        .as_bytes()
        .split(|&b| b == b':')
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect()
}

/// The `*.conf` files of a directory, sorted by name (a missing directory has none).
fn conf_files_sorted(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Io {
                path: dir.to_path_buf(),
                cause: source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Io {
            path: dir.to_path_buf(),
            cause: source,
        })?;
        let path = entry.path();
        let is_conf = path.extension().is_some_and(|e| e == "conf")
            && path.file_stem().is_some_and(|s| !s.is_empty());
        // Follow symlinks; skip directories and dangling links.
        if is_conf && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A repository name usable in file names.
fn validate_fqrn(fqrn: &str) -> Result<(), ConfigError> {
    let ok = !fqrn.is_empty()
        && !fqrn.starts_with('.')
        && fqrn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidFqrn(fqrn.to_string()))
    }
}

/// State while reading configuration files.
struct Loader<'e> {
    config: Config,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// Protected parameters and the value they are locked to.
    protected: HashMap<String, String>,
}

impl Loader<'_> {
    /// Locks the protected parameters to their current values (empty if unset).
    fn protect(&mut self) {
        for key in PROTECTED_PARAMETERS {
            let value = self.config.get(key).unwrap_or_default().to_string();
            self.protected.insert((*key).to_string(), value);
        }
    }

    /// Reads one file; returns false if it does not exist.
    fn read_file(&mut self, path: &Path) -> Result<bool, ConfigError> {
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::debug!("configuration file {} not present", path.display());
                return Ok(false);
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    cause: source,
                })
            }
        };
        log::debug!("reading configuration file {}", path.display());
        self.parse(path, &content)?;
        Ok(true)
    }

    fn parse(&mut self, path: &Path, content: &[u8]) -> Result<(), ConfigError> {
        for (index, raw) in content.split(|&b| b == b'\n').enumerate() {
            let line_no = index + 1;
            let syntax = |problem: String| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: line_no,
                problem,
            };
            let line =
                std::str::from_utf8(raw).map_err(|_| syntax("not valid UTF-8".to_string()))?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let assignments = {
                let lookup = |name: &str| self.lookup(name);
                parse_line(line, &lookup).map_err(syntax)?
            };
            match assignments {
                Line::Assignments(list) => {
                    for (key, value) in list {
                        self.assign(key, value, path, line_no);
                    }
                }
                Line::Ignored => {
                    let first = line.split_whitespace().next().unwrap_or_default();
                    if SHELL_KEYWORDS.contains(&first) {
                        log::warn!(
                            "{}, line {line_no}: shell control flow is not supported; \
                             assignments inside it apply unconditionally",
                            path.display()
                        );
                    } else {
                        log::debug!(
                            "{}, line {line_no}: ignoring non-assignment {line:?}",
                            path.display()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn assign(&mut self, key: String, value: String, path: &Path, line: usize) {
        let value = expand_templates(&value, &self.config.fqrn);
        if let Some(locked) = self.protected.get(&key) {
            if *locked != value {
                log::warn!(
                    "{}, line {line}: ignoring attempt to change protected parameter {key} \
                     from {locked:?} to {value:?}",
                    path.display()
                );
                return;
            }
        }
        let source = Source::File {
            path: path.to_path_buf(),
            line,
        };
        self.config.insert(key, value, source);
    }

    /// Shell variable lookup: parameters so far, then `CVMFS_FQRN`, then the environment.
    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.config.get(name) {
            return Some(v.to_string());
        }
        if name == CVMFS_FQRN {
            return Some(self.config.fqrn.clone());
        }
        (self.env)(name)
    }
}

/// First words of lines that open shell control structures.
const SHELL_KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
];

/// Result of parsing one line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Assignments to apply in order (possibly none: blank or comment line).
    Assignments(Vec<(String, String)>),
    /// A line that is not (only) assignments, e.g. a command.
    Ignored,
}

/// Parses one line of a shell fragment. `lookup` resolves variables defined before the line;
/// assignments earlier on the same line are visible to later ones. Errors are problem texts.
fn parse_line(line: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Line, String> {
    let mut p = LineParser {
        chars: line.chars().collect(),
        pos: 0,
    };
    let mut done: Vec<(String, String)> = Vec::new();
    loop {
        p.skip_blanks();
        match p.peek() {
            None | Some('#') => break,
            Some(';') => {
                p.pos += 1;
                continue;
            }
            _ => {}
        }
        let declaration = p.keyword(&["export", "readonly", "eval"]);
        let mut pending: Vec<(String, String)> = Vec::new();
        loop {
            p.skip_blanks();
            match p.peek() {
                None | Some('#') | Some(';') => break,
                Some(c) if is_metachar(c) => {
                    return Err(format!(
                        "unquoted shell metacharacter {c:?} at column {} (quote the value)",
                        p.pos + 1
                    ));
                }
                _ => {}
            }
            if let Some(name) = p.assignment_name() {
                let value = {
                    let scoped = |n: &str| {
                        done.iter()
                            .chain(pending.iter())
                            .rev()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                            .or_else(|| lookup(n))
                    };
                    p.word(&scoped)?
                };
                pending.push((name, value));
            } else if declaration {
                // `export NAME` or an option: no assignment.
                p.word(&|_| None)?;
            } else {
                // A command (possibly with assignment prefixes, which then only apply to it).
                return Ok(Line::Ignored);
            }
        }
        done.extend(pending);
    }
    Ok(Line::Assignments(done))
}

fn is_metachar(c: char) -> bool {
    matches!(c, '|' | '&' | '<' | '>' | '(' | ')')
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct LineParser {
    chars: Vec<char>,
    pos: usize,
}

impl LineParser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    /// Consumes one of `words` if it is followed by a blank.
    fn keyword(&mut self, words: &[&str]) -> bool {
        for word in words {
            let end = self.pos + word.len();
            let matches = self.chars.len() > end
                && self.chars[self.pos..end].iter().copied().eq(word.chars())
                && matches!(self.chars[end], ' ' | '\t');
            if matches {
                self.pos = end;
                return true;
            }
        }
        false
    }

    /// Consumes `NAME=` and returns `NAME`, or consumes nothing.
    fn assignment_name(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.peek().is_some_and(is_name_start) {
            return None;
        }
        let mut end = start;
        while self.chars.get(end).copied().is_some_and(is_name_char) {
            end += 1;
        }
        if self.chars.get(end) != Some(&'=') {
            return None;
        }
        self.pos = end + 1;
        Some(self.chars[start..end].iter().collect())
    }

    /// Parses one shell word (quotes, escapes, expansions) up to an unquoted blank, `;` or
    /// metacharacter.
    fn word(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | ';' => break,
                c if is_metachar(c) => break,
                '\'' => {
                    let open = self.pos;
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(format!(
                                    "unterminated single quote (opened at column {})",
                                    open + 1
                                ))
                            }
                            Some('\'') => break,
                            Some(c) => out.push(c),
                        }
                        self.pos += 1;
                    }
                    self.pos += 1;
                }
                '"' => self.double_quoted(&mut out, lookup)?,
                '\\' => {
                    self.pos += 1;
                    match self.peek() {
                        None => {
                            return Err("line continuation (trailing backslash) is not supported"
                                .to_string())
                        }
                        Some(c) => out.push(c),
                    }
                    self.pos += 1;
                }
                '`' => return Err("command substitution with backquotes is not supported".into()),
                '$' => self.dollar(&mut out, lookup)?,
                c => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(out)
    }

    fn double_quoted(
        &mut self,
        out: &mut String,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let open = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => {
                    return Err(format!(
                        "unterminated double quote (opened at column {})",
                        open + 1
                    ))
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None => {
                            return Err(format!(
                                "unterminated double quote (opened at column {})",
                                open + 1
                            ))
                        }
                        Some(c @ ('$' | '`' | '"' | '\\')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                    }
                    self.pos += 1;
                }
                Some('`') => {
                    return Err("command substitution with backquotes is not supported".into())
                }
                Some('$') => self.dollar(out, lookup)?,
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Handles a `$` at the current position.
    fn dollar(
        &mut self,
        out: &mut String,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let column = self.pos + 1;
        self.pos += 1;
        match self.peek() {
            Some('(') => Err(format!(
                "command substitution $(...) at column {column} is not supported"
            )),
            Some('{') => {
                self.pos += 1;
                let start = self.pos;
                let Some(len) = self.chars[start..].iter().position(|&c| c == '}') else {
                    return Err(format!("unterminated ${{ at column {column}"));
                };
                let inner: String = self.chars[start..start + len].iter().collect();
                self.pos = start + len + 1;
                out.push_str(&expand_braced(&inner, lookup).map_err(|problem| {
                    format!("parameter expansion ${{{inner}}} at column {column}: {problem}")
                })?);
                Ok(())
            }
            Some(c) if is_name_start(c) => {
                let start = self.pos;
                while self.peek().is_some_and(is_name_char) {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                out.push_str(&lookup(&name).unwrap_or_default());
                Ok(())
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => Err(format!(
                "special parameter ${c} at column {column} is not supported"
            )),
            // A `$` that starts no expansion is literal.
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }
}

/// `${NAME}`, `${NAME:-word}` (default if unset or empty), `${NAME-word}` (default if unset);
/// the word is literal.
fn expand_braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_len = inner
        .char_indices()
        .find(|&(i, c)| !(is_name_char(c) && (i > 0 || is_name_start(c))))
        .map_or(inner.len(), |(i, _)| i);
    let (name, op) = inner.split_at(name_len);
    if name.is_empty() {
        return Err("bad substitution".to_string());
    }
    let value = lookup(name);
    let (word, use_default) = if op.is_empty() {
        return Ok(value.unwrap_or_default());
    } else if let Some(word) = op.strip_prefix(":-") {
        (word, value.as_deref().is_none_or(str::is_empty))
    } else if let Some(word) = op.strip_prefix('-') {
        (word, value.is_none())
    } else {
        return Err("only ${NAME}, ${NAME:-word} and ${NAME-word} are supported".to_string());
    };
    if word.contains(['$', '\'', '"', '`', '\\']) {
        return Err("quotes or expansions inside the default word are not supported".to_string());
    }
    Ok(if use_default {
        word.to_string()
    } else {
        value.unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn line(text: &str) -> Result<Line, String> {
        let lookup = |name: &str| match name {
            "PREV" => Some("prev-value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        parse_line(text, &lookup)
    }

    fn assigns(text: &str) -> Vec<(String, String)> {
        match line(text) {
            Ok(Line::Assignments(list)) => list,
            other => panic!("{text:?}: expected assignments, got {other:?}"),
        }
    }

    fn one(text: &str) -> String {
        let list = assigns(text);
        assert_eq!(list.len(), 1, "{text:?}: {list:?}");
        list[0].1.clone()
    }

    fn write(dir: &Path, rel: &str, content: &str) -> PathBuf {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, content).expect("write");
        path
    }

    fn load(fqrn: &str, config: Option<&Path>, root: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(fqrn, config, root, &no_env)
    }

    fn source_file(config: &Config, key: &str) -> PathBuf {
        config
            .parameter(key)
            .and_then(|p| p.source.path())
            .expect("file source")
            .to_path_buf()
    }

    #[test]
    fn plain_and_quoted_values() {
        assert_eq!(one("A=b"), "b");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=\"x y\""), "x y");
        assert_eq!(one("A='auto;DIRECT'"), "auto;DIRECT");
        assert_eq!(
            one("A=\"http://a/cvmfs/@fqrn@;http://b\""),
            "http://a/cvmfs/@fqrn@;http://b"
        );
        assert_eq!(one("A=ab'c d'\"e\"f"), "abc def");
        assert_eq!(one("A='$PREV \\'"), "$PREV \\");
        assert_eq!(one(r#"A="a\"b\\c\$d\x""#), r#"a"b\c$d\x"#);
        assert_eq!(one(r"A=a\ b\;c"), "a b;c");
        assert_eq!(one("  A=1  "), "1");
        assert_eq!(one("\tA=1"), "1");
        assert_eq!(one("A=a=b"), "a=b");
        assert_eq!(one("A=x#y"), "x#y");
        assert_eq!(one("A=*"), "*");
    }

    #[test]
    fn prefixes_comments_and_separators() {
        assert_eq!(one("export A=1"), "1");
        assert_eq!(one("readonly  A=\"2\""), "2");
        assert_eq!(one("eval A=3"), "3");
        assert_eq!(one("A=1 # comment"), "1");
        // `#` inside a word is literal, so this is `A=1#` prefixing a command `comment`.
        assert_eq!(line("A=\"1\"# comment").expect("ok"), Line::Ignored);
        assert_eq!(one("A='1'   #c"), "1");
        assert_eq!(assigns("# A=1"), vec![]);
        assert_eq!(assigns(""), vec![]);
        assert_eq!(assigns("   "), vec![]);
        assert_eq!(
            assigns("A=1; B=2 ;C=3"),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into())
            ]
        );
        assert_eq!(
            assigns("export A=1 B B=$A"),
            vec![("A".into(), "1".into()), ("B".into(), "1".into())]
        );
        assert_eq!(
            assigns("A=1 B=\"$A$A\""),
            vec![("A".into(), "1".into()), ("B".into(), "11".into())]
        );
        assert_eq!(assigns("export A"), vec![]);
        assert_eq!(one("export=5"), "5");
    }

    #[test]
    fn trailing_comment_needs_blank_before_hash() {
        assert_eq!(one("A=1#2"), "1#2");
        assert_eq!(one("A=1 #2"), "1");
        assert_eq!(one("A=\"1\" #2"), "1");
    }

    #[test]
    fn non_assignments_are_ignored() {
        assert_eq!(line("if [ -f /x ]; then").expect("ok"), Line::Ignored);
        assert_eq!(line("fi").expect("ok"), Line::Ignored);
        assert_eq!(line("echo \"unterminated").expect("ok"), Line::Ignored);
        assert_eq!(line(". /etc/other.conf").expect("ok"), Line::Ignored);
        // An assignment prefix of a command only applies to that command.
        assert_eq!(line("A=1 somecommand").expect("ok"), Line::Ignored);
        assert_eq!(line("A = 1").expect("ok"), Line::Ignored);
        assert_eq!(line("1A=2").expect("ok"), Line::Ignored);
        assert_eq!(line("A-B=2").expect("ok"), Line::Ignored);
    }

    #[test]
    fn variable_expansion() {
        assert_eq!(one("A=$PREV"), "prev-value");
        assert_eq!(one("A=${PREV}/x"), "prev-value/x");
        assert_eq!(one("A=\"$PREV;${PREV}\""), "prev-value;prev-value");
        assert_eq!(one("A=$UNSET/x"), "/x");
        assert_eq!(one("A=${UNSET:-dflt}"), "dflt");
        assert_eq!(one("A=${EMPTY:-dflt}"), "dflt");
        assert_eq!(one("A=${EMPTY-dflt}"), "");
        assert_eq!(one("A=${UNSET-dflt}"), "dflt");
        assert_eq!(one("A=${PREV:-dflt}"), "prev-value");
        assert_eq!(one("A=$PREV.x"), "prev-value.x");
        assert_eq!(one("A=$PREVx"), "");
        assert_eq!(one("A=cost$"), "cost$");
        assert_eq!(one("A=\"a$ b\""), "a$ b");
        assert_eq!(one("A=$/"), "$/");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for text in [
            "A=\"unterminated",
            "A='unterminated",
            "A=\"x\\",
            "A=x\\",
            "A=$(hostname)",
            "A=`hostname`",
            "A=\"`hostname`\"",
            "A=${UNTERMINATED",
            "A=${}",
            "A=${#PREV}",
            "A=${PREV%x}",
            "A=${U:-$PREV}",
            "A=$1",
            "A=$$",
            "A=http://a|http://b",
            "A=1 && B=2",
            "A=(1 2)",
            "A=x >/dev/null",
        ] {
            assert!(line(text).is_err(), "{text:?} should be an error");
        }
    }

    #[test]
    fn templates() {
        let fqrn = "cernvm-prod.cern.ch";
        assert_eq!(
            expand_templates("http://s1/cvmfs/@fqrn@", fqrn),
            "http://s1/cvmfs/cernvm-prod.cern.ch"
        );
        assert_eq!(
            expand_templates("/etc/cvmfs/keys/@org@", fqrn),
            "/etc/cvmfs/keys/cernvm-prod"
        );
        assert_eq!(
            expand_templates("@fqrn@@org@", fqrn),
            "cernvm-prod.cern.chcernvm-prod"
        );
        assert_eq!(expand_templates("a@x@b", fqrn), "a@x@b");
        assert_eq!(expand_templates("@x@fqrn@", fqrn), "@x@fqrn@");
        assert_eq!(expand_templates("a@fqrn", fqrn), "a@fqrn");
        assert_eq!(expand_templates("user@host", fqrn), "user@host");
        assert_eq!(expand_templates("@@", fqrn), "@@");
        assert_eq!(expand_templates("@", fqrn), "@");
        assert_eq!(expand_templates("@org@@", fqrn), "cernvm-prod@");
        assert_eq!(expand_templates("@org@", "nodots"), "nodots");
        assert_eq!(expand_templates("plain", fqrn), "plain");
    }

    #[test]
    fn typed_accessors() {
        let config = Config::from_pairs(
            "a.b.c",
            [
                ("Y1", "yes"),
                ("Y2", "ON"),
                ("Y3", "1"),
                ("Y4", " True "),
                ("N1", "no"),
                ("N2", "Off"),
                ("N3", "0"),
                ("N4", "FALSE"),
                ("BAD", "maybe"),
                ("EMPTY", ""),
                ("NUM", "65536"),
                ("NEG", "-1"),
                ("BIG", "99999999999999999999"),
                ("LIST", " http://a ;http://b;; http://c"),
            ],
        );
        for key in ["Y1", "Y2", "Y3", "Y4"] {
            assert_eq!(config.get_bool(key).expect(key), Some(true), "{key}");
        }
        for key in ["N1", "N2", "N3", "N4"] {
            assert_eq!(config.get_bool(key).expect(key), Some(false), "{key}");
        }
        assert_eq!(config.get_bool("UNSET").expect("unset"), None);
        assert_eq!(config.get_bool("EMPTY").expect("empty"), None);
        let err = config.get_bool("BAD").expect_err("bad bool");
        assert!(err.to_string().contains("BAD"), "{err}");
        assert!(err.to_string().contains("maybe"), "{err}");

        assert_eq!(config.get_u64("NUM").expect("num"), Some(65536));
        assert_eq!(config.get_u64("UNSET").expect("unset"), None);
        assert_eq!(config.get_u64("EMPTY").expect("empty"), None);
        assert!(config.get_u64("NEG").is_err());
        assert!(config.get_u64("BIG").is_err());
        assert!(config.get_u64("BAD").is_err());

        assert_eq!(
            config.get_list("LIST", ';'),
            vec!["http://a", "http://b", "http://c"]
        );
        assert!(config.get_list("UNSET", ';').is_empty());
        assert_eq!(config.get("UNKNOWN_PARAMETER"), None);
        assert_eq!(config.get("EMPTY"), Some(""));
        assert!(config.contains("EMPTY"));
        assert_eq!(config.len(), 14);
    }

    #[test]
    fn from_pairs_expands_templates_and_overrides() {
        let mut config = Config::from_pairs(
            "cernvm-prod.cern.ch",
            [
                ("CVMFS_SERVER_URL", "http://x/cvmfs/@fqrn@"),
                ("B", "1"),
                ("B", "2"),
            ],
        );
        assert_eq!(
            config.get("CVMFS_SERVER_URL"),
            Some("http://x/cvmfs/cernvm-prod.cern.ch")
        );
        assert_eq!(config.get("B"), Some("2"));
        let keys: Vec<&str> = config.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["CVMFS_SERVER_URL", "B"]);
        assert_eq!(config.parameter("B").expect("B").source, Source::Explicit);
        config.set("C", "@org@");
        assert_eq!(config.get("C"), Some("cernvm-prod"));
        assert_eq!(config.remove("B").expect("B").value, "2");
        assert_eq!(config.get("B"), None);
        assert_eq!(config.iter().count(), 2);
    }

    #[test]
    fn search_order_and_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let fqrn = "cernvm-prod.cern.ch";
        write(
            root,
            "default.conf",
            "A=default\nB=default\nONLY_DEFAULT=1\n",
        );
        write(root, "default.d/20-b.conf", "A=d20\nORDER=${ORDER}20\n");
        write(root, "default.d/10-a.conf", "A=d10\nORDER=10\n");
        write(root, "default.d/30-c.txt", "A=ignored\n");
        fs::create_dir_all(root.join("default.d/40-dir.conf")).expect("mkdir");
        write(root, "default.local", "B=local\nORDER=$ORDER,local\n");
        write(
            root,
            "domain.d/cern.ch.conf",
            "C=domain\nORDER=$ORDER,domain\n",
        );
        write(root, "domain.d/cern.ch.local", "ORDER=$ORDER,domainlocal\n");
        write(root, "domain.d/other.ch.conf", "WRONG=1\n");
        write(
            root,
            "config.d/cernvm-prod.cern.ch.conf",
            "C=repo\nORDER=$ORDER,repo\nURL=\"http://h/cvmfs/@fqrn@\"\n",
        );
        write(
            root,
            "config.d/cernvm-prod.cern.ch.local",
            "ORDER=$ORDER,repolocal\n",
        );
        write(root, "config.d/other.cern.ch.conf", "WRONG=1\n");

        let config = load(fqrn, None, root).expect("load");
        assert_eq!(config.get("A"), Some("d20"));
        assert_eq!(config.get("B"), Some("local"));
        assert_eq!(config.get("C"), Some("repo"));
        assert_eq!(
            config.get("ORDER"),
            Some("1020,local,domain,domainlocal,repo,repolocal")
        );
        assert_eq!(
            config.get("URL"),
            Some("http://h/cvmfs/cernvm-prod.cern.ch")
        );
        assert_eq!(config.get("WRONG"), None);
        assert_eq!(config.get("ONLY_DEFAULT"), Some("1"));
        assert_eq!(source_file(&config, "A"), root.join("default.d/20-b.conf"));
        assert_eq!(
            config.parameter("URL").expect("URL").source,
            Source::File {
                path: root.join("config.d/cernvm-prod.cern.ch.conf"),
                line: 3
            }
        );
        // Definition order is kept for iteration.
        let keys: Vec<&str> = config.iter().map(|(k, _)| k).collect();
        assert_eq!(keys[..3], ["A", "B", "ONLY_DEFAULT"]);
    }

    #[test]
    fn missing_root_gives_empty_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = load("x.cern.ch", None, &dir.path().join("nothing")).expect("load");
        assert!(config.is_empty());
        assert_eq!(config.fqrn(), "x.cern.ch");
    }

    #[test]
    fn config_option_replaces_search_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "default.conf", "A=default\nB=default\n");
        write(root, "config.d/r.cern.ch.conf", "A=repo\n");
        let micro = write(
            root,
            "micro/r.cern.ch.conf",
            "CVMFS_HTTP_PROXY=\"auto;DIRECT\"\nA=micro\nX=$CVMFS_FQRN\n",
        );
        let extra = write(root, "micro/extra.conf", "A=extra\n");
        let config = load("r.cern.ch", Some(&micro), root).expect("load");
        assert_eq!(config.get("A"), Some("micro"));
        assert_eq!(config.get("B"), None);
        assert_eq!(config.get("X"), Some("r.cern.ch"));
        assert_eq!(config.get("CVMFS_HTTP_PROXY"), Some("auto;DIRECT"));

        let list = PathBuf::from(format!("{}:{}", micro.display(), extra.display()));
        let config = load("r.cern.ch", Some(&list), root).expect("load");
        assert_eq!(config.get("A"), Some("extra"));
        assert_eq!(source_file(&config, "A"), extra);

        let missing = root.join("micro/missing.conf");
        assert!(matches!(
            load("r.cern.ch", Some(&missing), root),
            Err(ConfigError::MissingFile { .. })
        ));
    }

    #[test]
    fn config_repository_variants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("etc");
        let mnt = dir.path().join("cvmfs");
        write(
            &root,
            "default.conf",
            &format!(
                "CVMFS_MOUNT_DIR={}\nCVMFS_CONFIG_REPOSITORY=cvmfs-config.cern.ch\n",
                mnt.display()
            ),
        );
        let cr = "cvmfs-config.cern.ch/etc/cvmfs";
        write(
            &mnt,
            &format!("{cr}/default.conf"),
            "A=cr\nB=cr\nD=cr\nE=cr\n",
        );
        write(
            &root,
            "default.local",
            "B=local\nCVMFS_CONFIG_REPOSITORY=other.cern.ch\n",
        );
        write(
            &mnt,
            &format!("{cr}/domain.d/cern.ch.conf"),
            "C=crdomain\nD=crdomain\n",
        );
        write(&root, "domain.d/cern.ch.conf", "C=domain\n");
        write(
            &mnt,
            &format!("{cr}/config.d/atlas.cern.ch.conf"),
            "E=crrepo\nF=crrepo\n",
        );
        write(&root, "config.d/atlas.cern.ch.conf", "F=repo\n");

        let config = load("atlas.cern.ch", None, &root).expect("load");
        assert_eq!(config.get("A"), Some("cr"));
        assert_eq!(config.get("B"), Some("local"));
        assert_eq!(config.get("C"), Some("domain"));
        assert_eq!(config.get("D"), Some("crdomain"));
        assert_eq!(config.get("E"), Some("crrepo"));
        assert_eq!(config.get("F"), Some("repo"));
        // Protected after default.d.
        assert_eq!(
            config.get("CVMFS_CONFIG_REPOSITORY"),
            Some("cvmfs-config.cern.ch")
        );

        // The config repository itself does not read its own tree.
        let config = load("cvmfs-config.cern.ch", None, &root).expect("load");
        assert_eq!(config.get("A"), None);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let path = write(
            root,
            "config.d/r.cern.ch.conf",
            "# comment\nA=1\nB=\"open\nC=3\n",
        );
        let err = load("r.cern.ch", None, root).expect_err("syntax error");
        match &err {
            ConfigError::Syntax { path: p, line, .. } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("r.cern.ch.conf"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("double quote"), "{message}");

        fs::write(root.join("config.d/r.cern.ch.conf"), b"A=1\nB=\xff\n").expect("write");
        match load("r.cern.ch", None, root) {
            Err(ConfigError::Syntax { line: 2, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn value_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "default.conf", "\nCVMFS_NFILES=lots\n");
        let config = load("r.cern.ch", None, root).expect("load");
        let message = config.get_u64("CVMFS_NFILES").expect_err("bad").to_string();
        assert!(message.contains("default.conf, line 2"), "{message}");
        assert!(message.contains("CVMFS_NFILES"), "{message}");
    }

    #[test]
    fn crlf_and_unknown_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "default.conf",
            "A=1\r\nif [ -n \"$X\" ]; then\n  B=2\nfi\n. other\nC='x y'   # trailing\r\n",
        );
        let config = load("r.cern.ch", None, root).expect("load");
        assert_eq!(config.get("A"), Some("1"));
        assert_eq!(config.get("B"), Some("2"));
        assert_eq!(config.get("C"), Some("x y"));
        assert_eq!(config.len(), 3);
    }

    #[test]
    fn environment_fallback_while_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            root,
            "default.conf",
            "A=$ROOT_RW/cache\nB=${HOME_X:-none}\n",
        );
        let env = |name: &str| (name == "ROOT_RW").then(|| "/root.rw".to_string());
        let config = Config::load_with_env("r.cern.ch", None, root, &env).expect("load");
        assert_eq!(config.get("A"), Some("/root.rw/cache"));
        assert_eq!(config.get("B"), Some("none"));
    }

    #[test]
    fn invalid_fqrn() {
        let dir = tempfile::tempdir().expect("tempdir");
        for fqrn in ["", "../x", "a/b", ".hidden"] {
            assert!(matches!(
                load(fqrn, None, dir.path()),
                Err(ConfigError::InvalidFqrn(_))
            ));
        }
        // A name without a dot has no domain files but is accepted.
        assert!(load("local", None, dir.path()).is_ok());
    }

    #[test]
    fn dump_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let path = write(
            root,
            "config.d/cernvm-prod.cern.ch.conf",
            "CVMFS_HTTP_PROXY=\"auto;DIRECT\"\nCVMFS_CACHE_BASE=/root.rw/cache\n\
             CVMFS_SERVER_URL=\"http://s1/cvmfs/@fqrn@\"\nQ=\"it's\"\nE=\nP=a,b:c.d_e-f/g\n",
        );
        let config = load("cernvm-prod.cern.ch", None, root).expect("load");
        let from = format!("    # from {}\n", path.display());
        let expected = [
            "# CernVM-FS parameters:\n".to_string(),
            format!("CVMFS_CACHE_BASE=/root.rw/cache{from}"),
            format!("CVMFS_HTTP_PROXY='auto;DIRECT'{from}"),
            format!("CVMFS_SERVER_URL=http://s1/cvmfs/cernvm-prod.cern.ch{from}"),
            format!("E={from}"),
            format!("P=a,b:c.d_e-f/g{from}"),
            format!("Q='it'\\''s'{from}"),
        ]
        .concat();
        assert_eq!(config.dump(), expected);

        let explicit = Config::from_pairs("r.cern.ch", [("X", "a b")]);
        assert_eq!(
            explicit.dump(),
            "# CernVM-FS parameters:\nX='a b'    # from (explicit)\n"
        );
    }

    #[test]
    fn dump_round_trips_through_parser() {
        let config = Config::from_pairs(
            "r.cern.ch",
            [
                ("A", "it's a \"test\" $HOME `x` \\ ;|&"),
                ("B", "plain"),
                ("C", ""),
            ],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "dump.conf", &config.dump());
        let parsed = load("r.cern.ch", Some(&path), dir.path()).expect("reparse");
        for key in ["A", "B", "C"] {
            assert_eq!(parsed.get(key), config.get(key), "{key}");
        }
    }

    #[test]
    fn environment_overlays_parameters() {
        let config = Config::from_pairs("r.cern.ch", [("PATH", "overridden"), ("CVMFS_ARCH", "x")]);
        let env = config.environment();
        assert_eq!(env.get("PATH").map(String::as_str), Some("overridden"));
        assert_eq!(env.get("CVMFS_ARCH").map(String::as_str), Some("x"));
    }

    #[test]
    fn parse_bool_values() {
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("oFf"), Some(false));
        assert_eq!(parse_bool("2"), None);
        assert_eq!(parse_bool(""), None);
    }
}
