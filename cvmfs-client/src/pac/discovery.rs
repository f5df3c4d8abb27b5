//! Resolution of `auto` in `CVMFS_HTTP_PROXY` (spec §8.3): the `http_proxy` environment
//! variable, else the answer of the first PAC file of `CVMFS_PAC_URLS` that can be fetched
//! (directly, through the client's download manager) and evaluated. The result is saved in the
//! cache workspace and used again when discovery fails later.

use cvmfs_config::keys::CVMFS_PAC_URLS;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::download::{ConsumeError, DownloadManager, DownloadSettings};

use super::{convert_answer, find_proxy_for_url, PacHost, SystemHost, MAX_SOURCE_LEN};

/// The PAC URL the word `auto` in `CVMFS_PAC_URLS` stands for.
pub const WPAD_URL: &str = "http://wpad/wpad.dat";

/// Why no proxy list could be made.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "no proxy left after auto-discovery of {description:?} (no http_proxy, no usable PAC \
         file in CVMFS_PAC_URLS={pac_urls:?}, no saved proxy list)"
    )]
    NoProxies {
        description: String,
        pac_urls: String,
    },
}

/// What proxy auto-discovery needs to know.
#[derive(Clone)]
pub struct AutoProxy {
    /// `CVMFS_PAC_URLS` (`;`-separated; `auto` = [`WPAD_URL`]).
    pub pac_urls: String,
    /// The `http_proxy` environment variable, which wins over PAC files.
    pub http_proxy: Option<String>,
    /// Base URLs of the host chain; PAC files are asked about the first.
    pub hosts: Vec<String>,
    /// Connect and stall timeout of the PAC download (`CVMFS_TIMEOUT_DIRECT`).
    pub timeout_direct: Duration,
    /// Name lookups and clock of the PAC helper functions.
    pub host: Arc<dyn PacHost + Send + Sync>,
}

impl AutoProxy {
    /// Discovery from a configuration or environment map (`CVMFS_PAC_URLS`, `http_proxy`).
    pub fn from_environment(
        env: &std::collections::HashMap<String, String>,
        server_url: &str,
        timeout_direct: Duration,
    ) -> AutoProxy {
        AutoProxy {
            pac_urls: env.get(CVMFS_PAC_URLS).cloned().unwrap_or_default(),
            http_proxy: env
                .get("http_proxy")
                .cloned()
                .filter(|p| !p.trim().is_empty()),
            // As the download manager spells its hosts.
            hosts: crate::download::host_chain(server_url),
            timeout_direct,
            host: Arc::new(SystemHost::default()),
        }
    }

    /// `AutoProxy()` of the spec: the proxy list that replaces an `auto` group, or `None` when
    /// nothing was found. PAC files are fetched with the client's download manager.
    pub fn discover(&self) -> Option<String> {
        self.discover_with(&|url| self.fetch(url))
    }

    /// [`AutoProxy::discover`] with another way to fetch a PAC file (URL → body), for programs
    /// that have an HTTP client of their own (µCernVM's init has no TLS stack to spare).
    pub fn discover_with(&self, fetch: &dyn Fn(&str) -> Result<Vec<u8>, String>) -> Option<String> {
        if let Some(p) = &self.http_proxy {
            log::info!("proxy auto-discovery: using http_proxy={p}");
            return Some(p.trim().to_string());
        }
        let first_host = self.hosts.first()?;
        let queries: Vec<(String, String)> = self
            .hosts
            .iter()
            .map(|h| (format!("{h}/.cvmfspublished"), host_name(h).to_string()))
            .collect();
        for url in pac_urls(&self.pac_urls) {
            let source = match fetch(&url).and_then(pac_text) {
                Ok(s) => s,
                Err(e) => {
                    log::info!("proxy auto-discovery: cannot fetch PAC file {url}: {e}");
                    continue;
                }
            };
            let answers = match find_proxy_for_url(&source, &queries, Arc::clone(&self.host)) {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("proxy auto-discovery: PAC file {url}: {e}");
                    continue;
                }
            };
            let converted = convert_answer(&answers[0]);
            for (answer, (_, h)) in answers.iter().zip(&queries).skip(1) {
                if convert_answer(answer) != converted {
                    log::info!(
                        "proxy auto-discovery: PAC file {url} answers {answer:?} for {h}; \
                         only the answer for {first_host} is used"
                    );
                }
            }
            if converted.is_empty() {
                log::warn!(
                    "proxy auto-discovery: PAC file {url} answered {:?}: no HTTP proxy in it",
                    answers[0]
                );
                continue;
            }
            log::info!("proxy auto-discovery: PAC file {url} gives proxies {converted}");
            return Some(converted);
        }
        None
    }

    /// Downloads a PAC file directly, with the client's one HTTP fetcher.
    fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let dl = DownloadManager::new(
            url,
            "DIRECT",
            DownloadSettings::with_timeouts(self.timeout_direct, self.timeout_direct),
        )
        .map_err(|e| e.to_string())?;
        let bytes = dl
            .fetch("", |body: &mut dyn Read| {
                let mut v = Vec::new();
                body.take(MAX_SOURCE_LEN as u64 + 1)
                    .read_to_end(&mut v)
                    .map_err(ConsumeError::Transfer)?;
                Ok(v)
            })
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    }
}

