//! Boot benchmark (issue 10): time from QEMU start to the OS init's first line, for µCernVM's
//! first boot (blank disk, everything streamed) and warm second boot (same disk, cache warm),
//! against the floor measured in the same run: the same kernel with a busybox-only initramfs
//! that loads the disk driver, mounts the same OS tree from a local ext4 disk and runs the
//! same OS init. Also reports the bytes the first boot downloaded (counted by a TCP relay in
//! front of the HTTP server), next to the size of the whole repository.
//!
//! `scripts/bench-boot [--runs N]` builds the inputs and runs this.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use cernvm_launch::qemu::{Accel, DiskFormat, QemuCommand};
use qemu_tests::kernel_modules::{module_closure, modules_dir};
use qemu_tests::media::blank_qcow2;
use qemu_tests::relay::CountingRelay;
use qemu_tests::scenario::{self, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT};
use qemu_tests::test_os::{build_busybox_os, OS_LOGIN_MARKER, OS_READY_MARKER};
use qemu_tests::{inputs, Guest};
use ucernvm_initramfs::Archive;

const FQRN: &str = "bench-os.cernvm.test";

#[derive(Parser)]
#[command(about = "µCernVM boot time against a busybox-only initramfs booting the same OS")]
struct Args {
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print the table as Markdown.
    #[arg(long)]
    markdown: bool,
    /// Save every boot's console log in this directory (`<run>-<boot>.log`).
    #[arg(long)]
    console_dir: Option<PathBuf>,
    /// The kernel both the floor and µCernVM boot: `custom`, the µCernVM kernel with
    /// everything built in (kernel-config/build-custom-kernel), or `debian`, Debian's cloud
    /// kernel with modules (kernel-config/fetch-debian-kernel).
    #[arg(long, value_enum, default_value_t = Kernel::Custom)]
    kernel: Kernel,
    /// The kernel's console messages: `quiet` (`quiet loglevel=3`, as the image's normal boot
    /// entry) or `verbose` (every message on the serial console, as the debug entry).
    #[arg(long, value_enum, default_value_t = KernelLog::Quiet)]
    kernel_log: KernelLog,
    /// Benchmark the systemd demo OS (`.tar.zst` made by scripts/build-debian-os) instead of
    /// the busybox test OS: boot to `login:` and to a successful ssh command.
    #[arg(long)]
    debian_os: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kernel {
    Custom,
    Debian,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KernelLog {
    Quiet,
    Verbose,
}

impl KernelLog {
    /// Kernel parameters after `console=ttyS0 panic=-1`.
    fn params(self) -> &'static str {
        match self {
            KernelLog::Quiet => " quiet loglevel=3",
            KernelLog::Verbose => "",
        }
    }
}

impl Kernel {
    /// The kernel image and the µCernVM initramfs built for it.
    fn inputs(self) -> Result<(PathBuf, PathBuf)> {
        Ok(match self {
            Kernel::Custom => (
                inputs::kernel().context("no kernel (kernel-config/build-custom-kernel)")?,
                inputs::initrd().context("no initramfs (scripts/build-initrd)")?,
            ),
            Kernel::Debian => (
                inputs::debian_kernel().context("no kernel (kernel-config/fetch-debian-kernel)")?,
                inputs::debian_initrd()
                    .context("no initramfs (scripts/build-initrd --kernel debian)")?,
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Custom => "the µCernVM kernel",
            Kernel::Debian => "Debian's cloud kernel",
        }
    }
}

impl Args {
    fn save_console(&self, run: usize, boot: &str, console: &str) -> Result<()> {
        if let Some(dir) = &self.console_dir {
            fs::create_dir_all(dir)?;
            let path = dir.join(format!("{run}-{boot}.log"));
            fs::write(&path, console)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// Printed by the benchmark OS's rc.d hook before the boot timeline µCernVM saved.
const TIMELINE_MARKER: &str = "UCERNVM-TEST-OS: boot timeline";

/// An rc.d hook of the µCernVM OS (it runs after the measured marker): prints the timeline the
/// init saved on the scratch disk (`init/src/timeline.rs`), on the console.
fn add_timeline_hook(tree: &Path) -> std::io::Result<()> {
    let hook = tree.join("etc/test-os/rc.d/50-boot-timeline");
    fs::write(
        &hook,
        format!("#!/bin/sh\necho \"{TIMELINE_MARKER}\"\ncat /mnt/.rw/ulogs/boot-timeline\n"),
    )?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
}

/// Printed by the benchmark OS's last rc.d hook before it shuts the machine down.
const POWER_OFF_MARKER: &str = "UCERNVM-TEST-OS: clean power-off";

/// The last rc.d hook of the benchmark OS (floor and µCernVM alike): a clean shutdown, so that
/// the next boot of the same disk finds what it finds after one (no journal to replay, no
/// crashed CernVM-FS cache). Under µCernVM the hook does what systemd-shutdown does: it pivots
/// into the `/run/initramfs` the boot loader prepared, whose `/shutdown` (drtini) unmounts the
/// union, tears CernVM-FS down to read-only and remounts the scratch disk read-only. The
/// floor's OS has no such initramfs: every file system read-only (an emergency remount, which
/// commits the ext4 journal and marks it clean), then power off.
fn add_power_off_hook(tree: &Path) -> std::io::Result<()> {
    let hook = tree.join("etc/test-os/rc.d/90-power-off");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh
echo \"{POWER_OFF_MARKER}\"
if [ -x /run/initramfs/shutdown ]; then
    mount --bind /run/initramfs /run/initramfs
    cd /run/initramfs && mkdir -p oldroot && pivot_root . oldroot && exec /shutdown poweroff
    echo \"cannot shut down through /run/initramfs; emergency remount\"
fi
sync
echo u > /proc/sysrq-trigger
\
             for i in $(seq 50); do dmesg | grep -q 'Emergency Remount complete' && break; usleep 100000; done\n\
             poweroff -f\n"
        ),
    )?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
}

/// The timeline printed by [`add_timeline_hook`], from a console log.
fn timeline_of(console: &str) -> String {
    let Some(start) = console.rfind(TIMELINE_MARKER) else {
        return "  (not printed)\n".into();
    };
    console[start + TIMELINE_MARKER.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(OS_LOGIN_MARKER) && !l.contains(POWER_OFF_MARKER))
        .map(|l| format!("  {}\n", l.trim_end()))
        .collect()
}

/// The init's own time, the `# total` of a timeline from [`timeline_of`].
fn init_seconds(timeline: &str) -> Option<f64> {
    timeline
        .lines()
        .find_map(|l| l.trim().strip_prefix("# total "))
        .and_then(|rest| rest.split('s').next())
        .and_then(|t| t.parse().ok())
}

/// Boots until the OS init's first line, then lets the OS power the machine off cleanly
/// ([`add_power_off_hook`]); the time and the guest's console log.
fn timed_boot(mut guest: Guest) -> Result<(Duration, String)> {
    let start = Instant::now();
    guest
        .wait_for(OS_READY_MARKER, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let elapsed = start.elapsed();
    guest
        .wait_for(POWER_OFF_MARKER, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if guest.wait_exit(Duration::from_secs(60)).is_err() {
        bail!("the OS did not power off:\n{}", guest.console().contents());
    }
    Ok((elapsed, guest.console().contents()))
}

/// The floor's initramfs: static busybox, the virtio disk modules, and an /init that mounts
/// /dev/vda and switches to the OS init.
fn floor_initramfs(kernel: &Path, busybox: &Path, dest: &Path) -> Result<()> {
    let files = module_closure(&modules_dir(kernel)?, &["virtio_pci", "virtio_blk", "ext4"])?;
    let mut a = Archive::new();
    a.add_dir("bin", 0o755)?
        .add_file("bin/busybox", fs::read(busybox)?, 0o755)?
        .add_symlink("bin/sh", "busybox")?
        .add_dir("dev", 0o755)?
        .add_char_device("dev/console", 5, 1, 0o600)?
        .add_dir("proc", 0o555)?
        .add_dir("sys", 0o555)?
        .add_dir("newroot", 0o755)?
        .add_dir("modules", 0o755)?;
    let mut script = String::from(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n/bin/busybox mount -t devtmpfs devtmpfs /dev\n",
    );
    for (i, f) in files.iter().enumerate() {
        let name = format!("modules/{i:02}.ko");
        // busybox insmod hands the bytes to init_module, which takes no compressed modules.
        if f.extension().is_none_or(|e| e != "ko") {
            bail!(
                "{}: only uncompressed modules are supported here",
                f.display()
            );
        }
        a.add_file(&name, fs::read(f)?, 0o644)?;
        script.push_str(&format!("/bin/busybox insmod /{name} 2>/dev/null\n"));
    }
    script.push_str(
        "while [ ! -b /dev/vda ]; do /bin/busybox usleep 10000; done\n\
         /bin/busybox mount -t ext4 /dev/vda /newroot\n\
         /bin/busybox umount /proc /sys /dev\n\
         exec /bin/busybox switch_root /newroot /sbin/init\n",
    );
    a.add_file("init", script, 0o755)?;
    let out = fs::File::create(dest)?;
    a.write_zstd(out, 3)?;
    Ok(())
}

fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map_or("?".into(), |v| v.get_name().to_string())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (kernel, initrd) = args.kernel.inputs()?;
    let busybox = inputs::static_busybox().context("no static busybox")?;
    let work = tempfile::Builder::new().prefix("bench-boot-").tempdir()?;
    if let Some(tarball) = &args.debian_os {
        return debian::bench(&args, tarball, &kernel, &initrd, &busybox, work.path());
    }

    // Floor: the same OS tree on a local ext4 disk.
    let tree = work.path().join("os");
    build_busybox_os(&tree, &busybox, "floor")?;
    add_power_off_hook(&tree)?;
    let floor_disk = work.path().join("floor.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&floor_disk)
        .arg("256M")
        .status()?;
    if !st.success() {
        bail!("mke2fs of the floor disk failed");
    }
    let floor_initrd = work.path().join("floor-initrd.img");
    floor_initramfs(&kernel, &busybox, &floor_initrd)?;

    // µCernVM: the same OS published and served through a counting relay.
    let repo = OsRepository::create_customized(FQRN, "r1", Some("r1"), |tree| {
        add_timeline_hook(tree)?;
        add_power_off_hook(tree)
    })?;
    let image = BootImage::for_kernel(&repo, kernel.clone(), &initrd)?;
    let relay = CountingRelay::start(repo.port())?;
    let cmdline = format!(
        "cvmfs_url=http://10.0.2.2:{}/cvmfs/{FQRN} cvmfs_repos={FQRN} cvmfs_proxy=DIRECT{}",
        relay.port(),
        args.kernel_log.params()
    );

    let (mut floor, mut first, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_bytes = Vec::new();
    let (mut first_timeline, mut warm_timeline) = (String::new(), String::new());
    let (mut first_init, mut warm_init) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        let cmd = QemuCommand::new()
            .accel(Accel::Tcg)
            .memory_mib(1024)
            .kernel(
                &kernel,
                Some(floor_initrd.clone()),
                Some(format!(
                    "console=ttyS0 panic=-1{}",
                    args.kernel_log.params()
                )),
            )
            .disk_with_format(&floor_disk, DiskFormat::Raw)
            .no_reboot(true);
        let (t, console) = timed_boot(Guest::spawn(cmd)?)?;
        floor.push(t);
        args.save_console(run, "floor", &console)?;

        let disk = work.path().join(format!("scratch-{run}.qcow2"));
        blank_qcow2(&disk, 4096)?;
        let before = relay.bytes_to_client();
        let spec = || BootSpec::new(&image, &disk, cmdline.clone());
        let (t, console) = timed_boot(scenario::boot(spec())?)?;
        first.push(t);
        first_timeline = timeline_of(&console);
        first_init.extend(init_seconds(&first_timeline));
        args.save_console(run, "first", &console)?;
        first_bytes.push(relay.bytes_to_client() - before);
        let (t, console) = timed_boot(scenario::boot(spec())?)?;
        warm.push(t);
        warm_timeline = timeline_of(&console);
        warm_init.extend(init_seconds(&warm_timeline));
        args.save_console(run, "warm", &console)?;
    }
    // Every run's seconds and ratio, so that the spread behind the medians is visible.
    let each = |v: &[Duration]| -> String {
        v.iter()
            .zip(&floor)
            .map(|(t, f)| {
                format!(
                    "{:.2} s ({:.2}×)",
                    t.as_secs_f64(),
                    t.as_secs_f64() / f.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let runs_text = format!(
        "each run (against its own floor): floor {}; first {}; warm {}",
        floor
            .iter()
            .map(|f| format!("{:.2} s", f.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        each(&first),
        each(&warm)
    );
    let (floor, first, warm) = (median(floor), median(first), median(warm));
    let repo_bytes = repo.published_bytes();
    let rows = [
        ("floor: busybox initramfs, OS on a local ext4 disk", floor),
        ("µCernVM first boot (blank disk, OS streamed)", first),
        ("µCernVM second boot (same disk, cache warm)", warm),
    ];
    println!(
        "# bench-boot --kernel {} --kernel-log {}: QEMU (TCG) start → OS init's first line, \
         median of {} runs; floor and µCernVM boot {}",
        value_name(args.kernel),
        value_name(args.kernel_log),
        args.runs,
        args.kernel.name()
    );
    if args.markdown {
        println!("| boot | seconds | × floor |\n|---|---|---|");
    }
    for (name, t) in rows {
        let ratio = t.as_secs_f64() / floor.as_secs_f64();
        if args.markdown {
            println!("| {name} | {:.2} | {ratio:.2}× |", t.as_secs_f64());
        } else {
            println!("{name:<52} {:>7.2} s  {ratio:>5.2}×", t.as_secs_f64());
        }
    }
    println!("{runs_text}");
    first_bytes.sort();
    println!(
        "first boot downloaded {:.2} MB (median); the whole repository is {:.2} MB",
        first_bytes[first_bytes.len() / 2] as f64 / 1e6,
        repo_bytes as f64 / 1e6
    );
    let seconds = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let median_of = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2)
            .map_or("–".to_string(), |m| format!("{m:.2} s"))
    };
    println!(
        "init (saved timeline's total, the kernel's start of /init → the OS's init): \
         first boot {} (median; runs {}), warm {} (median; runs {})",
        median_of(&mut first_init.clone()),
        seconds(&first_init),
        median_of(&mut warm_init.clone()),
        seconds(&warm_init)
    );
    println!("\nboot timeline of the last first boot (saved by the init):\n{first_timeline}");
    println!("boot timeline of the last warm boot:\n{warm_timeline}");
    Ok(())
}

/// The systemd demo OS: QEMU start → `login:` on the serial console, and → the first
/// successful `ssh … true` (what a user waits for), for the floor (the same OS tree on a local
/// ext4 disk behind the busybox initramfs), µCernVM's first boot and its warm boot after a clean
/// `systemctl poweroff`; with the bytes each µCernVM boot downloaded.
mod debian {
    use super::*;
    use cernvm_launch::qemu::UserNet;
    use qemu_tests::media::context_iso;
    use qemu_tests::scenario::OsSource;
    use qemu_tests::ssh::{self, SshKey};

    const FQRN: &str = "bench-debian.cernvm.test";
    const LOGIN: &str = "cernvm-demo login: ";
    const TIMEOUT: Duration = Duration::from_secs(1200);

    struct Timed {
        login: Duration,
        ssh: Duration,
    }

    /// Waits for the login prompt, then for ssh to work; returns both times from `start`.
    fn time_boot(
        guest: &mut Guest,
        start: Instant,
        port: u16,
        user: &str,
        key: &Path,
    ) -> Result<Timed> {
        guest
            .wait_for(LOGIN, TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let login = start.elapsed();
        loop {
            if ssh::run(port, user, key, "true")?.status.success() {
                break;
            }
            if start.elapsed() > TIMEOUT {
                bail!("no ssh login as {user} within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(Timed {
            login,
            ssh: start.elapsed(),
        })
    }

    pub fn bench(
        args: &Args,
        tarball: &Path,
        kernel: &Path,
        initrd: &Path,
        busybox: &Path,
        work: &Path,
    ) -> Result<()> {
        let key = SshKey::generate("bench@host")?;
        let port = ssh::free_port();
        let net = || UserNet {
            hostfwd: vec![ssh::hostfwd(port)],
            ..UserNet::default()
        };

        // Floor: the same tree on a local ext4 disk; root logs in with the key.
        let tree = work.join("floor-os");
        qemu_tests::scenario::unpack_tarball(tarball, &tree)?;
        let ssh_dir = tree.join("root/.ssh");
        fs::create_dir_all(&ssh_dir)?;
        fs::write(ssh_dir.join("authorized_keys"), format!("{}\n", key.public))?;
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(
            ssh_dir.join("authorized_keys"),
            fs::Permissions::from_mode(0o600),
        )?;
        // The kernel's modules (virtio_net for sshd), as µCernVM posts them to the OS.
        let modules = modules_dir(kernel)?;
        let dest = tree.join("lib/modules");
        fs::create_dir_all(&dest)?;
        if !Command::new("cp")
            .arg("-a")
            .arg(&modules)
            .arg(&dest)
            .status()?
            .success()
        {
            bail!("cannot copy {} into the floor OS", modules.display());
        }
        let floor_disk = work.join("floor.img");
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&tree)
            .arg(&floor_disk)
            .arg("1024M")
            .status()?;
        if !st.success() {
            bail!("mke2fs of the floor disk failed");
        }
        let floor_initrd = work.join("floor-initrd.img");
        floor_initramfs(kernel, busybox, &floor_initrd)?;

        // µCernVM: the OS streamed; a cloud-config user with the key on a config drive.
        let repo = OsRepository::create_from(
            OsSource::Tarball(tarball.to_path_buf()),
            FQRN,
            "bench",
            Some("r1"),
            |_| Ok(()),
        )?;
        let image = BootImage::for_kernel(&repo, kernel.to_path_buf(), initrd)?;
        let relay = CountingRelay::start(repo.port())?;
        let iso = work.join("config-2.iso");
        let user_data = format!(
            "#cloud-config\nusers:\n  - name: bench\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    \
             ssh_authorized_keys: [\"{}\"]\n",
            key.public
        );
        context_iso(
            &iso,
            "config-2",
            &[("openstack/latest/user_data", user_data.as_bytes())],
        )?;
        let cmdline = format!(
            "cvmfs_url=http://10.0.2.2:{}/cvmfs/{FQRN} cvmfs_repos={FQRN} cvmfs_proxy=DIRECT{}",
            relay.port(),
            args.kernel_log.params()
        );

        let (mut floor, mut first, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        let (mut first_bytes, mut warm_bytes) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            eprintln!("run {}/{}", run + 1, args.runs);
            let cmd = QemuCommand::new()
                .accel(Accel::Tcg)
                .memory_mib(1024)
                .kernel(
                    kernel,
                    Some(floor_initrd.clone()),
                    Some(format!(
                        "console=ttyS0 panic=-1{}",
                        args.kernel_log.params()
                    )),
                )
                .disk_with_format(&floor_disk, DiskFormat::Raw)
                .user_net(net())
                .no_reboot(true);
            let start = Instant::now();
            let mut guest = Guest::spawn(cmd)?;
            floor.push(time_boot(&mut guest, start, port, "root", &key.private)?);
            let _ = ssh::run(port, "root", &key.private, "systemctl poweroff");
            let _ = guest.wait_exit(TIMEOUT);
            args.save_console(run, "floor", &guest.console().contents())?;
            drop(guest);

            let disk = work.join(format!("scratch-{run}.qcow2"));
            blank_qcow2(&disk, 4096)?;
            let spec = |cdroms: Vec<PathBuf>| BootSpec {
                net: Some(net()),
                cdroms,
                ..BootSpec::new(&image, &disk, cmdline.clone())
            };
            for (name, times, bytes, cdroms) in [
                ("first", &mut first, &mut first_bytes, vec![iso.clone()]),
                ("warm", &mut warm, &mut warm_bytes, Vec::new()),
            ] {
                let before = relay.bytes_to_client();
                let start = Instant::now();
                let mut guest = scenario::boot(spec(cdroms))?;
                times.push(time_boot(&mut guest, start, port, "bench", &key.private)?);
                bytes.push(relay.bytes_to_client() - before);
                // A clean shutdown through drtini, so the warm boot finds a clean disk.
                let _ = ssh::run(port, "bench", &key.private, "sudo -n systemctl poweroff");
                if guest.wait_exit(TIMEOUT).is_err() {
                    bail!("the {name} boot did not power off");
                }
                args.save_console(run, name, &guest.console().contents())?;
            }
        }
        let med = |v: &[Timed], f: fn(&Timed) -> Duration| median(v.iter().map(f).collect());
        let med_bytes = |mut v: Vec<u64>| {
            v.sort();
            v[v.len() / 2]
        };
        let (fl, fs_) = (med(&floor, |t| t.login), med(&floor, |t| t.ssh));
        println!(
            "# bench-boot --debian-os: QEMU (TCG) start → `login:` and → first successful ssh, \
             median of {} runs",
            args.runs
        );
        if args.markdown {
            println!("| boot | login: s | × floor | ssh s | × floor | downloaded MB |\n|---|---|---|---|---|---|");
        }
        let rows = [
            (
                "floor: busybox initramfs, OS on a local ext4 disk",
                &floor,
                None,
            ),
            (
                "µCernVM first boot (blank disk, OS streamed)",
                &first,
                Some(med_bytes(first_bytes)),
            ),
            (
                "µCernVM warm boot (after poweroff, cache warm)",
                &warm,
                Some(med_bytes(warm_bytes)),
            ),
        ];
        for (name, v, bytes) in rows {
            let (l, s) = (med(v, |t| t.login), med(v, |t| t.ssh));
            let mb = bytes.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1e6));
            let (rl, rs) = (
                l.as_secs_f64() / fl.as_secs_f64(),
                s.as_secs_f64() / fs_.as_secs_f64(),
            );
            if args.markdown {
                println!(
                    "| {name} | {:.1} | {rl:.2}× | {:.1} | {rs:.2}× | {mb} |",
                    l.as_secs_f64(),
                    s.as_secs_f64()
                );
            } else {
                println!(
                    "{name:<50} login {:>6.1} s {rl:>5.2}×  ssh {:>6.1} s {rs:>5.2}×  {mb:>6} MB",
                    l.as_secs_f64(),
                    s.as_secs_f64()
                );
            }
        }
        println!(
            "the whole repository is {:.1} MB",
            repo.published_bytes() as f64 / 1e6
        );
        Ok(())
    }
}
