//! Full µCernVM boots in different environments: the repository chosen by user data from an
//! emulated EC2 metadata service, a wrong repository key, large and reused scratch disks.
//! Same inputs as `full_boot.rs` (real kernel, our initramfs, `cvmfs-publish`, static busybox);
//! skipped with a message when one is missing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use qemu_tests::media::blank_qcow2;
use qemu_tests::metadata::{Cloud, MetadataServer};
use qemu_tests::scenario::{
    self, expect_marker as wait, BootImage, BootSpec, OsRepository, SquidProxy, BOOT_TIMEOUT,
};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};
use qemu_tests::Guest;

/// Waits for the test OS to come up as `release`, boot number `boot`, on the overlay root.
fn wait_for_os(guest: &mut Guest, release: &str, boot: u32) {
    wait(guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(guest, "UCERNVM-TEST-OS: root is overlay", BOOT_TIMEOUT);
    wait(
        guest,
        &format!("UCERNVM-TEST-OS: release {release}"),
        BOOT_TIMEOUT,
    );
    wait(
        guest,
        &format!("UCERNVM-TEST-OS: boot number {boot}"),
        BOOT_TIMEOUT,
    );
    wait(guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
}

/// No `cvmfs_*` on the kernel command line: server, repository and proxy come from the user
/// data of the EC2 metadata service (spec §5, §9: `cvmfs_server=host:port`).
#[test]
fn repository_chosen_by_user_data_from_the_metadata_service() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create("userdata-os.cernvm.test", "ud1", None).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let user_data = format!(
        "[ucernvm-begin]\ncvmfs_server=169.254.2.2:{}\ncvmfs_branch={}\ncvmfs_http_proxy=DIRECT\n[ucernvm-end]\n",
        repo.port(),
        repo.fqrn
    );
    let metadata = MetadataServer::start(Cloud::Ec2, user_data.into_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut guest = scenario::boot(BootSpec {
        net: Some(metadata.user_net()),
        ..BootSpec::new(&image, &disk, String::new())
    })
    .unwrap();
    wait_for_os(&mut guest, "ud1", 1);
    assert!(
        metadata.requests().iter().any(|r| r.contains("user-data")),
        "the guest never asked for the user data: {:?}",
        metadata.requests()
    );
}

/// The image ships the key of another repository: the manifest's signature cannot be
/// verified, the boot stops with a clear error and the rescue shell; the OS never runs.
#[test]
fn a_wrong_repository_key_stops_in_the_rescue_shell() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create("signed-os.cernvm.test", "s1", None).unwrap();
    let other = OsRepository::create("signed-os.cernvm.test", "s1", None).unwrap();
    // Same repository name, other key pair: the key lands where the real one is expected.
    let image = BootImage::with_repository_key(&other).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        scenario::repository_cmdline(&repo, "10.0.2.2"),
    ))
    .unwrap();
    wait(&mut guest, "Entering rescue console", BOOT_TIMEOUT);
    wait(&mut guest, "(initrd) ", BOOT_TIMEOUT);
    let console = guest.console().contents();
    assert!(
        console.contains("Unable to mount cvmfs root filesystem")
            && console.contains("signature does not verify with the repository master key"),
        "no clear error about the repository signature on the console:\n{console}"
    );
    assert!(
        !console.contains(OS_READY_MARKER),
        "the OS ran despite the wrong key:\n{console}"
    );
}

/// A 30 GiB blank disk becomes one whole-disk scratch partition (spec §6.2, `resize_rootfs`
/// unset); the OS boots from it.
#[test]
fn a_large_blank_disk_boots() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create_customized(
        "large-disk-os.cernvm.test",
        "l1",
        None,
        report_partition_size,
    )
    .unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 30 * 1024).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        scenario::repository_cmdline(&repo, "10.0.2.2"),
    ))
    .unwrap();
    wait_for_os(&mut guest, "l1", 1);
    // Whole disk (minus the partition table's first MiB), not the 20 GiB split of
    // `resize_rootfs=off`.
    let console = guest.console().contents();
    let size = partition_mib(&console);
    assert!(
        (30 * 1024 - 64..30 * 1024).contains(&size),
        "scratch partition of {size} MiB on a 30 GiB disk:\n{console}"
    );
}

/// An rc.d hook of the test OS that prints the size of the scratch partition.
fn report_partition_size(os: &Path) -> std::io::Result<()> {
    let hook = os.join("etc/test-os/rc.d/50-partition-size");
    fs::write(
        &hook,
        "#!/bin/sh\necho \"UCERNVM-TEST-OS: vda1 sectors $(cat /sys/class/block/vda1/size)\"\n",
    )?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
}

/// The size in MiB of the scratch partition as printed by [`report_partition_size`].
fn partition_mib(console: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.contains("UCERNVM-TEST-OS: vda1 sectors "))
        .unwrap_or_else(|| panic!("the OS did not print the partition size:\n{console}"));
    let sectors: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sector count in {line:?}"));
    sectors * 512 / (1024 * 1024)
}

