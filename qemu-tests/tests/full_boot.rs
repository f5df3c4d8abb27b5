//! Full µCernVM boots (issue 10): the real kernel, our initramfs, a blank scratch disk and an
//! OS repository published with our `cvmfs-publish`, served on 127.0.0.1 and streamed by our
//! `cvmfs2` until the OS's own init runs from the union.
//!
//! Skipped with a message when an input is missing (kernel: kernel-config/build-custom-kernel,
//! for the Debian smoke boot kernel-config/fetch-debian-kernel;
//! initramfs: scripts/build-initrd; publisher: cargo build -p cvmfs-client; static busybox).

use qemu_tests::inputs;
use qemu_tests::media::blank_qcow2;
use qemu_tests::scenario::{
    self, expect_marker as wait, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT,
};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

/// First boot on a blank disk: partition, format, mount CernVM-FS, pin, union, hand-over;
/// the OS init runs on the overlay root and finds the published release.
#[test]
fn first_boot_on_a_blank_disk_streams_the_os() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create("test-os.cernvm.test", "r1", Some("r1")).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        scenario::repository_cmdline(&repo, "10.0.2.2"),
    ))
    .unwrap();
    wait(&mut guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: root is overlay", BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: boot number 1", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    // QEMU's empty CD drive is a normal case, and the init's log is complete.
    let console = guest.console().contents();
    for unwanted in ["No medium found", "suppressed due to ratelimiting"] {
        assert!(!console.contains(unwanted), "{unwanted:?} in:\n{console}");
    }
}

/// The smoke boot of the Debian kernel path (`--kernel debian` of the image scripts): the same
/// first boot with Debian's cloud kernel and the initramfs that carries its modules, which the
/// init loads (the other boot tests run the µCernVM kernel, which has everything built in).
/// That initramfs has no dropbear (20 MiB budget): `cvmssh` says so and why, and offers the
/// console's rescue shell instead; the boot goes on when it exits.
#[test]
fn debian_cloud_kernel_first_boot_reaches_the_os() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let (Some(kernel), Some(initrd)) = (inputs::debian_kernel(), inputs::debian_initrd()) else {
        test_prereq::skip("Debian's cloud kernel and its initramfs (kernel-config/fetch-debian-kernel, scripts/build-initrd --kernel debian)");
        return;
    };
    let repo = OsRepository::create("test-os.cernvm.test", "r1", Some("r1")).unwrap();
    let image = BootImage::for_kernel(&repo, kernel, &initrd).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        format!("{} cvmssh", scenario::repository_cmdline(&repo, "10.0.2.2")),
    ))
    .unwrap();
    wait(
        &mut guest,
        "cvmssh: this image has no SSH server: dropbear (about 0.15 MB compressed) is left out \
         of images with Debian's kernel",
        BOOT_TIMEOUT,
    );
    wait(&mut guest, "(initrd) ", BOOT_TIMEOUT);
    guest.send("exit\n").unwrap();
    wait(&mut guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: root is overlay", BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
}
