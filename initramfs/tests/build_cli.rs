//! `ucernvm-initramfs build` with the real manifest and real inputs (our static executables,
//! busybox-static, the static e2fsprogs and dropbear, the Debian cloud kernel's modules),
//! unpacked with the real `xz` and GNU `cpio`; the shipped e2fsprogs tools and dropbear run in a
//! chroot of the unpacked archive, and no file in it needs a dynamic loader.
//! Skipped, with a message, when the static executables or the kernel are not built yet
//! (`scripts/build-static`, `scripts/build-static-tools`, `kernel-config/fetch-debian-kernel`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ucernvm_initramfs::elf::{linking, Linking};

const MTIME: &str = "1700000000";
const VERSION: &str = "2026.11-1.cernvm.x86_64";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The static e2fsprogs and dropbear of `scripts/build-static-tools`.
fn static_tools() -> PathBuf {
    workspace().join("build/static-tools/current")
}

/// The variables scripts/build-initrd sets, or `None` (with a message) if an input is missing.
fn real_inputs(static_dir: &Path) -> Option<Vec<String>> {
    let ws = workspace();
    let missing = |what: &str| {
        test_prereq::skip(what);
        None
    };
    if !static_dir.join("init").is_file() || !static_dir.join("cvmfs2").is_file() {
        return missing("no static init/cvmfs2 (run scripts/build-static)");
    }
    let Ok(kver) = fs::read_to_string(ws.join("build/kernel/kernel-version")) else {
        return missing("no kernel (run kernel-config/fetch-debian-kernel)");
    };
    let kmods = ws.join("build/kernel/root/lib/modules").join(kver.trim());
    if !Path::new("/bin/busybox").is_file() || !Path::new("/sbin/tune2fs").is_file() {
        return missing("busybox-static or e2fsprogs not installed (scripts/bootstrap)");
    }
    let tools = static_tools();
    if !["mke2fs", "e2fsck", "resize2fs", "dropbear"]
        .iter()
        .all(|t| tools.join(t).is_file())
    {
        return missing("no static e2fsprogs/dropbear (run scripts/build-static-tools)");
    }
    let demo_key = ws.join("../shared/fixtures/cvmfs/demo.cernvm.test/keys/demo.cernvm.test.pub");
    Some(vec![
        format!("version={VERSION}"),
        format!("static={}", static_dir.display()),
        "busybox=/bin/busybox".into(),
        format!("e2fsprogs_dir={}", tools.display()),
        format!("dropbear={}", tools.join("dropbear").display()),
        format!("kmods={}", kmods.display()),
        "ca_bundle=/etc/ssl/certs/ca-certificates.crt".into(),
        format!("demo_key={}", demo_key.display()),
    ])
}

