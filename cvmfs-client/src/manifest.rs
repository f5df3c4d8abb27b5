//! The repository manifest `.cvmfspublished` (spec §3).

use crate::hash::{md5_hex, ContentHash};
use crate::signature::{SignatureError, SignedLetter};

/// Errors of manifest parsing and checking.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("incomplete manifest: field {0} missing")]
    Missing(char),
    #[error("manifest field {field}: {reason}")]
    BadField { field: char, reason: String },
    #[error("manifest is for repository {found:?}, not {expected:?}")]
    NameMismatch { expected: String, found: String },
    #[error("manifest root path hash is {0}, expected MD5 of the empty path")]
    RootPathMismatch(String),
    #[error("manifest signature block: {0}")]
    Signature(SignatureError),
}

// The cause is in the message, so it is not also returned as the source.
impl From<SignatureError> for ManifestError {
    fn from(e: SignatureError) -> Self {
        ManifestError::Signature(e)
    }
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `C`: root catalog.
    pub root_catalog: ContentHash,
    /// `B`: uncompressed size of the root catalog.
    pub root_catalog_size: Option<u64>,
    /// `R`: MD5 of the root path.
    pub root_path_md5: String,
    /// `D`: TTL in seconds (informational).
    pub ttl: u64,
    /// `S`: revision.
    pub revision: u64,
    /// `G`: garbage-collectable.
    pub garbage_collectable: bool,
    /// `A`: alternative `.cvmfsalt-` paths.
    pub alt_paths: bool,
    /// `N`: repository name.
    pub fqrn: Option<String>,
    /// `X`: certificate object.
    pub certificate: Option<ContentHash>,
    /// `H`: history database.
    pub history: Option<ContentHash>,
    /// `T`: publish time stamp.
    pub timestamp: Option<u64>,
    /// `M`: meta-info object.
    pub meta_info: Option<ContentHash>,
    /// `Y`: reflog hash.
    pub reflog: Option<ContentHash>,
}

