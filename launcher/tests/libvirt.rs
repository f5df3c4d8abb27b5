//! The libvirt backend with a real `libvirtd` started by the test (no systemd): a session
//! daemon of an unprivileged user (`nobody`, with a home of its own), the QEMU driver under TCG.
//! create --backend libvirt -> boots -> list shows it running -> ssh -- true -> stop (managed
//! save) -> start (restored) -> destroy (domain undefined, nothing left).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{missing_boot_inputs, ssh, write, Launcher, TestCernvm};
use qemu_tests::test_os::OS_SSHD_MARKER;

const NOBODY: u32 = 65534;

/// A libvirtd session daemon of user `uid`, stopped on drop.
struct Libvirtd {
    child: Child,
    runtime: PathBuf,
}

impl Libvirtd {
    fn start(home: &Path, uid: u32) -> Libvirtd {
        let runtime = home.join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        std::os::unix::fs::chown(&runtime, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let child = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args(["libvirtd", "--timeout", "900"])
            .env("HOME", home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start libvirtd");
        let sock = runtime.join("libvirt/libvirt-sock");
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "libvirtd did not create {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Libvirtd { child, runtime }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn libvirt_create_boot_list_stop_start_destroy() {
    if let Some(what) = missing_boot_inputs() {
        return test_prereq::skip(format!("the libvirt test needs {what}"));
    }
    for (tool, package) in [
        ("libvirtd", "libvirt-daemon-system"),
        ("virsh", "libvirt-clients"),
        ("setpriv", "util-linux"),
    ] {
        if cernvm_launch::vm::find_program(Path::new(tool)).is_none()
            && !Path::new("/usr/sbin").join(tool).is_file()
        {
            return test_prereq::skip(format!(
                "the libvirt test needs {tool} (Debian package {package})"
            ));
        }
    }
    let guest = TestCernvm::prepare();
    // The unprivileged user owns its key and reads the ISO.
    std::os::unix::fs::chown(&guest.key, Some(NOBODY), Some(NOBODY)).unwrap();
    let l = Launcher::new().run_as(NOBODY);
    let daemon = Libvirtd::start(l.home.path(), NOBODY);
    let l = l
        .env("XDG_RUNTIME_DIR", daemon.runtime.to_str().unwrap())
        .env("LIBVIRT_DEFAULT_URI", "qemu:///session")
        .env("CERNVM_ACCEL", "tcg");
    let _cleanup = common::Cleanup {
        launcher: &l,
        names: vec!["lv"],
    };
    let conf = write(
        l.home.path(),
        "machine.conf",
        &format!(
            "backend=libvirt\nmemory=1024\ndisk=2048\nsshIdentity={}\n",
            guest.key.display()
        ),
    );
    std::os::unix::fs::chown(&conf, Some(NOBODY), Some(NOBODY)).unwrap();
    let r = l.ok(&[
        "create",
        "--name",
        "lv",
        "--iso",
        guest.iso.to_str().unwrap(),
        guest.user_data.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(r.stdout.contains("libvirt domain lv"), "{}", r.text());
    let xml = std::fs::read_to_string(l.machine_dir("lv").join("domain.xml")).unwrap();
    assert!(xml.contains("<domain type='qemu'"), "{xml}");
    l.wait_console("lv", OS_SSHD_MARKER, Duration::from_secs(420));
    assert!(l.ok(&["list", "--running"]).stdout.contains("lv:\tCVM: "));
    assert!(l
        .ok(&["list", "lv"])
        .stdout
        .contains("\tbackend: libvirt\n"));
    let r = ssh(&l, "tester@lv", &["true"]);
    assert_eq!(r.code, 0, "{}", r.text());

    l.ok(&["stop", "lv"]);
    assert!(l.ok(&["list", "lv"]).stdout.contains("\tstate: saved\n"));
    l.ok(&["start", "lv"]);
    assert!(l.ok(&["list", "lv"]).stdout.contains("\tstate: running\n"));
    assert_eq!(ssh(&l, "tester@lv", &["true"]).code, 0);

    l.ok(&["destroy", "--force", "lv"]);
    assert!(!l.machine_dir("lv").exists());
    let domains = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .args(["virsh", "list", "--all", "--name"])
        .env("HOME", l.home.path())
        .env("XDG_RUNTIME_DIR", &daemon.runtime)
        .env("LIBVIRT_DEFAULT_URI", "qemu:///session")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&domains.stdout).trim(), "");
}
