//! Exit codes and output of the `check-kernel-config` binary.

use std::fs;
use std::process::Command;

fn run(fragment: &std::path::Path, config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_check-kernel-config"))
        .arg("--fragment")
        .arg(fragment)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let fragment = dir.path().join("f.fragment");
    let config = dir.path().join("config");
    fs::write(
        &fragment,
        "# test\nCONFIG_DEVTMPFS=y\nCONFIG_FUSE_FS=m\nCONFIG_SATA_AHCI=m\n",
    )
    .unwrap();

    fs::write(
        &config,
        "CONFIG_DEVTMPFS=y\nCONFIG_FUSE_FS=m\n# CONFIG_SATA_AHCI is not set\n",
    )
    .unwrap();
    let (code, stdout, _) = run(&fragment, &config);
    assert_eq!(code, 1);
    assert!(stdout.contains("1 of 3 requirements"), "{stdout}");
    assert!(
        stdout.contains("CONFIG_SATA_AHCI must be built in or as a module"),
        "{stdout}"
    );

    fs::write(
        &config,
        "CONFIG_DEVTMPFS=y\nCONFIG_FUSE_FS=y\nCONFIG_SATA_AHCI=m\n",
    )
    .unwrap();
    let (code, stdout, _) = run(&fragment, &config);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("all 3 requirements"), "{stdout}");

    let (code, _, stderr) = run(&fragment, &dir.path().join("missing"));
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read"), "{stderr}");

    fs::write(&config, "CONFIG_DEVTMPFS=yes please\n").unwrap();
    let (code, _, stderr) = run(&fragment, &config);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(":1: CONFIG_DEVTMPFS: unrecognised value"),
        "{stderr}"
    );
}
