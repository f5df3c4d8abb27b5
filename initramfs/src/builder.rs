//! Turns a [`Manifest`] into an [`Archive`], remembering which component each entry came from so
//! that every build can report its size by component.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{self, ElfError};
use crate::kmod::{KmodError, ModuleTree, Provision};
use crate::manifest::{Directive, Item, Manifest};
use crate::{Archive, Compression, EntryKind};

/// What went wrong with one manifest item.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Archive(#[from] crate::Error),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Kmod(#[from] KmodError),
    #[error("kernel {release} has no module {name:?} (neither built in nor in modules.dep); use 'modules?' if it is optional")]
    MissingModule { name: String, release: String },
    #[error("{source_path}: `--list-full` failed or printed no applets: {detail}")]
    Busybox {
        source_path: PathBuf,
        detail: String,
    },
    #[error("invalid repository name {0:?} for a key directory")]
    BadRepository(String),
}

/// An [`ItemError`] with the manifest line it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("{manifest}:{line} (component {component}): {error}")]
pub struct BuildError {
    pub manifest: String,
    pub line: usize,
    pub component: String,
    pub error: ItemError,
}

/// Size of one component in the archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentSize {
    pub name: String,
    /// Regular files (shared libraries are counted in the first component that needs them).
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Notes: built-in modules, skipped optional items, shadowed applets.
    pub notes: Vec<String>,
}

/// The result of a build: the archive and where its bytes come from.
#[derive(Debug, Clone)]
pub struct Build {
    pub archive: Archive,
    pub components: Vec<ComponentSize>,
    /// Archive paths of the regular files of each component, in component order.
    files_by_component: Vec<Vec<String>>,
}

impl Build {
    /// The file contents of component `index`, concatenated (to measure how well it compresses).
    pub fn component_data(&self, index: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for path in self.files_by_component.get(index).into_iter().flatten() {
            if let Some(crate::Entry {
                kind: EntryKind::File(bytes),
                ..
            }) = self.archive.get(path)
            {
                data.extend_from_slice(bytes);
            }
        }
        data
    }
}

