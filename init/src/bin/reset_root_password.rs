//! `reset_root_password`: in the debug-mode rescue shell, sets root's password in the union
//! (`/root/etc/shadow`, or `passwd` without a shadow file) to "password" (spec §13).

use std::path::Path;

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new("/root").to_path_buf());
    match ucernvm_init::handover::reset_root_password(&root) {
        Ok(file) => {
            println!(
                "root password is '{}' (changed in {})",
                ucernvm_init::handover::RESET_PASSWORD,
                file.display()
            );
        }
        Err(e) => {
            eprintln!("reset_root_password: {e}");
            std::process::exit(1);
        }
    }
}
