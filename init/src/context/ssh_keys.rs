//! SSH public keys in the user data, for `cvmssh` (spec §13): the initramfs root accepts them
//! besides the original's blank password.
//!
//! The keys are the ones the OS gives its users from `#cloud-config` documents (`os-context`):
//! the top-level `ssh_authorized_keys` and every user's `ssh_authorized_keys`, in a plain
//! document or a MIME part (amiconfig's `[cernvm] users=` carries no keys). The init has no
//! YAML parser: this reads the two list forms cloud-init users write (a block list of `- key`
//! lines, or a one-line flow list `[key, key]`), with plain, single- or double-quoted items.
//! Every key is checked (a known type, base64 key data that names the same type) before it
//! reaches `authorized_keys`; what is not a key is reported, never fatal.

use base64::Engine as _;

use super::mime;
use crate::bytes;

/// The first line of a cloud-config document.
const CLOUD_CONFIG_HEADER: &str = "#cloud-config";
/// The key of the lists read here.
const LIST_KEY: &str = "ssh_authorized_keys:";

/// Key types dropbear accepts in `authorized_keys`.
pub const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-dss",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// What the user data holds for `cvmssh`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshKeys {
    /// `authorized_keys` lines, each once, in order of appearance.
    pub keys: Vec<String>,
    /// Entries that are not usable keys, and why (for a console warning).
    pub problems: Vec<String>,
}

/// The keys of every `#cloud-config` document in `user_data` (decoded user data: plain, or a
/// MIME multipart message).
pub fn from_user_data(user_data: &[u8]) -> SshKeys {
    let parts = mime::parts(user_data);
    let documents: Vec<String> = if parts.is_empty() {
        vec![String::from_utf8_lossy(user_data).into_owned()]
    } else {
        parts
            .into_iter()
            .filter(|p| p.content_type.starts_with("text/"))
            .map(|p| String::from_utf8_lossy(&p.body).into_owned())
            .collect()
    };
    let mut out = SshKeys::default();
    for doc in documents.iter().filter(|d| is_cloud_config(d)) {
        for item in list_items(doc, &mut out.problems) {
            match check_key(&item) {
                Ok(key) if !out.keys.contains(&key) => out.keys.push(key),
                Ok(_) => {}
                Err(why) => out.problems.push(format!(
                    "ssh_authorized_keys: {:?} is not an ssh public key: {why}",
                    shorten(&item)
                )),
            }
        }
    }
    out
}

fn is_cloud_config(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end() == CLOUD_CONFIG_HEADER)
}

/// The start of a long entry, for messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 48;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let mut short: String = s.chars().take(MAX).collect();
    short.push('…');
    short
}

/// Indentation (spaces) and the rest of a line.
fn indent_of(line: &str) -> (usize, &str) {
    let rest = line.trim_start_matches(' ');
    (line.len() - rest.len(), rest)
}

/// A line's content without a trailing ` #` comment (not inside quotes).
fn strip_comment(text: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '#' && prev_space => return text.get(..i).unwrap_or(text).trim_end(),
            None if (c == '"' || c == '\'') && prev_space => quote = Some(c),
            None => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    text.trim_end()
}

/// `"…"` or `'…'` unquoted (YAML's escapes `\"`, `\\` and `''`); plain text as it is.
fn unquote(item: &str) -> Result<String, String> {
    let item = item.trim();
    if let Some(inner) = item.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(e @ ('"' | '\\' | '/')) => out.push(e),
                    Some(other) => return Err(format!("unsupported escape \\{other}")),
                    None => return Err("a lone \\ at the end".into()),
                }
            } else {
                out.push(c);
            }
        }
        return Ok(out);
    }
    if let Some(inner) = item.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Ok(inner.replace("''", "'"));
    }
    if item.starts_with(['|', '>']) {
        return Err("a block scalar (| or >): write the key on one line".into());
    }
    Ok(item.to_string())
}

