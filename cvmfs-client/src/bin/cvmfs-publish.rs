//! `cvmfs-publish`: turns a directory tree into a signed CernVM-FS repository (the next
//! revision, if the repository exists) that the real `cvmfs2` client mounts.
//!
//! ```text
//! cvmfs-publish --fqrn <name> --repo <dir> --keys <dir> [--tag <name>]
//!               [--chunk-size <min,avg,max>] [--no-compress] <source-dir>
//! ```
//! Missing keys are created with the `openssl` command line tool.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use cvmfs_client::catalog::Compression;
use cvmfs_client::publish::{publish, ChunkSizes, PublishOptions, DEFAULT_WHITELIST_DAYS};

#[derive(Parser, Debug)]
#[command(
    name = "cvmfs-publish",
    about = "Publish a directory tree as a signed CernVM-FS repository revision"
)]
struct Args {
    /// Fully qualified repository name, e.g. demo.cernvm.test.
    #[arg(long)]
    fqrn: String,
    /// The served repository directory (served as /cvmfs/<fqrn>/).
    #[arg(long)]
    repo: PathBuf,
    /// Key directory: <fqrn>.masterkey, .pub, .key, .crt (created if missing).
    #[arg(long)]
    keys: PathBuf,
    /// Add a named tag pointing at this revision.
    #[arg(long)]
    tag: Option<String>,
    /// Chunk sizes in bytes: min,avg,max (default: the real server's 4, 8, 16 MiB).
    #[arg(long, value_name = "MIN,AVG,MAX")]
    chunk_size: Option<ChunkSizes>,
    /// Store file data uncompressed.
    #[arg(long)]
    no_compress: bool,
    /// Days until the whitelist expires.
    #[arg(long, default_value_t = DEFAULT_WHITELIST_DAYS)]
    whitelist_days: u32,
    /// Catalog TTL in seconds: how often clients look for a new revision.
    #[arg(long, default_value_t = 240)]
    ttl: u64,
    /// Record the nanosecond part of mtimes (catalog column mtimens).
    #[arg(long)]
    mtime_ns: bool,
    /// Worker threads for compression (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print progress details.
    #[arg(short, long)]
    verbose: bool,
    /// The directory tree to publish (the full new state of the repository).
    source: PathBuf,
}

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("cvmfs-publish: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
    let mut opts = PublishOptions::new(&args.fqrn, &args.repo, &args.keys, &args.source);
    opts.tag = args.tag;
    if let Some(c) = args.chunk_size {
        opts.chunk_sizes = c;
    }
    if args.no_compress {
        opts.compression = Compression::None;
    }
    opts.whitelist_days = args.whitelist_days;
    opts.mtime_ns = args.mtime_ns;
    opts.ttl = args.ttl.max(1);
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    let started = Instant::now();
    let report = publish(&opts).with_context(|| {
        format!(
            "publishing {} as {} into {}",
            args.source.display(),
            args.fqrn,
            args.repo.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} revision {}: root catalog {}, {} files ({:.1} MB, {} unchanged) in {:.2} s \
         ({:.1} MB/s); {} new objects ({:.1} MB), {} deduplicated; {} catalogs written, {} unchanged",
        args.fqrn,
        report.manifest.revision,
        report.manifest.root_catalog,
        report.regular_files,
        report.input_bytes as f64 / 1e6,
        report.files_unchanged,
        secs,
        report.input_bytes as f64 / 1e6 / secs.max(1e-9),
        report.objects_written,
        report.bytes_written as f64 / 1e6,
        report.objects_deduplicated,
        report.catalogs_written,
        report.catalogs_reused,
    );
    println!(
        "clients verify it with the master public key {}",
        args.keys.join(format!("{}.pub", args.fqrn)).display()
    );
    Ok(())
}
