//! Time (spec §3.5): one SNTP (RFC 4330) query to `pool.ntp.org`, the system clock set from the
//! answer. Bounded to 5 s including the name lookup; failure is logged and not fatal.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{bytes, console};

pub const NTP_SERVER: &str = "pool.ntp.org:123";
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("no time server answer within {0:?}")]
    Timeout(Duration),
    #[error("SNTP socket: {0}")]
    Io(std::io::Error),
    #[error("unusable SNTP answer: {0}")]
    BadAnswer(&'static str),
}

// The cause is in the message, so it is not also returned as the source.
impl From<std::io::Error> for SntpError {
    fn from(e: std::io::Error) -> Self {
        SntpError::Io(e)
    }
}

fn to_ntp(t: SystemTime) -> [u8; 8] {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    ((u64::from(secs) << 32) | frac).to_be_bytes()
}

fn from_ntp(b: [u8; 8]) -> Option<SystemTime> {
    let stamp = u64::from_be_bytes(b);
    let (secs, frac) = (stamp >> 32, stamp & 0xffff_ffff);
    // Era 0 ends in 2036; later timestamps wrap (RFC 4330 §3: MSB clear means era 1).
    let secs = if secs & 0x8000_0000 == 0 {
        secs + (1u64 << 32)
    } else {
        secs
    };
    let unix = secs.checked_sub(NTP_UNIX_OFFSET)?;
    Some(
        UNIX_EPOCH + Duration::from_secs(unix) + Duration::from_nanos((frac * 1_000_000_000) >> 32),
    )
}

/// The server's transmit time from its reply to the request with transmit time `origin`.
fn parse_reply(b: &[u8], origin: [u8; 8]) -> Result<SystemTime, SntpError> {
    let (Some(&flags), Some(&stratum), Some(originate), Some(transmit)) = (
        b.first(),
        b.get(1),
        bytes::array::<8>(b, 24),
        bytes::array::<8>(b, 40),
    ) else {
        return Err(SntpError::BadAnswer("shorter than 48 bytes"));
    };
    if flags & 0x07 != 4 {
        return Err(SntpError::BadAnswer("not a server reply"));
    }
    if flags >> 6 == 3 || stratum == 0 {
        return Err(SntpError::BadAnswer(
            "server unsynchronised or kiss-o'-death",
        ));
    }
    if originate != origin {
        return Err(SntpError::BadAnswer(
            "originate timestamp does not match our request",
        ));
    }
    from_ntp(transmit).ok_or(SntpError::BadAnswer("transmit time before 1970"))
}

/// Asks `server` once and returns the current time by its clock (its transmit time plus half
/// the round trip).
pub fn query(server: SocketAddr, limit: Duration) -> Result<SystemTime, SntpError> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    let sent_at = SystemTime::now();
    let origin = to_ntp(sent_at);
    let mut req = vec![0x23u8]; // LI 0, version 4, mode 3 (client)
    req.resize(40, 0);
    req.extend_from_slice(&origin); // transmit timestamp, echoed as the reply's originate

    let start = Instant::now();
    sock.send_to(&req, server)?;
    let mut buf = [0u8; 128];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(SntpError::Timeout(limit));
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(SntpError::Timeout(limit))
            }
            Err(e) => return Err(e.into()),
        };
        if from != server {
            continue;
        }
        let rtt = start.elapsed();
        let transmit = parse_reply(buf.get(..n).unwrap_or_default(), origin)?;
        return Ok(transmit + rtt / 2);
    }
}

/// Resolves `name` within `limit` (the lookup runs in a thread so a hanging resolver cannot
/// hold the boot).
pub fn resolve(name: &str, limit: Duration) -> Result<SocketAddr, SntpError> {
    let (tx, rx) = mpsc::channel();
    let owned = name.to_string();
    // A lookup thread that cannot start or panics closes the channel: a failed lookup.
    let _ = std::thread::Builder::new()
        .name("sntp-resolve".into())
        .spawn(move || {
            let r = owned
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.find(|a| a.is_ipv4()));
            let _ = tx.send(r);
        });
    match rx.recv_timeout(limit) {
        Ok(Some(a)) => Ok(a),
        _ => Err(SntpError::Resolve(name.to_string())),
    }
}

