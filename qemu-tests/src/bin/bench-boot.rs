//! Boot benchmark (issue 10): time from QEMU start to the OS init's first line, for µCernVM's
//! first boot (blank disk, everything streamed) and warm second boot (same disk, cache warm),
//! against the floor measured in the same run: the same kernel with a busybox-only initramfs
//! that loads the disk driver, mounts the same OS tree from a local ext4 disk and runs the
//! same OS init. Also reports the bytes the first boot downloaded (counted by a TCP relay in
//! front of the HTTP server), next to the size of the whole repository.
//!
//! `scripts/bench-boot [--runs N]` builds the inputs and runs this.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use cernvm_launch::qemu::{Accel, DiskFormat, QemuCommand};
use qemu_tests::media::blank_qcow2;
use qemu_tests::scenario::{self, BootImage, BootSpec, OsRepository, BOOT_TIMEOUT};
use qemu_tests::test_os::{build_busybox_os, OS_LOGIN_MARKER, OS_READY_MARKER};
use qemu_tests::{inputs, Guest};
use ucernvm_init::modules::ModuleIndex;
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
}

/// Forwards 127.0.0.1:<port> to `target`, counting the bytes sent towards the client.
fn counting_relay(target: u16, counter: Arc<AtomicU64>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone())
                else {
                    return;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = s_read.read(&mut buf) {
                    if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(port)
}

fn timed_boot(mut guest: Guest) -> Result<Duration> {
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
    Ok(elapsed)
}

/// The floor's initramfs: static busybox, the virtio disk modules, and an /init that mounts
/// /dev/vda and switches to the OS init.
fn floor_initramfs(kernel: &Path, busybox: &Path, dest: &Path) -> Result<()> {
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel file name is not vmlinuz-<release>")?;
    let mdir = kernel
        .parent()
        .and_then(Path::parent)
        .context("kernel is not in <root>/boot")?
        .join("lib/modules")
        .join(version);
    let index = ModuleIndex::open(&mdir)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for m in ["virtio_pci", "virtio_blk", "ext4"] {
        for f in index.plan(m, &|_| false)? {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
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

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_size(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
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
    let repo = OsRepository::create(FQRN, "r1", Some("r1"))?;
    let image = BootImage::with_repository_key(&repo)?;
    let downloaded = Arc::new(AtomicU64::new(0));
    let relay = counting_relay(repo.port(), Arc::clone(&downloaded))?;
    let cmdline = format!(
        "cvmfs_url=http://10.0.2.2:{relay}/cvmfs/{FQRN} cvmfs_repos={FQRN} cvmfs_proxy=DIRECT"
    );

    let (mut floor, mut first, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_bytes = Vec::new();
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
        floor.push(timed_boot(Guest::spawn(cmd)?)?);

        let disk = work.path().join(format!("scratch-{run}.qcow2"));
        blank_qcow2(&disk, 4096)?;
        let before = downloaded.load(Ordering::Relaxed);
        let spec = || BootSpec {
            image: &image,
            disk: &disk,
            cmdline: cmdline.clone(),
            net: None,
            cdroms: Vec::new(),
            memory_mib: 1024,
        };
        first.push(timed_boot(scenario::boot(spec())?)?);
        first_bytes.push(downloaded.load(Ordering::Relaxed) - before);
        warm.push(timed_boot(scenario::boot(spec())?)?);
    }
    let (floor, first, warm) = (median(floor), median(first), median(warm));
    let repo_bytes = dir_size(&repo.stratum0());
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
    Ok(())
}
