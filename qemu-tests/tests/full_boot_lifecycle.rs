//! The life of a µCernVM beyond its first boot, in QEMU with the real kernel, our initramfs and
//! an OS repository published with our `cvmfs-publish`: offline reboots from the cache, snapshot
//! pinning and forced tags (spec §9.3), tags from user data on a context CD-ROM (§5), file
//! injection (§12.1) and debug mode with `reset_root_password` (§13).
//!
//! The guests run one at a time (TCG on a shared machine). Skipped with a message when an input
//! is missing (kernel, initramfs, publisher, static busybox).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use base64::Engine;
use qemu_tests::media::{blank_qcow2, context_iso};
use qemu_tests::scenario::{
    self, expect_marker as wait, expect_marker_after as wait_after, BootImage, BootSpec,
    OsRepository, BOOT_TIMEOUT,
};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};
use qemu_tests::Guest;

/// One guest at a time: several TCG guests on two shared cores only make every boot time out.
static ONE_GUEST: Mutex<()> = Mutex::new(());

const FQRN: &str = "test-os.cernvm.test";

/// A scratch disk that lives across the boots of one test.
struct Machine {
    image: BootImage,
    disk: PathBuf,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new(repo: &OsRepository) -> Machine {
        let image = BootImage::with_repository_key(repo).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("scratch.qcow2");
        blank_qcow2(&disk, 2048).unwrap();
        Machine {
            image,
            disk,
            _dir: dir,
        }
    }

    /// Boots with the repository's command line plus `extra`, and `cdroms`.
    fn boot(&self, repo: &OsRepository, extra: &str, cdroms: Vec<PathBuf>) -> Guest {
        let mut cmdline = scenario::repository_cmdline(repo, "10.0.2.2");
        if !extra.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        scenario::boot(BootSpec {
            cdroms,
            ..BootSpec::new(&self.image, &self.disk, cmdline)
        })
        .unwrap()
    }
}

/// Waits for the OS to be up (boot `n` counted and synced to the scratch disk, rc.d scripts
/// done) and powers the machine off.
fn run_to_login_and_power_off(guest: &mut Guest, n: u32) -> String {
    wait(
        guest,
        &format!("UCERNVM-TEST-OS: boot number {n}"),
        BOOT_TIMEOUT,
    );
    wait(guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    let log = guest.console().contents();
    guest.kill();
    log
}

/// An OpenStack config drive whose user data holds a µCernVM block with `lines`.
fn config_drive(dir: &Path, lines: &[String]) -> PathBuf {
    let iso = dir.join("config-2.iso");
    let user_data = format!("[ucernvm-begin]\n{}\n[ucernvm-end]\n", lines.join("\n"));
    context_iso(
        &iso,
        "config-2",
        &[("openstack/latest/user_data", user_data.as_bytes())],
    )
    .unwrap();
    iso
}

#[test]
fn second_boot_runs_offline_from_the_warm_cache() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut repo = OsRepository::create(FQRN, "r1", Some("r1")).unwrap();
    let machine = Machine::new(&repo);

    let mut guest = machine.boot(&repo, "", Vec::new());
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    run_to_login_and_power_off(&mut guest, 1);

    // Nothing serves the repository any more: the pinned revision comes from the cache.
    repo.stop_server();
    let mut guest = machine.boot(&repo, "", Vec::new());
    wait(&mut guest, OS_READY_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: root is overlay", BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    run_to_login_and_power_off(&mut guest, 2);
}

/// Stands in for an update tool: writes `test_os_force_tag=<tag>` from the kernel command line
/// to the scratch disk's `aux/cvmfs_force_tag`, as `cernvm-update` would.
const FORCE_TAG_HOOK: &str = r#"#!/bin/sh
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    test_os_force_tag=*)
      tag="${arg#test_os_force_tag=}"
      printf '%s' "$tag" > /mnt/.rw/aux/cvmfs_force_tag && sync &&
        echo "UCERNVM-TEST-OS: force tag $tag written"
      ;;
  esac
done
"#;

fn add_rc_script(os: &Path, name: &str, script: &str) -> std::io::Result<()> {
    let path = os.join("etc/test-os/rc.d").join(name);
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
}

