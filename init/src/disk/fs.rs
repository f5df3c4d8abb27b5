//! The scratch file system: format (spec §6.4), check and mount (§6.5), final label, size.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

use crate::devices::probe::LABEL_UNFINISHED;
use crate::disk::tools::{arg, fsck_line_shown, ToolError, ToolLog, Tools};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("Unable to create ext4 filesystem in {0}: {1}")]
    Mkfs(PathBuf, ToolError),
    #[error("cannot check {0}: {1}")]
    Fsck(PathBuf, ToolError),
    #[error("Unable to mount root device {0} on {1}: {2}")]
    Mount(PathBuf, PathBuf, nix::Error),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, nix::Error),
    #[error("cannot label the file system on {0}: {1}")]
    Label(PathBuf, std::io::Error),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot grow the file system on {0}: {1}")]
    Resize(PathBuf, ToolError),
}

/// ext4 with journal and lazy inode-table/journal initialisation (fast even on huge disks),
/// labelled [`LABEL_UNFINISHED`] until the first boot has set everything up. No mount-count or
/// interval checks (spec §6.4): the initramfs ships no `mke2fs.conf`, and mke2fs's built-in
/// defaults (e2fsprogs ≥ 1.42) set neither, so no `tune2fs -c 0 -i 0` is needed
/// (`initramfs/tests/build_cli.rs` checks the shipped mke2fs).
pub fn format(tools: &Tools, dev: &Path) -> Result<(), FsError> {
    tools
        .run_ok(
            ToolLog::Partition,
            "mke2fs",
            &[
                "-F".as_ref(),
                "-q".as_ref(),
                "-t".as_ref(),
                "ext4".as_ref(),
                "-L".as_ref(),
                LABEL_UNFINISHED.as_ref(),
                "-E".as_ref(),
                "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                arg(dev),
            ],
        )
        .map_err(|e| FsError::Mkfs(dev.to_path_buf(), e))?;
    Ok(())
}

/// Preen-mode check before mounting (spec §6.5). As in the original its verdict does not stop
/// the boot (the mount that follows does if the file system is beyond repair); a status of 4
/// or more is reported on the console.
pub fn check(tools: &Tools, dev: &Path, force: bool) -> Result<i32, FsError> {
    let mut args = vec!["-p".as_ref()];
    if force {
        args.push("-f".as_ref());
    }
    args.push(arg(dev));
    let out = tools
        .run(ToolLog::Fsck, "e2fsck", &args, &fsck_line_shown)
        .map_err(|e| FsError::Fsck(dev.to_path_buf(), e))?;
    if !out.output.is_empty() {
        eprint!("{}", out.output);
    }
    if out.status >= 4 {
        crate::console::warn(&format!(
            "e2fsck found errors it could not repair on {} (status {})",
            dev.display(),
            out.status
        ));
    }
    Ok(out.status)
}

/// Why `e2fsck -p` must look at the ext4 file system on `dev` before it is mounted, or `None`
/// when its superblock says what makes `e2fsck -p` skip it: cleanly unmounted, no errors, no
/// journal to replay, no orphan inodes, no mount-count or interval check due. After a power
/// loss the journal needs recovery, so the check runs, as it does on every boot of the
/// original.
pub fn check_reason(dev: &Path) -> Option<String> {
    let mut sb = [0u8; 1024];
    let read = File::open(dev).and_then(|f| f.read_exact_at(&mut sb, 1024));
    if let Err(e) = read {
        return Some(format!("cannot read the superblock ({e})"));
    }
    check_reason_of(&sb)
}

/// [`check_reason`] of a superblock (the 1024 bytes at offset 1024).
fn check_reason_of(sb: &[u8]) -> Option<String> {
    use crate::bytes::{u16_le, u32_le};
    const MAGIC: u16 = 0xef53;
    const STATE_VALID: u16 = 0x0001;
    const STATE_ERROR: u16 = 0x0002;
    const INCOMPAT_RECOVER: u32 = 0x0004;
    let field16 = |at| u16_le(sb, at).unwrap_or(0);
    let field32 = |at| u32_le(sb, at).unwrap_or(0);
    if field16(0x38) != MAGIC {
        return Some("no ext2/3/4 superblock".into());
    }
    let state = field16(0x3a);
    let mounts = field16(0x34);
    let max_mounts = field16(0x36) as i16;
    Some(if state & STATE_VALID == 0 {
        "not cleanly unmounted".into()
    } else if state & STATE_ERROR != 0 || field32(0x194) != 0 {
        "errors recorded".into()
    } else if field32(0x60) & INCOMPAT_RECOVER != 0 {
        "the journal needs recovery".into()
    } else if field32(0xe8) != 0 {
        "orphan inodes to release".into()
    } else if max_mounts > 0 && i32::from(mounts) >= i32::from(max_mounts) {
        format!("mounted {mounts} times (check after {max_mounts})")
    } else if field32(0x44) != 0 {
        "a check interval is set".into()
    } else {
        return None;
    })
}

/// Grows the (unmounted, checked) file system to its partition.
pub fn grow(tools: &Tools, dev: &Path) -> Result<(), FsError> {
    tools
        .run_ok(ToolLog::Partition, "resize2fs", &[arg(dev)])
        .map(|_| ())
        .map_err(|e| FsError::Resize(dev.to_path_buf(), e))
}

