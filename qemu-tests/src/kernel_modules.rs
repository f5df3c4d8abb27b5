//! The module files a test initramfs needs to load some modules of the test kernel, resolved
//! with the init's own `modules.dep` reader (the same order PID 1 loads them in).

use std::path::{Path, PathBuf};

use ucernvm_init::modules::ModuleIndex;

use crate::HarnessError;

/// The module index of a kernel: `<root>/boot/vmlinuz-<release>` (a Debian kernel package) →
/// `<root>/lib/modules/<release>`; `<dir>/vmlinuz` with `<dir>/release` (the µCernVM kernel of
/// `kernel-config/build-custom-kernel`) → `<dir>/modules/<release>`.
pub fn modules_dir(kernel: &Path) -> Result<PathBuf, HarnessError> {
    let bad = |why: &str| HarnessError::Io {
        what: format!("{}: {why}", kernel.display()),
        cause: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    };
    if let Some(dir) = kernel.parent() {
        if let Ok(release) = std::fs::read_to_string(dir.join("release")) {
            return Ok(dir.join("modules").join(release.trim()));
        }
    }
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| bad("the kernel is not named vmlinuz-<release>"))?;
    let root = kernel
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| bad("the kernel is not in <root>/boot"))?;
    Ok(root.join("lib/modules").join(release))
}

/// The files of `modules` and of their dependencies in loading order (dependencies first),
/// each once; built-in modules need no file.
pub fn module_closure(modules_dir: &Path, modules: &[&str]) -> Result<Vec<PathBuf>, HarnessError> {
    let module_err = |e: ucernvm_init::modules::ModuleError| HarnessError::Io {
        what: format!("kernel modules in {}: {e}", modules_dir.display()),
        cause: std::io::Error::other("module index"),
    };
    let index = ModuleIndex::open(modules_dir).map_err(module_err)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for m in modules {
        for f in index.plan(m, &|_| false).map_err(module_err)? {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_lists_dependencies_first_and_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko: kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("modules.builtin"), "kernel/ext4.ko\n").unwrap();
        let files = module_closure(dir.path(), &["a", "b", "ext4"]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            ["kernel/c.ko", "kernel/a.ko", "kernel/b.ko"].map(PathBuf::from)
        );
        let err = module_closure(dir.path(), &["missing"]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn modules_dir_of_a_kernel_in_a_boot_directory() {
        assert_eq!(
            modules_dir(Path::new("/k/boot/vmlinuz-6.1.0-cloud")).unwrap(),
            Path::new("/k/lib/modules/6.1.0-cloud")
        );
        assert!(modules_dir(Path::new("/k/boot/bzImage")).is_err());
    }

    #[test]
    fn modules_dir_of_the_custom_kernel_is_named_by_its_release_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("release"), "6.1.192\n").unwrap();
        assert_eq!(
            modules_dir(&dir.path().join("vmlinuz")).unwrap(),
            dir.path().join("modules/6.1.192")
        );
    }
}
