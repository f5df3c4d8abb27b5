//! network (spec §3)

use crate::boot::{Boot, NotImplemented};

pub mod dhcp;
pub mod netlink;
#[cfg(test)]
pub(crate) mod testlab;
pub mod time;

/// Result of this phase, kept in [`Boot`].
#[derive(Debug, Default)]
pub struct NetworkState {}

pub fn phase(_boot: &mut Boot) -> Result<(), NotImplemented> {
    Err(NotImplemented("network (spec §3)"))
}

#[cfg(test)]
mod netns_tests {
    use super::dhcp::{self, DhcpConfig};
    use super::netlink::*;
    use super::testlab::Lab;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn fast() -> DhcpConfig {
        DhcpConfig {
            discover_attempts: 5,
            reply_timeout: Duration::from_secs(2),
            request_attempts: 2,
        }
    }

    #[test]
    fn dhcp_lease_from_dnsmasq_is_applied() {
        let mut lab = Lab::new();
        lab.start_dhcp(&[
            "option:router,10.77.0.1",
            "option:dns-server,10.77.0.53,10.77.0.54",
            "option:domain-name,lab.test",
            "option:mtu,1400",
            "121,192.168.50.0/24,10.77.0.254,0.0.0.0/0,10.77.0.1",
        ]);
        let mut nl = Netlink::open().unwrap();
        let c0 = nl.link_by_name("c0").unwrap().unwrap();
        nl.set_up(c0.index, Some(1460)).unwrap();
        assert_eq!(nl.link_by_name("c0").unwrap().unwrap().mtu, 1460);
        let mut log = Vec::new();
        let lease = dhcp::obtain_lease("c0", &c0.mac, &fast(), &mut log)
            .unwrap_or_else(|e| panic!("{e}\n{log:#?}"));
        assert_eq!(lease.server, Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.domain.as_deref(), Some("lab.test"));
        let root = tempfile::tempdir().unwrap();
        dhcp::apply_lease(&mut nl, c0.index, &lease, root.path(), &mut log).unwrap();

        let addrs = nl.addresses(Some(c0.index)).unwrap();
        assert_eq!(addrs.len(), 1);
        let a = &addrs[0];
        assert!(
            a.address >= Ipv4Addr::new(10, 77, 0, 50) && a.address <= Ipv4Addr::new(10, 77, 0, 60)
        );
        assert_eq!(a.prefix, 24);
        assert_eq!(a.broadcast, Some(Ipv4Addr::new(10, 77, 0, 255)));
        assert_eq!(nl.link_by_name("c0").unwrap().unwrap().mtu, 1400);
        let routes = nl.routes().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.prefix == 0 && r.gateway == Some(Ipv4Addr::new(10, 77, 0, 1))),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.prefix == 24
                && r.destination == Ipv4Addr::new(192, 168, 50, 0)
                && r.gateway == Some(Ipv4Addr::new(10, 77, 0, 254))),
            "{routes:?}"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "search lab.test\nnameserver 10.77.0.53\nnameserver 10.77.0.54\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("var/lib/dhcp-server")).unwrap(),
            "10.77.0.1\n"
        );
    }

    #[test]
    fn no_server_means_no_lease_after_the_attempts() {
        let _lab = Lab::new();
        let mut nl = Netlink::open().unwrap();
        let c0 = nl.link_by_name("c0").unwrap().unwrap();
        nl.set_up(c0.index, None).unwrap();
        let mut log = Vec::new();
        let cfg = DhcpConfig {
            discover_attempts: 2,
            reply_timeout: Duration::from_millis(300),
            request_attempts: 1,
        };
        let e = dhcp::obtain_lease("c0", &c0.mac, &cfg, &mut log).unwrap_err();
        assert!(e.to_string().contains("no DHCP lease on c0 after 2"), "{e}");
        assert_eq!(log.iter().filter(|l| *l == "sending discover").count(), 2);
    }

    #[test]
    fn netlink_configures_links_addresses_and_routes() {
        let _lab = Lab::new();
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo" && l.is_loopback()));
        let c0 = links.iter().find(|l| l.name == "c0").unwrap().clone();
        assert!(!c0.is_up());
        assert_eq!(c0.mac.len(), 6);
        nl.set_up(c0.index, Some(1460)).unwrap();
        let up = nl.link_by_name("c0").unwrap().unwrap();
        assert!(up.is_up());
        assert_eq!(up.mtu, 1460);
        let addr = Address {
            index: c0.index,
            address: Ipv4Addr::new(10, 77, 0, 9),
            prefix: 24,
            broadcast: Some(Ipv4Addr::new(10, 77, 0, 255)),
        };
        nl.add_address(&addr).unwrap();
        assert_eq!(nl.addresses(Some(c0.index)).unwrap(), vec![addr.clone()]);
        let gw = Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
            oif: Some(c0.index),
            metric: 0,
        };
        nl.add_route(&gw).unwrap();
        assert!(nl.routes().unwrap().contains(&gw));
        // a duplicate is refused with the kernel's reason
        let e = nl.add_route(&gw).unwrap_err();
        assert!(e.to_string().contains("add route"), "{e}");
        nl.delete_default_routes(c0.index).unwrap();
        assert!(!nl.routes().unwrap().iter().any(|r| r.prefix == 0));
        nl.flush_addresses(c0.index).unwrap();
        assert!(nl.addresses(Some(c0.index)).unwrap().is_empty());
    }
}
