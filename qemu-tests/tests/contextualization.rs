//! End-to-end: our static `init` as PID 1 in QEMU (TCG) loads the NIC, CD-ROM and file-system
//! modules of a real distribution kernel, gets a DHCP lease from QEMU's user network and finds
//! the user data on a context ISO (OpenStack config drive) or at an emulated EC2 metadata
//! service reached at 169.254.169.254. The results are read back from the guest's rescue shell.
//!
//! Needs a kernel (`kernel-config/build-custom-kernel`), a static busybox and the static init
//! (`scripts/build-static`); skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cernvm_launch::qemu::{Accel, DiskFormat, QemuCommand, UserNet};
use qemu_tests::kernel_modules::{module_closure, modules_dir};
use qemu_tests::metadata::{Cloud, MetadataServer};
use qemu_tests::{inputs, media, Guest};
use ucernvm_initramfs::Archive;

/// Modules the guest needs: virtio-net, the IDE CD-ROM, the context file systems.
const MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_pci",
    "virtio_net",
    "ata_piix",
    "sr_mod",
    "isofs",
    "udf",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
];

const USER_DATA: &[u8] = b"#!/bin/sh\n[ucernvm-begin]\ncvmfs_branch=demo.cernvm.test\nresize_rootfs=off\n[ucernvm-end]\n";

struct Inputs {
    kernel: PathBuf,
    busybox: PathBuf,
    init: PathBuf,
}

fn inputs_or_skip() -> Option<Inputs> {
    let init = inputs::workspace_root().join("target/x86_64-unknown-linux-musl/initramfs/init");
    let found = (
        inputs::kernel(),
        inputs::static_busybox(),
        inputs::is_static_elf(&init).then_some(init),
    );
    match found {
        (Some(kernel), Some(busybox), Some(init)) => Some(Inputs {
            kernel,
            busybox,
            init,
        }),
        other => {
            test_prereq::skip(format_args!("need kernel, static busybox and static init (scripts/build-static); have {other:?}"));
            None
        }
    }
}

