//! From the client configuration to the settings of a mount: how to reach and trust the
//! repository ([`RepositoryOptions`]) and how the FUSE file system behaves ([`FuseOptions`])
//! (spec §4.5, §5.6, §5.10, §8, §9.1, §10.1, §10.5–10.7, §12).
//!
//! Parameters this client does not know are accepted silently.

use cvmfs_config::keys::{
    CVMFS_AUTO_UPDATE, CVMFS_CACHE_BASE, CVMFS_CACHE_DIR, CVMFS_CHECK_PERMISSIONS,
    CVMFS_CLAIM_OWNERSHIP, CVMFS_FUSE_PASSTHROUGH, CVMFS_GID_MAP, CVMFS_HIDE_MAGIC_XATTRS,
    CVMFS_HTTP_PROXY, CVMFS_KCACHE_TIMEOUT, CVMFS_KEYS_DIR, CVMFS_MAGIC_XATTRS_VISIBILITY,
    CVMFS_MAX_TTL, CVMFS_NFILES, CVMFS_PUBLIC_KEY, CVMFS_QUOTA_LIMIT, CVMFS_REPOSITORY_TAG,
    CVMFS_ROOT_HASH, CVMFS_SERVER_URL, CVMFS_SHARED_CACHE, CVMFS_SUID, CVMFS_TIMEOUT,
    CVMFS_TIMEOUT_DIRECT, CVMFS_UID_MAP, CVMFS_USYSLOG, CVMFS_WORLD_READABLE,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::hash::ContentHash;
use crate::repository::RepositoryOptions;
use crate::uid_map::{IdMap, IdMapError};

/// Default `CVMFS_CACHE_BASE`.
pub const DEFAULT_CACHE_BASE: &str = "/var/lib/cvmfs";
/// Where master public keys are searched when neither `CVMFS_PUBLIC_KEY` nor
/// `CVMFS_KEYS_DIR` is set.
pub const DEFAULT_KEYS_DIR: &str = "/etc/cvmfs/keys";
/// Default `CVMFS_KCACHE_TIMEOUT` (seconds).
pub const DEFAULT_KCACHE_TIMEOUT: u64 = 60;
/// Default `CVMFS_TIMEOUT` (seconds, connections through a proxy).
pub const DEFAULT_TIMEOUT: u64 = 5;
/// Default `CVMFS_TIMEOUT_DIRECT` (seconds, direct connections).
pub const DEFAULT_TIMEOUT_DIRECT: u64 = 10;

/// Errors while turning a configuration into mount settings.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{key}={value:?}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("cannot list public keys in {}: {cause}", dir.display())]
    KeysDir { dir: PathBuf, cause: std::io::Error },
}

/// Which magic extended attributes `listxattr` shows (spec §10.5). `getxattr` of a magic name
/// always works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagicXattrVisibility {
    /// Listed only on the repository root directory (the default).
    RootOnly,
    /// Never listed.
    Never,
    /// Listed on every entry they apply to.
    Always,
}

