//! The README's main job: publish a demo OS into a CernVM-FS repository served on this
//! machine, and boot µCernVM in QEMU from an empty scratch disk so that it streams that OS.
//! `scripts/demo` builds the pieces and runs this.
//!
//! The demo OS is a Debian minbase with sysvinit (`scripts/build-debian-os`, passed as
//! `--debian-os`); `--os busybox` takes the small busybox test OS of the fast tests instead.
//! Interactive by default (the serial console is this terminal); `--check` boots without a
//! terminal, waits for the OS login prompt and exits 0, or prints the console log and exits 1.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use cernvm_launch::qemu::{Accel, QemuCommand, Serial};
use qemu_tests::inputs;
use qemu_tests::media::blank_qcow2;
use qemu_tests::relay::CountingRelay;
use qemu_tests::scenario::{self, BootImage, BootSpec, OsRepository, OsSource};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

const DEMO_FQRN: &str = "demo-os.cernvm.test";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DemoOs {
    /// Debian minbase with sysvinit (`--debian-os`).
    Debian,
    /// The busybox test OS of the fast QEMU tests.
    Busybox,
}

#[derive(Parser)]
#[command(about = "Boot µCernVM in QEMU from a CernVM-FS repository served on this machine")]
struct Args {
    /// Boot without a terminal, wait for the OS login prompt, power off; exit 0 on success.
    #[arg(long)]
    check: bool,
    /// The OS to publish and boot.
    #[arg(long, value_enum, default_value = "debian")]
    os: DemoOs,
    /// The Debian demo OS tree (`.tar.zst` made by scripts/build-debian-os).
    #[arg(long)]
    debian_os: Option<PathBuf>,
    /// Timeout of `--check`, in seconds (default: 300 for busybox, 1200 for Debian under TCG).
    #[arg(long)]
    timeout: Option<u64>,
    /// Scratch disk size in MiB (a blank qcow2 is created for each run).
    #[arg(long, default_value_t = 4096)]
    disk_mib: u64,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// With `--check`: also save the whole console log of the boot to this file.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// More kernel command line parameters, e.g. `cvmdebug` (rescue shell before the OS starts).
    #[arg(long, default_value = "")]
    append: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (os, timeout) = match args.os {
        DemoOs::Debian => {
            let tarball = args.debian_os.clone().context(
                "the Debian demo OS needs --debian-os (made by scripts/build-debian-os); \
                 --os busybox boots the small test OS instead",
            )?;
            (OsSource::Tarball(tarball), 1200)
        }
        DemoOs::Busybox => (
            OsSource::Busybox(inputs::static_busybox().context("no static busybox")?),
            300,
        ),
    };
    let timeout = Duration::from_secs(args.timeout.unwrap_or(timeout));
    println!("* publishing the demo OS into the CernVM-FS repository {DEMO_FQRN}");
    let published = Instant::now();
    let repo = OsRepository::create_from(os, DEMO_FQRN, "demo-1", Some("demo-1"), |_| Ok(()))
        .context("cannot publish the demo repository")?;
    // The guest reaches the repository through a relay that counts what it downloads.
    let relay = CountingRelay::start(repo.port()).context("cannot start the relay")?;
    println!(
        "* published in {:.1} s ({:.1} MB); serving {} on http://127.0.0.1:{}/cvmfs/{DEMO_FQRN}",
        published.elapsed().as_secs_f64(),
        repo.published_bytes() as f64 / 1e6,
        repo.stratum0().display(),
        relay.port()
    );
    let image = BootImage::with_repository_key(&repo).context("cannot assemble the boot image")?;
    let work = tempfile::Builder::new()
        .prefix("ucernvm-demo-")
        .tempdir()
        .context("cannot create a work directory")?;
    let disk: PathBuf = work.path().join("scratch.qcow2");
    blank_qcow2(&disk, args.disk_mib).context("cannot create the scratch disk")?;
    let mut cmdline = format!(
        "cvmfs_url=http://10.0.2.2:{}/cvmfs/{DEMO_FQRN} cvmfs_repos={DEMO_FQRN} cvmfs_proxy=DIRECT",
        relay.port()
    );
    if !args.append.trim().is_empty() {
        cmdline = format!("{cmdline} {}", args.append.trim());
    }
    println!("* kernel command line: {cmdline}");
    println!(
        "  (to stream the real OS instead, boot with cvmfs_repos=cernvm-prod.cern.ch \
         cvmfs_server=cvmfs-stratum-one.cern.ch cernvm_path=cvm4 on a machine that reaches CERN)"
    );

    if args.check {
        let started = Instant::now();
        let mut guest = scenario::boot(BootSpec {
            memory_mib: args.memory,
            ..BootSpec::new(&image, &disk, cmdline)
        })?;
        for marker in [OS_READY_MARKER, OS_LOGIN_MARKER, "login:"] {
            if let Err(e) = guest.wait_for(marker, timeout.saturating_sub(started.elapsed())) {
                bail!("the demo boot failed: {e}");
            }
            println!("* {:>5.1} s: {marker}", started.elapsed().as_secs_f64());
        }
        println!(
            "* the CernVM reached its login prompt; it downloaded {:.1} MB of the {:.1} MB \
             repository; powering it off",
            relay.bytes_to_client() as f64 / 1e6,
            repo.published_bytes() as f64 / 1e6
        );
        guest.kill();
        if let Some(path) = &args.console_log {
            std::fs::write(path, guest.console().contents())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        return Ok(());
    }

    println!(
        "* booting; the VM's serial console is this terminal.\n  \
         Root's password is locked: run scripts/demo --append cvmdebug and type \
         reset_root_password in the rescue shell, then exit it; log in as root/password.\n  \
         Quit QEMU with Ctrl-a x."
    );
    let accel = match std::env::var("CERNVM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let cmd = QemuCommand::new()
        .accel(accel)
        .memory_mib(args.memory)
        .kernel(
            &image.kernel,
            Some(image.initrd.clone()),
            Some(format!("console=ttyS0 {cmdline}")),
        )
        .disk(&disk)
        .user_net(Default::default())
        .serial(Serial::Terminal)
        .no_reboot(true);
    let mut command = cmd.command();
    command
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = command.status().context("cannot start QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
