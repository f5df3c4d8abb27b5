//! `cvmfs_wait_on_squid` (spec §9.7): before mounting, wait until some proxy delivers the
//! repository manifest, so that a VM booted together with its site squid does not fail.
//!
//! Deviations from the original, as the spec recommends: `DIRECT` means "no proxy" instead of
//! being probed as a host name, and an empty proxy list sleeps one period per round instead of
//! spinning. `auto` is resolved before the list is flattened, as the original does it: by
//! `cvmfs2 __wpad__` (proxy auto-discovery with PAC files, spec §8.3), so the PAC interpreter
//! is in the `cvmfs2` executable only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cvmfs_config::proxy::has_auto_group;

/// One element of the flattened proxy list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVia {
    Direct,
    /// `host:port` of an HTTP proxy.
    Proxy(String),
}

impl std::fmt::Display for ProbeVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeVia::Direct => f.write_str("DIRECT"),
            ProbeVia::Proxy(p) => f.write_str(p),
        }
    }
}

/// `auto` groups of a proxy description replaced by what proxy auto-discovery finds:
/// `cvmfs2 __wpad__ <description> <server URLs>` with `env` (`CVMFS_PAC_URLS`, `http_proxy`,
/// `CVMFS_TIMEOUT_DIRECT`) in its environment; an `auto` that finds nothing is dropped. When
/// `cvmfs2` cannot answer, the description comes back unchanged and [`flatten_proxies`] skips
/// its `auto` with a warning.
pub fn resolve_auto(
    description: &str,
    server_urls: &str,
    env: &[(&str, String)],
    cvmfs2: &Path,
) -> String {
    let description = description.trim_matches('"');
    if !has_auto_group(description) {
        return description.to_string();
    }
    let mut command = Command::new(cvmfs2);
    command
        .arg("__wpad__")
        .arg(description)
        .arg(server_urls)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    match command.output() {
        Ok(out) if out.status.success() => {
            let resolved = String::from_utf8_lossy(&out.stdout).trim().to_string();
            log::info!("cvmfs_wait_on_squid: proxies {description:?} resolve to {resolved:?}");
            resolved
        }
        Ok(out) => {
            log::warn!(
                "cvmfs_wait_on_squid: {} __wpad__ failed ({})",
                cvmfs2.display(),
                out.status
            );
            description.to_string()
        }
        Err(e) => {
            log::warn!("cvmfs_wait_on_squid: cannot run {}: {e}", cvmfs2.display());
            description.to_string()
        }
    }
}

/// Splits a proxy description at `;` and `|` into the hosts to probe; an unresolved `auto` is
/// skipped (see [`resolve_auto`]).
pub fn flatten_proxies(description: &str) -> Vec<ProbeVia> {
    let mut out = Vec::new();
    for item in description
        .trim_matches('"')
        .split([';', '|'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if item.eq_ignore_ascii_case("DIRECT") {
            out.push(ProbeVia::Direct);
        } else if item == "auto" {
            log::warn!("cvmfs_wait_on_squid: skipping the unresolved 'auto'");
        } else {
            let hostport = item
                .strip_prefix("http://")
                .unwrap_or(item)
                .trim_end_matches('/');
            out.push(ProbeVia::Proxy(hostport.to_string()));
        }
    }
    out
}

/// `http://host[:port]/path` → (`host:port`, `host[:port]`, `/path`).
fn split_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let connect = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((connect, authority.to_string(), path.to_string()))
}

/// One HTTP GET of `url`, directly or through `via`; success is a `200` status line.
pub fn probe(url: &str, via: &ProbeVia, timeout: Duration) -> Result<(), String> {
    let (origin, host, path) = split_http_url(url)?;
    let (connect_to, target) = match via {
        ProbeVia::Direct => (origin, path),
        ProbeVia::Proxy(p) => {
            let p = if p
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                p.clone()
            } else {
                format!("{p}:80")
            };
            (p, url.to_string())
        }
    };
    let addr = connect_to
        .to_socket_addrs()
        .map_err(|e| format!("{connect_to}: {e}"))?
        .next()
        .ok_or_else(|| format!("{connect_to}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{connect_to}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let request = format!(
        "GET {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ucernvm-init\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{connect_to}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while let Some(free) = head.get_mut(n..).filter(|f| !f.is_empty()) {
        match s.read(free) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{connect_to}: {e}")),
        }
        if head.get(..n).unwrap_or_default().contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(head.get(..n).unwrap_or_default());
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{url}: {status_line:?}")),
    }
}

