//! The one HTTP client of PID 1: plain HTTP/1.0 GET over a TCP stream, bounded in every
//! step (connect, each read, the whole transfer, the body size), for cloud metadata services
//! and similar link-local endpoints. No TLS, no redirects, no keep-alive.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect (the original's `curl --connect-timeout 16`).
    pub connect: Duration,
    /// The whole request, from connect to the last body byte: a server that accepts and then
    /// stays silent must not stop the boot.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(16),
            total: Duration::from_secs(30),
        }
    }
}

/// Bodies larger than this are refused.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("no complete answer from {addr} within {secs:.1} s")]
    Timeout { addr: SocketAddr, secs: f64 },
    #[error("reading from {addr}: {cause}")]
    Io { addr: SocketAddr, cause: io::Error },
    #[error("malformed HTTP answer from {addr}: {what}")]
    Malformed { addr: SocketAddr, what: String },
    #[error("HTTP {status} for {path} from {addr}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
    #[error("answer from {addr} larger than {MAX_BODY} bytes")]
    TooLarge { addr: SocketAddr },
    #[error("answer from {addr} ends after {got} of {expected} body bytes")]
    Truncated {
        addr: SocketAddr,
        got: usize,
        expected: usize,
    },
}

/// GETs `path` from `addr` (`Host:` is the address). Success is a 2xx status; the body is
/// returned. `headers` are extra request headers.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limits: Timeouts,
) -> Result<Vec<u8>, HttpError> {
    request("GET", addr, path, headers, limits)
}

/// An empty-bodied PUT (EC2's IMDSv2 token request), otherwise like [`get`].
pub fn put_empty(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limits: Timeouts,
) -> Result<Vec<u8>, HttpError> {
    request("PUT", addr, path, headers, limits)
}

fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limits: Timeouts,
) -> Result<Vec<u8>, HttpError> {
    let start = Instant::now();
    let timeout = || HttpError::Timeout {
        addr,
        secs: limits.total.as_secs_f64(),
    };
    let connect = limits.connect.min(limits.total);
    let mut stream =
        TcpStream::connect_timeout(&addr, connect).map_err(|source| HttpError::Connect {
            addr,
            cause: source,
        })?;
    // `SocketAddr`'s display brackets IPv6 addresses as the Host header needs them.
    let host = match (addr.port(), addr.ip()) {
        (80, std::net::IpAddr::V4(ip)) => ip.to_string(),
        (80, std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => addr.to_string(),
    };
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ucernvm-init\r\nAccept: */*\r\n"
    );
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let left = limits.total.saturating_sub(start.elapsed());
    if left.is_zero() {
        return Err(timeout());
    }
    let io_err = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            timeout()
        } else {
            HttpError::Io {
                addr,
                cause: source,
            }
        }
    };
    stream.set_write_timeout(Some(left)).map_err(io_err)?;
    stream.write_all(req.as_bytes()).map_err(io_err)?;

    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = limits.total.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(timeout());
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            break;
        }
        data.extend_from_slice(buf.get(..n).unwrap_or_default());
        if data.len() > MAX_BODY + 64 * 1024 {
            return Err(HttpError::TooLarge { addr });
        }
    }
    parse_response(addr, path, data)
}

/// Splits a complete HTTP answer into status check and body (2xx only).
pub fn parse_response(addr: SocketAddr, path: &str, data: Vec<u8>) -> Result<Vec<u8>, HttpError> {
    let malformed = |what: &str| HttpError::Malformed {
        addr,
        what: what.to_string(),
    };
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            data.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .ok_or_else(|| malformed("no end of header"))?;
    let head = String::from_utf8_lossy(data.get(..end.0).unwrap_or_default()).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(malformed("no HTTP status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("bad status code"))?;
    let mut content_length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse::<usize>().ok();
            }
        }
    }
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            addr,
            path: path.to_string(),
            status,
        });
    }
    let mut body = data;
    body.drain(..end.1);
    if body.len() > MAX_BODY {
        return Err(HttpError::TooLarge { addr });
    }
    if let Some(expected) = content_length {
        if body.len() < expected {
            return Err(HttpError::Truncated {
                addr,
                got: body.len(),
                expected,
            });
        }
        body.truncate(expected);
    }
    Ok(body)
}

/// The original's `portprobe`: parallel TCP connects with one shared deadline; bit *i* of the
/// result is set when `addrs[i]` accepted a connection in time.
pub fn port_probe(addrs: &[SocketAddr], timeout: Duration) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, a) in addrs.iter().enumerate().take(32) {
        let tx = tx.clone();
        let a = *a;
        // A probe that cannot start or panics just never reports: that address failed.
        let _ = std::thread::Builder::new()
            .name("port-probe".into())
            .spawn(move || {
                let ok = TcpStream::connect_timeout(&a, timeout).is_ok();
                let _ = tx.send((i, ok));
            });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut mask = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, true)) => mask |= 1 << i,
            Ok((_, false)) => {}
            Err(_) => break,
        }
    }
    mask
}

#[cfg(test)]
pub(crate) mod testserver {
    //! A real HTTP server on 127.0.0.1 for tests: fixed answers by path, records the headers
    //! of each request, optionally accepts and then never answers.

    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    pub struct Answer {
        pub status: u16,
        pub body: Vec<u8>,
        /// Only answer when this request header (lower-case name, value) is present; 403 else.
        pub require_header: Option<(String, String)>,
        /// Only answer this method; 405 else. `None`: GET.
        pub method: Option<&'static str>,
    }

    pub struct Server {
        pub addr: SocketAddr,
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    fn handle(
        mut s: TcpStream,
        routes: &HashMap<String, Answer>,
        silent: bool,
        requests: &Mutex<Vec<String>>,
    ) {
        if silent {
            // hold the connection open without a byte of answer until the client gives up
            let mut buf = [0u8; 1024];
            while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        let mut r = BufReader::new(match s.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut first = String::new();
        // a bare connect (port probe) sends nothing
        if r.read_line(&mut first).is_err() || first.is_empty() {
            return;
        }
        let method = first.split_whitespace().next().unwrap_or("").to_string();
        let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).is_err() || l.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
        }
        requests.lock().unwrap().push(path.clone());
        let (status, body) = match routes.get(&path) {
            Some(a) if method != a.method.unwrap_or("GET") => (405, b"method".to_vec()),
            Some(a) => match &a.require_header {
                Some(h) if !headers.contains(h) => (403, b"forbidden".to_vec()),
                _ => (a.status, a.body.clone()),
            },
            None => (404, b"not found".to_vec()),
        };
        let _ = write!(
            s,
            "HTTP/1.0 {status} X\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(&body);
    }

    impl Server {
        pub fn start(routes: Vec<(&str, Answer)>) -> Server {
            Self::start_mode(routes, false)
        }

        /// Accepts connections and never answers.
        pub fn silent() -> Server {
            Self::start_mode(vec![], true)
        }

        fn start_mode(routes: Vec<(&str, Answer)>, silent: bool) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let routes: Arc<HashMap<String, Answer>> = Arc::new(
                routes
                    .into_iter()
                    .map(|(p, a)| (p.to_string(), a))
                    .collect(),
            );
            let requests = Arc::new(Mutex::new(Vec::new()));
            let req2 = requests.clone();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let routes = routes.clone();
                    let req = req2.clone();
                    std::thread::spawn(move || handle(s, &routes, silent, &req));
                }
            });
            Server { addr, requests }
        }
    }

    pub fn ok(body: &[u8]) -> Answer {
        Answer {
            status: 200,
            body: body.to_vec(),
            require_header: None,
            method: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testserver::{ok, Server};
    use super::*;

    fn quick() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            total: Duration::from_millis(800),
        }
    }

    #[test]
    fn body_of_a_2xx_answer() {
        let s = Server::start(vec![("/a", ok(b"hello"))]);
        assert_eq!(get(s.addr, "/a", &[], quick()).unwrap(), b"hello");
    }

    #[test]
    fn error_status_is_an_error_naming_it() {
        let s = Server::start(vec![]);
        let e = get(s.addr, "/missing", &[], quick()).unwrap_err();
        assert!(matches!(e, HttpError::Status { status: 404, .. }), "{e}");
        assert!(e.to_string().contains("404"), "{e}");
    }

    #[test]
    fn silent_server_ends_in_a_bounded_timeout() {
        let s = Server::silent();
        let t = Instant::now();
        let e = get(s.addr, "/x", &[], quick()).unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = get(addr, "/", &[], quick()).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }

    #[test]
    fn truncated_and_malformed_answers() {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let e = parse_response(
            addr,
            "/",
            b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        );
        assert!(matches!(
            e,
            Err(HttpError::Truncated {
                got: 3,
                expected: 10,
                ..
            })
        ));
        let e = parse_response(addr, "/", b"garbage without header end".to_vec());
        assert!(matches!(e, Err(HttpError::Malformed { .. })));
        let e = parse_response(addr, "/", b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        assert!(matches!(e, Err(HttpError::Malformed { .. })));
    }

    #[test]
    fn port_probe_sets_the_bits_of_listening_addresses() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down_addr = down.local_addr().unwrap();
        drop(down);
        let up2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mask = port_probe(
            &[
                up.local_addr().unwrap(),
                down_addr,
                up2.local_addr().unwrap(),
            ],
            Duration::from_secs(2),
        );
        assert_eq!(mask, 0b101);
    }
}
