//! `cvmfs2`: mounts a CernVM-FS repository with FUSE (spec §10.1, §11.2).
//!
//! `cvmfs2 [-f] [-d] [-s] -o config=FILE[:FILE2][,allow_other,…] <fqrn> <mountpoint>`
//!
//! Without `-f` the process forks before anything else starts a thread; the child becomes a
//! session leader, completes the initialisation (cache, keys, manifest, whitelist, root catalog),
//! mounts FUSE and only then tells the waiting parent, which exits 0. Any failure before the
//! mount leaves nothing mounted: the parent prints one line `cvmfs2: <fqrn>: <reason>` and exits
//! 1. Unmounting ends the daemon.

// The daemon serves the OS root: a panic there takes the whole OS with it. Test code may
// unwrap (clippy.toml).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::undocumented_unsafe_blocks
)]

mod fuse;
mod passthrough;
mod talk_server;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use cvmfs_client::config::{Config, DEFAULT_CONFIG_ROOT};
use cvmfs_client::mount::{FuseOptions, MountSettings};
use cvmfs_client::repository::{RemountOutcome, Repository, RepositoryOptions};
use cvmfs_config::keys::{CVMFS_QUOTA_LIMIT, CVMFS_TALK_SOCKET, CVMFS_TIMEOUT_DIRECT};
use fuse::CvmfsFs;
use fuser::{MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::ForkResult;
use talk_server::TalkContext;

/// FUSE worker threads (parallel reads must not serialise).
const FUSE_THREADS: usize = 8;
/// `CVMFS_USYSLOG` is rotated to `<file>.1` beyond this size.
const USYSLOG_MAX: u64 = 500 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "cvmfs2",
    about = "Mounts a CernVM-FS repository (FUSE)",
    version
)]
struct Args {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging (implies -f).
    #[arg(short = 'd')]
    debug: bool,
    /// Single-threaded FUSE loop.
    #[arg(short = 's')]
    single_threaded: bool,
    /// Print the parsed configuration and exit (like -o parse).
    #[arg(short = 'k')]
    parse: bool,
    /// Mount options, comma-separated (config=FILE[:FILE…], allow_other, parse, …).
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// Configuration root directory.
    #[arg(long, hide = true, default_value = DEFAULT_CONFIG_ROOT)]
    config_root: PathBuf,
    /// Repository name.
    fqrn: String,
    /// Where to mount.
    mountpoint: Option<PathBuf>,
}

/// What the `-o` options ask for.
#[derive(Debug)]
struct MountArgs {
    config_files: Option<String>,
    parse: bool,
    foreground: bool,
    debug: bool,
    single_threaded: bool,
    suid: bool,
    acl: SessionACL,
    fuse: Vec<MountOption>,
}

