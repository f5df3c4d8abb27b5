//! Host name resolution for the download manager. By default the system resolver; after the
//! talk command `nameserver set <addr>` (µCernVM sends it right after mounting, when the
//! initramfs may have no `/etc/resolv.conf`) every lookup asks that server over UDP for the `A`
//! and `AAAA` records (spec §8.9), the preferred family first (`CVMFS_IPFAMILY_PREFER`).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Per-query timeout and attempts towards a configured name server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;
/// How long an answer of the system resolver counts as valid (it does not say).
const SYSTEM_TTL: Duration = Duration::from_secs(60);

/// Address family preferred when a name has both (`CVMFS_IPFAMILY_PREFER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    /// `4` or `6`, as `CVMFS_IPFAMILY_PREFER` is written.
    pub fn parse(text: &str) -> Option<IpFamily> {
        match text.trim() {
            "4" => Some(IpFamily::V4),
            "6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    /// Orders `addrs` stably: this family first.
    pub fn sort(self, addrs: &mut [SocketAddr]) {
        addrs.sort_by_key(|a| a.is_ipv4() != (self == IpFamily::V4));
    }
}

#[derive(Debug, Default)]
struct Settings {
    server: Option<SocketAddr>,
    prefer: IpFamily,
}

/// The name server in use and the preferred family, shared by all HTTP clients of a download
/// manager, and the hosts file as it was when the client started (µCernVM deletes the
/// initramfs, and its `/etc/hosts`, at hand-over, while the daemon keeps running).
#[derive(Debug, Clone)]
pub struct Nameserver(Arc<RwLock<Settings>>, Arc<Vec<(String, IpAddr)>>);

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
        self.0.write().unwrap_or_else(|e| e.into_inner()).server = addr;
    }

    pub fn get(&self) -> Option<SocketAddr> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).server
    }

    /// Which family comes first in answers.
    pub fn set_prefer(&self, family: IpFamily) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).prefer = family;
    }

    /// Addresses of `host` (port 0), the preferred family first.
    pub fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        self.resolve_with_ttl(host).map(|(a, _)| a)
    }

    /// Addresses of `host` (port 0), the preferred family first, and how long they are valid
    /// (the smallest TTL of the records; a minute for the system resolver, which does not say).
    pub fn resolve_with_ttl(&self, host: &str) -> io::Result<(Vec<SocketAddr>, Duration)> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((vec![SocketAddr::new(ip, 0)], Duration::MAX));
        }
        // As the real client: the hosts file first, also with a name server set at run time.
        let wanted = host.trim_end_matches('.').to_ascii_lowercase();
        let listed: Vec<SocketAddr> = self
            .1
            .iter()
            .filter(|(name, _)| *name == wanted)
            .map(|(_, ip)| SocketAddr::new(*ip, 0))
            .collect();
        let (server, prefer) = {
            let s = self.0.read().unwrap_or_else(|e| e.into_inner());
            (s.server, s.prefer)
        };
        let (mut addrs, ttl): (Vec<SocketAddr>, Duration) = match server {
            Some(_) if !listed.is_empty() => (listed, SYSTEM_TTL),
            Some(server) => {
                let records = query(server, host)?;
                let ttl = records.iter().map(|(_, t)| *t).min().unwrap_or(0);
                let addrs = records
                    .into_iter()
                    .map(|(ip, _)| SocketAddr::new(ip, 0))
                    .collect();
                (addrs, Duration::from_secs(u64::from(ttl)))
            }
            None => ((host, 0).to_socket_addrs()?.collect(), SYSTEM_TTL),
        };
        prefer.sort(&mut addrs);
        Ok((addrs, ttl))
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

/// The record types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordType {
    A = 1,
    Aaaa = 28,
}

/// One DNS query for the records of type `rtype` of `host`.
fn build_query(id: u16, host: &str, rtype: RecordType) -> io::Result<Vec<u8>> {
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
    q.push(0); // root
    q.extend_from_slice(&(rtype as u16).to_be_bytes());
    q.extend_from_slice(&[0, 1]); // class IN
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

/// The addresses (with their TTL in seconds) of a DNS response to query `id`.
fn parse_answer(msg: &[u8], id: u16) -> io::Result<Vec<(IpAddr, u32)>> {
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
        let ttl = u32::from_be_bytes([rr[4], rr[5], rr[6], rr[7]]);
        let len = u16::from_be_bytes([rr[8], rr[9]]) as usize;
        pos += 10;
        let data = msg
            .get(pos..pos + len)
            .ok_or_else(|| bad("truncated data"))?;
        if typ == RecordType::A as u16 && len == 4 {
            out.push((
                IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                ttl,
            ));
        } else if typ == RecordType::Aaaa as u16 && len == 16 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(data);
            out.push((IpAddr::V6(Ipv6Addr::from(octets)), ttl));
        }
        pos += len;
    }
    Ok(out)
}

