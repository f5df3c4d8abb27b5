//! `ucernvm-initramfs`: builds the µCernVM initramfs as a reproducible, zstd-compressed cpio
//! (newc) archive.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ucernvm_initramfs::builder::{self, SizeReport};
use ucernvm_initramfs::manifest::Manifest;
use ucernvm_initramfs::pack::{self, Ownership};
use ucernvm_initramfs::{Archive, Compression, DEFAULT_ZSTD_LEVEL};

#[derive(Parser)]
#[command(version, about = "Builds reproducible cpio (newc) initramfs archives")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Packs a directory tree (modes, symlinks and device nodes preserved) into a cpio archive.
    Pack {
        /// Directory whose contents become the initramfs root.
        #[arg(long, value_name = "DIR")]
        from_dir: PathBuf,
        /// Output file, e.g. initrd.cpio.zst.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Modification time of every entry; defaults to $SOURCE_DATE_EPOCH, else 0.
        #[arg(long, value_name = "SECONDS")]
        mtime: Option<u32>,
        /// zstd compression level (1-22).
        #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Write the plain cpio archive without compression.
        #[arg(long)]
        uncompressed: bool,
        /// Keep the uid/gid of the files instead of making everything owned by root.
        #[arg(long)]
        preserve_owner: bool,
    },
    /// Builds the initramfs a manifest describes and prints its size by component.
    Build {
        /// The manifest (see initramfs/ucernvm.manifest).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Output file, e.g. build/initrd.img.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// A manifest variable, e.g. --set version=2026.11-1.cernvm.x86_64 (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Modification time of every entry; defaults to $SOURCE_DATE_EPOCH, else 0.
        #[arg(long, value_name = "SECONDS")]
        mtime: Option<u32>,
        /// Compression (the kernel must have CONFIG_RD_XZ or CONFIG_RD_ZSTD).
        #[arg(long, value_enum, default_value_t = CompressionArg::Xz)]
        compression: CompressionArg,
        /// zstd compression level (1-22), with --compression zstd.
        #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Xz,
    Zstd,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a 32-bit number of seconds")),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(e) => bail!("SOURCE_DATE_EPOCH: {e}"),
    }
}

/// Writes to `<output>.tmp` and renames, so an interrupted build leaves no truncated archive.
fn write_atomically(
    output: &Path,
    write: impl FnOnce(&mut BufWriter<fs::File>) -> Result<()>,
) -> Result<()> {
    let mut tmp_name = output.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = BufWriter::new(file);
    let result = write(&mut out).and_then(|()| {
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", tmp.display())));
    }
    fs::rename(&tmp, output)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucernvm-initramfs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pack {
            from_dir,
            output,
            mtime,
            level,
            uncompressed,
            preserve_owner,
        } => {
            if !from_dir.is_dir() {
                bail!("{} is not a directory", from_dir.display());
            }
            let mut archive = Archive::new();
            archive.set_mtime(match mtime {
                Some(m) => m,
                None => source_date_epoch()?,
            });
            let ownership = if preserve_owner {
                Ownership::Preserve
            } else {
                Ownership::Root
            };
            pack::add_tree(&mut archive, &from_dir, ownership)
                .with_context(|| format!("cannot pack {}", from_dir.display()))?;
            write_atomically(&output, |out| {
                if uncompressed {
                    archive.write_to(out)?;
                } else {
                    archive.write_zstd(out, level)?;
                }
                Ok(())
            })?;
            eprintln!(
                "ucernvm-initramfs: packed {} entries from {} into {}",
                archive.len(),
                from_dir.display(),
                output.display()
            );
        }
        Command::Build {
            manifest,
            output,
            vars,
            mtime,
            compression,
            level,
        } => {
            let compression = match compression {
                CompressionArg::Xz => Compression::Xz,
                CompressionArg::Zstd => Compression::Zstd { level },
            };
            build(&manifest, &output, vars, mtime, compression)?
        }
    }
    Ok(())
}

fn build(
    manifest_path: &Path,
    output: &Path,
    vars: Vec<(String, String)>,
    mtime: Option<u32>,
    compression: Compression,
) -> Result<()> {
    let text = fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read the manifest {}", manifest_path.display()))?;
    let mut vars: std::collections::BTreeMap<String, String> = vars.into_iter().collect();
    let manifest_dir = manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    vars.entry("manifest_dir".into())
        .or_insert_with(|| manifest_dir.display().to_string());
    let manifest = Manifest::parse(&manifest_path.display().to_string(), &text, &vars)?;
    let mut build = builder::build(&manifest)?;
    build.archive.set_mtime(match mtime {
        Some(m) => m,
        None => source_date_epoch()?,
    });
    let cpio_bytes = build.archive.write_to(std::io::sink())?;
    // Measuring the components compresses everything a second time: in parallel.
    let (written, rows) = std::thread::scope(|scope| {
        let rows = scope.spawn(|| SizeReport::measure_components(&build, compression));
        let written = write_atomically(output, |out| {
            build.archive.write_compressed(out, compression)?;
            Ok(())
        });
        (written, rows.join())
    });
    written?;
    let rows = match rows {
        Ok(rows) => rows.context("cannot measure the components")?,
        Err(_) => bail!("measuring the components panicked"),
    };
    let compressed = fs::metadata(output)
        .with_context(|| format!("cannot stat {}", output.display()))?
        .len();
    let report = SizeReport {
        rows,
        cpio_bytes,
        compressed_bytes: compressed,
        compression,
    };
    eprintln!(
        "ucernvm-initramfs: wrote {} ({} entries)\n{report}",
        output.display(),
        build.archive.len()
    );
    Ok(())
}
