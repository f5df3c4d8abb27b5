//! Server side of the `cvmfs_io.<fqrn>` control socket (spec §11.1): one command per
//! connection (one read of at most 512 bytes, a trailing NUL or newline removed), one reply,
//! then the connection is closed. Replies are the reference's, byte for byte, for the commands
//! listed in [`COMMANDS`]; anything else is `unknown command`.
//!
//! The socket is bound before the file system is mounted, so a client that connects right after
//! `cvmfs2` returns is served (connections queue until the server thread runs).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fuse::FsShared;
use cvmfs_client::dns::parse_nameserver;
use cvmfs_client::repository::{RemountOutcome, Repository};

/// The commands this server knows (documentation and `help`).
pub const COMMANDS: &[&str] = &[
    "pin <path>",
    "evict <path>",
    "nameserver get",
    "nameserver set <ip>[:<port>]",
    "host info",
    "host probe",
    "host probe geo",
    "host switch",
    "host set <host list>",
    "proxy info",
    "proxy rebalance",
    "proxy group switch",
    "proxy set <proxy list>",
    "proxy fallback <proxy list>",
    "reset error counters",
    "detach nested catalogs",
    "drop metadata caches",
    "timeout info",
    "revision",
    "remount",
    "remount sync",
    "cleanup <MB>",
    "cache size",
    "cache list",
    "cache list pinned",
    "cache list catalogs",
    "cache limit get",
    "cache limit set <MB>",
    "tear down to read-only",
    "mountpoint",
    "pid",
    "version",
    "version patchlevel",
    "parameters",
    "open catalogs",
];

/// Longest command read (the reference's buffer).
const MAX_COMMAND: usize = 512;
/// A client that connects and sends nothing does not block the server for longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The reference refuses smaller limits.
const MIN_QUOTA_LIMIT_MB: u64 = 1000;

/// What the commands act on.
pub struct TalkContext {
    pub repo: Arc<Repository>,
    /// The running file system's counters and caches.
    pub fs: Arc<FsShared>,
    pub mountpoint: PathBuf,
    /// `cvmfs2 -o parse` output (the `parameters` reply).
    pub parameters: String,
    /// `CVMFS_QUOTA_LIMIT` as configured (the `cache limit get` reply).
    pub quota_limit_text: std::sync::Mutex<String>,
    /// Version of the loader and the module (one binary here).
    pub version: String,
}

