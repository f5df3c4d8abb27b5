//! `parse_user_data`: reads user data on stdin (plain, gzip-compressed or MIME multipart) and
//! prints the `_UCONTEXT_<KEY>=<value>` lines of its µCernVM block exactly as the original tool
//! does; blocks in base64/quoted-printable/gzip MIME parts, which the original cannot see, are
//! printed after those of the raw scan.

use std::io::{self, Read, Write};

use ucernvm_init::context::{decode_user_data, mime, write_ucontext};

fn main() {
    let mut raw = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut raw) {
        eprintln!("parse_user_data: cannot read standard input: {e}");
        std::process::exit(1);
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
        std::process::exit(1);
    }
}
