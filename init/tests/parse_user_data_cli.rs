//! `parse_user_data` as a command: bytes on stdin, `_UCONTEXT_` lines on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_parse_user_data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn plain_context_byte_for_byte() {
    let ud = b"[amiconfig]\nplugins=cernvm\n[cernvm]\nusers=a:b:c\n[ucernvm-begin]\n\
               resize_rootfs=off\ncvmfs_http_proxy='http://ca-proxy.cern.ch:3128;DIRECT'\n\
               cvmfs_tag=cernvm-system-4.6.0.0\n[ucernvm-end]\nignored=1\n";
    assert_eq!(
        run(ud),
        b"_UCONTEXT_RESIZE_ROOTFS=0\n_UCONTEXT_CVMFS_HTTP_PROXY='http://ca-proxy.cern.ch:3128;DIRECT'\n\
          _UCONTEXT_CVMFS_TAG=cernvm-system-4.6.0.0\n"
    );
}

#[test]
fn gzip_context_and_garbage() {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b"[ucernvm-begin]\nuse_boothd=TRUE\n").unwrap();
    assert_eq!(run(&e.finish().unwrap()), b"_UCONTEXT_USE_BOOTHD=1\n");
    assert_eq!(run(b"\x1f\x8b\x08garbage"), b"");
    assert_eq!(run(&[0u8, 255, 10, 13, 61]), b"");
    let big = vec![b'x'; 10 << 20];
    assert_eq!(run(&big), b"");
}