/// Splits a flow list's inside at commas outside quotes.
fn flow_items(inner: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ',' => {
                items.push(inner.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            None => {}
        }
    }
    items.push(inner.get(start..).unwrap_or_default());
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Adds the unquoted `raw` item, or the reason it cannot be read.
fn push_item(raw: &str, items: &mut Vec<String>, problems: &mut Vec<String>) {
    match unquote(raw) {
        Ok(s) => items.push(s),
        Err(why) => problems.push(format!(
            "ssh_authorized_keys: cannot read {:?}: {why}",
            shorten(raw.trim())
        )),
    }
}

/// The items of every `ssh_authorized_keys:` list of a cloud-config document, unquoted.
fn list_items(doc: &str, problems: &mut Vec<String>) -> Vec<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut items = Vec::new();
    let mut i = 0;
    while let Some(line) = lines.get(i) {
        i += 1;
        let (mut key_indent, mut content) = indent_of(line);
        // `- ssh_authorized_keys:` starts a list item (a user) with this key.
        while let Some(rest) = content.strip_prefix("- ") {
            let (more, after) = indent_of(rest);
            key_indent += 2 + more;
            content = after;
        }
        let Some(value) = content.strip_prefix(LIST_KEY) else {
            continue;
        };
        let value = strip_comment(value).trim();
        if let Some(flow) = value.strip_prefix('[') {
            // A flow list, possibly over several lines.
            let mut text = flow.to_string();
            while !text.contains(']') {
                let Some(next) = lines.get(i) else { break };
                i += 1;
                text.push(' ');
                text.push_str(strip_comment(next).trim());
            }
            let Some(end) = text.find(']') else {
                problems.push("ssh_authorized_keys: a flow list without its ']'".into());
                continue;
            };
            for raw in flow_items(text.get(..end).unwrap_or_default()) {
                push_item(raw, &mut items, problems);
            }
            continue;
        }
        if !value.is_empty() {
            problems.push(format!(
                "ssh_authorized_keys: {:?} is not a list (write each key as a '- ' item)",
                shorten(value)
            ));
            continue;
        }
        // A block list: `- item` lines at one indentation (YAML allows the key's own); deeper
        // lines continue the item before them (a folded plain scalar).
        let mut item_indent: Option<usize> = None;
        let mut current: Option<String> = None;
        while let Some(next) = lines.get(i) {
            let (indent, content) = indent_of(next);
            let content = strip_comment(content);
            if content.is_empty() || content.starts_with('#') {
                i += 1;
                continue;
            }
            let is_item = content == "-" || content.starts_with("- ");
            let at_item_level = match item_indent {
                None => is_item && indent >= key_indent,
                Some(level) => is_item && indent == level,
            };
            if at_item_level {
                item_indent = Some(indent);
                if let Some(done) = current.take() {
                    push_item(&done, &mut items, problems);
                }
                current = Some(content.get(1..).unwrap_or_default().trim().to_string());
            } else if let (Some(level), Some(item)) = (item_indent, current.as_mut()) {
                if indent <= level {
                    break;
                }
                item.push(' ');
                item.push_str(content.trim());
            } else {
                break;
            }
            i += 1;
        }
        if let Some(done) = current {
            push_item(&done, &mut items, problems);
        }
    }
    items
}

/// The length-prefixed fields (SSH `string`s and `mpint`s) a public key blob consists of;
/// `None` unless they fill it exactly.
fn ssh_strings(blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    let mut at = 0usize;
    while at < blob.len() {
        let n = usize::try_from(bytes::u32_be(blob, at)?).ok()?;
        let start = at.checked_add(4)?;
        let end = start.checked_add(n)?;
        fields.push(blob.get(start..end)?);
        at = end;
    }
    Some(fields)
}

