//! The root-assembling phases in sequence with the real kernel and our real `cvmfs2` against
//! the real-server fixture: CernVM-FS start with pinning, rebase, overlay union, post-mount
//! (inject). Two "boots" on the same scratch disk: the first pins v1 and injects, the user
//! changes files; the second is moved to v2 by `cvmfs_force_tag`, rebases (restores what the
//! user deleted, lets the new OS version replace modified OS files, keeps user-only files) and
//! does not inject again. Needs root and /dev/fuse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod mount_helpers;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cvmfs_client::testing::{fixture_dir, StaticHttpServer};
use mount_helpers::{cvmfs2_binary, is_mounted, skip_reason, UnmountOnDrop};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use ucernvm_init::boot::Layout;
use ucernvm_init::cmdline::KernelCmdline;
use ucernvm_init::cvmfs_start::CvmfsMount;
use ucernvm_init::{cvmfs_start, epilog, post, rebase, union};

const FQRN: &str = "demo.cernvm.test";

fn expected_root(tag: &str) -> String {
    let text = std::fs::read_to_string(fixture_dir().join(format!("expected/{tag}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["root_catalog"].as_str().unwrap().to_string()
}

fn inject_value() -> String {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"site=test\n";
    let mut h = tar::Header::new_gnu();
    h.set_path("etc/injected.conf").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// One boot through the phases this crate's issue covers; returns the repository mount.
fn boot(layout: &Layout, cmdline: &str, bin: &Path, first: bool) -> CvmfsMount {
    if first {
        std::fs::write(
            layout.initramfs.join("ucontext"),
            format!(
                "_UCONTEXT_CVMFS_TAG=v1\n_UCONTEXT_CERNVM_INJECT={}\n",
                inject_value()
            ),
        )
        .unwrap();
    }
    let config = epilog::resolve(layout, &KernelCmdline::parse(cmdline), None).unwrap();
    let mut cvmfs = cvmfs_start::mount(&config, layout, None, bin).unwrap();
    rebase::run(layout, &mut cvmfs).unwrap();
    union::mount_union(layout, &cvmfs).unwrap();
    post::run(layout, &config, &cvmfs, first);
    cvmfs
}

/// Takes the assembled root apart again, as a shutdown would; the scratch disk is moved back
/// to `root.rw`, like the disk a reboot mounts there again.
fn shutdown(layout: &Layout, bin: &Path) {
    let root = &layout.root;
    cvmfs_start::unmount(&root.join("mnt/.ro")).unwrap();
    mount(
        Some(&root.join("mnt/.rw")),
        &layout.root_rw,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .unwrap();
    umount2(root, MntFlags::MNT_DETACH).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cvmfs_start::daemon_pids(bin).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cvmfs_start::daemon_pids(bin).is_empty(),
        "cvmfs2 did not end"
    );
    assert!(!is_mounted(root));
}

#[test]
fn two_boots_pin_inject_once_and_rebase_to_a_forced_tag() {
    if let Some(r) = skip_reason(true) {
        test_prereq::skip(r);
        return;
    }
    let bin = cvmfs2_binary();
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    mount(
        Some("tmpfs"),
        &base,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _guard = UnmountOnDrop(vec![base.clone()]);
    mount(
        None::<&str>,
        &base,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let layout = Layout::under(base.clone());
    // The scratch disk: a separate file system, so that it can be moved like the real one.
    std::fs::create_dir_all(&layout.root_rw).unwrap();
    mount(
        Some("tmpfs"),
        &layout.root_rw,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let keys = layout.initramfs.join("etc/cvmfs/keys").join(FQRN);
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(
        fixture_dir().join("keys/demo.cernvm.test.pub"),
        keys.join("demo.cernvm.test.pub"),
    )
    .unwrap();
    std::fs::write(
        layout.initramfs.join("etc/resolv.conf"),
        "nameserver 127.0.0.1\n",
    )
    .unwrap();
    let cmdline = format!(
        "cvmfs_repos={FQRN} cvmfs_url={}/cvmfs/@fqrn@ cvmfs_proxy=DIRECT cernvm_path=nested",
        server.url()
    );
    let root = layout.root.clone();

    // Boot 1: pins v1, injects, the user works in the OS.
    let b = boot(&layout, &cmdline, &bin, true);
    assert_eq!(b.snapshot.root_hash, expected_root("v1"));
    assert!(is_mounted(&root));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/injected.conf")).unwrap(),
        "site=test\n"
    );
    assert!(root.join("mnt/.rw/context/injected").exists());
    assert!(root.join("mnt/.rw/context/ucontext").exists());
    // The daemons of this boot are running; other tests may start daemons of the same
    // binary meanwhile, so the list now may be longer than the one written at boot.
    let pids = std::fs::read_to_string(root.join(".cvmfs_pids")).unwrap();
    let written: Vec<u32> = pids.lines().map(|l| l.parse::<u32>().unwrap()).collect();
    let running = cvmfs_start::daemon_pids(&bin);
    assert!(!written.is_empty());
    assert!(
        written.iter().all(|p| running.contains(p)),
        "{written:?} not all in {running:?}"
    );
    assert!(root.join("mnt/.rw/ulogs").is_dir());
    assert!(!root.join("new_in_v2.txt").exists());
    let v1_inner = std::fs::read_to_string(root.join("inner/inner.txt")).unwrap();
    std::fs::write(root.join("inner/inner.txt"), "user edit").unwrap();
    std::fs::remove_file(root.join("plain_subdir/p.txt")).unwrap();
    std::fs::write(root.join("my-notes.txt"), "mine").unwrap();
    std::fs::remove_file(root.join("etc/injected.conf")).unwrap();
    drop(b);
    shutdown(&layout, &bin);

    // Boot 2: the user data still asks for v1, but the force tag moves the OS to v2.
    std::fs::write(layout.aux().join("cvmfs_force_tag"), "v2").unwrap();
    let b = boot(&layout, &cmdline, &bin, false);
    let cvmfs = &b;
    assert!(cvmfs.fresh);
    assert_eq!(cvmfs.snapshot.root_hash, expected_root("v2"));
    let v2_inner = std::fs::read_to_string(root.join("mnt/.ro/nested/inner/inner.txt")).unwrap();
    assert_ne!(v1_inner, v2_inner);
    assert_eq!(
        std::fs::read_to_string(root.join("inner/inner.txt")).unwrap(),
        v2_inner,
        "rebased"
    );
    assert!(root.join("plain_subdir/p.txt").exists(), "restored");
    assert!(root.join("inner/new_in_v2.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("my-notes.txt")).unwrap(),
        "mine"
    );
    assert!(
        !root.join("etc/injected.conf").exists(),
        "injected once only"
    );
    let aux = root.join("mnt/.rw/aux");
    let log_name = std::fs::read_dir(&aux)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("rebase-") && n.ends_with(".log"))
        .expect("rebase log");
    let log = std::fs::read_to_string(aux.join(&log_name)).unwrap();
    assert!(log.contains("rebase /inner/inner.txt\n"), "{log}");
    assert!(log.contains("restore /plain_subdir/p.txt\n"), "{log}");
    assert!(
        log.ends_with(&format!("Rebased to {}\n", expected_root("v2"))),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(aux.join("cvmfs_snapshot")).unwrap(),
        format!("{}\nv2\n", expected_root("v2"))
    );
    drop(b);
    shutdown(&layout, &bin);
}
