//! What a panic does in PID 1. A panic must never end in "Attempted to kill init", and a
//! helper thread's panic must never stop a boot that is going well:
//!
//! - [`install_last_resort`], the first statement of `main`: log the panic and, as PID 1,
//!   reboot (this covers `/shutdown` and everything before the boot proper starts);
//! - [`install_boot_hook`] once the boot starts: a panic of the boot's own (main) thread gets
//!   the rescue shell; a helper thread's panic (time query, port probe, floppy probe, …) is only
//!   logged, and its caller learns of it through the thread's join handle or closed channel.

use std::panic::{self, PanicHookInfo};
use std::thread::{self, ThreadId};

/// The panic message with the thread it happened on.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let current = thread::current();
    let name = current.name().unwrap_or("unnamed");
    format!("internal error in the boot loader (thread {name}): {info}")
}

/// Logs every panic; PID 1 then syncs and reboots, since it must not exit. Other processes of
/// this binary (the pinner, `reset_root_password`) just unwind as usual.
pub fn install_last_resort() {
    panic::set_hook(Box::new(|info| {
        let msg = describe(info);
        eprintln!("{msg}");
        log::error!("{msg}");
        if std::process::id() == 1 {
            eprintln!("Rebooting");
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        }
    }));
}

/// The hook for the boot: `on_main_thread(message)` for a panic of the thread that calls this
/// (the rescue shell in production; it should not return), a log line for any other thread.
pub fn install_boot_hook(on_main_thread: impl Fn(&str) + Send + Sync + 'static) {
    let main = thread::current().id();
    panic::set_hook(Box::new(move |info| {
        handle(main, info, &on_main_thread);
    }));
}

fn handle(main: ThreadId, info: &PanicHookInfo<'_>, on_main_thread: &dyn Fn(&str)) {
    let msg = describe(info);
    log::error!("{msg}");
    if thread::current().id() == main {
        on_main_thread(&msg);
    } else {
        eprintln!("{msg}; the boot goes on");
    }
}
