//! CernVM-FS client library: formats, verification and protocol of real CernVM-FS
//! repositories (see `../shared/spec/cvmfs-client.md`).

pub mod cache;
pub mod catalog;
pub mod dns;
pub mod download;
pub mod fetch;
pub mod fsck;
pub mod hash;
pub mod history;
pub mod manifest;
pub mod mount;
pub mod offline;
pub mod pac;
pub mod prefetch;
pub mod publish;
pub mod quota;
pub mod repository;
pub mod signature;
mod stock_zlib;
pub mod symlink;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trust;
pub mod uid_map;
pub mod whitelist;

/// The configuration model and the control-socket client live in `cvmfs-config`, shared with
/// the boot loader.
pub use cvmfs_config::{shell as config, talk};
