//! Where things live during the boot (spec §0.3).

use std::path::PathBuf;

/// Where things live during the boot (spec §0.3). Production uses [`Layout::initramfs`];
/// tests point every path into a temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The initramfs root (`/`): scratch files such as `user-data`, `ucontext`, `version`.
    pub initramfs: PathBuf,
    /// Mount point of the scratch disk (`/root.rw`).
    pub root_rw: PathBuf,
    /// Mount point of the OS repository (`/root.ro`).
    pub root_ro: PathBuf,
    /// Mount point of the union, the future `/` (`/root`).
    pub root: PathBuf,
}

impl Layout {
    pub fn initramfs() -> Self {
        Self::under(PathBuf::from("/"))
    }

    /// The same layout below `base` (for tests).
    pub fn under(base: PathBuf) -> Self {
        Layout {
            root_rw: base.join("root.rw"),
            root_ro: base.join("root.ro"),
            root: base.join("root"),
            initramfs: base,
        }
    }

    /// `/root.rw/aux`
    pub fn aux(&self) -> PathBuf {
        self.root_rw.join("aux")
    }

    /// `/root.rw/context`
    pub fn context_dir(&self) -> PathBuf {
        self.root_rw.join("context")
    }
}
