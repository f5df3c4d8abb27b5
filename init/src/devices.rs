//! Block device discovery, the original's `sync_block` (spec §4): every disk and partition
//! from sysfs in name order, what it holds, which one is the boot medium (sentinel
//! `.ucernvm_boot_loader`), which are empty, their ext labels as `/dev/disk/by-label/` links,
//! and the scratch partition (`UROOT`) of earlier boots.
//!
//! Safer than the original, as the spec recommends: partitions are told apart through sysfs
//! (NVMe and MMC names work), and a device only counts as empty when it carries no recognised
//! signature at all (file systems, swap, LVM, RAID, partition tables...). The two exceptions
//! are states µCernVM itself leaves behind when a first boot is cut short
//! (docs/scratch-disk.md) and the Amazon ephemeral disk (ext3 holding only `lost+found`).
//! Discovery itself never writes to a disk; it only maintains the label links.

pub mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

use crate::disk::table;
use probe::{Content, ExtKind, FsType, TableKind, LABEL_ROOT, LABEL_UNFINISHED};

/// The boot medium's sentinel file (spec §14.4).
pub const SENTINEL: &str = ".ucernvm_boot_loader";

/// Bytes zeroed at the start of an Amazon ephemeral ext3 disk before it is reused (100 000 KiB).
const AMAZON_WIPE_BYTES: u64 = 100_000 * 1024;

/// Where discovery looks and what it may touch. Production: [`DeviceEnv::system`]; tests point
/// `dev_dir`/`sys_block` into fixtures and restrict `only` to the loop devices they own.
#[derive(Debug, Clone)]
pub struct DeviceEnv {
    /// `/sys/block`: one directory per whole disk, its partitions as subdirectories.
    pub sys_block: PathBuf,
    /// `/dev`
    pub dev_dir: PathBuf,
    /// `/dev/disk/by-label`
    pub by_label: PathBuf,
    /// Empty directory for the read-only test mounts (sentinel, Amazon case).
    pub probe_mount: PathBuf,
    /// Consider only these whole disks (and their partitions); `None`: all.
    pub only: Option<BTreeSet<String>>,
}

impl DeviceEnv {
    pub fn system(initramfs: &Path) -> Self {
        DeviceEnv {
            sys_block: PathBuf::from("/sys/block"),
            dev_dir: PathBuf::from("/dev"),
            by_label: PathBuf::from("/dev/disk/by-label"),
            probe_mount: initramfs.join("run/ucernvm-probe"),
            only: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOf {
    /// Name of the whole disk (`sda`, `nvme0n1`, `loop3`).
    pub disk: String,
    pub number: u32,
    /// Offset on the disk in bytes.
    pub start: u64,
}

/// One disk or partition as discovery saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size of the (hosting) disk.
    pub sector_size: u64,
    /// Set for partitions.
    pub partition: Option<PartitionOf>,
    pub removable: bool,
    pub read_only: bool,
    pub content: Content,
    /// The file systems the context search may mount from it (an ISO/UDF bridge disc has two).
    pub media: Vec<FsType>,
    /// For a whole disk carrying a partition table: the number of partitions in it.
    pub table_entries: Option<usize>,
    /// The boot medium's sentinel is at the root of its file system.
    pub boot_medium: bool,
    /// A partition whose table type says "µCernVM scratch, set-up not finished".
    pub in_progress: bool,
    /// Why discovery considers it empty (`None`: not empty, or not a candidate at all).
    pub empty_because: Option<&'static str>,
}

impl BlockDevice {
    pub fn is_disk(&self) -> bool {
        self.partition.is_none()
    }

    pub fn disk_name(&self) -> &str {
        self.partition.as_ref().map_or(&self.name, |p| &p.disk)
    }
}

/// The result of discovery (the original's `FIRST_EMPTY_DISK`,
/// `FIRST_EMPTY_PARTITION`, `BOOT_DISK`, `BOOT_PARTITION`, `ROOT_DEV`).
#[derive(Debug, Clone, Default)]
pub struct BlockDevices {
    /// Disks and partitions, sorted by name.
    pub devices: Vec<BlockDevice>,
    pub dev_dir: PathBuf,
    pub boot_disk: Option<String>,
    pub boot_partition: Option<String>,
    /// The partition labelled `UROOT` (the first in name order).
    pub root_dev: Option<String>,
    /// Label → device name (first in name order wins).
    pub labels: BTreeMap<String, String>,
}

impl BlockDevices {
    pub fn get(&self, name: &str) -> Option<&BlockDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dev_dir.join(name)
    }

    pub fn partitions_of<'a>(
        &'a self,
        disk: &'a str,
    ) -> impl Iterator<Item = &'a BlockDevice> + 'a {
        self.devices
            .iter()
            .filter(move |d| d.partition.as_ref().is_some_and(|p| p.disk == disk))
    }

    /// Whether `d` may be used as scratch space: writable, fixed, not the boot medium, empty.
    pub fn is_empty(&self, d: &BlockDevice) -> bool {
        d.empty_because.is_some()
    }

