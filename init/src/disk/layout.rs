//! What the scratch file system holds before anything else uses it (spec §6.5 steps 3–5): the
//! top-level directories, the busybox copy the OS uses, and the safety spacers.
//!
//! Every step is idempotent and leaves either the old or the new state behind: files are
//! written under a temporary name and renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Created on the first boot (spec §0.3).
pub const TOP_DIRS: [&str; 4] = ["aux", "persistent", "cache", "cvmfs"];
/// Size of `aux/safety/50m`.
pub const SPACER_BYTES: u64 = 50 << 20;
/// Number of `aux/safety/inode_spacer<N>` files.
pub const INODE_SPACERS: u32 = 127;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up {path} on the scratch disk: {cause}")]
pub struct LayoutError {
    pub path: std::path::PathBuf,
    pub cause: std::io::Error,
}

fn ctx<T>(path: &Path, r: std::io::Result<T>) -> Result<T, LayoutError> {
    r.map_err(|source| LayoutError {
        path: path.to_path_buf(),
        cause: source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    ctx(dir, File::open(dir).and_then(|d| d.sync_all()))
}

/// `aux`, `persistent`, `cache`, `cvmfs`.
pub fn create_top_dirs(root_rw: &Path) -> Result<(), LayoutError> {
    for d in TOP_DIRS {
        let p = root_rw.join(d);
        ctx(&p, fs::create_dir_all(&p))?;
    }
    sync_dir(root_rw)
}

/// Copies the initramfs busybox to `aux/busybox` when it is missing (the OS's DHCP hook uses
/// it to talk to the boot loader's CernVM-FS, spec §9.8).
pub fn ensure_busybox(root_rw: &Path, busybox: &Path) -> Result<(), LayoutError> {
    let aux = root_rw.join("aux");
    let dst = aux.join("busybox");
    if dst.exists() {
        return Ok(());
    }
    if !busybox.is_file() {
        log::warn!("{} is missing; aux/busybox not created", busybox.display());
        return Ok(());
    }
    ctx(&aux, fs::create_dir_all(&aux))?;
    let tmp = aux.join(".busybox.tmp");
    ctx(&tmp, fs::copy(busybox, &tmp))?;
    ctx(
        &tmp,
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)),
    )?;
    ctx(&tmp, File::open(&tmp).and_then(|f| f.sync_all()))?;
    ctx(&dst, fs::rename(&tmp, &dst))?;
    sync_dir(&aux)
}

/// `aux/safety/50m` (50 MiB of allocated blocks) and 127 empty inode spacers, unless
/// `aux/safety` exists: deleting them frees room to log in on a full disk.
pub fn ensure_spacers(root_rw: &Path) -> Result<bool, LayoutError> {
    let aux = root_rw.join("aux");
    let safety = aux.join("safety");
    if safety.exists() {
        return Ok(false);
    }
    let tmp = aux.join(".safety.tmp");
    if tmp.exists() {
        ctx(&tmp, fs::remove_dir_all(&tmp))?;
    }
    ctx(&tmp, fs::create_dir_all(&tmp))?;
    let big = tmp.join("50m");
    let f = ctx(
        &big,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&big),
    )?;
    // Allocated, not sparse: these blocks must really be freed when the file is deleted.
    ctx(
        &big,
        nix::fcntl::fallocate(
            &f,
            nix::fcntl::FallocateFlags::empty(),
            0,
            SPACER_BYTES as i64,
        )
        .map_err(std::io::Error::from),
    )?;
    ctx(&big, f.sync_all())?;
    for i in 1..=INODE_SPACERS {
        let p = tmp.join(format!("inode_spacer{i}"));
        ctx(&p, File::create(&p).and_then(|mut f| f.flush()))?;
    }
    sync_dir(&tmp)?;
    ctx(&safety, fs::rename(&tmp, &safety))?;
    sync_dir(&aux)?;
    Ok(true)
}
