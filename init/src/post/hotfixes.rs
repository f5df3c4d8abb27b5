//! Hotfixes and the OS bootstrap hook (spec §12.6), saved logs (§12.5) and the CernVM-FS pid
//! list (§12.2).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Logs of the initramfs saved to `ulogs` on every boot.
pub const SAVED_LOGS: [&str; 5] = [
    "var/log/udhcpc.log",
    "var/log/network.log",
    "var/log/context.log",
    "var/log/fsck.log",
    "var/log/partition.log",
];

/// The OS hook run in the boot loader's context.
pub const BOOTSTRAP_HOOK: &str = ".ucernvm_bootstrap";

fn set_mode_if_exists(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_symlink() => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Steps 1–2: modes CernVM-FS may not deliver (`/tmp` 1777, `sudo` 4555), the `/cvmfs` mount
/// point.
pub fn fix_permissions(root: &Path) -> io::Result<()> {
    set_mode_if_exists(&root.join("tmp"), 0o1777)?;
    set_mode_if_exists(&root.join("usr/bin/sudo"), 0o4555)?;
    std::fs::create_dir_all(root.join("cvmfs"))
}

/// Copies a tree (directories, regular files with their modes, symbolic links).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut n = 0;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let target = to.join(e.file_name());
        if ft.is_dir() {
            n += copy_tree(&e.path(), &target)?;
        } else if ft.is_symlink() {
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &target)?;
            n += 1;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &target)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Step 3: the modules of the running kernel, posted into the OS tree if it lacks them.
/// Returns whether it copied.
pub fn post_kernel_modules(initramfs: &Path, root: &Path, release: &str) -> io::Result<bool> {
    let target = root.join("lib/modules").join(release);
    let source = initramfs.join("lib/modules").join(release);
    if std::fs::symlink_metadata(&target).is_ok() || !source.is_dir() {
        return Ok(false);
    }
    crate::console::begin("Posting kernel modules...");
    let r = copy_tree(&source, &target);
    match &r {
        Ok(_) => crate::console::check(),
        Err(_) => crate::console::failed(),
    }
    r.map(|_| true)
}

/// Step 4: `/extra-user-data` moves to `<root>/cernvm/extra-user-data`.
pub fn place_extra_user_data(initramfs: &Path, root: &Path) -> io::Result<()> {
    let from = initramfs.join("extra-user-data");
    if !from.exists() {
        return Ok(());
    }
    let dir = root.join("cernvm");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&from, dir.join("extra-user-data"))?;
    std::fs::remove_file(&from)
}

/// §12.5: copies the initramfs logs that exist to `ulogs`, overwriting.
pub fn save_logs(initramfs: &Path, ulogs: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(ulogs)?;
    let mut saved = Vec::new();
    for rel in SAVED_LOGS {
        let from = initramfs.join(rel);
        if from.is_file() {
            let to = ulogs.join(Path::new(rel).file_name().unwrap_or_default());
            std::fs::copy(&from, &to)?;
            saved.push(to);
        }
    }
    Ok(saved)
}

/// The shell functions the OS hook expects (`log_start`, `log_ok`, …), printing as §0.5.
const HOOK_PRELUDE: &str = r#"
log_start() { printf '\033[1;37m[INF]\033[0m %s' "$1"; }
log_ok() { printf ' \033[32mcheck\033[0m\n'; }
log_fail() { printf ' \033[31mfailed\033[0m\n'; }
log_info() { printf ' \033[32m%s\033[0m\n' "$1"; }
log_warn() { printf '\033[33m[WRN]\033[0m %s\n' "$1"; }
"#;

/// Step 6: runs `<root>/.ucernvm_bootstrap <root>` sourced by `shell` with the log functions
/// and the boot's variables; its exit status is ignored (as the original's). Returns whether a
/// hook ran.
pub fn run_bootstrap_hook(shell: &Path, root: &Path, env: &[(String, String)]) -> io::Result<bool> {
    let hook = root.join(BOOTSTRAP_HOOK);
    if !hook.is_file() {
        return Ok(false);
    }
    let script =
        format!("{HOOK_PRELUDE}\nset -- \"$ROOT\"\n. \"$ROOT/{BOOTSTRAP_HOOK}\" \"$ROOT\"\n");
    let status = Command::new(shell)
        .arg("-c")
        .arg(script)
        .env("ROOT", root)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()?;
    log::info!("{BOOTSTRAP_HOOK} finished ({status})");
    Ok(true)
}

