//! A real squid forward proxy for tests (Debian package `squid`).

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real squid forward proxy listening on 127.0.0.1 with its configuration, logs and pid file
/// in a private directory (memory cache only); stopped and removed when dropped.
pub struct SquidProxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SquidProxy {
    /// Starts `squid` in the foreground on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    pub fn start() -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;

        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("squid-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // squid started as root writes its logs as its unprivileged effective user.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        let d = dir.display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             http_access allow localhost\n\
             http_access deny all\n\
             visible_hostname squid-test\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             coredump_dir {d}\n\
             netdb_filename none\n\
             pinger_enable off\n\
             shutdown_lifetime 0 seconds\n\
             logfile_rotate 0\n"
        );
        let conf_path = dir.join("squid.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("squid")
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::other(format!("cannot start squid (Debian package squid): {e}"))
            })?;
        let mut proxy = SquidProxy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(proxy);
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(io::Error::other(format!(
                    "squid exited ({status}): {}",
                    proxy.cache_log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("squid did not listen within 60 s: {}", proxy.cache_log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// squid's access log so far (one line per request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default()
    }
}

impl Drop for SquidProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
