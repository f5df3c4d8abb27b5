//! Boot loader updates and the version file (spec §7, §15, Appendix A).
//!
//! `cernvm-update -k` in the OS unpacks an update pack into `/mnt/.rw/kexec/`: a new kernel, a
//! new initramfs and `apply` (`version=`, `kernel=`, `initrd=`, `cmdline=` lines). On the next
//! boot, right after the scratch disk is mounted, this phase checks the pack and starts the new
//! boot loader with `kexec_file_load` + `reboot(LINUX_REBOOT_CMD_KEXEC)`. Anything wrong with
//! the pack (missing or unreadable files, a truncated kernel, a bad signature, a pack that
//! does not produce the version it promises) is a message, and the running version boots on:
//! the pack is never deleted, nothing on the scratch disk is touched but `aux/ucernvm-version`.
//!
//! Loop guard (spec §7.2 recommendation): the new kernel's command line carries
//! `ucernvm_kexec=<version>`; a boot with that marker never kexecs again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::console;
use crate::layout::Layout;

/// Marker appended to the command line of a kexec'd boot loader.
pub const KEXEC_MARKER: &str = "ucernvm_kexec=";

/// Why an update pack is not applied. The running version boots on in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("{}: no {key}= line", path.display())]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("{}: {key}={value} is not a plain file name in the kexec directory", path.display())]
    BadName {
        path: PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("the update's {what} {} is missing", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("the update's kernel {}: {problem}", path.display())]
    BadKernel { path: PathBuf, problem: String },
    #[error("the update's initramfs {}: {problem}", path.display())]
    BadInitrd { path: PathBuf, problem: String },
    #[error("the update's {what} {}: {problem}", path.display())]
    Signature {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "this boot loader was started by the update to {promised} but is version {running}: \
         the pack's version= does not match its initramfs; not starting it again"
    )]
    VersionMismatch { promised: String, running: String },
    #[error(
        "the kernel refused the update's kernel and initramfs (kexec_file_load): {cause}{hint}",
        cause = .0,
        hint = load_hint(.0)
    )]
    Load(io::Error),
    #[error("kexec into the update failed: {0}")]
    Exec(io::Error),
}

/// What a refusal of `kexec_file_load` usually means.
fn load_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => " (this kernel is built without CONFIG_KEXEC_FILE)",
        Some(libc::EKEYREJECTED) | Some(libc::EPERM) => {
            " (the kernel only loads signed kernels: lockdown or CONFIG_KEXEC_SIG_FORCE)"
        }
        Some(libc::ENOEXEC) => " (not a kernel image this kernel can load)",
        _ => "",
    }
}

/// The `apply` file of an update pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    pub version: String,
    pub kernel: String,
    pub initrd: String,
    /// Empty: the running command line.
    pub cmdline: String,
}

impl Apply {
    /// Parses `key=value` lines; a value runs to the end of the line (the original cut it at
    /// its next `=`, spec §7.2 QUIRK, which breaks a command line with parameters).
    pub fn parse(path: &Path, text: &str) -> Result<Apply, UpdateError> {
        let value = |key: &'static str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .next_back()
        };
        let required = |key: &'static str| {
            value(key)
                .filter(|v| !v.is_empty())
                .ok_or(UpdateError::MissingKey {
                    path: path.to_path_buf(),
                    key,
                })
        };
        let file_name = |key: &'static str| {
            let v = required(key)?;
            if v.contains('/') || v == "." || v == ".." || v == "apply" {
                return Err(UpdateError::BadName {
                    path: path.to_path_buf(),
                    key,
                    value: v,
                });
            }
            Ok(v)
        };
        Ok(Apply {
            version: required("version")?,
            kernel: file_name("kernel")?,
            initrd: file_name("initrd")?,
            cmdline: value("cmdline").unwrap_or_default(),
        })
    }
}

/// A checked update, ready to load: what was verified is what is loaded.
#[derive(Debug)]
pub struct Verified {
    pub version: String,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// The new kernel's command line, with the loop-guard marker.
    pub cmdline: String,
}

/// What this boot does about `/root.rw/kexec/apply`.
#[derive(Debug)]
pub enum Decision {
    /// No pack.
    None,
    /// The pack is the running version (the boot after a successful kexec).
    Running,
    /// Start the new version.
    Kexec(Verified),
}

