//! The root phase on real loop devices with the real e2fsprogs: partitioning (MBR, GPT, boot
//! disk), formatting, mounting, the first-boot layout, later boots, power cuts between any two
//! steps, and the refusals that keep data safe.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use ucernvm_init::devices::probe::{TableKind, OUR_DISK_SIGNATURE};
use ucernvm_init::disk::plan::PlanSettings;
use ucernvm_init::disk::root::{prepare, RootError, RootOutcome, Step};
use ucernvm_init::disk::table::{read_table, TablePartition};
use ucernvm_init::disk::ScratchDisk;

const DEFAULTS: PlanSettings = PlanSettings {
    resize_rootfs: true,
    use_boothd: false,
};

fn ready(d: &TestDisk, settings: PlanSettings) -> ScratchDisk {
    match prepare(&d.env(), settings, None) {
        Ok(RootOutcome::Ready(s, _)) => s,
        other => panic!("root phase: {other:?}"),
    }
}

/// Everything a finished scratch disk has (spec §6.4–6.5).
fn assert_finished(d: &TestDisk, s: &ScratchDisk) {
    let rw = d.root_rw();
    assert!(is_mountpoint(&rw), "scratch not mounted");
    assert_eq!(blkid(&s.device, "LABEL"), "UROOT");
    assert_eq!(blkid(&s.device, "TYPE"), "ext4");
    for dir in ["aux", "persistent", "cache", "cvmfs"] {
        assert!(rw.join(dir).is_dir(), "{dir} missing");
    }
    let spacer = fs::metadata(rw.join("aux/safety/50m")).expect("spacer");
    assert_eq!(spacer.len(), 50 << 20);
    assert!(spacer.blocks() * 512 >= 50 << 20, "spacer is sparse");
    assert!(rw.join("aux/safety/inode_spacer127").is_file());
    assert!(!rw.join("aux/safety/inode_spacer128").exists());
    assert!(rw.join("aux/busybox").is_file());
    let t = read_table(&d.dev(), 512).unwrap().expect("table");
    assert!(t.partitions.iter().all(|p| !p.in_progress), "{t:?}");
    // The by-label link of the original (spec §4).
    let link = d.dir.path().join("by-label/UROOT");
    assert_eq!(fs::read_link(&link).unwrap(), s.device);
    // No mount-count or interval checks (spec §6.4).
    let t2 = run("tune2fs", &["-l", &s.device.to_string_lossy()]);
    assert!(
        t2.lines()
            .any(|l| l.starts_with("Maximum mount count:") && l.ends_with("-1")),
        "{t2}"
    );
    assert!(
        t2.lines()
            .any(|l| l.starts_with("Check interval:") && l.contains(" 0 ")),
        "{t2}"
    );
}

