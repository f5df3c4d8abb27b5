//! Trust checks with certificates made by openssl (spec §4.2 step 7, §4.6): a `Wcachain`
//! whitelist whose certificate does and does not chain to `CVMFS_TRUSTED_CERTS`, a blacklisted
//! certificate, blacklisted revisions, and an expired whitelist that refuses a fresh mount but
//! not a pinned one. Repositories are published by our publisher and served over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;

use cvmfs_client::publish::{publish, PublishOptions};
use cvmfs_client::repository::{RemountOutcome, RepoError, Repository, RepositoryOptions};
use cvmfs_client::testing::{fixture_repository_options, pki, StaticHttpServer};

const FQRN: &str = "trust.cernvm.test";

/// A CA named `name` in `dir`: `<name>.key`, `<name>.crt`.
fn make_ca(dir: &Path, name: &str) -> pki::KeyPair {
    pki::make_ca(dir, name, &format!("/CN={name}"), 30)
}

/// The repository certificate and key in `keys`, issued by `ca`.
fn make_repository_cert(dir: &Path, ca: &pki::KeyPair, keys: &Path) {
    std::fs::create_dir_all(keys).unwrap();
    pki::issue(
        dir,
        ca,
        &format!("/CN={FQRN} CernVM-FS Release Managers"),
        &keys.join(format!("{FQRN}.key")),
        &keys.join(format!("{FQRN}.crt")),
        30,
    );
}

/// A published repository under `<dir>/srv/cvmfs/<fqrn>` with its keys in `keys`.
struct Published {
    dir: tempfile::TempDir,
    keys: PathBuf,
    server: StaticHttpServer,
}

impl Published {
    fn new(keys_from: impl FnOnce(&Path, &Path)) -> Published {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        keys_from(dir.path(), &keys);
        let server = StaticHttpServer::start(&dir.path().join("srv")).unwrap_or_else(|_| {
            std::fs::create_dir_all(dir.path().join("srv")).unwrap();
            StaticHttpServer::start(&dir.path().join("srv")).unwrap()
        });
        Published { dir, keys, server }
    }

    fn publish(&self, content: &str, ca_chain: bool, whitelist_days: u32) -> u64 {
        let source = self.dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("file.txt"), content).unwrap();
        let mut o = PublishOptions::new(
            FQRN,
            &self.dir.path().join(format!("srv/cvmfs/{FQRN}")),
            &self.keys,
            &source,
        );
        o.whitelist_ca_chain = ca_chain;
        o.whitelist_days = whitelist_days;
        publish(&o).unwrap().manifest.revision
    }

    fn options(&self, trusted: &[PathBuf], blacklist: Option<&str>) -> RepositoryOptions {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cache = self.dir.path().join(format!("cache-{n}"));
        let bl = self.dir.path().join("blacklist");
        match blacklist {
            Some(text) => std::fs::write(&bl, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&bl);
            }
        }
        RepositoryOptions {
            fqrn: FQRN.into(),
            server_url: format!("{}/cvmfs/{FQRN}", self.server.url()),
            public_keys: vec![self.keys.join(format!("{FQRN}.pub"))],
            trusted_certs: trusted.to_vec(),
            blacklist: vec![bl],
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            ..fixture_repository_options(&self.server.url(), &cache, None)
        }
    }
}

fn mount_err(o: RepositoryOptions) -> String {
    match Repository::mount(o) {
        Ok(r) => panic!(
            "mounted revision {} although it must be refused",
            r.revision()
        ),
        Err(e) => e.to_string(),
    }
}