impl Manifest {
    /// Parses the key/value lines of a manifest (the part before `--`). Only complete lines
    /// count; unknown keys are ignored; later occurrences override earlier ones.
    pub fn parse(text: &[u8]) -> Result<Self, ManifestError> {
        let mut fields: std::collections::BTreeMap<u8, String> = Default::default();
        let mut rest = text;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            if line == b"--" {
                break;
            }
            if line.is_empty() {
                continue;
            }
            let value = String::from_utf8_lossy(&line[1..]).into_owned();
            fields.insert(line[0], value);
        }
        let get = |k: char| fields.get(&(k as u8)).map(String::as_str);
        let need = |k: char| get(k).ok_or(ManifestError::Missing(k));
        let hash = |k: char, v: &str| {
            v.parse::<ContentHash>()
                .map_err(|e| ManifestError::BadField {
                    field: k,
                    reason: e.to_string(),
                })
        };
        let number = |k: char, v: &str| {
            v.parse::<u64>().map_err(|_| ManifestError::BadField {
                field: k,
                reason: format!("{v:?} is not a decimal number"),
            })
        };
        let opt_hash = |k: char| get(k).map(|v| hash(k, v)).transpose();
        let opt_number = |k: char| get(k).map(|v| number(k, v)).transpose();
        Ok(Manifest {
            root_catalog: hash('C', need('C')?)?,
            root_catalog_size: opt_number('B')?,
            root_path_md5: need('R')?.to_string(),
            ttl: number('D', need('D')?)?,
            revision: number('S', need('S')?)?,
            garbage_collectable: get('G') == Some("yes"),
            alt_paths: get('A') == Some("yes"),
            fqrn: get('N').map(str::to_string),
            certificate: opt_hash('X')?,
            history: opt_hash('H')?,
            timestamp: opt_number('T')?,
            meta_info: opt_hash('M')?,
            reflog: opt_hash('Y')?,
        })
    }

    /// The key/value lines (the letter that gets signed), in the order servers write them:
    /// `C B R D S G A` then the optional `N X H T M Y`.
    pub fn to_letter(&self) -> Vec<u8> {
        let mut t = String::new();
        let mut line = |k: char, v: &str| {
            t.push(k);
            t.push_str(v);
            t.push('\n');
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        line('C', &self.root_catalog.to_string());
        if let Some(b) = self.root_catalog_size {
            line('B', &b.to_string());
        }
        line('R', &self.root_path_md5);
        line('D', &self.ttl.to_string());
        line('S', &self.revision.to_string());
        line('G', yes_no(self.garbage_collectable));
        line('A', yes_no(self.alt_paths));
        if let Some(n) = &self.fqrn {
            line('N', n);
        }
        for (k, h) in [('X', &self.certificate), ('H', &self.history)] {
            if let Some(h) = h {
                line(k, &h.to_string());
            }
        }
        if let Some(ts) = self.timestamp {
            line('T', &ts.to_string());
        }
        for (k, h) in [('M', &self.meta_info), ('Y', &self.reflog)] {
            if let Some(h) = h {
                line(k, &h.to_string());
            }
        }
        t.into_bytes()
    }

    /// Splits a downloaded `.cvmfspublished`, checks the digest line, parses the fields and
    /// runs the semantic checks of §3.4 (name, root path). The RSA signature is checked by the
    /// caller with the certificate named in the manifest.
    pub fn parse_signed<'a>(
        buf: &'a [u8],
        fqrn: &str,
    ) -> Result<(Manifest, SignedLetter<'a>), ManifestError> {
        let letter = SignedLetter::parse(buf)?;
        let m = Manifest::parse(letter.letter)?;
        m.check_identity(fqrn)?;
        Ok((m, letter))
    }

    /// §3.4 checks 1 and 2.
    pub fn check_identity(&self, fqrn: &str) -> Result<(), ManifestError> {
        if self.fqrn.as_deref() != Some(fqrn) {
            return Err(ManifestError::NameMismatch {
                expected: fqrn.to_string(),
                found: self.fqrn.clone().unwrap_or_default(),
            });
        }
        if self.root_path_md5 != md5_hex(b"") {
            return Err(ManifestError::RootPathMismatch(self.root_path_md5.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_dir;

    #[test]
    fn fixture_manifest() {
        let buf = std::fs::read(fixture_dir().join("srv/cvmfs/demo.cernvm.test/.cvmfspublished"))
            .unwrap();
        let (m, _) = Manifest::parse_signed(&buf, "demo.cernvm.test").unwrap();
        assert_eq!(
            m.root_catalog.to_string(),
            "aba5b83589bd346cdc5f227346927f1428addde2"
        );
        assert_eq!(m.root_catalog_size, Some(26624));
        assert_eq!(m.ttl, 240);
        assert_eq!(m.revision, 4);
        assert!(!m.garbage_collectable);
        assert_eq!(
            m.certificate.unwrap().to_string(),
            "ff747b2d93d762abd88a75d9caee27708ef7dc7d"
        );
        assert_eq!(
            m.history.unwrap().to_string(),
            "fc9002584ae3661c3cf0a55eaca4e657a216a3e9"
        );
        assert_eq!(m.timestamp, Some(1795828052));
        assert!(matches!(
            Manifest::parse_signed(&buf, "other.cern.ch"),
            Err(ManifestError::NameMismatch { .. })
        ));
    }

    #[test]
    fn letter_round_trip_reproduces_the_fixture() {
        let buf = std::fs::read(fixture_dir().join("srv/cvmfs/demo.cernvm.test/.cvmfspublished"))
            .unwrap();
        let letter = SignedLetter::parse(&buf).unwrap().letter;
        let m = Manifest::parse(letter).unwrap();
        assert_eq!(m.to_letter(), letter);
    }

    #[test]
    fn parsing_rules() {
        assert!(matches!(
            Manifest::parse(b"Cda39a3ee5e6b4b0d3255bfef95601890afd80709\nRd41d8cd98f00b204e9800998ecf8427e\nD240\n"),
            Err(ManifestError::Missing('S'))
        ));
        // Unterminated last line is ignored; later keys override; unknown keys ignored.
        let m = Manifest::parse(
            b"Cda39a3ee5e6b4b0d3255bfef95601890afd80709\nRd41d8cd98f00b204e9800998ecf8427e\n\
              D240\nS1\nS7\nQwhatever\n\nGyes\nNfoo",
        )
        .unwrap();
        assert_eq!(m.revision, 7);
        assert!(m.garbage_collectable);
        assert_eq!(m.fqrn, None);
        assert!(matches!(
            Manifest::parse(b"Cxyz\nRd41d8cd98f00b204e9800998ecf8427e\nD240\nS1\n"),
            Err(ManifestError::BadField { field: 'C', .. })
        ));
        assert!(matches!(
            Manifest::parse(
                b"Cda39a3ee5e6b4b0d3255bfef95601890afd80709\nRd41d8cd98f00b204e9800998ecf8427e\nD2x\nS1\n"
            ),
            Err(ManifestError::BadField { field: 'D', .. })
        ));
    }
}
