//! The client configuration file the boot loader writes, `/etc/cvmfs/config.d/<repo>.conf`
//! (spec §9.4), and the cache quota derived from the scratch disk size (§9.6).

use std::path::PathBuf;

use cvmfs_config::keys::*;
use cvmfs_config::ConfigFile;

use super::snapshot::Selection;
use crate::config::cvmfs::{unquote, CvmfsParams};

/// `CVMFS_NFILES`, and the open-file limit the boot loader raises itself to.
pub const NFILES: u64 = 65536;

/// Paths that go into the configuration.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    /// `CVMFS_CACHE_BASE` and `CVMFS_RELOAD_SOCKETS` (`/root.rw/cache`).
    pub cache: PathBuf,
    /// `CVMFS_KEYS_DIR` (`/etc/cvmfs/keys/<repo>`).
    pub keys_dir: PathBuf,
    /// `CVMFS_UID_MAP` (`/root.rw/aux/uid_map`).
    pub uid_map: PathBuf,
    /// `CVMFS_GID_MAP` (`/root.rw/aux/gid_map`).
    pub gid_map: PathBuf,
}

/// `CVMFS_QUOTA_LIMIT` in MiB: 2000 on a scratch disk above 4000 MiB, else half the disk.
pub fn quota_limit_mb(root_size_mb: u64) -> u64 {
    if root_size_mb > 4000 {
        2000
    } else {
        root_size_mb / 2
    }
}

/// The configuration, one parameter per line in the original's order.
pub fn config_file(
    params: &CvmfsParams,
    paths: &ConfigPaths,
    quota_mb: u64,
    selection: &Selection,
) -> ConfigFile {
    let cache = paths.cache.display();
    let mut c = ConfigFile::new(&params.repository);
    c.set(CVMFS_CACHE_BASE, &cache);
    c.set(CVMFS_NFILES, NFILES);
    c.set(CVMFS_RELOAD_SOCKETS, &cache);
    c.set(CVMFS_QUOTA_LIMIT, quota_mb);
    c.set_quoted(CVMFS_SERVER_URL, unquote(&params.server_url_value()));
    c.set_quoted(CVMFS_HTTP_PROXY, unquote(&params.proxy));
    c.set_quoted(CVMFS_PAC_URLS, unquote(&params.pac_urls));
    c.set(CVMFS_KEYS_DIR, paths.keys_dir.display());
    c.set(CVMFS_CHECK_PERMISSIONS, "yes");
    c.set(CVMFS_IGNORE_SIGNATURE, "no");
    c.set(CVMFS_AUTO_UPDATE, "no");
    c.set(CVMFS_NFS_SOURCE, "no");
    c.set(CVMFS_PROXY_RESET_AFTER, 86400);
    c.set(CVMFS_MAX_RETRIES, 0);
    c.set(CVMFS_TIMEOUT, 5);
    c.set(CVMFS_TIMEOUT_DIRECT, 5);
    c.set(CVMFS_USE_GEOAPI, "yes");
    c.set(CVMFS_MAX_IPADDR_PER_PROXY, 2);
    c.set(CVMFS_BACKOFF_INIT, 2);
    c.set(CVMFS_BACKOFF_MAX, 12);
    c.set(CVMFS_USYSLOG, paths.cache.join("usyslog").display());
    c.set(CVMFS_UID_MAP, paths.uid_map.display());
    c.set(CVMFS_GID_MAP, paths.gid_map.display());
    c.set(CVMFS_HIDE_MAGIC_XATTRS, "yes");
    c.set(CVMFS_SYSTEMD_NOKILL, "yes");
    // Not in the original. Our client's FUSE passthrough (Linux 6.9+) stacks the mount one
    // file-system level higher; with the union on top, an overlay inside the OS (containers)
    // would exceed the kernel's stacking limit.
    c.set(CVMFS_FUSE_PASSTHROUGH, "no");
    let (root_hash, tag) = selection.config_values();
    if let Some(tag) = tag {
        c.set(CVMFS_REPOSITORY_TAG, tag);
    }
    if let Some(hash) = root_hash {
        c.set(CVMFS_ROOT_HASH, hash);
    }
    c
}

