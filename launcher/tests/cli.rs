//! The `cernvm-launch` binary without booting: exit codes, configuration precedence as
//! recorded, bad input (one-line error, documented exit code, nothing left behind) and
//! released images from a release server on 127.0.0.1 (latest, sha256, signature, cache).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{write, Launcher};
use cvmfs_client::testing::StaticHttpServer;

/// A file that stands in for an ISO where nothing boots.
fn fake_iso(dir: &Path) -> String {
    let p = write(dir, "fake.iso", "not really an ISO\n");
    fs::canonicalize(p).unwrap().display().to_string()
}

fn run_dir_entries(l: &Launcher) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(l.data_dir().join("run"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn exit_codes_of_the_original() {
    let l = Launcher::new();
    assert_eq!(l.run(&[]).code, 1, "help exits 1 like the original");
    assert_eq!(l.run(&["--help"]).code, 1);
    let v = l.ok(&["--version"]);
    assert!(v.stdout.starts_with("CernVM-Launch 1.2.0"), "{}", v.text());
    let r = l.run(&["frobnicate"]);
    assert_eq!(r.code, 3, "{}", r.text());
    assert!(r.stderr.contains("unknown command \"frobnicate\""));
    assert_eq!(l.run(&["start"]).code, 1);
    assert_eq!(l.run(&["create", "a", "b", "c"]).code, 1);
    let r = l.run(&["start", "nothere"]);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stderr.contains("no machine named \"nothere\""),
        "{}",
        r.text()
    );
}

#[test]
fn create_records_the_precedence_and_destroy_removes_everything() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let iso = fake_iso(&dir);
    // First run: the global config appears; then give it values the machine file overrides.
    l.ok(&["list"]);
    let global = dir.join(".cernvm-launch.conf");
    let mut text = fs::read_to_string(&global).unwrap();
    text += "cpus=2\nmemory=1024\ndisk=3000\n";
    fs::write(&global, text).unwrap();
    let machine = write(&dir, "m.conf", "# machine\nmemory = '1536'\ndisk=4000\n");
    let ud = write(&dir, "my.context.txt", "[cernvm]\nusers=alice:alice:pw\n");
    let r = l.ok(&[
        "create",
        ud.to_str().unwrap(),
        "--no-start",
        "--disk",
        "5000",
        machine.to_str().unwrap(),
        "--iso",
        &iso,
    ]);
    // No --name and no terminal: the user-data file name up to the first dot.
    assert!(
        r.stdout
            .contains("Created my: cpus=2 memory=1536 disk=5000"),
        "{}",
        r.text()
    );
    let conf = fs::read_to_string(l.machine_dir("my").join("machine.conf")).unwrap();
    for line in [
        "cpus=2",
        "memory=1536",
        "disk=5000",
        &format!("isoPath={iso}"),
        &format!("cernvmVersion={iso}"),
        "flags=1073",
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} in\n{conf}");
    }
    // The scratch disk is a sparse qcow2 of `disk` MB.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(l.machine_dir("my").join("disk.qcow2"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"virtual-size\": 5242880000"), "{info}");
    let list = l.ok(&["list"]);
    assert!(
        list.stdout.starts_with(&format!("my:\tCVM: {iso}\tport: ")),
        "{}",
        list.text()
    );
    assert_eq!(l.ok(&["list", "--running"]).stdout, "");
    let details = l.ok(&["list", "my"]).stdout;
    assert!(details.contains("\tmemory: 1536\n"), "{details}");
    assert!(details.contains("\tstate: stopped\n"), "{details}");
    assert!(
        details.contains("forwarded ports: 22 (VM) --> "),
        "{details}"
    );
    // A taken name is an error and leaves the machine alone.
    let r = l.run(&[
        "create",
        "--name",
        "my",
        "--iso",
        &iso,
        ud.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(r.stderr.contains("already exists"), "{}", r.text());
    assert!(l.machine_dir("my").join("machine.conf").is_file());
    l.ok(&["destroy", "my"]);
    assert_eq!(run_dir_entries(&l), Vec::<String>::new());
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let iso = fake_iso(&dir);
    let ud = write(&dir, "ud.txt", "#!/bin/sh\nexit 0\n");
    let ud = ud.to_str().unwrap();
    // The first run's note about the new ~/.cernvm-launch.conf is out of the way.
    l.ok(&["list"]);
    let check = |args: &[&str], code: i32, needle: &str| {
        let r = l.run(args);
        assert_eq!(r.code, code, "{args:?}: {}", r.text());
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.text());
        assert_eq!(
            r.stderr.trim().lines().count(),
            1,
            "one-line error for {args:?}: {}",
            r.text()
        );
        assert_eq!(run_dir_entries(&l), Vec::<String>::new(), "{args:?}");
    };
    check(
        &[
            "create",
            "--name",
            "x",
            "--iso",
            "/nonexistent/u.iso",
            ud,
            "--no-start",
        ],
        4,
        "boot image /nonexistent/u.iso not found",
    );
    check(
        &[
            "create",
            "--name",
            "x",
            "--iso",
            &iso,
            ud,
            "/nonexistent/m.conf",
        ],
        2,
        "cannot read config file /nonexistent/m.conf",
    );
    check(
        &["create", "--name", "x", "--iso", &iso, "/nonexistent/ud"],
        2,
        "cannot read user data file /nonexistent/ud",
    );
    let odd = format!("{}/./", dir.display());
    check(
        &[
            "create",
            "--name",
            "x",
            "--iso",
            &iso,
            ud,
            "--shared-folder",
            &odd,
        ],
        2,
        "must be canonical",
    );
    check(
        &["create", "--name", "../x", "--iso", &iso, ud],
        4,
        "invalid machine name",
    );
    let nothing = tempfile::tempdir().unwrap();
    let r = l
        .command(&["create", "--name", "x", "--iso", &iso, ud, "--no-start"])
        .env("PATH", nothing.path())
        .output()
        .unwrap();
    let r: common::Run = r.into();
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stderr.contains(
            "qemu-system-x86_64 not found on PATH; install it (Debian package qemu-system-x86)"
        ),
        "{}",
        r.text()
    );
    assert_eq!(run_dir_entries(&l), Vec::<String>::new());
    // A config file that exists but cannot be read (a directory).
    check(
        &[
            "create",
            "--name",
            "x",
            "--iso",
            &iso,
            ud,
            dir.to_str().unwrap(),
        ],
        2,
        "cannot read config file",
    );
}

