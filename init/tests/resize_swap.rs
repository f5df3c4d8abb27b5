//! Resize on request (spec §6.6) and the swap file (§6.7) on real loop devices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use ucernvm_init::devices::probe::TableKind;
use ucernvm_init::disk::plan::PlanSettings;
use ucernvm_init::disk::resize::{resize, ResizeOutcome, ResizeStep, FLAG};
use ucernvm_init::disk::root::{prepare, RootOutcome};
use ucernvm_init::disk::swap::{ensure_swap, SwapError, SwapSize};
use ucernvm_init::disk::table::{create, read_table, PartSpec};
use ucernvm_init::disk::ScratchDisk;

fn ready(d: &TestDisk, resize_rootfs: bool) -> ScratchDisk {
    match prepare(
        &d.env(),
        PlanSettings {
            resize_rootfs,
            use_boothd: false,
        },
        None,
    ) {
        Ok(RootOutcome::Ready(s, _)) => s,
        other => panic!("root phase: {other:?}"),
    }
}

/// A 1 GiB scratch disk with a file on it, then the virtual disk grows to `to` bytes.
fn grown_disk(to: u64) -> TestDisk {
    let mut d = TestDisk::blank(GIB);
    ready(&d, true);
    fs::write(d.root_rw().join("persistent/keep"), b"mine").unwrap();
    d.power_off();
    fs::File::options()
        .write(true)
        .open(&d.image)
        .unwrap()
        .set_len(to)
        .unwrap();
    d.attach();
    d
}

#[test]
fn resize_grows_partition_and_file_system_and_removes_the_flag() {
    if !need_root() {
        return;
    }
    let d = grown_disk(3 * GIB);
    let mut s = ready(&d, true);
    // Without the flag nothing happens.
    assert_eq!(
        resize(&d.env(), &mut s, None).unwrap(),
        ResizeOutcome::NotRequested
    );
    fs::write(d.root_rw().join(FLAG), b"").unwrap();
    let out = resize(&d.env(), &mut s, None).unwrap();
    let ResizeOutcome::Grown { from_mib, to_mib } = out else {
        panic!("{out:?}")
    };
    assert!(from_mib < 1024 && to_mib > 2900, "{from_mib} -> {to_mib}");
    assert!(!d.root_rw().join(FLAG).exists());
    assert!(is_mountpoint(&d.root_rw()));
    assert_eq!(
        fs::read(d.root_rw().join("persistent/keep")).unwrap(),
        b"mine"
    );
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(t.partitions[0].end() * 512, 3 * GIB);
    let sysfs_size: u64 = fs::read_to_string(format!("/sys/block/{0}/{0}p1/size", d.name()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        sysfs_size, t.partitions[0].sectors,
        "the kernel sees the new size"
    );
}

#[test]
fn power_cut_during_resize_is_finished_by_the_next_boot() {
    if !need_root() {
        return;
    }
    for step in [
        ResizeStep::GrowPartition,
        ResizeStep::Check,
        ResizeStep::Mount,
        ResizeStep::GrowFs,
    ] {
        let mut d = grown_disk(2 * GIB);
        let mut s = ready(&d, true);
        fs::write(d.root_rw().join(FLAG), b"").unwrap();
        assert_eq!(
            resize(&d.env(), &mut s, Some(step)).unwrap(),
            ResizeOutcome::Stopped(step)
        );
        d.reboot();
        let mut s = ready(&d, true);
        assert!(!s.created, "{step:?}: the disk was formatted again");
        assert!(
            d.root_rw().join(FLAG).exists(),
            "{step:?}: flag removed before the end"
        );
        let out = resize(&d.env(), &mut s, None).unwrap();
        assert!(
            matches!(out, ResizeOutcome::Grown { to_mib, .. } if to_mib > 1900),
            "{step:?}: {out:?}"
        );
        assert_eq!(
            fs::read(d.root_rw().join("persistent/keep")).unwrap(),
            b"mine"
        );
    }
}

#[test]
fn resize_that_cannot_grow_keeps_the_flag_and_the_mount() {
    if !need_root() {
        return;
    }
    // resize_rootfs=off: partition 2 lies behind the scratch partition.
    let d = TestDisk::blank(21 * GIB);
    let mut s = ready(&d, false);
    fs::write(d.root_rw().join(FLAG), b"").unwrap();
    let out = resize(&d.env(), &mut s, None).unwrap();
    let ResizeOutcome::Failed(why) = out else {
        panic!("{out:?}")
    };
    assert!(why.contains("partition 2 lies behind partition 1"), "{why}");
    assert!(d.root_rw().join(FLAG).exists());
    assert!(is_mountpoint(&d.root_rw()));
}

/// Turns swap off again when a test ends, whatever happened.
struct SwapGuard(std::path::PathBuf);

impl Drop for SwapGuard {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path string.
        unsafe { libc::swapoff(c.as_ptr()) };
    }
}