/// The configuration text (see [`config_file`]).
pub fn render(
    params: &CvmfsParams,
    paths: &ConfigPaths,
    quota_mb: u64,
    selection: &Selection,
) -> String {
    config_file(params, paths, quota_mb, selection).render()
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::Snapshot;
    use super::*;
    use crate::cmdline::KernelCmdline;
    use crate::settings::ContextSettings;
    use cvmfs_config::Config;

    fn settings(pairs: &[(&str, &str)]) -> ContextSettings {
        let mut s = ContextSettings::default();
        for (k, v) in pairs {
            s.apply(k, v);
        }
        s
    }

    fn paths() -> ConfigPaths {
        ConfigPaths {
            cache: "/root.rw/cache".into(),
            keys_dir: "/etc/cvmfs/keys/cernvm-prod.cern.ch".into(),
            uid_map: "/root.rw/aux/uid_map".into(),
            gid_map: "/root.rw/aux/gid_map".into(),
        }
    }

    #[test]
    fn quota_follows_disk_size() {
        assert_eq!(quota_limit_mb(20 * 1024), 2000);
        assert_eq!(quota_limit_mb(4001), 2000);
        assert_eq!(quota_limit_mb(4000), 2000);
        assert_eq!(quota_limit_mb(3001), 1500);
        assert_eq!(quota_limit_mb(0), 0);
    }

    #[test]
    fn every_parameter_of_the_original_in_order() {
        let p = CvmfsParams::resolve(
            &KernelCmdline::parse("cvmfs_repos=cernvm-prod.cern.ch cvmfs_server=s1.example"),
            &ContextSettings::default(),
            true,
        );
        let text = render(&p, &paths(), 1500, &Selection::Fresh { tag: None });
        let expected = "\
CVMFS_CACHE_BASE=/root.rw/cache
CVMFS_NFILES=65536
CVMFS_RELOAD_SOCKETS=/root.rw/cache
CVMFS_QUOTA_LIMIT=1500
CVMFS_SERVER_URL=\"http://s1.example/cvmfs/cernvm-prod.cern.ch\"
CVMFS_HTTP_PROXY=\"auto;DIRECT\"
CVMFS_PAC_URLS=\"http://grid-wpad/wpad.dat;http://wpad/wpad.dat;http://cernvm-wpad.cern.ch/wpad.dat;http://cernvm-wpad.fnal.gov/wpad.dat\"
CVMFS_KEYS_DIR=/etc/cvmfs/keys/cernvm-prod.cern.ch
CVMFS_CHECK_PERMISSIONS=yes
CVMFS_IGNORE_SIGNATURE=no
CVMFS_AUTO_UPDATE=no
CVMFS_NFS_SOURCE=no
CVMFS_PROXY_RESET_AFTER=86400
CVMFS_MAX_RETRIES=0
CVMFS_TIMEOUT=5
CVMFS_TIMEOUT_DIRECT=5
CVMFS_USE_GEOAPI=yes
CVMFS_MAX_IPADDR_PER_PROXY=2
CVMFS_BACKOFF_INIT=2
CVMFS_BACKOFF_MAX=12
CVMFS_USYSLOG=/root.rw/cache/usyslog
CVMFS_UID_MAP=/root.rw/aux/uid_map
CVMFS_GID_MAP=/root.rw/aux/gid_map
CVMFS_HIDE_MAGIC_XATTRS=yes
CVMFS_SYSTEMD_NOKILL=yes
CVMFS_FUSE_PASSTHROUGH=no
";
        assert_eq!(text, expected);
    }

    #[test]
    fn tag_and_root_hash_only_when_set() {
        let p = CvmfsParams::resolve(&KernelCmdline::default(), &ContextSettings::default(), true);
        let fresh_tag = render(
            &p,
            &paths(),
            1,
            &Selection::Fresh {
                tag: Some("v1".into()),
            },
        );
        assert!(fresh_tag.ends_with("CVMFS_FUSE_PASSTHROUGH=no\nCVMFS_REPOSITORY_TAG=v1\n"));
        assert!(!fresh_tag.contains("CVMFS_ROOT_HASH"));
        let pinned = render(
            &p,
            &paths(),
            1,
            &Selection::Pinned(Snapshot {
                root_hash: "f71bcc87c33d8adb3851f22152914744e677878f".into(),
                tag: String::new(),
            }),
        );
        assert!(pinned.ends_with(
            "CVMFS_FUSE_PASSTHROUGH=no\nCVMFS_ROOT_HASH=f71bcc87c33d8adb3851f22152914744e677878f\n"
        ));
        assert!(!pinned.contains("CVMFS_REPOSITORY_TAG"));
    }

    /// The file must mean the same to our client's configuration parser as to a shell: quoted
    /// lists with `;` survive, a raw `cvmfs_url` list too.
    #[test]
    fn our_client_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        for (cmd, url) in [
            (
                "cvmfs_repos=demo.cernvm.test cvmfs_url=http://a/cvmfs/@fqrn@;http://b/cvmfs/@fqrn@ cvmfs_proxy=\"http://p:3128|http://q:3128;DIRECT\"",
                "http://a/cvmfs/demo.cernvm.test;http://b/cvmfs/demo.cernvm.test",
            ),
            (
                "cvmfs_repos=demo.cernvm.test cvmfs_server=x.example,y.example",
                "http://x.example/cvmfs/demo.cernvm.test;http://y.example/cvmfs/demo.cernvm.test",
            ),
        ] {
            let p = CvmfsParams::resolve(&KernelCmdline::parse(cmd), &ContextSettings::default(), true);
            let file = dir.path().join("demo.cernvm.test.conf");
            std::fs::write(&file, render(&p, &paths(), 1000, &Selection::Fresh { tag: Some("v1".into()) })).unwrap();
            let c = Config::load("demo.cernvm.test", Some(&file), dir.path()).unwrap();
            assert_eq!(c.get("CVMFS_SERVER_URL"), Some(url), "{cmd}");
            assert_eq!(c.get("CVMFS_REPOSITORY_TAG"), Some("v1"));
            assert_eq!(c.get("CVMFS_QUOTA_LIMIT"), Some("1000"));
            assert_eq!(c.get("CVMFS_HIDE_MAGIC_XATTRS"), Some("yes"));
        }
        let p = CvmfsParams::resolve(
            &KernelCmdline::parse("cvmfs_proxy=\"http://p:3128|http://q:3128;DIRECT\""),
            &ContextSettings::default(),
            true,
        );
        let file = dir.path().join("cernvm-devel.cern.ch.conf");
        std::fs::write(
            &file,
            render(&p, &paths(), 1, &Selection::Fresh { tag: None }),
        )
        .unwrap();
        let c = Config::load("cernvm-devel.cern.ch", Some(&file), dir.path()).unwrap();
        assert_eq!(
            c.get("CVMFS_HTTP_PROXY"),
            Some("http://p:3128|http://q:3128;DIRECT")
        );
    }

    /// The configuration as our client reads it, for combinations of command line, user data
    /// and pinning files: (command line, user data, snapshot file, force-tag file, expected
    /// server URL, proxy, tag, root hash).
    #[test]
    fn table_of_boot_inputs_to_effective_configuration() {
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let rows: &[Row] = &[
            (
                "cvmfs_repos=r.example",
                &[],
                None,
                None,
                "http://hepvm.cern.ch/cvmfs/r.example",
                "auto;DIRECT",
                None,
                None,
            ),
            (
                "cvmfs_repos=r.example cvmfs_repository_tag=HEAD4",
                &[
                    ("CVMFS_TAG", "2024-01"),
                    ("CVMFS_HTTP_PROXY", "http://squid:3128"),
                ],
                None,
                None,
                "http://hepvm.cern.ch/cvmfs/r.example",
                "http://squid:3128",
                Some("2024-01"),
                None,
            ),
            (
                "cvmfs_repos=r.example cvmfs_cdn=c1.example,c2.example cvmfs_repository_tag=HEAD4",
                &[("CVMFS_TAG", "2024-01")],
                Some("abc123\nold-tag\n"),
                None,
                "http://c1.example/cvmfs/r.example;http://c2.example/cvmfs/r.example",
                "auto;DIRECT",
                Some("old-tag"),
                Some("abc123"),
            ),
            (
                "cvmfs_repos=r.example cvmfs_url=http://10.0.2.2/cvmfs/@fqrn@",
                &[("CVMFS_SERVER", "ignored.example")],
                Some("abc123\n\n"),
                Some("new-tag\n"),
                "http://10.0.2.2/cvmfs/r.example",
                "auto;DIRECT",
                Some("new-tag"),
                None,
            ),
        ];
        for (i, (cmd, ud, snap, force, url, proxy, tag, hash)) in rows.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            if let Some(s) = snap {
                std::fs::write(dir.path().join("cvmfs_snapshot"), s).unwrap();
            }
            if let Some(f) = force {
                std::fs::write(dir.path().join("cvmfs_force_tag"), f).unwrap();
            }
            let mut ctx = ContextSettings::default();
            for (k, v) in *ud {
                ctx.apply(k, v);
            }
            let p = CvmfsParams::resolve(&KernelCmdline::parse(cmd), &ctx, true);
            let sel = super::super::snapshot::select(dir.path(), p.tag.as_deref()).unwrap();
            let file = dir.path().join("r.example.conf");
            std::fs::write(&file, render(&p, &paths(), quota_limit_mb(10_000), &sel)).unwrap();
            let c = Config::load("r.example", Some(&file), dir.path()).unwrap();
            assert_eq!(c.get("CVMFS_SERVER_URL"), Some(*url), "row {i}");
            assert_eq!(c.get("CVMFS_HTTP_PROXY"), Some(*proxy), "row {i}");
            assert_eq!(c.get("CVMFS_REPOSITORY_TAG"), *tag, "row {i}");
            assert_eq!(c.get("CVMFS_ROOT_HASH"), *hash, "row {i}");
            assert_eq!(c.get("CVMFS_QUOTA_LIMIT"), Some("2000"), "row {i}");
        }
    }

    /// The branch presets of spec §9.2, written out here from the spec's table (not read from
    /// `branches.table`): (branch, repository, path, tag, server URL hosts).
    const SPEC_BRANCHES: &[(&str, &str, &str, &str, &[&str])] = &[
        ("prod", "cernvm-prod.cern.ch", "cvm4", "HEAD4", PROD_CDN),
        ("v4prod", "cernvm-prod.cern.ch", "cvm4", "HEAD4", PROD_CDN),
        ("v3prod", "cernvm-prod.cern.ch", "cvm3", "HEAD", PROD_CDN),
        (
            "boinc-ia32",
            "cernvm-prod.cern.ch",
            "boinc-i686",
            "HEAD",
            PROD_CDN,
        ),
        ("testing", "cernvm-testing.cern.ch", "cvm4", "HEAD4", HEPVM),
        (
            "v4testing",
            "cernvm-testing.cern.ch",
            "cvm4",
            "HEAD4",
            HEPVM,
        ),
        ("v3testing", "cernvm-testing.cern.ch", "cvm3", "HEAD", HEPVM),
        ("devel", "cernvm-devel.cern.ch", "cvm3", "HEAD", HEPVM),
        ("sl7", "cernvm-sl7.cern.ch", "cvm4", "HEAD4", HEPVM),
        ("slc4", "cernvm-slc4.cern.ch", "cvm3", "HEAD", HEPVM),
        ("slc5", "cernvm-slc5.cern.ch", "cvm3", "HEAD", HEPVM),
        (
            "aarch64",
            "cernvm-aarch64.cern.ch",
            "cvm4-aarch64",
            "HEAD",
            HEPVM,
        ),
    ];
    /// The prod CDN replaces the Stratum-1 list; its `,`/`;` mix gives one URL per host.
    const PROD_CDN: &[&str] = &[
        "s1cern-cvmfs.openhtc.io",
        "s1ral-cvmfs.openhtc.io",
        "s1bnl-cvmfs.openhtc.io",
        "s1fnal-cvmfs.openhtc.io",
        "s1unl-cvmfs.openhtc.io",
    ];
    const HEPVM: &[&str] = &["hepvm.cern.ch"];

    /// The configuration our client reads for a branch, chosen in the user data
    /// (`cvmfs_branch=<name>`) and through the kernel command line an image built for that
    /// branch carries (scripts/lib/boot-tree.sh `--branch`), against the spec's table.
    #[test]
    fn every_branch_renders_the_configuration_of_the_spec_table() {
        let dir = tempfile::tempdir().unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/boot-tree.sh");
        for (name, repo, path, tag, hosts) in SPEC_BRANCHES {
            let image_cmdline = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    ". {} && parse_boot_option --branch {name} && common_params",
                    script.display()
                ))
                .output()
                .unwrap();
            assert!(image_cmdline.status.success(), "{name}: {image_cmdline:?}");
            let image_cmdline = String::from_utf8(image_cmdline.stdout).unwrap();
            let routes = [
                (
                    "user data",
                    KernelCmdline::default(),
                    settings(&[("CVMFS_BRANCH", name)]),
                ),
                (
                    "image",
                    KernelCmdline::parse(&image_cmdline),
                    ContextSettings::default(),
                ),
            ];
            for (route, cmdline, user) in routes {
                let p = CvmfsParams::resolve(&cmdline, &user, true);
                assert_eq!(p.unknown_branch, None);
                assert_eq!(p.os_subdir(), *path, "{name} ({route})");
                let sel = super::super::snapshot::select(dir.path(), p.tag.as_deref()).unwrap();
                let file = dir.path().join(format!("{repo}.conf"));
                let mut paths = paths();
                paths.keys_dir = format!("/etc/cvmfs/keys/{repo}").into();
                std::fs::write(&file, render(&p, &paths, 2000, &sel)).unwrap();
                let c = Config::load(repo, Some(&file), dir.path()).unwrap();
                let urls: Vec<String> = hosts
                    .iter()
                    .map(|h| format!("http://{h}/cvmfs/{repo}"))
                    .collect();
                assert_eq!(
                    c.get(CVMFS_SERVER_URL),
                    Some(urls.join(";").as_str()),
                    "{name} ({route})"
                );
                assert_eq!(c.get(CVMFS_REPOSITORY_TAG), Some(*tag), "{name} ({route})");
                assert_eq!(
                    c.get(CVMFS_KEYS_DIR),
                    Some(format!("/etc/cvmfs/keys/{repo}").as_str())
                );
                assert_eq!(c.get(CVMFS_USE_GEOAPI), Some("yes"), "{name} ({route})");
                assert_eq!(
                    c.get(CVMFS_HTTP_PROXY),
                    Some("auto;DIRECT"),
                    "{name} ({route})"
                );
            }
        }
    }

    /// User-data keys refine a preset; an unknown branch keeps the repository the boot had.
    #[test]
    fn user_data_refines_a_preset_and_an_unknown_branch_is_ignored() {
        let p = CvmfsParams::resolve(
            &KernelCmdline::default(),
            &settings(&[
                ("CVMFS_BRANCH", "prod"),
                ("CVMFS_TAG", "cernvm-system-4.7.1.0"),
                ("CVMFS_SERVER", "s1.example"),
            ]),
            true,
        );
        assert_eq!(p.repository, "cernvm-prod.cern.ch");
        assert_eq!(p.tag.as_deref(), Some("cernvm-system-4.7.1.0"));
        assert_eq!(
            p.server_urls(),
            ["http://s1.example/cvmfs/cernvm-prod.cern.ch"]
        );
        assert_eq!(p.cernvm_path, "cvm4");
        let image = KernelCmdline::parse("cvmfs_repos=cernvm-sl7.cern.ch cernvm_path=cvm4");
        let p = CvmfsParams::resolve(&image, &settings(&[("CVMFS_BRANCH", "sl8")]), true);
        assert_eq!(p.repository, "cernvm-sl7.cern.ch");
        assert_eq!(p.cernvm_path, "cvm4");
        let e = p.unknown_branch.expect("sl8 is reported");
        assert!(
            e.to_string()
                .starts_with("cvmfs_branch=sl8: no such branch"),
            "{e}"
        );
    }
}
