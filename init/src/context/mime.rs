//! MIME multipart user data (spec §5.10). The original only line-scans the raw bytes, which
//! finds the µCernVM block in plain-text parts. As recommended, we also decode parts that the
//! raw scan cannot read (base64, quoted-printable, gzip) and scan their text too, after the raw
//! scan, so results for inputs that worked before stay the same.

use base64::Engine as _;

use super::ucernvm_block::{parse_block, ContextEntry};
use super::user_data::decode_user_data;

/// Nested multiparts deeper than this are not followed.
const MAX_DEPTH: usize = 4;

/// One leaf part of a MIME message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// Lower-cased media type, e.g. `text/ucernvm`.
    pub content_type: String,
    /// Decoded body.
    pub body: Vec<u8>,
    /// True when the raw bytes did not show the text as is (base64, quoted-printable, gzip).
    pub was_encoded: bool,
}

/// The leaf parts of `data` if it is a MIME multipart message, else an empty list.
pub fn parts(data: &[u8]) -> Vec<MimePart> {
    let mut out = Vec::new();
    collect(data, 0, &mut out);
    out
}

/// The µCernVM block entries: raw scan first, then the decoded parts.
pub fn scan_user_data(data: &[u8]) -> Vec<ContextEntry> {
    let mut entries = parse_block(data);
    for p in parts(data) {
        if p.was_encoded && p.content_type.starts_with("text/") {
            entries.extend(parse_block(&p.body));
        }
    }
    entries
}

fn collect(data: &[u8], depth: usize, out: &mut Vec<MimePart>) {
    let (headers, body) = split_headers(data);
    let Some(ctype) = header(&headers, "content-type") else {
        return;
    };
    let (media, params) = parse_content_type(&ctype);
    if !media.starts_with("multipart/") || depth > MAX_DEPTH {
        return;
    }
    let Some(boundary) = params.get("boundary") else {
        return;
    };
    for raw_part in split_parts(body, boundary.as_bytes()) {
        let (h, b) = split_headers(raw_part);
        let (media, _) = parse_content_type(
            &header(&h, "content-type").unwrap_or_else(|| "text/plain".to_string()),
        );
        if media.starts_with("multipart/") {
            collect(raw_part, depth + 1, out);
            continue;
        }
        let cte = header(&h, "content-transfer-encoding")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let (mut body, mut encoded) = match cte.as_str() {
            "base64" => (decode_base64(b), true),
            "quoted-printable" => (decode_quoted_printable(b), true),
            _ => (b.to_vec(), false),
        };
        let (unzipped, err) = decode_user_data(&body);
        if err.is_none() && unzipped != body {
            body = unzipped;
            encoded = true;
        }
        out.push(MimePart {
            content_type: media,
            body,
            was_encoded: encoded,
        });
    }
}

/// The first line of `b` (without its `\n`) and what follows it.
fn next_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b'\n') {
        Some(i) => {
            let (line, rest) = b.split_at(i);
            (line, rest.get(1..).unwrap_or_default())
        }
        None => (b, &[]),
    }
}

/// Splits header block and body at the first empty line (LF or CRLF).
fn split_headers(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (line, after) = next_line(rest);
        rest = after;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return (headers, rest);
        }
        let text = String::from_utf8_lossy(line);
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
            continue;
        }
        match text.split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string())),
            // Not a header block at all.
            None => return (Vec::new(), data),
        }
    }
    (headers, rest)
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn parse_content_type(v: &str) -> (String, std::collections::HashMap<String, String>) {
    let mut it = v.split(';');
    let media = it.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = it
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_ascii_lowercase(), v.to_string())
        })
        .collect();
    (media, params)
}

