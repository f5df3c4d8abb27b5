//! Context epilog (spec §8): what contextualization left in the initramfs is saved to the
//! scratch disk (`/root.rw/context`), and the boot configuration is resolved: from the settings
//! contextualization found on the boot that contextualized, from the saved µCernVM settings on
//! later boots (which do not contextualize), so that they see the same user data.

use path_error::{io_err, PathError};
use std::io;
use std::path::{Path, PathBuf};

use crate::cmdline::KernelCmdline;
use crate::config::{cvmfs::coin_flip, BootConfig};
use crate::context::sources::Context;
use crate::layout::Layout;
use crate::settings::ContextSettings;

/// `UCONTEXT_SRC` when no source delivered user data.
pub use crate::context::sources::NO_SOURCE;

#[derive(Debug, thiserror::Error)]
pub enum EpilogError {
    #[error(transparent)]
    Io(#[from] PathError),
}

/// What the contextualization phase knows beyond the files it left in the initramfs.
#[derive(Debug, Clone, Default)]
pub struct ContextOrigin {
    /// `UCONTEXT_SRC`: the name of the source that delivered user data.
    pub source: Option<String>,
    /// The Azure provisioning medium, saved whole because Azure ejects it later.
    pub azure_device: Option<PathBuf>,
}

/// Copies `from` to `to` if `from` exists; returns whether it did.
fn copy_if_present(from: &Path, to: &Path) -> Result<bool, EpilogError> {
    match std::fs::copy(from, to) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => Ok(false),
        Err(source) => Err(EpilogError::Io(PathError::new(
            "cannot copy to",
            to.to_path_buf(),
            source,
        ))),
    }
}

/// Moves `from` to `to` (copy and remove: they are on different file systems).
fn move_if_present(from: &Path, to: &Path) -> Result<bool, EpilogError> {
    if !copy_if_present(from, to)? {
        return Ok(false);
    }
    std::fs::remove_file(from).map_err(io_err("cannot remove", from))?;
    Ok(true)
}

/// Steps 1–6: saves the context files of this boot under `layout.context_dir()`.
pub fn persist(layout: &Layout, origin: &ContextOrigin) -> Result<(), EpilogError> {
    let ctx = layout.context_dir();
    std::fs::create_dir_all(&ctx).map_err(io_err("cannot create", &ctx))?;
    let init = &layout.initramfs;
    copy_if_present(
        &init.join("ami-contextualized"),
        &ctx.join("ami-contextualized"),
    )?;
    if copy_if_present(&init.join("user-data"), &ctx.join("user-data"))? {
        let src = origin.source.as_deref().unwrap_or(NO_SOURCE);
        let path = ctx.join("source");
        std::fs::write(&path, format!("{src}\n")).map_err(io_err("cannot write", &path))?;
    }
    move_if_present(&init.join("ucontext"), &ctx.join("ucontext"))?;
    move_if_present(&init.join("extra-ucontext"), &ctx.join("extra-ucontext"))?;
    copy_if_present(&init.join("pickup.tar.gz"), &ctx.join("pickup.tar.gz"))?;
    if let Some(dev) = &origin.azure_device {
        let to = ctx.join("azure.iso");
        std::fs::copy(dev, &to).map_err(io_err("cannot save the Azure medium to", &to))?;
    }
    Ok(())
}

/// Step 7: `context/ucontext`, then `context/extra-ucontext` (which overrides), into
/// `settings`. Missing files are skipped.
pub fn load(context_dir: &Path, settings: &mut ContextSettings) -> Result<(), EpilogError> {
    for name in ["ucontext", "extra-ucontext"] {
        let path = context_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => settings.apply_ucontext_file(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EpilogError::Io(PathError::new("cannot read", path, source)))
            }
        }
    }
    Ok(())
}

/// The user data saved by the boot that contextualized (`context/user-data`); empty when
/// there is none (a warning if it cannot be read).
fn read_saved_user_data(context_dir: &Path) -> Vec<u8> {
    let path = context_dir.join("user-data");
    match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            crate::console::warn(&format!(
                "cvmssh: cannot read {}: {e}; no ssh keys",
                path.display()
            ));
            Vec::new()
        }
    }
}

