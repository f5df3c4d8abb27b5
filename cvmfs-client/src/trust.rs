//! Trust beyond the master key (spec §4.2 step 7, §4.6): the CA chain a `Wcachain` whitelist
//! asks for (the repository certificate must chain to a certificate of `CVMFS_TRUSTED_CERTS`),
//! and the blacklist of certificate fingerprints and revision floors.

use std::path::{Path, PathBuf};

use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, PublicKey};
use sha2::Digest as _;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate as X509;

use crate::hash::ContentHash;
use crate::signature::Certificate;
use crate::whitelist::{fingerprint_text, parse_fingerprint};

/// Why a certificate or revision is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the whitelist requires a CA chain (Wcachain) but CVMFS_TRUSTED_CERTS names no CA certificate")]
    NoTrustedCerts,
    #[error("certificate {fingerprint} ({subject}) does not chain to a trusted CA of CVMFS_TRUSTED_CERTS: {reason}")]
    NotChained {
        fingerprint: String,
        subject: String,
        reason: String,
    },
    #[error("certificate {0} is blacklisted")]
    CertificateBlacklisted(String),
    #[error("revision {revision} is blacklisted (revisions below {floor} of {fqrn} are refused)")]
    RevisionBlacklisted {
        fqrn: String,
        revision: u64,
        floor: u64,
    },
}

/// Longest chain followed from the repository certificate to a self-signed CA.
const MAX_CHAIN: usize = 8;

/// The CA certificates of `CVMFS_TRUSTED_CERTS`.
#[derive(Default)]
pub struct TrustStore {
    certs: Vec<X509>,
}

impl TrustStore {
    /// Loads every PEM certificate of `paths`: files, or directories whose files are read
    /// (files without a certificate, like CRLs and signing policies, are skipped). A missing
    /// path is an error.
    pub fn load(paths: &[PathBuf]) -> Result<TrustStore, TrustError> {
        let mut certs = Vec::new();
        for path in paths {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|cause| TrustError::Read {
                    path: p.to_path_buf(),
                    cause,
                })
            };
            let files: Vec<PathBuf> = if path.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|cause| TrustError::Read {
                        path: path.clone(),
                        cause,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                v.sort();
                v
            } else {
                vec![path.clone()]
            };
            for f in files {
                let pem = read(&f)?;
                if let Ok(chain) = X509::load_pem_chain(&pem) {
                    certs.extend(chain);
                }
            }
        }
        Ok(TrustStore { certs })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Checks that `cert` chains to a trusted CA at time `now` (seconds since the epoch):
    /// each link's signature verifies with its issuer's key, every certificate is within its
    /// validity, and every issuer is a CA (basicConstraints). Revocation lists are not read.
    pub fn verify_chain(&self, cert: &Certificate, now: i64) -> Result<(), TrustError> {
        if self.certs.is_empty() {
            return Err(TrustError::NoTrustedCerts);
        }
        let fail = |subject: String, reason: String| TrustError::NotChained {
            fingerprint: fingerprint_text(&cert.fingerprint(crate::hash::Algorithm::Sha1)),
            subject,
            reason,
        };
        let leaf = X509::from_der(&cert.der).map_err(|e| fail("?".into(), e.to_string()))?;
        let subject = leaf.tbs_certificate().subject().to_string();
        let mut current = leaf;
        for _ in 0..MAX_CHAIN {
            check_validity(&current, now).map_err(|r| fail(subject.clone(), r))?;
            if self
                .certs
                .iter()
                .any(|t| same_cert(t, &current) && is_self_signed(t))
            {
                return Ok(());
            }
            let issuer = self
                .certs
                .iter()
                .filter(|t| t.tbs_certificate().subject() == current.tbs_certificate().issuer())
                .find(|t| verify_signed_by(&current, t).is_ok());
            let Some(issuer) = issuer else {
                return Err(fail(
                    subject,
                    format!(
                        "no trusted certificate of issuer {} verifies the signature of {}",
                        current.tbs_certificate().issuer(),
                        current.tbs_certificate().subject()
                    ),
                ));
            };
            if !is_ca(issuer) {
                return Err(fail(
                    subject,
                    format!("issuer {} is not a CA", issuer.tbs_certificate().subject()),
                ));
            }
            if is_self_signed(issuer) {
                return check_validity(issuer, now).map_err(|r| fail(subject, r));
            }
            current = issuer.clone();
        }
        Err(fail(subject, format!("chain longer than {MAX_CHAIN}")))
    }
}

fn same_cert(a: &X509, b: &X509) -> bool {
    a.to_der().ok() == b.to_der().ok()
}

fn is_self_signed(c: &X509) -> bool {
    c.tbs_certificate().subject() == c.tbs_certificate().issuer() && verify_signed_by(c, c).is_ok()
}

