//! Post-mount steps (spec §12), in the original's order: injection, CernVM-FS pids, pin files,
//! logs, hotfixes and the OS bootstrap hook, boot timeline.

pub mod inject;

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("post-mount steps (spec §12)"))
}
