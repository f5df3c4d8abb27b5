//! DHCP client (spec §3.2): one lease for one interface, as the original's
//! `udhcpc -f -q -n -t 20 -O staticroutes -O mtu` does, then the lease applied like its
//! `default.script` (`bound`).

pub mod packet;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use packet::{MessageType, Reply, Request, StaticRoute};

use super::netlink::{self, Address, Netlink, NetlinkError, Route};

/// How persistent the client is. The defaults are udhcpc's: 20 discovers, 3 s apart.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub discover_attempts: u32,
    pub reply_timeout: Duration,
    pub request_attempts: u32,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            discover_attempts: 20,
            reply_timeout: Duration::from_secs(3),
            request_attempts: 3,
        }
    }
}

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub subnet_mask: Option<Ipv4Addr>,
    pub broadcast: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_seconds: Option<u32>,
    pub server: Option<Ipv4Addr>,
    pub static_routes: Vec<StaticRoute>,
}

impl From<Reply> for Lease {
    fn from(r: Reply) -> Self {
        Lease {
            address: r.your_ip,
            subnet_mask: r.subnet_mask,
            broadcast: r.broadcast,
            routers: r.routers,
            dns: r.dns,
            domain: r.domain,
            mtu: r.mtu,
            lease_seconds: r.lease_seconds,
            server: r.server_id,
            static_routes: r.static_routes,
        }
    }
}

impl Lease {
    /// Prefix length: from the subnet option, else the address class (as `ifconfig` does).
    pub fn prefix(&self) -> u8 {
        match self.subnet_mask {
            Some(m) => netlink::prefix_of(m),
            None => match self.address.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot open the DHCP socket on {iface}: {cause}")]
    Socket { iface: String, cause: io::Error },
    #[error("no DHCP lease on {iface} after {attempts} discover attempts")]
    NoLease { iface: String, attempts: u32 },
    #[error("applying the lease: {0}")]
    Netlink(NetlinkError),
}

// The cause is in the message, so it is not also returned as the source.
impl From<NetlinkError> for DhcpError {
    fn from(e: NetlinkError) -> Self {
        DhcpError::Netlink(e)
    }
}

/// A UDP socket on port 68 bound to one interface, able to send and receive broadcasts while
/// the interface has no address yet.
fn client_socket(iface: &str) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
    )?;
    Ok(UdpSocket::from(fd))
}

fn random_xid() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: buffer valid for 4 bytes; a short read only weakens the randomness.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, libc::GRND_NONBLOCK) };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

/// Waits until `deadline` for a reply of one of `kinds` to `xid`; other datagrams are skipped.
fn wait_reply(
    sock: &UdpSocket,
    xid: u32,
    mac: &[u8],
    kinds: &[MessageType],
    deadline: Instant,
    log: &mut Vec<String>,
) -> Option<Reply> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => {
                log.push(format!("receive error: {e}"));
                return None;
            }
        };
        match Reply::parse(buf.get(..n).unwrap_or_default()) {
            Ok(r)
                if r.xid == xid
                    && r.chaddr.iter().eq(mac.iter().take(6))
                    && kinds.contains(&r.kind) =>
            {
                return Some(r)
            }
            Ok(_) => {}
            Err(e) => log.push(format!("ignoring a malformed packet: {e}")),
        }
    }
}

/// Runs discover/offer/request/ack on `iface` (which must be up) and returns the lease.
/// Progress goes to `log` in udhcpc's style.
pub fn obtain_lease(
    iface: &str,
    mac: &[u8],
    config: &DhcpConfig,
    log: &mut Vec<String>,
) -> Result<Lease, DhcpError> {
    let sock = client_socket(iface).map_err(|source| DhcpError::Socket {
        iface: iface.to_string(),
        cause: source,
    })?;
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    log.push(format!("started, {iface}"));
    let started = Instant::now();
    let mut attempt = 0;
    while attempt < config.discover_attempts {
        attempt += 1;
        let xid = random_xid();
        let secs = started.elapsed().as_secs().min(u16::MAX as u64) as u16;
        let discover = Request {
            kind: MessageType::Discover,
            xid,
            mac,
            secs,
            requested_ip: None,
            server_id: None,
        };
        log.push("sending discover".to_string());
        if let Err(e) = sock.send_to(&discover.encode(), server) {
            log.push(format!("cannot send discover: {e}"));
            std::thread::sleep(config.reply_timeout);
            continue;
        }
        let deadline = Instant::now() + config.reply_timeout;
        let Some(offer) = wait_reply(&sock, xid, mac, &[MessageType::Offer], deadline, log) else {
            continue;
        };
        log.push(format!(
            "received offer of {} from {}",
            offer.your_ip,
            offer.server_id.map(|s| s.to_string()).unwrap_or_default()
        ));
        for _ in 0..config.request_attempts {
            let request = Request {
                kind: MessageType::Request,
                xid,
                mac,
                secs,
                requested_ip: Some(offer.your_ip),
                server_id: offer.server_id,
            };
            log.push(format!("sending select for {}", offer.your_ip));
            if let Err(e) = sock.send_to(&request.encode(), server) {
                log.push(format!("cannot send request: {e}"));
                continue;
            }
            let deadline = Instant::now() + config.reply_timeout;
            match wait_reply(
                &sock,
                xid,
                mac,
                &[MessageType::Ack, MessageType::Nak],
                deadline,
                log,
            ) {
                Some(r) if r.kind == MessageType::Ack => {
                    let lease = Lease::from(r);
                    log.push(format!(
                        "lease of {} obtained, lease time {}",
                        lease.address,
                        lease
                            .lease_seconds
                            .map(|s| s.to_string())
                            .unwrap_or("infinite".into())
                    ));
                    return Ok(lease);
                }
                Some(_) => {
                    log.push("received NAK".to_string());
                    break;
                }
                None => {}
            }
        }
    }
    log.push("no lease, failing".to_string());
    Err(DhcpError::NoLease {
        iface: iface.to_string(),
        attempts: config.discover_attempts,
    })
}

