//! Console output of PID 1: the original's progress lines (`[INF] … check`) for people, and a
//! `log` backend that writes every record to the console and to the kernel log (`/dev/kmsg`),
//! so that messages survive in `dmesg` and reach a serial console even before user space logs.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

const BOLD_WHITE: &str = "\x1b[1;37m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn console_write(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes());
    let _ = err.flush();
}

/// Starts a progress line, e.g. `[INF] Loading predefined modules...`; finish it with
/// [`check`], [`failed`] or [`result`].
pub fn begin(action: &str) {
    console_write(&format!("{BOLD_WHITE}[INF]{RESET} {action}"));
    log::debug!(target: "progress", "{action}");
}

/// Ends a progress line with a green ` check`.
pub fn check() {
    console_write(&format!(" {GREEN}check{RESET}\n"));
}

/// Ends a progress line with a red ` failed`.
pub fn failed() {
    console_write(&format!(" {RED}failed{RESET}\n"));
}

/// Ends a progress line with a green free text (e.g. the context source).
pub fn result(text: &str) {
    console_write(&format!(" {GREEN}{text}{RESET}\n"));
}

/// A warning on its own line.
pub fn warn(text: &str) {
    console_write(&format!("{YELLOW}[WRN]{RESET} {text}\n"));
    log::warn!(target: "progress", "{text}");
}

/// An error on its own line.
pub fn error(text: &str) {
    console_write(&format!("{RED}[ERR]{RESET} {text}\n"));
    log::error!(target: "progress", "{text}");
}

/// An information line on its own.
pub fn info(text: &str) {
    console_write(&format!("{BOLD_WHITE}[INF]{RESET} {text}\n"));
}

/// `log` backend for PID 1: records go to `/dev/kmsg` (when it can be opened) and are kept in
/// memory for the boot logs saved on the scratch disk; warnings and errors also go to the
/// console, everything else only at `debug` verbosity.
pub struct KernelLogger {
    kmsg: Mutex<Option<std::fs::File>>,
    buffer: Mutex<Vec<String>>,
    console_level: log::LevelFilter,
}

impl KernelLogger {
    /// Installs the logger; `verbose` shows every record on the console.
    pub fn install(verbose: bool) -> &'static KernelLogger {
        let kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        let logger: &'static KernelLogger = Box::leak(Box::new(KernelLogger {
            kmsg: Mutex::new(kmsg),
            buffer: Mutex::new(Vec::new()),
            console_level: if verbose {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Warn
            },
        }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
        logger
    }

    /// Re-opens `/dev/kmsg`, e.g. after devtmpfs was mounted, and lifts the kernel's rate limit
    /// on writes to it (needs `/proc`).
    pub fn reopen_kmsg(&self) {
        if let Ok(mut k) = self.kmsg.lock() {
            *k = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        }
        lift_kmsg_ratelimit();
    }

    /// Everything logged so far, one line per record.
    pub fn lines(&self) -> Vec<String> {
        self.buffer.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// The record the sequencer writes to the kernel log where its timeline starts
/// ([`since_kernel_started_init`]).
pub const TIMELINE_START_MARK: &str = "timeline starts";

/// How long after the kernel started `/init` ("Run /init as init process") this process wrote
/// [`TIMELINE_START_MARK`], by the kernel log's own time stamps; `None` when the log holds
/// neither (the ring buffer overwrote it, or this is not PID 1 of a boot).
pub fn since_kernel_started_init() -> Option<std::time::Duration> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mark = format!("ucernvm: {TIMELINE_START_MARK}");
    let (mut init_started, mut timeline_started) = (None, None);
    let mut record = [0u8; 8192];
    loop {
        // One record per read; EPIPE: the ring buffer overwrote the next record (read on);
        // EAGAIN: no more.
        let n = match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        };
        let Some((usec, text)) = record.get(..n).and_then(parse_kmsg_record) else {
            continue;
        };
        if text.starts_with("Run ") && text.ends_with(" as init process") {
            init_started = Some(usec);
        } else if text == mark {
            // Written once, after the kernel's line: the hundreds of records after it are
            // not read.
            timeline_started = Some(usec);
            break;
        }
    }
    let (from, to) = (init_started?, timeline_started?);
    to.checked_sub(from).map(std::time::Duration::from_micros)
}

