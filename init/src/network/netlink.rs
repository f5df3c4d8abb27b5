//! Interface, address and route configuration through rtnetlink (the kernel's own interface;
//! no `ip`/`ifconfig` at run time). Only the few IPv4 operations the boot needs.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::bytes;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink {what}: {cause}")]
    Request {
        what: &'static str,
        cause: io::Error,
    },
    #[error("malformed netlink reply to {0}")]
    Malformed(&'static str),
}

/// One network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub flags: u32,
    pub mtu: u32,
}

impl Link {
    pub fn is_loopback(&self) -> bool {
        self.flags & libc::IFF_LOOPBACK as u32 != 0
    }

    pub fn is_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0
    }

    /// `aa:bb:cc:dd:ee:ff`
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// An IPv4 address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub broadcast: Option<Ipv4Addr>,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub metric: u32,
}

/// A message under construction: type, flags, then the fixed part and attributes; the
/// header is written by `finish`, when the length is known.
struct Message {
    kind: u16,
    flags: u16,
    body: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Self {
        Message {
            kind,
            flags: flags | NLM_F_REQUEST,
            body: fixed.to_vec(),
        }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.body.extend_from_slice(&(len as u16).to_ne_bytes());
        self.body.extend_from_slice(&kind.to_ne_bytes());
        self.body.extend_from_slice(data);
        while self.body.len() % 4 != 0 {
            self.body.push(0);
        }
        self
    }

    fn finish(self, seq: u32) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + self.body.len()) as u32;
        let mut b = Vec::with_capacity(len as usize);
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&self.kind.to_ne_bytes());
        b.extend_from_slice(&self.flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
        b.extend_from_slice(&self.body);
        b
    }
}

/// Attributes after a fixed header: (type, payload).
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (bytes::u16_ne(b, 0), bytes::u16_ne(b, 2)) {
        let len = len as usize;
        let Some(payload) = b.get(4..len) else {
            break;
        };
        out.push((kind & 0x3fff, payload));
        b = bytes::tail(b, (len + 3) & !3);
    }
    out
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

fn u32_of(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).ok().map(u32::from_ne_bytes)
}

