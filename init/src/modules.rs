//! Kernel modules (spec §2): a small modprobe. The initramfs has no udev, so the NIC drivers of
//! §2.1 are loaded explicitly, and other phases load file-system modules on demand with [`load`].
//!
//! Dependencies come from `modules.dep`; modules listed in `modules.builtin` and modules that
//! already appear in `/sys/module` count as present. Compressed modules (`.ko.gz`, `.ko.xz`,
//! `.ko.zst`) are handed to the kernel with `MODULE_INIT_COMPRESSED_FILE`; when the kernel cannot
//! decompress, gzip modules are decompressed here and loaded with `init_module`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::console;

/// NIC drivers loaded on every boot, in the original's order (spec §2.1), followed by what a
/// distribution kernel may have as modules where the CernVM kernel has them built in. Used
/// when the initramfs has no `modules.alias` to match the devices present against.
pub const PREDEFINED: &[&str] = &[
    // Intel's SR-IOV VF driver (EC2 enhanced networking): `i40evf` until Linux 4.16, `iavf`
    // since; a kernel has one of the two, the other is skipped as unknown.
    "i40evf",
    "iavf",
    "ixgbevf",
    "igbvf",
    "e100",
    "e1000",
    "pcnet32",
    "8139cp",
    "8139too",
    // built into the CernVM kernel, modules in distribution kernels (spec §2.1 recommendation)
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sr_mod",
    "ahci",
    "ata_piix",
    "ena",
    "vmxnet3",
    "xen_netfront",
    "xen_blkfront",
    "hv_netvsc",
    "hv_storvsc",
    // file systems the later phases mount: CernVM-FS (FUSE), the union, the scratch disk
    "fuse",
    "overlay",
    "ext4",
];

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read the module index {path}: {cause}")]
    Index {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("module {0} is neither in modules.dep nor built into the kernel")]
    Unknown(String),
    #[error("dependency cycle through module {0} in modules.dep")]
    Cycle(String),
    #[error("cannot open module file {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot decompress module file {path}: {cause}")]
    Decompress {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the kernel refused module {path}: {cause}")]
    Load {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Module names are compared with `-` and `_` treated alike, as modprobe does.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// The parsed `modules.dep` and `modules.builtin` of one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// `/lib/modules/<release>`
    pub dir: PathBuf,
    /// module name → (file relative to `dir`, direct dependencies as names)
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    /// `modules.alias`: (glob pattern, module name), in file order.
    aliases: Vec<(String, String)>,
}

impl ModuleIndex {
    /// Reads `dir/modules.dep` (required), `dir/modules.builtin` and `dir/modules.alias`
    /// (optional).
    pub fn open(dir: &Path) -> Result<Self, ModuleError> {
        let dep_path = dir.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).map_err(|source| ModuleError::Index {
            path: dep_path,
            cause: source,
        })?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let alias = fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
        Ok(Self::parse(dir, &dep, &builtin).with_aliases(&alias))
    }

    /// Adds the `alias <pattern> <module>` lines of a `modules.alias` text.
    pub fn with_aliases(mut self, modules_alias: &str) -> Self {
        self.aliases = modules_alias
            .lines()
            .filter_map(|line| {
                let mut w = line.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), normalize(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        self
    }

    /// The modules whose aliases match a device's `modalias` (as modprobe matches them).
    pub fn modules_for_modalias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if !out.contains(module) && glob_match(pattern.as_bytes(), modalias.as_bytes()) {
                out.push(module.clone());
            }
        }
        out
    }

    /// Parses the two index texts; malformed lines are skipped.
    pub fn parse(dir: &Path, modules_dep: &str, modules_builtin: &str) -> Self {
        let mut deps = HashMap::new();
        for line in modules_dep.lines() {
            let Some((file, rest)) = line.split_once(':') else {
                continue;
            };
            let file = file.trim();
            if file.is_empty() {
                continue;
            }
            let d = rest.split_whitespace().map(module_name_of).collect();
            deps.insert(module_name_of(file), (file.to_string(), d));
        }
        let builtin = modules_builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| module_name_of(l.trim()))
            .collect();
        ModuleIndex {
            dir: dir.to_path_buf(),
            deps,
            builtin,
            aliases: Vec::new(),
        }
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The module files to load for `name`, dependencies first, leaving out built-in modules
    /// and those for which `loaded` says yes. Empty when nothing needs loading.
    pub fn plan(
        &self,
        name: &str,
        loaded: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<PathBuf>, ModuleError> {
        let name = normalize(name);
        if self.is_builtin(&name) || loaded(&name) {
            return Ok(Vec::new());
        }
        if !self.deps.contains_key(&name) {
            return Err(ModuleError::Unknown(name));
        }
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = HashSet::new();
        self.visit(&name, loaded, &mut visiting, &mut done, &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        loaded: &dyn Fn(&str) -> bool,
        visiting: &mut HashSet<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.is_builtin(name) || loaded(name) {
            return Ok(());
        }
        let Some((file, deps)) = self.deps.get(name) else {
            return Err(ModuleError::Unknown(name.to_string()));
        };
        if !visiting.insert(name.to_string()) {
            return Err(ModuleError::Cycle(name.to_string()));
        }
        for d in deps {
            self.visit(d, loaded, visiting, done, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push(self.dir.join(file));
        Ok(())
    }
}

/// Shell-style matching of a module alias against a modalias, as modprobe does it (fnmatch):
/// `*` any run of characters, `?` one character, `[...]` a set or range (`[!...]` negated).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, text.get(t).copied().unwrap_or(0)),
            Some(&c) if text.get(t) == Some(&c) => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Matches `c` against the bracket expression starting at `pattern[open]` (`[`); the index
/// after its `]`, or `None` when `c` is not in the set. An unterminated `[` matches itself.
fn class_match(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negated = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                found |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                found |= lo == c;
                i += 1;
            }
        }
    }
    (found != negated).then_some(i + 1)
}

/// The `modalias` of every device on every bus under `sys_bus` (`/sys/bus`).
pub fn present_modaliases(sys_bus: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for bus in fs::read_dir(sys_bus).into_iter().flatten().flatten() {
        for dev in fs::read_dir(bus.path().join("devices"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(alias) = fs::read_to_string(dev.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.insert(alias.to_string());
                }
            }
        }
    }
    out
}

/// Loads the modules whose aliases match the devices present, until loading finds no new
/// devices (a bus driver such as virtio_pci or an ATA controller brings up devices of its
/// own); returns the names of the modules it loaded or found loaded.
pub fn load_for_present_devices(index: &ModuleIndex, sys_bus: &Path) -> Vec<String> {
    load_for_devices_with(
        sys_bus,
        |alias| index.modules_for_modalias(alias),
        |name| load_with(index, name),
    )
}

/// [`load_for_present_devices`] with the alias lookup and the loader given. The modules of a
/// round load at the same time, one thread each (with its dependencies, as udev's workers do):
/// a driver's initialisation waits for its devices (the ATA bus reset, the virtio devices'
/// set-up) and those waits overlap. Two threads needing the same dependency are fine: the
/// kernel lets the second wait for the first and answers "already loaded".
fn load_for_devices_with(
    sys_bus: &Path,
    modules_for: impl Fn(&str) -> Vec<String>,
    load: impl Fn(&str) -> Result<(), ModuleError> + Sync,
) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut modules: Vec<String> = Vec::new();
    // Each round can only add devices behind a newly loaded driver: a few rounds suffice.
    for _ in 0..5 {
        let new: Vec<String> = present_modaliases(sys_bus)
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        if new.is_empty() {
            break;
        }
        let mut round: Vec<(String, String)> = Vec::new();
        for alias in new {
            for name in modules_for(&alias) {
                if !modules.contains(&name) {
                    modules.push(name.clone());
                    round.push((alias.clone(), name));
                }
            }
        }
        let load = &load;
        std::thread::scope(|scope| {
            let loads: Vec<_> = round
                .iter()
                .map(|(alias, name)| (alias, name, scope.spawn(move || load(name))))
                .collect();
            for (alias, name, thread) in loads {
                match thread.join() {
                    Ok(Ok(())) => log::debug!("{alias}: module {name}"),
                    Ok(Err(e)) => log::warn!("module {name} for device {alias}: {e}"),
                    Err(_) => log::warn!("module {name} for device {alias}: its loader failed"),
                }
            }
        });
    }
    modules
}

