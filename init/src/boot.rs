//! The boot sequence: one typed state that the phases fill in, and the phases in the order of
//! the original's scriptlets (spec §0.4). Each phase lives in its own module; this file only
//! orders them and records the timeline.

use std::path::PathBuf;

use crate::cmdline::KernelCmdline;
use crate::settings::ContextSettings;
use crate::timeline::Timeline;
use crate::{console, context, cvmfs_start, devices, disk, epilog, handover, modules, network};
use crate::{post, rebase, union};

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

/// The state of one boot, filled in phase by phase.
#[derive(Debug)]
pub struct Boot {
    pub layout: Layout,
    pub cmdline: KernelCmdline,
    /// User-data settings: from contextualization on the first boot, from the saved
    /// `context/ucontext` (+ `extra-ucontext`) on later boots (epilog).
    pub settings: ContextSettings,
    /// True when no scratch disk labelled `UROOT` was found (set by `devices`).
    pub first_boot: bool,
    pub network: Option<network::NetworkState>,
    /// What contextualization found on the first boot (source, user data, entries).
    pub context: Option<context::sources::Contextualized>,
    pub devices: Option<devices::BlockDevices>,
    pub scratch: Option<disk::ScratchDisk>,
    pub cvmfs: Option<cvmfs_start::CvmfsMount>,
    /// The time query running in the background until CernVM-FS starts (`network::time`).
    pub time_sync: Option<network::time::TimeSync>,
    pub timeline: Timeline,
}

impl Boot {
    pub fn new(layout: Layout, cmdline: KernelCmdline) -> Self {
        Boot {
            layout,
            cmdline,
            settings: ContextSettings::default(),
            first_boot: true,
            network: None,
            context: None,
            devices: None,
            scratch: None,
            cvmfs: None,
            time_sync: None,
            timeline: Timeline::new(),
        }
    }
}

type PhaseFn = fn(&mut Boot) -> Result<(), String>;

/// Wraps a phase function with a typed error into the uniform signature.
macro_rules! phase {
    ($f:path) => {
        (|b: &mut Boot| $f(b).map_err(|e| e.to_string())) as PhaseFn
    };
}

/// The phases in boot order, named as in the timeline (spec §0.4).
pub fn phases() -> Vec<(&'static str, PhaseFn)> {
    vec![
        ("modules", phase!(modules::phase)),
        ("network", phase!(network::phase)),
        ("time", phase!(network::time::phase)),
        ("devices", phase!(devices::phase)),
        ("context", phase!(context::sources::phase)),
        ("extra-context", phase!(context::extra::phase)),
        ("root", phase!(disk::root_phase)),
        ("resize", phase!(disk::resize_phase)),
        ("swap", phase!(disk::swap_phase)),
        ("context-epilog", phase!(epilog::phase)),
        ("cvmfs", phase!(cvmfs_start::phase)),
        ("rebase", phase!(rebase::phase)),
        ("union", phase!(union::phase)),
        ("post", phase!(post::phase)),
        ("handover", phase!(handover::phase)),
    ]
}

/// Runs every phase; on the first error, the original's `panic`: message, rescue shell, and
/// when the shell exits the boot goes on with the next phase (spec §0.5).
pub fn run(boot: &mut Boot, on_error: &mut dyn FnMut(&str, &str)) {
    for (name, f) in phases() {
        let mut timeline = std::mem::take(&mut boot.timeline);
        let r = timeline.phase(name, || f(boot));
        boot.timeline = timeline;
        post::save_timeline(&boot.layout, &boot.timeline);
        if let Err(e) = r {
            console::error(&format!("{name}: {e}"));
            on_error(name, &e);
        }
    }
}

/// Returned by a phase whose implementation has not landed yet; the boot stops in the rescue
/// shell with this message instead of pretending the step happened.
#[derive(Debug, thiserror::Error)]
#[error("the {0} phase is not implemented yet")]
pub struct NotImplemented(pub &'static str);
