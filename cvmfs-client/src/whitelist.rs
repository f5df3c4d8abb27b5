//! The repository whitelist `.cvmfswhitelist` (spec §4.1–4.3): which certificates may sign
//! manifests of a repository, until when. Signed by the repository master key.

use cvmfs_config::calendar::{timestamp_text, utc_fields};

use crate::hash::{Algorithm, ContentHash};
use crate::signature::{verify_whitelist_signature, NamedKey, SignatureError, SignedLetter};

/// Errors of whitelist verification.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    #[error("whitelist is empty")]
    Empty,
    #[error("malformed whitelist: {0}")]
    Malformed(String),
    #[error("whitelist expired at {expiry} UTC")]
    Expired { expiry: String },
    #[error("whitelist is for repository {found:?}, not {expected:?}")]
    NameMismatch { expected: String, found: String },
    #[error("PKCS#7 whitelists (Vpkcs7) are not supported: this client verifies whitelists with the repository master key only")]
    Pkcs7Unsupported,
    #[error("whitelist signature: {0}")]
    Signature(SignatureError),
    #[error("certificate {0} is not listed in the whitelist")]
    CertificateNotListed(String),
}

// The cause is in the message, so it is not also returned as the source.
impl From<SignatureError> for WhitelistError {
    fn from(e: SignatureError) -> Self {
        WhitelistError::Signature(e)
    }
}

/// A verified whitelist.
#[derive(Debug, Clone)]
pub struct Whitelist {
    /// Expiry as (year, month, day, hour, minute, second), UTC.
    pub expiry: [u32; 6],
    pub fqrn: String,
    pub fingerprints: Vec<ContentHash>,
    /// The whitelist asks for an X.509 CA-chain check of the certificate (`Wcachain`).
    pub requires_ca_chain: bool,
}

impl Whitelist {
    /// Parses and verifies `buf`: layout, expiry against `now` (seconds since the epoch),
    /// repository name and the master-key signature.
    pub fn verify(
        buf: &[u8],
        fqrn: &str,
        master_keys: &[NamedKey],
        now: i64,
    ) -> Result<Whitelist, WhitelistError> {
        if buf.is_empty() {
            return Err(WhitelistError::Empty);
        }
        let letter = SignedLetter::parse(buf)?;
        let text = String::from_utf8_lossy(letter.letter);
        let mut lines = text.split('\n');
        let issued = lines.next().unwrap_or_default();
        if issued.len() != 14 {
            return Err(WhitelistError::Malformed(format!(
                "line 1 (issue time) {issued:?} is not 14 characters"
            )));
        }
        let expiry_line = lines.next().unwrap_or_default();
        if expiry_line.len() != 15 || !expiry_line.starts_with('E') {
            return Err(WhitelistError::Malformed(format!(
                "line 2 (expiry) {expiry_line:?} is not E + 14 digits"
            )));
        }
        let expiry = parse_timestamp(&expiry_line[1..]).ok_or_else(|| {
            WhitelistError::Malformed(format!("expiry {expiry_line:?} is not a valid date"))
        })?;
        let expiry_text = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            expiry[0], expiry[1], expiry[2], expiry[3], expiry[4], expiry[5]
        );
        // Valid while (year, month, day, hour) of now is strictly before that of the expiry.
        let (y, m, d, h) = utc_fields(now);
        if (y, m, d, h) >= (expiry[0], expiry[1], expiry[2], expiry[3]) {
            return Err(WhitelistError::Expired {
                expiry: expiry_text,
            });
        }
        let name_line = lines.next().unwrap_or_default();
        if name_line != format!("N{fqrn}") {
            return Err(WhitelistError::NameMismatch {
                expected: fqrn.to_string(),
                found: name_line.strip_prefix('N').unwrap_or(name_line).to_string(),
            });
        }
        let mut fingerprints = Vec::new();
        let mut requires_ca_chain = false;
        for line in lines {
            match line {
                "Vpkcs7" => return Err(WhitelistError::Pkcs7Unsupported),
                "Wcachain" => requires_ca_chain = true,
                _ => {
                    if let Some(h) = parse_fingerprint(line) {
                        fingerprints.push(h);
                    }
                }
            }
        }
        verify_whitelist_signature(master_keys, &letter)?;
        Ok(Whitelist {
            expiry,
            fqrn: fqrn.to_string(),
            fingerprints,
            requires_ca_chain,
        })
    }

    /// Checks that `cert_der`'s fingerprint is listed.
    pub fn check_certificate(
        &self,
        cert: &crate::signature::Certificate,
    ) -> Result<(), WhitelistError> {
        if self
            .fingerprints
            .iter()
            .any(|f| cert.fingerprint(f.algorithm) == *f)
        {
            Ok(())
        } else {
            Err(WhitelistError::CertificateNotListed(fingerprint_text(
                &cert.fingerprint(Algorithm::Sha1),
            )))
        }
    }
}

/// The letter of a whitelist (§4.1) issued at `issued`, valid until `expires` (Unix times),
/// listing `fingerprints`, with the `Wcachain` line if `ca_chain`; sign it with the master key.
pub fn whitelist_letter(
    issued: i64,
    expires: i64,
    fqrn: &str,
    fingerprints: &[ContentHash],
    ca_chain: bool,
) -> Vec<u8> {
    let mut t = format!(
        "{}\nE{}\nN{fqrn}\n",
        timestamp_text(issued),
        timestamp_text(expires)
    );
    if ca_chain {
        t.push_str("Wcachain\n");
    }
    for f in fingerprints {
        t.push_str(&fingerprint_text(f));
        t.push('\n');
    }
    t.into_bytes()
}

