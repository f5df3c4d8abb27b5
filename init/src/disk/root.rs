//! The root phase (spec §6.1–6.5) as an explicit sequence of steps, each leaving the disk in a
//! state the next boot recognises (docs/scratch-disk.md):
//!
//! | step | leaves behind | a boot after a power cut here sees |
//! |---|---|---|
//! | `Partition` | table with partition 1 typed "in progress" | an in-progress partition → format it |
//! | `MarkInProgress` | (existing empty partition) type "in progress" | same |
//! | `Format` | ext4 labelled `UROOT-INIT` | `UROOT-INIT` → format again |
//! | `Check`, `Mount`, `Layout` | directories, busybox, spacers | `UROOT-INIT` → format again |
//! | `MarkLinux` | partition type Linux | `UROOT-INIT` → format again |
//! | `Label` | label `UROOT` (journalled) | a finished scratch disk |
//!
//! Tests stop the sequence after any step (`stop_after`) to play the power cut.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::console;
use crate::devices::probe::{self, Content, LABEL_ROOT};
use crate::devices::{self, BlockDevices, DeviceEnv, DevicesError};
use crate::disk::fs::{self as scratch_fs, FsError};
use crate::disk::layout::{self, LayoutError};
use crate::disk::plan::{plan_root, PlanError, PlanSettings, RootPlan};
use crate::disk::table::{self, PartSpec, PartType, TableError};
use crate::disk::tools::Tools;
use crate::disk::ScratchDisk;

/// Where the root phase works; production values from [`RootEnv::system`].
#[derive(Debug, Clone)]
pub struct RootEnv {
    pub devices: DeviceEnv,
    pub tools: Tools,
    /// Mount point of the scratch file system (`/root.rw`).
    pub root_rw: PathBuf,
    /// The busybox copied to `aux/busybox`.
    pub busybox: PathBuf,
}

impl RootEnv {
    pub fn system(layout: &crate::layout::Layout) -> Self {
        RootEnv {
            devices: DeviceEnv::system(&layout.initramfs),
            tools: Tools::new(layout.initramfs.join("var/log")),
            root_rw: layout.root_rw.clone(),
            busybox: layout.initramfs.join("bin/busybox"),
        }
    }
}

