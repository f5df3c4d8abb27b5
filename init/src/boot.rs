//! The boot sequence (spec §0.4): the phases in the order of the original's scriptlets, each a
//! function of what it needs that returns what it made. This file is the only one that sees
//! the whole state of a boot; it records the timeline and decides, per phase, what a failure
//! means: the rescue shell and then on (the original's `panic`, spec §0.5), or just on.
//!
//! Data flows one way: command line → devices → network → user data (first boot) → scratch
//! disk → the one [`BootConfig`] (context epilog) → CernVM-FS → rebase → union → post-mount →
//! hand-over. On a later boot the scratch disk needs nothing from the network or user data, so
//! it comes right after the devices, while the removable drives are still being probed.

use std::convert::Infallible;
use std::fmt::Display;
use std::path::Path;

use crate::cmdline::KernelCmdline;
use crate::config::BootConfig;
use crate::context::media::Media;
use crate::context::sources::Context;
use crate::disk::plan::PlanSettings;
use crate::disk::ScratchDisk;
use crate::network::time::TimeSync;
use crate::timeline::Timeline;
use crate::{console, context, cvmfs_start, devices, disk, epilog, handover, modules, network};
use crate::{post, rebase, union, update};

pub use crate::layout::Layout;

/// A phase could not run because an earlier one did not make what it needs.
#[derive(Debug, thiserror::Error)]
pub enum MissingInput {
    #[error("the CernVM-FS phase did not mount the repository")]
    NoRepository,
}

/// The error of a phase that needs an earlier phase's output.
#[derive(Debug, thiserror::Error)]
pub enum Needs<E: std::error::Error + 'static> {
    #[error(transparent)]
    Missing(#[from] MissingInput),
    #[error(transparent)]
    Failed(E),
}

/// The repository mount, or why a phase that needs it cannot run.
fn repository<M>(cvmfs: Option<M>) -> Result<M, MissingInput> {
    cvmfs.ok_or(MissingInput::NoRepository)
}

/// What the sequencer does when a phase fails. Every fallible phase of the original ends in
/// its `panic` on failure; the phases whose problems are not fatal (network, time, swap,
/// post-mount) report them themselves and run as [`Sequencer::infallible`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnError {
    /// Message and rescue shell; when the shell exits, the boot goes on (spec §0.5).
    Rescue,
}

/// The sequencer's own state: where things are, the timeline, and what to do on a failure.
struct Sequencer<'a> {
    layout: Layout,
    timeline: Timeline,
    on_error: &'a mut dyn FnMut(&str, &str),
}

impl Sequencer<'_> {
    /// Runs phase `name`, records it in the timeline (saved on the scratch disk once it can
    /// be), and applies `policy` to a failure. Returns what the phase made.
    fn phase<T, E: Display>(
        &mut self,
        name: &'static str,
        policy: OnError,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        let r = self.timeline.phase(name, f);
        post::save_timeline(&self.layout, &self.timeline);
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let message = e.to_string();
                console::error(&format!("{name}: {message}"));
                match policy {
                    OnError::Rescue => (self.on_error)(name, &message),
                }
                None
            }
        }
    }

    /// A phase that cannot fail (its problems are warnings it reports itself).
    fn infallible<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let r = self.timeline.phase(name, || Ok::<T, Infallible>(f()));
        post::save_timeline(&self.layout, &self.timeline);
        match r {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }
}

/// Runs the boot with the `cvmfs2` of the initramfs; see [`run_with`].
pub fn run(
    layout: Layout,
    cmdline: &KernelCmdline,
    on_error: &mut dyn FnMut(&str, &str),
) -> Timeline {
    run_with(
        layout,
        cmdline,
        Path::new(cvmfs_start::CVMFS2_BINARY),
        on_error,
    )
}