/// The bodies between `--boundary` lines; a missing closing delimiter ends at the data's end.
fn split_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == b'\n').map(|i| pos + i);
        let (line, _) = next_line(rest);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(after_delim) = line.strip_prefix(delim.as_slice()) {
            if let Some(s) = start {
                // The line break before the delimiter belongs to the delimiter.
                let part = body.get(s..pos).unwrap_or_default();
                let part = match part.strip_suffix(b"\n") {
                    Some(p) => p.strip_suffix(b"\r").unwrap_or(p),
                    None => part,
                };
                parts.push(part);
            }
            if after_delim.starts_with(b"--") {
                return parts;
            }
            start = end.map(|e| e + 1);
        }
        match end {
            Some(e) => pos = e + 1,
            None => break,
        }
    }
    if let Some(last) = start.and_then(|s| body.get(s..)).filter(|p| !p.is_empty()) {
        parts.push(last);
    }
    parts
}

fn decode_base64(b: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = b
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .unwrap_or_else(|e| {
            log::warn!("MIME part: malformed base64 ({e}); part ignored");
            Vec::new()
        })
}

fn decode_quoted_printable(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while let Some(&c) = b.get(i) {
        if c == b'=' {
            // Soft line break.
            if b.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str =
        "Content-Type: multipart/mixed; boundary=\"===XYZ==\"\nMIME-Version: 1.0\n\n\
--===XYZ==\nContent-Type: text/amiconfig-user-data; charset=\"us-ascii\"\n\
Content-Transfer-Encoding: 7bit\n\n[amiconfig]\nplugins=cernvm\n\n\
--===XYZ==\nContent-Type: text/ucernvm; charset=\"us-ascii\"\nContent-Transfer-Encoding: 7bit\n\n\
[ucernvm-begin]\ncvmfs_branch=cernvm-prod.cern.ch\n[ucernvm-end]\n\n--===XYZ==--\n";

    #[test]
    fn plain_parts_are_found_by_the_raw_scan_only() {
        let e = scan_user_data(PLAIN.as_bytes());
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].ucontext_line(),
            b"_UCONTEXT_CVMFS_BRANCH=cernvm-prod.cern.ch\n"
        );
        let p = parts(PLAIN.as_bytes());
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].content_type, "text/ucernvm");
        assert!(!p[1].was_encoded);
    }

    #[test]
    fn base64_parts_are_decoded() {
        let block = base64::engine::general_purpose::STANDARD
            .encode("[ucernvm-begin]\nresize_rootfs=off\n[ucernvm-end]\n");
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/ucernvm; \
             charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{block}\r\n--b1--\r\n"
        );
        let e = scan_user_data(msg.as_bytes());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].ucontext_line(), b"_UCONTEXT_RESIZE_ROOTFS=0\n");
    }

    #[test]
    fn quoted_printable_and_broken_boundaries() {
        let msg = "Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\
Content-Type: text/ucernvm\nContent-Transfer-Encoding: quoted-printable\n\n\
[ucernvm-begin]\ncvmfs_http_proxy=3D\"http://p:3128;DIRECT\"\nlong=3Dab=\ncd\n";
        let e = scan_user_data(msg.as_bytes());
        let lines: Vec<_> = e
            .iter()
            .map(|e| String::from_utf8(e.ucontext_line()).unwrap())
            .collect();
        // The raw scan sees the encoded text first (as the original would); the decoded lines
        // follow and win when the file is sourced.
        assert_eq!(
            lines,
            vec![
                "_UCONTEXT_CVMFS_HTTP_PROXY=3D\"http://p:3128;DIRECT\"\n".to_string(),
                "_UCONTEXT_LONG=3Dab=\n".to_string(),
                "_UCONTEXT_CVMFS_HTTP_PROXY=\"http://p:3128;DIRECT\"\n".to_string(),
                "_UCONTEXT_LONG=abcd\n".to_string(),
            ]
        );
    }

    #[test]
    fn garbage_is_not_mime() {
        assert!(parts(b"\x00\xff\x13garbage").is_empty());
        assert!(parts(b"Content-Type: multipart/mixed\n\nno boundary").is_empty());
        assert!(parts(b"").is_empty());
    }
}
