//! Extra user data and the pickup tarball (spec §5.8): context baked into the boot medium or
//! any other disk, for infrastructures that monopolise the user data. First boot only.
//!
//! Every device is mounted read-only; `/cernvm/extra-user-data` files are concatenated into
//! `/extra-user-data` in device-name order, the last `/cernvm/pickup.tar.gz` becomes
//! `/pickup.tar.gz`. The extra µCernVM block goes to `/extra-ucontext` and is applied after the
//! main context, so its keys win. Only regular files are copied (a symlink on the medium could
//! otherwise point into the initramfs), each with a size limit.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::media::Media;
use super::user_data::MAX_DECOMPRESSED;
use super::{mime, write_ucontext, ContextEntry};
use crate::console;
use crate::settings::ContextSettings;

/// The pickup tarball is unpacked into the OS later; it lives in RAM until then.
pub const MAX_PICKUP: u64 = 256 * 1024 * 1024;

/// What was found on the devices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtraContext {
    /// Concatenated extra user data.
    pub user_data: Vec<u8>,
    pub pickup: Option<Vec<u8>>,
    /// `/dev/<name>` and `/dev/<name>(pickup)`, as the console shows them.
    pub sources: Vec<String>,
    pub entries: Vec<ContextEntry>,
}

/// Reads a regular file (not through a symlink) of at most `limit` bytes; `Ok(None)` if it
/// does not exist.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(Some(out))
}

/// Scans every medium (any recognised file system).
pub fn find(media: &Media) -> ExtraContext {
    let mut extra = ExtraContext::default();
    media.scan(None, &mut |dev, _, dir| {
        let budget = MAX_DECOMPRESSED.saturating_sub(extra.user_data.len() as u64);
        match read_regular(&dir.join("cernvm/extra-user-data"), budget) {
            Ok(Some(d)) => {
                extra.user_data.extend_from_slice(&d);
                extra.sources.push(format!("/dev/{dev}"));
            }
            Ok(None) => {}
            Err(e) => log::warn!("extra user data on /dev/{dev} ignored: {e}"),
        }
        match read_regular(&dir.join("cernvm/pickup.tar.gz"), MAX_PICKUP) {
            Ok(Some(d)) => {
                extra.pickup = Some(d);
                extra.sources.push(format!("/dev/{dev}(pickup)"));
            }
            Ok(None) => {}
            Err(e) => log::warn!("pickup tarball on /dev/{dev} ignored: {e}"),
        }
        false
    });
    extra.entries = mime::scan_user_data(&extra.user_data);
    extra
}

