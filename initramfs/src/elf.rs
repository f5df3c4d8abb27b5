//! Executables for the initramfs: whether an ELF file is dynamically linked, and which shared
//! libraries (and program interpreter) it loads, as resolved by the build host's `ldd`.
//!
//! `ldd` runs the dynamic loader of the build host on the file, so the libraries found are the
//! ones that binary really loads on this host; they are shipped at the same absolute paths,
//! where the loader in the initramfs looks for them.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while inspecting an executable.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path} is not an x86_64 ELF file")]
    NotElf { path: PathBuf },
    #[error("cannot run ldd on {path}: {error}")]
    Ldd { path: PathBuf, error: io::Error },
    #[error("ldd {path} failed: {stderr}")]
    LddFailed { path: PathBuf, stderr: String },
    #[error("{path} needs {library}, which the build host does not have (ldd: not found)")]
    LibraryNotFound { path: PathBuf, library: String },
    #[error("ldd {path}: cannot understand the line {line:?}")]
    LddOutput { path: PathBuf, line: String },
}

const PT_INTERP: u32 = 3;

/// How an executable is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs on its own.
    Static,
    /// Loaded by this program interpreter (`PT_INTERP`), e.g. `/lib64/ld-linux-x86-64.so.2`.
    Dynamic { interpreter: String },
}

/// How the little-endian ELF64 file `data` is linked; `None` if it is not such a file.
pub fn linking(data: &[u8]) -> Option<Linking> {
    let bad = None;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return bad;
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return bad;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return bad;
    };
    for i in 0..usize::from(phnum) {
        let o = phoff + i * usize::from(phentsize);
        match u32_at(o) {
            Some(PT_INTERP) => {
                let (Some(offset), Some(size)) = (u64_at(o + 8), u64_at(o + 32)) else {
                    return bad;
                };
                let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size))
                else {
                    return bad;
                };
                let Some(raw) = data.get(offset..offset.saturating_add(size)) else {
                    return bad;
                };
                let text = raw.split(|&b| b == 0).next().unwrap_or(raw);
                return String::from_utf8(text.to_vec())
                    .ok()
                    .map(|interpreter| Linking::Dynamic { interpreter });
            }
            Some(_) => {}
            None => return bad,
        }
    }
    Some(Linking::Static)
}

/// The absolute paths of the shared libraries and the program interpreter that the dynamically
/// linked executable at `path` loads (empty for a static executable), sorted.
pub fn shared_libraries(path: &Path) -> Result<Vec<String>, ElfError> {
    let data = std::fs::read(path).map_err(|error| ElfError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    match linking(&data) {
        Some(Linking::Static) => return Ok(Vec::new()),
        None => {
            return Err(ElfError::NotElf {
                path: path.to_path_buf(),
            })
        }
        Some(Linking::Dynamic { .. }) => {}
    }
    let output = Command::new("ldd")
        .arg(path)
        .output()
        .map_err(|error| ElfError::Ldd {
            path: path.to_path_buf(),
            error,
        })?;
    if !output.status.success() {
        return Err(ElfError::LddFailed {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    parse_ldd(path, &String::from_utf8_lossy(&output.stdout))
}

/// Parses `ldd` output: `name => /path (0x...)`, `/interpreter (0x...)`, and the kernel's vDSO
/// (`linux-vdso.so.1 (0x...)`, no file).
fn parse_ldd(path: &Path, text: &str) -> Result<Vec<String>, ElfError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, target) = match line.split_once("=>") {
            Some((name, target)) => (name.trim(), target.trim()),
            None => (line, line),
        };
        if target.starts_with("not found") {
            return Err(ElfError::LibraryNotFound {
                path: path.to_path_buf(),
                library: name.to_string(),
            });
        }
        let file = target.split_whitespace().next().unwrap_or("");
        if file.starts_with('/') {
            libs.push(file.to_string());
        } else if !name.starts_with("linux-vdso") && !name.starts_with("linux-gate") {
            return Err(ElfError::LddOutput {
                path: path.to_path_buf(),
                line: line.to_string(),
            });
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007efd78542000)\n\
            \tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007efd784a2000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007efd7824c000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007efd78544000)\n";
        assert_eq!(
            parse_ldd(Path::new("mke2fs"), out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libext2fs.so.2",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let err = parse_ldd(Path::new("x"), "\tlibfoo.so.1 => not found\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x needs libfoo.so.1, which the build host does not have (ldd: not found)"
        );
    }

    /// The real e2fsprogs tool of the build host against the real `ldd`.
    #[test]
    fn finds_the_libraries_of_a_real_dynamic_executable() {
        let mke2fs = Path::new("/sbin/mke2fs");
        if !mke2fs.exists() {
            test_prereq::skip("no /sbin/mke2fs (install e2fsprogs)");
            return;
        }
        let libs = shared_libraries(mke2fs).unwrap();
        assert!(
            libs.iter().any(|l| l.ends_with("/libext2fs.so.2")),
            "{libs:?}"
        );
        assert!(libs.iter().any(|l| l.ends_with("/libc.so.6")), "{libs:?}");
        assert!(libs.iter().any(|l| l.contains("ld-linux")), "{libs:?}");
        assert!(libs.iter().all(|l| Path::new(l).is_file()), "{libs:?}");
    }

    #[test]
    fn non_elf_and_static_files() {
        assert_eq!(linking(b"#!/bin/sh\n"), None);
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            shared_libraries(&script),
            Err(ElfError::NotElf { .. })
        ));
        // ELF64 header with one PT_LOAD program header: static.
        let mut d = vec![0u8; 64 + 56];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        d[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(linking(&d), Some(Linking::Static));
        let file = dir.path().join("static");
        std::fs::write(&file, &d).unwrap();
        assert_eq!(shared_libraries(&file).unwrap(), Vec::<String>::new());
    }
}
