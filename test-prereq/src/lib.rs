//! Test prerequisites. A test that lacks a real part it needs (root, `/dev/fuse`, the fixture,
//! a kernel, a tool) skips with a message when a developer runs it alone, and fails naming the
//! missing part when `UCERNVM_REQUIRE_ALL=1`, which `scripts/test` (and so CI) sets: a test run
//! must not pass by skipping.

use std::fmt::Display;

/// The environment variable that turns every missing prerequisite into a failure.
pub const REQUIRE_ALL: &str = "UCERNVM_REQUIRE_ALL";

/// True when missing prerequisites are failures (`UCERNVM_REQUIRE_ALL` set, and not `0`).
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Reports that the calling test cannot run its real parts because of `missing`. Panics (the
/// test fails, naming `missing`) under [`REQUIRE_ALL`]; otherwise prints a `SKIPPED:` line and
/// returns, and the caller returns early.
#[track_caller]
pub fn skip(missing: impl Display) {
    if required() {
        panic!("{REQUIRE_ALL} is set and this test cannot run its real parts: {missing}");
    }
    eprintln!("SKIPPED: {missing} (with {REQUIRE_ALL}=1 this is a failure)");
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test for both states: the environment is process-wide.
    #[test]
    fn skip_fails_only_when_all_parts_are_required() {
        std::env::remove_var(REQUIRE_ALL);
        assert!(!required());
        skip("nothing");
        std::env::set_var(REQUIRE_ALL, "0");
        assert!(!required());
        std::env::set_var(REQUIRE_ALL, "1");
        assert!(required());
        let failure = std::panic::catch_unwind(|| skip("/dev/fuse is missing")).unwrap_err();
        let message = failure.downcast_ref::<String>().unwrap();
        assert!(message.contains("/dev/fuse is missing"), "{message}");
        assert!(message.contains(REQUIRE_ALL), "{message}");
    }
}