fn swaps() -> String {
    fs::read_to_string("/proc/swaps").unwrap()
}

#[test]
fn swap_file_is_created_enabled_and_picked_up_on_the_next_boot() {
    if !need_root() {
        return;
    }
    let mut d = TestDisk::blank(2 * GIB);
    ready(&d, true);
    let rw = d.root_rw();
    // No request and no file: nothing.
    assert_eq!(ensure_swap(&rw, None, 2).unwrap(), None);
    // Too big for the disk: refused, nothing left behind.
    let err = ensure_swap(&rw, Some(SwapSize::Auto), 4).unwrap_err();
    assert!(matches!(err, SwapError::NoSpace { .. }), "{err}");
    assert!(!rw.join("swapfile").exists() && !rw.join(".swapfile.tmp").exists());

    let path = ensure_swap(&rw, Some(SwapSize::Bytes(64 << 20)), 2)
        .unwrap()
        .expect("swap");
    let guard = SwapGuard(path.clone());
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(m.len(), 64 << 20);
    assert!(m.blocks() * 512 >= 64 << 20, "swap file has holes");
    assert_eq!(
        blkid(&path, "TYPE"),
        "swap",
        "util-linux recognises our header"
    );
    assert!(
        swaps().contains(&path.to_string_lossy().into_owned()),
        "{}",
        swaps()
    );
    drop(guard);

    // Next boot: the file is picked up without any request.
    d.reboot();
    ready(&d, true);
    let path = ensure_swap(&d.root_rw(), None, 2).unwrap().expect("swap");
    let _guard = SwapGuard(path.clone());
    assert!(swaps().contains(&path.to_string_lossy().into_owned()));
}

#[test]
fn a_swapfile_without_swap_signature_is_not_enabled() {
    if !need_root() {
        return;
    }
    let d = TestDisk::blank(GIB);
    ready(&d, true);
    let p = d.root_rw().join("swapfile");
    fs::write(&p, vec![1u8; 1 << 20]).unwrap();
    let err = ensure_swap(&d.root_rw(), Some(SwapSize::Bytes(64 << 20)), 1).unwrap_err();
    assert!(matches!(err, SwapError::NotSwap(_)), "{err}");
    assert_eq!(
        fs::read(&p).unwrap(),
        vec![1u8; 1 << 20],
        "the user's file is untouched"
    );
}

#[test]
fn gpt_scratch_partition_grows_with_its_backup_table_moved_to_the_new_end() {
    if !need_root() {
        return;
    }
    // A GPT written by us on a small disk (the root phase uses GPT only beyond 2 TiB); the
    // root phase formats its in-progress partition.
    let mut d = TestDisk::blank(GIB);
    let parts = [PartSpec {
        start: MIB,
        size: GIB - MIB - 33 * 512,
    }];
    create(&d.dev(), TableKind::Gpt, 512, GIB, &parts).unwrap();
    ready(&d, true);
    d.power_off();
    fs::File::options()
        .write(true)
        .open(&d.image)
        .unwrap()
        .set_len(3 * GIB)
        .unwrap();
    d.attach();
    let mut s = ready(&d, true);
    assert!(!s.created);
    fs::write(d.root_rw().join(FLAG), b"").unwrap();
    let out = resize(&d.env(), &mut s, None).unwrap();
    assert!(
        matches!(out, ResizeOutcome::Grown { from_mib, to_mib } if from_mib < 1024 && to_mib > 2900),
        "{out:?}"
    );
    let dump = run("sfdisk", &["--dump", &d.dev().to_string_lossy()]);
    let last_lba = 3 * GIB / 512 - 34;
    assert!(dump.contains(&format!("last-lba: {last_lba}")), "{dump}");
    let t = read_table(&d.dev(), 512).unwrap().unwrap();
    assert_eq!(t.partitions[0].end(), last_lba + 1);
}
