//! Shared helpers of the init integration tests that need root and the kernel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use cvmfs_client::testing::is_mounted;

/// Why tests that mount things cannot run here, if they cannot.
pub fn skip_reason(need_fuse: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if need_fuse && !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// Our `cvmfs2` (a binary of another crate is not available through `CARGO_BIN_EXE_*`): the
/// one in `target/debug` when it is newer than every source file of the client, else built now.
pub fn cvmfs2_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/cvmfs2");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let fresh =
        built.is_some_and(|b| newest_source(&root.join("cvmfs-client")).is_some_and(|s| s <= b));
    if !fresh {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "cvmfs-client", "--bin", "cvmfs2"])
            .current_dir(&root)
            .status()
            .expect("run cargo build for cvmfs2");
        assert!(
            status.success(),
            "cargo build -p cvmfs-client --bin cvmfs2 failed"
        );
    }
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin.canonicalize().expect("canonical cvmfs2 path")
}

/// Newest modification time of `Cargo.toml` and the `src/` tree of a crate.
fn newest_source(krate: &Path) -> Option<std::time::SystemTime> {
    fn walk(p: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(m) = std::fs::metadata(p) else { return };
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(t) = m.modified() {
            if newest.is_none_or(|n| t > n) {
                *newest = Some(t);
            }
        }
    }
    let mut newest = None;
    walk(&krate.join("src"), &mut newest);
    walk(&krate.join("Cargo.toml"), &mut newest);
    newest
}

/// Unmounts (lazily if needed) when dropped, so a failing test leaves no mount behind.
pub struct UnmountOnDrop(pub Vec<PathBuf>);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            while is_mounted(m) {
                if nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}
