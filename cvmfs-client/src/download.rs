//! The download manager: the one HTTP fetcher of the client (spec §8). Requests relative to
//! the repository go to the current host of the host chain, through the active proxy of the
//! current proxy group. Proxy names are expanded to their addresses (each address one member of
//! its group), a group's members are load-balanced (random start, another one on failure),
//! `CVMFS_FALLBACK_PROXY` groups come after the regular ones. Failures switch proxy or host for
//! every request (global state, spec §8.6), each switch logged with its reason; the reset
//! timers bring the client back to the first group and host.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use crate::dns::IpFamily;
use crate::dns::Nameserver;

use reqwest::blocking::{Client, Response};

/// Version sent in the User-Agent header.
pub const USER_AGENT: &str = concat!("cvmfs Fuse ", env!("CARGO_PKG_VERSION"));

/// Longest time proxy addresses are kept before their names are resolved again (the
/// reference's `CVMFS_DNS_MAX_TTL` default).
pub const DNS_MAX_TTL: Duration = Duration::from_secs(86_400);

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

/// How downloads are made and retried (spec §8.2, §8.4, §8.6, §8.7); the client configuration
/// maps to this in [`crate::mount::MountSettings`].
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    /// `CVMFS_TIMEOUT`: connect and stall timeout through a proxy.
    pub timeout: Duration,
    /// `CVMFS_TIMEOUT_DIRECT`: the same without a proxy.
    pub timeout_direct: Duration,
    /// `CVMFS_FALLBACK_PROXY`: groups tried after the regular ones (never `DIRECT`).
    pub fallback_proxy: String,
    /// `CVMFS_MAX_IPADDR_PER_PROXY`: addresses kept per proxy name and family; 0 keeps all.
    pub max_ipaddr_per_proxy: usize,
    /// `CVMFS_MAX_RETRIES`: retries of the same proxy/host after a transfer error.
    pub max_retries: u32,
    /// `CVMFS_BACKOFF_INIT` / `CVMFS_BACKOFF_MAX`: the wait before such a retry.
    pub backoff_init: Duration,
    pub backoff_max: Duration,
    /// `CVMFS_PROXY_RESET_AFTER`: back to the first group (and failed members back in) after
    /// this long; `None` never.
    pub proxy_reset_after: Option<Duration>,
    /// `CVMFS_HOST_RESET_AFTER`: back to the first host after this long; `None` never.
    pub host_reset_after: Option<Duration>,
    /// `CVMFS_IPFAMILY_PREFER`.
    pub ipfamily_prefer: IpFamily,
    /// `CVMFS_USE_GEOAPI`: order the hosts by the Stratum-1s' Geo-API answer at mount.
    pub use_geoapi: bool,
    /// `CVMFS_DNS_MIN_TTL`: proxy addresses are kept at least this long (and this long when a
    /// name does not resolve) before the name is resolved again.
    pub dns_min_ttl: Duration,
}

impl Default for DownloadSettings {
    /// The reference client's code defaults.
    fn default() -> Self {
        DownloadSettings {
            timeout: Duration::from_secs(5),
            timeout_direct: Duration::from_secs(5),
            fallback_proxy: String::new(),
            max_ipaddr_per_proxy: 0,
            max_retries: 0,
            backoff_init: Duration::from_secs(2),
            backoff_max: Duration::from_secs(10),
            proxy_reset_after: None,
            host_reset_after: None,
            ipfamily_prefer: IpFamily::V4,
            dns_min_ttl: Duration::from_secs(60),
            use_geoapi: false,
        }
    }
}

impl DownloadSettings {
    /// Default settings with the given timeouts.
    pub fn with_timeouts(timeout: Duration, timeout_direct: Duration) -> Self {
        DownloadSettings {
            timeout,
            timeout_direct,
            ..Self::default()
        }
    }
}

/// Why a download failed, after every host and proxy was tried.
/// Why the Geo-API gave no usable order (the configured order stays).
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: answer {answer:?} is no permutation of 1..{n}")]
    BadAnswer {
        url: String,
        answer: String,
        n: usize,
    },
}

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

/// One member of a proxy group: one address of a configured proxy, or DIRECT.
struct Member {
    /// Unique within the manager: a switch away from a member that is no longer active is
    /// not repeated by a second failing request.
    id: u64,
    /// The proxy as configured (`http://squid.example.org:3128`); `None` is DIRECT.
    configured: Option<String>,
    /// The proxy URL requests use: the configured one with the host replaced by one address.
    url: Option<String>,
    /// What the HTTP client of this member is built from.
    timeout: Duration,
    nameserver: Nameserver,
    /// Built on first use: a mount that finds everything it needs in its cache (µCernVM's
    /// pinned warm boot) never pays for the client's runtime thread and TLS set-up.
    client: OnceLock<Client>,
}

