//! Repository keys: the master key pair (signs the whitelist), the certificate and its key
//! (signs manifests). Missing keys are created with the `openssl` command line tool, as
//! `cvmfs_server mkfs` does; signing itself is pure Rust.
//!
//! Files in the key directory, named as the real server names them:
//! `<fqrn>.masterkey` (private, 0600), `<fqrn>.pub` (the master public key clients need),
//! `<fqrn>.key` (private, 0600) and `<fqrn>.crt` (self-signed X.509 certificate).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, PrivateKey};
use sha1::Digest as _;

use crate::hash::{Algorithm, ContentHash};
use crate::signature::{assemble_signed, Certificate, SignatureError};

/// Errors of key handling and signing.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot access {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a PEM RSA private key (PKCS#8 or PKCS#1)")]
    BadPrivateKey { path: PathBuf },
    #[error("{present} exists but {missing} does not; refusing to create a mismatching key (restore {missing} or remove both)")]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("`openssl {args}` failed ({status}): {stderr}")]
    Openssl {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run openssl (needed to create missing keys): {0}")]
    NoOpenssl(std::io::Error),
    #[error("certificate {path}: {cause}")]
    Certificate {
        path: PathBuf,
        cause: SignatureError,
    },
    #[error("the certificate {path} does not belong to the private key {key}")]
    CertificateKeyMismatch { path: PathBuf, key: PathBuf },
    #[error("RSA signing failed: {0}")]
    Sign(String),
}

/// The loaded keys of one repository.
pub struct RepositoryKeys {
    master: PrivateKey,
    certificate_key: PrivateKey,
    /// The certificate PEM as stored in the key directory (published as object `X`).
    pub certificate_pem: Vec<u8>,
    pub certificate: Certificate,
    /// Path of the master public key (what clients need).
    pub master_public_key: PathBuf,
}

impl std::fmt::Debug for RepositoryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RepositoryKeys({:?}, master public key {})",
            self.certificate,
            self.master_public_key.display()
        )
    }
}

/// The four file names for `fqrn` in `dir`.
pub struct KeyPaths {
    pub master_private: PathBuf,
    pub master_public: PathBuf,
    pub certificate_key: PathBuf,
    pub certificate: PathBuf,
}

impl KeyPaths {
    pub fn new(dir: &Path, fqrn: &str) -> KeyPaths {
        KeyPaths {
            master_private: dir.join(format!("{fqrn}.masterkey")),
            master_public: dir.join(format!("{fqrn}.pub")),
            certificate_key: dir.join(format!("{fqrn}.key")),
            certificate: dir.join(format!("{fqrn}.crt")),
        }
    }
}

impl RepositoryKeys {
    /// Loads the keys of `fqrn` from `dir`, creating the directory and any missing pair.
    pub fn load_or_create(dir: &Path, fqrn: &str) -> Result<RepositoryKeys, KeyError> {
        std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            cause: source,
        })?;
        let p = KeyPaths::new(dir, fqrn);
        match (p.master_private.exists(), p.master_public.exists()) {
            (false, false) => {
                log::info!("creating master key {}", p.master_private.display());
                create_private_key(&p.master_private)?;
                openssl(&[
                    "rsa".as_ref(),
                    "-in".as_ref(),
                    p.master_private.as_os_str(),
                    "-pubout".as_ref(),
                    "-out".as_ref(),
                    p.master_public.as_os_str(),
                ])?;
            }
            (true, false) => {
                openssl(&[
                    "rsa".as_ref(),
                    "-in".as_ref(),
                    p.master_private.as_os_str(),
                    "-pubout".as_ref(),
                    "-out".as_ref(),
                    p.master_public.as_os_str(),
                ])?;
            }
            (false, true) => {
                return Err(KeyError::Incomplete {
                    present: p.master_public,
                    missing: p.master_private,
                })
            }
            (true, true) => {}
        }
        match (p.certificate_key.exists(), p.certificate.exists()) {
            (false, false) => {
                log::info!("creating certificate {}", p.certificate.display());
                create_private_key(&p.certificate_key)?;
                create_certificate(&p.certificate_key, &p.certificate, fqrn)?;
            }
            (true, false) => create_certificate(&p.certificate_key, &p.certificate, fqrn)?,
            (false, true) => {
                return Err(KeyError::Incomplete {
                    present: p.certificate,
                    missing: p.certificate_key,
                })
            }
            (true, true) => {}
        }
        let master = load_private_key(&p.master_private)?;
        let certificate_key = load_private_key(&p.certificate_key)?;
        let certificate_pem = read(&p.certificate)?;
        let certificate =
            Certificate::from_pem(&certificate_pem).map_err(|source| KeyError::Certificate {
                path: p.certificate.clone(),
                cause: source,
            })?;
        if certificate.key != *certificate_key.as_ref() {
            return Err(KeyError::CertificateKeyMismatch {
                path: p.certificate,
                key: p.certificate_key,
            });
        }
        Ok(RepositoryKeys {
            master,
            certificate_key,
            certificate_pem,
            certificate,
            master_public_key: p.master_public,
        })
    }

    /// SHA-1 fingerprint of the certificate (listed in the whitelist).
    pub fn fingerprint(&self) -> ContentHash {
        self.certificate.fingerprint(Algorithm::Sha1)
    }

    /// Signs a manifest letter: PKCS#1 v1.5 with SHA-1 over the SHA-1 hash text of the letter,
    /// with the certificate's key (spec §3.3).
    pub fn sign_manifest(&self, letter: &[u8]) -> Result<Vec<u8>, KeyError> {
        let hash_text = ContentHash::of(Algorithm::Sha1, letter).to_string();
        let digest = sha1::Sha1::digest(hash_text.as_bytes());
        let signature = self
            .certificate_key
            .sign(Pkcs1v15Sign::new::<sha1::Sha1>(), &digest)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(assemble_signed(letter, &hash_text, &signature))
    }

    /// Signs a whitelist letter: raw PKCS#1 v1.5 type 1 around the hash text, with the master
    /// key (spec §4.2).
    pub fn sign_whitelist(&self, letter: &[u8]) -> Result<Vec<u8>, KeyError> {
        let hash_text = ContentHash::of(Algorithm::Sha1, letter).to_string();
        let signature = self
            .master
            .sign(Pkcs1v15Sign::new_unprefixed(), hash_text.as_bytes())
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(assemble_signed(letter, &hash_text, &signature))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let pem = String::from_utf8(read(path)?).map_err(|_| KeyError::BadPrivateKey {
        path: path.to_path_buf(),
    })?;
    PrivateKey::from_pkcs8_pem(pem.trim())
        .or_else(|_| PrivateKey::from_pkcs1_pem(pem.trim()))
        .map_err(|_| KeyError::BadPrivateKey {
            path: path.to_path_buf(),
        })
}

