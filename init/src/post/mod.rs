//! Post-mount steps (spec §12), in the original's order: injection, CernVM-FS pids, pin files,
//! logs, hotfixes and the OS bootstrap hook. The boot timeline is saved to `ulogs` after every
//! phase from here on ([`save_timeline`]).
//!
//! None of these steps stops the boot: like the original, a failure is shown as `failed` or a
//! warning and the boot goes on.

pub mod drtini;
pub mod hotfixes;
pub mod inject;
pub mod inroot;
pub mod pinfiles;

use std::path::{Path, PathBuf};

use crate::config::BootConfig;
use crate::console;
use crate::cvmfs_start::{self, CvmfsMount};
use crate::layout::Layout;
use crate::timeline::Timeline;

/// The scratch disk as seen after the union phase moved it.
pub fn moved_rw(layout: &Layout) -> PathBuf {
    layout.root.join("mnt/.rw")
}

/// Saves the timeline to `<root>/mnt/.rw/ulogs/boot-timeline` once that directory exists
/// (from the post phase on); called after every phase.
pub fn save_timeline(layout: &Layout, timeline: &Timeline) {
    let ulogs = moved_rw(layout).join("ulogs");
    if ulogs.is_dir() {
        if let Err(e) = std::fs::write(ulogs.join("boot-timeline"), timeline.render()) {
            log::warn!("cannot save the boot timeline: {e}");
        }
    }
}

fn warn_on<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            console::warn(&format!("{what}: {e}"));
            None
        }
    }
}

/// The post-mount phase on the assembled root `layout.root`; `first_boot` tells whether this
/// boot contextualized (for `UCONTEXT_SRC`).
pub fn run(layout: &Layout, config: &BootConfig, cvmfs: &CvmfsMount, first_boot: bool) {
    let root = layout.root.as_path();
    let rw = moved_rw(layout);

    // §12.1
    if let Some(b64) = &config.user.cernvm_inject {
        let context = rw.join("context");
        if !context.join(inject::MARKER).exists() {
            console::info("Injecting files...");
            match inject::inject(root, &context, b64) {
                Ok(_) => console::info("Injecting files... check"),
                Err(e) => console::error(&format!("Injecting files failed: {e}")),
            }
        }
    }

    // §12.2
    warn_on(
        "cannot write /.cvmfs_pids",
        hotfixes::write_pids(root, &cvmfs_start::daemon_pids(&cvmfs.binary)),
    );

    // §12.3
    if let Ok(init) = std::env::current_exe() {
        match drtini::prepare(root, &init) {
            Ok(true) => log::info!("shutdown through the initramfs prepared in /run/initramfs"),
            Ok(false) => {}
            Err(e) => console::warn(&format!("cannot prepare /run/initramfs: {e}")),
        }
    }

    // §12.4
    let list_file = root.join(pinfiles::PINFILES_LIST);
    if let Ok(list) = std::fs::read_to_string(&list_file) {
        console::begin("Pinning core file set...");
        let paths = pinfiles::pin_list(root, &list, &cvmfs.params.cernvm_path);
        let started = std::env::current_exe().and_then(|init| {
            pinfiles::start(
                &init,
                &rw.join("cache"),
                &cvmfs.params.repository,
                &layout.initramfs.join(pinfiles::DEV_PINFILES),
                &paths,
            )
        });
        match started {
            Ok(pid) => {
                log::info!("pinning {} files (pinner pid {pid})", paths.len());
                console::check();
            }
            Err(e) => {
                console::failed();
                console::warn(&format!("cannot start the pinner: {e}"));
            }
        }
    }

    // §12.5
    warn_on(
        "cannot save the boot logs",
        hotfixes::save_logs(&layout.initramfs, &rw.join("ulogs")),
    );

    // §12.6
    warn_on("hotfixes", hotfixes::fix_permissions(root));
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if !release.is_empty() {
        warn_on(
            "cannot post the kernel modules",
            hotfixes::post_kernel_modules(&layout.initramfs, root, &release),
        );
    }
    warn_on(
        "cannot place the extra user data",
        hotfixes::place_extra_user_data(&layout.initramfs, root),
    );
    let pickup = layout.initramfs.join("pickup.tar.gz");
    if let Ok(gz) = std::fs::read(&pickup) {
        warn_on(
            "cannot unpack the pickup tarball",
            inject::extract_tar_gz(root, &gz),
        );
    }
    let env = hook_environment(layout, config, cvmfs, first_boot, &rw);
    warn_on(
        "the OS bootstrap hook",
        hotfixes::run_bootstrap_hook(Path::new(crate::rescue::SHELL), root, &env),
    );
}

/// Variables the OS hook expects: `UCONTEXT_SRC`, the boot's paths, repository, and every
/// `_UCONTEXT_*` value.
fn hook_environment(
    layout: &Layout,
    config: &BootConfig,
    cvmfs: &CvmfsMount,
    first_boot: bool,
    rw: &Path,
) -> Vec<(String, String)> {
    let src = if first_boot {
        std::fs::read_to_string(rw.join("context/source"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| crate::epilog::NO_SOURCE.to_string())
    } else {
        crate::epilog::NO_SOURCE.to_string()
    };
    let mut env = vec![
        ("UCONTEXT_SRC".to_string(), src),
        ("ROOT_RW".to_string(), rw.display().to_string()),
        (
            "ROOT_RO".to_string(),
            layout.root.join("mnt/.ro").display().to_string(),
        ),
        ("CVMFS_REPOS".into(), cvmfs.params.repository.clone()),
        ("CERNVM_PATH".into(), cvmfs.params.cernvm_path.clone()),
    ];
    for (k, v) in &config.user.extra {
        env.push((format!("_UCONTEXT_{k}"), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_saved_once_ulogs_exists() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::under(t.path().to_path_buf());
        let mut timeline = Timeline::new();
        let _: Result<(), String> = timeline.phase("cvmfs", || Ok(()));
        save_timeline(&layout, &timeline);
        let file = layout.root.join("mnt/.rw/ulogs/boot-timeline");
        assert!(!file.exists(), "nothing before the post phase made ulogs");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        save_timeline(&layout, &timeline);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(" ok      cvmfs\n"), "{text}");
        assert!(text.contains("# total"), "{text}");
    }
}
