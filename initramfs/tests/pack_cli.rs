//! End-to-end tests of `ucernvm-initramfs pack` against the real `zstd` and GNU `cpio` tools.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ucernvm_initramfs::pack::dev_major_minor;

const MTIME: u32 = 1_700_000_000;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ucernvm-initramfs"))
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// True when the test runs as root (files it creates are owned by uid 0).
fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join(".owner-probe");
    fs::write(&probe, "").unwrap();
    let root = fs::metadata(&probe).unwrap().uid() == 0;
    fs::remove_file(&probe).unwrap();
    root
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with nested and empty directories, odd modes, symlinks and (as root) device nodes.
fn make_tree(root: &Path, with_devices: bool) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc/cvmfs/keys/cern.ch")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("root")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(root.join("init"), "#!/bin/sh\necho hello\n").unwrap();
    set_mode(&root.join("init"), 0o755);
    fs::write(root.join("bin/busybox"), vec![0x7fu8; 4099]).unwrap();
    set_mode(&root.join("bin/busybox"), 0o4755);
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/proc/mounts", root.join("etc/mtab")).unwrap();
    fs::write(root.join("etc/cvmfs/keys/cern.ch/cern.ch.pub"), "KEY\n").unwrap();
    fs::write(root.join("etc/empty-file"), "").unwrap();
    fs::write(root.join("version"), "2021.05-1.cernvm.x86_64\n").unwrap();
    set_mode(&root.join("version"), 0o600);
    set_mode(&root.join("tmp"), 0o1777);
    set_mode(&root.join("root"), 0o750);
    if with_devices {
        let status = Command::new("mknod")
            .args(["-m", "600"])
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"])
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("mknod")
            .args(["-m", "660"])
            .arg(root.join("dev/loop0"))
            .args(["b", "7", "0"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
        mtime: i64,
    },
    Symlink {
        target: PathBuf,
    },
    Device {
        mode: u32,
        char: bool,
        rdev: (u32, u32),
    },
}

/// Everything below `root`, for comparing two trees.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            use std::os::unix::fs::FileTypeExt;
            let node = if ft.is_dir() {
                walk(root, &path, out);
                Node::Dir { mode }
            } else if ft.is_symlink() {
                Node::Symlink {
                    target: fs::read_link(&path).unwrap(),
                }
            } else if ft.is_file() {
                Node::File {
                    mode,
                    data: fs::read(&path).unwrap(),
                    mtime: md.mtime(),
                }
            } else {
                Node::Device {
                    mode,
                    char: ft.is_char_device(),
                    rdev: dev_major_minor(md.rdev()),
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn pack(from: &Path, output: &Path, extra: &[&str]) {
    let out = bin()
        .arg("pack")
        .arg("--from-dir")
        .arg(from)
        .arg("--output")
        .arg(output)
        .args(["--mtime", &MTIME.to_string(), "--level", "3"])
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_builds_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    let a = tmp.path().join("a.cpio.zst");
    let b = tmp.path().join("b.cpio.zst");
    pack(&src, &a, &[]);
    // Touch everything: host timestamps must not leak into the archive.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(src.join("init"), "#!/bin/sh\necho hello\n").unwrap();
    pack(&src, &b, &[]);
    let a = fs::read(a).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, fs::read(b).unwrap());
    // Also identical to the library's own output.
    let mut archive = ucernvm_initramfs::Archive::new();
    archive.set_mtime(MTIME);
    ucernvm_initramfs::pack::add_tree(&mut archive, &src, Default::default()).unwrap();
    assert_eq!(a, archive.write_zstd(Vec::new(), 3).unwrap());
}

#[test]
fn archive_is_readable_by_zstd_and_cpio() {
    if !have("cpio") || !have("zstd") {
        test_prereq::skip("cpio or zstd not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let as_root = running_as_root(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, as_root);
    let zst = tmp.path().join("initrd.cpio.zst");
    pack(&src, &zst, &[]);

    let cpio = tmp.path().join("initrd.cpio");
    let status = Command::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(&zst)
        .arg("-o")
        .arg(&cpio)
        .status()
        .unwrap();
    assert!(status.success(), "zstd -d failed");

    // Same bytes as the --uncompressed output.
    let plain = tmp.path().join("plain.cpio");
    pack(&src, &plain, &["--uncompressed"]);
    assert_eq!(fs::read(&cpio).unwrap(), fs::read(&plain).unwrap());

    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let out = Command::new("cpio")
        .args(["-i", "-d", "-m", "--quiet", "--no-absolute-filenames"])
        .current_dir(&dest)
        .stdin(fs::File::open(&cpio).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cpio -idm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let want = snapshot(&src);
    let got = snapshot(&dest);
    // Timestamps of files come from the archive, not from the source tree.
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(p, n)| match n {
            Node::File { mode, data, .. } => (
                p,
                Node::File {
                    mode,
                    data,
                    mtime: i64::from(MTIME),
                },
            ),
            other => (p, other),
        })
        .collect();
    assert_eq!(got, want);
    if as_root {
        assert!(matches!(
            got.get(Path::new("dev/console")),
            Some(Node::Device {
                char: true,
                rdev: (5, 1),
                ..
            })
        ));
    }

    // cpio -t lists the entries in sorted order, ending with no trailer.
    let out = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(fs::File::open(&cpio).unwrap())
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"etc/cvmfs/keys/cern.ch/cern.ch.pub"));
}

#[test]
fn cli_reports_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("pack")
        .arg("--from-dir")
        .arg(tmp.path().join("missing"))
        .arg("--output")
        .arg(tmp.path().join("x.cpio.zst"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));

    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let out = bin()
        .arg("pack")
        .arg("--from-dir")
        .arg(&src)
        .arg("--output")
        .arg(tmp.path().join("x.cpio.zst"))
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOURCE_DATE_EPOCH"));
}
