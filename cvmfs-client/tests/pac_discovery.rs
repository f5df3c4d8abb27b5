//! Proxy auto-discovery on the real kernel mount: `cvmfs2` with `CVMFS_HTTP_PROXY=auto` fetches
//! PAC files over real HTTP from 127.0.0.1, evaluates them, and streams the repository through
//! the real squid the PAC answer names (proved by squid's access log); unreachable and
//! unusable PAC files fall back to the next URL, the saved proxy list, or the rest of the list.
//!
//! Needs root, `/dev/fuse` and squid; otherwise the tests print why they are skipped (a failure under `UCERNVM_REQUIRE_ALL=1`, as in `scripts/test`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cvmfs_client::skip_unless_fixture_mount;
use cvmfs_client::testing::{fixture_dir, sha256_file, Cvmfs2Mount, SquidProxy, StaticHttpServer};

const FQRN: &str = "demo.cernvm.test";

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cache and configuration for mounting the fixture repository.
struct Setup {
    tmp: tempfile::TempDir,
    server: StaticHttpServer,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["mnt", "cache", "etc-cvmfs"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let server = StaticHttpServer::start(&fixture_dir().join("srv")).unwrap();
        Setup { tmp, server }
    }

    fn mnt(&self) -> PathBuf {
        self.tmp.path().join("mnt")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// Runs `cvmfs2` with the given proxy settings.
    fn mount(&self, proxy: &str, pac_urls: &str) -> Result<Cvmfs2Mount, String> {
        let config = self.tmp.path().join("client.conf");
        std::fs::write(
            &config,
            format!(
                "CVMFS_SERVER_URL={}/cvmfs/@fqrn@\n\
                 CVMFS_HTTP_PROXY='{proxy}'\n\
                 CVMFS_PAC_URLS='{pac_urls}'\n\
                 CVMFS_TIMEOUT=3\n\
                 CVMFS_TIMEOUT_DIRECT=3\n\
                 CVMFS_PUBLIC_KEY={}\n\
                 CVMFS_CACHE_BASE={}\n\
                 CVMFS_SHARED_CACHE=no\n\
                 CVMFS_REPOSITORY_TAG=v2\n",
                self.server.url(),
                fixture_dir().join("keys/demo.cernvm.test.pub").display(),
                self.cache().display(),
            ),
        )
        .unwrap();
        let mut cvmfs2 = Command::new(env!("CARGO_BIN_EXE_cvmfs2"));
        cvmfs2
            .arg("--config-root")
            .arg(self.tmp.path().join("etc-cvmfs"))
            .arg("-o")
            .arg(format!("config={}", config.display()))
            .arg(FQRN)
            .arg(self.mnt())
            // `http_proxy` would win over the PAC files.
            .env_remove("http_proxy");
        Cvmfs2Mount::start(cvmfs2, &self.mnt())
    }

    fn proxy_info(&self) -> String {
        let socket = cvmfs_client::talk::socket_path(&self.cache(), FQRN);
        cvmfs_client::talk::request(&socket, "proxy info", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("talk proxy info: {e}"))
    }

    fn saved_list(&self) -> std::io::Result<String> {
        std::fs::read_to_string(
            self.cache()
                .join(FQRN)
                .join(format!("proxies.{FQRN}-{FQRN}")),
        )
    }
}

/// Two files of the fixture read through the mount match the reference listing.
fn assert_files_read_right(mnt: &Path) {
    let text = std::fs::read_to_string(fixture_dir().join("expected/v2.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    for rel in ["README.txt", "added_in_v2.txt", "deep/a/b/mid.txt"] {
        let want = expected["entries"][rel]["sha256"].as_str().unwrap();
        assert_eq!(sha256_file(&mnt.join(rel)).unwrap(), want, "{rel}");
    }
}

/// squid's log lines for the repository, once squid has written at least `at_least`.
fn squid_lines(squid: &SquidProxy, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines: Vec<String> = squid
            .access_log()
            .lines()
            .filter(|l| l.contains(&format!("/cvmfs/{FQRN}/")))
            .map(str::to_string)
            .collect();
        if lines.len() >= at_least || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_repository_streams_through_the_proxy_the_pac_file_names() {
    skip_unless_fixture_mount!();
    let squid = SquidProxy::start().unwrap_or_else(|e| panic!("{e}"));
    let setup = Setup::new();
    let pac_dir = tempfile::tempdir().unwrap();
    // The first reachable file uses a regular expression, which the interpreter does not
    // implement: discovery moves on to the next URL.
    std::fs::write(
        pac_dir.path().join("regex.pac"),
        "function FindProxyForURL(url, host) { if (/cvmfs/.test(url)) return 'PROXY x:1'; }",
    )
    .unwrap();
    std::fs::write(
        pac_dir.path().join("wpad.dat"),
        format!(
            "var squid = 'PROXY 127.0.0.1:{}';\n\
             function FindProxyForURL(url, host) {{\n\
                 if (isInNet(host, '127.0.0.0', '255.0.0.0') &&\n\
                     shExpMatch(url, 'http://*/cvmfs/{FQRN}/.cvmfspublished'))\n\
                     return squid + '; DIRECT';\n\
                 return 'NONE';\n\
             }}\n",
            squid.port()
        ),
    )
    .unwrap();
    let pac_server = StaticHttpServer::start(pac_dir.path()).unwrap();
    let pac_urls = format!(
        "http://127.0.0.1:{}/wpad.dat;{}/regex.pac;{}/wpad.dat",
        closed_port(),
        pac_server.url(),
        pac_server.url()
    );
    let squid_url = format!("http://127.0.0.1:{}", squid.port());

    let mut mount = setup
        .mount("auto", &pac_urls)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_files_read_right(&setup.mnt());
    let info = setup.proxy_info();
    assert!(
        info.contains(&format!("[0] {squid_url}\n")) && info.contains("[1] DIRECT\n"),
        "{info}"
    );
    assert!(
        info.contains(&format!("Active proxy: [0] {squid_url}")),
        "{info}"
    );
    assert_eq!(
        setup.saved_list().unwrap(),
        format!("127.0.0.1:{};DIRECT\n", squid.port())
    );
    // The manifest and the objects went through squid.
    let lines = squid_lines(&squid, 3);
    assert!(
        lines.iter().any(|l| l.contains("/.cvmfspublished")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("/data/")), "{lines:?}");
    mount.unmount().unwrap();

    // The PAC servers are gone: the list saved by the last discovery replaces `auto`, and the
    // mount still goes through squid.
    drop(pac_server);
    let manifests_before = lines
        .iter()
        .filter(|l| l.contains("/.cvmfspublished"))
        .count();
    let mut mount = setup
        .mount("auto", &pac_urls)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_files_read_right(&setup.mnt());
    assert!(setup.proxy_info().contains(&format!("[0] {squid_url}\n")));
    let manifests_after = squid_lines(&squid, lines.len() + 1)
        .iter()
        .filter(|l| l.contains("/.cvmfspublished"))
        .count();
    assert!(
        manifests_after > manifests_before,
        "{manifests_after} manifests"
    );
    mount.unmount().unwrap();
}

#[test]
fn without_a_pac_file_the_rest_of_the_list_is_used_or_the_mount_fails_clearly() {
    skip_unless_fixture_mount!();
    let setup = Setup::new();
    let dead = format!("http://127.0.0.1:{}/wpad.dat", closed_port());

    let e = setup
        .mount("auto", &dead)
        .err()
        .expect("no proxy at all must fail");
    assert!(e.contains("no proxy left after auto-discovery"), "{e}");
    assert!(setup.saved_list().is_err());

    // µCernVM's default: `auto;DIRECT`.
    let mut mount = setup
        .mount("auto;DIRECT", &dead)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_files_read_right(&setup.mnt());
    let info = setup.proxy_info();
    assert!(
        info.starts_with("Load-balance groups:\n[0] DIRECT\nActive"),
        "{info}"
    );
    mount.unmount().unwrap();
}
