//! The launcher's shared folder (spec §17.6): a host directory exported over virtio-9p with the
//! tag `<vm name>_sf` appears at `/mnt/shared` in the guest, mounted by the demo OS's
//! `cernvm-context shared-folder` (the static executable of `os-context`, here run by the busybox
//! test OS instead of its systemd unit). The µCernVM kernel has 9p built in (Debian's cloud
//! kernel has no 9p at all).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use qemu_tests::inputs::workspace_root;
use qemu_tests::media::blank_qcow2;
use qemu_tests::scenario::{
    self, expect_marker as wait, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT,
};
use qemu_tests::test_os::OS_LOGIN_MARKER;

const FQRN: &str = "test-os.cernvm.test";

/// The static `cernvm-context` (scripts/build-static builds it).
fn static_context_tool() -> Option<PathBuf> {
    let p = workspace_root().join("target/x86_64-unknown-linux-musl/initramfs/cernvm-context");
    p.is_file().then_some(p)
}

#[test]
fn a_9p_folder_tagged_sf_appears_at_mnt_shared() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let Some(tool) = static_context_tool() else {
        test_prereq::skip("the static cernvm-context (scripts/build-static)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = OsRepository::create_customized(FQRN, "r1", Some("r1"), |os| {
        fs::copy(&tool, os.join("usr/sbin/cernvm-context"))?;
        fs::set_permissions(
            os.join("usr/sbin/cernvm-context"),
            fs::Permissions::from_mode(0o755),
        )?;
        let hook = os.join("etc/test-os/rc.d/50-shared-folder");
        fs::write(
            &hook,
            "#!/bin/sh\n/usr/sbin/cernvm-context shared-folder\n\
             echo \"UCERNVM-TEST-OS: shared says $(cat /mnt/shared/hello.txt)\"\n\
             echo written-by-the-guest > /mnt/shared/from-guest.txt && sync\n",
        )?;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
    })
    .unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let shared = dir.path().join("shared");
    fs::create_dir_all(&shared).unwrap();
    let token = format!("token-{}", std::process::id());
    fs::write(shared.join("hello.txt"), &token).unwrap();

    let mut guest = scenario::boot(BootSpec {
        qemu_args: vec![
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=testvm_sf,security_model=none,id=sf0",
                shared.display()
            ),
        ],
        ..BootSpec::new(
            &image,
            &disk,
            scenario::repository_cmdline(&repo, "10.0.2.2"),
        )
    })
    .unwrap();
    wait(
        &mut guest,
        "cernvm-context: shared folder \"testvm_sf\" on /mnt/shared",
        BOOT_TIMEOUT,
    );
    wait(
        &mut guest,
        &format!("UCERNVM-TEST-OS: shared says {token}"),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    guest.kill();
    assert_eq!(
        fs::read_to_string(shared.join("from-guest.txt")).unwrap(),
        "written-by-the-guest\n"
    );
}