/// An initramfs with our init, busybox (rescue shell) and just the modules of [`MODULES`]
/// with a `modules.dep` trimmed to them.
fn initramfs(inp: &Inputs, dest: &Path) {
    let mdir = modules_dir(&inp.kernel).unwrap();
    let release = mdir.file_name().unwrap().to_str().unwrap().to_string();
    let files = module_closure(&mdir, MODULES).unwrap();
    let dep = std::fs::read_to_string(mdir.join("modules.dep")).unwrap();
    let rel = |f: &Path| {
        f.strip_prefix(&mdir)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let wanted: Vec<String> = files.iter().map(|f| rel(f)).collect();
    let trimmed: String = dep
        .lines()
        .filter(|l| {
            l.split(':')
                .next()
                .is_some_and(|f| wanted.iter().any(|w| w == f))
        })
        .map(|l| format!("{l}\n"))
        .collect();

    let mut a = Archive::new();
    a.add_file("init", std::fs::read(&inp.init).unwrap(), 0o755)
        .unwrap();
    a.add_file("bin/busybox", std::fs::read(&inp.busybox).unwrap(), 0o755)
        .unwrap();
    for tool in ["sh", "cat", "echo"] {
        a.add_symlink(&format!("bin/{tool}"), "busybox").unwrap();
    }
    a.add_char_device("dev/console", 5, 1, 0o600).unwrap();
    a.add_char_device("dev/null", 1, 3, 0o666).unwrap();
    a.add_file("version", "test-1.0\n", 0o644).unwrap();
    let base = format!("lib/modules/{release}");
    a.add_file(&format!("{base}/modules.dep"), trimmed, 0o644)
        .unwrap();
    if let Ok(b) = std::fs::read(mdir.join("modules.builtin")) {
        a.add_file(&format!("{base}/modules.builtin"), b, 0o644)
            .unwrap();
    }
    for (f, r) in files.iter().zip(&wanted) {
        a.add_file(&format!("{base}/{r}"), std::fs::read(f).unwrap(), 0o644)
            .unwrap();
    }
    let out = std::fs::File::create(dest).unwrap();
    a.write_zstd(out, 3).unwrap();
}

/// Boots, leaves every rescue shell before contextualization, and in the first one after it
/// prints the files the network and context phases wrote. Returns the console text between
/// the check markers.
/// Whether the guest has `module`: loaded (its line in the guest's `/proc/modules` in `out`)
/// or built into the kernel (the µCernVM kernel has no modules at all).
fn has_module(inp: &Inputs, out: &str, module: &str) -> bool {
    let builtin = modules_dir(&inp.kernel)
        .ok()
        .and_then(|dir| ucernvm_init::modules::ModuleIndex::open(&dir).ok())
        .is_some_and(|index| index.is_builtin(module));
    builtin || out.contains(&format!("{module} "))
}

fn boot_and_inspect(cmd: QemuCommand, expect_source: &str) -> String {
    let mut guest = Guest::spawn(cmd).unwrap();
    // The result is printed in green after the progress text (warnings may come in between).
    let result = format!("\u{1b}[32m{expect_source}\u{1b}[0m");
    let deadline = Instant::now() + Duration::from_secs(300);
    // busybox prints its prompt followed by a cursor-position query
    let prompt = "(initrd) ";
    let mut prompts_handled = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no contextualization result {expect_source:?}:\n{}",
            guest.console().contents()
        );
        let text = guest.console().contents();
        let context_at = text.find("Contextualizing VM...");
        let extra_at = text.find("Looking for extra context");
        match (context_at, extra_at) {
            (Some(c), Some(e)) if c < e => {
                assert!(
                    text[c..e].contains(&result),
                    "wrong context source, expected {expect_source}:\n{text}"
                );
                if text[e..].contains(prompt) {
                    break;
                }
            }
            (Some(_), _) => {}
            (None, _) => {
                let prompts = text.matches(prompt).count();
                if prompts > prompts_handled {
                    prompts_handled = prompts;
                    guest.send("exit\n").unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    guest
        .send("echo CHECK-$((1+1)); cat /ucontext /etc/resolv.conf /var/lib/dhcp-server /var/log/context.log; echo MTU=$(cat /sys/class/net/eth0/mtu); busybox ip -4 addr show eth0; busybox ip route; cat /proc/modules /extra-ucontext /var/log/network.log /var/log/udhcpc.log; echo END-$((1+1))\n")
        .unwrap();
    guest.wait_for("END-2", Duration::from_secs(60)).unwrap();
    let text = guest.console().contents();
    let start = text.rfind("CHECK-2").unwrap();
    let end = text.rfind("END-2").unwrap();
    // the serial console ends lines with CR LF
    text[start..end].replace("\r\n", "\n")
}

fn base_command(inp: &Inputs, initrd: &Path) -> QemuCommand {
    QemuCommand::new()
        .accel(Accel::Tcg)
        .memory_mib(512)
        .kernel(
            &inp.kernel,
            Some(initrd.to_path_buf()),
            Some("console=ttyS0 panic=-1 quiet".into()),
        )
        .no_reboot(true)
}

#[test]
fn user_data_from_a_config_drive_iso() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let iso = dir.path().join("config-2.iso");
    media::context_iso(
        &iso,
        "config-2",
        &[("openstack/latest/user_data", USER_DATA)],
    )
    .unwrap();
    let cmd = base_command(&inp, &initrd)
        .cdrom(&iso)
        .user_net(UserNet::default());
    let out = boot_and_inspect(cmd, "ConfigDrive");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
    assert!(out.contains("_UCONTEXT_RESIZE_ROOTFS=0\n"), "{out}");
    // QEMU's DHCP server and DNS forwarder on the default user network
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    assert!(out.contains("10.0.2.2\n"), "{out}");
    assert!(out.contains("MTU=1460"), "{out}");
    assert!(out.contains("inet 10.0.2.15/24"), "{out}");
    // the original's logs: interfaces, routes, resolv.conf; the DHCP conversation
    assert!(
        out.contains("eth0: mac 52:54:00:12:34:56 mtu 1460 UP"),
        "{out}"
    );
    assert!(out.contains("inet 10.0.2.15/24 brd 10.0.2.255"), "{out}");
    assert!(out.contains("lease of 10.0.2.15 obtained"), "{out}");
    assert!(out.contains("default via 10.0.2.2 dev eth0"), "{out}");
    // loaded with their dependencies
    assert!(
        has_module(&inp, &out, "virtio_net") && has_module(&inp, &out, "net_failover"),
        "{out}"
    );
    assert!(
        has_module(&inp, &out, "isofs") && has_module(&inp, &out, "cdrom"),
        "{out}"
    );
}

#[test]
fn user_data_from_the_ec2_metadata_service() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let server = MetadataServer::start(Cloud::Ec2, USER_DATA.to_vec()).unwrap();
    let cmd = base_command(&inp, &initrd).user_net(server.user_net());
    let out = boot_and_inspect(cmd, "EC2");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.contains("/2016-04-19/user-data")),
        "{requests:?}"
    );
}

