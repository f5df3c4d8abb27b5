//! The original CernVM Launch configuration files (spec §17.2) and the resolved machine
//! parameters.
//!
//! File format: `key=value` per line; lines starting with `#` and lines without `=` are ignored;
//! key and value are trimmed; one pair of matching surrounding quotes is removed from the value;
//! entries with an empty key or value are ignored; later duplicates override earlier ones.
//!
//! Precedence: command line > machine config file > global config > built-in defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Built-in defaults of the original (spec §17.2) plus this launcher's own keys.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("apiPort", "22"),
    ("cernvmVersion", "latest"),
    ("cpus", "1"),
    ("memory", "2048"),
    ("disk", "20000"),
    ("executionCap", "100"),
    ("flags", "49"),
    ("cernvmFlavor", "prod"),
    ("backend", "qemu"),
    ("releaseUrl", "http://cernvm.cern.ch/releases"),
];

/// Flag bits of spec §17.4 that this launcher acts on.
pub mod flags {
    pub const HEADFUL: u32 = 16;
    pub const DEPLOYMENT_ISO_LOCAL: u32 = 1024;
}

/// Errors reading configuration files (exit code 2) or interpreting values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Unreadable { path: PathBuf, cause: io::Error },
    #[error("{key}={value:?} is invalid: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Key/value pairs of one configuration layer, in the original's file format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMap {
    entries: BTreeMap<String, String>,
}

/// Removes one pair of matching surrounding `'…'` or `"…"`.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

impl ConfigMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Self {
        let mut map = ConfigMap::new();
        for line in text.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if key.is_empty() || value.is_empty() {
                continue;
            }
            map.entries.insert(key.to_string(), value.to_string());
        }
        map
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The built-in defaults.
    pub fn defaults() -> Self {
        let mut map = ConfigMap::new();
        for (k, v) in DEFAULTS {
            map.set(k, *v);
        }
        map
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.entries.insert(key.to_string(), value.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    /// `other`'s entries override this map's.
    pub fn overlay(&mut self, other: &ConfigMap) {
        for (k, v) in &other.entries {
            self.entries.insert(k.clone(), v.clone());
        }
    }

    /// Layers in increasing precedence: the first is overridden by all later ones.
    pub fn merged(layers: &[&ConfigMap]) -> Self {
        let mut out = ConfigMap::new();
        for layer in layers {
            out.overlay(layer);
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a numeric value.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ConfigError::Invalid {
                    key: key.to_string(),
                    value: v.to_string(),
                    reason: "not a non-negative integer".into(),
                })
            })
            .transpose()
    }
}

impl fmt::Display for ConfigMap {
    /// The file format, one sorted `key=value` line per entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.entries {
            writeln!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Which hypervisor interface runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Qemu,
    Libvirt,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Libvirt => "libvirt",
        }
    }
}

/// The resolved, validated parameters of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineParams {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub disk_mb: u64,
    pub api_port: u16,
    pub execution_cap: u32,
    pub flags: u32,
    pub cernvm_version: String,
    pub cernvm_flavor: String,
    pub iso_path: Option<PathBuf>,
    pub shared_folder: Option<PathBuf>,
    pub backend: Backend,
    pub release_url: String,
    /// Directory of hashed CA certificates that downloaded images must be signed by.
    pub ca_path: Option<PathBuf>,
    /// Private key `ssh` uses for this machine (this launcher's extension).
    pub ssh_identity: Option<PathBuf>,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks a path given for `key` is canonical: absolute, existing and normalised (spec §17.2).
pub fn canonical_path(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let path = Path::new(value);
    match std::fs::canonicalize(path) {
        Ok(c) if c.as_os_str() == path.as_os_str() => Ok(c),
        Ok(c) => Err(invalid(
            key,
            value,
            format!("the path must be canonical; use {}", c.display()),
        )),
        Err(e) => Err(invalid(key, value, format!("{e}"))),
    }
}

