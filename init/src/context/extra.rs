//! extra user data (spec §5.8)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("extra user data (spec §5.8)"))
}
