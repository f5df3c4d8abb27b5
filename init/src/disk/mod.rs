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

use crate::devices::BlockDevices;
use crate::layout::Layout;
use plan::PlanSettings;
use root::{RootEnv, RootError, RootOutcome};

/// The mounted scratch file system: what [`prepare`] made.
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

/// `10root`: the scratch file system mounted on `/root.rw`, and the block devices as they are
/// afterwards; `None` when the preparation stopped early (a test hook only). `scanned`: the
/// block devices of the devices phase, if it found them (else they are scanned here).
pub fn prepare(
    layout: &Layout,
    settings: PlanSettings,
    scanned: Option<BlockDevices>,
) -> Result<Option<(ScratchDisk, BlockDevices)>, RootError> {
    let env = RootEnv::system(layout);
    match root::prepare_from(&env, settings, None, scanned)? {
        RootOutcome::Ready(scratch, devs) => {
            log::info!("scratch disk: {scratch:?}");
            Ok(Some((scratch, *devs)))
        }
        RootOutcome::Stopped(step) => {
            log::warn!("root phase stopped after {step:?}");
            Ok(None)
        }
    }
}

/// `11resize`: grows the scratch partition when `aux/resize` asks for it (spec §6.6); `scratch`
/// then tells the new size.
pub fn grow(layout: &Layout, scratch: &mut ScratchDisk) -> Result<(), resize::ResizeError> {
    let env = RootEnv::system(layout);
    let outcome = resize::resize(&env, scratch, None)?;
    log::info!("resize: {outcome:?}");
    Ok(())
}

/// The user data as saved: `/user-data` on a first boot, `context/user-data` later.
fn saved_user_data(layout: &Layout) -> Option<Vec<u8>> {
    [
        layout.initramfs.join("user-data"),
        layout.context_dir().join("user-data"),
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
}

/// The swap file (spec §6.7, done here for every OS): enables `/mnt/.rw/swapfile`, creating it
/// first when the amiconfig `[cernvm] swap_size` asks for one. Problems are warnings: a
/// machine without swap still boots. Returns the swap file in use.
pub fn enable_swap(layout: &Layout) -> Option<PathBuf> {
    let size = saved_user_data(layout)
        .and_then(|u| swap::swap_size_setting(&u))
        .and_then(|s| match swap::parse_size(&s) {
            Ok(size) => Some(size),
            Err(e) => {
                crate::console::warn(&e.to_string());
                None
            }
        });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    match swap::ensure_swap(&layout.root_rw, size, cores) {
        Ok(path) => path,
        Err(e) => {
            crate::console::warn(&format!("no swap: {e}"));
            None
        }
    }
}