/// The text of a fetched PAC file.
fn pac_text(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_SOURCE_LEN {
        return Err(format!("larger than {MAX_SOURCE_LEN} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// The PAC URLs of `CVMFS_PAC_URLS`, `auto` replaced by [`WPAD_URL`].
pub fn pac_urls(list: &str) -> Vec<String> {
    list.split(';')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| if u == "auto" { WPAD_URL } else { u }.to_string())
        .collect()
}

/// The host name of a base URL: after the scheme, up to the next `:` or `/`.
pub fn host_name(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split([':', '/']).next().unwrap_or(rest)
}

/// `ResolveProxyDescription`: every `;`-group that is exactly `auto` replaced by `discovered`
/// (computed only when needed); groups that end up empty are removed.
pub fn resolve_description(
    description: &str,
    discover: impl FnOnce() -> Option<String>,
) -> (String, Option<String>) {
    if !has_auto_group(description) {
        return (description.to_string(), None);
    }
    let discovered = discover();
    let groups: Vec<String> = description
        .split(';')
        .map(str::trim)
        .filter_map(|g| {
            if g == "auto" {
                discovered.clone()
            } else {
                Some(g.to_string())
            }
        })
        .filter(|g| !g.is_empty())
        .collect();
    (groups.join(";"), discovered)
}

pub use cvmfs_config::proxy::has_auto_group;

/// Where the last discovered proxy list of a repository is kept.
pub fn saved_list_path(workspace: &Path, fqrn: &str) -> PathBuf {
    workspace.join(format!("proxies.{fqrn}-{fqrn}"))
}

/// The proxy description to build the download manager with: `auto` resolved; the result saved
/// in `workspace`; when discovery fails, the saved list (if any) replaces the whole description.
pub fn resolve_for_mount(
    description: &str,
    auto: &AutoProxy,
    workspace: Option<(&Path, &str)>,
) -> Result<String, DiscoveryError> {
    let (mut list, discovered) = resolve_description(description, || auto.discover());
    if has_auto_group(description) {
        match (discovered, workspace) {
            (Some(_), Some((dir, fqrn))) => {
                let path = saved_list_path(dir, fqrn);
                if let Err(e) = std::fs::write(&path, format!("{list}\n")) {
                    log::warn!("cannot save the proxy list to {}: {e}", path.display());
                }
            }
            (None, Some((dir, fqrn))) => {
                let path = saved_list_path(dir, fqrn);
                match std::fs::read_to_string(&path) {
                    Ok(saved) if !saved.trim().is_empty() => {
                        log::info!(
                            "proxy auto-discovery failed; using the saved proxy list {}",
                            saved.trim()
                        );
                        list = saved.trim().to_string();
                    }
                    _ => log::info!("proxy auto-discovery failed; no saved proxy list"),
                }
            }
            (_, None) => {}
        }
        log::info!("proxies after auto-discovery: {list:?}");
    }
    if list.split([';', '|']).all(|p| p.trim().is_empty()) {
        return Err(DiscoveryError::NoProxies {
            description: description.to_string(),
            pac_urls: auto.pac_urls.clone(),
        });
    }
    Ok(list)
}