/// A `/dev/kmsg` record, `<priority>,<sequence>,<microseconds>,<flags>[,…];<text>\n[ continuation lines]`:
/// its time stamp and the first line of its text.
fn parse_kmsg_record(record: &[u8]) -> Option<(u64, &str)> {
    let record = std::str::from_utf8(record).ok()?;
    let (prefix, text) = record.split_once(';')?;
    let usec = prefix.split(',').nth(2)?.parse().ok()?;
    Some((usec, text.lines().next().unwrap_or("")))
}

/// The kernel's switch for the rate limit on `/dev/kmsg` writes.
const DEVKMSG_SYSCTL: &str = "/proc/sys/kernel/printk_devkmsg";

/// The setting of [`DEVKMSG_SYSCTL`] before [`lift_kmsg_ratelimit`] changed it.
static DEVKMSG_BEFORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// By default the kernel keeps 10 lines per 5 s of each `/dev/kmsg` writer and drops the rest
/// ("init: 103 output lines suppressed due to ratelimiting"): the init's log must be complete,
/// so it turns the limit off. A `printk.devkmsg=` on the command line locks the setting; then
/// the write fails and the user's choice stands.
fn lift_kmsg_ratelimit() {
    let before = std::fs::read_to_string(DEVKMSG_SYSCTL).unwrap_or_default();
    let before = before.trim();
    if before.is_empty() || before == "on" {
        return;
    }
    match std::fs::write(DEVKMSG_SYSCTL, "on\n") {
        Ok(()) => {
            let _ = DEVKMSG_BEFORE.set(before.to_string());
        }
        Err(e) => log::debug!("cannot switch the /dev/kmsg rate limit off: {e}"),
    }
}

/// Gives the OS the kernel's `/dev/kmsg` rate limit back (before the hand-over).
pub fn restore_kmsg_ratelimit() {
    if let Some(before) = DEVKMSG_BEFORE.get() {
        if let Err(e) = std::fs::write(DEVKMSG_SYSCTL, format!("{before}\n")) {
            log::debug!("cannot restore the /dev/kmsg rate limit {before}: {e}");
        }
    }
}

/// Syslog priority of a `log` level, as `/dev/kmsg` expects it in `<N>`.
fn kmsg_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl log::Log for KernelLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = format!("{}", record.args());
        if let Ok(mut k) = self.kmsg.lock() {
            if let Some(f) = k.as_mut() {
                // One write per record: /dev/kmsg takes each write as one message.
                let _ = f.write_all(
                    format!("<{}>ucernvm: {}\n", kmsg_priority(record.level()), text).as_bytes(),
                );
            }
        }
        if let Ok(mut b) = self.buffer.lock() {
            b.push(format!("{:<5} {}", record.level(), text));
        }
        if record.target() != "progress" && record.level() <= self.console_level {
            console_write(&format!("{:<5} {}\n", record.level(), text));
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_priorities_follow_syslog() {
        assert_eq!(kmsg_priority(log::Level::Error), 3);
        assert_eq!(kmsg_priority(log::Level::Warn), 4);
        assert_eq!(kmsg_priority(log::Level::Info), 6);
        assert_eq!(kmsg_priority(log::Level::Trace), 7);
    }

    #[test]
    fn kmsg_records_give_their_time_stamp_and_first_line() {
        assert_eq!(
            parse_kmsg_record(b"6,339,2701007,-;Run /init as init process\n"),
            Some((2_701_007, "Run /init as init process"))
        );
        assert_eq!(
            parse_kmsg_record(
                b"7,402,2801799,-,caller=T1;ucernvm: timeline starts\n SUBSYSTEM=x\n"
            ),
            Some((2_801_799, "ucernvm: timeline starts"))
        );
        assert_eq!(parse_kmsg_record(b"garbage"), None);
        assert_eq!(parse_kmsg_record(b"6,1,notanumber,-;text"), None);
    }
}
