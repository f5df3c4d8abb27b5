//! `/init` of the µCernVM initramfs: PID 1 until `switch_root`.

use ucernvm_init::boot::{self, Layout};
use ucernvm_init::cmdline::KernelCmdline;
use ucernvm_init::console::{self, KernelLogger};
use ucernvm_init::post::{drtini, pinfiles};
use ucernvm_init::{context, early, handover, panics, rescue};

fn main() {
    // Before anything else: no panic may leave PID 1 (here: `/shutdown` too) to the kernel.
    panics::install_last_resort();
    // The background pinner started by the post-mount phase (spec §12.4) is this binary too.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == pinfiles::PINNER_MODE) {
        let (Some(list), Some(socket)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: init --pin-files <list file> <control socket>");
            std::process::exit(2);
        };
        std::process::exit(pinfiles::pinner_main(list.as_ref(), socket.as_ref()));
    }
    // systemd-shutdown runs our copy in /run/initramfs as `/shutdown <verb>` (spec §12.3).
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    // One executable for the rescue shell's command too (keeps the image small).
    if called_as.as_deref() == Some(handover::RESET_ROOT_PASSWORD_NAME) {
        std::process::exit(handover::reset_root_password_main(&args));
    }
    if called_as.as_deref() == Some(context::PARSE_USER_DATA_NAME) {
        std::process::exit(context::parse_user_data_main());
    }
    if called_as.as_deref() == Some(drtini::SHUTDOWN_NAME) {
        let verb = args.get(1).map(|v| v.to_string_lossy().into_owned());
        drtini::shutdown_main(verb.as_deref());
    }
    if std::process::id() != 1 {
        eprintln!("init: this is the µCernVM boot loader; it runs only as PID 1 in the initramfs");
        std::process::exit(2);
    }
    // A panic of the boot itself ends in the rescue console, never in "Attempted to kill
    // init"; a helper thread's panic is logged and reported to the phase that waits for it.
    panics::install_boot_hook(|msg| {
        rescue::enter(msg);
        power_off();
    });

    let logger = KernelLogger::install(false);
    early::setup();
    logger.reopen_kmsg();

    eprintln!(
        "\n* Welcome to micro-CernVM\n* Release {}\n",
        early::version()
    );
    let cmdline =
        KernelCmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    log::info!("kernel command line: {cmdline:?}");

    // The original's panic(): message, rescue shell, then the boot goes on (spec §0.5).
    let timeline = boot::run(Layout::initramfs(), &cmdline, &mut |_phase, error| {
        rescue::enter(error)
    });
    // The hand-over phase does not return when it succeeds.
    console::info(&timeline.render());
    power_off();
}

/// Last resort after the rescue shell: sync and power the machine off, so PID 1 never exits.
fn power_off() -> ! {
    console::info("Powering off");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
