//! Builds the µCernVM images (the initramfs from the real manifest, then scripts/build-iso and
//! scripts/build-hdd) and boots them in QEMU (TCG) — the ISO from the CD-ROM, the raw disk from
//! virtio-blk — until our init's banner appears on the serial console; the images are signed
//! with a test CA and the signed ones boot the same way. One test, so the initramfs is built once.
//! Skipped, with a message, without the Debian kernel or the static executables
//! (`kernel-config/build-custom-kernel`, `scripts/build-static`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cernvm_launch::qemu::{Accel, DiskFormat, QemuCommand, UserNet};
use common::{check, script, TestCa};
use qemu_tests::inputs::{self, workspace_root};
use qemu_tests::Guest;
use ucernvm_initramfs::{builder, manifest::Manifest, Compression};

const VERSION: &str = "2026.11-1.cernvm.x86_64";
/// Budget for an ISO with Debian's cloud kernel (issue 9: ≤ 20 MB).
const ISO_BUDGET: u64 = 20 * 1024 * 1024;
/// Budget for an ISO with the µCernVM kernel (`scripts/lib/boot-tree.sh`), dropbear included.
const CUSTOM_ISO_BUDGET: u64 = 12_000_000;

/// The initramfs as scripts/build-initrd builds it (same manifest and variables).
fn build_initrd(kernel: &Path, out: &Path) -> Option<()> {
    let ws = workspace_root();
    let static_dir = ws.join("target/x86_64-unknown-linux-musl/initramfs");
    if !static_dir.join("init").is_file() || !static_dir.join("cvmfs2").is_file() {
        test_prereq::skip("no static init/cvmfs2 (run scripts/build-static)");
        return None;
    }
    let Some(tools) = inputs::static_tools() else {
        test_prereq::skip("no static e2fsprogs/dropbear (run scripts/build-static-tools)");
        return None;
    };
    let kmods = qemu_tests::kernel_modules::modules_dir(kernel).ok()?;
    let manifest_path = ws.join("initramfs/ucernvm.manifest");
    let vars: BTreeMap<String, String> = [
        ("version", VERSION.to_string()),
        ("static", static_dir.display().to_string()),
        ("busybox", "/bin/busybox".to_string()),
        ("e2fsprogs_dir", tools.display().to_string()),
        ("kmods", kmods.display().to_string()),
        (
            "ca_bundle",
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ),
        ("manifest_dir", ws.join("initramfs").display().to_string()),
        // cvmssh's SSH server, as scripts/build-initrd adds it for the µCernVM kernel.
        ("dropbear", tools.join("dropbear").display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let text = fs::read_to_string(&manifest_path).unwrap();
    let manifest = Manifest::parse("ucernvm.manifest", &text, &vars).unwrap();
    let mut build = builder::build(&manifest).unwrap_or_else(|e| panic!("{e}"));
    build.archive.set_mtime(1_700_000_000);
    let file = fs::File::create(out).unwrap();
    build
        .archive
        .write_compressed(file, Compression::Xz)
        .unwrap();
    Some(())
}

/// Runs scripts/build-iso or scripts/build-hdd (serial variant); returns the size report.
fn build_image(builder: &str, kernel: &Path, initrd: &Path, output: &Path) -> String {
    let out = Command::new(script(builder))
        .arg("--serial")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--output")
        .arg(output)
        .env("UCERNVM_VERSION", VERSION)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("cannot run scripts/build-iso");
    check(builder, &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        output.display().to_string()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

enum Medium<'a> {
    Cdrom(&'a Path),
    Disk(&'a Path),
    /// The CD-ROM plus an empty scratch disk.
    CdromWithScratch(&'a Path, &'a Path),
}

/// Boots the medium and waits for the boot menu and the banner of our init.
fn boot_to_banner(medium: Medium) {
    boot_until(medium, &[]);
}

/// Boots the medium and waits for the boot menu, the banner of our init, then `more` markers.
fn boot_until(medium: Medium, more: &[&str]) {
    let cmd = QemuCommand::new()
        .accel(Accel::Tcg)
        .memory_mib(1024)
        .no_reboot(true);
    let cmd = match medium {
        Medium::Cdrom(iso) => cmd.iso(iso),
        Medium::Disk(hdd) => cmd.disk_with_format(hdd, DiskFormat::Raw),
        // A network too: the network phase comes before the scratch disk.
        Medium::CdromWithScratch(iso, scratch) => cmd
            .iso(iso)
            .disk_with_format(scratch, DiskFormat::Raw)
            .user_net(UserNet::default()),
    };
    let mut guest = Guest::spawn(cmd).unwrap();
    for marker in [
        "Welcome to uCernVM",
        "* Welcome to micro-CernVM",
        &format!("* Release {VERSION}"),
    ]
    .into_iter()
    .chain(more.iter().copied())
    {
        if let Err(e) = guest.wait_for(marker, Duration::from_secs(240)) {
            panic!("{e}");
        }
    }
}

/// The ISO's file tree, listed by xorriso (path → size), to check the boot medium layout.
fn iso_files(iso: &Path) -> Vec<String> {
    let out = Command::new("xorriso")
        .args(["-indev"])
        .arg(iso)
        .args(["-find", "/", "-type", "f"])
        .output()
        .unwrap();
    check("xorriso -find", &out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_matches('\'').to_string())
        .collect()
}

fn extract(iso: &Path, path: &str, to: &Path) -> String {
    let out = Command::new("xorriso")
        .arg("-osirrox")
        .arg("on")
        .arg("-indev")
        .arg(iso)
        .arg("-extract")
        .arg(path)
        .arg(to)
        .output()
        .unwrap();
    check("xorriso -extract", &out);
    fs::read_to_string(to).unwrap()
}

#[test]
fn iso_and_hdd_images_signed_and_unsigned_boot_to_our_init() {
    let Some(kernel) = inputs::kernel() else {
        test_prereq::skip("no kernel (run kernel-config/build-custom-kernel)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let initrd = tmp.path().join("initrd.img");
    if build_initrd(&kernel, &initrd).is_none() {
        return;
    }
    let iso: PathBuf = tmp.path().join(format!("ucernvm.{VERSION}.iso"));
    let report = build_image("build-iso", &kernel, &initrd, &iso);
    assert!(report.contains("kernel (cernvm/vmlinuz.xz)"), "{report}");
    assert_reproducible("build-iso", &kernel, &initrd, &iso);

    // Layout of spec §14.1, with the sentinel and the version text.
    let files = iso_files(&iso);
    for f in [
        "/isolinux/isolinux.bin",
        "/isolinux/isolinux.cfg",
        "/isolinux/syslinux.cfg",
        "/isolinux/ldlinux.c32",
        "/boot/grub/menu.lst",
        "/cernvm/vmlinuz.xz",
        "/cernvm/initrd.img",
        "/.ucernvm_boot_loader",
        "/version",
    ] {
        assert!(files.iter().any(|l| l == f), "{f} missing in {files:?}");
    }
    assert_eq!(
        extract(&iso, "/version", &tmp.path().join("version")),
        format!("cernvm-prod.cern.ch at HEAD4, uCernVM {VERSION}\n")
    );
    let cfg = extract(
        &iso,
        "/isolinux/isolinux.cfg",
        &tmp.path().join("isolinux.cfg"),
    );
    assert!(cfg.contains("LABEL debug"), "{cfg}");
    assert!(
        cfg.contains("cvmfs_repository_tag=HEAD4 cvmdebug console=ttyS0\n"),
        "{cfg}"
    );

    let size = fs::metadata(&iso).unwrap().len();
    let budget = if kernel.to_string_lossy().contains("/custom-kernel/") {
        CUSTOM_ISO_BUDGET
    } else {
        ISO_BUDGET
    };
    assert!(size <= budget, "ISO of {size} bytes exceeds {budget}");

    // With an empty disk attached, the init partitions and formats it with the mke2fs of the
    // initramfs (a static build: scripts/build-static-tools) and mounts it; the CernVM-FS phase
    // comes only after a mounted root. (A file system mke2fs has just made is clean, so
    // e2fsck does not run; initramfs/tests/build_cli.rs runs every shipped e2fsprogs tool in
    // a chroot of the archive. "check"/"failed" after each step are coloured, so they are not
    // part of the markers.)
    let scratch = tmp.path().join("scratch.img");
    fs::File::create(&scratch)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    boot_until(
        Medium::CdromWithScratch(&iso, &scratch),
        &[
            "Formatting /dev/vda1...",
            "Mounting root filesystem...",
            "Starting CernVM File System...",
        ],
    );

    // Signed, it still boots, and it verifies.
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    sign_and_verify(&ca, &iso);
    boot_to_banner(Medium::Cdrom(&iso));

    // The raw disk image: 24 MiB, boots from the disk, also when signed.
    let hdd = tmp.path().join(format!("ucernvm.{VERSION}.hdd"));
    let report = build_image("build-hdd", &kernel, &initrd, &hdd);
    assert!(report.contains("initramfs (cernvm/initrd.img)"), "{report}");
    assert_eq!(fs::metadata(&hdd).unwrap().len(), 24 * 1024 * 1024);
    assert_reproducible("build-hdd", &kernel, &initrd, &hdd);
    let layout = Command::new("sfdisk")
        .arg("--dump")
        .arg(&hdd)
        .output()
        .unwrap();
    check("sfdisk --dump", &layout);
    let layout = String::from_utf8_lossy(&layout.stdout);
    assert!(
        layout.contains(": start=           1, size=       47102, type=6, bootable"),
        "{layout}"
    );
    boot_to_banner(Medium::Disk(&hdd));
    sign_and_verify(&ca, &hdd);
    boot_to_banner(Medium::Disk(&hdd));
}

/// Building again a second later from the same inputs gives the same bytes.
fn assert_reproducible(builder: &str, kernel: &Path, initrd: &Path, image: &Path) {
    std::thread::sleep(Duration::from_millis(1100));
    let again = image.with_extension("again");
    build_image(builder, kernel, initrd, &again);
    assert!(
        fs::read(image).unwrap() == fs::read(&again).unwrap(),
        "{builder}: two builds from the same inputs differ"
    );
    fs::remove_file(&again).unwrap();
    fs::remove_file(again.with_extension("again.sha256")).ok();
}

fn sign_and_verify(ca: &TestCa, image: &Path) {
    let size = fs::metadata(image).unwrap().len();
    check("sign-image", &ca.sign(image, &[]));
    assert_eq!(fs::metadata(image).unwrap().len(), size + 65536);
    let out = Command::new(script("verify-image"))
        .arg(image)
        .arg("--ca")
        .arg(ca.ca_path())
        .output()
        .unwrap();
    check("verify-image", &out);
}
