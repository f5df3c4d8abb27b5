//! Reproducible cpio archives in the `newc` format ("SVR4 portable ASCII without CRC"), the
//! format the Linux kernel unpacks into its root file system at boot, and their zstd compression.
//!
//! An [`Archive`] is built in memory, then written with every entry sorted by path, sequential
//! inode numbers and one fixed modification time, so the same input always gives the same bytes.
//!
//! Layout of one entry: a 110-byte ASCII header (`070701` and 13 eight-digit hexadecimal fields:
//! inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
//! namesize including the NUL, check), the NUL-terminated name, zero padding to a multiple of 4,
//! the data, zero padding to a multiple of 4. The archive ends with an entry named `TRAILER!!!`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

pub mod builder;
pub mod elf;
pub mod kmod;
pub mod manifest;
pub mod pack;

/// Magic of the `newc` format (no checksums).
pub const NEWC_MAGIC: &str = "070701";
/// Name of the entry that ends every archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a `newc` header in bytes.
pub const HEADER_LEN: usize = 110;
/// zstd level used when none is given: the initramfs is read once per boot, size matters more.
pub const DEFAULT_ZSTD_LEVEL: i32 = 19;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
/// Permission bits including set-uid, set-gid and sticky.
const PERMISSION_MASK: u32 = 0o7777;
/// Mode of parent directories created implicitly.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Errors while building or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path}: mode {mode:#o} has bits outside the permission bits 0o7777")]
    InvalidMode { path: String, mode: u32 },
    #[error("{path}: symlink target must be non-empty and contain no NUL byte")]
    InvalidSymlinkTarget { path: String },
    #[error("{path}: already in the archive")]
    AlreadyExists { path: String },
    #[error("{path}: parent {parent} is in the archive but is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("{path}: {size} bytes do not fit the 32-bit size field of a newc header")]
    TooLarge { path: String, size: u64 },
    #[error("too many entries for the 32-bit inode field of a newc header")]
    TooManyEntries,
    #[error("cannot write the archive: {0}")]
    Io(io::Error),
}

// The cause is in the message, so it is not also returned as the source.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Owner and permission bits of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits (`0o7777` at most), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Metadata {
    /// Owned by root (uid 0, gid 0) with the given permission bits.
    pub fn root(mode: u32) -> Self {
        Metadata {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

impl EntryKind {
    fn type_bits(&self) -> u32 {
        match self {
            EntryKind::Directory => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
            EntryKind::BlockDevice { .. } => S_IFBLK,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            EntryKind::File(data) => data,
            EntryKind::Symlink(target) => target.as_bytes(),
            _ => &[],
        }
    }

    fn rdev(&self) -> (u32, u32) {
        match self {
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                (*major, *minor)
            }
            _ => (0, 0),
        }
    }
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub meta: Metadata,
}

/// An in-memory cpio archive; entries are keyed by their normalised path.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    /// Directories that exist only because something below them was added.
    implicit_dirs: std::collections::BTreeSet<String>,
    mtime: u32,
}

/// Normalises an archive path: `.` components and a trailing `/` are dropped; the result must be
/// relative, non-empty, free of `..`, empty components and NUL bytes.
///
/// ```
/// assert_eq!(ucernvm_initramfs::normalize_path("./etc/./passwd").unwrap(), "etc/passwd");
/// assert!(ucernvm_initramfs::normalize_path("/etc/passwd").is_err());
/// ```
pub fn normalize_path(path: &str) -> Result<String, Error> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.starts_with('/') {
        return Err(invalid(
            "absolute; archive paths are relative to the initramfs root",
        ));
    }
    let mut parts = Vec::new();
    for component in trimmed.split('/') {
        match component {
            "." => {}
            "" => return Err(invalid("empty path component")),
            ".." => return Err(invalid("contains '..'")),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(invalid("empty path (the archive root is implicit)"));
    }
    Ok(parts.join("/"))
}

impl Archive {
    /// An empty archive whose entries carry modification time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the modification time written for every entry (seconds since the epoch, like
    /// `SOURCE_DATE_EPOCH`).
    pub fn set_mtime(&mut self, mtime: u32) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// The modification time written for every entry.
    pub fn mtime(&self) -> u32 {
        self.mtime
    }

