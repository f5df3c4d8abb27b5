//! Post-processing of raw user data before the block is parsed (spec §5.5).

use std::io::Read;

use flate2::read::GzDecoder;

/// Decompressed user data larger than this is refused (a gzip bomb must not fill the RAM of
/// the initramfs).
pub const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

/// Why user data could not be decoded. Decoding failures are not fatal: the boot goes on
/// with the raw bytes.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("user data looks gzip-compressed but does not decompress: {0}")]
    BadGzip(std::io::Error),
    #[error("gzip-compressed user data expands to more than {MAX_DECOMPRESSED} bytes")]
    TooLarge,
}

/// Returns the user data as the rest of the boot sees it: gunzipped if it is gzip data,
/// unchanged otherwise. On a decoding error the raw bytes are returned with the error, so the
/// caller can log it and go on (as the original, which keeps the data when gunzip fails).
pub fn decode_user_data(raw: &[u8]) -> (Vec<u8>, Option<UserDataError>) {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return (raw.to_vec(), None);
    }
    let mut out = Vec::new();
    let mut decoder = GzDecoder::new(raw).take(MAX_DECOMPRESSED + 1);
    match decoder.read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > MAX_DECOMPRESSED => {
            (raw.to_vec(), Some(UserDataError::TooLarge))
        }
        Ok(_) => (out, None),
        Err(e) => (raw.to_vec(), Some(UserDataError::BadGzip(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_data_is_unchanged() {
        let (d, err) = decode_user_data(b"[ucernvm-begin]\n");
        assert_eq!(d, b"[ucernvm-begin]\n");
        assert!(err.is_none());
    }

    #[test]
    fn gzip_data_is_decompressed() {
        let (d, err) = decode_user_data(&gzip(b"[ucernvm-begin]\na=1\n"));
        assert_eq!(d, b"[ucernvm-begin]\na=1\n");
        assert!(err.is_none());
    }

    #[test]
    fn truncated_gzip_keeps_raw_bytes_and_reports() {
        let g = gzip(&vec![b'x'; 10_000]);
        let cut = &g[..g.len() / 2];
        let (d, err) = decode_user_data(cut);
        assert_eq!(d, cut);
        assert!(matches!(err, Some(UserDataError::BadGzip(_))));
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let g = gzip(&vec![0u8; (MAX_DECOMPRESSED + 10) as usize]);
        let (d, err) = decode_user_data(&g);
        assert_eq!(d, g);
        assert!(matches!(err, Some(UserDataError::TooLarge)));
    }
}
