//! Cache benchmark (run by `scripts/bench-cache`): every number is printed next to a peer
//! measured in the same run on the same machine.
//!
//! 1. Warm remount: `cvmfs2` mounting the fixture repository with every object already cached,
//!    from the start of the process until the mount answers (goal ≤ 50 ms), online (manifest
//!    fetched and verified) and with a fixed root hash (no network). Peer: walking and reading
//!    the same tree from a plain local copy.
//! 2. A full read of the tree through the freshly mounted warm cache (every object's hash is
//!    checked once per mount) against the same read of the local copy.
//! 3. Quota database with 100 000 small objects: registering them, opening the database (what
//!    a mount pays), rebuilding it from the directory (after a crash) and a cleanup that evicts
//!    all of them. Peer: creating and unlinking as many files in a plain directory.
//!
//! `bench_cache <path of cvmfs2>` (needs root and /dev/fuse for parts 1 and 2).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cvmfs_client::hash::{Algorithm, ContentHash};
use cvmfs_client::quota::{ObjectType, QuotaManager};
use cvmfs_client::testing::{fixture_dir, StaticHttpServer};

const FQRN: &str = "demo.cernvm.test";
const REMOUNTS: usize = 15;
const OBJECTS: usize = 100_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Walks `root`, stats everything and reads every regular file; returns (entries, bytes).
fn walk_and_read(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut entries = 0;
    let mut bytes = 0;
    let mut stack = vec![root.to_path_buf()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let md = fs::symlink_metadata(e.path())?;
            entries += 1;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                let mut f = fs::File::open(e.path())?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
            }
        }
    }
    Ok((entries, bytes))
}

/// Copies directories and regular files (what [`walk_and_read`] reads) of `from` to `to`.
fn copy_files(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let md = fs::symlink_metadata(e.path())?;
        if md.is_dir() {
            copy_files(&e.path(), &to.join(e.file_name()))?;
        } else if md.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

struct Mounter {
    cvmfs2: PathBuf,
    config: PathBuf,
    config_root: PathBuf,
    mnt: PathBuf,
}

impl Mounter {
    fn mount(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let out = Command::new(&self.cvmfs2)
            .arg("--config-root")
            .arg(&self.config_root)
            .arg("-o")
            .arg(format!("config={}", self.config.display()))
            .arg(FQRN)
            .arg(&self.mnt)
            .output()
            .map_err(|e| format!("run cvmfs2: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        // Usable: the root answers.
        fs::read_dir(&self.mnt)
            .map_err(|e| format!("readdir of the new mount: {e}"))?
            .count();
        Ok(started.elapsed())
    }

    fn unmount(&self) -> Result<(), String> {
        let st = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("umount {}", self.mnt.display()));
        }
        // The daemon releases the cache right after the kernel lets go.
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    }
}

fn write_config(m: &Mounter, server: &str, cache: &Path, extra: &str) -> std::io::Result<()> {
    fs::write(
        &m.config,
        format!(
            "CVMFS_SERVER_URL={server}/cvmfs/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\n\
             CVMFS_PUBLIC_KEY={}\nCVMFS_CACHE_BASE={}\nCVMFS_SHARED_CACHE=no\n\
             CVMFS_QUOTA_LIMIT=4000\n{extra}",
            fixture_dir().join("keys/demo.cernvm.test.pub").display(),
            cache.display()
        ),
    )
}

fn bench_mounts(cvmfs2: PathBuf) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = StaticHttpServer::start(&fixture_dir().join("srv")).map_err(|e| e.to_string())?;
    let m = Mounter {
        cvmfs2,
        config: tmp.path().join("client.conf"),
        config_root: tmp.path().join("etc"),
        mnt: tmp.path().join("mnt"),
    };
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&m.mnt).map_err(|e| e.to_string())?;
    write_config(&m, &server.url(), &cache, "").map_err(|e| e.to_string())?;

    // Warm the cache with the whole tree and keep a local copy as the peer.
    m.mount()?;
    let (entries, bytes) = walk_and_read(&m.mnt).map_err(|e| e.to_string())?;
    let root_hash = fs::read_to_string(cache.join(FQRN).join(format!("cvmfschecksum.{FQRN}")))
        .map_err(|e| e.to_string())?;
    let root_hash = root_hash.split('T').next().unwrap_or_default().to_string();
    let copy = tmp.path().join("copy");
    copy_files(&m.mnt, &copy).map_err(|e| e.to_string())?;
    m.unmount()?;
    println!(
        "fixture: {entries} entries, {:.1} MB, cache {}",
        bytes as f64 / 1e6,
        cache.display()
    );

    let mut peer = Vec::new();
    for _ in 0..REMOUNTS {
        let t = Instant::now();
        walk_and_read(&copy).map_err(|e| e.to_string())?;
        peer.push(t.elapsed());
    }
    let peer = median(peer);

    for (label, extra) in [
        ("online (manifest fetched and verified)", String::new()),
        (
            "fixed root hash (no network)",
            format!("CVMFS_ROOT_HASH={root_hash}\n"),
        ),
    ] {
        write_config(&m, &server.url(), &cache, &extra).map_err(|e| e.to_string())?;
        let mut times = Vec::new();
        let mut reads = Vec::new();
        for i in 0..REMOUNTS {
            times.push(m.mount()?);
            if i % 5 == 0 {
                let t = Instant::now();
                walk_and_read(&m.mnt).map_err(|e| e.to_string())?;
                reads.push(t.elapsed());
            }
            m.unmount()?;
        }
        let mount = median(times);
        let read = median(reads);
        println!(
            "warm remount, {label}: median {:.1} ms over {REMOUNTS} (goal <= 50 ms); \
             peer: walk+read of a local copy {:.1} ms; ratio {:.1}",
            ms(mount),
            ms(peer),
            ms(mount) / ms(peer)
        );
        println!(
            "  first full read after the remount (hash checks included): {:.1} ms; \
             local copy {:.1} ms; ratio {:.1}",
            ms(read),
            ms(peer),
            ms(read) / ms(peer)
        );
    }
    Ok(())
}

