use std::path::Path;

use crate::ca::CaManagerError;
use crate::datadir::FileError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory could not be used.
    #[error(transparent)]
    File(#[from] FileError),
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("storage: {0}")]
    Store(#[from] ward_store::StoreError),
    /// The CA failed.
    #[error("CA: {0}")]
    Ca(#[from] ward_ca::CaError),
    /// The CA could not be loaded or brought up to schedule.
    #[error("CA: {0}")]
    CaManager(#[from] CaManagerError),
}

impl StartError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StartError {
        StartError::File(FileError::io(path, source))
    }
}