#[test]
fn blank_disk_gets_one_mbr_partition_over_the_whole_disk_and_is_reused_next_boot() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::blank(2 * GIB);
    let s = ready(&d, DEFAULTS);
    assert!(s.created);
    assert_finished(&d, &s);
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(t.kind, TableKind::Mbr);
    assert!(t.ours);
    assert_eq!(
        t.partitions,
        vec![TablePartition {
            number: 1,
            start: 2048,
            sectors: 2 * GIB / 512 - 2048,
            in_progress: false
        }]
    );
    assert!(
        s.root_size_mb > 1900 && s.root_size_mb <= 2048,
        "{}",
        s.root_size_mb
    );
    let log = fs::read_to_string(d.dir.path().join("log/partition.log")).unwrap();
    assert!(
        log.contains("$ mke2fs -F -q -t ext4 -L UROOT-INIT"),
        "{log}"
    );
    // A file system mke2fs has just made is clean: e2fsck -p is not started for it.
    let fsck_log = d.dir.path().join("log/fsck.log");
    assert!(!fsck_log.exists());

    // Something the user leaves on the disk survives the next boot (after a clean power-off
    // the file system is clean and not checked either).
    fs::write(d.root_rw().join("persistent/keep"), b"mine").unwrap();
    d.reboot();
    let s2 = ready(&d, DEFAULTS);
    assert!(!s2.created);
    assert_eq!(s2.number, 1);
    assert_eq!(
        fs::read(d.root_rw().join("persistent/keep")).unwrap(),
        b"mine"
    );
    assert_finished(&d, &s2);
    assert!(!fsck_log.exists());

    // Power lost while it is mounted: the disk as it was then (the journal in use) is checked
    // by e2fsck -p on the next boot, which replays the journal.
    fs::write(d.root_rw().join("persistent/more"), b"later").unwrap();
    run("sync", &[]);
    let crashed = d.dir.path().join("crashed.img");
    fs::copy(&d.image, &crashed).unwrap();
    d.power_off();
    fs::rename(&crashed, &d.image).unwrap();
    d.attach();
    let s3 = ready(&d, DEFAULTS);
    assert!(!s3.created);
    let log = fs::read_to_string(&fsck_log).unwrap();
    assert!(log.contains("e2fsck -p"), "{log}");
    assert_eq!(
        fs::read(d.root_rw().join("persistent/more")).unwrap(),
        b"later"
    );
    assert_finished(&d, &s3);
}

#[test]
fn resize_rootfs_off_gives_20_gib_and_an_unformatted_rest() {
    if !need_root() {
        return;
    }
    let d = TestDisk::blank(30 * GIB);
    let s = ready(
        &d,
        PlanSettings {
            resize_rootfs: false,
            use_boothd: false,
        },
    );
    assert_finished(&d, &s);
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[0].sectors * 512, 20 * GIB);
    assert_eq!(t.partitions[1].start, 2048 + 20 * GIB / 512);
    assert_eq!(t.partitions[1].end() * 512, 30 * GIB);
    let rest = format!("/dev/{}p2", d.name());
    assert_eq!(
        blkid(Path::new(&rest), "TYPE"),
        "",
        "the rest stays unformatted"
    );
}

#[test]
fn disks_beyond_2_tib_get_gpt() {
    if !need_root() {
        return;
    }
    let d = TestDisk::blank(3 << 40);
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(t.kind, TableKind::Gpt);
    assert!(t.ours);
    assert_eq!(t.partitions.len(), 1);
    assert_eq!(t.partitions[0].start, 2048);
    // sfdisk (util-linux) agrees that the table is valid and the partition is Linux.
    let dump = run("sfdisk", &["--dump", &d.dev().to_string_lossy()]);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{dump}"
    );
}

/// An x86 `.hdd`-like image: MBR, partition 1 = ext2 boot file system with the sentinel.
fn boot_image(img: &Path, gpt: bool) {
    let label = if gpt { "gpt" } else { "dos" };
    let script = format!(
        "label: {label}\nstart=2048, size=47104, type={}\n",
        if gpt { "L" } else { "83" }
    );
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", &img.to_string_lossy()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let tree = tempfile::tempdir().unwrap();
    fs::write(tree.path().join(".ucernvm_boot_loader"), b"").unwrap();
    fs::write(tree.path().join("vmlinuz"), b"kernel").unwrap();
    let fsimg = tree.path().join("boot.fs");
    fs::File::create(&fsimg)
        .unwrap()
        .set_len(47104 * 512)
        .unwrap();
    let content = tree.path().join("content");
    fs::create_dir(&content).unwrap();
    fs::rename(
        tree.path().join(".ucernvm_boot_loader"),
        content.join(".ucernvm_boot_loader"),
    )
    .unwrap();
    run(
        "mke2fs",
        &[
            "-q",
            "-t",
            "ext2",
            "-d",
            &content.to_string_lossy(),
            &fsimg.to_string_lossy(),
        ],
    );
    write_at(img, MIB, &fs::read(&fsimg).unwrap());
}

