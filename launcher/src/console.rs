//! `console NAME`: the serial console of a running machine on this terminal. QEMU serves the
//! serial port on a Unix socket and appends everything the guest writes to `console.log`
//! whether or not somebody is attached; attaching shows the end of that log first.

use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The detach key: Ctrl-] (as telnet and virsh console).
pub const DETACH: u8 = 0x1d;
/// How much of the log is shown when attaching.
const BACKLOG: usize = 4096;

/// Restores the terminal settings on drop.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: i32) -> io::Result<Self> {
        // SAFETY: tcgetattr/tcsetattr on the terminal fd with a zeroed termios we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Relays between this terminal and the console socket until Ctrl-] or until QEMU ends.
pub fn attach(name: &str, socket: &Path, log: &Path) -> io::Result<()> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot attach to the console of {name} ({}): {e}",
                socket.display()
            ),
        )
    })?;
    let tty = io::stdin().is_terminal();
    let mut out = io::stdout();
    if let Ok(bytes) = std::fs::read(log) {
        let tail = &bytes[bytes.len().saturating_sub(BACKLOG)..];
        out.write_all(tail)?;
    }
    eprint!("\r\n[cernvm-launch: attached to the console of {name}; detach with Ctrl-]]\r\n");
    out.flush()?;
    let _raw = if tty {
        Some(RawMode::enter(io::stdin().as_raw_fd())?)
    } else {
        None
    };
    let mut reader = stream.try_clone()?;
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = io::stdout();
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut writer = stream;
    let mut stdin = io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        if output.is_finished() {
            break;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                // No more input: show output until the guest's console closes.
                let _ = output.join();
                break;
            }
            Ok(n) => n,
        };
        if let Some(pos) = buf[..n].iter().position(|&b| b == DETACH) {
            let _ = writer.write_all(&buf[..pos]);
            break;
        }
        if writer.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(_raw);
    eprintln!("\r\n[cernvm-launch: detached from {name}]");
    Ok(())
}