    /// Number of entries, including implicitly created directories.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `path`, if any (the path is normalised first).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize_path(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Entries in the order they are written.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Adds a directory (root-owned) with the given permission bits.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, Error> {
        self.add(path, EntryKind::Directory, Metadata::root(mode))
    }

    /// Adds a regular root-owned file.
    pub fn add_file(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, Error> {
        self.add(path, EntryKind::File(data.into()), Metadata::root(mode))
    }

    /// Adds a root-owned symbolic link pointing at `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, Error> {
        self.add(
            path,
            EntryKind::Symlink(target.to_string()),
            Metadata::root(0o777),
        )
    }

    /// Adds a root-owned character device node, e.g. `dev/console` (5, 1).
    pub fn add_char_device(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<&mut Self, Error> {
        self.add(
            path,
            EntryKind::CharDevice { major, minor },
            Metadata::root(mode),
        )
    }

    /// Adds a root-owned block device node.
    pub fn add_block_device(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<&mut Self, Error> {
        self.add(
            path,
            EntryKind::BlockDevice { major, minor },
            Metadata::root(mode),
        )
    }

    /// Adds any entry. Missing parent directories are created (mode 0755, root-owned). Adding a
    /// directory that was created implicitly replaces its metadata; any other duplicate is an error.
    pub fn add(&mut self, path: &str, kind: EntryKind, meta: Metadata) -> Result<&mut Self, Error> {
        let path = normalize_path(path)?;
        if meta.mode & !PERMISSION_MASK != 0 {
            return Err(Error::InvalidMode {
                path,
                mode: meta.mode,
            });
        }
        if let EntryKind::Symlink(target) = &kind {
            if target.is_empty() || target.contains('\0') {
                return Err(Error::InvalidSymlinkTarget { path });
            }
        }
        let size = kind.data().len() as u64;
        if size > u64::from(u32::MAX) {
            return Err(Error::TooLarge { path, size });
        }
        if let Some(existing) = self.entries.get(&path) {
            let replaceable = existing.kind == EntryKind::Directory
                && kind == EntryKind::Directory
                && self.implicit_dirs.contains(&path);
            if !replaceable {
                return Err(Error::AlreadyExists { path });
            }
        }
        self.ensure_parents(&path)?;
        self.implicit_dirs.remove(&path);
        self.entries.insert(path, Entry { kind, meta });
        Ok(self)
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), Error> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(entry) if entry.kind == EntryKind::Directory => {}
                Some(_) => {
                    return Err(Error::ParentNotDirectory {
                        path: path.to_string(),
                        parent: parent.to_string(),
                    })
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            kind: EntryKind::Directory,
                            meta: Metadata::root(IMPLICIT_DIR_MODE),
                        },
                    );
                    self.implicit_dirs.insert(parent.to_string());
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Link count of a directory: itself, its `.` and one `..` per subdirectory.
    fn dir_nlink(&self, path: &str) -> u32 {
        let prefix = format!("{path}/");
        let subdirs = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, e)| e.kind == EntryKind::Directory && !p[prefix.len()..].contains('/'))
            .count();
        2u32.saturating_add(u32::try_from(subdirs).unwrap_or(u32::MAX))
    }

    /// Writes the uncompressed archive; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<u64, Error> {
        let mut written = 0u64;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).map_err(|_| Error::TooManyEntries)?;
            let nlink = match entry.kind {
                EntryKind::Directory => self.dir_nlink(path),
                _ => 1,
            };
            let (rdev_major, rdev_minor) = entry.kind.rdev();
            let header = Header {
                ino,
                mode: entry.kind.type_bits() | entry.meta.mode,
                uid: entry.meta.uid,
                gid: entry.meta.gid,
                nlink,
                mtime: self.mtime,
                rdev_major,
                rdev_minor,
            };
            written += write_member(&mut out, &header, path, entry.kind.data())?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        written += write_member(&mut out, &trailer, TRAILER, &[])?;
        out.flush()?;
        Ok(written)
    }

    /// The uncompressed archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        self.write_to(&mut buf)?;
        Ok(buf)
    }

    /// Writes the archive compressed as one zstd frame (with content checksum) at `level`.
    pub fn write_zstd<W: Write>(&self, out: W, level: i32) -> Result<W, Error> {
        let mut encoder = zstd::stream::Encoder::new(out, level)?;
        encoder.include_checksum(true)?;
        self.write_to(&mut encoder)?;
        Ok(encoder.finish()?)
    }

    /// Writes the archive compressed with `compression`.
    pub fn write_compressed<W: Write>(&self, out: W, compression: Compression) -> Result<W, Error> {
        match compression {
            Compression::Zstd { level } => self.write_zstd(out, level),
            Compression::Xz => {
                let mut buf = Vec::new();
                self.write_to(&mut buf)?;
                let mut out = out;
                out.write_all(&compress(&buf, compression)?)?;
                Ok(out)
            }
        }
    }
}

/// How an initramfs is compressed. Both are deterministic: the same input gives the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// One zstd frame with content checksum (kernel option `CONFIG_RD_ZSTD`).
    Zstd { level: i32 },
    /// xz, preset 9 extreme, CRC32 check (kernel option `CONFIG_RD_XZ`; the kernel's xz decoder
    /// supports no other check). The original µCernVM's format; the smallest archives.
    Xz,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd -{level}"),
            Compression::Xz => f.write_str("xz --x86 -9e"),
        }
    }
}

