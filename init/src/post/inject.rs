//! `cernvm_inject` (spec §12.1): a base64 `.tar.gz` from the user data, extracted into the
//! union root once (marker `context/injected`).
//!
//! Extraction is confined to the root, as if chrooted: the archive is checked completely before
//! anything is written, and an archive with any hostile entry is refused as a whole (absolute
//! paths, `..`, device nodes and FIFOs, symbolic links that point above the root, hard links
//! outside the archive's tree). While extracting, symbolic links already on the path are
//! resolved inside the root (an absolute `/bin -> /usr/bin` of the OS means `<root>/usr/bin`),
//! and an existing symbolic link at the final name is replaced, never written through.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

/// Marker in the context directory: the injection happened.
pub const MARKER: &str = "injected";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cernvm_inject is not valid base64: {0}")]
    Base64(base64::DecodeError),
    #[error("cernvm_inject is not a readable gzip'd tar archive: {0}")]
    Archive(io::Error),
    #[error("refused archive entry {path:?}: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("cannot extract {path:?}: {cause}")]
    Extract { path: String, cause: io::Error },
    #[error("cannot write the marker {}: {cause}", path.display())]
    Marker { path: PathBuf, cause: io::Error },
}

// The cause is in the message, so it is not also returned as the source.
impl From<base64::DecodeError> for InjectError {
    fn from(e: base64::DecodeError) -> Self {
        InjectError::Base64(e)
    }
}

/// Result of [`inject`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The marker exists: injected on an earlier boot.
    AlreadyDone,
    /// Extracted; the paths in archive order.
    Extracted(Vec<String>),
}

/// Decodes, checks and extracts `b64` into `root`, then creates `<context_dir>/injected`.
/// Nothing is extracted and no marker is written when any check fails.
pub fn inject(root: &Path, context_dir: &Path, b64: &str) -> Result<Outcome, InjectError> {
    let marker = context_dir.join(MARKER);
    if marker.exists() {
        return Ok(Outcome::AlreadyDone);
    }
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let gz = base64::engine::general_purpose::STANDARD.decode(compact)?;
    let listed = extract_tar_gz(root, &gz)?;
    std::fs::create_dir_all(context_dir)
        .and_then(|()| std::fs::write(&marker, ""))
        .map_err(|source| InjectError::Marker {
            path: marker.clone(),
            cause: source,
        })?;
    Ok(Outcome::Extracted(listed))
}

/// Checks and extracts a gzip'd tar archive into `root` with the rules of this module; nothing
/// is written when a check fails. Returns the extracted paths in archive order.
pub fn extract_tar_gz(root: &Path, gz: &[u8]) -> Result<Vec<String>, InjectError> {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar_bytes)
        .map_err(InjectError::Archive)?;
    let plan = check(&tar_bytes)?;
    extract(root, &tar_bytes, &plan)
}

/// What one checked entry becomes.
#[derive(Debug)]
enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

/// A checked entry: its normalised relative path and kind.
#[derive(Debug)]
struct Planned {
    rel: PathBuf,
    kind: Kind,
}

fn refuse(path: &[u8], reason: &'static str) -> InjectError {
    InjectError::Refused {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    }
}

/// A relative path without `..`, `.` components dropped; `None` when empty.
fn normalise(raw: &[u8]) -> Result<Option<PathBuf>, InjectError> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse(raw, "'..' in the path")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse(raw, "absolute path")),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// True when `target`, read relative to the directory of `link` (both inside the root), climbs
/// above the root.
fn escapes(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false; // resolved inside the root, as after chroot
    }
    let mut depth = link.components().count() as isize - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The first pass: every entry is checked before anything is written.
fn check(tar_bytes: &[u8]) -> Result<Vec<Planned>, InjectError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut plan = Vec::new();
    for entry in archive.entries().map_err(InjectError::Archive)? {
        let entry = entry.map_err(InjectError::Archive)?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = normalise(&raw)? else {
            continue; // "./" itself
        };
        use tar::EntryType as T;
        let kind = match entry.header().entry_type() {
            T::Regular | T::Continuous => Kind::File,
            T::Directory => Kind::Dir,
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse(&raw, "symbolic link without a target"))?;
                let target = PathBuf::from(OsStr::from_bytes(&target));
                if escapes(&rel, &target) {
                    return Err(refuse(&raw, "symbolic link pointing above the root"));
                }
                Kind::Symlink(target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse(&raw, "hard link without a target"))?;
                let Some(target) = normalise(&target)? else {
                    return Err(refuse(&raw, "hard link to the root"));
                };
                Kind::HardLink(target)
            }
            T::Char | T::Block => return Err(refuse(&raw, "device node")),
            T::Fifo => return Err(refuse(&raw, "FIFO")),
            _ => return Err(refuse(&raw, "unsupported entry type")),
        };
        plan.push(Planned { rel, kind });
    }
    Ok(plan)
}

