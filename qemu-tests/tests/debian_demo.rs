//! The Debian demo OS (issue 10), outside the fast suite: a `debootstrap --variant=minbase`
//! Debian with sysvinit (`scripts/build-debian-os`, needs root and deb.debian.org the first
//! time, then cached in `build/debian-os/`), published with our `cvmfs-publish` and streamed by
//! our `cvmfs2` from a blank disk. In debug mode `reset_root_password` opens root's locked
//! password in Debian's `/etc/shadow`, and root logs in on the serial console's getty.
//!
//! `cargo test -p qemu-tests --test debian_demo -- --ignored` (a few minutes under TCG).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use qemu_tests::inputs;
use qemu_tests::media::blank_qcow2;
use qemu_tests::relay::CountingRelay;
use qemu_tests::scenario::{
    self, expect_marker as wait, expect_marker_after as wait_after, BootImage, BootSpec,
    OsRepository, OsSource,
};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

/// sysvinit's rc scripts from FUSE under TCG on a shared machine take minutes, not seconds.
const DEBIAN_TIMEOUT: Duration = Duration::from_secs(1200);

const FQRN: &str = "debian-os.cernvm.test";

/// The Debian OS tarball, built (or found in the cache) by `scripts/build-debian-os`.
fn debian_os() -> PathBuf {
    let script = inputs::workspace_root().join("scripts/build-debian-os");
    let out = Command::new(&script)
        .output()
        .expect("cannot run scripts/build-debian-os");
    assert!(
        out.status.success(),
        "scripts/build-debian-os failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
#[ignore = "needs deb.debian.org once and minutes under TCG: cargo test -p qemu-tests --test debian_demo -- --ignored"]
fn debian_minbase_streams_to_a_root_login_on_the_serial_console() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let repo = OsRepository::create_from(
        OsSource::Tarball(debian_os()),
        FQRN,
        "debian-r1",
        Some("r1"),
        |_| Ok(()),
    )
    .unwrap();
    let relay = CountingRelay::start(repo.port()).unwrap();
    let image = BootImage::with_repository_key(&repo).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("scratch.qcow2");
    blank_qcow2(&disk, 4096).unwrap();
    let mut guest = scenario::boot(BootSpec::new(
        &image,
        &disk,
        format!(
            "cvmfs_url=http://10.0.2.2:{}/cvmfs/{FQRN} cvmfs_repos={FQRN} cvmfs_proxy=DIRECT \
             cvmdebug",
            relay.port()
        ),
    ))
    .unwrap();

    // Debug mode: the rescue shell before the hand-over opens root's password in the union.
    wait(&mut guest, "(initrd) ", DEBIAN_TIMEOUT);
    guest.send("reset_root_password\n").unwrap();
    wait(&mut guest, "root password is 'password'", DEBIAN_TIMEOUT);
    guest.send("exit\n").unwrap();

    wait(&mut guest, OS_READY_MARKER, DEBIAN_TIMEOUT);
    wait(
        &mut guest,
        "UCERNVM-TEST-OS: release debian-r1",
        DEBIAN_TIMEOUT,
    );
    wait(&mut guest, OS_LOGIN_MARKER, DEBIAN_TIMEOUT);
    wait(&mut guest, "cernvm-demo login: ", DEBIAN_TIMEOUT);
    let offset = guest.console().contents().len();
    guest.send("root\n").unwrap();
    wait_after(&mut guest, offset, "Password: ", DEBIAN_TIMEOUT);
    let offset = guest.console().contents().len();
    guest.send("password\n").unwrap();
    wait_after(&mut guest, offset, "# ", DEBIAN_TIMEOUT);
    // Computed in the guest, so the typed command's echo cannot match.
    guest
        .send(
            "echo \"OS-$(. /etc/os-release && echo $ID) INIT-$(cat /proc/1/comm) \
             ROOT-$(awk '$2 == \"/\" { print $3 }' /proc/mounts | tail -n 1) \
             SHADOW-$(stat -c %G:%a /etc/shadow)-$((6*7))\"\n",
        )
        .unwrap();
    wait(
        &mut guest,
        "OS-debian INIT-init ROOT-overlay SHADOW-shadow:640-42",
        DEBIAN_TIMEOUT,
    );
    guest.kill();

    let (downloaded, published) = (relay.bytes_to_client(), repo.published_bytes());
    eprintln!(
        "first boot to a root shell downloaded {:.1} MB of the {:.1} MB repository",
        downloaded as f64 / 1e6,
        published as f64 / 1e6
    );
    // Streamed on demand: the boot reads its working set, not the whole OS.
    assert!(
        downloaded > 0 && downloaded < published,
        "{downloaded} of {published} bytes"
    );
}
