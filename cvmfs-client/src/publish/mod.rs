//! The publisher: turns a directory tree into a signed CernVM-FS repository in the format
//! the real `cvmfs_server` writes (see `../shared/spec/cvmfs-client.md` and the real-server
//! fixture).

pub mod chunker;
pub mod keys;
