//! The global configuration `~/.cernvm-launch.conf` and the data directory it names
//! (`launchHomeFolder`, default `~/.cernvm`) with `cache/` (downloaded images), `run/` (one
//! directory per machine) and `config/` (spec §17.2).

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ConfigMap};

/// Name of the global configuration file in the home directory.
pub const GLOBAL_CONFIG: &str = ".cernvm-launch.conf";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("HOME is not set; cannot find ~/{GLOBAL_CONFIG}")]
    NoHome,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create {path}: {cause}")]
    Create { path: PathBuf, cause: io::Error },
}

/// The global configuration and the data directory.
#[derive(Debug, Clone)]
pub struct Home {
    pub global: ConfigMap,
    pub global_path: PathBuf,
    pub data_dir: PathBuf,
}

impl Home {
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Reads `~/.cernvm-launch.conf`; creates it first if it is missing (asking for the data
    /// directory on a terminal, taking the default otherwise).
    pub fn open() -> Result<Home, HomeError> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or(HomeError::NoHome)?;
        Self::open_in(&home, io::stdin().is_terminal())
    }

    /// [`Home::open`] for the home directory `home`.
    pub fn open_in(home: &Path, interactive: bool) -> Result<Home, HomeError> {
        let global_path = home.join(GLOBAL_CONFIG);
        if !global_path.exists() {
            let default_dir = home.join(".cernvm");
            let data_dir = if interactive {
                ask_data_dir(&default_dir)
            } else {
                default_dir
            };
            let mut map = ConfigMap::new();
            map.set("launchHomeFolder", data_dir.display().to_string());
            map.set("sharedFolder", home.display().to_string());
            for key in ["cpus", "memory", "disk", "apiPort", "cernvmVersion"] {
                if let Some(v) = ConfigMap::defaults().get(key) {
                    map.set(key, v);
                }
            }
            let text = format!(
                "# cernvm-launch global configuration (command line > machine config > this file > defaults)\n{map}"
            );
            fs::write(&global_path, text).map_err(|source| HomeError::Create {
                path: global_path.clone(),
                cause: source,
            })?;
            eprintln!(
                "cernvm-launch: created {} (data directory {})",
                global_path.display(),
                data_dir.display()
            );
        }
        let global = ConfigMap::load(&global_path)?;
        let data_dir = global
            .get("launchHomeFolder")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cernvm"));
        for d in ["cache", "run", "config"] {
            let p = data_dir.join(d);
            fs::create_dir_all(&p).map_err(|source| HomeError::Create {
                path: p,
                cause: source,
            })?;
        }
        Ok(Home {
            global,
            global_path,
            data_dir,
        })
    }
}

fn ask_data_dir(default: &Path) -> PathBuf {
    eprint!(
        "cernvm-launch: first run. Directory for images and machines [{}]: ",
        default.display()
    );
    let _ = io::stderr().flush();
    let mut answer = String::new();
    let _ = io::stdin().lock().read_line(&mut answer);
    let answer = answer.trim();
    if answer.is_empty() {
        default.to_path_buf()
    } else {
        PathBuf::from(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_run_creates_the_global_config() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open_in(dir.path(), false).unwrap();
        assert_eq!(home.data_dir, dir.path().join(".cernvm"));
        assert!(home.run_dir().is_dir() && home.cache_dir().is_dir());
        let text = fs::read_to_string(dir.path().join(GLOBAL_CONFIG)).unwrap();
        assert!(text.contains(&format!("sharedFolder={}", dir.path().display())));
        assert_eq!(home.global.get("memory"), Some("2048"));
        // An existing file is read as it is.
        fs::write(
            dir.path().join(GLOBAL_CONFIG),
            format!("launchHomeFolder={}/data\ncpus=3\n", dir.path().display()),
        )
        .unwrap();
        let home = Home::open_in(dir.path(), false).unwrap();
        assert_eq!(home.data_dir, dir.path().join("data"));
        assert_eq!(home.global.get("cpus"), Some("3"));
    }
}
