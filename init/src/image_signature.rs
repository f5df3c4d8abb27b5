//! The 64 KiB signature block at the end of signed µCernVM files (spec §14.5): block A (JSON
//! metadata) and block B (JSON with the signer's PEM `certificate` and the `signature`), each
//! zero-padded to 32 KiB. The signature is RSA PKCS#1 v1.5 over the SHA-256 digest of
//! everything but block B; the certificate must be issued by a trusted CA and name CERN's
//! image signing host. The boot loader checks update packs this way when its image carries
//! the CA (`/etc/cernvm/update-ca.pem`, spec §15).

use base64::Engine;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, PublicKey};
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};

/// Size of each of the two blocks.
pub const BLOCK: usize = 32768;

/// Subject of the signing host, as RFC 4514 prints it (last RDN first).
pub const SIGNER_SUBJECT: &str = "CN=cvm-sign02.cern.ch,OU=computers,DC=cern,DC=ch";

/// `sha256WithRSAEncryption`.
const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";

/// The CA file in the initramfs that switches verification of update packs on.
pub const UPDATE_CA: &str = "etc/cernvm/update-ca.pem";

/// The text of a block: the JSON up to the zero padding, if the block is one.
fn block_text(block: &[u8]) -> Option<&str> {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    let text = std::str::from_utf8(block.get(..end)?).ok()?.trim();
    (text.starts_with('{') && text.ends_with('}')).then_some(text)
}

/// The value of the JSON string member `"key": "..."` (base64 values need no unescaping).
fn json_string<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let after = text.split_once(&format!("\"{key}\""))?.1;
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    value.split_once('"').map(|(v, _)| v)
}

/// The signature block of a file: (signed length = content + block A, certificate PEM,
/// signature).
fn signature_block(data: &[u8]) -> Option<(usize, Vec<u8>, Vec<u8>)> {
    let content = data.len().checked_sub(2 * BLOCK)?;
    let a = block_text(data.get(content..content + BLOCK)?)?;
    let b = block_text(data.get(content + BLOCK..)?)?;
    json_string(a, "ucernvm-version")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let cert = b64.decode(json_string(b, "certificate")?).ok()?;
    let signature = b64.decode(json_string(b, "signature")?).ok()?;
    Some((content + BLOCK, cert, signature))
}

/// `data` without its signature block, if it has one.
pub fn strip(mut data: Vec<u8>) -> Vec<u8> {
    if signature_block(&data).is_some() {
        data.truncate(data.len() - 2 * BLOCK);
    }
    data
}

/// The DER certificates of a PEM text.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some((_, after)) = rest.split_once("-----BEGIN CERTIFICATE-----") {
        let Some((body, tail)) = after.split_once("-----END CERTIFICATE-----") else {
            break;
        };
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(der);
        }
        rest = tail;
    }
    out
}

fn public_key(cert: &x509_cert::Certificate) -> Result<PublicKey, String> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    PublicKey::from_public_key_der(&spki).map_err(|e| format!("not an RSA key: {e}"))
}

/// Trusted CAs for signed files.
pub struct Trust {
    cas: Vec<x509_cert::Certificate>,
}

impl Trust {
    /// The CAs of a PEM bundle; `None` when it holds no certificate.
    pub fn from_pem(pem: &[u8]) -> Option<Trust> {
        let cas: Vec<_> = pem_certificates(pem)
            .iter()
            .filter_map(|der| x509_cert::Certificate::from_der(der).ok())
            .collect();
        (!cas.is_empty()).then_some(Trust { cas })
    }

