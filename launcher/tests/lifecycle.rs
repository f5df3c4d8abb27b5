//! A CernVM through `cernvm-launch` under QEMU (TCG where KVM does not work): a µCernVM ISO
//! made by scripts/build-iso, a test OS with an sshd published in a CernVM-FS repository on
//! 127.0.0.1, user data on the context CD-ROM. create -> boots -> list shows it running ->
//! ssh -- true -> stop (state saved) -> start (resumed, not rebooted) -> pause/start ->
//! destroy, with a second machine side by side, and nothing left at the end.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{missing_boot_inputs, ssh, write, Launcher, TestCernvm};
use qemu_tests::test_os::OS_SSHD_MARKER;

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn uptime(l: &Launcher, name: &str) -> f64 {
    let r = ssh(l, name, &["cat", "/proc/uptime"]);
    assert_eq!(r.code, 0, "{}", r.text());
    r.stdout.split_whitespace().next().unwrap().parse().unwrap()
}

fn qemu_processes_of(dir: &Path) -> usize {
    let needle = dir.join("qmp.sock").display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&needle))
        .count()
}

#[test]
fn create_boot_ssh_save_resume_destroy() {
    if let Some(what) = missing_boot_inputs() {
        return test_prereq::skip(format!("the launcher boot test needs {what}"));
    }
    let guest = TestCernvm::prepare();
    let key = &guest.key;
    let ud = &guest.user_data;
    let work = &guest.work;
    let iso = &guest.iso;
    let l = Launcher::new();
    let _cleanup = common::Cleanup {
        launcher: &l,
        names: vec!["one", "two"],
    };
    let conf = write(
        work.path(),
        "machine.conf",
        &format!(
            "memory=1024\ndisk=2048\nflags=33\nsshIdentity={}\n",
            key.display()
        ),
    );
    let iso_s = iso.to_str().unwrap();
    let created = std::time::Instant::now();
    let r = l.ok(&[
        "create",
        "--name",
        "one",
        "--iso",
        iso_s,
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(r.stdout.contains("started one"), "{}", r.text());
    // Where KVM hangs, the probe says so and the machine runs under TCG.
    eprintln!("{}", r.stdout);
    // The second machine, side by side (launched while the first boots).
    let r2 = l.ok(&[
        "create",
        "--name",
        "two",
        "--iso",
        iso_s,
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(r2.stdout.contains("started two"), "{}", r2.text());
    l.wait_console("one", OS_SSHD_MARKER, BOOT_TIMEOUT);
    let list = l.ok(&["list", "--running"]).stdout;
    assert!(list.contains("one:\tCVM: "), "{list}");
    let r = ssh(&l, "one", &["true"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let boot_to_ssh = created.elapsed();
    eprintln!(
        "boot to ssh (create -> ssh -- true), two machines booting: {:.1} s",
        boot_to_ssh.as_secs_f64()
    );
    // The account and key came from the user data on the context CD-ROM (user from amiconfig).
    let r = ssh(&l, "one", &["sh", "-c", "'id -un; exit 3'"]);
    assert_eq!(r.code, 3, "exit status of the remote command: {}", r.text());
    assert_eq!(r.stdout.trim(), "tester");
    let console = l.console("one");
    assert!(console.contains("Contextualizing VM"), "{console}");

    l.wait_console("two", OS_SSHD_MARKER, BOOT_TIMEOUT);
    assert_eq!(ssh(&l, "two", &["true"]).code, 0);
    let ports: Vec<String> = l
        .ok(&["list"])
        .stdout
        .lines()
        .map(|line| line.rsplit("port: ").next().unwrap().to_string())
        .collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(
        ports[0], ports[1],
        "each machine has its own forwarded port"
    );
    l.ok(&["destroy", "--force", "two"]);
    assert!(!l.machine_dir("two").exists());
    assert_eq!(qemu_processes_of(&l.machine_dir("two")), 0);

    // stop saves the state; start resumes it (the guest keeps running: no second boot).
    let before = uptime(&l, "one");
    let r = l.ok(&["stop", "one"]);
    assert!(r.stdout.contains("state is saved"), "{}", r.text());
    assert!(l.machine_dir("one").join("saved-state").is_file());
    assert_eq!(qemu_processes_of(&l.machine_dir("one")), 0);
    assert!(l.ok(&["list", "one"]).stdout.contains("\tstate: saved\n"));
    assert_eq!(l.ok(&["list", "--running"]).stdout, "");
    // The recorded port is taken meanwhile: start forwards another one.
    let recorded: u16 = fs::read_to_string(l.machine_dir("one").join("runtime.conf"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("hostPort="))
        .unwrap()
        .parse()
        .unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", recorded)).unwrap();
    let r = l.ok(&["start", "one"]);
    drop(squatter);
    assert!(r.stdout.contains("resumed one"), "{}", r.text());
    assert!(
        !r.stdout.contains(&format!("127.0.0.1:{recorded} ")),
        "{}",
        r.text()
    );
    assert!(!l.machine_dir("one").join("saved-state").exists());
    let after = uptime(&l, "one");
    assert!(
        after >= before,
        "uptime {before} -> {after}: the guest rebooted"
    );
    assert_eq!(l.console("one").matches("boot number").count(), 1);

    // pause and resume
    l.ok(&["pause", "one"]);
    assert!(l.ok(&["list", "one"]).stdout.contains("\tstate: paused\n"));
    l.ok(&["start", "one"]);
    assert_eq!(ssh(&l, "one", &["true"]).code, 0);

    // A QEMU that dies shows as stopped, not running.
    let pid: i32 = fs::read_to_string(l.machine_dir("one").join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(l.ok(&["list", "one"]).stdout.contains("\tstate: stopped\n"));
    assert_eq!(l.ok(&["list", "--running"]).stdout, "");

    // destroy removes exactly what create made
    l.ok(&["destroy", "--force", "one"]);
    assert_eq!(qemu_processes_of(&l.machine_dir("one")), 0);
    let left: Vec<_> = fs::read_dir(l.data_dir().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(l.ok(&["list"]).stdout, "");
}
