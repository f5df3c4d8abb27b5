//! The commands: configuration layers in, machine directories and hypervisor calls out.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use crate::cli::{exit, Command, CreateArgs, USAGE};
use crate::config::{flags, Backend, ConfigError, ConfigMap, MachineParams};
use crate::context::{self, DEFAULT_USER_DATA};
use crate::home::{Home, HomeError};
use crate::image;
use crate::libvirt;
use crate::machine::{self, MachineError, MachineLock, MachinePaths};
use crate::vm;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: exit::RUNTIME,
            message: message.to_string(),
        }
    }
    fn config(message: impl std::fmt::Display) -> Self {
        Failure {
            code: exit::CONFIG,
            message: message.to_string(),
        }
    }
}

impl From<HomeError> for Failure {
    fn from(e: HomeError) -> Self {
        match e {
            HomeError::Config(c) => Failure::config(c),
            other => Failure::runtime(other),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::config(e)
    }
}

impl From<MachineError> for Failure {
    fn from(e: MachineError) -> Self {
        Failure::runtime(e)
    }
}

impl From<vm::VmError> for Failure {
    fn from(e: vm::VmError) -> Self {
        Failure::runtime(e)
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Runs a parsed command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Help => Err(Failure {
            code: exit::USAGE,
            message: USAGE.to_string(),
        }),
        Command::Version => {
            println!(
                "CernVM-Launch 1.2.0 (cernvm-launch {} for QEMU/KVM and libvirt)",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Command::Create(args) => create(&Home::open()?, args),
        Command::List { running, name } => list(&Home::open()?, running, name.as_deref()),
        Command::Start { name } => {
            let home = Home::open()?;
            let paths = MachinePaths::new(&home.run_dir(), &name)?;
            let _lock = MachineLock::acquire(&paths)?;
            start(&home, &paths)
        }
        Command::Stop { name, shutdown } => stop(&Home::open()?, &name, shutdown),
        Command::Pause { name } => pause(&Home::open()?, &name),
        Command::Destroy { name, force } => destroy(&Home::open()?, &name, force),
        Command::Ssh {
            user,
            name,
            command,
        } => ssh(&Home::open()?, user, &name, &command),
        Command::Console { name } => console(&Home::open()?, &name),
    }
}

fn ask(question: &str) -> Option<String> {
    if !io::stdin().is_terminal() {
        return None;
    }
    eprint!("{question}");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer).ok()?;
    Some(answer.trim().to_string())
}

/// The configuration of a new machine: defaults < global < machine file < command line.
fn merged_config(home: &Home, args: &CreateArgs) -> Result<ConfigMap> {
    let mut global = home.global.clone();
    global.remove("launchHomeFolder");
    let machine = match &args.config_file {
        Some(path) => ConfigMap::load(path)?,
        None => ConfigMap::new(),
    };
    let mut map = ConfigMap::merged(&[&ConfigMap::defaults(), &global, &machine, &args.options]);
    // `userData` is always replaced by the user-data file or the default (spec §17.2).
    map.remove("userData");
    if args.options.get("isoPath").is_some() {
        let f = map.number("flags")?.unwrap_or(0) | u64::from(flags::DEPLOYMENT_ISO_LOCAL);
        map.set("flags", f.to_string());
    }
    Ok(map)
}

fn create(home: &Home, args: CreateArgs) -> Result<()> {
    let mut map = merged_config(home, &args)?;
    let user_data = match &args.user_data {
        Some(path) => fs::read(path).map_err(|e| {
            Failure::config(format!(
                "cannot read user data file {}: {e}",
                path.display()
            ))
        })?,
        None => {
            println!("No user data given; the default context is:\n{DEFAULT_USER_DATA}");
            match ask("Continue with default context? [Y/n] ") {
                Some(a)
                    if !(a.is_empty()
                        || a.eq_ignore_ascii_case("y")
                        || a.eq_ignore_ascii_case("yes")) =>
                {
                    println!("Not created.");
                    return Ok(());
                }
                Some(_) => {}
                None => println!("(no terminal: using the default context)"),
            }
            DEFAULT_USER_DATA.as_bytes().to_vec()
        }
    };
    if map.get("name").is_none() {
        let default = args
            .user_data
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .filter(|n| machine::validate_name(n).is_ok())
            .unwrap_or("CernVM")
            .to_string();
        let name = ask(&format!("Machine name [{default}]: "))
            .filter(|a| !a.is_empty())
            .unwrap_or(default);
        map.set("name", name);
    }
    let name = map.get("name").unwrap_or_default().to_string();
    machine::validate_name(&name)?;
    let params = MachineParams::from_map(&map)?;
    if params.backend == Backend::Qemu {
        vm::check_tools()?;
    } else {
        libvirt::check_tools().map_err(Failure::runtime)?;
    }
    let paths = MachinePaths::new(&home.run_dir(), &name)?;
    let lock = MachineLock::acquire(&paths)?;
    if paths.dir.is_dir() && !paths.exists() {
        // Left by a create that was killed: nobody else works on it while we hold the lock.
        let _ = fs::remove_dir_all(&paths.dir);
    }
    match fs::create_dir(&paths.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(MachineError::Exists(name).into());
        }
        Err(e) => {
            lock.remove();
            return Err(Failure::runtime(format!(
                "cannot create {}: {e}",
                paths.dir.display()
            )));
        }
    }
    match populate(home, &paths, map, &user_data) {
        Ok(params) => {
            println!(
                "Created {}: cpus={} memory={} disk={} cernvmVersion={} sharedFolder={} backend={}",
                params.name,
                params.cpus,
                params.memory_mb,
                params.disk_mb,
                params.cernvm_version,
                params
                    .shared_folder
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(none)".into()),
                params.backend.as_str()
            );
            if args.no_start {
                return Ok(());
            }
            if let Err(e) = start(home, &paths) {
                // A machine that cannot start is not left behind half made.
                remove_machine(&paths);
                lock.remove();
                return Err(Failure::runtime(format!(
                    "{}; the machine was not kept",
                    e.message
                )));
            }
            Ok(())
        }
        Err(e) => {
            remove_machine(&paths);
            lock.remove();
            Err(e)
        }
    }
}

/// Everything `create` puts into a new machine directory.
fn populate(
    home: &Home,
    paths: &MachinePaths,
    mut map: ConfigMap,
    user_data: &[u8],
) -> Result<MachineParams> {
    let params = MachineParams::from_map(&map)?;
    let resolved = match &params.iso_path {
        Some(iso) => image::local_iso(iso),
        None => image::released_iso(
            &home.cache_dir(),
            &params.release_url,
            &params.cernvm_flavor,
            &params.cernvm_version,
            params.ca_path.as_deref(),
        ),
    }
    .map_err(Failure::runtime)?;
    map.set("isoPath", resolved.path.display().to_string());
    map.set("cernvmVersion", resolved.version);
    map.set("uuid", uuid::Uuid::new_v4().to_string());
    let params = MachineParams::from_map(&map)?;
    machine::write_atomic(&paths.config, map.to_string().as_bytes())?;
    machine::write_atomic(&paths.user_data, user_data)?;
    vm::refresh_context(paths, map.get("uuid").unwrap_or_default())?;
    if params.disk_mb > 0 {
        vm::create_disk(&paths.disk, params.disk_mb)?;
    }
    let mut runtime = paths.load_runtime();
    runtime.set("hostPort", vm::free_port(None)?.to_string());
    paths.save_runtime(&runtime)?;
    if params.backend == Backend::Libvirt {
        libvirt::define(paths, &params).map_err(Failure::runtime)?;
    }
    Ok(params)
}

/// Kills whatever runs for the machine and removes its directory (one retry, as the original).
fn remove_machine(paths: &MachinePaths) {
    if let Ok((_, params)) = vm::load_params(paths) {
        if params.backend == Backend::Libvirt {
            let _ = libvirt::undefine(&params.name);
        }
    }
    vm::kill(paths);
    if fs::remove_dir_all(&paths.dir).is_err() {
        std::thread::sleep(Duration::from_secs(1));
        let _ = fs::remove_dir_all(&paths.dir);
    }
}

fn start(home: &Home, paths: &MachinePaths) -> Result<()> {
    let (map, params) = vm::load_params(paths)?;
    if params.backend == Backend::Libvirt {
        let msg = libvirt::start(paths, &params).map_err(Failure::runtime)?;
        println!("{msg}");
        return Ok(());
    }
    match vm::state(paths).as_str() {
        "running" => {
            println!("{} is already running", params.name);
            return Ok(());
        }
        "paused" => {
            vm::resume_paused(paths)?;
            println!("{} resumed", params.name);
            return Ok(());
        }
        _ => {}
    }
    if vm::refresh_context(paths, map.get("uuid").unwrap_or_default())? {
        log::info!("context CD-ROM of {} rebuilt", params.name);
    }
    let summary = vm::start(&home.data_dir, paths, &params)?;
    println!("{summary}");
    if params.execution_cap < 100 {
        // QEMU itself has no CPU cap; libvirt applies it as a cgroup quota.
        println!(
            "  note: executionCap={} is not applied by the QEMU backend (backend=libvirt applies it)",
            params.execution_cap
        );
    }
    println!(
        "  console: cernvm-launch console {0} (log {1}); login: cernvm-launch ssh {0}",
        params.name,
        paths.console_log.display()
    );
    Ok(())
}

fn locked_machine(home: &Home, name: &str) -> Result<(MachinePaths, MachineLock, MachineParams)> {
    let paths = MachinePaths::new(&home.run_dir(), name)?;
    let lock = MachineLock::acquire(&paths)?;
    let (_, params) = vm::load_params(&paths)?;
    Ok((paths, lock, params))
}

fn stop(home: &Home, name: &str, shutdown: bool) -> Result<()> {
    let (paths, _lock, params) = locked_machine(home, name)?;
    if params.backend == Backend::Libvirt {
        println!(
            "{}",
            libvirt::stop(&params.name, shutdown).map_err(Failure::runtime)?
        );
        return Ok(());
    }
    let state = vm::state(&paths);
    if vm::running_pid(&paths).is_none() {
        println!("{name} is not running ({state})");
        return Ok(());
    }
    if shutdown {
        if vm::shutdown(&paths, Duration::from_secs(120))? {
            println!("{name} powered off");
        } else {
            println!("{name} did not power off within 120 s and was terminated");
        }
    } else {
        vm::save_and_stop(&paths)?;
        println!(
            "{name} stopped; its state is saved ({}), start resumes it",
            paths.saved_state.display()
        );
    }
    Ok(())
}

fn pause(home: &Home, name: &str) -> Result<()> {
    let (paths, _lock, params) = locked_machine(home, name)?;
    if params.backend == Backend::Libvirt {
        libvirt::pause(&params.name).map_err(Failure::runtime)?;
    } else {
        if vm::running_pid(&paths).is_none() {
            return Err(Failure::runtime(format!("{name} is not running")));
        }
        vm::pause(&paths)?;
    }
    println!("{name} paused; start resumes it");
    Ok(())
}

fn destroy(home: &Home, name: &str, force: bool) -> Result<()> {
    let (paths, lock, params) = locked_machine(home, name)?;
    let running = if params.backend == Backend::Libvirt {
        libvirt::state(&params.name).is_ok_and(|s| s == "running" || s == "paused")
    } else {
        vm::running_pid(&paths).is_some()
    };
    if running && !force {
        let answer = ask(&format!("{name} is running. Destroy it? [y/N] ")).unwrap_or_default();
        if !(answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes")) {
            println!("{name} not destroyed (use --force without a terminal)");
            return Ok(());
        }
    }
    remove_machine(&paths);
    if paths.dir.exists() {
        return Err(Failure::runtime(format!(
            "cannot remove {}; remove it by hand",
            paths.dir.display()
        )));
    }
    lock.remove();
    println!("{name} destroyed");
    Ok(())
}

fn list(home: &Home, running_only: bool, name: Option<&str>) -> Result<()> {
    let machines = match name {
        Some(n) => {
            let p = MachinePaths::new(&home.run_dir(), n)?;
            if !p.exists() {
                return Err(MachineError::NotFound(n.to_string()).into());
            }
            vec![p]
        }
        None => machine::list(&home.run_dir())?,
    };
    for paths in machines {
        let (map, params) = match vm::load_params(&paths) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cernvm-launch: {}: {e}", paths.name);
                continue;
            }
        };
        let state = if params.backend == Backend::Libvirt {
            libvirt::state(&params.name).unwrap_or_else(|e| format!("unknown ({e})"))
        } else {
            vm::state(&paths)
        };
        let runtime = paths.load_runtime();
        let port = runtime.get("hostPort").unwrap_or("-").to_string();
        if running_only && state != "running" {
            continue;
        }
        if name.is_none() {
            println!("{}", list_line(&params.name, &params.cernvm_version, &port));
            continue;
        }
        print!(
            "{}",
            list_details(&map, &params, &paths.dir, &port, &state, &runtime)
        );
    }
    Ok(())
}