/// The running boot loader: its version (`/version`) and command line (`/proc/cmdline`).
#[derive(Debug, Clone)]
pub struct Running {
    pub version: String,
    pub cmdline: String,
}

impl Running {
    /// This boot loader: `<initramfs>/version` and `/proc/cmdline`.
    pub fn of(initramfs: &Path) -> Running {
        let read = |p: &Path| fs::read_to_string(p).map(|s| s.trim().to_string());
        Running {
            version: read(&initramfs.join("version")).unwrap_or_else(|_| "unknown".into()),
            cmdline: read(Path::new("/proc/cmdline")).unwrap_or_default(),
        }
    }

    /// The marker's version, if this boot loader was started by an update.
    fn started_by_update(&self) -> Option<&str> {
        self.cmdline
            .split_whitespace()
            .find_map(|t| t.strip_prefix(KEXEC_MARKER))
    }
}

/// Signature check of the pack's files (spec §14.5 block at their end), when the image
/// carries a CA for it.
pub trait PackVerifier {
    /// The content without its signature block, or why it cannot be trusted.
    fn verify(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// An update CA configured: the pack's files must carry a signature it issued.
impl PackVerifier for crate::image_signature::Trust {
    fn verify(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        crate::image_signature::Trust::verify(self, data)
    }
}

/// No CA configured: files are taken as they are (a signature block, if any, is stripped).
pub struct Unsigned;

impl PackVerifier for Unsigned {
    fn verify(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(crate::image_signature::strip(data))
    }
}

/// Signatures are checked when the image carries the update CA
/// ([`crate::image_signature::UPDATE_CA`]); an unreadable or empty CA file refuses every pack.
pub fn verifier(initramfs: &Path) -> Box<dyn PackVerifier> {
    let path = initramfs.join(crate::image_signature::UPDATE_CA);
    match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Box::new(Unsigned),
        Ok(pem) => match crate::image_signature::Trust::from_pem(&pem) {
            Some(trust) => Box::new(trust),
            None => Box::new(RefuseAll(format!(
                "{} holds no certificate",
                path.display()
            ))),
        },
        Err(e) => Box::new(RefuseAll(format!("cannot read {}: {e}", path.display()))),
    }
}

/// A configured CA that cannot be used: nothing is trusted.
struct RefuseAll(String);

impl PackVerifier for RefuseAll {
    fn verify(&self, _: Vec<u8>) -> Result<Vec<u8>, String> {
        Err(self.0.clone())
    }
}

/// Decides about the pack in `kexec_dir` (`/root.rw/kexec`).
pub fn decide(
    kexec_dir: &Path,
    running: &Running,
    verifier: &dyn PackVerifier,
) -> Result<Decision, UpdateError> {
    let apply_path = kexec_dir.join("apply");
    let text = match fs::read_to_string(&apply_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Decision::None),
        Err(cause) => {
            return Err(UpdateError::Read {
                path: apply_path,
                cause,
            })
        }
    };
    let apply = Apply::parse(&apply_path, &text)?;
    if apply.version == running.version {
        return Ok(Decision::Running);
    }
    if let Some(promised) = running.started_by_update() {
        return Err(UpdateError::VersionMismatch {
            promised: promised.to_string(),
            running: running.version.clone(),
        });
    }
    let read = |what: &'static str, name: &str| {
        let path = kexec_dir.join(name);
        match fs::read(&path) {
            Ok(data) => Ok((path, data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(UpdateError::Missing { what, path })
            }
            Err(cause) => Err(UpdateError::Read { path, cause }),
        }
    };
    let (kernel_path, kernel) = read("kernel", &apply.kernel)?;
    let (initrd_path, initrd) = read("initramfs", &apply.initrd)?;
    let signature = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |problem| UpdateError::Signature {
            what,
            path,
            problem,
        }
    };
    let kernel = verifier
        .verify(kernel)
        .map_err(signature("kernel", &kernel_path))?;
    let initrd = verifier
        .verify(initrd)
        .map_err(signature("initramfs", &initrd_path))?;
    check_bzimage(&kernel).map_err(|problem| UpdateError::BadKernel {
        path: kernel_path,
        problem,
    })?;
    check_initrd(&initrd).map_err(|problem| UpdateError::BadInitrd {
        path: initrd_path,
        problem,
    })?;
    let base = if apply.cmdline.is_empty() {
        running.cmdline.as_str()
    } else {
        apply.cmdline.as_str()
    };
    let mut cmdline: Vec<&str> = base
        .split_whitespace()
        .filter(|t| !t.starts_with(KEXEC_MARKER))
        .collect();
    let marker = format!("{KEXEC_MARKER}{}", apply.version);
    cmdline.push(&marker);
    Ok(Decision::Kexec(Verified {
        version: apply.version,
        kernel,
        initrd,
        cmdline: cmdline.join(" "),
    }))
}