/// Modules the later phases need whatever the hardware: CernVM-FS (FUSE), the union and the
/// scratch disk's file system (spec §2.1 recommendation for distribution kernels).
pub const BY_NAME: &[&str] = &["fuse", "overlay", "ext4"];

/// Whether the running kernel has `name` loaded (or built in with a `/sys/module` entry).
pub fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(normalize(name)).exists()
}

const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

fn compression_of(path: &Path) -> Compression {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => Compression::Gzip,
        Some("xz") => Compression::Xz,
        Some("zst") => Compression::Zstd,
        _ => Compression::None,
    }
}

fn finit_module(file: &fs::File, flags: libc::c_uint) -> std::io::Result<()> {
    // `MODULE_INIT_COMPRESSED_FILE` has no name in nix; the kernel checks the bits.
    let flags = nix::kmod::ModuleInitFlags::from_bits_retain(flags);
    nix::kmod::finit_module(file, c"", flags).map_err(std::io::Error::from)
}

fn init_module(image: &[u8]) -> std::io::Result<()> {
    nix::kmod::init_module(image, c"").map_err(std::io::Error::from)
}

fn decompress(path: &Path, how: &Compression) -> Result<Vec<u8>, ModuleError> {
    let err = |source| ModuleError::Decompress {
        path: path.to_path_buf(),
        cause: source,
    };
    let file = fs::File::open(path).map_err(err)?;
    let mut out = Vec::new();
    match how {
        Compression::Gzip => {
            flate2::read::GzDecoder::new(file)
                .read_to_end(&mut out)
                .map_err(err)?;
        }
        Compression::Xz | Compression::Zstd => {
            return Err(err(std::io::Error::other(
                "xz and zstd modules need a kernel with CONFIG_MODULE_DECOMPRESS",
            )))
        }
        Compression::None => {
            fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut out))
                .map_err(err)?;
        }
    }
    Ok(out)
}