    pub fn first_empty_disk(&self) -> Option<&BlockDevice> {
        self.devices
            .iter()
            .find(|d| d.is_disk() && self.is_empty(d))
    }

    pub fn first_empty_partition(&self) -> Option<&BlockDevice> {
        self.devices
            .iter()
            .find(|d| !d.is_disk() && self.is_empty(d))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("cannot list block devices in {0}: {1}")]
    Sysfs(PathBuf, std::io::Error),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

fn read_flag(p: &Path) -> bool {
    read_trim(p).as_deref() == Some("1")
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What sysfs says about one device, before its content is probed.
#[derive(Debug, Clone)]
struct SysEntry {
    name: String,
    major: u32,
    minor: u32,
    size: u64,
    sector_size: u64,
    partition: Option<PartitionOf>,
    removable: bool,
    read_only: bool,
}

/// Reads `/sys/block/<disk>` and the partition subdirectories. Devices of size 0 (unattached
/// loop devices, empty CD drives) are left out.
fn scan_sysfs(env: &DeviceEnv) -> Result<Vec<SysEntry>, DevicesError> {
    let rd =
        fs::read_dir(&env.sys_block).map_err(|e| DevicesError::Sysfs(env.sys_block.clone(), e))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let disk = e.file_name().to_string_lossy().into_owned();
        if env.only.as_ref().is_some_and(|o| !o.contains(&disk)) {
            continue;
        }
        let dir = env.sys_block.join(&disk);
        let Some((major, minor)) = read_trim(&dir.join("dev")).as_deref().and_then(parse_dev)
        else {
            continue;
        };
        let size = read_u64(&dir.join("size")).unwrap_or(0) * 512;
        if size == 0 {
            continue;
        }
        let sector_size = read_u64(&dir.join("queue/logical_block_size")).unwrap_or(512);
        let removable = read_flag(&dir.join("removable"));
        let read_only = read_flag(&dir.join("ro"));
        out.push(SysEntry {
            name: disk.clone(),
            major,
            minor,
            size,
            sector_size,
            partition: None,
            removable,
            read_only,
        });
        for pe in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let pdir = pe.path();
            let Some(number) = read_u64(&pdir.join("partition")) else {
                continue;
            };
            let Some((pmaj, pmin)) = read_trim(&pdir.join("dev")).as_deref().and_then(parse_dev)
            else {
                continue;
            };
            out.push(SysEntry {
                name: pe.file_name().to_string_lossy().into_owned(),
                major: pmaj,
                minor: pmin,
                size: read_u64(&pdir.join("size")).unwrap_or(0) * 512,
                sector_size,
                partition: Some(PartitionOf {
                    disk: disk.clone(),
                    number: number as u32,
                    start: read_u64(&pdir.join("start")).unwrap_or(0) * 512,
                }),
                removable,
                read_only: read_only || read_flag(&pdir.join("ro")),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Creates `/dev/<name>` when devtmpfs has not (spec §4 step 2.1).
fn ensure_node(path: &Path, major: u32, minor: u32) {
    if path.exists() {
        return;
    }
    let dev = nix::sys::stat::makedev(major.into(), minor.into());
    if let Err(e) = nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev,
    ) {
        log::warn!("cannot create {}: {e}", path.display());
    }
}

/// The content of a device and the file systems a context search may mount from it; `None`
/// for a drive without a medium (an empty CD drive, which the kernel gives a guessed size): a
/// normal case, left out like a device of size 0.
fn probe_path(path: &Path) -> Option<(Content, Vec<FsType>)> {
    match probe::open_device(path).and_then(|mut f| probe::read_head(&mut f)) {
        Ok(head) => Some((probe::classify(&head), probe::probe_bytes(&head))),
        Err(e) if e.raw_os_error() == Some(libc::ENOMEDIUM) => {
            log::debug!("{}: no medium", path.display());
            None
        }
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; treating it as holding data",
                path.display()
            );
            Some((Content::Unknown, Vec::new()))
        }
    }
}

/// Probes the device of sysfs entry `e` in `dev_dir`, creating its node first if need be.
fn probe_entry(dev_dir: &Path, e: &SysEntry) -> Option<(Content, Vec<FsType>)> {
    let path = dev_dir.join(&e.name);
    ensure_node(&path, e.major, e.minor);
    probe_path(&path)
}

/// What probing one device found: `None` for a drive without a medium (see [`probe_path`]).
type Probed = Option<(Content, Vec<FsType>)>;

/// Probes of the removable whole disks (CD drives, USB sticks) started in the background before
/// the devices phase. Under emulation an empty CD drive takes about a tenth of a second to say
/// so, nearly all of it waiting for the emulated drive, and every boot without a context CD has
/// one: started early, the wait overlaps the work before the devices phase and the probes of
/// the other devices and, on a later boot, the mount of the scratch disk. [`Scan::complete`]
/// takes the results; a drive that appeared after the start (the Debian kernel loads `sr_mod` in
/// the modules phase) is probed in the background after the devices phase.
pub struct EarlyProbes {
    /// The probe thread: what it found, per removable whole disk, with the device number.
    thread: Option<std::thread::JoinHandle<EarlyFound>>,
}

/// The early thread's results: name → (major, minor) and what the probe found.
type EarlyFound = BTreeMap<String, ((u32, u32), Probed)>;

impl EarlyProbes {
    /// No early probes: the devices phase probes every device itself.
    pub fn none() -> Self {
        EarlyProbes { thread: None }
    }

    /// Starts a thread that probes the removable whole disks `env` shows (the scan of sysfs
    /// happens in the thread too: the boot goes on at once).
    pub fn start(env: &DeviceEnv) -> Self {
        let env = env.clone();
        let thread = std::thread::Builder::new()
            .name("early-probes".into())
            .spawn(move || {
                let entries = match scan_sysfs(&env) {
                    Ok(entries) => entries,
                    Err(e) => {
                        log::debug!("early probes: {e}");
                        return EarlyFound::new();
                    }
                };
                entries
                    .iter()
                    .filter(|e| is_early(e))
                    .map(|e| {
                        let found = probe_entry(&env.dev_dir, e);
                        (e.name.clone(), ((e.major, e.minor), found))
                    })
                    .collect()
            });
        match thread {
            Ok(t) => EarlyProbes { thread: Some(t) },
            Err(e) => {
                log::debug!("early probes: cannot start a thread: {e}");
                Self::none()
            }
        }
    }

    /// Whether the early thread probes `e` (if it was started): the devices phase then takes
    /// the result instead of opening the device itself.
    fn covers(&self, e: &SysEntry) -> bool {
        self.thread.is_some() && is_early(e)
    }

    /// Waits for the early thread and takes what it found (nothing if it failed: those devices
    /// are then probed again).
    fn finish(&mut self) -> EarlyFound {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(found)) => found,
            Some(Err(_)) => {
                log::warn!("the early probe of the removable drives failed; probing them again");
                EarlyFound::new()
            }
            None => EarlyFound::new(),
        }
    }
}

