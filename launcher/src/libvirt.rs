//! The libvirt backend: a domain like the CernVM documentation's KVM example (spec §17.6),
//! managed with `virsh` (define, start, managedsave, shutdown, suspend, destroy, undefine).
//! The connection is virsh's default (`LIBVIRT_DEFAULT_URI`, else `qemu:///system` as root).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::MachineParams;
use crate::machine::MachinePaths;
use crate::qemu::Accel;
use crate::vm;

/// Arguments selecting the connection (none: virsh's default).
pub fn connect_args() -> Vec<String> {
    Vec::new()
}

/// The libvirt domain of machine `name`.
pub fn domain_name(name: &str) -> String {
    name.to_string()
}

pub fn check_tools() -> Result<(), String> {
    if vm::find_program(Path::new("virsh")).is_none() {
        return Err("virsh not found on PATH; install it (Debian package libvirt-clients)".into());
    }
    if vm::find_program(Path::new("qemu-img")).is_none() {
        return Err("qemu-img not found on PATH; install it (Debian package qemu-utils)".into());
    }
    Ok(())
}

fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(connect_args())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh (Debian package libvirt-clients): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Escapes text for XML attribute values and content.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The domain XML of a machine.
pub fn domain_xml(
    paths: &MachinePaths,
    params: &MachineParams,
    accel: Accel,
    host_port: u16,
    emulator: &Path,
) -> String {
    let e = |p: &Path| xml_escape(&p.to_string_lossy());
    let iso = params.iso_path.as_deref().unwrap_or(Path::new(""));
    let mut x = String::new();
    let kind = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    let _ = writeln!(
        x,
        "<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    );
    let _ = writeln!(
        x,
        "  <name>{}</name>",
        xml_escape(&domain_name(&params.name))
    );
    let _ = writeln!(
        x,
        "  <description>CernVM created by cernvm-launch</description>"
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", params.memory_mb);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", params.cpus);
    if params.execution_cap < 100 {
        let _ = writeln!(
            x,
            "  <cputune>\n    <period>100000</period>\n    <quota>{}</quota>\n  </cputune>",
            u64::from(params.execution_cap) * 1000
        );
    }
    let _ = writeln!(
        x,
        "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <boot dev='cdrom'/>\n    <boot dev='hd'/>\n  </os>"
    );
    let _ = writeln!(x, "  <features>\n    <acpi/>\n    <apic/>\n  </features>");
    let cpu = match accel {
        Accel::Kvm => "<cpu mode='host-passthrough'/>",
        Accel::Tcg => "<cpu mode='maximum'/>",
    };
    let _ = writeln!(x, "  {cpu}");
    let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(x, "  <devices>");
    let _ = writeln!(x, "    <emulator>{}</emulator>", e(emulator));
    let _ = writeln!(
        x,
        "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='hdc' bus='ide'/>\n      <readonly/>\n    </disk>",
        e(iso)
    );
    let _ = writeln!(
        x,
        "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='hdd' bus='ide'/>\n      <readonly/>\n    </disk>",
        e(&paths.context_iso)
    );
    if params.disk_mb > 0 {
        let _ = writeln!(
            x,
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>",
            e(&paths.disk)
        );
    }
    if let Some(dir) = &params.shared_folder {
        let _ = writeln!(
            x,
            "    <filesystem type='mount' accessmode='passthrough'>\n      <source dir='{}'/>\n      <target dir='{}_sf'/>\n    </filesystem>",
            e(dir),
            xml_escape(&params.name)
        );
    }
    let _ = writeln!(
        x,
        "    <serial type='pty'>\n      <log file='{}' append='on'/>\n      <target port='0'/>\n    </serial>\n    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>",
        e(&paths.console_log)
    );
    if params.headful() {
        let _ = writeln!(
            x,
            "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'>\n      <listen type='address' address='127.0.0.1'/>\n    </graphics>\n    <video>\n      <model type='vga'/>\n    </video>"
        );
    }
    let _ = writeln!(x, "  </devices>");
    // User networking with the forwarded port on 127.0.0.1 (libvirt's <interface type='user'>
    // cannot forward ports with the slirp backend).
    let _ = writeln!(
        x,
        "  <qemu:commandline>\n    <qemu:arg value='-netdev'/>\n    <qemu:arg value='user,id=cernvmnet,hostfwd=tcp:127.0.0.1:{host_port}-:{}'/>\n    <qemu:arg value='-device'/>\n    <qemu:arg value='virtio-net-pci,netdev=cernvmnet,bus=pci.0,addr=0x1f'/>\n  </qemu:commandline>",
        params.api_port
    );
    let _ = writeln!(x, "</domain>");
    x
}

fn accel() -> Accel {
    match std::env::var(crate::qemu::ACCEL_ENV).as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        // libvirt checks /dev/kvm itself; a host where KVM hangs needs CERNVM_ACCEL=tcg.
        _ if Path::new(crate::qemu::KVM_DEVICE).exists() => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// Writes `domain.xml` and defines the domain.
pub fn define(paths: &MachinePaths, params: &MachineParams) -> Result<(), String> {
    let port: u16 = paths
        .load_runtime()
        .get("hostPort")
        .and_then(|p| p.parse().ok())
        .ok_or("no host port recorded")?;
    let emulator = vm::find_program(&vm::qemu_binary()).ok_or(
        "qemu-system-x86_64 not found on PATH; install it (Debian package qemu-system-x86)",
    )?;
    let xml = domain_xml(paths, params, accel(), port, &emulator);
    std::fs::write(&paths.domain_xml, &xml)
        .map_err(|e| format!("cannot write {}: {e}", paths.domain_xml.display()))?;
    virsh(&["define", &paths.domain_xml.to_string_lossy()])?;
    Ok(())
}

/// `running`, `paused`, `saved` or `stopped` (or libvirt's word for other states).
pub fn state(name: &str) -> Result<String, String> {
    let d = domain_name(name);
    let s = virsh(&["domstate", &d])?;
    Ok(match s.as_str() {
        "running" => "running".into(),
        "paused" => "paused".into(),
        "shut off" => {
            let info = virsh(&["dominfo", &d]).unwrap_or_default();
            if info
                .lines()
                .any(|l| l.starts_with("Managed save:") && l.ends_with("yes"))
            {
                "saved".into()
            } else {
                "stopped".into()
            }
        }
        other => other.to_string(),
    })
}

pub fn start(paths: &MachinePaths, params: &MachineParams) -> Result<String, String> {
    let d = domain_name(&params.name);
    match state(&params.name)?.as_str() {
        "running" => return Ok(format!("{} is already running", params.name)),
        "paused" => {
            virsh(&["resume", &d])?;
            return Ok(format!("{} resumed", params.name));
        }
        "stopped" => {
            // The recorded port may have been taken meanwhile: pick another and redefine.
            let mut runtime = paths.load_runtime();
            let old = runtime.get("hostPort").and_then(|p| p.parse().ok());
            let port = vm::free_port(old).map_err(|e| e.to_string())?;
            if Some(port) != old {
                runtime.set("hostPort", port.to_string());
                paths.save_runtime(&runtime).map_err(|e| e.to_string())?;
                define(paths, params)?;
            }
        }
        _ => {}
    }
    virsh(&["start", &d])?;
    let port = paths
        .load_runtime()
        .get("hostPort")
        .unwrap_or("?")
        .to_string();
    Ok(format!(
        "started {} (libvirt domain {d}); ssh: 127.0.0.1:{port} -> {}",
        params.name, params.api_port
    ))
}

pub fn stop(name: &str, shutdown: bool) -> Result<String, String> {
    let d = domain_name(name);
    if state(name)? != "running" && state(name)? != "paused" {
        return Ok(format!("{name} is not running"));
    }
    if !shutdown {
        virsh(&["managedsave", &d])?;
        return Ok(format!(
            "{name} stopped; its state is saved, start resumes it"
        ));
    }
    virsh(&["shutdown", &d])?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if state(name)? == "stopped" {
            return Ok(format!("{name} powered off"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    virsh(&["destroy", &d])?;
    Ok(format!(
        "{name} did not power off within 120 s and was terminated"
    ))
}

pub fn pause(name: &str) -> Result<(), String> {
    virsh(&["suspend", &domain_name(name)]).map(|_| ())
}

/// Stops the domain if needed and removes its definition and saved state.
pub fn undefine(name: &str) -> Result<(), String> {
    let d = domain_name(name);
    if matches!(state(name).as_deref(), Ok("running") | Ok("paused")) {
        let _ = virsh(&["destroy", &d]);
    }
    virsh(&["undefine", "--managed-save", &d]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigMap;

    #[test]
    fn domain_xml_is_valid_and_listens_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = MachinePaths::new(dir.path(), "demo").unwrap();
        let mut map = ConfigMap::defaults();
        map.set("name", "demo");
        map.set("isoPath", "/images/ucernvm's.iso");
        map.set("executionCap", "50");
        map.set(
            "sharedFolder",
            std::fs::canonicalize(dir.path()).unwrap().to_str().unwrap(),
        );
        let params = MachineParams::from_map(&map).unwrap();
        let xml = domain_xml(
            &paths,
            &params,
            Accel::Tcg,
            40022,
            Path::new("/usr/bin/qemu-system-x86_64"),
        );
        assert!(xml.contains("<domain type='qemu'"));
        assert!(xml.contains("<memory unit='MiB'>2048</memory>"));
        assert!(xml.contains("/images/ucernvm&apos;s.iso"));
        assert!(xml.contains("hostfwd=tcp:127.0.0.1:40022-:22"));
        assert!(xml.contains("<target dir='demo_sf'/>"));
        assert!(xml.contains("<quota>50000</quota>"));
        assert!(!xml.contains("0.0.0.0"));
        assert!(xml.contains("listen='127.0.0.1'"));
        // Validated against libvirt's schema where libvirt-clients is installed.
        if vm::find_program(Path::new("virt-xml-validate")).is_some() {
            let f = dir.path().join("domain.xml");
            std::fs::write(&f, &xml).unwrap();
            let out = Command::new("virt-xml-validate")
                .arg(&f)
                .arg("domain")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}\n{xml}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            test_prereq::skip("virt-xml-validate (Debian package libvirt-clients)");
        }
    }
}
