//! User-data sources (spec §5.1–5.5): local media first (ConfigDrive, OpenNebula, vSphere,
//! Azure), then the metadata services that answer a port probe (GCE, EC2, OpenStack,
//! CloudStack). The first source that has user data wins; its data is gunzipped, saved as
//! `/user-data`, its µCernVM block parsed into `/ucontext` and into the typed settings.

use cvmfs_config::keys::{CVMFS_HTTP_PROXY, CVMFS_PAC_URLS};
use std::fmt;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use super::glidein::{self, GlideinContext};
use super::media::{FsType, Media};
use super::user_data::{decode_user_data, MAX_DECOMPRESSED};
use super::{mime, write_ucontext, ContextEntry};
use crate::console;
use crate::http::{self, Timeouts};
use crate::network::opennebula::parse_context_sh;
use crate::settings::ContextSettings;

/// Where the user data came from. The names are exact: they are saved to `context/source` and
/// compared by the OS (spec §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ConfigDrive,
    OpenNebula,
    VSphere,
    Azure,
    Gce,
    Ec2,
    OpenStack,
    CloudStack,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::ConfigDrive => "ConfigDrive",
            Source::OpenNebula => "OpenNebula",
            Source::VSphere => "vSphere",
            Source::Azure => "Azure",
            Source::Gce => "GCE",
            Source::Ec2 => "EC2",
            Source::OpenStack => "OpenStack",
            Source::CloudStack => "CloudStack",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `UCONTEXT_SRC` when nothing was found.
pub const NO_SOURCE: &str = "(none)";

/// User data as a source delivered it (before gunzip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub source: Source,
    pub raw: Vec<u8>,
    /// The Azure UDF device (`AZURE_ISO`, saved by the epilog, spec §8).
    pub azure_device: Option<String>,
}

/// The verbose trace that ends up in `/var/log/context.log`.
#[derive(Debug, Default)]
pub struct Trace(pub Vec<String>);

impl Trace {
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        log::info!("context: {line}");
        self.0.push(line);
    }

    /// A problem with the user data the user should see on the console too.
    pub fn warn(&mut self, line: impl Into<String>) {
        let line = line.into();
        log::warn!("context: {line}");
        self.0.push(line);
    }
}

const AZURE_TAG: &str = "E6DA6616-8EC4-48E0-BE93-58CE6ACE3CFB.tag";

/// Reads a file from a medium, refusing anything larger than user data may be.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_DECOMPRESSED} bytes"
        )));
    }
    Ok(out)
}

/// `EC2_USER_DATA` of an OpenNebula `context.sh`, base64-decoded. Missing, empty or undecodable
/// values give empty user data (the source still counts as found, as in the original).
pub fn opennebula_user_data(context_sh: &str, trace: &mut Trace) -> Vec<u8> {
    let vars = parse_context_sh(context_sh);
    let Some(v) = vars.get("EC2_USER_DATA") else {
        trace.note("OpenNebula: no EC2_USER_DATA in context.sh, empty user data");
        return Vec::new();
    };
    let cleaned: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    match engine.decode(cleaned.as_bytes()) {
        Ok(d) => d,
        Err(e) => {
            trace.warn(format!(
                "OpenNebula: EC2_USER_DATA is not valid base64 ({e}); using empty user data"
            ));
            Vec::new()
        }
    }
}

