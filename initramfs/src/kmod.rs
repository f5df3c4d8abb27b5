//! Kernel modules for the initramfs: which files a set of module names needs, with their
//! dependencies resolved from the kernel's `modules.dep` (as written by `depmod`).
//!
//! `modules.dep` has one line per module: `<path>: <dependency path> ...`, paths relative to
//! `/lib/modules/<kernel release>`, dependencies already transitive. `modules.builtin` lists the
//! paths of modules compiled into the kernel image; asking for one of those needs no file.
//! Module names compare with `-` and `_` treated alike, as `modprobe` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors while reading a kernel's module tree.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}:{line}: not a modules.dep line (expected '<module path>: <dependencies>')")]
    Syntax { path: PathBuf, line: usize },
    #[error("{path}: the module directory name is not a kernel release (not UTF-8)")]
    BadRelease { path: PathBuf },
    #[error("{module} depends on {dependency}, which modules.dep does not list")]
    DanglingDependency { module: String, dependency: String },
}

/// How a requested module is provided by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provision {
    /// Compiled into the kernel image: nothing to ship.
    BuiltIn,
    /// A loadable module; these files (the module first, then what it needs) are shipped.
    Files(Vec<String>),
    /// Neither built in nor a module of this kernel.
    Missing,
}

/// The module tree of one kernel: `<root>/lib/modules/<release>`.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    dir: PathBuf,
    release: String,
    /// Module path → its dependencies, in `modules.dep` order.
    deps: BTreeMap<String, Vec<String>>,
    /// Normalised module name → module path.
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// `kernel/fs/fuse/fuse.ko.xz` → `fuse`; `-` becomes `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize_name(stem)
}

/// Module names are compared with `-` and `_` treated as the same character.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

fn read(path: &Path) -> Result<String, KmodError> {
    fs::read_to_string(path).map_err(|error| KmodError::Io {
        path: path.to_path_buf(),
        error,
    })
}

impl ModuleTree {
    /// Reads `modules.dep` and (if present) `modules.builtin` of the kernel whose modules are in
    /// `dir` (a `lib/modules/<release>` directory).
    pub fn open(dir: &Path) -> Result<Self, KmodError> {
        let release = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| KmodError::BadRelease {
                path: dir.to_path_buf(),
            })?
            .to_string();
        let dep_path = dir.join("modules.dep");
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (index, line) in read(&dep_path)?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, rest) = line.split_once(':').ok_or_else(|| KmodError::Syntax {
                path: dep_path.clone(),
                line: index + 1,
            })?;
            let module = module.trim();
            if module.is_empty() || module.contains(char::is_whitespace) {
                return Err(KmodError::Syntax {
                    path: dep_path.clone(),
                    line: index + 1,
                });
            }
            let list: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            by_name.insert(module_name(module), module.to_string());
            deps.insert(module.to_string(), list);
        }
        let builtin_path = dir.join("modules.builtin");
        let builtin = if builtin_path.exists() {
            read(&builtin_path)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| module_name(l.trim()))
                .collect()
        } else {
            BTreeSet::new()
        };
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            release,
            deps,
            by_name,
            builtin,
        })
    }

    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The directory the tree was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the kernel provides module `name`.
    pub fn provision(&self, name: &str) -> Result<Provision, KmodError> {
        let name = normalize_name(name);
        if let Some(path) = self.by_name.get(&name) {
            let mut files = vec![path.clone()];
            for dep in &self.deps[path] {
                if !self.deps.contains_key(dep) {
                    return Err(KmodError::DanglingDependency {
                        module: path.clone(),
                        dependency: dep.clone(),
                    });
                }
                files.push(dep.clone());
            }
            Ok(Provision::Files(files))
        } else if self.builtin.contains(&name) {
            Ok(Provision::BuiltIn)
        } else {
            Ok(Provision::Missing)
        }
    }

    /// The `modules.dep` text restricted to `modules` (which must be closed under dependencies,
    /// as the result of [`provision`](Self::provision) is), sorted by module path.
    pub fn modules_dep_for(&self, modules: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for (module, deps) in &self.deps {
            if modules.contains(module) {
                out.push_str(module);
                out.push(':');
                for d in deps {
                    out.push(' ');
                    out.push_str(d);
                }
                out.push('\n');
            }
        }
        out
    }
}

