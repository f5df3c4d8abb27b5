//! Boot loader updates (issue 20, spec §7, §15): an update pack in `/mnt/.rw/kexec` is checked
//! and started with kexec, once; a broken one leaves the running version booting.
//!
//! Version A is the µCernVM initramfs with the update CA (`etc/cernvm/update-ca.pem`, a test CA
//! made with openssl); version B is the same with another `/version`. The OS installs a pack
//! the way `cernvm-update -k` would: a hook of the test OS unpacks a tar stream from a second,
//! read-only virtio disk into `/mnt/.rw/kexec`. Boots:
//! 1. A on a blank disk; the OS installs a pack whose kernel is truncated (validly signed).
//! 2. A refuses it with a message and boots on; the OS installs a good, signed pack of B.
//! 3. A kexecs into B: B's banner, B's `aux/ucernvm-version`, the scratch disk as it was (the
//!    OS's boot counter goes on).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::TestCa;
use qemu_tests::inputs;
use qemu_tests::media::blank_qcow2;
use qemu_tests::scenario::{
    self, expect_marker as wait, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT,
};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

const VERSION_B: &str = "2099.01-1.cernvm.x86_64";

/// The OS side of `cernvm-update -k`, and what the OS sees of the boot loader.
const UPDATE_HOOK: &str = "#!/bin/sh
echo \"UPDATE-CHECK: ucernvm-version $(cat /mnt/.rw/aux/ucernvm-version)\"
if [ -b /dev/vdb ]; then
  mkdir -p /mnt/.rw/kexec && tar -xf /dev/vdb -C /mnt/.rw/kexec && sync &&
    echo \"UPDATE-CHECK: pack installed: $(tr '\\n' ' ' < /mnt/.rw/kexec/apply)\"
fi
";

/// A tar stream of the pack (apply, kernel, initramfs) as a raw disk image.
fn pack_disk(dir: &Path, name: &str, kernel: &[u8], initrd: &[u8]) -> std::path::PathBuf {
    let src = dir.join(name);
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("apply"),
        format!("version={VERSION_B}\nkernel=vmlinuz-B\ninitrd=initrd.B\ncmdline=\n"),
    )
    .unwrap();
    fs::write(src.join("vmlinuz-B"), kernel).unwrap();
    fs::write(src.join("initrd.B"), initrd).unwrap();
    let disk = dir.join(format!("{name}.tar"));
    let out = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&disk)
        .arg("-C")
        .arg(&src)
        .args(["apply", "vmlinuz-B", "initrd.B"])
        .output()
        .unwrap();
    common::check("tar", &out);
    disk
}

/// `data` signed with scripts/sign-image by the test CA's signer.
fn signed(ca: &TestCa, dir: &Path, name: &str, data: &[u8]) -> Vec<u8> {
    let path = dir.join(name);
    fs::write(&path, data).unwrap();
    common::check("sign-image", &ca.sign(&path, &["--version", VERSION_B]));
    fs::read(path).unwrap()
}

fn with_pack_disk(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio,readonly=on", disk.display()),
    ]
}

#[test]
fn an_update_is_kexeced_once_and_a_broken_one_falls_back() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&dir.path().join("ca"), "Update CA");
    let repo = OsRepository::create_customized("test-os.cernvm.test", "r1", None, |src| {
        let hook = src.join("etc/test-os/rc.d/60-update-check");
        fs::write(&hook, UPDATE_HOOK)?;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
    })
    .unwrap();
    let ca_pem = fs::read(ca.ca_cert()).unwrap();
    let image_a = BootImage::with_repository_key(&repo)
        .unwrap()
        .with_files(&[("etc/cernvm/update-ca.pem", &ca_pem)])
        .unwrap();
    let version_a = fs::read_to_string(inputs::workspace_root().join("scripts/bootloader-version"))
        .unwrap()
        .trim()
        .to_string()
        + ".cernvm.x86_64";

    // B: the same initramfs with B's version file (the kernel unpacks the later archive over
    // the earlier one).
    let image_b = BootImage::with_repository_key(&repo)
        .unwrap()
        .with_files(&[("etc/cernvm/update-ca.pem", &ca_pem)])
        .unwrap()
        .with_files(&[("version", format!("{VERSION_B}\n").as_bytes())])
        .unwrap();
    let kernel = fs::read(&image_a.kernel).unwrap();
    let initrd_b = fs::read(&image_b.initrd).unwrap();

    let truncated = signed(
        &ca,
        dir.path(),
        "k-trunc",
        &kernel[..kernel.len() - 1_000_000],
    );
    let bad_pack = pack_disk(
        dir.path(),
        "bad-pack",
        &truncated,
        &signed(&ca, dir.path(), "i-bad", &initrd_b),
    );
    let good_pack = pack_disk(
        dir.path(),
        "good-pack",
        &signed(&ca, dir.path(), "k-good", &kernel),
        &signed(&ca, dir.path(), "i-good", &initrd_b),
    );

    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let cmdline = scenario::repository_cmdline(&repo, "10.0.2.2");
    let boot = |pack: Option<&Path>| {
        let mut spec = BootSpec::new(&image_a, &disk, cmdline.clone());
        if let Some(p) = pack {
            spec.qemu_args = with_pack_disk(p);
        }
        scenario::boot(spec).unwrap()
    };

    // 1. A installs the broken pack.
    let mut guest = boot(Some(&bad_pack));
    wait(&mut guest, &format!("Release {version_a}"), BOOT_TIMEOUT);
    wait(
        &mut guest,
        &format!("UPDATE-CHECK: ucernvm-version {version_a}"),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, "UPDATE-CHECK: pack installed", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    guest.kill();
    drop(guest);

    // 2. A refuses it and boots on; the good pack replaces it.
    let mut guest = boot(Some(&good_pack));
    wait(
        &mut guest,
        "boot loader update not applied: the update's kernel /root.rw/kexec/vmlinuz-B: truncated:",
        BOOT_TIMEOUT,
    );
    wait(
        &mut guest,
        &format!("booting the running version {version_a}"),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, "UCERNVM-TEST-OS: boot number 2", BOOT_TIMEOUT);
    wait(
        &mut guest,
        &format!("UPDATE-CHECK: ucernvm-version {version_a}"),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, "UPDATE-CHECK: pack installed", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    guest.kill();
    drop(guest);

    // 3. A starts B, once; B finds its own pack and boots the OS on the same scratch disk.
    let mut guest = boot(None);
    wait(&mut guest, &format!("Release {version_a}"), BOOT_TIMEOUT);
    wait(
        &mut guest,
        &format!("kexec into kernel {VERSION_B}..."),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, &format!("Release {VERSION_B}"), BOOT_TIMEOUT);
    wait(&mut guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: boot number 3", BOOT_TIMEOUT);
    wait(
        &mut guest,
        &format!("UPDATE-CHECK: ucernvm-version {VERSION_B}"),
        BOOT_TIMEOUT,
    );
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    let log = guest.console().contents();
    assert_eq!(
        log.matches("kexec into kernel").count(),
        1,
        "kexec more than once:\n{log}"
    );
    assert!(log.contains(&format!("ucernvm_kexec={VERSION_B}")), "{log}");
}
