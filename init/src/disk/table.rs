//! Partition tables (MBR with `mbrman`, GPT with `gpt`): read, create on an empty disk, add
//! partitions to the boot disk, grow the last partition; and make the kernel see the result
//! without a reboot (BLKRRPART, then BLKPG for whatever the kernel did not pick up).
//!
//! Write order matters for crash safety (docs/scratch-disk.md): an MBR is one sector and is
//! written at once; a new GPT is preceded by its protective MBR carrying our disk signature, so
//! that a power cut in the middle leaves a disk a later boot recognises as its own and empty.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::devices::probe::{TableKind, OUR_DISK_SIGNATURE};

/// MBR partition type "Linux".
const MBR_LINUX: u8 = 0x83;
/// MBR partition type of a scratch partition whose first-boot set-up has not finished
/// ("reserved for local use and experiments"; see docs/scratch-disk.md).
const MBR_IN_PROGRESS: u8 = 0x7F;
/// GPT type of a scratch partition whose first-boot set-up has not finished (private GUID).
const GPT_IN_PROGRESS: uuid::Uuid =
    uuid::Uuid::from_u128(0x7563_766d_5f73_4f74_a9b1_5d2c_8e4f_0a61);
/// MBR partition type of a GPT's protective entry.
const MBR_PROTECTIVE: u8 = 0xEE;
/// Name of the partitions we add to a GPT.
const GPT_NAME: &str = "ucernvm-scratch";

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("cannot read the MBR of {0}: {1}")]
    Mbr(PathBuf, mbrman::Error),
    #[error("cannot read or write the GPT of {0}: {1}")]
    Gpt(PathBuf, gpt::GptError),
    #[error("I/O error on {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    #[error("the kernel did not accept the partition table of {0}: {1}")]
    Kernel(PathBuf, String),
}

/// One partition of a table, in logical sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablePartition {
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
    /// Its type says "µCernVM scratch, set-up not finished".
    pub in_progress: bool,
}

/// The type a partition gets in [`set_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// Linux file system (MBR 0x83, GPT `0FC63DAF-...`).
    Linux,
    /// Scratch partition being set up.
    InProgress,
}

impl TablePartition {
    pub fn end(&self) -> u64 {
        self.start + self.sectors
    }
}

/// A partition table as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: TableKind,
    /// µCernVM created it ([`OUR_DISK_SIGNATURE`]).
    pub ours: bool,
    pub sector_size: u64,
    pub partitions: Vec<TablePartition>,
}

/// A partition to create, in bytes (the planner aligns both to 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpec {
    pub start: u64,
    pub size: u64,
}

fn open(dev: &Path, write: bool) -> Result<File, TableError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(dev)
        .map_err(|e| TableError::Open(dev.to_path_buf(), e))
}

fn lb_size(dev: &Path, sector_size: u64) -> Result<gpt::disk::LogicalBlockSize, TableError> {
    gpt::disk::LogicalBlockSize::try_from(sector_size).map_err(|_| {
        TableError::Invalid(
            dev.to_path_buf(),
            format!("unsupported logical sector size {sector_size}"),
        )
    })
}

/// Reads the table of `dev`. `Ok(None)`: no MBR boot signature at all. A protective MBR whose
/// GPT is unreadable (e.g. a write cut short) gives a GPT table without partitions.
pub fn read_table(dev: &Path, sector_size: u64) -> Result<Option<Table>, TableError> {
    let mut f = open(dev, false)?;
    let mut sector0 = [0u8; 512];
    std::io::Read::read_exact(&mut f, &mut sector0)
        .map_err(|e| TableError::Io(dev.to_path_buf(), e))?;
    if sector0[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let ours = sector0[440..444] == OUR_DISK_SIGNATURE;
    if sector0[446 + 4] == MBR_PROTECTIVE {
        let partitions = match gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb_size(dev, sector_size)?)
            .open_from_device(f)
        {
            Ok(disk) => disk
                .partitions()
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(n, p)| TablePartition {
                    number: *n,
                    start: p.first_lba,
                    sectors: p.last_lba + 1 - p.first_lba,
                    in_progress: p.part_type_guid.guid == GPT_IN_PROGRESS,
                })
                .collect(),
            Err(e) => {
                log::warn!("{}: protective MBR but no readable GPT: {e}", dev.display());
                Vec::new()
            }
        };
        return Ok(Some(Table {
            kind: TableKind::Gpt,
            ours,
            sector_size,
            partitions,
        }));
    }
    let mbr = mbrman::MBR::read_from(&mut f, sector_size as u32)
        .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
    let partitions = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| TablePartition {
            number: i as u32,
            start: u64::from(p.starting_lba),
            sectors: u64::from(p.sectors),
            in_progress: p.sys == MBR_IN_PROGRESS,
        })
        .collect();
    Ok(Some(Table {
        kind: TableKind::Mbr,
        ours,
        sector_size,
        partitions,
    }))
}

