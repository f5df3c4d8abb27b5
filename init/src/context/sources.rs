//! user-data sources (spec §5.1-5.5)

use crate::boot::{Boot, NotImplemented};

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("user-data sources (spec §5.1-5.5)"))
}
