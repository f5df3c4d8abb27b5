//! `cvmfs_wait_on_squid` with `auto` in the proxy list: init asks our `cvmfs2 __wpad__` (as the
//! original asks its cvmfs2), which fetches a PAC file over real HTTP and evaluates it; the probe
//! then goes through the real squid the PAC file names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod mount_helpers;

use std::time::{Duration, Instant};

use cvmfs_client::testing::{fixture_dir, SquidProxy, StaticHttpServer};
use mount_helpers::cvmfs2_binary;
use ucernvm_init::cvmfs_start::squid::{flatten_proxies, resolve_auto, wait, ProbeVia};

#[test]
fn auto_is_resolved_by_cvmfs2_from_a_pac_file_and_the_probe_goes_through_its_squid() {
    let cvmfs2 = cvmfs2_binary();
    let squid = SquidProxy::start().expect("start squid");
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).expect("start the server");
    let pac_dir = tempfile::tempdir().expect("temporary directory");
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
    .expect("write the PAC file");
    let pac_server = StaticHttpServer::start(pac_dir.path()).expect("start the PAC server");
    let repo = format!("{}/cvmfs/demo.cernvm.test", server.url());
    let env = [
        (
            "CVMFS_PAC_URLS",
            format!("http://127.0.0.1:1/dead.pac;{}/wpad.dat", pac_server.url()),
        ),
        ("CVMFS_TIMEOUT_DIRECT", "3".to_string()),
    ];

    let description = resolve_auto("\"auto;DIRECT\"", &repo, &env, &cvmfs2);
    assert_eq!(description, format!("127.0.0.1:{};DIRECT", squid.port()));
    let proxies = flatten_proxies(&description);
    let (via, _) = wait(
        std::slice::from_ref(&repo),
        &proxies,
        Duration::from_secs(3),
        Some(1),
    )
    .expect("a proxy answers");
    assert_eq!(via, ProbeVia::Proxy(format!("127.0.0.1:{}", squid.port())));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !squid
        .access_log()
        .contains("/cvmfs/demo.cernvm.test/.cvmfspublished")
    {
        assert!(Instant::now() < deadline, "squid saw no probe");
        std::thread::sleep(Duration::from_millis(100));
    }

    // No usable PAC file: `auto` disappears, the rest remains.
    let env = [("CVMFS_PAC_URLS", "http://127.0.0.1:1/none.pac".to_string())];
    assert_eq!(
        resolve_auto("auto;DIRECT", "http://s1", &env, &cvmfs2),
        "DIRECT"
    );
    // A description without `auto` is not sent anywhere.
    let missing = std::path::Path::new("/nonexistent/cvmfs2");
    assert_eq!(
        resolve_auto("p1:3128;DIRECT", &repo, &[], missing),
        "p1:3128;DIRECT"
    );
    // cvmfs2 missing: the description stays, and flattening skips the unresolved `auto`.
    let unresolved = resolve_auto("auto;DIRECT", &repo, &[], missing);
    assert_eq!(flatten_proxies(&unresolved), vec![ProbeVia::Direct]);
}