/// The steps of a first boot, in order (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Partition,
    MarkInProgress,
    Format,
    Check,
    Mount,
    Layout,
    MarkLinux,
    Label,
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(transparent)]
    Devices(#[from] DevicesError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("Unable to partition /dev/{0}: {1}")]
    Partition(String, TableError),
    #[error("/dev/{disk} looks empty at its start but holds {what} at byte {offset}; refusing to partition it")]
    HiddenData {
        disk: String,
        what: String,
        offset: u64,
    },
    #[error("cannot wipe /dev/{0}: {1}")]
    Wipe(String, std::io::Error),
    #[error("cannot read /dev/{0}: {1}")]
    Read(String, std::io::Error),
    #[error("partition {number} of /dev/{disk} did not appear after partitioning")]
    Missing { disk: String, number: u32 },
    #[error("/dev/{0} disappeared during the root phase")]
    Vanished(String),
    #[error("/dev/{0} is not empty any more (it holds {1}); refusing to format it")]
    NotEmpty(String, Content),
    #[error("cannot mark partition /dev/{0}: {1}")]
    Mark(String, TableError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// What [`prepare`] did.
#[derive(Debug)]
pub enum RootOutcome {
    Ready(ScratchDisk, Box<BlockDevices>),
    /// Stopped after this step (tests playing a power cut).
    Stopped(Step),
}

/// Classifies what sits at `offset` of a device.
fn probe_at(dev: &Path, offset: u64) -> std::io::Result<Content> {
    let mut f = File::open(dev)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(probe::PROBE_BYTES as u64).read_to_end(&mut buf)?;
    Ok(probe::classify(&buf))
}

fn wipe(dev: &Path, name: &str) -> Result<(), RootError> {
    console::begin(&format!("Wiping empty ephemeral ext3 on /dev/{name}..."));
    match devices::wipe_ephemeral(dev) {
        Ok(()) => {
            console::check();
            Ok(())
        }
        Err(e) => {
            console::failed();
            Err(RootError::Wipe(name.to_string(), e))
        }
    }
}

fn partition_named(devs: &BlockDevices, disk: &str, number: u32) -> Result<String, RootError> {
    devs.partitions_of(disk)
        .find(|p| p.partition.as_ref().is_some_and(|i| i.number == number))
        .map(|p| p.name.clone())
        .ok_or(RootError::Missing {
            disk: disk.to_string(),
            number,
        })
}

/// Writes the planned table and makes the kernel see it; returns the scratch partition's name.
fn partition(
    env: &RootEnv,
    devs: &BlockDevices,
    disk: &str,
    parts: &[PartSpec],
    new_table: Option<probe::TableKind>,
) -> Result<(String, BlockDevices), RootError> {
    let d = devs
        .get(disk)
        .ok_or_else(|| RootError::Vanished(disk.to_string()))?;
    let dev = devs.path(disk);
    if d.empty_because == Some(devices::EPHEMERAL_EXT3) {
        wipe(&dev, disk)?;
    }
    // The start of the disk was blank; make sure the places the new partitions start at are
    // too (a disk whose first sectors were wiped may still hold a file system further in).
    for p in parts {
        let c = probe_at(&dev, p.start).map_err(|e| RootError::Read(disk.to_string(), e))?;
        if c != Content::Blank {
            return Err(RootError::HiddenData {
                disk: disk.to_string(),
                what: c.to_string(),
                offset: p.start,
            });
        }
    }
    console::begin(&match new_table {
        Some(_) => format!("Partitioning /dev/{disk}..."),
        None => format!("Adding partition(s) to boot disk /dev/{disk}..."),
    });
    let written = (|| -> Result<u32, TableError> {
        let number = match new_table {
            Some(kind) => {
                table::create(&dev, kind, d.sector_size, d.size, parts)?;
                1
            }
            None => table::add_partitions(&dev, d.sector_size, parts)?
                .first()
                .copied()
                .unwrap_or(1),
        };
        if let Some(t) = table::read_table(&dev, d.sector_size)? {
            table::sync_kernel(&dev, &env.devices.sys_block, disk, &t)?;
        }
        Ok(number)
    })();
    let number = match written {
        Ok(n) => {
            console::check();
            n
        }
        Err(e) => {
            console::failed();
            return Err(RootError::Partition(disk.to_string(), e));
        }
    };
    let devs = devices::refresh(&env.devices)?;
    Ok((partition_named(&devs, disk, number)?, devs))
}

fn set_type(devs: &BlockDevices, name: &str, t: PartType) -> Result<(), RootError> {
    let Some(d) = devs.get(name) else {
        return Ok(());
    };
    let Some(info) = &d.partition else {
        return Ok(());
    };
    let disk_dev = devs.path(&info.disk);
    // The kernel does not use partition types; no re-read needed.
    table::set_type(&disk_dev, d.sector_size, info.number, t)
        .map_err(|e| RootError::Mark(name.to_string(), e))
}

/// Runs the root phase up to the scratch file system mounted on `env.root_rw` (or, for tests,
/// up to `stop_after`), from a fresh scan of the block devices.
pub fn prepare(
    env: &RootEnv,
    settings: PlanSettings,
    stop_after: Option<Step>,
) -> Result<RootOutcome, RootError> {
    prepare_from(env, settings, stop_after, None)
}

/// [`prepare`] from the block devices the devices phase found (`scanned`), when it found
/// them: nothing between the two phases adds or changes a block device, and a second scan
/// costs a quarter of a second under TCG (it reads every device's first sectors).
pub fn prepare_from(
    env: &RootEnv,
    settings: PlanSettings,
    stop_after: Option<Step>,
    scanned: Option<BlockDevices>,
) -> Result<RootOutcome, RootError> {
    let stop = |s: Step| stop_after == Some(s);
    let mut devs = match scanned {
        Some(devs) => devs,
        None => devices::refresh(&env.devices)?,
    };
    let plan = plan_root(&devs, settings)?;
    log::info!("scratch disk plan: {plan:?}");
    let (name, created) = match plan {
        RootPlan::Existing { partition } => (partition, false),
        RootPlan::Format { partition } => (partition, true),
        RootPlan::PartitionDisk { disk, kind, parts } => {
            let (name, d) = partition(env, &devs, &disk, &parts, Some(kind))?;
            devs = d;
            if stop(Step::Partition) {
                return Ok(RootOutcome::Stopped(Step::Partition));
            }
            (name, true)
        }
        RootPlan::ExtendBootDisk { disk, parts, .. } => {
            let (name, d) = partition(env, &devs, &disk, &parts, None)?;
            devs = d;
            if stop(Step::Partition) {
                return Ok(RootOutcome::Stopped(Step::Partition));
            }
            (name, true)
        }
    };
    let part = devs
        .get(&name)
        .cloned()
        .ok_or_else(|| RootError::Vanished(name.clone()))?;
    let dev = devs.path(&name);
    if created {
        if !devs.is_empty(&part) {
            return Err(RootError::NotEmpty(name, part.content));
        }
        if part.empty_because == Some(devices::EPHEMERAL_EXT3) {
            wipe(&dev, &name)?;
        }
        if !part.in_progress {
            set_type(&devs, &name, PartType::InProgress)?;
            if stop(Step::MarkInProgress) {
                return Ok(RootOutcome::Stopped(Step::MarkInProgress));
            }
        }
        console::begin(&format!("Formatting /dev/{name}..."));
        match scratch_fs::format(&env.tools, &dev) {
            Ok(()) => console::check(),
            Err(e) => {
                console::failed();
                return Err(e.into());
            }
        }
        if stop(Step::Format) {
            return Ok(RootOutcome::Stopped(Step::Format));
        }
    }
    // e2fsck -p would find a clean file system clean and exit; skipping the run saves starting
    // it (a fifth of a second under TCG) on every warm boot.
    match scratch_fs::check_reason(&dev) {
        Some(reason) => {
            log::info!("e2fsck -p {}: {reason}", dev.display());
            scratch_fs::check(&env.tools, &dev, false)?;
        }
        None => log::info!("{}: clean, not checked", dev.display()),
    }
    if stop(Step::Check) {
        return Ok(RootOutcome::Stopped(Step::Check));
    }
    console::begin("Mounting root filesystem...");
    match scratch_fs::mount_root(&dev, &env.root_rw) {
        Ok(()) => console::check(),
        Err(e) => {
            console::failed();
            return Err(e.into());
        }
    }
    if stop(Step::Mount) {
        return Ok(RootOutcome::Stopped(Step::Mount));
    }
    if created {
        layout::create_top_dirs(&env.root_rw)?;
    }
    layout::ensure_busybox(&env.root_rw, &env.busybox)?;
    layout::ensure_spacers(&env.root_rw)?;
    if stop(Step::Layout) {
        return Ok(RootOutcome::Stopped(Step::Layout));
    }
    if created {
        set_type(&devs, &name, PartType::Linux)?;
        if stop(Step::MarkLinux) {
            return Ok(RootOutcome::Stopped(Step::MarkLinux));
        }
        // The last write of a first boot: from here on the disk is a finished scratch disk.
        scratch_fs::set_label(&env.root_rw, LABEL_ROOT)?;
        if stop(Step::Label) {
            return Ok(RootOutcome::Stopped(Step::Label));
        }
        devs = devices::refresh(&env.devices)?;
    }
    let info = part.partition.clone();
    let scratch = ScratchDisk {
        device: dev,
        partition: name.clone(),
        disk: info.as_ref().map_or(name.clone(), |i| i.disk.clone()),
        number: info.map_or(0, |i| i.number),
        created,
        root_size_mb: scratch_fs::size_mib(&env.root_rw)?,
        swap: None,
    };
    Ok(RootOutcome::Ready(scratch, Box::new(devs)))
}