/// Sets the system clock.
pub fn set_clock(t: SystemTime) -> Result<(), SntpError> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = nix::sys::time::TimeSpec::from_duration(d);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| SntpError::Io(e.into()))
}

/// Resolve, query, set — all within [`TIME_LIMIT`].
pub fn synchronise(server: &str) -> Result<SystemTime, SntpError> {
    let start = Instant::now();
    let addr = resolve(server, TIME_LIMIT)?;
    let t = query(addr, TIME_LIMIT.saturating_sub(start.elapsed()))?;
    set_clock(t)?;
    Ok(t)
}

/// The SNTP query running in the background. The clock matters first to CernVM-FS (whitelist
/// expiry, certificate validity), so the boot goes on meanwhile and [`TimeSync::finish`] waits for the
/// answer (at most [`TIME_LIMIT`] in all) right before CernVM-FS starts, or right after it
/// when the mount does not depend on the clock (`cvmfs_start::needs_clock`): an unreachable
/// time server then costs nothing in the phases between.
#[derive(Debug)]
pub struct TimeSync(std::io::Result<std::thread::JoinHandle<Result<SystemTime, SntpError>>>);

impl TimeSync {
    /// Starts the query of [`NTP_SERVER`] in the background.
    pub fn start() -> TimeSync {
        TimeSync::spawn(|| synchronise(NTP_SERVER))
    }

    /// Runs `query` in the background in place of the real one (tests).
    pub fn spawn(
        query: impl FnOnce() -> Result<SystemTime, SntpError> + Send + 'static,
    ) -> TimeSync {
        TimeSync(std::thread::Builder::new().name("sntp".into()).spawn(query))
    }

    /// Waits for the background query and reports it on the console; returns whether the
    /// clock was set. A query thread that panicked is reported like a failed query.
    pub fn finish(self) -> bool {
        finish(self.0)
    }
}

fn finish(handle: std::io::Result<std::thread::JoinHandle<Result<SystemTime, SntpError>>>) -> bool {
    console::begin("Setting time...");
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            console::failed();
            log::warn!("time from {NTP_SERVER}: cannot start the query thread: {e}");
            return false;
        }
    };
    match handle.join() {
        Ok(Ok(_)) => {
            console::check();
            true
        }
        Ok(Err(e)) => {
            console::failed();
            log::warn!("time from {NTP_SERVER}: {e}");
            false
        }
        Err(_) => {
            console::failed();
            log::warn!("time from {NTP_SERVER}: the query thread panicked");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot SNTP server on 127.0.0.1 that answers with `transmit` and lets `tweak`
    /// damage the answer.
    fn server(transmit: SystemTime, tweak: fn(&mut [u8; 48])) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let mut a = [0u8; 48];
                a[0] = 0x24; // version 4, mode 4
                a[1] = 2; // stratum
                a[24..32].copy_from_slice(&buf[40..48]);
                a[40..48].copy_from_slice(&to_ntp(transmit));
                tweak(&mut a);
                let _ = s.send_to(&a, from);
            }
        });
        addr
    }

    #[test]
    fn time_from_the_server() {
        let t = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let got = query(server(t, |_| {}), Duration::from_secs(5)).unwrap();
        let diff = got.duration_since(t).unwrap();
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }

    #[test]
    fn timestamps_round_trip_across_the_2036_wrap() {
        for secs in [0u64, 1_700_000_000, 2_085_978_496 + 10, 3_000_000_000] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(from_ntp(to_ntp(t)).unwrap(), t, "{secs}");
        }
    }

    #[test]
    fn bad_answers_are_refused() {
        let t = SystemTime::now();
        let e = query(server(t, |a| a[1] = 0), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("kiss"), "{e}");
        let e = query(server(t, |a| a[24] ^= 0xff), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("originate"), "{e}");
        let e = query(server(t, |a| a[0] = 0x23), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("not a server reply"), "{e}");
    }

    #[test]
    fn silent_server_times_out_within_the_limit() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let e = query(s.local_addr().unwrap(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, SntpError::Timeout(_)), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn unresolvable_name_is_an_error() {
        let e = resolve("no-such-host.invalid:123", Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    }
}
