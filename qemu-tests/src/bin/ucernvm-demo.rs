//! The README's main job: publish a demo OS into a CernVM-FS repository served on this
//! machine, build a µCernVM ISO with `scripts/build-iso`, and boot it with `cernvm-launch`
//! from an empty scratch disk, so that it streams that OS. `scripts/demo` builds the pieces and
//! runs this.
//!
//! The user data (on the launcher's context CD-ROM) points µCernVM at the demo repository and
//! gives the default user `user` the caller's ssh public key and a demo key generated here.
//! Interactive by default (the launcher's `console`); `--check` runs without a terminal: waits
//! for the OS login prompt, runs `cernvm-launch ssh user@<name> -- uname -a`, destroys the
//! machine and exits 0, or prints the console log and exits 1.
//!
//! The demo OS is a Debian minbase (`scripts/build-debian-os`, passed as `--debian-os`);
//! `--os busybox` takes the small busybox test OS of the fast tests (with dropbear) instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use qemu_tests::inputs;
use qemu_tests::launch::{build_iso, cernvm_user_data, generate_ssh_key, GUEST_GATEWAY};
use qemu_tests::relay::CountingRelay;
use qemu_tests::scenario::{BootImage, OsRepository, OsSource};
use qemu_tests::test_os::{add_dropbear, OS_LOGIN_MARKER, OS_READY_MARKER};

const DEMO_FQRN: &str = "demo-os.cernvm.test";
const DEMO_TAG: &str = "demo-1";
const DEMO_USER: &str = "user";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DemoOs {
    /// Debian minbase (`--debian-os`).
    Debian,
    /// The busybox test OS of the fast QEMU tests, with dropbear.
    Busybox,
}

#[derive(Parser)]
#[command(about = "Boot a CernVM with cernvm-launch from a CernVM-FS repository served here")]
struct Args {
    /// Run without a terminal: wait for the login prompt, ssh in, destroy; exit 0 on success.
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
    /// Scratch disk size in MB.
    #[arg(long, default_value_t = 4096)]
    disk_mb: u64,
    /// Memory of the VM in MB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Name of the machine.
    #[arg(long, default_value = "ucernvm-demo")]
    name: String,
    /// With `--check`: also save the whole console log of the boot to this file.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Directory for the ISO and the demo key [build/demo].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// The launcher binary next to this one (same build), else the workspace's.
fn launcher() -> Result<PathBuf> {
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("cernvm-launch")))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    inputs::workspace_binary("cernvm-launch")
        .context("cernvm-launch is not built (cargo build -p cernvm-launch)")
}

/// Destroys the demo machine when the demo ends, however it ends.
struct Machine {
    launcher: PathBuf,
    name: String,
    console_log: PathBuf,
}

