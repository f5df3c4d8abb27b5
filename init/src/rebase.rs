//! rebase (spec §10)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("rebase (spec §10)"))
}
