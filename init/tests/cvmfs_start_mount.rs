//! CernVM-FS start against the real-server fixture: our `cvmfs2` is started with the
//! configuration the phase writes, the snapshot is read from the mount's magic attributes and
//! pinned; later boots keep the pin, `cvmfs_force_tag` moves it. Needs root and /dev/fuse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod mount_helpers;

use std::path::Path;
use std::time::{Duration, Instant};

use cvmfs_client::testing::{fixture_dir, StaticHttpServer};
use mount_helpers::{cvmfs2_binary, is_mounted, skip_reason, UnmountOnDrop};
use ucernvm_init::boot::Layout;
use ucernvm_init::cmdline::KernelCmdline;
use ucernvm_init::config::BootConfig;
use ucernvm_init::cvmfs_start::{self, snapshot, CvmfsError};
use ucernvm_init::settings::ContextSettings;

const FQRN: &str = "demo.cernvm.test";

/// The tests look for cvmfs2 processes by executable: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn expected_root(tag: &str) -> String {
    let text = std::fs::read_to_string(fixture_dir().join(format!("expected/{tag}.json")))
        .expect("fixture expectations");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["root_catalog"]
        .as_str()
        .expect("root_catalog")
        .to_string()
}

fn layout(base: &Path) -> Layout {
    let l = Layout::under(base.to_path_buf());
    let keys = l.initramfs.join("etc/cvmfs/keys").join(FQRN);
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(
        fixture_dir().join("keys/demo.cernvm.test.pub"),
        keys.join("demo.cernvm.test.pub"),
    )
    .unwrap();
    std::fs::write(
        l.initramfs.join("etc/resolv.conf"),
        "nameserver 127.0.0.1\n",
    )
    .unwrap();
    std::fs::create_dir_all(&l.root_rw).unwrap();
    l
}

/// One boot's CernVM-FS phase; returns the mount and unmounts it again (waiting for the
/// daemon to end) after checking that the daemon is a separate, detached process.
fn boot_once(
    layout: &Layout,
    cmdline: &str,
    user_tag: Option<&str>,
    bin: &Path,
) -> Result<cvmfs_start::CvmfsMount, CvmfsError> {
    let mut user = ContextSettings::default();
    if let Some(t) = user_tag {
        user.apply("CVMFS_TAG", t);
    }
    let config = BootConfig::resolve(&KernelCmdline::parse(cmdline), user, true);
    let _guard = UnmountOnDrop(vec![layout.root_ro.clone()]);
    let mount = cvmfs_start::mount(&config, layout, None, bin)?;
    assert!(is_mounted(&layout.root_ro));
    let pids = cvmfs_start::daemon_pids(bin);
    assert!(!pids.is_empty(), "no cvmfs2 process found");
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(ppid, std::process::id(), "the daemon must not be our child");
    }
    cvmfs_start::unmount(&layout.root_ro).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cvmfs_start::daemon_pids(bin).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(mount)
}

fn read_pin(layout: &Layout) -> String {
    std::fs::read_to_string(layout.aux().join(snapshot::SNAPSHOT_FILE)).unwrap()
}

