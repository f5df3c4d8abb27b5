//! Network (spec §3): every interface up with MTU 1460, then either the static configuration
//! of an OpenNebula `context.sh` or a DHCP lease on `eth0`; `/var/log/network.log` and
//! `/var/log/udhcpc.log` as the original writes them. Network failures are not fatal.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::console;
use crate::context::media::{FsType, Media};

pub mod dhcp;
pub mod netlink;
pub mod opennebula;
#[cfg(test)]
pub(crate) mod testlab;
pub mod time;

use dhcp::{DhcpConfig, Lease};
use netlink::{Address, Netlink, Route};
use opennebula::InterfaceConfig;

/// MTU set on every interface before configuration (GCE hangs above 1460); kept unless DHCP
/// supplies one.
pub const INITIAL_MTU: u32 = 1460;

/// How the network was configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMethod {
    /// OpenNebula `context.sh` found on a CD-ROM.
    Static(InterfaceConfig),
    Dhcp(Lease),
    /// Neither worked; the boot goes on without network configuration.
    #[default]
    Unconfigured,
}

/// What the network phase made.
#[derive(Debug, Default)]
pub struct NetworkState {
    pub method: NetworkMethod,
    /// The configured interface (`eth0`).
    pub interface: Option<String>,
}

impl NetworkState {
    /// The DHCP server of the lease (CloudStack metadata lives there, spec §5.2).
    pub fn dhcp_server(&self) -> Option<Ipv4Addr> {
        match &self.method {
            NetworkMethod::Dhcp(l) => l.server,
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error("OpenNebula context: no ETH<n>_MAC matches the MAC of eth0")]
    NoEth0Context,
    #[error("OpenNebula context: this machine has no eth0")]
    NoEth0,
}

/// Spec §3.1 step 1: the first iso9660/vfat medium with a top-level `context.sh`.
pub fn find_context_sh(media: &Media) -> Option<(String, String)> {
    let mut found = None;
    let device = media.scan(
        Some(&[FsType::Iso9660, FsType::Vfat]),
        &mut |_, _, dir| match fs::read(dir.join("context.sh")) {
            Ok(b) => {
                found = Some(String::from_utf8_lossy(&b).into_owned());
                true
            }
            Err(_) => false,
        },
    )?;
    found.map(|t| (device, t))
}

/// Spec §3.1 step 2: writes `ifcfg-<dev>` for every context interface and configures `eth0`.
/// Fails when there is no `eth0` configuration (then DHCP runs).
pub fn apply_static(
    nl: &mut Netlink,
    context_sh: &str,
    root: &Path,
) -> Result<InterfaceConfig, NetworkError> {
    let vars = opennebula::parse_context_sh(context_sh);
    let links: Vec<(String, String)> = nl
        .links()?
        .iter()
        .map(|l| (l.name.clone(), l.mac_string()))
        .collect();
    let force_ipv4 = |c: &InterfaceConfig| {
        vars.get(&format!("{}_CONTEXT_FORCE_IPV4", c.context_name))
            .is_some_and(|v| !v.is_empty())
    };
    let dir = root.join("etc/sysconfig/network-scripts");
    let configs = opennebula::interface_configs(&vars, &links);
    for c in &configs {
        let written = fs::create_dir_all(&dir).and_then(|_| {
            fs::write(
                dir.join(format!("ifcfg-{}", c.device)),
                opennebula::ifcfg(c, force_ipv4(c)),
            )
        });
        if let Err(e) = written {
            log::warn!("cannot write ifcfg-{}: {e}", c.device);
        }
    }
    let eth0 = configs
        .into_iter()
        .find(|c| c.device == "eth0")
        .ok_or(NetworkError::NoEth0Context)?;
    let link = nl.link_by_name("eth0")?.ok_or(NetworkError::NoEth0)?;
    nl.set_up(link.index, Some(1500))?;
    if let Some(ip) = eth0.ip {
        let prefix = netlink::prefix_of(eth0.mask);
        nl.flush_addresses(link.index)?;
        nl.add_address(&Address {
            index: link.index,
            address: ip,
            prefix,
            broadcast: Some(netlink::broadcast_of(ip, prefix)),
        })?;
    }
    if let Some(g) = eth0.gateway {
        let _ = nl.delete_default_routes(link.index);
        nl.add_route(&Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(g),
            oif: Some(link.index),
            metric: 0,
        })?;
    }
    let dns: Vec<Ipv4Addr> = eth0
        .dns
        .iter()
        .take(2)
        .filter_map(|d| d.parse().ok())
        .collect();
    if !dns.is_empty() {
        let etc = root.join("etc");
        let written = fs::create_dir_all(&etc)
            .and_then(|_| fs::write(etc.join("resolv.conf"), dhcp::resolv_conf(None, &dns)));
        if let Err(e) = written {
            log::warn!("cannot write resolv.conf: {e}");
        }
    }
    Ok(eth0)
}

