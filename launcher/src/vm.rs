//! The QEMU backend: what `create`, `start`, `stop`, `pause`, `destroy` and `list` do to one
//! machine directory (spec §17.5, §17.6).

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use path_error::PathError;
use serde_json::json;

use crate::accel;
use crate::config::{ConfigMap, MachineParams};
use crate::machine::MachinePaths;
use crate::process;
use crate::qemu::{QemuCommand, Serial, UserNet, QEMU_BINARY};
use crate::qmp::Qmp;

/// Errors of the VM operations (exit code 4).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0} not found on PATH; install it (Debian package {1})")]
    MissingTool(&'static str, &'static str),
    #[error("{0}")]
    Failed(String),
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Qmp(#[from] crate::qmp::QmpError),
}

fn failed(msg: impl Into<String>) -> VmError {
    VmError::Failed(msg.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io {
        what,
        cause: source,
    }
}

/// The QEMU binary: `$CERNVM_LAUNCH_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("CERNVM_LAUNCH_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_BINARY))
}

/// Finds `program` on PATH (or checks an explicit path).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Checks that QEMU and qemu-img are installed.
pub fn check_tools() -> Result<(), VmError> {
    if find_program(&qemu_binary()).is_none() {
        return Err(VmError::MissingTool(QEMU_BINARY, "qemu-system-x86"));
    }
    if find_program(Path::new("qemu-img")).is_none() {
        return Err(VmError::MissingTool("qemu-img", "qemu-utils"));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1: `preferred` if it can be bound, else one the kernel picks.
pub fn free_port(preferred: Option<u16>) -> Result<u16, VmError> {
    if let Some(p) = preferred {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("cannot find a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("cannot find a free port"))?
        .port())
}

/// Creates the sparse qcow2 scratch disk.
pub fn create_disk(path: &Path, size_mb: u64) -> Result<(), VmError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{size_mb}M"))
        .stdin(Stdio::null())
        .output()
        .map_err(|_| VmError::MissingTool("qemu-img", "qemu-utils"))?;
    if !out.status.success() {
        return Err(failed(format!(
            "qemu-img create {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The QEMU process of a machine if it is alive (a crashed QEMU is not).
pub fn running_pid(paths: &MachinePaths) -> Option<i32> {
    process::running_pid(&paths.pid_file, &paths.qmp_socket.to_string_lossy())
}

fn qmp(paths: &MachinePaths) -> Result<Qmp, VmError> {
    Ok(Qmp::connect(&paths.qmp_socket, Duration::from_secs(10))?)
}

/// The live state: `running`, `paused` (or another QMP run state), `saved` or `stopped`.
pub fn state(paths: &MachinePaths) -> String {
    if running_pid(paths).is_some() {
        return match qmp(paths).and_then(|mut q| Ok(q.execute("query-status", None)?)) {
            Ok(v) => match v["status"].as_str() {
                Some("running") => "running".into(),
                Some("paused") => "paused".into(),
                Some("inmigrate") => "resuming".into(),
                Some(other) => other.to_string(),
                None => "running".into(),
            },
            Err(_) => "running".into(),
        };
    }
    if paths.saved_state.is_file() {
        "saved".into()
    } else {
        "stopped".into()
    }
}

/// Quotes a path for `sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// The QEMU command line of a machine.
pub fn qemu_command(
    paths: &MachinePaths,
    params: &MachineParams,
    accel: crate::qemu::Accel,
    host_port: u16,
    resume: bool,
) -> Result<QemuCommand, VmError> {
    let iso = params
        .iso_path
        .clone()
        .ok_or_else(|| failed("the machine has no boot image (isoPath)"))?;
    let mut cmd = QemuCommand::new()
        .binary(qemu_binary())
        .name(params.name.clone())
        .accel(accel)
        .memory_mib(params.memory_mb)
        .cpus(params.cpus)
        .iso(iso)
        .cdrom(&paths.context_iso)
        .user_net(UserNet {
            hostfwd: vec![format!("tcp:127.0.0.1:{host_port}-:{}", params.api_port)],
            ..UserNet::default()
        })
        .serial(Serial::Socket {
            socket: paths.console_socket.clone(),
            log: paths.console_log.clone(),
        })
        .qmp_socket(&paths.qmp_socket)
        .pidfile(&paths.pid_file)
        .daemonize(true);
    if params.disk_mb > 0 {
        cmd = cmd.disk(&paths.disk);
    }
    if let Some(dir) = &params.shared_folder {
        cmd = cmd.share(dir, format!("{}_sf", params.name));
    }
    if params.headful() {
        // The VGA screen, for a VNC viewer; never on other addresses than 127.0.0.1.
        cmd = cmd.vnc("127.0.0.1:0,to=99");
    }
    if resume {
        cmd = cmd.incoming(format!("exec:cat {}", shell_quote(&paths.saved_state)));
    }
    Ok(cmd)
}

/// Starts QEMU for a stopped or saved machine. Returns a one-line summary.
pub fn start(
    data_dir: &Path,
    paths: &MachinePaths,
    params: &MachineParams,
) -> Result<String, VmError> {
    check_tools()?;
    let iso = params
        .iso_path
        .clone()
        .ok_or_else(|| failed("the machine has no boot image (isoPath)"))?;
    if !iso.is_file() {
        return Err(failed(format!(
            "boot image {} of {} is missing; restore it or destroy and create the machine again",
            iso.display(),
            params.name
        )));
    }
    for stale in [&paths.qmp_socket, &paths.pid_file, &paths.console_socket] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(path_error::io_err("cannot remove", stale)(e).into()),
        }
    }
    let choice = accel::choose(data_dir, &qemu_binary(), &iso).map_err(failed)?;
    let mut runtime = paths.load_runtime();
    let resume = paths.saved_state.is_file();
    let mut preferred = runtime.get("hostPort").and_then(|p| p.parse().ok());
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port(preferred.take())?;
        let cmd = qemu_command(paths, params, choice.accel, port, resume)?;
        log::debug!("{}", cmd.display_command());
        let out = cmd
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("cannot run {}", cmd.program().display())))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let _ = fs::write(
            &paths.qemu_log,
            format!("{}\n{stderr}\n", cmd.display_command()),
        );
        if !out.status.success() {
            last_error = stderr;
            if last_error.contains("host forwarding") {
                // Taken between our check and QEMU's bind (another launch): try another port.
                continue;
            }
            return Err(failed(format!(
                "QEMU failed to start {}: {last_error} (log: {})",
                params.name,
                paths.qemu_log.display()
            )));
        }
        runtime.set("hostPort", port.to_string());
        runtime.set("accel", choice.accel.as_str());
        runtime.set("accelReason", choice.reason.clone());
        paths
            .save_runtime(&runtime)
            .map_err(|e| failed(e.to_string()))?;
        if resume {
            wait_resumed(paths)?;
            let _ = fs::remove_file(&paths.saved_state);
        }
        let pid = running_pid(paths).unwrap_or(0);
        let vnc = if params.headful() {
            vnc_port(paths)
                .map(|p| format!(", screen: vnc://127.0.0.1:{p}"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        return Ok(format!(
            "{} {} (QEMU pid {pid}, {}: {}); ssh: 127.0.0.1:{port} -> {}{vnc}",
            if resume { "resumed" } else { "started" },
            params.name,
            choice.accel.as_str().to_uppercase(),
            choice.reason,
            params.api_port,
        ));
    }
    Err(failed(format!(
        "QEMU could not forward a host port to {} (tried 5 ports): {last_error}",
        params.name
    )))
}

fn vnc_port(paths: &MachinePaths) -> Option<u16> {
    let v = qmp(paths).ok()?.execute("query-vnc", None).ok()?;
    v["service"].as_str()?.parse().ok()
}

/// Waits until an incoming migration (a saved state) has been loaded and the guest runs.
fn wait_resumed(paths: &MachinePaths) -> Result<(), VmError> {
    let start = Instant::now();
    loop {
        if running_pid(paths).is_none() {
            return Err(failed(format!(
                "QEMU exited while loading the saved state {} (log: {})",
                paths.saved_state.display(),
                paths.qemu_log.display()
            )));
        }
        if let Ok(mut q) = qmp(paths) {
            match q.execute("query-status", None)?["status"].as_str() {
                Some("running") => return Ok(()),
                // The state was saved from a stopped guest: loaded, now let it run.
                Some("paused") | Some("postmigrate") | Some("restore-vm") => {
                    let m = q.execute("query-migrate", None)?;
                    if m["status"].as_str().is_none_or(|s| s == "completed") {
                        q.execute("cont", None)?;
                    }
                }
                _ => {}
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(failed("the saved state did not load within 300 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Resumes a paused machine.
pub fn resume_paused(paths: &MachinePaths) -> Result<(), VmError> {
    qmp(paths)?.execute("cont", None)?;
    Ok(())
}

/// Pauses a running machine.
pub fn pause(paths: &MachinePaths) -> Result<(), VmError> {
    qmp(paths)?.execute("stop", None)?;
    Ok(())
}

/// Saves the machine's state to `saved-state` (QMP migration to a file) and ends QEMU.
pub fn save_and_stop(paths: &MachinePaths) -> Result<(), VmError> {
    let pid = running_pid(paths).ok_or_else(|| failed("the machine is not running"))?;
    let tmp = paths.saved_state.with_extension("part");
    let mut q = qmp(paths)?;
    q.execute("stop", None)?;
    let result = (|| {
        q.execute(
            "migrate",
            Some(json!({ "uri": format!("exec:cat > {}", shell_quote(&tmp)) })),
        )?;
        let start = Instant::now();
        loop {
            let v = q.execute("query-migrate", None)?;
            match v["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(failed(format!(
                        "saving the state failed: {}",
                        v["error-desc"].as_str().unwrap_or("migration failed")
                    )))
                }
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(600) {
                return Err(failed("saving the state took more than 600 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        let _ = q.execute("cont", None);
        return Err(e);
    }
    // QEMU closes (and flushes) its disks on quit.
    let _ = q.execute("quit", None);
    if !process::wait_gone(pid, Duration::from_secs(30)) {
        let _ = process::terminate(pid);
        process::wait_gone(pid, Duration::from_secs(10));
    }
    fs::rename(&tmp, &paths.saved_state)
        .map_err(|e| path_error::io_err("cannot write", &paths.saved_state)(e).into())
}

/// Asks the guest to power off (ACPI); SIGTERM after `timeout`.
pub fn shutdown(paths: &MachinePaths, timeout: Duration) -> Result<bool, VmError> {
    let pid = running_pid(paths).ok_or_else(|| failed("the machine is not running"))?;
    let asked = qmp(paths).and_then(|mut q| Ok(q.execute("system_powerdown", None)?));
    if asked.is_ok() && process::wait_gone(pid, timeout) {
        return Ok(true);
    }
    kill(paths);
    Ok(false)
}

/// Ends QEMU at once (QMP quit, which closes the disks; SIGTERM, SIGKILL as fallbacks).
pub fn kill(paths: &MachinePaths) {
    let Some(pid) = running_pid(paths) else {
        return;
    };
    if let Ok(mut q) = Qmp::connect(&paths.qmp_socket, Duration::from_secs(3)) {
        let _ = q.execute("quit", None);
    }
    if process::wait_gone(pid, Duration::from_secs(10)) {
        return;
    }
    let _ = process::terminate(pid);
    if process::wait_gone(pid, Duration::from_secs(10)) {
        return;
    }
    // SAFETY: kill(2) on the pid recorded for this machine.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    process::wait_gone(pid, Duration::from_secs(5));
}

/// Writes the context CD-ROM if the user data changed since it was built.
pub fn refresh_context(paths: &MachinePaths, uuid: &str) -> Result<bool, VmError> {
    use sha2::{Digest, Sha256};
    let data =
        fs::read(&paths.user_data).map_err(path_error::io_err("cannot read", &paths.user_data))?;
    let digest: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut runtime = paths.load_runtime();
    if paths.context_iso.is_file() && runtime.get("contextDigest") == Some(digest.as_str()) {
        return Ok(false);
    }
    crate::context::build_context_iso(&paths.context_iso, &data, uuid)
        .map_err(|e| failed(e.to_string()))?;
    runtime.set("contextDigest", digest);
    paths
        .save_runtime(&runtime)
        .map_err(|e| failed(e.to_string()))?;
    Ok(true)
}

/// The parameters recorded for a machine.
pub fn load_params(paths: &MachinePaths) -> Result<(ConfigMap, MachineParams), VmError> {
    let map = paths.load_config().map_err(|e| failed(e.to_string()))?;
    let params = MachineParams::from_map(&map).map_err(|e| {
        failed(format!(
            "{}: {e}; fix the file or destroy the machine",
            paths.config.display()
        ))
    })?;
    Ok((map, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Accel;

    #[test]
    fn machine_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MachinePaths::new(dir.path(), "vm1").unwrap();
        let share = fs::canonicalize(dir.path()).unwrap();
        let mut map = ConfigMap::defaults();
        map.set("name", "vm1");
        map.set("isoPath", "/img/u.iso");
        map.set("sharedFolder", share.to_str().unwrap());
        let params = MachineParams::from_map(&map).unwrap();
        let args: Vec<String> = qemu_command(&paths, &params, Accel::Tcg, 40022, true)
            .unwrap()
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let has = |pair: [&str; 2]| args.windows(2).any(|w| w == pair);
        assert!(
            has(["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]),
            "{args:?}"
        );
        assert!(has([
            "-drive",
            "file=/img/u.iso,format=raw,media=cdrom,readonly=on"
        ]));
        assert!(has(["-boot", "order=d"]));
        let ctx = format!(
            "file={},format=raw,media=cdrom,readonly=on",
            paths.context_iso.display()
        );
        assert!(has(["-drive", &ctx]), "{args:?}");
        let virtfs = format!(
            "local,path={},mount_tag=vm1_sf,security_model=none,id=share0",
            share.display()
        );
        assert!(has(["-virtfs", &virtfs]), "{args:?}");
        assert!(has(["-serial", "chardev:console"]));
        assert!(has(["-vnc", "127.0.0.1:0,to=99"]));
        let incoming = format!("exec:cat '{}'", paths.saved_state.display());
        assert!(has(["-incoming", &incoming]), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("0.0.0.0")));
    }

    #[test]
    fn context_is_rebuilt_when_the_user_data_changes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MachinePaths::new(dir.path(), "vm1").unwrap();
        fs::create_dir(&paths.dir).unwrap();
        fs::write(&paths.user_data, "one\n").unwrap();
        assert!(refresh_context(&paths, "u").unwrap());
        assert!(!refresh_context(&paths, "u").unwrap());
        fs::write(&paths.user_data, "two\n").unwrap();
        assert!(refresh_context(&paths, "u").unwrap());
        assert!(!refresh_context(&paths, "u").unwrap());
    }
}