    /// Checks the signature block of `data`; returns the content without it.
    pub fn verify(&self, mut data: Vec<u8>) -> Result<Vec<u8>, String> {
        let (signed_len, cert_pem, signature) =
            signature_block(&data).ok_or("no signature block (sign it with scripts/sign-image)")?;
        let der = pem_certificates(&cert_pem)
            .into_iter()
            .next()
            .ok_or("the signature block's certificate is not PEM")?;
        let signer = x509_cert::Certificate::from_der(&der)
            .map_err(|e| format!("the signature block's certificate: {e}"))?;
        let subject = signer.tbs_certificate().subject().to_string();
        if subject != SIGNER_SUBJECT {
            return Err(format!(
                "signed by {subject}, not by the image signing host {SIGNER_SUBJECT}"
            ));
        }
        if !self.cas.iter().any(|ca| issued_by(&signer, ca)) {
            return Err(format!(
                "the signer's certificate ({subject}) is not issued by a trusted CA"
            ));
        }
        let digest = Sha256::digest(data.get(..signed_len).unwrap_or_default());
        public_key(&signer)?
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
            .map_err(|_| "the signature does not match the content (changed or truncated)")?;
        data.truncate(signed_len - BLOCK);
        Ok(data)
    }
}

/// `cert` names `ca` as its issuer and carries `ca`'s SHA-256/RSA signature.
fn issued_by(cert: &x509_cert::Certificate, ca: &x509_cert::Certificate) -> bool {
    if cert.tbs_certificate().issuer() != ca.tbs_certificate().subject()
        || cert.signature_algorithm().oid.to_string() != SHA256_WITH_RSA
    {
        return false;
    }
    let (Ok(tbs), Ok(key)) = (cert.tbs_certificate().to_der(), public_key(ca)) else {
        return false;
    };
    let Some(signature) = cert.signature().as_bytes() else {
        return false;
    };
    key.verify(
        Pkcs1v15Sign::new::<Sha256>(),
        &Sha256::digest(&tbs),
        signature,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvmfs_client::testing::pki;
    use std::path::Path;
    use std::process::Command;

    /// A CA, a signer with `subject` it issued, and a file signed by scripts/sign-image.
    fn signed_file(dir: &Path, subject: &str) -> (Vec<u8>, Vec<u8>) {
        let ca = pki::make_ca(dir, "ca", "/DC=test/CN=Update CA", 2);
        pki::issue(dir, &ca, subject, &dir.join("s.key"), &dir.join("s.pem"), 2);
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("file"), &content).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sign-image");
        let out = Command::new(script)
            .arg(dir.join("file"))
            .args(["--cert", "s.pem", "--key", "s.key"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (content, std::fs::read(&ca.cert).unwrap())
    }

    #[test]
    fn a_file_signed_by_sign_image_verifies_and_tampering_does_not() {
        let t = tempfile::tempdir().unwrap();
        let (content, ca) = signed_file(
            t.path(),
            "/DC=ch/DC=cern/OU=computers/CN=cvm-sign02.cern.ch",
        );
        let signed = std::fs::read(t.path().join("file")).unwrap();
        assert_eq!(signed.len(), content.len() + 2 * BLOCK);
        assert_eq!(strip(signed.clone()), content);
        assert_eq!(strip(content.clone()), content);
        let trust = Trust::from_pem(&ca).unwrap();
        assert_eq!(trust.verify(signed.clone()).unwrap(), content);

        let mut changed = signed.clone();
        changed[10] ^= 1;
        assert!(trust
            .verify(changed)
            .unwrap_err()
            .contains("does not match"));
        let unsigned = trust.verify(content.clone()).unwrap_err();
        assert!(unsigned.starts_with("no signature block"), "{unsigned}");
        // Another CA does not vouch for the signer.
        let other = tempfile::tempdir().unwrap();
        let (_, other_ca) = signed_file(
            other.path(),
            "/DC=ch/DC=cern/OU=computers/CN=cvm-sign02.cern.ch",
        );
        let e = Trust::from_pem(&other_ca)
            .unwrap()
            .verify(signed)
            .unwrap_err();
        assert!(e.contains("not issued by a trusted CA"), "{e}");
        assert!(Trust::from_pem(b"no certificate").is_none());
    }

    #[test]
    fn a_signer_that_is_not_the_signing_host_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (_, ca) = signed_file(t.path(), "/DC=ch/DC=cern/OU=computers/CN=someone-else");
        let signed = std::fs::read(t.path().join("file")).unwrap();
        let e = Trust::from_pem(&ca).unwrap().verify(signed).unwrap_err();
        assert!(
            e.starts_with("signed by CN=someone-else,OU=computers,DC=cern,DC=ch, not by"),
            "{e}"
        );
    }
}