/// Behaviour of the FUSE file system.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Kernel entry/attribute cache timeout (`CVMFS_KCACHE_TIMEOUT`).
    pub kcache_timeout: Duration,
    /// `CVMFS_CLAIM_OWNERSHIP`: report the daemon's effective uid/gid for every entry.
    pub claim_ownership: bool,
    /// `CVMFS_UID_MAP` (empty map if unset).
    pub uid_map: IdMap,
    /// `CVMFS_GID_MAP` (empty map if unset).
    pub gid_map: IdMap,
    /// `CVMFS_CHECK_PERMISSIONS`: mount with `default_permissions`.
    pub check_permissions: bool,
    /// `CVMFS_HIDE_MAGIC_XATTRS` / `CVMFS_MAGIC_XATTRS_VISIBILITY`.
    pub magic_xattrs: MagicXattrVisibility,
    /// `CVMFS_WORLD_READABLE`: add r-x to directories and r to everything else.
    pub world_readable: bool,
    /// `CVMFS_QUOTA_LIMIT` in MB; `None` = unlimited (unset or negative).
    pub quota_limit_mb: Option<u64>,
    /// `CVMFS_SUID`: honour set-uid bits.
    pub suid: bool,
    /// `CVMFS_NFILES`: `RLIMIT_NOFILE` to set.
    pub nfiles: Option<u64>,
    /// `CVMFS_MAX_TTL` in minutes (`None` if unset or 0).
    pub max_ttl_minutes: Option<u64>,
    /// `CVMFS_AUTO_UPDATE` (default yes).
    pub auto_update: bool,
    /// `CVMFS_USYSLOG`: log file of syslog-class messages.
    pub usyslog: Option<PathBuf>,
    /// Copies of the download timeouts, for `user.timeout` / `user.timeout_direct`.
    pub timeout: Duration,
    pub timeout_direct: Duration,
    /// `CVMFS_FUSE_PASSTHROUGH` (default yes): let the kernel read open files directly from
    /// the verified cached object (FUSE passthrough, Linux 6.9+; used only where the kernel
    /// offers it). It makes the FUSE mount count as one stacking level, so an overlay over it
    /// cannot itself be the lower layer of a further overlay.
    pub passthrough: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            kcache_timeout: Duration::from_secs(DEFAULT_KCACHE_TIMEOUT),
            claim_ownership: false,
            uid_map: IdMap::new(),
            gid_map: IdMap::new(),
            check_permissions: false,
            magic_xattrs: MagicXattrVisibility::RootOnly,
            world_readable: false,
            quota_limit_mb: None,
            suid: false,
            nfiles: None,
            max_ttl_minutes: None,
            auto_update: true,
            usyslog: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT),
            timeout_direct: Duration::from_secs(DEFAULT_TIMEOUT_DIRECT),
            passthrough: true,
        }
    }
}

/// Interprets the configuration of a mount.
pub struct MountSettings;

impl MountSettings {
    /// Maps the parameters of `config` to repository and FUSE options. `now` (seconds since the
    /// epoch) is used for the whitelist expiry check.
    pub fn from_config(
        config: &Config,
        now: i64,
    ) -> Result<(RepositoryOptions, FuseOptions), MountError> {
        Self::from_config_with_keys_dir(config, now, Path::new(DEFAULT_KEYS_DIR))
    }

