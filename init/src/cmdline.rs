//! Kernel command line parameters interpreted by the boot loader (spec §1.4).
//!
//! Rules of the original: split `/proc/cmdline` on whitespace (no quote handling), a token
//! matches a `key=` parameter by prefix, the value is everything after the first `=`, and the
//! last occurrence wins. The flags `cvmdebug` and `cvmssh` match whole tokens only.

/// Settings taken from the kernel command line. `None` means "not given".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    /// `cvmfs_server=h1,h2`: Stratum-1 host names.
    pub cvmfs_server: Option<Vec<String>>,
    /// `cvmfs_cdn=h1,h2` or `NONE`.
    pub cvmfs_cdn: Option<Vec<String>>,
    /// `cvmfs_repos=<fqrn>`: the OS repository.
    pub cvmfs_repos: Option<String>,
    /// `cvmfs_proxy=<proxy string>`: value for `CVMFS_HTTP_PROXY`.
    pub cvmfs_proxy: Option<String>,
    /// `cvmfs_url=<url;url>`: complete `CVMFS_SERVER_URL`, bypasses the server/CDN logic.
    pub cvmfs_url: Option<String>,
    /// `cvmfs_repository_tag=<tag>`: tag for fresh boots.
    pub cvmfs_repository_tag: Option<String>,
    /// `cernvm_path=<dir>`: OS root inside the repository.
    pub cernvm_path: Option<String>,
    /// `cvmdebug`: rescue shell just before hand-over.
    pub cvmdebug: bool,
    /// `cvmssh`: start an SSH server in the initramfs.
    pub cvmssh: bool,
}

const VALUE_PARAMS: &[&str] = &[
    "cvmfs_server=",
    "cvmfs_cdn=",
    "cvmfs_repos=",
    "cvmfs_proxy=",
    "cvmfs_url=",
    "cvmfs_repository_tag=",
    "cernvm_path=",
];

impl KernelCmdline {
    /// Parses the contents of `/proc/cmdline`.
    pub fn parse(cmdline: &str) -> Self {
        let mut c = KernelCmdline::default();
        for token in cmdline.split_whitespace() {
            match token {
                "cvmdebug" => c.cvmdebug = true,
                "cvmssh" => c.cvmssh = true,
                _ => {}
            }
            let Some(prefix) = VALUE_PARAMS.iter().find(|p| token.starts_with(**p)) else {
                continue;
            };
            let value = token[prefix.len()..].to_string();
            match *prefix {
                "cvmfs_server=" => c.cvmfs_server = Some(split_list(&value)),
                "cvmfs_cdn=" => c.cvmfs_cdn = Some(split_list(&value)),
                "cvmfs_repos=" => c.cvmfs_repos = Some(value),
                "cvmfs_proxy=" => c.cvmfs_proxy = Some(value),
                "cvmfs_url=" => c.cvmfs_url = Some(value),
                "cvmfs_repository_tag=" => c.cvmfs_repository_tag = Some(value),
                "cernvm_path=" => c.cernvm_path = Some(value),
                _ => unreachable!("every prefix of VALUE_PARAMS is handled"),
            }
        }
        c
    }

    /// Reads and parses `/proc/cmdline`; an unreadable file yields the defaults.
    pub fn from_proc() -> Self {
        match std::fs::read_to_string("/proc/cmdline") {
            Ok(s) => Self::parse(&s),
            Err(e) => {
                log::warn!("cannot read /proc/cmdline ({e}); using defaults");
                Self::default()
            }
        }
    }
}

/// Splits a `,`-separated host list; empty items are dropped.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(KernelCmdline::parse(""), KernelCmdline::default());
        assert_eq!(KernelCmdline::parse("  \n"), KernelCmdline::default());
    }

    #[test]
    fn shipped_command_line_is_parsed() {
        let c = KernelCmdline::parse(
            "initrd=initrd root=first noresume crashkernel=1M@16M divider=10 selinux=0 \
             consoleblank=0 log_buf_len=4M cvmfs_repos=cernvm-prod.cern.ch \
             cernvm_path=cvm4 cvmdebug console=ttyS0 lastarg\n",
        );
        assert_eq!(c.cvmfs_repos.as_deref(), Some("cernvm-prod.cern.ch"));
        assert_eq!(c.cernvm_path.as_deref(), Some("cvm4"));
        assert!(c.cvmdebug);
        assert!(!c.cvmssh);
        assert_eq!(c.cvmfs_server, None);
    }

    #[test]
    fn last_occurrence_wins_and_value_keeps_later_equals() {
        let c = KernelCmdline::parse(
            "cvmfs_proxy=http://a:3128 cvmfs_url=http://h/cvmfs/@fqrn@?x=y cvmfs_proxy=DIRECT",
        );
        assert_eq!(c.cvmfs_proxy.as_deref(), Some("DIRECT"));
        assert_eq!(c.cvmfs_url.as_deref(), Some("http://h/cvmfs/@fqrn@?x=y"));
    }

    #[test]
    fn host_lists_are_split_on_commas() {
        let c = KernelCmdline::parse("cvmfs_server=s1.example.org,,s2.example.org cvmfs_cdn=NONE");
        assert_eq!(
            c.cvmfs_server,
            Some(vec!["s1.example.org".into(), "s2.example.org".into()])
        );
        assert_eq!(c.cvmfs_cdn, Some(vec!["NONE".into()]));
    }

    #[test]
    fn no_quote_handling() {
        let c = KernelCmdline::parse("cvmfs_proxy=\"http://a:3128;DIRECT\"");
        assert_eq!(c.cvmfs_proxy.as_deref(), Some("\"http://a:3128;DIRECT\""));
    }

    #[test]
    fn parameters_match_by_prefix_only() {
        let c = KernelCmdline::parse("xcvmfs_repos=foo mycernvm_path=bar cvmsshd cvmdebug=1");
        assert_eq!(c.cvmfs_repos, None);
        assert_eq!(c.cernvm_path, None);
        assert!(
            !c.cvmssh,
            "flags match whole tokens, as the original's case statement"
        );
        assert!(!c.cvmdebug);
    }

    #[test]
    fn empty_value_is_given_but_empty() {
        let c = KernelCmdline::parse("cernvm_path=");
        assert_eq!(c.cernvm_path.as_deref(), Some(""));
    }
}
