//! block devices (spec §4)

use crate::boot::{Boot, NotImplemented};

/// Result of this phase, kept in [`Boot`].
#[derive(Debug, Default)]
pub struct BlockDevices {}

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("block devices (spec §4)"))
}
