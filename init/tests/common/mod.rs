//! Loop devices over sparse image files, for the scratch-disk tests (root only).
//!
//! Every resource is released in `Drop`, also when an assertion fails: mounts first, then the
//! loop device, then the temporary directory with the image.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ucernvm_init::devices::DeviceEnv;
use ucernvm_init::disk::root::RootEnv;
use ucernvm_init::disk::tools::Tools;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// These tests attach loop devices and mount file systems; they need root.
pub fn need_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    test_prereq::skip("needs root (loop devices, mounts)");
    false
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse image file attached to a loop device, with its own mount point and log directory.
pub struct TestDisk {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    /// `loopN`, `None` while detached ("powered off").
    pub name: Option<String>,
    pub read_only: bool,
    /// Logical sector size of the loop device.
    pub sector_size: u32,
}

impl TestDisk {
    /// A blank sparse image of `size` bytes, attached.
    pub fn blank(size: u64) -> TestDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        let f = fs::File::create(&image).expect("image");
        f.set_len(size).expect("set_len");
        let mut d = TestDisk {
            dir,
            image,
            name: None,
            read_only: false,
            sector_size: 512,
        };
        d.attach();
        d
    }

    /// An image prepared by `fill` (called with the image path before attaching).
    pub fn from_image(size: u64, fill: impl FnOnce(&Path)) -> TestDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .expect("image");
        fill(&image);
        let mut d = TestDisk {
            dir,
            image,
            name: None,
            read_only: false,
            sector_size: 512,
        };
        d.attach();
        d
    }

    /// A blank image attached with 4 KiB logical sectors.
    pub fn blank_4k(size: u64) -> TestDisk {
        let mut d = TestDisk::blank(size);
        d.power_off();
        d.sector_size = 4096;
        d.attach();
        d
    }

    pub fn attach(&mut self) {
        assert!(self.name.is_none());
        let img = self.image.to_string_lossy().into_owned();
        let sector = self.sector_size.to_string();
        let mut args = vec!["--find", "--show", "--partscan", "--sector-size", &sector];
        if self.read_only {
            args.push("--read-only");
        }
        args.push(&img);
        let dev = run("losetup", &args);
        let name = dev.trim().trim_start_matches("/dev/").to_string();
        assert!(name.starts_with("loop"), "losetup said {dev:?}");
        self.name = Some(name);
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().expect("attached")
    }

    pub fn dev(&self) -> PathBuf {
        PathBuf::from("/dev").join(self.name())
    }

    pub fn root_rw(&self) -> PathBuf {
        self.dir.path().join("root.rw")
    }

    /// Discovery and the root phase restricted to this disk.
    pub fn env(&self) -> RootEnv {
        RootEnv {
            devices: DeviceEnv {
                sys_block: PathBuf::from("/sys/block"),
                dev_dir: PathBuf::from("/dev"),
                by_label: self.dir.path().join("by-label"),
                probe_mount: self.dir.path().join("probe"),
                only: Some(BTreeSet::from([self.name().to_string()])),
            },
            tools: Tools::new(self.dir.path().join("log")),
            root_rw: self.root_rw(),
            busybox: PathBuf::from("/usr/bin/busybox"),
        }
    }

    fn unmount_all(&self) {
        for m in [self.root_rw(), self.dir.path().join("probe")] {
            while is_mountpoint(&m) {
                if nix::mount::umount(&m).is_err() {
                    let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }

    /// Power off: unmount, detach. The page cache of the loop device is written to the image
    /// on detach, so this plays a cut at a step boundary, not in the middle of a write.
    pub fn power_off(&mut self) {
        self.unmount_all();
        if let Some(name) = self.name.take() {
            let _ = Command::new("losetup")
                .args(["-d", &format!("/dev/{name}")])
                .status();
        }
    }

    /// Power off and boot again: the disk comes back, possibly under another loop name.
    pub fn reboot(&mut self) {
        self.power_off();
        self.attach();
    }

    /// The first `len` bytes of the image.
    pub fn head(&self, len: usize) -> Vec<u8> {
        read_at(&self.image, 0, len)
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        self.power_off();
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = p.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
}

/// `blkid -o value -s <tag>` of a device.
pub fn blkid(dev: &Path, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag])
        .arg(dev)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut b = Vec::new();
    f.take(len as u64).read_to_end(&mut b).expect("read");
    b
}

/// Writes `data` at `offset` of a file.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(data).expect("write");
    f.sync_all().expect("sync");
}
