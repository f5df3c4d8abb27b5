//! Acceptance test of the image signature (spec §14.5): images signed by scripts/sign-image
//! verify with exactly the openssl commands of the CernVM documentation ("CernVM Image
//! Signatures"), and fail them when the image or its metadata block is changed. The CA is made
//! by openssl in the test.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{check, script, TestCa};

const BLOCK: usize = 32768;

/// One step of the documented procedure, run by `sh` in `dir` exactly as written there
/// (`<IMAGE>` is $IMAGE, `<X509_CERT_DIR>` is $X509_CERT_DIR). Returns stdout, or the step and
/// everything it printed.
fn step(dir: &Path, image: &Path, ca_path: &Path, command: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("IMAGE", image)
        .env("X509_CERT_DIR", ca_path)
        .output()
        .expect("cannot run sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{command}` failed: {text}"))
    }
}

/// The documented verification; returns the certificate subject as openssl prints it.
fn documented_verification(image: &Path, ca_path: &Path) -> Result<String, String> {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let block = step(
        dir,
        image,
        ca_path,
        "tail -c $((64*1024)) \"$IMAGE\" > sigblock",
    )?;
    assert!(block.is_empty());
    // "write JSON contents of "certificate" / "signature" to encoded_certificate /
    // encoded_signature using text editor": the second 32 kB block, trailing NULs ignored.
    let sigblock = fs::read(dir.join("sigblock")).unwrap();
    let json_text: Vec<u8> = sigblock[BLOCK..]
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .collect();
    let json: serde_json::Value =
        serde_json::from_slice(&json_text).map_err(|e| format!("block B is not JSON: {e}"))?;
    for (key, file) in [
        ("certificate", "encoded_certificate"),
        ("signature", "encoded_signature"),
    ] {
        let value = json[key]
            .as_str()
            .ok_or_else(|| format!("block B has no string {key:?}"))?;
        fs::write(dir.join(file), value).unwrap();
    }
    step(
        dir,
        image,
        ca_path,
        "base64 -d encoded_certificate > certificate",
    )?;
    step(
        dir,
        image,
        ca_path,
        "base64 -d encoded_signature > signature",
    )?;
    step(
        dir,
        image,
        ca_path,
        "openssl verify -CApath \"$X509_CERT_DIR\" certificate",
    )?;
    let subject = step(
        dir,
        image,
        ca_path,
        "openssl x509 -in certificate -subject -noout",
    )?;
    step(
        dir,
        image,
        ca_path,
        "openssl x509 -in certificate -pubkey -noout > pubkey",
    )?;
    step(
        dir,
        image,
        ca_path,
        "head -c -32768 \"$IMAGE\" > signed_image",
    )?;
    let verified = step(
        dir,
        image,
        ca_path,
        "openssl dgst -sha256 -verify pubkey -signature signature signed_image",
    )?;
    assert_eq!(verified.trim(), "Verified OK");
    Ok(subject.trim().to_string())
}

fn verify_image(image: &Path, ca: &Path) -> std::process::Output {
    Command::new(script("verify-image"))
        .arg(image)
        .arg("--ca")
        .arg(ca)
        .output()
        .expect("cannot run scripts/verify-image")
}

/// Bytes that are not all alike, so that a changed byte changes the digest.
fn test_image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn json_of_block(block: &[u8]) -> serde_json::Value {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    assert!(
        block[end..].iter().all(|&b| b == 0),
        "the block is JSON followed by zero bytes only"
    );
    serde_json::from_slice(&block[..end]).unwrap()
}