/// Local sources #1–#4 in order; each scans every medium of its file-system types.
pub fn find_local(media: &Media, trace: &mut Trace) -> Option<Found> {
    let iso_fat: &[FsType] = &[FsType::Iso9660, FsType::Vfat];
    let mut found: Option<Found> = None;

    // 1. OpenStack config drive
    media.scan(Some(iso_fat), &mut |dev, _, dir| match read_limited(
        &dir.join("openstack/latest/user_data"),
    ) {
        Ok(d) => {
            trace.note(format!("ConfigDrive: user data on {dev}"));
            found = Some(Found {
                source: Source::ConfigDrive,
                raw: d,
                azure_device: None,
            });
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            trace.note(format!("ConfigDrive on {dev}: cannot read user_data: {e}"));
            false
        }
    });
    if found.is_some() {
        return found;
    }

    // 2. OpenNebula context.sh
    media.scan(Some(iso_fat), &mut |dev, _, dir| {
        let path = dir.join("context.sh");
        if !path.exists() {
            return false;
        }
        match read_limited(&path) {
            Ok(text) => {
                trace.note(format!("OpenNebula: context.sh on {dev}"));
                let raw = opennebula_user_data(&String::from_utf8_lossy(&text), trace);
                found = Some(Found {
                    source: Source::OpenNebula,
                    raw,
                    azure_device: None,
                });
                true
            }
            Err(e) => {
                trace.note(format!("OpenNebula on {dev}: cannot read context.sh: {e}"));
                false
            }
        }
    });
    if found.is_some() {
        return found;
    }

    // 3. vSphere (ISO 9660 only)
    media.scan(
        Some(&[FsType::Iso9660]),
        &mut |dev, _, dir| match read_limited(&dir.join("user-data.txt")) {
            Ok(d) => {
                trace.note(format!("vSphere: user-data.txt on {dev}"));
                found = Some(Found {
                    source: Source::VSphere,
                    raw: d,
                    azure_device: None,
                });
                true
            }
            Err(_) => false,
        },
    );
    if found.is_some() {
        return found;
    }

    // 4. Azure (UDF only)
    media.scan(Some(&[FsType::Udf]), &mut |dev, _, dir| {
        if !dir.join(AZURE_TAG).exists() {
            return false;
        }
        let raw = match read_limited(&dir.join("CustomData.bin")) {
            Ok(d) => d,
            Err(e) => {
                trace.note(format!(
                    "Azure on {dev}: no CustomData.bin ({e}), empty user data"
                ));
                Vec::new()
            }
        };
        trace.note(format!("Azure: tag file on {dev}"));
        found = Some(Found {
            source: Source::Azure,
            raw,
            azure_device: Some(format!("/dev/{dev}")),
        });
        true
    });
    found
}

/// The metadata service addresses (production values in [`MetadataEndpoints::cloud`]).
#[derive(Debug, Clone)]
pub struct MetadataEndpoints {
    /// `169.254.169.254:80` (GCE, EC2, OpenStack)
    pub link_local: SocketAddr,
    /// `10.1.1.1:80` (CloudStack)
    pub cloudstack: SocketAddr,
    /// The DHCP server (CloudStack's virtual router), if known.
    pub dhcp_server: Option<SocketAddr>,
    /// Port probe timeout (2 s).
    pub probe_timeout: Duration,
    pub http: Timeouts,
}

impl MetadataEndpoints {
    pub fn cloud(dhcp_server: Option<Ipv4Addr>) -> Self {
        MetadataEndpoints {
            link_local: SocketAddr::from(([169, 254, 169, 254], 80)),
            cloudstack: SocketAddr::from(([10, 1, 1, 1], 80)),
            dhcp_server: dhcp_server.map(|ip| SocketAddr::from((ip, 80))),
            probe_timeout: Duration::from_secs(2),
            http: Timeouts::default(),
        }
    }
}

/// What asking one metadata service gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// The user data, or empty user data when only the "exists" URL answered.
    UserData(Vec<u8>),
    /// The service is not there (errors, refused connections).
    NotThere,
    /// The host accepted the connection but sent no complete answer in time: asking it for
    /// other services would only wait again.
    Unresponsive,
}

/// The original's `download_userdata` (spec §5.4): the user data URL, then the "exists" URL.
pub fn download_user_data(
    addr: SocketAddr,
    user_data_path: &str,
    exists_path: &str,
    headers: &[(&str, &str)],
    limits: Timeouts,
    trace: &mut Trace,
) -> Download {
    match http::get(addr, user_data_path, headers, limits) {
        Ok(body) => return Download::UserData(body),
        Err(e @ http::HttpError::Timeout { .. }) => {
            trace.note(format!("{e}"));
            return Download::Unresponsive;
        }
        Err(e) => trace.note(format!("{e}")),
    }
    match http::get(addr, exists_path, headers, limits) {
        Ok(_) => {
            trace.note(format!(
                "{addr}{exists_path} answers: cloud without user data"
            ));
            Download::UserData(Vec::new())
        }
        Err(e @ http::HttpError::Timeout { .. }) => {
            trace.note(format!("{e}"));
            Download::Unresponsive
        }
        Err(e) => {
            trace.note(format!("{e}"));
            Download::NotThere
        }
    }
}

