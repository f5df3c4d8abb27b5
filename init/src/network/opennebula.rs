//! OpenNebula `context.sh`: the assignment parser (shared with the OpenNebula user-data
//! source) and the static network configuration of spec §3.1.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Reads the shell assignments of a `context.sh` without executing it: `NAME=value`,
/// `NAME="value"`, `NAME='value'` (values may span lines inside quotes; `'\''` sequences and
/// backslash escapes work as in the shell), optional `export`. Later assignments win; anything
/// else (comments, commands) is skipped.
pub fn parse_context_sh(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut c = Cursor {
        chars: &chars,
        i: 0,
    };
    loop {
        // start of a statement: skip blanks
        while c
            .peek()
            .is_some_and(|ch| matches!(ch, ' ' | '\t' | '\n' | ';'))
        {
            c.i += 1;
        }
        let Some(first) = c.peek() else {
            break;
        };
        if first == '#' {
            c.skip_line();
            continue;
        }
        let mut name = String::new();
        while let Some(ch) = c
            .peek()
            .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '_' || *ch == '-')
        {
            name.push(ch);
            c.i += 1;
        }
        if name == "export" && c.peek() == Some(' ') {
            continue;
        }
        if name.is_empty() || c.peek() != Some('=') {
            c.skip_line();
            continue;
        }
        c.i += 1;
        vars.insert(name, c.shell_word());
    }
    vars
}

/// A position in the text of a `context.sh`.
struct Cursor<'a> {
    chars: &'a [char],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn skip_line(&mut self) {
        while self.peek().is_some_and(|c| c != '\n') {
            self.i += 1;
        }
    }

    /// One shell word starting here (quotes removed, escapes resolved).
    fn shell_word(&mut self) -> String {
        let mut out = String::new();
        loop {
            match self.peek() {
                None | Some(' ' | '\t' | '\n' | ';') => break,
                Some('\'') => {
                    self.i += 1;
                    while let Some(ch) = self.bump() {
                        if ch == '\'' {
                            break;
                        }
                        out.push(ch);
                    }
                }
                Some('"') => {
                    self.i += 1;
                    while let Some(ch) = self.bump() {
                        match ch {
                            '"' => break,
                            '\\' if matches!(self.peek(), Some('"' | '\\' | '$' | '`' | '\n')) => {
                                // a backslash-newline inside quotes is a line continuation
                                if let Some(next) = self.bump().filter(|n| *n != '\n') {
                                    out.push(next);
                                }
                            }
                            _ => out.push(ch),
                        }
                    }
                }
                Some('\\') if self.chars.get(self.i + 1).is_some() => {
                    self.i += 1;
                    if let Some(next) = self.bump().filter(|n| *n != '\n') {
                        out.push(next);
                    }
                }
                Some(ch) => {
                    out.push(ch);
                    self.i += 1;
                }
            }
        }
        out
    }
}

/// The configuration of one context interface (`ETH<n>_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// `ETH0`, `ETH1`, …
    pub context_name: String,
    /// The kernel device with the context MAC.
    pub device: String,
    pub mac: String,
    pub ip: Option<Ipv4Addr>,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub ipv6: Option<String>,
    pub gateway6: Option<String>,
    pub dns: Vec<String>,
}

fn ip_from_mac(mac: &str) -> Option<Ipv4Addr> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [_, _, a, b, c, d] = <[u8; 6]>::try_from(bytes).ok()?;
    Some(Ipv4Addr::new(a, b, c, d))
}

fn first_three(ip: Ipv4Addr, last: u8) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

