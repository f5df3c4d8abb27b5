//! Boots a real kernel in QEMU (TCG). Skipped, with a message, when no kernel is available:
//! run `kernel-config/build-custom-kernel` or set `UCERNVM_TEST_KERNEL`.

use std::time::Duration;

use cernvm_launch::qemu::{self, Accel, QemuCommand};
use qemu_tests::{inputs, Guest};
use ucernvm_initramfs::Archive;

const MARKER: &str = "UCERNVM-TEST: init is running";

fn kernel_or_skip() -> Option<std::path::PathBuf> {
    let kernel = inputs::kernel();
    if kernel.is_none() {
        test_prereq::skip(
            "no kernel (run kernel-config/build-custom-kernel or set UCERNVM_TEST_KERNEL)",
        );
    }
    kernel
}

#[test]
fn tcg_probe_sees_the_kernel_banner() {
    let Some(kernel) = kernel_or_skip() else {
        return;
    };
    let outcome = qemu::probe_boot(
        QemuCommand::new(),
        Accel::Tcg,
        &kernel,
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(outcome.works(), "{outcome:?}");
}

/// The kernel and an initramfs built with our cpio writer (zstd) whose /init prints
/// [`MARKER`], echoes a line typed on the console and powers the machine off; `None` (with a
/// message) when the kernel or a static busybox is missing.
fn echo_guest(dir: &std::path::Path) -> Option<QemuCommand> {
    let kernel = kernel_or_skip()?;
    let Some(busybox) = inputs::static_busybox() else {
        test_prereq::skip("no statically linked busybox (set UCERNVM_TEST_BUSYBOX)");
        return None;
    };
    let mut archive = Archive::new();
    archive
        .add_file("bin/busybox", std::fs::read(&busybox).unwrap(), 0o755)
        .unwrap()
        .add_symlink("bin/sh", "busybox")
        .unwrap()
        .add_char_device("dev/console", 5, 1, 0o600)
        .unwrap()
        .add_char_device("dev/null", 1, 3, 0o666)
        .unwrap()
        .add_dir("proc", 0o555)
        .unwrap()
        .add_file(
            "init",
            format!(
                "#!/bin/sh\n\
                 /bin/busybox mount -t proc proc /proc\n\
                 echo \"{MARKER} on $(/bin/busybox uname -r)\"\n\
                 read -r line\n\
                 echo \"console said: $line\"\n\
                 /bin/busybox poweroff -f\n"
            ),
            0o755,
        )
        .unwrap();
    let initrd = dir.join("initrd.cpio.zst");
    let file = std::fs::File::create(&initrd).unwrap();
    archive.write_zstd(file, 3).unwrap();
    Some(
        QemuCommand::new()
            .accel(Accel::Tcg)
            .memory_mib(512)
            .kernel(
                &kernel,
                Some(initrd),
                Some("console=ttyS0 panic=-1 quiet".into()),
            )
            .no_reboot(true),
    )
}

/// The kernel must unpack our zstd archive, find /dev/console and run /init; the console is
/// interactive both ways, QMP reports the guest running, and the guest's poweroff ends QEMU.
#[test]
fn boots_an_initramfs_written_by_ucernvm_initramfs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cmd) = echo_guest(dir.path()) else {
        return;
    };
    let mut guest = Guest::spawn(cmd).unwrap();
    if let Err(e) = guest.wait_for(MARKER, Duration::from_secs(120)) {
        panic!("{e}");
    }
    assert_eq!(guest.run_state().unwrap(), "running");
    // The console is interactive: what the test types reaches the guest's shell.
    guest.send("hello from the host\n").unwrap();
    if let Err(e) = guest.wait_for("console said: hello from the host", Duration::from_secs(60)) {
        panic!("{e}");
    }
    // poweroff -f: QEMU exits by itself.
    let status = guest.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}

/// The harness stops a running guest through QMP `quit`: QEMU exits normally (closing its
/// disk images) instead of being killed by a signal.
#[test]
fn a_running_guest_is_stopped_through_qmp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cmd) = echo_guest(dir.path()) else {
        return;
    };
    let mut guest = Guest::spawn(cmd).unwrap();
    if let Err(e) = guest.wait_for(MARKER, Duration::from_secs(120)) {
        panic!("{e}");
    }
    let status = guest.kill().expect("QEMU was reaped");
    assert!(
        status.success(),
        "QEMU ended with {status}, not by QMP quit"
    );
}
