//! `cvmfs_talk`: sends one command to the control socket of a mounted repository (spec §11.1)
//! and prints the reply.
//!
//! `cvmfs_talk -i <fqrn> [-b <cache base>] <command …>` or `cvmfs_talk -p <socket> <command …>`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cvmfs_client::mount::DEFAULT_CACHE_BASE;
use cvmfs_client::talk;

#[derive(Parser, Debug)]
#[command(
    name = "cvmfs_talk",
    about = "Sends a command to a cvmfs2 daemon's control socket (try the command `help`)"
)]
struct Args {
    /// Repository name: the socket is <cache base>/<fqrn>/cvmfs_io.<fqrn>.
    #[arg(short = 'i', value_name = "FQRN", required_unless_present = "socket")]
    fqrn: Option<String>,
    /// Cache base directory (CVMFS_CACHE_BASE).
    #[arg(short = 'b', value_name = "DIR", default_value = DEFAULT_CACHE_BASE)]
    cache_base: PathBuf,
    /// Socket path (instead of -i).
    #[arg(short = 'p', value_name = "SOCKET")]
    socket: Option<PathBuf>,
    /// Seconds to wait for the reply (pinning a large file may take a while).
    #[arg(short = 't', value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
    /// The command, e.g. `cache size` or `pin /usr/bin/bash`.
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(reply) => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cvmfs_talk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<String> {
    let socket = match (&args.socket, &args.fqrn) {
        (Some(s), _) => s.clone(),
        (None, Some(fqrn)) => talk::socket_path(&args.cache_base, fqrn),
        (None, None) => anyhow::bail!("give a repository (-i) or a socket (-p)"),
    };
    let command = args.command.join(" ");
    talk::request(&socket, &command, Duration::from_secs(args.timeout.max(1)))
        .with_context(|| format!("command {command:?}"))
}
