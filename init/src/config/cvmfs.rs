//! Which repository, servers, proxies and tag this boot uses: built-in defaults, then the kernel
//! command line, then the user data (spec §9.1), and the server URL built from them (§9.2).

use super::branch::{self, BranchChoice, UnknownBranch};
use crate::cmdline::KernelCmdline;
use crate::settings::ContextSettings;

/// Built-in default Stratum-1 host.
pub const DEFAULT_SERVER: &str = "hepvm.cern.ch";
/// Built-in default OS repository.
pub const DEFAULT_REPOSITORY: &str = "cernvm-devel.cern.ch";
/// Built-in default proxy description.
pub const DEFAULT_PROXY: &str = "auto;DIRECT";
/// PAC URLs always tried first.
const LOCAL_PAC_URLS: [&str; 2] = ["http://grid-wpad/wpad.dat", "http://wpad/wpad.dat"];
/// CERN and FNAL PAC URLs, appended in random order (load spreading).
const LAB_PAC_URLS: [&str; 2] = [
    "http://cernvm-wpad.cern.ch/wpad.dat",
    "http://cernvm-wpad.fnal.gov/wpad.dat",
];

/// The value that switches the CDN off.
const CDN_NONE: &str = "NONE";

/// The CernVM-FS parameters of this boot, after all overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CvmfsParams {
    /// The OS repository (fully qualified name).
    pub repository: String,
    /// Stratum-1 hosts.
    pub servers: Vec<String>,
    /// CDN hosts; empty when the CDN is `NONE`.
    pub cdn: Vec<String>,
    /// `cvmfs_url` from the command line, used verbatim.
    pub url: Option<String>,
    pub proxy: String,
    pub pac_urls: String,
    /// Tag for a fresh boot (command line, then user data).
    pub tag: Option<String>,
    /// OS root inside the repository; empty = repository root.
    pub cernvm_path: String,
    /// `cvmfs_wait_on_squid`: seconds per probe.
    pub wait_on_squid: Option<u64>,
    /// A `cvmfs_branch` of the user data that names neither a preset nor a repository: ignored,
    /// and the epilog says so.
    pub unknown_branch: Option<UnknownBranch>,
}

/// Splits a host list. The original splits at `,` only, which breaks the shipped CDN string that
/// mixes `,` and `;` (spec §9.2 QUIRK); both are accepted here, and blanks are trimmed.
fn split_hosts<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| {
            i.as_ref()
                .split([',', ';'])
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A CDN list, empty when it is `NONE`.
fn cdn_hosts<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    let hosts = split_hosts(items);
    if hosts.iter().any(|h| h == CDN_NONE) {
        Vec::new()
    } else {
        hosts
    }
}

/// The default PAC URL list; `lab_first` picks which of the two lab URLs comes first.
pub fn default_pac_urls(cern_first: bool) -> String {
    let (a, b) = if cern_first {
        (LAB_PAC_URLS[0], LAB_PAC_URLS[1])
    } else {
        (LAB_PAC_URLS[1], LAB_PAC_URLS[0])
    };
    [LOCAL_PAC_URLS[0], LOCAL_PAC_URLS[1], a, b].join(";")
}

/// One random bit, good enough to spread load between two PAC servers.
pub fn coin_flip() -> bool {
    let mut b = [0u8; 1];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    }) {
        Ok(()) => b[0] & 1 == 1,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() & 1 == 1)
            .unwrap_or(true),
    }
}

