//! The manifest error: one type for every failure, always located at `file:line:column`.
//!
//! Operators fix manifests in an editor, so every error — unreadable file, TOML syntax, schema
//! mismatch, semantic check, missing image layout — says where (the `file:line:column` prefix
//! editors and terminals understand) and what to write instead.

use std::fmt;
use std::path::{Path, PathBuf};

use super::location::Location;

/// What kind of problem a [`ManifestError`] reports (for callers and tests that branch on it;
/// the message is what operators read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Read,
    /// The file is larger than [`super::MAX_MANIFEST_BYTES`].
    TooLarge,
    /// The file is not UTF-8.
    NotUtf8,
    /// The text is not valid TOML (including duplicate keys and tables).
    Syntax,
    /// A key that the schema does not have.
    UnknownKey,
    /// A required key is missing.
    MissingKey,
    /// A value has the wrong TOML type.
    WrongType,
    /// `version` is missing or not a supported version.
    Version,
    /// A value has the right type but is not acceptable (bad name, path, hostname ...).
    InvalidValue,
    /// A container refers to an image that `[images]` does not declare.
    UnknownImage,
    /// An image source does not exist on disk (from [`super::Manifest::resolve_images`]).
    ImageNotFound,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorKind::Read => "read error",
            ErrorKind::TooLarge => "file too large",
            ErrorKind::NotUtf8 => "not UTF-8",
            ErrorKind::Syntax => "TOML syntax error",
            ErrorKind::UnknownKey => "unknown key",
            ErrorKind::MissingKey => "missing key",
            ErrorKind::WrongType => "wrong type",
            ErrorKind::Version => "unsupported version",
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::UnknownImage => "unknown image",
            ErrorKind::ImageNotFound => "image not found",
        };
        f.write_str(text)
    }
}

/// A manifest error: where (file:line:column) and what to write instead.
///
/// `Display` is the single line `file:line:column: message`; [`ManifestError::hint`] may hold a
/// short second line (an example of what to write) that CLIs print below it.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ManifestError {
    /// The manifest file as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
    /// What kind of problem this is.
    pub kind: ErrorKind,
    /// An optional example of what to write instead.
    pub hint: Option<String>,
    /// The underlying I/O error, for read failures.
    #[source]
    pub source: Option<std::io::Error>,
}

impl ManifestError {
    /// An error of `kind` at `at` in `file`.
    pub fn new(kind: ErrorKind, file: &Path, at: Location, message: impl Into<String>) -> Self {
        ManifestError {
            file: file.to_path_buf(),
            line: at.line,
            column: at.column,
            message: message.into(),
            kind,
            hint: None,
            source: None,
        }
    }

    /// Adds an example of what to write instead.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attaches the underlying I/O error.
    #[must_use]
    pub fn with_source(mut self, source: std::io::Error) -> Self {
        self.source = Some(source);
        self
    }

    /// Where the error is.
    pub fn location(&self) -> Location {
        Location {
            line: self.line,
            column: self.column,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_is_file_line_column_message() {
        let err = ManifestError::new(
            ErrorKind::InvalidValue,
            Path::new("examples/demo.toml"),
            Location {
                line: 9,
                column: 21,
            },
            "bad",
        )
        .with_hint("write `x`");
        assert_eq!(err.to_string(), "examples/demo.toml:9:21: bad");
        assert_eq!(err.hint.as_deref(), Some("write `x`"));
        assert!(err.source().is_none());
    }

    #[test]
    fn read_errors_carry_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let err = ManifestError::new(ErrorKind::Read, Path::new("m.toml"), Location::START, "x")
            .with_source(io);
        assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("gone"));
    }
}
