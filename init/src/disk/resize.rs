//! Growing the scratch partition on request (spec §6.6, `11resize`): the user enlarges the
//! virtual disk, runs `touch /mnt/.rw/aux/resize` and reboots.
//!
//! Order (the original's, spec §6.6), so that a power cut at any point leaves a disk the next
//! boot mounts and resizes again (every step is idempotent and the request flag goes last):
//!
//! 1. unmount;
//! 2. grow the partition entry to the end of the disk (MBR: one sector; GPT: backup first,
//!    then primary) and tell the kernel;
//! 3. `e2fsck -f -p`;
//! 4. `resize2fs` (offline: an online resize would need `CAP_SYS_RESOURCE`, which test
//!    sandboxes lack; see docs/scratch-disk.md for its crash window);
//! 5. mount;
//! 6. remove `aux/resize` — only after success, so a failed resize is retried on the next boot
//!    (the original removed it always).

use std::path::Path;

use crate::console;
use crate::devices::{self, DevicesError};
use crate::disk::fs::{self as scratch_fs, FsError};
use crate::disk::root::RootEnv;
use crate::disk::table::{self, Grown, TableError};
use crate::disk::ScratchDisk;

/// The request flag below the scratch mount point.
pub const FLAG: &str = "aux/resize";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResizeStep {
    GrowPartition,
    Check,
    GrowFs,
    Mount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResizeOutcome {
    NotRequested,
    /// File system size before and after, MiB.
    Grown {
        from_mib: u64,
        to_mib: u64,
    },
    /// The request could not be carried out; the flag stays for the next boot.
    Failed(String),
    /// Stopped after this step (tests playing a power cut).
    Stopped(ResizeStep),
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(transparent)]
    Devices(#[from] DevicesError),
    #[error("Unable to remount root device: {0}")]
    Remount(FsError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Why the partition could not grow (reported, not fatal).
#[derive(Debug, thiserror::Error)]
enum GrowError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("disk /dev/{0} not found")]
    NoDisk(String),
}

fn remove_flag(root_rw: &Path) {
    let flag = root_rw.join(FLAG);
    if let Err(e) = std::fs::remove_file(&flag) {
        log::warn!("cannot remove {}: {e}", flag.display());
    }
    if let Ok(d) = std::fs::File::open(root_rw.join("aux")) {
        let _ = d.sync_all();
    }
}

fn grow_partition(env: &RootEnv, s: &ScratchDisk) -> Result<Grown, GrowError> {
    let devs = devices::sync_block(&env.devices).map_err(|_| GrowError::NoDisk(s.disk.clone()))?;
    let disk = devs
        .get(&s.disk)
        .ok_or_else(|| GrowError::NoDisk(s.disk.clone()))?;
    let dev = devs.path(&s.disk);
    let grown = table::grow_partition(&dev, disk.sector_size, disk.size, s.number)?;
    // Also after AlreadyFull: a previous boot may have grown the table and lost power before
    // the kernel learnt about it.
    if let Some(t) = table::read_table(&dev, disk.sector_size)? {
        table::sync_kernel(&dev, &env.devices.sys_block, &s.disk, &t)?;
    }
    Ok(grown)
}

/// Carries out a pending resize request on the mounted scratch disk `s`.
pub fn resize(
    env: &RootEnv,
    s: &mut ScratchDisk,
    stop_after: Option<ResizeStep>,
) -> Result<ResizeOutcome, ResizeError> {
    if !env.root_rw.join(FLAG).exists() {
        return Ok(ResizeOutcome::NotRequested);
    }
    let from_mib = s.root_size_mb;
    console::begin(&format!(
        "Resizing root partition {}...",
        s.device.display()
    ));
    scratch_fs::unmount(&env.root_rw)?;
    let stop = |step| stop_after == Some(step);
    let result = grow_partition(env, s).and_then(|g| {
        if stop(ResizeStep::GrowPartition) {
            return Ok(g);
        }
        let status = scratch_fs::check(&env.tools, &s.device, true)?;
        if status >= 4 {
            return Err(GrowError::Fs(FsError::Fsck(
                s.device.clone(),
                crate::disk::tools::ToolError::Failed {
                    program: "e2fsck".into(),
                    status,
                    output: "see /var/log/fsck.log".into(),
                },
            )));
        }
        if stop(ResizeStep::Check) {
            return Ok(g);
        }
        scratch_fs::grow(&env.tools, &s.device)?;
        Ok(g)
    });
    if let Some(step @ (ResizeStep::GrowPartition | ResizeStep::Check | ResizeStep::GrowFs)) =
        stop_after
    {
        return Ok(ResizeOutcome::Stopped(step));
    }
    scratch_fs::mount_root(&s.device, &env.root_rw).map_err(ResizeError::Remount)?;
    if stop(ResizeStep::Mount) {
        return Ok(ResizeOutcome::Stopped(ResizeStep::Mount));
    }
    match result {
        Ok(g) => {
            s.root_size_mb = scratch_fs::size_mib(&env.root_rw)?;
            remove_flag(&env.root_rw);
            console::check();
            log::info!("resize: {g:?}, {from_mib} MiB -> {} MiB", s.root_size_mb);
            Ok(ResizeOutcome::Grown {
                from_mib,
                to_mib: s.root_size_mb,
            })
        }
        Err(e) => {
            console::failed();
            console::warn(&format!(
                "resize of {} failed: {e}; {FLAG} kept, the next boot tries again",
                s.device.display()
            ));
            Ok(ResizeOutcome::Failed(e.to_string()))
        }
    }
}