    /// Like [`MountSettings::from_config`] with another fallback key directory (tests).
    pub fn from_config_with_keys_dir(
        config: &Config,
        now: i64,
        default_keys_dir: &Path,
    ) -> Result<(RepositoryOptions, FuseOptions), MountError> {
        let fqrn = config.fqrn().to_string();
        let nonempty = |key: &'static str| -> Result<String, MountError> {
            match config.get(key).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(MountError::Missing(key)),
            }
        };
        let server_url = nonempty(CVMFS_SERVER_URL)?;
        let proxy = nonempty(CVMFS_HTTP_PROXY)?;
        let timeout = config.get_u64(CVMFS_TIMEOUT)?.unwrap_or(DEFAULT_TIMEOUT);
        let timeout_direct = config
            .get_u64(CVMFS_TIMEOUT_DIRECT)?
            .unwrap_or(DEFAULT_TIMEOUT_DIRECT);

        let root_hash =
            match config.get(CVMFS_ROOT_HASH).map(str::trim) {
                Some(text) if !text.is_empty() => Some(text.parse::<ContentHash>().map_err(
                    |e| MountError::Invalid {
                        key: CVMFS_ROOT_HASH,
                        value: text.to_string(),
                        problem: e.to_string(),
                    },
                )?),
                _ => None,
            };
        let tag = config
            .get(CVMFS_REPOSITORY_TAG)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);

        let public_keys = public_keys(config, default_keys_dir)?;
        let cache_dir = cache_dir(config)?;

        let id_map = |key: &str| -> Result<IdMap, MountError> {
            match config.get(key).map(str::trim) {
                Some(p) if !p.is_empty() => Ok(IdMap::from_file(Path::new(p))?),
                _ => Ok(IdMap::new()),
            }
        };

        let mut magic_xattrs = match config.get_bool(CVMFS_HIDE_MAGIC_XATTRS)? {
            Some(true) => MagicXattrVisibility::Never,
            Some(false) => MagicXattrVisibility::Always,
            None => MagicXattrVisibility::RootOnly,
        };
        if let Some(v) = config
            .get(CVMFS_MAGIC_XATTRS_VISIBILITY)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            magic_xattrs = match v.to_ascii_lowercase().as_str() {
                "rootonly" => MagicXattrVisibility::RootOnly,
                "never" => MagicXattrVisibility::Never,
                "always" => MagicXattrVisibility::Always,
                _ => {
                    return Err(MountError::Invalid {
                        key: CVMFS_MAGIC_XATTRS_VISIBILITY,
                        value: v.to_string(),
                        problem: "expected rootonly, never or always".into(),
                    })
                }
            };
        }

        let quota_limit_mb = match config.get(CVMFS_QUOTA_LIMIT).map(str::trim) {
            Some(text) if !text.is_empty() => {
                let n: i64 = text.parse().map_err(|_| MountError::Invalid {
                    key: CVMFS_QUOTA_LIMIT,
                    value: text.to_string(),
                    problem: "not a number of megabytes".into(),
                })?;
                u64::try_from(n).ok()
            }
            _ => None,
        };

        let fuse = FuseOptions {
            kcache_timeout: Duration::from_secs(
                config
                    .get_u64(CVMFS_KCACHE_TIMEOUT)?
                    .unwrap_or(DEFAULT_KCACHE_TIMEOUT),
            ),
            claim_ownership: config.get_bool(CVMFS_CLAIM_OWNERSHIP)?.unwrap_or(false),
            uid_map: id_map(CVMFS_UID_MAP)?,
            gid_map: id_map(CVMFS_GID_MAP)?,
            check_permissions: config.get_bool(CVMFS_CHECK_PERMISSIONS)?.unwrap_or(false),
            magic_xattrs,
            world_readable: config.get_bool(CVMFS_WORLD_READABLE)?.unwrap_or(false),
            quota_limit_mb,
            suid: config.get_bool(CVMFS_SUID)?.unwrap_or(false),
            nfiles: config.get_u64(CVMFS_NFILES)?,
            max_ttl_minutes: config.get_u64(CVMFS_MAX_TTL)?.filter(|&m| m > 0),
            auto_update: config.get_bool(CVMFS_AUTO_UPDATE)?.unwrap_or(true),
            usyslog: config
                .get(CVMFS_USYSLOG)
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            timeout: Duration::from_secs(timeout),
            timeout_direct: Duration::from_secs(timeout_direct),
            passthrough: config.get_bool(CVMFS_FUSE_PASSTHROUGH)?.unwrap_or(true),
        };

        let repo = RepositoryOptions {
            fqrn,
            server_url,
            proxy,
            timeout: Duration::from_secs(timeout),
            timeout_direct: Duration::from_secs(timeout_direct),
            public_keys,
            cache_dir,
            quota_limit: quota_limit_mb.map(|mb| mb.saturating_mul(1 << 20)),
            tag,
            root_hash,
            environment: config.environment(),
            now,
            work_in_cache_dir: false,
        };
        Ok((repo, fuse))
    }
}

/// §4.5: `CVMFS_PUBLIC_KEY` (`:`-list), else `*.pub` directly in `CVMFS_KEYS_DIR` (a missing
/// directory yields none), else `*.pub` in the default directory.
fn public_keys(config: &Config, default_dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let listed = config.get_list(CVMFS_PUBLIC_KEY, ':');
    if !listed.is_empty() {
        return Ok(listed.into_iter().map(PathBuf::from).collect());
    }
    let dir = match config.get(CVMFS_KEYS_DIR).map(str::trim) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => default_dir.to_path_buf(),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(MountError::KeysDir { dir, cause: source }),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| MountError::KeysDir {
            dir: dir.clone(),
            cause: source,
        })?;
        let path = entry.path();
        let is_pub = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().ends_with(b".pub"));
        if is_pub && !path.is_dir() {
            keys.push(path);
        }
    }
    keys.sort();
    Ok(keys)
}