#[test]
fn the_os_stays_pinned_until_a_tag_is_forced() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let repo = OsRepository::create(FQRN, "r1", Some("r1")).unwrap();
    // r1 again (trunk, untagged) with the update-tool stand-in.
    repo.publish("r1", None, |os| {
        add_rc_script(os, "10-force-tag", FORCE_TAG_HOOK)
    })
    .unwrap();
    let machine = Machine::new(&repo);

    let mut guest = machine.boot(&repo, "", Vec::new());
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    run_to_login_and_power_off(&mut guest, 1);

    // A new revision becomes trunk; the machine pinned itself to r1 on its first boot.
    repo.publish("r2", Some("r2"), |os| {
        add_rc_script(os, "10-force-tag", FORCE_TAG_HOOK)
    })
    .unwrap();
    let mut guest = machine.boot(&repo, "test_os_force_tag=r2", Vec::new());
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    wait(
        &mut guest,
        "UCERNVM-TEST-OS: force tag r2 written",
        BOOT_TIMEOUT,
    );
    let log = run_to_login_and_power_off(&mut guest, 2);
    assert!(!log.contains("UCERNVM-TEST-OS: release r2"), "{log}");

    // The forced tag makes the next boot fresh at r2.
    let mut guest = machine.boot(&repo, "", Vec::new());
    wait(&mut guest, "UCERNVM-TEST-OS: release r2", BOOT_TIMEOUT);
    run_to_login_and_power_off(&mut guest, 3);
}

#[test]
fn user_data_on_a_config_drive_selects_the_tag() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let repo = OsRepository::create(FQRN, "r1", Some("r1")).unwrap();
    repo.publish("r2", Some("r2"), |_| Ok(())).unwrap();
    let machine = Machine::new(&repo);
    let dir = tempfile::tempdir().unwrap();
    let iso = config_drive(dir.path(), &["cvmfs_tag=r1".to_string()]);

    let mut guest = machine.boot(&repo, "", vec![iso]);
    wait(&mut guest, "UCERNVM-TEST-OS: release r1", BOOT_TIMEOUT);
    let log = run_to_login_and_power_off(&mut guest, 1);
    assert!(!log.contains("UCERNVM-TEST-OS: release r2"), "{log}");
}

/// A gzip'd tar holding `etc/test-os/rc.d/50-injected`, a script that announces itself and
/// deletes itself (synced: the machine is killed, not shut down): if the injection were applied
/// again, the next boot would print it again.
fn injection_tarball(dir: &Path) -> Vec<u8> {
    let staging = dir.join("inject");
    fs::create_dir_all(staging.join("etc/test-os/rc.d")).unwrap();
    add_rc_script(
        &staging,
        "50-injected",
        "#!/bin/sh\necho \"UCERNVM-TEST-OS: injected script ran\"\nrm -f \"$0\" && sync\n",
    )
    .unwrap();
    let tarball = dir.join("inject.tar.gz");
    let out = Command::new("tar")
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&staging)
        .arg("etc/test-os/rc.d/50-injected")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    fs::read(&tarball).unwrap()
}

#[test]
fn injected_files_arrive_once() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let repo = OsRepository::create(FQRN, "r1", Some("r1")).unwrap();
    let machine = Machine::new(&repo);
    let dir = tempfile::tempdir().unwrap();
    let inject = base64::engine::general_purpose::STANDARD.encode(injection_tarball(dir.path()));
    let iso = config_drive(dir.path(), &[format!("cernvm_inject={inject}")]);

    let mut guest = machine.boot(&repo, "", vec![iso.clone()]);
    wait(
        &mut guest,
        "UCERNVM-TEST-OS: injected script ran",
        BOOT_TIMEOUT,
    );
    run_to_login_and_power_off(&mut guest, 1);

    // Same user data again: the `context/injected` marker keeps the tarball out.
    let mut guest = machine.boot(&repo, "", vec![iso]);
    let log = run_to_login_and_power_off(&mut guest, 2);
    assert!(
        !log.contains("UCERNVM-TEST-OS: injected script ran"),
        "injected again on the second boot:\n{log}"
    );
}