fn parse_mount_options(args: &Args) -> Result<MountArgs, String> {
    let mut m = MountArgs {
        config_files: None,
        parse: args.parse,
        foreground: args.foreground || args.debug,
        debug: args.debug,
        single_threaded: args.single_threaded,
        suid: false,
        acl: SessionACL::Owner,
        fuse: Vec::new(),
    };
    for opt in args
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("config", Some(v)) => m.config_files = Some(v.to_string()),
            ("parse", None) => m.parse = true,
            ("foreground", None) => m.foreground = true,
            ("debug", None) | ("fuse_debug", None) => {
                m.debug = true;
                m.foreground = true;
            }
            ("cvmfs_suid", None) => m.suid = true,
            ("uid", Some(_))
            | ("gid", Some(_))
            | ("system_mount", None)
            | ("grab_mountpoint", None)
            | ("disable_watchdog", None)
            | ("simple_options_parsing", None)
            | ("_netdev", None)
            | ("user", None)
            | ("nouser", None)
            | ("users", None)
            | ("auto", None)
            | ("noauto", None)
            | ("libfuse", Some(_))
            | ("ro", None)
            | ("nodev", None)
            | ("fsname", Some(_))
            | ("subtype", Some(_)) => {}
            ("rw", None) => return Err("the file system is read-only (option rw)".into()),
            ("allow_other", None) => m.acl = SessionACL::All,
            ("allow_root", None) => {
                if m.acl != SessionACL::All {
                    m.acl = SessionACL::RootAndOwner;
                }
            }
            ("default_permissions", None) => m.fuse.push(MountOption::DefaultPermissions),
            ("suid", None) => m.suid = true,
            ("nosuid", None) => m.suid = false,
            ("exec", None) => m.fuse.push(MountOption::Exec),
            ("noexec", None) => m.fuse.push(MountOption::NoExec),
            ("atime", None) => m.fuse.push(MountOption::Atime),
            ("noatime", None) => m.fuse.push(MountOption::NoAtime),
            ("dirsync", None) => m.fuse.push(MountOption::DirSync),
            ("sync", None) => m.fuse.push(MountOption::Sync),
            ("async", None) => m.fuse.push(MountOption::Async),
            _ => m.fuse.push(MountOption::CUSTOM(opt.to_string())),
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Logging: stderr, plus syslog-class messages to CVMFS_USYSLOG.

struct Logger {
    debug: bool,
}

/// `(file, fqrn)` of `CVMFS_USYSLOG`, once known.
static USYSLOG: OnceLock<(PathBuf, String)> = OnceLock::new();
static USYSLOG_LOCK: Mutex<()> = Mutex::new(());

fn own_target(target: &str) -> bool {
    target.starts_with("cvmfs_client") || target.starts_with("cvmfs2")
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        if self.debug {
            return true;
        }
        let max = if own_target(m.target()) {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        m.level() <= max
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        eprintln!(
            "cvmfs2: {}: {msg}",
            record.level().as_str().to_ascii_lowercase()
        );
        if record.level() <= log::Level::Info && own_target(record.target()) {
            if let Some((file, fqrn)) = USYSLOG.get() {
                write_usyslog(file, fqrn, &msg);
            }
        }
    }

    fn flush(&self) {}
}

/// `<ctime, 24 chars> (<fqrn>) <message>\n`, rotating the file beyond 500 kB.
fn write_usyslog(file: &Path, fqrn: &str, msg: &str) {
    let _guard = USYSLOG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::metadata(file).is_ok_and(|m| m.len() > USYSLOG_MAX) {
        let mut old = file.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::copy(file, &old);
        let _ = std::fs::File::create(file);
    }
    let line = format!("{} ({fqrn}) {msg}\n", ctime_now());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The current time in `ctime(3)` form (UTC, the initramfs has no time zone), without the
/// newline, e.g. `Thu Nov 28 00:38:00 2024`. Pure Rust: musl's libc binding has no `ctime_r`.
fn ctime_now() -> String {
    ctime_utc(epoch_now())
}

fn ctime_utc(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, h) = cvmfs_config::calendar::utc_fields(unix);
    let secs = unix.rem_euclid(86_400);
    let weekday = DAYS
        .get(unix.div_euclid(86_400).rem_euclid(7) as usize)
        .unwrap_or(&"???");
    format!(
        "{weekday} {} {d:2} {h:02}:{:02}:{:02} {y}",
        MONTHS.get((m as usize).saturating_sub(1)).unwrap_or(&"???"),
        (secs / 60) % 60,
        secs % 60
    )
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

/// A one-line failure message, without a repeated `<fqrn>: ` prefix.
fn one_line(fqrn: &str, msg: impl std::fmt::Display) -> String {
    let msg = msg.to_string().replace('\n', " ");
    match msg.strip_prefix(&format!("{fqrn}: ")) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(WPAD_MODE) {
        return wpad_main(argv.get(2..).unwrap_or_default());
    }
    let args = Args::parse();
    let fqrn = args.fqrn.clone();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("cvmfs2: {fqrn}: {}", one_line(&fqrn, msg));
            ExitCode::FAILURE
        }
    }
}

/// Helper mode of the reference client that µCernVM's init uses for `cvmfs_wait_on_squid`.
const WPAD_MODE: &str = "__wpad__";

