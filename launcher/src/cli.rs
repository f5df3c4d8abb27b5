//! The original's command line (spec §17.1): commands, options and positionals in any order,
//! and its exit codes.

use std::path::PathBuf;

use crate::config::ConfigMap;

/// Exit codes of the original.
pub mod exit {
    pub const OK: u8 = 0;
    /// Wrong argument count, missing option value, help.
    pub const USAGE: u8 = 1;
    /// Unreadable config file.
    pub const CONFIG: u8 = 2;
    /// Unknown command.
    pub const UNKNOWN_COMMAND: u8 = 3;
    /// Runtime failure.
    pub const RUNTIME: u8 = 4;
}

pub const USAGE: &str = "\
Usage: cernvm-launch COMMAND [OPTIONS]

Commands:
  create [--no-start] [--name N] [--cpus N] [--memory MB] [--disk MB] [--iso PATH]
         [--shared-folder PATH] [--backend qemu|libvirt] [USER_DATA_FILE] [CONFIG_FILE]
                           create a CernVM (and start it unless --no-start)
  list [--running] [NAME]  list the machines, or show one machine's parameters
  start NAME               start, resume a saved or paused machine
  stop [--shutdown] NAME   save the machine's state and stop it (--shutdown: power off)
  pause NAME               pause the machine
  destroy [--force] NAME   delete the machine and everything create made for it
  ssh [USER@]NAME [-- COMMAND...]
                           log in (or run COMMAND) over the forwarded port
  console NAME             attach to the serial console (detach with Ctrl-])
  -v, --version            print the version
  -h, --help               print this help

Configuration: command line > CONFIG_FILE > ~/.cernvm-launch.conf > built-in defaults.
Keys: cpus, memory, disk, apiPort, sharedFolder, isoPath, cernvmVersion, flags, backend,
releaseUrl, caPath, sshIdentity. Exit codes: 1 usage, 2 unreadable config, 3 unknown command,
4 runtime failure.";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Create(CreateArgs),
    List {
        running: bool,
        name: Option<String>,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
        shutdown: bool,
    },
    Pause {
        name: String,
    },
    Destroy {
        name: String,
        force: bool,
    },
    Ssh {
        user: Option<String>,
        name: String,
        command: Vec<String>,
    },
    Console {
        name: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateArgs {
    pub no_start: bool,
    /// Options given as configuration keys (`name`, `cpus`, `memory`, `disk`, `isoPath`,
    /// `sharedFolder`, `backend`); they override every configuration file.
    pub options: ConfigMap,
    pub user_data: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
}

/// Why a command line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("unknown command {0:?}; run cernvm-launch --help")]
    UnknownCommand(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::UnknownCommand(_) => exit::UNKNOWN_COMMAND,
        }
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Splits `args` into options (by the table of known flags and valued options) and positionals.
struct Scanned {
    flags: Vec<String>,
    values: Vec<(String, String)>,
    positionals: Vec<String>,
    after_dashes: Vec<String>,
}

fn scan(
    command: &str,
    args: &[String],
    known_flags: &[&str],
    valued: &[&str],
    allow_dashes: bool,
) -> Result<Scanned, CliError> {
    let mut s = Scanned {
        flags: Vec::new(),
        values: Vec::new(),
        positionals: Vec::new(),
        after_dashes: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" && allow_dashes {
            s.after_dashes = args[i + 1..].to_vec();
            break;
        }
        if let Some((opt, value)) = a.split_once('=').filter(|(o, _)| o.starts_with("--")) {
            if valued.contains(&opt) {
                s.values.push((opt.to_string(), value.to_string()));
                i += 1;
                continue;
            }
        }
        if known_flags.contains(&a.as_str()) {
            s.flags.push(a.clone());
        } else if valued.contains(&a.as_str()) {
            let value = args
                .get(i + 1)
                .ok_or_else(|| usage(format!("{command}: {a} needs a value")))?;
            s.values.push((a.clone(), value.clone()));
            i += 1;
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(usage(format!("{command}: unknown option {a}")));
        } else {
            s.positionals.push(a.clone());
        }
        i += 1;
    }
    Ok(s)
}

