//! Content probe of a block device: which signature, if any, sits at its start (spec §4,
//! recommendation "treat any device with a recognised signature as not empty").
//!
//! Only the bytes of the first 68 KiB are looked at; the probe never writes. Anything it does not
//! recognise but that is not all zeros is reported as such, so that the caller can stay on the
//! safe side.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Bytes read from the start of a device for the probe (covers the btrfs superblock at 64 KiB).
pub const PROBE_BYTES: usize = 68 * 1024;

/// The MBR disk signature (bytes 440..444) that µCernVM writes into every partition table it
/// creates on an empty disk: "uCVM". It lets a later boot recognise its own half-written GPT.
pub const OUR_DISK_SIGNATURE: [u8; 4] = *b"uCVM";

/// ext4 label of a scratch file system whose first-boot initialisation has not finished yet.
/// Only µCernVM writes it, and only on a device it found empty (docs/scratch-disk.md).
pub const LABEL_UNFINISHED: &str = "UROOT-INIT";

/// The label of a finished scratch file system.
pub const LABEL_ROOT: &str = "UROOT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtKind {
    Ext2,
    Ext3,
    Ext4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR",
            TableKind::Gpt => "GPT",
        })
    }
}

/// What the first bytes of a device hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Only zeros where any known signature would be.
    Blank,
    /// An MBR (boot signature 0x55AA) or a protective MBR in front of a GPT.
    PartitionTable {
        kind: TableKind,
        /// The disk signature is [`OUR_DISK_SIGNATURE`]: µCernVM wrote this table.
        ours: bool,
    },
    Ext {
        kind: ExtKind,
        label: Option<String>,
    },
    /// Another recognised signature (file system, swap, LVM, RAID, crypto, ISO 9660, FAT...).
    Other(&'static str),
    /// Not zeros, but no signature we know: treated as data.
    Unknown,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Blank => f.write_str("nothing"),
            Content::PartitionTable { kind, .. } => write!(f, "a {kind} partition table"),
            Content::Ext { kind, label } => {
                write!(f, "an {kind:?} file system")?;
                match label {
                    Some(l) => write!(f, " labelled {l}"),
                    None => Ok(()),
                }
            }
            Content::Other(t) => write!(f, "{t}"),
            Content::Unknown => f.write_str("data of unknown type"),
        }
    }
}

impl Content {
    /// A recognised file system that may carry the boot sentinel or be the Amazon ext3 case.
    pub fn mount_type(&self) -> Option<&'static str> {
        match self {
            Content::Ext {
                kind: ExtKind::Ext2,
                ..
            } => Some("ext2"),
            Content::Ext {
                kind: ExtKind::Ext3,
                ..
            } => Some("ext3"),
            Content::Ext {
                kind: ExtKind::Ext4,
                ..
            } => Some("ext4"),
            Content::Other("vfat") => Some("vfat"),
            Content::Other("iso9660") => Some("iso9660"),
            _ => None,
        }
    }

    pub fn label(&self) -> Option<&str> {
        match self {
            Content::Ext { label, .. } => label.as_deref(),
            _ => None,
        }
    }
}

fn at<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off + N)?.try_into().ok()
}

fn le16(buf: &[u8], off: usize) -> u16 {
    at::<2>(buf, off).map(u16::from_le_bytes).unwrap_or(0)
}

fn le32(buf: &[u8], off: usize) -> u32 {
    at::<4>(buf, off).map(u32::from_le_bytes).unwrap_or(0)
}