fn build_cmd(vars: &[String], output: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ucernvm-initramfs"));
    cmd.arg("build")
        .arg("--manifest")
        .arg(workspace().join("initramfs/ucernvm.manifest"))
        .arg("--output")
        .arg(output)
        .args(["--mtime", MTIME]);
    for v in vars {
        cmd.arg("--set").arg(v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn check_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unpack(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("xz -dc \"$1\" | cpio -idm --quiet")
        .arg("sh")
        .arg(archive)
        .current_dir(into)
        .output()
        .unwrap();
    check_success("xz -dc | cpio -idm", &out);
}

/// The files under `root` that need a dynamic loader: ELF files with a program interpreter,
/// and shared libraries (`*.so`, `*.so.N`), sorted.
fn dynamic_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let library = name.ends_with(".so") || name.contains(".so.");
            let data = fs::read(entry.path()).unwrap();
            if library || matches!(linking(&data), Some(Linking::Dynamic { .. })) {
                let path = entry.path();
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// Same inputs twice — the second time from copies with other file times — give the same bytes;
/// the archive has every component, its tools run in it, and none of its files needs a dynamic
/// loader (the kernel unpacks every byte at every boot; glibc's would be megabytes).
#[test]
fn real_manifest_builds_reproducibly_and_the_tools_run() {
    let ws = workspace();
    let static_dir = ws.join("target/x86_64-unknown-linux-musl/initramfs");
    let Some(vars) = real_inputs(&static_dir) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the static executables with other modification times.
    let copy = tmp.path().join("static-copy");
    fs::create_dir(&copy).unwrap();
    for exe in ["init", "cvmfs2"] {
        fs::copy(static_dir.join(exe), copy.join(exe)).unwrap();
    }
    let vars_copy: Vec<String> = vars
        .iter()
        .map(|v| {
            if v.starts_with("static=") {
                format!("static={}", copy.display())
            } else {
                v.clone()
            }
        })
        .collect();
    let first = tmp.path().join("first.img");
    let second = tmp.path().join("second.img");
    let a = build_cmd(&vars, &first).spawn().unwrap();
    let b = build_cmd(&vars_copy, &second).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    check_success("first build", &a);
    check_success("second build", &b);
    let first_bytes = fs::read(&first).unwrap();
    assert!(
        first_bytes == fs::read(&second).unwrap(),
        "two builds from the same inputs differ"
    );
    assert_eq!(&first_bytes[..6], b"\xfd7zXZ\0", "xz stream");

    // The size breakdown names every component.
    let report = String::from_utf8_lossy(&a.stderr);
    for component in [
        "skeleton",
        "init",
        "cvmfs2",
        "busybox",
        "e2fsprogs",
        "dropbear",
        "kernel-modules",
        "certificates",
        "cvmfs-keys",
        "archive",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(component)),
            "{component} missing in\n{report}"
        );
    }

    let root = tmp.path().join("root");
    unpack(&first, &root);
    assert_eq!(
        fs::read_to_string(root.join("version")).unwrap(),
        format!("{VERSION}\n")
    );
    assert_eq!(
        fs::read(root.join("init")).unwrap(),
        fs::read(static_dir.join("init")).unwrap()
    );
    assert!(root.join("usr/bin/cvmfs2").is_file());
    assert!(root
        .join("etc/cvmfs/keys/demo.cernvm.test/demo.cernvm.test.pub")
        .is_file());
    for key in ["cern-it1", "cern-it4", "cern-it5"] {
        let shipped = root.join(format!(
            "etc/cvmfs/keys/cernvm-prod.cern.ch/{key}.cern.ch.pub"
        ));
        assert_eq!(
            fs::read(&shipped).unwrap(),
            fs::read(ws_keys().join(format!("{key}.cern.ch.pub"))).unwrap()
        );
    }
    assert!(root.join("etc/cernvm/ca-bundle.crt").is_file());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    // The real mke2fs replaces busybox's applet of the same name.
    assert!(fs::symlink_metadata(root.join("sbin/mke2fs"))
        .unwrap()
        .is_file());
    assert_eq!(
        fs::read(root.join("usr/sbin/dropbear")).unwrap(),
        fs::read(static_tools().join("dropbear")).unwrap()
    );
    let dynamic = dynamic_files(&root);
    assert!(
        dynamic.is_empty(),
        "the initramfs must hold only static executables and no shared library: {dynamic:?}"
    );
    assert!(!root.join("lib64/ld-linux-x86-64.so.2").exists());

    // Every module in the shipped modules.dep, and everything it depends on, is shipped.
    let kver = fs::read_to_string(ws.join("build/kernel/kernel-version")).unwrap();
    let mods = root.join("lib/modules").join(kver.trim());
    let dep = fs::read_to_string(mods.join("modules.dep")).unwrap();
    let mut names = Vec::new();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        for file in std::iter::once(module).chain(deps.split_whitespace()) {
            assert!(mods.join(file).is_file(), "{file} listed but not shipped");
        }
        names.push(module.rsplit('/').next().unwrap().to_string());
    }
    for wanted in [
        "virtio_blk.ko",
        "sr_mod.ko",
        "cdrom.ko",
        "fuse.ko",
        "overlay.ko",
        "isofs.ko",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} not in {names:?}"
        );
    }

    // The shipped e2fsprogs run inside the archive's own tree, which has no libraries.
    // They read /etc/mtab (-> /proc/mounts), so /proc is mounted as the init does at boot.
    let script = "mount -t proc proc /proc || exit 99
        trap 'umount /proc' EXIT
        set -e
        /sbin/mke2fs -q -F -t ext4 -L UROOT /tmp/disk.img 16M
        /sbin/e2fsck -f -n /tmp/disk.img
        /sbin/resize2fs /tmp/disk.img 24M";
    let out = chroot(&root, &["/bin/sh", "-c", script]);
    check_success("e2fsprogs in a chroot of the archive", &out);
    // What the shipped mke2fs made, read by the host's tune2fs: its built-in defaults (no
    // mke2fs.conf in the archive) set no mount-count or interval checks (spec §6.4), which the
    // init relies on instead of running tune2fs.
    let out = Command::new("tune2fs")
        .arg("-l")
        .arg(root.join("tmp/disk.img"))
        .output()
        .unwrap();
    check_success("tune2fs -l", &out);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("Maximum mount count:") && l.ends_with("-1")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("Check interval:") && l.contains(" 0 ")),
        "{listing}"
    );
    assert!(!root.join("etc/mke2fs.conf").exists());
    assert!(
        listing.contains("Filesystem volume name:   UROOT"),
        "{listing}"
    );
    assert!(
        listing.contains("Block count:              24576"),
        "{listing}"
    );
    // dropbear starts in the archive and knows the options cvmssh gives it
    // (init/src/handover.rs: -F -E -R and -B or -s; -B and -s exist only with password logins,
    // which the static build keeps).
    let out = chroot(&root, &["/usr/sbin/dropbear", "-V"]);
    check_success("dropbear -V in a chroot of the archive", &out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Dropbear v2022.83"),
        "{out:?}"
    );
    let out = chroot(&root, &["/usr/sbin/dropbear", "-h"]);
    let help = String::from_utf8_lossy(&out.stderr);
    for option in ["-F\t", "-E\t", "-R\t", "-B\t", "-s\t"] {
        assert!(
            help.lines().any(|l| l.starts_with(option)),
            "dropbear lacks {option:?}:\n{help}"
        );
    }
    let out = chroot(&root, &["/bin/sh", "-c", "echo rescue shell works"]);
    check_success("chroot sh", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rescue shell works\n");
    // parse_user_data is a name of /init.
    let out = chroot(
        &root,
        &[
            "/bin/sh",
            "-c",
            "printf '[ucernvm-begin]\\nresize_rootfs=off\\n[ucernvm-end]\\n' | /bin/parse_user_data",
        ],
    );
    check_success("parse_user_data in the archive", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "_UCONTEXT_RESIZE_ROOTFS=0\n"
    );
}

