//! The DHCP hook (spec §9.8, Appendix A): the boot loader's `cvmfs2` keeps serving `/` after
//! the hand-over with the resolver settings of the initramfs, so on each lease the OS tells it
//! the lease's name server through its talk socket (`nameserver set <ip>` → `OK`). The demo OS
//! runs systemd-networkd, which has no hook scripts: a path unit watches its lease files
//! (`/run/systemd/netif/leases/<ifindex>`) and runs this; it also writes `/etc/resolv.conf`
//! (networkd leaves that to systemd-resolved, which the demo OS does not carry).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ucernvm_init::cvmfs_start::magic_xattr;
use ucernvm_init::network::dhcp::resolv_conf;
use ucernvm_init::post::drtini::find_talk_sockets;

pub const LEASES_DIR: &str = "/run/systemd/netif/leases";
/// The repository mount and the cache of the boot loader's `cvmfs2`, as the OS sees them.
pub const CVMFS_MOUNT: &str = "/mnt/.ro";
pub const CVMFS_CACHE: &str = "/mnt/.rw/cache";
const TALK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a lease file says about name resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

/// Parses networkd's `KEY=VALUE` lease file (`DNS=` holds blank-separated addresses).
pub fn parse_lease(text: &str) -> Lease {
    let mut lease = Lease::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("DNS", v)) => lease.dns.extend(
                v.split_whitespace()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
            ),
            Some(("DOMAINNAME", v)) if !v.trim().is_empty() => {
                lease.domain = Some(v.trim().to_string())
            }
            _ => {}
        }
    }
    lease
}

/// The leases in `dir`, by interface index.
pub fn read_leases(dir: &Path) -> Vec<Lease> {
    let mut files: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let idx = e.file_name().to_str()?.parse().ok()?;
                    Some((idx, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, p)| fs::read_to_string(p).ok())
        .map(|t| parse_lease(&t))
        .collect()
}

/// The talk sockets of the running `cvmfs2`: the repository named by the mount's `user.fqrn`
/// attribute, else any `cvmfs_io.*` in the cache (as the boot loader's shutdown finds them).
pub fn talk_sockets(mount: &Path, cache: &Path) -> Vec<PathBuf> {
    if let Ok(fqrn) = magic_xattr(mount, "user.fqrn") {
        let s = cvmfs_client::talk::socket_path(cache, &fqrn);
        if s.exists() {
            return vec![s];
        }
    }
    find_talk_sockets(cache)
}

