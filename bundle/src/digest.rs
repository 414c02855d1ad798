//! SHA-256 digests: a validated hex newtype and streaming hashing adapters.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// A SHA-256 digest, shown and parsed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for labels and tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Why text is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not 64 lowercase hex characters (after an optional `sha256:`).
    #[error("`{0}` is not a sha256 digest (64 lowercase hex characters)")]
    NotHex(String),
    /// A `sha256sum`-style file with no digest in it.
    #[error("the file is empty")]
    Empty,
}

impl FromStr for Sha256 {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        let not_hex = || DigestError::NotHex(s.to_string());
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(not_hex());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| not_hex())?;
        Ok(Self(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> (Sha256, u64, R) {
        (Sha256(self.hasher.finalize().into()), self.count, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }

    pub fn finish(self) -> (Sha256, u64, W) {
        (Sha256(self.hasher.finalize().into()), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hash a whole stream, returning its digest and length.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Sha256, u64)> {
    let mut hr = HashingReader::new(&mut r);
    io::copy(&mut hr, &mut io::sink())?;
    let (d, n, _) = hr.finish();
    Ok((d, n))
}

/// Hash a whole file, returning its digest and length; errors name the file.
pub fn hash_file(path: &std::path::Path) -> crate::error::Result<(Sha256, u64)> {
    use crate::error::IoContext;
    let f = std::fs::File::open(path).at(path)?;
    hash_reader(io::BufReader::with_capacity(1 << 20, f)).at(path)
}

/// The contents of a `.sha256` file for `file_name`, as `sha256sum` writes it.
pub fn sha256sum_line(digest: &Sha256, file_name: &str) -> String {
    format!("{}  {}\n", digest.hex(), file_name)
}

/// Parse the first digest of a `sha256sum`-style file.
pub fn parse_sha256sum(text: &str) -> Result<Sha256, DigestError> {
    let first = text.split_whitespace().next().ok_or(DigestError::Empty)?;
    first.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_hex() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.hex().parse::<Sha256>().unwrap(), d);
        assert_eq!(format!("sha256:{}", d.hex()).parse::<Sha256>().unwrap(), d);
        assert_eq!(d.short(), "ba7816bf8f01");
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("abc".parse::<Sha256>().is_err());
        assert!("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
            .parse::<Sha256>()
            .is_err());
        assert!("g".repeat(64).parse::<Sha256>().is_err());
    }

    #[test]
    fn sha256sum_round_trip() {
        let d = Sha256::of(b"x");
        let line = sha256sum_line(&d, "a.tar.zst");
        assert_eq!(parse_sha256sum(&line).unwrap(), d);
        assert!(parse_sha256sum("").is_err());
    }
}
