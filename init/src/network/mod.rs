//! network (spec §3)

use crate::boot::{Boot, NotImplemented};

/// Result of this phase, kept in [`Boot`].
#[derive(Debug, Default)]
pub struct NetworkState {}

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("network (spec §3)"))
}

pub mod time;
