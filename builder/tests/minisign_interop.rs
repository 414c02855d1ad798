//! Signatures interoperate with the real `minisign` tool from Debian, both ways. Needs `minisign`
//! on PATH (installed by scripts/setup); the test fails, not skips, without it.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn minisign(args: &[&str]) -> std::process::Output {
    Command::new("minisign")
        .args(args)
        .output()
        .expect("the minisign tool is installed (scripts/setup installs it)")
}

fn built_bundle(tmp: &Path, sign_with: Option<&Path>) -> std::path::PathBuf {
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp, &mirror);
    let key = sign_with.map(|k| k.display().to_string());
    let extra: Vec<&str> = key.iter().flat_map(|k| ["--sign", k.as_str()]).collect();
    let (o, bundle) = build_amd64(tmp, &manifest, &mirror, &extra);
    ok(&o);
    bundle
}

#[test]
fn kiln_signs_and_minisign_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("kiln-test");
    ok(&kiln(
        &tmp.path().join("cache"),
        &["keygen", "-o", prefix.to_str().unwrap()],
    ));
    let key = tmp.path().join("kiln-test.key");
    let public = tmp.path().join("kiln-test.pub");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let err = fails(&kiln(
        &tmp.path().join("cache"),
        &["keygen", "-o", prefix.to_str().unwrap()],
    ));
    assert!(err.contains("already exists"), "{err}");

    let bundle = built_bundle(tmp.path(), Some(&key));
    let out = minisign(&["-V", "-p", public.to_str().unwrap(), "-m", bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "minisign -V: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kiln bundle k8s-node-1.36.4-1-amd64.kiln.tar.zst sha256:"));
    ok(&kiln(
        &tmp.path().join("cache"),
        &["verify", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()],
    ));

    // A tampered bundle fails both verifiers.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x20;
    std::fs::write(&bundle, bytes).unwrap();
    assert!(
        !minisign(&["-V", "-p", public.to_str().unwrap(), "-m", bundle.to_str().unwrap()])
            .status
            .success()
    );
    let err = fails(&kiln(
        &tmp.path().join("cache"),
        &["verify", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()],
    ));
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn minisign_keys_and_signatures_work_with_kiln() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("ms.key");
    let public = tmp.path().join("ms.pub");
    let out = minisign(&["-G", "-W", "-p", public.to_str().unwrap(), "-s", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kiln signs with a key minisign generated.
    let bundle = built_bundle(tmp.path(), Some(&key));
    let v = minisign(&["-V", "-p", public.to_str().unwrap(), "-m", bundle.to_str().unwrap()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // minisign signs, kiln verifies.
    std::fs::remove_file(kiln_bundle::writer::minisig_path(&bundle)).unwrap();
    let s = minisign(&[
        "-S",
        "-s",
        key.to_str().unwrap(),
        "-m",
        bundle.to_str().unwrap(),
        "-t",
        "signed by minisign",
    ]);
    assert!(
        s.status.success(),
        "minisign -S: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    ok(&kiln(
        &tmp.path().join("cache"),
        &["verify", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()],
    ));

    // Another key does not verify it.
    let other = tmp.path().join("other");
    ok(&kiln(
        &tmp.path().join("cache"),
        &["keygen", "-o", other.to_str().unwrap()],
    ));
    let err = fails(&kiln(
        &tmp.path().join("cache"),
        &[
            "verify",
            "--key",
            tmp.path().join("other.pub").to_str().unwrap(),
            bundle.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn encrypted_keys_need_their_password() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("enc");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "keygen",
            "-o",
            prefix.to_str().unwrap(),
            "--password-env",
            "KILN_TEST_PW",
        ])
        .env("KILN_TEST_PW", "correct horse")
        .output()
        .unwrap();
    ok(&out);
    let bundle = built_bundle(tmp.path(), None);
    // Signing goes through `kiln build --sign`; a wrong password is a clear error and writes no signature.
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let out_dir = tmp.path().join("signed");
    let mut args = vec![
        "build".to_string(),
        manifest.display().to_string(),
        "-o".into(),
        out_dir.display().to_string(),
        "--arch".into(),
        "amd64".into(),
    ];
    args.extend(mirror_args(&mirror));
    args.extend([
        "--sign".into(),
        tmp.path().join("enc.key").display().to_string(),
        "--key-password-env".into(),
        "KILN_TEST_PW".into(),
    ]);
    let run = |pw: &str| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .env("KILN_CACHE", tmp.path().join("cache"))
            .env("KILN_TEST_PW", pw)
            .output()
            .unwrap()
    };
    let err = fails(&run("wrong"));
    assert!(err.contains("cannot load the secret key"), "{err}");
    assert!(!kiln_bundle::writer::minisig_path(&out_dir.join(bundle.file_name().unwrap())).exists());
    ok(&run("correct horse"));
    let v = minisign(&[
        "-V",
        "-p",
        tmp.path().join("enc.pub").to_str().unwrap(),
        "-m",
        out_dir.join(bundle.file_name().unwrap()).to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}