/// An `authorized_keys` line: optional options, a known key type, base64 key data of
/// length-prefixed fields whose first names the same type, an optional comment.
pub fn check_key(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("empty".into());
    }
    if line.chars().any(char::is_control) {
        return Err("control characters".into());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| KEY_TYPES.contains(w)) else {
        return Err(format!("no key type ({})", KEY_TYPES.join(", ")));
    };
    let key_type = words.get(at).copied().unwrap_or_default();
    let Some(data) = words.get(at + 1) else {
        return Err(format!("{key_type} without key data"));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the key data is not base64 ({e})"))?;
    let fields = ssh_strings(&blob).ok_or("the key data is truncated or has bytes left over")?;
    if fields.first().copied() != Some(key_type.as_bytes()) || fields.len() < 2 {
        return Err(format!("the key data is not a {key_type} key"));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically real key blob of `key_type` (type name, then some bytes).
    fn blob(key_type: &str) -> String {
        let mut b = (key_type.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(key_type.as_bytes());
        b.extend_from_slice(&[0, 0, 0, 32]);
        b.extend_from_slice(&[7u8; 32]);
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn top_level_and_user_keys_in_block_and_flow_lists() {
        let ed = format!("ssh-ed25519 {} alice@host", blob("ssh-ed25519"));
        let rsa = format!("ssh-rsa {} bob", blob("ssh-rsa"));
        let ec = format!("ecdsa-sha2-nistp256 {}", blob("ecdsa-sha2-nistp256"));
        let doc = format!(
            "#cloud-config\nusers:\n  - name: alice\n    ssh_authorized_keys:\n      - {ed}\n      \
             - \"{rsa}\"   # bob's\n  - name: carol\n    ssh_authorized_keys: ['{ec}', {ed}]\n\
             ssh_authorized_keys:\n- {rsa}\nwrite_files: []\n"
        );
        let k = from_user_data(doc.as_bytes());
        assert_eq!(k.keys, [ed, rsa, ec], "{k:?}");
        assert!(k.problems.is_empty(), "{k:?}");
    }

    #[test]
    fn a_user_entry_that_starts_with_the_key() {
        let ed = format!("ssh-ed25519 {}", blob("ssh-ed25519"));
        let doc =
            format!("#cloud-config\nusers:\n  - ssh_authorized_keys:\n      - {ed}\n    name: a\n");
        assert_eq!(from_user_data(doc.as_bytes()).keys, [ed]);
    }

    #[test]
    fn a_long_key_folded_over_two_lines_and_options_before_the_type() {
        let b = blob("ssh-rsa");
        let (head, tail) = b.split_at(20);
        let doc = format!("#cloud-config\nssh_authorized_keys:\n  - ssh-rsa {head}{tail}\n  - no-pty ssh-rsa {head}\n    {tail} c\n");
        let k = from_user_data(doc.as_bytes());
        // The folded line gets a space where the line broke: not the same key data any more.
        assert_eq!(k.keys, [format!("ssh-rsa {b}")], "{k:?}");
        assert_eq!(k.problems.len(), 1, "{k:?}");
        let opts = format!("no-pty,from=\"10.0.0.1\" ssh-rsa {b} c");
        assert_eq!(check_key(&opts), Ok(opts.clone()));
    }

    #[test]
    fn malformed_keys_are_reported_and_left_out() {
        let ed = blob("ssh-ed25519");
        let doc = format!(
            "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 {ed}\n  - ssh-rsa {ed}\n  \
             - ssh-ed25519 not*base64\n  - hello world\n  - ssh-ed25519\n  - |\n    ssh-ed25519 {ed}\n\
             users:\n  - name: x\n    ssh_authorized_keys: ssh-ed25519 {ed}\n"
        );
        let k = from_user_data(doc.as_bytes());
        assert_eq!(k.keys, [format!("ssh-ed25519 {ed}")]);
        let all = k.problems.join("\n");
        for why in [
            "is not a ssh-rsa key",
            "not base64",
            "no key type",
            "without key data",
            "block scalar",
            "is not a list",
        ] {
            assert!(all.contains(why), "{why} in {all}");
        }
    }

    #[test]
    fn only_cloud_config_documents_count() {
        let ed = format!("ssh-ed25519 {}", blob("ssh-ed25519"));
        let plain = format!("[cernvm]\nusers=u:u:p\nssh_authorized_keys:\n  - {ed}\n");
        assert_eq!(from_user_data(plain.as_bytes()), SshKeys::default());
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
             --XX\nContent-Type: text/ucernvm\n\n[ucernvm-begin]\ncvmfs_branch=x\n[ucernvm-end]\n\
             --XX\nContent-Type: text/cloud-config\n\n#cloud-config\nssh_authorized_keys: [{ed}]\n\
             --XX--\n"
        );
        assert_eq!(from_user_data(msg.as_bytes()).keys, [ed]);
        assert_eq!(from_user_data(b""), SshKeys::default());
        assert_eq!(from_user_data(&[0xff, 0xfe, 0x00]), SshKeys::default());
    }

    #[test]
    fn truncated_key_data_and_lying_lengths() {
        let mut b = 200u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ssh-ed25519");
        let data = base64::engine::general_purpose::STANDARD.encode(b);
        assert!(check_key(&format!("ssh-ed25519 {data}")).is_err());
        assert!(check_key("ssh-ed25519 AAAA").is_err());
        assert!(check_key("ssh-ed25519 \u{7}").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_user_data_gives_an_answer(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut d = b"#cloud-config\nssh_authorized_keys:\n".to_vec();
            d.extend(data);
            let _ = from_user_data(&d);
        }
    }
}
