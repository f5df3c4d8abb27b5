//! `cernvm-context`: the demo OS's side of the µCernVM contract; see the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cernvm_os_context::accounts::Root;
use cernvm_os_context::{apply, dhcp, shared_folder, CONTEXT_DIR};

#[derive(Parser)]
#[command(about = "The demo OS's side of the µCernVM contract (spec Appendix A)")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accounts, ssh keys, sudo rules and files from the user data (once per user data).
    Apply {
        /// The context µCernVM left for the OS.
        #[arg(long, default_value = CONTEXT_DIR)]
        context: PathBuf,
        /// The OS tree to change.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Apply even if this user data was applied before.
        #[arg(long)]
        force: bool,
    },
    /// resolv.conf and cvmfs2's name server from systemd-networkd's DHCP leases.
    DhcpLease,
    /// Mount the launcher's virtio-9p folder (tag `*_sf`) on /mnt/shared.
    SharedFolder,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Lines go to the journal (and the console, as the units say); errors to stderr.
    match args.command {
        Cmd::Apply {
            context,
            root,
            force,
        } => {
            let report = apply(&context, &Root::new(root), force);
            for l in &report.done {
                println!("cernvm-context: {l}");
            }
            for l in &report.notes {
                println!("cernvm-context: note: {l}");
            }
            for l in &report.errors {
                eprintln!("cernvm-context: error: {l}");
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::DhcpLease => match dhcp::run(
            Path::new(dhcp::LEASES_DIR),
            Path::new("/etc/resolv.conf"),
            Path::new(dhcp::CVMFS_MOUNT),
            Path::new(dhcp::CVMFS_CACHE),
        ) {
            Ok(lines) => {
                for l in lines {
                    println!("cernvm-context: {l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cernvm-context: error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::SharedFolder => match shared_folder::run(
            Path::new(shared_folder::SYS_VIRTIO),
            Path::new(shared_folder::MOUNT_POINT),
        ) {
            Ok(l) => {
                println!("cernvm-context: {l}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cernvm-context: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