/// One metadata service at 169.254.169.254 (spec §5.2 table).
struct MetadataService {
    source: Source,
    user_data: &'static str,
    exists: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

/// In the original's order; OpenStack has two layouts.
const LINK_LOCAL_SERVICES: [MetadataService; 4] = [
    MetadataService {
        source: Source::Gce,
        user_data: "/computeMetadata/v1/instance/attributes/user-data",
        exists: "/computeMetadata/v1/instance/id",
        headers: &[("X-Google-Metadata-Request", "True")],
    },
    MetadataService {
        source: Source::Ec2,
        user_data: "/2016-04-19/user-data",
        exists: "/2016-04-19/meta-data/ami-id",
        headers: &[],
    },
    MetadataService {
        source: Source::OpenStack,
        user_data: "/openstack/2013-10-17/user_data",
        exists: "/openstack/2013-10-17/meta_data.json",
        headers: &[],
    },
    MetadataService {
        source: Source::OpenStack,
        user_data: "/latest/user-data",
        exists: "/latest/meta-data/ami-id",
        headers: &[],
    },
];

/// EC2 instances that require IMDSv2 refuse the unauthenticated requests: ask for a session
/// token (PUT) and repeat them with it (spec §5.4 recommendation; after the v1 path, so
/// nothing changes where v1 works).
fn ec2_with_token(ep: &MetadataEndpoints, trace: &mut Trace) -> Option<Vec<u8>> {
    let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "300")];
    let token = match http::put_empty(ep.link_local, "/latest/api/token", &ttl, ep.http) {
        Ok(t) => String::from_utf8(t).ok()?.trim().to_string(),
        Err(e) => {
            trace.note(format!("no IMDSv2 token: {e}"));
            return None;
        }
    };
    if token.is_empty() || token.contains(['\r', '\n']) {
        trace.note("IMDSv2 token unusable");
        return None;
    }
    let auth = [("X-aws-ec2-metadata-token", token.as_str())];
    match download_user_data(
        ep.link_local,
        "/latest/user-data",
        "/latest/meta-data/ami-id",
        &auth,
        ep.http,
        trace,
    ) {
        Download::UserData(d) => Some(d),
        _ => None,
    }
}

/// Network sources #6–#9, gated by the port probe.
pub fn find_metadata(ep: &MetadataEndpoints, trace: &mut Trace) -> Option<Found> {
    let mut targets = vec![ep.link_local, ep.cloudstack];
    targets.extend(ep.dhcp_server);
    let mask = http::port_probe(&targets, ep.probe_timeout);
    trace.note(format!("port probe {targets:?}: mask {mask}"));
    let found = |source, raw| {
        Some(Found {
            source,
            raw,
            azure_device: None,
        })
    };
    if mask & 1 != 0 {
        for m in &LINK_LOCAL_SERVICES {
            match download_user_data(
                ep.link_local,
                m.user_data,
                m.exists,
                m.headers,
                ep.http,
                trace,
            ) {
                Download::UserData(d) => return found(m.source, d),
                Download::NotThere if m.source == Source::Ec2 => {
                    if let Some(d) = ec2_with_token(ep, trace) {
                        return found(Source::Ec2, d);
                    }
                }
                Download::NotThere => {}
                Download::Unresponsive => {
                    trace.warn(format!(
                        "{} does not answer; its other services are not asked",
                        ep.link_local
                    ));
                    break;
                }
            }
        }
    }
    // CloudStack: the fixed address, then the DHCP server (spec §5.2 #9). Unlike the
    // original, a host whose port probe failed is not asked (it would cost the 16 s connect
    // timeout and cannot answer).
    let hosts = [(1, Some(ep.cloudstack)), (2, ep.dhcp_server)];
    for (bit, host) in hosts {
        let Some(host) = host.filter(|_| mask & (1 << bit) != 0) else {
            continue;
        };
        if let Download::UserData(d) = download_user_data(
            host,
            "/latest/user-data",
            "/latest/meta-data/instance-id",
            &[],
            ep.http,
            trace,
        ) {
            return found(Source::CloudStack, d);
        }
    }
    None
}

/// What contextualization found (for the epilog).
#[derive(Debug, Clone, Default)]
pub struct Contextualized {
    pub source: Option<Source>,
    /// Decompressed user data (what `/user-data` holds).
    pub user_data: Vec<u8>,
    pub entries: Vec<ContextEntry>,
    pub glidein: Option<GlideinContext>,
    pub azure_device: Option<String>,
}

impl Contextualized {
    /// `UCONTEXT_SRC`
    pub fn source_name(&self) -> &'static str {
        self.source.map(Source::name).unwrap_or(NO_SOURCE)
    }
}

fn write_file(root: &Path, name: &str, data: &[u8], trace: &mut Trace) {
    if let Err(e) = fs::write(root.join(name), data) {
        trace.note(format!("cannot write /{name}: {e}"));
    }
}