fn openssl(args: &[&std::ffi::OsStr]) -> Result<(), KeyError> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(KeyError::NoOpenssl)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KeyError::Openssl {
            args: args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A new RSA-2048 private key at `path`, mode 0600 before any key material is written.
fn create_private_key(path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(path)
        .map_err(io)?;
    openssl(&[
        "genrsa".as_ref(),
        "-out".as_ref(),
        path.as_os_str(),
        "2048".as_ref(),
    ])?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

/// A self-signed certificate for `key`, valid for ten years (the validity is not checked by
/// clients; the whitelist decides).
fn create_certificate(key: &Path, cert: &Path, fqrn: &str) -> Result<(), KeyError> {
    let subject = format!("/CN={fqrn} CernVM-FS Release Managers");
    openssl(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-x509".as_ref(),
        "-sha256".as_ref(),
        "-days".as_ref(),
        "3650".as_ref(),
        "-subj".as_ref(),
        subject.as_ref(),
        "-key".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ])
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{load_public_key, verify_whitelist_signature, SignedLetter};

    #[test]
    fn created_keys_sign_what_the_client_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let keys = RepositoryKeys::load_or_create(dir.path(), "test.cern.ch").unwrap();
        let p = KeyPaths::new(dir.path(), "test.cern.ch");
        for private in [&p.master_private, &p.certificate_key] {
            let mode = std::fs::metadata(private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
        }
        let manifest = keys.sign_manifest(b"Cabc\nS1\n").unwrap();
        let letter = SignedLetter::parse(&manifest).unwrap();
        keys.certificate.verify_manifest_signature(&letter).unwrap();

        let whitelist = keys.sign_whitelist(b"20260101000000\n").unwrap();
        let letter = SignedLetter::parse(&whitelist).unwrap();
        let master = load_public_key(&p.master_public).unwrap();
        verify_whitelist_signature(&[master], &letter).unwrap();
        // The certificate key cannot sign whitelists.
        let wrong = crate::signature::NamedKey {
            name: "certificate".into(),
            key: keys.certificate.key.clone(),
        };
        assert!(verify_whitelist_signature(&[wrong], &letter).is_err());

        // Loading again gives the same keys (nothing is regenerated).
        let again = RepositoryKeys::load_or_create(dir.path(), "test.cern.ch").unwrap();
        assert_eq!(again.fingerprint(), keys.fingerprint());
    }

    #[test]
    fn half_a_key_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        RepositoryKeys::load_or_create(dir.path(), "x.test").unwrap();
        std::fs::remove_file(dir.path().join("x.test.key")).unwrap();
        assert!(matches!(
            RepositoryKeys::load_or_create(dir.path(), "x.test"),
            Err(KeyError::Incomplete { .. })
        ));
        std::fs::write(dir.path().join("x.test.key"), "garbage").unwrap();
        assert!(matches!(
            RepositoryKeys::load_or_create(dir.path(), "x.test"),
            Err(KeyError::BadPrivateKey { .. })
        ));
    }
}