/// The devices [`EarlyProbes`] probes: removable whole disks.
fn is_early(e: &SysEntry) -> bool {
    e.removable && e.partition.is_none()
}

/// What a read-only mount showed.
enum MountLook {
    Sentinel,
    OnlyLostFound,
    Data,
    NoMount,
}

fn look_inside(path: &Path, fstype: &str, mnt: &Path) -> MountLook {
    if fs::create_dir_all(mnt).is_err() {
        return MountLook::NoMount;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // `noload`: an ext3/4 journal is not replayed on a read-only look.
    let data = matches!(fstype, "ext3" | "ext4").then_some("noload");
    if let Err(e) = mount(Some(path), mnt, Some(fstype), flags, data) {
        log::info!("{}: read-only {fstype} mount failed: {e}", path.display());
        return MountLook::NoMount;
    }
    let look = if mnt.join(SENTINEL).exists() {
        MountLook::Sentinel
    } else {
        let names: Vec<_> = fs::read_dir(mnt)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if names.len() == 1 && names.first().is_some_and(|n| n == "lost+found") {
            MountLook::OnlyLostFound
        } else {
            MountLook::Data
        }
    };
    if let Err(e) = umount(mnt) {
        log::warn!("cannot unmount {}: {e}", mnt.display());
    }
    look
}

/// Why discovery calls an Amazon ephemeral disk empty; [`wipe_ephemeral`] must run before it is
/// partitioned or formatted.
pub const EPHEMERAL_EXT3: &str = "ephemeral ext3 holding only lost+found";

/// Zeroes the first 100 000 KiB of an ephemeral ext3 device before it is reused (spec §4),
/// from the end of that zone towards the start: the superblock goes last, so a power cut in
/// the middle leaves a file system the next boot recognises (and wipes) again.
pub fn wipe_ephemeral(path: &Path) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    let len = f.seek(SeekFrom::End(0))?.min(AMAZON_WIPE_BYTES);
    let chunk = 1u64 << 20;
    let zeros = vec![0u8; chunk as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk);
        f.seek(SeekFrom::Start(start))?;
        f.write_all(zeros.get(..(end - start) as usize).unwrap_or_default())?;
        end = start;
    }
    f.sync_all()
}

/// Why a device with `content` counts as empty, if it does (before the mount checks).
fn empty_reason(d: &BlockDevice) -> Option<&'static str> {
    let (content, is_disk, table_entries) = (&d.content, d.is_disk(), d.table_entries);
    if d.in_progress && matches!(content, Content::Blank | Content::Unknown) {
        // mke2fs was cut short: whatever it wrote is ours.
        return Some("unfinished µCernVM scratch partition");
    }
    match content {
        Content::Blank => Some("no signature"),
        Content::Ext { label: Some(l), .. } if l == LABEL_UNFINISHED => {
            Some("unfinished µCernVM scratch file system")
        }
        Content::PartitionTable { ours: true, .. } if is_disk && table_entries == Some(0) => {
            Some("unfinished µCernVM partition table")
        }
        _ => None,
    }
}

