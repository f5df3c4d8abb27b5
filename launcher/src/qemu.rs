//! Building `qemu-system-x86_64` command lines, choosing the accelerator and probing whether
//! KVM really works.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Environment variable that forces the accelerator (`kvm` or `tcg`).
pub const ACCEL_ENV: &str = "CERNVM_ACCEL";
/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Default QEMU binary.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// What a booting Linux kernel prints first on its console.
pub const LINUX_BANNER: &str = "Linux version";
/// What the probe kernel prints at its end (no root file system, `panic=-1`).
pub const KERNEL_PANIC: &str = "Kernel panic";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("invalid accelerator {0:?}: expected \"kvm\" or \"tcg\"")]
    InvalidAccel(String),
    #[error("{ACCEL_ENV}={0:?} is invalid: expected \"kvm\" or \"tcg\"")]
    InvalidAccelEnv(String),
    #[error("cannot start {binary}: {cause}")]
    Spawn { binary: String, cause: io::Error },
    #[error("{what}: {cause}")]
    Io {
        what: &'static str,
        cause: io::Error,
    },
}

/// The QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm` (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's software emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model that goes with the accelerator.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = QemuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(QemuError::InvalidAccel(s.to_string())),
        }
    }
}

/// Picks the accelerator: `$CERNVM_ACCEL` (`kvm`/`tcg`) if set, else KVM when `/dev/kvm` can be
/// opened read-write, else TCG.
///
/// An openable `/dev/kvm` does not prove that KVM works (on some hosts guests hang or fail with
/// "failed to set MSR"); use [`probe_kvm`] to find out.
pub fn detect_accel() -> Result<Accel, QemuError> {
    let env = std::env::var_os(ACCEL_ENV);
    detect_accel_with(
        env.as_deref().map(|v| v.to_string_lossy()).as_deref(),
        Path::new(KVM_DEVICE),
    )
}

/// [`detect_accel`] with the override value and the device path given explicitly.
pub fn detect_accel_with(
    env_override: Option<&str>,
    kvm_device: &Path,
) -> Result<Accel, QemuError> {
    if let Some(value) = env_override.filter(|v| !v.trim().is_empty()) {
        return value
            .parse()
            .map_err(|_| QemuError::InvalidAccelEnv(value.to_string()));
    }
    match OpenOptions::new().read(true).write(true).open(kvm_device) {
        Ok(_) => Ok(Accel::Kvm),
        Err(e) => {
            log::debug!("{}: {e}; using TCG", kvm_device.display());
            Ok(Accel::Tcg)
        }
    }
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: Option<String>,
    },
    /// Boot from an ISO image on a CD-ROM drive (`-boot order=d`).
    Iso(PathBuf),
}

/// Where the first serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// `-serial none`
    None,
    /// `-serial file:<path>`
    File(PathBuf),
    /// `-serial stdio`
    Stdio,
    /// `-serial mon:stdio`: the serial console on the user's terminal, with QEMU's monitor
    /// keys (Ctrl-a x quits, Ctrl-a c switches to the monitor).
    Terminal,
    /// A Unix socket server clients attach to (`console NAME`), with everything the guest
    /// writes also appended to `log` whether or not a client is attached.
    Socket { socket: PathBuf, log: PathBuf },
}

/// Image format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// QEMU user-mode (slirp) networking with a virtio-net NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    /// Guest network, e.g. `169.254.0.0/16` (needed for a `guestfwd` to 169.254.169.254).
    pub net: Option<String>,
    /// `guestfwd` rules, e.g. `tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080`.
    pub guestfwd: Vec<String>,
    /// `hostfwd` rules, e.g. `tcp:127.0.0.1:2222-:22`.
    pub hostfwd: Vec<String>,
}

/// Builder for a `qemu-system-x86_64` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    binary: PathBuf,
    name: Option<String>,
    machine: String,
    accel: Accel,
    memory_mib: u32,
    cpus: u32,
    boot: Option<Boot>,
    cdroms: Vec<PathBuf>,
    disks: Vec<(PathBuf, DiskFormat)>,
    net: Option<UserNet>,
    serial: Serial,
    qmp: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    daemonize: bool,
    no_reboot: bool,
    display_none: bool,
    vnc: Option<String>,
    incoming: Option<OsString>,
    shares: Vec<(PathBuf, String)>,
    extra: Vec<OsString>,
}

