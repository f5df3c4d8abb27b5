//! The pinner mode of the `init` binary (spec §12.4): works only with paths relative to its
//! working directory (the cache), pins each listed path over the control socket, logs to
//! `pin.log` and leaves the `pinned` sentinel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

#[test]
fn pins_relative_to_the_cache_and_leaves_the_sentinel() {
    let cache = tempfile::tempdir().unwrap();
    let repo = "demo.cernvm.test";
    std::fs::create_dir_all(cache.path().join(repo)).unwrap();
    // A stand-in for the daemon's socket (the real one needs the control socket server).
    let listener =
        UnixListener::bind(cache.path().join(repo).join(format!("cvmfs_io.{repo}"))).unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(b"OK\n").unwrap();
        }
        seen
    });
    let list = cache.path().join("list");
    std::fs::write(&list, "/cvm4/usr/bin/sudo\n/cvm4/lib64/libc.so.6\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_init"))
        .arg("--pin-files")
        .arg(&list)
        .arg(format!("{repo}/cvmfs_io.{repo}"))
        .current_dir(cache.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        server.join().unwrap(),
        vec!["pin /cvm4/usr/bin/sudo", "pin /cvm4/lib64/libc.so.6"]
    );
    assert!(cache.path().join("pinned").exists());
    let log = std::fs::read_to_string(cache.path().join("pin.log")).unwrap();
    assert_eq!(
        log,
        "pinned /cvm4/usr/bin/sudo\npinned /cvm4/lib64/libc.so.6\n"
    );
}

#[test]
fn no_socket_means_exit_20_and_no_sentinel() {
    let cache = tempfile::tempdir().unwrap();
    let list = cache.path().join("list");
    std::fs::write(&list, "/x\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_init"))
        .args(["--pin-files"])
        .arg(&list)
        .arg("r/cvmfs_io.r")
        .current_dir(cache.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(20));
    assert!(!cache.path().join("pinned").exists());
}