/// The original's `sync_block`: discovers, classifies, maintains the label links.
pub fn sync_block(env: &DeviceEnv) -> Result<BlockDevices, DevicesError> {
    sync_block_with(env, &mut EarlyProbes::none()).map(|(found, _)| found)
}

/// [`sync_block`], taking the probes of the devices `early` covers from it. The removable
/// drives without partitions that `early` is still probing are not waited for: they are
/// returned, left out of the devices, for [`Scan::complete`].
fn sync_block_with(
    env: &DeviceEnv,
    early: &mut EarlyProbes,
) -> Result<(BlockDevices, Vec<SysEntry>), DevicesError> {
    let mut entries = scan_sysfs(env)?;
    log::debug!("devices: {} in sysfs", entries.len());
    // Disks whose table the kernel did not turn into partitions (no parser for it, or a table
    // written by a previous boot that was cut short before the re-read): tell it now.
    let mut rescan = false;
    for e in entries
        .iter()
        .filter(|e| e.partition.is_none() && !e.read_only)
    {
        if has_partitions(&entries, &e.name) {
            continue;
        }
        let path = env.dev_dir.join(&e.name);
        ensure_node(&path, e.major, e.minor);
        if let Ok(Some(t)) = table::read_table(&path, e.sector_size) {
            if !t.partitions.is_empty() {
                match table::sync_kernel(&path, &env.sys_block, &e.name, &t) {
                    Ok(()) => rescan = true,
                    Err(err) => log::warn!("{err}"),
                }
            }
        }
    }
    if rescan {
        entries = scan_sysfs(env)?;
    }

    // Every device is opened once (an empty CD drive answers slowly under emulation): its
    // content, and for a disk with a partition table the table's entries and which of them
    // carry the in-progress marker.
    // The devices the early probes cover are taken from them last, so that their wait
    // overlaps these probes.
    let mut probed: BTreeMap<String, Probed> = BTreeMap::new();
    for e in entries.iter().filter(|e| !early.covers(e)) {
        probed.insert(e.name.clone(), probe_entry(&env.dev_dir, e));
    }
    let covered: Vec<&SysEntry> = entries.iter().filter(|e| early.covers(e)).collect();
    // A drive with partitions is needed now: its table marks which of them are unfinished.
    let defer = covered.iter().all(|e| !has_partitions(&entries, &e.name));
    let deferred: Vec<SysEntry> = if defer {
        covered.into_iter().cloned().collect()
    } else {
        let mut early_found = early.finish();
        for e in covered {
            probed.insert(
                e.name.clone(),
                take_early(&mut early_found, &env.dev_dir, e),
            );
        }
        Vec::new()
    };
    let mut in_progress = BTreeSet::new();
    let mut devices = Vec::new();
    for e in &entries {
        if deferred.iter().any(|d| d.name == e.name) {
            continue;
        }
        let Some((device, unfinished)) = new_device(&env.dev_dir, e, probed.remove(&e.name)) else {
            continue;
        };
        in_progress.extend(unfinished.into_iter().map(|n| (e.name.clone(), n)));
        devices.push(device);
    }
    for d in &mut devices {
        d.in_progress = d
            .partition
            .as_ref()
            .is_some_and(|p| in_progress.contains(&(p.disk.clone(), p.number)));
    }

    let mut out = BlockDevices {
        dev_dir: env.dev_dir.clone(),
        ..Default::default()
    };
    let disks_with_parts: BTreeSet<String> = devices
        .iter()
        .filter_map(|d| d.partition.as_ref().map(|p| p.disk.clone()))
        .collect();
    for d in &mut devices {
        let path = env.dev_dir.join(&d.name);
        if let (Some(label), false) = (d.content.label(), d.is_disk()) {
            out.labels
                .entry(label.to_string())
                .or_insert_with(|| d.name.clone());
        }
        if d.removable || d.read_only {
            continue;
        }
        // Our own file systems are never the boot medium; no need to look inside.
        let ours = matches!(d.content.label(), Some(LABEL_ROOT | LABEL_UNFINISHED));
        if let (Some(fstype), false) = (d.content.mount_type(), ours) {
            match look_inside(&path, fstype, &env.probe_mount) {
                MountLook::Sentinel => {
                    d.boot_medium = true;
                    if let Some(p) = &d.partition {
                        out.boot_partition.get_or_insert_with(|| d.name.clone());
                        out.boot_disk.get_or_insert_with(|| p.disk.clone());
                    }
                }
                MountLook::OnlyLostFound
                    if matches!(
                        d.content,
                        Content::Ext {
                            kind: ExtKind::Ext3,
                            ..
                        }
                    ) =>
                {
                    // Wiped by the root phase only if it is chosen.
                    d.empty_because = Some(EPHEMERAL_EXT3);
                    continue;
                }
                _ => {}
            }
        }
        if d.is_disk() && disks_with_parts.contains(&d.name) {
            continue;
        }
        if d.empty_because.is_none() {
            d.empty_because = empty_reason(d);
        }
    }
    out.root_dev = out.labels.get(LABEL_ROOT).cloned();
    out.devices = devices;
    Ok((out, deferred))
}

