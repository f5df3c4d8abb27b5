//! Instance definitions stored as JSON under a state directory.
//!
//! Layout: `<state dir>/<name>/instance.json` plus the instance's files next to it (`disk.qcow2`,
//! `console.log`, `qmp.sock`, `qemu.pid`), so destroying an instance removes one directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory name under `$XDG_DATA_HOME` or `~/.local/share`.
pub const APP_DIR: &str = "cernvm-launch";
const DEFINITION: &str = "instance.json";

/// Errors of the instance store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid instance name {0:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("instance {0:?} already exists")]
    Exists(String),
    #[error("no instance named {0:?}")]
    NotFound(String),
    #[error("neither XDG_DATA_HOME nor HOME is set; pass --state-dir")]
    NoStateDir,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: malformed instance definition: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The definition of one virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_size_gib: u32,
    /// Boot image (µCernVM ISO), absolute.
    pub image: PathBuf,
    /// User data for contextualization, absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<PathBuf>,
}

/// Checks an instance name: it becomes a directory name and the QEMU `-name`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

/// The default state directory from the values of `XDG_DATA_HOME` and `HOME`.
pub fn default_state_dir_from(
    xdg_data_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, StoreError> {
    // The XDG base directory spec says relative values are to be ignored.
    if let Some(xdg) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(xdg.join(APP_DIR));
    }
    match home.filter(|p| !p.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".local/share").join(APP_DIR)),
        None => Err(StoreError::NoStateDir),
    }
}

/// `$XDG_DATA_HOME/cernvm-launch`, else `~/.local/share/cernvm-launch`.
pub fn default_state_dir() -> Result<PathBuf, StoreError> {
    let xdg = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    default_state_dir_from(xdg.as_deref(), home.as_deref())
}

/// The files of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    pub dir: PathBuf,
    pub definition: PathBuf,
    pub disk: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    pub pid_file: PathBuf,
}

/// Instance definitions under one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root` (created on the first `create`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The paths of instance `name` (whether or not it exists).
    pub fn paths(&self, name: &str) -> Result<InstancePaths, StoreError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        Ok(InstancePaths {
            definition: dir.join(DEFINITION),
            disk: dir.join("disk.qcow2"),
            console_log: dir.join("console.log"),
            qmp_socket: dir.join("qmp.sock"),
            pid_file: dir.join("qemu.pid"),
            dir,
        })
    }

    /// Records a new instance; fails if the name is taken.
    pub fn create(&self, instance: &Instance) -> Result<InstancePaths, StoreError> {
        let paths = self.paths(&instance.name)?;
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        match fs::create_dir(&paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists(instance.name.clone()))
            }
            Err(e) => return Err(io_err(&paths.dir)(e)),
        }
        if let Err(e) = self.save(instance) {
            let _ = fs::remove_dir_all(&paths.dir);
            return Err(e);
        }
        Ok(paths)
    }

    /// Writes the definition of an existing instance (atomically, via a temporary file).
    pub fn save(&self, instance: &Instance) -> Result<(), StoreError> {
        let paths = self.paths(&instance.name)?;
        let json = serde_json::to_vec_pretty(instance).map_err(|source| StoreError::Json {
            path: paths.definition.clone(),
            source,
        })?;
        let tmp = paths.dir.join(format!("{DEFINITION}.tmp"));
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &paths.definition).map_err(io_err(&paths.definition))
    }

    /// Reads the definition of `name`.
    pub fn load(&self, name: &str) -> Result<Instance, StoreError> {
        let paths = self.paths(name)?;
        let bytes = match fs::read(&paths.definition) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err(&paths.definition)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: paths.definition,
            source,
        })
    }

    /// All instances, sorted by name. Directories without a definition are skipped.
    pub fn list(&self) -> Result<Vec<Instance>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name(&name).is_err() || !entry.path().join(DEFINITION).is_file() {
                continue;
            }
            out.push(self.load(&name)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the instance and all its files (disk, logs).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let paths = self.paths(name)?;
        if !paths.definition.is_file() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        fs::remove_dir_all(&paths.dir).map_err(io_err(&paths.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str) -> Instance {
        Instance {
            name: name.to_string(),
            memory_mib: 2048,
            cpus: 2,
            disk_size_gib: 20,
            image: PathBuf::from("/images/ucernvm-prod.iso"),
            user_data: Some(PathBuf::from("/ctx/user-data")),
        }
    }

    #[test]
    fn create_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        assert!(store.list().unwrap().is_empty());
        let paths = store.create(&instance("web-1")).unwrap();
        assert_eq!(paths.dir, dir.path().join("state/web-1"));
        assert!(paths.definition.is_file());
        assert_eq!(paths.disk, dir.path().join("state/web-1/disk.qcow2"));
        let mut second = instance("a.b_c");
        second.user_data = None;
        store.create(&second).unwrap();

        assert_eq!(store.load("web-1").unwrap(), instance("web-1"));
        let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["a.b_c", "web-1"]);

        // No "user_data" key when there is none.
        let json = fs::read_to_string(store.paths("a.b_c").unwrap().definition).unwrap();
        assert!(!json.contains("user_data"), "{json}");

        assert!(matches!(
            store.create(&instance("web-1")),
            Err(StoreError::Exists(_))
        ));

        fs::write(&paths.disk, "disk").unwrap();
        store.remove("web-1").unwrap();
        assert!(!paths.dir.exists());
        assert!(matches!(store.load("web-1"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.remove("web-1"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn malformed_definitions_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let paths = store.create(&instance("x")).unwrap();
        fs::write(&paths.definition, "{ not json").unwrap();
        let err = store.load("x").unwrap_err();
        assert!(
            err.to_string().contains("malformed instance definition"),
            "{err}"
        );
        // A malformed definition is an error for list too, not silently skipped.
        assert!(store.list().is_err());
        fs::remove_dir_all(&paths.dir).unwrap();
        // Directories without a definition are ignored.
        fs::create_dir(dir.path().join("not-an-instance")).unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "CernVM", "vm-1.test_2", &"x".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let store = Store::new("/state");
        assert!(store.paths("../etc").is_err());
    }

    #[test]
    fn default_state_dir_rules() {
        assert_eq!(
            default_state_dir_from(Some(Path::new("/xdg")), Some(Path::new("/home/u"))).unwrap(),
            PathBuf::from("/xdg/cernvm-launch")
        );
        assert_eq!(
            default_state_dir_from(Some(Path::new("relative")), Some(Path::new("/home/u")))
                .unwrap(),
            PathBuf::from("/home/u/.local/share/cernvm-launch")
        );
        assert_eq!(
            default_state_dir_from(None, Some(Path::new("/home/u"))).unwrap(),
            PathBuf::from("/home/u/.local/share/cernvm-launch")
        );
        assert!(matches!(
            default_state_dir_from(None, None),
            Err(StoreError::NoStateDir)
        ));
    }
}
