//! The one I/O error helper of the workspace: an [`io::Error`] with what was being done and
//! the path it was done to, e.g. `cannot create /root.rw/context: Permission denied`.
//!
//! The cause is part of the message, so [`PathError`] does not also return it from
//! [`Error::source`]: printed with its chain (`{e:#}` in the binaries) it shows once.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O error on a path.
#[derive(Debug)]
pub struct PathError {
    /// What was being done (`"cannot create"`); may be empty.
    pub what: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

impl PathError {
    pub fn new(what: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        PathError {
            what,
            path: path.into(),
            cause,
        }
    }

    /// The kind of the underlying error.
    pub fn kind(&self) -> io::ErrorKind {
        self.cause.kind()
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.what.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.cause)
        } else {
            write!(f, "{} {}: {}", self.what, self.path.display(), self.cause)
        }
    }
}

impl Error for PathError {}

/// For `map_err`: `fs::write(&p, x).map_err(io_err("cannot write", &p))?` (any error type with
/// `From<PathError>` takes it through `?`).
pub fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PathError + 'a {
    move |cause| PathError::new(what, path, cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_shows_once() {
        let e = io_err("cannot create", Path::new("/x/y"))(io::Error::from_raw_os_error(13));
        assert_eq!(
            e.to_string(),
            format!("cannot create /x/y: {}", io::Error::from_raw_os_error(13))
        );
        assert!(e.source().is_none());
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let bare = PathError::new("", "/x", io::Error::other("boom"));
        assert_eq!(bare.to_string(), "/x: boom");
    }
}
