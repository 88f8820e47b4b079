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

/// The server's database, for messages; set once at start.
static DATABASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn set_database_label(label: String) {
    let _ = DATABASE.set(label);
}

/// What to tell a caller whose write could not reach the database.
pub(crate) fn database_unavailable() -> String {
    format!(
        "the database ({}) cannot be reached: nothing was changed; retry once it is back \
         (the mesh, and what the server holds in memory, go on)",
        DATABASE.get().map_or("not yet opened", String::as_str)
    )
}