impl Member {
    fn client(&self) -> Result<Client, DownloadError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let built = build_client(self.url.as_deref(), self.timeout, &self.nameserver)?;
        Ok(self.client.get_or_init(|| built).clone())
    }
}

/// The HTTP client of one route: through `proxy`, or DIRECT.
fn build_client(
    proxy: Option<&str>,
    timeout: Duration,
    nameserver: &Nameserver,
) -> Result<Client, DownloadError> {
    let b = Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(16)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(nameserver.clone()));
    let b = match proxy {
        None => b.no_proxy(),
        Some(p) => {
            b.proxy(reqwest::Proxy::all(p).map_err(|_| DownloadError::BadProxy(p.to_string()))?)
        }
    };
    b.build().map_err(|e| DownloadError::Failed {
        url: proxy.unwrap_or("DIRECT").to_string(),
        reason: format!("cannot set up HTTP client: {e}"),
    })
}

impl Member {
    fn describe(&self) -> String {
        self.url.clone().unwrap_or_else(|| "DIRECT".into())
    }
}

/// One `;`-separated group of the proxy description.
struct Group {
    /// The proxies as configured (`None` = DIRECT), expanded again when their addresses expire.
    configured: Vec<Option<String>>,
    members: Vec<Arc<Member>>,
    /// Members that failed since the group was last (re)balanced.
    burned: Vec<bool>,
    active: usize,
    /// From `CVMFS_FALLBACK_PROXY`.
    fallback: bool,
    /// When the addresses of the names are to be resolved again.
    expires: Option<Instant>,
}

/// The mutable state shared by all requests.
struct Chains {
    hosts: Vec<String>,
    current_host: usize,
    /// Since when a host other than the first is current.
    left_first_host: Option<Instant>,
    groups: Vec<Group>,
    current_group: usize,
    /// Since when a group other than the first is current.
    left_first_group: Option<Instant>,
    /// Since when the current group has failed members.
    burned_since: Option<Instant>,
    /// Round-trip times of the last `host probe`, per host: `None` unprobed, `Some(None)` down.
    rtts: Vec<Option<Option<u64>>>,
    /// The regular and fallback proxy descriptions the groups were made of.
    proxy_description: String,
    fallback_description: String,
}

impl Chains {
    fn total_members(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// Makes a random member of the current group active, all of them unburned.
    fn rebalance(&mut self) {
        let g = &mut self.groups[self.current_group];
        g.burned.iter_mut().for_each(|b| *b = false);
        g.active = fastrand::usize(..g.members.len().max(1));
        self.burned_since = None;
    }

    fn active_member(&self) -> Arc<Member> {
        let g = &self.groups[self.current_group];
        Arc::clone(&g.members[g.active.min(g.members.len() - 1)])
    }

    fn set_group(&mut self, index: usize) {
        self.current_group = index;
        self.left_first_group = (index != 0).then(Instant::now);
        self.rebalance();
    }

    fn set_host(&mut self, index: usize) {
        self.current_host = index;
        self.left_first_host = (index != 0).then(Instant::now);
    }
}

/// What one attempt went to.
struct Pick {
    host: usize,
    base: String,
    member: Arc<Member>,
}

/// Host chain plus proxy groups.
pub struct DownloadManager {
    settings: DownloadSettings,
    nameserver: Nameserver,
    chains: Mutex<Chains>,
    next_member_id: AtomicU64,
}

impl std::fmt::Debug for DownloadManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadManager")
            .field("hosts", &self.hosts())
            .field("proxy", &self.current_proxy())
            .finish()
    }
}