/// Whether sysfs shows partitions of disk `name`.
fn has_partitions(entries: &[SysEntry], name: &str) -> bool {
    entries
        .iter()
        .any(|p| p.partition.as_ref().is_some_and(|p| p.disk == name))
}

/// What the early thread found for `e` if it looked at the same device (not a drive that
/// replaced it), else a probe now.
fn take_early(found: &mut EarlyFound, dev_dir: &Path, e: &SysEntry) -> Probed {
    match found.remove(&e.name) {
        Some((dev, probed)) if dev == (e.major, e.minor) => probed,
        _ => probe_entry(dev_dir, e),
    }
}

/// The device of sysfs entry `e` from what probing it found (`None` for a drive without a
/// medium, or one not probed), with the numbers of the partitions its table marks unfinished.
fn new_device(
    dev_dir: &Path,
    e: &SysEntry,
    probed: Option<Probed>,
) -> Option<(BlockDevice, Vec<u32>)> {
    let Some((content, media)) = probed.flatten() else {
        log::debug!("devices: {} not readable", e.name);
        return None;
    };
    log::debug!("devices: {} probed", e.name);
    let table = match (&content, e.partition.is_none()) {
        (Content::PartitionTable { .. }, true) => {
            table::read_table(&dev_dir.join(&e.name), e.sector_size)
                .ok()
                .flatten()
        }
        _ => None,
    };
    let unfinished = table
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.in_progress)
        .map(|p| p.number)
        .collect();
    let device = BlockDevice {
        name: e.name.clone(),
        major: e.major,
        minor: e.minor,
        size: e.size,
        sector_size: e.sector_size,
        partition: e.partition.clone(),
        removable: e.removable,
        read_only: e.read_only,
        table_entries: table.map(|t| t.partitions.len()),
        boot_medium: false,
        in_progress: false,
        empty_because: None,
        content,
        media,
    };
    Some((device, unfinished))
}

/// What the devices phase found: every device except the removable drives (CD drives, USB
/// sticks without partitions) whose early probe had not been taken yet. Nothing that decides
/// the scratch disk of a later boot depends on those drives (they are never the boot medium
/// nor the scratch disk and give no labels), so it can be mounted while an empty emulated drive
/// is still answering; the searches for context take [`Scan::complete`].
pub struct Scan {
    /// The devices found so far.
    pub devices: BlockDevices,
    deferred: Vec<SysEntry>,
    /// Takes the early probes' results and probes the drives they missed (the Debian kernel's
    /// `sr_mod` makes its drive only in the modules phase), in the background too.
    late: Option<std::thread::JoinHandle<Vec<Probed>>>,
    dev_dir: PathBuf,
}

impl Scan {
    fn new(
        devices: BlockDevices,
        deferred: Vec<SysEntry>,
        mut early: EarlyProbes,
        dev_dir: &Path,
    ) -> Self {
        let late = (!deferred.is_empty())
            .then(|| {
                let (entries, dir) = (deferred.clone(), dev_dir.to_path_buf());
                std::thread::Builder::new()
                    .name("late-probes".into())
                    .spawn(move || {
                        let mut found = early.finish();
                        entries
                            .iter()
                            .map(|e| take_early(&mut found, &dir, e))
                            .collect()
                    })
                    .map_err(|e| log::debug!("late probes: cannot start a thread: {e}"))
                    .ok()
            })
            .flatten();
        Scan {
            devices,
            deferred,
            late,
            dev_dir: dev_dir.to_path_buf(),
        }
    }

    /// Every device: waits for the probes of the drives left out and adds them.
    pub fn complete(mut self) -> BlockDevices {
        if self.deferred.is_empty() {
            return self.devices;
        }
        let probed = match self.late.take().map(|t| t.join()) {
            Some(Ok(probed)) => probed,
            _ => {
                log::warn!(
                    "the background probe of the removable drives did not finish; probing them here"
                );
                self.deferred
                    .iter()
                    .map(|e| probe_entry(&self.dev_dir, e))
                    .collect()
            }
        };
        for (e, probed) in self.deferred.iter().zip(probed) {
            if let Some((device, _)) = new_device(&self.dev_dir, e, Some(probed)) {
                log_device(&device);
                self.devices.devices.push(device);
            }
        }
        self.devices.devices.sort_by(|a, b| a.name.cmp(&b.name));
        self.devices
    }
}

fn log_device(d: &BlockDevice) {
    log::info!(
        "block device {}: {} bytes, {:?}{}{}{}",
        d.name,
        d.size,
        d.content,
        if d.removable { ", removable" } else { "" },
        if d.read_only { ", read-only" } else { "" },
        d.empty_because
            .map(|r| format!(", empty ({r})"))
            .unwrap_or_default()
    );
}