/// An x86 bzImage, complete: the setup header's magic, and the file at least as long as the
/// setup sectors plus the protected-mode part the header announces (a truncated copy is not).
pub fn check_bzimage(data: &[u8]) -> Result<(), String> {
    if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(
            "an xz-compressed file; kexec loads a bzImage (unpack it with xz -d first)".into(),
        );
    }
    let byte = |i: usize| data.get(i).copied();
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes([
            byte(i)?,
            byte(i + 1)?,
            byte(i + 2)?,
            byte(i + 3)?,
        ]))
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(format!(
            "not a bzImage (no setup header magic HdrS; {} bytes)",
            data.len()
        ));
    }
    let setup_sects = match byte(0x1f1) {
        Some(0) => 4,
        Some(n) => u64::from(n),
        None => return Err("truncated setup header".into()),
    };
    let syssize = u32_at(0x1f4).ok_or("truncated setup header")?;
    let expected = (setup_sects + 1) * 512 + u64::from(syssize) * 16;
    let len = data.len() as u64;
    if len < expected {
        return Err(format!(
            "truncated: {len} bytes, its header announces {expected}"
        ));
    }
    Ok(())
}

/// An initramfs the kernel can unpack: a cpio archive or a compressed one, possibly several
/// concatenated (a microcode archive or added files are). zstd frames are walked block by
/// block, so a truncated one is found; what follows them (or an archive that starts as an xz
/// stream or a cpio archive) must end as xz or cpio do (the xz stream footer `YZ` or the cpio
/// `TRAILER!!!` entry, before any zero padding): a truncated copy does not.
pub fn check_initrd(data: &[u8]) -> Result<(), String> {
    const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    const CPIO: &[&[u8]] = &[b"070701", b"070702"];
    const GZIP: &[u8] = &[0x1f, 0x8b];
    if data.is_empty() {
        return Err("empty".into());
    }
    let mut rest = data;
    loop {
        if rest.starts_with(&ZSTD_MAGIC) {
            rest = rest.get(zstd_frame_len(rest)?..).unwrap_or_default();
            // Concatenated archives are padded to 4 bytes with zeros.
            let next = rest.iter().position(|&b| b != 0).unwrap_or(rest.len());
            rest = rest.get(next..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(());
            }
            continue;
        }
        let xz_or_cpio = rest.starts_with(XZ) || CPIO.iter().any(|m| rest.starts_with(m));
        if !xz_or_cpio {
            return if rest.starts_with(GZIP) {
                Ok(())
            } else {
                Err("neither a cpio archive nor gzip/xz/zstd compressed".into())
            };
        }
        let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let content = rest.get(..end).unwrap_or_default();
        if !content.ends_with(b"YZ") && !content.ends_with(b"TRAILER!!!") {
            return Err(
                "truncated (it ends neither in an xz stream footer nor in a cpio trailer)".into(),
            );
        }
        return Ok(());
    }
}

/// The zstd frame magic number, little-endian (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The length of the zstd frame at the start of `data`, from its header and block headers
/// (RFC 8878 §3.1.1), without decompressing; an error if the frame runs past the end.
fn zstd_frame_len(data: &[u8]) -> Result<usize, String> {
    let truncated = || "truncated (a zstd frame runs past the end of the file)".to_string();
    let descriptor = *data.get(4).ok_or_else(truncated)?;
    let single_segment = descriptor & 0x20 != 0;
    if descriptor & 0x08 != 0 {
        return Err("not a zstd frame (reserved header bit set)".into());
    }
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dictionary_id_len = match descriptor & 0x03 {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 4,
    };
    let mut pos = 5 + usize::from(!single_segment) + dictionary_id_len + content_size_len;
    loop {
        let [b0, b1, b2] = data
            .get(pos..pos + 3)
            .and_then(|h| <[u8; 3]>::try_from(h).ok())
            .ok_or_else(truncated)?;
        let header = u32::from_le_bytes([b0, b1, b2, 0]);
        let size = match (header >> 1) & 0x03 {
            0 | 2 => (header >> 3) as usize,
            1 => 1,
            _ => return Err("not a zstd frame (reserved block type)".into()),
        };
        pos += 3 + size;
        if header & 1 != 0 {
            break;
        }
    }
    if descriptor & 0x04 != 0 {
        pos += 4;
    }
    if pos > data.len() {
        return Err(truncated());
    }
    Ok(pos)
}

