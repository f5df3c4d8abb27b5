//! The union phase with the real kernel: overlayfs over a read-only tree, writes land in the
//! upper layer, deletions become whiteouts, an AUFS-era upper branch is converted first, and
//! the scratch disk and the repository are moved under `<root>/mnt/`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod mount_helpers;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use mount_helpers::{is_mounted, skip_reason, UnmountOnDrop};
use nix::mount::{mount, MsFlags};
use ucernvm_init::boot::Layout;
use ucernvm_init::union;

fn tmpfs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

#[test]
fn overlay_union_with_moved_branches_and_aufs_migration() {
    if let Some(r) = skip_reason(false) {
        test_prereq::skip(r);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tmpfs(&base);
    let _guard = UnmountOnDrop(vec![base.clone()]);
    // Private, so that moving mounts below it is allowed whatever the host's propagation.
    mount(
        None::<&str>,
        &base,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let layout = Layout::under(base.clone());
    tmpfs(&layout.root_rw);
    tmpfs(&layout.root_ro);

    // The "repository": OS tree below cvm4/.
    let os = layout.root_ro.join("cvm4");
    for d in ["bin", "etc", "opq"] {
        std::fs::create_dir_all(os.join(d)).unwrap();
    }
    std::fs::write(os.join("bin/tool"), "tool v2").unwrap();
    std::fs::write(os.join("etc/motd"), "hello").unwrap();
    std::fs::write(os.join("gone"), "deleted by the user under AUFS").unwrap();
    std::fs::write(os.join("opq/inner"), "hidden by an opaque dir").unwrap();

    // An upper branch left by the original AUFS boot loader.
    let upper = layout.root_rw.join("persistent");
    std::fs::create_dir_all(upper.join("opq")).unwrap();
    std::fs::create_dir_all(upper.join(".wh..wh.plnk")).unwrap();
    std::fs::create_dir_all(layout.aux()).unwrap();
    std::fs::write(upper.join(".wh..wh.aufs"), "").unwrap();
    std::fs::write(upper.join(".wh.gone"), "").unwrap();
    std::fs::write(upper.join("opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(upper.join("opq/mine"), "user file").unwrap();

    union::assemble(&layout, &os).unwrap();
    let root = &layout.root;
    assert!(is_mounted(root));
    assert!(is_mounted(&root.join("mnt/.rw")));
    assert!(is_mounted(&root.join("mnt/.ro")));
    // The scratch disk moved away from its boot path (the CernVM-FS daemon works inside its
    // cache through relative paths and needs no path there).
    std::fs::write(root.join("mnt/.rw/probe"), "moved").unwrap();
    assert!(!is_mounted(&layout.root_rw), "scratch disk moved away");
    assert!(!layout.root_rw.join("probe").exists());
    assert!(!is_mounted(&layout.root_ro), "repository moved away");
    let moved_upper = root.join("mnt/.rw/persistent");
    assert_eq!(
        std::fs::read_to_string(root.join("mnt/.ro/cvm4/bin/tool")).unwrap(),
        "tool v2"
    );
    assert_eq!(std::fs::metadata(root).unwrap().mode() & 0o7777, 0o755);

    // AUFS markers became overlayfs ones.
    assert!(!root.join("gone").exists());
    assert!(!root.join("opq/inner").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("opq/mine")).unwrap(),
        "user file"
    );
    for name in [".wh..wh.aufs", ".wh..wh.plnk", ".wh.gone"] {
        assert!(
            std::fs::symlink_metadata(moved_upper.join(name)).is_err(),
            "{name} left"
        );
    }
    assert_eq!(
        union::get_xattr(&moved_upper.join("opq"), union::OPAQUE_XATTR).unwrap(),
        Some(b"y".to_vec())
    );
    let log = std::fs::read_to_string(root.join("mnt/.rw/aux/aufs-migration.log")).unwrap();
    assert!(log.contains("whiteout /gone\n"), "{log}");
    assert!(log.contains("opaque /opq\n"), "{log}");
    assert!(log.contains("remove /.wh..wh.aufs\n"), "{log}");

    // Writes land in the upper layer, deletions become 0:0 whiteouts.
    std::fs::write(root.join("etc/motd"), "changed").unwrap();
    std::fs::remove_file(root.join("bin/tool")).unwrap();
    assert_eq!(
        std::fs::read_to_string(moved_upper.join("etc/motd")).unwrap(),
        "changed"
    );
    assert_eq!(std::fs::read_to_string(os_path(root)).unwrap(), "hello");
    let wh = std::fs::symlink_metadata(moved_upper.join("bin/tool")).unwrap();
    assert!(wh.file_type().is_char_device() && union::is_whiteout(&wh));
    // The work directory is outside the union.
    assert!(!root.join("overlay-work").exists());
    assert!(root.join("mnt/.rw/overlay-work").is_dir());
}

fn os_path(root: &Path) -> std::path::PathBuf {
    root.join("mnt/.ro/cvm4/etc/motd")
}