/// Loads one module file (no dependency handling). "Already loaded" counts as success.
pub fn load_file(path: &Path) -> Result<(), ModuleError> {
    let file = fs::File::open(path).map_err(|source| ModuleError::Open {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let how = compression_of(path);
    let flags = match how {
        Compression::None => 0,
        _ => MODULE_INIT_COMPRESSED_FILE,
    };
    let mut result = finit_module(&file, flags);
    // EINVAL: this kernel does not know the flag or cannot decompress this format.
    if flags != 0 && matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
        let image = decompress(path, &how)?;
        result = init_module(&image);
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(source) => Err(ModuleError::Load {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}

/// The module directory of the running kernel below `root` (`<root>/lib/modules/<release>`).
pub fn modules_dir(root: &Path) -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    root.join("lib/modules").join(release)
}

/// Loads `name` and its dependencies into the running kernel (modprobe). Built-in and
/// already-loaded modules succeed without doing anything.
pub fn load(name: &str) -> Result<(), ModuleError> {
    if is_loaded(name) {
        return Ok(());
    }
    let index = ModuleIndex::open(&modules_dir(Path::new("/")))?;
    load_with(&index, name)
}

/// [`load`] against a given index.
pub fn load_with(index: &ModuleIndex, name: &str) -> Result<(), ModuleError> {
    for file in index.plan(name, &is_loaded)? {
        let started = std::time::Instant::now();
        load_file(&file)?;
        log::debug!(
            "loaded kernel module {} in {} ms",
            file.display(),
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

/// Non-comment, non-empty lines of `/etc/modules`.
pub fn etc_modules(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Unloads a module (`rmmod`), failing when it is in use.
pub fn unload(name: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(normalize(name)).map_err(std::io::Error::other)?;
    // O_NONBLOCK makes a busy module an error, not a wait.
    nix::kmod::delete_module(&c, nix::kmod::DeleteModuleFlags::O_NONBLOCK)
        .map_err(std::io::Error::from)
}

/// Spec §2.2: load `floppy`; unless one byte can be read from `/dev/fd0` (bounded: a drive
/// without medium can take long to give up), unload it again so no dangling driver remains.
pub fn probe_floppy(index: &ModuleIndex) {
    if load_with(index, "floppy").is_err() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // A probe that cannot start or panics closes the channel: no readable medium.
    let _ = std::thread::Builder::new()
        .name("floppy-probe".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            let ok = fs::File::open("/dev/fd0").and_then(|mut f| f.read_exact(&mut byte));
            let _ = tx.send(ok.is_ok());
        });
    let readable = rx
        .recv_timeout(std::time::Duration::from_secs(3))
        .unwrap_or(false);
    if !readable {
        if let Err(e) = unload("floppy") {
            log::debug!("cannot unload floppy: {e}");
        }
    }
}

/// Spec §2.1: the predefined modules, then `/etc/modules`; failures are logged and ignored.
pub fn load_predefined(root: &Path) -> Result<(), ModuleError> {
    console::begin("Loading predefined modules...");
    let index = match ModuleIndex::open(&modules_dir(root)) {
        Ok(i) => i,
        Err(e) => {
            // A kernel with everything built in ships no modules at all.
            log::info!("no loadable kernel modules: {e}");
            console::check();
            return Ok(());
        }
    };
    let extra = fs::read_to_string(root.join("etc/modules")).unwrap_or_default();
    // With an alias index, only the drivers of the devices present (what udev would load),
    // instead of every driver of the list.
    let by_device = !index.aliases.is_empty();
    let named: &[&str] = if by_device { BY_NAME } else { PREDEFINED };
    let wanted: Vec<String> = named
        .iter()
        .map(|s| s.to_string())
        .chain(etc_modules(&extra))
        .collect();
    let load_named = || {
        for name in &wanted {
            match load_with(&index, name) {
                Ok(()) => {}
                Err(ModuleError::Unknown(_)) => log::debug!("module {name} not available"),
                Err(e) => log::warn!("module {name}: {e}"),
            }
        }
    };
    if by_device {
        // The file systems the later phases need are no device's driver: they load beside the
        // drivers of the devices present (what udev would load), in a thread of their own.
        std::thread::scope(|scope| {
            let named_loads = scope.spawn(load_named);
            let loaded = load_for_present_devices(&index, &root.join("sys/bus"));
            log::info!("modules for the devices present: {}", loaded.join(" "));
            if named_loads.join().is_err() {
                log::warn!("the loader of {} failed", wanted.join(" "));
            }
        });
    } else {
        load_named();
    }
    // No rescan of the SCSI hosts afterwards: the kernel finishes the asynchronous ATA/SCSI
    // scans a driver starts before finit_module returns (async_synchronize_full in
    // do_init_module), so CD-ROMs and disks are known already; a rescan repeats the probe of
    // every port (≈0.8 s under TCG) for nothing (spec §2.2: no other probing).
    probe_floppy(&index);
    console::check();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/isofs/isofs.ko.xz:\n\
kernel/fs/udf/udf.ko.xz: kernel/lib/crc-itu-t.ko.xz\n\
kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz kernel/fs/nls/nls_base.ko.xz\n\
kernel/fs/fat/fat.ko.xz: kernel/fs/nls/nls_base.ko.xz\n\
kernel/fs/nls/nls_base.ko.xz:\n\
kernel/lib/crc-itu-t.ko.xz:\n\
kernel/a.ko: kernel/b.ko\n\
kernel/b.ko: kernel/a.ko\n\
garbage line without colon\n";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/block/virtio_blk.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/m"), DEP, BUILTIN)
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|p| module_name_of(&p.to_string_lossy()))
            .collect()
    }

    #[test]
    fn dependencies_come_first_each_once() {
        let plan = index().plan("vfat", &|_| false).unwrap();
        assert_eq!(names(&plan), ["nls_base", "fat", "vfat"]);
        assert_eq!(plan[2], Path::new("/m/kernel/fs/fat/vfat.ko.xz"));
    }

    #[test]
    fn dash_and_underscore_are_the_same_name() {
        let plan = index().plan("udf", &|_| false).unwrap();
        assert_eq!(names(&plan), ["crc_itu_t", "udf"]);
        assert!(index().plan("crc_itu-t", &|_| false).is_ok());
    }

    #[test]
    fn builtin_and_loaded_modules_need_nothing() {
        assert!(index().plan("ext4", &|_| false).unwrap().is_empty());
        assert!(index().plan("virtio-blk", &|_| false).unwrap().is_empty());
        let plan = index().plan("vfat", &|n| n == "nls_base").unwrap();
        assert_eq!(names(&plan), ["fat", "vfat"]);
        assert!(index().plan("vfat", &|n| n == "vfat").unwrap().is_empty());
    }

    #[test]
    fn unknown_and_cyclic_modules_are_errors() {
        assert!(matches!(
            index().plan("nosuch", &|_| false),
            Err(ModuleError::Unknown(n)) if n == "nosuch"
        ));
        assert!(matches!(
            index().plan("a", &|_| false),
            Err(ModuleError::Cycle(_))
        ));
    }

    #[test]
    fn aliases_match_like_fnmatch() {
        let idx = index().with_aliases(
            "# comment\n\
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net\n\
alias virtio:d00000001v* virtio-net\n\
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\n\
alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
alias scsi:t-0x05* sr_mod\n\
alias acpi*:PNP070[0-2]:* floppy\n\
alias dmi:bvn*:pn[!X]* onlynotx\n",
        );
        let m = |a: &str| idx.modules_for_modalias(a);
        assert_eq!(
            m("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_net"]
        );
        assert_eq!(m("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(
            m("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci"]
        );
        assert!(m("pci:v00008086d00007011sv00000000sd00000000bc01sc01i80").is_empty());
        assert_eq!(m("scsi:t-0x05"), ["sr_mod"]);
        assert_eq!(m("acpi:PNP0700:"), ["floppy"]);
        assert!(m("acpi:PNP0703:").is_empty());
        assert_eq!(m("dmi:bvnSeaBIOS:pnStandard"), ["onlynotx"]);
        assert!(m("dmi:bvnSeaBIOS:pnXen").is_empty());
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[a-c]x", b"dx"));
        assert!(glob_match(b"[]]", b"]"));
        assert!(!glob_match(b"abc", b"abcd"));
    }

    #[test]
    fn modaliases_of_all_buses() {
        let dir = tempfile::tempdir().unwrap();
        for (bus, dev, alias) in [
            ("pci", "0000:00:03.0", "pci:v00001AF4d00001000\n"),
            ("virtio", "virtio0", "virtio:d00000001v00001AF4\n"),
            ("platform", "serial8250", ""),
        ] {
            let d = dir.path().join(bus).join("devices").join(dev);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("modalias"), alias).unwrap();
        }
        fs::create_dir_all(dir.path().join("cpu/devices/cpu0")).unwrap();
        let found: Vec<String> = present_modaliases(dir.path()).into_iter().collect();
        assert_eq!(
            found,
            ["pci:v00001AF4d00001000", "virtio:d00000001v00001AF4"]
        );
    }

    /// A device `dev` on `bus` with `alias` in a sysfs-like tree.
    fn device(sys_bus: &Path, bus: &str, dev: &str, alias: &str) {
        let d = sys_bus.join(bus).join("devices").join(dev);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("modalias"), format!("{alias}\n")).unwrap();
    }

    #[test]
    fn the_drivers_of_one_round_load_at_the_same_time_and_new_devices_get_a_round() {
        use std::sync::{Condvar, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let sys_bus = dir.path().to_path_buf();
        device(&sys_bus, "pci", "0000:00:01.1", "pci:ata");
        device(&sys_bus, "pci", "0000:00:03.0", "pci:virtio");
        let modules_for = |alias: &str| match alias {
            "pci:ata" => vec!["ata_piix".to_string()],
            "pci:virtio" => vec!["virtio_pci".to_string()],
            "virtio:net" => vec!["virtio_net".to_string()],
            _ => Vec::new(),
        };
        // The two drivers of the first round each wait until the other has started: loaded one
        // after the other, the first would give up after 30 s and the test would fail.
        let started = (Mutex::new(Vec::<String>::new()), Condvar::new());
        let alone = std::sync::atomic::AtomicBool::new(false);
        let load = |name: &str| -> Result<(), ModuleError> {
            let (list, changed) = &started;
            let mut list = list.lock().unwrap();
            list.push(name.to_string());
            changed.notify_all();
            if name == "virtio_net" {
                return Ok(());
            }
            let (list, timeout) = changed
                .wait_timeout_while(list, std::time::Duration::from_secs(30), |l| l.len() < 2)
                .unwrap();
            if timeout.timed_out() {
                alone.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(ModuleError::Unknown(format!("{name} loaded alone")));
            }
            drop(list);
            if name == "virtio_pci" {
                // A bus driver brings up devices of its own.
                device(&sys_bus, "virtio", "virtio0", "virtio:net");
            }
            Ok(())
        };
        let loaded = load_for_devices_with(&sys_bus, modules_for, load);
        assert!(
            !alone.into_inner(),
            "a driver of the first round loaded alone"
        );
        assert_eq!(loaded, ["ata_piix", "virtio_pci", "virtio_net"]);
        let order = started.0.lock().unwrap().clone();
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], "virtio_net", "the second round follows the first");
    }

    #[test]
    fn etc_modules_skips_comments_and_blank_lines() {
        assert_eq!(
            etc_modules("# comment\n\nfloppy\n  tun  opt=1\n"),
            ["floppy", "tun"]
        );
    }

    #[test]
    fn missing_index_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModuleIndex::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("modules.dep"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_module_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bogus.ko");
        fs::write(&f, b"not an ELF module").unwrap();
        let e = load_file(&f).unwrap_err();
        assert!(matches!(e, ModuleError::Load { .. }), "{e}");
        assert!(e.to_string().contains("bogus.ko"), "{e}");
    }

    #[test]
    fn a_corrupt_gzip_module_is_a_decompress_or_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bogus.ko.gz");
        fs::write(&f, b"\x1f\x8bnot really gzip").unwrap();
        let e = load_file(&f).unwrap_err();
        assert!(
            matches!(e, ModuleError::Decompress { .. } | ModuleError::Load { .. }),
            "{e}"
        );
    }
}
