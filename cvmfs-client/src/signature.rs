//! Signed "letters" (manifest and whitelist), RSA keys and the repository certificate
//! (spec §3.3, §4.2, §4.5).
//!
//! Both signed files end in `--\n<hash text>\n<raw RSA signature>`. The manifest signature is
//! PKCS#1 v1.5 with SHA-1 over the hash *text*, made with the certificate's key; the whitelist
//! signature is raw PKCS#1 v1.5 type 1 padding around the hash text itself, made with the
//! repository master key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, PublicKey};
use sha1::Digest as _;
use x509_cert::der::{Decode, Encode};

use crate::hash::{Algorithm, ContentHash};

/// Errors of signature and key handling.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature block (\\n--\\n separator missing)")]
    NoSeparator,
    #[error("signature block has no hash line")]
    NoHashLine,
    #[error("malformed hash line {0:?}")]
    BadHashLine(String),
    #[error("hash line {stated} does not match the signed text (its hash is {actual})")]
    DigestMismatch { stated: String, actual: String },
    #[error("RSA signature does not verify with the {0}")]
    BadSignature(&'static str),
    #[error("cannot read public key {path}: {cause}")]
    KeyRead {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a PEM RSA public key: {reason}")]
    KeyParse { path: PathBuf, reason: String },
    #[error("no PEM certificate block found")]
    NoCertificate,
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
}

/// A signed file split into its parts.
#[derive(Debug, Clone)]
pub struct SignedLetter<'a> {
    /// Everything up to and including the `\n` before `--\n`.
    pub letter: &'a [u8],
    /// The hash text line (without newline).
    pub hash_text: &'a str,
    /// The raw signature bytes to the end of the file.
    pub signature: &'a [u8],
}

