//! Errors at the bundle crate's boundary. Every error about a file names the path; every error about
//! input names the field and where it came from.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// Malformed input with a position: `origin:line:column: message`.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: u64,
        column: u64,
        message: String,
    },

    /// Input that parsed but is not valid: `origin: field: message`.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },

    #[error("{origin}: {message}")]
    Bundle { origin: String, message: String },

    #[error("{0}")]
    Signature(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(origin: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            origin: origin.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn bundle(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Bundle {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

/// Attach a path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