/// The proxies of a description: `;` groups of `|` members; `DIRECT` is `None`, `auto` (left
/// over when discovery found nothing) contributes nothing.
fn parse_groups(description: &str) -> Vec<Vec<Option<String>>> {
    description
        .split(';')
        .map(|group| {
            group
                .split('|')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != "auto")
                .map(|m| {
                    if m.eq_ignore_ascii_case("DIRECT") {
                        None
                    } else if m.contains("://") {
                        Some(m.to_string())
                    } else {
                        Some(format!("http://{m}"))
                    }
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// The regular and fallback groups (spec §8.2): DIRECT is dropped from the fallback groups, and
/// from the regular ones when fallback groups exist.
fn proxy_groups(proxy: &str, fallback: &str) -> Vec<(Vec<Option<String>>, bool)> {
    let strip_direct = |groups: Vec<Vec<Option<String>>>| -> Vec<Vec<Option<String>>> {
        groups
            .into_iter()
            .map(|g| g.into_iter().filter(Option::is_some).collect::<Vec<_>>())
            .filter(|g| !g.is_empty())
            .collect()
    };
    let fallback = strip_direct(parse_groups(fallback));
    let regular = if fallback.is_empty() {
        parse_groups(proxy)
    } else {
        strip_direct(parse_groups(proxy))
    };
    regular
        .into_iter()
        .map(|g| (g, false))
        .chain(fallback.into_iter().map(|g| (g, true)))
        .collect()
}

/// The host part of a URL (`squid.example.org` of `http://squid.example.org:3128/`).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// `url` with its host replaced by `ip` (IPv6 in brackets).
fn with_address(url: &str, ip: IpAddr) -> String {
    let host = url_host(url);
    let addr = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let rest = rest.strip_prefix('[').map_or(rest, |r| {
        // `[v6]:port`: drop the bracketed literal, keep the rest.
        r.split_once(']').map_or(r, |(_, after)| after)
    });
    let rest = rest.strip_prefix(host).unwrap_or(rest);
    format!("{scheme}://{addr}{rest}")
}

/// The addresses kept for one name: at most `max` per family (0 = all), chosen at random, the
/// preferred family first.
fn choose_addresses(mut addrs: Vec<IpAddr>, max: usize, prefer: IpFamily) -> Vec<IpAddr> {
    addrs.sort();
    addrs.dedup();
    let (mut v4, mut v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(|a| a.is_ipv4());
    for family in [&mut v4, &mut v6] {
        fastrand::shuffle(family);
        if max > 0 {
            family.truncate(max);
        }
        family.sort();
    }
    match prefer {
        IpFamily::V4 => v4.into_iter().chain(v6).collect(),
        IpFamily::V6 => v6.into_iter().chain(v4).collect(),
    }
}

impl DownloadManager {
    /// `server_url`: `;`-separated base URLs; `proxy`: `CVMFS_HTTP_PROXY` syntax (`;` groups,
    /// `|` load-balanced members, `DIRECT`), with `auto` already resolved.
    pub fn new(
        server_url: &str,
        proxy: &str,
        settings: DownloadSettings,
    ) -> Result<Self, DownloadError> {
        let hosts = host_chain(server_url);
        if hosts.is_empty() {
            return Err(DownloadError::NoHosts);
        }
        let nameserver = Nameserver::default();
        nameserver.set_prefer(settings.ipfamily_prefer);
        let manager = DownloadManager {
            settings,
            nameserver,
            chains: Mutex::new(Chains {
                rtts: vec![None; hosts.len()],
                hosts,
                current_host: 0,
                left_first_host: None,
                groups: Vec::new(),
                current_group: 0,
                left_first_group: None,
                burned_since: None,
                proxy_description: String::new(),
                fallback_description: String::new(),
            }),
            next_member_id: AtomicU64::new(0),
        };
        let fallback = manager.settings.fallback_proxy.clone();
        manager.install_proxies(proxy, &fallback)?;
        Ok(manager)
    }

    fn chains(&self) -> MutexGuard<'_, Chains> {
        self.chains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in use.
    pub fn settings(&self) -> &DownloadSettings {
        &self.settings
    }

    /// The name server used for every host and proxy name (talk `nameserver set`).
    pub fn nameserver(&self) -> &Nameserver {
        &self.nameserver
    }

    /// Uses `addr` as the name server from now on; proxy names are resolved again.
    pub fn set_nameserver(&self, addr: Option<SocketAddr>) {
        self.nameserver.set(addr);
        let mut c = self.chains();
        for g in &mut c.groups {
            g.expires = Some(Instant::now());
        }
    }

    fn member(
        &self,
        configured: Option<&str>,
        url: Option<String>,
    ) -> Result<Arc<Member>, DownloadError> {
        // A malformed proxy is refused now; the client itself is built when first used.
        if let Some(p) = &url {
            reqwest::Proxy::all(p.as_str()).map_err(|_| DownloadError::BadProxy(p.clone()))?;
        }
        let timeout = match url {
            Some(_) => self.settings.timeout,
            None => self.settings.timeout_direct,
        };
        Ok(Arc::new(Member {
            id: self.next_member_id.fetch_add(1, Ordering::Relaxed),
            configured: configured.map(str::to_string),
            url,
            timeout,
            nameserver: self.nameserver.clone(),
            client: OnceLock::new(),
        }))
    }

    /// The members of a group: each proxy name expanded to its addresses; a name that does not
    /// resolve now stays one member (resolved again when used, failing if it still does not).
    /// Returns the members and when to resolve again.
    fn expand(
        &self,
        configured: &[Option<String>],
    ) -> Result<(Vec<Arc<Member>>, Option<Instant>), DownloadError> {
        let mut members = Vec::new();
        let mut ttl: Option<Duration> = None;
        for proxy in configured {
            let Some(url) = proxy else {
                members.push(self.member(None, None)?);
                continue;
            };
            let host = url_host(url);
            if host.parse::<IpAddr>().is_ok() {
                members.push(self.member(Some(url), Some(url.clone()))?);
                continue;
            }
            match self.nameserver.resolve_with_ttl(host) {
                Ok((addrs, valid)) if !addrs.is_empty() => {
                    ttl = Some(ttl.map_or(valid, |t| t.min(valid)));
                    let ips = choose_addresses(
                        addrs.iter().map(SocketAddr::ip).collect(),
                        self.settings.max_ipaddr_per_proxy,
                        self.settings.ipfamily_prefer,
                    );
                    for ip in ips {
                        members.push(self.member(Some(url), Some(with_address(url, ip)))?);
                    }
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "no address".into(),
                    };
                    log::info!("proxy {url}: cannot resolve {host} now ({why})");
                    ttl = Some(self.settings.dns_min_ttl);
                    members.push(self.member(Some(url), Some(url.clone()))?);
                }
            }
        }
        let expires = ttl.map(|t| {
            Instant::now()
                + t.clamp(
                    self.settings.dns_min_ttl,
                    DNS_MAX_TTL.max(self.settings.dns_min_ttl),
                )
        });
        Ok((members, expires))
    }

    /// Replaces the proxy groups (talk `proxy set`, `proxy fallback`): the first group, a
    /// random member of it active.
    pub fn install_proxies(&self, proxy: &str, fallback: &str) -> Result<(), DownloadError> {
        let mut groups = Vec::new();
        for (configured, is_fallback) in proxy_groups(proxy, fallback) {
            let (members, expires) = self.expand(&configured)?;
            groups.push(Group {
                burned: vec![false; members.len()],
                configured,
                members,
                active: 0,
                fallback: is_fallback,
                expires,
            });
        }
        if groups.is_empty() {
            return Err(DownloadError::NoProxies);
        }
        let mut c = self.chains();
        c.groups = groups;
        c.proxy_description = proxy.to_string();
        c.fallback_description = fallback.to_string();
        c.set_group(0);
        log::info!(
            "proxies: {}; active {}",
            describe_groups(&c.groups),
            c.active_member().describe()
        );
        Ok(())
    }

    /// Talk `proxy set <list>`: new regular groups, the fallback groups kept.
    pub fn set_proxies(&self, proxy: &str) -> Result<(), DownloadError> {
        let fallback = self.chains().fallback_description.clone();
        self.install_proxies(proxy, &fallback)
    }

    /// Talk `proxy fallback <list>`: new fallback groups, the regular groups kept.
    pub fn set_fallback_proxies(&self, fallback: &str) -> Result<(), DownloadError> {
        let proxy = self.chains().proxy_description.clone();
        self.install_proxies(&proxy, fallback)
    }

    /// Talk `proxy group switch`: the next group (cyclic), a random member of it active.
    pub fn switch_proxy_group(&self) {
        let mut c = self.chains();
        let next = (c.current_group + 1) % c.groups.len();
        c.set_group(next);
        log::info!(
            "proxy group switched by request: [{next}] {}",
            c.active_member().describe()
        );
    }

    /// Talk `proxy rebalance`: failed members of the current group back in, a random one active.
    pub fn rebalance_proxies(&self) {
        let mut c = self.chains();
        c.rebalance();
        log::info!(
            "proxies rebalanced by request: {}",
            c.active_member().describe()
        );
    }

    /// Talk `host set <list>`: a new host chain (`;`-separated), its first host active.
    pub fn set_hosts(&self, server_url: &str) -> Result<(), DownloadError> {
        let hosts = host_chain(server_url);
        if hosts.is_empty() {
            return Err(DownloadError::NoHosts);
        }
        let mut c = self.chains();
        c.rtts = vec![None; hosts.len()];
        c.hosts = hosts;
        c.set_host(0);
        log::info!("host chain set by request: {}", c.hosts.join(";"));
        Ok(())
    }

    /// Orders the host chain (and the fallback proxy groups) by the Geo-API of the Stratum-1s
    /// (spec §8.8): the names sorted, asked through the active proxy (named by `uuid` from a
    /// fallback group or without a proxy), up to three hosts tried. On any error the
    /// order stays as it is. `Ok(false)`: nothing to order.
    pub fn probe_geo(&self, uuid: &str) -> Result<bool, GeoError> {
        const SEPARATOR: &str = "+PXYSEP+";
        let (mut hosts, member, fallback_names, regular_proxies, on_fallback) = {
            let c = self.chains();
            let fallback: Vec<(usize, String)> = c
                .groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.fallback)
                .filter_map(|(i, g)| {
                    Some((i, url_host(g.configured.first()?.as_deref()?).to_string()))
                })
                .collect();
            let regular = c
                .groups
                .iter()
                .any(|g| !g.fallback && g.configured.iter().any(Option::is_some));
            (
                c.hosts.clone(),
                c.active_member(),
                fallback,
                regular,
                c.groups[c.current_group].fallback,
            )
        };
        if hosts.len() < 2 && fallback_names.len() < 2 {
            return Ok(false);
        }
        // Sorted names make the URL the same for every client: proxies can cache the answer.
        hosts.sort_by(|a, b| url_host(a).cmp(url_host(b)));
        let mut names: Vec<String> = hosts.iter().map(|h| url_host(h).to_string()).collect();
        let with_fallback = !regular_proxies && !fallback_names.is_empty();
        if with_fallback {
            names.push(SEPARATOR.to_string());
            names.extend(fallback_names.iter().map(|(_, n)| n.clone()));
        }
        // Always through the active proxy (DIRECT only where it is configured); a client on
        // DIRECT or on a fallback proxy names itself by its uuid.
        let who = match (&member.configured, on_fallback) {
            (Some(name), false) => url_host(name).to_string(),
            _ => uuid.to_string(),
        };
        let client = member.client().map_err(|e| GeoError::Request {
            url: hosts.first().cloned().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        fastrand::shuffle(&mut order);
        let mut last = None;
        for &h in order.iter().take(3) {
            let url = format!("{}/api/v1.0/geo/{who}/{}", hosts[h], names.join(","));
            let answer = client
                .get(&url)
                .header("Connection", "Keep-Alive")
                .send()
                .map_err(|e| error_chain(&e))
                .and_then(|r| {
                    if r.status().is_success() {
                        r.text().map_err(|e| error_chain(&e))
                    } else {
                        Err(format!("HTTP {}", r.status()))
                    }
                });
            let text = match answer {
                Ok(t) => t,
                Err(reason) => {
                    log::info!("Geo-API {url}: {reason}");
                    last = Some(GeoError::Request { url, reason });
                    continue;
                }
            };
            let Some(perm) = parse_geo_answer(&text, names.len()) else {
                last = Some(GeoError::BadAnswer {
                    url,
                    answer: text,
                    n: names.len(),
                });
                continue;
            };
            let ordered: Vec<String> = perm
                .iter()
                .filter(|&&i| i < hosts.len())
                .map(|&i| hosts[i].clone())
                .collect();
            let mut c = self.chains();
            if with_fallback {
                let fallback_order: Vec<usize> = perm
                    .iter()
                    .filter(|&&i| i > hosts.len())
                    .filter_map(|&i| fallback_names.get(i - hosts.len() - 1).map(|(g, _)| *g))
                    .collect();
                reorder_fallback(&mut c.groups, &fallback_order);
            }
            log::info!("hosts geographically ordered: {}", ordered.join(";"));
            c.rtts = vec![None; ordered.len()];
            c.hosts = ordered;
            c.set_host(0);
            return Ok(true);
        }
        Err(last.unwrap_or(GeoError::Request {
            url: "(Geo-API)".into(),
            reason: "no host to ask".into(),
        }))
    }

    /// Expands again the groups whose addresses expired; a group whose addresses changed is
    /// rebuilt and rebalanced.
    fn refresh_addresses(&self) {
        let now = Instant::now();
        let due: Vec<(usize, Vec<Option<String>>)> = {
            let mut c = self.chains();
            let mut due = Vec::new();
            for (i, g) in c.groups.iter_mut().enumerate() {
                if g.expires.is_some_and(|e| e <= now) {
                    // Claimed by this request: the others go on with the current addresses
                    // while it resolves (a dead name server must not stall them all).
                    g.expires = Some(now + self.settings.dns_min_ttl);
                    due.push((i, g.configured.clone()));
                }
            }
            due
        };
        for (i, configured) in due {
            let Ok((members, expires)) = self.expand(&configured) else {
                continue;
            };
            let mut c = self.chains();
            let current = c.current_group;
            let Some(g) = c.groups.get_mut(i).filter(|g| g.configured == configured) else {
                continue;
            };
            g.expires = expires;
            let urls = |m: &[Arc<Member>]| -> Vec<Option<String>> {
                let mut v: Vec<_> = m.iter().map(|m| m.url.clone()).collect();
                v.sort();
                v
            };
            if urls(&g.members) != urls(&members) {
                log::info!(
                    "proxy group [{i}]: addresses changed, now {}",
                    members
                        .iter()
                        .map(|m| m.describe())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                g.burned = vec![false; members.len()];
                g.members = members;
                g.active = 0;
                if current == i {
                    c.rebalance();
                }
            }
        }
    }

    /// The reset timers (spec §8.7), before each request.
    fn apply_resets(&self, c: &mut Chains) {
        if let Some(after) = self.settings.proxy_reset_after {
            if c.current_group != 0 && c.left_first_group.is_some_and(|t| t.elapsed() >= after) {
                c.set_group(0);
                log::info!(
                    "switching back to the first proxy group after {}s (CVMFS_PROXY_RESET_AFTER): proxy {}",
                    after.as_secs(),
                    c.active_member().describe()
                );
            } else if c.burned_since.is_some_and(|t| t.elapsed() >= after) {
                c.rebalance();
                log::info!(
                    "failed proxies of group [{}] back in use after {}s (CVMFS_PROXY_RESET_AFTER): proxy {}",
                    c.current_group,
                    after.as_secs(),
                    c.active_member().describe()
                );
            }
        }
        if let Some(after) = self.settings.host_reset_after {
            if c.current_host != 0 && c.left_first_host.is_some_and(|t| t.elapsed() >= after) {
                c.set_host(0);
                log::info!(
                    "switching back to the first host {} after {}s (CVMFS_HOST_RESET_AFTER)",
                    c.hosts[0],
                    after.as_secs()
                );
            }
        }
    }

    fn pick(&self) -> Pick {
        self.refresh_addresses();
        let mut c = self.chains();
        self.apply_resets(&mut c);
        Pick {
            host: c.current_host,
            base: c.hosts[c.current_host].clone(),
            member: c.active_member(),
        }
    }

    /// After `failed` failed: another member of its group, or the next group when all failed
    /// (spec §8.6). Nothing happens when another request switched away already.
    fn switch_proxy_after(&self, failed: &Member, reason: &str) {
        let mut c = self.chains();
        if c.active_member().id != failed.id {
            return;
        }
        let gi = c.current_group;
        let g = &mut c.groups[gi];
        let active = g.active;
        g.burned[active] = true;
        let left: Vec<usize> = (0..g.members.len()).filter(|&i| !g.burned[i]).collect();
        if let Some(&next) = left.get(fastrand::usize(..left.len().max(1))) {
            g.active = next;
            if c.burned_since.is_none() {
                c.burned_since = Some(Instant::now());
            }
            log::warn!(
                "proxy {} failed ({reason}); switching to {} of group [{gi}]",
                failed.describe(),
                c.active_member().describe()
            );
        } else {
            let next = (gi + 1) % c.groups.len();
            c.set_group(next);
            let kind = if c.groups[next].fallback {
                " (fallback)"
            } else {
                ""
            };
            log::warn!(
                "proxy {} failed ({reason}); every proxy of group [{gi}] failed, switching to group [{next}]{kind}: {}",
                failed.describe(),
                c.active_member().describe()
            );
        }
    }

    /// After host `failed` failed: the next host of the chain (unless another request switched
    /// already).
    fn switch_host_after(&self, failed: usize, reason: &str) {
        let mut c = self.chains();
        if c.current_host != failed {
            return;
        }
        let next = (failed + 1) % c.hosts.len();
        c.set_host(next);
        log::warn!(
            "host {} failed ({reason}); switching to host {}",
            c.hosts[failed],
            c.hosts[next]
        );
    }

    /// Measures the round trip to every host (a fetch of `/.cvmfspublished` through the
    /// current proxy) and makes the fastest answering host the active one.
    pub fn probe_hosts(&self) {
        let (hosts, member) = {
            let c = self.chains();
            (c.hosts.clone(), c.active_member())
        };
        let mut results = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let url = format!("{host}/.cvmfspublished");
            let started = Instant::now();
            let ok = member.client().is_ok_and(|client| {
                client
                    .get(&url)
                    .header("Pragma", "no-cache")
                    .header("Cache-Control", "no-cache")
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            });
            results.push(Some(ok.then(|| started.elapsed().as_millis() as u64)));
        }
        let mut c = self.chains();
        if c.hosts != hosts {
            return;
        }
        if let Some((best, _)) = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.flatten().map(|t| (i, t)))
            .min_by_key(|&(_, t)| t)
        {
            if best != c.current_host {
                log::info!(
                    "host probe: switching to the fastest host {}",
                    c.hosts[best]
                );
            }
            c.set_host(best);
        }
        c.rtts = results;
    }

    /// The talk `host info` text.
    pub fn host_info(&self) -> String {
        let c = self.chains();
        let mut out = String::new();
        for (i, host) in c.hosts.iter().enumerate() {
            let state = match c.rtts.get(i).copied().flatten() {
                None => "unprobed".to_string(),
                Some(None) => "host down".to_string(),
                Some(Some(ms)) => format!("{ms} ms"),
            };
            out.push_str(&format!("  [{i}] {host} ({state})\n"));
        }
        out.push_str(&format!(
            "Active host {}: {}\n",
            c.current_host, c.hosts[c.current_host]
        ));
        out
    }

    /// Makes the next host of the chain the active one (talk `host switch`).
    pub fn switch_host(&self) {
        let mut c = self.chains();
        let next = (c.current_host + 1) % c.hosts.len();
        c.set_host(next);
        log::info!("host switched by request: {}", c.hosts[next]);
    }

    /// The talk `proxy info` text.
    pub fn proxy_info(&self) -> String {
        let c = self.chains();
        let mut out = String::from("Load-balance groups:\n");
        for (i, g) in c.groups.iter().enumerate() {
            let names: Vec<String> = g
                .members
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let mut s = m.describe();
                    if let Some(name) = m
                        .configured
                        .as_deref()
                        .filter(|n| Some(*n) != m.url.as_deref())
                    {
                        s.push_str(&format!(" ({})", url_host(name)));
                    }
                    if g.burned[j] {
                        s.push_str(" [failed]");
                    }
                    s
                })
                .collect();
            let kind = if g.fallback { " (fallback)" } else { "" };
            out.push_str(&format!("[{i}] {}{kind}\n", names.join(", ")));
        }
        out.push_str(&format!(
            "Active proxy: [{}] {}\n",
            c.current_group,
            c.active_member().describe()
        ));
        out
    }

    /// The base URL requests currently go to.
    pub fn current_host(&self) -> String {
        let c = self.chains();
        c.hosts[c.current_host].clone()
    }

    /// The host chain, current host first.
    pub fn hosts(&self) -> Vec<String> {
        let c = self.chains();
        let n = c.hosts.len();
        (0..n)
            .map(|i| c.hosts[(c.current_host + i) % n].clone())
            .collect()
    }

    /// The active proxy (the address it is reached at), or `DIRECT`.
    pub fn current_proxy(&self) -> String {
        self.chains().active_member().describe()
    }

    /// Fetches `rel` (e.g. `/.cvmfspublished`, `/data/ab/…`) relative to the repository and
    /// hands the body to `consume`, with fail-over, retries and back-off (spec §8.6).
    pub fn fetch<T>(
        &self,
        rel: &str,
        mut consume: impl FnMut(&mut dyn Read) -> Result<T, ConsumeError>,
    ) -> Result<T, DownloadError> {
        let (nhosts, nproxies) = {
            let c = self.chains();
            (c.hosts.len(), c.total_members())
        };
        let mut used_hosts = 1;
        let mut used_proxies = 1;
        let mut retries = 0u32;
        let mut backoff = Duration::ZERO;
        let mut no_cache = false;
        loop {
            let pick = self.pick();
            let url = format!("{}{}", pick.base, rel);
            let failure = match self.attempt(&pick.member, &url, no_cache, &mut consume) {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let (host_side, transfer, last) = match failure {
                Attempt::Local(cause) => return Err(DownloadError::LocalIo { url, cause }),
                Attempt::BadData(reason) if !no_cache => {
                    log::warn!("{url}: {reason}; retrying without caches");
                    no_cache = true;
                    continue;
                }
                Attempt::BadData(reason) => (true, false, DownloadError::BadData { url, reason }),
                Attempt::Host { transfer, reason } => {
                    (true, transfer, DownloadError::Failed { url, reason })
                }
                Attempt::Proxy { transfer, reason } => (
                    false,
                    transfer,
                    DownloadError::Failed {
                        url,
                        reason: format!("via {}: {reason}", pick.member.describe()),
                    },
                ),
            };
            let reason = match &last {
                DownloadError::Failed { reason, .. } | DownloadError::BadData { reason, .. } => {
                    reason.clone()
                }
                other => other.to_string(),
            };
            if !no_cache && transfer && retries < self.settings.max_retries {
                retries += 1;
                backoff = self.next_backoff(backoff);
                log::info!(
                    "{last}; retry {retries} of {} in {} ms",
                    self.settings.max_retries,
                    backoff.as_millis()
                );
                std::thread::sleep(backoff);
                continue;
            }
            no_cache = false;
            if !host_side && used_proxies < nproxies {
                self.switch_proxy_after(&pick.member, &reason);
                used_proxies += 1;
                continue;
            }
            if used_hosts >= nhosts {
                return Err(last);
            }
            if !host_side {
                // Every proxy failed for this host: the next host, through the proxy tried last
                // (the reference goes back to the first group here, which makes a dead first
                // proxy cost its timeout once more per dead host; the reset timer returns to
                // the first group later).
                used_proxies = 1;
            }
            self.switch_host_after(pick.host, &reason);
            used_hosts += 1;
        }
    }

    /// The wait before a same-URL retry: random up to `CVMFS_BACKOFF_INIT` first, then doubled
    /// up to `CVMFS_BACKOFF_MAX`.
    fn next_backoff(&self, previous: Duration) -> Duration {
        if previous.is_zero() {
            let init = self.settings.backoff_init.as_millis() as u64;
            Duration::from_millis(fastrand::u64(0..=init))
        } else {
            (previous * 2).min(self.settings.backoff_max)
        }
    }

    fn attempt<T>(
        &self,
        member: &Member,
        url: &str,
        no_cache: bool,
        consume: &mut impl FnMut(&mut dyn Read) -> Result<T, ConsumeError>,
    ) -> Result<T, Attempt> {
        let proxied = member.url.is_some();
        // A failure to reach the next hop is the proxy's fault when there is one.
        let transport = |reason: String| {
            if proxied {
                Attempt::Proxy {
                    transfer: true,
                    reason,
                }
            } else {
                Attempt::Host {
                    transfer: true,
                    reason,
                }
            }
        };
        let client = member.client().map_err(|e| transport(e.to_string()))?;
        let mut req = client.get(url).header("Connection", "Keep-Alive");
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
            let code = status.as_u16();
            let host_error = matches!(code, 400 | 404 | 429 | 500..=599) || status.is_redirection();
            return Err(if squid_error || (proxied && !host_error) {
                Attempt::Proxy {
                    transfer: false,
                    reason,
                }
            } else {
                Attempt::Host {
                    transfer: code == 429,
                    reason,
                }
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
    Host { transfer: bool, reason: String },
    Proxy { transfer: bool, reason: String },
    BadData(String),
    Local(std::io::Error),
}

/// A Geo-API answer (`3,1,2\n`): a permutation of 1..=n, returned 0-based.
fn parse_geo_answer(text: &str, n: usize) -> Option<Vec<usize>> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || b == b',') {
        return None;
    }
    let perm: Vec<usize> = body
        .split(',')
        .map(|x| x.parse::<usize>().ok()?.checked_sub(1))
        .collect::<Option<_>>()?;
    let mut seen = vec![false; n];
    for &i in &perm {
        match seen.get_mut(i) {
            Some(s) if !*s => *s = true,
            _ => return None,
        }
    }
    (perm.len() == n).then_some(perm)
}

/// Puts the fallback groups (indices into `groups`) in `order`, in the slots they occupy.
fn reorder_fallback(groups: &mut Vec<Group>, order: &[usize]) {
    let slots: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].fallback).collect();
    if order.len() != slots.len() {
        return;
    }
    let mut taken: Vec<Option<Group>> = std::mem::take(groups).into_iter().map(Some).collect();
    let moved: Vec<Group> = order.iter().filter_map(|&i| taken[i].take()).collect();
    let mut moved = moved.into_iter();
    for (i, slot) in taken.iter_mut().enumerate() {
        if slots.contains(&i) {
            *slot = moved.next();
        }
    }
    *groups = taken.into_iter().flatten().collect();
}

fn describe_groups(groups: &[Group]) -> String {
    groups
        .iter()
        .map(|g| {
            g.members
                .iter()
                .map(|m| m.describe())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join(";")
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
        let d =
            DownloadManager::new(&url, "DIRECT", DownloadSettings::with_timeouts(t, t)).unwrap();
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
    fn geo_answers_are_checked() {
        assert_eq!(parse_geo_answer("3,1,2\n", 3), Some(vec![2, 0, 1]));
        assert_eq!(parse_geo_answer("1,2", 2), Some(vec![0, 1]));
        for bad in [
            "1,1,2\n", "1,2\n", "0,1,2\n", "1, 2,3\n", "", "1,2,4\n", "a,b,c",
        ] {
            assert_eq!(parse_geo_answer(bad, 3), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_and_proxies_are_parsed() {
        let t = Duration::from_secs(1);
        let d = DownloadManager::new(
            "http://a/cvmfs/x; b.example.org/cvmfs/x/ ;",
            "http://p1:3128|p2:3128;DIRECT",
            DownloadSettings::with_timeouts(t, t),
        )
        .unwrap();
        assert_eq!(
            d.hosts(),
            vec!["http://a/cvmfs/x", "http://b.example.org/cvmfs/x"]
        );
        assert!(["http://p1:3128", "http://p2:3128"].contains(&d.current_proxy().as_str()));
        let c = d.chains();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[0].members.len(), 2);
        drop(c);
        assert!(matches!(
            DownloadManager::new("", "DIRECT", DownloadSettings::with_timeouts(t, t)),
            Err(DownloadError::NoHosts)
        ));
        assert!(matches!(
            DownloadManager::new("http://a", "", DownloadSettings::with_timeouts(t, t)),
            Err(DownloadError::NoProxies)
        ));
    }
}
