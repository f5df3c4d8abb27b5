//! The CernVM-FS client configuration as both sides of it see it: the boot loader writes it,
//! the client (`cvmfs2`) reads it. Keeping the key names, the shell-fragment parser and the
//! renderer in one small crate ties the writer to the reader at compile time, without the
//! boot loader linking the whole client library.
//!
//! Also here, because both sides need them and they need nothing else: the client side of the
//! control-socket protocol ([`talk`]) and UTC calendar arithmetic ([`calendar`]).

pub mod calendar;
pub mod keys;
pub mod proxy;
pub mod render;
pub mod shell;
pub mod talk;

pub use render::ConfigFile;
pub use shell::{
    expand_templates, parse_bool, Config, ConfigError, Parameter, Source, DEFAULT_CONFIG_ROOT,
    DEFAULT_MOUNT_DIR,
};
