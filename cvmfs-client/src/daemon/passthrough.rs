//! FUSE passthrough (Linux 6.9+): an open regular file is backed by its verified cached object,
//! and the kernel serves reads and mmap straight from it, without a request to the daemon.
//!
//! The object is checked against its hash at `open` exactly as without passthrough; only what
//! `read` would have copied out of the same file goes the short way. Kernels without
//! passthrough (Debian's 6.1) never offer it, and a backing file the kernel refuses (no
//! CAP_SYS_ADMIN, a cache on a stacked file system) switches it off for the rest of the mount:
//! files are then read through the daemon as before.
//!
//! The kernel wants one backing file per inode at a time: every open handle of an inode shares
//! the same backing id, which is closed when its last handle is released.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Backing ids of open files, by inode and by file handle. `B` is `fuser::BackingId` in the
/// daemon (closing it on drop); tests use a stand-in.
pub struct BackingFiles<B> {
    enabled: AtomicBool,
    ids: Mutex<Ids<B>>,
}

struct Ids<B> {
    by_inode: HashMap<u64, Weak<B>>,
    by_handle: HashMap<u64, Arc<B>>,
}

impl<B> Default for BackingFiles<B> {
    fn default() -> Self {
        BackingFiles {
            enabled: AtomicBool::new(false),
            ids: Mutex::new(Ids {
                by_inode: HashMap::new(),
                by_handle: HashMap::new(),
            }),
        }
    }
}

impl<B> BackingFiles<B> {
    /// Turned on once the kernel agreed to passthrough (FUSE `init`).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The backing id for handle `fh` of inode `ino`: the one the inode already has, or a new
    /// one from `register`. `None` means "read through the daemon": passthrough is off, or
    /// `register` failed, which turns it off for good (the reason is logged once).
    pub fn attach(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce() -> io::Result<B>,
    ) -> Option<Arc<B>> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        // An inode already read through a backing file keeps it (the kernel refuses to mix
        // both ways on one inode), even after passthrough was turned off for new files.
        let id = match ids.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None if !self.is_enabled() => return None,
            None => match register() {
                Ok(id) => {
                    let id = Arc::new(id);
                    ids.by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    if self.enabled.swap(false, Ordering::Relaxed) {
                        log::warn!(
                            "FUSE passthrough off: the kernel refused a backing file ({e}); \
                             reading through the daemon"
                        );
                    }
                    return None;
                }
            },
        };
        ids.by_handle.insert(fh, Arc::clone(&id));
        Some(id)
    }

    /// Handle `fh` was released; an inode's backing id goes with its last handle.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.by_handle.remove(&fh).is_some()
            && ids
                .by_inode
                .get(&ino)
                .is_some_and(|w| w.strong_count() == 0)
        {
            ids.by_inode.remove(&ino);
        }
    }

    /// Handles with a backing id.
    #[cfg(test)]
    pub fn open_handles(&self) -> usize {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_handle
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Stand-in for a kernel backing id: counts how many are alive.
    struct Id(u32, Arc<AtomicU32>);

    impl Drop for Id {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn register(next: &AtomicU32, alive: &Arc<AtomicU32>) -> io::Result<Id> {
        alive.fetch_add(1, Ordering::SeqCst);
        Ok(Id(next.fetch_add(1, Ordering::SeqCst), Arc::clone(alive)))
    }

    #[test]
    fn off_until_enabled() {
        let b = BackingFiles::<Id>::default();
        let alive = Arc::new(AtomicU32::new(0));
        let next = AtomicU32::new(1);
        assert!(b.attach(5, 1, || register(&next, &alive)).is_none());
        assert_eq!(alive.load(Ordering::SeqCst), 0, "nothing registered");
    }

    #[test]
    fn handles_of_one_inode_share_its_backing_id_until_the_last_release() {
        let b = BackingFiles::<Id>::default();
        b.enable();
        let alive = Arc::new(AtomicU32::new(0));
        let next = AtomicU32::new(1);
        let first = b.attach(5, 1, || register(&next, &alive)).unwrap().0;
        let second = b.attach(5, 2, || register(&next, &alive)).unwrap().0;
        let other = b.attach(6, 3, || register(&next, &alive)).unwrap().0;
        assert_eq!(first, second);
        assert_ne!(first, other);
        assert_eq!(alive.load(Ordering::SeqCst), 2);
        b.release(5, 1);
        assert_eq!(alive.load(Ordering::SeqCst), 2, "handle 2 still uses it");
        b.release(5, 2);
        b.release(6, 3);
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "closed with the last handle"
        );
        assert_eq!(b.open_handles(), 0);
        // A new open registers anew.
        let again = b.attach(5, 4, || register(&next, &alive)).unwrap().0;
        assert_ne!(again, first);
    }

    #[test]
    fn a_refused_backing_file_turns_passthrough_off_and_keeps_live_ids() {
        let b = BackingFiles::<Id>::default();
        b.enable();
        let alive = Arc::new(AtomicU32::new(0));
        let next = AtomicU32::new(1);
        let kept = b.attach(5, 1, || register(&next, &alive)).unwrap().0;
        let refused = b.attach(6, 2, || Err(io::Error::from_raw_os_error(libc::ELOOP)));
        assert!(refused.is_none());
        assert!(!b.is_enabled());
        // Off for new files; the open handle keeps its id until released.
        assert!(b.attach(7, 3, || register(&next, &alive)).is_none());
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        // An inode with a live backing id keeps using it.
        assert_eq!(b.attach(5, 4, || register(&next, &alive)).unwrap().0, kept);
        b.release(6, 2);
        b.release(5, 1);
        b.release(5, 4);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