/// Keeps `/dev/disk/by-label/<label>` → `/dev/<name>` for every label of `found`. A link that
/// points elsewhere is replaced: labels change during a first boot (`UROOT-INIT` → `UROOT`).
pub fn write_label_links(env: &DeviceEnv, found: &BlockDevices) -> Result<(), DevicesError> {
    fs::create_dir_all(&env.by_label).map_err(|e| DevicesError::Create(env.by_label.clone(), e))?;
    for (label, name) in &found.labels {
        if label.contains('/') || label == "." || label == ".." {
            log::warn!("label {label:?} of /dev/{name} cannot be a link name; skipped");
            continue;
        }
        let link = env.by_label.join(label);
        let target = env.dev_dir.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&target, &link).map_err(|e| DevicesError::Create(link.clone(), e))?;
    }
    Ok(())
}

/// Discovery plus label links: what every step that changes the disks runs afterwards.
pub fn refresh(env: &DeviceEnv) -> Result<BlockDevices, DevicesError> {
    Ok(scan_with(env, EarlyProbes::none())?.complete())
}

/// [`refresh`] that leaves out the removable drives `early` is still probing (see [`Scan`]).
fn scan_with(env: &DeviceEnv, mut early: EarlyProbes) -> Result<Scan, DevicesError> {
    let (found, deferred) = sync_block_with(env, &mut early)?;
    write_label_links(env, &found)?;
    found.devices.iter().for_each(log_device);
    Ok(Scan::new(found, deferred, early, &env.dev_dir))
}

