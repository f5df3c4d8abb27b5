//! Host name resolution for the download manager. By default the system resolver; after the
//! talk command `nameserver set <addr>` (µCernVM sends it right after mounting, when the
//! initramfs may have no `/etc/resolv.conf`) every lookup is an A query over UDP to that server.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Per-query timeout and attempts towards a configured name server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// The name server in use, shared by all HTTP clients of a download manager, and the hosts
/// file as it was when the client started (µCernVM deletes the initramfs, and its
/// `/etc/hosts`, at hand-over, while the daemon keeps running).
#[derive(Debug, Clone)]
pub struct Nameserver(Arc<RwLock<Option<SocketAddr>>>, Arc<Vec<(String, IpAddr)>>);

impl Default for Nameserver {
    fn default() -> Self {
        let hosts = std::fs::read_to_string(HOSTS_FILE).unwrap_or_default();
        Nameserver(Arc::default(), Arc::new(parse_hosts(&hosts)))
    }
}

/// The system's hosts file.
const HOSTS_FILE: &str = "/etc/hosts";

/// (name, address) of each name of a hosts file, in file order.
fn parse_hosts(text: &str) -> Vec<(String, IpAddr)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            Some(words.map(move |n| (n.to_ascii_lowercase(), ip)))
        })
        .flatten()
        .collect()
}

/// `<ip>` or `<ip>:<port>` / `[<ipv6>]:<port>`; port 53 by default.
pub fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>().ok()
}

impl Nameserver {
    pub fn set(&self, addr: Option<SocketAddr>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    pub fn get(&self) -> Option<SocketAddr> {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Addresses of `host` (port 0).
    pub fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, 0)]);
        }
        // As the real client: the hosts file first, also with a name server set at run time.
        let wanted = host.trim_end_matches('.').to_ascii_lowercase();
        let listed: Vec<SocketAddr> = self
            .1
            .iter()
            .filter(|(name, ip)| *name == wanted && ip.is_ipv4())
            .map(|(_, ip)| SocketAddr::new(*ip, 0))
            .collect();
        match self.get() {
            Some(_) if !listed.is_empty() => Ok(listed),
            Some(server) => Ok(query_a(server, host)?
                .into_iter()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), 0))
                .collect()),
            None => Ok((host, 0).to_socket_addrs()?.collect()),
        }
    }
}

/// The result of a lookup running on its own thread, as a future: the HTTP client's runtime
/// thread must never block on a slow or dead name server.
struct ThreadLookup {
    shared: Arc<Mutex<LookupState>>,
}

/// The result once there is one, and who to wake then.
type LookupState = (Option<io::Result<Vec<SocketAddr>>>, Option<Waker>);

impl ThreadLookup {
    fn start(ns: Nameserver, host: String) -> ThreadLookup {
        let shared: Arc<Mutex<LookupState>> = Arc::new(Mutex::new((None, None)));
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let result = ns.resolve(&host);
                let mut s = theirs.lock().unwrap_or_else(|e| e.into_inner());
                s.0 = Some(result);
                if let Some(w) = s.1.take() {
                    w.wake();
                }
            });
        if let Err(e) = spawned {
            shared.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(Err(e));
        }
        ThreadLookup { shared }
    }
}

impl Future for ThreadLookup {
    type Output = io::Result<Vec<SocketAddr>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match s.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl reqwest::dns::Resolve for Nameserver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let lookup = ThreadLookup::start(self.clone(), host.clone());
        Box::pin(async move {
            let addrs = lookup.await.map_err(|e| {
                Box::new(io::Error::new(e.kind(), format!("resolving {host}: {e}")))
                    as Box<dyn std::error::Error + Send + Sync>
            })?;
            if addrs.is_empty() {
                return Err(Box::new(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host}: no address"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// One DNS query for the A records of `host`.
fn build_query(id: u16, host: &str) -> io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid host name {host:?}"),
            ));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    Ok(q)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("DNS answer: {msg}"))
}

/// Skips a (possibly compressed) name starting at `pos`; returns the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> io::Result<usize> {
    loop {
        let len = *msg.get(pos).ok_or_else(|| bad("truncated name"))?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => return Ok(pos + 2),
            l => pos += 1 + l as usize,
        }
    }
}