/// The directory that receives `rel`, resolved inside `root` (missing directories created).
fn resolve_parent(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => {
            let dir = super::inroot::resolve(root, parent, true, true)?;
            let full = root.join(&dir);
            if !full.exists() {
                std::fs::create_dir(&full)?;
            } else if !full.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Ok(full)
        }
        None => Ok(root.to_path_buf()),
    }
}

/// Removes whatever is at `path` unless it is a directory (which is kept).
fn clear_final(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => std::fs::remove_file(path).map(|()| false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn extract(root: &Path, tar_bytes: &[u8], plan: &[Planned]) -> Result<Vec<String>, InjectError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut listed = Vec::new();
    let mut planned = plan.iter();
    for entry in archive.entries().map_err(InjectError::Archive)? {
        let mut entry = entry.map_err(InjectError::Archive)?;
        let raw = entry.path_bytes().into_owned();
        if normalise(&raw)?.is_none() {
            continue;
        }
        let Some(p) = planned.next() else { break };
        let shown = p.rel.display().to_string();
        let err = |source| InjectError::Extract {
            path: shown.clone(),
            cause: source,
        };
        let parent = resolve_parent(root, &p.rel).map_err(err)?;
        let name = p.rel.file_name().unwrap_or_default();
        let target = parent.join(name);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let is_dir = clear_final(&target).map_err(err)?;
        match &p.kind {
            Kind::Dir => {
                if !is_dir {
                    std::fs::create_dir(&target).map_err(err)?;
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(err)?;
            }
            Kind::File => {
                if is_dir {
                    std::fs::remove_dir(&target).map_err(err)?;
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode)
                    .open(&target)
                    .map_err(err)?;
                io::copy(&mut entry, &mut f).map_err(err)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(err)?;
            }
            Kind::Symlink(to) => {
                if is_dir {
                    std::fs::remove_dir(&target).map_err(err)?;
                }
                std::os::unix::fs::symlink(to, &target).map_err(err)?;
            }
            Kind::HardLink(to) => {
                let src_parent = resolve_parent(root, to).map_err(err)?;
                let src = src_parent.join(to.file_name().unwrap_or_default());
                let m = std::fs::symlink_metadata(&src).map_err(err)?;
                if !m.is_file() {
                    return Err(InjectError::Refused {
                        path: shown,
                        reason: "hard link to something that is not a regular file",
                    });
                }
                std::fs::hard_link(&src, &target).map_err(err)?;
            }
        }
        if !matches!(p.kind, Kind::HardLink(_)) {
            let h = entry.header();
            if let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) {
                let _ = std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32));
                if !matches!(p.kind, Kind::Symlink(_)) && mode & 0o6000 != 0 {
                    // chown clears set-id bits; restore them.
                    let _ =
                        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode));
                }
            }
            if let Ok(mtime) = h.mtime() {
                let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
                let _ = nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    &target,
                    &t,
                    &t,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                );
            }
        }
        crate::console::info(&format!("  {shown}"));
        listed.push(shown);
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// One archive entry: raw name bytes (so hostile names can be written), type, link
    /// target, contents, mode.
    struct E<'a>(&'a [u8], tar::EntryType, &'a [u8], &'a [u8], u32);

    fn archive(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for E(name, ty, link, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name);
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(1234);
            h.set_gid(2345);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(gz.finish().unwrap())
            .into_bytes()
    }

    fn b64(entries: &[E]) -> String {
        String::from_utf8(archive(entries)).unwrap()
    }

    use tar::EntryType as T;

    /// `<tmp>/root` plus a sibling `<tmp>/outside` that must never change.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let ctx = root.join("mnt/.rw/context");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("file"), "original").unwrap();
        (t, root, ctx, outside)
    }

    fn untouched(root: &Path, ctx: &Path, outside: &Path) {
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "original"
        );
        assert_eq!(
            std::fs::read_dir(outside).unwrap().count(),
            1,
            "outside changed"
        );
        assert!(!ctx.join(MARKER).exists(), "no marker after a refusal");
        let top: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            top,
            vec![std::ffi::OsString::from("mnt")],
            "nothing extracted"
        );
    }

    #[test]
    fn good_archive_is_extracted_once_with_modes_and_times() {
        let (_t, root, ctx, _) = setup();
        let data = b64(&[
            E(b"./", T::Directory, b"", b"", 0o755),
            E(b"./etc/", T::Directory, b"", b"", 0o755),
            E(
                b"./etc/cernvm/site.conf",
                T::Regular,
                b"",
                b"SITE=x\n",
                0o640,
            ),
            E(b"usr/bin/tool", T::Regular, b"", b"#!/bin/sh\n", 0o4755),
            E(b"etc/link", T::Symlink, b"cernvm/site.conf", b"", 0o777),
            E(b"etc/hard", T::Link, b"etc/cernvm/site.conf", b"", 0o640),
        ]);
        let out = inject(&root, &ctx, &data).unwrap();
        assert_eq!(
            out,
            Outcome::Extracted(vec![
                "etc".into(),
                "etc/cernvm/site.conf".into(),
                "usr/bin/tool".into(),
                "etc/link".into(),
                "etc/hard".into()
            ])
        );
        let conf = root.join("etc/cernvm/site.conf");
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "SITE=x\n");
        let m = std::fs::metadata(&conf).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(m.nlink(), 2);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((m.uid(), m.gid()), (1234, 2345));
            let tool = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
            assert_eq!(tool.mode() & 0o7777, 0o4755, "set-uid kept after chown");
        }
        assert_eq!(
            std::fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("cernvm/site.conf")
        );
        assert!(ctx.join(MARKER).exists());
        // Once only: the next boot does nothing even with another archive.
        std::fs::remove_file(&conf).unwrap();
        assert_eq!(inject(&root, &ctx, &data).unwrap(), Outcome::AlreadyDone);
        assert!(!conf.exists());
    }

    #[test]
    fn hostile_archives_are_refused_as_a_whole() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[
                    E(b"ok", T::Regular, b"", b"x", 0o644),
                    E(b"/etc/evil", T::Regular, b"", b"x", 0o644),
                ]),
                "absolute path",
            ),
            (
                archive(&[
                    E(b"ok", T::Regular, b"", b"x", 0o644),
                    E(b"../outside/file", T::Regular, b"", b"pwned", 0o644),
                ]),
                "'..'",
            ),
            (
                archive(&[E(b"a/../../outside/file", T::Regular, b"", b"pwned", 0o644)]),
                "'..'",
            ),
            (
                archive(&[E(b"dev/sda", T::Block, b"", b"", 0o600)]),
                "device node",
            ),
            (
                archive(&[E(b"dev/mem2", T::Char, b"", b"", 0o600)]),
                "device node",
            ),
            (archive(&[E(b"pipe", T::Fifo, b"", b"", 0o600)]), "FIFO"),
            // The classic: a link out of the tree, then a file through it.
            (
                archive(&[
                    E(b"escape", T::Symlink, b"../outside", b"", 0o777),
                    E(b"escape/file", T::Regular, b"", b"pwned", 0o644),
                ]),
                "above the root",
            ),
            (
                archive(&[E(
                    b"a/b/escape",
                    T::Symlink,
                    b"../../../outside",
                    b"",
                    0o777,
                )]),
                "above the root",
            ),
            (
                archive(&[E(b"h", T::Link, b"../outside/file", b"", 0o644)]),
                "'..'",
            ),
            (
                archive(&[E(b"h", T::Link, b"/etc/shadow", b"", 0o644)]),
                "absolute path",
            ),
        ];
        for (data, reason) in cases {
            let (_t, root, ctx, outside) = setup();
            let e = inject(&root, &ctx, std::str::from_utf8(&data).unwrap()).unwrap_err();
            assert!(matches!(e, InjectError::Refused { .. }), "{e}");
            assert!(e.to_string().contains(reason), "{e} (expected {reason})");
            untouched(&root, &ctx, &outside);
        }
    }

    #[test]
    fn existing_links_in_the_root_are_resolved_inside_it() {
        let (t, root, ctx, outside) = setup();
        // The OS has an absolute /bin -> /usr/bin link; an attacker-planted absolute link
        // to the host's directory at a final name must be replaced, not written through.
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("file"), root.join("etc/motd")).unwrap();
        // A link in the root pointing to the host directory via `..` is clamped at the root.
        std::os::unix::fs::symlink("../../../../../..", root.join("up")).unwrap();
        let data = b64(&[
            E(b"bin/tool", T::Regular, b"", b"tool", 0o755),
            E(b"etc/motd", T::Regular, b"", b"motd", 0o644),
            E(b"up/x", T::Regular, b"", b"x", 0o644),
            E(b"abs", T::Symlink, b"/etc", b"", 0o777),
            E(
                b"abs/passwd",
                T::Regular,
                b"",
                b"root:x:0:0::/root:/bin/sh\n",
                0o644,
            ),
        ]);
        inject(&root, &ctx, &data).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("usr/bin/tool")).unwrap(),
            "tool"
        );
        assert!(!std::fs::symlink_metadata(root.join("etc/motd"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "motd"
        );
        assert_eq!(std::fs::read_to_string(root.join("x")).unwrap(), "x");
        assert!(root.join("etc/passwd").is_file());
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "original"
        );
        assert!(!t.path().join("x").exists());
    }

    #[test]
    fn undecodable_values_leave_no_marker() {
        let (_t, root, ctx, outside) = setup();
        let e = inject(&root, &ctx, "not base64 !!").unwrap_err();
        assert!(matches!(e, InjectError::Base64(_)), "{e}");
        let not_gzip = base64::engine::general_purpose::STANDARD.encode(b"plain text");
        let e = inject(&root, &ctx, &not_gzip).unwrap_err();
        assert!(matches!(e, InjectError::Archive(_)), "{e}");
        untouched(&root, &ctx, &outside);
        // Line breaks inside the value (as in a user-data file) are fine.
        let data = b64(&[E(b"f", T::Regular, b"", b"1", 0o644)]);
        let wrapped: String = data
            .as_bytes()
            .chunks(20)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        inject(&root, &ctx, &wrapped).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "1");
    }
}
