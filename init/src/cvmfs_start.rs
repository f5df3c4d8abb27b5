//! CernVM-FS start (spec §9)

use crate::boot::{Boot, NotImplemented};

/// Result of this phase, kept in [`Boot`].
#[derive(Debug, Default)]
pub struct CvmfsMount {}

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("CernVM-FS start (spec §9)"))
}
