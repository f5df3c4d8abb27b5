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
use clap::Parser;

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

/// The timeline printed by [`add_timeline_hook`], from a console log.
fn timeline_of(console: &str) -> String {
    let Some(start) = console.rfind(TIMELINE_MARKER) else {
        return "  (not printed)\n".into();
    };
    console[start + TIMELINE_MARKER.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(OS_LOGIN_MARKER))
        .map(|l| format!("  {}\n", l.trim_end()))
        .collect()
}

/// Boots until the OS init's first line; the time and the guest's console log.
fn timed_boot(mut guest: Guest) -> Result<(Duration, String)> {
    let start = Instant::now();
    guest
        .wait_for(OS_READY_MARKER, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let elapsed = start.elapsed();
    // The OS init syncs its boot counter before this line: the disk is consistent.
    guest
        .wait_for(OS_LOGIN_MARKER, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    guest.kill();
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let kernel = inputs::kernel().context("no kernel (kernel-config/fetch-debian-kernel)")?;
    let busybox = inputs::static_busybox().context("no static busybox")?;
    let work = tempfile::Builder::new().prefix("bench-boot-").tempdir()?;

    // Floor: the same OS tree on a local ext4 disk.
    let tree = work.path().join("os");
    build_busybox_os(&tree, &busybox, "floor")?;
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
    let repo = OsRepository::create_customized(FQRN, "r1", Some("r1"), add_timeline_hook)?;
    let image = BootImage::with_repository_key(&repo)?;
    let relay = CountingRelay::start(repo.port())?;
    let cmdline = format!(
        "cvmfs_url=http://10.0.2.2:{}/cvmfs/{FQRN} cvmfs_repos={FQRN} cvmfs_proxy=DIRECT",
        relay.port()
    );

    let (mut floor, mut first, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_bytes = Vec::new();
    let (mut first_timeline, mut warm_timeline) = (String::new(), String::new());
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        let cmd = QemuCommand::new()
            .accel(Accel::Tcg)
            .memory_mib(1024)
            .kernel(
                &kernel,
                Some(floor_initrd.clone()),
                Some("console=ttyS0 panic=-1".into()),
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
        args.save_console(run, "first", &console)?;
        first_bytes.push(relay.bytes_to_client() - before);
        let (t, console) = timed_boot(scenario::boot(spec())?)?;
        warm.push(t);
        warm_timeline = timeline_of(&console);
        args.save_console(run, "warm", &console)?;
    }
    let (floor, first, warm) = (median(floor), median(first), median(warm));
    let repo_bytes = repo.published_bytes();
    let rows = [
        ("floor: busybox initramfs, OS on a local ext4 disk", floor),
        ("µCernVM first boot (blank disk, OS streamed)", first),
        ("µCernVM second boot (same disk, cache warm)", warm),
    ];
    println!(
        "# bench-boot: QEMU (TCG) start → OS init's first line, median of {} runs",
        args.runs
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
    first_bytes.sort();
    println!(
        "first boot downloaded {:.2} MB (median); the whole repository is {:.2} MB",
        first_bytes[first_bytes.len() / 2] as f64 / 1e6,
        repo_bytes as f64 / 1e6
    );
    println!("\nboot timeline of the last first boot (saved by the init):\n{first_timeline}");
    println!("boot timeline of the last warm boot:\n{warm_timeline}");
    Ok(())
}