/// `cvmfs2 __wpad__ <proxy description> <server URLs>`: prints the description with its `auto`
/// groups resolved by proxy auto-discovery (`http_proxy`, `CVMFS_PAC_URLS` and
/// `CVMFS_TIMEOUT_DIRECT` from the environment). The PAC interpreter thus lives in this
/// executable only, not in PID 1 as well.
fn wpad_main(args: &[String]) -> ExitCode {
    let [description, server_url] = args else {
        eprintln!("usage: cvmfs2 {WPAD_MODE} <proxy description> <server URLs>");
        return ExitCode::from(2);
    };
    if log::set_boxed_logger(Box::new(Logger { debug: false })).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let timeout = env
        .get(CVMFS_TIMEOUT_DIRECT)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(cvmfs_client::mount::DEFAULT_TIMEOUT_DIRECT);
    let auto = cvmfs_client::pac::discovery::AutoProxy::from_environment(
        &env,
        server_url,
        std::time::Duration::from_secs(timeout),
    );
    let (resolved, _) =
        cvmfs_client::pac::discovery::resolve_description(description.trim_matches('"'), || {
            auto.discover()
        });
    println!("{resolved}");
    ExitCode::SUCCESS
}

/// `CVMFS_SYSTEMD_NOKILL=yes` (spec §12.2): `@` as the first character of `argv[0]`, which
/// systemd's final killing spree at shutdown skips, so that a daemon serving the root file
/// system outlives the OS's processes. Like the reference client, the process's own argument
/// memory is changed (through `/proc/self/mem` at `arg_start` of `/proc/self/stat`); before
/// the fork, so the daemon inherits it.
fn mark_systemd_nokill() -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name in parentheses; `arg_start` is field 48 of the line.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let arg_start: u64 = after_comm
        .split_whitespace()
        .nth(48 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("no arg_start in /proc/self/stat"))?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let mut first = [0u8; 1];
    mem.read_exact_at(&mut first, arg_start)?;
    if first[0] != b'@' {
        mem.write_all_at(b"@", arg_start)?;
    }
    Ok(())
}

/// Everything that is decided before the process forks.
struct Prepared {
    fqrn: String,
    repo: RepositoryOptions,
    /// `cvmfs_io.<fqrn>` in the workspace, or `CVMFS_TALK_SOCKET`.
    talk_socket: PathBuf,
    /// The `parameters` talk reply.
    parameters: String,
    /// `CVMFS_QUOTA_LIMIT` as configured.
    quota_limit_text: String,
    fuse: FuseOptions,
    mount: MountArgs,
    mountpoint: PathBuf,
}

fn run(args: Args) -> Result<(), String> {
    let mount = parse_mount_options(&args)?;
    let logger = Logger { debug: mount.debug };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(if mount.debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }

    let config = Config::load(
        &args.fqrn,
        mount.config_files.as_deref().map(Path::new),
        &args.config_root,
    )
    .map_err(|e| e.to_string())?;
    if mount.parse {
        print!("{}", config.dump());
        return Ok(());
    }
    let mountpoint = args
        .mountpoint
        .clone()
        .ok_or("no mountpoint given (usage: cvmfs2 -o config=FILE <fqrn> <mountpoint>)")?;
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    let (repo, fuse) =
        MountSettings::from_config(&config, epoch_now()).map_err(|e| e.to_string())?;
    if config.get_bool("CVMFS_SYSTEMD_NOKILL").ok().flatten() == Some(true) {
        mark_systemd_nokill().map_err(|e| format!("CVMFS_SYSTEMD_NOKILL: {e}"))?;
    }
    if let Some(file) = &fuse.usyslog {
        let _ = USYSLOG.set((file.clone(), args.fqrn.clone()));
    }
    // Every parameter is exported into the environment (still single-threaded here).
    for (key, param) in config.iter() {
        if !key.is_empty() && !key.contains(['=', '\0']) && !param.value.contains('\0') {
            std::env::set_var(key, &param.value);
        }
    }

    let talk_socket = config
        .get(CVMFS_TALK_SOCKET)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.cache_dir.join(format!("cvmfs_io.{}", args.fqrn)));
    let prepared = Prepared {
        fqrn: args.fqrn.clone(),
        talk_socket,
        parameters: config.dump(),
        quota_limit_text: config
            .get(CVMFS_QUOTA_LIMIT)
            .map(str::trim)
            .unwrap_or("-1")
            .to_string(),
        repo,
        fuse,
        mount,
        mountpoint,
    };
    if prepared.mount.foreground {
        return serve(prepared, None);
    }

    // Fork before any thread or HTTP client exists.
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the process is single-threaded here.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(wr);
            let mut answer = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut answer);
            if answer.starts_with("OK") {
                return Ok(());
            }
            if let Some(msg) = answer.strip_prefix("ERR ") {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(msg.trim_end().to_string());
            }
            let status = nix::sys::wait::waitpid(child, None)
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|e| e.to_string());
            Err(format!("the daemon ended during initialisation ({status})"))
        }
        ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let fqrn = prepared.fqrn.clone();
            match serve(prepared, Some(wr)) {
                Ok(()) => std::process::exit(0),
                Err(msg) => {
                    log::error!("{}", one_line(&fqrn, msg));
                    std::process::exit(1)
                }
            }
        }
    }
}

