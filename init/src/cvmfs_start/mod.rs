//! CernVM-FS start (spec §9): writes the client configuration, optionally waits for a proxy,
//! starts our `cvmfs2` as a separate daemon process on `/root.ro`, pins the snapshot, and
//! exports the repository keys to the scratch disk.
//!
//! The daemon is forked by `cvmfs2` itself (it reports success only once the FUSE mount is up),
//! so it is not a thread of PID 1 and survives `switch_root`.

pub mod config;
pub mod snapshot;
pub mod squid;

use path_error::{io_err, PathError};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::{BootConfig, CvmfsParams};
use crate::console;
use crate::disk::ScratchDisk;
use crate::layout::Layout;
use config::ConfigPaths;
use cvmfs_config::keys::{
    CVMFS_HTTP_PROXY, CVMFS_PAC_URLS, CVMFS_ROOT_HASH, CVMFS_SERVER_URL, CVMFS_TIMEOUT_DIRECT,
};
use cvmfs_config::ConfigFile;
use snapshot::{Selection, Snapshot};

/// Our CernVM-FS client in the initramfs (the original's path).
pub const CVMFS2_BINARY: &str = "/usr/bin/cvmfs2";
/// FUSE options of the OS mount: everyone reads it, set-uid binaries (sudo) work.
const MOUNT_OPTIONS: &str = "allow_other,cvmfs_suid";
/// Bound for one control-socket request.
const TALK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CvmfsError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("Unable to mount cvmfs root filesystem! {0}")]
    Mount(String),
    #[error("Unable to re-mount cvmfs root filesystem! {0}")]
    Remount(String),
    #[error("cannot read the magic attribute {name} of {}: {cause}", path.display())]
    Xattr {
        name: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("the mounted snapshot {mounted} is not the pinned one {pinned}")]
    PinMismatch { pinned: String, mounted: String },
    #[error("the OS root {} does not exist in the repository: {cause}", path.display())]
    NoOsRoot { path: PathBuf, cause: io::Error },
    #[error("cvmfs_wait_on_squid: {0}")]
    Squid(String),
    #[error(
        "Unable to mount cvmfs root filesystem! No public key for repository {repository} in {}: \
         this image carries keys for {shipped} \
         (choose one of them with cvmfs_branch, or add the key to the image)",
        dir.display()
    )]
    NoKeys {
        repository: String,
        dir: PathBuf,
        shipped: String,
    },
}

/// The repositories with at least one `*.pub` key under `keys` (`/etc/cvmfs/keys`), sorted.
fn repositories_with_keys(keys: &Path) -> Vec<String> {
    let mut repos: Vec<String> = std::fs::read_dir(keys)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| has_keys(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    repos.sort();
    repos
}

fn has_keys(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "pub") && e.path().is_file())
}

/// The running OS repository mount: what [`mount`] made.
#[derive(Debug, Clone)]
pub struct CvmfsMount {
    pub params: CvmfsParams,
    /// The `cvmfs2` executable that serves the mount.
    pub binary: PathBuf,
    /// `/etc/cvmfs/config.d/<repo>.conf`.
    pub config_file: PathBuf,
    /// What `config_file` holds.
    pub config: ConfigFile,
    /// `/root.rw/cache` (`CVMFS_CACHE_BASE`).
    pub cache: PathBuf,
    /// `/root.ro`.
    pub mountpoint: PathBuf,
    /// True when this boot resolved a tag instead of mounting a recorded snapshot (§9.3).
    pub fresh: bool,
    /// The mounted snapshot, as recorded in `aux/cvmfs_snapshot`.
    pub snapshot: Snapshot,
    /// Revision number of the mounted snapshot (`user.revision`).
    pub revision: String,
}

impl CvmfsMount {
    /// `/root.ro/<cernvm_path>`: the lower layer of the union.
    pub fn os_root(&self) -> PathBuf {
        match self.params.os_subdir() {
            "" => self.mountpoint.clone(),
            sub => self.mountpoint.join(sub),
        }
    }

    /// The control socket `<cache>/<repo>/cvmfs_io.<repo>`.
    pub fn talk_socket(&self) -> PathBuf {
        cvmfs_config::talk::socket_path(&self.cache, &self.params.repository)
    }