/// §12.2: one pid per line.
pub fn write_pids(root: &Path, pids: &[u32]) -> io::Result<()> {
    let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(root.join(".cvmfs_pids"), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn permissions_and_mount_point() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/sudo"), "").unwrap();
        fix_permissions(root).unwrap();
        assert_eq!(
            std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::metadata(root.join("usr/bin/sudo")).unwrap().mode() & 0o7777,
            0o4555
        );
        assert!(root.join("cvmfs").is_dir());
        // Without tmp and sudo nothing fails.
        let empty = tempfile::tempdir().unwrap();
        fix_permissions(empty.path()).unwrap();
    }

    #[test]
    fn modules_are_posted_once() {
        let t = tempfile::tempdir().unwrap();
        let (init, root) = (t.path().join("init"), t.path().join("root"));
        let m = init.join("lib/modules/6.1.0-test/kernel/fs");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("overlay.ko"), "ko").unwrap();
        std::os::unix::fs::symlink("kernel", init.join("lib/modules/6.1.0-test/build")).unwrap();
        assert!(post_kernel_modules(&init, &root, "6.1.0-test").unwrap());
        let posted = root.join("lib/modules/6.1.0-test");
        assert_eq!(
            std::fs::read_to_string(posted.join("kernel/fs/overlay.ko")).unwrap(),
            "ko"
        );
        assert_eq!(
            std::fs::read_link(posted.join("build")).unwrap(),
            Path::new("kernel")
        );
        assert!(!post_kernel_modules(&init, &root, "6.1.0-test").unwrap());
        assert!(!post_kernel_modules(&init, &root, "other").unwrap());
    }

    #[test]
    fn logs_extra_user_data_and_pids() {
        let t = tempfile::tempdir().unwrap();
        let (init, root) = (t.path().join("init"), t.path().join("root"));
        std::fs::create_dir_all(init.join("var/log")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(init.join("var/log/network.log"), "net").unwrap();
        std::fs::write(init.join("extra-user-data"), "extra").unwrap();
        let ulogs = root.join("mnt/.rw/ulogs");
        let saved = save_logs(&init, &ulogs).unwrap();
        assert_eq!(saved, vec![ulogs.join("network.log")]);
        assert_eq!(
            std::fs::read_to_string(ulogs.join("network.log")).unwrap(),
            "net"
        );
        place_extra_user_data(&init, &root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("cernvm/extra-user-data")).unwrap(),
            "extra"
        );
        assert!(!init.join("extra-user-data").exists());
        write_pids(&root, &[12, 345]).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join(".cvmfs_pids")).unwrap(),
            "12\n345\n"
        );
    }

    #[test]
    fn bootstrap_hook_runs_with_functions_arguments_and_variables() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert!(!run_bootstrap_hook(Path::new("/bin/sh"), root, &[]).unwrap());
        std::fs::write(
            root.join(BOOTSTRAP_HOOK),
            "log_start 'Hook...'; log_ok\necho \"$1|$UCONTEXT_SRC|$_UCONTEXT_CVMFS_TAG\" > \"$1/hook.out\"\nexit 3\n",
        )
        .unwrap();
        let env = vec![
            ("UCONTEXT_SRC".to_string(), "(none)".to_string()),
            ("_UCONTEXT_CVMFS_TAG".to_string(), "v1".to_string()),
        ];
        assert!(run_bootstrap_hook(Path::new("/bin/sh"), root, &env).unwrap());
        assert_eq!(
            std::fs::read_to_string(root.join("hook.out")).unwrap(),
            format!("{}|(none)|v1\n", root.display())
        );
    }
}
