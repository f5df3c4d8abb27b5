//! CernVM Launch for QEMU/KVM and libvirt: the original `cernvm-launch` command line (spec §17)
//! on the hypervisors of a Linux desktop or server.
//!
//! * [`cli`]: commands and exit codes; [`config`]: the original's configuration files and
//!   their precedence; [`home`]: `~/.cernvm-launch.conf` and the data directory;
//! * [`machine`]: one directory and one lock per machine; [`context`]: user data and the
//!   context CD-ROM; [`image`]: local, cached and downloaded (verified) boot images;
//! * [`vm`]: the QEMU backend, built on [`qemu`] (command lines, KVM probe), [`accel`]
//!   (remembered accelerator choice), [`qmp`] and [`process`]; [`libvirt`]: the libvirt backend;
//! * [`console`]: attaching to a serial console; [`app`]: the commands themselves.

pub mod accel;
pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod context;
pub mod home;
pub mod image;
pub mod libvirt;
pub mod machine;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod vm;
