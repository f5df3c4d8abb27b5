//! The rescue console (the original's `panic`): an error message, `/proc/partitions`, and an
//! interactive shell on the console. When the shell exits the caller decides what follows;
//! PID 1 itself never exits, so the user never meets a bare kernel panic.

use std::process::Command;

use crate::console;

/// The shell offered to the user: busybox `sh`, shipped in the initramfs.
pub const SHELL: &str = "/bin/sh";

/// Shows `reason`, the partition table, and runs the rescue shell until it exits.
pub fn enter(reason: &str) {
    console::error(reason);
    console::info("Entering rescue console");
    match std::fs::read_to_string("/proc/partitions") {
        Ok(p) => eprint!("{p}"),
        Err(e) => eprintln!("(cannot read /proc/partitions: {e})"),
    }
    let status = Command::new(SHELL)
        .arg("-i")
        .env("PS1", "(initrd) ")
        .env(
            "PATH",
            "/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin",
        )
        .status();
    match status {
        Ok(s) => log::info!("rescue shell exited ({s})"),
        Err(e) => {
            console::error(&format!("cannot start the rescue shell {SHELL}: {e}"));
            // Without a shell, give the user time to read the message before going on.
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
    }
}
