//! post-mount steps (spec §12)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("post-mount steps (spec §12)"))
}