/// An open rtnetlink socket of the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| NetlinkError::Socket(e.into()))?;
        // The kernel answers at once; the timeout only guards against a bug hanging PID 1.
        let tv = nix::sys::time::TimeVal::new(5, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NetlinkError::Socket(e.into()))?;
        Ok(Netlink { fd, seq: 1 })
    }

    fn send(&mut self, msg: Message, what: &'static str) -> Result<u32, NetlinkError> {
        self.seq += 1;
        let seq = self.seq;
        let buf = msg.finish(seq);
        // Port 0, no groups: the kernel.
        let kernel = nix::sys::socket::NetlinkAddr::new(0, 0);
        nix::sys::socket::sendto(
            self.fd.as_raw_fd(),
            &buf,
            &kernel,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(|e| NetlinkError::Request {
            what,
            cause: e.into(),
        })?;
        Ok(seq)
    }

    /// Receives replies to `seq` until the ACK or the end of a dump; returns (type, payload)
    /// of every data message.
    fn receive(
        &mut self,
        seq: u32,
        what: &'static str,
    ) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            )
            .map_err(|e| NetlinkError::Request {
                what,
                cause: e.into(),
            })?;
            let mut b = buf.get(..n).unwrap_or_default();
            while b.len() >= NLMSG_HDRLEN {
                let (Some(len), Some(kind), Some(mseq)) = (
                    bytes::u32_ne(b, 0),
                    bytes::u16_ne(b, 4),
                    bytes::u32_ne(b, 8),
                ) else {
                    return Err(NetlinkError::Malformed(what));
                };
                let len = len as usize;
                let Some(payload) = b.get(NLMSG_HDRLEN..len) else {
                    return Err(NetlinkError::Malformed(what));
                };
                b = bytes::tail(b, (len + 3) & !3);
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = bytes::array(payload, 0)
                            .map(i32::from_ne_bytes)
                            .ok_or(NetlinkError::Malformed(what))?;
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Request {
                            what,
                            cause: io::Error::from_raw_os_error(-code),
                        });
                    }
                    _ => out.push((kind, payload.to_vec())),
                }
            }
        }
    }

    fn request(&mut self, msg: Message, what: &'static str) -> Result<(), NetlinkError> {
        let seq = self.send(msg, what)?;
        self.receive(seq, what).map(|_| ())
    }

    fn dump(
        &mut self,
        kind: u16,
        fixed: &[u8],
        what: &'static str,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.send(Message::new(kind, NLM_F_DUMP, fixed), what)?;
        Ok(self
            .receive(seq, what)?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Every interface, in index order.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let mut links = Vec::new();
        for p in self.dump(RTM_GETLINK, &[0u8; 16], "list interfaces")? {
            let (Some(index), Some(flags), Some(attrs)) =
                (bytes::u32_ne(&p, 4), bytes::u32_ne(&p, 8), p.get(16..))
            else {
                return Err(NetlinkError::Malformed("list interfaces"));
            };
            let mut link = Link {
                index,
                name: String::new(),
                mac: Vec::new(),
                flags,
                mtu: 0,
            };
            for (kind, data) in attributes(attrs) {
                match kind {
                    IFLA_IFNAME => {
                        link.name =
                            String::from_utf8_lossy(data.split(|&c| c == 0).next().unwrap_or(&[]))
                                .into_owned()
                    }
                    IFLA_ADDRESS => link.mac = data.to_vec(),
                    IFLA_MTU => link.mtu = u32_of(data).unwrap_or(0),
                    _ => {}
                }
            }
            links.push(link);
        }
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Sets the interface up, with `mtu` when given.
    pub fn set_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut fixed = [0u8; 16];
        fixed[0] = libc::AF_UNSPEC as u8;
        fixed[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        fixed[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        fixed[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        let mut msg = Message::new(RTM_NEWLINK, NLM_F_ACK, &fixed);
        if let Some(mtu) = mtu {
            msg = msg.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(msg, "set interface up")
    }

    /// Sets the MTU only.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        let msg = Message::new(RTM_NEWLINK, NLM_F_ACK, &fixed).attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.request(msg, "set MTU")
    }

    /// IPv4 addresses, of one interface or of all.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, NetlinkError> {
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        let mut out = Vec::new();
        for p in self.dump(RTM_GETADDR, &fixed, "list addresses")? {
            let (Some(&family), Some(&prefix), Some(idx), Some(attrs)) =
                (p.first(), p.get(1), bytes::u32_ne(&p, 4), p.get(8..))
            else {
                continue;
            };
            if family != libc::AF_INET as u8 {
                continue;
            }
            if index.is_some_and(|i| i != idx) {
                continue;
            }
            let mut a = Address {
                index: idx,
                address: Ipv4Addr::UNSPECIFIED,
                prefix,
                broadcast: None,
            };
            for (kind, data) in attributes(attrs) {
                match kind {
                    IFA_LOCAL => a.address = ipv4(data).unwrap_or(a.address),
                    IFA_ADDRESS if a.address.is_unspecified() => {
                        a.address = ipv4(data).unwrap_or(a.address)
                    }
                    IFA_BROADCAST => a.broadcast = ipv4(data),
                    _ => {}
                }
            }
            out.push(a);
        }
        Ok(out)
    }

    fn addr_msg(kind: u16, flags: u16, a: &Address) -> Message {
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = a.prefix;
        fixed[4..8].copy_from_slice(&a.index.to_ne_bytes());
        let mut m = Message::new(kind, flags | NLM_F_ACK, &fixed)
            .attr(IFA_LOCAL, &a.address.octets())
            .attr(IFA_ADDRESS, &a.address.octets());
        if let Some(b) = a.broadcast {
            m = m.attr(IFA_BROADCAST, &b.octets());
        }
        m
    }

    /// Adds (or replaces) an IPv4 address.
    pub fn add_address(&mut self, a: &Address) -> Result<(), NetlinkError> {
        let m = Self::addr_msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, a);
        self.request(m, "add address")
    }

    /// Removes every IPv4 address of the interface (DHCP `deconfig`).
    pub fn flush_addresses(&mut self, index: u32) -> Result<(), NetlinkError> {
        for a in self.addresses(Some(index))? {
            let m = Self::addr_msg(RTM_DELADDR, 0, &a);
            self.request(m, "delete address")?;
        }
        Ok(())
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut fixed = [0u8; 12];
        fixed[0] = libc::AF_INET as u8;
        let mut out = Vec::new();
        for p in self.dump(RTM_GETROUTE, &fixed, "list routes")? {
            let (Some(&family), Some(&prefix), Some(&table), Some(attrs)) =
                (p.first(), p.get(1), p.get(4), p.get(12..))
            else {
                continue;
            };
            if family != libc::AF_INET as u8 {
                continue;
            }
            let mut table = table as u32;
            let mut r = Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix,
                gateway: None,
                oif: None,
                metric: 0,
            };
            for (kind, data) in attributes(attrs) {
                match kind {
                    RTA_DST => r.destination = ipv4(data).unwrap_or(r.destination),
                    RTA_GATEWAY => r.gateway = ipv4(data),
                    RTA_OIF => r.oif = u32_of(data),
                    RTA_PRIORITY => r.metric = u32_of(data).unwrap_or(0),
                    RTA_TABLE => table = u32_of(data).unwrap_or(table),
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN as u32 {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn route_msg(kind: u16, flags: u16, r: &Route) -> Message {
        let mut fixed = [0u8; 12];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = r.prefix;
        fixed[4] = RT_TABLE_MAIN;
        fixed[5] = RTPROT_BOOT;
        fixed[6] = if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        fixed[7] = RTN_UNICAST;
        let mut m = Message::new(kind, flags | NLM_F_ACK, &fixed)
            .attr(RTA_DST, &r.destination.octets())
            .attr(RTA_PRIORITY, &r.metric.to_ne_bytes());
        if let Some(g) = r.gateway {
            m = m.attr(RTA_GATEWAY, &g.octets());
        }
        if let Some(oif) = r.oif {
            m = m.attr(RTA_OIF, &oif.to_ne_bytes());
        }
        m
    }

    /// Adds a route; a route without gateway is a link-scope route through `oif`.
    pub fn add_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        let m = Self::route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, r);
        self.request(m, "add route")
    }

    pub fn delete_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        let m = Self::route_msg(RTM_DELROUTE, 0, r);
        self.request(m, "delete route")
    }

    /// Deletes the default routes through interface `index`.
    pub fn delete_default_routes(&mut self, index: u32) -> Result<(), NetlinkError> {
        for r in self.routes()? {
            if r.prefix == 0 && r.oif == Some(index) {
                self.delete_route(&r)?;
            }
        }
        Ok(())
    }
}

/// Prefix length of a dotted netmask (`255.255.255.0` → 24); non-contiguous masks count
/// their leading ones.
pub fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// Netmask of a prefix length.
pub fn mask_of(prefix: u8) -> Ipv4Addr {
    if prefix == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::MAX << (32 - prefix.min(32) as u32))
    }
}

/// Broadcast address of `addr/prefix`.
pub fn broadcast_of(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) | !u32::from(mask_of(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_arithmetic() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), 32);
        assert_eq!(mask_of(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(mask_of(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            broadcast_of(Ipv4Addr::new(10, 0, 2, 15), 24),
            Ipv4Addr::new(10, 0, 2, 255)
        );
    }

    #[test]
    fn truncated_attributes_are_ignored() {
        // one valid attribute, then a length pointing past the end
        let b = [8, 0, 3, 0, b'e', b't', b'h', 0, 40, 0, 1, 0, 1];
        let a = attributes(&b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 3);
    }
}
