//! glideinWMS user data (spec §5.7): a single line `<base64>#### -cluster N -subcluster M####`
//! whose decoded `args` line may carry the CernVM-FS proxy and PAC URLs for the VM.

use base64::Engine as _;

/// What was extracted from glideinWMS user data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlideinContext {
    /// `-param_CERNVM_CMS_PROXY`, decoded.
    pub proxy: Option<String>,
    /// `-param_CERNVM_CMS_PAC_URLS`, decoded.
    pub pac_urls: Option<String>,
}

/// Detects glideinWMS user data; `None` if it is not (or if detection is disabled by the
/// caller, who checks `useglideinWMS` first).
pub fn detect(user_data: &[u8]) -> Option<GlideinContext> {
    if user_data.iter().filter(|&&b| b == b'\n').count() > 1 {
        return None;
    }
    let text = String::from_utf8_lossy(user_data);
    if !has_cluster_marker(&text) {
        return None;
    }
    let encoded = text.split('#').next().unwrap_or_default();
    let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cleaned.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.trim_end_matches('='))
        })
        .unwrap_or_default();
    let decoded = String::from_utf8_lossy(&decoded);
    let mut ctx = GlideinContext::default();
    if let Some(args) = decoded.lines().find(|l| l.starts_with("args")) {
        ctx.proxy = last_param(args, " -param_CERNVM_CMS_PROXY ").map(|v| decode_value(&v));
        ctx.pac_urls = last_param(args, " -param_CERNVM_CMS_PAC_URLS ").map(|v| decode_value(&v));
    }
    ctx.proxy = ctx.proxy.filter(|s| !s.is_empty());
    ctx.pac_urls = ctx.pac_urls.filter(|s| !s.is_empty());
    Some(ctx)
}

/// `#### -cluster <digits> -subcluster <digits>####` somewhere in the text.
fn has_cluster_marker(text: &str) -> bool {
    const HEAD: &str = "#### -cluster ";
    let mut from = 0;
    while let Some(i) = text[from..].find(HEAD) {
        let rest = &text[from + i + HEAD.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Some(r) = rest[digits..].strip_prefix(" -subcluster ") {
            let d2 = r.bytes().take_while(u8::is_ascii_digit).count();
            if r[d2..].starts_with("####") {
                return true;
            }
        }
        from += i + 1;
    }
    false
}

/// The token after the last occurrence of `key` (up to the next blank).
fn last_param(args: &str, key: &str) -> Option<String> {
    let i = args.rfind(key)?;
    let rest = &args[i + key.len()..];
    Some(
        rest.split([' ', '\t'])
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

/// glideinWMS escapes: `.semicolon,` `.colon,` `.pipe,` `.minus,` `.dot,`, in this order.
pub fn decode_value(v: &str) -> String {
    v.replace(".semicolon,", ";")
        .replace(".colon,", ":")
        .replace(".pipe,", "|")
        .replace(".minus,", "-")
        .replace(".dot,", ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(args: &str) -> Vec<u8> {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("foo bar\n{args}\nother\n"));
        format!("{b64}#### -cluster 1234 -subcluster 0####\n").into_bytes()
    }

    #[test]
    fn proxy_and_pac_are_extracted_and_decoded() {
        let ud = make(
            "args -v std -param_CERNVM_CMS_PROXY http.colon,//squid.dot,example.dot,org.colon,3128.semicolon,DIRECT \
             -param_CERNVM_CMS_PAC_URLS http.colon,//wpad.minus,x/wpad.dot,dat -other 1",
        );
        let c = detect(&ud).unwrap();
        assert_eq!(
            c.proxy.as_deref(),
            Some("http://squid.example.org:3128;DIRECT")
        );
        assert_eq!(c.pac_urls.as_deref(), Some("http://wpad-x/wpad.dat"));
    }

    #[test]
    fn last_occurrence_wins_and_missing_params_are_none() {
        let ud = make("args -param_CERNVM_CMS_PROXY a -param_CERNVM_CMS_PROXY b");
        let c = detect(&ud).unwrap();
        assert_eq!(c.proxy.as_deref(), Some("b"));
        assert_eq!(c.pac_urls, None);
    }

    #[test]
    fn not_glidein() {
        assert!(detect(b"[ucernvm-begin]\na=1\n[ucernvm-end]\n").is_none());
        assert!(detect(b"abc#### -cluster 1 -subcluster 2####\nline2\nline3\n").is_none());
        assert!(detect(b"abc### -cluster 1 -subcluster 2####").is_none());
        assert_eq!(
            detect(b"!!!#### -cluster  -subcluster ####"),
            Some(GlideinContext::default())
        );
    }
}
