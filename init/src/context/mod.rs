//! Contextualization: user data from its sources, and the µCernVM block inside it (spec §5).

pub mod extra;
pub mod glidein;
pub mod media;
pub mod mime;
pub mod sources;
pub mod ssh_keys;
pub mod ucernvm_block;
pub mod user_data;

pub use ucernvm_block::{parse_block, write_ucontext, ContextEntry};
pub use user_data::{decode_user_data, UserDataError};

/// The name under which `/init` acts as `parse_user_data` (a link in the initramfs).
pub const PARSE_USER_DATA_NAME: &str = "parse_user_data";

/// `parse_user_data`: reads user data on stdin (plain, gzip-compressed or MIME multipart) and
/// prints the `_UCONTEXT_<KEY>=<value>` lines of its µCernVM block exactly as the original tool
/// does; blocks in base64/quoted-printable/gzip MIME parts, which the original cannot see, are
/// printed after those of the raw scan. Returns the exit status.
pub fn parse_user_data_main() -> i32 {
    use std::io::{self, Read, Write};
    let mut raw = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut raw) {
        eprintln!("parse_user_data: cannot read standard input: {e}");
        return 1;
    }
    let (data, problem) = decode_user_data(&raw);
    if let Some(p) = problem {
        eprintln!("parse_user_data: {p}; parsing the raw bytes");
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if let Err(e) = write_ucontext(&mime::scan_user_data(&data), &mut out).and_then(|_| out.flush())
    {
        eprintln!("parse_user_data: cannot write standard output: {e}");
        return 1;
    }
    0
}