/// Writes `/extra-user-data`, `/extra-ucontext`, `/pickup.tar.gz` below `root` and applies the
/// extra entries on top of `settings`.
pub fn apply(extra: &ExtraContext, root: &Path, settings: &mut ContextSettings) -> io::Result<()> {
    if !extra.user_data.is_empty() || extra.sources.iter().any(|s| !s.ends_with("(pickup)")) {
        fs::write(root.join("extra-user-data"), &extra.user_data)?;
        let mut f = fs::File::create(root.join("extra-ucontext"))?;
        write_ucontext(&extra.entries, &mut f)?;
        f.flush()?;
        for e in &extra.entries {
            settings.apply(&String::from_utf8_lossy(&e.key), &e.interpreted_value());
        }
    }
    if let Some(p) = &extra.pickup {
        fs::write(root.join("pickup.tar.gz"), p)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot store the extra context: {0}")]
pub struct ExtraError(io::Error);

// The cause is in the message, so it is not also returned as the source.
impl From<io::Error> for ExtraError {
    fn from(e: io::Error) -> Self {
        ExtraError(e)
    }
}

/// Spec §5.8 (first boot only): finds the extra context on `media`, stores it in the
/// initramfs `root` and applies its entries on top of `settings`.
pub fn add(root: &Path, media: &Media, settings: &mut ContextSettings) -> Result<(), ExtraError> {
    console::begin("Looking for extra context...");
    let extra = find(media);
    let shown = if extra.sources.is_empty() {
        "(none)".to_string()
    } else {
        extra.sources.join(" ")
    };
    console::result(&shown);
    apply(&extra, root, settings)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::media::{Device, FsType};
    use std::path::PathBuf;
    use std::process::Command;

    fn medium(
        dir: &Path,
        name: &str,
        extra: Option<&[u8]>,
        pickup: Option<&[u8]>,
    ) -> (String, FsType, PathBuf) {
        let d = dir.join(name);
        fs::create_dir_all(d.join("cernvm")).unwrap();
        if let Some(e) = extra {
            fs::write(d.join("cernvm/extra-user-data"), e).unwrap();
        }
        if let Some(p) = pickup {
            fs::write(d.join("cernvm/pickup.tar.gz"), p).unwrap();
        }
        (name.to_string(), FsType::Ext, d)
    }

    #[test]
    fn extra_user_data_is_concatenated_and_the_last_pickup_wins() {
        let t = tempfile::tempdir().unwrap();
        let media = Media::Fixtures(vec![
            medium(
                t.path(),
                "sda1",
                Some(b"[ucernvm-begin]\ncvmfs_tag=one\n"),
                Some(b"first"),
            ),
            medium(t.path(), "sdb", None, None),
            medium(
                t.path(),
                "sr0",
                Some(b"cvmfs_branch=two\n[ucernvm-end]\n"),
                Some(b"second"),
            ),
        ]);
        let extra = find(&media);
        assert_eq!(
            extra.sources,
            [
                "/dev/sda1",
                "/dev/sda1(pickup)",
                "/dev/sr0",
                "/dev/sr0(pickup)"
            ]
        );
        assert_eq!(
            extra.user_data,
            b"[ucernvm-begin]\ncvmfs_tag=one\ncvmfs_branch=two\n[ucernvm-end]\n"
        );
        assert_eq!(extra.pickup.as_deref(), Some(&b"second"[..]));

        let root = tempfile::tempdir().unwrap();
        let mut settings = ContextSettings::default();
        settings.apply("CVMFS_TAG", "from-main");
        apply(&extra, root.path(), &mut settings).unwrap();
        assert_eq!(settings.cvmfs_tag.as_deref(), Some("one"), "extra keys win");
        assert_eq!(settings.cvmfs_branch.as_deref(), Some("two"));
        assert_eq!(
            fs::read_to_string(root.path().join("extra-ucontext")).unwrap(),
            "_UCONTEXT_CVMFS_TAG=one\n_UCONTEXT_CVMFS_BRANCH=two\n"
        );
        assert_eq!(
            fs::read(root.path().join("pickup.tar.gz")).unwrap(),
            b"second"
        );
    }

    #[test]
    fn nothing_found_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let extra = find(&Media::Fixtures(vec![medium(t.path(), "vda", None, None)]));
        assert_eq!(extra, ExtraContext::default());
        let root = tempfile::tempdir().unwrap();
        let mut s = ContextSettings::default();
        apply(&extra, root.path(), &mut s).unwrap();
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
        assert_eq!(s, ContextSettings::default());
    }

    #[test]
    fn symlinks_and_directories_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, b"initramfs-only data").unwrap();
        let (name, ty, dir) = medium(t.path(), "sdc1", None, None);
        std::os::unix::fs::symlink(&secret, dir.join("cernvm/extra-user-data")).unwrap();
        fs::create_dir(dir.join("cernvm/pickup.tar.gz")).unwrap();
        let extra = find(&Media::Fixtures(vec![(name, ty, dir)]));
        assert!(
            extra.user_data.is_empty() && extra.pickup.is_none(),
            "{extra:?}"
        );
        assert!(extra.sources.is_empty());
    }

    /// The real path: an ext4 image on a loop device, recognised by its signature and mounted
    /// read-only by the kernel.
    #[test]
    fn extra_user_data_from_a_real_ext4_partition() {
        let t = tempfile::tempdir().unwrap();
        let (_, _, src) = medium(
            t.path(),
            "src",
            Some(b"[ucernvm-begin]\ncvmfs_tag=loop\n[ucernvm-end]\n"),
            None,
        );
        let img = t.path().join("disk.img");
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("8M")
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loopdev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let scratch = t.path().join("mnt");
        fs::create_dir(&scratch).unwrap();
        let media = Media::Devices {
            devices: vec![Device {
                name: loopdev.file_name().unwrap().to_string_lossy().into_owned(),
                node: loopdev.clone(),
                fs_types: None,
            }],
            scratch: scratch.clone(),
        };
        let extra = find(&media);
        let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
        assert_eq!(extra.entries.len(), 1, "{extra:?}");
        assert_eq!(
            extra.sources,
            [format!(
                "/dev/{}",
                loopdev.file_name().unwrap().to_string_lossy()
            )]
        );
        // unmounted and cleaned up again
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
