//! The one immutable configuration of a boot, resolved once by the context epilog from the
//! built-in defaults, the kernel command line and the user data (spec §1.4, §9.1). Every phase
//! after the epilog reads only this.
//!
//! Precedence, written here and nowhere else: built-in defaults, then the kernel command line,
//! then the user data (`ucontext`, then `extra-ucontext`); the details per CernVM-FS parameter
//! are in [`CvmfsParams::resolve`].

pub mod branch;
pub mod cvmfs;

use crate::cmdline::KernelCmdline;
use crate::settings::ContextSettings;
pub use cvmfs::CvmfsParams;

/// What this boot does, after all overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Repository, servers, proxies, tag and OS path of the CernVM-FS mount.
    pub cvmfs: CvmfsParams,
    /// The user-data settings (typed, and every `_UCONTEXT_*` value for the OS hook).
    pub user: ContextSettings,
    /// `cvmdebug`: a rescue shell right before the hand-over.
    pub debug_shell: bool,
    /// `cvmssh`: an SSH server in the initramfs before the hand-over.
    pub ssh: bool,
    /// `cvmssh`: the `authorized_keys` lines the initramfs root accepts, from the user data's
    /// `#cloud-config` (`crate::context::ssh_keys`); filled by the epilog, empty without
    /// `cvmssh`.
    pub ssh_keys: Vec<String>,
}

impl BootConfig {
    /// Resolves the configuration; `cern_pac_first` orders the two lab PAC URLs (random in
    /// production, see [`cvmfs::coin_flip`]).
    pub fn resolve(cmdline: &KernelCmdline, user: ContextSettings, cern_pac_first: bool) -> Self {
        BootConfig {
            cvmfs: CvmfsParams::resolve(cmdline, &user, cern_pac_first),
            debug_shell: cmdline.cvmdebug,
            ssh: cmdline.cvmssh,
            ssh_keys: Vec::new(),
            user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_overrides_the_command_line_which_overrides_the_defaults() {
        let cmdline = KernelCmdline::parse("cvmfs_repos=cmd.example cernvm_path=cvm3 cvmdebug");
        let defaults = BootConfig::resolve(&KernelCmdline::default(), Default::default(), true);
        assert_eq!(defaults.cvmfs.repository, cvmfs::DEFAULT_REPOSITORY);
        assert!(!defaults.debug_shell && !defaults.ssh);
        let mut user = ContextSettings::default();
        user.apply("CERNVM_PATH", "cvm4");
        user.apply("CERNVM_INJECT", "H4sI");
        let c = BootConfig::resolve(&cmdline, user, true);
        assert_eq!(c.cvmfs.repository, "cmd.example");
        assert_eq!(c.cvmfs.cernvm_path, "cvm4");
        assert!(c.debug_shell);
        assert_eq!(c.user.cernvm_inject.as_deref(), Some("H4sI"));
    }
}
