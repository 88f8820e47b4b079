//! The data dir: key-encryption key, admin token, and files that local
//! clients read (`ward --data-dir D`).
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Why a file of the data dir could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading, writing or creating it failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A secret file others may read.
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// Which file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl FileError {
    /// An I/O failure on `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> FileError {
        FileError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Paths of the files in a data dir.
#[derive(Debug, Clone)]
pub struct DataDirFiles {
    /// The directory.
    pub dir: PathBuf,
}

/// What a running server writes for local clients: `<data-dir>/server.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// `sha256:<hex>` of the root certificate.
    pub root_fingerprint: String,
    /// The trust domain.
    pub trust_domain: String,
    /// The server's process id.
    pub pid: u32,
}

impl DataDirFiles {
    /// The files of `dir`.
    pub fn new(dir: &Path) -> DataDirFiles {
        DataDirFiles {
            dir: dir.to_path_buf(),
        }
    }
    /// The key-encryption key (32 raw bytes, mode 0600).
    pub fn kek(&self) -> PathBuf {
        self.dir.join("kek.key")
    }
    /// The admin token (mode 0600).
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    /// The trust bundle, PEM, rewritten on every change.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }
    /// Where the running server is.
    pub fn server_info(&self) -> PathBuf {
        self.dir.join("server.json")
    }

    /// Creates the directory (0700) if needed.
    pub(crate) fn ensure_dir(&self) -> Result<(), FileError> {
        fs::create_dir_all(&self.dir).map_err(|e| FileError::io(&self.dir, e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| FileError::io(&self.dir, e))
    }

    /// Reads the secret file at `path`, or creates it with `make` (mode
    /// 0600, written and synced before use). Returns the contents and
    /// whether it was created.
    pub(crate) fn secret_file(
        &self,
        path: &Path,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<(Vec<u8>, bool), FileError> {
        match fs::read(path) {
            Ok(b) => {
                let mode = fs::metadata(path)
                    .map_err(|e| FileError::io(path, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(FileError::Exposed {
                        path: path.display().to_string(),
                        mode: mode & 0o777,
                    });
                }
                Ok((b, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = make();
                write_new(path, &bytes, 0o600)?;
                Ok((bytes, true))
            }
            Err(e) => Err(FileError::io(path, e)),
        }
    }

    /// Replaces a public file atomically.
    pub(crate) fn write_public(&self, path: &Path, bytes: &[u8]) -> Result<(), FileError> {
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        write_new(&tmp, bytes, 0o644)?;
        fs::rename(&tmp, path).map_err(|e| FileError::io(path, e))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| FileError::io(path, e))
}

/// A new random secret token, `prefix` + 43 base64url characters (256 bits).
pub(crate) fn random_token(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("system randomness");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}