impl Machine {
    fn launch(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.launcher);
        c.args(args);
        c
    }

    fn console(&self) -> String {
        std::fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_for(&self, marker: &str, deadline: Instant) -> Result<()> {
        while Instant::now() < deadline {
            if self.console().contains(marker) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("no {marker:?} on the console in time");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let st = self
            .launch(&["destroy", "--force", &self.name])
            .stdin(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!(
                "* could not destroy {}; run: cernvm-launch destroy --force {}",
                self.name, self.name
            );
        }
    }
}

/// The caller's ssh public keys (`~/.ssh/id_*.pub`).
fn callers_keys() -> String {
    let Some(home) = std::env::var_os("HOME") else {
        return String::new();
    };
    let dir = Path::new(&home).join(".ssh");
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

fn random_password() -> String {
    let mut bytes = [0u8; 9];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    let launcher = launcher()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| inputs::workspace_root().join("build/demo"));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    println!("* publishing the demo OS into the CernVM-FS repository {DEMO_FQRN}");
    let published = Instant::now();
    let busybox = args.os == DemoOs::Busybox;
    let mut has_sshd = busybox;
    let repo = OsRepository::create_from(os, DEMO_FQRN, "demo-1", Some(DEMO_TAG), |tree| {
        if busybox {
            add_dropbear(tree)
        } else {
            has_sshd = ["usr/sbin/sshd", "usr/sbin/dropbear"]
                .iter()
                .any(|p| tree.join(p).exists());
            Ok(())
        }
    })
    .context("cannot publish the demo repository")?;
    // The guest reaches the repository through a relay that counts what it downloads.
    let relay = CountingRelay::start(repo.port()).context("cannot start the relay")?;
    let server = format!("{GUEST_GATEWAY}:{}", relay.port());
    println!(
        "* published in {:.1} s ({:.1} MB); serving {} on http://127.0.0.1:{}/cvmfs/{DEMO_FQRN}",
        published.elapsed().as_secs_f64(),
        repo.published_bytes() as f64 / 1e6,
        repo.stratum0().display(),
        relay.port()
    );

    let image = BootImage::with_repository_key(&repo).context("cannot assemble the boot image")?;
    let iso = build_iso(
        &image,
        DEMO_FQRN,
        &server,
        DEMO_TAG,
        &work.join("ucernvm-demo.iso"),
    )
    .context("cannot build the ISO")?;
    println!("* built {} with scripts/build-iso", iso.display());

    let key = work.join("id_demo");
    for f in [key.clone(), work.join("id_demo.pub")] {
        let _ = std::fs::remove_file(f);
    }
    let demo_key = generate_ssh_key(&key)?;
    let keys = format!("{}\n{demo_key}", callers_keys());
    let password = random_password();
    let user_data = work.join("user-data");
    std::fs::write(
        &user_data,
        cernvm_user_data(DEMO_FQRN, &server, DEMO_TAG, DEMO_USER, &password, &keys),
    )?;
    let machine_conf = work.join("machine.conf");
    std::fs::write(
        &machine_conf,
        format!(
            "# the demo's machine (cernvm-launch format)\nsshIdentity={}\nmemory={}\ndisk={}\n",
            key.display(),
            args.memory,
            args.disk_mb
        ),
    )?;
    println!(
        "* user data {}: repository {DEMO_FQRN} on {server}, user {DEMO_USER} (password {password}) with your ssh keys and the demo key",
        user_data.display()
    );

    let iso_s = iso.to_string_lossy().into_owned();
    let st = Command::new(&launcher)
        .args(["create", "--name", &args.name, "--iso", &iso_s])
        .arg(&user_data)
        .arg(&machine_conf)
        .stdin(Stdio::null())
        .status()
        .context("cannot run cernvm-launch")?;
    if !st.success() {
        bail!("cernvm-launch create failed ({st})");
    }
    let list = Command::new(&launcher)
        .args(["list", &args.name])
        .output()
        .context("cannot run cernvm-launch list")?;
    let details = String::from_utf8_lossy(&list.stdout).into_owned();
    let console_log = details
        .lines()
        .find_map(|l| l.trim().strip_prefix("baseFolder: "))
        .map(|d| Path::new(d).join("console.log"))
        .context("cernvm-launch list shows no baseFolder")?;
    let machine = Machine {
        launcher: launcher.clone(),
        name: args.name.clone(),
        console_log,
    };

    if !args.check {
        println!(
            "* attaching to the console (detach with Ctrl-], which ends the demo and destroys the VM).\n  \
             In another terminal: cernvm-launch ssh {DEMO_USER}@{}",
            args.name
        );
        let _ = machine.launch(&["console", &args.name]).status();
        return Ok(());
    }

    let started = Instant::now();
    let deadline = started + timeout;
    let result = (|| -> Result<()> {
        for marker in [OS_READY_MARKER, OS_LOGIN_MARKER, "login:"] {
            machine.wait_for(marker, deadline)?;
            println!("* {:>5.1} s: {marker}", started.elapsed().as_secs_f64());
        }
        let target = format!("{DEMO_USER}@{}", args.name);
        if !has_sshd {
            bail!(
                "cannot check cernvm-launch ssh {target} -- uname -a: the demo OS has no ssh \
                 server (usr/sbin/sshd or usr/sbin/dropbear); scripts/build-debian-os builds one \
                 that has"
            );
        }
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = machine
                .launch(&["ssh", &target, "--", "uname", "-a"])
                .stdin(Stdio::null())
                .output()?;
            if out.status.success() {
                println!(
                    "* {:>5.1} s: cernvm-launch ssh {target} -- uname -a: {}",
                    started.elapsed().as_secs_f64(),
                    String::from_utf8_lossy(&out.stdout).trim()
                );
                return Ok(());
            }
            last = format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::thread::sleep(Duration::from_secs(3));
        }
        bail!("cernvm-launch ssh {target} -- uname -a did not succeed: {last}")
    })();
    if let Some(path) = &args.console_log {
        std::fs::write(path, machine.console())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match result {
        Ok(()) => {
            println!(
                "* the CernVM booted to its login prompt and took an ssh login; it downloaded \
                 {:.1} MB of the {:.1} MB repository; destroying it",
                relay.bytes_to_client() as f64 / 1e6,
                repo.published_bytes() as f64 / 1e6
            );
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "----- console log -----\n{}\n----- end of console log -----",
                machine.console()
            );
            Err(e.context("the demo check failed"))
        }
    }
}
