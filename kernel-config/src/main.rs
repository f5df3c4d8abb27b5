//! `check-kernel-config`: exits non-zero and lists every requirement of a fragment that a
//! kernel `.config` does not meet.
//!
//! Exit codes: 0 all requirements met, 1 unmet requirements, 2 unreadable or malformed input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use kernel_config::{check, Fragment, KernelConfig};

#[derive(Parser)]
#[command(
    version,
    about = "Checks a kernel .config against a µCernVM requirement fragment"
)]
struct Cli {
    /// Requirement fragment (lines CONFIG_X=y or CONFIG_X=m), e.g. kernel-config/ucernvm.fragment.
    #[arg(long, value_name = "FILE")]
    fragment: PathBuf,
    /// Kernel configuration, e.g. /boot/config-6.1.0-30-cloud-amd64.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn run(cli: &Cli) -> Result<bool> {
    let fragment = Fragment::parse(&read(&cli.fragment)?, &cli.fragment.display().to_string())?;
    let config = KernelConfig::parse(&read(&cli.config)?, &cli.config.display().to_string())?;
    let unmet = check(&config, &fragment);
    if unmet.is_empty() {
        println!(
            "{}: all {} requirements of {} are met",
            cli.config.display(),
            fragment.requirements.len(),
            cli.fragment.display()
        );
        return Ok(true);
    }
    println!(
        "{}: {} of {} requirements of {} are not met:",
        cli.config.display(),
        unmet.len(),
        fragment.requirements.len(),
        cli.fragment.display()
    );
    for u in &unmet {
        println!("  {u}");
    }
    Ok(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("check-kernel-config: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
