//! Helpers shared by unit and integration tests: where the reference fixture lives.

use std::path::PathBuf;

/// The real-server fixture `demo.cernvm.test`: `$UCERNVM_FIXTURES/cvmfs/demo.cernvm.test` if
/// set, else `../shared/fixtures/cvmfs/demo.cernvm.test` relative to the repository root.
pub fn fixture_dir() -> PathBuf {
    let base = match std::env::var_os("UCERNVM_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    };
    base.join("cvmfs/demo.cernvm.test")
}
