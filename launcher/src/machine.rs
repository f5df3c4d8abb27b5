//! Machines on disk: one directory `run/<name>/` per machine holding everything `create` made
//! for it, and a lock file `run/<name>.lock` that serialises operations on the machine.
//!
//! Files of a machine (all inside its directory, so `destroy` removes one directory and its
//! lock file): `machine.conf` (resolved parameters, the original's file format), `user-data`,
//! `context.iso`, `disk.qcow2`, `console.log`, `console.sock`, `qmp.sock`, `qemu.pid`,
//! `qemu.log` (QEMU's stderr), `runtime.conf` (forwarded port, accelerator), `saved-state`
//! (after `stop`), `known_hosts`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use path_error::{io_err, PathError};

use crate::config::ConfigMap;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("invalid machine name {0:?}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("a machine named {0:?} already exists; choose another --name or destroy it first")]
    Exists(String),
    #[error("no machine named {0:?} (see cernvm-launch list)")]
    NotFound(String),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// Safe names: they become a directory name, a QEMU `-name`, a 9p tag and a libvirt domain.
pub fn validate_name(name: &str) -> Result<(), MachineError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MachineError::InvalidName(name.to_string()))
    }
}

/// The files of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePaths {
    pub name: String,
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub config: PathBuf,
    pub user_data: PathBuf,
    pub context_iso: PathBuf,
    pub disk: PathBuf,
    pub console_log: PathBuf,
    pub console_socket: PathBuf,
    pub qmp_socket: PathBuf,
    pub pid_file: PathBuf,
    pub qemu_log: PathBuf,
    pub runtime: PathBuf,
    pub saved_state: PathBuf,
    pub known_hosts: PathBuf,
    pub domain_xml: PathBuf,
}

impl MachinePaths {
    pub fn new(run_dir: &Path, name: &str) -> Result<Self, MachineError> {
        validate_name(name)?;
        let dir = run_dir.join(name);
        let f = |n: &str| dir.join(n);
        Ok(MachinePaths {
            name: name.to_string(),
            lock: run_dir.join(format!("{name}.lock")),
            config: f("machine.conf"),
            user_data: f("user-data"),
            context_iso: f("context.iso"),
            disk: f("disk.qcow2"),
            console_log: f("console.log"),
            console_socket: f("console.sock"),
            qmp_socket: f("qmp.sock"),
            pid_file: f("qemu.pid"),
            qemu_log: f("qemu.log"),
            runtime: f("runtime.conf"),
            saved_state: f("saved-state"),
            known_hosts: f("known_hosts"),
            domain_xml: f("domain.xml"),
            dir,
        })
    }

    pub fn exists(&self) -> bool {
        self.config.is_file()
    }

    pub fn load_config(&self) -> Result<ConfigMap, MachineError> {
        if !self.exists() {
            return Err(MachineError::NotFound(self.name.clone()));
        }
        let text = fs::read_to_string(&self.config).map_err(io_err("cannot read", &self.config))?;
        Ok(ConfigMap::parse(&text))
    }

    pub fn load_runtime(&self) -> ConfigMap {
        fs::read_to_string(&self.runtime)
            .map(|t| ConfigMap::parse(&t))
            .unwrap_or_default()
    }

    pub fn save_runtime(&self, map: &ConfigMap) -> Result<(), MachineError> {
        write_atomic(&self.runtime, map.to_string().as_bytes())
    }
}

/// Writes `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MachineError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| io_err("cannot replace", path)(e).into())
}

/// An exclusive lock on one machine, released on drop.
#[derive(Debug)]
pub struct MachineLock {
    file: File,
    path: PathBuf,
}

impl MachineLock {
    /// Waits for the lock of machine `paths`. The lock file may be removed by `destroy` while
    /// we wait; then the lock is taken again on the new file.
    pub fn acquire(paths: &MachinePaths) -> Result<Self, MachineError> {
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&paths.lock)
                .map_err(io_err("cannot open", &paths.lock))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io_err("cannot lock", &paths.lock)(io::Error::last_os_error()).into());
            }
            let held = file
                .metadata()
                .map_err(io_err("cannot stat", &paths.lock))?;
            match fs::metadata(&paths.lock) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(MachineLock {
                        file,
                        path: paths.lock.clone(),
                    })
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file (while still holding it): the machine is gone.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Every machine directory under `run_dir` with a `machine.conf`, sorted by name.
pub fn list(run_dir: &Path) -> Result<Vec<MachinePaths>, MachineError> {
    let entries = match fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", run_dir)(e).into()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", run_dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Ok(paths) = MachinePaths::new(run_dir, &name) {
            if paths.exists() {
                out.push(paths);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "CernVM", "vm-1_test", &"x".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "_x",
            "a.b",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(MachinePaths::new(Path::new("/r"), "../etc").is_err());
    }

    #[test]
    fn locks_exclude_each_other_and_survive_removal() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MachinePaths::new(dir.path(), "vm").unwrap();
        let lock = MachineLock::acquire(&paths).unwrap();
        let p2 = paths.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let l = MachineLock::acquire(&p2).unwrap();
            tx.send(()).unwrap();
            l
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            rx.try_recv().is_err(),
            "second lock taken while the first is held"
        );
        lock.remove();
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        let l = waiter.join().unwrap();
        // The waiter holds a lock on a file that exists.
        assert!(paths.lock.is_file());
        l.remove();
        assert!(!paths.lock.exists());
    }

    #[test]
    fn list_finds_machines_only() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b", "a"] {
            let p = MachinePaths::new(dir.path(), n).unwrap();
            fs::create_dir(&p.dir).unwrap();
            fs::write(&p.config, "name=x\n").unwrap();
        }
        fs::create_dir(dir.path().join("half")).unwrap();
        fs::write(dir.path().join("a.lock"), "").unwrap();
        let names: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
