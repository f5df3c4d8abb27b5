//! End-to-end scenario building blocks: an OS repository published with our `cvmfs-publish`
//! and served by a real HTTP server, a boot image (kernel + our initramfs + the repository key),
//! and a CernVM booted from them in QEMU.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cernvm_launch::qemu::{Accel, QemuCommand, UserNet};
use cvmfs_client::testing::StaticHttpServer;
use ucernvm_initramfs::Archive;

use crate::test_os::{build_busybox_os, TEST_OS_RELEASE};
use crate::{inputs, Guest, HarnessError};

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io {
        what,
        cause: source,
    }
}

fn tool_failed(what: String, out: &std::process::Output) -> HarnessError {
    HarnessError::Io {
        what: format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        cause: std::io::Error::other("tool failed"),
    }
}

/// The OS tree a repository publishes.
#[derive(Debug, Clone)]
pub enum OsSource {
    /// The busybox test OS of [`crate::test_os`], built from this static busybox.
    Busybox(PathBuf),
    /// A packed OS tree (`.tar.zst`, e.g. the Debian demo OS of `scripts/build-debian-os`),
    /// unpacked as it is (owners, modes, extended attributes) for each revision.
    Tarball(PathBuf),
}

/// An OS published as a CernVM-FS repository and served on 127.0.0.1.
pub struct OsRepository {
    pub fqrn: String,
    dir: tempfile::TempDir,
    server: Option<StaticHttpServer>,
    port: u16,
    os: OsSource,
    publisher: PathBuf,
}

impl OsRepository {
    /// Builds the test OS (`release` in `/etc/test-os/release`), publishes it as the first
    /// revision (with `tag`, if given) and starts serving it.
    pub fn create(fqrn: &str, release: &str, tag: Option<&str>) -> Result<Self, HarnessError> {
        Self::create_customized(fqrn, release, tag, |_| Ok(()))
    }

