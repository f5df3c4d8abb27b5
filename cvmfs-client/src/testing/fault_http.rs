//! A fault-injecting HTTP server for tests: serves the files of a directory, as an origin
//! server (`GET /path`) or as a forward proxy answering itself (`GET http://host/path`), and
//! fails on request in the ways a real server or proxy cannot be made to fail on purpose:
//! closing the connection, staying silent, an HTTP error, a truncated or corrupt body.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The file, correctly.
    None,
    /// The connection is closed without an answer.
    Close,
    /// The request is read and never answered.
    Silent,
    /// This HTTP status, with an empty body.
    Status(u16),
    /// The full `Content-Length`, half the body, then the connection is closed.
    Truncate,
    /// The full body with one byte changed.
    Corrupt,
}

#[derive(Debug)]
struct State {
    /// Used for every request while `remaining` is `None`, else for that many requests.
    fault: Fault,
    remaining: Option<usize>,
}

/// The server; it stops accepting when dropped.
pub struct FaultServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    direct: Arc<AtomicUsize>,
    proxied: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    /// Serves `root` on `ip`, on a free port (`port` 0) or on `port`.
    pub fn start(root: &std::path::Path, ip: IpAddr, port: u16) -> std::io::Result<FaultServer> {
        let listener = TcpListener::bind((ip, port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            fault: Fault::None,
            remaining: None,
        }));
        let direct = Arc::new(AtomicUsize::new(0));
        let proxied = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let (s, d, p, st) = (
            Arc::clone(&state),
            Arc::clone(&direct),
            Arc::clone(&proxied),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, s, d, p, st) = (
                    root.clone(),
                    Arc::clone(&s),
                    Arc::clone(&d),
                    Arc::clone(&p),
                    Arc::clone(&st),
                );
                std::thread::spawn(move || serve(conn, &root, &s, &d, &p, &st));
            }
        });
        Ok(FaultServer {
            addr,
            state,
            direct,
            proxied,
            stop,
        })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every request with `fault` from now on.
    pub fn set(&self, fault: Fault) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State {
            fault,
            remaining: None,
        };
    }

    /// Answers the next `n` requests with `fault`, then serves again.
    pub fn set_for(&self, n: usize, fault: Fault) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State {
            fault,
            remaining: Some(n),
        };
    }

    /// Requests that came straight from a client (`GET /path`, no `Via` header).
    pub fn direct_requests(&self) -> usize {
        self.direct.load(Ordering::Relaxed)
    }

    /// Requests that came through a proxy (`Via` header) or asked this server as a proxy
    /// (`GET http://…`).
    pub fn proxied_requests(&self) -> usize {
        self.proxied.load(Ordering::Relaxed)
    }

    /// All requests received.
    pub fn requests(&self) -> usize {
        self.direct_requests() + self.proxied_requests()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(
    conn: TcpStream,
    root: &std::path::Path,
    state: &Mutex<State>,
    direct: &AtomicUsize,
    proxied: &AtomicUsize,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::Relaxed) {
            return;
        }
        let mut via_proxy = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            via_proxy |= h.to_ascii_lowercase().starts_with("via:");
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let path = match target.strip_prefix("http://") {
            Some(rest) => {
                via_proxy = true;
                rest.find('/').map_or("/", |i| &rest[i..]).to_string()
            }
            None => target,
        };
        if via_proxy {
            proxied.fetch_add(1, Ordering::Relaxed);
        } else {
            direct.fetch_add(1, Ordering::Relaxed);
        }
        let fault = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match s.remaining {
                Some(0) => Fault::None,
                Some(n) => {
                    s.remaining = Some(n - 1);
                    s.fault
                }
                None => s.fault,
            }
        };
        let file: PathBuf = root.join(path.trim_start_matches('/'));
        let body = if path.split('/').any(|p| p == "..") {
            None
        } else {
            std::fs::read(&file).ok()
        };
        let result = match (fault, body) {
            (Fault::Close, _) => return,
            (Fault::Silent, _) => {
                // Hold the connection until the client gives up.
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            (Fault::Status(code), _) => {
                write!(out, "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\n\r\n")
            }
            (_, None) => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            (Fault::Truncate, Some(b)) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                let _ = out.write_all(&b[..b.len() / 2]);
                return;
            }
            (f, Some(mut b)) => {
                if f == Fault::Corrupt {
                    let middle = b.len() / 2;
                    if let Some(x) = b.get_mut(middle) {
                        *x ^= 0x55;
                    }
                }
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .and_then(|_| out.write_all(&b))
            }
        };
        if result.is_err() {
            return;
        }
    }
}