/// `/etc/resolv.conf` for a lease: `search <domain>`, then one `nameserver` per DNS server.
pub fn resolv_conf(domain: Option<&str>, dns: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    if let Some(d) = domain {
        s.push_str(&format!("search {d}\n"));
    }
    for n in dns {
        s.push_str(&format!("nameserver {n}\n"));
    }
    s
}

/// Adds a route; a failure is logged and skipped (as the original's script ignores it).
fn add_route_logged(nl: &mut Netlink, r: Route, log: &mut Vec<String>) {
    let gw = r.gateway.map(|g| g.to_string()).unwrap_or("link".into());
    match nl.add_route(&r) {
        Ok(()) => log.push(format!(
            "route {}/{} via {gw} metric {}",
            r.destination, r.prefix, r.metric
        )),
        Err(e) => log.push(format!(
            "cannot add route {}/{} via {gw}: {e}",
            r.destination, r.prefix
        )),
    }
}

/// Applies a lease as the original's `bound` handler: server address remembered, MTU,
/// address, default routes (metric 0, 1, …; host route first for a /32), resolv.conf, static
/// routes. Route errors are logged and skipped; address errors fail.
pub fn apply_lease(
    nl: &mut Netlink,
    index: u32,
    lease: &Lease,
    root: &Path,
    log: &mut Vec<String>,
) -> Result<(), DhcpError> {
    if let Some(server) = lease.server {
        let dir = root.join("var/lib");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join("dhcp-server"), format!("{server}\n")));
        if let Err(e) = written {
            log.push(format!("cannot remember the DHCP server: {e}"));
        }
    }
    if let Some(mtu) = lease.mtu {
        // RFC 2132: at least 68; smaller values are nonsense from a broken server.
        if mtu >= 68 {
            nl.set_mtu(index, mtu as u32)?;
            log.push(format!("MTU {mtu}"));
        }
    }
    let prefix = lease.prefix();
    let broadcast = lease
        .broadcast
        .unwrap_or_else(|| netlink::broadcast_of(lease.address, prefix));
    nl.flush_addresses(index)?;
    nl.add_address(&Address {
        index,
        address: lease.address,
        prefix,
        broadcast: Some(broadcast),
    })?;
    log.push(format!(
        "address {}/{prefix} broadcast {broadcast}",
        lease.address
    ));
    if !lease.routers.is_empty() {
        if let Err(e) = nl.delete_default_routes(index) {
            log.push(format!("cannot delete old default routes: {e}"));
        }
        for (metric, router) in lease.routers.iter().enumerate() {
            if prefix == 32 {
                add_route_logged(
                    nl,
                    Route {
                        destination: *router,
                        prefix: 32,
                        gateway: None,
                        oif: Some(index),
                        metric: 0,
                    },
                    log,
                );
            }
            add_route_logged(
                nl,
                Route {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(*router),
                    oif: Some(index),
                    metric: metric as u32,
                },
                log,
            );
        }
    }
    let resolv = resolv_conf(lease.domain.as_deref(), &lease.dns);
    let etc = root.join("etc");
    let written = std::fs::create_dir_all(&etc)
        .and_then(|_| std::fs::write(etc.join("resolv.conf"), &resolv));
    if let Err(e) = written {
        log.push(format!("cannot write resolv.conf: {e}"));
    }
    for r in &lease.static_routes {
        add_route_logged(
            nl,
            Route {
                destination: r.destination,
                prefix: r.prefix,
                gateway: Some(r.router),
                oif: Some(index),
                metric: 0,
            },
            log,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_search_then_nameservers() {
        let s = resolv_conf(
            Some("cern.ch"),
            &[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        );
        assert_eq!(
            s,
            "search cern.ch\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n"
        );
        assert_eq!(resolv_conf(None, &[]), "");
    }

    #[test]
    fn prefix_defaults_to_the_address_class() {
        let mut l = Lease {
            address: Ipv4Addr::new(10, 1, 2, 3),
            subnet_mask: None,
            broadcast: None,
            routers: vec![],
            dns: vec![],
            domain: None,
            mtu: None,
            lease_seconds: None,
            server: None,
            static_routes: vec![],
        };
        assert_eq!(l.prefix(), 8);
        l.address = Ipv4Addr::new(192, 168, 1, 1);
        assert_eq!(l.prefix(), 24);
        l.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(l.prefix(), 32);
    }
}
