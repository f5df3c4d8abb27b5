//! Contextualization: user data from its sources, and the µCernVM block inside it (spec §5).

pub mod extra;
pub mod glidein;
pub mod media;
pub mod mime;
pub mod sources;
pub mod ssh_keys;
pub mod ucernvm_block;
pub mod user_data;

pub use ucernvm_block::{parse_block, write_ucontext, ContextEntry};
pub use user_data::{decode_user_data, UserDataError};
