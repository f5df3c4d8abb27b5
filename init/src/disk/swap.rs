//! The swap file `/mnt/.rw/swapfile` (spec §6.7). The original leaves swap to the CernVM OS
//! (amiconfig `[cernvm] swap_size`); we do it in PID 1 so that every OS gets it:
//! an existing swap file is enabled; `swap_size=<SIZE|auto>` in the `[cernvm]` section of
//! the amiconfig user data creates one first (auto: 2 GiB per CPU core).
//!
//! The file is created under a temporary name — allocated (no holes, which `swapon` refuses),
//! mode 0600, swap header written and synced — and renamed into place, so a power cut never
//! leaves a half-made `swapfile` behind.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::context::mime;
use crate::context::user_data::decode_user_data;

/// Name of the swap file below the scratch mount point.
pub const SWAPFILE: &str = "swapfile";
const GIB: u64 = 1 << 30;
/// Space left free on the scratch file system besides a new swap file.
const KEEP_FREE: u64 = GIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapSize {
    /// 2 GiB per CPU core.
    Auto,
    Bytes(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("swap_size={0:?} is not a size (examples: 4G, 512MiB, 1000000000, auto)")]
    BadSize(String),
    #[error("swap file of {size} bytes requested, but only {free} bytes are free on the scratch disk (1 GiB is kept free)")]
    NoSpace { size: u64, free: u64 },
    #[error("swap size {0} bytes is too small (10 pages at least)")]
    TooSmall(u64),
    #[error("{0} is not a swap file (no swap signature)")]
    NotSwap(PathBuf),
    #[error("cannot create the swap file {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("swapon {0}: {1}")]
    Swapon(PathBuf, std::io::Error),
}

/// `fallocate -l` sizes: a number with an optional K, M, G, T, P, E suffix (powers of 1024,
/// also written KiB, MiB...) or KB, MB, GB... (powers of 1000).
pub fn parse_size(s: &str) -> Result<SwapSize, SwapError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(SwapSize::Auto);
    }
    let bad = || SwapError::BadSize(s.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let exp = |c: char| "KMGTPE".find(c).map(|i| i as u32 + 1);
    let mult = match unit.as_str() {
        "" | "B" => 1,
        u => {
            let mut chars = u.chars();
            let e = chars.next().and_then(exp).ok_or_else(bad)?;
            match chars.as_str() {
                "" | "IB" => 1024u64.pow(e),
                "B" => 1000u64.pow(e),
                _ => return Err(bad()),
            }
        }
    };
    n.checked_mul(mult).map(SwapSize::Bytes).ok_or_else(bad)
}

/// `swap_size` from the `[cernvm]` section of an amiconfig text (INI: `key = value` or
/// `key: value`, `#`/`;` comments); the last one wins.
fn swap_size_in(text: &str) -> Option<String> {
    let mut in_cernvm = false;
    let mut found = None;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            in_cernvm = l == "[cernvm]";
            continue;
        }
        if !in_cernvm {
            continue;
        }
        if let Some((k, v)) = l.split_once(['=', ':']) {
            if k.trim() == "swap_size" {
                found = Some(v.trim().to_string());
            }
        }
    }
    found
}

/// `swap_size` from user data as saved (plain, gzip, or MIME multipart with an amiconfig part).
pub fn swap_size_setting(user_data: &[u8]) -> Option<String> {
    let (data, _) = decode_user_data(user_data);
    let mut found = swap_size_in(&String::from_utf8_lossy(&data));
    for p in mime::parts(&data) {
        if let Some(v) = swap_size_in(&String::from_utf8_lossy(&p.body)) {
            found = Some(v);
        }
    }
    found
}

/// Bytes for `size` on a machine with `cores` CPU cores.
pub fn bytes_for(size: SwapSize, cores: u64) -> u64 {
    match size {
        SwapSize::Auto => 2 * GIB * cores.max(1),
        SwapSize::Bytes(b) => b,
    }
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u64,
        _ => 4096,
    }
}

/// The first page of a version-1 swap area (what `mkswap` writes): boot block, header at byte
/// 1024 (version, last page, no bad pages, UUID, empty label), signature at the page's end.
pub fn swap_header(size: u64, page: u64, uuid: [u8; 16]) -> Vec<u8> {
    let last_page = (size / page - 1) as u32;
    let mut h = vec![0u8; 1024]; // boot block
    h.extend_from_slice(&1u32.to_le_bytes()); // version
    h.extend_from_slice(&last_page.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // bad pages
    h.extend_from_slice(&uuid);
    h.resize((page as usize).saturating_sub(10).max(h.len()), 0); // label, padding
    h.extend_from_slice(b"SWAPSPACE2");
    h
}

fn has_swap_signature(path: &Path, page: u64) -> bool {
    let mut buf = [0u8; 10];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(page - 10))?;
            std::io::Read::read_exact(&mut f, &mut buf)
        })
        .is_ok()
        && &buf == b"SWAPSPACE2"
}

