//! The `prod` branch preset booted for real (issue 20): the kernel command line an image built
//! with `--branch prod` carries (scripts/lib/boot-tree.sh), so the init's preset handling, the
//! CDN string with its `,`/`;` mix, `auto;DIRECT` with the lab PAC URLs and
//! `CVMFS_USE_GEOAPI=yes` all run as in production. The production host names are mapped to a
//! local server by `/etc/hosts` in the test initramfs (10.0.2.100, forwarded by QEMU to the
//! repository's server on 127.0.0.1): the PAC URLs answer 404 (so `DIRECT`), and whatever the
//! client asks a Stratum-1 for the Geo-API gets 404 too (the configured order then).
//!
//! The repository is `cernvm-prod.cern.ch` published by our `cvmfs-publish` with the OS under
//! `/cvm4` and the tag `HEAD4`, signed by a test key added to the image next to the shipped
//! cern.ch keys. User data also names a branch that does not exist: a message, and the boot
//! goes on with the image's preset. (`cvmssh`: `tests/cvmssh.rs`.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use cernvm_launch::qemu::UserNet;
use qemu_tests::inputs::workspace_root;
use qemu_tests::media::{blank_qcow2, context_iso};
use qemu_tests::scenario::BOOT_TIMEOUT;
use qemu_tests::scenario::{self, expect_marker as wait, BootImage, BootSpec, OsRepository};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

/// Where the production names point in the guest.
const LOCAL_SERVER: &str = "10.0.2.100";

/// The kernel parameters an image of `branch` carries (scripts/lib/boot-tree.sh).
fn image_params(branch: &str) -> String {
    let script = workspace_root().join("scripts/lib/boot-tree.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}' && parse_boot_option --branch {branch} && common_params",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every host name the prod preset and the default proxy settings make the client contact.
fn production_names(params: &str) -> Vec<String> {
    let value = |key: &str| {
        params
            .split_whitespace()
            .find_map(|t| t.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    let mut names: Vec<String> = [value("cvmfs_server="), value("cvmfs_cdn=")]
        .iter()
        .flat_map(|l| l.split([',', ';']).map(str::to_string).collect::<Vec<_>>())
        .filter(|h| !h.is_empty())
        .collect();
    names.extend(
        [
            "grid-wpad",
            "wpad",
            "cernvm-wpad.cern.ch",
            "cernvm-wpad.fnal.gov",
        ]
        .map(String::from),
    );
    names
}

#[test]
fn the_prod_preset_boots_through_its_cdn_names_mapped_to_a_local_server() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let params = image_params("prod");
    assert!(
        params.contains("cvmfs_repos=cernvm-prod.cern.ch"),
        "{params}"
    );
    assert!(params.contains("cernvm_path=cvm4"), "{params}");
    assert!(params.contains("cvmfs_repository_tag=HEAD4"), "{params}");
    // The OS tree under /cvm4, as in the production repository; a hook reports what the
    // boot loader left for the OS.
    let repo =
        OsRepository::create_customized("cernvm-prod.cern.ch", "prod-r1", Some("HEAD4"), |src| {
            let hook = src.join("etc/test-os/rc.d/60-preset-check");
            fs::write(&hook, PRESET_CHECK)?;
            fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))?;
            let os = src.with_file_name("cvm4");
            fs::rename(src, &os)?;
            fs::create_dir_all(src)?;
            fs::rename(os, src.join("cvm4"))
        })
        .unwrap();
    let names = production_names(&params);
    let mut hosts = String::from("127.0.0.1\tlocalhost\n");
    hosts.push_str(&format!("{LOCAL_SERVER}\t{}\n", names.join(" ")));
    let image = BootImage::with_repository_key(&repo)
        .unwrap()
        .with_files(&[("etc/hosts", hosts.as_bytes())])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let iso = dir.path().join("config-2.iso");
    context_iso(
        &iso,
        "config-2",
        &[(
            "openstack/latest/user_data",
            b"[ucernvm-begin]\ncvmfs_branch=prdo\n[ucernvm-end]\n",
        )],
    )
    .unwrap();
    let net = UserNet {
        guestfwd: vec![format!(
            "tcp:{LOCAL_SERVER}:80-cmd:socat - TCP:127.0.0.1:{}",
            repo.port()
        )],
        ..Default::default()
    };
    let mut guest = scenario::boot(BootSpec {
        net: Some(net),
        cdroms: vec![iso],
        ..BootSpec::new(&image, &disk, params)
    })
    .unwrap();
    wait(
        &mut guest,
        "cvmfs_branch=prdo: no such branch (known: prod, v4prod,",
        BOOT_TIMEOUT,
    );
    wait(&mut guest, "connected to cernvm-prod.cern.ch", BOOT_TIMEOUT);
    wait(&mut guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: release prod-r1", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    let log = guest.console().contents();
    for key in [
        "cern-it1.cern.ch.pub",
        "cern-it4.cern.ch.pub",
        "cern-it5.cern.ch.pub",
    ] {
        assert!(log.contains(&format!("PRESET-CHECK: key {key}")), "{log}");
    }
    let version = fs::read_to_string(workspace_root().join("scripts/bootloader-version")).unwrap();
    assert!(
        log.contains(&format!(
            "PRESET-CHECK: ucernvm-version {}.cernvm.x86_64",
            version.trim()
        )),
        "{log}"
    );
}

/// Run by the OS: the keys the boot loader exported and the version file it wrote.
const PRESET_CHECK: &str = "#!/bin/sh
for k in /mnt/.rw/aux/keys/cernvm-prod.cern.ch/*; do echo \"PRESET-CHECK: key ${k##*/}\"; done
echo \"PRESET-CHECK: ucernvm-version $(cat /mnt/.rw/aux/ucernvm-version)\"
";