/// Sends `nameserver set <ns>` and returns the reply, which must be `OK`.
pub fn set_nameserver(socket: &Path, ns: Ipv4Addr) -> Result<String, String> {
    let reply = cvmfs_client::talk::request(socket, &format!("nameserver set {ns}"), TALK_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let reply = reply.trim().to_string();
    if reply == "OK" {
        Ok(reply)
    } else {
        Err(format!(
            "{}: refused 'nameserver set {ns}': {reply}",
            socket.display()
        ))
    }
}

/// Replaces `path` with `text` unless it is a symbolic link (a resolver manager owns it then).
pub fn write_resolv_conf(path: &Path, text: &str) -> std::io::Result<bool> {
    if path.is_symlink() {
        return Ok(false);
    }
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(true);
    }
    let tmp = path.with_extension("cernvm-context");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// The hook: resolv.conf from the leases, then the first name server to every `cvmfs2`.
/// Returns the lines to log, or an error if a `cvmfs2` refused or could not be reached.
pub fn run(
    leases_dir: &Path,
    resolv: &Path,
    mount: &Path,
    cache: &Path,
) -> Result<Vec<String>, String> {
    let leases = read_leases(leases_dir);
    let dns: Vec<Ipv4Addr> = leases.iter().flat_map(|l| l.dns.iter().copied()).collect();
    let domain = leases.iter().find_map(|l| l.domain.clone());
    let mut log = Vec::new();
    let Some(&first) = dns.first() else {
        log.push(format!(
            "no name server in the leases of {}",
            leases_dir.display()
        ));
        return Ok(log);
    };
    match write_resolv_conf(resolv, &resolv_conf(domain.as_deref(), &dns)) {
        Ok(true) => log.push(format!("{}: name servers {dns:?}", resolv.display())),
        Ok(false) => log.push(format!("{} is a link: left alone", resolv.display())),
        Err(e) => return Err(format!("cannot write {}: {e}", resolv.display())),
    }
    let sockets = talk_sockets(mount, cache);
    if sockets.is_empty() {
        log.push(format!("no cvmfs2 talk socket in {}", cache.display()));
        return Ok(log);
    }
    let mut failed = Vec::new();
    for s in sockets {
        match set_nameserver(&s, first) {
            Ok(reply) => log.push(format!(
                "cvmfs2 ({}): nameserver set {first}: {reply}",
                s.display()
            )),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(log)
    } else {
        Err(failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    const LEASE: &str = "# This is private data. Do not parse.\nADDRESS=10.0.2.15\n\
        NETMASK=255.255.255.0\nROUTER=10.0.2.2\nSERVER_ADDRESS=10.0.2.2\nDNS=10.0.2.3 10.0.2.4\n\
        DOMAINNAME=cern.ch\nLIFETIME=86400\n";

    #[test]
    fn lease_files() {
        let l = parse_lease(LEASE);
        assert_eq!(
            l.dns,
            [
                "10.0.2.3".parse::<Ipv4Addr>().unwrap(),
                "10.0.2.4".parse().unwrap()
            ]
        );
        assert_eq!(l.domain.as_deref(), Some("cern.ch"));
        assert_eq!(parse_lease("ADDRESS=1.2.3.4\n"), Lease::default());
    }

    /// A stand-in daemon answering one command on `socket`.
    fn answer_once(socket: PathBuf, reply: &'static str) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    }

    #[test]
    fn the_hook_writes_resolv_conf_and_tells_cvmfs2() {
        let t = tempfile::tempdir().unwrap();
        let leases = t.path().join("leases");
        fs::create_dir_all(&leases).unwrap();
        fs::write(leases.join("2"), LEASE).unwrap();
        fs::write(leases.join("garbage"), "DNS=9.9.9.9\n").unwrap();
        let cache = t.path().join("cache");
        fs::create_dir_all(cache.join("demo.cernvm.test")).unwrap();
        let server = answer_once(
            cache.join("demo.cernvm.test/cvmfs_io.demo.cernvm.test"),
            "OK\n",
        );
        let resolv = t.path().join("resolv.conf");
        let log = run(&leases, &resolv, &t.path().join("no-mount"), &cache).unwrap();
        assert_eq!(server.join().unwrap(), "nameserver set 10.0.2.3");
        assert_eq!(
            fs::read_to_string(&resolv).unwrap(),
            "search cern.ch\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"
        );
        assert!(
            log.last().unwrap().ends_with("nameserver set 10.0.2.3: OK"),
            "{log:?}"
        );

        // A refusal is an error.
        let server = answer_once(
            cache.join("demo.cernvm.test/cvmfs_io.demo.cernvm.test.2"),
            "Invalid address\n",
        );
        fs::remove_file(cache.join("demo.cernvm.test/cvmfs_io.demo.cernvm.test")).unwrap();
        let err = run(&leases, &resolv, &t.path().join("no-mount"), &cache).unwrap_err();
        server.join().unwrap();
        assert!(err.contains("Invalid address"), "{err}");
    }

    #[test]
    fn no_lease_no_change() {
        let t = tempfile::tempdir().unwrap();
        let resolv = t.path().join("resolv.conf");
        let log = run(&t.path().join("none"), &resolv, t.path(), t.path()).unwrap();
        assert!(log[0].starts_with("no name server"), "{log:?}");
        assert!(!resolv.exists());
    }
}