impl Default for QemuCommand {
    fn default() -> Self {
        Self::new()
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a literal comma is written twice).
fn escape_opt(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn concat(parts: &[&OsStr]) -> OsString {
    let mut out = OsString::new();
    for p in parts {
        out.push(p);
    }
    out
}

impl QemuCommand {
    /// Defaults: `qemu-system-x86_64`, machine `pc` (PIIX IDE: CD-ROMs work with `ata_piix`,
    /// which more kernels have than AHCI), TCG, 2048 MiB, 1 CPU, no network, no serial port,
    /// `-display none`.
    pub fn new() -> Self {
        QemuCommand {
            binary: PathBuf::from(QEMU_BINARY),
            name: None,
            machine: "pc".to_string(),
            accel: Accel::Tcg,
            memory_mib: 2048,
            cpus: 1,
            boot: None,
            cdroms: Vec::new(),
            disks: Vec::new(),
            net: None,
            serial: Serial::None,
            qmp: None,
            pidfile: None,
            daemonize: false,
            no_reboot: false,
            display_none: true,
            vnc: None,
            incoming: None,
            shares: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// `-vnc <display>`, e.g. `127.0.0.1:0,to=99` (the first free display from 5900 on).
    pub fn vnc(mut self, display: impl Into<String>) -> Self {
        self.vnc = Some(display.into());
        self
    }

    /// `-incoming <uri>`: resume a saved state (e.g. `exec:cat <file>`).
    pub fn incoming(mut self, uri: impl Into<OsString>) -> Self {
        self.incoming = Some(uri.into());
        self
    }

    /// A host directory exported over virtio-9p with mount tag `tag`.
    pub fn share(mut self, dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        self.shares.push((dir.into(), tag.into()));
        self
    }

    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// `-name`: shown in process listings and QMP.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = machine.into();
        self
    }

    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    pub fn accel_value(&self) -> Accel {
        self.accel
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Direct kernel boot.
    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        append: Option<String>,
    ) -> Self {
        self.boot = Some(Boot::Kernel {
            kernel: kernel.into(),
            initrd,
            append,
        });
        self
    }

    /// Boot from an ISO image.
    pub fn iso(mut self, iso: impl Into<PathBuf>) -> Self {
        self.boot = Some(Boot::Iso(iso.into()));
        self
    }

    /// An additional read-only CD-ROM (e.g. a context CD).
    pub fn cdrom(mut self, iso: impl Into<PathBuf>) -> Self {
        self.cdroms.push(iso.into());
        self
    }

    /// A qcow2 disk on virtio-blk.
    pub fn disk(self, path: impl Into<PathBuf>) -> Self {
        self.disk_with_format(path, DiskFormat::Qcow2)
    }

    /// A disk on virtio-blk in the given format.
    pub fn disk_with_format(mut self, path: impl Into<PathBuf>, format: DiskFormat) -> Self {
        self.disks.push((path.into(), format));
        self
    }

    /// User-mode networking with a virtio-net NIC; without it the guest has no NIC (`-nic none`).
    pub fn user_net(mut self, net: UserNet) -> Self {
        self.net = Some(net);
        self
    }

    pub fn serial(mut self, serial: Serial) -> Self {
        self.serial = serial;
        self
    }

    /// A QMP server on a Unix socket (QEMU creates it; does not wait for a client).
    pub fn qmp_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }

    /// `-pidfile`
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// `-daemonize`: QEMU detaches once the guest is set up.
    pub fn daemonize(mut self, daemonize: bool) -> Self {
        self.daemonize = daemonize;
        self
    }

    /// `-no-reboot`: a guest reboot (e.g. kernel panic with `panic=-1`) ends QEMU.
    pub fn no_reboot(mut self, no_reboot: bool) -> Self {
        self.no_reboot = no_reboot;
        self
    }

    /// `-display none` (default on).
    pub fn display_none(mut self, display_none: bool) -> Self {
        self.display_none = display_none;
        self
    }

    /// Extra raw arguments, appended last.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Where the serial console goes.
    pub fn serial_target(&self) -> &Serial {
        &self.serial
    }

    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        if let Some(name) = &self.name {
            push("-name");
            push(name);
        }
        push("-machine");
        push(&self.machine);
        push("-accel");
        push(self.accel.as_str());
        push("-cpu");
        push(self.accel.cpu_model());
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        match &self.boot {
            Some(Boot::Kernel {
                kernel,
                initrd,
                append,
            }) => {
                a.push("-kernel".into());
                a.push(kernel.into());
                if let Some(initrd) = initrd {
                    a.push("-initrd".into());
                    a.push(initrd.into());
                }
                if let Some(append) = append {
                    a.push("-append".into());
                    a.push(append.into());
                }
            }
            Some(Boot::Iso(iso)) => {
                a.push("-drive".into());
                a.push(concat(&[
                    OsStr::new("file="),
                    &escape_opt(iso.as_os_str()),
                    OsStr::new(",format=raw,media=cdrom,readonly=on"),
                ]));
                a.push("-boot".into());
                a.push("order=d".into());
            }
            None => {}
        }
        for iso in &self.cdroms {
            a.push("-drive".into());
            a.push(concat(&[
                OsStr::new("file="),
                &escape_opt(iso.as_os_str()),
                OsStr::new(",format=raw,media=cdrom,readonly=on"),
            ]));
        }
        for (disk, format) in &self.disks {
            a.push("-drive".into());
            a.push(concat(&[
                OsStr::new("file="),
                &escape_opt(disk.as_os_str()),
                OsStr::new(",format="),
                OsStr::new(format.as_str()),
                OsStr::new(",if=virtio"),
            ]));
        }
        match &self.net {
            Some(net) => {
                let mut netdev = OsString::from("user,id=net0");
                if let Some(n) = &net.net {
                    netdev.push(",net=");
                    netdev.push(escape_opt(OsStr::new(n)));
                }
                for rule in &net.hostfwd {
                    netdev.push(",hostfwd=");
                    netdev.push(escape_opt(OsStr::new(rule)));
                }
                for rule in &net.guestfwd {
                    netdev.push(",guestfwd=");
                    netdev.push(escape_opt(OsStr::new(rule)));
                }
                a.push("-netdev".into());
                a.push(netdev);
                a.push("-device".into());
                a.push("virtio-net-pci,netdev=net0".into());
            }
            None => {
                a.push("-nic".into());
                a.push("none".into());
            }
        }
        for (i, (dir, tag)) in self.shares.iter().enumerate() {
            a.push("-virtfs".into());
            a.push(concat(&[
                OsStr::new("local,path="),
                &escape_opt(dir.as_os_str()),
                OsStr::new(&format!(",mount_tag={tag},security_model=none,id=share{i}")),
            ]));
        }
        if let Serial::Socket { socket, log } = &self.serial {
            a.push("-chardev".into());
            a.push(concat(&[
                OsStr::new("socket,id=console,path="),
                &escape_opt(socket.as_os_str()),
                OsStr::new(",server=on,wait=off,logfile="),
                &escape_opt(log.as_os_str()),
                OsStr::new(",logappend=on"),
            ]));
        }
        a.push("-serial".into());
        match &self.serial {
            Serial::None => a.push("none".into()),
            Serial::Stdio => a.push("stdio".into()),
            Serial::Terminal => a.push("mon:stdio".into()),
            Serial::File(path) => a.push(concat(&[OsStr::new("file:"), path.as_os_str()])),
            Serial::Socket { .. } => a.push("chardev:console".into()),
        }
        if let Some(qmp) = &self.qmp {
            a.push("-qmp".into());
            a.push(concat(&[
                OsStr::new("unix:"),
                &escape_opt(qmp.as_os_str()),
                OsStr::new(",server=on,wait=off"),
            ]));
        }
        if let Some(pidfile) = &self.pidfile {
            a.push("-pidfile".into());
            a.push(pidfile.into());
        }
        if self.daemonize {
            a.push("-daemonize".into());
        }
        if self.no_reboot {
            a.push("-no-reboot".into());
        }
        if self.display_none {
            a.push("-display".into());
            a.push("none".into());
        }
        if let Some(vnc) = &self.vnc {
            a.push("-vnc".into());
            a.push(vnc.into());
        }
        if let Some(uri) = &self.incoming {
            a.push("-incoming".into());
            a.push(uri.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The binary to run.
    pub fn program(&self) -> &Path {
        &self.binary
    }

    /// A ready-to-spawn command.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(self.args());
        c
    }

    /// The command line as one shell-like string, for logs.
    pub fn display_command(&self) -> String {
        std::iter::once(self.binary.as_os_str().to_os_string())
            .chain(self.args())
            .map(|a| {
                let s = a.to_string_lossy().into_owned();
                if s.contains(' ') || s.is_empty() {
                    format!("'{s}'")
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Result of a boot probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The kernel printed its banner on the serial console after `elapsed`.
    Works { elapsed: Duration },
    /// It did not; the reason says why (QEMU error, exit without banner, timeout).
    Fails { reason: String },
}

impl ProbeOutcome {
    pub fn works(&self) -> bool {
        matches!(self, ProbeOutcome::Works { .. })
    }
}

/// Boots `kernel` under KVM (`-append "console=ttyS0 panic=-1"`, `-no-reboot`, serial console to
/// a temporary file) and reports KVM as working only if the kernel prints its `Linux version`
/// banner within `timeout`. QEMU is killed on timeout.
pub fn probe_kvm(kernel: &Path, timeout: Duration) -> Result<ProbeOutcome, QemuError> {
    probe_boot(QemuCommand::new(), Accel::Kvm, kernel, timeout)
}

/// Like [`probe_kvm`] for any accelerator, starting from `base` (binary, machine, …; boot, serial,
/// network and reboot settings are overridden).
pub fn probe_boot(
    base: QemuCommand,
    accel: Accel,
    kernel: &Path,
    timeout: Duration,
) -> Result<ProbeOutcome, QemuError> {
    let dir = tempfile::tempdir().map_err(|source| QemuError::Io {
        what: "cannot create a temporary directory",
        cause: source,
    })?;
    let console = dir.path().join("console.log");
    let stderr_path = dir.path().join("qemu.stderr");
    let cmd = QemuCommand {
        net: None,
        qmp: None,
        pidfile: None,
        daemonize: false,
        cdroms: Vec::new(),
        disks: Vec::new(),
        ..base
    }
    .accel(accel)
    .memory_mib(256)
    .cpus(1)
    .kernel(kernel, None, Some("console=ttyS0 panic=-1".to_string()))
    .serial(Serial::File(console.clone()))
    .no_reboot(true)
    .display_none(true);
    let stderr_file = std::fs::File::create(&stderr_path).map_err(|source| QemuError::Io {
        what: "cannot create the QEMU stderr log",
        cause: source,
    })?;
    log::debug!("probing {accel}: {}", cmd.display_command());
    let start = Instant::now();
    let mut child = cmd
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .map_err(|source| QemuError::Spawn {
            binary: cmd.program().display().to_string(),
            cause: source,
        })?;
    let guard = KillOnDrop(&mut child);
    let read_console = || {
        std::fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let read_stderr = || {
        std::fs::read(&stderr_path)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    };
    // KVM on some hosts starts a guest and hangs it later: the kernel must run to its end
    // (the panic for the missing root file system, after which `-no-reboot` ends QEMU).
    let finished = |log: &str| log.contains(LINUX_BANNER) && log.contains(KERNEL_PANIC);
    loop {
        if finished(&read_console()) {
            drop(guard);
            return Ok(ProbeOutcome::Works {
                elapsed: start.elapsed(),
            });
        }
        match guard.0.try_wait() {
            Ok(Some(status)) => {
                let log = read_console();
                // A kernel that printed its banner and ended QEMU through the panic reboot.
                if finished(&log) || (log.contains(LINUX_BANNER) && status.success()) {
                    return Ok(ProbeOutcome::Works {
                        elapsed: start.elapsed(),
                    });
                }
                let stderr = read_stderr();
                return Ok(ProbeOutcome::Fails {
                    reason: format!(
                        "QEMU exited ({status}) before the kernel finished booting{}",
                        if stderr.is_empty() {
                            String::new()
                        } else {
                            format!(": {stderr}")
                        }
                    ),
                });
            }
            Ok(None) => {}
            Err(source) => {
                return Err(QemuError::Io {
                    what: "cannot wait for QEMU",
                    cause: source,
                })
            }
        }
        if start.elapsed() >= timeout {
            drop(guard);
            let stderr = read_stderr();
            let seen = if read_console().contains(LINUX_BANNER) {
                "the kernel started but did not finish booting"
            } else {
                "no kernel output on the serial console"
            };
            return Ok(ProbeOutcome::Fails {
                reason: format!(
                    "{seen} within {:.1} s (guest hangs){}",
                    timeout.as_secs_f64(),
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!("; QEMU said: {stderr}")
                    }
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps a child process when dropped.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn kernel_boot_argv() {
        let cmd = QemuCommand::new()
            .accel(Accel::Tcg)
            .memory_mib(512)
            .cpus(2)
            .kernel(
                "/k/vmlinuz",
                Some(PathBuf::from("/k/initrd.cpio.zst")),
                Some("console=ttyS0 panic=-1".into()),
            )
            .serial(Serial::File(PathBuf::from("/tmp/console.log")))
            .no_reboot(true);
        assert_eq!(
            strs(&cmd.args()),
            [
                "-machine",
                "pc",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "512",
                "-smp",
                "2",
                "-kernel",
                "/k/vmlinuz",
                "-initrd",
                "/k/initrd.cpio.zst",
                "-append",
                "console=ttyS0 panic=-1",
                "-nic",
                "none",
                "-serial",
                "file:/tmp/console.log",
                "-no-reboot",
                "-display",
                "none",
            ]
        );
        assert_eq!(cmd.command().get_program(), "qemu-system-x86_64");
    }

    #[test]
    fn iso_boot_with_disk_network_and_qmp_argv() {
        let cmd = QemuCommand::new()
            .binary("/opt/qemu/bin/qemu-system-x86_64")
            .name("vm1")
            .machine("q35")
            .accel(Accel::Kvm)
            .iso("/images/ucernvm,prod.iso")
            .cdrom("/vm/context.iso")
            .disk("/vm/disk.qcow2")
            .user_net(UserNet {
                net: Some("169.254.0.0/16".into()),
                guestfwd: vec!["tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080".into()],
                hostfwd: vec!["tcp:127.0.0.1:2222-:22".into()],
            })
            .serial(Serial::Stdio)
            .qmp_socket("/vm/qmp.sock")
            .pidfile("/vm/qemu.pid")
            .daemonize(true)
            .arg("-S");
        assert_eq!(
            strs(&cmd.args()),
            [
                "-name",
                "vm1",
                "-machine",
                "q35",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "2048",
                "-smp",
                "1",
                "-drive",
                "file=/images/ucernvm,,prod.iso,format=raw,media=cdrom,readonly=on",
                "-boot",
                "order=d",
                "-drive",
                "file=/vm/context.iso,format=raw,media=cdrom,readonly=on",
                "-drive",
                "file=/vm/disk.qcow2,format=qcow2,if=virtio",
                "-netdev",
                "user,id=net0,net=169.254.0.0/16,hostfwd=tcp:127.0.0.1:2222-:22,\
                 guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080",
                "-device",
                "virtio-net-pci,netdev=net0",
                "-serial",
                "stdio",
                "-qmp",
                "unix:/vm/qmp.sock,server=on,wait=off",
                "-pidfile",
                "/vm/qemu.pid",
                "-daemonize",
                "-display",
                "none",
                "-S",
            ]
        );
        assert_eq!(
            cmd.command().get_program(),
            "/opt/qemu/bin/qemu-system-x86_64"
        );
        assert!(cmd.display_command().contains("'user,id=net0"));
    }

    #[test]
    fn serial_none_and_raw_disk() {
        let args = strs(
            &QemuCommand::new()
                .disk_with_format("/d.img", DiskFormat::Raw)
                .display_none(false)
                .args(),
        );
        assert!(args.windows(2).any(|w| w == ["-serial", "none"]));
        assert!(args
            .windows(2)
            .any(|w| w == ["-drive", "file=/d.img,format=raw,if=virtio"]));
        assert!(!args.iter().any(|a| a == "-display"));
    }

    #[test]
    fn accel_parsing() {
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!(" TCG ".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("hvf".parse::<Accel>().is_err());
    }

    #[test]
    fn detect_accel_honours_the_override() {
        let missing = Path::new("/nonexistent/kvm");
        assert_eq!(detect_accel_with(Some("kvm"), missing).unwrap(), Accel::Kvm);
        assert_eq!(detect_accel_with(Some("tcg"), missing).unwrap(), Accel::Tcg);
        let err = detect_accel_with(Some("xen"), missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CERNVM_ACCEL=\"xen\" is invalid: expected \"kvm\" or \"tcg\""
        );
        // Empty override is ignored.
        assert_eq!(detect_accel_with(Some(""), missing).unwrap(), Accel::Tcg);
    }

    #[test]
    fn detect_accel_falls_back_to_tcg_when_kvm_cannot_be_opened() {
        assert_eq!(
            detect_accel_with(None, Path::new("/nonexistent/kvm")).unwrap(),
            Accel::Tcg
        );
        // A read-only file cannot be opened read-write (unless we are root, where any regular
        // file can): use a directory, which can never be opened for writing.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_accel_with(None, dir.path()).unwrap(), Accel::Tcg);
        // A writable file stands in for a usable /dev/kvm.
        let fake = dir.path().join("kvm");
        std::fs::write(&fake, "").unwrap();
        assert_eq!(detect_accel_with(None, &fake).unwrap(), Accel::Kvm);
    }

    #[test]
    fn probe_reports_a_qemu_that_cannot_start() {
        let out = probe_boot(
            QemuCommand::new().binary("/nonexistent/qemu"),
            Accel::Tcg,
            Path::new("/nonexistent/vmlinuz"),
            Duration::from_secs(1),
        );
        assert!(matches!(out, Err(QemuError::Spawn { .. })), "{out:?}");
    }

    /// Writes an executable shell script standing in for QEMU.
    fn fake_qemu(dir: &Path, script: &str) -> PathBuf {
        let fake = dir.join("fake-qemu");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        fake
    }

    /// `probe_boot` with a fake QEMU, retrying when the freshly written script is still open for
    /// writing in a child forked by a concurrent test (ETXTBSY).
    fn probe_fake(fake: &Path, timeout: Duration) -> ProbeOutcome {
        for _ in 0..20 {
            match probe_boot(
                QemuCommand::new().binary(fake),
                Accel::Kvm,
                Path::new("/nonexistent/vmlinuz"),
                timeout,
            ) {
                Err(QemuError::Spawn { cause: source, .. })
                    if source.raw_os_error() == Some(26) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other.unwrap(),
            }
        }
        panic!("{} stays busy", fake.display());
    }

    #[test]
    fn probe_kills_a_hanging_qemu_on_timeout() {
        // A QEMU whose guest hangs: prints nothing and never exits.
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_qemu(
            dir.path(),
            "echo $$ > \"$(dirname \"$0\")/pid\"\nexec sleep 60\n",
        );
        let start = Instant::now();
        let out = probe_fake(&fake, Duration::from_millis(500));
        assert!(start.elapsed() < Duration::from_secs(10));
        match out {
            ProbeOutcome::Fails { reason } => assert!(reason.contains("within 0.5 s"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The process was killed and reaped: it no longer exists.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn probe_reports_qemu_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_qemu(
            dir.path(),
            "echo 'qemu-system-x86_64: error: failed to set MSR 0x38f to 0x7000000ff' >&2\nexit 1\n",
        );
        let out = probe_fake(&fake, Duration::from_secs(10));
        match out {
            ProbeOutcome::Fails { reason } => {
                assert!(reason.contains("failed to set MSR"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn probe_sees_the_banner() {
        // A fake QEMU that writes a banner to the file given as -serial file:<path>.
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_qemu(
            dir.path(),
            "for a in \"$@\"; do case \"$a\" in file:*) f=${a#file:};; esac; done\n\
             printf 'Linux version 6.1.0 (fake)\\nKernel panic - not syncing\\n' > \"$f\"\nexec sleep 60\n",
        );
        let out = probe_fake(&fake, Duration::from_secs(20));
        assert!(out.works(), "{out:?}");
    }
}