/// OpenNebula: `context.sh` on a CD-ROM configures eth0 statically (no DHCP) and carries the
/// user data base64-encoded in `EC2_USER_DATA`.
#[test]
fn static_network_and_user_data_from_an_opennebula_cdrom() {
    use base64::Engine as _;
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let context_sh = format!(
        "# Context variables generated by OpenNebula\nDISK_ID='1'\n\
         ETH0_MAC='52:54:00:12:34:56'\nETH0_IP='10.0.2.77'\nETH0_GATEWAY='10.0.2.2'\n\
         ETH0_DNS='10.0.2.3'\nEC2_USER_DATA='{}'\n",
        base64::engine::general_purpose::STANDARD.encode(USER_DATA)
    );
    let iso = dir.path().join("context.iso");
    media::context_iso(&iso, "CONTEXT", &[("context.sh", context_sh.as_bytes())]).unwrap();
    let cmd = base_command(&inp, &initrd)
        .cdrom(&iso)
        .user_net(UserNet::default());
    let mut guest_out = boot_and_inspect(cmd, "OpenNebula");
    guest_out.push('\n');
    assert!(
        guest_out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{guest_out}"
    );
    assert!(guest_out.contains("nameserver 10.0.2.3"), "{guest_out}");
    // static: MTU 1500 as one_network sets it, and no DHCP server remembered
    assert!(guest_out.contains("MTU=1500"), "{guest_out}");
    assert!(guest_out.contains("inet 10.0.2.77/24"), "{guest_out}");
    assert!(
        guest_out.contains("default via 10.0.2.2 dev eth0"),
        "{guest_out}"
    );
    assert!(!guest_out.contains("10.0.2.2\n"), "{guest_out}");
}

#[test]
fn user_data_from_the_gce_metadata_service() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let server = MetadataServer::start(Cloud::Gce, USER_DATA.to_vec()).unwrap();
    let cmd = base_command(&inp, &initrd).user_net(server.user_net());
    let out = boot_and_inspect(cmd, "GCE");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
}

/// Azure: a UDF disc with the tag file and `CustomData.bin`, mounted as UDF by the kernel.
#[test]
fn user_data_from_an_azure_udf_disc() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let src = dir.path().join("azure");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("E6DA6616-8EC4-48E0-BE93-58CE6ACE3CFB.tag"), b"").unwrap();
    std::fs::write(src.join("CustomData.bin"), USER_DATA).unwrap();
    std::fs::write(src.join("ovf-env.xml"), b"<Environment/>").unwrap();
    let iso = dir.path().join("azure.iso");
    let st = std::process::Command::new("genisoimage")
        .args(["-quiet", "-udf", "-R", "-o"])
        .arg(&iso)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let cmd = base_command(&inp, &initrd)
        .cdrom(&iso)
        .user_net(UserNet::default());
    let out = boot_and_inspect(cmd, "Azure");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
    assert!(
        has_module(&inp, &out, "udf"),
        "the UDF module was loaded on demand: {out}"
    );
}

