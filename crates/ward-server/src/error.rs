use std::path::Path;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("storage: {0}")]
    Store(#[from] ward_store::StoreError),
    /// The CA failed.
    #[error("CA: {0}")]
    Ca(#[from] ward_ca::CaError),
}

impl StartError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StartError {
        StartError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