#[test]
fn mbr_boot_disk_gets_a_second_partition_and_the_boot_partition_is_untouched() {
    if !need_root() {
        return;
    }
    let d = TestDisk::from_image(2 * GIB, |img| boot_image(img, false));
    let boot_before = read_at(&d.image, 0, 24 * MIB as usize);
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
    assert_eq!(s.number, 2);
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert!(!t.ours, "the boot disk keeps its own signature");
    assert_eq!(t.partitions[1].start, 24 * MIB / 512);
    assert_eq!(t.partitions[1].end() * 512, 2 * GIB);
    let boot_after = read_at(&d.image, 0, 24 * MIB as usize);
    // Only the partition entry of the new partition changed in the first 24 MiB.
    let diff: Vec<usize> = (0..boot_before.len())
        .filter(|&i| boot_before[i] != boot_after[i])
        .collect();
    assert!(
        diff.iter().all(|&i| (462..478).contains(&i)),
        "changed bytes {diff:?}"
    );
}

#[test]
fn gpt_boot_disk_image_on_a_larger_disk_gets_its_backup_moved_and_a_partition() {
    if !need_root() {
        return;
    }
    // The image is made for 64 MiB and then copied onto a 2 GiB disk.
    let d = TestDisk::from_image(2 * GIB, |img| {
        fs::File::options()
            .write(true)
            .open(img)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        boot_image(img, true);
        fs::File::options()
            .write(true)
            .open(img)
            .unwrap()
            .set_len(2 * GIB)
            .unwrap();
    });
    let s = ready(
        &d,
        PlanSettings {
            resize_rootfs: false,
            use_boothd: false,
        },
    );
    assert_finished(&d, &s);
    assert_eq!(s.number, 2);
    let dump = run("sfdisk", &["--dump", &d.dev().to_string_lossy()]);
    assert!(
        dump.contains("last-lba: 4194270"),
        "backup header not at the end: {dump}"
    );
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(
        t.partitions.len(),
        2,
        "no rest partition on GPT (spec §6.3)"
    );
    assert_eq!(t.partitions[1].start, 24 * MIB / 512);
    // Whole disk is under 20 GiB: the partition takes all the free space.
    assert_eq!(t.partitions[1].end(), 4194271);
}

/// A first boot cut after `step`, then a full boot: the result is a correct scratch disk and
/// the table the first boot wrote is kept (never a second partitioning).
fn cut_after(step: Step) {
    let mut d = TestDisk::blank(GIB);
    match prepare(&d.env(), DEFAULTS, Some(step)) {
        Ok(RootOutcome::Stopped(s)) => assert_eq!(s, step),
        other => panic!("{step:?}: {other:?}"),
    }
    let table_after_cut = read_table(&d.dev(), 512).unwrap();
    d.reboot();
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    let cut = table_after_cut.expect("table written before the cut");
    assert_eq!(
        (t.partitions[0].start, t.partitions[0].sectors),
        (cut.partitions[0].start, cut.partitions[0].sectors),
        "{step:?}"
    );
    // Formatted again unless the cut came after the label.
    assert_eq!(s.created, step != Step::Label, "{step:?}");
}

#[test]
fn power_cut_after_every_first_boot_step_leads_to_a_correct_disk() {
    if !need_root() {
        return;
    }
    for step in [
        Step::Partition,
        Step::Format,
        Step::Check,
        Step::Mount,
        Step::Layout,
        Step::MarkLinux,
        Step::Label,
    ] {
        cut_after(step);
    }
}

#[test]
fn power_cut_in_the_middle_of_mke2fs_is_recognised_by_the_partition_type() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::blank(GIB);
    assert!(matches!(
        prepare(&d.env(), DEFAULTS, Some(Step::Partition)),
        Ok(RootOutcome::Stopped(_))
    ));
    // What mke2fs writes before its superblock: group descriptors and bitmaps, no signature.
    let p = read_table(&d.dev(), 512).unwrap().unwrap().partitions[0];
    d.power_off();
    write_at(&d.image, p.start * 512 + 4096, &[0x5a; 8192]);
    d.attach();
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
}

