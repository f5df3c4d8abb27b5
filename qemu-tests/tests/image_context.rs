//! scripts/image-context: extra user data added to a built, signed image without rebuilding
//! it; `show` lists what the image carries and whether its signature verifies; the changed
//! ISO and HDD boot and the CernVM finds and applies the extra user data (spec §5.8).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cernvm_launch::qemu::{Accel, QemuCommand};
use common::{check, script, TestCa};
use qemu_tests::inputs;
use qemu_tests::Guest;

const VERSION: &str = "2026.12-2.cernvm.x86_64";
const EXTRA: &str = "[ucernvm-begin]\ncvmfs_tag=from-the-image\n[ucernvm-end]\n";

fn image_context(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(script("image-context"))
        .args(args)
        .output()
        .expect("cannot run scripts/image-context")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Boots `cmd` until the extra context was looked for; returns the guest and that console line
/// (its result: the devices the extra context came from, or `(none)`).
fn extra_context_line(cmd: QemuCommand) -> (Guest, String) {
    const MARKER: &str = "Looking for extra context...";
    let mut guest = Guest::spawn(cmd).unwrap();
    guest
        .wait_for(MARKER, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = guest.console().contents();
        let at = text.find(MARKER).unwrap();
        if let Some(end) = text[at..].find('\n') {
            let line = text[at..at + end].to_string();
            return (guest, line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no result after {MARKER:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn extra_user_data_added_to_a_signed_image_is_applied_at_boot() {
    let (Some(kernel), Some(initrd)) = (inputs::kernel(), inputs::initrd()) else {
        test_prereq::skip(
            "no kernel or initramfs (kernel-config/build-custom-kernel, scripts/build-initrd)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    let dir = tmp.path().join("images");
    let out = Command::new(script("build-images"))
        .arg("--dir")
        .arg(&dir)
        .args(["--serial", "--formats", "iso,hdd", "--sign-cert"])
        .arg(ca.cert())
        .arg("--sign-key")
        .arg(ca.key())
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .env("UCERNVM_VERSION", VERSION)
        .output()
        .unwrap();
    check("build-images", &out);
    let hdd = dir.join(format!("ucernvm.{VERSION}.hdd"));
    let iso = dir.join(format!("ucernvm.{VERSION}.iso"));
    let extra = tmp.path().join("extra-user-data");
    fs::write(&extra, EXTRA).unwrap();

    // What the signed image carries, and its signature verified against the CA.
    let shown = image_context(&[
        "show".as_ref(),
        hdd.as_os_str(),
        "--ca".as_ref(),
        ca.ca_path().as_os_str(),
    ]);
    check("image-context show", &shown);
    let shown = stdout(&shown);
    for expected in [
        format!("version:      cernvm-prod.cern.ch at HEAD4, uCernVM {VERSION}\n"),
        "repository:   cernvm-prod.cern.ch at HEAD4 (path cvm4)\n".to_string(),
        // The default branch, prod: its Stratum-1s and CDN (the original's string).
        "servers:      cvmfs-stratum-one.cern.ch,cvmfs-s1fnal.opensciencegrid.org,\
         cvmfs-s1bnl.opensciencegrid.org,grid-cvmfs-one.desy.de (CDN s1cern-cvmfs.openhtc.io,\
         s1ral-cvmfs.openhtc.io;s1bnl-cvmfs.openhtc.io;s1fnal-cvmfs.openhtc.io;\
         s1unl-cvmfs.openhtc.io)\n"
            .to_string(),
        "console:      ttyS0\n".to_string(),
        // The cern.ch keys for every branch repository (archive order), the demo key last.
        "keys:         cernvm-aarch64.cern.ch/cern-it1.cern.ch.pub ".to_string(),
        " cernvm-prod.cern.ch/cern-it1.cern.ch.pub cernvm-prod.cern.ch/cern-it4.cern.ch.pub \
         cernvm-prod.cern.ch/cern-it5.cern.ch.pub cernvm-sl7.cern.ch/"
            .to_string(),
        " demo.cernvm.test/demo.cernvm.test.pub\n".to_string(),
        format!("signature:    present ({{\"ucernvm-version\": \"{VERSION}\""),
        "verified:     yes".to_string(),
    ] {
        assert!(shown.contains(&expected), "{expected:?} not in:\n{shown}");
    }
    assert!(!shown.contains("extra:"), "{shown}");

    // Bad input changes nothing.
    let before = fs::read(&hdd).unwrap();
    let refused = image_context(&["add".as_ref(), hdd.as_os_str()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing to add"));
    let refused = image_context(&[
        "add".as_ref(),
        hdd.as_os_str(),
        "--pickup".as_ref(),
        extra.as_os_str(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a gzip'd tar archive"));
    let refused = image_context(&[
        "add".as_ref(),
        extra.as_os_str(),
        "--extra-user-data".as_ref(),
        extra.as_os_str(),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("neither a µCernVM ISO nor a raw µCernVM disk"));
    assert!(
        fs::read(&hdd).unwrap() == before,
        "a refused change altered the image"
    );

    // Added in place: the signature block goes (with a message), the extra user data is listed.
    for image in [&hdd, &iso] {
        let added = image_context(&[
            "add".as_ref(),
            image.as_os_str(),
            "--extra-user-data".as_ref(),
            extra.as_os_str(),
        ]);
        check("image-context add", &added);
        assert!(
            String::from_utf8_lossy(&added.stderr).contains("removed the signature block"),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
        let shown = image_context(&["show".as_ref(), image.as_os_str()]);
        check("image-context show", &shown);
        let shown = stdout(&shown);
        assert!(shown.contains("signature:    none\n"), "{shown}");
        assert!(
            shown.contains(&format!(
                "extra:        /cernvm/extra-user-data ({} bytes)\n",
                EXTRA.len()
            )),
            "{shown}"
        );
    }
    assert_eq!(fs::metadata(&hdd).unwrap().len(), 24 << 20);

    // The changed ISO boots and finds the extra user data on the CD-ROM.
    let (_guest, line) = extra_context_line(
        QemuCommand::new()
            .accel(Accel::Tcg)
            .memory_mib(1024)
            .no_reboot(true)
            .iso(&iso),
    );
    assert!(line.contains("/dev/sr0"), "{line}");

    // The changed disk boots, finds it on its boot partition and applies it: with no room for
    // a scratch partition on the 24 MiB disk, the boot stops in the rescue shell, where the
    // parsed extra context is read.
    let (mut guest, line) = extra_context_line(boot_disk(&hdd));
    assert!(line.contains("/dev/vda1"), "{line}");
    guest
        .wait_for("(initrd) ", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    guest
        .send("cat /extra-ucontext; echo END-OF-EXTRA\n")
        .unwrap();
    guest
        .wait_for("\nEND-OF-EXTRA", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = guest.console().contents();
    assert!(
        text.contains("_UCONTEXT_CVMFS_TAG=from-the-image"),
        "{text}"
    );
}

fn boot_disk(disk: &Path) -> QemuCommand {
    QemuCommand::new()
        .accel(Accel::Tcg)
        .memory_mib(1024)
        .no_reboot(true)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
}