/// `list`: the original's line.
pub fn list_line(name: &str, version: &str, port: &str) -> String {
    format!("{name}:\tCVM: {version}\tport: {port}")
}

/// `list NAME`: the original's block plus this launcher's state, backend and accelerator.
pub fn list_details(
    map: &ConfigMap,
    params: &MachineParams,
    dir: &Path,
    port: &str,
    state: &str,
    runtime: &ConfigMap,
) -> String {
    let mut s = format!("{}:\tCVM: {}\n", params.name, params.cernvm_version);
    for key in ["cpus", "memory", "disk", "executionCap", "cernvmVersion"] {
        s += &format!("\t{key}: {}\n", map.get(key).unwrap_or(""));
    }
    s += &format!("\tbaseFolder: {}\n", dir.display());
    s += &format!(
        "\tforwarded ports: {} (VM) --> {port} (localhost)\n",
        params.api_port
    );
    if let Some(sf) = &params.shared_folder {
        s += &format!(
            "\tsharedFolder: {} (tag {}_sf)\n",
            sf.display(),
            params.name
        );
    }
    s += &format!("\tbackend: {}\n", params.backend.as_str());
    if let Some(accel) = runtime.get("accel") {
        s += &format!("\taccelerator: {accel}\n");
    }
    s += &format!("\tstate: {state}\n");
    s
}