fn is_ca(c: &X509) -> bool {
    matches!(
        c.tbs_certificate().get_extension::<BasicConstraints>(),
        Ok(Some((_, BasicConstraints { ca: true, .. })))
    )
}

fn check_validity(c: &X509, now: i64) -> Result<(), String> {
    let v = c.tbs_certificate().validity();
    let secs = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    let subject = c.tbs_certificate().subject();
    if now < secs(&v.not_before) {
        return Err(format!("{subject} is not valid before {}", v.not_before));
    }
    if now > secs(&v.not_after) {
        return Err(format!("{subject} expired at {}", v.not_after));
    }
    Ok(())
}

/// Verifies `cert`'s signature with `issuer`'s RSA key (PKCS#1 v1.5 with SHA-1/256/384/512).
fn verify_signed_by(cert: &X509, issuer: &X509) -> Result<(), String> {
    let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
    let spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    let key = PublicKey::from_public_key_der(&spki).map_err(|e| e.to_string())?;
    let sig = cert.signature().raw_bytes();
    let oid = cert.signature_algorithm().oid.to_string();
    let ok = match oid.as_str() {
        "1.2.840.113549.1.1.5" => key.verify(
            Pkcs1v15Sign::new::<sha1::Sha1>(),
            &sha1::Sha1::digest(&tbs),
            sig,
        ),
        "1.2.840.113549.1.1.11" => key.verify(
            Pkcs1v15Sign::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(&tbs),
            sig,
        ),
        "1.2.840.113549.1.1.12" => key.verify(
            Pkcs1v15Sign::new::<sha2::Sha384>(),
            &sha2::Sha384::digest(&tbs),
            sig,
        ),
        "1.2.840.113549.1.1.13" => key.verify(
            Pkcs1v15Sign::new::<sha2::Sha512>(),
            &sha2::Sha512::digest(&tbs),
            sig,
        ),
        other => return Err(format!("unsupported signature algorithm {other}")),
    };
    ok.map_err(|_| "signature does not verify".to_string())
}

/// The blacklist (spec §4.6): certificate fingerprints and `<fqrn N` revision floors.
#[derive(Debug, Default, Clone)]
pub struct Blacklist {
    fingerprints: Vec<ContentHash>,
    floors: Vec<(String, u64)>,
}

impl Blacklist {
    /// Reads the files that exist of `paths` (a missing file is an empty list).
    pub fn load(paths: &[PathBuf]) -> Result<Blacklist, TrustError> {
        let mut b = Blacklist::default();
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(text) => b.add(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(cause) => {
                    return Err(TrustError::Read {
                        path: p.clone(),
                        cause,
                    })
                }
            }
        }
        Ok(b)
    }

    /// Adds the entries of one file's text.
    pub fn add(&mut self, text: &str) {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix('<') {
                let mut parts = rest.split_whitespace();
                if let (Some(fqrn), Some(n), None) = (parts.next(), parts.next(), parts.next()) {
                    if let Ok(n) = n.parse::<u64>() {
                        self.floors.push((fqrn.to_string(), n));
                    }
                }
            } else if let Some(h) = parse_fingerprint(line) {
                self.fingerprints.push(h);
            }
        }
    }

    /// Refuses a blacklisted certificate.
    pub fn check_certificate(&self, cert: &Certificate) -> Result<(), TrustError> {
        match self
            .fingerprints
            .iter()
            .find(|f| cert.fingerprint(f.algorithm) == **f)
        {
            Some(f) => Err(TrustError::CertificateBlacklisted(fingerprint_text(f))),
            None => Ok(()),
        }
    }

    /// Refuses a revision below a floor for `fqrn`.
    pub fn check_revision(&self, fqrn: &str, revision: u64) -> Result<(), TrustError> {
        match self
            .floors
            .iter()
            .filter(|(f, _)| f == fqrn)
            .map(|(_, n)| *n)
            .max()
        {
            Some(floor) if revision < floor => Err(TrustError::RevisionBlacklisted {
                fqrn: fqrn.to_string(),
                revision,
                floor,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blacklist_lines() {
        let mut b = Blacklist::default();
        b.add(
            "# comment\n<demo.cernvm.test 7\n<other.test 100\n<bad line here\n\
             90:E6:2D:B6:1B:10:48:CC:89:E9:CE:B6:B6:A1:C5:9E:1D:00:3A:EC\n",
        );
        assert!(b.check_revision("demo.cernvm.test", 6).is_err());
        assert!(b.check_revision("demo.cernvm.test", 7).is_ok());
        assert!(b.check_revision("unlisted.test", 1).is_ok());
        assert_eq!(b.fingerprints.len(), 1);
        let msg = b.check_revision("other.test", 99).unwrap_err().to_string();
        assert!(msg.contains("below 100"), "{msg}");
    }
}