#[test]
fn first_boot_pins_later_boots_keep_the_pin_force_tag_moves_it() {
    if let Some(r) = skip_reason(true) {
        test_prereq::skip(r);
        return;
    }
    let _serial = serial();
    let bin = cvmfs2_binary();
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    let cmdline = format!(
        "cvmfs_repos={FQRN} cvmfs_url={}/cvmfs/@fqrn@ cvmfs_proxy=DIRECT",
        server.url()
    );
    let (v1, v2) = (expected_root("v1"), expected_root("v2"));
    assert_ne!(v1, v2);

    // First boot, user data asks for tag v1.
    let m = boot_once(&layout, &cmdline, Some("v1"), &bin).unwrap();
    assert!(m.fresh);
    assert_eq!(m.snapshot.root_hash, v1);
    assert_eq!(m.revision, "3");
    assert_eq!(read_pin(&layout), format!("{v1}\nv1\n"));
    let conf = std::fs::read_to_string(&m.config_file).unwrap();
    assert!(conf.contains("CVMFS_REPOSITORY_TAG=v1\n"), "{conf}");
    assert!(!conf.contains("CVMFS_ROOT_HASH"), "{conf}");
    assert!(layout
        .aux()
        .join("keys")
        .join(FQRN)
        .join("demo.cernvm.test.pub")
        .is_file());
    assert!(layout.aux().join("uid_map").is_file() && layout.aux().join("gid_map").is_file());
    assert!(layout.root_rw.join("persistent").is_dir());

    // Later boot without a tag (the newest revision would be v2): the pin holds.
    let m = boot_once(&layout, &cmdline, None, &bin).unwrap();
    assert!(!m.fresh);
    assert_eq!(m.snapshot.root_hash, v1);
    let conf = std::fs::read_to_string(&m.config_file).unwrap();
    assert!(conf.contains(&format!("CVMFS_ROOT_HASH={v1}\n")), "{conf}");

    // cvmfs_force_tag moves to v2 and keeps every boot fresh while it exists.
    std::fs::write(layout.aux().join(snapshot::FORCE_TAG_FILE), "v2\n").unwrap();
    let m = boot_once(&layout, &cmdline, Some("v1"), &bin).unwrap();
    assert!(m.fresh);
    assert_eq!(m.snapshot.root_hash, v2);
    assert_eq!(read_pin(&layout), format!("{v2}\nv2\n"));

    // Without the force file the v2 pin stays, whatever the user data says.
    std::fs::remove_file(layout.aux().join(snapshot::FORCE_TAG_FILE)).unwrap();
    let m = boot_once(&layout, &cmdline, Some("v1"), &bin).unwrap();
    assert!(!m.fresh);
    assert_eq!(m.snapshot.root_hash, v2);
}

#[test]
fn remount_keeps_the_recorded_snapshot() {
    if let Some(r) = skip_reason(true) {
        test_prereq::skip(r);
        return;
    }
    let _serial = serial();
    let bin = cvmfs2_binary();
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    let cmdline = format!(
        "cvmfs_repos={FQRN} cvmfs_url={}/cvmfs/@fqrn@ cvmfs_proxy=DIRECT",
        server.url()
    );
    let config = BootConfig::resolve(&KernelCmdline::parse(&cmdline), Default::default(), true);
    let _guard = UnmountOnDrop(vec![layout.root_ro.clone()]);
    let mut m = cvmfs_start::mount(&config, &layout, None, &bin).unwrap();
    assert_eq!(m.snapshot.root_hash, expected_root("v2"));
    assert_eq!(m.snapshot.tag, "");
    m.remount(&layout.initramfs.join("etc/resolv.conf"))
        .unwrap();
    assert!(is_mounted(&layout.root_ro));
    let (hash, _) = cvmfs_start::read_snapshot(&layout.root_ro).unwrap();
    assert_eq!(hash, expected_root("v2"));
    let conf = std::fs::read_to_string(&m.config_file).unwrap();
    assert!(
        conf.ends_with(&format!("CVMFS_ROOT_HASH={hash}\n")),
        "{conf}"
    );
    cvmfs_start::unmount(&layout.root_ro).unwrap();
}

#[test]
fn missing_keys_fail_with_the_original_message() {
    if let Some(r) = skip_reason(true) {
        test_prereq::skip(r);
        return;
    }
    let _serial = serial();
    let bin = cvmfs2_binary();
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    std::fs::remove_dir_all(layout.initramfs.join("etc/cvmfs/keys").join(FQRN)).unwrap();
    let cmdline = format!(
        "cvmfs_repos={FQRN} cvmfs_url={}/cvmfs/@fqrn@ cvmfs_proxy=DIRECT",
        server.url()
    );
    let config = BootConfig::resolve(&KernelCmdline::parse(&cmdline), Default::default(), true);
    let _guard = UnmountOnDrop(vec![layout.root_ro.clone()]);
    let e = cvmfs_start::mount(&config, &layout, None, &bin).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("Unable to mount cvmfs root filesystem!"),
        "{msg}"
    );
    assert!(!is_mounted(&layout.root_ro));
    assert!(!layout.aux().join(snapshot::SNAPSHOT_FILE).exists());
}
