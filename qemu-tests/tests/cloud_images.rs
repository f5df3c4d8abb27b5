//! scripts/build-images: the images for every hypervisor and cloud (spec §14.3). One test reads
//! each format back with the tools its users' platforms use (qemu-img, tar, mtools) and checks
//! the command lines of the cloud variants, the checksums and the appliance; the other boots
//! each format QEMU can read (qcow2, VDI, VMDK from the OVA, fixed VHD, GCE's disk.raw) until
//! our init's banner appears on the serial console. Needs the Debian kernel and the initramfs
//! of `scripts/test` (`kernel-config/build-custom-kernel`, `scripts/build-initrd`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cernvm_launch::qemu::{Accel, QemuCommand};
use common::{check, script, TestCa};
use qemu_tests::inputs;
use qemu_tests::Guest;
use sha2::{Digest, Sha256};

const VERSION: &str = "2026.12-1.cernvm.x86_64";
const MIB: u64 = 1 << 20;

struct Images {
    dir: PathBuf,
}

impl Images {
    /// Runs scripts/build-images into `dir` with the test kernel and initramfs.
    fn build(dir: &Path, extra: &[&std::ffi::OsStr]) -> Option<Images> {
        let (Some(kernel), Some(initrd)) = (inputs::kernel(), inputs::initrd()) else {
            test_prereq::skip(
                "no kernel or initramfs (kernel-config/build-custom-kernel, scripts/build-initrd)",
            );
            return None;
        };
        let out = Command::new(script("build-images"))
            .arg("--dir")
            .arg(dir)
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(extra)
            .env("UCERNVM_VERSION", VERSION)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .expect("cannot run scripts/build-images");
        check("build-images", &out);
        Some(Images {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, format: &str) -> PathBuf {
        self.dir.join(format!("ucernvm.{VERSION}.{format}"))
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = common::run(program, args);
    check(program, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(path: &Path) -> String {
    let digest = Sha256::digest(fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The boot menu of a raw image's FAT partition (byte 512), read with mtools.
fn menu(raw: &Path, file: &str) -> String {
    let image = format!("{}@@512", raw.display());
    let out = Command::new("mtype")
        .arg("-i")
        .arg(image)
        .arg(format!("::/isolinux/{file}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    check("mtype", &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The APPEND line of the `normal` entry.
fn normal_line(menu: &str) -> String {
    let start = menu.find("LABEL normal").expect("no normal entry");
    menu[start..]
        .lines()
        .find(|l| l.trim_start().starts_with("APPEND"))
        .unwrap()
        .to_string()
}

/// `qemu-img compare`: the guest sees the same bytes in both (the larger one zero beyond).
fn assert_same_disk(a: &Path, a_format: &str, b: &Path, b_format: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_format, "-F", b_format])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    check(&format!("qemu-img compare {a_format} {b_format}"), &out);
}

fn virtual_size(image: &Path, format: &str) -> u64 {
    let info = run(
        "qemu-img",
        &[
            "info".as_ref(),
            "--output=json".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            image.as_os_str(),
        ],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

fn untar(archive: &Path, into: &Path) -> Vec<String> {
    fs::create_dir_all(into).unwrap();
    run(
        "tar",
        &[
            "-xf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            into.as_os_str(),
        ],
    );
    run("tar", &["-tf".as_ref(), archive.as_os_str()])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_format_carries_the_hdd_with_its_command_line_checksum_and_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    let (cert, key) = (ca.cert(), ca.key());
    let sign: [&std::ffi::OsStr; 4] = [
        "--sign-cert".as_ref(),
        cert.as_os_str(),
        "--sign-key".as_ref(),
        key.as_os_str(),
    ];
    let Some(images) = Images::build(&tmp.path().join("images"), &sign) else {
        return;
    };

    // Every format with its checksum file ("<hex>  <file name>").
    for format in [
        "iso", "hdd", "hvm", "tar.gz", "qcow2", "vdi", "vmdk", "vhd", "ova",
    ] {
        let image = images.path(format);
        let line = fs::read_to_string(image.with_extension(format!(
            "{}.sha256",
            image.extension().unwrap().to_str().unwrap()
        )))
        .unwrap_or_else(|e| panic!("{format}: no checksum file: {e}"));
        let name = image.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            line,
            format!("{}  {name}\n", sha256_hex(&image)),
            "{format}"
        );
    }

    // The iso and the hdd are signed and verify against the CA.
    let hdd = images.path("hdd");
    for format in ["iso", "hdd"] {
        let out = Command::new(script("verify-image"))
            .arg(images.path(format))
            .arg("--ca")
            .arg(ca.ca_path())
            .output()
            .unwrap();
        check(&format!("verify-image {format}"), &out);
    }
    assert_eq!(fs::metadata(&hdd).unwrap().len(), 24 * MIB + 65536);

    // The hdd keeps the command line with `lastarg` and both menus are identical.
    let normal = menu(&hdd, "syslinux.cfg");
    assert_eq!(normal, menu(&hdd, "isolinux.cfg"));
    assert!(
        normal_line(&normal).ends_with(" loglevel=3 lastarg"),
        "{normal}"
    );

    // EC2 HVM: the serial console instead of lastarg, no console=tty0; otherwise the hdd.
    let hvm = images.path("hvm");
    let cfg = menu(&hvm, "syslinux.cfg");
    assert_eq!(cfg, menu(&hvm, "isolinux.cfg"));
    assert!(
        normal_line(&cfg).ends_with(" quiet systemd.show_status=1 loglevel=3 console=ttyS0"),
        "{cfg}"
    );
    assert!(
        !cfg.contains("lastarg") && !cfg.contains("console=tty0"),
        "{cfg}"
    );
    assert_eq!(
        cfg,
        normal
            .replace(" lastarg\n", " console=ttyS0\n")
            .replace(" console=tty0", "")
    );
    assert_eq!(fs::metadata(&hvm).unwrap().len(), 24 * MIB + 65536);

    // GCE: exactly disk.raw, the same bytes as the HVM image.
    let gce = tmp.path().join("gce");
    assert_eq!(untar(&images.path("tar.gz"), &gce), ["disk.raw"]);
    assert!(fs::read(gce.join("disk.raw")).unwrap() == fs::read(&hvm).unwrap());

    // Azure: a fixed VHD (footer "conectix", disk type 2) of 25 MiB, a whole number of MiB, with
    // Azure's console arguments and without quiet and loglevel=3.
    let vhd = images.path("vhd");
    let bytes = fs::read(&vhd).unwrap();
    assert_eq!(bytes.len() as u64, 25 * MIB + 512);
    let footer = &bytes[bytes.len() - 512..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(&footer[60..64], &[0, 0, 0, 2], "disk type: fixed");
    assert_eq!(virtual_size(&vhd, "vpc"), 25 * MIB);
    let azure_raw = tmp.path().join("azure.raw");
    fs::write(&azure_raw, &bytes[..bytes.len() - 512]).unwrap();
    let cfg = menu(&azure_raw, "syslinux.cfg");
    let line = normal_line(&cfg);
    assert!(
        line.ends_with(
            " consoleblank=0 log_buf_len=4M cernvm_path=cvm4 cvmfs_repos=cernvm-prod.cern.ch \
             cvmfs_server=cvmfs-stratum-one.cern.ch,cvmfs-s1fnal.opensciencegrid.org,\
             cvmfs-s1bnl.opensciencegrid.org,grid-cvmfs-one.desy.de \
             cvmfs_cdn=s1cern-cvmfs.openhtc.io,s1ral-cvmfs.openhtc.io;s1bnl-cvmfs.openhtc.io;\
             s1fnal-cvmfs.openhtc.io;s1unl-cvmfs.openhtc.io cvmfs_repository_tag=HEAD4 \
             systemd.show_status=1 console=ttyS0 earlyprintk=ttyS0 rootdelay=300 numa=off"
        ),
        "{line}"
    );
    assert_same_disk(&hdd, "raw", &images.path("qcow2"), "qcow2");

    // VirtualBox: the VDI is the hdd grown to 20 480 MB; the VMDK the same, stream-optimised.
    assert_eq!(virtual_size(&images.path("vdi"), "vdi"), 20480 * MIB);
    assert_same_disk(&hdd, "raw", &images.path("vdi"), "vdi");
    assert_eq!(virtual_size(&images.path("vmdk"), "vmdk"), 20480 * MIB);
    assert_same_disk(&images.path("vdi"), "vdi", &images.path("vmdk"), "vmdk");
    let vmdk_header = fs::read(images.path("vmdk")).unwrap();
    assert!(
        String::from_utf8_lossy(&vmdk_header[..4096]).contains("createType=\"streamOptimized\""),
        "not a stream-optimised VMDK"
    );

    // The appliance: descriptor first, manifest, then the disks; the manifest's digests hold;
    // the boot disk is the VMDK, the scratch disk empty with 20 000 MB.
    let ova = tmp.path().join("ova");
    let name = format!("ucernvm.{VERSION}");
    let members = untar(&images.path("ova"), &ova);
    assert_eq!(
        members,
        [
            format!("{name}.ovf"),
            format!("{name}.mf"),
            format!("{name}-disk1.vmdk"),
            format!("{name}-disk2.vmdk"),
        ]
    );
    let manifest = fs::read_to_string(ova.join(format!("{name}.mf"))).unwrap();
    for member in [&members[0], &members[2], &members[3]] {
        let line = format!("SHA256({member})= {}", sha256_hex(&ova.join(member)));
        assert!(
            manifest.lines().any(|l| l == line),
            "{line} not in {manifest}"
        );
    }
    assert!(
        fs::read(ova.join(&members[2])).unwrap() == fs::read(images.path("vmdk")).unwrap(),
        "the OVA's boot disk is not the VMDK"
    );
    assert_eq!(virtual_size(&ova.join(&members[3]), "vmdk"), 20000 * MIB);
    let ovf = fs::read_to_string(ova.join(&members[0])).unwrap();
    for expected in [
        format!(
            "ovf:href=\"{name}-disk1.vmdk\" ovf:size=\"{}\"",
            fs::metadata(ova.join(&members[2])).unwrap().len()
        ),
        format!("ovf:capacity=\"{}\" ovf:diskId=\"vmdisk1\"", 20480 * MIB),
        format!("ovf:capacity=\"{}\" ovf:diskId=\"vmdisk2\"", 20000 * MIB),
        "<rasd:ResourceSubType>AHCI</rasd:ResourceSubType>".to_string(),
        "<rasd:VirtualQuantity>1024</rasd:VirtualQuantity>".to_string(),
        "<rasd:Connection>NAT</rasd:Connection>".to_string(),
        "<rasd:Connection>HostOnly</rasd:Connection>".to_string(),
        "<rasd:HostResource>/disk/vmdisk1</rasd:HostResource>".to_string(),
    ] {
        assert!(ovf.contains(&expected), "{expected} not in the OVF:\n{ovf}");
    }
    assert!(!ovf.contains("MACAddress"), "{ovf}");
    // Well-formed XML.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom as m; m.parse(sys.argv[1])",
        ])
        .arg(ova.join(&members[0]))
        .output()
        .unwrap();
    check("OVF is well-formed XML", &out);
}

/// Boots `disk` (QEMU's `format`) on virtio-blk, the image unchanged (snapshot), until the boot
/// menu and our init's banner appear on the serial console.
fn boot_to_banner(disk: &Path, format: &str) {
    let cmd = QemuCommand::new()
        .accel(Accel::Tcg)
        .memory_mib(1024)
        .no_reboot(true)
        .arg("-drive")
        .arg(format!(
            "file={},format={format},if=virtio,snapshot=on",
            disk.display()
        ));
    let mut guest = Guest::spawn(cmd).unwrap();
    for marker in [
        "Welcome to uCernVM",
        "* Welcome to micro-CernVM",
        "* Release ",
    ] {
        if let Err(e) = guest.wait_for(marker, Duration::from_secs(240)) {
            panic!("{format} image {}: {e}", disk.display());
        }
    }
}

#[test]
fn every_format_qemu_reads_boots_to_our_init() {
    let tmp = tempfile::tempdir().unwrap();
    // The serial variant, so that the boot menu and the kernel write to the serial console.
    let Some(images) = Images::build(
        &tmp.path().join("images"),
        &[
            "--serial".as_ref(),
            "--formats".as_ref(),
            "tar.gz,qcow2,vdi,vhd,ova".as_ref(),
        ],
    ) else {
        return;
    };
    let gce = tmp.path().join("gce");
    untar(&images.path("tar.gz"), &gce);
    let ova = tmp.path().join("ova");
    untar(&images.path("ova"), &ova);
    for (disk, format) in [
        (gce.join("disk.raw"), "raw"),
        (images.path("qcow2"), "qcow2"),
        (images.path("vdi"), "vdi"),
        (ova.join(format!("ucernvm.{VERSION}-disk1.vmdk")), "vmdk"),
        (images.path("vhd"), "vpc"),
    ] {
        boot_to_banner(&disk, format);
    }
}
