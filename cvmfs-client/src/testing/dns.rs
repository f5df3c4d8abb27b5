//! A small authoritative DNS server on 127.0.0.1 for tests: `A` and `AAAA` answers with TTLs
//! from a table the test changes while it runs; unknown names get NXDOMAIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Records per lower-case name (`*` answers every name).
type Table = HashMap<String, Vec<(IpAddr, u32)>>;

/// The server; it runs until the process ends.
pub struct DnsServer {
    pub addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub fn start() -> std::io::Result<DnsServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The server on `addr` (e.g. `[::1]:0`).
    pub fn start_on(addr: SocketAddr) -> std::io::Result<DnsServer> {
        let sock = UdpSocket::bind(addr)?;
        let addr = sock.local_addr()?;
        let table: Arc<Mutex<Table>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (t, q) = (Arc::clone(&table), Arc::clone(&queries));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = answer(&buf[..n], &t.lock().unwrap_or_else(|e| e.into_inner())) {
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        Ok(DnsServer {
            addr,
            table,
            queries,
        })
    }

    /// Answers `name` with `records` (address, TTL in seconds) from now on.
    pub fn set(&self, name: &str, records: &[(IpAddr, u32)]) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), records.to_vec());
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

/// The response to one query, or `None` for garbage.
fn answer(q: &[u8], table: &Table) -> Option<Vec<u8>> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    let end = pos + 4;
    let name = labels.join(".");
    let records = table.get(&name).or_else(|| table.get("*"));
    let mut r = q.get(..end)?.to_vec();
    r[2] = 0x81;
    r[3] = if records.is_some() { 0x80 } else { 0x83 };
    let mut count = 0u16;
    for (ip, ttl) in records.into_iter().flatten() {
        let (typ, data) = match ip {
            IpAddr::V4(a) if qtype == 1 => (1u16, a.octets().to_vec()),
            IpAddr::V6(a) if qtype == 28 => (28u16, a.octets().to_vec()),
            _ => continue,
        };
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
        count += 1;
    }
    r[6..8].copy_from_slice(&count.to_be_bytes());
    Some(r)
}