#[test]
fn debug_mode_resets_the_root_password_for_a_console_login() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let repo = OsRepository::create(FQRN, "r1", Some("r1")).unwrap();
    let machine = Machine::new(&repo);

    let mut guest = machine.boot(&repo, "cvmdebug", Vec::new());
    wait(&mut guest, "(initrd) ", BOOT_TIMEOUT);
    // The OS has not started: the rescue shell comes before the hand-over.
    assert!(!guest.console().contents().contains(OS_READY_MARKER));
    guest.send("reset_root_password\n").unwrap();
    wait(&mut guest, "root password is 'password'", BOOT_TIMEOUT);
    guest.send("exit\n").unwrap();
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    wait(&mut guest, "login: ", BOOT_TIMEOUT);
    let offset = guest.console().contents().len();
    guest.send("root\n").unwrap();
    wait_after(&mut guest, offset, "Password: ", BOOT_TIMEOUT);
    let offset = guest.console().contents().len();
    guest.send("password\n").unwrap();
    wait_after(&mut guest, offset, "# ", BOOT_TIMEOUT);
    guest.send("echo LOGGED-IN-$((6*7))\n").unwrap();
    wait(&mut guest, "LOGGED-IN-42", BOOT_TIMEOUT);
    guest.kill();
}

/// What systemd-shutdown's final killing spree does (`killall.c`): SIGKILL to every process
/// but PID 1, kernel threads and root processes whose `argv[0]` starts with `@`. A process
/// started before it must die; the `@` processes must live, and `/` must still serve a file
/// nobody has read yet (only a living `cvmfs2` can fetch it).
const KILLING_SPREE: &str = r#"#!/bin/sh
sleep 1000 &
victim=$!
spared=""
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = 1 ] || [ "$pid" = $$ ] && continue
  first=$(head -c 1 "$d/cmdline" 2>/dev/null)
  [ -n "$first" ] || continue
  uid=$(awk '/^Uid:/ { print $2 }' "$d/status" 2>/dev/null)
  if [ "$first" = "@" ] && [ "$uid" = 0 ]; then
    spared="$spared $(tr '\0' ' ' < "$d/cmdline" | cut -d' ' -f1)"
    continue
  fi
  kill -9 "$pid" 2>/dev/null
done
sleep 1
echo "UCERNVM-TEST-OS: spared:$spared"
# A killed child stays a zombie (state Z) until this shell reaps it.
case "$(cut -d' ' -f3 "/proc/$victim/stat" 2>/dev/null)" in
  ""|Z) echo "UCERNVM-TEST-OS: victim killed" ;;
  *) echo "UCERNVM-TEST-OS: victim alive" ;;
esac
echo "UCERNVM-TEST-OS: unread file $(md5sum /etc/test-os/unread | cut -d' ' -f1)"
"#;

#[test]
fn the_at_processes_survive_a_kill_of_everything_else() {
    if !scenario::full_boot_inputs_ready() {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    // 1 MiB that no boot step reads, with its digest computed here.
    let unread: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("unread");
        fs::write(&p, &unread).unwrap();
        let out = Command::new("md5sum").arg(&p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let repo = OsRepository::create_customized(FQRN, "r1", Some("r1"), |os| {
        fs::write(os.join("etc/test-os/unread"), &unread)?;
        add_rc_script(os, "90-killing-spree", KILLING_SPREE)
    })
    .unwrap();
    let machine = Machine::new(&repo);
    let mut guest = machine.boot(&repo, "", Vec::new());
    wait(&mut guest, "UCERNVM-TEST-OS: victim", BOOT_TIMEOUT);
    wait(&mut guest, "UCERNVM-TEST-OS: unread file", BOOT_TIMEOUT);
    wait(&mut guest, OS_LOGIN_MARKER, BOOT_TIMEOUT);
    let log = guest.console().contents();
    guest.kill();
    let spared = log
        .lines()
        .find_map(|l| l.split("UCERNVM-TEST-OS: spared:").nth(1))
        .unwrap_or_default();
    // CVMFS_SYSTEMD_NOKILL=yes (written by the boot loader) marks the daemon.
    assert!(
        spared.contains("@usr/bin/cvmfs2"),
        "spared: {spared:?}\n{log}"
    );
    assert!(log.contains("UCERNVM-TEST-OS: victim killed"), "{log}");
    assert!(
        log.contains(&format!("UCERNVM-TEST-OS: unread file {digest}")),
        "/ did not serve the unread file after the kill:\n{log}"
    );
}