/// After the first family answered, how long the other one is waited for (a server that
/// drops `AAAA` queries must not cost the full timeout on every lookup).
const SECOND_FAMILY_GRACE: Duration = Duration::from_millis(500);

/// Asks `server` for the `A` and `AAAA` records of `host` at once (random query ids), each
/// answer with its TTL. NXDOMAIN for both is `NotFound`; no answer at all is an error.
fn query(server: SocketAddr, host: &str) -> io::Result<Vec<(IpAddr, u32)>> {
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(server)?;
    let mut last = io::Error::new(
        io::ErrorKind::TimedOut,
        format!("name server {server} does not answer"),
    );
    for _ in 0..QUERY_ATTEMPTS {
        let mut pending: Vec<u16> = Vec::with_capacity(2);
        for rtype in [RecordType::A, RecordType::Aaaa] {
            let id = fastrand::u16(..);
            sock.send(&build_query(id, host, rtype)?)?;
            pending.push(id);
        }
        let mut records = Vec::new();
        let (mut answered, mut missing) = (false, 0);
        let mut deadline = std::time::Instant::now() + QUERY_TIMEOUT;
        let mut buf = [0u8; 1500];
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    last = io::Error::new(
                        e.kind(),
                        format!("name server {server} does not answer: {e}"),
                    );
                    break;
                }
            };
            let msg = &buf[..n];
            let Some(id) = msg.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                continue;
            };
            if !pending.contains(&id) {
                // A stray or forged datagram: wait for the real answers.
                continue;
            }
            match parse_answer(msg, id) {
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    log::debug!("{server}: {e}");
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing += 1,
                Err(e) => last = e,
                Ok(r) => {
                    records.extend(r);
                    answered = true;
                    deadline = deadline.min(std::time::Instant::now() + SECOND_FAMILY_GRACE);
                }
            }
            pending.retain(|&p| p != id);
        }
        if answered {
            return Ok(records);
        }
        if missing == 2 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such host (NXDOMAIN)",
            ));
        }
    }
    Err(last)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DNS server on 127.0.0.1 answering every A query with `answer`; returns its address.
    pub(crate) fn tiny_dns_server(answer: Ipv4Addr) -> SocketAddr {
        let server = crate::testing::DnsServer::start().unwrap();
        server.set("*", &[(IpAddr::V4(answer), 60)]);
        server.addr
    }

    /// A server that never answers `AAAA` costs the grace period, not the query timeout.
    #[test]
    fn a_server_that_drops_aaaa_queries_costs_little() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let inner = crate::testing::DnsServer::start().unwrap();
        inner.set("*", &[(IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7)), 60)]);
        let upstream = inner.addr;
        // A forwarder that passes A queries on and drops the others.
        std::thread::spawn(move || {
            let up = UdpSocket::bind("127.0.0.1:0").unwrap();
            up.connect(upstream).unwrap();
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let end = skip_name(&buf[..n], 12).unwrap();
                if buf[end..end + 2] != [0, 1] {
                    continue;
                }
                up.send(&buf[..n]).unwrap();
                let mut answer = [0u8; 512];
                let m = up.recv(&mut answer).unwrap();
                sock.send_to(&answer[..m], from).unwrap();
            }
        });
        let ns = Nameserver::default();
        ns.set(Some(addr));
        let started = std::time::Instant::now();
        let (got, _) = ns.resolve_with_ttl("v4only.example.org").unwrap();
        assert_eq!(got, vec!["10.9.8.7:0".parse().unwrap()]);
        assert!(started.elapsed() < QUERY_TIMEOUT, "{:?}", started.elapsed());
    }

    /// Both families, the preferred one first, and the smallest TTL.
    #[test]
    fn a_and_aaaa_in_the_preferred_order() {
        let server = crate::testing::DnsServer::start().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        server.set("both.example.org", &[(v6, 300), (v4, 120)]);
        server.set("six.example.org", &[(v6, 90)]);
        let ns = Nameserver::default();
        ns.set(Some(server.addr));
        let (got, ttl) = ns.resolve_with_ttl("both.example.org").unwrap();
        assert_eq!(got, vec![SocketAddr::new(v4, 0), SocketAddr::new(v6, 0)]);
        assert_eq!(ttl, Duration::from_secs(120));
        ns.set_prefer(IpFamily::V6);
        let (got, _) = ns.resolve_with_ttl("both.example.org").unwrap();
        assert_eq!(got, vec![SocketAddr::new(v6, 0), SocketAddr::new(v4, 0)]);
        assert_eq!(
            ns.resolve_with_ttl("six.example.org").unwrap(),
            (vec![SocketAddr::new(v6, 0)], Duration::from_secs(90))
        );
        let err = ns.resolve("missing.example.org").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(IpFamily::parse("6"), Some(IpFamily::V6));
        assert_eq!(IpFamily::parse("5"), None);
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
        assert!(build_query(1, "a..b", RecordType::A).is_err());
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