/// The interface DHCP runs on: `eth0` (udhcpc's default), else the first non-loopback one.
fn dhcp_interface(links: &[netlink::Link]) -> Option<&netlink::Link> {
    links
        .iter()
        .find(|l| l.name == "eth0")
        .or_else(|| links.iter().find(|l| !l.is_loopback()))
}

/// Brings the network up (everything of the phase except the console line).
pub fn configure(
    root: &Path,
    media: &Media,
    dhcp_config: &DhcpConfig,
) -> Result<NetworkState, NetworkError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    for l in links.iter().filter(|l| !l.is_loopback()) {
        if let Err(e) = nl.set_up(l.index, Some(INITIAL_MTU)) {
            log::warn!("cannot bring {} up: {e}", l.name);
        }
    }
    log::debug!("network: {} links up", links.len());
    let context_sh = find_context_sh(media);
    log::debug!("network: context.sh searched");
    if let Some((device, text)) = context_sh {
        log::info!("OpenNebula context.sh on {device}");
        match apply_static(&mut nl, &text, root) {
            Ok(c) => {
                return Ok(NetworkState {
                    interface: Some(c.device.clone()),
                    method: NetworkMethod::Static(c),
                })
            }
            Err(e) => log::warn!("static network from {device} failed, trying DHCP: {e}"),
        }
    }
    let mut log_lines = Vec::new();
    let Some(link) = dhcp_interface(&links) else {
        log_lines.push("no network interface".to_string());
        write_log(root, "udhcpc.log", &log_lines.join("\n"));
        return Ok(NetworkState::default());
    };
    let result =
        dhcp::obtain_lease(&link.name, &link.mac, dhcp_config, &mut log_lines).and_then(|lease| {
            log::debug!("network: DHCP lease obtained");
            dhcp::apply_lease(&mut nl, link.index, &lease, root, &mut log_lines)?;
            Ok(lease)
        });
    write_log(root, "udhcpc.log", &(log_lines.join("\n") + "\n"));
    match result {
        Ok(lease) => Ok(NetworkState {
            interface: Some(link.name.clone()),
            method: NetworkMethod::Dhcp(lease),
        }),
        Err(e) => {
            log::warn!("{e}");
            Ok(NetworkState {
                interface: Some(link.name.clone()),
                method: NetworkMethod::Unconfigured,
            })
        }
    }
}

fn write_log(root: &Path, name: &str, text: &str) {
    let dir = root.join("var/log");
    if let Err(e) = fs::create_dir_all(&dir).and_then(|_| fs::write(dir.join(name), text)) {
        log::warn!("cannot write /var/log/{name}: {e}");
    }
}

/// `/var/log/network.log`: interfaces, routing table, resolv.conf (spec §3.3).
pub fn network_report(root: &Path) -> String {
    let mut s = String::new();
    match Netlink::open().and_then(|mut nl| Ok((nl.links()?, nl.addresses(None)?, nl.routes()?))) {
        Ok((links, addrs, routes)) => {
            for l in &links {
                let _ = writeln!(
                    s,
                    "{}: mac {} mtu {} {}",
                    l.name,
                    l.mac_string(),
                    l.mtu,
                    if l.is_up() { "UP" } else { "DOWN" }
                );
                for a in addrs.iter().filter(|a| a.index == l.index) {
                    let _ = writeln!(
                        s,
                        "    inet {}/{} brd {}",
                        a.address,
                        a.prefix,
                        a.broadcast.map(|b| b.to_string()).unwrap_or("-".into())
                    );
                }
            }
            let _ = writeln!(s, "\nKernel IP routing table\nDestination     Gateway         Genmask         Metric Iface");
            for r in &routes {
                let iface = r
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map(|l| l.name.as_str())
                    .unwrap_or("*");
                let _ = writeln!(
                    s,
                    "{:<15} {:<15} {:<15} {:<6} {iface}",
                    r.destination.to_string(),
                    r.gateway.map(|g| g.to_string()).unwrap_or("0.0.0.0".into()),
                    netlink::mask_of(r.prefix).to_string(),
                    r.metric
                );
            }
        }
        Err(e) => {
            let _ = writeln!(s, "cannot list the network: {e}");
        }
    }
    let _ = writeln!(s, "\n/etc/resolv.conf:");
    s.push_str(&fs::read_to_string(root.join("etc/resolv.conf")).unwrap_or_default());
    s
}

