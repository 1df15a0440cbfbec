//! Diagnostics: every problem names the file, the document, the object, the field and why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::model::Origin;

/// One rejected object (or an unreadable file). Errors never stop the load of other objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: Arc<Path>,
    /// 0-based document index inside the file (every `---` counts), when known.
    pub document: Option<usize>,
    /// 1-based line where the document (or the syntax error) starts, when known.
    pub line: Option<usize>,
    /// Object kind, e.g. `Service`.
    pub kind: Option<String>,
    /// `namespace/name` of the object, when it has one.
    pub object: Option<String>,
    /// Field path, e.g. `spec.ports[1].nodePort`.
    pub field: Option<String>,
    pub reason: String,
    /// The other definition, for conflicts between two objects.
    pub other: Option<Origin>,
}

impl ConfigError {
    /// An error about a whole file (unreadable, not YAML, ...).
    pub fn file(file: &Arc<Path>, line: Option<usize>, reason: impl Into<String>) -> Self {
        Self {
            file: file.clone(),
            document: None,
            line,
            kind: None,
            object: None,
            field: None,
            reason: reason.into(),
            other: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        match (&self.kind, &self.object) {
            (Some(kind), Some(obj)) => write!(f, ": {kind} {obj}")?,
            (Some(kind), None) => write!(f, ": {kind}")?,
            (None, Some(obj)) => write!(f, ": {obj}")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(other) = &self.other {
            write!(f, " (other definition at {other})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Something skipped on purpose (an unknown kind, an FQDN EndpointSlice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub file: Arc<Path>,
    pub document: Option<usize>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Failures of the loader itself (not of a manifest): the directory cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest path {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}