/// The lines of a `modules.alias` text (`alias <pattern> <module>`) that name one of the module
/// files `modules`, in their order: what the init matches the devices' modaliases against.
pub fn modules_alias_for(alias_text: &str, modules: &BTreeSet<String>) -> String {
    let names: BTreeSet<String> = modules.iter().map(|m| module_name(m)).collect();
    let mut out = String::new();
    for line in alias_text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("alias"), Some(_), Some(module), None) =
            (words.next(), words.next(), words.next(), words.next())
        {
            if names.contains(&normalize_name(module)) {
                out.push_str(line.trim());
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_restricted_to_the_shipped_modules() {
        let text = "# Aliases extracted from modules themselves.\n\
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net\n\
alias virtio:d00000001v* virtio_net\n\
alias fs-ext4 ext4\n\
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n\
alias broken\n";
        let shipped: BTreeSet<String> = ["kernel/drivers/net/virtio_net.ko".to_string()].into();
        assert_eq!(
            modules_alias_for(text, &shipped),
            "alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net\nalias virtio:d00000001v* virtio_net\n"
        );
    }

    fn tree(dep: &str, builtin: &str) -> (tempfile::TempDir, ModuleTree) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("6.1.0-test");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("modules.dep"), dep).unwrap();
        fs::write(dir.join("modules.builtin"), builtin).unwrap();
        let t = ModuleTree::open(&dir).unwrap();
        (tmp, t)
    }

    const DEP: &str = "kernel/drivers/scsi/scsi_common.ko:\n\
        kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
        kernel/drivers/cdrom/cdrom.ko:\n\
        kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/cdrom/cdrom.ko\n\
        kernel/net/9p/9pnet-virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n\
        kernel/net/9p/9pnet.ko.xz:\n";

    #[test]
    fn resolves_dependencies_builtins_and_missing_modules() {
        let (_tmp, t) = tree(DEP, "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n");
        assert_eq!(t.release(), "6.1.0-test");
        assert_eq!(
            t.provision("sr_mod").unwrap(),
            Provision::Files(vec![
                "kernel/drivers/scsi/sr_mod.ko".into(),
                "kernel/drivers/scsi/scsi_mod.ko".into(),
                "kernel/drivers/scsi/scsi_common.ko".into(),
                "kernel/drivers/cdrom/cdrom.ko".into(),
            ])
        );
        // '-' and '_' are the same; compressed modules keep their suffix.
        assert_eq!(
            t.provision("9pnet_virtio").unwrap(),
            Provision::Files(vec![
                "kernel/net/9p/9pnet-virtio.ko.xz".into(),
                "kernel/net/9p/9pnet.ko.xz".into(),
            ])
        );
        assert_eq!(t.provision("ext4").unwrap(), Provision::BuiltIn);
        assert_eq!(t.provision("e1000").unwrap(), Provision::Missing);
    }

    #[test]
    fn restricted_modules_dep_keeps_only_the_shipped_modules() {
        let (_tmp, t) = tree(DEP, "");
        let Provision::Files(files) = t.provision("sr_mod").unwrap() else {
            panic!("sr_mod is a module")
        };
        let text = t.modules_dep_for(&files.into_iter().collect());
        assert_eq!(
            text,
            "kernel/drivers/cdrom/cdrom.ko:\n\
             kernel/drivers/scsi/scsi_common.ko:\n\
             kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
             kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/cdrom/cdrom.ko\n"
        );
    }

    #[test]
    fn bad_input_is_reported_with_its_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("6.1.0-test");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("modules.dep"), "a.ko:\nno colon here\n").unwrap();
        let err = ModuleTree::open(&dir).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "modules.dep:2: not a modules.dep line (expected '<module path>: <dependencies>')"
            ),
            "{err}"
        );

        fs::write(dir.join("modules.dep"), "a.ko: b.ko\n").unwrap();
        let t = ModuleTree::open(&dir).unwrap();
        let err = t.provision("a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.ko depends on b.ko, which modules.dep does not list"
        );

        let err = ModuleTree::open(&tmp.path().join("missing")).unwrap_err();
        assert!(matches!(err, KmodError::Io { .. }), "{err}");
    }
}