/// Mounts the scratch file system read-write (ext4, default options).
pub fn mount_root(dev: &Path, target: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(target).map_err(|e| FsError::Create(target.to_path_buf(), e))?;
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| FsError::Mount(dev.to_path_buf(), target.to_path_buf(), e))
}

pub fn unmount(target: &Path) -> Result<(), FsError> {
    umount(target).map_err(|e| FsError::Unmount(target.to_path_buf(), e))
}

/// `FS_IOC_SETFSLABEL` from <linux/fs.h>: `_IOW(0x94, 50, char[256])`.
const FS_IOC_SETFSLABEL: libc::c_ulong = 0x4100_9432;

/// Sets the label of the file system mounted at `mountpoint` through the kernel (journalled,
/// so it is atomic with respect to power loss), then flushes the file system.
pub fn set_label(mountpoint: &Path, label: &str) -> Result<(), FsError> {
    let err = |e| FsError::Label(mountpoint.to_path_buf(), e);
    let dir = File::open(mountpoint).map_err(err)?;
    // FSLABEL_MAX bytes, NUL-terminated; callers pass ext4's 16-byte labels.
    let mut buf = [0u8; 256];
    for (d, s) in buf.iter_mut().take(255).zip(label.as_bytes()) {
        *d = *s;
    }
    // SAFETY: the ioctl reads a 256-byte label buffer that lives for the call.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SETFSLABEL as _, buf.as_ptr()) };
    if r < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    sync_fs(&dir).map_err(err)
}

/// `syncfs(2)` on the file system holding `f`.
pub fn sync_fs(f: &File) -> std::io::Result<()> {
    nix::unistd::syncfs(f).map_err(std::io::Error::from)
}

/// Size of the mounted file system in MiB (the original's `ROOT_SIZE_MB` from `df`), used for
/// the CernVM-FS cache quota (spec §9.6).
pub fn size_mib(mountpoint: &Path) -> Result<u64, FsError> {
    let st = nix::sys::statvfs::statvfs(mountpoint)
        .map_err(|e| FsError::Create(mountpoint.to_path_buf(), e.into()))?;
    Ok(st.blocks() as u64 * st.fragment_size() as u64 / (1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn mkfs(dir: &Path) -> PathBuf {
        let img = dir.join("fs.img");
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&img)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        img
    }

    fn patch(img: &Path, at: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        f.write_all_at(bytes, 1024 + at).unwrap();
    }

    #[test]
    fn a_clean_file_system_is_not_checked_and_every_e2fsck_reason_is_seen() {
        let t = tempfile::tempdir().unwrap();
        let img = mkfs(t.path());
        assert_eq!(check_reason(&img), None);
        let sb = std::fs::read(&img).unwrap()[1024..2048].to_vec();
        let with = |at: usize, bytes: &[u8]| {
            let mut b = sb.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            check_reason_of(&b)
        };
        let state = u16::from_le_bytes([sb[0x3a], sb[0x3b]]);
        assert_eq!(
            with(0x3a, &(state & !1).to_le_bytes()).as_deref(),
            Some("not cleanly unmounted")
        );
        assert_eq!(
            with(0x3a, &(state | 2).to_le_bytes()).as_deref(),
            Some("errors recorded")
        );
        assert_eq!(
            with(0x194, &3u32.to_le_bytes()).as_deref(),
            Some("errors recorded")
        );
        let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap());
        assert_eq!(
            with(0x60, &(incompat | 4).to_le_bytes()).as_deref(),
            Some("the journal needs recovery")
        );
        assert_eq!(
            with(0xe8, &12u32.to_le_bytes()).as_deref(),
            Some("orphan inodes to release")
        );
        let mut due = sb.clone();
        due[0x34..0x36].copy_from_slice(&20u16.to_le_bytes());
        due[0x36..0x38].copy_from_slice(&20u16.to_le_bytes());
        assert_eq!(
            check_reason_of(&due).as_deref(),
            Some("mounted 20 times (check after 20)")
        );
        assert_eq!(
            with(0x44, &86400u32.to_le_bytes()).as_deref(),
            Some("a check interval is set")
        );
        patch(&img, 0x38, &[0, 0]);
        assert_eq!(
            check_reason(&img).as_deref(),
            Some("no ext2/3/4 superblock")
        );
        assert!(check_reason(&t.path().join("missing"))
            .unwrap()
            .starts_with("cannot read the superblock"));
    }

    /// What a power loss leaves: the superblock of a mounted ext4 (journal in use) says the
    /// journal needs recovery, so the next boot runs e2fsck.
    #[test]
    fn a_file_system_left_mounted_is_checked() {
        if !nix::unistd::geteuid().is_root() {
            test_prereq::skip("root (loop mount)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let img = mkfs(t.path());
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(mnt.join("file"), b"data").unwrap();
        let _ = Command::new("sync").status();
        let copy = t.path().join("copy.img");
        std::fs::copy(&img, &copy).unwrap();
        let _ = Command::new("umount").arg(&mnt).status();
        assert_eq!(
            check_reason(&copy).as_deref(),
            Some("the journal needs recovery")
        );
        assert_eq!(check_reason(&img), None, "cleanly unmounted");
    }
}