/// Whether `path` is a block device node (the original's "ROOT_DEV is a block device").
pub fn is_block_device(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// The `devices` phase (spec §4): discovery; a `UROOT` partition means this is not the first
/// boot. The removable drives `early` is still probing come with [`Scan::complete`].
pub fn discover(root: &Path, early: EarlyProbes) -> Result<Scan, DevicesError> {
    let env = DeviceEnv::system(root);
    let scan = scan_with(&env, early)?;
    if let Some(b) = &scan.devices.boot_disk {
        log::info!(
            "boot disk {b}, boot partition {:?}",
            scan.devices.boot_partition
        );
    }
    Ok(scan)
}

impl BlockDevices {
    /// No partition labelled `UROOT`: this boot makes the scratch disk (spec §4).
    pub fn first_boot(&self) -> bool {
        self.root_dev.is_none()
    }
}

/// Whether a partition table kind is one we can add partitions to.
pub fn table_kind(d: &BlockDevice) -> Option<TableKind> {
    match d.content {
        Content::PartitionTable { kind, .. } => Some(kind),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs-like tree and a `/dev` of regular files holding the devices' first bytes.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn sys(&self) -> PathBuf {
            self.dir.path().join("sys/block")
        }

        fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }

        fn write(p: &Path, v: &str) {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("{v}\n")).unwrap();
        }

        fn disk(
            &self,
            name: &str,
            dev: &str,
            sectors: u64,
            removable: bool,
            ro: bool,
            head: &[u8],
        ) {
            let d = self.sys().join(name);
            Self::write(&d.join("dev"), dev);
            Self::write(&d.join("size"), &sectors.to_string());
            Self::write(&d.join("removable"), if removable { "1" } else { "0" });
            Self::write(&d.join("ro"), if ro { "1" } else { "0" });
            Self::write(&d.join("queue/logical_block_size"), "512");
            fs::create_dir_all(self.dev()).unwrap();
            fs::write(self.dev().join(name), head).unwrap();
        }

        fn part(&self, disk: &str, name: &str, n: u32, start: u64, sectors: u64, head: &[u8]) {
            let d = self.sys().join(disk).join(name);
            Self::write(&d.join("dev"), &format!("259:{n}"));
            Self::write(&d.join("size"), &sectors.to_string());
            Self::write(&d.join("start"), &start.to_string());
            Self::write(&d.join("partition"), &n.to_string());
            fs::write(self.dev().join(name), head).unwrap();
        }

        fn env(&self) -> DeviceEnv {
            DeviceEnv {
                sys_block: self.sys(),
                dev_dir: self.dev(),
                by_label: self.dir.path().join("dev/disk/by-label"),
                probe_mount: self.dir.path().join("probe"),
                only: None,
            }
        }
    }

    fn ext4(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x2c2u32.to_le_bytes());
        b[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    /// An MBR with one partition entry per (start, sectors, type).
    fn mbr(parts: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        for (i, (start, len, t)) in parts.iter().enumerate() {
            let e = 446 + 16 * i;
            b[e + 4] = *t;
            b[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            b[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
        }
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    fn content_of(found: &BlockDevices, name: &str) -> Content {
        found
            .devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.content.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", found.devices))
    }

    /// [`refresh`] with the results of `early`.
    fn refresh_with(env: &DeviceEnv, early: EarlyProbes) -> Result<BlockDevices, DevicesError> {
        Ok(scan_with(env, early)?.complete())
    }

    /// The names of the devices found, in their order.
    fn names(found: &BlockDevices) -> Vec<&str> {
        found.devices.iter().map(|d| d.name.as_str()).collect()
    }

    /// Early probes whose thread returns `found`.
    fn early_with(found: impl FnOnce() -> EarlyFound + Send + 'static) -> EarlyProbes {
        EarlyProbes {
            thread: Some(std::thread::spawn(found)),
        }
    }

    #[test]
    fn early_probes_cover_the_removable_drives_and_the_phase_takes_their_results() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        f.disk("sr0", "11:0", g, true, true, &ext4("CONTEXT"));
        f.disk("vda", "254:0", 10 * g, false, false, &ext4("DATA"));
        let env = f.env();
        let early = EarlyProbes::start(&env);
        let entries = scan_sysfs(&env).unwrap();
        let covered: Vec<&str> = entries
            .iter()
            .filter(|e| early.covers(e))
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(covered, ["sr0"], "only the removable drive is probed early");
        let found = refresh_with(&env, early).unwrap();
        assert!(
            matches!(content_of(&found, "sr0"), Content::Ext { label: Some(l), .. } if l == "CONTEXT")
        );
        assert!(
            matches!(content_of(&found, "vda"), Content::Ext { label: Some(l), .. } if l == "DATA")
        );
    }

    #[test]
    fn the_phase_uses_the_early_result_instead_of_opening_the_drive_again() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        f.disk("sr0", "11:0", g, true, true, &ext4("ON-DISC"));
        // What the early thread saw (a drive that had no disc then) is what the phase reports.
        let early = early_with(|| BTreeMap::from([("sr0".to_string(), ((11, 0), None))]));
        let found = refresh_with(&f.env(), early).unwrap();
        assert!(found.devices.iter().all(|d| d.name != "sr0"), "{found:?}");
    }

    #[test]
    fn the_scan_does_not_wait_for_a_removable_drive_and_completing_adds_it() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        f.disk("sr0", "11:0", g, true, true, &ext4("CONTEXT"));
        f.disk("vda", "254:0", 10 * g, false, false, &ext4("DATA"));
        let env = f.env();
        let (answer, answered) = std::sync::mpsc::channel::<()>();
        let probe_env = env.clone();
        // An emulated drive that answers only when the test says so.
        let early = early_with(move || {
            answered
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the test lets the drive answer");
            let sr0 = scan_sysfs(&probe_env)
                .unwrap()
                .into_iter()
                .find(|e| e.name == "sr0")
                .unwrap();
            let found = probe_entry(&probe_env.dev_dir, &sr0);
            BTreeMap::from([("sr0".to_string(), ((11, 0), found))])
        });
        let scan = scan_with(&env, early).unwrap();
        assert_eq!(
            names(&scan.devices),
            ["vda"],
            "the drive is still answering"
        );
        answer.send(()).unwrap();
        let found = scan.complete();
        assert_eq!(names(&found), ["sr0", "vda"]);
        assert!(
            matches!(content_of(&found, "sr0"), Content::Ext { label: Some(l), .. } if l == "CONTEXT")
        );
    }

    #[test]
    fn a_removable_drive_with_partitions_is_waited_for() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        f.disk(
            "sdb",
            "8:16",
            4 * g,
            true,
            false,
            &mbr(&[(2048, 2 * g as u32, 0x83)]),
        );
        f.part("sdb", "sdb1", 1, 2048, 2 * g, &ext4("STICK"));
        let env = f.env();
        let early = EarlyProbes::start(&env);
        let scan = scan_with(&env, early).unwrap();
        assert!(scan.deferred.is_empty());
        assert_eq!(names(&scan.devices), ["sdb", "sdb1"]);
    }

    #[test]
    fn a_failed_early_probe_or_a_replaced_drive_is_probed_again() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        f.disk("sr0", "11:0", g, true, true, &ext4("DISC0"));
        f.disk("sr1", "11:1", g, true, true, &ext4("DISC1"));
        let early = early_with(|| panic!("probe thread failed"));
        let found = refresh_with(&f.env(), early).unwrap();
        assert!(
            matches!(content_of(&found, "sr0"), Content::Ext { label: Some(l), .. } if l == "DISC0")
        );
        // sr1 now has another device number than when the early probes started.
        let early = early_with(|| BTreeMap::from([("sr1".to_string(), ((11, 7), None))]));
        let found = refresh_with(&f.env(), early).unwrap();
        assert!(
            matches!(content_of(&found, "sr1"), Content::Ext { label: Some(l), .. } if l == "DISC1")
        );
    }

    #[test]
    fn sysfs_fixture_classification_labels_and_first_boot() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024; // sectors per GiB
        let blank = vec![0u8; 4096];
        f.disk(
            "sda",
            "8:0",
            10 * g,
            false,
            false,
            &mbr(&[
                (2048, 4 * g as u32, 0x83),
                (2048 + 4 * g as u32, 4 * g as u32, 0x83),
            ]),
        );
        f.part("sda", "sda1", 1, 2048, 4 * g, &ext4("UROOT"));
        f.part("sda", "sda2", 2, 2048 + 4 * g, 4 * g, &blank);
        // NVMe names end in digits; sysfs still says what is a partition.
        f.disk(
            "nvme0n1",
            "259:0",
            10 * g,
            false,
            false,
            &mbr(&[(2048, 4 * g as u32, 0x7F)]),
        );
        f.part("nvme0n1", "nvme0n1p1", 1, 2048, 4 * g, &[0u8, 0, 0, 0, 7]);
        f.disk("sr0", "11:0", g, true, false, &blank);
        f.disk("vdb", "254:16", 10 * g, false, false, &blank);
        f.disk("vdc", "254:32", 10 * g, false, true, &blank);
        f.disk("loop7", "7:7", 0, false, false, &blank);
        let env = f.env();
        let found = refresh(&env).unwrap();
        let names: Vec<&str> = found.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nvme0n1",
                "nvme0n1p1",
                "sda",
                "sda1",
                "sda2",
                "sr0",
                "vdb",
                "vdc"
            ]
        );
        let p = found.get("nvme0n1p1").unwrap();
        assert_eq!(
            p.partition,
            Some(PartitionOf {
                disk: "nvme0n1".into(),
                number: 1,
                start: 2048 * 512
            })
        );
        // Type 0x7F with junk: a first boot cut inside mke2fs.
        assert!(p.in_progress);
        assert_eq!(
            p.empty_because,
            Some("unfinished µCernVM scratch partition")
        );
        assert_eq!(found.root_dev.as_deref(), Some("sda1"));
        assert_eq!(
            found.first_empty_disk().map(|d| d.name.as_str()),
            Some("vdb")
        );
        assert_eq!(
            found.first_empty_partition().map(|d| d.name.as_str()),
            Some("nvme0n1p1")
        );
        assert!(!found.is_empty(found.get("sr0").unwrap()), "removable");
        assert!(!found.is_empty(found.get("vdc").unwrap()), "read-only");
        assert!(!found.is_empty(found.get("sda").unwrap()), "has partitions");
        assert_eq!(
            fs::read_link(env.by_label.join("UROOT")).unwrap(),
            env.dev_dir.join("sda1")
        );

        // The label moves (first boot finishing elsewhere): the link follows.
        fs::write(f.dev().join("sda1"), ext4("other")).unwrap();
        fs::write(f.dev().join("sda2"), ext4("UROOT")).unwrap();
        let found = refresh(&env).unwrap();
        assert_eq!(found.root_dev.as_deref(), Some("sda2"));
        assert_eq!(
            fs::read_link(env.by_label.join("UROOT")).unwrap(),
            env.dev_dir.join("sda2")
        );
        assert_eq!(
            fs::read_link(env.by_label.join("other")).unwrap(),
            env.dev_dir.join("sda1")
        );
    }

    #[test]
    fn the_scan_records_media_for_the_context_searches() {
        let f = Fixture::new();
        let g = 2 * 1024 * 1024;
        let mut iso = vec![0u8; 36 * 1024];
        iso[32768] = 1;
        iso[32769..32774].copy_from_slice(b"CD001");
        f.disk("sr0", "11:0", g, true, true, &iso);
        f.disk(
            "vdb",
            "254:16",
            10 * g,
            false,
            false,
            &mbr(&[(2048, g as u32, 0x83)]),
        );
        f.part("vdb", "vdb1", 1, 2048, g, &ext4("data"));
        let found = refresh(&f.env()).unwrap();
        let media = |name: &str| found.get(name).unwrap().media.clone();
        assert_eq!(media("sr0"), [FsType::Iso9660]);
        assert_eq!(media("vdb"), []);
        assert_eq!(media("vdb1"), [FsType::Ext]);

        // The searches take these types as they are: a device is not opened again.
        fs::remove_file(f.dev().join("sr0")).unwrap();
        let crate::context::media::Media::Devices { devices, .. } =
            crate::context::media::Media::scanned(Some(&found), f.dev().join("tmp"))
        else {
            panic!("device media expected");
        };
        let listed: Vec<(&str, Option<Vec<FsType>>)> = devices
            .iter()
            .map(|d| (d.name.as_str(), d.fs_types.clone()))
            .collect();
        assert_eq!(
            listed,
            [
                ("sr0", Some(vec![FsType::Iso9660])),
                ("vdb", Some(vec![])),
                ("vdb1", Some(vec![FsType::Ext]))
            ]
        );
    }

    #[test]
    fn missing_sysfs_is_an_error_not_an_empty_machine() {
        let f = Fixture::new();
        let err = sync_block(&f.env()).unwrap_err();
        assert!(
            err.to_string().contains("cannot list block devices"),
            "{err}"
        );
    }
}
