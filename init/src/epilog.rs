//! context epilog (spec §8)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("context epilog (spec §8)"))
}