impl CvmfsParams {
    /// Applies defaults, then the command line, then the user data, in the original's order.
    /// `cern_pac_first` orders the two lab PAC URLs (random in production).
    pub fn resolve(cmdline: &KernelCmdline, ctx: &ContextSettings, cern_pac_first: bool) -> Self {
        let mut p = CvmfsParams {
            repository: DEFAULT_REPOSITORY.to_string(),
            servers: vec![DEFAULT_SERVER.to_string()],
            cdn: Vec::new(),
            url: None,
            proxy: DEFAULT_PROXY.to_string(),
            pac_urls: default_pac_urls(cern_pac_first),
            tag: None,
            cernvm_path: String::new(),
            wait_on_squid: None,
            unknown_branch: None,
        };
        // Kernel command line.
        if let Some(s) = &cmdline.cvmfs_server {
            p.servers = split_hosts(s);
        }
        if let Some(c) = &cmdline.cvmfs_cdn {
            p.cdn = cdn_hosts(c);
        }
        if let Some(r) = cmdline.cvmfs_repos.as_deref().filter(|r| !r.is_empty()) {
            p.repository = r.to_string();
        }
        if let Some(proxy) = cmdline.cvmfs_proxy.as_deref().filter(|v| !v.is_empty()) {
            p.proxy = proxy.to_string();
        }
        p.url = cmdline.cvmfs_url.clone().filter(|u| !u.is_empty());
        p.tag = cmdline
            .cvmfs_repository_tag
            .clone()
            .filter(|t| !t.is_empty());
        if let Some(path) = &cmdline.cernvm_path {
            p.cernvm_path = path.clone();
        }
        // User data. A branch preset is the base the other user-data keys refine: it sets
        // repository, path, tag, servers and CDN as an image built for that branch would.
        let branch = ctx.cvmfs_branch.as_deref().map(branch::choose);
        if let Some(BranchChoice::Preset(b)) = &branch {
            p.repository = b.repository.clone();
            p.cernvm_path = b.path.clone();
            p.tag = Some(b.tag.clone());
            p.servers = split_hosts(&[&b.servers]);
            p.cdn = cdn_hosts(&[&b.cdn]);
        }
        // A proxy or a server list switches the CDN off; `cvmfs_cdn` comes after both and may
        // switch it on again.
        if let Some(proxy) = &ctx.cvmfs_http_proxy {
            p.proxy = proxy.clone();
            p.cdn.clear();
        }
        if let Some(s) = &ctx.cvmfs_server {
            p.servers = split_hosts(s);
            p.cdn.clear();
        }
        if let Some(c) = &ctx.cvmfs_cdn {
            p.cdn = cdn_hosts(c);
        }
        match branch {
            Some(BranchChoice::Repository(r)) => p.repository = r,
            Some(BranchChoice::Unknown(e)) => p.unknown_branch = Some(e),
            Some(BranchChoice::Preset(_)) | None => {}
        }
        if let Some(t) = &ctx.cvmfs_tag {
            p.tag = Some(t.clone());
        }
        if let Some(pac) = &ctx.cvmfs_pac_urls {
            p.pac_urls = pac.clone();
        }
        if let Some(path) = &ctx.cernvm_path {
            p.cernvm_path = path.clone();
        }
        p.wait_on_squid = ctx.cvmfs_wait_on_squid;
        p
    }

    /// The server URLs (§9.2): `cvmfs_url` verbatim, else one `http://<host>/cvmfs/<repo>` per
    /// CDN host (if a CDN is set) or per server.
    pub fn server_urls(&self) -> Vec<String> {
        if let Some(url) = &self.url {
            return unquote(url)
                .split(';')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect();
        }
        let hosts = if self.cdn.is_empty() {
            &self.servers
        } else {
            &self.cdn
        };
        hosts
            .iter()
            .map(|h| format!("http://{h}/cvmfs/{}", self.repository))
            .collect()
    }

    /// The value written as `CVMFS_SERVER_URL`.
    pub fn server_url_value(&self) -> String {
        match &self.url {
            Some(url) => quoted(url),
            None => format!("\"{}\"", self.server_urls().join(";")),
        }
    }

    /// The OS root's path inside the repository, without leading or trailing `/`.
    pub fn os_subdir(&self) -> &str {
        self.cernvm_path.trim_matches('/')
    }
}