/// Computes the configuration of every context interface whose MAC matches a kernel device
/// (`links`: name and `aa:bb:…` MAC), following `one_network`'s defaults.
pub fn interface_configs(
    vars: &BTreeMap<String, String>,
    links: &[(String, String)],
) -> Vec<InterfaceConfig> {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    let mut out = Vec::new();
    let gateway_iface = get("GATEWAY_IFACE");
    for (key, mac) in vars {
        let Some(ctx) = key.strip_suffix("_MAC") else {
            continue;
        };
        if !ctx.starts_with("ETH") || mac.is_empty() {
            continue;
        }
        let Some((device, _)) = links.iter().find(|(_, m)| m.eq_ignore_ascii_case(mac)) else {
            log::info!("OpenNebula context: no interface with MAC {mac} for {ctx}");
            continue;
        };
        let ip = get(&format!("{ctx}_IP"))
            .and_then(|s| s.parse().ok())
            .or_else(|| ip_from_mac(mac));
        let network = get(&format!("{ctx}_NETWORK"))
            .and_then(|s| s.parse().ok())
            .or_else(|| ip.map(|i| first_three(i, 0)));
        let mask = get(&format!("{ctx}_MASK"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let gateway = if gateway_iface.as_deref().is_none_or(|g| g == ctx) {
            get(&format!("{ctx}_GATEWAY"))
                .and_then(|s| s.parse().ok())
                .or_else(|| {
                    (device == "eth0")
                        .then_some(())
                        .and(network.map(|n| first_three(n, 1)))
                })
        } else {
            None
        };
        let mut dns: Vec<String> = Vec::new();
        for k in ["DNS".to_string(), format!("{ctx}_DNS")] {
            if let Some(v) = get(&k) {
                dns.extend(v.split_whitespace().map(str::to_string));
            }
        }
        out.push(InterfaceConfig {
            context_name: ctx.to_string(),
            device: device.clone(),
            mac: mac.to_lowercase(),
            ip,
            mask,
            gateway,
            ipv6: get(&format!("{ctx}_IPV6")).or_else(|| get(&format!("{ctx}_IP6"))),
            gateway6: get(&format!("{ctx}_GATEWAY6")),
            dns,
        });
    }
    out
}

/// `/etc/sysconfig/network-scripts/ifcfg-<dev>` in RHEL format (the OS copies it).
pub fn ifcfg(c: &InterfaceConfig, force_ipv4: bool) -> String {
    let mut s = format!(
        "DEVICE={}\nBOOTPROTO=none\nONBOOT=yes\nNM_CONTROLLED=no\nTYPE=Ethernet\nHWADDR={}\nPEERDNS=yes\n",
        c.device, c.mac
    );
    if c.ipv6.is_none() || force_ipv4 {
        if let Some(ip) = c.ip {
            s.push_str(&format!("NETMASK={}\nIPADDR={ip}\n", c.mask));
            if let Some(g) = c.gateway {
                s.push_str(&format!("GATEWAY={g}\n"));
            }
        }
    }
    if let Some(v6) = &c.ipv6 {
        s.push_str(&format!("IPV6INIT=yes\nIPV6ADDR={v6}\n"));
        if let Some(g) = &c.gateway6 {
            s.push_str(&format!("IPV6_DEFAULTGW={g}\n"));
        }
    }
    for (n, d) in c.dns.iter().enumerate() {
        s.push_str(&format!("DNS{}={d}\n", n + 1));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_in_every_quoting_style() {
        let v = parse_context_sh(
            "# Context variables generated by OpenNebula\n\
             DISK_ID='1'\nETH0_IP=\"10.1.2.3\"\nexport PLAIN=abc\n\
             MULTI='line one\nline two'\nQUOTE='it'\\''s'\nESC=\"a\\\"b\"\n\
             echo not an assignment\nDISK_ID='2'\nEMPTY=\n",
        );
        assert_eq!(v["DISK_ID"], "2");
        assert_eq!(v["ETH0_IP"], "10.1.2.3");
        assert_eq!(v["PLAIN"], "abc");
        assert_eq!(v["MULTI"], "line one\nline two");
        assert_eq!(v["QUOTE"], "it's");
        assert_eq!(v["ESC"], "a\"b");
        assert_eq!(v["EMPTY"], "");
        assert!(!v.contains_key("echo"));
    }

    #[test]
    fn unterminated_quote_takes_the_rest() {
        let v = parse_context_sh("A='never closed\nB=1\n");
        assert_eq!(v["A"], "never closed\nB=1\n");
    }

    fn links() -> Vec<(String, String)> {
        vec![
            ("eth0".into(), "02:00:0a:01:02:03".into()),
            ("eth1".into(), "02:00:c0:a8:00:07".into()),
        ]
    }

    #[test]
    fn defaults_derive_from_the_mac() {
        let vars = parse_context_sh("ETH0_MAC='02:00:0A:01:02:03'\nDNS='8.8.8.8 8.8.4.4'\nETH1_MAC=02:00:c0:a8:00:07\nETH2_MAC=02:00:00:00:00:99\n");
        let c = interface_configs(&vars, &links());
        assert_eq!(c.len(), 2, "ETH2 has no device");
        assert_eq!(c[0].device, "eth0");
        assert_eq!(c[0].ip, Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(c[0].gateway, Some(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(c[0].dns, ["8.8.8.8", "8.8.4.4"]);
        assert_eq!(c[1].ip, Some(Ipv4Addr::new(192, 168, 0, 7)));
        assert_eq!(c[1].gateway, None, "derived gateways only for eth0");
        assert_eq!(
            ifcfg(&c[0], false),
            "DEVICE=eth0\nBOOTPROTO=none\nONBOOT=yes\nNM_CONTROLLED=no\nTYPE=Ethernet\n\
             HWADDR=02:00:0a:01:02:03\nPEERDNS=yes\nNETMASK=255.255.255.0\nIPADDR=10.1.2.3\n\
             GATEWAY=10.1.2.1\nDNS1=8.8.8.8\nDNS2=8.8.4.4\n"
        );
    }

    #[test]
    fn explicit_values_and_gateway_interface() {
        let vars = parse_context_sh(
            "ETH0_MAC=02:00:0a:01:02:03\nETH0_IP=172.16.5.9\nETH0_MASK=255.255.0.0\n\
             ETH0_GATEWAY=172.16.0.254\nETH1_MAC=02:00:c0:a8:00:07\nETH1_GATEWAY=192.168.0.1\n\
             GATEWAY_IFACE=ETH1\n",
        );
        let c = interface_configs(&vars, &links());
        assert_eq!(c[0].ip, Some(Ipv4Addr::new(172, 16, 5, 9)));
        assert_eq!(c[0].mask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(c[0].gateway, None);
        assert_eq!(c[1].gateway, Some(Ipv4Addr::new(192, 168, 0, 1)));
    }
}