/// Creates `path` with `size` bytes of swap, atomically (temporary file, then rename).
pub fn create_swapfile(path: &Path, size: u64) -> Result<(), SwapError> {
    let page = page_size();
    let size = size / page * page;
    if size < 10 * page {
        return Err(SwapError::TooSmall(size));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .map_err(|e| SwapError::Create(path.to_path_buf(), e.into()))?;
    if size + KEEP_FREE > free {
        return Err(SwapError::NoSpace { size, free });
    }
    let err = |e: std::io::Error| SwapError::Create(path.to_path_buf(), e);
    let tmp = dir.join(format!(".{SWAPFILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
        .map_err(|e| err(e.into()))?;
    let uuid = *uuid::Uuid::new_v4().as_bytes();
    f.write_all(&swap_header(size, page, uuid)).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// `swapon(2)` without flags.
pub fn swapon(path: &Path) -> Result<(), SwapError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        SwapError::Swapon(path.to_path_buf(), std::io::ErrorKind::InvalidInput.into())
    })?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::swapon(c.as_ptr(), 0) } < 0 {
        return Err(SwapError::Swapon(
            path.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Enables `<root_rw>/swapfile`, creating it first when `size` asks for one and none exists.
/// Returns the enabled file, if any.
pub fn ensure_swap(
    root_rw: &Path,
    size: Option<SwapSize>,
    cores: u64,
) -> Result<Option<PathBuf>, SwapError> {
    let path = root_rw.join(SWAPFILE);
    if !path.exists() {
        let Some(size) = size else {
            return Ok(None);
        };
        let bytes = bytes_for(size, cores);
        crate::console::begin(&format!("Creating swap file of {} MiB...", bytes >> 20));
        match create_swapfile(&path, bytes) {
            Ok(()) => crate::console::check(),
            Err(e) => {
                crate::console::failed();
                return Err(e);
            }
        }
    }
    if !has_swap_signature(&path, page_size()) {
        return Err(SwapError::NotSwap(path));
    }
    // A swap file readable by others leaks memory contents.
    if let Ok(m) = fs::metadata(&path) {
        if m.mode() & 0o077 != 0 {
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        }
    }
    swapon(&path)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_fallocate_reads_them() {
        let b = |s| match parse_size(s).unwrap() {
            SwapSize::Bytes(b) => b,
            SwapSize::Auto => panic!(),
        };
        assert_eq!(b("4G"), 4 * GIB);
        assert_eq!(b("4GiB"), 4 * GIB);
        assert_eq!(b("512M"), 512 << 20);
        assert_eq!(b("2 GB"), 2_000_000_000);
        assert_eq!(b("1000000"), 1_000_000);
        assert_eq!(b("1k"), 1024);
        assert_eq!(parse_size("auto").unwrap(), SwapSize::Auto);
        for bad in ["", "G", "4X", "4GX", "-1G", "99999999999E"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(bytes_for(SwapSize::Auto, 4), 8 * GIB);
        assert_eq!(bytes_for(SwapSize::Auto, 0), 2 * GIB);
    }

    #[test]
    fn swap_size_from_amiconfig_plain_and_mime() {
        let plain = b"[amiconfig]\nplugins=cernvm\n[cernvm]\norganisations = x\nswap_size = 2G\n[other]\nswap_size=9G\n";
        assert_eq!(swap_size_setting(plain).as_deref(), Some("2G"));
        assert_eq!(
            swap_size_setting(b"[cernvm]\n# swap_size=1G\n").as_deref(),
            None
        );
        let mime = b"Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n--XYZ\n\
Content-Type: text/amiconfig-user-data\n\n[cernvm]\nswap_size: auto\n--XYZ--\n";
        assert_eq!(swap_size_setting(mime).as_deref(), Some("auto"));
    }

    #[test]
    fn header_layout_matches_mkswap() {
        let h = swap_header(64 << 20, 4096, [7; 16]);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_le_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(h[1028..1032].try_into().unwrap()), 16383);
        assert_eq!(&h[1036..1052], &[7; 16]);
    }
}
