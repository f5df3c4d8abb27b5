//! kernel modules (spec §2)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("kernel modules (spec §2)"))
}
