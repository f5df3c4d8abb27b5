//! Proxy auto-configuration as the client uses it: the interpreter is the `cvmfs-pac` crate;
//! here are the real world it asks (lookups through the client's name server, the system
//! clock) and the discovery of PAC files for `auto` in the proxy description.

pub mod discovery;

use std::net::Ipv4Addr;

pub use cvmfs_pac::*;

use crate::dns::Nameserver;

/// The real world: lookups through the client's name server, the system clock.
#[derive(Debug, Clone, Default)]
pub struct SystemHost {
    pub nameserver: Nameserver,
}

impl PacHost for SystemHost {
    fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        let addrs = self.nameserver.resolve(name).ok()?;
        addrs.iter().find_map(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
    }

    /// Like pacparser: the address of our host name, else the loopback address.
    fn my_ip_address(&self) -> Ipv4Addr {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| self.resolve(h.trim()))
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }

    fn now_local(&self) -> CivilTime {
        CivilTime::local(unix_now())
    }

    fn now_utc(&self) -> CivilTime {
        CivilTime::utc(unix_now())
    }
}

#[cfg(test)]
mod tests;