impl<'a> SignedLetter<'a> {
    /// Splits `buf` and checks that the hash line is the digest of the letter.
    pub fn parse(buf: &'a [u8]) -> Result<Self, SignatureError> {
        let p = find(buf, b"\n--\n").ok_or(SignatureError::NoSeparator)?;
        let letter = &buf[..p + 1];
        let q = p + 4;
        let r = buf[q..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| q + i)
            .ok_or(SignatureError::NoHashLine)?;
        let hash_text = std::str::from_utf8(&buf[q..r])
            .map_err(|_| SignatureError::BadHashLine(String::from_utf8_lossy(&buf[q..r]).into()))?;
        let stated: ContentHash = hash_text
            .parse()
            .map_err(|_| SignatureError::BadHashLine(hash_text.to_string()))?;
        let actual = ContentHash::of(stated.algorithm, letter);
        if actual != stated {
            return Err(SignatureError::DigestMismatch {
                stated: stated.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(SignedLetter {
            letter,
            hash_text,
            signature: &buf[r + 1..],
        })
    }
}

/// Assembles a signed file from its parts (the inverse of [`SignedLetter::parse`]).
pub fn assemble_signed(letter: &[u8], hash_text: &str, signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(letter.len() + hash_text.len() + signature.len() + 4);
    out.extend_from_slice(letter);
    out.extend_from_slice(b"--\n");
    out.extend_from_slice(hash_text.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(signature);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An RSA public key with the name of the file it came from.
#[derive(Clone)]
pub struct NamedKey {
    pub name: String,
    pub key: PublicKey,
}

impl fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamedKey({})", self.name)
    }
}

/// Loads a PEM `PUBLIC KEY` file (a repository master key).
pub fn load_public_key(path: &Path) -> Result<NamedKey, SignatureError> {
    let pem = std::fs::read_to_string(path).map_err(|source| SignatureError::KeyRead {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let key = PublicKey::from_public_key_pem(pem.trim()).map_err(|e| SignatureError::KeyParse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(NamedKey {
        name: path.display().to_string(),
        key,
    })
}

/// Verifies a whitelist signature: any master key whose raw PKCS#1 v1.5 recovery yields the
/// hash text accepts it.
pub fn verify_whitelist_signature(
    keys: &[NamedKey],
    letter: &SignedLetter,
) -> Result<(), SignatureError> {
    let ok = keys.iter().any(|k| {
        k.key
            .verify(
                Pkcs1v15Sign::new_unprefixed(),
                letter.hash_text.as_bytes(),
                letter.signature,
            )
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::BadSignature("repository master key(s)"))
    }
}

/// The repository certificate: its DER bytes (for the fingerprint) and public key.
#[derive(Clone)]
pub struct Certificate {
    pub der: Vec<u8>,
    pub key: PublicKey,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate(sha1 {})", self.fingerprint(Algorithm::Sha1))
    }
}

impl Certificate {
    /// Parses the first `CERTIFICATE` block of a PEM text (a trailing trusted-certificate
    /// block or other text is tolerated, as OpenSSL's `PEM_read_bio_X509_AUX` does).
    pub fn from_pem(pem: &[u8]) -> Result<Self, SignatureError> {
        let text = String::from_utf8_lossy(pem);
        let begin = text
            .find("-----BEGIN CERTIFICATE-----")
            .or_else(|| text.find("-----BEGIN TRUSTED CERTIFICATE-----"))
            .ok_or(SignatureError::NoCertificate)?;
        let body_start = text[begin..]
            .find('\n')
            .map(|i| begin + i + 1)
            .ok_or(SignatureError::NoCertificate)?;
        let end = text[body_start..]
            .find("-----END")
            .map(|i| body_start + i)
            .ok_or(SignatureError::NoCertificate)?;
        let b64: String = text[body_start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| SignatureError::BadCertificate(format!("base64: {e}")))?;
        Self::from_der(der)
    }

    /// Parses a DER certificate.
    pub fn from_der(der: Vec<u8>) -> Result<Self, SignatureError> {
        // A trusted-certificate block has auxiliary data after the certificate; decode only
        // the first DER element.
        let mut reader = x509_cert::der::SliceReader::new(&der)
            .map_err(|e| SignatureError::BadCertificate(e.to_string()))?;
        let cert = <x509_cert::Certificate as x509_cert::der::Decode>::decode(&mut reader)
            .map_err(|e| SignatureError::BadCertificate(e.to_string()))?;
        let cert_der = cert
            .to_der()
            .map_err(|e| SignatureError::BadCertificate(e.to_string()))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| SignatureError::BadCertificate(e.to_string()))?;
        let key = PublicKey::from_public_key_der(&spki)
            .map_err(|e| SignatureError::BadCertificate(format!("public key: {e}")))?;
        let _ = x509_cert::Certificate::from_der(&cert_der)
            .map_err(|e| SignatureError::BadCertificate(e.to_string()))?;
        Ok(Certificate { der: cert_der, key })
    }

    /// Fingerprint = digest of the DER encoding with the given algorithm.
    pub fn fingerprint(&self, algorithm: Algorithm) -> ContentHash {
        ContentHash::of(algorithm, &self.der)
    }

    /// Verifies a manifest signature: PKCS#1 v1.5 with SHA-1 over the hash text.
    pub fn verify_manifest_signature(&self, letter: &SignedLetter) -> Result<(), SignatureError> {
        let digest = sha1::Sha1::digest(letter.hash_text.as_bytes());
        self.key
            .verify(Pkcs1v15Sign::new::<sha1::Sha1>(), &digest, letter.signature)
            .map_err(|_| SignatureError::BadSignature("repository certificate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_dir;

    #[test]
    fn fixture_whitelist_verifies_with_master_key() {
        let dir = fixture_dir();
        let wl = std::fs::read(dir.join("srv/cvmfs/demo.cernvm.test/.cvmfswhitelist")).unwrap();
        let key = load_public_key(&dir.join("keys/demo.cernvm.test.pub")).unwrap();
        let letter = SignedLetter::parse(&wl).unwrap();
        verify_whitelist_signature(std::slice::from_ref(&key), &letter).unwrap();

        // One flipped signature byte must fail.
        let mut bad = wl.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        let letter = SignedLetter::parse(&bad).unwrap();
        assert!(verify_whitelist_signature(&[key], &letter).is_err());
    }

    #[test]
    fn fixture_certificate_fingerprint_and_manifest_signature() {
        let dir = fixture_dir();
        let pem = std::fs::read(dir.join("keys/demo.cernvm.test.crt")).unwrap();
        let cert = Certificate::from_pem(&pem).unwrap();
        assert_eq!(
            cert.fingerprint(Algorithm::Sha1).hex(),
            "1dad09dd0b21ec02550af214551c0c7963c68e46"
        );
        let m = std::fs::read(dir.join("srv/cvmfs/demo.cernvm.test/.cvmfspublished")).unwrap();
        let letter = SignedLetter::parse(&m).unwrap();
        cert.verify_manifest_signature(&letter).unwrap();
    }

    #[test]
    fn tampered_letter_is_detected_before_rsa() {
        let dir = fixture_dir();
        let mut m = std::fs::read(dir.join("srv/cvmfs/demo.cernvm.test/.cvmfspublished")).unwrap();
        m[1] ^= 0x01;
        assert!(matches!(
            SignedLetter::parse(&m),
            Err(SignatureError::DigestMismatch { .. })
        ));
        assert!(matches!(
            SignedLetter::parse(b"Cabc\nS1\n"),
            Err(SignatureError::NoSeparator)
        ));
    }
}
