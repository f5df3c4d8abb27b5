//! The download manager against servers and proxies that fail (spec §8.2, §8.6, §8.7): load
//! balancing inside a `|` group, proxy names expanded to addresses by our own DNS server,
//! fallback proxies, the reset timers, same-URL retries, and a real squid behind a dead first
//! proxy. Every case ends in the right bytes or a clear error, and DIRECT is used only when
//! configured (the origin servers count requests that reach them without a proxy).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use cvmfs_client::download::{
    url_host, ConsumeError, DownloadError, DownloadManager, DownloadSettings, IpFamily,
};
use cvmfs_client::testing::{DnsServer, Fault, FaultServer, SquidProxy};

const REL: &str = "/data/ab/object";

fn content() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// A document root with the test object under `/cvmfs/x`.
fn docroot() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cvmfs/x/data/ab");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("object"), content()).unwrap();
    d
}

fn server(root: &Path) -> FaultServer {
    FaultServer::start(root, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap()
}

/// `http://127.0.0.1:<port>` where nothing listens.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn settings() -> DownloadSettings {
    DownloadSettings {
        max_retries: 0,
        ..DownloadSettings::with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
    }
}

/// Reads the body and checks it (a wrong body is bad data, as a hash mismatch is).
fn fetch(d: &DownloadManager) -> Result<(), DownloadError> {
    d.fetch(REL, |body: &mut dyn Read| {
        let mut v = Vec::new();
        body.read_to_end(&mut v).map_err(ConsumeError::Transfer)?;
        if v == content() {
            Ok(())
        } else {
            Err(ConsumeError::BadData(format!("{} wrong bytes", v.len())))
        }
    })
}

fn host(origin: &FaultServer) -> String {
    format!("{}/cvmfs/x", origin.url())
}

#[test]
fn a_group_is_load_balanced_from_a_random_start_and_rotates_on_failure() {
    let root = docroot();
    let origin = server(root.path());
    let proxies: Vec<FaultServer> = (0..3).map(|_| server(root.path())).collect();
    let group = proxies
        .iter()
        .map(FaultServer::url)
        .collect::<Vec<_>>()
        .join("|");
    // Random start: over many managers, more than one member begins.
    let mut starts = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let d = DownloadManager::new(&host(&origin), &group, settings()).unwrap();
        starts.insert(d.current_proxy());
    }
    assert!(starts.len() > 1, "always the same first member: {starts:?}");

    // Every failure kind of one member moves on to another member of the group.
    // (A 5xx through a proxy is the server's answer, spec §8.5; 407 is the proxy's own.)
    for fault in [Fault::Close, Fault::Status(407), Fault::Truncate] {
        let d = DownloadManager::new(&host(&origin), &group, settings()).unwrap();
        let first = d.current_proxy();
        let bad = proxies.iter().find(|p| p.url() == first).unwrap();
        bad.set(fault);
        fetch(&d).unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_ne!(
            d.current_proxy(),
            first,
            "{fault:?}: still on the failed member"
        );
        assert!(d.proxy_info().contains("[failed]"), "{}", d.proxy_info());
        bad.set(Fault::None);
    }
    // Corrupt data from a proxy: retried without caches, then the next member or host.
    let d = DownloadManager::new(&host(&origin), &group, settings()).unwrap();
    let first = d.current_proxy();
    let bad = proxies.iter().find(|p| p.url() == first).unwrap();
    bad.set_for(1, Fault::Corrupt);
    fetch(&d).unwrap();
    assert_eq!(origin.direct_requests(), 0, "DIRECT was never configured");
}

