//! Splits the user data µCernVM saved (`/mnt/.rw/context/user-data`, byte-exact, maybe gzip'd)
//! into what the two consumers of the CernVM OS read (spec §5.10, §5.11): amiconfig INI text and
//! `#cloud-config` documents. A plain file is one or the other; a MIME multipart message may
//! carry both (and a `text/ucernvm` part for the boot loader, which is ignored here). MIME
//! decoding (base64, quoted-printable, gzip'd parts) is the boot loader's, so both sides read
//! the same message the same way.

use ucernvm_init::context::{decode_user_data, mime};

/// First line of a cloud-config document.
pub const CLOUD_CONFIG_HEADER: &str = "#cloud-config";

/// The parts of the user data this OS acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Split {
    /// Text that amiconfig would read (INI sections), in order of appearance.
    pub amiconfig: Vec<String>,
    /// `#cloud-config` documents, in order of appearance.
    pub cloud_configs: Vec<String>,
    /// Parts that were skipped, with the reason (shown in the log).
    pub skipped: Vec<String>,
}

fn is_cloud_config(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end() == CLOUD_CONFIG_HEADER)
}

/// Sorts the user data into amiconfig text and cloud-config documents.
pub fn split(raw: &[u8]) -> Split {
    let (data, _gzip_error) = decode_user_data(raw);
    let mut out = Split::default();
    let parts = mime::parts(&data);
    if parts.is_empty() {
        let text = String::from_utf8_lossy(&data).into_owned();
        if is_cloud_config(&text) {
            out.cloud_configs.push(text);
        } else {
            out.amiconfig.push(text);
        }
        return out;
    }
    for part in parts {
        let text = String::from_utf8_lossy(&part.body).into_owned();
        let ctype = part.content_type.as_str();
        if ctype == "text/cloud-config" || is_cloud_config(&text) {
            out.cloud_configs.push(text);
        } else if ctype.starts_with("text/") {
            // amiconfig keeps INI lines wherever they are (text/amiconfig-user-data,
            // text/plain, even a text/ucernvm part); the INI reader skips what is not INI.
            out.amiconfig.push(text);
        } else {
            out.skipped.push(format!("a MIME part of type {ctype}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn plain_amiconfig_and_plain_cloud_config() {
        let s = split(b"[amiconfig]\nplugins=cernvm\n[cernvm]\nusers=a:a:pw\n");
        assert_eq!(s.amiconfig.len(), 1);
        assert!(s.cloud_configs.is_empty());
        let s = split(b"\n#cloud-config\nusers:\n  - name: a\n");
        assert_eq!(s.cloud_configs.len(), 1);
        assert!(s.amiconfig.is_empty());
    }

    #[test]
    fn mime_with_ucernvm_amiconfig_and_base64_cloud_config() {
        let cc = base64::engine::general_purpose::STANDARD
            .encode("#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAA k\n");
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
             --XX\nContent-Type: text/ucernvm\n\n[ucernvm-begin]\ncvmfs_branch=x\n[ucernvm-end]\n\
             --XX\nContent-Type: text/amiconfig-user-data\n\n[cernvm]\nusers=u:u:p\n\
             --XX\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\n{cc}\n\
             --XX\nContent-Type: application/octet-stream\n\nxyz\n--XX--\n"
        );
        let s = split(msg.as_bytes());
        assert_eq!(s.cloud_configs.len(), 1);
        assert!(s.cloud_configs[0].contains("ssh-ed25519 AAAA k"));
        assert_eq!(
            s.amiconfig.len(),
            2,
            "the ucernvm part and the amiconfig part"
        );
        assert!(s.amiconfig[1].contains("users=u:u:p"));
        assert_eq!(
            s.skipped,
            vec!["a MIME part of type application/octet-stream"]
        );
    }

    #[test]
    fn gzip_user_data_is_read_too() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"#cloud-config\nusers: []\n").unwrap();
        let s = split(&gz.finish().unwrap());
        assert_eq!(s.cloud_configs, vec!["#cloud-config\nusers: []\n"]);
    }
}