struct Builder<'m> {
    manifest: &'m Manifest,
    archive: Archive,
    components: Vec<ComponentSize>,
    files_by_component: Vec<Vec<String>>,
    module_trees: BTreeMap<String, ModuleTree>,
    /// Shipped module files per module tree directory, and the component that first used it.
    shipped_modules: BTreeMap<String, (usize, BTreeSet<String>)>,
    /// Busybox applet links, added after everything else (component, link path).
    applet_links: Vec<(usize, String)>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, ItemError> {
    fs::read(path).map_err(|error| ItemError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Where a host file goes in the archive: the same absolute path, made relative.
fn archive_path_of_host_file(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The file or directory a directive reads from the build host (an optional item may lack it).
fn source_of(directive: &Directive) -> Option<&str> {
    match directive {
        Directive::File { source, .. }
        | Directive::Exec { source, .. }
        | Directive::Busybox { source }
        | Directive::Key { source, .. } => Some(source),
        Directive::Keys { dir }
        | Directive::KeySet { dir, .. }
        | Directive::Modules { dir, .. } => Some(dir),
        _ => None,
    }
}

impl<'m> Builder<'m> {
    fn add_file(
        &mut self,
        component: usize,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ItemError> {
        let size = data.len() as u64;
        self.archive.add_file(path, data, mode)?;
        let c = &mut self.components[component];
        c.files += 1;
        c.bytes += size;
        self.files_by_component[component].push(crate::normalize_path(path)?);
        Ok(())
    }

    /// Adds `data` at `path` unless an identical file is already there (shared libraries).
    fn add_shared_file(
        &mut self,
        component: usize,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ItemError> {
        if let Some(existing) = self.archive.get(path) {
            if existing.kind == EntryKind::File(data) {
                return Ok(());
            }
            return Err(crate::Error::AlreadyExists {
                path: path.to_string(),
            }
            .into());
        }
        self.add_file(component, path, data, mode)
    }

    fn add_exec(&mut self, component: usize, source: &Path, path: &str) -> Result<(), ItemError> {
        let data = read_file(source)?;
        let libs = elf::shared_libraries(source)?;
        self.add_file(component, path, data, 0o755)?;
        for lib in libs {
            let lib_data = read_file(Path::new(&lib))?;
            self.add_shared_file(component, archive_path_of_host_file(&lib), lib_data, 0o755)?;
        }
        Ok(())
    }

    fn add_busybox(&mut self, component: usize, source: &Path) -> Result<(), ItemError> {
        let busybox_err = |detail: String| ItemError::Busybox {
            source_path: source.to_path_buf(),
            detail,
        };
        let output = Command::new(source)
            .arg("--list-full")
            .output()
            .map_err(|e| busybox_err(e.to_string()))?;
        if !output.status.success() {
            return Err(busybox_err(format!("exit status {}", output.status)));
        }
        let list = String::from_utf8_lossy(&output.stdout);
        let mut links: Vec<String> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "bin/busybox")
            .map(str::to_string)
            .collect();
        if links.is_empty() {
            return Err(busybox_err("no applets listed".into()));
        }
        links.sort();
        self.add_exec(component, source, "bin/busybox")?;
        self.applet_links
            .extend(links.into_iter().map(|l| (component, l)));
        Ok(())
    }

    fn module_tree(&mut self, dir: &str) -> Result<&ModuleTree, ItemError> {
        if !self.module_trees.contains_key(dir) {
            let tree = ModuleTree::open(Path::new(dir))?;
            self.module_trees.insert(dir.to_string(), tree);
        }
        Ok(&self.module_trees[dir])
    }

    fn add_modules(
        &mut self,
        component: usize,
        dir: &str,
        names: &[String],
        optional: bool,
    ) -> Result<(), ItemError> {
        let tree = self.module_tree(dir)?;
        let release = tree.release().to_string();
        let mut wanted = Vec::new();
        let mut notes = Vec::new();
        for name in names {
            match tree.provision(name)? {
                Provision::Files(files) => wanted.extend(files),
                Provision::BuiltIn => notes.push(format!("{name}: built into the kernel")),
                Provision::Missing if optional => {
                    notes.push(format!("{name}: not in kernel {release}, skipped"))
                }
                Provision::Missing => {
                    return Err(ItemError::MissingModule {
                        name: name.clone(),
                        release,
                    })
                }
            }
        }
        self.components[component].notes.extend(notes);
        let (_, shipped) = self
            .shipped_modules
            .entry(dir.to_string())
            .or_insert_with(|| (component, BTreeSet::new()));
        let new: Vec<String> = wanted
            .into_iter()
            .filter(|f| shipped.insert(f.clone()))
            .collect();
        for file in new {
            let data = read_file(&Path::new(dir).join(&file))?;
            self.add_file(
                component,
                &format!("lib/modules/{release}/{file}"),
                data,
                0o644,
            )?;
        }
        Ok(())
    }

    fn add_key(
        &mut self,
        component: usize,
        repository: &str,
        source: &Path,
    ) -> Result<(), ItemError> {
        if repository.is_empty() || repository.contains('/') || repository.starts_with('.') {
            return Err(ItemError::BadRepository(repository.to_string()));
        }
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ItemError::Io {
                path: source.to_path_buf(),
                error: io::Error::new(io::ErrorKind::InvalidInput, "no UTF-8 file name"),
            })?;
        let data = read_file(source)?;
        self.add_file(
            component,
            &format!("etc/cvmfs/keys/{repository}/{name}"),
            data,
            0o644,
        )
    }

    fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, ItemError> {
        let io_err = |error| ItemError::Io {
            path: dir.to_path_buf(),
            error,
        };
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            entries.push(entry.map_err(io_err)?.path());
        }
        entries.sort();
        Ok(entries)
    }

    fn add_keys(&mut self, component: usize, dir: &Path) -> Result<(), ItemError> {
        for repo_dir in Self::sorted_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
            let repository = repo_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            for key in Self::sorted_dir(&repo_dir)? {
                if key.extension().is_some_and(|e| e == "pub") && key.is_file() {
                    self.add_key(component, &repository, &key)?;
                }
            }
        }
        Ok(())
    }

    /// Every `<dir>/*.pub` for each of `repositories` (one domain's keys, spec §9.9).
    fn add_key_set(
        &mut self,
        component: usize,
        dir: &Path,
        repositories: &[String],
    ) -> Result<(), ItemError> {
        let keys: Vec<PathBuf> = Self::sorted_dir(dir)?
            .into_iter()
            .filter(|k| k.extension().is_some_and(|e| e == "pub") && k.is_file())
            .collect();
        if keys.is_empty() {
            return Err(ItemError::Io {
                path: dir.to_path_buf(),
                error: io::Error::new(io::ErrorKind::NotFound, "no *.pub key in the directory"),
            });
        }
        for repository in repositories {
            for key in &keys {
                self.add_key(component, repository, key)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, component: usize, item: &Item) -> Result<(), ItemError> {
        let directive = match &item.directive {
            Ok(d) => d,
            Err(reason) => {
                self.components[component]
                    .notes
                    .push(format!("line {} skipped: {reason}", item.line));
                return Ok(());
            }
        };
        if item.optional {
            if let Some(source) = source_of(directive) {
                if !Path::new(source).exists() {
                    self.components[component].notes.push(format!(
                        "line {} skipped: {source} does not exist",
                        item.line
                    ));
                    return Ok(());
                }
            }
        }
        match directive {
            Directive::Dir { path, mode } => {
                self.archive.add_dir(path, *mode)?;
            }
            Directive::File { source, path, mode } => {
                let data = read_file(Path::new(source))?;
                self.add_file(component, path, data, *mode)?;
            }
            Directive::Exec { source, path } => {
                self.add_exec(component, Path::new(source), path)?
            }
            Directive::Symlink { path, target } => {
                self.archive.add_symlink(path, target)?;
            }
            Directive::CharDevice {
                path,
                major,
                minor,
                mode,
            } => {
                self.archive.add_char_device(path, *major, *minor, *mode)?;
            }
            Directive::Text {
                path,
                mode,
                content,
            } => {
                let data = if content.is_empty() {
                    Vec::new()
                } else {
                    format!("{content}\n").into_bytes()
                };
                self.add_file(component, path, data, *mode)?
            }
            Directive::Busybox { source } => self.add_busybox(component, Path::new(source))?,
            Directive::Modules { dir, names } => {
                self.add_modules(component, dir, names, item.optional)?
            }
            Directive::Key { repository, source } => {
                self.add_key(component, repository, Path::new(source))?
            }
            Directive::Keys { dir } => self.add_keys(component, Path::new(dir))?,
            Directive::KeySet { dir, repositories } => {
                self.add_key_set(component, Path::new(dir), repositories)?
            }
        }
        Ok(())
    }

    /// The restricted `modules.dep` and `modules.alias` and the `modules.builtin` of every
    /// kernel used.
    fn add_module_indexes(&mut self) -> Result<(), ItemError> {
        let shipped = std::mem::take(&mut self.shipped_modules);
        for (dir, (component, files)) in shipped {
            let tree = &self.module_trees[&dir];
            let release = tree.release().to_string();
            let dep = tree.modules_dep_for(&files);
            self.add_file(
                component,
                &format!("lib/modules/{release}/modules.dep"),
                dep.into_bytes(),
                0o644,
            )?;
            // What the init matches the present devices against (modalias loading).
            let alias = Path::new(&dir).join("modules.alias");
            if alias.exists() && !files.is_empty() {
                let text = String::from_utf8_lossy(&read_file(&alias)?).into_owned();
                self.add_file(
                    component,
                    &format!("lib/modules/{release}/modules.alias"),
                    crate::kmod::modules_alias_for(&text, &files).into_bytes(),
                    0o644,
                )?;
            }
            let builtin = Path::new(&dir).join("modules.builtin");
            if builtin.exists() {
                let data = read_file(&builtin)?;
                self.add_file(
                    component,
                    &format!("lib/modules/{release}/modules.builtin"),
                    data,
                    0o644,
                )?;
            }
        }
        Ok(())
    }

    fn add_applet_links(&mut self) -> Result<(), ItemError> {
        let mut shadowed: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (component, link) in std::mem::take(&mut self.applet_links) {
            if self.archive.get(&link).is_some() {
                shadowed.entry(component).or_default().push(link);
                continue;
            }
            self.archive.add_symlink(&link, "/bin/busybox")?;
        }
        for (component, links) in shadowed {
            self.components[component].notes.push(format!(
                "applets replaced by real tools: {}",
                links.join(" ")
            ));
        }
        Ok(())
    }
}

/// Builds the archive the manifest describes. Entries get the archive's default mtime (set it
/// on the result before writing).
pub fn build(manifest: &Manifest) -> Result<Build, BuildError> {
    let mut b = Builder {
        manifest,
        archive: Archive::new(),
        components: manifest
            .components
            .iter()
            .map(|c| ComponentSize {
                name: c.name.clone(),
                ..Default::default()
            })
            .collect(),
        files_by_component: vec![Vec::new(); manifest.components.len()],
        module_trees: BTreeMap::new(),
        shipped_modules: BTreeMap::new(),
        applet_links: Vec::new(),
    };
    let at = |line: usize, component: &str| {
        let manifest = b.manifest.source_name.clone();
        let component = component.to_string();
        move |error| BuildError {
            manifest,
            line,
            component,
            error,
        }
    };
    for (index, component) in manifest.components.iter().enumerate() {
        for item in &component.items {
            b.apply(index, item)
                .map_err(at(item.line, &component.name))?;
        }
    }
    // Both are written after all lines; errors are attributed to the end of the manifest.
    let last_line = manifest
        .components
        .iter()
        .flat_map(|c| c.items.iter().map(|i| i.line))
        .max()
        .unwrap_or(0);
    b.add_module_indexes()
        .map_err(at(last_line, "kernel modules"))?;
    b.add_applet_links()
        .map_err(at(last_line, "busybox applets"))?;
    Ok(Build {
        archive: b.archive,
        components: b.components,
        files_by_component: b.files_by_component,
    })
}

/// A size breakdown: per component its files, uncompressed bytes and the size it has when
/// compressed alone, then the whole archive.
#[derive(Debug, Clone)]
pub struct SizeReport {
    pub rows: Vec<(ComponentSize, u64)>,
    pub cpio_bytes: u64,
    pub compressed_bytes: u64,
    pub compression: Compression,
}

impl SizeReport {
    /// Each component of `build` with the size of its files compressed alone with `compression`.
    pub fn measure_components(
        build: &Build,
        compression: Compression,
    ) -> io::Result<Vec<(ComponentSize, u64)>> {
        let mut rows = Vec::new();
        for (index, c) in build.components.iter().enumerate() {
            let data = build.component_data(index);
            let alone = if data.is_empty() {
                0
            } else {
                crate::compress(&data, compression)?.len() as u64
            };
            rows.push((c.clone(), alone));
        }
        Ok(rows)
    }
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

impl fmt::Display for SizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>6} {:>14} {:>22}",
            "component",
            "files",
            "uncompressed",
            format!("{} alone", self.compression)
        )?;
        for (c, alone) in &self.rows {
            writeln!(
                f,
                "{:<16} {:>6} {:>14} {:>22}",
                c.name,
                c.files,
                kib(c.bytes),
                kib(*alone)
            )?;
        }
        writeln!(
            f,
            "{:<16} {:>6} {:>14} {:>22}",
            "archive",
            self.rows.iter().map(|(c, _)| c.files).sum::<usize>(),
            kib(self.cpio_bytes),
            kib(self.compressed_bytes)
        )?;
        for (c, _) in &self.rows {
            for note in &c.notes {
                writeln!(f, "  {}: {note}", c.name)?;
            }
        }
        Ok(())
    }
}
