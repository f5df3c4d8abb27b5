//! The scratch disk (spec §6): choose, partition, format, check and mount it (`root`), grow it
//! on request (`resize`), and the swap file (`swap`). The crash-safety state machine is in
//! `root.rs` and docs/scratch-disk.md.

pub mod fs;
pub mod layout;
pub mod plan;
pub mod root;
pub mod table;
pub mod tools;

use std::path::PathBuf;

use crate::boot::{Boot, NotImplemented};
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

pub fn resize_phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("scratch disk (spec §6)"))
}

pub fn swap_phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("scratch disk (spec §6)"))
}