#[test]
fn proxy_names_become_one_member_per_address_up_to_the_limit_and_follow_dns() {
    let root = docroot();
    let origin = server(root.path());
    // Three loopback addresses, one port: three proxies behind one name.
    let first = FaultServer::start(root.path(), "127.0.0.1".parse().unwrap(), 0).unwrap();
    let port = first.addr.port();
    let others: Vec<FaultServer> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| FaultServer::start(root.path(), ip.parse().unwrap(), port).unwrap())
        .collect();
    let dns = DnsServer::start().unwrap();
    let all: Vec<(IpAddr, u32)> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| (ip.parse().unwrap(), 1))
        .collect();
    dns.set("squids.site.test", &all);
    let proxy = format!("http://squids.site.test:{port}");

    let make = |max: usize| {
        let s = DownloadSettings {
            max_ipaddr_per_proxy: max,
            dns_min_ttl: Duration::from_secs(1),
            ..settings()
        };
        let d = DownloadManager::new(&host(&origin), "DIRECT", s).unwrap();
        d.set_nameserver(Some(dns.addr));
        d.install_proxies(&proxy, "").unwrap();
        d
    };
    let d = make(2);
    let info = d.proxy_info();
    assert_eq!(info.matches("(squids.site.test)").count(), 2, "{info}");
    let d = make(0);
    let info = d.proxy_info();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(info.contains(&format!("http://{ip}:{port}")), "{info}");
    }
    fetch(&d).unwrap();
    assert!(d.current_proxy().starts_with("http://127.0.0."));

    // After the TTL the name is resolved again; the group follows the new answer.
    dns.set("squids.site.test", &[("127.0.0.3".parse().unwrap(), 1)]);
    std::thread::sleep(Duration::from_millis(1300));
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), format!("http://127.0.0.3:{port}"));
    assert!(!d.proxy_info().contains("127.0.0.1"), "{}", d.proxy_info());
    assert!(others[1].proxied_requests() >= 1);
    assert_eq!(origin.direct_requests(), 0);
}

#[test]
fn fallback_proxies_come_last_and_direct_only_when_configured() {
    let root = docroot();
    let origin = server(root.path());
    let fallback = server(root.path());
    let dead = dead_url();

    // DIRECT in the regular list is dropped when fallback proxies exist.
    let s = DownloadSettings {
        fallback_proxy: format!("{};DIRECT", fallback.url()),
        ..settings()
    };
    let d = DownloadManager::new(&host(&origin), &format!("{dead};DIRECT"), s).unwrap();
    assert!(!d.proxy_info().contains("DIRECT"), "{}", d.proxy_info());
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), fallback.url());
    assert!(d.proxy_info().contains("(fallback)"));
    assert_eq!(fallback.proxied_requests(), 1);
    assert_eq!(origin.direct_requests(), 0);

    // Only dead proxies and no DIRECT: a clear error, the origin never asked directly.
    let d = DownloadManager::new(&host(&origin), &dead, settings()).unwrap();
    let err = fetch(&d).unwrap_err().to_string();
    assert!(err.contains(&format!("via {dead}")), "{err}");
    assert_eq!(origin.direct_requests(), 0);

    // DIRECT configured after a dead proxy: used.
    let d = DownloadManager::new(&host(&origin), &format!("{dead};DIRECT"), settings()).unwrap();
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), "DIRECT");
    assert_eq!(origin.direct_requests(), 1);
}

#[test]
fn reset_timers_return_to_the_first_group_and_host() {
    let root = docroot();
    let origin = server(root.path());
    let first_proxy = server(root.path());
    let second_proxy = server(root.path());
    let s = DownloadSettings {
        proxy_reset_after: Some(Duration::from_secs(1)),
        host_reset_after: Some(Duration::from_secs(1)),
        ..settings()
    };
    let proxies = format!("{};{}", first_proxy.url(), second_proxy.url());
    let d = DownloadManager::new(&host(&origin), &proxies, s.clone()).unwrap();
    first_proxy.set(Fault::Close);
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), second_proxy.url());
    first_proxy.set(Fault::None);
    std::thread::sleep(Duration::from_millis(1200));
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), first_proxy.url(), "{}", d.proxy_info());

    // Without the timer the client stays where it failed over to.
    let d = DownloadManager::new(&host(&origin), &proxies, settings()).unwrap();
    first_proxy.set(Fault::Close);
    fetch(&d).unwrap();
    first_proxy.set(Fault::None);
    std::thread::sleep(Duration::from_millis(1200));
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), second_proxy.url());

    // Hosts: a 503 from the first moves to the second, the timer moves back.
    let second_host = server(root.path());
    let hosts = format!("{};{}", host(&origin), host(&second_host));
    let d = DownloadManager::new(&hosts, "DIRECT", s).unwrap();
    origin.set(Fault::Status(503));
    fetch(&d).unwrap();
    assert_eq!(d.current_host(), host(&second_host));
    origin.set(Fault::None);
    fetch(&d).unwrap();
    assert_eq!(
        d.current_host(),
        host(&second_host),
        "no return before the timer"
    );
    std::thread::sleep(Duration::from_millis(1200));
    fetch(&d).unwrap();
    assert_eq!(d.current_host(), host(&origin), "{}", d.host_info());
}

