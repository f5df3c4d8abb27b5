//! The boot image: a local ISO, or a released one downloaded into the cache (spec §17.5 step 1):
//! `cernvmVersion=latest` is resolved through `<releaseUrl>/latest`, the ISO and its `.sha256`
//! are fetched (two tries), the digest is checked while the file streams in, and when a CA
//! directory is configured the 64 KiB signature block (spec §14.5) must verify with openssl.
//! A cached image is used without the network.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use path_error::{io_err, PathError};
use sha2::{Digest, Sha256};

/// Size of each of the two signature blocks.
pub const SIGNATURE_BLOCK: usize = 32768;
const ARCH: &str = "x86_64";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("boot image {0} not found; give an existing ISO with --iso (or isoPath=)")]
    MissingIso(PathBuf),
    #[error("boot image {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("cannot find the latest CernVM version at {url} ({reason}) and no image is cached in {cache}; check releaseUrl or give --iso")]
    NoLatest {
        url: String,
        reason: String,
        cache: PathBuf,
    },
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}; the download was discarded, try again or check releaseUrl")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("signature check of {image} failed: {reason}; the image was discarded (check caPath)")]
    Signature { image: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] PathError),
}

/// What `create` uses as boot image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub path: PathBuf,
    /// `cernvmVersion` to record: the resolved release, or the ISO path for local images.
    pub version: String,
}

/// A local ISO: canonical path of an existing regular file.
pub fn local_iso(path: &Path) -> Result<ResolvedImage, ImageError> {
    let canonical =
        fs::canonicalize(path).map_err(|_| ImageError::MissingIso(path.to_path_buf()))?;
    if !canonical.is_file() {
        return Err(ImageError::NotAFile(path.to_path_buf()));
    }
    Ok(ResolvedImage {
        version: canonical.display().to_string(),
        path: canonical,
    })
}

/// File name of a released image.
pub fn release_file_name(flavor: &str, version: &str) -> String {
    format!("ucernvm-{flavor}.{version}.cernvm.{ARCH}.iso")
}

/// URL of a released image.
pub fn release_url(base: &str, flavor: &str, version: &str) -> String {
    format!(
        "{base}/ucernvm-images.{version}.cernvm.{ARCH}/{}",
        release_file_name(flavor, version)
    )
}

fn client() -> Result<reqwest::blocking::Client, ImageError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()
        .map_err(|e| ImageError::Download {
            url: String::new(),
            reason: e.to_string(),
        })
}

fn get_text(client: &reqwest::blocking::Client, url: &str) -> Result<String, String> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.text().map_err(|e| e.to_string())
}

/// A version string is used in file names and URLs: letters, digits, `.`, `_`, `-`.
fn sane_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The newest cached image of `flavor` (by modification time).
fn newest_cached(cache: &Path, flavor: &str) -> Option<(PathBuf, String)> {
    let prefix = format!("ucernvm-{flavor}.");
    let suffix = format!(".cernvm.{ARCH}.iso");
    fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let version = name
                .strip_prefix(&prefix)?
                .strip_suffix(&suffix)?
                .to_string();
            let mtime = e.metadata().ok()?.modified().ok()?;
            Some((mtime, e.path(), version))
        })
        .max_by_key(|(m, _, _)| *m)
        .map(|(_, p, v)| (p, v))
}

