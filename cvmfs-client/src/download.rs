//! The download manager: the one HTTP fetcher of the client (spec §8). Requests relative to
//! the repository go to the current host of the host chain, through the current proxy group;
//! failures move on to the next proxy, then to the next host.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dns::Nameserver;

use reqwest::blocking::{Client, Response};

/// Version sent in the User-Agent header.
pub const USER_AGENT: &str = concat!("cvmfs Fuse ", env!("CARGO_PKG_VERSION"));

/// The host chain of `CVMFS_SERVER_URL` (`;`-separated), each without a trailing `/` and with
/// `http://` where no scheme is given.
pub fn host_chain(server_url: &str) -> Vec<String> {
    server_url
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|h| {
            let h = h.trim_end_matches('/');
            if h.contains("://") {
                h.to_string()
            } else {
                format!("http://{h}")
            }
        })
        .collect()
}

/// Why a download failed, after every host and proxy was tried.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no server URL configured (CVMFS_SERVER_URL)")]
    NoHosts,
    #[error("no proxy configured (CVMFS_HTTP_PROXY must be set; use DIRECT for none)")]
    NoProxies,
    #[error("malformed proxy {0:?}")]
    BadProxy(String),
    #[error("{url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("{url}: corrupt data: {reason}")]
    BadData { url: String, reason: String },
    #[error("local I/O error while storing {url}: {cause}")]
    LocalIo { url: String, cause: std::io::Error },
}

/// Result of consuming a response body; tells the download manager whether to try elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Reading the body failed (short transfer, stall): try the next proxy or host.
    #[error("transfer interrupted: {0}")]
    Transfer(std::io::Error),
    /// The body was complete but wrong (hash mismatch, zlib error): retry once without
    /// caches, then elsewhere.
    #[error("{0}")]
    BadData(String),
    /// Writing locally failed: no retry.
    #[error("{0}")]
    Local(std::io::Error),
}

/// One proxy of a group: `None` is DIRECT.
type Proxy = Option<String>;

struct ProxyEntry {
    proxy: Proxy,
    client: Client,
}

/// Host chain plus proxy groups.
pub struct DownloadManager {
    hosts: Vec<String>,
    current_host: AtomicUsize,
    groups: Vec<Vec<ProxyEntry>>,
    current_group: AtomicUsize,
    nameserver: Nameserver,
    /// Round-trip times of the last `host probe`, per host: `None` unprobed, `Some(None)` down.
    rtts: Mutex<Vec<Option<Option<u64>>>>,
}

impl std::fmt::Debug for DownloadManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadManager")
            .field("hosts", &self.hosts)
            .field("proxy", &self.current_proxy())
            .finish()
    }
}

impl DownloadManager {
    /// `server_url`: `;`-separated base URLs; `proxy`: `CVMFS_HTTP_PROXY` syntax (`;` groups,
    /// `|` load-balanced members, `DIRECT`). `timeout` applies to proxied connections,
    /// `timeout_direct` to direct ones (connect and stall).
    pub fn new(
        server_url: &str,
        proxy: &str,
        timeout: Duration,
        timeout_direct: Duration,
    ) -> Result<Self, DownloadError> {
        let hosts = host_chain(server_url);
        if hosts.is_empty() {
            return Err(DownloadError::NoHosts);
        }
        let nameserver = Nameserver::default();
        let mut groups = Vec::new();
        for group in proxy.split(';').map(str::trim).filter(|g| !g.is_empty()) {
            let mut entries = Vec::new();
            for member in group.split('|').map(str::trim).filter(|m| !m.is_empty()) {
                let (proxy, t) = if member.eq_ignore_ascii_case("DIRECT") {
                    (None, timeout_direct)
                } else if member == "auto" {
                    // PAC discovery (`pac::discovery`) happens before the manager is built; an
                    // unresolved `auto` group contributes nothing.
                    continue;
                } else if member.contains("://") {
                    (Some(member.to_string()), timeout)
                } else {
                    (Some(format!("http://{member}")), timeout)
                };
                let mut b = Client::builder()
                    .user_agent(USER_AGENT)
                    .connect_timeout(t)
                    .timeout(t)
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(16)
                    .redirect(reqwest::redirect::Policy::none())
                    .dns_resolver(Arc::new(nameserver.clone()));
                b = match &proxy {
                    None => b.no_proxy(),
                    Some(p) => b.proxy(
                        reqwest::Proxy::all(p).map_err(|_| DownloadError::BadProxy(p.clone()))?,
                    ),
                };
                let client = b.build().map_err(|e| DownloadError::Failed {
                    url: member.to_string(),
                    reason: format!("cannot set up HTTP client: {e}"),
                })?;
                entries.push(ProxyEntry { proxy, client });
            }
            if !entries.is_empty() {
                groups.push(entries);
            }
        }
        if groups.is_empty() {
            return Err(DownloadError::NoProxies);
        }
        let rtts = Mutex::new(vec![None; hosts.len()]);
        Ok(DownloadManager {
            hosts,
            current_host: AtomicUsize::new(0),
            groups,
            current_group: AtomicUsize::new(0),
            nameserver,
            rtts,
        })
    }

