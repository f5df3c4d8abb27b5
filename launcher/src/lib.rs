//! CernVM Launch for QEMU: instance definitions, QEMU command lines, accelerator selection and
//! process control.
//!
//! * [`qemu`]: the `qemu-system-x86_64` command builder, [`qemu::detect_accel`] and
//!   [`qemu::probe_kvm`];
//! * [`instances`]: instance definitions stored as JSON under a state directory;
//! * [`qmp`]: a small QMP client (`system_powerdown`);
//! * [`process`]: liveness checks and signals for recorded QEMU processes.

pub mod instances;
pub mod process;
pub mod qemu;
pub mod qmp;
