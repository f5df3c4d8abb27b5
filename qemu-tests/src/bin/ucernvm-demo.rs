//! The README's main job: publish a demo OS into a CernVM-FS repository served on this
//! machine, and boot µCernVM in QEMU from an empty scratch disk so that it streams that OS.
//! `scripts/demo` builds the pieces and runs this.
//!
//! Interactive by default (the serial console is this terminal); `--check` boots without a
//! terminal, waits for the OS login prompt and exits 0, or prints the console log and exits 1.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use cernvm_launch::qemu::{Accel, QemuCommand, Serial};
use qemu_tests::media::blank_qcow2;
use qemu_tests::scenario::{self, BootImage, BootSpec, OsRepository};
use qemu_tests::test_os::{OS_LOGIN_MARKER, OS_READY_MARKER};

const DEMO_FQRN: &str = "demo-os.cernvm.test";

#[derive(Parser)]
#[command(about = "Boot µCernVM in QEMU from a CernVM-FS repository served on this machine")]
struct Args {
    /// Boot without a terminal, wait for the OS login prompt, power off; exit 0 on success.
    #[arg(long)]
    check: bool,
    /// Timeout of `--check`, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Scratch disk size in MiB (a blank qcow2 is created for each run).
    #[arg(long, default_value_t = 4096)]
    disk_mib: u64,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("* publishing the demo OS into the CernVM-FS repository {DEMO_FQRN}");
    let repo = OsRepository::create(DEMO_FQRN, "demo-1", Some("demo-1"))
        .context("cannot publish the demo repository")?;
    println!(
        "* serving {} on http://127.0.0.1:{}/cvmfs/{DEMO_FQRN}",
        repo.stratum0().display(),
        repo.port()
    );
    let image = BootImage::with_repository_key(&repo).context("cannot assemble the boot image")?;
    let work = tempfile::Builder::new()
        .prefix("ucernvm-demo-")
        .tempdir()
        .context("cannot create a work directory")?;
    let disk: PathBuf = work.path().join("scratch.qcow2");
    blank_qcow2(&disk, args.disk_mib).context("cannot create the scratch disk")?;
    let cmdline = scenario::repository_cmdline(&repo, "10.0.2.2");
    println!("* kernel command line: {cmdline}");
    println!(
        "  (to stream the real OS instead, boot with cvmfs_repos=cernvm-prod.cern.ch \
         cvmfs_server=cvmfs-stratum-one.cern.ch cernvm_path=cvm4 on a machine that reaches CERN)"
    );

    if args.check {
        let started = Instant::now();
        let mut guest = scenario::boot(BootSpec {
            image: &image,
            disk: &disk,
            cmdline,
            net: None,
            cdroms: Vec::new(),
            memory_mib: args.memory,
        })?;
        let timeout = Duration::from_secs(args.timeout);
        for marker in [OS_READY_MARKER, OS_LOGIN_MARKER, "login:"] {
            if let Err(e) = guest.wait_for(marker, timeout.saturating_sub(started.elapsed())) {
                bail!("the demo boot failed: {e}");
            }
            println!("* {:>5.1} s: {marker}", started.elapsed().as_secs_f64());
        }
        println!("* the CernVM reached its login prompt; powering it off");
        guest.kill();
        return Ok(());
    }

    println!(
        "* booting; the VM's serial console is this terminal.\n  \
         Log in is locked for root: boot with 'cvmdebug' and run reset_root_password in the \
         rescue shell to get root/password.\n  Quit QEMU with Ctrl-a x."
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