fn bench_quota() -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let tmp = tempfile::tempdir().map_err(|x| e(&x))?;
    // On a tmpfs when possible: the machine's shared disk makes metadata operations vary by
    // orders of magnitude between runs; the tmpfs measures what the code costs.
    let on_tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1g", "tmpfs"])
        .arg(tmp.path())
        .status()
        .is_ok_and(|s| s.success());
    let result = quota_ops(tmp.path(), on_tmpfs);
    if on_tmpfs {
        let _ = Command::new("umount").arg(tmp.path()).status();
    }
    result
}

fn quota_ops(base: &Path, on_tmpfs: bool) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    println!(
        "quota database benchmark on {}",
        if on_tmpfs {
            "a tmpfs"
        } else {
            "the temporary directory's file system"
        }
    );
    let dir = base.join("cache");
    cvmfs_client::cache::Cache::open(&dir).map_err(|x| e(&x))?;
    let data = [7u8; 512];
    let hashes: Vec<ContentHash> = (0..OBJECTS as u64)
        .map(|i| ContentHash::of(Algorithm::Sha1, &i.to_le_bytes()))
        .collect();

    // Peer: the same files in a plain directory, created and unlinked.
    let plain = base.join("plain");
    fs::create_dir_all(&plain).map_err(|x| e(&x))?;
    let t = Instant::now();
    for h in &hashes {
        fs::write(plain.join(h.to_string()), data).map_err(|x| e(&x))?;
    }
    let plain_create = t.elapsed();
    let t = Instant::now();
    for h in &hashes {
        fs::remove_file(plain.join(h.to_string())).map_err(|x| e(&x))?;
    }
    let plain_unlink = t.elapsed();

    let limit = 1u64 << 40;
    let q = QuotaManager::open(&dir, limit, false).map_err(|x| e(&x))?;
    let t = Instant::now();
    for h in &hashes {
        fs::write(dir.join(h.cache_path()), data).map_err(|x| e(&x))?;
        q.insert(h, data.len() as u64, "/some/file", ObjectType::Regular)
            .map_err(|x| e(&x))?;
    }
    let insert = t.elapsed();
    q.close().map_err(|x| e(&x))?;
    drop(q);
    let t = Instant::now();
    let q = QuotaManager::open(&dir, limit, false).map_err(|x| e(&x))?;
    let open = t.elapsed();
    drop(q);
    // Without a stored total (a database written by the reference client): a table scan.
    let t = Instant::now();
    let q = QuotaManager::open(&dir, limit, false).map_err(|x| e(&x))?;
    let open_scan = t.elapsed();
    drop(q);
    let t = Instant::now();
    let q = QuotaManager::open(&dir, limit, true).map_err(|x| e(&x))?;
    let rebuild = t.elapsed();
    let t = Instant::now();
    q.cleanup(0).map_err(|x| e(&x))?;
    let cleanup = t.elapsed();
    assert_eq!(q.usage().used, 0);

    println!(
        "{OBJECTS} objects: store+register {:.0} ms (peer: create plain files {:.0} ms, ratio {:.2})",
        ms(insert),
        ms(plain_create),
        ms(insert) / ms(plain_create)
    );
    println!(
        "  cleanup evicting all: {:.0} ms (peer: unlink plain files {:.0} ms, ratio {:.2})",
        ms(cleanup),
        ms(plain_unlink),
        ms(cleanup) / ms(plain_unlink)
    );
    println!(
        "  open of the database at mount: {:.1} ms after a clean shutdown, {:.1} ms without a \
         stored total; rebuild from the directory after a crash: {:.0} ms (ratio to plain \
         create {:.2})",
        ms(open),
        ms(open_scan),
        ms(rebuild),
        ms(rebuild) / ms(plain_create)
    );
    Ok(())
}

fn main() {
    let cvmfs2 = std::env::args_os().nth(1).map(PathBuf::from);
    // SAFETY: geteuid has no preconditions.
    let root = nix::unistd::geteuid().is_root();
    match cvmfs2 {
        Some(p) if root && Path::new("/dev/fuse").exists() => {
            if let Err(e) = bench_mounts(p) {
                eprintln!("mount benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        _ => println!("mount benchmark skipped (needs root, /dev/fuse and the cvmfs2 path)"),
    }
    if let Err(e) = bench_quota() {
        eprintln!("quota benchmark failed: {e}");
        std::process::exit(1);
    }
}
