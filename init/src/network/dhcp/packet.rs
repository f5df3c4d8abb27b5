//! DHCPv4 messages (RFC 2131) and the options the boot uses (RFC 2132, RFC 3442).

use std::net::Ipv4Addr;

use crate::bytes;

pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const FIXED_LEN: usize = 236;

pub const OPT_PAD: u8 = 0;
pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_DNS: u8 = 6;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_DOMAIN: u8 = 15;
pub const OPT_MTU: u8 = 26;
pub const OPT_BROADCAST: u8 = 28;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PARAMETER_LIST: u8 = 55;
pub const OPT_MAX_MESSAGE_SIZE: u8 = 57;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_CLASSLESS_ROUTES: u8 = 121;
pub const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            _ => return None,
        })
    }
}

/// Why a received datagram is not a usable DHCP reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("DHCP message too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a BOOTP reply (op {0})")]
    NotReply(u8),
    #[error("DHCP magic cookie missing")]
    NoCookie,
    #[error("DHCP option {0} runs past the end of the message")]
    TruncatedOption(u8),
    #[error("DHCP message without a message type")]
    NoMessageType,
}

/// One classless static route (option 121).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub router: Ipv4Addr,
}

/// A decoded DHCP reply: the fields and options the client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: MessageType,
    pub xid: u32,
    pub your_ip: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub broadcast: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub mtu: Option<u16>,
    pub lease_seconds: Option<u32>,
    pub static_routes: Vec<StaticRoute>,
    pub chaddr: [u8; 6],
}

fn addrs(data: &[u8]) -> Vec<Ipv4Addr> {
    data.chunks_exact(4)
        .filter_map(|c| bytes::ipv4(c, 0))
        .collect()
}

fn addr(data: &[u8]) -> Option<Ipv4Addr> {
    addrs(data).into_iter().next()
}