/// `cvmssh`'s keys for the initramfs root: the ssh public keys of the user data's
/// `#cloud-config`, with a console warning for every entry that is not a usable key.
pub fn cvmssh_keys(user_data: &[u8]) -> Vec<String> {
    let found = crate::context::ssh_keys::from_user_data(user_data);
    for problem in &found.problems {
        crate::console::warn(&format!("cvmssh: {problem} (left out)"));
    }
    found.keys
}

/// Saves this boot's context and resolves the boot configuration. `context` is what
/// contextualization found when it ran (first boot): its settings are used as they are, since
/// the saved files hold the same entries; otherwise the saved settings are loaded.
pub fn resolve(
    layout: &Layout,
    cmdline: &KernelCmdline,
    context: Option<&Context>,
) -> Result<BootConfig, EpilogError> {
    // The source name and the Azure medium are known to the contextualization phase only on
    // the boot that contextualized; on other boots nothing new is saved.
    let origin = match context {
        Some(c) => ContextOrigin {
            source: Some(c.found.source_name().to_string()),
            azure_device: c.found.azure_device.as_ref().map(PathBuf::from),
        },
        None => ContextOrigin::default(),
    };
    persist(layout, &origin)?;
    let user = match context {
        Some(c) => c.settings.clone(),
        None => {
            let mut saved = ContextSettings::default();
            load(&layout.context_dir(), &mut saved)?;
            saved
        }
    };
    let mut config = BootConfig::resolve(cmdline, user, coin_flip());
    if config.ssh {
        let saved;
        let user_data = match context {
            Some(c) => &c.found.user_data,
            None => {
                saved = read_saved_user_data(&layout.context_dir());
                &saved
            }
        };
        config.ssh_keys = cvmssh_keys(user_data);
    }
    if let Some(e) = &config.cvmfs.unknown_branch {
        crate::console::error(&format!(
            "{e}: booting {} from the image's settings",
            config.cvmfs.repository
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::under(t.path().to_path_buf());
        std::fs::create_dir_all(&l.root_rw).unwrap();
        (t, l)
    }

    #[test]
    fn first_boot_saves_everything_and_loads_it() {
        let (_t, l) = layout();
        let i = &l.initramfs;
        std::fs::write(
            i.join("user-data"),
            "[ucernvm-begin]\ncvmfs_tag=v1\n[ucernvm-end]\n",
        )
        .unwrap();
        std::fs::write(
            i.join("ucontext"),
            "_UCONTEXT_CVMFS_TAG=v1\n_UCONTEXT_CERNVM_PATH=cvm4\n",
        )
        .unwrap();
        std::fs::write(i.join("extra-ucontext"), "_UCONTEXT_CERNVM_PATH=cvm3\n").unwrap();
        std::fs::write(i.join("pickup.tar.gz"), b"\x1f\x8b").unwrap();
        std::fs::write(i.join("ami-contextualized"), "").unwrap();
        let azure = i.join("fake-sr0");
        std::fs::write(&azure, vec![7u8; 4096]).unwrap();
        let origin = ContextOrigin {
            source: Some("ConfigDrive".into()),
            azure_device: Some(azure),
        };
        persist(&l, &origin).unwrap();
        let c = l.context_dir();
        assert_eq!(
            std::fs::read_to_string(c.join("source")).unwrap(),
            "ConfigDrive\n"
        );
        assert!(std::fs::read_to_string(c.join("user-data"))
            .unwrap()
            .contains("cvmfs_tag=v1"));
        assert!(
            i.join("user-data").exists(),
            "user-data is copied, not moved"
        );
        assert!(!i.join("ucontext").exists(), "ucontext is moved");
        assert!(!i.join("extra-ucontext").exists());
        assert!(c.join("ami-contextualized").exists());
        assert_eq!(std::fs::read(c.join("pickup.tar.gz")).unwrap(), b"\x1f\x8b");
        assert_eq!(std::fs::read(c.join("azure.iso")).unwrap(), vec![7u8; 4096]);

        let mut s = ContextSettings::default();
        load(&c, &mut s).unwrap();
        assert_eq!(s.cvmfs_tag.as_deref(), Some("v1"));
        assert_eq!(
            s.cernvm_path.as_deref(),
            Some("cvm3"),
            "extra-ucontext overrides"
        );
    }

    /// `cvmssh`'s keys come from the user data once, into the boot configuration: this
    /// boot's on the first boot, the saved copy later; none without `cvmssh`.
    #[test]
    fn cvmssh_keys_come_from_the_user_data_first_and_later_boots() {
        let (_t, l) = layout();
        let blob = {
            let mut b = 11u32.to_be_bytes().to_vec();
            b.extend_from_slice(b"ssh-ed25519");
            b.extend_from_slice(&32u32.to_be_bytes());
            b.extend_from_slice(&[1u8; 32]);
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
        };
        let key = format!("ssh-ed25519 {blob} me@host");
        let user_data = format!("#cloud-config\nssh_authorized_keys:\n  - {key}\n  - junk\n");
        std::fs::write(l.initramfs.join("user-data"), &user_data).unwrap();
        let context = Context {
            found: crate::context::sources::Contextualized {
                user_data: user_data.clone().into_bytes(),
                ..Default::default()
            },
            settings: ContextSettings::default(),
        };
        let ssh = KernelCmdline::parse("cvmssh");
        let first = resolve(&l, &ssh, Some(&context)).unwrap();
        assert_eq!(first.ssh_keys, std::slice::from_ref(&key));
        let later = resolve(&l, &ssh, None).unwrap();
        assert_eq!(later.ssh_keys, [key], "from context/user-data");
        let plain = resolve(&l, &KernelCmdline::default(), None).unwrap();
        assert!(plain.ssh_keys.is_empty());
    }

    #[test]
    fn later_boot_reads_the_saved_context_and_keeps_it() {
        let (_t, l) = layout();
        let c = l.context_dir();
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("user-data"), "old").unwrap();
        std::fs::write(c.join("source"), "EC2\n").unwrap();
        std::fs::write(
            c.join("ucontext"),
            "_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n",
        )
        .unwrap();
        let config = resolve(&l, &Default::default(), None).unwrap();
        assert_eq!(
            config.user.cvmfs_branch.as_deref(),
            Some("demo.cernvm.test")
        );
        assert_eq!(std::fs::read_to_string(c.join("user-data")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(c.join("source")).unwrap(), "EC2\n");
    }

    #[test]
    fn phase_takes_the_source_from_the_contextualization() {
        use crate::context::sources::{Contextualized, Source};
        let (_t, l) = layout();
        std::fs::write(l.initramfs.join("user-data"), "x").unwrap();
        let context = Context {
            found: Contextualized {
                source: Some(Source::OpenNebula),
                user_data: b"x".to_vec(),
                entries: Vec::new(),
                glidein: None,
                azure_device: None,
            },
            settings: ContextSettings::default(),
        };
        resolve(&l, &Default::default(), Some(&context)).unwrap();
        assert_eq!(
            std::fs::read_to_string(l.context_dir().join("source")).unwrap(),
            format!("{}\n", Source::OpenNebula.name())
        );
    }

    #[test]
    fn first_boot_takes_the_contextualized_settings_once() {
        let (_t, l) = layout();
        let i = &l.initramfs;
        // What the context phases left: the block's entries, then the extra context's.
        std::fs::write(i.join("ucontext"), "_UCONTEXT_CERNVM_PATH=cvm4\n").unwrap();
        std::fs::write(i.join("extra-ucontext"), "_UCONTEXT_CERNVM_PATH=cvm3\n").unwrap();
        let mut settings = ContextSettings::default();
        settings.apply("CERNVM_PATH", "cvm4");
        settings.apply("CERNVM_PATH", "cvm3");
        let context = Context {
            found: Default::default(),
            settings: settings.clone(),
        };
        let config = resolve(&l, &Default::default(), Some(&context)).unwrap();
        assert_eq!(
            config.user, settings,
            "not applied a second time from the saved files"
        );
        assert_eq!(config.cvmfs.cernvm_path, "cvm3");
        // The files are saved for the next boots, which read them.
        let next = resolve(&l, &Default::default(), None).unwrap();
        assert_eq!(next.user, settings);
    }

    #[test]
    fn user_data_without_a_known_source_says_none() {
        let (_t, l) = layout();
        std::fs::write(l.initramfs.join("user-data"), "x").unwrap();
        persist(&l, &ContextOrigin::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(l.context_dir().join("source")).unwrap(),
            "(none)\n"
        );
    }

    #[test]
    fn unreadable_scratch_disk_is_a_clear_error() {
        let (_t, l) = layout();
        // The context directory cannot be created where a file is in the way.
        std::fs::write(l.context_dir(), "not a directory").unwrap();
        let e = persist(&l, &ContextOrigin::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot create"), "{e}");
    }
}