fn has(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
// Incompat features ext3 does not know (extents, 64bit, flex_bg, ...): anything beyond
// filetype (0x2), recover (0x4), journal_dev (0x8) and meta_bg (0x10).
const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x8 | 0x10;

fn probe_ext(buf: &[u8]) -> Option<Content> {
    if le16(buf, EXT_SB + 0x38) != EXT_MAGIC {
        return None;
    }
    let compat = le32(buf, EXT_SB + 0x5C);
    let incompat = le32(buf, EXT_SB + 0x60);
    let kind = if incompat & !EXT3_INCOMPAT != 0 {
        ExtKind::Ext4
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
        ExtKind::Ext3
    } else {
        ExtKind::Ext2
    };
    let raw = buf.get(EXT_SB + 0x78..EXT_SB + 0x88)?;
    let label = raw.split(|&b| b == 0).next().unwrap_or(raw);
    let label = String::from_utf8_lossy(label).into_owned();
    Some(Content::Ext {
        kind,
        label: (!label.is_empty()).then_some(label),
    })
}

/// Classifies the first bytes of a device (`buf` may be shorter than [`PROBE_BYTES`]).
pub fn classify(buf: &[u8]) -> Content {
    if let Some(ext) = probe_ext(buf) {
        return ext;
    }
    // Signatures at fixed offsets, checked before the 0x55AA test because FAT boot sectors and
    // some of these carry 0x55AA too.
    let others: &[(usize, &[u8], &'static str)] = &[
        (0, b"LUKS\xba\xbe", "crypto_LUKS"),
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (4096 - 10, b"SWAPSPACE2", "swap"),
        (4096 - 10, b"SWAP-SPACE", "swap"),
        (512, b"LABELONE", "LVM2_member"),
        (0x1000, &[0xfc, 0x4e, 0x2b, 0xa9], "linux_raid_member"),
        (0x8001, b"CD001", "iso9660"),
        (0x36, b"FAT1", "vfat"),
        (0x52, b"FAT32", "vfat"),
        (3, b"NTFS    ", "ntfs"),
        (3, b"EXFAT   ", "exfat"),
    ];
    for (off, magic, name) in others {
        if has(buf, *off, magic) {
            return Content::Other(name);
        }
    }
    if has(buf, 512, b"EFI PART") || has(buf, 510, &[0x55, 0xAA]) {
        let kind = if buf.get(446 + 4) == Some(&0xEE) || has(buf, 512, b"EFI PART") {
            TableKind::Gpt
        } else {
            TableKind::Mbr
        };
        return Content::PartitionTable {
            kind,
            ours: has(buf, 440, &OUR_DISK_SIGNATURE) && has(buf, 510, &[0x55, 0xAA]),
        };
    }
    if buf.iter().all(|&b| b == 0) {
        Content::Blank
    } else {
        Content::Unknown
    }
}

// CDROM_DRIVE_STATUS from <linux/cdrom.h>, an ioctl that takes the slot as its int argument.
nix::ioctl_write_int_bad!(cdrom_drive_status, 0x5326);
/// `CDSL_CURRENT`: the drive's current slot.
const CDSL_CURRENT: libc::c_int = libc::c_int::MAX;
const CDS_NO_DISC: libc::c_int = 1;
const CDS_TRAY_OPEN: libc::c_int = 2;

/// Opens a block device to read its first bytes. The device is first opened without waiting
/// for a medium (`O_NONBLOCK`) and, if it is a CD drive, asked whether it holds a disc: an
/// empty drive gives `ENOMEDIUM` after one command, where a plain open of it runs the
/// kernel's whole media check (a tenth of a second per open under emulation, and every boot
/// without a context CD has an empty drive). Anything else is opened as usual.
pub fn open_device(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let quick = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // SAFETY: the ioctl takes an int by value and the descriptor is open for the call.
    match unsafe { cdrom_drive_status(quick.as_raw_fd(), CDSL_CURRENT) } {
        Ok(CDS_NO_DISC | CDS_TRAY_OPEN) => Err(std::io::Error::from_raw_os_error(libc::ENOMEDIUM)),
        // A CD drive with a disc (or not sure): the normal open and its checks.
        Ok(_) => File::open(path),
        // Not a CD drive: O_NONBLOCK means nothing to other block devices and files.
        Err(_) => Ok(quick),
    }
}

/// File systems a context search may mount, as [`probe_bytes`] recognises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Udf,
    Vfat,
    Ext,
}

impl FsType {
    /// The name `mount(2)` knows.
    pub fn mount_name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Udf => "udf",
            FsType::Vfat => "vfat",
            FsType::Ext => "ext4",
        }
    }
}

