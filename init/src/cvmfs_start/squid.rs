//! `cvmfs_wait_on_squid` (spec §9.7): before mounting, wait until some proxy delivers the
//! repository manifest, so that a VM booted together with its site squid does not fail.
//!
//! Deviations from the original, as the spec recommends: `DIRECT` means "no proxy" instead of
//! being probed as a host name, and an empty proxy list sleeps one period per round instead of
//! spinning. `auto` is resolved by the client library's proxy auto-discovery (PAC files,
//! spec §8.3) before the list is flattened.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use cvmfs_client::pac::discovery::{resolve_description, AutoProxy};

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

/// `auto` groups of a proxy description replaced by what proxy auto-discovery finds (the
/// client library's resolution and PAC interpreter; an `auto` that finds nothing is dropped).
/// PAC files are fetched with PID 1's own HTTP client: the client's download manager would add
/// a TLS stack to the init executable.
pub fn resolve_auto(description: &str, auto: &AutoProxy) -> String {
    let fetch = |url: &str| fetch_pac(url, auto.timeout_direct);
    resolve_description(description.trim_matches('"'), || auto.discover_with(&fetch)).0
}

/// One PAC file, directly; `Host` is the name of the URL.
fn fetch_pac(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let (connect, authority, path) = split_http_url(url)?;
    let addr = connect
        .to_socket_addrs()
        .map_err(|e| format!("{connect}: {e}"))?
        .next()
        .ok_or_else(|| format!("{connect}: no address"))?;
    let limits = crate::http::Timeouts {
        connect: timeout,
        total: timeout.saturating_mul(3),
    };
    crate::http::get(addr, &path, &[("Host", &authority)], limits).map_err(|e| e.to_string())
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
    while n < head.len() {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{connect_to}: {e}")),
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&head[..n]);
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
            server_urls[(round % server_urls.len() as u64) as usize].trim_end_matches('/')
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
    fn auto_is_resolved_by_a_pac_file_and_the_probe_goes_through_its_squid() {
        let squid = cvmfs_client::testing::SquidProxy::start().unwrap();
        let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
        let pac_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            pac_dir.path().join("wpad.dat"),
            format!(
                "function FindProxyForURL(url, host) {{\n\
                     if (dnsDomainIs(host, '127.0.0.1')) return 'PROXY 127.0.0.1:{}';\n\
                     return 'DIRECT';\n\
                 }}",
                squid.port()
            ),
        )
        .unwrap();
        let pac_server = StaticHttpServer::start(pac_dir.path()).unwrap();
        let repo = format!("{}/cvmfs/demo.cernvm.test", server.url());
        let mut env = std::collections::HashMap::new();
        env.insert(
            "CVMFS_PAC_URLS".to_string(),
            format!("{}/wpad.dat", pac_server.url()),
        );
        let auto = AutoProxy::from_environment(&env, &repo, Duration::from_secs(3));
        let description = resolve_auto("\"auto;DIRECT\"", &auto);
        assert_eq!(description, format!("127.0.0.1:{};DIRECT", squid.port()));
        let proxies = flatten_proxies(&description);
        let (via, _) = wait(&[repo], &proxies, Duration::from_secs(3), Some(1)).unwrap();
        assert_eq!(via, ProbeVia::Proxy(format!("127.0.0.1:{}", squid.port())));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !squid
            .access_log()
            .contains("/cvmfs/demo.cernvm.test/.cvmfspublished")
        {
            assert!(Instant::now() < deadline, "squid saw no probe");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Without any PAC file `auto` disappears and the rest remains.
        env.insert(
            "CVMFS_PAC_URLS".to_string(),
            "http://127.0.0.1:1/none.pac".into(),
        );
        let auto = AutoProxy::from_environment(&env, "http://s1", Duration::from_secs(3));
        assert_eq!(resolve_auto("auto;DIRECT", &auto), "DIRECT");
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