/// Creates the listening socket at `path` (replacing a stale one), mode 0660.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves `listener` on a new thread until the process ends.
pub fn spawn(listener: UnixListener, ctx: Arc<TalkContext>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("talk".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_one(stream, &ctx) {
                            log::debug!("control socket: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(|_| ())
}

fn serve_one(mut stream: UnixStream, ctx: &TalkContext) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut buf = [0u8; MAX_COMMAND];
    let n = stream.read(&mut buf)?;
    let mut cmd = buf.get(..n).unwrap_or_default();
    if let [rest @ .., 0] = cmd {
        cmd = rest;
    }
    if let [rest @ .., b'\n'] = cmd {
        cmd = rest;
    }
    let line = String::from_utf8_lossy(cmd);
    log::debug!("control socket: {line:?}");
    let reply = answer(ctx, &line);
    stream.write_all(reply.as_bytes())
}

/// Repository path of a `pin`/`evict` argument: repeated and trailing `/` collapsed (µCernVM
/// sends `//usr/…` with an empty cernvm_path).
fn repo_path(arg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 1);
    for part in arg.split('/').filter(|p| !p.is_empty()) {
        out.push(b'/');
        out.extend_from_slice(part.as_bytes());
    }
    out
}

fn lines(items: Vec<String>) -> String {
    items.into_iter().map(|l| l + "\n").collect()
}

/// The reply to one command.
pub fn answer(ctx: &TalkContext, line: &str) -> String {
    let repo = &ctx.repo;
    let quota = repo.store.cache.quota();
    let arg = |prefix: &str| {
        line.strip_prefix(prefix)
            .map(str::trim)
            .filter(|a| !a.is_empty())
    };
    match line {
        "revision" => format!("{}\n", repo.revision()),
        "mountpoint" => format!("{}\n", ctx.mountpoint.display()),
        "pid" => format!("{}\n", std::process::id()),
        "version" => format!(
            "{v} (CernVM-FS Fuse Module)\n{v} (Loader)\n",
            v = ctx.version
        ),
        "version patchlevel" => "0\n".into(),
        "parameters" => ctx.parameters.clone(),
        "help" => lines(COMMANDS.iter().map(|c| c.to_string()).collect()),
        "open catalogs" => lines(
            repo.attached_catalogs()
                .iter()
                .map(|a| {
                    format!(
                        "{} ({})",
                        if a.catalog.mountpoint.is_empty() {
                            "/".into()
                        } else {
                            String::from_utf8_lossy(&a.catalog.mountpoint).into_owned()
                        },
                        a.catalog.hash
                    )
                })
                .collect(),
        ),
        "nameserver get" => match repo.downloader().and_then(|d| d.nameserver().get()) {
            Some(a) => format!("DNS server address: {a}\n"),
            None => "DNS server not set.\n".into(),
        },
        "host info" => match repo.downloader() {
            Some(d) => d.host_info(),
            None => "No hosts defined\n".into(),
        },
        "host probe" => {
            if let Some(d) = repo.downloader() {
                d.probe_hosts();
            }
            "OK\n".into()
        }
        "host probe geo" => match repo.downloader() {
            Some(d) => match d.probe_geo(&repo.store.cache.client_uuid()) {
                Ok(_) => "OK\n".into(),
                Err(e) => {
                    log::warn!("host probe geo: {e}");
                    "Failed\n".into()
                }
            },
            None => "Failed\n".into(),
        },
        "host switch" => {
            if let Some(d) = repo.downloader() {
                d.switch_host();
            }
            "OK\n".into()
        }
        "proxy info" => match repo.downloader() {
            Some(d) => d.proxy_info(),
            None => "No proxies defined\n".into(),
        },
        "proxy rebalance" => {
            if let Some(d) = repo.downloader() {
                d.rebalance_proxies();
            }
            "OK\n".into()
        }
        "proxy group switch" => {
            if let Some(d) = repo.downloader() {
                d.switch_proxy_group();
            }
            "OK\n".into()
        }
        "reset error counters" => {
            ctx.fs.reset_error_counters();
            "OK\n".into()
        }
        "detach nested catalogs" => {
            let n = repo.detach_nested();
            log::info!("CernVM-FS: {n} nested catalogs detached by request");
            "OK\n".into()
        }
        "drop metadata caches" => {
            let n = ctx.fs.drop_metadata_caches();
            log::info!("CernVM-FS: metadata caches dropped ({n} inodes invalidated in the kernel)");
            "OK\n".into()
        }
        "timeout info" => {
            let (p, d) = repo.timeouts();
            format!(
                "Timeout with proxy: {}s\nTimeout without proxy: {}s\n",
                p.as_secs(),
                d.as_secs()
            )
        }
        "remount" | "remount sync" => match repo.remount() {
            RemountOutcome::UpToDate => "Catalog up to date\n".into(),
            RemountOutcome::Updated { from, to } => {
                // The switch is complete when `remount` returns: `sync` waits for nothing more.
                ctx.fs.drop_metadata_caches();
                format!("Remounted: revision {from} -> {to}\n")
            }
            RemountOutcome::Failed => "Failed\n".into(),
        },
        "cache size" => match quota {
            None => "Cache cannot report its size\n".into(),
            Some(q) => {
                let u = q.usage();
                format!(
                    "Current cache size is {}MB ({} Bytes), pinned: {}MB ({} Bytes)\n",
                    u.used >> 20,
                    u.used,
                    u.pinned >> 20,
                    u.pinned
                )
            }
        },
        "cache list" | "cache list pinned" | "cache list catalogs" => match quota {
            None => "Cache cannot list its entries\n".into(),
            Some(q) => {
                let listed = match line {
                    "cache list" => q.list(),
                    "cache list pinned" => q.list_pinned(),
                    _ => q.list_catalogs(),
                };
                match listed {
                    Ok(l) => lines(l),
                    Err(e) => format!("Failed: {e}\n"),
                }
            }
        },
        "cache limit get" => format!(
            "{}\n",
            ctx.quota_limit_text
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        ),
        "tear down to read-only" => {
            repo.store.cache.tear_down_to_read_only();
            log::info!("CernVM-FS: cache torn down to read-only mode");
            "In read-only mode\n".into()
        }
        _ if line.starts_with("cache limit set") => {
            let Some(mb) = arg("cache limit set").and_then(|a| a.parse::<u64>().ok()) else {
                return "Usage: cache limit set <MB>\n".into();
            };
            match quota {
                None => "Limit not reset\n".into(),
                Some(_) if mb < MIN_QUOTA_LIMIT_MB => {
                    format!("New limit too low (minimum {MIN_QUOTA_LIMIT_MB})\n")
                }
                Some(q) => match q.set_limit(mb << 20) {
                    Ok(()) => {
                        *ctx.quota_limit_text
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = mb.to_string();
                        "OK\n".into()
                    }
                    Err(e) => {
                        log::warn!("cache limit set: {e}");
                        "Limit not reset\n".into()
                    }
                },
            }
        }
        _ if line.starts_with("proxy set") || line.starts_with("proxy fallback") => {
            let fallback = line.starts_with("proxy fallback");
            let usage = if fallback {
                "Usage: proxy fallback <proxy list>\n"
            } else {
                "Usage: proxy set <proxy list>\n"
            };
            let Some(list) = arg(if fallback {
                "proxy fallback"
            } else {
                "proxy set"
            }) else {
                return usage.into();
            };
            let Some(d) = repo.downloader() else {
                return "No proxies defined\n".into();
            };
            let set = if fallback {
                d.set_fallback_proxies(list)
            } else {
                d.set_proxies(list)
            };
            match set {
                Ok(()) => "OK\n".into(),
                Err(e) => format!("Failed, no valid proxies ({e})\n"),
            }
        }
        _ if line.starts_with("host set") => {
            let Some(list) = arg("host set") else {
                return "Usage: host set <host list>\n".into();
            };
            match repo.downloader().map(|d| d.set_hosts(list)) {
                Some(Ok(())) => "OK\n".into(),
                Some(Err(e)) => format!("Failed ({e})\n"),
                None => "No hosts defined\n".into(),
            }
        }
        _ if line.starts_with("nameserver set") => {
            let Some(addr) = arg("nameserver set") else {
                return "Usage: nameserver set <host>\n".into();
            };
            match (parse_nameserver(addr), repo.downloader()) {
                (Some(a), Some(d)) => {
                    d.set_nameserver(Some(a));
                    log::info!("CernVM-FS: using DNS server {a}");
                    "OK\n".into()
                }
                // The reference accepts anything; an unusable address is an error here.
                _ => format!("Invalid DNS server address {addr:?}\n"),
            }
        }
        _ if line.starts_with("cleanup") && !line.starts_with("cleanup rate") => {
            let Some(mb) = arg("cleanup").and_then(|a| a.parse::<u64>().ok()) else {
                return "Usage: cleanup <MB>\n".into();
            };
            match quota {
                None => "Cache cannot trigger eviction\n".into(),
                Some(q) => match q.cleanup(mb << 20) {
                    Ok(true) => "OK\n".into(),
                    Ok(false) => "Not fully cleaned (there might be pinned chunks)\n".into(),
                    Err(e) => {
                        log::warn!("cleanup: {e}");
                        "Not fully cleaned (there might be pinned chunks)\n".into()
                    }
                },
            }
        }
        _ if line.starts_with("evict") => {
            let Some(path) = arg("evict") else {
                return "Usage: evict <path>\n".into();
            };
            match repo.evict(&repo_path(path)) {
                Ok(true) => "OK\n".into(),
                Ok(false) => "No such regular file\n".into(),
                Err(e) => {
                    log::warn!("evict {path}: {e}");
                    "No such regular file\n".into()
                }
            }
        }
        _ if line.starts_with("pin") => {
            let Some(path) = arg("pin") else {
                return "Usage: pin <path>\n".into();
            };
            match repo.pin(&repo_path(path)) {
                Ok(true) => "OK\n".into(),
                Ok(false) => "No such regular file or pinning failed\n".into(),
                Err(e) => {
                    log::warn!("pin {path}: {e}");
                    "No such regular file or pinning failed\n".into()
                }
            }
        }
        _ => "unknown command\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(repo_path("//usr/bin/bash"), b"/usr/bin/bash");
        assert_eq!(repo_path("/cvm4/usr/"), b"/cvm4/usr");
        assert_eq!(repo_path("/"), b"");
    }
}
