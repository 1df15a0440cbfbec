//! Errors of a bench run.

use std::path::PathBuf;

/// Why a bench run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The run refused to start: a tool is missing, the machine is busy, not root, ...
    #[error("bench refused to start: {0}")]
    Preflight(String),
    /// An external command (`ip`, `iptables-restore`, `nft`, ...) failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call through nix failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    /// A mode did not come up or misbehaved while measured.
    #[error("{mode}: {reason}")]
    Mode { mode: String, reason: String },
    /// Writing an output file failed.
    #[error("writing {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> BenchError {
        BenchError::Sys {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn mode(mode: impl std::fmt::Display, reason: impl Into<String>) -> BenchError {
        BenchError::Mode {
            mode: mode.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