/// Sends the result of the initialisation to the waiting parent.
fn report(pipe: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = pipe.take() {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Initialises, mounts and serves until unmounted. `pipe` is the channel to the parent of a
/// daemon.
fn serve(p: Prepared, mut pipe: Option<OwnedFd>) -> Result<(), String> {
    let fail = |pipe: &mut Option<OwnedFd>, msg: String| -> Result<(), String> {
        let line = one_line(&p.fqrn, &msg);
        if let Some((file, fqrn)) = USYSLOG.get() {
            write_usyslog(file, fqrn, &line);
        }
        if pipe.is_some() {
            report(pipe, &format!("ERR {line}\n"));
            std::process::exit(1);
        }
        Err(line)
    };

    // SIGINT/SIGTERM unmount instead of leaving a dead mount behind; blocked before
    // any thread exists (the HTTP client starts some) so that every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        log::warn!("cannot block signals: {e}");
    }

    // Before the mount a signal ends the process; afterwards it unmounts, which ends the
    // session. `mounted` is held while mounting so that the two cannot overlap.
    let mounted = Arc::new(Mutex::new(false));
    {
        let mounted = Arc::clone(&mounted);
        let mountpoint = p.mountpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(sig) = signals.wait() {
                    let is_mounted = *mounted.lock().unwrap_or_else(|e| e.into_inner());
                    if !is_mounted {
                        log::error!("received {sig} during initialisation");
                        std::process::exit(1);
                    }
                    log::info!("received {sig}, unmounting {}", mountpoint.display());
                    unmount(&mountpoint);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the signal thread: {e}");
        }
    }

    if let Some(n) = p.fuse.nfiles {
        use nix::sys::resource::{setrlimit, Resource};
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, n, n) {
            log::warn!("cannot set the open file limit to {n} (CVMFS_NFILES): {e}");
        }
    }

    // The daemon works inside its cache directory (workspace) through relative paths, so that
    // moving the mount of the cache's file system (µCernVM's switch_root) does not break it.
    let mut repo_options = p.repo.clone();
    repo_options.work_in_cache_dir = true;
    let repo = match Repository::mount(repo_options) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(&mut pipe, e.to_string()),
    };
    log::info!(
        "CernVM-FS: linking {} to repository {} (revision {}, root catalog {})",
        p.mountpoint.display(),
        p.fqrn,
        repo.revision(),
        repo.root_hash()
    );
    if repo.is_offline() {
        log::warn!(
            "CernVM-FS: {} mounted in offline mode (revision {} from the cache)",
            p.fqrn,
            repo.revision()
        );
    }

    // The control socket listens before the mount (µCernVM talks to it right after cvmfs2
    // returns).
    // Inside the cache, the socket too is reached relative to the working directory.
    let socket_at = match p.talk_socket.strip_prefix(&p.repo.cache_dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => p.talk_socket.clone(),
    };
    let listener = match talk_server::bind(&socket_at) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &mut pipe,
                format!(
                    "cannot create the control socket {}: {e}",
                    p.talk_socket.display()
                ),
            )
        }
    };
    let fs_shared = Arc::new(fuse::FsShared::default());
    let talk = Arc::new(TalkContext {
        repo: Arc::clone(&repo),
        fs: Arc::clone(&fs_shared),
        mountpoint: p.mountpoint.clone(),
        parameters: p.parameters.clone(),
        quota_limit_text: Mutex::new(p.quota_limit_text.clone()),
        version: env!("CARGO_PKG_VERSION").to_string(),
    });
    if let Err(e) = talk_server::spawn(listener, talk) {
        return fail(
            &mut pipe,
            format!("cannot start the control socket thread: {e}"),
        );
    }

    let mut options = vec![
        MountOption::FSName("cvmfs2".into()),
        MountOption::Subtype("cvmfs".into()),
        MountOption::RO,
        MountOption::NoDev,
    ];
    options.push(if p.mount.suid || p.fuse.suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    if p.fuse.check_permissions && !p.mount.fuse.contains(&MountOption::DefaultPermissions) {
        options.push(MountOption::DefaultPermissions);
    }
    options.extend(p.mount.fuse.iter().cloned());
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = p.mount.acl;
    config.n_threads = Some(if p.mount.single_threaded {
        1
    } else {
        FUSE_THREADS
    });

    let fs = CvmfsFs::new(Arc::clone(&repo), p.fuse.clone(), Arc::clone(&fs_shared));
    let mut mount_guard = mounted.lock().unwrap_or_else(|e| e.into_inner());
    let session = match fuser::Session::new(fs, &p.mountpoint, &config) {
        Ok(s) => {
            *mount_guard = true;
            drop(mount_guard);
            fs_shared.set_notifier(s.notifier());
            s
        }
        Err(e) => {
            return fail(
                &mut pipe,
                format!("cannot mount FUSE at {}: {e}", p.mountpoint.display()),
            )
        }
    };
    if p.fuse.auto_update && !repo.is_pinned() {
        let max_ttl = p
            .fuse
            .max_ttl_minutes
            .map(|m| Duration::from_secs(m.saturating_mul(60)));
        spawn_auto_update(Arc::clone(&repo), Arc::clone(&fs_shared), max_ttl);
    }
    log::info!(
        "CernVM-FS: mounted cvmfs on {} (repository {})",
        p.mountpoint.display(),
        p.fqrn
    );

    if pipe.is_some() {
        detach_stdio();
        report(&mut pipe, "OK\n");
    }
    let result = session.run();
    log::info!("CernVM-FS: {} unmounted", p.fqrn);
    let _ = std::fs::remove_file(&socket_at);
    repo.store.cache.close();
    result.map_err(|e| format!("FUSE session: {e}"))
}

