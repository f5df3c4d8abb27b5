//! Variant symlinks (spec §5.8): `$(NAME)` and `$(NAME:-default)` in symlink targets.
//!
//! Targets are expanded when read (readlink, stat size) with the environment of the client, which
//! includes every configuration parameter (see `Config::environment`). The rules differ from
//! POSIX sh: a variable that is set to the empty string wins over the default, the default
//! starts after the *first* `:-`, and an unterminated `$(` is copied literally.

/// Expands the variables of a raw symlink target.
///
/// `lookup` returns the value of a variable, or `None` if it is not set. A name that is empty or
/// not valid UTF-8 counts as unset (no environment variable can have such a name).
pub fn expand_variant_symlink(raw: &[u8], lookup: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    if !raw.contains(&b'$') {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        // A `$` with at least two more bytes after it, followed by `(`.
        if raw[i] == b'$' && i + 2 < raw.len() && raw[i + 1] == b'(' {
            let open = i + 1;
            match raw[open + 1..].iter().position(|&b| b == b')') {
                None => {
                    // No closing parenthesis: copy `$(` and the next byte unchanged.
                    out.extend_from_slice(&raw[i..i + 3]);
                    i += 3;
                }
                Some(len) => {
                    let inner = &raw[open + 1..open + 1 + len];
                    let (name, default) = split_default(inner);
                    let value = std::str::from_utf8(name)
                        .ok()
                        .filter(|n| !n.is_empty())
                        .and_then(&lookup);
                    match value {
                        Some(v) => out.extend_from_slice(v.as_bytes()),
                        None => out.extend_from_slice(default),
                    }
                    i = open + 1 + len + 1;
                }
            }
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// Splits `NAME:-default` at the first `:-`; without `:-` the default is empty.
fn split_default(inner: &[u8]) -> (&[u8], &[u8]) {
    match inner.windows(2).position(|w| w == b":-") {
        Some(p) => (&inner[..p], &inner[p + 2..]),
        None => (inner, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ARCH" => Some("x86_64".to_string()),
            "EMPTY" => Some(String::new()),
            "OS" => Some("el9".to_string()),
            _ => None,
        }
    }

    fn expand(raw: &str) -> String {
        String::from_utf8(expand_variant_symlink(raw.as_bytes(), env)).expect("utf-8 output")
    }

    #[test]
    fn spec_table() {
        assert_eq!(expand("$(ARCH)/bin"), "x86_64/bin");
        assert_eq!(expand("$(UNSET:-amd64)/lib"), "amd64/lib");
        assert_eq!(expand("$(EMPTY:-dflt)/x"), "/x");
        assert_eq!(expand("$(UNSET)/x"), "/x");
        assert_eq!(expand("/a/$(ARCH"), "/a/$(ARCH");
        assert_eq!(expand("pre$"), "pre$");
        assert_eq!(expand("x$("), "x$(");
        assert_eq!(expand("$()"), "");
    }

    #[test]
    fn no_dollar_is_unchanged() {
        assert_eq!(expand("/usr/lib64/libfoo.so.1"), "/usr/lib64/libfoo.so.1");
        assert_eq!(expand(""), "");
        assert_eq!(expand("(ARCH)"), "(ARCH)");
    }

    #[test]
    fn set_variable_wins_over_default() {
        assert_eq!(expand("$(ARCH:-i686)"), "x86_64");
    }

    #[test]
    fn default_splits_at_first_separator() {
        assert_eq!(expand("$(UNSET:-a:-b)"), "a:-b");
        assert_eq!(expand("$(UNSET:-)"), "");
        assert_eq!(expand("$(:-dflt)"), "dflt");
        // The name is everything before the first `:-`, even if it contains other bytes.
        assert_eq!(expand("$(AR CH:-x)"), "x");
    }

    #[test]
    fn several_variables_and_text() {
        assert_eq!(expand("/opt/$(OS)/$(ARCH)/lib"), "/opt/el9/x86_64/lib");
        assert_eq!(expand("$(ARCH)$(OS)"), "x86_64el9");
        assert_eq!(expand("$$(ARCH)"), "$x86_64");
        assert_eq!(expand("a$b$(ARCH)"), "a$bx86_64");
    }

    #[test]
    fn unterminated_copies_and_continues() {
        // `$(` without any `)` afterwards: copied unchanged.
        assert_eq!(expand("$(AR"), "$(AR");
        assert_eq!(expand("$(A"), "$(A");
        assert_eq!(expand("x/$(ARCH/$(OS"), "x/$(ARCH/$(OS");
        // A later `)` closes the first `$(`, whatever lies between.
        assert_eq!(expand("$(ARCH/$(OS)"), "");
        assert_eq!(expand("$(UNSET:-$(OS)"), "$(OS");
    }

    #[test]
    fn dollar_paren_needs_two_following_bytes() {
        // `$()` is an expansion (two bytes follow the `$`); a lone `$` or `$)` is not.
        assert_eq!(expand("$()x"), "x");
        assert_eq!(expand("ab$)"), "ab$)");
        assert_eq!(expand("$"), "$");
    }

    #[test]
    fn non_utf8_bytes() {
        let raw = b"\xff$(ARCH)\xfe$(\xff:-d)";
        assert_eq!(
            expand_variant_symlink(raw, env),
            b"\xffx86_64\xfed".to_vec()
        );
    }

    #[test]
    fn random_inputs_never_panic() {
        // xorshift64*: deterministic pseudo-random inputs, biased towards interesting bytes.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let alphabet = b"$():-AERCHMPTY/x";
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 5 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[((r >> 8) % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let out = expand_variant_symlink(&raw, env);
            if !raw.contains(&b'$') {
                assert_eq!(out, raw);
            }
            // With nothing set and no defaults possible, output never grows.
            let plain = expand_variant_symlink(&raw, |_| None);
            if !raw.windows(2).any(|w| w == b":-") {
                assert!(plain.len() <= raw.len());
            }
        }
    }
}
