//! The scratch disk (spec §6): choose, partition, format, check and mount it (`root`), grow it
//! on request (`resize`), and the swap file (`swap`). The crash-safety state machine is in
//! `root.rs` and docs/scratch-disk.md.

pub mod fs;
pub mod layout;
pub mod plan;
pub mod resize;
pub mod root;
pub mod swap;
pub mod table;
pub mod tools;

use std::path::PathBuf;

use crate::boot::Boot;
use plan::PlanSettings;
use root::{RootEnv, RootError, RootOutcome};

/// The mounted scratch file system, kept in [`Boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDisk {
    /// `/dev/<partition>`
    pub device: PathBuf,
    pub partition: String,
    pub disk: String,
    /// Partition number on `disk`.
    pub number: u32,
    /// Formatted on this boot (the original's `ROOT_CREATE=1`).
    pub created: bool,
    /// Size of the file system in MiB (`ROOT_SIZE_MB`, for the CernVM-FS cache quota §9.6).
    pub root_size_mb: u64,
    /// The swap file enabled by the swap phase.
    pub swap: Option<PathBuf>,
}

/// `10root`: the scratch file system mounted on `/root.rw`.
pub fn root_phase(boot: &mut Boot) -> Result<(), RootError> {
    let env = RootEnv::system(&boot.layout);
    let settings = PlanSettings {
        resize_rootfs: boot.settings.resize_rootfs,
        use_boothd: boot.settings.use_boothd,
    };
    match root::prepare(&env, settings, None)? {
        RootOutcome::Ready(scratch, devs) => {
            log::info!("scratch disk: {scratch:?}");
            boot.scratch = Some(scratch);
            boot.devices = Some(*devs);
        }
        RootOutcome::Stopped(step) => log::warn!("root phase stopped after {step:?}"),
    }
    Ok(())
}

/// `11resize`: grows the scratch partition when `aux/resize` asks for it (spec §6.6).
pub fn resize_phase(boot: &mut Boot) -> Result<(), resize::ResizeError> {
    let Some(scratch) = boot.scratch.as_mut() else {
        log::warn!("resize: no scratch disk mounted");
        return Ok(());
    };
    let env = RootEnv::system(&boot.layout);
    let outcome = resize::resize(&env, scratch, None)?;
    log::info!("resize: {outcome:?}");
    Ok(())
}

/// The user data as saved: `/user-data` on a first boot, `context/user-data` later.
fn saved_user_data(layout: &crate::boot::Layout) -> Option<Vec<u8>> {
    [
        layout.initramfs.join("user-data"),
        layout.context_dir().join("user-data"),
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
}

/// The swap file (spec §6.7, done here for every OS): enables `/mnt/.rw/swapfile`, creating it
/// first when the amiconfig `[cernvm] swap_size` asks for one. Problems are warnings: a
/// machine without swap still boots.
pub fn swap_phase(boot: &mut Boot) -> Result<(), std::convert::Infallible> {
    let Some(scratch) = boot.scratch.as_mut() else {
        return Ok(());
    };
    let size = saved_user_data(&boot.layout)
        .and_then(|u| swap::swap_size_setting(&u))
        .and_then(|s| match swap::parse_size(&s) {
            Ok(size) => Some(size),
            Err(e) => {
                crate::console::warn(&e.to_string());
                None
            }
        });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    match swap::ensure_swap(&boot.layout.root_rw, size, cores) {
        Ok(path) => scratch.swap = path,
        Err(e) => crate::console::warn(&format!("no swap: {e}")),
    }
    Ok(())
}