fn one_name(command: &str, positionals: &[String]) -> Result<String, CliError> {
    match positionals {
        [name] => Ok(name.clone()),
        [] => Err(usage(format!("{command}: missing the machine name"))),
        _ => Err(usage(format!(
            "{command}: too many arguments ({})",
            positionals.join(" ")
        ))),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-v" | "--version" => Ok(Command::Version),
        "create" => {
            let s = scan(
                "create",
                rest,
                &["--no-start"],
                &[
                    "--name",
                    "--cpus",
                    "--memory",
                    "--disk",
                    "--iso",
                    "--shared-folder",
                    "--sharedFolder",
                    "--backend",
                ],
                false,
            )?;
            let mut a = CreateArgs {
                no_start: !s.flags.is_empty(),
                ..CreateArgs::default()
            };
            for (opt, value) in s.values {
                let key = match opt.as_str() {
                    "--name" => "name",
                    "--cpus" => "cpus",
                    "--memory" => "memory",
                    "--disk" => "disk",
                    "--iso" => "isoPath",
                    "--shared-folder" | "--sharedFolder" => "sharedFolder",
                    _ => "backend",
                };
                if value.is_empty() {
                    return Err(usage(format!("create: {opt} needs a value")));
                }
                a.options.set(key, value);
            }
            let mut pos = s.positionals.into_iter();
            a.user_data = pos.next().map(PathBuf::from);
            a.config_file = pos.next().map(PathBuf::from);
            if let Some(extra) = pos.next() {
                return Err(usage(format!(
                    "create: unexpected third argument {extra:?} (expected [USER_DATA_FILE] [CONFIG_FILE])"
                )));
            }
            Ok(Command::Create(a))
        }
        "list" => {
            let s = scan("list", rest, &["--running"], &[], false)?;
            if s.positionals.len() > 1 {
                return Err(usage("list: at most one machine name"));
            }
            Ok(Command::List {
                running: !s.flags.is_empty(),
                name: s.positionals.into_iter().next(),
            })
        }
        "start" | "pause" | "console" => {
            let s = scan(command, rest, &[], &[], false)?;
            let name = one_name(command, &s.positionals)?;
            Ok(match command.as_str() {
                "start" => Command::Start { name },
                "pause" => Command::Pause { name },
                _ => Command::Console { name },
            })
        }
        "stop" => {
            let s = scan("stop", rest, &["--shutdown"], &[], false)?;
            Ok(Command::Stop {
                name: one_name("stop", &s.positionals)?,
                shutdown: !s.flags.is_empty(),
            })
        }
        "destroy" => {
            let s = scan("destroy", rest, &["--force", "-f"], &[], false)?;
            Ok(Command::Destroy {
                name: one_name("destroy", &s.positionals)?,
                force: !s.flags.is_empty(),
            })
        }
        "ssh" => {
            let s = scan("ssh", rest, &[], &[], true)?;
            let target = one_name("ssh", &s.positionals)?;
            let (user, name) = match target.split_once('@') {
                Some((u, n)) if !u.is_empty() && !n.is_empty() => {
                    (Some(u.to_string()), n.to_string())
                }
                Some(_) => return Err(usage(format!("ssh: malformed target {target:?}"))),
                None => (None, target),
            };
            Ok(Command::Ssh {
                user,
                name,
                command: s.after_dashes,
            })
        }
        other => Err(CliError::UnknownCommand(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Result<Command, CliError> {
        let v: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        parse(&v)
    }

    #[test]
    fn help_version_unknown() {
        assert_eq!(p("").unwrap(), Command::Help);
        assert_eq!(p("help").unwrap(), Command::Help);
        assert_eq!(p("-v").unwrap(), Command::Version);
        let e = p("frobnicate x").unwrap_err();
        assert_eq!(e.exit_code(), exit::UNKNOWN_COMMAND);
    }

    #[test]
    fn create_options_and_positionals_in_any_order() {
        let Command::Create(a) =
            p("create ctx.txt --cpus 2 --no-start machine.conf --name=demo --iso /x.iso").unwrap()
        else {
            panic!()
        };
        assert!(a.no_start);
        assert_eq!(a.user_data, Some(PathBuf::from("ctx.txt")));
        assert_eq!(a.config_file, Some(PathBuf::from("machine.conf")));
        assert_eq!(a.options.get("cpus"), Some("2"));
        assert_eq!(a.options.get("name"), Some("demo"));
        assert_eq!(a.options.get("isoPath"), Some("/x.iso"));
        let Command::Create(b) = p("create --sharedFolder /home").unwrap() else {
            panic!()
        };
        assert_eq!(b.options.get("sharedFolder"), Some("/home"));
        assert_eq!(b.user_data, None);
    }

    #[test]
    fn usage_errors_exit_1() {
        for bad in [
            "create a b c",
            "create --cpus",
            "create --bogus",
            "start",
            "start a b",
            "destroy",
            "ssh",
            "ssh @vm",
            "list a b",
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE, "{bad}: {e}");
        }
    }

    #[test]
    fn machine_commands() {
        assert_eq!(
            p("destroy --force vm").unwrap(),
            Command::Destroy {
                name: "vm".into(),
                force: true
            }
        );
        assert_eq!(
            p("stop vm --shutdown").unwrap(),
            Command::Stop {
                name: "vm".into(),
                shutdown: true
            }
        );
        assert_eq!(
            p("list --running").unwrap(),
            Command::List {
                running: true,
                name: None
            }
        );
        assert_eq!(
            p("ssh alice@vm -- uname -a --x").unwrap(),
            Command::Ssh {
                user: Some("alice".into()),
                name: "vm".into(),
                command: vec!["uname".into(), "-a".into(), "--x".into()]
            }
        );
        assert_eq!(
            p("ssh vm").unwrap(),
            Command::Ssh {
                user: None,
                name: "vm".into(),
                command: vec![]
            }
        );
    }
}