    /// Unmounts and mounts the recorded snapshot again (§10.4), so that new uid/gid maps take
    /// effect. The recorded root hash is written into the configuration first, so that a tag
    /// that moved meanwhile cannot give another revision than the one rebased against.
    pub fn remount(&mut self, resolv_conf: &Path) -> Result<(), CvmfsError> {
        if !self.config.contains(CVMFS_ROOT_HASH) {
            self.config.set(CVMFS_ROOT_HASH, &self.snapshot.root_hash);
            std::fs::write(&self.config_file, self.config.render())
                .map_err(io_err("cannot write", &self.config_file))?;
        }
        unmount(&self.mountpoint).map_err(CvmfsError::Remount)?;
        run_cvmfs2(
            &self.binary,
            &self.config_file,
            &self.params.repository,
            &self.mountpoint,
        )
        .map_err(CvmfsError::Remount)?;
        set_nameserver(&self.talk_socket(), resolv_conf);
        let (mounted, _) = read_snapshot(&self.mountpoint)?;
        if mounted != self.snapshot.root_hash {
            return Err(CvmfsError::PinMismatch {
                pinned: self.snapshot.root_hash.clone(),
                mounted,
            });
        }
        Ok(())
    }
}

/// Whether this boot's mount depends on the clock (spec §3.5): a fresh snapshot means a signed
/// manifest whose whitelist expires, and TLS (an `https://` server, proxy or PAC URL) checks the
/// certificates' validity. A snapshot recorded by an earlier boot is mounted by its hash,
/// without either, so the time server's answer need not be waited for before it.
pub fn needs_clock(config: &BootConfig, layout: &Layout) -> bool {
    let params = &config.cvmfs;
    let fresh = snapshot::select(&layout.aux(), params.tag.as_deref())
        .map_or(true, |selection| selection.is_fresh());
    let tls = [
        params.server_url_value(),
        params.proxy.clone(),
        params.pac_urls.clone(),
    ]
    .iter()
    .any(|v| v.to_ascii_lowercase().contains("https://"));
    fresh || tls
}

/// Spec §9: configures and mounts the OS repository of `config` on `layout.root_ro` with the
/// `cvmfs2` executable `binary` ([`CVMFS2_BINARY`] in the initramfs). `scratch` gives the cache
/// quota; without it the size of `layout.root_rw` is measured.
pub fn mount(
    config: &BootConfig,
    layout: &Layout,
    scratch: Option<&ScratchDisk>,
    binary: &Path,
) -> Result<CvmfsMount, CvmfsError> {
    console::begin("Starting CernVM File System...");
    let r = mount_inner(config, layout, scratch, binary);
    match &r {
        Ok(m) => console::result(&format!("connected to {}", m.params.repository)),
        Err(_) => console::failed(),
    }
    r
}