fn ssh(home: &Home, user: Option<String>, name: &str, command: &[String]) -> Result<()> {
    let paths = MachinePaths::new(&home.run_dir(), name)?;
    let (_, params) = vm::load_params(&paths)?;
    let state = if params.backend == Backend::Libvirt {
        libvirt::state(&params.name).map_err(Failure::runtime)?
    } else {
        vm::state(&paths)
    };
    if state != "running" {
        return Err(Failure::runtime(format!(
            "{name} is not running ({state}); start it with cernvm-launch start {name}"
        )));
    }
    let port = paths
        .load_runtime()
        .get("hostPort")
        .map(str::to_string)
        .ok_or_else(|| Failure::runtime(format!("{name} has no forwarded port")))?;
    let user = match user {
        Some(u) => u,
        None => {
            let default = fs::read(&paths.user_data)
                .ok()
                .and_then(|d| context::default_login(&String::from_utf8_lossy(&d)));
            let prompt = format!(
                "User name{}: ",
                default
                    .as_deref()
                    .map(|d| format!(" [{d}]"))
                    .unwrap_or_default()
            );
            match ask(&prompt).filter(|a| !a.is_empty()).or(default) {
                Some(u) => u,
                None => {
                    return Err(Failure {
                        code: exit::USAGE,
                        message: format!("ssh: give the user as USER@{name}"),
                    })
                }
            }
        }
    };
    let err = ssh_command(&paths, &params, &user, &port, command).exec();
    Err(Failure::runtime(format!(
        "cannot run ssh (Debian package openssh-client): {err}"
    )))
}

