//! The one place that runs the e2fsprogs tools (`mke2fs`, `e2fsck`, `resize2fs`),
//! found on `PATH` as shipped in the initramfs, with their command lines and output appended to
//! the boot logs (`/var/log/partition.log`, `/var/log/fsck.log`, spec §6.4–6.5).

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The PATH of the boot loader (spec §0.5), used when the environment has none.
const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin";

/// Which log a tool's output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolLog {
    /// `partition.log`: mke2fs, resize2fs.
    Partition,
    /// `fsck.log`: e2fsck.
    Fsck,
}

impl ToolLog {
    fn file_name(self) -> &'static str {
        match self {
            ToolLog::Partition => "partition.log",
            ToolLog::Fsck => "fsck.log",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0} not found on PATH ({1}); the initramfs must ship e2fsprogs")]
    NotFound(String, String),
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{program} failed (exit status {status}): {output}")]
    Failed {
        program: String,
        status: i32,
        output: String,
    },
}

/// What a finished tool returned.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// stdout and stderr, as logged.
    pub output: String,
}

/// Runs tools and logs them below `log_dir` (`/var/log` of the initramfs).
#[derive(Debug, Clone)]
pub struct Tools {
    pub log_dir: PathBuf,
}

fn find_on_path(program: &str) -> Result<PathBuf, ToolError> {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| ToolError::NotFound(program.to_string(), path))
}

impl Tools {
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Tools {
            log_dir: log_dir.into(),
        }
    }

    fn append(&self, log: ToolLog, text: &str) {
        let path = self.log_dir.join(log.file_name());
        let r = std::fs::create_dir_all(&self.log_dir).and_then(|_| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
                .write_all(text.as_bytes())
        });
        if let Err(e) = r {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// Runs `program args`, logs command and output (after `filter` drops lines), and returns
    /// the exit status whatever it is.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        log: ToolLog,
        program: &str,
        args: &[S],
        filter: &dyn Fn(&str) -> bool,
    ) -> Result<ToolOutput, ToolError> {
        let exe = find_on_path(program)?;
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ToolError::Spawn(program.to_string(), e))?;
        let text: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .filter(|l| filter(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let status = out.status.code().unwrap_or(-1);
        self.append(
            log,
            &format!(
                "$ {program} {}\n{text}[exit status {status}]\n",
                shown.join(" ")
            ),
        );
        log::info!("{program} {}: exit status {status}", shown.join(" "));
        Ok(ToolOutput {
            status,
            output: text,
        })
    }

    /// Like [`Tools::run`], but a non-zero exit status is an error.
    pub fn run_ok<S: AsRef<OsStr>>(
        &self,
        log: ToolLog,
        program: &str,
        args: &[S],
    ) -> Result<ToolOutput, ToolError> {
        let out = self.run(log, program, args, &|_| true)?;
        if out.status != 0 {
            let tail: Vec<&str> = out.output.lines().rev().take(5).collect();
            return Err(ToolError::Failed {
                program: program.to_string(),
                status: out.status,
                output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
            });
        }
        Ok(out)
    }
}

/// `e2fsck` lines the original hides from the console and the log (spec §6.5).
pub fn fsck_line_shown(line: &str) -> bool {
    !line.contains("ext2fs_check_if_mount") && !line.contains("UROOT: clean")
}

/// The path of a device as an argument.
pub fn arg(p: &Path) -> &OsStr {
    p.as_os_str()
}
