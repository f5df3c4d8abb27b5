//! `cvmfs_fsck`: checks every object of a cache directory against its content hash.
//!
//! `cvmfs_fsck [-p] <cache directory>` — with `-p` bad objects, stray files and unfinished
//! downloads are removed and the quota database is rebuilt. The cache must not be in use.
//! Exit status: 0 clean, 1 problems found and repaired, 4 problems found (not repaired),
//! 8 the check itself failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cvmfs_client::fsck;

#[derive(Parser, Debug)]
#[command(
    name = "cvmfs_fsck",
    about = "Verifies the objects of a CernVM-FS cache directory"
)]
struct Args {
    /// Repair: remove what is bad and rebuild the cache database.
    #[arg(short = 'p')]
    repair: bool,
    /// The cache directory (e.g. /var/lib/cvmfs/<fqrn>).
    dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match fsck::check(&args.dir, args.repair) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cvmfs_fsck: {e}");
            return ExitCode::from(8);
        }
    };
    let verb = if args.repair { "removed" } else { "found" };
    for p in &report.corrupt {
        println!("corrupt object {verb}: {}", p.display());
    }
    for p in &report.strays {
        println!("stray file {verb}: {}", p.display());
    }
    if report.leftovers > 0 {
        println!("unfinished downloads {verb}: {}", report.leftovers);
    }
    println!(
        "{}: {} good objects, {} corrupt, {} stray files, {} unfinished downloads",
        args.dir.display(),
        report.good,
        report.corrupt.len(),
        report.strays.len(),
        report.leftovers
    );
    let problems = !report.corrupt.is_empty() || !report.strays.is_empty() || report.leftovers > 0;
    ExitCode::from(match (problems, args.repair) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 4,
    })
}
