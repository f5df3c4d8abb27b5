//! The `[ucernvm-begin]` … `[ucernvm-end]` block (spec §5.6), with the original tool's exact
//! rules, byte for byte:
//!
//! * input is split on `\n` only; a final line without `\n` is ignored; lines are compared
//!   verbatim (no trimming, so `\r\n` breaks the markers);
//! * a line equal to `[ucernvm-end]` stops parsing of the whole input, inside the block or not;
//! * inside the block a line is split at the first `=`; lines without `=` are ignored;
//! * a value that is `YES`/`ON`/`TRUE` (any case) becomes `1`, `NO`/`OFF`/`FALSE` becomes `0`;
//! * the key is ASCII upper-cased and printed as `_UCONTEXT_<KEY>=<value>`, unquoted;
//! * the original prints key and value as C strings, so each is cut at its first NUL byte.

use std::io::{self, Write};

const BEGIN: &[u8] = b"[ucernvm-begin]";
const END: &[u8] = b"[ucernvm-end]";

/// One `key=value` line of the block, after normalisation. Bytes, because user data need not
/// be UTF-8 and the output must reproduce it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Upper-cased key, without the `_UCONTEXT_` prefix.
    pub key: Vec<u8>,
    /// Value after the yes/no normalisation, as given otherwise.
    pub value: Vec<u8>,
}

impl ContextEntry {
    /// The line the original tool prints, including the trailing newline.
    pub fn ucontext_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.key.len() + self.value.len() + 12);
        line.extend_from_slice(b"_UCONTEXT_");
        line.extend_from_slice(until_nul(&self.key));
        line.push(b'=');
        line.extend_from_slice(until_nul(&self.value));
        line.push(b'\n');
        line
    }

    /// The value as the boot loader itself interprets it: one pair of matching surrounding
    /// quotes removed (spec §5.6 recommendation), cut at NUL like the printed form.
    pub fn interpreted_value(&self) -> String {
        let v = until_nul(&self.value);
        let v = match v {
            [b'"', inner @ .., b'"'] | [b'\'', inner @ .., b'\''] => inner,
            _ => v,
        };
        String::from_utf8_lossy(v).into_owned()
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or(bytes)
}

/// Parses the µCernVM block out of (decoded) user data.
pub fn parse_block(input: &[u8]) -> Vec<ContextEntry> {
    let mut entries = Vec::new();
    let mut in_block = false;
    let mut rest = input;
    // Only complete lines are processed: the loop ends when no `\n` remains.
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(nl);
        rest = after.get(1..).unwrap_or_default();
        if line == BEGIN {
            in_block = true;
            continue;
        }
        if line == END {
            break;
        }
        if !in_block {
            continue;
        }
        let mut key_value = line.splitn(2, |&b| b == b'=');
        let (Some(key), Some(value)) = (key_value.next(), key_value.next()) else {
            continue;
        };
        entries.push(ContextEntry {
            key: key.to_ascii_uppercase(),
            value: normalise_value(value),
        });
    }
    entries
}

fn normalise_value(value: &[u8]) -> Vec<u8> {
    let upper = value.to_ascii_uppercase();
    match upper.as_slice() {
        b"YES" | b"ON" | b"TRUE" => b"1".to_vec(),
        b"NO" | b"OFF" | b"FALSE" => b"0".to_vec(),
        _ => value.to_vec(),
    }
}

