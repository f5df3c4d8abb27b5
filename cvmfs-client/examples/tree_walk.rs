//! Walks a directory tree the way the benchmarks need it, and prints one JSON line:
//! `tree_walk lstat <dir>` — readdir + lstat of every entry;
//! `tree_walk read <dir> [threads]` — read every regular file completely with N threads.
//! The same walker measures a FUSE mount and the plain local copy (the floor), so the ratio
//! compares file systems, not walkers.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

fn walk(dir: &Path, entries: &mut u64, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let path = e?.path();
        let meta = fs::symlink_metadata(&path)?;
        *entries += 1;
        if meta.is_dir() {
            walk(&path, entries, files)?;
        } else if meta.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

fn read_all(files: &[PathBuf], threads: usize) -> std::io::Result<u64> {
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    let mut buf = vec![0u8; 128 * 1024];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else {
                            return Ok(());
                        };
                        let mut f = fs::File::open(path)?;
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("reader thread panicked")?;
        }
        Ok(bytes.load(Ordering::Relaxed))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tree_walk lstat <dir> | tree_walk read <dir> [threads]";
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let fail = |e: std::io::Error| -> ! {
        eprintln!("tree_walk: {dir}: {e}");
        std::process::exit(1);
    };
    let start = Instant::now();
    let mut entries = 0;
    let mut files = Vec::new();
    walk(Path::new(dir), &mut entries, &mut files).unwrap_or_else(|e| fail(e));
    match mode.as_str() {
        "lstat" => println!(
            "{{\"mode\":\"lstat\",\"entries\":{entries},\"seconds\":{:.4}}}",
            start.elapsed().as_secs_f64()
        ),
        "read" => {
            // The listing is not part of the read measurement.
            let start_read = Instant::now();
            let bytes = read_all(&files, threads.max(1)).unwrap_or_else(|e| fail(e));
            println!(
                "{{\"mode\":\"read\",\"threads\":{threads},\"files\":{},\"bytes\":{bytes},\"seconds\":{:.4}}}",
                files.len(),
                start_read.elapsed().as_secs_f64()
            );
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
