//! The µCernVM kernel that `kernel-config/build-custom-kernel` built (`scripts/test` builds it,
//! or takes it from the cache, before the tests): its configuration meets the requirement
//! fragment and `custom.config`, and it has no modules.

use std::path::PathBuf;

use kernel_config::{check, Fragment, KernelConfig};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn the_built_kernel_meets_the_fragment_and_custom_config() {
    let config_path = repo_file("build/custom-kernel/current/config");
    let Ok(text) = std::fs::read_to_string(&config_path) else {
        test_prereq::skip("no µCernVM kernel (run kernel-config/build-custom-kernel)");
        return;
    };
    let config = KernelConfig::parse(&text, "config").unwrap();
    for requirements in [
        "kernel-config/ucernvm.fragment",
        "kernel-config/custom.config",
    ] {
        let fragment_text = std::fs::read_to_string(repo_file(requirements)).unwrap();
        let fragment = Fragment::parse(&fragment_text, requirements).unwrap();
        let unmet = check(&config, &fragment);
        assert!(
            unmet.is_empty(),
            "{requirements}: {}",
            unmet
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let modular: Vec<&str> = text.lines().filter(|l| l.ends_with("=m")).collect();
    assert!(
        modular.is_empty(),
        "modules in {config_path:?}: {modular:?}"
    );
    // The index shipped with it lists the built-in drivers the initramfs manifest names.
    let release =
        std::fs::read_to_string(repo_file("build/custom-kernel/current/release")).unwrap();
    let builtin = std::fs::read_to_string(repo_file(&format!(
        "build/custom-kernel/current/modules/{}/modules.builtin",
        release.trim()
    )))
    .unwrap();
    for driver in [
        "virtio_net.ko",
        "ahci.ko",
        "fuse.ko",
        "overlay.ko",
        "9p.ko",
        "ena.ko",
    ] {
        assert!(
            builtin.lines().any(|l| l.ends_with(&format!("/{driver}"))),
            "{driver} not in modules.builtin"
        );
    }
}
