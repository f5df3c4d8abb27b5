//! Block devices that may carry a context (CD-ROMs, config drives, any partition): listing
//! them from `/proc/partitions`, recognising their file system by its signature, and mounting
//! them read-only with the kernel's driver (modules loaded on demand).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::devices::probe::read_head;
pub use crate::devices::probe::{probe_bytes, FsType};
use crate::devices::BlockDevices;
use crate::modules;

/// Kernel modules a mount of `fstype` needs. vfat's default code page and character sets are
/// requested by the kernel through modprobe, which the initramfs does not have.
fn mount_modules(fstype: FsType) -> &'static [&'static str] {
    match fstype {
        FsType::Iso9660 => &["isofs"],
        FsType::Udf => &["udf"],
        FsType::Vfat => &[
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "nls_iso8859_1",
            "nls_utf8",
        ],
        FsType::Ext => &["ext4"],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot create mount point {path}: {cause}")]
    MountPoint {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot mount {device} ({fstype}) read-only: {cause}")]
    Mount {
        device: PathBuf,
        fstype: &'static str,
        cause: nix::Error,
    },
}

/// Device names of `/proc/partitions` text (header skipped), sorted by name as the original.
pub fn partition_names(proc_partitions: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_partitions
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Every mountable file system found on the device (an ISO/UDF bridge disc has two). Read
/// errors mean "nothing recognised".
pub fn probe(device: &Path) -> Vec<FsType> {
    crate::devices::probe::open_device(device)
        .and_then(|mut f| read_head(&mut f))
        .map(|head| probe_bytes(&head))
        .unwrap_or_default()
}

/// A read-only mount that is undone when dropped.
pub struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            log::warn!("cannot unmount {}: {e}", self.dir.display());
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Mounts `device` read-only as `fstype` on a fresh directory below `scratch`.
pub fn mount_ro(device: &Path, fstype: FsType, scratch: &Path) -> Result<Mounted, MediaError> {
    for m in mount_modules(fstype) {
        if let Err(e) = modules::load(m) {
            log::debug!("module {m} for {}: {e}", fstype.mount_name());
        }
    }
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = scratch.join(format!("ucvm-media-{}-{name}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|source| MediaError::MountPoint {
        path: dir.clone(),
        cause: source,
    })?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(source) = mount(
        Some(device),
        &dir,
        Some(fstype.mount_name()),
        flags,
        None::<&str>,
    ) {
        let _ = fs::remove_dir(&dir);
        return Err(MediaError::Mount {
            device: device.to_path_buf(),
            fstype: fstype.mount_name(),
            cause: source,
        });
    }
    Ok(Mounted { dir })
}

/// One candidate medium: its name (as in `/proc/partitions`), its device node, and the file
/// systems on it if a device scan already looked (`None`: probed when the media are scanned).
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub node: PathBuf,
    pub fs_types: Option<Vec<FsType>>,
}

/// The block devices of the running system, in name order.
pub fn system_devices() -> Vec<Device> {
    let text = fs::read_to_string("/proc/partitions").unwrap_or_default();
    partition_names(&text)
        .into_iter()
        .map(|name| Device {
            node: PathBuf::from("/dev").join(&name),
            name,
            fs_types: None,
        })
        .collect()
}

/// Where media come from: the kernel's block devices, or (tests) directories standing in for
/// already-mounted media.
pub enum Media {
    Devices {
        devices: Vec<Device>,
        scratch: PathBuf,
    },
    Fixtures(Vec<(String, FsType, PathBuf)>),
}

impl Media {
    pub fn system(scratch: PathBuf) -> Self {
        Media::Devices {
            devices: system_devices(),
            scratch,
        }
    }

    /// The media of the devices phase's scan, without opening any device again: every open of
    /// an empty CD drive costs a media check of the drive (tenths of a second under
    /// emulation), and the network, context and extra-context searches would each pay it.
    /// Without a scan (the devices phase failed), the media of [`Media::system`].
    pub fn scanned(found: Option<&BlockDevices>, scratch: PathBuf) -> Self {
        let Some(found) = found else {
            return Media::system(scratch);
        };
        // In name order already, as the scan keeps them.
        let devices: Vec<Device> = found
            .devices
            .iter()
            .map(|d| Device {
                name: d.name.clone(),
                node: found.path(&d.name),
                fs_types: Some(d.media.clone()),
            })
            .collect();
        Media::Devices { devices, scratch }
    }

    /// Visits every medium of an allowed type (`None`: any recognised type), mounted, in name
    /// order; `visit` returns `true` to stop the scan. Returns the name of the medium that
    /// stopped it.
    pub fn scan(
        &self,
        allowed: Option<&[FsType]>,
        visit: &mut dyn FnMut(&str, FsType, &Path) -> bool,
    ) -> Option<String> {
        let ok = |t: &FsType| allowed.is_none_or(|a| a.contains(t));
        match self {
            Media::Fixtures(list) => {
                for (name, t, dir) in list {
                    if ok(t) && visit(name, *t, dir) {
                        return Some(name.clone());
                    }
                }
                None
            }
            Media::Devices { devices, scratch } => {
                for d in devices {
                    let found = match &d.fs_types {
                        Some(types) => types.clone(),
                        None => probe(&d.node),
                    };
                    log::debug!("media: {} holds {found:?}", d.name);
                    let Some(t) = found.into_iter().find(|t| ok(t)) else {
                        continue;
                    };
                    let m = match mount_ro(&d.node, t, scratch) {
                        Ok(m) => m,
                        Err(e) => {
                            log::info!("{e}");
                            continue;
                        }
                    };
                    if visit(&d.name, t, m.path()) {
                        return Some(d.name.clone());
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn partitions_are_sorted_by_name() {
        let t = "major minor  #blocks  name\n\n 254 16 1000 vdb\n 11 0 300 sr0\n 254 0 2000 vda\n 254 1 1000 vda1\n";
        assert_eq!(partition_names(t), ["sr0", "vda", "vda1", "vdb"]);
        assert!(partition_names("").is_empty());
    }

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn signatures_of_real_images() {
        assert!(
            have("genisoimage") && have("mkfs.vfat") && have("mke2fs"),
            "scripts/bootstrap installs the image tools"
        );
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("context.sh"), "A=1\n").unwrap();
        let iso = d.path().join("c.iso");
        let udf = d.path().join("u.iso");
        let fat = d.path().join("f.img");
        let ext = d.path().join("e.img");
        let run = |args: &[&str]| {
            let s = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                s.status.success(),
                "{args:?} {}",
                String::from_utf8_lossy(&s.stderr)
            );
        };
        run(&[
            "genisoimage",
            "-quiet",
            "-o",
            iso.to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        run(&[
            "genisoimage",
            "-quiet",
            "-udf",
            "-o",
            udf.to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        run(&["mkfs.vfat", "-C", fat.to_str().unwrap(), "1440"]);
        run(&[
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            ext.to_str().unwrap(),
            "4M",
        ]);
        assert_eq!(probe(&iso), [FsType::Iso9660]);
        assert_eq!(probe(&udf), [FsType::Iso9660, FsType::Udf]);
        assert_eq!(probe(&fat), [FsType::Vfat]);
        assert_eq!(probe(&ext), [FsType::Ext]);
        assert!(probe(&d.path().join("missing")).is_empty());
        assert!(probe_bytes(&[0u8; 100]).is_empty());
    }
}
