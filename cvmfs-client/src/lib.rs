//! CernVM-FS client library: formats, verification and protocol of real CernVM-FS
//! repositories (see `../shared/spec/cvmfs-client.md`).

pub mod config;
pub mod hash;
pub mod manifest;
pub mod signature;
pub mod symlink;
pub mod testing;
pub mod uid_map;
pub mod whitelist;