fn mount_inner(
    config: &BootConfig,
    layout: &Layout,
    scratch: Option<&ScratchDisk>,
    binary: &Path,
) -> Result<CvmfsMount, CvmfsError> {
    let params = config.cvmfs.clone();
    let repo = params.repository.clone();
    let aux = layout.aux();
    std::fs::create_dir_all(&aux).map_err(io_err("cannot create", &aux))?;
    // Without a key the client refuses every manifest: say so before trying (spec §9.9).
    let keys = layout.initramfs.join("etc/cvmfs/keys");
    if !has_keys(&keys.join(&repo)) {
        let shipped = repositories_with_keys(&keys);
        return Err(CvmfsError::NoKeys {
            repository: repo.clone(),
            dir: keys.join(&repo),
            shipped: if shipped.is_empty() {
                "no repository".to_string()
            } else {
                shipped.join(", ")
            },
        });
    }
    let selection = snapshot::select(&aux, params.tag.as_deref())?;
    log::info!("CernVM-FS: repository {repo}, snapshot selection {selection:?}");

    let cache = layout.root_rw.join("cache");
    std::fs::create_dir_all(&cache).map_err(io_err("cannot create", &cache))?;
    let paths = ConfigPaths {
        cache: cache.clone(),
        keys_dir: keys.join(&repo),
        uid_map: aux.join("uid_map"),
        gid_map: aux.join("gid_map"),
    };
    for map in [&paths.uid_map, &paths.gid_map] {
        if !map.exists() {
            std::fs::write(map, "").map_err(io_err("cannot create", map))?;
        }
    }
    // ROOT_SIZE_MB from the scratch-disk phase, else measured here.
    let root_size_mb = match scratch {
        Some(s) => s.root_size_mb,
        None => crate::disk::fs::size_mib(&layout.root_rw).map_err(|e| {
            CvmfsError::Io(PathError::new(
                "cannot measure",
                layout.root_rw.clone(),
                io::Error::other(e.to_string()),
            ))
        })?,
    };
    let quota = config::quota_limit_mb(root_size_mb);
    let conf_dir = layout.initramfs.join("etc/cvmfs/config.d");
    std::fs::create_dir_all(&conf_dir).map_err(io_err("cannot create", &conf_dir))?;
    let config_file = conf_dir.join(format!("{repo}.conf"));
    let config = config::config_file(&params, &paths, quota, &selection);
    std::fs::write(&config_file, config.render()).map_err(io_err("cannot write", &config_file))?;
    raise_nofile_limit();

    if let Some(seconds) = params.wait_on_squid {
        let urls = config.get_list(CVMFS_SERVER_URL, ';');
        // What `cvmfs2 __wpad__` needs to resolve `auto` as the mount will (`http_proxy` comes
        // from the environment, as the daemon sees it).
        let discovery_env: Vec<(&str, String)> = [
            (CVMFS_PAC_URLS, config.get(CVMFS_PAC_URLS)),
            ("http_proxy", std::env::var("http_proxy").ok()),
            (CVMFS_TIMEOUT_DIRECT, config.get(CVMFS_TIMEOUT_DIRECT)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let description = squid::resolve_auto(
            &config.get(CVMFS_HTTP_PROXY).unwrap_or_default(),
            &urls.join(";"),
            &discovery_env,
            binary,
        );
        let proxies = squid::flatten_proxies(&description);
        squid::wait(&urls, &proxies, Duration::from_secs(seconds.max(1)), None)
            .map_err(CvmfsError::Squid)?;
    }

    let mountpoint = layout.root_ro.clone();
    std::fs::create_dir_all(&mountpoint).map_err(io_err("cannot create", &mountpoint))?;
    if let Err(e) = run_cvmfs2(binary, &config_file, &repo, &mountpoint) {
        dump_diagnostics(&cache, &config_file);
        return Err(CvmfsError::Mount(e));
    }
    let resolv_conf = layout.initramfs.join("etc/resolv.conf");
    set_nameserver(
        &cvmfs_config::talk::socket_path(&cache, &repo),
        &resolv_conf,
    );
    export_keys(&paths.keys_dir, &aux.join("keys").join(&repo))?;

    let (root_hash, revision) = read_snapshot(&mountpoint)?;
    let snapshot = match &selection {
        Selection::Fresh { tag } => {
            let snap = Snapshot {
                root_hash,
                tag: tag.clone().unwrap_or_default(),
            };
            snapshot::record(&aux, &snap)?;
            log::info!(
                "CernVM-FS: pinned {repo} to {} (tag {:?}, revision {revision})",
                snap.root_hash,
                snap.tag
            );
            snap
        }
        Selection::Pinned(pinned) => {
            if pinned.root_hash != root_hash {
                return Err(CvmfsError::PinMismatch {
                    pinned: pinned.root_hash.clone(),
                    mounted: root_hash,
                });
            }
            pinned.clone()
        }
    };

    let persistent = layout.root_rw.join("persistent");
    std::fs::create_dir_all(&persistent).map_err(io_err("cannot create", &persistent))?;
    let mount = CvmfsMount {
        params,
        binary: binary.to_path_buf(),
        config_file,
        config,
        cache,
        mountpoint,
        fresh: selection.is_fresh(),
        snapshot,
        revision,
    };
    // Listing the OS root once loads its nested catalog, and proves that it exists.
    let os_root = mount.os_root();
    std::fs::read_dir(&os_root).map_err(|source| CvmfsError::NoOsRoot {
        path: os_root.clone(),
        cause: source,
    })?;
    Ok(mount)
}

/// Runs `cvmfs2 -o config=…,allow_other,cvmfs_suid <repo> <mountpoint>`; it returns once the
/// daemon it forked has mounted (or failed), with the daemon's one-line reason on failure.
pub fn run_cvmfs2(
    binary: &Path,
    config_file: &Path,
    repo: &str,
    mountpoint: &Path,
) -> Result<(), String> {
    let out = Command::new(binary)
        .arg("-o")
        .arg(format!("config={},{MOUNT_OPTIONS}", config_file.display()))
        .arg(repo)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if out.status.success() {
        // What the client said while it mounted (warnings included) goes to the boot log.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            log::debug!("{line}");
        }
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} exited with {}: {}",
        binary.display(),
        out.status,
        stderr.trim()
    ))
}

