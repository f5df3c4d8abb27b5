use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;

/// A world where nothing resolves, at a fixed address and time (discovery never evaluates a
/// time function in these tests).
struct FixedHost(Ipv4Addr);

impl PacHost for FixedHost {
    fn resolve(&self, _name: &str) -> Option<Ipv4Addr> {
        None
    }
    fn my_ip_address(&self) -> Ipv4Addr {
        self.0
    }
    fn now_local(&self) -> CivilTime {
        CivilTime::utc(0)
    }
    fn now_utc(&self) -> CivilTime {
        CivilTime::utc(0)
    }
}

fn host_at(me: [u8; 4]) -> Arc<FixedHost> {
    Arc::new(FixedHost(Ipv4Addr::from(me)))
}

#[test]
fn system_host_resolves_through_the_client_name_server() {
    let host = SystemHost::default();
    host.nameserver
        .set(Some(crate::dns::tests::tiny_dns_server(Ipv4Addr::new(
            198, 51, 100, 7,
        ))));
    let src = "function FindProxyForURL(url, host) {
        if (isInNet(dnsResolve(host), '198.51.100.0', '255.255.255.0')) return 'PROXY ' + dnsResolve(host) + ':3128';
        return 'DIRECT';
    }";
    let queries = vec![(
        "http://squid.invalid/".to_string(),
        "squid.invalid".to_string(),
    )];
    assert_eq!(
        find_proxy_for_url(src, &queries, Arc::new(host)).unwrap(),
        vec!["PROXY 198.51.100.7:3128".to_string()]
    );
}

mod discovery_tests {
    use super::super::discovery::*;
    use super::*;
    use crate::testing::StaticHttpServer;
    use std::time::Duration;

    fn auto(pac_urls: &str, hosts: &[&str]) -> AutoProxy {
        AutoProxy {
            pac_urls: pac_urls.to_string(),
            http_proxy: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            timeout_direct: Duration::from_secs(3),
            host: host_at([10, 0, 0, 1]),
        }
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn descriptions_and_urls() {
        assert_eq!(
            resolve_description("a:1|b:2;DIRECT", || panic!("no auto, no discovery")).0,
            "a:1|b:2;DIRECT"
        );
        assert_eq!(
            resolve_description("auto;DIRECT", || Some("p:3128;q:3128".into())).0,
            "p:3128;q:3128;DIRECT"
        );
        assert_eq!(resolve_description("auto;DIRECT", || None).0, "DIRECT");
        assert_eq!(resolve_description("auto", || None).0, "");
        assert_eq!(
            pac_urls("auto; http://x/p.pac;;"),
            vec![WPAD_URL.to_string(), "http://x/p.pac".to_string()]
        );
        assert_eq!(
            host_name("http://s1.example.org:8000/cvmfs/r"),
            "s1.example.org"
        );
        assert_eq!(host_name("http://s1/cvmfs/r"), "s1");
        assert_eq!(host_name("s1"), "s1");
    }

    #[test]
    fn only_a_group_that_is_exactly_auto_is_discovered() {
        assert_eq!(
            resolve_description("http://autoproxy:3128;DIRECT", || panic!("discovered")).0,
            "http://autoproxy:3128;DIRECT"
        );
        assert!(has_auto_group("p:1; auto ;DIRECT"));
        assert!(!has_auto_group("auto|p:1"));
    }

    #[test]
    fn http_proxy_wins_over_pac_files() {
        let mut a = auto(
            &format!("http://127.0.0.1:{}/x.pac", closed_port()),
            &["http://s1"],
        );
        a.http_proxy = Some("http://envproxy:3128".into());
        assert_eq!(a.discover().as_deref(), Some("http://envproxy:3128"));
    }

    #[test]
    fn pac_files_are_fetched_over_http_in_order_and_the_result_saved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("broken.pac"),
            "function FindProxyForURL(u, h) { return /x/; }",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("none.pac"),
            "function FindProxyForURL(u, h) { return 'NONE'; }",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("good.pac"),
            "function FindProxyForURL(url, host) {
                 if (host == 's1.example.org' && url == 'http://s1.example.org:8000/cvmfs/r/.cvmfspublished')
                     return 'PROXY p1:3128; PROXY p2:3128';
                 return 'PROXY wrong:1';
             }",
        )
        .unwrap();
        let server = StaticHttpServer::start(dir.path()).unwrap();
        let base = server.url();
        let urls = format!(
            "http://127.0.0.1:{}/gone.pac;{base}/missing.pac;{base}/broken.pac;{base}/none.pac;{base}/good.pac",
            closed_port()
        );
        let a = auto(
            &urls,
            &["http://s1.example.org:8000/cvmfs/r", "http://s2/cvmfs/r"],
        );
        let workspace = tempfile::tempdir().unwrap();
        let list = resolve_for_mount("auto;DIRECT", &a, Some((workspace.path(), "r"))).unwrap();
        assert_eq!(list, "p1:3128;p2:3128;DIRECT");
        let saved = saved_list_path(workspace.path(), "r");
        assert!(saved.ends_with("proxies.r-r"));
        assert_eq!(
            std::fs::read_to_string(&saved).unwrap(),
            "p1:3128;p2:3128;DIRECT\n"
        );

        // Discovery failing later: the saved list replaces the whole description.
        let dead = auto(&format!("{base}/missing.pac"), &["http://s1"]);
        assert_eq!(
            resolve_for_mount("auto;DIRECT", &dead, Some((workspace.path(), "r"))).unwrap(),
            "p1:3128;p2:3128;DIRECT"
        );
        // Without a saved list the rest of the description remains …
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_for_mount("auto;DIRECT", &dead, Some((empty.path(), "r"))).unwrap(),
            "DIRECT"
        );
        // … and nothing at all is an error that says why.
        let e = resolve_for_mount("auto", &dead, Some((empty.path(), "r"))).unwrap_err();
        assert!(
            e.to_string().contains("no proxy left after auto-discovery"),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pac"), "{e}");
    }
}
