//! Helpers shared by unit and integration tests: where the reference fixture lives.

use std::path::PathBuf;

/// The real-server fixture `demo.cernvm.test`: `$UCERNVM_FIXTURES/cvmfs/demo.cernvm.test` if
/// set, else `../shared/fixtures/cvmfs/demo.cernvm.test` relative to the repository root.
pub fn fixture_dir() -> PathBuf {
    let base = match std::env::var_os("UCERNVM_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    };
    base.join("cvmfs/demo.cernvm.test")
}

/// A time inside the validity of the fixture's whitelist (2026-11-28 12:00 UTC), so that
/// library tests do not depend on the clock.
pub const FIXTURE_NOW: i64 = 1_795_867_200;

/// Library mount options for the fixture `demo.cernvm.test` served at `server_url`
/// (`http://host:port`): its key, `cache` as cache directory, no proxy, no quota, 5 s timeouts,
/// the time [`FIXTURE_NOW`]; tests change what they exercise.
pub fn fixture_repository_options(
    server_url: &str,
    cache: &std::path::Path,
    tag: Option<&str>,
) -> crate::repository::RepositoryOptions {
    const FQRN: &str = "demo.cernvm.test";
    crate::repository::RepositoryOptions {
        fqrn: FQRN.into(),
        server_url: format!("{server_url}/cvmfs/{FQRN}"),
        proxy: "DIRECT".into(),
        download: crate::download::DownloadSettings::default(),
        public_keys: vec![fixture_dir().join("keys/demo.cernvm.test.pub")],
        trusted_certs: Vec::new(),
        blacklist: Vec::new(),
        cache_dir: cache.to_path_buf(),
        quota_limit: None,
        tag: tag.map(str::to_string),
        root_hash: None,
        environment: std::collections::HashMap::new(),
        now: FIXTURE_NOW,
        work_in_cache_dir: false,
    }
}

/// A real static HTTP server (`python3 -m http.server`) on 127.0.0.1, stopped on drop.
pub struct StaticHttpServer {
    child: std::process::Child,
    pub port: u16,
}

impl StaticHttpServer {
    /// Serves `dir` on a free loopback port and waits until it answers.
    pub fn start(dir: &std::path::Path) -> std::io::Result<StaticHttpServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start_on(dir, port)
    }

    /// Serves `dir` on 127.0.0.1:`port` (e.g. again on the port a guest was configured with).
    pub fn start_on(dir: &std::path::Path, port: u16) -> std::io::Result<StaticHttpServer> {
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let server = StaticHttpServer { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other("HTTP server did not start"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StaticHttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a directory tree (regular files and directories), for tampering tests.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Returns from the calling test when the real-server fixture cannot be mounted through the
/// kernel here ([`fixture_mount_skip_reason`]): a `SKIPPED:` line saying why, or a failure
/// under `UCERNVM_REQUIRE_ALL=1` ([`skip`]).
#[macro_export]
macro_rules! skip_unless_fixture_mount {
    () => {
        if let Some(reason) = $crate::testing::fixture_mount_skip_reason() {
            $crate::testing::skip(reason);
            return;
        }
    };
}

pub use test_prereq::skip;

mod daemon;
pub use daemon::{
    expected_file_digests, fixture_mount_skip_reason, fuse_skip_reason, is_mounted, lgetxattr,
    process_ended, sha256_file, stop_daemon, Cvmfs2Mount,
};

mod squid;
pub use squid::SquidProxy;

mod dns;
pub use dns::DnsServer;

mod fault_http;
pub use fault_http::{Fault, FaultServer};

pub mod pki;