#[test]
fn signed_image_verifies_with_the_documented_openssl_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    let image = tmp.path().join("ucernvm.iso");
    let original = test_image(300_000);
    fs::write(&image, &original).unwrap();

    let out = ca.sign(
        &image,
        &[
            "--version",
            "2026.11-1.cernvm.x86_64",
            "--os-repo",
            "prod",
            "--snapshot",
            "HEAD4",
        ],
    );
    check("sign-image", &out);

    // Layout: the image unchanged, then block A and block B of 32 kB each.
    let signed = fs::read(&image).unwrap();
    assert_eq!(signed.len(), original.len() + 2 * BLOCK);
    assert_eq!(&signed[..original.len()], &original[..]);
    let block_a = json_of_block(&signed[original.len()..original.len() + BLOCK]);
    assert_eq!(
        block_a,
        serde_json::json!({
            "ucernvm-version": "2026.11-1.cernvm.x86_64",
            "os-repo": "prod",
            "snapshot": "HEAD4"
        })
    );
    let block_b = json_of_block(&signed[original.len() + BLOCK..]);
    let cert_pem = fs::read(ca.cert()).unwrap();
    let cert_b64 = block_b["certificate"].as_str().unwrap();
    let decoded = Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$1\" | base64 -d")
        .arg("sh")
        .arg(cert_b64)
        .output()
        .unwrap();
    assert_eq!(decoded.stdout, cert_pem, "certificate = base64 of the PEM");
    assert!(block_b["howto-verify"]
        .as_array()
        .is_some_and(|h| !h.is_empty()));

    let subject = documented_verification(&image, &ca.ca_path()).unwrap();
    assert_eq!(
        subject,
        "subject=DC = ch, DC = cern, OU = computers, CN = cvm-sign02.cern.ch"
    );

    // scripts/verify-image agrees, with a CA directory and with a CA file.
    for ca_arg in [ca.ca_path(), ca.ca_cert()] {
        let out = verify_image(&image, &ca_arg);
        check("verify-image", &out);
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(metadata, block_a);
    }
}

#[test]
fn tampered_images_and_metadata_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    let other_ca = TestCa::create(&tmp.path().join("other"), "Other CA");
    let image = tmp.path().join("ucernvm.hdd");
    let len = 200_000;
    fs::write(&image, test_image(len)).unwrap();
    check("sign-image", &ca.sign(&image, &[]));
    assert!(documented_verification(&image, &ca.ca_path()).is_ok());
    let signed = fs::read(&image).unwrap();

    let variant = |name: &str, change: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = signed.clone();
        change(&mut bytes);
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    };
    // One byte of the image.
    let bad_image = variant("bad-image", &|b| b[1234] ^= 0x01);
    // The metadata block: another snapshot, same length.
    let bad_metadata = variant("bad-metadata", &|b| {
        let a = &mut b[len..len + BLOCK];
        let pos = a.windows(5).position(|w| w == b"HEAD4").unwrap();
        a[pos + 4] = b'5';
    });
    for path in [&bad_image, &bad_metadata] {
        let err = documented_verification(path, &ca.ca_path()).unwrap_err();
        assert!(
            err.starts_with("`openssl dgst -sha256 -verify pubkey")
                && err.contains("Verification failure"),
            "{err}"
        );
        let out = verify_image(path, &ca.ca_path());
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the signature does not match"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A CA that did not issue the certificate.
    let err = documented_verification(&image, &other_ca.ca_path()).unwrap_err();
    assert!(err.starts_with("`openssl verify -CApath"), "{err}");
    let out = verify_image(&image, &other_ca.ca_path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify against"));

    // An image without a signature block.
    let unsigned = variant("unsigned", &|b| b.truncate(len));
    let out = verify_image(&unsigned, &ca.ca_path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signature block"));
}

#[test]
fn sign_image_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::create(&tmp.path().join("ca"), "Test CA");
    let other = TestCa::create(&tmp.path().join("other"), "Other CA");
    let image = tmp.path().join("image");
    fs::write(&image, test_image(100_000)).unwrap();
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = Command::new(script("sign-image"))
        .arg(&image)
        .arg("--cert")
        .arg(ca.cert())
        .arg("--key")
        .arg(other.key())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the private key does not belong to the certificate"));

    let out = ca.sign(&image, &["--snapshot", "HEAD\"4"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--snapshot HEAD\"4: only letters"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&image).unwrap().len(), 100_000, "nothing appended");

    check("sign-image", &ca.sign(&image, &[]));
    let out = ca.sign(&image, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already ends in a signature block"));
    assert_eq!(fs::read(&image).unwrap().len(), 100_000 + 2 * BLOCK);
}
