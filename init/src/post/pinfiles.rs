//! Pinning the core files of the OS in the CernVM-FS cache (spec §12.4), so that network
//! recovery tools never need a download. The list comes from the OS (`/.ucernvm_pinfiles`);
//! a separate process (the `init` binary in pinner mode) sends one `pin <path>` per file over
//! the control socket and survives the hand-over. It uses only paths relative to its working
//! directory, the cache, which moves from `/root.rw/cache` to `/mnt/.rw/cache`.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cvmfs_config::talk::{self, TalkError};

/// The OS's list of files to pin, at the root of the union.
pub const PINFILES_LIST: &str = ".ucernvm_pinfiles";
/// The resolved list, on devtmpfs so that the OS sees it in its own `/dev`.
pub const DEV_PINFILES: &str = "dev/pinfiles";
/// Command-line switch of the `init` binary that runs the pinner.
pub const PINNER_MODE: &str = "--pin-files";
/// Sentinel and log in the cache directory.
pub const SENTINEL: &str = "pinned";
pub const LOG: &str = "pin.log";
const TALK_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit codes of the pinner (the original's).
pub const EXIT_NOT_OK: i32 = 50;
pub const EXIT_CONNECT: i32 = 20;
pub const EXIT_IO: i32 = 30;

/// The repository paths to pin: each line of the OS list that is a regular file in the union
/// (links followed inside the union root), as `/<cernvm_path>/<path in the OS>`.
pub fn pin_list(root: &Path, list: &str, cernvm_path: &str) -> Vec<String> {
    let prefix = match cernvm_path.trim_matches('/') {
        "" => String::new(),
        p => format!("/{p}"),
    };
    let mut out = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(rel) = super::inroot::resolve(root, Path::new(line), true, false) else {
            continue;
        };
        if std::fs::symlink_metadata(root.join(&rel)).is_ok_and(|m| m.is_file()) {
            out.push(format!("{prefix}/{}", rel.display()));
        }
    }
    out
}

/// Pins every path through `socket`, logging each reply to `log`; returns the exit code.
pub fn pin_all(paths: &[String], socket: &Path, log: &mut dyn Write) -> i32 {
    let mut code = 0;
    for p in paths {
        match talk::request(socket, &format!("pin {p}"), TALK_TIMEOUT) {
            Ok(reply) if reply == "OK\n" => {
                let _ = writeln!(log, "pinned {p}");
            }
            Ok(reply) => {
                let _ = writeln!(log, "failed to pin {p}: {}", reply.trim_end());
                code = EXIT_NOT_OK;
            }
            Err(e) => {
                let _ = writeln!(log, "{e}");
                return match e {
                    TalkError::Connect { .. } => EXIT_CONNECT,
                    TalkError::Io { .. } => EXIT_IO,
                };
            }
        }
    }
    code
}

/// The pinner process: `init --pin-files <list file> <socket relative to the cache>`, working
/// directory = the cache. Reads the list at once (it lives on the initramfs' devtmpfs), pins,
/// then creates the sentinel.
pub fn pinner_main(list_file: &Path, socket: &Path) -> i32 {
    let mut log = match std::fs::File::create(LOG) {
        Ok(f) => Box::new(f) as Box<dyn Write>,
        Err(_) => Box::new(io::sink()),
    };
    let paths: Vec<String> = match std::fs::read_to_string(list_file) {
        Ok(t) => t
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        Err(e) => {
            let _ = writeln!(log, "cannot read {}: {e}", list_file.display());
            return EXIT_IO;
        }
    };
    let code = pin_all(&paths, socket, &mut log);
    if code != EXIT_CONNECT && code != EXIT_IO {
        let _ = std::fs::write(SENTINEL, "");
    }
    code
}

/// Writes the list to `dev_pinfiles` and starts the pinner in the background.
pub fn start(
    init_binary: &Path,
    cache: &Path,
    repo: &str,
    dev_pinfiles: &Path,
    paths: &[String],
) -> io::Result<u32> {
    let mut text = paths.join("\n");
    text.push('\n');
    std::fs::write(dev_pinfiles, text)?;
    let _ = std::fs::remove_file(cache.join(SENTINEL));
    let socket: PathBuf = Path::new(repo).join(format!("cvmfs_io.{repo}"));
    // `@` first in argv[0]: systemd's final killing spree leaves the pinner alone (§12.2).
    let child = Command::new(init_binary)
        .arg0(format!("@{}", init_binary.display()))
        .arg(PINNER_MODE)
        .arg(dev_pinfiles)
        .arg(socket)
        .current_dir(cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    #[test]
    fn list_keeps_regular_files_resolved_in_the_union() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::fs::write(root.join("usr/bin/sudo"), "").unwrap();
        std::fs::write(root.join("usr/lib64/libc.so.6"), "").unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        symlink("/usr/lib64", root.join("lib64")).unwrap();
        symlink("libc.so.6", root.join("usr/lib64/libc.so")).unwrap();
        symlink("missing", root.join("usr/bin/dangling")).unwrap();
        let list = "/bin/sudo\n/lib64/libc.so\n/usr/bin\n/usr/bin/dangling\n/nope\n\n";
        assert_eq!(
            pin_list(root, list, "cvm4"),
            vec!["/cvm4/usr/bin/sudo", "/cvm4/usr/lib64/libc.so.6"]
        );
        assert_eq!(pin_list(root, "/bin/sudo", ""), vec!["/usr/bin/sudo"]);
    }

    /// A stand-in for the daemon's control socket that answers `OK` except for one path.
    fn serve(socket: &Path, n: usize) -> std::thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let k = s.read(&mut buf).unwrap();
                let cmd = String::from_utf8_lossy(&buf[..k]).into_owned();
                let reply: &[u8] = if cmd.ends_with("/bad") {
                    b"failed\n"
                } else {
                    b"OK\n"
                };
                s.write_all(reply).unwrap();
                seen.push(cmd);
            }
            seen
        })
    }

    #[test]
    fn pins_over_the_socket_and_reports_failures() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("cvmfs_io.r");
        let server = serve(&sock, 3);
        let mut log = Vec::new();
        let code = pin_all(
            &["/cvm4/a".into(), "/cvm4/bad".into(), "/cvm4/b".into()],
            &sock,
            &mut log,
        );
        assert_eq!(code, EXIT_NOT_OK);
        assert_eq!(
            server.join().unwrap(),
            vec!["pin /cvm4/a", "pin /cvm4/bad", "pin /cvm4/b"]
        );
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("pinned /cvm4/a\n") && log.contains("failed to pin /cvm4/bad: failed\n")
        );
        let mut log = Vec::new();
        assert_eq!(
            pin_all(&["/x".into()], &t.path().join("none"), &mut log),
            EXIT_CONNECT
        );
    }
}
