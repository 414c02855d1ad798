//! File modes, written as octal strings (`"0755"`) in manifests and the index, because YAML 1.2 reads a
//! bare `0755` as the decimal number 755.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why text is not a file mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    /// Not one to five octal digits.
    #[error("`{0}` is not an octal file mode such as \"0755\"")]
    NotOctal(String),
    /// Octal, but with bits above setuid/setgid/sticky and the permissions.
    #[error("`{0}` has bits beyond 07777")]
    TooWide(String),
}

/// Permission bits of a bundle file, including setuid/setgid/sticky (`0o7777` at most).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mode(pub u32);

impl Mode {
    pub const EXEC: Mode = Mode(0o755);
    pub const FILE: Mode = Mode(0o644);
    pub const DIR: Mode = Mode(0o755);
    pub const SECRET: Mode = Mode(0o600);

    pub fn parse(s: &str) -> Result<Self, ModeError> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || digits.len() > 5 {
            return Err(ModeError::NotOctal(s.to_string()));
        }
        let v = u32::from_str_radix(digits, 8).map_err(|_| ModeError::NotOctal(s.to_string()))?;
        if v > 0o7777 {
            return Err(ModeError::TooWide(s.to_string()));
        }
        Ok(Mode(v))
    }

    pub fn is_setid(self) -> bool {
        self.0 & 0o6000 != 0
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Mode::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_octal() {
        assert_eq!(Mode::parse("0755").unwrap(), Mode(0o755));
        assert_eq!(Mode::parse("644").unwrap(), Mode(0o644));
        assert_eq!(Mode::parse("04755").unwrap(), Mode(0o4755));
        assert!(Mode::parse("0755").unwrap().to_string() == "0755");
        assert!(Mode::parse("0999").is_err());
        assert!(Mode::parse("017777").is_err());
        assert!(Mode::parse("").is_err());
        assert!(Mode::parse("04755").unwrap().is_setid());
    }
}