/// Waits until a probe of `<server url>/.cvmfspublished` succeeds. Round `i` uses server URL
/// `i mod n` and tries every proxy; each probe is given `period` and the rest of the period is
/// slept after a failure. `max_rounds` = `None` waits forever, as the original.
pub fn wait(
    server_urls: &[String],
    proxies: &[ProbeVia],
    period: Duration,
    max_rounds: Option<u64>,
) -> Result<(ProbeVia, String), String> {
    if server_urls.is_empty() {
        return Err("no server URL to probe".into());
    }
    let list: Vec<String> = proxies.iter().map(|p| p.to_string()).collect();
    crate::console::info(&format!("waiting on proxies [{}]", list.join(" ")));
    let mut round: u64 = 0;
    loop {
        if max_rounds.is_some_and(|m| round >= m) {
            return Err(format!("no proxy answered within {round} rounds"));
        }
        let url = format!(
            "{}/.cvmfspublished",
            server_urls
                .get((round % server_urls.len() as u64) as usize)
                .map_or("", |u| u.trim_end_matches('/'))
        );
        if proxies.is_empty() {
            std::thread::sleep(period);
        }
        for via in proxies {
            crate::console::info(&format!("probing {via} --> {url}..."));
            let t0 = Instant::now();
            match probe(&url, via, period) {
                Ok(()) => return Ok((via.clone(), url)),
                Err(e) => {
                    log::info!("probe failed: {e}");
                    std::thread::sleep(period.saturating_sub(t0.elapsed()));
                }
            }
        }
        round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvmfs_client::testing::{fixture_dir, StaticHttpServer};
    use std::net::TcpListener;

    #[test]
    fn proxy_descriptions_are_flattened() {
        assert_eq!(
            flatten_proxies("\"http://p1:3128|p2:3128;;DIRECT\""),
            vec![
                ProbeVia::Proxy("p1:3128".into()),
                ProbeVia::Proxy("p2:3128".into()),
                ProbeVia::Direct
            ]
        );
        assert_eq!(flatten_proxies("auto;DIRECT"), vec![ProbeVia::Direct]);
        assert!(flatten_proxies("").is_empty());
    }

    #[test]
    fn direct_probe_of_a_real_repository_server() {
        let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
        let good = format!("{}/cvmfs/demo.cernvm.test", server.url());
        let missing = format!("{}/cvmfs/nope.test", server.url());
        // Round 0 probes the missing repository and fails; round 1 reaches the good one.
        let (via, url) = wait(
            &[missing.clone(), good.clone()],
            &[ProbeVia::Direct],
            Duration::from_millis(100),
            Some(3),
        )
        .unwrap();
        assert_eq!(via, ProbeVia::Direct);
        assert_eq!(url, format!("{good}/.cvmfspublished"));
        let e = wait(
            &[missing],
            &[ProbeVia::Direct],
            Duration::from_millis(50),
            Some(2),
        )
        .unwrap_err();
        assert!(e.contains("2 rounds"), "{e}");
    }

    #[test]
    fn probe_through_a_proxy_sends_the_absolute_url() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nmanifest").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        probe(
            "http://stratum1.invalid/cvmfs/r/.cvmfspublished",
            &ProbeVia::Proxy(format!("127.0.0.1:{port}")),
            Duration::from_secs(5),
        )
        .unwrap();
        let request = proxy.join().unwrap();
        assert!(
            request.starts_with("GET http://stratum1.invalid/cvmfs/r/.cvmfspublished HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(request.contains("Host: stratum1.invalid\r\n"));
    }

    #[test]
    fn refused_connections_and_bad_urls_fail() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe(
            &format!("http://127.0.0.1:{port}/x"),
            &ProbeVia::Direct,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains(&port.to_string()), "{e}");
        assert!(
            probe("https://x/y", &ProbeVia::Direct, Duration::from_secs(1))
                .unwrap_err()
                .contains("only http://")
        );
    }
}