fn sectors(dev: &Path, bytes: u64, sector_size: u64) -> Result<u64, TableError> {
    if bytes % sector_size != 0 {
        return Err(TableError::Invalid(
            dev.to_path_buf(),
            format!("{bytes} is not a multiple of the sector size {sector_size}"),
        ));
    }
    Ok(bytes / sector_size)
}

fn mbr_type(t: PartType) -> u8 {
    match t {
        PartType::Linux => MBR_LINUX,
        PartType::InProgress => MBR_IN_PROGRESS,
    }
}

fn gpt_type(t: PartType) -> gpt::partition_types::Type {
    match t {
        PartType::Linux => gpt::partition_types::LINUX_FS,
        PartType::InProgress => gpt::partition_types::Type {
            guid: GPT_IN_PROGRESS,
            os: gpt::partition_types::OperatingSystem::None,
        },
    }
}

fn mbr_entry(
    dev: &Path,
    spec: &PartSpec,
    t: PartType,
    sector_size: u64,
) -> Result<mbrman::MBRPartitionEntry, TableError> {
    let start = sectors(dev, spec.start, sector_size)?;
    let len = sectors(dev, spec.size, sector_size)?;
    let too_big =
        |_| TableError::Invalid(dev.to_path_buf(), "partition beyond 2 TiB in an MBR".into());
    Ok(mbrman::MBRPartitionEntry {
        boot: 0,
        first_chs: mbrman::CHS::empty(),
        sys: mbr_type(t),
        last_chs: mbrman::CHS::empty(),
        starting_lba: u32::try_from(start).map_err(too_big)?,
        sectors: u32::try_from(len).map_err(too_big)?,
    })
}

fn gpt_partition(
    dev: &Path,
    spec: &PartSpec,
    t: PartType,
    sector_size: u64,
) -> Result<gpt::partition::Partition, TableError> {
    let first = sectors(dev, spec.start, sector_size)?;
    let len = sectors(dev, spec.size, sector_size)?;
    Ok(gpt::partition::Partition {
        part_type_guid: gpt_type(t),
        part_guid: uuid::Uuid::new_v4(),
        first_lba: first,
        last_lba: first + len - 1,
        flags: 0,
        name: GPT_NAME.to_string(),
    })
}

fn sync(dev: &Path, f: &File) -> Result<(), TableError> {
    f.sync_all()
        .map_err(|e| TableError::Io(dev.to_path_buf(), e))
}

/// Our protective MBR: one 0xEE entry over the disk (capped at 2^32-1 sectors), our signature.
fn protective_mbr(disk_sectors: u64) -> [u8; 512] {
    let len = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut s = Vec::with_capacity(512);
    s.resize(440, 0); // boot code
    s.extend_from_slice(&OUR_DISK_SIGNATURE);
    s.extend_from_slice(&[0, 0]);
    // partition entry 1: status, CHS start, type, CHS end, first LBA, sectors
    s.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, MBR_PROTECTIVE, 0xFF, 0xFF, 0xFF]);
    s.extend_from_slice(&1u32.to_le_bytes());
    s.extend_from_slice(&len.to_le_bytes());
    s.resize(510, 0); // entries 2-4
    s.extend_from_slice(&[0x55, 0xAA]);
    <[u8; 512]>::try_from(s).unwrap_or([0u8; 512])
}