/// Writes `aux/ucernvm-version` (spec §7.2 step 2): the running boot loader's version, read
/// by the OS (`cernvm-update`).
pub fn write_version(layout: &Layout, version: &str) -> io::Result<()> {
    let aux = layout.aux();
    fs::create_dir_all(&aux)?;
    let path = aux.join("ucernvm-version");
    let tmp = aux.join(".ucernvm-version.tmp");
    fs::write(&tmp, format!("{version}\n"))?;
    fs::rename(tmp, path)
}

/// The phase: starts a pending update (does not return when that works), else reports why
/// not, and records the running version. Never fails the boot.
pub fn run(layout: &Layout, running: &Running, verifier: &dyn PackVerifier) {
    let kexec_dir = layout.root_rw.join("kexec");
    match decide(&kexec_dir, running, verifier) {
        Ok(Decision::None) => {}
        Ok(Decision::Running) => log::info!("boot loader update {} is running", running.version),
        Ok(Decision::Kexec(update)) => {
            console::info(&format!("kexec into kernel {}...", update.version));
            let e = kexec(layout, &update);
            console::error(&format!(
                "{e}; booting the running version {}",
                running.version
            ));
        }
        Err(e) => console::error(&format!(
            "boot loader update not applied: {e}; booting the running version {}",
            running.version
        )),
    }
    if let Err(e) = write_version(layout, &running.version) {
        console::error(&format!(
            "cannot write {}: {e}",
            layout.aux().join("ucernvm-version").display()
        ));
    }
}

/// Loads the update and jumps into it. Returns only on failure, with the scratch disk
/// mounted read-write again.
fn kexec(layout: &Layout, update: &Verified) -> UpdateError {
    let staging = layout.initramfs.join("run/kexec");
    let load = || -> Result<(), UpdateError> {
        fs::create_dir_all(&staging).map_err(|cause| UpdateError::Read {
            path: staging.clone(),
            cause,
        })?;
        // Copies in the initramfs (RAM): what was verified is what the kernel reads.
        let stage = |name: &str, data: &[u8]| {
            let path = staging.join(name);
            fs::write(&path, data)
                .and_then(|()| fs::File::open(&path))
                .map_err(|cause| UpdateError::Read { path, cause })
        };
        let kernel = stage("kernel", &update.kernel)?;
        let initrd = stage("initrd", &update.initrd)?;
        kexec_file_load(&kernel, &initrd, &update.cmdline).map_err(UpdateError::Load)
    };
    if let Err(e) = load() {
        let _ = fs::remove_dir_all(&staging);
        return e;
    }
    let _ = fs::remove_dir_all(&staging);
    // Nothing of the scratch disk may be lost: flush it and make it read-only, as a
    // shutdown would (the kernel quiesces the devices itself before jumping).
    nix::unistd::sync();
    let ro = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        &layout.root_rw,
        None::<&str>,
        ro,
        None::<&str>,
    ) {
        log::warn!("cannot remount {} read-only: {e}", layout.root_rw.display());
    }
    // Clear the screen as the original does, so the new banner starts on a clean console.
    eprint!("\x1b[H\x1b[2J");
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC)
        .map(|never| match never {})
        .unwrap_or_else(|e| e);
    // Still here: the scratch disk goes back to read-write for the running version.
    let rw = nix::mount::MsFlags::MS_REMOUNT;
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        &layout.root_rw,
        None::<&str>,
        rw,
        None::<&str>,
    ) {
        log::warn!(
            "cannot remount {} read-write: {e}",
            layout.root_rw.display()
        );
    }
    UpdateError::Exec(io::Error::from(err))
}