/// The check above finds what the initramfs used to ship: Debian's dynamically linked mke2fs,
/// with the loader and the glibc libraries the builder adds for it.
#[test]
fn a_dynamically_linked_executable_and_its_libraries_are_found() {
    if !Path::new("/sbin/mke2fs").is_file() {
        test_prereq::skip("e2fsprogs not installed (scripts/bootstrap)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = small_build(
        tmp.path(),
        "component e2fsprogs\nexec /sbin/mke2fs sbin/mke2fs\n",
        &[],
    );
    check_success("build", &out);
    let root = tmp.path().join("root");
    unpack(&tmp.path().join("out.img"), &root);
    let dynamic = dynamic_files(&root);
    assert!(dynamic.contains(&"sbin/mke2fs".to_string()), "{dynamic:?}");
    assert!(
        dynamic.iter().any(|f| f.ends_with("/libc.so.6")),
        "{dynamic:?}"
    );
    assert!(
        dynamic.iter().any(|f| f.ends_with("ld-linux-x86-64.so.2")),
        "{dynamic:?}"
    );
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

fn small_build(dir: &Path, manifest: &str, extra: &[&str]) -> Output {
    let path = dir.join("test.manifest");
    write(&path, manifest);
    Command::new(env!("CARGO_BIN_EXE_ucernvm-initramfs"))
        .arg("build")
        .arg("--manifest")
        .arg(&path)
        .arg("--output")
        .arg(dir.join("out.img"))
        .args(extra)
        .output()
        .unwrap()
}

/// A different time stamp gives different bytes (so the comparison above can fail), and the
/// same one the same bytes, for both compressions.
#[test]
fn time_stamp_decides_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("hello"), "hello\n");
    let manifest = "component a\nfile ${manifest_dir}/hello etc/hello 0644\ntext version 0644 v1\n";
    let mut outputs = Vec::new();
    for (mtime, compression) in [
        ("1", "xz"),
        ("1", "xz"),
        ("2", "xz"),
        ("1", "zstd"),
        ("1", "zstd"),
    ] {
        let out = small_build(
            tmp.path(),
            manifest,
            &["--mtime", mtime, "--compression", compression],
        );
        check_success("build", &out);
        outputs.push(fs::read(tmp.path().join("out.img")).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_ne!(outputs[0], outputs[2]);
    assert_eq!(outputs[3], outputs[4]);
    assert_eq!(&outputs[3][..4], b"\x28\xb5\x2f\xfd", "zstd frame");
}

#[test]
fn bad_manifests_fail_with_the_line_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let kmods = tmp.path().join("6.1.0-test");
    fs::create_dir(&kmods).unwrap();
    write(&kmods.join("modules.dep"), "kernel/fs/fuse/fuse.ko:\n");
    fs::create_dir_all(kmods.join("kernel/fs/fuse")).unwrap();
    write(&kmods.join("kernel/fs/fuse/fuse.ko"), "not really a module");
    let kmods_var = format!("kmods={}", kmods.display());
    let cases: [(&str, &str); 4] = [
        (
            "component m\nmodules ${kmods} fuse e1000\n",
            "test.manifest:2 (component m): kernel 6.1.0-test has no module \"e1000\"",
        ),
        (
            "component f\nfile /nonexistent/x etc/x 0644\n",
            "test.manifest:2 (component f): cannot read /nonexistent/x",
        ),
        (
            "component f\nexec ${manifest_dir}/test.manifest bin/x\n",
            "is not an x86_64 ELF file",
        ),
        (
            "component s\ntext a 0644 x\ntext a 0644 y\n",
            "test.manifest:3 (component s): a: already in the archive",
        ),
    ];
    for (manifest, expected) in cases {
        let out = small_build(tmp.path(), manifest, &["--set", &kmods_var]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{manifest} should fail");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
        assert!(!tmp.path().join("out.img").exists());
    }
    // Optional lines are skipped with a note instead.
    let out = small_build(
        tmp.path(),
        "component m\nmodules? ${kmods} fuse e1000\nkeys? ${cern_keys}\nfile? /nonexistent/x etc/x 0644\n",
        &["--set", &kmods_var],
    );
    check_success("optional build", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("e1000: not in kernel 6.1.0-test, skipped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3 skipped: variable cern_keys is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 4 skipped: /nonexistent/x does not exist"),
        "{stderr}"
    );
}

/// The cern.ch keys in the repository (copied from the client packages' /etc/cvmfs/keys/cern.ch).
fn ws_keys() -> PathBuf {
    workspace().join("initramfs/keys/cern.ch")
}

/// SHA-1 of each shipped cern.ch key's DER encoding, as the real client packages' keys have
/// them (openssl decodes the PEM): a changed or swapped key file fails here.
#[test]
fn cern_keys_have_the_published_fingerprints() {
    let expected = [
        (
            "cern-it1.cern.ch.pub",
            "b904026c8a578ebf779988f38293e8fcb824b726",
        ),
        (
            "cern-it4.cern.ch.pub",
            "d8c56fd4a33ddf96c92f069ecc10ce24f9c0eab1",
        ),
        (
            "cern-it5.cern.ch.pub",
            "573bd06c969a758a0c13999f66d7005e63762ab6",
        ),
    ];
    let mut shipped: Vec<String> = fs::read_dir(ws_keys())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(shipped, expected.map(|(f, _)| f.to_string()));
    for (file, sha1) in expected {
        let out = Command::new("sh")
            .arg("-c")
            .arg("openssl pkey -pubin -in \"$1\" -outform DER | openssl dgst -sha1 -r")
            .arg("sh")
            .arg(ws_keys().join(file))
            .output()
            .unwrap();
        check_success("openssl", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.split_whitespace().next(), Some(sha1), "{file}");
    }
}

/// The manifest's key-set line puts every cern.ch key into each listed repository's
/// directory, where CVMFS_KEYS_DIR points (spec §9.9); a key set without keys is an error.
#[test]
fn the_cern_key_set_lands_in_every_repository_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let real = fs::read_to_string(workspace().join("initramfs/ucernvm.manifest")).unwrap();
    let keyset = real
        .lines()
        .find(|l| l.starts_with("keyset "))
        .unwrap()
        .replace(
            "${manifest_dir}",
            &workspace().join("initramfs").display().to_string(),
        );
    let repos: Vec<&str> = keyset.split_whitespace().skip(2).collect();
    assert_eq!(repos.len(), 7, "{keyset}");
    let out = small_build(tmp.path(), &format!("component keys\n{keyset}\n"), &[]);
    check_success("build", &out);
    let root = tmp.path().join("root");
    unpack(&tmp.path().join("out.img"), &root);
    for repo in repos {
        for key in ["cern-it1", "cern-it4", "cern-it5"] {
            assert!(
                root.join(format!("etc/cvmfs/keys/{repo}/{key}.cern.ch.pub"))
                    .is_file(),
                "{repo}/{key}"
            );
        }
    }
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = small_build(
        tmp.path(),
        &format!("component keys\nkeyset {} r.example\n", empty.display()),
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no *.pub key in the directory"),
        "{out:?}"
    );
}