#[test]
fn power_cut_in_the_middle_of_a_gpt_write_is_recognised_by_our_protective_mbr() {
    if !need_root() {
        return;
    }
    let d = TestDisk::blank(GIB);
    // Our protective MBR went out, the GPT did not.
    let mut pmbr = [0u8; 512];
    pmbr[440..444].copy_from_slice(&OUR_DISK_SIGNATURE);
    pmbr[446 + 4] = 0xEE;
    pmbr[446 + 8] = 1;
    pmbr[510] = 0x55;
    pmbr[511] = 0xAA;
    write_at(&d.dev(), 0, &pmbr);
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
}

#[test]
fn an_existing_empty_partition_is_marked_then_formatted_and_a_cut_before_mke2fs_is_resumed() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::from_image(2 * GIB, |img| {
        let mut child = std::process::Command::new("sfdisk")
            .args(["-q", &img.to_string_lossy()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, type=83\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
    });
    assert!(matches!(
        prepare(&d.env(), DEFAULTS, Some(Step::MarkInProgress)),
        Ok(RootOutcome::Stopped(_))
    ));
    assert!(read_table(&d.dev(), 512).unwrap().unwrap().partitions[0].in_progress);
    d.reboot();
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
    assert_eq!(s.number, 1);
}

fn expect_refusal(d: &TestDisk, want: &str) {
    let before = read_at(&d.image, 0, 4 * MIB as usize);
    match prepare(&d.env(), DEFAULTS, None) {
        Err(e) => assert!(e.to_string().contains(want), "{e}"),
        Ok(o) => panic!("expected a refusal, got {o:?}"),
    }
    assert_eq!(
        before,
        read_at(&d.image, 0, 4 * MIB as usize),
        "the disk was changed"
    );
    assert!(!is_mountpoint(&d.root_rw()));
}

#[test]
fn disks_holding_data_are_never_touched() {
    if !need_root() {
        return;
    }
    // A file system over the whole disk.
    let d = TestDisk::from_image(GIB, |img| {
        run(
            "mke2fs",
            &["-q", "-t", "ext4", "-L", "data", &img.to_string_lossy()],
        );
    });
    expect_refusal(&d, "holds an Ext4 file system labelled data");
    // Data of a type we do not know.
    let d = TestDisk::from_image(GIB, |img| write_at(img, 8192, b"precious bytes"));
    expect_refusal(&d, "holds data of unknown type");
    // Blank at the start, but a file system where partition 1 would begin.
    let d = TestDisk::from_image(2 * GIB, |img| {
        let fsimg = img.with_extension("fs");
        fs::File::create(&fsimg).unwrap().set_len(64 * MIB).unwrap();
        run("mke2fs", &["-q", "-t", "ext4", &fsimg.to_string_lossy()]);
        write_at(img, MIB, &fs::read(&fsimg).unwrap());
    });
    expect_refusal(&d, "looks empty at its start but holds");
    // A foreign partition table whose partition holds a file system.
    let d = TestDisk::from_image(GIB, |img| {
        boot_image(img, false);
        // Not the boot medium: remove the sentinel by giving the fs another content.
        let fsimg = img.with_extension("fs");
        fs::File::create(&fsimg)
            .unwrap()
            .set_len(47104 * 512)
            .unwrap();
        run(
            "mke2fs",
            &["-q", "-t", "ext4", "-L", "home", &fsimg.to_string_lossy()],
        );
        write_at(img, MIB, &fs::read(&fsimg).unwrap());
    });
    expect_refusal(&d, "holds an Ext4 file system labelled home");
    // A table we cannot use: a GPT header whose protective MBR is gone.
    let d = TestDisk::from_image(GIB, |img| {
        boot_image(img, true);
        write_at(img, 0, &[0u8; 512]);
    });
    expect_refusal(&d, "holds a GPT partition table");
}

#[test]
fn read_only_too_small_and_missing_disks_are_clear_errors() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::blank(GIB);
    d.power_off();
    d.read_only = true;
    d.attach();
    expect_refusal(&d, "read-only");

    let d = TestDisk::blank(100 * MIB);
    expect_refusal(&d, "too small (100 MiB)");

    let d = TestDisk::blank(GIB);
    let mut env = d.env();
    env.devices.only = Some(Default::default());
    match prepare(&env, DEFAULTS, None) {
        Err(RootError::Plan(e)) => {
            assert!(e.to_string().contains("no block device was found"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn amazon_ephemeral_ext3_with_only_lost_and_found_is_reused() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::from_image(GIB, |img| {
        run("mke2fs", &["-q", "-t", "ext3", &img.to_string_lossy()]);
    });
    // Discovery alone changes nothing (it runs on every boot; the wipe belongs to the disk's
    // first use).
    let before = read_at(&d.image, 0, 4 * MIB as usize);
    let found = ucernvm_init::devices::refresh(&d.env().devices).unwrap();
    assert_eq!(
        found.first_empty_disk().map(|x| x.name.clone()),
        Some(d.name().to_string())
    );
    assert_eq!(before, read_at(&d.image, 0, 4 * MIB as usize));
    // A power cut in the middle of the wipe: the zone's end is zeroed, the superblock is not.
    d.power_off();
    write_at(&d.image, 50 * MIB, &vec![0u8; 50 * MIB as usize]);
    d.attach();
    let s = ready(&d, DEFAULTS);
    assert_finished(&d, &s);
    assert_eq!(s.number, 1);
}

#[test]
fn disks_with_4k_sectors_are_partitioned_in_their_sectors() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::blank_4k(2 * GIB);
    let s = ready(&d, DEFAULTS);
    let t = read_table(&d.dev(), 4096).unwrap().unwrap();
    assert_eq!(t.kind, TableKind::Mbr);
    assert_eq!(
        (t.partitions[0].start, t.partitions[0].end()),
        (256, 2 * GIB / 4096)
    );
    assert_eq!(blkid(&s.device, "LABEL"), "UROOT");
    d.reboot();
    assert!(!ready(&d, DEFAULTS).created);
}

#[test]
fn power_cut_on_the_boot_disk_and_with_the_20_gib_split_never_adds_a_second_partition() {
    if !need_root() {
        return;
    }
    for step in [Step::Partition, Step::Format, Step::Layout] {
        let mut d = TestDisk::from_image(2 * GIB, |img| boot_image(img, false));
        assert!(matches!(
            prepare(&d.env(), DEFAULTS, Some(step)),
            Ok(RootOutcome::Stopped(_))
        ));
        d.reboot();
        let s = ready(&d, DEFAULTS);
        assert_finished(&d, &s);
        assert_eq!(s.number, 2, "{step:?}");
        assert_eq!(
            read_table(&d.dev(), 512).unwrap().unwrap().partitions.len(),
            2,
            "{step:?}"
        );
    }
    let off = PlanSettings {
        resize_rootfs: false,
        use_boothd: false,
    };
    let mut d = TestDisk::blank(21 * GIB);
    assert!(matches!(
        prepare(&d.env(), off, Some(Step::Partition)),
        Ok(RootOutcome::Stopped(_))
    ));
    d.reboot();
    let s = ready(&d, off);
    assert_finished(&d, &s);
    assert_eq!(s.number, 1, "the scratch partition, not the rest");
    let rest = format!("/dev/{}p2", d.name());
    assert_eq!(blkid(Path::new(&rest), "TYPE"), "");
}
