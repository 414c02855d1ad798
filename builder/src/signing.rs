//! minisign keys and signatures (ed25519, prehashed), interoperable with the `minisign` tool:
//! `kiln keygen` writes the same file formats as `minisign -G`, and `kiln build --sign` the same
//! signatures as `minisign -S`. Verification uses kiln-bundle's verifier.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::atomic;

/// Where `kiln keygen -o PREFIX` writes: `PREFIX.key` (secret, 0600) and `PREFIX.pub`.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Generate a key pair. Without a password the secret key is stored unencrypted (as `minisign -G -W`
/// does), which suits CI secrets; with one it is encrypted with scrypt as minisign does by default.
pub fn keygen(prefix: &Path, password: Option<String>, force: bool) -> Result<(PathBuf, PathBuf)> {
    let (sk_path, pk_path) = key_paths(prefix);
    if !force {
        for p in [&sk_path, &pk_path] {
            if p.exists() {
                bail!("{} already exists; pass --force to overwrite it", p.display());
            }
        }
    }
    let kp = match password {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| anyhow!("cannot generate a key pair: {e}"))?;
    let sk = kp
        .sk
        .to_box(Some("kiln secret key"))
        .map_err(|e| anyhow!("{e}"))?
        .to_string();
    let pk = kp.pk.to_box().map_err(|e| anyhow!("{e}"))?.to_string();
    atomic::write_file(&sk_path, sk.as_bytes(), 0o600)?;
    atomic::write_file(&pk_path, pk.as_bytes(), 0o644)?;
    Ok((sk_path, pk_path))
}

fn load_secret_key(path: &Path, password: Option<String>) -> Result<minisign::SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read secret key {}", path.display()))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow!("{}: not a minisign secret key: {e}", path.display()))?;
    let loaded = match password {
        Some(pw) => sk_box.into_secret_key(Some(pw)),
        None => sk_box.into_unencrypted_secret_key(),
    };
    match loaded {
        Ok(sk) => Ok(sk),
        Err(e) => unchecked_unencrypted_key(&text).ok_or_else(|| {
            anyhow!(
                "{}: cannot load the secret key (encrypted keys need --key-password-env): {e}",
                path.display()
            )
        }),
    }
}

/// `minisign -G -W` (the C tool, 0.11 in Debian 12) writes unencrypted secret keys with an all-zero
/// checksum, which the minisign crate rejects as corrupted. Accept exactly that shape: no KDF and a
/// zero checksum. Anything else keeps the crate's error.
fn unchecked_unencrypted_key(text: &str) -> Option<minisign::SecretKey> {
    use base64::Engine as _;
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD.decode(line).ok()?;
    // sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) opslimit(8) memlimit(8) keynum(8) sk(64) chk(32)
    if bytes.len() != 158 || bytes[2..4] != [0, 0] || bytes[126..].iter().any(|b| *b != 0) {
        return None;
    }
    minisign::SecretKey::from_bytes(&bytes).ok()
}

/// Sign `file`, writing `file.minisig` atomically. The trusted comment names the file and its digest.
pub fn sign_file(file: &Path, key: &Path, password: Option<String>, trusted_comment: &str) -> Result<PathBuf> {
    let sk = load_secret_key(key, password)?;
    let data = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let sig = minisign::sign(
        None,
        &sk,
        std::io::BufReader::new(data),
        Some(trusted_comment),
        Some("signature from kiln secret key"),
    )
    .map_err(|e| anyhow!("cannot sign {}: {e}", file.display()))?;
    let out = kiln_bundle::writer::minisig_path(file);
    atomic::write_file(&out, sig.to_string().as_bytes(), 0o644)?;
    Ok(out)
}