/// What the original shows when the mount fails: the client's log and the configuration
/// (`/proc/cmdline` follows from the rescue console's caller).
fn dump_diagnostics(cache: &Path, config_file: &Path) {
    for (title, path) in [
        ("CernVM-FS log", cache.join("usyslog")),
        ("CernVM-FS configuration", config_file.to_path_buf()),
        ("kernel command line", PathBuf::from("/proc/cmdline")),
    ] {
        match std::fs::read_to_string(&path) {
            Ok(text) => eprintln!("--- {title} ({}):\n{text}", path.display()),
            Err(e) => eprintln!("--- {title}: cannot read {}: {e}", path.display()),
        }
    }
}

fn raise_nofile_limit() {
    use nix::sys::resource::{setrlimit, Resource};
    let n = config::NFILES;
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, n, n) {
        log::warn!("cannot raise the open-file limit to {n}: {e}");
    }
}

/// The first `nameserver` of a resolv.conf text.
pub fn first_nameserver(resolv_conf: &str) -> Option<&str> {
    resolv_conf.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
    })
}

/// Tells the daemon the current name server (`nameserver set <ip>`): after hand-over it keeps
/// the initramfs resolver settings otherwise. Failure is logged; the mount works without it.
pub fn set_nameserver(socket: &Path, resolv_conf: &Path) {
    let text = std::fs::read_to_string(resolv_conf).unwrap_or_default();
    let Some(ns) = first_nameserver(&text) else {
        log::info!(
            "no name server in {}; not telling CernVM-FS",
            resolv_conf.display()
        );
        return;
    };
    match cvmfs_config::talk::request(socket, &format!("nameserver set {ns}"), TALK_TIMEOUT) {
        Ok(reply) if reply.starts_with("OK") => log::info!("CernVM-FS: name server {ns}"),
        Ok(reply) => log::warn!("CernVM-FS refused 'nameserver set {ns}': {}", reply.trim()),
        Err(e) => log::warn!("cannot set the CernVM-FS name server: {e}"),
    }
}

/// Copies the repository keys of the initramfs into `aux/keys/<repo>/`: same-named files are
/// overwritten, keys the user added there are kept.
pub fn export_keys(from: &Path, to: &Path) -> Result<(), CvmfsError> {
    std::fs::create_dir_all(to).map_err(io_err("cannot create", to))?;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CvmfsError::Io(PathError::new(
                "cannot list",
                from.to_path_buf(),
                source,
            )))
        }
    };
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", from))?;
        let target = to.join(entry.file_name());
        let ft = entry
            .file_type()
            .map_err(io_err("cannot stat", &entry.path()))?;
        if ft.is_dir() {
            export_keys(&entry.path(), &target)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &target).map_err(io_err("cannot copy to", &target))?;
        }
    }
    Ok(())
}

/// Reads a magic extended attribute of the mount (our `cvmfs2` answers `getxattr` for them even
/// when `CVMFS_HIDE_MAGIC_XATTRS` hides them from listings).
pub fn magic_xattr(path: &Path, name: &'static str) -> Result<String, CvmfsError> {
    let err = |source| CvmfsError::Xattr {
        name,
        path: path.to_path_buf(),
        cause: source,
    };
    let value = xattr::get_deref(path, name)
        .map_err(err)?
        .ok_or_else(|| err(io::Error::from_raw_os_error(libc::ENODATA)))?;
    Ok(String::from_utf8_lossy(&value).trim().to_string())
}

/// `(root hash, revision)` of the repository mounted at `mountpoint`.
pub fn read_snapshot(mountpoint: &Path) -> Result<(String, String), CvmfsError> {
    Ok((
        magic_xattr(mountpoint, "user.root_hash")?,
        magic_xattr(mountpoint, "user.revision")?,
    ))
}

/// Unmounts `mountpoint`, lazily if busy.
pub fn unmount(mountpoint: &Path) -> Result<(), String> {
    use nix::mount::{umount2, MntFlags};
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(_) => umount2(mountpoint, MntFlags::MNT_DETACH)
            .map_err(|e| format!("cannot unmount {}: {e}", mountpoint.display())),
    }
}