/// Resolves `version` (`latest` or a release) to a cached, verified image, downloading it if
/// needed.
pub fn released_iso(
    cache: &Path,
    base_url: &str,
    flavor: &str,
    version: &str,
    ca_path: Option<&Path>,
) -> Result<ResolvedImage, ImageError> {
    let client = client()?;
    let version = if version == "latest" {
        let url = format!("{base_url}/latest");
        match get_text(&client, &url) {
            Ok(text) if sane_version(text.trim()) => text.trim().to_string(),
            other => {
                let reason = match other {
                    Ok(text) => format!("unexpected answer {:?}", text.trim()),
                    Err(e) => e,
                };
                return match newest_cached(cache, flavor) {
                    Some((path, v)) => {
                        eprintln!(
                            "cernvm-launch: cannot reach {url} ({reason}); using the cached image {v}"
                        );
                        Ok(ResolvedImage { path, version: v })
                    }
                    None => Err(ImageError::NoLatest {
                        url,
                        reason,
                        cache: cache.to_path_buf(),
                    }),
                };
            }
        }
    } else if sane_version(version) {
        version.to_string()
    } else {
        return Err(ImageError::Download {
            url: base_url.to_string(),
            reason: format!("cernvmVersion {version:?} is not a version"),
        });
    };
    let dest = cache.join(release_file_name(flavor, &version));
    if dest.is_file() {
        return Ok(ResolvedImage {
            path: dest,
            version,
        });
    }
    let url = release_url(base_url, flavor, &version);
    let mut last = None;
    for attempt in 1..=2 {
        match download_verified(&client, &url, &dest, ca_path) {
            Ok(()) => {
                return Ok(ResolvedImage {
                    path: dest,
                    version,
                })
            }
            Err(e @ (ImageError::Checksum { .. } | ImageError::Signature { .. })) => return Err(e),
            Err(e) => {
                if attempt == 1 {
                    eprintln!("cernvm-launch: {e}; trying again");
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("two attempts"))
}

/// Downloads `url` and `url.sha256` into `dest` (through `dest.part`), checking the digest and,
/// with `ca_path`, the signature block.
fn download_verified(
    client: &reqwest::blocking::Client,
    url: &str,
    dest: &Path,
    ca_path: Option<&Path>,
) -> Result<(), ImageError> {
    let sha_url = format!("{url}.sha256");
    let sha_text = get_text(client, &sha_url).map_err(|reason| ImageError::Download {
        url: sha_url.clone(),
        reason,
    })?;
    // The release files hold the whole `sha256sum` line: the digest is the first 64 characters.
    let expected: String = sha_text.trim_start().chars().take(64).collect();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::Download {
            url: sha_url,
            reason: format!("no SHA-256 digest in {:?}", sha_text.trim()),
        });
    }
    let part = dest.with_extension("iso.part");
    let result = (|| {
        let mut resp = client.get(url).send().map_err(|e| ImageError::Download {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !resp.status().is_success() {
            return Err(ImageError::Download {
                url: url.to_string(),
                reason: format!("HTTP {}", resp.status()),
            });
        }
        let total = resp.content_length();
        let mut file = fs::File::create(&part).map_err(io_err("cannot create", &part))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut done: u64 = 0;
        let mut progress = Progress::new(url, total);
        loop {
            let n = resp.read(&mut buf).map_err(|e| ImageError::Download {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io_err("cannot write", &part))?;
            done += n as u64;
            progress.update(done);
        }
        progress.finish(done);
        file.sync_all().map_err(io_err("cannot write", &part))?;
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(ImageError::Checksum {
                url: url.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        if let Some(ca) = ca_path {
            let subject = verify_signature(&part, ca).map_err(|reason| ImageError::Signature {
                image: dest.to_path_buf(),
                reason,
            })?;
            eprintln!("cernvm-launch: image signature OK, signed by {subject}");
        }
        fs::rename(&part, dest).map_err(|e| io_err("cannot write", dest)(e).into())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A progress bar on a terminal, start and end lines otherwise.
struct Progress {
    tty: bool,
    total: Option<u64>,
    last_percent: Option<u64>,
}

impl Progress {
    fn new(url: &str, total: Option<u64>) -> Self {
        let tty = io::stderr().is_terminal();
        eprintln!(
            "cernvm-launch: downloading {url}{}",
            total
                .map(|t| format!(" ({:.1} MB)", t as f64 / 1e6))
                .unwrap_or_default()
        );
        Progress {
            tty,
            total,
            last_percent: None,
        }
    }

    fn update(&mut self, done: u64) {
        let (Some(total), true) = (self.total, self.tty) else {
            return;
        };
        let percent = done * 100 / total.max(1);
        if self.last_percent == Some(percent) {
            return;
        }
        self.last_percent = Some(percent);
        let width = 40;
        let filled = (percent as usize * width / 100).min(width);
        eprint!(
            "\r  [{}{}] {percent:>3}% {:.1}/{:.1} MB",
            "#".repeat(filled),
            " ".repeat(width - filled),
            done as f64 / 1e6,
            total as f64 / 1e6
        );
        let _ = io::stderr().flush();
    }

    fn finish(&self, done: u64) {
        if self.tty && self.total.is_some() {
            eprintln!();
        }
        eprintln!("cernvm-launch: downloaded {:.1} MB", done as f64 / 1e6);
    }
}

/// The string value of `key` in the JSON text of a signature block.
fn block_json(block: &[u8]) -> Result<serde_json::Value, String> {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    serde_json::from_slice(&block[..end])
        .map_err(|e| format!("the signature block is not JSON: {e}"))
}

/// Verifies the signature block of `image` (spec §14.5) the documented way with openssl: the
/// certificate must chain to a CA in `ca_path` (a hashed directory or a PEM file) and its key
/// must verify the SHA-256 signature over the image without its last 32 KiB. Returns the
/// certificate subject.
pub fn verify_signature(image: &Path, ca_path: &Path) -> Result<String, String> {
    use base64::Engine;
    let data = fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    if data.len() <= 2 * SIGNATURE_BLOCK {
        return Err("the image is too small to carry a signature block".into());
    }
    let block_b = &data[data.len() - SIGNATURE_BLOCK..];
    let json = block_json(block_b)?;
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let s = json[k]
            .as_str()
            .ok_or_else(|| format!("the signature block has no {k:?}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("{k} is not base64: {e}"))
    };
    let cert = field("certificate")?;
    let signature = field("signature")?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cert_path = tmp.path().join("certificate.pem");
    let sig_path = tmp.path().join("signature");
    let key_path = tmp.path().join("pubkey.pem");
    let signed_path = tmp.path().join("signed");
    fs::write(&cert_path, &cert).map_err(|e| e.to_string())?;
    fs::write(&sig_path, &signature).map_err(|e| e.to_string())?;
    fs::write(&signed_path, &data[..data.len() - SIGNATURE_BLOCK]).map_err(|e| e.to_string())?;
    let ca_opt = if ca_path.is_dir() {
        "-CApath"
    } else {
        "-CAfile"
    };
    let openssl = |args: &[&std::ffi::OsStr]| -> Result<String, String> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text.trim().replace('\n', " "))
        }
    };
    openssl(&[
        "verify".as_ref(),
        ca_opt.as_ref(),
        ca_path.as_os_str(),
        cert_path.as_os_str(),
    ])
    .map_err(|e| {
        format!(
            "the certificate does not verify against {}: {e}",
            ca_path.display()
        )
    })?;
    let pubkey = openssl(&[
        "x509".as_ref(),
        "-in".as_ref(),
        cert_path.as_os_str(),
        "-pubkey".as_ref(),
        "-noout".as_ref(),
    ])?;
    fs::write(&key_path, pubkey + "\n").map_err(|e| e.to_string())?;
    openssl(&[
        "dgst".as_ref(),
        "-sha256".as_ref(),
        "-verify".as_ref(),
        key_path.as_os_str(),
        "-signature".as_ref(),
        sig_path.as_os_str(),
        signed_path.as_os_str(),
    ])
    .map_err(|e| format!("the signature does not match the image: {e}"))?;
    let subject = openssl(&[
        "x509".as_ref(),
        "-in".as_ref(),
        cert_path.as_os_str(),
        "-noout".as_ref(),
        "-subject".as_ref(),
        "-nameopt".as_ref(),
        "RFC2253".as_ref(),
    ])?;
    Ok(subject.trim_start_matches("subject=").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names() {
        assert_eq!(
            release_url("http://h/releases", "prod", "2026.11-1"),
            "http://h/releases/ucernvm-images.2026.11-1.cernvm.x86_64/ucernvm-prod.2026.11-1.cernvm.x86_64.iso"
        );
        assert!(sane_version("2026.11-1"));
        assert!(!sane_version("../x"));
        assert!(!sane_version("<html>"));
    }

    #[test]
    fn missing_local_iso_is_named() {
        let err = local_iso(Path::new("/nonexistent/u.iso")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("boot image /nonexistent/u.iso not found"));
    }
}
