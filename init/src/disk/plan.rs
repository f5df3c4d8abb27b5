//! Where the scratch file system goes (spec §6.1–6.3), as a pure function of what discovery
//! found and two user settings. No I/O here: the table of device layouts in the tests covers
//! every branch.

use crate::devices::probe::TableKind;
use crate::devices::{table_kind, BlockDevice, BlockDevices};
use crate::disk::table::PartSpec;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The scratch partition's size when `resize_rootfs` is off (spec §6 `DEFAULT_SIZE`).
pub const DEFAULT_SIZE: u64 = 20 * GIB;
/// Kept free on the boot disk in the space check (spec §6.3).
pub const MARGIN: u64 = 20 * MIB;
/// Smallest scratch partition we create or accept (spec §6.3's boot-disk minimum, applied to
/// every candidate so that a tiny blank partition such as a BIOS boot area is never formatted).
pub const MIN_SCRATCH: u64 = 750 * MIB;
/// Partition alignment.
pub const ALIGN: u64 = MIB;
/// GPT entry array: 128 entries of 128 bytes.
const GPT_ENTRIES_BYTES: u64 = 128 * 128;

/// The user settings the plan depends on (spec §5.7 `resize_rootfs`, `use_boothd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSettings {
    pub resize_rootfs: bool,
    pub use_boothd: bool,
}

impl PlanSettings {
    /// A later boot reads no user data: these are the defaults. They do not matter then, as
    /// the scratch partition exists and is only mounted.
    pub fn later_boot() -> Self {
        PlanSettings {
            resize_rootfs: true,
            use_boothd: false,
        }
    }
}

