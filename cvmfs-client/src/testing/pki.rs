//! Certificates for tests, made by the real openssl: a CA and certificates it issued (the
//! repository certificate of a `Wcachain` whitelist, the signer of a boot image).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl <args>` in `dir`; panics with openssl's message when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and its certificate (PEM files).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// A self-signed CA (`CA:TRUE`, `keyCertSign`) with `subject` (e.g. `/CN=Test CA`), valid for
/// `days`: `<name>.key` and `<name>.crt` in `dir`.
pub fn make_ca(dir: &Path, name: &str, subject: &str, days: u32) -> KeyPair {
    std::fs::create_dir_all(dir).expect("create the CA directory");
    let ca = KeyPair {
        key: dir.join(format!("{name}.key")),
        cert: dir.join(format!("{name}.crt")),
    };
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            &days.to_string(),
            "-keyout",
            path_arg(&ca.key),
            "-out",
            path_arg(&ca.cert),
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    ca
}

/// A new key (`key`) and a certificate (`cert`) with `subject` that `ca` issued, valid for
/// `days`. The request and the CA's serial file are left in `dir`.
pub fn issue(
    dir: &Path,
    ca: &KeyPair,
    subject: &str,
    key: &Path,
    cert: &Path,
    days: u32,
) -> KeyPair {
    let csr = dir.join(format!(
        "{}.csr",
        key.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("request")
    ));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            path_arg(key),
            "-out",
            path_arg(&csr),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            path_arg(&csr),
            "-CA",
            path_arg(&ca.cert),
            "-CAkey",
            path_arg(&ca.key),
            "-CAcreateserial",
            "-sha256",
            "-days",
            &days.to_string(),
            "-out",
            path_arg(cert),
        ],
    );
    KeyPair {
        key: key.to_path_buf(),
        cert: cert.to_path_buf(),
    }
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
