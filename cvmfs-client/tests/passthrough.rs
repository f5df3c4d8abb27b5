//! FUSE passthrough through the real `cvmfs2` daemon and kernel FUSE mounts of the real-server
//! fixture: files read (and mapped) through backing files have the right bytes, a rotten
//! cached copy is still caught at open, and where the kernel refuses backing files (the cache
//! on a stacked file system) or passthrough is switched off, files are read through the daemon.
//! On kernels without passthrough (before 6.9) every test checks the plain read path.
//!
//! Needs root and `/dev/fuse`; otherwise the tests print why they are skipped (a failure under `UCERNVM_REQUIRE_ALL=1`, as in `scripts/test`).

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cvmfs_client::skip_unless_fixture_mount;
use cvmfs_client::testing::{expected_file_digests, fixture_dir, StaticHttpServer};
use sha2::Digest as _;

const FQRN: &str = "demo.cernvm.test";
const ON: &str = "FUSE passthrough on";
const OFF: &str = "FUSE passthrough off";

fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.as_os_str().as_bytes();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p.as_bytes() == want))
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Relative path → sha256 of every regular file at tag v2.
fn expected_files() -> Vec<(String, String)> {
    expected_file_digests("v2")
}

/// Reads every file with `read(2)`; returns the mismatches.
fn check_files(mnt: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, sha) in expected_files() {
        let mut content = Vec::new();
        match File::open(mnt.join(&rel)).and_then(|mut f| f.read_to_end(&mut content)) {
            Ok(_) if sha256_hex(&content) == sha => {}
            Ok(_) => problems.push(format!("{rel}: wrong content")),
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    problems
}

/// The content of `p` through `mmap(2)` (passthrough maps the backing file).
fn mapped(p: &Path) -> Vec<u8> {
    let f = File::open(p).expect("open for mmap");
    let len = f.metadata().expect("stat").len() as usize;
    assert!(len > 0, "{} is empty", p.display());
    // SAFETY: a private read-only mapping of `len` bytes of an open file, unmapped below.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(m, libc::MAP_FAILED, "mmap {}", p.display());
        let out = std::slice::from_raw_parts(m.cast::<u8>(), len).to_vec();
        libc::munmap(m, len);
        out
    }
}

/// The `user.hash` magic attribute: the content hash naming the cached object.
fn user_hash(p: &Path) -> String {
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings; `buf` has room for `buf.len()` bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.hash".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n > 2, "user.hash of {}", p.display());
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

/// One test's directories and daemon.
struct Env {
    tmp: tempfile::TempDir,
    mnt: PathBuf,
    config: PathBuf,
    usyslog: PathBuf,
}

impl Env {
    fn new(server: &StaticHttpServer, cache_base: Option<&Path>, extra: &str) -> Env {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let cache_base = cache_base
            .map(Path::to_path_buf)
            .unwrap_or_else(|| tmp.path().join("cache"));
        let env = Env {
            config: tmp.path().join("client.conf"),
            usyslog: tmp.path().join("usyslog"),
            mnt,
            tmp,
        };
        std::fs::write(
            &env.config,
            format!(
                "CVMFS_SERVER_URL={}/cvmfs/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_PUBLIC_KEY={}\nCVMFS_CACHE_BASE={}\nCVMFS_SHARED_CACHE=no\n\
                 CVMFS_REPOSITORY_TAG=v2\nCVMFS_USYSLOG={}\n{extra}",
                server.url(),
                fixture_dir().join("keys/demo.cernvm.test.pub").display(),
                cache_base.display(),
                env.usyslog.display(),
            ),
        )
        .expect("write the client configuration");
        env
    }

    fn mount(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_cvmfs2"))
            .arg("--config-root")
            .arg(self.tmp.path().join("no-etc"))
            .arg("-o")
            .arg(format!("config={}", self.config.display()))
            .arg(FQRN)
            .arg(&self.mnt)
            .output()
            .expect("run cvmfs2");
        assert!(
            out.status.success(),
            "cvmfs2 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn unmount(&self) {
        let st = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .expect("umount");
        assert!(st.success(), "umount {}", self.mnt.display());
        // The daemon writes its last lines while it ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains("unmounted") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.usyslog).unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn server() -> StaticHttpServer {
    StaticHttpServer::start(&fixture_dir().join("srv")).expect("start the HTTP server")
}

#[test]
fn passthrough_reads_and_maps_the_right_bytes_and_a_rotten_cached_copy_is_caught_at_open() {
    skip_unless_fixture_mount!();
    let server = server();
    let env = Env::new(&server, None, "");
    env.mount();
    let on = env.log().contains(ON);
    eprintln!(
        "kernel FUSE passthrough: {}",
        if on { "on" } else { "not offered" }
    );
    assert_eq!(check_files(&env.mnt), Vec::<String>::new());
    // Twice: the second open of each inode starts from a verified object.
    assert_eq!(check_files(&env.mnt), Vec::<String>::new());
    let (rel, sha) = expected_files()
        .into_iter()
        .find(|(rel, _)| std::fs::metadata(env.mnt.join(rel)).is_ok_and(|m| m.len() > 0))
        .expect("a non-empty file");
    assert_eq!(
        sha256_hex(&mapped(&env.mnt.join(&rel))),
        sha,
        "mmap of {rel}"
    );
    let hash = user_hash(&env.mnt.join(&rel));
    env.unmount();
    assert!(!env.log().contains(OFF), "{}", env.log());

    // Rot one cached object in place (same size, recorded digest kept).
    let object = env
        .tmp
        .path()
        .join("cache")
        .join(FQRN)
        .join(&hash[..2])
        .join(&hash[2..]);
    let mut bytes = std::fs::read(&object).expect("cached object");
    bytes[0] ^= 0xff;
    std::fs::write(&object, &bytes).expect("rot the cached object");
    env.mount();
    let mut content = Vec::new();
    File::open(env.mnt.join(&rel))
        .and_then(|mut f| f.read_to_end(&mut content))
        .expect("read after the cache rotted");
    assert_eq!(sha256_hex(&content), sha, "{rel} served from a rotten copy");
    assert!(
        env.log().contains("does not match its content hash"),
        "{}",
        env.log()
    );
    env.unmount();
}

#[test]
fn a_cache_on_a_stacked_file_system_falls_back_to_reads_through_the_daemon() {
    skip_unless_fixture_mount!();
    let server = server();
    let dir = tempfile::tempdir().expect("temporary directory");
    let (lower, upper, work, merged) = (
        dir.path().join("lower"),
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir(d).expect("overlay directory");
    }
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        test_prereq::skip("cannot mount an overlay");
        return;
    }
    let env = Env::new(&server, Some(&merged), "");
    env.mount();
    let problems = check_files(&env.mnt);
    let log = env.log();
    env.unmount();
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(problems, Vec::<String>::new());
    if log.contains(ON) {
        // Backing files on an overlay exceed the stacking depth the mount asked for.
        assert!(log.contains(OFF), "no fallback logged:\n{log}");
    }
}

#[test]
fn passthrough_can_be_switched_off() {
    skip_unless_fixture_mount!();
    let server = server();
    let env = Env::new(&server, None, "CVMFS_FUSE_PASSTHROUGH=no\n");
    env.mount();
    assert_eq!(check_files(&env.mnt), Vec::<String>::new());
    let log = env.log();
    env.unmount();
    assert!(!log.contains(ON), "{log}");
}
