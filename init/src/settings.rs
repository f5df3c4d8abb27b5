//! The typed boot settings: kernel command line and `_UCONTEXT_*` values of the µCernVM block
//! folded into one struct that every later phase reads (spec §1.4, §5.7, §9.1).
//!
//! The raw entries stay available in `extra` so that keys we do not interpret still reach
//! the OS through `context/ucontext`.

use cvmfs_config::keys::{CVMFS_HTTP_PROXY, CVMFS_PAC_URLS};
use std::collections::BTreeMap;

use crate::context::ContextEntry;

/// Everything the user (user data) asked of this boot, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSettings {
    /// `resize_rootfs`: whole disk for the scratch partition (default), or 20 GiB plus an
    /// unformatted rest when off.
    pub resize_rootfs: bool,
    /// `use_boothd`: prefer a new partition on the boot disk over empty disks.
    pub use_boothd: bool,
    pub cvmfs_http_proxy: Option<String>,
    pub cvmfs_pac_urls: Option<String>,
    /// `cvmfs_server`, split on `,`.
    pub cvmfs_server: Option<Vec<String>>,
    /// `cvmfs_cdn`, split on `,`; `NONE` is kept as the single element `NONE`.
    pub cvmfs_cdn: Option<Vec<String>>,
    /// `cvmfs_branch`: the OS repository name.
    pub cvmfs_branch: Option<String>,
    pub cvmfs_tag: Option<String>,
    /// `cvmfs_wait_on_squid`: seconds per probe.
    pub cvmfs_wait_on_squid: Option<u64>,
    pub cernvm_path: Option<String>,
    /// `cernvm_inject`: base64 of a `.tar.gz`.
    pub cernvm_inject: Option<String>,
    /// `useglideinWMS` (default on).
    pub use_glidein_wms: bool,
    pub cvm_cluster_pin: Option<String>,
    pub cvm_cluster_master: bool,
    pub cvm_service_url: Option<String>,
    /// Every key as the OS sees it in `ucontext` (upper-case key → interpreted value), including
    /// the ones above; later entries override earlier ones.
    pub extra: BTreeMap<String, String>,
}

impl Default for ContextSettings {
    fn default() -> Self {
        ContextSettings {
            resize_rootfs: true,
            use_boothd: false,
            cvmfs_http_proxy: None,
            cvmfs_pac_urls: None,
            cvmfs_server: None,
            cvmfs_cdn: None,
            cvmfs_branch: None,
            cvmfs_tag: None,
            cvmfs_wait_on_squid: None,
            cernvm_path: None,
            cernvm_inject: None,
            use_glidein_wms: true,
            cvm_cluster_pin: None,
            cvm_cluster_master: false,
            cvm_service_url: None,
            extra: BTreeMap::new(),
        }
    }
}

/// The original's tests on a normalised value: `1` is on; `true`/`True`/`yes` are accepted too.
fn is_on(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "yes" | "on")
}

fn is_off(v: &str) -> bool {
    matches!(v, "0" | "false" | "False" | "no" | "off")
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn list(v: &str) -> Option<Vec<String>> {
    let items: Vec<String> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (!items.is_empty()).then_some(items)
}

impl ContextSettings {
    /// Folds parsed entries (in order; the last occurrence of a key wins).
    pub fn from_entries(entries: &[ContextEntry]) -> Self {
        let mut s = ContextSettings::default();
        for e in entries {
            let key = String::from_utf8_lossy(&e.key).into_owned();
            s.apply(&key, &e.interpreted_value());
        }
        s
    }

    /// Applies one `KEY=value` pair as found in a `ucontext` file (key upper-case, without the
    /// `_UCONTEXT_` prefix).
    pub fn apply(&mut self, key: &str, value: &str) {
        let v = value;
        match key {
            "RESIZE_ROOTFS" => self.resize_rootfs = !is_off(v),
            "USE_BOOTHD" => self.use_boothd = is_on(v),
            CVMFS_HTTP_PROXY => self.cvmfs_http_proxy = non_empty(v),
            CVMFS_PAC_URLS => self.cvmfs_pac_urls = non_empty(v),
            "CVMFS_SERVER" => self.cvmfs_server = list(v),
            "CVMFS_CDN" => self.cvmfs_cdn = list(v),
            "CVMFS_BRANCH" => self.cvmfs_branch = non_empty(v),
            "CVMFS_TAG" => self.cvmfs_tag = non_empty(v),
            "CVMFS_WAIT_ON_SQUID" => self.cvmfs_wait_on_squid = v.trim().parse().ok(),
            "CERNVM_PATH" => self.cernvm_path = non_empty(v),
            "CERNVM_INJECT" => self.cernvm_inject = non_empty(v),
            "USEGLIDEINWMS" => self.use_glidein_wms = !is_off(v),
            "CVM_CLUSTER_PIN" => self.cvm_cluster_pin = non_empty(v),
            "CVM_CLUSTER_MASTER" => self.cvm_cluster_master = is_on(v),
            "CVM_SERVICE_URL" => self.cvm_service_url = non_empty(v),
            _ => {}
        }
        self.extra.insert(key.to_string(), v.to_string());
    }

    /// Reads a saved `ucontext` file (`_UCONTEXT_KEY=value` lines, as `write_ucontext` writes).
    pub fn apply_ucontext_file(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("_UCONTEXT_") {
                if let Some((k, v)) = rest.split_once('=') {
                    self.apply(k, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::parse_block;

    #[test]
    fn block_values_become_typed_settings() {
        let ud = b"[ucernvm-begin]\nresize_rootfs=off\ncvmfs_server=a.example,b.example\n\
cvmfs_branch=demo.cernvm.test\ncvmfs_wait_on_squid=5\nuseglideinWMS=no\nfoo=bar\n[ucernvm-end]\n";
        let s = ContextSettings::from_entries(&parse_block(ud));
        assert!(!s.resize_rootfs);
        assert_eq!(
            s.cvmfs_server,
            Some(vec!["a.example".to_string(), "b.example".to_string()])
        );
        assert_eq!(s.cvmfs_branch.as_deref(), Some("demo.cernvm.test"));
        assert_eq!(s.cvmfs_wait_on_squid, Some(5));
        assert!(!s.use_glidein_wms);
        assert_eq!(s.extra.get("FOO").map(String::as_str), Some("bar"));
    }

    #[test]
    fn defaults_and_ucontext_round_trip() {
        let s = ContextSettings::default();
        assert!(s.resize_rootfs && s.use_glidein_wms && !s.use_boothd);
        let mut t = ContextSettings::default();
        t.apply_ucontext_file("_UCONTEXT_CVMFS_TAG=v1\n_UCONTEXT_RESIZE_ROOTFS=0\nnoise\n");
        assert_eq!(t.cvmfs_tag.as_deref(), Some("v1"));
        assert!(!t.resize_rootfs);
    }
}
