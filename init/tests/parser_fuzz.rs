//! Property tests of the parsers that read input from outside the VM's control (DHCP replies,
//! HTTP answers, `context.sh`, user data, media signatures, `modules.dep`): random mutations of
//! the small seed corpus in `tests/fuzz-corpus/` must never panic and must keep each parser's
//! invariants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // Test code: a panic is a failure with its place.

use std::path::Path;

use proptest::prelude::*;
use ucernvm_init::context::{decode_user_data, media, mime};
use ucernvm_init::http;
use ucernvm_init::modules::ModuleIndex;
use ucernvm_init::network::dhcp::packet::{encode_classless_routes, parse_classless_routes, Reply};
use ucernvm_init::network::opennebula::parse_context_sh;

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// A corpus entry with byte edits, an optional cut and an optional splice of random bytes.
fn mutated(kind: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(kind);
    (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(i, edits, cut, splice)| {
            let mut b = seeds[i].clone();
            if !b.is_empty() {
                for (at, v) in edits {
                    let k = at.index(b.len());
                    b[k] = v;
                }
            }
            if let Some(c) = cut {
                let k = c.index(b.len() + 1);
                b.truncate(k);
            }
            let at = b.len() / 2;
            b.splice(at..at, splice);
            b
        })
}

fn addr() -> std::net::SocketAddr {
    "127.0.0.1:80".parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn dhcp_replies(b in mutated("dhcp")) {
        if let Ok(r) = Reply::parse(&b) {
            prop_assert_eq!(r.xid, u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
            prop_assert!(r.static_routes.iter().all(|s| s.prefix <= 32));
        }
    }

    #[test]
    fn classless_routes_reencode_to_a_prefix_of_the_input(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let routes = parse_classless_routes(&b);
        let again = encode_classless_routes(&routes);
        prop_assert!(b.starts_with(&again));
    }

    #[test]
    fn http_answers(b in mutated("http")) {
        if let Ok(body) = http::parse_response(addr(), "/", b.clone()) {
            prop_assert!(body.len() <= b.len());
        }
    }

    #[test]
    fn context_sh(b in mutated("context-sh")) {
        let vars = parse_context_sh(&String::from_utf8_lossy(&b));
        for k in vars.keys() {
            prop_assert!(!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }
    }

    /// Any value written the way a shell-quoting generator writes it reads back unchanged.
    #[test]
    fn context_sh_single_quote_round_trip(v in "[^\u{0}]{0,40}") {
        let quoted = v.replace('\'', "'\\''");
        let vars = parse_context_sh(&format!("# c\nKEY='{quoted}'\nNEXT=1\n"));
        prop_assert_eq!(vars.get("KEY"), Some(&v));
        prop_assert_eq!(vars.get("NEXT").map(String::as_str), Some("1"));
    }

    #[test]
    fn user_data(b in mutated("user-data")) {
        let (d, _) = decode_user_data(&b);
        let _ = mime::scan_user_data(&d);
    }

    #[test]
    fn media_signatures(b in prop::collection::vec(any::<u8>(), 0..40000)) {
        let _ = media::probe_bytes(&b);
    }

    #[test]
    fn modules_dep(b in mutated("modules-dep")) {
        let text = String::from_utf8_lossy(&b);
        let index = ModuleIndex::parse(Path::new("/m"), &text, "");
        for line in text.lines() {
            if let Some((f, _)) = line.split_once(':') {
                let name = f.rsplit('/').next().unwrap_or(f).split(".ko").next().unwrap_or(f);
                if let Ok(plan) = index.plan(name, &|_| false) {
                    let mut unique = plan.clone();
                    unique.sort();
                    unique.dedup();
                    prop_assert_eq!(unique.len(), plan.len());
                }
            }
        }
    }
}