/// Wait after a failed revision check (spec §10.6).
const RETRY_AFTER_FAILED_CHECK: Duration = Duration::from_secs(180);

/// `CVMFS_AUTO_UPDATE` for a mount that is not pinned: after each catalog TTL the servers are
/// asked for a newer revision; when one is taken the kernel's caches are invalidated so that
/// new lookups see it (open files keep theirs).
fn spawn_auto_update(repo: Arc<Repository>, fs: Arc<fuse::FsShared>, max_ttl: Option<Duration>) {
    let spawned = std::thread::Builder::new()
        .name("auto-update".into())
        .spawn(move || {
            let mut wait = repo.catalog_ttl(max_ttl);
            loop {
                std::thread::sleep(wait);
                wait = match repo.remount() {
                    RemountOutcome::Updated { .. } => {
                        fs.drop_metadata_caches();
                        repo.catalog_ttl(max_ttl)
                    }
                    RemountOutcome::UpToDate => repo.catalog_ttl(max_ttl),
                    RemountOutcome::Failed => RETRY_AFTER_FAILED_CHECK,
                };
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the revision check thread: {e}");
    }
}

/// Unmounts `mountpoint`, lazily if it is busy.
fn unmount(mountpoint: &Path) {
    if nix::mount::umount(mountpoint).is_ok() {
        return;
    }
    if nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return;
    }
    let ok = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        log::error!("cannot unmount {}", mountpoint.display());
    }
}

/// A daemon keeps no terminal or pipe of its caller open: stdin, stdout and stderr go to
/// `/dev/null` (log messages still reach `CVMFS_USYSLOG`).
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    let _ = nix::unistd::dup2_stdout(&null);
    let _ = nix::unistd::dup2_stderr(&null);
}

#[cfg(test)]
mod ctime_tests {
    #[test]
    fn ctime_format() {
        assert_eq!(super::ctime_utc(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(super::ctime_utc(1_732_754_280), "Thu Nov 28 00:38:00 2024");
    }
}