/// A release server like cernvm.cern.ch/releases on 127.0.0.1.
struct Releases {
    dir: tempfile::TempDir,
    server: StaticHttpServer,
}

impl Releases {
    fn new(version: &str, image: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("latest"), format!("{version}\n")).unwrap();
        let sub = dir
            .path()
            .join(format!("ucernvm-images.{version}.cernvm.x86_64"));
        fs::create_dir(&sub).unwrap();
        let name = format!("ucernvm-prod.{version}.cernvm.x86_64.iso");
        fs::write(sub.join(&name), image).unwrap();
        let out = Command::new("sha256sum")
            .arg(&name)
            .current_dir(&sub)
            .output()
            .unwrap();
        fs::write(sub.join(format!("{name}.sha256")), out.stdout).unwrap();
        let server = StaticHttpServer::start(dir.path()).unwrap();
        Releases { dir, server }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn image(&self, version: &str) -> std::path::PathBuf {
        self.dir.path().join(format!(
            "ucernvm-images.{version}.cernvm.x86_64/ucernvm-prod.{version}.cernvm.x86_64.iso"
        ))
    }
}

#[test]
fn latest_release_is_downloaded_verified_cached_and_reused_offline() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let image = vec![0x5au8; 3 * 1024 * 1024];
    let releases = Releases::new("2026.11-1", &image);
    let conf = write(&dir, "m.conf", &format!("releaseUrl={}/\n", releases.url()));
    let ud = write(&dir, "ud.txt", "x\n");
    let r = l.ok(&[
        "create",
        "--name",
        "a",
        "--no-start",
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(r.stdout.contains("cernvmVersion=2026.11-1"), "{}", r.text());
    let cached = l
        .data_dir()
        .join("cache/ucernvm-prod.2026.11-1.cernvm.x86_64.iso");
    assert_eq!(fs::read(&cached).unwrap(), image);
    let list = l.ok(&["list"]).stdout;
    assert!(list.contains("a:\tCVM: 2026.11-1\tport: "), "{list}");
    // Offline: the cached image is used.
    drop(releases);
    let r = l.ok(&[
        "create",
        "--name",
        "b",
        "--no-start",
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(
        r.stderr.contains("using the cached image 2026.11-1"),
        "{}",
        r.text()
    );
    l.ok(&["destroy", "a"]);
    l.ok(&["destroy", "b"]);
    // The cache is not part of a machine.
    assert!(cached.is_file());
}

#[test]
fn a_bad_checksum_or_signature_keeps_nothing() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let releases = Releases::new("2026.12-1", &vec![1u8; 200_000]);
    // Tamper with the image after its .sha256 was written.
    fs::write(releases.image("2026.12-1"), vec![2u8; 200_000]).unwrap();
    let conf = write(&dir, "m.conf", &format!("releaseUrl={}\n", releases.url()));
    let ud = write(&dir, "ud.txt", "x\n");
    let r = l.run(&[
        "create",
        "--name",
        "a",
        "--no-start",
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 4, "{}", r.text());
    let last = r.stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(last.contains("checksum mismatch"), "{}", r.text());
    assert_eq!(run_dir_entries(&l), Vec::<String>::new());
    let cache: Vec<_> = fs::read_dir(l.data_dir().join("cache")).unwrap().collect();
    assert!(cache.is_empty(), "{cache:?}");

    // An unsigned image with a CA directory configured fails its signature check.
    let releases = Releases::new("2026.12-2", &vec![3u8; 200_000]);
    let ca = tempfile::tempdir().unwrap();
    let conf = write(
        &dir,
        "m2.conf",
        &format!(
            "releaseUrl={}\ncaPath={}\n",
            releases.url(),
            ca.path().display()
        ),
    );
    let r = l.run(&[
        "create",
        "--name",
        "a",
        "--no-start",
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(r.stderr.contains("signature check"), "{}", r.text());
    assert_eq!(run_dir_entries(&l), Vec::<String>::new());
}

#[test]
fn a_signed_image_verifies_against_its_ca() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let root = qemu_tests_root();
    // A CA and a signing certificate made with openssl, as the image signature tests do.
    let sh = |cmd: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout sign.key -out sign.csr -subj /CN=cvm-sign.test 2>/dev/null");
    sh("openssl x509 -req -in sign.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out sign.pem -days 2 2>/dev/null");
    let image = dir.join("image.iso");
    fs::write(&image, vec![7u8; 300_000]).unwrap();
    let st = Command::new(root.join("scripts/sign-image"))
        .arg(&image)
        .args(["--cert", "sign.pem", "--key", "sign.key"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let releases = Releases::new("2026.12-3", &fs::read(&image).unwrap());
    let conf = write(
        &dir,
        "m.conf",
        &format!(
            "releaseUrl={}\ncaPath={}\n",
            releases.url(),
            dir.join("ca.pem").display()
        ),
    );
    let ud = write(&dir, "ud.txt", "x\n");
    let r = l.ok(&[
        "create",
        "--name",
        "s",
        "--no-start",
        ud.to_str().unwrap(),
        conf.to_str().unwrap(),
    ]);
    assert!(
        r.stderr
            .contains("signature OK, signed by CN=cvm-sign.test"),
        "{}",
        r.text()
    );
    l.ok(&["destroy", "s"]);
}

fn qemu_tests_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn concurrent_creates_of_one_name_make_one_machine() {
    let l = Launcher::new();
    let dir = l.home.path().to_path_buf();
    let iso = fake_iso(&dir);
    let ud = write(&dir, "ud.txt", "x\n");
    l.ok(&["list"]);
    let children: Vec<_> = (0..4)
        .map(|_| {
            l.command(&[
                "create",
                "--name",
                "same",
                "--no-start",
                "--iso",
                &iso,
                ud.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let runs: Vec<common::Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    let ok = runs.iter().filter(|r| r.code == 0).count();
    assert_eq!(
        ok,
        1,
        "{}",
        runs.iter().map(|r| r.text()).collect::<Vec<_>>().join("\n")
    );
    for r in runs.iter().filter(|r| r.code != 0) {
        assert_eq!(r.code, 4, "{}", r.text());
        assert!(r.stderr.contains("already exists"), "{}", r.text());
    }
    assert_eq!(run_dir_entries(&l), ["same", "same.lock"]);
    l.ok(&["destroy", "same"]);
    assert_eq!(run_dir_entries(&l), Vec::<String>::new());
}