/// §9.1: `CVMFS_CACHE_DIR` verbatim, else `CVMFS_CACHE_BASE` + `/shared` or `/<fqrn>`.
fn cache_dir(config: &Config) -> Result<PathBuf, MountError> {
    if let Some(d) = config
        .get(CVMFS_CACHE_DIR)
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        return Ok(PathBuf::from(d));
    }
    let base = config
        .get(CVMFS_CACHE_BASE)
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_CACHE_BASE);
    let shared = config.get_bool(CVMFS_SHARED_CACHE)?.unwrap_or(false);
    Ok(Path::new(base).join(if shared { "shared" } else { config.fqrn() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FQRN: &str = "demo.cernvm.test";

    fn base() -> Vec<(&'static str, String)> {
        vec![
            (
                "CVMFS_SERVER_URL",
                "http://s1/cvmfs/@fqrn@;http://s2".into(),
            ),
            ("CVMFS_HTTP_PROXY", "DIRECT".into()),
            ("CVMFS_PUBLIC_KEY", "/k/a.pub:/k/b.pub".into()),
        ]
    }

    fn settings(
        pairs: Vec<(&'static str, String)>,
    ) -> Result<(RepositoryOptions, FuseOptions), MountError> {
        let config = Config::from_pairs(FQRN, pairs);
        MountSettings::from_config_with_keys_dir(&config, 7, Path::new("/nonexistent/keys"))
    }

    #[test]
    fn defaults() {
        let (r, f) = settings(base()).unwrap();
        assert_eq!(r.server_url, "http://s1/cvmfs/demo.cernvm.test;http://s2");
        assert_eq!(r.proxy, "DIRECT");
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert_eq!(r.timeout_direct, Duration::from_secs(10));
        assert_eq!(
            r.public_keys,
            vec![PathBuf::from("/k/a.pub"), PathBuf::from("/k/b.pub")]
        );
        assert_eq!(r.cache_dir, Path::new("/var/lib/cvmfs/demo.cernvm.test"));
        assert_eq!(r.tag, None);
        assert_eq!(r.root_hash, None);
        assert_eq!(r.now, 7);
        assert_eq!(
            r.environment.get("CVMFS_HTTP_PROXY").map(String::as_str),
            Some("DIRECT")
        );
        assert_eq!(f.kcache_timeout, Duration::from_secs(60));
        assert!(!f.claim_ownership && !f.check_permissions && !f.world_readable);
        assert_eq!(f.magic_xattrs, MagicXattrVisibility::RootOnly);
        assert!(f.uid_map.is_empty() && f.gid_map.is_empty());
        assert_eq!(f.quota_limit_mb, None);
        assert!(f.auto_update);
    }

    #[test]
    fn required_parameters() {
        let mut p = base();
        p.retain(|(k, _)| *k != "CVMFS_HTTP_PROXY");
        assert!(matches!(
            settings(p),
            Err(MountError::Missing("CVMFS_HTTP_PROXY"))
        ));
        let mut p = base();
        p.push(("CVMFS_HTTP_PROXY", "  ".into()));
        assert!(matches!(
            settings(p),
            Err(MountError::Missing("CVMFS_HTTP_PROXY"))
        ));
        let mut p = base();
        p.retain(|(k, _)| *k != "CVMFS_SERVER_URL");
        assert!(matches!(
            settings(p),
            Err(MountError::Missing("CVMFS_SERVER_URL"))
        ));
    }

    #[test]
    fn explicit_values() {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("uid_map");
        std::fs::write(&map, "1000 2000\n* 99\n").unwrap();
        let mut p = base();
        p.extend([
            ("CVMFS_TIMEOUT", "3".to_string()),
            ("CVMFS_TIMEOUT_DIRECT", "4".to_string()),
            ("CVMFS_CACHE_BASE", "/c".to_string()),
            ("CVMFS_SHARED_CACHE", "yes".to_string()),
            ("CVMFS_REPOSITORY_TAG", "v1".to_string()),
            (
                "CVMFS_ROOT_HASH",
                "f71bcc87c33d8adb3851f22152914744e677878f".to_string(),
            ),
            ("CVMFS_CLAIM_OWNERSHIP", "yes".to_string()),
            ("CVMFS_UID_MAP", map.display().to_string()),
            ("CVMFS_CHECK_PERMISSIONS", "on".to_string()),
            ("CVMFS_HIDE_MAGIC_XATTRS", "yes".to_string()),
            ("CVMFS_KCACHE_TIMEOUT", "0".to_string()),
            ("CVMFS_WORLD_READABLE", "true".to_string()),
            ("CVMFS_QUOTA_LIMIT", "2000".to_string()),
            ("CVMFS_SOMETHING_UNKNOWN", "whatever".to_string()),
        ]);
        let (r, f) = settings(p.clone()).unwrap();
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.timeout_direct, Duration::from_secs(4));
        assert_eq!(r.cache_dir, Path::new("/c/shared"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(
            r.root_hash.map(|h| h.to_string()).as_deref(),
            Some("f71bcc87c33d8adb3851f22152914744e677878f")
        );
        assert!(f.claim_ownership && f.check_permissions && f.world_readable);
        assert_eq!(f.uid_map.map(1000), 2000);
        assert_eq!(f.uid_map.map(5), 99);
        assert_eq!(f.gid_map.map(5), 5);
        assert_eq!(f.magic_xattrs, MagicXattrVisibility::Never);
        assert_eq!(f.kcache_timeout, Duration::ZERO);
        assert_eq!(f.quota_limit_mb, Some(2000));

        // The visibility parameter overrides CVMFS_HIDE_MAGIC_XATTRS; CVMFS_CACHE_DIR wins.
        p.push(("CVMFS_MAGIC_XATTRS_VISIBILITY", "Always".to_string()));
        p.push(("CVMFS_CACHE_DIR", "/direct".to_string()));
        p.push(("CVMFS_QUOTA_LIMIT", "-1".to_string()));
        let (r, f) = settings(p).unwrap();
        assert_eq!(f.magic_xattrs, MagicXattrVisibility::Always);
        assert_eq!(r.cache_dir, Path::new("/direct"));
        assert_eq!(f.quota_limit_mb, None);
    }

    #[test]
    fn invalid_values() {
        for (k, v) in [
            ("CVMFS_ROOT_HASH", "xyz"),
            ("CVMFS_TIMEOUT", "five"),
            ("CVMFS_MAGIC_XATTRS_VISIBILITY", "sometimes"),
            ("CVMFS_CLAIM_OWNERSHIP", "maybe"),
            ("CVMFS_UID_MAP", "/nonexistent/uid_map"),
            ("CVMFS_QUOTA_LIMIT", "lots"),
        ] {
            let mut p = base();
            p.push((k, v.to_string()));
            assert!(settings(p).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn keys_dir() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.pub", "a.pub", "c.crt", "sub.pub/x"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "k").unwrap();
        }
        let mut p = base();
        p.retain(|(k, _)| *k != "CVMFS_PUBLIC_KEY");
        p.push(("CVMFS_KEYS_DIR", dir.path().display().to_string()));
        let (r, _) = settings(p.clone()).unwrap();
        assert_eq!(
            r.public_keys,
            vec![dir.path().join("a.pub"), dir.path().join("b.pub")]
        );
        // Without CVMFS_KEYS_DIR the default directory is used; missing means no keys.
        p.retain(|(k, _)| *k != "CVMFS_KEYS_DIR");
        let (r, _) = settings(p.clone()).unwrap();
        assert!(r.public_keys.is_empty());
        let config = Config::from_pairs(FQRN, p);
        let (r, _) = MountSettings::from_config_with_keys_dir(&config, 0, dir.path()).unwrap();
        assert_eq!(r.public_keys.len(), 2);
    }
}
