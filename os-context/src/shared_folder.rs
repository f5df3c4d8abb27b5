//! The launcher's shared folder: a virtio-9p export whose mount tag is `<vm name>_sf`
//! (spec §17.6) is mounted on `/mnt/shared`. Without such a device nothing happens.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

pub const SYS_VIRTIO: &str = "/sys/bus/virtio/devices";
pub const MOUNT_POINT: &str = "/mnt/shared";
/// Suffix of the launcher's tags.
pub const TAG_SUFFIX: &str = "_sf";
/// virtio device id of a 9p transport.
const VIRTIO_ID_9P: &str = "0x0009";
const MOUNT_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=262144";

/// The 9p devices under `sys_virtio` and their mount tags (`None` until the 9pnet_virtio
/// driver is bound).
pub fn devices(sys_virtio: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut out: Vec<(PathBuf, Option<String>)> = fs::read_dir(sys_virtio)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    fs::read_to_string(p.join("device")).is_ok_and(|d| d.trim() == VIRTIO_ID_9P)
                })
                .map(|p| {
                    let tag = fs::read(p.join("mount_tag")).ok().map(|b| {
                        String::from_utf8_lossy(&b)
                            .trim_end_matches(['\0', '\n'])
                            .to_string()
                    });
                    (p, tag)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The first tag that ends in `_sf`.
pub fn pick(tags: &[String]) -> Option<&str> {
    tags.iter()
        .map(String::as_str)
        .find(|t| t.ends_with(TAG_SUFFIX) && t.len() > TAG_SUFFIX.len())
}

fn mounted(point: &Path) -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|p| Path::new(p) == point)
    })
}

/// Finds the launcher's export and mounts it; returns what happened.
pub fn run(sys_virtio: &Path, point: &Path) -> Result<String, String> {
    let mut devs = devices(sys_virtio);
    if devs.is_empty() {
        return Ok("no virtio-9p device: no shared folder".into());
    }
    if devs.iter().any(|(_, t)| t.is_none()) {
        // udev normally loads the transport; make sure, then wait for the tags.
        let _ = Command::new("modprobe").arg("9pnet_virtio").status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while devs.iter().any(|(_, t)| t.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            devs = devices(sys_virtio);
        }
    }
    let tags: Vec<String> = devs.into_iter().filter_map(|(_, t)| t).collect();
    let Some(tag) = pick(&tags) else {
        return Ok(format!(
            "no virtio-9p tag ends in {TAG_SUFFIX} (tags: {tags:?})"
        ));
    };
    if mounted(point) {
        return Ok(format!("{} is mounted already", point.display()));
    }
    fs::create_dir_all(point).map_err(|e| format!("cannot create {}: {e}", point.display()))?;
    if !fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\t9p\n")) {
        let _ = Command::new("modprobe").arg("9p").status();
    }
    mount(
        Some(tag),
        point,
        Some("9p"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(MOUNT_OPTIONS),
    )
    .map_err(|e| {
        format!(
            "cannot mount the 9p export {tag:?} on {}: {e}",
            point.display()
        )
    })?;
    Ok(format!("shared folder {tag:?} on {}", point.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_9p_devices_only() {
        let t = tempfile::tempdir().unwrap();
        for (dev, id, tag) in [
            ("virtio0", "0x0001", None),
            ("virtio1", "0x0009", Some("cernvm_sf\0")),
            ("virtio2", "0x0009", None),
        ] {
            let d = t.path().join(dev);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("device"), format!("{id}\n")).unwrap();
            if let Some(tag) = tag {
                fs::write(d.join("mount_tag"), tag).unwrap();
            }
        }
        let devs = devices(t.path());
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].1.as_deref(), Some("cernvm_sf"));
        assert_eq!(devs[1].1, None);
        assert_eq!(
            run(&t.path().join("none"), t.path()).unwrap(),
            "no virtio-9p device: no shared folder"
        );
    }

    #[test]
    fn the_launchers_tag_is_picked() {
        let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick(&tags(&["home", "my-vm_sf", "b_sf"])), Some("my-vm_sf"));
        assert_eq!(pick(&tags(&["_sf", "sfx"])), None);
    }
}