/// Spec §3: configures the network of the initramfs `root`, with the OpenNebula `context.sh`
/// looked for on `media`. A failure is reported and leaves the network unconfigured (the boot
/// goes on: local repositories and media need none).
pub fn up(root: &Path, media: &Media) -> NetworkState {
    console::begin("Starting networking...");
    let state = match configure(root, media, &DhcpConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("network: {e}");
            NetworkState::default()
        }
    };
    write_log(root, "network.log", &network_report(root));
    match &state.method {
        NetworkMethod::Static(_) => console::result("(using static network settings) check"),
        NetworkMethod::Dhcp(_) => console::check(),
        NetworkMethod::Unconfigured => console::failed(),
    }
    state
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
        let c0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.set_up(c0.index, Some(1460)).unwrap();
        assert_eq!(nl.link_by_name("eth0").unwrap().unwrap().mtu, 1460);
        let mut log = Vec::new();
        let lease = dhcp::obtain_lease("eth0", &c0.mac, &fast(), &mut log)
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
        assert_eq!(nl.link_by_name("eth0").unwrap().unwrap().mtu, 1400);
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

    /// GCE hands out /32 addresses: the router is not on-link until a host route to it exists.
    #[test]
    fn host_route_to_the_router_for_a_32_bit_netmask() {
        let mut lab = Lab::new();
        lab.start_dhcp(&["option:netmask,255.255.255.255", "option:router,10.77.0.1"]);
        let mut nl = Netlink::open().unwrap();
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.set_up(eth0.index, None).unwrap();
        let mut log = Vec::new();
        let lease = dhcp::obtain_lease("eth0", &eth0.mac, &fast(), &mut log).unwrap();
        assert_eq!(lease.prefix(), 32);
        let root = tempfile::tempdir().unwrap();
        dhcp::apply_lease(&mut nl, eth0.index, &lease, root.path(), &mut log).unwrap();
        let routes = nl.routes().unwrap();
        assert!(
            routes.iter().any(|r| r.prefix == 32
                && r.destination == Ipv4Addr::new(10, 77, 0, 1)
                && r.gateway.is_none()),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r.prefix == 0 && r.gateway == Some(Ipv4Addr::new(10, 77, 0, 1))),
            "{routes:?} {log:#?}"
        );
    }

    #[test]
    fn no_server_means_no_lease_after_the_attempts() {
        let _lab = Lab::new();
        let mut nl = Netlink::open().unwrap();
        let c0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.set_up(c0.index, None).unwrap();
        let mut log = Vec::new();
        let cfg = DhcpConfig {
            discover_attempts: 2,
            reply_timeout: Duration::from_millis(300),
            request_attempts: 1,
        };
        let e = dhcp::obtain_lease("eth0", &c0.mac, &cfg, &mut log).unwrap_err();
        assert!(
            e.to_string().contains("no DHCP lease on eth0 after 2"),
            "{e}"
        );
        assert_eq!(log.iter().filter(|l| *l == "sending discover").count(), 2);
    }

    #[test]
    fn netlink_configures_links_addresses_and_routes() {
        let _lab = Lab::new();
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo" && l.is_loopback()));
        let c0 = links.iter().find(|l| l.name == "eth0").unwrap().clone();
        assert!(!c0.is_up());
        assert_eq!(c0.mac.len(), 6);
        nl.set_up(c0.index, Some(1460)).unwrap();
        let up = nl.link_by_name("eth0").unwrap().unwrap();
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

#[cfg(test)]
mod phase_tests {
    use super::*;
    use crate::network::testlab::Lab;
    use std::time::Duration;

    fn fast() -> DhcpConfig {
        DhcpConfig {
            discover_attempts: 5,
            reply_timeout: Duration::from_secs(2),
            request_attempts: 2,
        }
    }

    fn context_cd(dir: &Path, text: &str) -> Media {
        let cd = dir.join("cd");
        fs::create_dir_all(&cd).unwrap();
        fs::write(cd.join("context.sh"), text).unwrap();
        Media::Fixtures(vec![("sr0".into(), FsType::Iso9660, cd)])
    }

    #[test]
    fn dhcp_when_there_is_no_context_cd() {
        let mut lab = Lab::new();
        lab.start_dhcp(&["option:router,10.77.0.1", "option:dns-server,10.77.0.53"]);
        let root = tempfile::tempdir().unwrap();
        let state = configure(root.path(), &Media::Fixtures(vec![]), &fast()).unwrap();
        assert_eq!(state.interface.as_deref(), Some("eth0"));
        assert_eq!(state.dhcp_server(), Some(Ipv4Addr::new(10, 77, 0, 1)));
        let udhcpc = fs::read_to_string(root.path().join("var/log/udhcpc.log")).unwrap();
        assert!(
            udhcpc.contains("sending discover") && udhcpc.contains("obtained"),
            "{udhcpc}"
        );
        let report = network_report(root.path());
        assert!(report.contains("eth0: mac"), "{report}");
        assert!(report.contains("0.0.0.0         10.77.0.1"), "{report}");
        assert!(report.contains("nameserver 10.77.0.53"), "{report}");
    }

    #[test]
    fn opennebula_context_cd_configures_eth0_statically() {
        let _lab = Lab::new(); // no DHCP server: static configuration must not need one
        let mac = Netlink::open()
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .unwrap()
            .mac_string();
        let root = tempfile::tempdir().unwrap();
        let media = context_cd(
            root.path(),
            &format!("ETH0_MAC='{}'\nETH0_IP='10.77.0.9'\nETH0_GATEWAY='10.77.0.1'\nDNS='10.77.0.53 10.77.0.54 10.77.0.55'\n", mac.to_uppercase()),
        );
        let state = configure(root.path(), &media, &fast()).unwrap();
        assert!(
            matches!(state.method, NetworkMethod::Static(_)),
            "{state:?}"
        );
        let mut nl = Netlink::open().unwrap();
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(
            nl.addresses(Some(eth0.index)).unwrap()[0].address,
            Ipv4Addr::new(10, 77, 0, 9)
        );
        assert!(nl
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(Ipv4Addr::new(10, 77, 0, 1))));
        let ifcfg =
            fs::read_to_string(root.path().join("etc/sysconfig/network-scripts/ifcfg-eth0"))
                .unwrap();
        assert!(
            ifcfg.contains("IPADDR=10.77.0.9\nGATEWAY=10.77.0.1\n"),
            "{ifcfg}"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 10.77.0.53\nnameserver 10.77.0.54\n"
        );
    }

    #[test]
    fn context_cd_for_another_vm_falls_back_to_dhcp() {
        let mut lab = Lab::new();
        lab.start_dhcp(&["option:router,10.77.0.1"]);
        let root = tempfile::tempdir().unwrap();
        let media = context_cd(root.path(), "ETH0_MAC='02:00:01:02:03:04'\n");
        let state = configure(root.path(), &media, &fast()).unwrap();
        assert!(matches!(state.method, NetworkMethod::Dhcp(_)), "{state:?}");
    }

    #[test]
    fn every_interface_comes_up_with_mtu_1460() {
        let _lab = Lab::new();
        crate::network::testlab::run(&[
            "ip", "link", "add", "name", "eth1", "type", "veth", "peer", "name", "p1",
        ]);
        let root = tempfile::tempdir().unwrap();
        let cfg = DhcpConfig {
            discover_attempts: 1,
            reply_timeout: Duration::from_millis(200),
            request_attempts: 1,
        };
        let state = configure(root.path(), &Media::Fixtures(vec![]), &cfg).unwrap();
        assert_eq!(state.method, NetworkMethod::Unconfigured);
        let mut nl = Netlink::open().unwrap();
        for name in ["eth0", "eth1", "p1"] {
            let l = nl.link_by_name(name).unwrap().unwrap();
            assert!(l.is_up() && l.mtu == INITIAL_MTU, "{l:?}");
        }
    }
}