/// `AB:CD:…` form of a fingerprint, as whitelists list it.
pub fn fingerprint_text(h: &ContentHash) -> String {
    let hex = h.hex().to_ascii_uppercase();
    let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
    let suffix = h.algorithm.text_suffix().to_ascii_uppercase();
    format!("{}{}", pairs.join(":"), suffix)
}

/// Parses a fingerprint line: stop at space, tab or `#`, drop colons, lower-case.
pub fn parse_fingerprint(line: &str) -> Option<ContentHash> {
    let end = line.find([' ', '\t', '#']).unwrap_or(line.len());
    let text: String = line[..end].chars().filter(|&c| c != ':').collect();
    text.to_ascii_lowercase().parse().ok()
}

/// `YYYYMMDDhhmmss` → fields; `None` if not digits or out of range.
fn parse_timestamp(s: &str) -> Option<[u32; 6]> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| s[a..b].parse::<u32>().ok();
    let t = [
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(8, 10)?,
        n(10, 12)?,
        n(12, 14)?,
    ];
    let valid =
        (1..=12).contains(&t[1]) && (1..=31).contains(&t[2]) && t[3] < 24 && t[4] < 60 && t[5] < 61;
    valid.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{load_public_key, Certificate};
    use crate::testing::fixture_dir;

    fn fixture() -> (Vec<u8>, NamedKey) {
        let dir = fixture_dir();
        (
            std::fs::read(dir.join("srv/cvmfs/demo.cernvm.test/.cvmfswhitelist")).unwrap(),
            load_public_key(&dir.join("keys/demo.cernvm.test.pub")).unwrap(),
        )
    }

    // 2026-11-28 12:00:00 UTC
    const NOW: i64 = 1_795_867_200;

    #[test]
    fn fixture_whitelist_lists_the_certificate() {
        let (wl, key) = fixture();
        let w = Whitelist::verify(&wl, "demo.cernvm.test", &[key], NOW).unwrap();
        assert_eq!(w.expiry, [2036, 11, 25, 1, 7, 33]);
        let cert = Certificate::from_pem(
            &std::fs::read(fixture_dir().join("keys/demo.cernvm.test.crt")).unwrap(),
        )
        .unwrap();
        w.check_certificate(&cert).unwrap();
        assert_eq!(
            fingerprint_text(&cert.fingerprint(Algorithm::Sha1)),
            "1D:AD:09:DD:0B:21:EC:02:55:0A:F2:14:55:1C:0C:79:63:C6:8E:46"
        );
    }

    #[test]
    fn expiry_is_compared_to_the_hour() {
        let (wl, key) = fixture();
        // 2036-11-25 00:59:59 is valid; 01:00:00 (same hour as the expiry) is not.
        let valid = 2_111_187_599;
        assert_eq!(utc_fields(valid), (2036, 11, 25, 0));
        Whitelist::verify(&wl, "demo.cernvm.test", std::slice::from_ref(&key), valid).unwrap();
        assert!(matches!(
            Whitelist::verify(&wl, "demo.cernvm.test", &[key], valid + 1),
            Err(WhitelistError::Expired { .. })
        ));
    }

    #[test]
    fn foreign_name_and_wrong_key_are_refused() {
        let (wl, key) = fixture();
        assert!(matches!(
            Whitelist::verify(&wl, "other.cern.ch", &[key], NOW),
            Err(WhitelistError::NameMismatch { .. })
        ));
        assert!(matches!(
            Whitelist::verify(&wl, "demo.cernvm.test", &[], NOW),
            Err(WhitelistError::Signature(_))
        ));
    }

    #[test]
    fn letter_reproduces_the_fixture() {
        let (wl, _) = fixture();
        let letter = SignedLetter::parse(&wl).unwrap().letter.to_vec();
        let fp = parse_fingerprint("1D:AD:09:DD:0B:21:EC:02:55:0A:F2:14:55:1C:0C:79:63:C6:8E:46")
            .unwrap();
        // 2026-11-28 01:07:33 and 2036-11-25 01:07:33 UTC.
        assert_eq!(
            whitelist_letter(
                1_795_828_053,
                2_111_188_053,
                "demo.cernvm.test",
                &[fp],
                false
            ),
            letter
        );
    }

    #[test]
    fn fingerprint_lines() {
        let h =
            parse_fingerprint("1D:AD:09:DD:0B:21:EC:02:55:0A:F2:14:55:1C:0C:79:63:C6:8E:46 # key")
                .unwrap();
        assert_eq!(h.hex(), "1dad09dd0b21ec02550af214551c0c7963c68e46");
        let r =
            parse_fingerprint("1D:AD:09:DD:0B:21:EC:02:55:0A:F2:14:55:1C:0C:79:63:C6:8E:46-RMD160")
                .unwrap();
        assert_eq!(r.algorithm, Algorithm::Rmd160);
        assert!(parse_fingerprint("garbage").is_none());
    }
}