impl MachineParams {
    /// Interprets a merged configuration.
    pub fn from_map(map: &ConfigMap) -> Result<Self, ConfigError> {
        let num = |key: &str, min: u64, max: u64| -> Result<u64, ConfigError> {
            let v = map
                .number(key)?
                .ok_or_else(|| invalid(key, "", "missing"))?;
            if v < min || v > max {
                return Err(invalid(
                    key,
                    &v.to_string(),
                    format!("must be between {min} and {max}"),
                ));
            }
            Ok(v)
        };
        let name = map.get("name").unwrap_or("").to_string();
        let backend = match map.get("backend").unwrap_or("qemu") {
            "qemu" => Backend::Qemu,
            "libvirt" => Backend::Libvirt,
            other => return Err(invalid("backend", other, "use qemu or libvirt")),
        };
        let shared_folder = map
            .get("sharedFolder")
            .map(|v| canonical_path("sharedFolder", v))
            .transpose()?;
        if let Some(dir) = &shared_folder {
            if !dir.is_dir() {
                return Err(invalid(
                    "sharedFolder",
                    &dir.display().to_string(),
                    "not a directory",
                ));
            }
        }
        let flags = num("flags", 0, u32::MAX as u64)? as u32;
        let iso_path = map.get("isoPath").map(PathBuf::from);
        if flags & flags::DEPLOYMENT_ISO_LOCAL != 0 && iso_path.is_none() {
            return Err(invalid(
                "flags",
                &flags.to_string(),
                "flag 1024 (local ISO) needs isoPath",
            ));
        }
        Ok(MachineParams {
            name,
            cpus: num("cpus", 1, 256)? as u32,
            memory_mb: num("memory", 128, 1 << 22)? as u32,
            disk_mb: num("disk", 0, 1 << 24)?,
            api_port: num("apiPort", 1, 65535)? as u16,
            execution_cap: num("executionCap", 1, 100)? as u32,
            flags,
            cernvm_version: map.get("cernvmVersion").unwrap_or("latest").to_string(),
            cernvm_flavor: map.get("cernvmFlavor").unwrap_or("prod").to_string(),
            iso_path,
            shared_folder,
            backend,
            release_url: map
                .get("releaseUrl")
                .unwrap_or("http://cernvm.cern.ch/releases")
                .trim_end_matches('/')
                .to_string(),
            ca_path: map.get("caPath").map(PathBuf::from),
            ssh_identity: map.get("sshIdentity").map(PathBuf::from),
        })
    }

    pub fn headful(&self) -> bool {
        self.flags & flags::HEADFUL != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format_quirks() {
        let map = ConfigMap::parse(
            "# comment=ignored\n\
             cpus = 2 \n\
             no equals sign\n\
             memory=\"4096\"\n\
             disk='1000'\n\
             quoted=\"half\n\
             =novalue\n\
             empty=\n\
             blank=  \"\"\n\
             cpus=3\n\
             \x20 #indented=comment\n\
             url=http://h/a=b\n",
        );
        assert_eq!(map.get("cpus"), Some("3"), "later duplicates win");
        assert_eq!(map.get("memory"), Some("4096"));
        assert_eq!(map.get("disk"), Some("1000"));
        assert_eq!(map.get("quoted"), Some("\"half"), "unmatched quote kept");
        assert_eq!(map.get("empty"), None);
        assert_eq!(
            map.get("blank"),
            None,
            "a value that is empty once unquoted"
        );
        assert_eq!(map.get("comment"), None);
        assert_eq!(map.get("#indented"), None);
        assert_eq!(map.get("url"), Some("http://h/a=b"), "split at the first =");
        assert_eq!(map.iter().count(), 5);
    }

    #[test]
    fn precedence_cli_machine_global_defaults() {
        let defaults = ConfigMap::defaults();
        let global = ConfigMap::parse("cpus=2\nmemory=1024\ndisk=5000\n");
        let machine = ConfigMap::parse("cpus=3\nmemory=1536\n");
        let mut cli = ConfigMap::new();
        cli.set("cpus", "4");
        let merged = ConfigMap::merged(&[&defaults, &global, &machine, &cli]);
        let p = MachineParams::from_map(&merged).unwrap();
        assert_eq!(p.cpus, 4);
        assert_eq!(p.memory_mb, 1536);
        assert_eq!(p.disk_mb, 5000);
        assert_eq!(p.api_port, 22);
        assert_eq!(p.cernvm_version, "latest");
        assert_eq!(p.flags, 49);
        assert!(p.headful());
        assert_eq!(p.backend, Backend::Qemu);
    }

    #[test]
    fn invalid_values_are_named() {
        let mut map = ConfigMap::defaults();
        map.set("cpus", "many");
        let err = MachineParams::from_map(&map).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cpus=\"many\" is invalid: not a non-negative integer"
        );
        let mut map = ConfigMap::defaults();
        map.set("backend", "vbox");
        assert!(MachineParams::from_map(&map)
            .unwrap_err()
            .to_string()
            .contains("use qemu or libvirt"));
        let mut map = ConfigMap::defaults();
        map.set("flags", "1073");
        assert!(MachineParams::from_map(&map)
            .unwrap_err()
            .to_string()
            .contains("needs isoPath"));
    }

    #[test]
    fn shared_folder_must_be_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        let mut map = ConfigMap::defaults();
        map.set("sharedFolder", canonical.to_str().unwrap());
        let p = MachineParams::from_map(&map).unwrap();
        assert_eq!(p.shared_folder.as_deref(), Some(canonical.as_path()));
        let odd = format!("{}/./", canonical.display());
        map.set("sharedFolder", odd.clone());
        let err = MachineParams::from_map(&map).unwrap_err().to_string();
        assert!(err.contains("must be canonical"), "{err}");
        assert!(err.contains(&canonical.display().to_string()), "{err}");
        map.set("sharedFolder", "relative/dir");
        assert!(MachineParams::from_map(&map).is_err());
    }

    #[test]
    fn display_round_trips() {
        let map = ConfigMap::parse("b=2\na=1\n");
        assert_eq!(map.to_string(), "a=1\nb=2\n");
        assert_eq!(ConfigMap::parse(&map.to_string()), map);
    }
}