#[test]
fn user_data_from_a_vsphere_iso() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let iso = dir.path().join("vsphere.iso");
    media::context_iso(&iso, "CDROM", &[("user-data.txt", USER_DATA)]).unwrap();
    let cmd = base_command(&inp, &initrd)
        .cdrom(&iso)
        .user_net(UserNet::default());
    let out = boot_and_inspect(cmd, "vSphere");
    assert!(out.contains("_UCONTEXT_RESIZE_ROOTFS=0\n"), "{out}");
}

/// A metadata service that accepts connections and never answers costs one bounded request;
/// the boot goes on without user data.
#[test]
fn a_silent_metadata_service_does_not_hang_the_boot() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s); // keep every connection open, say nothing
        }
    });
    let net = UserNet {
        net: Some("169.254.0.0/16".into()),
        guestfwd: vec![format!(
            "tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{port}"
        )],
        hostfwd: Vec::new(),
    };
    let started = Instant::now();
    let out = boot_and_inspect(base_command(&inp, &initrd).user_net(net), "(none)");
    // 2 s port probe + one 30 s request + the rest of the boot, far from a hang
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
    assert!(
        out.contains("no complete answer from 169.254.169.254:80"),
        "{out}"
    );
    assert!(!out.contains("_UCONTEXT_"), "{out}");
}

/// Extra user data baked into another disk (spec §5.8): found on the virtio disk, parsed into
/// `/extra-ucontext` next to the main context from the config drive.
#[test]
fn extra_user_data_from_a_data_disk() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let iso = dir.path().join("config-2.iso");
    media::context_iso(
        &iso,
        "config-2",
        &[("openstack/latest/user_data", USER_DATA)],
    )
    .unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("cernvm")).unwrap();
    std::fs::write(
        tree.join("cernvm/extra-user-data"),
        b"[ucernvm-begin]\ncvmfs_tag=from-the-image\n[ucernvm-end]\n",
    )
    .unwrap();
    let disk = dir.path().join("data.img");
    let st = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "DATA", "-d"])
        .arg(&tree)
        .arg(&disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let cmd = base_command(&inp, &initrd)
        .cdrom(&iso)
        .disk_with_format(&disk, DiskFormat::Raw)
        .user_net(UserNet::default());
    let out = boot_and_inspect(cmd, "ConfigDrive");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
    assert!(
        out.contains("_UCONTEXT_CVMFS_TAG=from-the-image\n"),
        "{out}"
    );
}

/// An OpenStack config drive in VFAT format on a virtio disk (vfat and its code page modules
/// loaded on demand).
#[test]
fn user_data_from_a_vfat_config_drive() {
    let Some(inp) = inputs_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    initramfs(&inp, &initrd);
    let img = dir.path().join("config-2.img");
    let ud = dir.path().join("user_data");
    std::fs::write(&ud, USER_DATA).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let img_s = img.to_str().unwrap();
    run(&["mkfs.vfat", "-n", "config-2", "-C", img_s, "4096"]);
    run(&["mmd", "-i", img_s, "::/openstack", "::/openstack/latest"]);
    run(&[
        "mcopy",
        "-i",
        img_s,
        ud.to_str().unwrap(),
        "::/openstack/latest/user_data",
    ]);
    let cmd = base_command(&inp, &initrd)
        .disk_with_format(&img, DiskFormat::Raw)
        .user_net(UserNet::default());
    let out = boot_and_inspect(cmd, "ConfigDrive");
    assert!(
        out.contains("_UCONTEXT_CVMFS_BRANCH=demo.cernvm.test\n"),
        "{out}"
    );
    assert!(
        has_module(&inp, &out, "vfat") && has_module(&inp, &out, "nls_cp437"),
        "{out}"
    );
}
