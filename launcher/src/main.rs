//! `cernvm-launch`: creates, lists, starts, stops and destroys CernVM instances on QEMU.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use cernvm_launch::instances::{self, Instance, InstancePaths, Store};
use cernvm_launch::process;
use cernvm_launch::qemu::{self, Accel, ProbeOutcome, QemuCommand, Serial, UserNet};
use cernvm_launch::qmp::Qmp;

/// File in the state directory holding the result of the last `probe-kvm`.
const KVM_PROBE_FILE: &str = "kvm-probe.json";

#[derive(Parser)]
#[command(version, about = "Creates and runs CernVM instances on QEMU")]
struct Cli {
    /// Where instance definitions and disks live
    /// [default: $XDG_DATA_HOME/cernvm-launch or ~/.local/share/cernvm-launch].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Defines a new instance and creates its (empty, sparse) scratch disk.
    Create {
        name: String,
        /// µCernVM boot image (ISO).
        #[arg(long, value_name = "ISO")]
        image: PathBuf,
        /// User data for contextualization.
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
        /// Memory in MiB.
        #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(128..))]
        memory: u32,
        /// Number of virtual CPUs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        cpus: u32,
        /// Size of the scratch disk in GiB.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        disk_size: u32,
    },
    /// Lists the instances and whether they are running.
    List,
    /// Boots an instance (in the background unless --foreground).
    Start {
        name: String,
        /// Stay attached: the serial console on stdin/stdout, return when QEMU exits.
        #[arg(long)]
        foreground: bool,
        /// Accelerator (kvm or tcg); default: $CERNVM_ACCEL, else KVM if usable.
        #[arg(long, value_name = "ACCEL")]
        accel: Option<Accel>,
    },
    /// Shuts an instance down (ACPI power button via QMP, SIGTERM as fallback).
    Stop {
        name: String,
        /// Send SIGTERM right away instead of asking the guest to power off.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guest to power off before sending SIGTERM.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Deletes an instance and its disk.
    Destroy {
        name: String,
        /// Terminate the instance first if it is running.
        #[arg(long)]
        force: bool,
    },
    /// Checks whether KVM really boots a kernel here; `start` falls back to TCG if it does not.
    ProbeKvm {
        /// A Linux kernel image (bzImage/vmlinuz) to boot.
        #[arg(long, value_name = "VMLINUZ")]
        kernel: PathBuf,
        /// Seconds to wait for the kernel banner on the serial console.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct KvmProbeRecord {
    works: bool,
    detail: String,
    kernel: PathBuf,
}

fn canonical_file(path: &Path, what: &str) -> Result<PathBuf> {
    let canonical =
        fs::canonicalize(path).with_context(|| format!("{what} {} not found", path.display()))?;
    if !canonical.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    Ok(canonical)
}

/// The recorded QEMU pid of a running instance.
fn running(paths: &InstancePaths) -> Option<i32> {
    process::running_pid(&paths.pid_file, &paths.dir.to_string_lossy())
}

fn create(store: &Store, instance: Instance) -> Result<()> {
    let paths = store.create(&instance)?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&paths.disk)
        .arg(format!("{}G", instance.disk_size_gib))
        .stdin(Stdio::null())
        .output();
    let failure = match out {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "qemu-img create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "cannot run qemu-img (Debian package qemu-utils): {e}"
        )),
    };
    if let Some(msg) = failure {
        store
            .remove(&instance.name)
            .with_context(|| format!("{msg}; removing the half-created instance failed too"))?;
        bail!(msg);
    }
    println!(
        "created {}: {} CPU(s), {} MiB, {} GiB disk, image {}",
        instance.name,
        instance.cpus,
        instance.memory_mib,
        instance.disk_size_gib,
        instance.image.display()
    );
    Ok(())
}

fn list(store: &Store) -> Result<()> {
    let all = store.list()?;
    if all.is_empty() {
        println!("no instances in {}", store.root().display());
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>4} {:>8} {:>6}  IMAGE",
        "NAME", "STATE", "CPUS", "MEMORY", "DISK"
    );
    for i in all {
        let paths = store.paths(&i.name)?;
        let state = match running(&paths) {
            Some(_) => "running",
            None => "stopped",
        };
        println!(
            "{:<20} {:<8} {:>4} {:>5}MiB {:>3}GiB  {}",
            i.name,
            state,
            i.cpus,
            i.memory_mib,
            i.disk_size_gib,
            i.image.display()
        );
    }
    Ok(())
}

/// --accel, else $CERNVM_ACCEL, else KVM if /dev/kvm opens and the last probe did not fail.
fn choose_accel(store: &Store, explicit: Option<Accel>) -> Result<Accel> {
    if let Some(a) = explicit {
        return Ok(a);
    }
    let overridden = std::env::var_os(qemu::ACCEL_ENV).is_some_and(|v| !v.is_empty());
    let accel = qemu::detect_accel()?;
    if accel == Accel::Kvm && !overridden {
        let probe_file = store.root().join(KVM_PROBE_FILE);
        match fs::read(&probe_file) {
            Ok(bytes) => {
                let record: KvmProbeRecord = serde_json::from_slice(&bytes)
                    .with_context(|| format!("malformed {}", probe_file.display()))?;
                if !record.works {
                    eprintln!(
                        "cernvm-launch: KVM failed its last probe ({}); using TCG",
                        record.detail
                    );
                    return Ok(Accel::Tcg);
                }
            }
            Err(_) => eprintln!(
                "cernvm-launch: using KVM without having probed it; if the guest hangs, run \
                 `cernvm-launch probe-kvm --kernel <vmlinuz>` or set {}=tcg",
                qemu::ACCEL_ENV
            ),
        }
    }
    Ok(accel)
}