/// Pids of every process running `binary` (the `.cvmfs_pids` list, §12.2).
pub fn daemon_pids(binary: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe == want) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nameserver_of_resolv_conf() {
        assert_eq!(
            first_nameserver("# dhcp\nsearch x\nnameserver 10.0.2.3\nnameserver 8.8.8.8\n"),
            Some("10.0.2.3")
        );
        assert_eq!(first_nameserver("search x\n"), None);
        assert_eq!(first_nameserver("nameserver\n"), None);
    }

    #[test]
    fn only_a_recorded_snapshot_without_tls_is_mounted_before_the_clock_is_set() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::under(t.path().to_path_buf());
        let config = |cmdline: &str| {
            BootConfig::resolve(
                &crate::cmdline::KernelCmdline::parse(cmdline),
                crate::settings::ContextSettings::default(),
                true,
            )
        };
        let plain = config("cvmfs_server=s1.example.org");
        assert!(needs_clock(&plain, &layout), "first boot: a fresh snapshot");
        std::fs::create_dir_all(layout.aux()).unwrap();
        let recorded = Snapshot {
            root_hash: "0123456789abcdef0123456789abcdef01234567".into(),
            tag: String::new(),
        };
        snapshot::record(&layout.aux(), &recorded).unwrap();
        assert!(
            !needs_clock(&plain, &layout),
            "the recorded snapshot, by hash"
        );
        let tls = config("cvmfs_url=https://s1.example.org/cvmfs/r.example.org");
        assert!(needs_clock(&tls, &layout), "TLS checks certificate dates");
        let tls_proxy = config("cvmfs_server=s1.example.org cvmfs_proxy=https://p.example:3129");
        assert!(needs_clock(&tls_proxy, &layout));
    }

    /// A repository without a key fails before the client runs, naming what the image has.
    #[test]
    fn a_repository_without_keys_is_named_with_the_ones_shipped() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::under(t.path().to_path_buf());
        let keys = t.path().join("etc/cvmfs/keys");
        std::fs::create_dir_all(keys.join("cernvm-prod.cern.ch")).unwrap();
        std::fs::write(keys.join("cernvm-prod.cern.ch/cern-it4.cern.ch.pub"), "k").unwrap();
        std::fs::create_dir_all(keys.join("empty.example")).unwrap();
        let mut user = crate::settings::ContextSettings::default();
        user.apply("CVMFS_BRANCH", "my-os.example.org");
        let config = BootConfig::resolve(&crate::cmdline::KernelCmdline::default(), user, true);
        let err =
            mount_inner(&config, &layout, None, Path::new("/nonexistent/cvmfs2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Unable to mount cvmfs root filesystem! No public key for repository \
                 my-os.example.org in {}: this image carries keys for cernvm-prod.cern.ch \
                 (choose one of them with cvmfs_branch, or add the key to the image)",
                keys.join("my-os.example.org").display()
            )
        );
    }

    #[test]
    fn keys_export_merges() {
        let t = tempfile::tempdir().unwrap();
        let from = t.path().join("keys/r");
        let to = t.path().join("aux/keys/r");
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("r.pub"), "new").unwrap();
        std::fs::write(to.join("r.pub"), "old").unwrap();
        std::fs::write(to.join("user.pub"), "mine").unwrap();
        export_keys(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("r.pub")).unwrap(), "new");
        assert_eq!(
            std::fs::read_to_string(to.join("user.pub")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn os_root_follows_cernvm_path() {
        let mut m = CvmfsMount {
            params: CvmfsParams::resolve(
                &crate::cmdline::KernelCmdline::parse("cernvm_path=/cvm4/"),
                &Default::default(),
                true,
            ),
            config: ConfigFile::new("cernvm-devel.cern.ch"),
            binary: CVMFS2_BINARY.into(),
            config_file: "/etc/cvmfs/config.d/x.conf".into(),
            cache: "/root.rw/cache".into(),
            mountpoint: "/root.ro".into(),
            fresh: true,
            snapshot: Snapshot {
                root_hash: "a".into(),
                tag: String::new(),
            },
            revision: "1".into(),
        };
        assert_eq!(m.os_root(), Path::new("/root.ro/cvm4"));
        assert_eq!(
            m.talk_socket(),
            Path::new("/root.rw/cache/cernvm-devel.cern.ch/cvmfs_io.cernvm-devel.cern.ch")
        );
        m.params.cernvm_path.clear();
        assert_eq!(m.os_root(), Path::new("/root.ro"));
    }
}