/// The first new partition becomes the scratch partition and starts "in progress"; any
/// further one (the rest after 20 GiB) is a plain Linux partition left unformatted.
fn new_type(i: usize) -> PartType {
    if i == 0 {
        PartType::InProgress
    } else {
        PartType::Linux
    }
}

/// Writes a new table with `parts` on an empty disk of `disk_size` bytes.
pub fn create(
    dev: &Path,
    kind: TableKind,
    sector_size: u64,
    disk_size: u64,
    parts: &[PartSpec],
) -> Result<(), TableError> {
    let mut f = open(dev, true)?;
    match kind {
        TableKind::Mbr => {
            let mut mbr = mbrman::MBR::new_from(&mut f, sector_size as u32, OUR_DISK_SIGNATURE)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            for (i, spec) in parts.iter().enumerate() {
                let entry = mbr_entry(dev, spec, new_type(i), sector_size)?;
                match mbr.get_mut(i + 1) {
                    Some(slot) => *slot = entry,
                    None => {
                        return Err(TableError::Invalid(
                            dev.to_path_buf(),
                            "too many partitions".into(),
                        ))
                    }
                }
            }
            // One sector: the whole table appears at once or not at all.
            mbr.write_into(&mut f)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
        }
        TableKind::Gpt => {
            // Protective MBR first: from here on the disk is recognisably ours.
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.write_all(&protective_mbr(disk_size / sector_size)))
                .map_err(|e| TableError::Io(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
            let mut disk = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(lb_size(dev, sector_size)?)
                .create_from_device(
                    f.try_clone()
                        .map_err(|e| TableError::Io(dev.to_path_buf(), e))?,
                    None,
                )
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            let mut map = BTreeMap::new();
            for (i, spec) in parts.iter().enumerate() {
                map.insert(
                    i as u32 + 1,
                    gpt_partition(dev, spec, new_type(i), sector_size)?,
                );
            }
            disk.update_partitions(map)
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            disk.write()
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
        }
    }
    Ok(())
}

/// Adds `parts` to the existing table of `dev` (the boot disk) in the next free slots and returns
/// their numbers. A GPT's backup header moves to the real end of the disk first (a disk image
/// copied onto a larger disk has it in the middle).
pub fn add_partitions(
    dev: &Path,
    sector_size: u64,
    parts: &[PartSpec],
) -> Result<Vec<u32>, TableError> {
    let table = read_table(dev, sector_size)?
        .ok_or_else(|| TableError::Invalid(dev.to_path_buf(), "no partition table".into()))?;
    let mut numbers = Vec::new();
    match table.kind {
        TableKind::Mbr => {
            let mut f = open(dev, true)?;
            let mut mbr = mbrman::MBR::read_from(&mut f, sector_size as u32)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            for (i, spec) in parts.iter().enumerate() {
                let entry = mbr_entry(dev, spec, new_type(i), sector_size)?;
                let free = (1..=4)
                    .find(|i| mbr.get(*i).is_some_and(|p| p.is_unused()))
                    .ok_or_else(|| {
                        TableError::Invalid(
                            dev.to_path_buf(),
                            "no free primary partition slot".into(),
                        )
                    })?;
                if let Some(slot) = mbr.get_mut(free) {
                    *slot = entry;
                }
                numbers.push(free as u32);
            }
            mbr.write_into(&mut f)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
        }
        TableKind::Gpt => {
            let f = open(dev, true)?;
            let mut disk = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(lb_size(dev, sector_size)?)
                .open_from_device(
                    f.try_clone()
                        .map_err(|e| TableError::Io(dev.to_path_buf(), e))?,
                )
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            let mut map = disk.partitions().clone();
            for (i, spec) in parts.iter().enumerate() {
                let n = (1u32..)
                    .find(|n| !map.get(n).is_some_and(|p| p.is_used()))
                    .unwrap_or(1);
                map.insert(n, gpt_partition(dev, spec, new_type(i), sector_size)?);
                numbers.push(n);
            }
            // update_partitions recomputes the headers with the backup at the disk's end.
            disk.update_partitions(map)
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            disk.write()
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
        }
    }
    Ok(numbers)
}

/// Changes the type of partition `number` (one sector for MBR; for GPT the backup is written
/// before the primary, so either the old or the new table is valid at every moment).
pub fn set_type(dev: &Path, sector_size: u64, number: u32, t: PartType) -> Result<(), TableError> {
    let invalid = |m: String| TableError::Invalid(dev.to_path_buf(), m);
    let table =
        read_table(dev, sector_size)?.ok_or_else(|| invalid("no partition table".into()))?;
    match table.kind {
        TableKind::Mbr => {
            let mut f = open(dev, true)?;
            let mut mbr = mbrman::MBR::read_from(&mut f, sector_size as u32)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            let entry = mbr
                .get_mut(number as usize)
                .filter(|p| p.is_used())
                .ok_or_else(|| invalid(format!("no partition {number}")))?;
            if entry.sys == mbr_type(t) {
                return Ok(());
            }
            entry.sys = mbr_type(t);
            mbr.write_into(&mut f)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            sync(dev, &f)
        }
        TableKind::Gpt => {
            let f = open(dev, true)?;
            let mut disk = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(lb_size(dev, sector_size)?)
                .open_from_device(
                    f.try_clone()
                        .map_err(|e| TableError::Io(dev.to_path_buf(), e))?,
                )
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            let mut map = disk.partitions().clone();
            let p = map
                .get_mut(&number)
                .filter(|p| p.is_used())
                .ok_or_else(|| invalid(format!("no partition {number}")))?;
            if p.part_type_guid.guid == gpt_type(t).guid {
                return Ok(());
            }
            p.part_type_guid = gpt_type(t);
            disk.update_partitions(map)
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            disk.write()
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            sync(dev, &f)
        }
    }
}

/// Result of [`grow_partition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grown {
    /// New size in sectors.
    To(u64),
    /// The partition already ends at the end of the usable area.
    AlreadyFull,
}