/// The A records of a DNS response to query `id`.
fn parse_answer(msg: &[u8], id: u16) -> io::Result<Vec<Ipv4Addr>> {
    if msg.len() < 12 {
        return Err(bad("shorter than a header"));
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return Err(bad("not a response to our query"));
    }
    let rcode = msg[3] & 0x0f;
    if rcode == 3 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no such host (NXDOMAIN)",
        ));
    }
    if rcode != 0 {
        return Err(bad(&format!("server failure (rcode {rcode})")));
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let rr = msg
            .get(pos..pos + 10)
            .ok_or_else(|| bad("truncated record"))?;
        let typ = u16::from_be_bytes([rr[0], rr[1]]);
        let len = u16::from_be_bytes([rr[8], rr[9]]) as usize;
        pos += 10;
        let data = msg
            .get(pos..pos + len)
            .ok_or_else(|| bad("truncated data"))?;
        if typ == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += len;
    }
    Ok(out)
}

fn query_a(server: SocketAddr, host: &str) -> io::Result<Vec<Ipv4Addr>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))?;
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
    for attempt in 0..QUERY_ATTEMPTS {
        let id = (std::process::id() as u16) ^ (attempt as u16).wrapping_mul(0x9e37) ^ 0x5a5a;
        sock.send(&build_query(id, host)?)?;
        let mut buf = [0u8; 1500];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match parse_answer(&buf[..n], id) {
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        // A stray or forged datagram: wait for the real answer.
                        log::debug!("{server}: {e}");
                        continue;
                    }
                    other => return other,
                },
                Err(e) => {
                    last = io::Error::new(
                        e.kind(),
                        format!("name server {server} does not answer: {e}"),
                    );
                    break;
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DNS server on 127.0.0.1 answering every A query with `answer`; returns its address.
    pub(crate) fn tiny_dns_server(answer: Ipv4Addr) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let q = &buf[..n];
                let end = skip_name(q, 12).unwrap() + 4;
                let mut r = q[..end].to_vec();
                r[2] = 0x81;
                r[3] = 0x80;
                r[6..8].copy_from_slice(&1u16.to_be_bytes());
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&answer.octets());
                let _ = sock.send_to(&r, from);
            }
        });
        addr
    }

    #[test]
    fn resolves_through_the_configured_server() {
        let server = tiny_dns_server(Ipv4Addr::new(10, 1, 2, 3));
        let ns = Nameserver::default();
        ns.set(Some(server));
        let got = ns.resolve("cvmfs.example.org").unwrap();
        assert_eq!(got, vec!["10.1.2.3:0".parse().unwrap()]);
        assert_eq!(
            ns.resolve("127.0.0.5").unwrap(),
            vec!["127.0.0.5:0".parse().unwrap()]
        );
    }

    #[test]
    fn silent_server_times_out_and_bad_names_are_refused() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ns = Nameserver::default();
        ns.set(Some(silent.local_addr().unwrap()));
        let started = std::time::Instant::now();
        assert!(ns.resolve("a.example.org").is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(build_query(1, "a..b").is_err());
        assert!(parse_answer(&[0u8; 5], 1).is_err());
    }

    #[test]
    fn nameserver_syntax() {
        assert_eq!(
            parse_nameserver("10.0.2.3"),
            Some("10.0.2.3:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("10.0.2.3:5353"),
            Some("10.0.2.3:5353".parse().unwrap())
        );
        assert_eq!(parse_nameserver("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_nameserver("not an address"), None);
    }

    /// The hosts file wins over a name server set at run time, as in the real client.
    #[test]
    fn hosts_file_entries_are_found_with_a_name_server_set() {
        let ns = Nameserver(
            Arc::default(),
            Arc::new(parse_hosts(
                "127.0.0.1 localhost\n10.0.2.100 s1cern-cvmfs.openhtc.io Other.Example # c\n::1 v6\n",
            )),
        );
        // A name server that does not answer: only the hosts file can resolve.
        ns.set(Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(
            ns.resolve("S1CERN-cvmfs.openhtc.io.").unwrap(),
            vec![SocketAddr::new("10.0.2.100".parse().unwrap(), 0)]
        );
        assert_eq!(ns.resolve("other.example").unwrap().len(), 1);
        assert!(ns.resolve("not-listed.example").is_err());
    }
}