/// Runs every phase in order. `on_error(phase, message)` is the rescue shell in production;
/// the boot goes on when it returns. The hand-over does not return when it succeeds; otherwise
/// the timeline is returned for the caller to show.
pub fn run_with(
    layout: Layout,
    cmdline: &KernelCmdline,
    cvmfs2: &Path,
    on_error: &mut dyn FnMut(&str, &str),
) -> Timeline {
    // The kernel log's time stamps of this record and of the kernel's start of /init give the
    // timeline's first row (read at the end: the boot does not wait for it).
    log::debug!("{}", console::TIMELINE_START_MARK);
    let mut s = Sequencer {
        layout,
        timeline: Timeline::new(),
        on_error,
    };
    let initramfs = s.layout.initramfs.clone();
    let layout = s.layout.clone();

    // The removable drives' probes start now; the devices phase does not wait for them (see
    // devices::Scan).
    let early_probes = devices::EarlyProbes::start(&devices::DeviceEnv::system(&initramfs));
    s.phase("modules", OnError::Rescue, || {
        modules::load_predefined(&initramfs)
    });
    let scan = s.phase("devices", OnError::Rescue, || {
        devices::discover(&initramfs, early_probes)
    });
    // Without a device list, nothing shows an existing scratch disk: treat it as the first
    // boot, as the original does.
    let first_boot = scan.as_ref().is_none_or(|scan| scan.devices.first_boot());

    // On a later boot the scratch disk needs neither the removable drives nor the network nor
    // user data (its settings are the saved ones): it is mounted while the drives still answer.
    let mut scratch = None;
    if !first_boot {
        let devices = scan.as_ref().map(|scan| scan.devices.clone());
        scratch = scratch_disk(&mut s, &layout, PlanSettings::later_boot(), devices);
    }
    // The device scan comes before the network: its context.sh search and the user data
    // searches look at the media it found instead of opening every device again.
    let devices = s.infallible("removable", || scan.map(devices::Scan::complete));
    let media = Media::scanned(devices.as_ref(), initramfs.join("tmp"));
    let network = s.infallible("network", || network::up(&initramfs, &media));
    let time_sync = s.infallible("time", TimeSync::start);

    // User data: looked for on the first boot only; later boots read what the epilog saved.
    let mut context: Option<Context> = s.infallible("context", || {
        first_boot
            .then(|| context::sources::contextualize(&initramfs, &media, network.dhcp_server()))
    });
    s.phase("extra-context", OnError::Rescue, || {
        match context.as_mut() {
            Some(c) => context::extra::add(&initramfs, &media, &mut c.settings),
            None => Ok(()),
        }
    });

    // The first boot makes the scratch disk as this boot's user data says.
    if first_boot {
        let live = context.as_ref().map(|c| &c.settings);
        let plan = PlanSettings {
            resize_rootfs: live.is_none_or(|c| c.resize_rootfs),
            use_boothd: live.is_some_and(|c| c.use_boothd),
        };
        scratch = scratch_disk(&mut s, &layout, plan, devices);
    }

    // The one boot configuration. If the context cannot be saved, this boot still runs with
    // what it has: the command line and the user data it found.
    let config = s
        .phase("context-epilog", OnError::Rescue, || {
            epilog::resolve(&layout, cmdline, context.as_ref())
        })
        .unwrap_or_else(|| {
            let mut config = BootConfig::resolve(
                cmdline,
                context
                    .as_ref()
                    .map(|c| c.settings.clone())
                    .unwrap_or_default(),
                crate::config::cvmfs::coin_flip(),
            );
            if let Some(c) = context.as_ref().filter(|_| config.ssh) {
                config.ssh_keys = epilog::cvmssh_keys(&c.found.user_data);
            }
            config
        });

    let mut cvmfs = s.phase("cvmfs", OnError::Rescue, || {
        // The time server's answer is awaited before a mount that depends on the clock, after
        // one that does not (the wait for a slow or unreachable server then overlaps it).
        if cvmfs_start::needs_clock(&config, &layout) {
            time_sync.finish();
            cvmfs_start::mount(&config, &layout, scratch.as_ref(), cvmfs2)
        } else {
            let mounted = cvmfs_start::mount(&config, &layout, scratch.as_ref(), cvmfs2);
            time_sync.finish();
            mounted
        }
    });
    s.phase("rebase", OnError::Rescue, || {
        rebase::run(&layout, repository(cvmfs.as_mut())?).map_err(Needs::Failed)
    });
    s.phase("union", OnError::Rescue, || {
        union::mount_union(&layout, repository(cvmfs.as_ref())?).map_err(Needs::Failed)
    });
    s.phase("post", OnError::Rescue, || {
        post::run(&layout, &config, repository(cvmfs.as_ref())?, first_boot);
        Ok::<(), MissingInput>(())
    });
    if let Some(early) = console::since_kernel_started_init() {
        s.timeline.set_early(early);
    }
    // The hand-over does not return when it succeeds: it saves the timeline with itself as
    // the last row just before the OS's init starts.
    let mut before_handover = s.timeline.clone();
    let handover_at = s.timeline.elapsed();
    s.phase("handover", OnError::Rescue, || {
        handover::run(&layout, &config, &mut || {
            before_handover.record_running("handover", handover_at);
            post::save_timeline(&layout, &before_handover);
        })
    });
    s.timeline
}