fn text(data: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(data)
        .trim_end_matches('\0')
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// Decodes option 121: (prefix length, significant destination octets, router) tuples. A
/// malformed tail ends the list (RFC 3442 says to ignore the whole option; we keep what parsed
/// cleanly before it, and log the rest as dropped).
pub fn parse_classless_routes(mut data: &[u8]) -> Vec<StaticRoute> {
    let mut out = Vec::new();
    while let Some(&prefix) = data.first() {
        if prefix > 32 {
            break;
        }
        let n = (prefix as usize).div_ceil(8);
        let (Some(significant), Some(router)) = (data.get(1..1 + n), bytes::ipv4(data, 1 + n))
        else {
            break;
        };
        let mut dst = [0u8; 4];
        for (d, s) in dst.iter_mut().zip(significant) {
            *d = *s;
        }
        out.push(StaticRoute {
            destination: Ipv4Addr::from(dst),
            prefix,
            router,
        });
        data = bytes::tail(data, 1 + n + 4);
    }
    out
}

/// Encodes routes as option 121 payload (for tests and symmetry).
pub fn encode_classless_routes(routes: &[StaticRoute]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in routes {
        out.push(r.prefix);
        let n = (r.prefix as usize).div_ceil(8);
        out.extend(r.destination.octets().into_iter().take(n));
        out.extend_from_slice(&r.router.octets());
    }
    out
}

/// Iterates the options of `data`, concatenating repeated options (RFC 3396).
fn options(mut data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, PacketError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    while let Some(&code) = data.first() {
        match code {
            OPT_PAD => data = bytes::tail(data, 1),
            OPT_END => break,
            _ => {
                let len = *data.get(1).ok_or(PacketError::TruncatedOption(code))? as usize;
                let value = data
                    .get(2..2 + len)
                    .ok_or(PacketError::TruncatedOption(code))?;
                if let Some(e) = out.iter_mut().find(|(c, _)| *c == code) {
                    e.1.extend_from_slice(value);
                } else {
                    out.push((code, value.to_vec()));
                }
                data = bytes::tail(data, 2 + len);
            }
        }
    }
    Ok(out)
}

impl Reply {
    pub fn parse(b: &[u8]) -> Result<Self, PacketError> {
        let (Some(&op), Some(xid), Some(your_ip), Some(chaddr), Some(cookie)) = (
            b.first(),
            bytes::u32_be(b, 4),
            bytes::ipv4(b, 16),
            bytes::array::<6>(b, 28),
            bytes::array::<4>(b, FIXED_LEN),
        ) else {
            return Err(PacketError::TooShort(b.len()));
        };
        if op != 2 {
            return Err(PacketError::NotReply(op));
        }
        if cookie != MAGIC_COOKIE {
            return Err(PacketError::NoCookie);
        }
        let mut r = Reply {
            kind: MessageType::Discover,
            xid,
            your_ip,
            server_id: None,
            subnet_mask: None,
            broadcast: None,
            routers: Vec::new(),
            dns: Vec::new(),
            domain: None,
            hostname: None,
            mtu: None,
            lease_seconds: None,
            static_routes: Vec::new(),
            chaddr,
        };
        let mut kind = None;
        for (code, v) in options(bytes::tail(b, FIXED_LEN + 4))? {
            match code {
                OPT_MESSAGE_TYPE => kind = v.first().and_then(|&t| MessageType::from_u8(t)),
                OPT_SERVER_ID => r.server_id = addr(&v),
                OPT_SUBNET_MASK => r.subnet_mask = addr(&v),
                OPT_BROADCAST => r.broadcast = addr(&v),
                OPT_ROUTER => r.routers = addrs(&v),
                OPT_DNS => r.dns = addrs(&v),
                OPT_DOMAIN => r.domain = text(&v),
                OPT_HOSTNAME => r.hostname = text(&v),
                OPT_MTU if v.len() == 2 => r.mtu = bytes::u16_be(&v, 0),
                OPT_LEASE_TIME if v.len() == 4 => r.lease_seconds = bytes::u32_be(&v, 0),
                OPT_CLASSLESS_ROUTES => r.static_routes = parse_classless_routes(&v),
                _ => {}
            }
        }
        r.kind = kind.ok_or(PacketError::NoMessageType)?;
        Ok(r)
    }
}

/// A client message (DISCOVER or REQUEST), broadcast with the broadcast flag set so that the
/// server's answer reaches a client that has no address yet.
pub struct Request<'a> {
    pub kind: MessageType,
    pub xid: u32,
    pub mac: &'a [u8],
    pub secs: u16,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

/// Options the client asks for (option 55): the udhcpc defaults plus 121 and 26 (spec §3.2).
pub const PARAMETERS: [u8; 9] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_HOSTNAME,
    OPT_DOMAIN,
    OPT_BROADCAST,
    OPT_LEASE_TIME,
    OPT_MTU,
    OPT_CLASSLESS_ROUTES,
];