    /// Like [`OsRepository::create`], with the first revision's tree changed by `customize`
    /// (e.g. an `/etc/test-os/rc.d` hook) before it is published.
    pub fn create_customized(
        fqrn: &str,
        release: &str,
        tag: Option<&str>,
        customize: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<Self, HarnessError> {
        let busybox = inputs::static_busybox().ok_or_else(|| HarnessError::Io {
            what: "no static busybox for the test OS".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        Self::create_from(OsSource::Busybox(busybox), fqrn, release, tag, customize)
    }

    /// Publishes the OS of `os` (`release` in `/etc/test-os/release`, the tree changed by
    /// `customize`) as the first revision, with `tag` if given, and starts serving it.
    pub fn create_from(
        os: OsSource,
        fqrn: &str,
        release: &str,
        tag: Option<&str>,
        customize: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<Self, HarnessError> {
        let publisher =
            inputs::workspace_binary("cvmfs-publish").ok_or_else(|| HarnessError::Io {
                what: "cvmfs-publish is not built (cargo build -p cvmfs-client --bins)".into(),
                cause: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        let dir = tempfile::Builder::new()
            .prefix("os-repo-")
            .tempdir()
            .map_err(io_err("cannot create the repository directory"))?;
        let mut repo = OsRepository {
            fqrn: fqrn.to_string(),
            dir,
            server: None,
            port: 0,
            os,
            publisher,
        };
        repo.publish(release, tag, customize)?;
        repo.start_server()?;
        Ok(repo)
    }

    fn srv(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    /// The served directory of the repository (`.cvmfspublished`, `data/`, ...).
    pub fn stratum0(&self) -> PathBuf {
        self.srv().join("cvmfs").join(&self.fqrn)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn public_key(&self) -> PathBuf {
        self.keys_dir().join(format!("{}.pub", self.fqrn))
    }

    /// Publishes a new revision: a fresh OS tree with `release`, changed by `customize`.
    pub fn publish(
        &self,
        release: &str,
        tag: Option<&str>,
        customize: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<(), HarnessError> {
        let src = self.dir.path().join("src");
        if src.exists() {
            fs::remove_dir_all(&src).map_err(io_err("cannot clear the OS tree"))?;
        }
        match &self.os {
            OsSource::Busybox(busybox) => build_busybox_os(&src, busybox, release)
                .map_err(io_err("cannot build the test OS"))?,
            OsSource::Tarball(tarball) => {
                unpack_tarball(tarball, &src)?;
                fs::create_dir_all(src.join("etc/test-os"))
                    .and_then(|()| fs::write(src.join(TEST_OS_RELEASE), format!("{release}\n")))
                    .map_err(io_err("cannot write the OS release"))?;
            }
        }
        customize(&src).map_err(io_err("cannot customise the test OS"))?;
        let mut cmd = Command::new(&self.publisher);
        cmd.args(["--fqrn", &self.fqrn, "--repo"])
            .arg(self.stratum0())
            .arg("--keys")
            .arg(self.keys_dir());
        if let Some(tag) = tag {
            cmd.args(["--tag", tag]);
        }
        let out = cmd
            .arg(&src)
            .output()
            .map_err(io_err("cannot run cvmfs-publish"))?;
        if !out.status.success() {
            return Err(tool_failed(format!("cvmfs-publish of {release}"), &out));
        }
        Ok(())
    }

    /// Starts (again) serving the repository on 127.0.0.1, on the same port as before if it
    /// was served already, so that the guest's configuration stays valid.
    pub fn start_server(&mut self) -> Result<(), HarnessError> {
        let server = if self.port == 0 {
            StaticHttpServer::start(&self.srv())
        } else {
            StaticHttpServer::start_on(&self.srv(), self.port)
        }
        .map_err(io_err("cannot start the HTTP server"))?;
        self.port = server.port();
        self.server = Some(server);
        Ok(())
    }

    /// Stops serving (offline scenarios).
    pub fn stop_server(&mut self) {
        self.server = None;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Size of everything served (all revisions' catalogs and objects, manifest, keys).
    pub fn published_bytes(&self) -> u64 {
        fn dir_size(path: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(path) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => 0,
                })
                .sum()
        }
        dir_size(&self.stratum0())
    }

    /// The repository URL as the guest sees it: QEMU's user network maps the gateway
    /// (`10.0.2.2`, or `169.254.2.2` in the metadata-server network) to the host's loopback.
    pub fn guest_url(&self, gateway: &str) -> String {
        format!("http://{gateway}:{}/cvmfs/{}", self.port, self.fqrn)
    }
}

/// Unpacks a `.tar.zst` OS tree into `dest` as root would (numeric owners, modes, extended
/// attributes). GNU tar strips a leading `/` and skips member names with `..` by default.
pub fn unpack_tarball(tarball: &Path, dest: &Path) -> Result<(), HarnessError> {
    fs::create_dir_all(dest).map_err(io_err("cannot create the OS tree directory"))?;
    let out = Command::new("tar")
        .args([
            "--zstd",
            "--numeric-owner",
            "--same-owner",
            "-p",
            "--xattrs",
        ])
        .args(["--xattrs-include=*", "-x", "-f"])
        .arg(tarball)
        .arg("-C")
        .arg(dest)
        .output()
        .map_err(io_err("cannot run tar"))?;
    if !out.status.success() {
        return Err(tool_failed(
            format!("unpacking {}", tarball.display()),
            &out,
        ));
    }
    Ok(())
}

/// Kernel and initramfs to boot, with the keys of the OS repository added.
pub struct BootImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    _dir: tempfile::TempDir,
}

impl BootImage {
    /// The µCernVM initramfs (built by `scripts/build-initrd`) followed by a second archive
    /// holding `/etc/cvmfs/keys/<fqrn>/<fqrn>.pub` (the kernel unpacks concatenated archives
    /// in order), so a test repository's key is shipped like the CERN keys are.
    pub fn with_repository_key(repo: &OsRepository) -> Result<Self, HarnessError> {
        let missing = |what: &str| HarnessError::Io {
            what: what.to_string(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let kernel = inputs::kernel()
            .ok_or_else(|| missing("no kernel (kernel-config/build-custom-kernel)"))?;
        let base = inputs::initrd()
            .ok_or_else(|| missing("no µCernVM initramfs (scripts/build-initrd)"))?;
        Self::for_kernel(repo, kernel, &base)
    }

    /// Like [`BootImage::with_repository_key`], for another kernel and the µCernVM initramfs
    /// built for its modules.
    pub fn for_kernel(
        repo: &OsRepository,
        kernel: PathBuf,
        base: &Path,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("boot-image-")
            .tempdir()
            .map_err(io_err("cannot create a directory for the boot image"))?;
        let key = fs::read(repo.public_key()).map_err(io_err("cannot read the repository key"))?;
        let fqrn = &repo.fqrn;
        let mut keys = Archive::new();
        let cpio_err = |e: ucernvm_initramfs::Error| HarnessError::Io {
            what: format!("cannot build the key archive: {e}"),
            cause: std::io::Error::other("cpio"),
        };
        keys.add_dir("etc", 0o755)
            .and_then(|a| a.add_dir("etc/cvmfs", 0o755))
            .and_then(|a| a.add_dir("etc/cvmfs/keys", 0o755))
            .and_then(|a| a.add_dir(&format!("etc/cvmfs/keys/{fqrn}"), 0o755))
            .and_then(|a| a.add_file(&format!("etc/cvmfs/keys/{fqrn}/{fqrn}.pub"), key, 0o644))
            .map_err(cpio_err)?;
        let mut initrd = fs::read(base).map_err(io_err("cannot read the initramfs"))?;
        // Archives are concatenated on 4-byte boundaries.
        while initrd.len() % 4 != 0 {
            initrd.push(0);
        }
        initrd.extend(keys.to_bytes().map_err(cpio_err)?);
        let path = dir.path().join("initrd.img");
        fs::write(&path, initrd).map_err(io_err("cannot write the initramfs"))?;
        Ok(BootImage {
            kernel,
            initrd: path,
            _dir: dir,
        })
    }
}

impl BootImage {
    /// Adds files to the initramfs (a further archive; the kernel unpacks archives in order,
    /// so a file here replaces one of the same path, e.g. `etc/hosts`). Parent directories
    /// must exist in the initramfs.
    pub fn with_files(self, files: &[(&str, &[u8])]) -> Result<Self, HarnessError> {
        let cpio_err = |e: ucernvm_initramfs::Error| HarnessError::Io {
            what: format!("cannot build the extra archive: {e}"),
            cause: std::io::Error::other("cpio"),
        };
        let mut extra = Archive::new();
        for (path, data) in files {
            extra
                .add_file(path, data.to_vec(), 0o644)
                .map_err(cpio_err)?;
        }
        let mut initrd = fs::read(&self.initrd).map_err(io_err("cannot read the initramfs"))?;
        while initrd.len() % 4 != 0 {
            initrd.push(0);
        }
        initrd.extend(extra.to_bytes().map_err(cpio_err)?);
        fs::write(&self.initrd, initrd).map_err(io_err("cannot write the initramfs"))?;
        Ok(self)
    }
}

/// How to boot one CernVM.
pub struct BootSpec<'a> {
    pub image: &'a BootImage,
    /// The scratch disk (qcow2).
    pub disk: &'a Path,
    /// Kernel command line parameters after the console settings.
    pub cmdline: String,
    /// Network; default: plain QEMU user networking (guest 10.0.2.15, host 10.0.2.2).
    pub net: Option<UserNet>,
    pub cdroms: Vec<PathBuf>,
    pub memory_mib: u32,
    /// More QEMU arguments (e.g. a `-virtfs` shared folder).
    pub qemu_args: Vec<String>,
}

impl<'a> BootSpec<'a> {
    /// `image` with the scratch `disk` and `cmdline`, plain QEMU user networking, no CD-ROM,
    /// 1 GiB of memory: what most scenarios boot (others change a field with `..`).
    pub fn new(image: &'a BootImage, disk: &'a Path, cmdline: String) -> Self {
        BootSpec {
            image,
            disk,
            cmdline,
            net: None,
            cdroms: Vec::new(),
            memory_mib: 1024,
            qemu_args: Vec::new(),
        }
    }
}

/// The kernel command line that points µCernVM at `repo` (spec §1.4).
pub fn repository_cmdline(repo: &OsRepository, gateway: &str) -> String {
    format!(
        "cvmfs_url={} cvmfs_repos={} cvmfs_proxy=DIRECT",
        repo.guest_url(gateway),
        repo.fqrn
    )
}

/// Boots a CernVM (TCG unless `CERNVM_ACCEL` says otherwise; KVM hangs on these machines).
pub fn boot(spec: BootSpec<'_>) -> Result<Guest, HarnessError> {
    let accel = match std::env::var("CERNVM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let mut cmd = QemuCommand::new()
        .accel(accel)
        .memory_mib(spec.memory_mib)
        .kernel(
            &spec.image.kernel,
            Some(spec.image.initrd.clone()),
            Some(format!("console=ttyS0 panic=-1 {}", spec.cmdline)),
        )
        .disk(spec.disk)
        .user_net(spec.net.unwrap_or_default())
        .no_reboot(true);
    for cd in spec.cdroms {
        cmd = cmd.cdrom(cd);
    }
    for a in spec.qemu_args {
        cmd = cmd.arg(a);
    }
    Guest::spawn(cmd)
}

/// Generous timeouts for TCG on a busy 2-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A real squid forward proxy (shared with the cvmfs-client tests).
pub use cvmfs_client::testing::SquidProxy;

/// True when everything a full boot needs is there; otherwise prints what is missing, so a
/// test can skip with a message (kernel: kernel-config/build-custom-kernel; initramfs:
/// scripts/build-initrd; publisher: cargo build -p cvmfs-client; static busybox).
pub fn full_boot_inputs_ready() -> bool {
    let missing: Vec<&str> = [
        ("kernel", inputs::kernel().is_some()),
        (
            "initramfs (scripts/build-initrd)",
            inputs::initrd().is_some(),
        ),
        (
            "cvmfs-publish",
            inputs::workspace_binary("cvmfs-publish").is_some(),
        ),
        ("static busybox", inputs::static_busybox().is_some()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if !missing.is_empty() {
        test_prereq::skip(format_args!("missing {}", missing.join(", ")));
    }
    missing.is_empty()
}

/// Waits for `marker` on the guest console; panics with the whole console log otherwise.
pub fn expect_marker(guest: &mut Guest, marker: &str, timeout: Duration) {
    if let Err(e) = guest.wait_for(marker, timeout) {
        panic!("{e}");
    }
}

/// Waits for `marker` to appear after byte `offset` of the console log (an answer to what was
/// just typed, when the same text appeared before); panics with the console log otherwise.
pub fn expect_marker_after(guest: &mut Guest, offset: usize, marker: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        let log = guest.console().contents();
        if log.get(offset..).is_some_and(|tail| tail.contains(marker)) {
            return;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out waiting for {marker:?} after console offset {offset}\n\
                 ----- full console log -----\n{log}\n----- end of console log -----"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn running_as_root() -> bool {
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    #[test]
    fn a_packed_tree_is_unpacked_with_modes_owners_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/shadow"), "root:!*:1::::::\n").unwrap();
        fs::set_permissions(tree.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("shadow", tree.join("etc/link")).unwrap();
        // Root (as the OS trees are unpacked) keeps a foreign group: Debian's shadow group.
        if running_as_root() {
            std::os::unix::fs::chown(tree.join("etc/shadow"), Some(0), Some(42)).unwrap();
        }
        let gid = fs::metadata(tree.join("etc/shadow")).unwrap().gid();
        let tarball = dir.path().join("os.tar.zst");
        let st = Command::new("tar")
            .args(["--zstd", "--numeric-owner", "-c", "-f"])
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());

        let dest = dir.path().join("dest");
        unpack_tarball(&tarball, &dest).unwrap();
        let meta = fs::metadata(dest.join("etc/shadow")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o640, gid));
        assert_eq!(
            fs::read_link(dest.join("etc/link")).unwrap(),
            Path::new("shadow")
        );

        let err = unpack_tarball(&dir.path().join("missing.tar.zst"), &dest).unwrap_err();
        assert!(err.to_string().contains("missing.tar.zst"), "{err}");
    }
}