/// Wraps `v` in double quotes unless it already starts with one (the original's rule).
pub fn quoted(v: &str) -> String {
    if v.starts_with('"') {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}

/// `v` without one pair of surrounding double quotes.
pub fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> ContextSettings {
        let mut s = ContextSettings::default();
        for (k, v) in pairs {
            s.apply(k, v);
        }
        s
    }

    #[test]
    fn defaults() {
        let p = CvmfsParams::resolve(&KernelCmdline::default(), &ContextSettings::default(), true);
        assert_eq!(p.repository, "cernvm-devel.cern.ch");
        assert_eq!(p.proxy, "auto;DIRECT");
        assert_eq!(
            p.pac_urls,
            "http://grid-wpad/wpad.dat;http://wpad/wpad.dat;\
             http://cernvm-wpad.cern.ch/wpad.dat;http://cernvm-wpad.fnal.gov/wpad.dat"
        );
        assert_eq!(
            p.server_url_value(),
            "\"http://hepvm.cern.ch/cvmfs/cernvm-devel.cern.ch\""
        );
        assert_eq!(p.tag, None);
        assert_eq!(p.cernvm_path, "");
        let other = CvmfsParams::resolve(
            &KernelCmdline::default(),
            &ContextSettings::default(),
            false,
        );
        assert!(other
            .pac_urls
            .ends_with("fnal.gov/wpad.dat;http://cernvm-wpad.cern.ch/wpad.dat"));
    }

    /// (kernel command line, user data, expected CVMFS_SERVER_URL, proxy, repository, tag, path)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
    );

    #[test]
    fn table_of_command_line_and_user_data_combinations() {
        let cases: &[Case] = &[
            (
                "cvmfs_repos=cernvm-prod.cern.ch cernvm_path=cvm4 cvmfs_repository_tag=HEAD4 \
                 cvmfs_server=s1.example,s2.example",
                &[],
                "\"http://s1.example/cvmfs/cernvm-prod.cern.ch;http://s2.example/cvmfs/cernvm-prod.cern.ch\"",
                "auto;DIRECT",
                "cernvm-prod.cern.ch",
                Some("HEAD4"),
                "cvm4",
            ),
            // The CDN replaces the server list.
            (
                "cvmfs_repos=r.example cvmfs_cdn=cdn1.example,cdn2.example",
                &[],
                "\"http://cdn1.example/cvmfs/r.example;http://cdn2.example/cvmfs/r.example\"",
                "auto;DIRECT",
                "r.example",
                None,
                "",
            ),
            // The shipped CDN string mixes `,` and `;`: both separate hosts.
            (
                "cvmfs_repos=r.example cvmfs_cdn=a.example,b.example;c.example",
                &[],
                "\"http://a.example/cvmfs/r.example;http://b.example/cvmfs/r.example;http://c.example/cvmfs/r.example\"",
                "auto;DIRECT",
                "r.example",
                None,
                "",
            ),
            // A user-data proxy switches the command line's CDN off.
            (
                "cvmfs_repos=r.example cvmfs_cdn=cdn.example",
                &[("CVMFS_HTTP_PROXY", "http://squid:3128;DIRECT")],
                "\"http://hepvm.cern.ch/cvmfs/r.example\"",
                "http://squid:3128;DIRECT",
                "r.example",
                None,
                "",
            ),
            // A user-data server list also switches it off ...
            (
                "cvmfs_cdn=cdn.example",
                &[("CVMFS_SERVER", "u1.example")],
                "\"http://u1.example/cvmfs/cernvm-devel.cern.ch\"",
                "auto;DIRECT",
                "cernvm-devel.cern.ch",
                None,
                "",
            ),
            // ... but a user-data CDN comes after both and wins.
            (
                "",
                &[
                    ("CVMFS_SERVER", "u1.example"),
                    ("CVMFS_CDN", "ucdn.example"),
                    ("CVMFS_BRANCH", "b.example"),
                ],
                "\"http://ucdn.example/cvmfs/b.example\"",
                "auto;DIRECT",
                "b.example",
                None,
                "",
            ),
            // cvmfs_url bypasses servers, CDN and the user-data server keys.
            (
                "cvmfs_url=http://10.0.2.2:8000/cvmfs/@fqrn@ cvmfs_proxy=DIRECT cvmfs_repos=demo.cernvm.test",
                &[("CVMFS_SERVER", "ignored.example"), ("CVMFS_TAG", "v1"), ("CERNVM_PATH", "os")],
                "\"http://10.0.2.2:8000/cvmfs/@fqrn@\"",
                "DIRECT",
                "demo.cernvm.test",
                Some("v1"),
                "os",
            ),
            // User-data tag and path override the command line's; CDN NONE from user data.
            (
                "cvmfs_repository_tag=HEAD cernvm_path=cvm3 cvmfs_cdn=cdn.example",
                &[("CVMFS_TAG", "keep-me"), ("CERNVM_PATH", "cvm4"), ("CVMFS_CDN", "NONE")],
                "\"http://hepvm.cern.ch/cvmfs/cernvm-devel.cern.ch\"",
                "auto;DIRECT",
                "cernvm-devel.cern.ch",
                Some("keep-me"),
                "cvm4",
            ),
        ];
        for (cmd, ctx, url, proxy, repo, tag, path) in cases {
            let p = CvmfsParams::resolve(&KernelCmdline::parse(cmd), &settings(ctx), true);
            assert_eq!(&p.server_url_value(), url, "{cmd} / {ctx:?}");
            assert_eq!(&p.proxy, proxy, "{cmd} / {ctx:?}");
            assert_eq!(&p.repository, repo, "{cmd} / {ctx:?}");
            assert_eq!(p.tag.as_deref(), *tag, "{cmd} / {ctx:?}");
            assert_eq!(&p.cernvm_path, path, "{cmd} / {ctx:?}");
        }
    }

    #[test]
    fn pac_urls_and_wait_from_user_data() {
        let p = CvmfsParams::resolve(
            &KernelCmdline::default(),
            &settings(&[
                ("CVMFS_PAC_URLS", "http://my/wpad.dat"),
                ("CVMFS_WAIT_ON_SQUID", "7"),
            ]),
            true,
        );
        assert_eq!(p.pac_urls, "http://my/wpad.dat");
        assert_eq!(p.wait_on_squid, Some(7));
    }

    #[test]
    fn quoting_rule() {
        assert_eq!(quoted("auto;DIRECT"), "\"auto;DIRECT\"");
        assert_eq!(quoted("\"a;b\""), "\"a;b\"");
        assert_eq!(unquote("\"a;b\""), "a;b");
        let p = CvmfsParams::resolve(
            &KernelCmdline::parse("cvmfs_url=http://a/cvmfs/x;http://b/cvmfs/x"),
            &ContextSettings::default(),
            true,
        );
        assert_eq!(
            p.server_urls(),
            vec!["http://a/cvmfs/x", "http://b/cvmfs/x"]
        );
    }
}
