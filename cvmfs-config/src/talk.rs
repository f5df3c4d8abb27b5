//! Client side of the `cvmfs_io.<fqrn>` control socket (spec §11.1): one command per
//! connection, the reply is everything the daemon writes before closing.
//!
//! The server side lives with the daemon; this is the one place that speaks the protocol as a
//! client (the boot loader's pinning and name-server updates, the `cvmfs_talk`-style CLI).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket of repository `fqrn` in the cache workspace `cache_base/<fqrn>/` (the layout of a
/// non-shared cache, as µCernVM uses it).
pub fn socket_path(cache_base: &Path, fqrn: &str) -> PathBuf {
    cache_base.join(fqrn).join(format!("cvmfs_io.{fqrn}"))
}

#[derive(Debug, thiserror::Error)]
pub enum TalkError {
    #[error("cannot connect to the control socket {path}: {cause}")]
    Connect { path: PathBuf, cause: io::Error },
    #[error("control socket {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

/// Sends `command` (no trailing newline, as the reference clients do) and returns the reply.
/// `timeout` bounds each read and write so a wedged daemon cannot hang the caller.
pub fn request(socket: &Path, command: &str, timeout: Duration) -> Result<String, TalkError> {
    let io_err = |source| TalkError::Io {
        path: socket.to_path_buf(),
        cause: source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| TalkError::Connect {
        path: socket.to_path_buf(),
        cause: source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.write_all(command.as_bytes()).map_err(io_err)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(io_err)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn one_command_one_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "demo.cernvm.test");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            let cmd = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"OK\n").unwrap();
            cmd
        });
        let reply = request(&path, "nameserver set 10.0.2.3", Duration::from_secs(5)).unwrap();
        assert_eq!(reply, "OK\n");
        assert_eq!(server.join().unwrap(), "nameserver set 10.0.2.3");
        let missing = request(&dir.path().join("nope"), "pid", Duration::from_secs(1));
        assert!(matches!(missing, Err(TalkError::Connect { .. })));
    }
}