/// The system `ssh` for a machine: its own known-hosts file (a recreated machine with the same
/// name or port does not trigger host key warnings; a new key is accepted without asking).
pub fn ssh_command(
    paths: &MachinePaths,
    params: &MachineParams,
    user: &str,
    port: &str,
    command: &[String],
) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.args(["-p", port])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            paths.known_hosts.display()
        ))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .args(["-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("HostKeyAlias=cernvm-{}", params.name));
    if let Some(identity) = &params.ssh_identity {
        c.arg("-i").arg(identity);
    }
    if command.is_empty() && io::stdin().is_terminal() && std::env::var_os("DISPLAY").is_some() {
        c.arg("-Y");
    }
    if !io::stdin().is_terminal() {
        // Nobody to type a password or passphrase: fail instead of waiting.
        c.args(["-o", "BatchMode=yes"]);
        if command.is_empty() {
            c.arg("-T");
        }
    }
    c.arg(format!("{user}@127.0.0.1"));
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    c
}

fn console(home: &Home, name: &str) -> Result<()> {
    let paths = MachinePaths::new(&home.run_dir(), name)?;
    let (_, params) = vm::load_params(&paths)?;
    if params.backend == Backend::Libvirt {
        let err = std::process::Command::new("virsh")
            .args(libvirt::connect_args())
            .args(["console", &libvirt::domain_name(&params.name)])
            .exec();
        return Err(Failure::runtime(format!("cannot run virsh: {err}")));
    }
    if vm::running_pid(&paths).is_none() {
        return Err(Failure::runtime(format!(
            "{name} is not running; its last console output is in {}",
            paths.console_log.display()
        )));
    }
    crate::console::attach(name, &paths.console_socket, &paths.console_log)
        .map_err(Failure::runtime)
}

/// Parses and runs the command line; returns the exit code.
pub fn main_with_args(args: &[String]) -> u8 {
    let command = match crate::cli::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cernvm-launch: {e}");
            if e.exit_code() == exit::USAGE {
                eprintln!("{USAGE}");
            }
            return e.exit_code();
        }
    };
    match run(command) {
        Ok(()) => exit::OK,
        Err(f) if f.code == exit::USAGE && f.message == USAGE => {
            eprintln!("{USAGE}");
            f.code
        }
        Err(f) => {
            eprintln!("cernvm-launch: error: {}", f.message);
            f.code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_formats() {
        assert_eq!(
            list_line("demo", "2026.11-1", "40022"),
            "demo:\tCVM: 2026.11-1\tport: 40022"
        );
        let mut map = ConfigMap::defaults();
        map.set("name", "demo");
        map.set("cernvmVersion", "2026.11-1");
        let params = MachineParams::from_map(&map).unwrap();
        let mut rt = ConfigMap::new();
        rt.set("accel", "tcg");
        let text = list_details(
            &map,
            &params,
            Path::new("/d/run/demo"),
            "40022",
            "running",
            &rt,
        );
        assert_eq!(
            text,
            "demo:\tCVM: 2026.11-1\n\tcpus: 1\n\tmemory: 2048\n\tdisk: 20000\n\texecutionCap: 100\n\
             \tcernvmVersion: 2026.11-1\n\tbaseFolder: /d/run/demo\n\
             \tforwarded ports: 22 (VM) --> 40022 (localhost)\n\tbackend: qemu\n\
             \taccelerator: tcg\n\tstate: running\n"
        );
    }
}