/// Grows partition `number` of `dev` to the end of the disk (spec §6.6, MBR and GPT). Refuses
/// when another partition lies behind it.
pub fn grow_partition(
    dev: &Path,
    sector_size: u64,
    disk_size: u64,
    number: u32,
) -> Result<Grown, TableError> {
    let invalid = |m: String| TableError::Invalid(dev.to_path_buf(), m);
    let table =
        read_table(dev, sector_size)?.ok_or_else(|| invalid("no partition table".into()))?;
    let part = *table
        .partitions
        .iter()
        .find(|p| p.number == number)
        .ok_or_else(|| invalid(format!("no partition {number}")))?;
    if let Some(after) = table.partitions.iter().find(|p| p.start > part.start) {
        return Err(invalid(format!(
            "partition {} lies behind partition {number}; it cannot grow",
            after.number
        )));
    }
    let disk_sectors = disk_size / sector_size;
    match table.kind {
        TableKind::Mbr => {
            let end = disk_sectors.min(u64::from(u32::MAX));
            if end <= part.end() {
                return Ok(Grown::AlreadyFull);
            }
            let mut f = open(dev, true)?;
            let mut mbr = mbrman::MBR::read_from(&mut f, sector_size as u32)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            let new = end - part.start;
            let entry = mbr
                .get_mut(number as usize)
                .ok_or_else(|| invalid(format!("no partition {number}")))?;
            entry.sectors =
                u32::try_from(new).map_err(|_| invalid("partition too big for MBR".into()))?;
            mbr.write_into(&mut f)
                .map_err(|e| TableError::Mbr(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
            Ok(Grown::To(new))
        }
        TableKind::Gpt => {
            let f = open(dev, true)?;
            let mut disk = gpt::GptConfig::new()
                .writable(true)
                .logical_block_size(lb_size(dev, sector_size)?)
                .open_from_device(
                    f.try_clone()
                        .map_err(|e| TableError::Io(dev.to_path_buf(), e))?,
                )
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            // The last usable sector once the backup sits at the end: backup header (1) and
            // its entry array (num_parts * 128 bytes) occupy the tail.
            let entries = u64::from(disk.header().num_parts) * u64::from(disk.header().part_size);
            let last_usable = disk_sectors - 1 - entries.div_ceil(sector_size) - 1;
            if last_usable < part.end() {
                return Ok(Grown::AlreadyFull);
            }
            let mut map = disk.partitions().clone();
            let p = map
                .get_mut(&number)
                .ok_or_else(|| invalid(format!("no partition {number}")))?;
            p.last_lba = last_usable;
            disk.update_partitions(map)
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            disk.write()
                .map_err(|e| TableError::Gpt(dev.to_path_buf(), e))?;
            sync(dev, &f)?;
            Ok(Grown::To(last_usable + 1 - part.start))
        }
    }
}

// ioctl numbers from <linux/fs.h> and <linux/blkpg.h>.
const BLKRRPART: libc::c_ulong = 0x125F;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

fn blkpg(f: &File, op: libc::c_int, p: &TablePartition, sector_size: u64) -> std::io::Result<()> {
    let mut part = BlkpgPartition {
        start: (p.start * sector_size) as libc::c_longlong,
        length: (p.sectors * sector_size) as libc::c_longlong,
        pno: p.number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: BLKPG reads `arg` and the partition record it points to; both outlive the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The partitions the kernel currently knows for `disk`, from sysfs (number → start, sectors in
/// 512-byte units as sysfs reports them).
pub fn kernel_partitions(sys_block: &Path, disk: &str) -> BTreeMap<u32, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(sys_block.join(disk)) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(p.join(f)).ok()?.trim().parse().ok()
        };
        if let (Some(n), Some(start), Some(size)) = (read("partition"), read("start"), read("size"))
        {
            out.insert(n as u32, (start, size));
        }
    }
    out
}

/// Makes the kernel's partitions of `disk` match `table`: BLKRRPART first (not possible while a
/// partition of the disk is in use), then BLKPG add/resize for every partition the kernel still
/// does not show as in the table (kernels without the table's parser, disks in use). Waits for
/// the device nodes.
pub fn sync_kernel(
    dev: &Path,
    sys_block: &Path,
    disk: &str,
    table: &Table,
) -> Result<(), TableError> {
    let f = open(dev, false)?;
    // SAFETY: BLKRRPART takes no argument.
    let rr = unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) };
    if rr < 0 {
        log::info!(
            "{}: BLKRRPART: {}",
            dev.display(),
            std::io::Error::last_os_error()
        );
    }
    let to512 = table.sector_size / 512;
    let known = kernel_partitions(sys_block, disk);
    for p in &table.partitions {
        let want = (p.start * to512, p.sectors * to512);
        match known.get(&p.number) {
            Some(have) if *have == want => {}
            Some(have) if have.0 == want.0 => {
                blkpg(&f, BLKPG_RESIZE_PARTITION, p, table.sector_size).map_err(|e| {
                    TableError::Kernel(
                        dev.to_path_buf(),
                        format!("resize partition {}: {e}", p.number),
                    )
                })?
            }
            Some(have) => {
                return Err(TableError::Kernel(
                    dev.to_path_buf(),
                    format!(
                        "partition {} starts at sector {} in the kernel but {} in the table",
                        p.number, have.0, want.0
                    ),
                ))
            }
            None => blkpg(&f, BLKPG_ADD_PARTITION, p, table.sector_size).map_err(|e| {
                TableError::Kernel(
                    dev.to_path_buf(),
                    format!("add partition {}: {e}", p.number),
                )
            })?,
        }
    }
    // devtmpfs creates the nodes asynchronously; sysfs is authoritative.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let known = kernel_partitions(sys_block, disk);
        if table
            .partitions
            .iter()
            .all(|p| known.contains_key(&p.number))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TableError::Kernel(
                dev.to_path_buf(),
                "partitions did not appear within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