/// `kexec_file_load(2)`: the kernel checks and loads kernel and initramfs from the two files.
/// nix has no wrapper; see docs/dependencies.md.
fn kexec_file_load(kernel: &fs::File, initrd: &fs::File, cmdline: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let c = std::ffi::CString::new(cmdline)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the command line"))?;
    let bytes = c.as_bytes_with_nul();
    // SAFETY: the two descriptors are open files owned by the caller for the duration of the
    // call; the command line pointer and its length (with the terminating NUL, as the syscall
    // requires) come from one live CString; flags 0 = load (no unload, no crash kernel).
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header with 1 setup sector and `syssize` paragraphs.
    fn bzimage(syssize: u32, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len.max(0x210)];
        d[0x1f1] = 1;
        d[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d.truncate(len);
        d
    }

    fn xz_initrd() -> Vec<u8> {
        let mut d = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3];
        d.extend_from_slice(b"YZ");
        d.extend_from_slice(&[0, 0, 0]);
        d
    }

    fn pack(dir: &Path, apply: &str, kernel: Option<Vec<u8>>, initrd: Option<Vec<u8>>) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("apply"), apply).unwrap();
        if let Some(k) = kernel {
            fs::write(dir.join("vmlinuz-b"), k).unwrap();
        }
        if let Some(i) = initrd {
            fs::write(dir.join("initrd.b"), i).unwrap();
        }
    }

    const APPLY: &str = "version=B\nkernel=vmlinuz-b\ninitrd=initrd.b\ncmdline=\n";

    fn running() -> Running {
        Running {
            version: "A".into(),
            cmdline: "console=ttyS0 cvmfs_repos=r.example quiet".into(),
        }
    }

    #[test]
    fn a_good_pack_is_started_once_with_the_running_command_line_and_a_marker() {
        let t = tempfile::tempdir().unwrap();
        pack(t.path(), APPLY, Some(bzimage(2, 1056)), Some(xz_initrd()));
        let Decision::Kexec(v) = decide(t.path(), &running(), &Unsigned).unwrap() else {
            panic!("no kexec");
        };
        assert_eq!(v.version, "B");
        assert_eq!(
            v.cmdline,
            "console=ttyS0 cvmfs_repos=r.example quiet ucernvm_kexec=B"
        );
        // The started version finds its own pack: nothing to do.
        let b = Running {
            version: "B".into(),
            cmdline: v.cmdline.clone(),
        };
        assert!(matches!(
            decide(t.path(), &b, &Unsigned),
            Ok(Decision::Running)
        ));
        // A pack whose initramfs is not the version it promises is not started again.
        let wrong = Running {
            version: "C".into(),
            cmdline: v.cmdline,
        };
        let e = decide(t.path(), &wrong, &Unsigned).unwrap_err();
        assert!(matches!(e, UpdateError::VersionMismatch { .. }), "{e}");
        assert!(matches!(
            decide(&t.path().join("none"), &running(), &Unsigned),
            Ok(Decision::None)
        ));
    }

    #[test]
    fn the_pack_command_line_is_used_whole() {
        let t = tempfile::tempdir().unwrap();
        pack(
            t.path(),
            "version=B\nkernel=vmlinuz-b\ninitrd=initrd.b\ncmdline=a=b=c ucernvm_kexec=old x\n",
            Some(bzimage(2, 1056)),
            Some(xz_initrd()),
        );
        let Decision::Kexec(v) = decide(t.path(), &running(), &Unsigned).unwrap() else {
            panic!("no kexec");
        };
        assert_eq!(v.cmdline, "a=b=c x ucernvm_kexec=B");
    }

    /// Each broken pack of the issue gets its own message; nothing is deleted.
    #[test]
    fn broken_packs_are_refused_with_a_clear_message() {
        /// (case, apply, kernel, initramfs, expected message part)
        type Case = (
            &'static str,
            &'static str,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "truncated kernel",
                APPLY,
                Some(bzimage(2, 1000)),
                Some(xz_initrd()),
                "vmlinuz-b: truncated: 1000 bytes, its header announces 1056",
            ),
            (
                "missing initramfs",
                APPLY,
                Some(bzimage(2, 1056)),
                None,
                "the update's initramfs",
            ),
            (
                "missing kernel",
                APPLY,
                None,
                Some(xz_initrd()),
                "the update's kernel",
            ),
            (
                "not a kernel",
                APPLY,
                Some(b"hello".to_vec()),
                Some(xz_initrd()),
                "not a bzImage",
            ),
            (
                "truncated initramfs",
                APPLY,
                Some(bzimage(2, 1056)),
                Some(xz_initrd()[..8].to_vec()),
                "initrd.b: truncated (it ends neither",
            ),
            (
                "no version",
                "kernel=vmlinuz-b\ninitrd=initrd.b\n",
                None,
                None,
                "no version= line",
            ),
            (
                "path escape",
                "version=B\nkernel=../../etc/x\ninitrd=initrd.b\n",
                None,
                None,
                "kernel=../../etc/x is not a plain file name",
            ),
        ];
        for (name, apply, kernel, initrd, expected) in cases {
            let t = tempfile::tempdir().unwrap();
            pack(t.path(), apply, kernel, initrd);
            let e = decide(t.path(), &running(), &Unsigned)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{name}: {e}");
            if name.starts_with("missing") {
                assert!(e.ends_with("is missing"), "{name}: {e}");
            }
            assert!(t.path().join("apply").exists());
        }
    }

    #[test]
    fn a_refused_load_says_why() {
        let e = UpdateError::Load(io::Error::from_raw_os_error(libc::ENOSYS)).to_string();
        assert!(
            e.ends_with("(this kernel is built without CONFIG_KEXEC_FILE)"),
            "{e}"
        );
    }

    #[test]
    fn concatenated_initramfs_archives_are_complete() {
        let mut d = xz_initrd();
        d.extend_from_slice(b"070701");
        d.extend_from_slice(&[b'0'; 104]);
        d.extend_from_slice(b"TRAILER!!!\0\0\0\0");
        assert_eq!(check_initrd(&d), Ok(()));
        let cut = d.len() - 20;
        assert!(check_initrd(&d[..cut]).is_err());
        assert_eq!(check_initrd(&[0x1f, 0x8b, 8, 0]), Ok(()));
        assert!(check_initrd(b"hello").is_err());
    }

    #[test]
    fn zstd_initramfs_frames_are_walked_to_their_end() {
        let cpio = {
            let mut c = b"070701".to_vec();
            c.extend_from_slice(&[b'0'; 104]);
            c.extend_from_slice(b"TRAILER!!!\0\0\0\0");
            c
        };
        // A real frame (with content size and checksum), several blocks of compressible and
        // incompressible data, as the builder writes.
        let mut plain = vec![7u8; 300_000];
        plain.extend((0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let frame = zstd::bulk::compress(&plain, 19).unwrap();
        assert_eq!(check_initrd(&frame), Ok(()));
        for cut in [frame.len() - 1, frame.len() - 4, frame.len() / 2, 6] {
            let e = check_initrd(&frame[..cut]).unwrap_err();
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        // Padded and followed by a plain cpio archive, as the QEMU tests add keys.
        let mut both = frame.clone();
        both.extend_from_slice(&[0, 0, 0]);
        both.extend_from_slice(&cpio);
        assert_eq!(check_initrd(&both), Ok(()));
        assert!(check_initrd(&both[..both.len() - 20]).is_err());
        let mut padded = frame;
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(check_initrd(&padded), Ok(()));
    }

    struct Refuse;
    impl PackVerifier for Refuse {
        fn verify(&self, _: Vec<u8>) -> Result<Vec<u8>, String> {
            Err("signature does not match".into())
        }
    }

    #[test]
    fn a_refused_signature_names_the_file() {
        let t = tempfile::tempdir().unwrap();
        pack(t.path(), APPLY, Some(bzimage(2, 1056)), Some(xz_initrd()));
        let e = decide(t.path(), &running(), &Refuse)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("the update's kernel "), "{e}");
        assert!(e.ends_with("vmlinuz-b: signature does not match"), "{e}");
    }

    #[test]
    fn the_version_file_holds_the_running_version() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::under(t.path().to_path_buf());
        // No pack: the phase only records the version (and a missing aux is created).
        run(&layout, &running(), &Unsigned);
        assert_eq!(
            fs::read_to_string(layout.aux().join("ucernvm-version")).unwrap(),
            "A\n"
        );
        // A broken pack: the version is still written, the pack stays.
        pack(&layout.root_rw.join("kexec"), APPLY, None, None);
        run(
            &layout,
            &Running {
                version: "A2".into(),
                cmdline: String::new(),
            },
            &Unsigned,
        );
        assert_eq!(
            fs::read_to_string(layout.aux().join("ucernvm-version")).unwrap(),
            "A2\n"
        );
        assert!(layout.root_rw.join("kexec/apply").exists());
    }
}
