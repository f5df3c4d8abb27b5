//! The scratch file system: format (spec §6.4), check and mount (§6.5), final label, size.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

use crate::devices::probe::LABEL_UNFINISHED;
use crate::disk::tools::{arg, fsck_line_shown, ToolError, ToolLog, Tools};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("Unable to create ext4 filesystem in {0}: {1}")]
    Mkfs(PathBuf, ToolError),
    #[error("Unable to tune ext4 filesystem in {0}: {1}")]
    Tune(PathBuf, ToolError),
    #[error("cannot check {0}: {1}")]
    Fsck(PathBuf, ToolError),
    #[error("Unable to mount root device {0} on {1}: {2}")]
    Mount(PathBuf, PathBuf, nix::Error),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, nix::Error),
    #[error("cannot label the file system on {0}: {1}")]
    Label(PathBuf, std::io::Error),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot grow the file system on {0}: {1}")]
    Resize(PathBuf, ToolError),
}

/// ext4 with journal and lazy inode-table/journal initialisation (fast even on huge disks),
/// labelled [`LABEL_UNFINISHED`] until the first boot has set everything up; then no
/// mount-count or interval checks (spec §6.4).
pub fn format(tools: &Tools, dev: &Path) -> Result<(), FsError> {
    tools
        .run_ok(
            ToolLog::Partition,
            "mke2fs",
            &[
                "-F".as_ref(),
                "-q".as_ref(),
                "-t".as_ref(),
                "ext4".as_ref(),
                "-L".as_ref(),
                LABEL_UNFINISHED.as_ref(),
                "-E".as_ref(),
                "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                arg(dev),
            ],
        )
        .map_err(|e| FsError::Mkfs(dev.to_path_buf(), e))?;
    tools
        .run_ok(
            ToolLog::Partition,
            "tune2fs",
            &[
                "-c".as_ref(),
                "0".as_ref(),
                "-i".as_ref(),
                "0".as_ref(),
                arg(dev),
            ],
        )
        .map_err(|e| FsError::Tune(dev.to_path_buf(), e))?;
    Ok(())
}

/// Preen-mode check before mounting (spec §6.5). As in the original its verdict does not stop
/// the boot (the mount that follows does if the file system is beyond repair); a status of 4
/// or more is reported on the console.
pub fn check(tools: &Tools, dev: &Path, force: bool) -> Result<i32, FsError> {
    let mut args = vec!["-p".as_ref()];
    if force {
        args.push("-f".as_ref());
    }
    args.push(arg(dev));
    let out = tools
        .run(ToolLog::Fsck, "e2fsck", &args, &fsck_line_shown)
        .map_err(|e| FsError::Fsck(dev.to_path_buf(), e))?;
    if !out.output.is_empty() {
        eprint!("{}", out.output);
    }
    if out.status >= 4 {
        crate::console::warn(&format!(
            "e2fsck found errors it could not repair on {} (status {})",
            dev.display(),
            out.status
        ));
    }
    Ok(out.status)
}

/// Grows the (unmounted, checked) file system to its partition.
pub fn grow(tools: &Tools, dev: &Path) -> Result<(), FsError> {
    tools
        .run_ok(ToolLog::Partition, "resize2fs", &[arg(dev)])
        .map(|_| ())
        .map_err(|e| FsError::Resize(dev.to_path_buf(), e))
}

/// Mounts the scratch file system read-write (ext4, default options).
pub fn mount_root(dev: &Path, target: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(target).map_err(|e| FsError::Create(target.to_path_buf(), e))?;
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| FsError::Mount(dev.to_path_buf(), target.to_path_buf(), e))
}

pub fn unmount(target: &Path) -> Result<(), FsError> {
    umount(target).map_err(|e| FsError::Unmount(target.to_path_buf(), e))
}

/// `FS_IOC_SETFSLABEL` from <linux/fs.h>: `_IOW(0x94, 50, char[256])`.
const FS_IOC_SETFSLABEL: libc::c_ulong = 0x4100_9432;

/// Sets the label of the file system mounted at `mountpoint` through the kernel (journalled,
/// so it is atomic with respect to power loss), then flushes the file system.
pub fn set_label(mountpoint: &Path, label: &str) -> Result<(), FsError> {
    let err = |e| FsError::Label(mountpoint.to_path_buf(), e);
    let dir = File::open(mountpoint).map_err(err)?;
    // FSLABEL_MAX bytes, NUL-terminated; callers pass ext4's 16-byte labels.
    let mut buf = [0u8; 256];
    for (d, s) in buf.iter_mut().take(255).zip(label.as_bytes()) {
        *d = *s;
    }
    // SAFETY: the ioctl reads a 256-byte label buffer that lives for the call.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SETFSLABEL as _, buf.as_ptr()) };
    if r < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    sync_fs(&dir).map_err(err)
}

/// `syncfs(2)` on the file system holding `f`.
pub fn sync_fs(f: &File) -> std::io::Result<()> {
    nix::unistd::syncfs(f).map_err(std::io::Error::from)
}

/// Size of the mounted file system in MiB (the original's `ROOT_SIZE_MB` from `df`), used for
/// the CernVM-FS cache quota (spec §9.6).
pub fn size_mib(mountpoint: &Path) -> Result<u64, FsError> {
    let st = nix::sys::statvfs::statvfs(mountpoint)
        .map_err(|e| FsError::Create(mountpoint.to_path_buf(), e.into()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64 / (1 << 20))
}