fn start(store: &Store, name: &str, foreground: bool, accel: Option<Accel>) -> Result<()> {
    let instance = store.load(name)?;
    let paths = store.paths(name)?;
    if let Some(pid) = running(&paths) {
        bail!("{name} is already running (pid {pid})");
    }
    if !instance.image.is_file() {
        bail!(
            "boot image {} of {name} is missing",
            instance.image.display()
        );
    }
    if instance.user_data.is_some() {
        eprintln!(
            "cernvm-launch: warning: user data is recorded but not yet handed to the guest \
             (no context CD or metadata service yet)"
        );
    }
    let accel = choose_accel(store, accel)?;
    // Stale files of a previous run would make QEMU fail or mislead `running`.
    for stale in [&paths.qmp_socket, &paths.pid_file] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", stale.display())),
        }
    }
    let cmd = QemuCommand::new()
        .name(name)
        .accel(accel)
        .memory_mib(instance.memory_mib)
        .cpus(instance.cpus)
        .iso(&instance.image)
        .disk(&paths.disk)
        .user_net(UserNet::default())
        .qmp_socket(&paths.qmp_socket)
        .pidfile(&paths.pid_file)
        .serial(if foreground {
            Serial::Terminal
        } else {
            Serial::File(paths.console_log.clone())
        })
        .daemonize(!foreground);
    log::debug!("{}", cmd.display_command());
    if foreground {
        let status = cmd
            .command()
            .status()
            .with_context(|| format!("cannot run {}", cmd.program().display()))?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        return Ok(());
    }
    let out = cmd
        .command()
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", cmd.program().display()))?;
    if !out.status.success() {
        bail!(
            "QEMU failed to start {name} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pid = process::read_pid_file(&paths.pid_file)
        .with_context(|| format!("QEMU wrote no pid to {}", paths.pid_file.display()))?;
    println!(
        "started {name} (pid {pid}, {accel}); console: {}",
        paths.console_log.display()
    );
    Ok(())
}

fn stop(store: &Store, name: &str, force: bool, timeout: Duration) -> Result<()> {
    store.load(name)?;
    let paths = store.paths(name)?;
    let Some(pid) = running(&paths) else {
        println!("{name} is not running");
        return Ok(());
    };
    if !force {
        let powerdown = Qmp::connect(&paths.qmp_socket, Duration::from_secs(5))
            .and_then(|mut q| q.execute("system_powerdown", None));
        match powerdown {
            Ok(_) => {
                eprintln!("cernvm-launch: asked {name} to power off; waiting up to {timeout:?}");
                if process::wait_gone(pid, timeout) {
                    println!("{name} powered off");
                    return Ok(());
                }
                eprintln!("cernvm-launch: {name} did not power off in time; sending SIGTERM");
            }
            Err(e) => eprintln!("cernvm-launch: QMP powerdown failed ({e}); sending SIGTERM"),
        }
    }
    process::terminate(pid).with_context(|| format!("cannot signal QEMU (pid {pid})"))?;
    if !process::wait_gone(pid, Duration::from_secs(10)) {
        bail!("QEMU (pid {pid}) is still running 10 s after SIGTERM");
    }
    println!("{name} stopped");
    Ok(())
}

fn destroy(store: &Store, name: &str, force: bool) -> Result<()> {
    store.load(name)?;
    let paths = store.paths(name)?;
    if running(&paths).is_some() {
        if !force {
            bail!("{name} is running; stop it first or use --force");
        }
        stop(store, name, true, Duration::ZERO)?;
    }
    store.remove(name)?;
    println!("destroyed {name}");
    Ok(())
}

fn probe_kvm(store: &Store, kernel: &Path, timeout: Duration) -> Result<()> {
    let kernel = canonical_file(kernel, "kernel")?;
    let outcome = qemu::probe_kvm(&kernel, timeout)?;
    let (works, detail) = match &outcome {
        ProbeOutcome::Works { elapsed } => (
            true,
            format!("kernel banner after {:.1} s", elapsed.as_secs_f64()),
        ),
        ProbeOutcome::Fails { reason } => (false, reason.clone()),
    };
    println!(
        "KVM {}: {detail}",
        if works { "works" } else { "does not work" }
    );
    fs::create_dir_all(store.root())
        .with_context(|| format!("cannot create {}", store.root().display()))?;
    let record = KvmProbeRecord {
        works,
        detail,
        kernel,
    };
    let path = store.root().join(KVM_PROBE_FILE);
    fs::write(&path, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cernvm-launch: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let state_dir = match cli.state_dir {
        Some(dir) => dir,
        None => instances::default_state_dir()?,
    };
    let store = Store::new(state_dir);
    match cli.command {
        Cmd::Create {
            name,
            image,
            user_data,
            memory,
            cpus,
            disk_size,
        } => {
            instances::validate_name(&name)?;
            let instance = Instance {
                name,
                memory_mib: memory,
                cpus,
                disk_size_gib: disk_size,
                image: canonical_file(&image, "boot image")?,
                user_data: user_data
                    .map(|u| canonical_file(&u, "user data"))
                    .transpose()?,
            };
            create(&store, instance)
        }
        Cmd::List => list(&store),
        Cmd::Start {
            name,
            foreground,
            accel,
        } => start(&store, &name, foreground, accel),
        Cmd::Stop {
            name,
            force,
            timeout,
        } => stop(&store, &name, force, Duration::from_secs(timeout)),
        Cmd::Destroy { name, force } => destroy(&store, &name, force),
        Cmd::ProbeKvm { kernel, timeout } => {
            probe_kvm(&store, &kernel, Duration::from_secs(timeout))
        }
    }
}
