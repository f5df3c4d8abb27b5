//! The names of the client configuration parameters (spec §10.1): the one definition of each
//! name, used by the boot loader that writes them and by the client that reads them.

/// Blacklist file: certificate fingerprints and `<fqrn N` revision floors.
pub const CVMFS_BLACKLIST: &str = "CVMFS_BLACKLIST";
/// Base directory of the local cache.
pub const CVMFS_CACHE_BASE: &str = "CVMFS_CACHE_BASE";
/// Explicit cache directory (overrides the one derived from the base).
pub const CVMFS_CACHE_DIR: &str = "CVMFS_CACHE_DIR";
/// Check file permissions in the kernel (`default_permissions`).
pub const CVMFS_CHECK_PERMISSIONS: &str = "CVMFS_CHECK_PERMISSIONS";
/// Report the mounting user as the owner of every file.
pub const CVMFS_CLAIM_OWNERSHIP: &str = "CVMFS_CLAIM_OWNERSHIP";
/// Seconds proxy addresses are kept at least before their names are resolved again.
pub const CVMFS_DNS_MIN_TTL: &str = "CVMFS_DNS_MIN_TTL";
/// Proxy groups tried after those of `CVMFS_HTTP_PROXY` (never `DIRECT`).
pub const CVMFS_FALLBACK_PROXY: &str = "CVMFS_FALLBACK_PROXY";
/// The repository that carries further configuration.
pub const CVMFS_CONFIG_REPOSITORY: &str = "CVMFS_CONFIG_REPOSITORY";
/// The repository name, visible to `$CVMFS_FQRN` expansion.
pub const CVMFS_FQRN: &str = "CVMFS_FQRN";
/// Where the config repository is mounted.
pub const CVMFS_MOUNT_DIR: &str = "CVMFS_MOUNT_DIR";
/// Whether the client follows new revisions.
pub const CVMFS_AUTO_UPDATE: &str = "CVMFS_AUTO_UPDATE";
/// Back-off of retries: initial and maximum seconds.
pub const CVMFS_BACKOFF_INIT: &str = "CVMFS_BACKOFF_INIT";
pub const CVMFS_BACKOFF_MAX: &str = "CVMFS_BACKOFF_MAX";
/// Use FUSE passthrough for open files (Linux 6.9+).
pub const CVMFS_FUSE_PASSTHROUGH: &str = "CVMFS_FUSE_PASSTHROUGH";
/// Group id map file.
pub const CVMFS_GID_MAP: &str = "CVMFS_GID_MAP";
/// Hide the magic extended attributes from listings.
pub const CVMFS_HIDE_MAGIC_XATTRS: &str = "CVMFS_HIDE_MAGIC_XATTRS";
/// The proxy description: groups separated by `;`, proxies in a group by `|`.
pub const CVMFS_HTTP_PROXY: &str = "CVMFS_HTTP_PROXY";
/// Accept unsigned catalogs (never set to yes by the boot loader).
pub const CVMFS_IGNORE_SIGNATURE: &str = "CVMFS_IGNORE_SIGNATURE";
/// Kernel cache timeout in seconds.
pub const CVMFS_KCACHE_TIMEOUT: &str = "CVMFS_KCACHE_TIMEOUT";
/// Directory of the repository public keys.
pub const CVMFS_KEYS_DIR: &str = "CVMFS_KEYS_DIR";
/// Which magic extended attributes are visible.
pub const CVMFS_MAGIC_XATTRS_VISIBILITY: &str = "CVMFS_MAGIC_XATTRS_VISIBILITY";
/// Addresses tried per proxy name.
pub const CVMFS_MAX_IPADDR_PER_PROXY: &str = "CVMFS_MAX_IPADDR_PER_PROXY";
/// Retries per download.
pub const CVMFS_MAX_RETRIES: &str = "CVMFS_MAX_RETRIES";
/// Upper bound of the catalog TTL in minutes.
pub const CVMFS_MAX_TTL: &str = "CVMFS_MAX_TTL";
/// Open-file limit of the client.
pub const CVMFS_NFILES: &str = "CVMFS_NFILES";
/// NFS export mode.
pub const CVMFS_NFS_SOURCE: &str = "CVMFS_NFS_SOURCE";
/// Where `auto` in the proxy description looks for PAC files.
pub const CVMFS_PAC_URLS: &str = "CVMFS_PAC_URLS";
/// Seconds after which a proxy failover is undone.
pub const CVMFS_PROXY_RESET_AFTER: &str = "CVMFS_PROXY_RESET_AFTER";
/// Seconds after which a host failover is undone.
pub const CVMFS_HOST_RESET_AFTER: &str = "CVMFS_HOST_RESET_AFTER";
/// Address family tried first for a name with both (`4` or `6`).
pub const CVMFS_IPFAMILY_PREFER: &str = "CVMFS_IPFAMILY_PREFER";
/// Public key files, `:`-separated.
pub const CVMFS_PUBLIC_KEY: &str = "CVMFS_PUBLIC_KEY";
/// Cache quota in MiB.
pub const CVMFS_QUOTA_LIMIT: &str = "CVMFS_QUOTA_LIMIT";
/// Directory of the reload sockets.
pub const CVMFS_RELOAD_SOCKETS: &str = "CVMFS_RELOAD_SOCKETS";
/// Mount the snapshot of this tag.
pub const CVMFS_REPOSITORY_TAG: &str = "CVMFS_REPOSITORY_TAG";
/// Mount the snapshot with this root catalog hash.
pub const CVMFS_ROOT_HASH: &str = "CVMFS_ROOT_HASH";
/// Stratum-1 URLs, `;`-separated, with `@fqrn@` templates.
pub const CVMFS_SERVER_URL: &str = "CVMFS_SERVER_URL";
/// One cache shared by all repositories.
pub const CVMFS_SHARED_CACHE: &str = "CVMFS_SHARED_CACHE";
/// Allow set-uid binaries.
pub const CVMFS_SUID: &str = "CVMFS_SUID";
/// Keep the daemon alive through systemd's shutdown kill.
pub const CVMFS_SYSTEMD_NOKILL: &str = "CVMFS_SYSTEMD_NOKILL";
/// Path of the control socket.
pub const CVMFS_TALK_SOCKET: &str = "CVMFS_TALK_SOCKET";
/// Download timeouts in seconds, through a proxy and direct.
pub const CVMFS_TIMEOUT: &str = "CVMFS_TIMEOUT";
pub const CVMFS_TIMEOUT_DIRECT: &str = "CVMFS_TIMEOUT_DIRECT";
/// CA certificates (files or directories, `:`-separated) a `Wcachain` whitelist's certificate
/// must chain to.
pub const CVMFS_TRUSTED_CERTS: &str = "CVMFS_TRUSTED_CERTS";
/// User id map file.
pub const CVMFS_UID_MAP: &str = "CVMFS_UID_MAP";
/// Ask the Stratum-1s for the nearest one.
pub const CVMFS_USE_GEOAPI: &str = "CVMFS_USE_GEOAPI";
/// The client's own log file.
pub const CVMFS_USYSLOG: &str = "CVMFS_USYSLOG";
/// Make every file readable by everyone.
pub const CVMFS_WORLD_READABLE: &str = "CVMFS_WORLD_READABLE";