/// What the root phase does on this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPlan {
    /// A partition labelled `UROOT` exists: check and mount it.
    Existing { partition: String },
    /// Format this empty partition.
    Format { partition: String },
    /// Write a new table on an empty disk, then format its first partition. Any further
    /// partition (the rest after 20 GiB) stays unformatted.
    PartitionDisk {
        disk: String,
        kind: TableKind,
        parts: Vec<PartSpec>,
    },
    /// Add partitions to the boot disk's table, then format the first new one.
    ExtendBootDisk {
        disk: String,
        kind: TableKind,
        parts: Vec<PartSpec>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no disk or partition can hold the scratch file system (an empty disk, an empty partition of at least 750 MiB, or 750 MiB free on the boot disk are needed); {0}")]
    NoEmptyPartition(String),
    #[error("not enough free space on the boot disk /dev/{disk}: {free_mib} MiB free, 750 MiB needed besides a 20 MiB margin")]
    BootDiskFull { disk: String, free_mib: u64 },
    #[error("the boot disk /dev/{disk} has {why}; cannot add a partition")]
    BootDiskUnusable { disk: String, why: String },
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// First byte after the usable area of a disk of `size` bytes: its end (capped at what an MBR
/// addresses), or for GPT the start of the backup entry array.
pub fn usable_end(kind: TableKind, size: u64, sector_size: u64) -> u64 {
    let sectors = size / sector_size;
    match kind {
        TableKind::Mbr => sectors.min(u64::from(u32::MAX)) * sector_size,
        TableKind::Gpt => (sectors - 1 - GPT_ENTRIES_BYTES.div_ceil(sector_size)) * sector_size,
    }
}

/// MBR up to what it can address (2 TiB with 512-byte sectors), GPT beyond.
pub fn table_for(size: u64, sector_size: u64) -> TableKind {
    if size / sector_size > u64::from(u32::MAX) {
        TableKind::Gpt
    } else {
        TableKind::Mbr
    }
}

/// Partitions for the free area `[start, end)` (spec §6.2/§6.3): everything in one partition,
/// or — `resize_rootfs` off and more than 20 GiB — 20 GiB plus, when `rest` is wanted, the rest.
fn split(start: u64, end: u64, sector_size: u64, resize_rootfs: bool, rest: bool) -> Vec<PartSpec> {
    let floor = |x: u64| x / sector_size * sector_size;
    if !resize_rootfs && end - start > DEFAULT_SIZE {
        let first = PartSpec {
            start,
            size: DEFAULT_SIZE,
        };
        let rest_start = start + DEFAULT_SIZE;
        if rest && end > rest_start + ALIGN {
            return vec![
                first,
                PartSpec {
                    start: rest_start,
                    size: floor(end - rest_start),
                },
            ];
        }
        return vec![first];
    }
    vec![PartSpec {
        start,
        size: floor(end - start),
    }]
}

/// Why `d` cannot hold the scratch file system, for the error message.
fn why_not(devs: &BlockDevices, d: &BlockDevice) -> String {
    let what = if d.removable {
        "removable".to_string()
    } else if d.read_only {
        "read-only".to_string()
    } else if d.boot_medium {
        "the boot medium".to_string()
    } else if d.is_disk() && devs.partitions_of(&d.name).next().is_some() {
        "has partitions".to_string()
    } else if d.empty_because.is_some() {
        format!("too small ({} MiB)", d.size / MIB)
    } else {
        format!("holds {}", d.content)
    };
    format!("/dev/{}: {what}", d.name)
}

/// Plans the scratch partition (spec §6.1).
pub fn plan_root(devs: &BlockDevices, settings: PlanSettings) -> Result<RootPlan, PlanError> {
    if let Some(p) = &devs.root_dev {
        return Ok(RootPlan::Existing {
            partition: p.clone(),
        });
    }
    let big_enough = |d: &&BlockDevice| d.size >= MIN_SCRATCH + ALIGN;
    // 1. An empty disk, unless the user asked for the boot disk.
    if !settings.use_boothd {
        if let Some(d) = devs
            .devices
            .iter()
            .filter(|d| d.is_disk() && devs.is_empty(d))
            .find(big_enough)
        {
            let kind = table_for(d.size, d.sector_size);
            let end = usable_end(kind, d.size, d.sector_size);
            return Ok(RootPlan::PartitionDisk {
                disk: d.name.clone(),
                kind,
                parts: split(ALIGN, end, d.sector_size, settings.resize_rootfs, true),
            });
        }
    }
    // 2. The first empty partition (name order).
    if let Some(p) = devs
        .devices
        .iter()
        .filter(|d| !d.is_disk() && devs.is_empty(d))
        .find(|d| d.size >= MIN_SCRATCH)
    {
        return Ok(RootPlan::Format {
            partition: p.name.clone(),
        });
    }
    // 3. Last resort: a new partition on the boot disk.
    if let Some(disk) = devs.boot_disk.as_deref().and_then(|b| devs.get(b)) {
        return plan_boot_disk(devs, disk, settings);
    }
    let reasons: Vec<String> = devs.devices.iter().map(|d| why_not(devs, d)).collect();
    Err(PlanError::NoEmptyPartition(if reasons.is_empty() {
        "no block device was found".to_string()
    } else {
        reasons.join(", ")
    }))
}

fn plan_boot_disk(
    devs: &BlockDevices,
    disk: &BlockDevice,
    settings: PlanSettings,
) -> Result<RootPlan, PlanError> {
    let unusable = |why: &str| PlanError::BootDiskUnusable {
        disk: disk.name.clone(),
        why: why.to_string(),
    };
    if disk.read_only {
        return Err(unusable("is read-only"));
    }
    let kind = table_kind(disk).ok_or_else(|| unusable("no partition table we know"))?;
    let parts: Vec<&BlockDevice> = devs.partitions_of(&disk.name).collect();
    let used_end = parts
        .iter()
        .filter_map(|p| p.partition.as_ref().map(|i| i.start + p.size))
        .max()
        .unwrap_or(0);
    let start = align_up(used_end.max(ALIGN));
    let end = usable_end(kind, disk.size, disk.sector_size);
    let free = end.saturating_sub(start);
    if free < MIN_SCRATCH + MARGIN {
        return Err(PlanError::BootDiskFull {
            disk: disk.name.clone(),
            free_mib: free / MIB,
        });
    }
    let new = split(
        start,
        end,
        disk.sector_size,
        settings.resize_rootfs,
        kind == TableKind::Mbr,
    );
    if kind == TableKind::Mbr {
        let primaries = parts
            .iter()
            .filter(|p| p.partition.as_ref().is_some_and(|i| i.number <= 4))
            .count();
        if primaries + new.len() > 4 {
            return Err(unusable("no free primary partition slot"));
        }
    }
    Ok(RootPlan::ExtendBootDisk {
        disk: disk.name.clone(),
        kind,
        parts: new,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::probe::{Content, ExtKind};
    use crate::devices::PartitionOf;

    const TIB: u64 = 1 << 40;

    fn disk(name: &str, size: u64, content: Content) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            major: 8,
            minor: 0,
            size,
            sector_size: 512,
            partition: None,
            removable: false,
            read_only: false,
            empty_because: (content == Content::Blank).then_some("no signature"),
            content,
            media: Vec::new(),
            table_entries: None,
            boot_medium: false,
            in_progress: false,
        }
    }

    fn part(disk: &str, n: u32, start: u64, size: u64, content: Content) -> BlockDevice {
        let mut d = self::disk(&format!("{disk}{n}"), size, content);
        d.partition = Some(PartitionOf {
            disk: disk.into(),
            number: n,
            start,
        });
        d
    }

    fn mbr() -> Content {
        Content::PartitionTable {
            kind: TableKind::Mbr,
            ours: false,
        }
    }

    fn ext4(label: &str) -> Content {
        Content::Ext {
            kind: ExtKind::Ext4,
            label: Some(label.into()),
        }
    }

    fn devs(mut list: Vec<BlockDevice>) -> BlockDevices {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = BlockDevices {
            devices: list,
            ..Default::default()
        };
        for d in &out.devices {
            if let (Some(l), Some(_)) = (d.content.label(), &d.partition) {
                out.labels.entry(l.to_string()).or_insert(d.name.clone());
            }
            if d.boot_medium {
                out.boot_partition = Some(d.name.clone());
                out.boot_disk = Some(d.disk_name().to_string());
            }
        }
        out.root_dev = out.labels.get("UROOT").cloned();
        out
    }

    /// The x86 `.hdd` image on a disk of `size`: FAT boot partition 1 from 1 MiB to 23 MiB.
    fn hdd_image(size: u64) -> Vec<BlockDevice> {
        let mut boot = part("vda", 1, MIB, 22 * MIB, Content::Other("vfat"));
        boot.boot_medium = true;
        vec![disk("vda", size, mbr()), boot]
    }

    const DEFAULTS: PlanSettings = PlanSettings {
        resize_rootfs: true,
        use_boothd: false,
    };
    const OFF: PlanSettings = PlanSettings {
        resize_rootfs: false,
        use_boothd: false,
    };

    fn whole(size: u64) -> Vec<PartSpec> {
        vec![PartSpec {
            start: MIB,
            size: size - MIB,
        }]
    }

    #[test]
    fn table_of_layouts() {
        type Case = (
            &'static str,
            Vec<BlockDevice>,
            PlanSettings,
            Result<RootPlan, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "second boot: UROOT wins over everything",
                vec![disk("sda", 30 * GIB, mbr()), part("sda", 1, MIB, 29 * GIB, ext4("UROOT")), disk("sdb", 30 * GIB, Content::Blank)],
                DEFAULTS,
                Ok(RootPlan::Existing { partition: "sda1".into() }),
            ),
            (
                "blank 30 GiB disk, default: one partition over the whole disk (the code, not the docs)",
                vec![disk("vda", 30 * GIB, Content::Blank)],
                DEFAULTS,
                Ok(RootPlan::PartitionDisk { disk: "vda".into(), kind: TableKind::Mbr, parts: whole(30 * GIB) }),
            ),
            (
                "blank 30 GiB disk, resize_rootfs=off: 20 GiB plus the rest",
                vec![disk("vda", 30 * GIB, Content::Blank)],
                OFF,
                Ok(RootPlan::PartitionDisk {
                    disk: "vda".into(),
                    kind: TableKind::Mbr,
                    parts: vec![PartSpec { start: MIB, size: 20 * GIB }, PartSpec { start: MIB + 20 * GIB, size: 10 * GIB - MIB }],
                }),
            ),
            (
                "blank 2 GiB disk, resize_rootfs=off: too small to split",
                vec![disk("vda", 2 * GIB, Content::Blank)],
                OFF,
                Ok(RootPlan::PartitionDisk { disk: "vda".into(), kind: TableKind::Mbr, parts: whole(2 * GIB) }),
            ),
            (
                "blank 3 TiB disk: GPT, partition up to the backup table",
                vec![disk("vda", 3 * TIB, Content::Blank)],
                DEFAULTS,
                Ok(RootPlan::PartitionDisk {
                    disk: "vda".into(),
                    kind: TableKind::Gpt,
                    parts: vec![PartSpec { start: MIB, size: 3 * TIB - MIB - 33 * 512 }],
                }),
            ),
            (
                "boot disk first (use_boothd) when an empty partition exists elsewhere: the partition",
                vec![disk("sdb", 8 * GIB, Content::Blank), disk("sdc", 8 * GIB, mbr()), part("sdc", 1, MIB, 4 * GIB, Content::Blank)],
                PlanSettings { resize_rootfs: true, use_boothd: true },
                Ok(RootPlan::Format { partition: "sdc1".into() }),
            ),
            (
                "empty disk wins over an empty partition (spec §6.1 order)",
                vec![disk("sda", 8 * GIB, mbr()), part("sda", 1, MIB, 4 * GIB, Content::Blank), disk("sdb", 8 * GIB, Content::Blank)],
                DEFAULTS,
                Ok(RootPlan::PartitionDisk { disk: "sdb".into(), kind: TableKind::Mbr, parts: whole(8 * GIB) }),
            ),
            (
                "disks with data and a data partition: only the boot disk is left",
                {
                    let mut v = hdd_image(10 * GIB);
                    v.push(disk("vdb", 10 * GIB, ext4("data")));
                    v.push(disk("vdc", 10 * GIB, mbr()));
                    v.push(part("vdc", 1, MIB, 5 * GIB, Content::Other("xfs")));
                    v
                },
                DEFAULTS,
                Ok(RootPlan::ExtendBootDisk {
                    disk: "vda".into(),
                    kind: TableKind::Mbr,
                    parts: vec![PartSpec { start: 23 * MIB, size: 10 * GIB - 23 * MIB }],
                }),
            ),
            (
                "boot disk of 30 GiB, resize_rootfs=off: 20 GiB plus the rest on MBR",
                hdd_image(30 * GIB),
                OFF,
                Ok(RootPlan::ExtendBootDisk {
                    disk: "vda".into(),
                    kind: TableKind::Mbr,
                    parts: vec![PartSpec { start: 23 * MIB, size: 20 * GIB }, PartSpec { start: 23 * MIB + 20 * GIB, size: 10 * GIB - 23 * MIB }],
                }),
            ),
            (
                "GPT boot disk (aarch64 image on 30 GiB), resize_rootfs=off: 20 GiB, no rest",
                {
                    let mut boot = part("vda", 1, MIB, 48 * MIB, Content::Other("vfat"));
                    boot.boot_medium = true;
                    vec![disk("vda", 30 * GIB, Content::PartitionTable { kind: TableKind::Gpt, ours: false }), boot]
                },
                OFF,
                Ok(RootPlan::ExtendBootDisk { disk: "vda".into(), kind: TableKind::Gpt, parts: vec![PartSpec { start: 49 * MIB, size: 20 * GIB }] }),
            ),
            (
                "boot image on a disk barely larger than the image: not enough space",
                hdd_image(700 * MIB),
                DEFAULTS,
                Err("not enough free space on the boot disk /dev/vda: 677 MiB free"),
            ),
            (
                "no disk at all",
                vec![],
                DEFAULTS,
                Err("no block device was found"),
            ),
            (
                "only a read-only disk and a CD: nothing",
                {
                    let mut ro = disk("vdb", 10 * GIB, Content::Blank);
                    ro.read_only = true;
                    ro.empty_because = None;
                    let mut cd = disk("sr0", 400 * MIB, Content::Other("iso9660"));
                    cd.removable = true;
                    vec![ro, cd]
                },
                DEFAULTS,
                Err("/dev/sr0: removable, /dev/vdb: read-only"),
            ),
            (
                "a blank disk too small, and an unknown table: nothing, and said why",
                vec![disk("vdb", 100 * MIB, Content::Blank), disk("vdc", 10 * GIB, Content::Unknown)],
                DEFAULTS,
                Err("/dev/vdb: too small (100 MiB), /dev/vdc: holds data of unknown type"),
            ),
            (
                "a tiny blank partition (BIOS boot) is never picked",
                vec![
                    disk("vda", 10 * GIB, Content::PartitionTable { kind: TableKind::Gpt, ours: false }),
                    part("vda", 1, MIB, MIB, Content::Blank),
                    part("vda", 2, 2 * MIB, 10 * GIB - 3 * MIB, ext4("os")),
                ],
                DEFAULTS,
                Err("/dev/vda1: too small (1 MiB)"),
            ),
            (
                "power cut after partitioning: the blank first partition is formatted, the disk is not touched again",
                vec![
                    disk("vdb", 30 * GIB, Content::PartitionTable { kind: TableKind::Mbr, ours: true }),
                    part("vdb", 1, MIB, 20 * GIB, Content::Blank),
                    part("vdb", 2, MIB + 20 * GIB, 10 * GIB - MIB, Content::Blank),
                ],
                OFF,
                Ok(RootPlan::Format { partition: "vdb1".into() }),
            ),
            (
                "power cut during the GPT write: our protective MBR without partitions means empty",
                vec![{
                    let mut d = disk("vdb", 3 * TIB, Content::PartitionTable { kind: TableKind::Gpt, ours: true });
                    d.empty_because = Some("unfinished µCernVM partition table");
                    d
                }],
                DEFAULTS,
                Ok(RootPlan::PartitionDisk { disk: "vdb".into(), kind: TableKind::Gpt, parts: vec![PartSpec { start: MIB, size: 3 * TIB - MIB - 33 * 512 }] }),
            ),
        ];
        for (name, list, settings, want) in cases {
            let got = plan_root(&devs(list), settings);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.to_string().contains(w), "{name}: {g}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn mbr_boot_disk_without_free_slot_is_refused() {
        let mut v = hdd_image(10 * GIB);
        for n in 2..=4 {
            v.push(part(
                "vda",
                n,
                u64::from(n) * 30 * MIB,
                MIB,
                Content::Other("swap"),
            ));
        }
        let err = plan_root(&devs(v), DEFAULTS).unwrap_err();
        assert!(
            err.to_string().contains("no free primary partition slot"),
            "{err}"
        );
    }

    #[test]
    fn parts_are_aligned_and_inside_the_disk() {
        for size in [
            GIB,
            21 * GIB,
            20 * GIB + MIB + 4096,
            2 * TIB - 512,
            3 * TIB + 7 * 512,
        ] {
            for resize_rootfs in [true, false] {
                let plan = plan_root(
                    &devs(vec![disk("vdb", size, Content::Blank)]),
                    PlanSettings {
                        resize_rootfs,
                        use_boothd: false,
                    },
                )
                .unwrap();
                let RootPlan::PartitionDisk { kind, parts, .. } = plan else {
                    panic!("{plan:?}")
                };
                let end = usable_end(kind, size, 512);
                let mut prev = 0;
                for p in parts {
                    assert_eq!(p.start % ALIGN, 0);
                    assert_eq!(p.size % 512, 0);
                    assert!(p.start >= prev && p.start + p.size <= end, "{size} {p:?}");
                    prev = p.start + p.size;
                }
            }
        }
    }
}