/// The scratch-disk phases (spec §6, §7.2): prepare and mount it, grow it, enable swap, and
/// start a boot loader update found on it (which ends this boot) or record the running
/// version for the OS.
fn scratch_disk(
    s: &mut Sequencer,
    layout: &Layout,
    plan: PlanSettings,
    devices: Option<devices::BlockDevices>,
) -> Option<ScratchDisk> {
    let mut scratch = s
        .phase("root", OnError::Rescue, || {
            disk::prepare(layout, plan, devices)
        })
        .flatten()
        .map(|(scratch, _devices)| scratch);
    s.phase("resize", OnError::Rescue, || match scratch.as_mut() {
        Some(scratch) => disk::grow(layout, scratch),
        None => {
            log::warn!("resize: no scratch disk mounted");
            Ok(())
        }
    });
    s.infallible("swap", || {
        if let Some(scratch) = scratch.as_mut() {
            scratch.swap = disk::enable_swap(layout);
        }
    });
    s.infallible("kexec", || {
        if scratch.is_some() {
            update::run(
                layout,
                &update::Running::of(&layout.initramfs),
                &*update::verifier(&layout.initramfs),
            );
        }
    });
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_phase_gets_the_rescue_policy_and_the_boot_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let mut rescued = Vec::new();
        let mut on_error = |phase: &str, message: &str| {
            rescued.push(format!("{phase}: {message}"));
        };
        let mut s = Sequencer {
            layout: Layout::under(t.path().to_path_buf()),
            timeline: Timeline::new(),
            on_error: &mut on_error,
        };
        let mount: Option<u32> = s.phase("cvmfs", OnError::Rescue, || {
            Err::<u32, _>(std::io::Error::other("no server"))
        });
        assert_eq!(mount, None);
        let next = s.phase("rebase", OnError::Rescue, || {
            repository(mount)
                .map(|_| ())
                .map_err(Needs::<std::io::Error>::from)
        });
        assert_eq!(next, None);
        let last = s.infallible("handover", || 7);
        assert_eq!(last, 7);
        let results: Vec<(String, bool)> = s
            .timeline
            .phases()
            .iter()
            .map(|p| (p.name.clone(), p.ok))
            .collect();
        assert_eq!(
            results,
            [
                ("cvmfs".to_string(), false),
                ("rebase".to_string(), false),
                ("handover".to_string(), true)
            ]
        );
        assert_eq!(
            rescued,
            [
                "cvmfs: no server",
                "rebase: the CernVM-FS phase did not mount the repository"
            ]
        );
    }
}