/// Writes entries in the `ucontext` format (the file the OS sources and greps).
pub fn write_ucontext(entries: &[ContextEntry], out: &mut impl Write) -> io::Result<()> {
    for e in entries {
        out.write_all(&e.ucontext_line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(input: &[u8]) -> String {
        let mut out = Vec::new();
        write_ucontext(&parse_block(input), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn documented_example() {
        let ud = b"[amiconfig]\nplugins=cernvm\n[ucernvm-begin]\nresize_rootfs=off\n\
                   cvmfs_branch=cernvm-prod.cern.ch\nuseglideinWMS=off\n[ucernvm-end]\n";
        assert_eq!(
            render(ud),
            "_UCONTEXT_RESIZE_ROOTFS=0\n_UCONTEXT_CVMFS_BRANCH=cernvm-prod.cern.ch\n\
             _UCONTEXT_USEGLIDEINWMS=0\n"
        );
    }

    #[test]
    fn booleans_are_normalised_case_insensitively() {
        let ud = b"[ucernvm-begin]\na=Yes\nb=oN\nc=TRUE\nd=nO\ne=Off\nf=false\ng=yess\nh=1\n";
        assert_eq!(
            render(ud),
            "_UCONTEXT_A=1\n_UCONTEXT_B=1\n_UCONTEXT_C=1\n_UCONTEXT_D=0\n_UCONTEXT_E=0\n\
             _UCONTEXT_F=0\n_UCONTEXT_G=yess\n_UCONTEXT_H=1\n"
        );
    }

    #[test]
    fn first_equals_splits_and_values_keep_case_and_quotes() {
        let ud = b"[ucernvm-begin]\ncvmfs_http_proxy=\"http://p:3128;DIRECT\"\nurl=a=b=c\n";
        assert_eq!(
            render(ud),
            "_UCONTEXT_CVMFS_HTTP_PROXY=\"http://p:3128;DIRECT\"\n_UCONTEXT_URL=a=b=c\n"
        );
    }

    #[test]
    fn final_line_without_newline_is_ignored() {
        assert_eq!(render(b"[ucernvm-begin]\na=1\nb=2"), "_UCONTEXT_A=1\n");
    }

    #[test]
    fn end_marker_stops_everything_even_before_begin() {
        assert_eq!(render(b"[ucernvm-end]\n[ucernvm-begin]\na=1\n"), "");
        assert_eq!(
            render(b"[ucernvm-begin]\na=1\n[ucernvm-end]\n[ucernvm-begin]\nb=2\n"),
            "_UCONTEXT_A=1\n"
        );
    }

    #[test]
    fn second_begin_keeps_block_open() {
        assert_eq!(
            render(b"[ucernvm-begin]\na=1\n[ucernvm-begin]\nb=2\n"),
            "_UCONTEXT_A=1\n_UCONTEXT_B=2\n"
        );
    }

    #[test]
    fn markers_are_compared_verbatim() {
        assert_eq!(render(b"[ucernvm-begin]\r\na=1\r\n"), "");
        assert_eq!(render(b" [ucernvm-begin]\na=1\n"), "");
        assert_eq!(render(b"[UCERNVM-BEGIN]\na=1\n"), "");
    }

    #[test]
    fn empty_keys_and_values_and_lines_without_equals() {
        assert_eq!(
            render(b"[ucernvm-begin]\n=v\nk=\njust text\n\n"),
            "_UCONTEXT_=v\n_UCONTEXT_K=\n"
        );
    }

    #[test]
    fn crlf_values_keep_their_carriage_return() {
        let mut out = Vec::new();
        write_ucontext(&parse_block(b"[ucernvm-begin]\nkey=on\r\n"), &mut out).unwrap();
        assert_eq!(out, b"_UCONTEXT_KEY=on\r\n");
    }

    #[test]
    fn non_ascii_bytes_pass_through_and_only_ascii_is_upper_cased() {
        let mut out = Vec::new();
        write_ucontext(
            &parse_block(b"[ucernvm-begin]\nk\xc3\xa9y=v\xff\n"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"_UCONTEXT_K\xc3\xa9Y=v\xff\n");
    }

    #[test]
    fn nul_bytes_cut_key_and_value_like_c_strings() {
        let mut out = Vec::new();
        write_ucontext(&parse_block(b"[ucernvm-begin]\nab\0cd=ef\0gh\n"), &mut out).unwrap();
        assert_eq!(out, b"_UCONTEXT_AB=ef\n");
    }

    #[test]
    fn interpreted_value_strips_one_pair_of_matching_quotes() {
        let e = &parse_block(b"[ucernvm-begin]\np=\"http://p:3128;DIRECT\"\nq='x'\nr=\"y'\n")[..];
        assert_eq!(e[0].interpreted_value(), "http://p:3128;DIRECT");
        assert_eq!(e[1].interpreted_value(), "x");
        assert_eq!(e[2].interpreted_value(), "\"y'");
    }
}
