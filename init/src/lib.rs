//! µCernVM PID 1.
//!
//! The boot is a fixed sequence of phases (see `docs/ARCHITECTURE.md`); each phase lives in
//! its own module so that a reader finds it by name.

pub mod boot;
pub mod bytes;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod context;
pub mod cvmfs_start;
pub mod devices;
pub mod disk;
pub mod early;
pub mod epilog;
pub mod handover;
pub mod http;
pub mod layout;
pub mod modules;
pub mod network;
pub mod panics;
pub mod post;
pub mod rebase;
pub mod rescue;
pub mod settings;
pub mod timeline;
pub mod union;