#[test]
fn transfer_errors_are_retried_with_backoff_up_to_max_retries() {
    let root = docroot();
    let origin = server(root.path());
    let s = |retries| DownloadSettings {
        max_retries: retries,
        backoff_init: Duration::from_millis(100),
        backoff_max: Duration::from_millis(300),
        ..settings()
    };
    // One host, DIRECT: without retries two interrupted transfers fail the request.
    let d = DownloadManager::new(&host(&origin), "DIRECT", s(0)).unwrap();
    origin.set_for(2, Fault::Truncate);
    assert!(fetch(&d).is_err());
    // With two retries the third attempt succeeds, on the same server.
    let d = DownloadManager::new(&host(&origin), "DIRECT", s(2)).unwrap();
    origin.set_for(2, Fault::Close);
    let before = origin.direct_requests();
    fetch(&d).unwrap();
    assert_eq!(origin.direct_requests() - before, 3);
    // HTTP errors are not transfer errors: no retry.
    origin.set_for(1, Fault::Status(404));
    let before = origin.direct_requests();
    assert!(fetch(&d).is_err());
    assert_eq!(origin.direct_requests() - before, 1);
}

#[test]
fn a_real_squid_behind_a_dead_and_a_silent_proxy() {
    let root = docroot();
    let origin = server(root.path());
    let squid = SquidProxy::start().unwrap_or_else(|e| panic!("{e}"));
    let silent = server(root.path());
    silent.set(Fault::Silent);
    let squid_url = format!("http://127.0.0.1:{}", squid.port());
    let proxies = format!("{};{};{squid_url}", dead_url(), silent.url());
    let d = DownloadManager::new(&host(&origin), &proxies, settings()).unwrap();
    let started = std::time::Instant::now();
    fetch(&d).unwrap();
    assert_eq!(d.current_proxy(), squid_url);
    // The silent member cost one timeout; later requests go straight to squid.
    let first = started.elapsed();
    let again = std::time::Instant::now();
    fetch(&d).unwrap();
    eprintln!("first request {first:?}, second {:?}", again.elapsed());
    assert!(squid.access_log().contains("/cvmfs/x/data/ab/object"));
    assert_eq!(
        silent.proxied_requests(),
        1,
        "the silent proxy is not asked again"
    );
    assert_eq!(origin.direct_requests(), 0, "only squid reached the origin");
    assert!(
        origin.proxied_requests() >= 1,
        "squid fetched from the origin"
    );

    // A dead first server behind the same proxies: squid's error page for it does not send the
    // client back to the silent proxy (one timeout for the silent proxy per manager, not one
    // per dead host).
    let hosts = format!("{}/cvmfs/x;{}", dead_url(), host(&origin));
    let d = DownloadManager::new(&hosts, &proxies, settings()).unwrap();
    let before = silent.proxied_requests();
    for _ in 0..3 {
        fetch(&d).unwrap();
    }
    assert_eq!(silent.proxied_requests() - before, 1, "{}", d.proxy_info());
    assert_eq!(d.current_host(), host(&origin));
}

