//! scratch disk (spec §6)

pub mod plan;
pub mod table;

use crate::boot::{Boot, NotImplemented};

/// Result of this phase, kept in [`Boot`].
#[derive(Debug, Default)]
pub struct ScratchDisk {}

pub fn root_phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("scratch disk (spec §6)"))
}

pub fn resize_phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("scratch disk (spec §6)"))
}

pub fn swap_phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("scratch disk (spec §6)"))
}