/// Compresses `data` as `compression` does for archives.
pub fn compress(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    match compression {
        Compression::Zstd { level } => {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), level)?;
            encoder.include_checksum(true)?;
            encoder.write_all(data)?;
            encoder.finish()
        }
        Compression::Xz => {
            use liblzma::stream::{Check, Filters, LzmaOptions, Stream, PRESET_EXTREME};
            let lzma_err = |e: liblzma::stream::Error| io::Error::other(e.to_string());
            let mut options = LzmaOptions::new_preset(9 | PRESET_EXTREME).map_err(lzma_err)?;
            // The guest kernel allocates the whole dictionary while unpacking: no larger than
            // the data needs (1 MiB steps, at most the preset's 64 MiB).
            const MIB: usize = 1 << 20;
            let dict = data.len().div_ceil(MIB).clamp(1, 64) * MIB;
            options.dict_size(u32::try_from(dict).unwrap_or(64 << 20));
            // The branch/call/jump filter for x86 code first: most of the archive is executables
            // (65 KB less here); the kernel's unpacker has it (CONFIG_XZ_DEC_X86).
            let mut filters = Filters::new();
            filters.x86();
            filters.lzma2(&options);
            let stream = Stream::new_stream_encoder(&filters, Check::Crc32).map_err(lzma_err)?;
            let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            encoder.write_all(data)?;
            encoder.finish()
        }
    }
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn write_member<W: Write>(out: &mut W, h: &Header, name: &str, data: &[u8]) -> Result<u64, Error> {
    let namesize = name.len() + 1;
    let namesize32 = u32::try_from(namesize).map_err(|_| Error::TooLarge {
        path: name.to_string(),
        size: namesize as u64,
    })?;
    let filesize = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
        path: name.to_string(),
        size: data.len() as u64,
    })?;
    // devmajor/devminor (the device holding the file) are always 0; check is 0 in newc.
    let header = format!(
        "{NEWC_MAGIC}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, filesize, 0, 0, h.rdev_major, h.rdev_minor,
        namesize32, 0
    );
    debug_assert_eq!(header.len(), HEADER_LEN);
    const ZEROS: [u8; 4] = [0; 4];
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let name_pad = padding(HEADER_LEN + namesize);
    out.write_all(&ZEROS[..name_pad])?;
    out.write_all(data)?;
    let data_pad = padding(data.len());
    out.write_all(&ZEROS[..data_pad])?;
    Ok((HEADER_LEN + namesize + name_pad + data.len() + data_pad) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(header: &[u8], index: usize) -> u32 {
        let start = 6 + index * 8;
        let text = std::str::from_utf8(&header[start..start + 8]).unwrap();
        u32::from_str_radix(text, 16).unwrap()
    }

    #[test]
    fn header_layout_of_a_tiny_archive() {
        let mut a = Archive::new();
        a.set_mtime(0x1234_5678);
        a.add(
            "hello",
            EntryKind::File(b"hi!\n\x01".to_vec()),
            Metadata {
                mode: 0o640,
                uid: 1000,
                gid: 100,
            },
        )
        .unwrap();
        let bytes = a.to_bytes().unwrap();

        let expected_header = "070701\
            00000001\
            000081a0\
            000003e8\
            00000064\
            00000001\
            12345678\
            00000005\
            00000000\
            00000000\
            00000000\
            00000000\
            00000006\
            00000000";
        assert_eq!(&bytes[..HEADER_LEN], expected_header.as_bytes());
        // Name "hello\0" ends at 116, already a multiple of 4: no padding.
        assert_eq!(&bytes[110..116], b"hello\0");
        // Data (5 bytes) then 3 bytes of padding.
        assert_eq!(&bytes[116..121], b"hi!\n\x01");
        assert_eq!(&bytes[121..124], &[0, 0, 0]);
        // Trailer.
        let trailer = &bytes[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(field(trailer, 0), 0, "trailer inode");
        assert_eq!(field(trailer, 4), 1, "trailer nlink");
        assert_eq!(field(trailer, 11), 11, "trailer namesize");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        // 110 + 11 = 121 -> padded to 124.
        assert_eq!(trailer.len(), 124);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn device_symlink_and_directory_fields() {
        let mut a = Archive::new();
        a.add_char_device("dev/console", 5, 1, 0o600).unwrap();
        a.add_block_device("dev/vda", 253, 0, 0o660).unwrap();
        a.add_symlink("bin/sh", "busybox").unwrap();
        let bytes = a.to_bytes().unwrap();
        let mut members = Vec::new();
        let mut pos = 0;
        loop {
            let h = &bytes[pos..];
            let namesize = field(h, 11) as usize;
            let filesize = field(h, 6) as usize;
            let name = std::str::from_utf8(&h[HEADER_LEN..HEADER_LEN + namesize - 1]).unwrap();
            let data_start = HEADER_LEN + namesize + padding(HEADER_LEN + namesize);
            let data = h[data_start..data_start + filesize].to_vec();
            members.push((
                name.to_string(),
                field(h, 0),
                field(h, 1),
                field(h, 4),
                field(h, 9),
                field(h, 10),
                data,
            ));
            pos += data_start + filesize + padding(filesize);
            if name == TRAILER {
                break;
            }
        }
        assert_eq!(pos, bytes.len());
        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/sh", "dev", "dev/console", "dev/vda", TRAILER]
        );
        // Inodes are sequential in write order.
        let inos: Vec<u32> = members.iter().map(|m| m.1).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 0]);
        assert_eq!(members[0].2, 0o040_755);
        assert_eq!(
            members[0].3, 2,
            "directory without subdirectories has nlink 2"
        );
        assert_eq!(members[1].2, 0o120_777);
        assert_eq!(members[1].6, b"busybox");
        assert_eq!(members[3].2, 0o020_600);
        assert_eq!((members[3].4, members[3].5), (5, 1));
        assert_eq!(members[4].2, 0o060_660);
        assert_eq!((members[4].4, members[4].5), (253, 0));
    }

    #[test]
    fn parents_are_created_and_explicit_dirs_override_them() {
        let mut a = Archive::new();
        a.add_file("usr/lib/x/file", "x", 0o644).unwrap();
        assert_eq!(a.get("usr").unwrap().kind, EntryKind::Directory);
        assert_eq!(a.get("usr/lib/x").unwrap().meta, Metadata::root(0o755));
        a.add_dir("usr/lib", 0o750).unwrap();
        assert_eq!(a.get("usr/lib").unwrap().meta.mode, 0o750);
        // An explicit directory cannot be added twice.
        assert!(matches!(
            a.add_dir("usr/lib", 0o700),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            a.add_file("usr/lib/x/file", "y", 0o644),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            a.add_file("usr/lib/x/file/below", "y", 0o644),
            Err(Error::ParentNotDirectory { .. })
        ));
        assert_eq!(a.len(), 4);
        // usr has one subdirectory.
        assert_eq!(a.dir_nlink("usr"), 3);
    }

    #[test]
    fn entries_are_sorted_by_path() {
        let mut a = Archive::new();
        for p in ["z", "a/b", "a.x", "a-b", "m/n/o"] {
            a.add_file(p, "", 0o644).unwrap();
        }
        let order: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(order, ["a", "a-b", "a.x", "a/b", "m", "m/n", "m/n/o", "z"]);
    }

    #[test]
    fn bad_paths_are_rejected() {
        for bad in [
            "/etc/passwd",
            "/",
            "",
            ".",
            "./",
            "a//b",
            "../x",
            "a/../b",
            "a/..",
            "a\0b",
            "//x",
        ] {
            let mut a = Archive::new();
            let err = a.add_file(bad, "", 0o644).unwrap_err();
            assert!(matches!(err, Error::InvalidPath { .. }), "{bad:?}: {err}");
        }
        assert_eq!(normalize_path("./a/./b/").unwrap(), "a/b");
        assert_eq!(normalize_path("init").unwrap(), "init");
        let err = normalize_path("/init").unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn bad_modes_and_targets_are_rejected() {
        let mut a = Archive::new();
        assert!(matches!(
            a.add_file("x", "", 0o100_644),
            Err(Error::InvalidMode { .. })
        ));
        assert!(matches!(
            a.add_symlink("l", ""),
            Err(Error::InvalidSymlinkTarget { .. })
        ));
        a.add_dir("tmp", 0o1777).unwrap();
        assert_eq!(a.get("tmp").unwrap().meta.mode, 0o1777);
    }

    #[test]
    fn zstd_round_trip_and_reproducibility() {
        let build = || {
            let mut a = Archive::new();
            a.set_mtime(1_700_000_000);
            a.add_file("init", "#!/bin/sh\n", 0o755).unwrap();
            a.add_char_device("dev/null", 1, 3, 0o666).unwrap();
            a.write_zstd(Vec::new(), 3).unwrap()
        };
        let first = build();
        assert_eq!(first, build());
        let plain = zstd::stream::decode_all(&first[..]).unwrap();
        let mut a = Archive::new();
        a.set_mtime(1_700_000_000);
        a.add_file("init", "#!/bin/sh\n", 0o755).unwrap();
        a.add_char_device("dev/null", 1, 3, 0o666).unwrap();
        assert_eq!(plain, a.to_bytes().unwrap());
    }
}