fn sha1_fingerprint(crt: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(crt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.trim().split('=').nth(1).unwrap().to_string()
}

#[test]
fn wcachain_whitelists_need_a_certificate_that_chains_to_a_trusted_ca() {
    let p = Published::new(|dir, keys| {
        let ca = make_ca(dir, "site-ca");
        make_ca(dir, "other-ca");
        make_repository_cert(dir, &ca, keys);
    });
    p.publish("chained\n", true, 30);
    let ca = p.dir.path().join("site-ca.crt");
    let other = p.dir.path().join("other-ca.crt");

    let repo = Repository::mount(p.options(std::slice::from_ref(&ca), None))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(repo.lookup(b"/file.txt").unwrap().is_some());

    // A directory of trusted certificates (with other files in it) works too.
    let store = p.dir.path().join("certificates");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(&other, store.join("other.pem")).unwrap();
    std::fs::copy(&ca, store.join("site.pem")).unwrap();
    std::fs::write(store.join("site.signing_policy"), "not a certificate\n").unwrap();
    Repository::mount(p.options(&[store], None)).unwrap_or_else(|e| panic!("{e}"));

    let e = mount_err(p.options(&[other], None));
    assert!(e.contains("does not chain to a trusted CA"), "{e}");
    let e = mount_err(p.options(&[], None));
    assert!(
        e.contains("CVMFS_TRUSTED_CERTS names no CA certificate"),
        "{e}"
    );
}

#[test]
fn a_self_signed_certificate_fails_wcachain_but_passes_without_it() {
    // The publisher makes a self-signed certificate when there is none.
    let p = Published::new(|dir, _| {
        make_ca(dir, "site-ca");
    });
    let ca = p.dir.path().join("site-ca.crt");
    p.publish("self-signed\n", false, 30);
    Repository::mount(p.options(std::slice::from_ref(&ca), None)).unwrap_or_else(|e| panic!("{e}"));
    p.publish("self-signed, now with Wcachain\n", true, 30);
    let e = mount_err(p.options(&[ca], None));
    assert!(e.contains("does not chain to a trusted CA"), "{e}");
}

#[test]
fn blacklisted_certificates_and_revisions_are_refused() {
    let p = Published::new(|dir, keys| {
        let ca = make_ca(dir, "site-ca");
        make_repository_cert(dir, &ca, keys);
    });
    let revision = p.publish("one\n", false, 30);
    let fingerprint = sha1_fingerprint(&p.keys.join(format!("{FQRN}.crt")));

    let e = mount_err(p.options(&[], Some(&format!("# revoked key\n{fingerprint}\n"))));
    assert!(
        e.contains(&format!("certificate {fingerprint} is blacklisted")),
        "{e}"
    );

    let floor = revision + 1;
    let e = mount_err(p.options(&[], Some(&format!("<{FQRN} {floor}\n"))));
    assert!(
        e.contains(&format!("revision {revision} is blacklisted")),
        "{e}"
    );
    // The floor holds for pinned mounts too.
    let root = Repository::mount(p.options(&[], None)).unwrap().root_hash();
    let mut pinned = p.options(&[], Some(&format!("<{FQRN} {floor}\n")));
    pinned.root_hash = Some(root);
    assert!(matches!(
        Repository::mount(pinned),
        Err(RepoError::Trust { .. })
    ));

    // Other repositories' floors and lower floors do not matter.
    Repository::mount(p.options(
        &[],
        Some(&format!("<other.cernvm.test 999\n<{FQRN} {revision}\n")),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_expired_whitelist_refuses_a_fresh_mount_but_not_a_pinned_one() {
    let p = Published::new(|_, _| {});
    p.publish("valid\n", false, 30);
    let mounted = Repository::mount(p.options(&[], None)).unwrap();
    let root = mounted.root_hash();
    let mut pinned_opts = p.options(&[], None);
    pinned_opts.root_hash = Some(root);
    let pinned = Repository::mount(pinned_opts.clone()).unwrap();

    // The next revision comes with a whitelist that has already expired.
    p.publish("expired\n", false, 0);
    let e = mount_err(p.options(&[], None));
    assert!(e.contains("whitelist expired"), "{e}");
    // The mounted pinned repository keeps working and stays up to date.
    assert_eq!(pinned.remount(), RemountOutcome::UpToDate);
    assert!(pinned.lookup(b"/file.txt").unwrap().is_some());
    // And it mounts again, pinned, with the expired whitelist on the server.
    drop(pinned);
    let again = Repository::mount(pinned_opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.root_hash(), root);
    // An unpinned mount made before keeps its revision when the remount is refused.
    assert_eq!(mounted.remount(), RemountOutcome::Failed);
    assert!(mounted.lookup(b"/file.txt").unwrap().is_some());
}
