//! `cvmssh` (spec §13, issue 20): debug access over ssh to the initramfs. The default image
//! (the µCernVM kernel and its initramfs, which carries a static dropbear) boots with `cvmssh`
//! on the command line; the hand-over stops in dropbear, which generates its host keys on
//! demand. The OpenSSH client logs in as root through a port forwarded on 127.0.0.1, runs
//! commands in the initramfs, then kills dropbear over ssh, and the boot goes on to the OS.
//!
//! With an ssh key in the user data's `#cloud-config`, only that key lets root in (another
//! key is refused); without keys, root has the original's blank password, so any client
//! gets in.

use std::fs;
use std::time::Duration;

use cernvm_launch::qemu::UserNet;
use qemu_tests::inputs::workspace_root;
use qemu_tests::media::{blank_qcow2, context_iso};
use qemu_tests::scenario::{
    self, expect_marker as wait, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT,
};
use qemu_tests::ssh::{self, SshKey};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

/// The OpenSSH client and key generator; skips (or fails under `UCERNVM_REQUIRE_ALL`)
/// naming the first one missing.
fn ssh_tools_ready() -> bool {
    for tool in ["ssh", "ssh-keygen"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            test_prereq::skip(format_args!("{tool} (Debian package openssh-client)"));
            return false;
        }
    }
    true
}

/// A guest booting the test OS with `cvmssh` on a blank disk, its ssh port forwarded from
/// `port` on 127.0.0.1, with `user_data` (if any) on an OpenStack config drive.
struct CvmsshBoot {
    guest: qemu_tests::Guest,
    port: u16,
    _repo: OsRepository,
    _image: BootImage,
    _dir: tempfile::TempDir,
}

fn boot_with_cvmssh(user_data: Option<&str>) -> CvmsshBoot {
    let repo = OsRepository::create("test-os.cernvm.test", "r1", Some("r1")).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 2048).unwrap();
    let mut cdroms = Vec::new();
    if let Some(user_data) = user_data {
        let iso = dir.path().join("config-2.iso");
        context_iso(
            &iso,
            "config-2",
            &[("openstack/latest/user_data", user_data.as_bytes())],
        )
        .unwrap();
        cdroms.push(iso);
    }
    let port = ssh::free_port();
    let guest = scenario::boot(BootSpec {
        net: Some(UserNet {
            hostfwd: vec![ssh::hostfwd(port)],
            ..Default::default()
        }),
        cdroms,
        ..BootSpec::new(
            &image,
            &disk,
            format!("{} cvmssh", scenario::repository_cmdline(&repo, "10.0.2.2")),
        )
    })
    .unwrap();
    CvmsshBoot {
        guest,
        port,
        _repo: repo,
        _image: image,
        _dir: dir,
    }
}

#[test]
fn cvmssh_lets_the_user_datas_key_into_the_initramfs_and_the_boot_goes_on_after_dropbear() {
    if !scenario::full_boot_inputs_ready() || !ssh_tools_ready() {
        return;
    }
    let key = SshKey::generate("cvmssh-test").unwrap();
    let stranger = SshKey::generate("not-in-the-user-data").unwrap();
    // The key as a user's key of the cloud-config, next to an entry that is no key.
    let user_data = format!(
        "#cloud-config\nusers:\n  - name: physicist\n    ssh_authorized_keys:\n      \
         - {}\n      - ssh-rsa not-a-key physicist@laptop\n",
        key.public
    );
    let mut boot = boot_with_cvmssh(Some(&user_data));
    let (guest, port) = (&mut boot.guest, boot.port);
    wait(
        guest,
        "cvmssh: ssh_authorized_keys: \"ssh-rsa not-a-key physicist@laptop\" is not an ssh public key",
        BOOT_TIMEOUT,
    );
    wait(
        guest,
        "cvmssh: root logs in with the ssh key of the user data only; home /home/root",
        BOOT_TIMEOUT,
    );
    wait(guest, "network interfaces: ", BOOT_TIMEOUT);
    wait(guest, "Starting SSH server (dropbear)", BOOT_TIMEOUT);

    let out = ssh::run_until_ok(
        port,
        "root",
        &key.private,
        "cat /version; echo home=$HOME; id -u; ls -A /root/.ssh 2>/dev/null | wc -l; \
         test -d /root/mnt/.rw/cache && echo scratch-disk; \
         ls /etc/dropbear",
        Duration::from_secs(180),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ssh into the initramfs failed: {out:?}\n----- console -----\n{}",
        guest.console().contents()
    );
    let version = fs::read_to_string(workspace_root().join("scripts/bootloader-version")).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("{}.cernvm.x86_64", version.trim()).as_str()),
        "{stdout}"
    );
    assert!(lines.contains(&"home=/home/root"), "{stdout}");
    assert_eq!(lines.get(2).copied(), Some("0"), "{stdout}");
    // The keys stay in the initramfs: the OS's /root (the union) got no .ssh.
    assert_eq!(lines.get(3).copied(), Some("0"), "{stdout}");
    assert!(lines.contains(&"scratch-disk"), "{stdout}");
    // The host key dropbear made on demand for this connection.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dropbear_") && l.ends_with("_host_key")),
        "{stdout}"
    );

    // A key the user data does not name is refused: no blank password with keys.
    let refused = ssh::run(port, "root", &stranger.private, "true").unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );

    // Killing dropbear ends cvmssh; the session that killed it may lose its connection.
    let _ = ssh::run(
        port,
        "root",
        &key.private,
        "kill $(cat /var/run/dropbear.pid)",
    )
    .unwrap();
    wait(guest, "cvmssh: dropbear exited", BOOT_TIMEOUT);
    wait(guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(guest, "UCERNVM-TEST-OS: root is overlay", BOOT_TIMEOUT);
    wait(guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    wait(guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
}

/// No keys in the user data: the original's blank root password (dropbear -B), so the client
/// gets in with any key (or none).
#[test]
fn cvmssh_without_keys_lets_root_in_with_the_blank_password() {
    if !scenario::full_boot_inputs_ready() || !ssh_tools_ready() {
        return;
    }
    let any_key = SshKey::generate("any-key").unwrap();
    let mut boot = boot_with_cvmssh(None);
    let (guest, port) = (&mut boot.guest, boot.port);
    wait(
        guest,
        "cvmssh: root logs in without a password; home /home/root",
        BOOT_TIMEOUT,
    );
    wait(guest, "Starting SSH server (dropbear)", BOOT_TIMEOUT);
    let out = ssh::run_until_ok(
        port,
        "root",
        &any_key.private,
        "cat /version; kill $(cat /var/run/dropbear.pid)",
        Duration::from_secs(180),
    )
    .unwrap();
    let version = fs::read_to_string(workspace_root().join("scripts/bootloader-version")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("{}.cernvm.x86_64\n", version.trim())),
        "{out:?}\n----- console -----\n{}",
        guest.console().contents()
    );
    wait(
        guest,
        "Auth succeeded with blank password for 'root'",
        BOOT_TIMEOUT,
    );
    wait(guest, "cvmssh: dropbear exited", BOOT_TIMEOUT);
    wait(guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
}