/// A Stratum-1 Geo-API responder on 127.0.0.1 (spec §8.8), as origin or as the proxy in front
/// of it: answers `GET …/api/v1.0/geo/<proxy or uuid>/<name>,<name>,…` with the 1-based
/// positions of the names in its order of preference, best first; records each request line.
struct GeoResponder {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GeoResponder {
    /// `prefer`: names best first; names not listed come last. `broken`: answer garbage.
    fn start(prefer: &'static [&'static str], broken: bool) -> GeoResponder {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().push(line.trim().to_string());
                let target = line.split_whitespace().nth(1).unwrap_or("");
                let body = match target.split("/api/v1.0/geo/").nth(1) {
                    Some(rest) if !broken => {
                        let names: Vec<&str> =
                            rest.rsplit('/').next().unwrap_or("").split(',').collect();
                        let rank = |n: &str| prefer.iter().position(|p| *p == n).unwrap_or(99);
                        let mut idx: Vec<usize> = (1..=names.len()).collect();
                        idx.sort_by_key(|&i| rank(names[i - 1]));
                        let list: Vec<String> = idx.iter().map(usize::to_string).collect();
                        format!("{}\n", list.join(","))
                    }
                    Some(_) => "1,1,x\n".to_string(),
                    None => String::new(),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        GeoResponder { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Host names resolved by our DNS server to 127.0.0.1, so that the Geo-API request carries
/// real names.
fn geo_hosts(port: u16) -> (DnsServer, String) {
    let dns = DnsServer::start().unwrap();
    dns.set("*", &[(IpAddr::V4(Ipv4Addr::LOCALHOST), 300)]);
    let hosts = ["s3.geo.test", "s1.geo.test", "s2.geo.test"]
        .iter()
        .map(|h| format!("http://{h}:{port}/cvmfs/x"))
        .collect::<Vec<_>>()
        .join(";");
    (dns, hosts)
}

#[test]
fn geo_api_orders_the_hosts_through_the_proxy_and_falls_back_on_errors() {
    // The responder is the proxy: the request must go through it, naming the proxy.
    let geo = GeoResponder::start(&["s2.geo.test", "s3.geo.test", "s1.geo.test"], false);
    let (dns, hosts) = geo_hosts(80);
    let s = DownloadSettings {
        use_geoapi: true,
        ..settings()
    };
    let d = DownloadManager::new(&hosts, "DIRECT", s.clone()).unwrap();
    d.set_nameserver(Some(dns.addr));
    d.install_proxies(&format!("http://squid.geo.test:{}", geo.port), "")
        .unwrap();
    assert!(d.probe_geo("uuid-not-used").unwrap());
    let order: Vec<String> = d.hosts().iter().map(|h| url_host(h).to_string()).collect();
    assert_eq!(order, ["s2.geo.test", "s3.geo.test", "s1.geo.test"]);
    assert!(d
        .host_info()
        .contains("Active host 0: http://s2.geo.test:80/cvmfs/x"));
    let requests = geo.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let want = "/cvmfs/x/api/v1.0/geo/squid.geo.test/s1.geo.test,s2.geo.test,s3.geo.test";
    assert!(
        requests[0].starts_with("GET http://s") && requests[0].contains(want),
        "{requests:?}"
    );

    // A broken answer: three hosts asked, the configured order kept.
    let broken = GeoResponder::start(&[], true);
    let d = DownloadManager::new(&hosts, "DIRECT", s.clone()).unwrap();
    d.set_nameserver(Some(dns.addr));
    d.install_proxies(&format!("http://squid.geo.test:{}", broken.port), "")
        .unwrap();
    let err = d.probe_geo("u").unwrap_err().to_string();
    assert!(err.contains("no permutation"), "{err}");
    assert_eq!(broken.requests().len(), 3);
    let order: Vec<String> = d.hosts().iter().map(|h| url_host(h).to_string()).collect();
    assert_eq!(order, ["s3.geo.test", "s1.geo.test", "s2.geo.test"]);

    // A dead proxy: an error, the order kept.
    let d = DownloadManager::new(&hosts, &dead_url(), s.clone()).unwrap();
    assert!(d.probe_geo("u").is_err());
    assert!(d.hosts()[0].contains("s3.geo.test"));
}

#[test]
fn geo_api_without_a_proxy_names_the_client_by_its_uuid() {
    let geo = GeoResponder::start(&["s1.geo.test", "s2.geo.test", "s3.geo.test"], false);
    let (dns, hosts) = geo_hosts(geo.port);
    let d = DownloadManager::new(&hosts, "DIRECT", settings()).unwrap();
    d.set_nameserver(Some(dns.addr));
    assert!(d.probe_geo("4c1d-uuid").unwrap());
    assert!(d.hosts()[0].contains("s1.geo.test"), "{:?}", d.hosts());
    let requests = geo.requests();
    assert!(
        requests[0].starts_with("GET /cvmfs/x/api/v1.0/geo/4c1d-uuid/s1.geo.test,"),
        "{requests:?}"
    );
}

#[test]
fn geo_api_orders_fallback_proxies_through_the_fallback_proxy_never_direct() {
    let geo = GeoResponder::start(
        &[
            "s3.geo.test",
            "s1.geo.test",
            "s2.geo.test",
            "+PXYSEP+",
            "fb-b.geo.test",
            "fb-a.geo.test",
        ],
        false,
    );
    let (dns, hosts) = geo_hosts(80);
    let s = DownloadSettings {
        fallback_proxy: format!(
            "http://fb-a.geo.test:{p};http://fb-b.geo.test:{p}",
            p = geo.port
        ),
        ..settings()
    };
    // DIRECT is dropped because fallback proxies exist: only fallback groups remain.
    let d = DownloadManager::new(&hosts, "DIRECT", s.clone()).unwrap();
    d.set_nameserver(Some(dns.addr));
    d.install_proxies("DIRECT", &s.fallback_proxy).unwrap();
    assert!(d.probe_geo("client-uuid").unwrap());
    let requests = geo.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("GET http://s")
            && requests[0].contains(
                "/api/v1.0/geo/client-uuid/s1.geo.test,s2.geo.test,s3.geo.test,+PXYSEP+,fb-a.geo.test,fb-b.geo.test"
            ),
        "asked through the fallback proxy, naming the client: {requests:?}"
    );
    assert!(d.hosts()[0].contains("s3.geo.test"), "{:?}", d.hosts());
    let info = d.proxy_info();
    let first = info.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("[0] ") && first.contains("(fb-b.geo.test)"),
        "{info}"
    );
}

/// `AAAA` answers are used: a server and a proxy reachable only over IPv6 loopback, named by
/// our DNS server (itself on `::1`), with `CVMFS_IPFAMILY_PREFER` choosing the family tried
/// first when a name has both.
#[test]
fn aaaa_records_reach_servers_and_proxies_over_ipv6() {
    use std::net::{Ipv6Addr, SocketAddr};
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let root = docroot();
    let origin = match FaultServer::start(root.path(), v6, 0) {
        Ok(s) => s,
        Err(e) => {
            cvmfs_client::testing::skip(format!("no IPv6 loopback here: {e}"));
            return;
        }
    };
    let proxy = FaultServer::start(root.path(), v6, 0).unwrap();
    let dns = DnsServer::start_on(SocketAddr::new(v6, 0)).unwrap();
    dns.set("six.site.test", &[(v6, 300)]);
    // Both families; the IPv4 address has nothing listening.
    dns.set(
        "both.site.test",
        &[(v6, 300), (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 300)],
    );
    let host = |name: &str| format!("http://{name}:{}/cvmfs/x", origin.addr.port());

    // A host with only an AAAA record, DIRECT.
    let d = DownloadManager::new(&host("six.site.test"), "DIRECT", settings()).unwrap();
    d.set_nameserver(Some(dns.addr));
    fetch(&d).unwrap();
    assert_eq!(origin.direct_requests(), 1);

    // A proxy name with an AAAA record becomes an `http://[::1]:port` member.
    let d = DownloadManager::new(&host("six.site.test"), "DIRECT", settings()).unwrap();
    d.set_nameserver(Some(dns.addr));
    d.install_proxies(&format!("http://six.site.test:{}", proxy.addr.port()), "")
        .unwrap();
    assert_eq!(
        d.current_proxy(),
        format!("http://[::1]:{}", proxy.addr.port())
    );
    fetch(&d).unwrap();
    assert_eq!(proxy.proxied_requests(), 1);

    // Both families: the preferred one is the first member; with IPv4 preferred the dead IPv4
    // member fails over to the IPv6 one.
    for (prefer, first) in [(IpFamily::V6, "[::1]"), (IpFamily::V4, "127.0.0.9")] {
        let s = DownloadSettings {
            ipfamily_prefer: prefer,
            ..settings()
        };
        let d = DownloadManager::new(&host("six.site.test"), "DIRECT", s).unwrap();
        d.set_nameserver(Some(dns.addr));
        d.install_proxies(&format!("http://both.site.test:{}", proxy.addr.port()), "")
            .unwrap();
        let info = d.proxy_info();
        let members = info.lines().nth(1).unwrap_or_default().to_string();
        assert!(
            members.starts_with(&format!("[0] http://{first}:")),
            "{prefer:?}: {info}"
        );
        fetch(&d).unwrap();
        assert!(
            d.current_proxy().starts_with("http://[::1]:"),
            "{}",
            d.proxy_info()
        );
    }
    assert_eq!(
        origin.direct_requests(),
        1,
        "only the DIRECT case went direct"
    );
}