/// The mountable file systems in the first bytes of a device (an ISO/UDF bridge disc has two):
/// the signature classification of [`classify`],
/// plus the UDF volume recognition sequence (NSR02/NSR03 in the sectors after 32 KiB), which
/// discovery does not need.
pub fn probe_bytes(b: &[u8]) -> Vec<FsType> {
    let mut found = Vec::new();
    match classify(b).mount_type() {
        Some("iso9660") => found.push(FsType::Iso9660),
        Some("vfat") => found.push(FsType::Vfat),
        Some("ext2" | "ext3" | "ext4") => found.push(FsType::Ext),
        _ => {}
    }
    let at = |off: usize, sig: &[u8]| b.get(off..off + sig.len()) == Some(sig);
    if (0..16).any(|k| at(32768 + 2048 * k + 1, b"NSR02") || at(32768 + 2048 * k + 1, b"NSR03")) {
        found.push(FsType::Udf);
    }
    found
}

/// The first [`PROBE_BYTES`] of `dev` (fewer if it is smaller).
pub fn read_head<R: Read + Seek>(dev: &mut R) -> std::io::Result<Vec<u8>> {
    dev.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    dev.take(PROBE_BYTES as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_device_reads_what_is_not_a_cd_drive() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("disk.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        let mut f = open_device(&img).unwrap();
        assert_eq!(classify(&read_head(&mut f).unwrap()), Content::Blank);
        let e = open_device(&t.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    fn ext_sb(compat: u32, incompat: u32, label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[EXT_SB + 0x38..EXT_SB + 0x3A].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        b[EXT_SB + 0x5C..EXT_SB + 0x60].copy_from_slice(&compat.to_le_bytes());
        b[EXT_SB + 0x60..EXT_SB + 0x64].copy_from_slice(&incompat.to_le_bytes());
        b[EXT_SB + 0x78..EXT_SB + 0x78 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    #[test]
    fn ext_kinds_and_labels() {
        assert_eq!(
            classify(&ext_sb(0, 0x2, "")),
            Content::Ext {
                kind: ExtKind::Ext2,
                label: None
            }
        );
        assert_eq!(
            classify(&ext_sb(0x4, 0x2, "data")),
            Content::Ext {
                kind: ExtKind::Ext3,
                label: Some("data".into())
            }
        );
        let c = classify(&ext_sb(0x4, 0x2 | 0x40 | 0x200, "UROOT"));
        assert_eq!(c.label(), Some("UROOT"));
        assert_eq!(c.mount_type(), Some("ext4"));
    }

    #[test]
    fn tables_zeros_and_junk() {
        assert_eq!(classify(&vec![0u8; PROBE_BYTES]), Content::Blank);
        assert_eq!(classify(&[]), Content::Blank);
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(
            classify(&mbr),
            Content::PartitionTable {
                kind: TableKind::Mbr,
                ours: false
            }
        );
        mbr[440..444].copy_from_slice(&OUR_DISK_SIGNATURE);
        mbr[446 + 4] = 0xEE;
        assert_eq!(
            classify(&mbr),
            Content::PartitionTable {
                kind: TableKind::Gpt,
                ours: true
            }
        );
        // A GPT header without its protective MBR is still a table, and not ours.
        let mut gpt = vec![0u8; 4096];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(
            classify(&gpt),
            Content::PartitionTable {
                kind: TableKind::Gpt,
                ours: false
            }
        );
        let mut junk = vec![0u8; 4096];
        junk[2000] = 1;
        assert_eq!(classify(&junk), Content::Unknown);
    }

    #[test]
    fn other_signatures_win_over_the_boot_signature() {
        let mut swap = vec![0u8; 8192];
        swap[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(classify(&swap), Content::Other("swap"));
        let mut fat = vec![0u8; 4096];
        fat[0x52..0x57].copy_from_slice(b"FAT32");
        fat[510] = 0x55;
        fat[511] = 0xAA;
        assert_eq!(classify(&fat), Content::Other("vfat"));
        assert_eq!(classify(&fat).mount_type(), Some("vfat"));
        let mut lvm = vec![0u8; 4096];
        lvm[512..520].copy_from_slice(b"LABELONE");
        assert_eq!(classify(&lvm), Content::Other("LVM2_member"));
    }
}