/// Spec §5.5: gunzip, `/user-data`, `/ucontext`, glideinWMS, typed settings.
pub fn process(
    found: Option<Found>,
    root: &Path,
    trace: &mut Trace,
) -> (Contextualized, ContextSettings) {
    let Some(found) = found else {
        return (Contextualized::default(), ContextSettings::default());
    };
    let (data, problem) = decode_user_data(&found.raw);
    if let Some(p) = problem {
        trace.warn(format!("{p}; keeping the raw bytes"));
    }
    write_file(root, "user-data", &data, trace);
    let entries = mime::scan_user_data(&data);
    let mut settings = ContextSettings::from_entries(&entries);
    let mut ucontext = Vec::new();
    let _ = write_ucontext(&entries, &mut ucontext);
    let mut glidein_ctx = None;
    if !settings.use_glidein_wms {
        trace.note("glideinWMS autodetect disabled by configuration");
    } else if let Some(g) = glidein::detect(&data) {
        trace.note("glideinWMS user data detected");
        for (key, value) in [(CVMFS_HTTP_PROXY, &g.proxy), (CVMFS_PAC_URLS, &g.pac_urls)] {
            if let Some(v) = value {
                ucontext.extend_from_slice(format!("_UCONTEXT_{key}={v}\n").as_bytes());
                settings.apply(key, v);
            }
        }
        write_file(root, "glideinwms-user-data", &data, trace);
        glidein_ctx = Some(g);
    }
    write_file(root, "ucontext", &ucontext, trace);
    trace.note(format!(
        "{} bytes of user data from {}, {} µCernVM settings",
        data.len(),
        found.source,
        entries.len()
    ));
    (
        Contextualized {
            source: Some(found.source),
            user_data: data,
            entries,
            glidein: glidein_ctx,
            azure_device: found.azure_device,
        },
        settings,
    )
}

/// Every source in order: local media, then metadata services.
pub fn find(media: &Media, endpoints: &MetadataEndpoints, trace: &mut Trace) -> Option<Found> {
    find_local(media, trace).or_else(|| find_metadata(endpoints, trace))
}

