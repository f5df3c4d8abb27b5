//! Helpers shared by the image tests: a test CA made with openssl, and running scripts/.

#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cvmfs_client::testing::pki;
use qemu_tests::inputs::workspace_root;

/// Runs `program` with `args`, returning its output.
pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(program.as_ref())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", program.as_ref()))
}

/// Panics with stdout and stderr unless `out` is a success.
pub fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A script of the repository's scripts/ directory.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

/// A certificate authority and a signing certificate it issued, made with openssl in `dir`:
/// `ca.crt`, `ca.key`, the hashed CA directory `certificates/` (for `-CApath`), and the signer's
/// `signer.pem` / `signer.key` with the subject of CERN's image signing host.
pub struct TestCa {
    pub dir: PathBuf,
}

pub const SIGNER_SUBJECT: &str = "/DC=ch/DC=cern/OU=computers/CN=cvm-sign02.cern.ch";

impl TestCa {
    pub fn create(dir: &Path, name: &str) -> TestCa {
        let ca = pki::make_ca(dir, "ca", &format!("/DC=test/CN={name}"), 2);
        pki::issue(
            dir,
            &ca,
            SIGNER_SUBJECT,
            &dir.join("signer.key"),
            &dir.join("signer.pem"),
            2,
        );
        fs::create_dir_all(dir.join("certificates")).unwrap();
        fs::copy(&ca.cert, dir.join("certificates/ca.pem")).unwrap();
        pki::openssl(dir, &["rehash", "certificates"]);
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA's own certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("signer.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("signer.key")
    }

    /// The `-CApath` directory (X509_CERT_DIR).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("certificates")
    }

    /// Signs `image` in place with scripts/sign-image.
    pub fn sign(&self, image: &Path, extra: &[&str]) -> Output {
        let mut cmd = Command::new(script("sign-image"));
        cmd.arg(image)
            .arg("--cert")
            .arg(self.cert())
            .arg("--key")
            .arg(self.key())
            .args(extra);
        cmd.output().expect("cannot run scripts/sign-image")
    }
}
