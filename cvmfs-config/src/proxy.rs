//! The proxy description of `CVMFS_HTTP_PROXY` (spec §10.3): groups separated by `;`, proxies of
//! a group by `|`; the group `auto` stands for the PAC-discovered list.

/// Whether the description has a group `auto`.
pub fn has_auto_group(description: &str) -> bool {
    description.split(';').any(|g| g.trim() == "auto")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_a_whole_group() {
        assert!(has_auto_group("auto;DIRECT"));
        assert!(has_auto_group("http://a:3128; auto "));
        assert!(!has_auto_group("http://auto:3128;DIRECT"));
        assert!(!has_auto_group("autodetect|DIRECT"));
    }
}