    /// The name server used for every host and proxy name (talk `nameserver set`).
    pub fn nameserver(&self) -> &Nameserver {
        &self.nameserver
    }

    /// Measures the round trip to every host (a fetch of `/.cvmfspublished` through the
    /// current proxy group) and makes the fastest answering host the active one.
    pub fn probe_hosts(&self) {
        let g = self.current_group.load(Ordering::Relaxed) % self.groups.len();
        let entry = &self.groups[g][0];
        let mut results = Vec::with_capacity(self.hosts.len());
        for host in &self.hosts {
            let url = format!("{host}/.cvmfspublished");
            let started = Instant::now();
            let ok = entry
                .client
                .get(&url)
                .header("Pragma", "no-cache")
                .header("Cache-Control", "no-cache")
                .send()
                .is_ok_and(|r| r.status().is_success());
            results.push(Some(ok.then(|| started.elapsed().as_millis() as u64)));
        }
        if let Some((best, _)) = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.flatten().map(|t| (i, t)))
            .min_by_key(|&(_, t)| t)
        {
            self.current_host.store(best, Ordering::Relaxed);
        }
        *self.rtts.lock().unwrap_or_else(|e| e.into_inner()) = results;
    }

    /// The talk `host info` text.
    pub fn host_info(&self) -> String {
        let rtts = self.rtts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let state = match rtts.get(i).copied().flatten() {
                None => "unprobed".to_string(),
                Some(None) => "host down".to_string(),
                Some(Some(ms)) => format!("{ms} ms"),
            };
            out.push_str(&format!("  [{i}] {host} ({state})\n"));
        }
        let active = self.current_host.load(Ordering::Relaxed) % self.hosts.len();
        out.push_str(&format!("Active host {active}: {}\n", self.hosts[active]));
        out
    }

    /// Makes the next host of the chain the active one.
    pub fn switch_host(&self) {
        let c = self.current_host.load(Ordering::Relaxed);
        self.current_host
            .store((c + 1) % self.hosts.len(), Ordering::Relaxed);
    }

    /// The talk `proxy info` text.
    pub fn proxy_info(&self) -> String {
        let mut out = String::from("Load-balance groups:\n");
        for (i, g) in self.groups.iter().enumerate() {
            let names: Vec<String> = g.iter().map(|e| describe(&e.proxy)).collect();
            out.push_str(&format!("[{i}] {}\n", names.join(", ")));
        }
        let active = self.current_group.load(Ordering::Relaxed) % self.groups.len();
        out.push_str(&format!(
            "Active proxy: [{active}] {}\n",
            describe(&self.groups[active][0].proxy)
        ));
        out
    }

    /// The base URL requests currently go to.
    pub fn current_host(&self) -> &str {
        &self.hosts[self.current_host.load(Ordering::Relaxed) % self.hosts.len()]
    }

    /// The host chain, current host first.
    pub fn hosts(&self) -> Vec<String> {
        let c = self.current_host.load(Ordering::Relaxed);
        (0..self.hosts.len())
            .map(|i| self.hosts[(c + i) % self.hosts.len()].clone())
            .collect()
    }

    /// The first proxy of the current group, or `DIRECT`.
    pub fn current_proxy(&self) -> String {
        let g = self.current_group.load(Ordering::Relaxed) % self.groups.len();
        self.groups[g][0]
            .proxy
            .clone()
            .unwrap_or_else(|| "DIRECT".to_string())
    }

    /// Fetches `rel` (e.g. `/.cvmfspublished`, `/data/ab/…`) relative to the repository and
    /// hands the body to `consume`. Tries the current host and proxy first, then the others.
    pub fn fetch<T>(
        &self,
        rel: &str,
        mut consume: impl FnMut(&mut dyn Read) -> Result<T, ConsumeError>,
    ) -> Result<T, DownloadError> {
        let nhosts = self.hosts.len();
        let ngroups = self.groups.len();
        let host0 = self.current_host.load(Ordering::Relaxed);
        let group0 = self.current_group.load(Ordering::Relaxed);
        let mut last: Option<DownloadError> = None;
        for hi in 0..nhosts {
            let host_idx = (host0 + hi) % nhosts;
            let url = format!("{}{}", self.hosts[host_idx], rel);
            'proxies: for gi in 0..ngroups {
                let group_idx = (group0 + gi) % ngroups;
                for entry in &self.groups[group_idx] {
                    let mut no_cache = false;
                    loop {
                        match self.attempt(entry, &url, no_cache, &mut consume) {
                            Ok(v) => {
                                self.current_host.store(host_idx, Ordering::Relaxed);
                                self.current_group.store(group_idx, Ordering::Relaxed);
                                return Ok(v);
                            }
                            Err(Attempt::BadData(reason)) if !no_cache => {
                                log::warn!("{url}: {reason}; retrying without caches");
                                no_cache = true;
                            }
                            Err(Attempt::BadData(reason)) => {
                                last = Some(DownloadError::BadData {
                                    url: url.clone(),
                                    reason,
                                });
                                break 'proxies;
                            }
                            Err(Attempt::Local(source)) => {
                                return Err(DownloadError::LocalIo { url, cause: source })
                            }
                            Err(Attempt::Host(reason)) => {
                                log::info!("{url}: {reason}");
                                last = Some(DownloadError::Failed {
                                    url: url.clone(),
                                    reason,
                                });
                                break 'proxies;
                            }
                            Err(Attempt::Proxy(reason)) => {
                                log::info!("{url} via {}: {reason}", describe(&entry.proxy));
                                last = Some(DownloadError::Failed {
                                    url: url.clone(),
                                    reason: format!("via {}: {reason}", describe(&entry.proxy)),
                                });
                                break;
                            }
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or(DownloadError::NoHosts))
    }

    fn attempt<T>(
        &self,
        entry: &ProxyEntry,
        url: &str,
        no_cache: bool,
        consume: &mut impl FnMut(&mut dyn Read) -> Result<T, ConsumeError>,
    ) -> Result<T, Attempt> {
        let proxied = entry.proxy.is_some();
        // A failure to reach the next hop is the proxy's fault when there is one.
        let transport = |reason: String| {
            if proxied {
                Attempt::Proxy(reason)
            } else {
                Attempt::Host(reason)
            }
        };
        let mut req = entry.client.get(url).header("Connection", "Keep-Alive");
        if no_cache {
            req = req
                .header("Pragma", "no-cache")
                .header("Cache-Control", "no-cache");
        }
        let mut resp: Response = req.send().map_err(|e| transport(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let squid_error = resp.headers().contains_key("X-Squid-Error")
                || resp
                    .headers()
                    .get("Proxy-Status")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("error="));
            let reason = format!("HTTP {status}");
            let host_error =
                matches!(status.as_u16(), 400 | 404 | 429 | 500..=599) || status.is_redirection();
            return Err(if squid_error || (proxied && !host_error) {
                Attempt::Proxy(reason)
            } else {
                Attempt::Host(reason)
            });
        }
        consume(&mut resp).map_err(|e| match e {
            ConsumeError::Transfer(e) => transport(format!("transfer interrupted: {e}")),
            ConsumeError::BadData(r) => Attempt::BadData(r),
            ConsumeError::Local(e) => Attempt::Local(e),
        })
    }
}

enum Attempt {
    Host(String),
    Proxy(String),
    BadData(String),
    Local(std::io::Error),
}

fn describe(p: &Proxy) -> String {
    p.clone().unwrap_or_else(|| "DIRECT".into())
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_resolve_through_the_name_server_set_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("object"), b"content").unwrap();
        let server = crate::testing::StaticHttpServer::start(dir.path()).unwrap();
        let t = Duration::from_secs(3);
        // `.invalid` never resolves through the system resolver (RFC 6761).
        let url = format!("http://stratum-one.invalid:{}", server.port);
        let d = DownloadManager::new(&url, "DIRECT", t, t).unwrap();
        let read = |body: &mut dyn Read| {
            let mut v = Vec::new();
            body.read_to_end(&mut v).map_err(ConsumeError::Transfer)?;
            Ok(v)
        };
        assert!(d.fetch("/object", read).is_err());
        let dns = crate::dns::tests::tiny_dns_server(std::net::Ipv4Addr::LOCALHOST);
        d.nameserver().set(Some(dns));
        assert_eq!(d.fetch("/object", read).unwrap(), b"content");
        assert!(d
            .host_info()
            .contains("Active host 0: http://stratum-one.invalid:"));
    }

    #[test]
    fn hosts_and_proxies_are_parsed() {
        let t = Duration::from_secs(1);
        let d = DownloadManager::new(
            "http://a/cvmfs/x; b.example.org/cvmfs/x/ ;",
            "http://p1:3128|p2:3128;DIRECT",
            t,
            t,
        )
        .unwrap();
        assert_eq!(
            d.hosts(),
            vec!["http://a/cvmfs/x", "http://b.example.org/cvmfs/x"]
        );
        assert_eq!(d.current_proxy(), "http://p1:3128");
        assert_eq!(d.groups.len(), 2);
        assert_eq!(d.groups[0].len(), 2);
        assert!(matches!(
            DownloadManager::new("", "DIRECT", t, t),
            Err(DownloadError::NoHosts)
        ));
        assert!(matches!(
            DownloadManager::new("http://a", "", t, t),
            Err(DownloadError::NoProxies)
        ));
    }
}
