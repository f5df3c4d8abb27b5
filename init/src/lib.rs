//! µCernVM PID 1.
//!
//! The boot is a fixed sequence of phases (see `docs/ARCHITECTURE.md`); each phase lives in
//! its own module so that a reader finds it by name.

pub mod cmdline;
pub mod console;
pub mod context;
pub mod early;
pub mod rescue;
pub mod timeline;