/// The DHCP server of the lease, else the one remembered in `/var/lib/dhcp-server`.
fn remembered_dhcp_server(root: &Path, lease_server: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    lease_server.or_else(|| {
        fs::read_to_string(root.join("var/lib/dhcp-server"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// The outcome of the context phase: what was found, and the settings it holds (the extra
/// context phase adds its own).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub found: Contextualized,
    pub settings: ContextSettings,
}

/// Spec §5.1 (first boot only): looks for user data on local `media` and metadata services
/// (CloudStack's at `dhcp_server`, the DHCP server of the network phase's lease), and leaves
/// what it found in the initramfs `root`.
pub fn contextualize(root: &Path, media: &Media, dhcp_server: Option<Ipv4Addr>) -> Context {
    console::begin("Contextualizing VM...");
    let mut trace = Trace::default();
    let endpoints = MetadataEndpoints::cloud(remembered_dhcp_server(root, dhcp_server));
    let found = find(media, &endpoints, &mut trace);
    let (found, settings) = process(found, root, &mut trace);
    let log_dir = root.join("var/log");
    let _ = fs::create_dir_all(&log_dir);
    if let Err(e) = fs::write(log_dir.join("context.log"), trace.0.join("\n") + "\n") {
        log::warn!("cannot write /var/log/context.log: {e}");
    }
    console::result(found.source_name());
    Context { found, settings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testserver::{ok, Answer, Server};
    use std::path::PathBuf;
    use std::time::Instant;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/media")
            .join(name)
    }

    fn media(list: &[(&str, FsType, &str)]) -> Media {
        Media::Fixtures(
            list.iter()
                .map(|(dev, t, f)| (dev.to_string(), *t, fixture(f)))
                .collect(),
        )
    }

    #[test]
    fn config_drive_is_read_verbatim() {
        let mut t = Trace::default();
        let f = find_local(&media(&[("vdb", FsType::Vfat, "configdrive")]), &mut t).unwrap();
        assert_eq!(f.source, Source::ConfigDrive);
        assert_eq!(
            f.raw,
            fs::read(fixture("configdrive/openstack/latest/user_data")).unwrap()
        );
    }

    #[test]
    fn source_order_beats_device_order() {
        let m = media(&[
            ("sr0", FsType::Iso9660, "opennebula"),
            ("sr1", FsType::Iso9660, "vsphere"),
            ("vdb", FsType::Iso9660, "configdrive"),
        ]);
        let f = find_local(&m, &mut Trace::default()).unwrap();
        assert_eq!(f.source, Source::ConfigDrive);
        let m = media(&[
            ("sr0", FsType::Iso9660, "vsphere"),
            ("sr1", FsType::Iso9660, "opennebula"),
        ]);
        assert_eq!(
            find_local(&m, &mut Trace::default()).unwrap().source,
            Source::OpenNebula
        );
    }

    #[test]
    fn opennebula_user_data_is_base64_decoded() {
        let m = media(&[("sr0", FsType::Iso9660, "opennebula")]);
        let f = find_local(&m, &mut Trace::default()).unwrap();
        assert_eq!(f.source, Source::OpenNebula);
        assert!(f.raw.starts_with(b"[ucernvm-begin]\nuse_boothd=yes\n"));
    }

    #[test]
    fn opennebula_bad_or_missing_base64_gives_empty_user_data_and_a_log_line() {
        let mut t = Trace::default();
        assert!(opennebula_user_data("EC2_USER_DATA='not*base64!'\n", &mut t).is_empty());
        assert!(
            t.0.iter().any(|l| l.contains("not valid base64")),
            "{:?}",
            t.0
        );
        let mut t = Trace::default();
        assert!(opennebula_user_data("DISK_ID=1\n", &mut t).is_empty());
        assert!(t.0.iter().any(|l| l.contains("no EC2_USER_DATA")));
        // line-wrapped and unpadded base64 is accepted
        assert_eq!(
            opennebula_user_data("EC2_USER_DATA=\"aGVs\nbG8\"\n", &mut Trace::default()),
            b"hello"
        );
    }

    #[test]
    fn vsphere_needs_iso9660_and_azure_needs_udf() {
        assert!(find_local(
            &media(&[("vdb", FsType::Vfat, "vsphere")]),
            &mut Trace::default()
        )
        .is_none());
        let f = find_local(
            &media(&[("sr0", FsType::Iso9660, "vsphere")]),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(f.source, Source::VSphere);
        assert!(find_local(
            &media(&[("sr0", FsType::Iso9660, "azure")]),
            &mut Trace::default()
        )
        .is_none());
        let f = find_local(
            &media(&[("sr1", FsType::Udf, "azure")]),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(f.source, Source::Azure);
        assert_eq!(f.azure_device.as_deref(), Some("/dev/sr1"));
        assert!(f.raw.starts_with(b"[ucernvm-begin]\ncvmfs_tag=azure-tag"));
    }

    #[test]
    fn azure_tag_without_custom_data_is_found_with_empty_user_data() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(AZURE_TAG), b"").unwrap();
        let m = Media::Fixtures(vec![("sr0".into(), FsType::Udf, d.path().to_path_buf())]);
        let f = find_local(&m, &mut Trace::default()).unwrap();
        assert_eq!((f.source, f.raw.len()), (Source::Azure, 0));
    }

    #[test]
    fn no_medium_with_context() {
        let m = media(&[
            ("vda", FsType::Ext, "configdrive"),
            ("sr0", FsType::Iso9660, "empty"),
        ]);
        assert!(find_local(&m, &mut Trace::default()).is_none());
    }

    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn endpoints(
        link_local: SocketAddr,
        cloudstack: SocketAddr,
        dhcp: Option<SocketAddr>,
    ) -> MetadataEndpoints {
        MetadataEndpoints {
            link_local,
            cloudstack,
            dhcp_server: dhcp,
            probe_timeout: Duration::from_secs(2),
            http: Timeouts {
                connect: Duration::from_secs(2),
                total: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn ec2_user_data() {
        let s = Server::start(vec![("/2016-04-19/user-data", ok(b"ec2 data"))]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(
            (f.source, f.raw.as_slice()),
            (Source::Ec2, &b"ec2 data"[..])
        );
        let reqs = s.requests.lock().unwrap().clone();
        // GCE was asked first (user data, then the id probe)
        assert_eq!(
            reqs,
            [
                "/computeMetadata/v1/instance/attributes/user-data",
                "/computeMetadata/v1/instance/id",
                "/2016-04-19/user-data"
            ]
        );
    }

    #[test]
    fn gce_answers_only_with_its_header() {
        let gce = |body: &[u8]| Answer {
            status: 200,
            body: body.to_vec(),
            require_header: Some(("x-google-metadata-request".into(), "True".into())),
            method: None,
        };
        let s = Server::start(vec![
            (
                "/computeMetadata/v1/instance/attributes/user-data",
                gce(b"gce data"),
            ),
            ("/computeMetadata/v1/instance/id", gce(b"1234")),
        ]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(
            (f.source, f.raw.as_slice()),
            (Source::Gce, &b"gce data"[..])
        );
    }

    #[test]
    fn ec2_requiring_imdsv2_is_asked_with_a_token() {
        let token = (
            "x-aws-ec2-metadata-token".to_string(),
            "tok-123".to_string(),
        );
        let s = Server::start(vec![
            (
                "/latest/api/token",
                Answer {
                    status: 200,
                    body: b"tok-123".to_vec(),
                    require_header: Some((
                        "x-aws-ec2-metadata-token-ttl-seconds".into(),
                        "300".into(),
                    )),
                    method: Some("PUT"),
                },
            ),
            (
                "/latest/user-data",
                Answer {
                    status: 200,
                    body: b"v2 data".to_vec(),
                    require_header: Some(token),
                    method: None,
                },
            ),
        ]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!((f.source, f.raw.as_slice()), (Source::Ec2, &b"v2 data"[..]));
        let reqs = s.requests.lock().unwrap().clone();
        assert_eq!(
            &reqs[2..],
            [
                "/2016-04-19/user-data",
                "/2016-04-19/meta-data/ami-id",
                "/latest/api/token",
                "/latest/user-data"
            ]
        );
    }

    #[test]
    fn cloud_without_user_data_gives_empty_user_data() {
        let s = Server::start(vec![("/2016-04-19/meta-data/ami-id", ok(b"ami-123"))]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!((f.source, f.raw.len()), (Source::Ec2, 0));
    }

    #[test]
    fn openstack_both_paths() {
        let s = Server::start(vec![("/openstack/2013-10-17/user_data", ok(b"os1"))]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(
            (f.source, f.raw.as_slice()),
            (Source::OpenStack, &b"os1"[..])
        );
        let s = Server::start(vec![("/latest/user-data", ok(b"os2"))]);
        let f = find_metadata(
            &endpoints(s.addr, closed_port(), None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(
            (f.source, f.raw.as_slice()),
            (Source::OpenStack, &b"os2"[..])
        );
    }

    #[test]
    fn cloudstack_at_the_fixed_address_and_at_the_dhcp_server() {
        let s = Server::start(vec![("/latest/user-data", ok(b"cs"))]);
        let f = find_metadata(
            &endpoints(closed_port(), s.addr, None),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!(
            (f.source, f.raw.as_slice()),
            (Source::CloudStack, &b"cs"[..])
        );
        let s = Server::start(vec![("/latest/meta-data/instance-id", ok(b"i-1"))]);
        let f = find_metadata(
            &endpoints(closed_port(), closed_port(), Some(s.addr)),
            &mut Trace::default(),
        )
        .unwrap();
        assert_eq!((f.source, f.raw.len()), (Source::CloudStack, 0));
    }

    #[test]
    fn nothing_listening_means_no_source() {
        let mut t = Trace::default();
        assert!(find_metadata(&endpoints(closed_port(), closed_port(), None), &mut t).is_none());
        assert!(t.0.iter().any(|l| l.contains("mask 0")), "{:?}", t.0);
    }

    #[test]
    fn a_server_that_never_answers_is_given_up_in_bounded_time() {
        let silent = Server::silent();
        let cloudstack = Server::start(vec![("/latest/user-data", ok(b"cs"))]);
        let start = Instant::now();
        let mut t = Trace::default();
        let f = find_metadata(
            &endpoints(silent.addr, closed_port(), Some(cloudstack.addr)),
            &mut t,
        );
        // one request of at most 1 s, then the silent host is given up and the search goes on
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(f.map(|f| f.source), Some(Source::CloudStack));
        assert!(
            t.0.iter().any(|l| l.contains("no complete answer")),
            "{:?}",
            t.0
        );
        assert!(
            t.0.iter()
                .any(|l| l.contains("its other services are not asked")),
            "{:?}",
            t.0
        );
    }

    fn found(raw: &[u8]) -> Option<Found> {
        Some(Found {
            source: Source::Ec2,
            raw: raw.to_vec(),
            azure_device: None,
        })
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn processing_writes_user_data_ucontext_and_settings() {
        let root = tempfile::tempdir().unwrap();
        let ud =
            b"[ucernvm-begin]\ncvmfs_branch=demo.cernvm.test\nresize_rootfs=off\n[ucernvm-end]\n";
        let (ctx, settings) = process(found(&gzip(ud)), root.path(), &mut Trace::default());
        assert_eq!(ctx.source_name(), "EC2");
        assert_eq!(fs::read(root.path().join("user-data")).unwrap(), ud);
        assert_eq!(
            fs::read_to_string(root.path().join("ucontext")).unwrap(),
            "_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n_UCONTEXT_RESIZE_ROOTFS=0\n"
        );
        assert_eq!(settings.cvmfs_branch.as_deref(), Some("demo.cernvm.test"));
        assert!(!settings.resize_rootfs);
        assert!(!root.path().join("glideinwms-user-data").exists());
    }

    fn glidein_line(extra_block: bool) -> Vec<u8> {
        let args = "args -v std -param_CERNVM_CMS_PROXY http.colon,//squid.dot,example.dot,org.colon,3128 -other x\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("[glidein]\n{args}"));
        let mut s = format!("{b64}#### -cluster 123 -subcluster 4####\n").into_bytes();
        if extra_block {
            s = b"[ucernvm-begin]\nuseglideinWMS=off\n[ucernvm-end]\n".to_vec();
        }
        s
    }

    #[test]
    fn glidein_user_data_sets_the_proxy() {
        let root = tempfile::tempdir().unwrap();
        let (ctx, settings) = process(
            found(&glidein_line(false)),
            root.path(),
            &mut Trace::default(),
        );
        assert!(ctx.glidein.is_some());
        assert_eq!(
            settings.cvmfs_http_proxy.as_deref(),
            Some("http://squid.example.org:3128")
        );
        assert_eq!(
            fs::read_to_string(root.path().join("ucontext")).unwrap(),
            "_UCONTEXT_CVMFS_HTTP_PROXY=http://squid.example.org:3128\n"
        );
        assert!(root.path().join("glideinwms-user-data").exists());
    }

    #[test]
    fn glidein_detection_can_be_switched_off() {
        let root = tempfile::tempdir().unwrap();
        let mut t = Trace::default();
        let (ctx, _) = process(found(&glidein_line(true)), root.path(), &mut t);
        assert!(ctx.glidein.is_none());
        assert!(t.0.iter().any(|l| l.contains("autodetect disabled")));
    }

    #[test]
    fn bad_user_data_ends_in_defaults_and_a_clear_line() {
        let root = tempfile::tempdir().unwrap();
        // truncated gzip
        let g = gzip(&vec![b'x'; 100_000]);
        let mut t = Trace::default();
        let (ctx, settings) = process(found(&g[..g.len() / 2]), root.path(), &mut t);
        assert_eq!(settings, ContextSettings::default());
        assert_eq!(ctx.user_data, &g[..g.len() / 2]);
        assert!(
            t.0.iter().any(|l| l.contains("does not decompress")),
            "{:?}",
            t.0
        );
        // binary garbage and 10 MB of it
        let garbage: Vec<u8> = (0..10 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (ctx, settings) = process(found(&garbage), root.path(), &mut Trace::default());
        assert_eq!(settings, ContextSettings::default());
        assert_eq!(ctx.user_data.len(), garbage.len());
        assert_eq!(fs::read(root.path().join("ucontext")).unwrap(), b"");
        // a 10 MB user data with the block at its end still counts
        let mut big = vec![b'#'; 10 * 1024 * 1024];
        big.extend_from_slice(b"\n[ucernvm-begin]\ncvmfs_tag=late\n[ucernvm-end]\n");
        let (_, settings) = process(found(&big), root.path(), &mut Trace::default());
        assert_eq!(settings.cvmfs_tag.as_deref(), Some("late"));
    }

    #[test]
    fn nothing_found_is_the_none_source_with_defaults() {
        let root = tempfile::tempdir().unwrap();
        let (ctx, settings) = process(None, root.path(), &mut Trace::default());
        assert_eq!(ctx.source_name(), "(none)");
        assert_eq!(settings, ContextSettings::default());
        assert!(!root.path().join("user-data").exists());
    }

    /// MIME user data as Python's email library writes it (base64 UTF-8 parts under Python 3,
    /// spec §5.10).
    #[test]
    fn mime_user_data_from_python_email() {
        let script = r##"
import sys
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
m = MIMEMultipart()
m.attach(MIMEText("#cloud-config\nusers: []\n", "cloud-config", "utf-8"))
m.attach(MIMEText("[ucernvm-begin]\ncvmfs_branch=mime.example.org\ncvm_cluster_master=true\n[ucernvm-end]\n", "ucernvm", "utf-8"))
m.attach(MIMEText("[amiconfig]\nplugins=cernvm\n", "amiconfig-user-data", "utf-8"))
sys.stdout.write(m.as_string())
"##;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root = tempfile::tempdir().unwrap();
        let (ctx, settings) = process(found(&out.stdout), root.path(), &mut Trace::default());
        assert_eq!(settings.cvmfs_branch.as_deref(), Some("mime.example.org"));
        assert!(settings.cvm_cluster_master);
        // the saved user data stays the original message
        assert_eq!(ctx.user_data, out.stdout);
    }
}

/// A context written like the public CernVM contexts (amiconfig script and sections, then the
/// µCernVM block), delivered gzip-compressed by a metadata service.
#[cfg(test)]
mod public_context_tests {
    use super::*;
    use crate::http::testserver::{ok, Server};

    #[test]
    fn amiconfig_style_context_from_ec2_gzipped() {
        let text = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/contexts/analysis-desktop.context"),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &text).unwrap();
        let s = Server::start(vec![("/2016-04-19/user-data", ok(&gz.finish().unwrap()))]);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let ep = MetadataEndpoints {
            link_local: s.addr,
            cloudstack: closed,
            dhcp_server: None,
            probe_timeout: Duration::from_secs(2),
            http: Timeouts::default(),
        };
        let mut trace = Trace::default();
        let found = find(&Media::Fixtures(vec![]), &ep, &mut trace);
        let root = tempfile::tempdir().unwrap();
        let (ctx, settings) = process(found, root.path(), &mut trace);
        assert_eq!(ctx.source_name(), "EC2");
        assert_eq!(ctx.user_data, text, "saved decompressed, byte for byte");
        assert_eq!(
            settings.cvmfs_branch.as_deref(),
            Some("cernvm-prod.cern.ch")
        );
        assert_eq!(
            settings.cvmfs_server,
            Some(vec![
                "stratum1.example.org".into(),
                "backup.example.org".into()
            ])
        );
        // the quotes are the user's protection against the shell; the boot loader strips them
        assert_eq!(
            settings.cvmfs_http_proxy.as_deref(),
            Some("http://squid.example.org:3128;DIRECT")
        );
        // `cvmfs_path` is not a µCernVM key (spec §5.7): carried along, not interpreted
        assert_eq!(settings.cernvm_path, None);
        assert_eq!(
            settings.extra.get("CVMFS_PATH").map(String::as_str),
            Some("cvm4")
        );
        assert!(!settings.use_glidein_wms);
        assert_eq!(
            fs::read_to_string(root.path().join("ucontext")).unwrap(),
            "_UCONTEXT_CVMFS_BRANCH=cernvm-prod.cern.ch\n\
             _UCONTEXT_CVMFS_SERVER=stratum1.example.org,backup.example.org\n\
             _UCONTEXT_CVMFS_PATH=cvm4\n\
             _UCONTEXT_CVMFS_HTTP_PROXY=\"http://squid.example.org:3128;DIRECT\"\n\
             _UCONTEXT_USEGLIDEINWMS=0\n"
        );
    }
}

#[cfg(test)]
mod broken_mime_tests {
    use super::*;

    /// Boundaries that never match, a part without end, a base64 part that is not base64:
    /// defaults, no panic, and the raw line scan still sees a plain block.
    #[test]
    fn broken_mime_messages_end_in_defaults() {
        let root = tempfile::tempdir().unwrap();
        let cases: [&[u8]; 3] = [
            b"Content-Type: multipart/mixed; boundary=\"AAA\"\n\n--BBB\nContent-Type: text/ucernvm\n\n[ucernvm-begin]\nx=1\n",
            b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n--\n--",
            b"Content-Type: multipart/mixed; boundary=X\n\n--X\nContent-Type: text/ucernvm\nContent-Transfer-Encoding: base64\n\n!!!not base64!!!\n--X--\n",
        ];
        for (i, c) in cases.iter().enumerate() {
            let found = Some(Found {
                source: Source::Ec2,
                raw: c.to_vec(),
                azure_device: None,
            });
            let (ctx, settings) = process(found, root.path(), &mut Trace::default());
            assert_eq!(ctx.user_data, *c, "case {i}: raw bytes kept");
            if i == 0 {
                assert_eq!(settings.extra.get("X").map(String::as_str), Some("1"));
            } else {
                assert_eq!(settings, ContextSettings::default(), "case {i}");
            }
        }
    }
}