impl Request<'_> {
    pub fn encode(&self) -> Vec<u8> {
        // op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
        let mut b = vec![1u8, 1, 6, 0];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&0x8000u16.to_be_bytes()); // broadcast flag
        b.extend_from_slice(&[0u8; 16]); // ciaddr, yiaddr, siaddr, giaddr
        let mut chaddr = [0u8; 16];
        for (d, s) in chaddr.iter_mut().zip(self.mac) {
            *d = *s;
        }
        b.extend_from_slice(&chaddr);
        b.resize(FIXED_LEN, 0); // sname, file
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, self.kind as u8]);
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(self.mac);
        b.push(OPT_CLIENT_ID);
        b.push(client_id.len() as u8);
        b.extend_from_slice(&client_id);
        b.extend_from_slice(&[OPT_MAX_MESSAGE_SIZE, 2, 0x05, 0xdc]);
        if let Some(ip) = self.requested_ip {
            b.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
            b.extend_from_slice(&ip.octets());
        }
        if let Some(ip) = self.server_id {
            b.extend_from_slice(&[OPT_SERVER_ID, 4]);
            b.extend_from_slice(&ip.octets());
        }
        b.push(OPT_PARAMETER_LIST);
        b.push(PARAMETERS.len() as u8);
        b.extend_from_slice(&PARAMETERS);
        b.push(OPT_END);
        // Some old BOOTP relays drop messages shorter than 300 bytes.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server reply with the given options (test helper).
    pub(crate) fn reply_bytes(
        kind: MessageType,
        xid: u32,
        yiaddr: Ipv4Addr,
        opts: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = 2;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[16..20].copy_from_slice(&yiaddr.octets());
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind as u8]);
        for (c, v) in opts {
            b.push(*c);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b.push(OPT_END);
        b
    }

    #[test]
    fn request_has_cookie_broadcast_flag_and_parameter_list() {
        let mac = [2, 0, 10, 0, 0, 5];
        let b = Request {
            kind: MessageType::Request,
            xid: 0xdeadbeef,
            mac: &mac,
            secs: 3,
            requested_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            server_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
        }
        .encode();
        assert_eq!(b[0], 1);
        assert_eq!(&b[4..8], &0xdeadbeefu32.to_be_bytes());
        assert_eq!(b[10] & 0x80, 0x80);
        assert_eq!(&b[28..34], &mac);
        assert_eq!(&b[236..240], &MAGIC_COOKIE);
        let opts = options(&b[240..]).unwrap();
        let get = |c| opts.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
        assert_eq!(get(OPT_MESSAGE_TYPE), Some(vec![3]));
        assert_eq!(get(OPT_REQUESTED_IP), Some(vec![10, 0, 0, 5]));
        assert_eq!(get(OPT_SERVER_ID), Some(vec![10, 0, 0, 1]));
        let params = get(OPT_PARAMETER_LIST).unwrap();
        assert!(params.contains(&OPT_CLASSLESS_ROUTES) && params.contains(&OPT_MTU));
    }

    #[test]
    fn reply_options_are_decoded() {
        let routes = encode_classless_routes(&[
            StaticRoute {
                destination: Ipv4Addr::new(192, 168, 7, 0),
                prefix: 24,
                router: Ipv4Addr::new(10, 0, 0, 254),
            },
            StaticRoute {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                router: Ipv4Addr::new(10, 0, 0, 1),
            },
        ]);
        let b = reply_bytes(
            MessageType::Ack,
            7,
            Ipv4Addr::new(10, 0, 0, 5),
            &[
                (OPT_SERVER_ID, &[10, 0, 0, 1]),
                (OPT_SUBNET_MASK, &[255, 255, 255, 0]),
                (OPT_ROUTER, &[10, 0, 0, 1, 10, 0, 0, 2]),
                (OPT_DNS, &[8, 8, 8, 8]),
                (OPT_DOMAIN, b"example.org\0"),
                (OPT_MTU, &[0x05, 0xb4]),
                (OPT_LEASE_TIME, &[0, 0, 0x0e, 0x10]),
                (OPT_CLASSLESS_ROUTES, &routes),
            ],
        );
        let r = Reply::parse(&b).unwrap();
        assert_eq!(r.kind, MessageType::Ack);
        assert_eq!(r.xid, 7);
        assert_eq!(r.your_ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(r.routers.len(), 2);
        assert_eq!(r.domain.as_deref(), Some("example.org"));
        assert_eq!(r.mtu, Some(1460));
        assert_eq!(r.lease_seconds, Some(3600));
        assert_eq!(r.static_routes.len(), 2);
        assert_eq!(
            r.static_routes[0].destination,
            Ipv4Addr::new(192, 168, 7, 0)
        );
        assert_eq!(r.static_routes[1].prefix, 0);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(Reply::parse(&[2; 10]), Err(PacketError::TooShort(10)));
        let mut b = reply_bytes(MessageType::Offer, 1, Ipv4Addr::LOCALHOST, &[]);
        b[0] = 1;
        assert_eq!(Reply::parse(&b), Err(PacketError::NotReply(1)));
        let mut b = reply_bytes(MessageType::Offer, 1, Ipv4Addr::LOCALHOST, &[]);
        b[236] = 0;
        assert_eq!(Reply::parse(&b), Err(PacketError::NoCookie));
        let mut b = reply_bytes(MessageType::Offer, 1, Ipv4Addr::LOCALHOST, &[]);
        b.pop();
        b.extend_from_slice(&[OPT_DNS, 8, 1, 2]);
        assert_eq!(Reply::parse(&b), Err(PacketError::TruncatedOption(OPT_DNS)));
    }

    #[test]
    fn classless_routes_stop_at_a_malformed_tail() {
        let r = parse_classless_routes(&[8, 10, 1, 2, 3, 4, 33, 0]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].destination, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(r[0].router, Ipv4Addr::new(1, 2, 3, 4));
    }
}
