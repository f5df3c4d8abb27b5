//! Choosing the accelerator: KVM only when a probe proved that it boots a kernel to its end on
//! this machine with this QEMU; the result is remembered per machine and QEMU version.

use std::fs::{self, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::config::ConfigMap;
use crate::qemu::{self, Accel, ProbeOutcome, QemuCommand};

/// File in the data directory remembering the last probe.
pub const PROBE_FILE: &str = "kvm-probe.conf";
/// How long the probe kernel may take under KVM (it needs about a second when KVM works).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The chosen accelerator and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub reason: String,
}

/// What identifies "this machine and this QEMU": the machine id, the host kernel and the QEMU
/// version line.
pub fn probe_key(qemu_binary: &Path) -> String {
    let machine = fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let version = Command::new(qemu_binary)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    format!("{machine} {kernel} {version}")
}

/// Extracts the kernel from a µCernVM ISO (`/cernvm/vmlinuz.xz`, a bzImage) for the probe.
fn kernel_from_iso(iso: &Path, dest: &Path) -> Result<(), String> {
    let out = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/cernvm/vmlinuz.xz"])
        .arg(dest)
        .output()
        .map_err(|e| format!("cannot run xorriso (Debian package xorriso): {e}"))?;
    if !out.status.success() || !dest.is_file() {
        return Err(format!(
            "{} has no /cernvm/vmlinuz.xz: {}",
            iso.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `$CERNVM_ACCEL` if set; TCG without a usable `/dev/kvm`; else the remembered probe result
/// for this machine and QEMU, probing (with `iso`'s kernel) if there is none.
pub fn choose(data_dir: &Path, qemu_binary: &Path, iso: &Path) -> Result<Choice, String> {
    if let Some(v) = std::env::var_os(qemu::ACCEL_ENV).filter(|v| !v.is_empty()) {
        let accel: Accel = v
            .to_string_lossy()
            .parse()
            .map_err(|e| format!("{}: {e}", qemu::ACCEL_ENV))?;
        return Ok(Choice {
            accel,
            reason: format!("set by {}", qemu::ACCEL_ENV),
        });
    }
    if let Err(e) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(qemu::KVM_DEVICE)
    {
        return Ok(Choice {
            accel: Accel::Tcg,
            reason: format!("{}: {e}", qemu::KVM_DEVICE),
        });
    }
    let key = probe_key(qemu_binary);
    let path = data_dir.join(PROBE_FILE);
    // One probe at a time: a concurrent start waits and reads the result.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("kvm-probe.lock"))
        .map_err(|e| format!("cannot open the probe lock in {}: {e}", data_dir.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let recorded = fs::read_to_string(&path)
        .map(|t| ConfigMap::parse(&t))
        .unwrap_or_default();
    if recorded.get("key") == Some(key.as_str()) {
        let works = recorded.get("works") == Some("yes");
        let detail = recorded.get("detail").unwrap_or("").to_string();
        return Ok(Choice::after_probe(works, &detail));
    }
    eprintln!(
        "cernvm-launch: probing whether KVM works here (at most {} s, once per machine and QEMU version)",
        PROBE_TIMEOUT.as_secs()
    );
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary dir: {e}"))?;
    let kernel = tmp.path().join("vmlinuz");
    kernel_from_iso(iso, &kernel)?;
    let outcome = qemu::probe_boot(
        QemuCommand::new().binary(qemu_binary),
        Accel::Kvm,
        &kernel,
        PROBE_TIMEOUT,
    )
    .map_err(|e| format!("KVM probe: {e}"))?;
    let (works, detail) = match outcome {
        ProbeOutcome::Works { elapsed } => (
            true,
            format!("kernel booted in {:.1} s", elapsed.as_secs_f64()),
        ),
        // QEMU's own words, shortened to what fits a status line (its first error line).
        ProbeOutcome::Fails { reason } => (false, short(&reason)),
    };
    let mut record = ConfigMap::new();
    record.set("key", key);
    record.set("works", if works { "yes" } else { "no" });
    record.set("detail", detail.clone());
    let _ = fs::write(&path, record.to_string());
    Ok(Choice::after_probe(works, &detail))
}

impl Choice {
    /// KVM if the probe (now or remembered) booted the kernel, else TCG; `detail` says why.
    fn after_probe(works: bool, detail: &str) -> Choice {
        if works {
            Choice {
                accel: Accel::Kvm,
                reason: format!("KVM passed its probe ({detail})"),
            }
        } else {
            Choice {
                accel: Accel::Tcg,
                reason: format!("KVM failed its probe ({detail})"),
            }
        }
    }
}

/// The first line of `text`, at most 160 characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_details_fit_a_line() {
        assert_eq!(short("a\nb"), "a");
        let long = "x".repeat(300);
        assert_eq!(short(&long).chars().count(), 161);
    }
}