/// The second boot on the same scratch disk reuses it: the OS finds what it wrote before.
#[test]
fn a_second_boot_reuses_the_scratch_disk() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create("reuse-os.cernvm.test", "u1", None).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    for boot in 1..=2 {
        let mut guest = scenario::boot(BootSpec::new(
            &image,
            &disk,
            scenario::repository_cmdline(&repo, "10.0.2.2"),
        ))
        .unwrap();
        wait_for_os(&mut guest, "u1", boot);
        // The OS init synced its boot counter before printing the login marker.
        guest.kill();
    }
}

/// A real squid between the VM and the repository: `cvmfs_proxy` points at it (through QEMU's
/// gateway), the server URL names the host's loopback as the proxy sees it; squid's access log
/// shows the repository's files passing through.
#[test]
fn the_os_is_streamed_through_a_squid_proxy() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create("proxied-os.cernvm.test", "p1", None).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let squid = match SquidProxy::start() {
        Ok(squid) => squid,
        Err(e) => panic!("{e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        format!(
            "cvmfs_url={} cvmfs_repos={} cvmfs_proxy=http://10.0.2.2:{}",
            repo.guest_url("127.0.0.1"),
            repo.fqrn,
            squid.port()
        ),
    ))
    .unwrap();
    wait_for_os(&mut guest, "p1", 1);
    let log = squid.access_log();
    let base = repo.guest_url("127.0.0.1");
    for wanted in [
        format!("{base}/.cvmfspublished"),
        format!("{base}/.cvmfswhitelist"),
        format!("{base}/data/"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&wanted) && l.contains("/200 ")),
            "squid's access log has no successful request for {wanted}:\n{log}"
        );
    }
}

/// An rc.d hook that asks for a resize on the first boot (spec §6.6: the user touches
/// `/mnt/.rw/aux/resize` after enlarging the disk) and prints the partition and file system
/// sizes on every boot.
fn request_resize_on_first_boot(os: &Path) -> std::io::Result<()> {
    report_partition_size(os)?;
    let hook = os.join("etc/test-os/rc.d/60-resize");
    fs::write(
        &hook,
        "#!/bin/sh\n\
         echo \"UCERNVM-TEST-OS: scratch fs KiB $(df -k /mnt/.rw | awk 'NR == 2 { print $2 }')\"\n\
         if [ \"$(cat /var/lib/test-os/boots)\" = 1 ]; then\n\
           touch /mnt/.rw/aux/resize && sync && echo \"UCERNVM-TEST-OS: resize requested\"\n\
         fi\n",
    )?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
}

/// The scratch file system's size in MiB as printed by [`request_resize_on_first_boot`].
fn scratch_fs_mib(console: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.contains("UCERNVM-TEST-OS: scratch fs KiB "))
        .unwrap_or_else(|| panic!("the OS did not print the file system size:\n{console}"));
    let kib: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in {line:?}"));
    kib / 1024
}

/// Resize on request: the OS asks for it, the disk is grown between boots with
/// `qemu-img resize`, and the next boot grows partition and file system to the whole disk.
#[test]
fn a_requested_resize_grows_the_scratch_partition() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create_customized(
        "resize-os.cernvm.test",
        "z1",
        None,
        request_resize_on_first_boot,
    )
    .unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let spec = || {
        BootSpec::new(
            &image,
            &disk,
            scenario::repository_cmdline(&repo, "10.0.2.2"),
        )
    };

    let mut guest = scenario::boot(spec()).unwrap();
    wait(
        &mut guest,
        "UCERNVM-TEST-OS: resize requested",
        BOOT_TIMEOUT,
    );
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    let first = guest.console().contents();
    let (part_before, fs_before) = (partition_mib(&first), scratch_fs_mib(&first));
    assert!(part_before < 2048, "first partition: {part_before} MiB");
    guest.kill();

    let out = std::process::Command::new("qemu-img")
        .arg("resize")
        .arg(&disk)
        .arg("4G")
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img resize: {out:?}");

    let mut guest = scenario::boot(spec()).unwrap();
    wait(&mut guest, "Resizing root partition", BOOT_TIMEOUT);
    wait_for_os(&mut guest, "z1", 2);
    let second = guest.console().contents();
    let (part_after, fs_after) = (partition_mib(&second), scratch_fs_mib(&second));
    assert!(
        (4096 - 64..4096).contains(&part_after),
        "partition {part_before} MiB → {part_after} MiB after growing the disk to 4 GiB:\n{second}"
    );
    assert!(
        fs_after > fs_before + 1800,
        "file system {fs_before} MiB → {fs_after} MiB after the resize:\n{second}"
    );
    assert!(
        !second.contains("UCERNVM-TEST-OS: resize requested"),
        "the second boot asked for a resize again"
    );
}
